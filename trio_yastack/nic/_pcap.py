"""pcap files: a tee that records every frame a port moves, and a reader/replayer.

The format is classic libpcap (what tcpdump, tshark and Wireshark read everywhere): a 24-byte
file header, then a 16-byte record header before each frame.  We write microsecond
timestamps, link type 1 (Ethernet), and a snap length large enough for 64 KB GSO frames.
"""

from __future__ import annotations

import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import trio

from trio_yastack.stack.wire import MacAddress

from ._port import Port, PortCapabilities, PortCounters, PortStatistics, PortWrapper

__all__ = [
    "PcapError",
    "PcapRecord",
    "PcapReplayPort",
    "PcapTee",
    "PcapWriter",
    "open_pcap_port",
    "read_pcap",
]

LINKTYPE_ETHERNET = 1
SNAPLEN = 262144
_MAGIC_US = 0xA1B2C3D4
_MAGIC_NS = 0xA1B23C4D
_FILE_HEADER = struct.Struct("=IHHiIII")
_RECORD_HEADER = struct.Struct("=IIII")
_MAX_RECORD = 16 * 1024 * 1024  # refuse absurd record lengths instead of allocating them


class PcapError(ValueError):
    """A file that is not a readable Ethernet pcap."""


@dataclass(frozen=True, slots=True)
class PcapRecord:
    timestamp: float
    frame: bytes
    original_len: int


class PcapWriter:
    """Writes frames to a pcap file (or an open binary file, which the writer then owns)."""

    def __init__(self, target: str | Path | BinaryIO, *, snaplen: int = SNAPLEN) -> None:
        self._file: BinaryIO = open(target, "wb") if isinstance(target, str | Path) else target  # noqa: SIM115
        self.snaplen = snaplen
        self.frames_written = 0
        self._file.write(_FILE_HEADER.pack(_MAGIC_US, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET))

    def write(self, frame: bytes, timestamp: float) -> None:
        self.write_record(frame, timestamp, len(frame))

    def write_record(self, frame: bytes, timestamp: float, original_len: int) -> None:
        """A frame that may already have been cut (``original_len`` is how long it was)."""
        seconds = int(timestamp)
        micros = min(round((timestamp - seconds) * 1_000_000), 999_999)
        captured = frame[: self.snaplen]
        self._file.write(
            _RECORD_HEADER.pack(seconds, micros, len(captured), max(original_len, len(captured)))
        )
        self._file.write(captured)
        self.frames_written += 1

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def read_pcap(source: str | Path | BinaryIO) -> Iterator[PcapRecord]:
    """The records of an Ethernet pcap file (either byte order, micro- or nanosecond stamps)."""
    own = isinstance(source, str | Path)
    file = open(source, "rb") if isinstance(source, str | Path) else source  # noqa: SIM115  (closed below)
    try:
        header = file.read(_FILE_HEADER.size)
        if len(header) < _FILE_HEADER.size:
            raise PcapError("file shorter than a pcap header")
        magic = struct.unpack("<I", header[:4])[0]
        for order in ("<", ">"):
            magic = struct.unpack(order + "I", header[:4])[0]
            if magic in (_MAGIC_US, _MAGIC_NS):
                break
        else:
            raise PcapError(f"not a pcap file (magic {header[:4].hex()}); pcapng is not read here")
        divisor = 1e9 if magic == _MAGIC_NS else 1e6
        _magic, _major, _minor, _zone, _sigfigs, _snaplen, linktype = struct.unpack(order + "IHHiIII", header)
        if linktype & 0xFFFF != LINKTYPE_ETHERNET:
            raise PcapError(f"link type {linktype}, not Ethernet")
        record_header = struct.Struct(order + "IIII")
        while True:
            raw = file.read(record_header.size)
            if not raw:
                return
            if len(raw) < record_header.size:
                raise PcapError("truncated record header")
            seconds, fraction, captured, original = record_header.unpack(raw)
            if captured > _MAX_RECORD:
                raise PcapError(f"record of {captured} bytes")
            frame = file.read(captured)
            if len(frame) < captured:
                raise PcapError("truncated record")
            yield PcapRecord(seconds + fraction / divisor, frame, original)
    finally:
        if own:
            file.close()


class PcapTee(PortWrapper):
    """Wraps a port and writes every frame it receives or transmits to a pcap file.

    Transmitted frames are recorded as the port accepted them.  ``clock`` stamps the records
    (wall-clock time by default, so captures line up with other tools' logs).
    """

    def __init__(
        self,
        inner: Port,
        target: str | Path | BinaryIO | PcapWriter,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(inner)
        self.writer = target if isinstance(target, PcapWriter) else PcapWriter(target)
        self._clock = clock

    def rx_burst(self, queue: int, max_n: int) -> list[bytes]:
        frames = self.inner.rx_burst(queue, max_n)
        if frames:
            self._record(frames)
        return frames

    def tx_burst(self, queue: int, frames: Sequence[bytes]) -> int:
        accepted = self.inner.tx_burst(queue, frames)
        if accepted:
            self._record(frames[:accepted])
        return accepted

    def _record(self, frames: Iterable[bytes]) -> None:
        now = self._clock()
        for frame in frames:
            self.writer.write(frame, now)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
        super().close()


class PcapReplayPort(Port):
    """A port whose received frames come from a capture; what it transmits is kept (bounded).

    With ``paced=True`` the frames arrive with the capture's spacing, on trio's clock, from the
    first ``rx_burst``/``wait_rx``; otherwise all are available at once.
    """

    def __init__(
        self,
        source: str | Path | Iterable[PcapRecord],
        *,
        mac: str = "02:00:00:00:00:02",
        mtu: int = 1500,
        paced: bool = False,
        keep_transmitted: int = 10_000,
    ) -> None:
        records = read_pcap(source) if isinstance(source, str | Path) else source
        self._pending: deque[PcapRecord] = deque(records)
        self.name = "pcap"
        self._capabilities = PortCapabilities(mac=MacAddress(mac), mtu=mtu)
        self._counters = PortCounters()
        self._paced = paced
        self._start: tuple[float, float] | None = None  # (trio time, capture time) of the first frame
        self.transmitted: deque[bytes] = deque(maxlen=keep_transmitted)

    @property
    def capabilities(self) -> PortCapabilities:
        return self._capabilities

    def _due(self, record: PcapRecord) -> float:
        if not self._paced:
            return -float("inf")
        if self._start is None:
            self._start = (trio.current_time(), record.timestamp)
        return self._start[0] + (record.timestamp - self._start[1])

    def rx_burst(self, queue: int, max_n: int) -> list[bytes]:
        frames: list[bytes] = []
        now = trio.current_time() if self._paced else 0.0
        while self._pending and len(frames) < max_n and self._due(self._pending[0]) <= now:
            frame = self._pending.popleft().frame
            frames.append(frame)
            self._counters.ipackets += 1
            self._counters.ibytes += len(frame)
        return frames

    def tx_burst(self, queue: int, frames: Sequence[bytes]) -> int:
        for frame in frames:
            self.transmitted.append(frame)
            self._counters.opackets += 1
            self._counters.obytes += len(frame)
        return len(frames)

    async def wait_rx(self, queue: int) -> None:
        if not self._pending:
            await trio.sleep_forever()
        await trio.sleep_until(max(self._due(self._pending[0]), -1e18))

    def statistics(self) -> PortStatistics:
        return self._counters.snapshot()

    @property
    def exhausted(self) -> bool:
        """Every frame of the capture has been received."""
        return not self._pending


def open_pcap_port(spec: str, *, queues: int | None = None) -> PcapReplayPort:
    """``open_port``'s opener for ``pcap:FILE``: a capture replayed (one queue whatever ``queues``)."""
    _, _, path = spec.partition(":")
    if not path:
        raise ValueError(f"nic spec {spec!r}: expected pcap:FILE")
    return PcapReplayPort(path)
