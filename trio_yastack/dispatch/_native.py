"""The dispatcher's native extension (``native/rss.c``, ``native/ring.c``), or None.

A loader and nothing more: the twins are in ``_native_rss`` (the Toeplitz hash) and
``_native_ring`` (the shared-memory rings), which both take the C functions from here.  The
extension is optional (the build may have failed, or found no compiler) and
``TRIO_YASTACK_NO_NATIVE=1`` turns it off, so every caller has a pure-Python twin to fall back
on.  The stack's own C (checksum, GSO) is a separate extension, ``trio_yastack.stack._native``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._native_cffi import _FFI, _Lib

__all__ = ["NATIVE", "extension"]


def _load_extension() -> tuple[_FFI, _Lib] | None:
    if os.environ.get("TRIO_YASTACK_NO_NATIVE"):
        return None
    try:
        from ._native_cffi import ffi, lib
    except ImportError:  # the optional build did not happen or failed: the twins serve
        return None
    return ffi, lib


#: ``(ffi, lib)`` of the built extension, None when the twins must serve
extension = _load_extension()
#: whether the dispatcher's C functions (Toeplitz, rings) are in use
NATIVE = extension is not None
