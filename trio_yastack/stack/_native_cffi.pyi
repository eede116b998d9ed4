"""Types of the cffi extension ``trio_yastack.stack._native_cffi`` (``native/checksum.c``,
``native/gso.c``, ``native/tcp_fast.c``), for the type checker only: keep in step with
``stack_ffi``'s cdef in ``native/build_native.py``. Parameters named as in the C; ``const char
*`` takes ``bytes`` or what ``ffi.from_buffer`` returns, never a ``bytearray`` itself."""

from array import array
from typing import Final, overload

class CData:
    """cffi's view of C memory (here: what ``from_buffer`` returns)."""

class _FFI:
    @overload
    def from_buffer(self, python_buffer: bytes | bytearray | memoryview | array[int], /) -> CData: ...
    @overload
    def from_buffer(
        self, cdecl: str, python_buffer: bytes | bytearray | memoryview | array[int], /
    ) -> CData: ...

class _Lib:
    YAS_SUM16_OUT_OF_RANGE: Final[int]
    YAS_GSO_BAD_FRAME: Final[int]
    YAS_GSO_NO_ROOM: Final[int]
    def yas_sum16(self, buf: bytes | CData, buflen: int, offset: int, len: int, initial: int, /) -> int: ...
    def yas_tcp4_segment(
        self, frame: bytes | CData, len: int, mss: int, out: CData, out_len: int, /
    ) -> int: ...
    def yas_tcp6_segment(
        self, frame: bytes | CData, len: int, mss: int, out: CData, out_len: int, /
    ) -> int: ...
    YAS_FAST_DECLINE: Final[int]
    YAS_FAST_CANDIDATE: Final[int]
    YAS_FAST_UDP: Final[int]
    YAS_FAST_CANDIDATE6: Final[int]
    YAS_FAST_UDP6: Final[int]
    YAS_FAST_SRC6_SLOTS: Final[int]
    YAS_FAST_VERIFIED: Final[int]
    YAS_FAST_BAD_ARGS: Final[int]
    def yas_tcp_fast_classify(
        self,
        frames: bytes,
        frameslen: int,
        lens: bytes,
        lenslen: int,
        n: int,
        mac: bytes,
        ip: int,
        broadcast: int,
        ip6: bytes,
        ip6len: int,
        ip6_usable: int,
        src6: bytes | CData,
        src6len: int,
        verify: bool,
        out: CData,
        outlen: int,
        /,
    ) -> int: ...

ffi: _FFI
lib: _Lib
