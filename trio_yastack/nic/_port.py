"""The NIC port abstraction: a DPDK-shaped poll-mode driver.

A port moves whole Ethernet frames (``bytes``, no FCS) in bursts.  ``rx_burst`` and
``tx_burst`` never block, exactly like ``rte_eth_rx_burst``/``rte_eth_tx_burst``; a runtime that
has nothing to do awaits :meth:`Port.wait_rx` instead of spinning.  Wrappers (the pcap tee,
the tracer) are ports that hold another port; seeded faults are the memory wire's own.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field

from trio_yastack.stack.wire import MacAddress

__all__ = ["Port", "PortCapabilities", "PortStatistics", "PortWrapper"]


@dataclass(frozen=True, slots=True)
class PortCapabilities:
    """What a port can do (``rte_eth_dev_info``, reduced to what the stack asks).

    ``rx_checksum_offload``: the port hands up the frames whose L3/L4 checksums it vouches for
    as :class:`~trio_yastack.stack.ChecksumVerified`, and the stack skips verifying those.
    ``tx_checksum_offload``: the port completes the checksums of the
    :class:`~trio_yastack.stack.OffloadPacket` frames the stack leaves partial.  ``tso``: the
    port accepts TCP segments larger than the MTU (``max_tso_size`` bytes of IPv4 datagram at
    most, an ``OffloadPacket`` with ``gso_size``) and segments them; ``tso6``: TCP over IPv6 too
    (and completes IPv6 TCP checksums), which not every port that segments IPv4 does.
    """

    mac: MacAddress
    mtu: int = 1500
    rx_queues: int = 1
    tx_queues: int = 1
    max_burst: int = 32
    rx_checksum_offload: bool = False
    tx_checksum_offload: bool = False
    tso: bool = False
    tso6: bool = False
    max_tso_size: int = 0
    max_frame_len: int = field(default=0)

    def __post_init__(self) -> None:
        if self.max_frame_len == 0:
            # MTU plus an Ethernet header and one VLAN tag.
            object.__setattr__(self, "max_frame_len", self.mtu + 18)


@dataclass(frozen=True, slots=True)
class PortStatistics:
    """Port counters, named as ``struct rte_eth_stats``."""

    ipackets: int = 0
    opackets: int = 0
    ibytes: int = 0
    obytes: int = 0
    imissed: int = 0  # received frames dropped because the receive queue was full
    ierrors: int = 0  # received frames dropped as erroneous by the port itself
    oerrors: int = 0  # frames the port failed to transmit


class PortCounters:
    """The mutable counters behind :class:`PortStatistics` (hot path: plain attributes)."""

    __slots__ = ("ibytes", "ierrors", "imissed", "ipackets", "obytes", "oerrors", "opackets")

    def __init__(self) -> None:
        self.ipackets = self.opackets = self.ibytes = self.obytes = 0
        self.imissed = self.ierrors = self.oerrors = 0

    def snapshot(self) -> PortStatistics:
        return PortStatistics(
            self.ipackets, self.opackets, self.ibytes, self.obytes, self.imissed, self.ierrors, self.oerrors
        )


class Port(abc.ABC):
    """A NIC port.  Queue numbers run from 0 to ``capabilities.rx_queues - 1`` (and tx)."""

    name: str = "port"

    @property
    @abc.abstractmethod
    def capabilities(self) -> PortCapabilities: ...

    @abc.abstractmethod
    def rx_burst(self, queue: int, max_n: int) -> list[bytes]:
        """Take up to ``max_n`` received frames from ``queue`` without blocking."""

    @abc.abstractmethod
    def tx_burst(self, queue: int, frames: Sequence[bytes]) -> int:
        """Hand frames to ``queue`` for transmission without blocking.

        Returns how many of the first frames were accepted; the caller still owns the rest
        (DPDK semantics).  A frame longer than ``max_frame_len`` (and not a TSO frame the port
        takes) is not sent: it is counted in ``oerrors`` and counts as accepted.
        """

    @abc.abstractmethod
    async def wait_rx(self, queue: int) -> None:
        """Return once ``queue`` may have frames to take (spurious returns are allowed).

        The runtime's idle wait: put a deadline around it (``trio.move_on_at``) to wake for
        timers too.
        """

    @abc.abstractmethod
    def statistics(self) -> PortStatistics:
        """A snapshot of the port's counters."""

    def close(self) -> None:  # noqa: B027 - ports without resources need no close
        """Release the port's resources (files, devices)."""

    def __enter__(self) -> Port:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class PortWrapper(Port):
    """A port that passes everything to an inner port; subclasses override what they observe."""

    def __init__(self, inner: Port) -> None:
        self.inner = inner
        self.name = inner.name

    @property
    def capabilities(self) -> PortCapabilities:
        return self.inner.capabilities

    def rx_burst(self, queue: int, max_n: int) -> list[bytes]:
        return self.inner.rx_burst(queue, max_n)

    def tx_burst(self, queue: int, frames: Sequence[bytes]) -> int:
        return self.inner.tx_burst(queue, frames)

    async def wait_rx(self, queue: int) -> None:
        await self.inner.wait_rx(queue)

    def statistics(self) -> PortStatistics:
        return self.inner.statistics()

    def close(self) -> None:
        self.inner.close()
