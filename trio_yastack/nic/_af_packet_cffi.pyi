"""Types of the cffi extension ``trio_yastack.nic._af_packet_cffi`` (``native/af_packet.c``), for
the type checker only: keep in step with ``af_packet_ffi``'s cdef in ``native/build_native.py``."""

from typing import Any

class CData:
    """cffi's view of C memory."""

ffi: Any  # cffi's FFI: new, from_buffer, buffer, unpack, release over the cdef's types
lib: Any  # yas_afp_rx_walk, yas_afp_tx_burst (signatures in the cdef)
