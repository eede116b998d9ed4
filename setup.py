"""Build hook for the optional native part (``native/``, compiled with cffi).

Everything else lives in ``pyproject.toml``.  The extensions (one per layer, declared in
``native/build_native.py``) are optional on purpose: if the C compiler or the headers are
missing, the install still succeeds and the package runs on the pure-Python twins
(``trio_yastack.stack._native``, ``trio_yastack.dispatch._native_rss`` and ``_native_ring``).
"""

import shutil
import subprocess

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """A ``build_ext`` that reports a failed native build instead of failing the install."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            self.warn(f"trio_yastack: native build failed, using pure-Python twins ({exc})")

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            self.warn(f"trio_yastack: native extension {ext.name} not built ({exc})")


def _have_pkg_config(package: str) -> bool:
    """Whether pkg-config knows ``package`` (a shim whose library is missing is not built at all)."""
    if shutil.which("pkg-config") is None:
        return False
    return subprocess.run(["pkg-config", "--exists", package], check=False).returncode == 0


setup(
    cffi_modules=[
        "native/build_native.py:stack_ffi",
        "native/build_native.py:dispatch_ffi",
        "native/build_native.py:af_packet_ffi",
        "native/build_native.py:tap_io_ffi",
        "native/build_native.py:af_xdp_ffi",
        # the DPDK port's shim (trio_yastack.nic.dpdk), only with libdpdk-dev installed
        *(["native/build_native.py:dpdk_ffi"] if _have_pkg_config("libdpdk") else []),
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
