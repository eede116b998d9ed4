"""Types of the cffi extension ``trio_yastack.nic._tap_io_cffi`` (``native/tap_io.c``), for the type
checker only: keep in step with ``tap_io_ffi``'s cdef in ``native/build_native.py``."""

from typing import Any

ffi: Any  # cffi's FFI: new, from_buffer, buffer, unpack over the cdef's types
lib: Any  # yas_tap_ring_open, yas_tap_ring_close, yas_tap_tx_burst, yas_tap_rx_burst (see the cdef)
