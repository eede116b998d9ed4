"""The TAP port's burst I/O in one crossing into C (``native/tap_io.c``), and optionally the
transmit burst in one system call (io_uring).

A TAP descriptor takes one frame per ``write`` and gives one per ``read`` (it has no ``sendmmsg``),
so the Python loops of :class:`~trio_yastack.nic.tap.TapPort` cost a Python call, an allocation and
a system call per frame. Here a transmit burst is laid end to end (``b"".join``; a burst holding a
large frame, a TSO segment, is handed over as one pointer per frame instead, which saves copying it)
with an array of lengths and one meta word per frame (``gso_size`` and whether the kernel completes
the TCP checksum), and C builds each frame's virtio-net header and hands the burst to the kernel:
one ``writev`` per frame from C (``TapIoMode.LOOP``, the default), or linked ``IORING_OP_WRITEV``
requests in one ``io_uring_enter`` (``TapIoMode.RING``: measured no cheaper per frame on Linux 6.18,
see ``benchmarks/RESULTS.md``; where io_uring is refused it falls back to LOOP). The receive side
reads in a C loop into one buffer and copies the frames out of it.

The Python loops in ``tap.py`` are the twin: they stay the path where the extension did not build
(``NATIVE`` is False) and where ``TRIO_YASTACK_TAP_IO=python`` asks for them;
``tests/test_tap_io.py`` holds both to the same frames on the wire.
"""

from __future__ import annotations

import enum
import os
from array import array
from collections.abc import Sequence
from typing import Any

from trio_yastack.stack._offload import ChecksumVerified, OffloadPacket

__all__ = ["NATIVE", "TapBurstIO", "TapIoMode", "chosen_io_mode"]


def _load_extension() -> tuple[Any, Any] | None:
    """The cffi extension, or None where it did not build or ``TRIO_YASTACK_NO_NATIVE`` is set
    (the Python loops then do the I/O)."""
    if os.environ.get("TRIO_YASTACK_NO_NATIVE"):
        return None
    try:
        from ._tap_io_cffi import ffi, lib
    except ImportError:
        return None
    return ffi, lib


_extension = _load_extension()

_VNET_HDR_LEN = 10  # YAS_TAP_VNET_HDR_LEN: struct virtio_net_hdr (legacy)
_RX_VERIFIED = 0x80000000  # YAS_TAP_RX_VERIFIED: the kernel vouches for the frame's checksums
_RX_LEN_MASK = _RX_VERIFIED - 1
_PARTIAL_CSUM = 0x10000  # YAS_TAP_PARTIAL_CSUM
#: a burst with a frame at least this long goes to C as pointers to the frames
#: (``yas_tap_tx_frames``), not as one joined copy: the copy of a TSO segment costs more than a
#: pointer per frame (``ffi.from_buffer``) does for the whole burst
_POINTERS_MIN = 8192

#: whether the C part is here (``native/tap_io.c``, built by cffi at install time)
NATIVE = _extension is not None


class TapIoMode(enum.Enum):
    """How a TAP port moves a burst; ``TRIO_YASTACK_TAP_IO`` picks one.  The default is LOOP:
    measured on Linux 6.18 (``benchmarks/RESULTS.md``), a write through io_uring costs the kernel
    more than the system call it saves, so RING stays a choice to measure, not the default."""

    PYTHON = "python"  # the twin: one os.writev / os.read per frame from Python
    LOOP = "loop"  # one writev / read per frame, from C: one crossing into C per burst
    RING = "ring"  # transmit: the burst in one io_uring_enter; receive as LOOP


def chosen_io_mode() -> TapIoMode:
    """The mode ``TRIO_YASTACK_TAP_IO`` asks for (an unknown value is an error, not a guess);
    PYTHON wherever the extension did not build."""
    value = os.environ.get("TRIO_YASTACK_TAP_IO", "").strip().lower() or TapIoMode.LOOP.value
    try:
        mode = TapIoMode(value)
    except ValueError:
        raise ValueError(
            f"TRIO_YASTACK_TAP_IO={value!r}: expected one of {[m.value for m in TapIoMode]}"
        ) from None
    return mode if NATIVE else TapIoMode.PYTHON


class TapBurstIO:
    """One TAP queue's descriptor driven from C: :meth:`tx` and :meth:`rx` move a burst per call.

    ``mode`` RING opens an io_uring for the descriptor; if the kernel refuses one (io_uring
    disabled by ``kernel.io_uring_disabled``, a seccomp filter, an old kernel) the object quietly
    uses LOOP, and ``mode`` says which it got.  Buffers are bounded: ``max_burst`` frames of
    ``frame_size`` bytes on receive.
    """

    def __init__(self, fd: int, *, vnet: bool, max_frame_len: int, frame_size: int, max_burst: int,
                 mode: TapIoMode = TapIoMode.LOOP) -> None:  # fmt: skip
        if _extension is None:
            raise RuntimeError("the TAP I/O extension (trio_yastack.nic._tap_io_cffi) is not built")
        if mode is TapIoMode.PYTHON:
            raise ValueError("TapBurstIO is the native path; the Python loops live in TapPort")
        ffi, lib = _extension
        self._ffi, self._lib = ffi, lib
        self.fd = fd
        self.vnet = vnet
        self.max_frame_len = max_frame_len
        #: the io_uring (RING mode), opened at the first burst so that a worker forked after the
        #: port opened gets its own; NULL: none (LOOP)
        self._ring: Any = None if mode is TapIoMode.RING else ffi.NULL
        self.mode = mode
        self._stats = ffi.new("uint64_t[3]")
        # Receive: max_burst slots of frame_size bytes (virtio-net header included), reused every
        # burst: the frames are copied out.
        self._frame_size = frame_size
        self._header = _VNET_HDR_LEN if vnet else 0
        self._rx_max = max_burst
        self._rx_c = ffi.new("char[]", frame_size * max_burst)
        self._rx_len = frame_size * max_burst
        self._rx_view = memoryview(ffi.buffer(self._rx_c))
        self._rx_lens = ffi.new("uint32_t[]", max_burst)
        self._rx_errors = ffi.new("uint32_t[1]")

    def _open_ring(self) -> Any:
        """This process's io_uring, or NULL (LOOP from now on) when the kernel refuses one."""
        ffi = self._ffi
        out = ffi.new("struct yas_tap_ring **")
        if self._lib.yas_tap_ring_open(self.fd, out) == 0:
            self._ring = out[0]
        else:
            self._ring, self.mode = ffi.NULL, TapIoMode.LOOP
        return self._ring

    def tx(self, frames: Sequence[bytes]) -> tuple[int, int, int, int]:
        """Write ``frames``: ``(taken, written, nbytes, refused)``; ``taken`` frames were handed
        over or refused (the rest met a full queue and stay the caller's), ``written`` of them
        with ``nbytes`` bytes (virtio-net headers not counted) reached the kernel."""
        n = len(frames)
        ffi = self._ffi
        lens = array("I", map(len, frames))
        # One meta word per frame: an OffloadPacket (a bytearray, hence the class check) asks the
        # kernel to complete its checksum and, with gso_size, to segment it.
        meta = array(
            "I",
            [
                frame.gso_size | _PARTIAL_CSUM if frame.__class__ is OffloadPacket else 0  # type: ignore[comparison-overlap]  # an OffloadPacket in a bytes burst
                for frame in frames
            ],
        )
        stats = self._stats
        ring = self._ring
        if ring is None:
            ring = self._open_ring()
        if max(lens, default=0) >= _POINTERS_MIN:
            # A burst with a large frame (a TSO segment): C writes each frame from its own buffer
            # (one pointer each) instead of a copy of the whole burst laid end to end.
            views = [ffi.from_buffer(frame) for frame in frames]
            taken = self._lib.yas_tap_tx_frames(
                ring, self.fd, ffi.new("char *[]", views), ffi.from_buffer("uint32_t[]", lens),
                ffi.from_buffer("uint32_t[]", meta), n, self.vnet, self.max_frame_len, stats,
            )  # fmt: skip
        else:
            data = b"".join(frames)
            taken = self._lib.yas_tap_tx_burst(
                ring, self.fd, data, len(data), ffi.from_buffer("uint32_t[]", lens),
                ffi.from_buffer("uint32_t[]", meta), n, self.vnet, self.max_frame_len, stats,
            )  # fmt: skip
        if taken < 0:
            raise OSError(-taken, os.strerror(-taken))
        return taken, stats[0], stats[1], stats[2]

    def rx(self, max_n: int) -> tuple[list[bytes], int, int]:
        """Read up to ``max_n`` frames (at most the ``max_burst`` slots): ``(frames, nbytes,
        errors)``, each frame a copy (:class:`ChecksumVerified` where the virtio-net header vouches
        for its checksums), ``errors`` the reads that held no frame.  An error on the first read
        raises OSError."""
        errors = self._rx_errors
        errors[0] = 0
        n = self._lib.yas_tap_rx_burst(
            self.fd, self._rx_c, self._rx_len, self._frame_size, self.vnet, self._rx_lens,
            min(max_n, self._rx_max), errors,
        )  # fmt: skip
        if n <= 0:
            if n < 0:
                raise OSError(-n, os.strerror(-n))
            return [], 0, errors[0]
        view, size = self._rx_view, self._frame_size
        frames: list[bytes] = []
        append = frames.append
        start = self._header
        nbytes = 0
        for length in self._ffi.unpack(self._rx_lens, n):
            if length & _RX_VERIFIED:
                length &= _RX_LEN_MASK
                append(ChecksumVerified(view[start : start + length]))
            else:
                append(bytes(view[start : start + length]))
            nbytes += length
            start += size
        return frames, nbytes, errors[0]

    def forget_ring(self) -> None:
        """Drop the io_uring (a forked worker's inherited copy: its memory is shared with the parent's,
        so a new one is opened at the next burst, this process's own)."""
        if self._ring is not None and self._ring != self._ffi.NULL:
            self._lib.yas_tap_ring_close(self._ring)
        self._ring = None

    def close(self) -> None:
        """Release the ring (the descriptor stays the port's to close)."""
        self.forget_ring()
        self.mode = TapIoMode.LOOP
