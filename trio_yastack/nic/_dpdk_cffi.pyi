"""Types of the cffi extension ``trio_yastack.nic._dpdk_cffi`` (``native/dpdk_shim.c``), for the
type checker only: keep in step with ``dpdk_ffi``'s cdef in ``native/build_native.py``."""

from typing import Any, Final

class CData:
    """cffi's view of C memory: arrays index, structs have their fields as attributes."""

    def __getattr__(self, name: str) -> Any: ...
    def __getitem__(self, index: int) -> Any: ...

class _FFI:
    def new(self, cdecl: str, init: Any = ..., /) -> CData: ...
    def buffer(self, cdata: CData, size: int = ..., /) -> Any: ...
    def string(self, cdata: CData, /) -> bytes: ...

class _Lib:
    YAS_TX_PARTIAL_CSUM: Final[int]
    YAS_ALL_QUEUES: Final[int]
    def yas_dpdk_eal_init(self, argc: int, argv: CData, /) -> int: ...
    def yas_dpdk_eal_cleanup(self) -> int: ...
    def yas_dpdk_last_errno(self) -> int: ...
    def yas_dpdk_strerror(self, errnum: int, /) -> CData: ...
    def yas_dpdk_open(
        self,
        devargs: bytes,
        name: bytes,
        is_pci: int,
        nb_mbufs: int,
        nb_desc: int,
        nb_rx_queues: int,
        info: CData,
        /,
    ) -> int: ...
    def yas_dpdk_close(self, port_id: int, name: bytes, is_pci: int, /) -> int: ...
    def yas_dpdk_rx_burst(
        self, port_id: int, queue: int, buf: CData, buflen: int, lens: CData, max_n: int, /
    ) -> int: ...
    def yas_dpdk_tx_burst(
        self,
        port_id: int,
        queue: int,
        frames: bytes,
        frameslen: int,
        lens: CData,
        meta: CData,
        n: int,
        max_frame_len: int,
        /,
    ) -> int: ...
    def yas_dpdk_stats_get(self, port_id: int, stats: CData, /) -> int: ...
    def yas_dpdk_complete_checksum(self, frame: CData, len: int, /) -> int: ...
    def yas_dpdk_tx_prepare(
        self,
        frames: bytes,
        frameslen: int,
        lens: CData,
        meta: CData,
        n: int,
        max_frame_len: int,
        out: CData,
        outlen: int,
        outlens: CData,
        max_out: int,
        /,
    ) -> int: ...

ffi: _FFI
lib: _Lib
