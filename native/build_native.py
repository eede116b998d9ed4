"""cffi build script for trio_yastack's native part (run by setup.py at install time).

Out-of-line API mode: the C in this folder is compiled into ``trio_yastack._native_cffi``.
Every function declared here has a pure-Python twin in ``trio_yastack/_native.py``.
"""

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent


def _source(name: str) -> str:
    """A C source path, relative to the build's working directory when it can be (setuptools
    refuses absolute source paths in some versions)."""
    path = HERE / name
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


ffibuilder = FFI()
ffibuilder.cdef(
    """
    #define YAS_SUM16_OUT_OF_RANGE 0xFFFFFFFF
    uint32_t yas_sum16(const char *buf, size_t buflen, size_t offset, size_t len, uint32_t initial);
    #define YAS_GSO_BAD_FRAME -1
    #define YAS_GSO_NO_ROOM -2
    int yas_tcp4_segment(const char *frame, size_t len, size_t mss, char *out, size_t out_len);
    """
)
ffibuilder.set_source(
    "trio_yastack._native_cffi",
    '#include "checksum.h"\n#include "gso.h"',
    sources=[_source("checksum.c"), _source("gso.c")],
    include_dirs=[str(HERE)],
    extra_compile_args=["-O3", "-std=c11"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
