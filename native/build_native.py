"""cffi build script for trio_yastack's native part (run by setup.py at install time).

Out-of-line API mode, one extension per layer that uses it, so that each layer loads only its
own C and importing the sans-IO stack loads nothing of the dispatcher's:

- ``trio_yastack.stack._native_cffi``: the Internet checksum and software GSO (``checksum.c``,
  ``gso.c``); Python twins in ``trio_yastack/stack/_native.py``;
- ``trio_yastack.dispatch._native_cffi``: the Toeplitz hash of RSS and the shared-memory SPSC
  rings (``rss.c``, ``ring.c``); Python twins in ``trio_yastack/dispatch/_native_rss.py`` and
  ``_native_ring.py``.

Every function declared here has a pure-Python twin with the same name minus ``yas_``, and a
``_native_cffi.pyi`` stub beside its extension gives the type checker the same declarations.
"""

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent


def _source(name: str) -> str:
    """A C source path, relative to the build's working directory when it can be (setuptools
    refuses absolute source paths in some versions)."""
    path = HERE / name
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def _extension(module: str, cdef: str, sources: list[str]) -> FFI:
    """One out-of-line extension ``module`` from ``sources`` (their ``.h`` beside them)."""
    builder = FFI()
    builder.cdef(cdef)
    builder.set_source(
        module,
        "".join(f'#include "{Path(name).with_suffix(".h")}"\n' for name in sources),
        sources=[_source(name) for name in sources],
        include_dirs=[str(HERE)],
        extra_compile_args=["-O3", "-std=c11"],
    )
    return builder


stack_ffi = _extension(
    "trio_yastack.stack._native_cffi",
    """
    #define YAS_SUM16_OUT_OF_RANGE 0xFFFFFFFF
    uint32_t yas_sum16(const char *buf, size_t buflen, size_t offset, size_t len, uint32_t initial);
    #define YAS_GSO_BAD_FRAME -1
    #define YAS_GSO_NO_ROOM -2
    int yas_tcp4_segment(const char *frame, size_t len, size_t mss, char *out, size_t out_len);
    """,
    ["checksum.c", "gso.c"],
)

dispatch_ffi = _extension(
    "trio_yastack.dispatch._native_cffi",
    """
    uint32_t yas_toeplitz(const char *key, size_t keylen, const char *data, size_t len);
    #define YAS_RING_HEADER 192
    #define YAS_RING_MIN_CAPACITY 4096
    #define YAS_RING_MAX_PAYLOAD 65599
    #define YAS_RING_BAD_ARGS -1
    #define YAS_RING_NOT_A_RING -2
    #define YAS_RING_TOO_LARGE -3
    #define YAS_RING_CORRUPT -4
    int yas_ring_init(char *mem, size_t memlen, uint64_t capacity);
    int yas_ring_enqueue(char *mem, size_t memlen, const char *frame, size_t len, uint32_t flags);
    int yas_ring_enqueue_burst(char *mem, size_t memlen, const char *frames, size_t frameslen,
                               const uint32_t *lens, int n, uint32_t flags);
    int yas_ring_dequeue_burst(char *mem, size_t memlen, char *out, size_t outlen, uint32_t *lens,
                               uint32_t *flags, int max);
    int yas_ring_prepare_sleep(char *mem, size_t memlen);
    int yas_ring_woke(char *mem, size_t memlen);
    int yas_ring_doorbell_due(char *mem, size_t memlen, uint64_t *last_rung);
    """,
    ["rss.c", "ring.c"],
)

#: ``trio_yastack.nic._af_packet_cffi``: the AF_PACKET port's ring walks (TPACKET_V3 and V2) and
#: sendmmsg burst (``af_packet.c``; Linux only, it needs nothing but the kernel's headers, so it is
#: built wherever ``<linux/if_packet.h>`` is: elsewhere the build fails and setup.py skips it).
#: Python twins: ``trio_yastack/nic/af_packet.py``'s ``py_rx_walk`` and ``py_rx_walk_v2``.
af_packet_ffi = _extension(
    "trio_yastack.nic._af_packet_cffi",
    """
    struct yas_afp_cursor { uint32_t block; uint32_t left; uint32_t offset; uint32_t bad_blocks; };
    int yas_afp_rx_walk(char *ring, size_t block_size, uint32_t block_count, struct yas_afp_cursor *cursor,
                        int max_n, char *out, size_t out_len, uint32_t *lens, uint32_t *status);
    int yas_afp_rx_walk_v2(char *ring, size_t block_size, size_t frame_size, uint32_t frame_count,
                           struct yas_afp_cursor *cursor, int max_n, char *out, size_t out_len,
                           uint32_t *lens, uint32_t *status);
    int yas_afp_tx_burst(int fd, const char *frames, const uint32_t *lens, int n);
    """,
    ["af_packet.c"],
)

if __name__ == "__main__":
    for builder in (stack_ffi, dispatch_ffi, af_packet_ffi):
        builder.compile(verbose=True)
