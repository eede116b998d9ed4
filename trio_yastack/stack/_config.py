"""Frozen configuration of one stack instance (one per core).

Defaults follow FreeBSD's sysctls where one exists (named in each field's comment), so a user
comparing with F-Stack/YAStack finds the same behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Interface

from .wire import MacAddress

__all__ = [
    "ArpConfig",
    "IcmpConfig",
    "InterfaceConfig",
    "Ip6Config",
    "IpConfig",
    "StackConfig",
    "TcpConfig",
    "UdpConfig",
]


@dataclass(frozen=True, slots=True)
class InterfaceConfig:
    """The one interface a stack instance serves."""

    mac: MacAddress
    address: IPv4Address
    prefix_len: int = 24
    gateway: IPv4Address | None = None
    mtu: int = 1500
    #: static IPv6 addresses with their prefixes (``2001:2::2/64``); any, or ``StackConfig.ip6``
    #: enabled, turns IPv6 on (with a link-local address from the MAC)
    addresses6: tuple[IPv6Interface, ...] = ()

    def __post_init__(self) -> None:
        if self.addresses6 and self.mtu < 1280:
            raise ValueError(f"MTU {self.mtu} is below IPv6's minimum 1280 (RFC 8200 5)")
        if not 0 <= self.prefix_len <= 32:
            raise ValueError(f"prefix length {self.prefix_len} is not in 0..32")
        if not 576 <= self.mtu <= 65535:
            raise ValueError(f"MTU {self.mtu} is outside 576..65535 (RFC 791 minimum 576)")
        if self.gateway is not None and self.gateway not in self.network:
            raise ValueError(f"gateway {self.gateway} is not on {self.network}")

    @property
    def network(self) -> IPv4Network:
        return IPv4Network(f"{self.address}/{self.prefix_len}", strict=False)


@dataclass(frozen=True, slots=True)
class ArpConfig:
    max_age: float = 1200.0  # net.link.ether.inet.max_age
    request_interval: float = 1.0  # one request a second while resolving
    max_requests: int = 5  # net.link.ether.inet.maxtries
    hold_limit: int = 16  # net.link.ether.inet.maxhold: packets held per unresolved address
    pending_limit: int = 256  # addresses being resolved at once
    cache_limit: int = 4096  # entries; the least recently confirmed is evicted beyond it
    refresh_before: float = 5.0  # re-ask this long before an entry in use expires
    gratuitous_at_start: bool = True


@dataclass(frozen=True, slots=True)
class IpConfig:
    default_ttl: int = 64  # net.inet.ip.ttl
    reassembly_timeout: float = 30.0  # RFC 1122 suggests 60-120 s; FreeBSD and Linux use 30
    reassembly_max_datagrams: int = 256  # datagrams being reassembled at once
    reassembly_max_fragments: int = 64  # fragments per datagram (net.inet.ip.maxfragsperpacket)
    reassembly_memory_limit: int = 4 * 1024 * 1024  # bytes held in all reassembly queues
    loopback_limit: int = 1024  # datagrams to our own address waiting for the next poll


@dataclass(frozen=True, slots=True)
class Ip6Config:
    """IPv6 and Neighbor Discovery (RFC 4861 10's constants, RFC 4862's DAD and SLAAC)."""

    enabled: bool = False  # IPv6 on even without a static address (link-local, SLAAC from RAs)
    gateway: IPv6Address | None = None  # a static default router (else RAs give one)
    default_hop_limit: int = 64  # net.inet6.ip6.hlim
    max_extension_headers: int = 8  # a longer chain is dropped (RFC 8200 leaves the bound to hosts)
    dad_transmits: int = 1  # net.inet6.ip6.dad_count; 0: addresses are usable at once
    accept_ra: bool = True  # take prefixes and a default router from router advertisements
    router_solicitations: int = 3  # MAX_RTR_SOLICITATIONS at start (none with a static gateway)
    router_solicitation_interval: float = 4.0  # RTR_SOLICITATION_INTERVAL
    retrans_timer: float = 1.0  # RETRANS_TIMER: between solicitations
    reachable_time: float = 30.0  # REACHABLE_TIME
    delay_first_probe: float = 5.0  # DELAY_FIRST_PROBE_TIME
    max_multicast_solicit: int = 3
    max_unicast_solicit: int = 3
    hold_limit: int = 16  # packets held per unresolved neighbour
    neighbor_limit: int = 4096  # neighbour cache entries; the oldest goes beyond it
    pmtu_limit: int = 1024  # path MTUs remembered (from Packet Too Big)
    pmtu_expiry: float = 600.0  # RFC 8201 5.3: try the link MTU again after 10 minutes
    prefix_limit: int = 16  # on-link prefixes and SLAAC addresses from RAs
    mld: bool = True  # MLDv2 reports of our groups (RFC 3810), so snooping switches forward them
    # reassembly: the same bounds as IPv4's (IpConfig)


@dataclass(frozen=True, slots=True)
class IcmpConfig:
    error_rate_limit: float = 200.0  # net.inet.icmp.icmplim: errors per second
    error_burst: int = 50  # token-bucket depth
    reply_to_broadcast_echo: bool = False  # net.inet.icmp.bmcastecho
    quote_len: int = 548  # bytes of the offending datagram quoted (net.inet.icmp.quotelen)
    echo_queue_limit: int = 1024  # replies waiting per echo endpoint


@dataclass(frozen=True, slots=True)
class UdpConfig:
    receive_queue_bytes: int = 212_992  # per socket (Linux rmem_default)
    receive_queue_datagrams: int = 4096  # per socket
    ephemeral_first: int = 49152  # net.inet.ip.portrange.first
    ephemeral_last: int = 65535  # net.inet.ip.portrange.last


@dataclass(frozen=True, slots=True)
class TcpConfig:
    send_buffer: int = 256 * 1024  # bytes per connection (SO_SNDBUF)
    receive_buffer: int = 256 * 1024  # bytes per connection (SO_RCVBUF); also bounds out-of-order data
    window_scaling: bool = True  # RFC 7323
    timestamps: bool = True  # RFC 7323 (RTTM and PAWS)
    sack: bool = True  # RFC 2018 / RFC 6675
    default_mss: int = 536  # the peer's MSS when its SYN carries none (RFC 9293 3.7.1)
    rto_initial: float = 1.0  # RFC 6298 2.1
    rto_min: float = 0.2  # RFC 6298 says 1 s (set 1.0 for it); Linux uses 200 ms, FreeBSD 30 ms
    rack: bool = True  # RACK-TLP loss detection (RFC 8985) with SACK; off: RFC 6675 alone, no TLP
    frto: bool = True  # F-RTO (RFC 5682): detect and undo spurious retransmission timeouts
    rto_max: float = 60.0
    syn_retries: int = 6  # net.ipv4.tcp_syn_retries: connect gives up after 1+2+...+32+60 = 123 s
    synack_retries: int = 5
    data_retries: int = 15  # net.ipv4.tcp_retries2: consecutive timeouts before ETIMEDOUT
    delayed_ack: float = 0.1  # net.inet.tcp.delacktime; 0 acknowledges every segment at once
    msl: float = 30.0  # net.inet.tcp.msl: TIME_WAIT lasts 2*MSL
    keepalive_idle: float = 7200.0
    keepalive_interval: float = 75.0
    keepalive_count: int = 8
    user_timeout: float = 0.0  # RFC 9293 3.8.3; 0 is off
    fin_wait_2_timeout: float = 60.0  # net.ipv4.tcp_fin_timeout, for connections the user closed
    congestion_control: str = "cubic"
    nodelay: bool = False  # Nagle on by default, as kernels
    syn_queue_limit: int = 256  # half-open connections per listener before SYN cookies
    syncookies: bool = True
    #: in cookie mode, the SYNs answered per rx burst while the port is backlogged (the rest are
    #: dropped, counted ``syn_shed``: a flood must not crowd established flows out of the port)
    syncookie_burst_budget: int = 16
    max_backlog: int = 4096  # the most a listen() may ask for (somaxconn)
    max_connections: int = 65536  # connections of all states per stack instance
    time_wait_limit: int = 16384  # beyond it the oldest TIME_WAIT is recycled (tcp_max_tw_buckets)
    reset_rate_limit: float = 200.0  # RSTs per second for segments to closed ports
    ephemeral_first: int = 49152
    ephemeral_last: int = 65535

    def __post_init__(self) -> None:
        if not 0.0 < self.rto_min <= self.rto_max:
            raise ValueError(f"rto_min {self.rto_min} must be above 0 and at most rto_max {self.rto_max}")


@dataclass(frozen=True, slots=True)
class StackConfig:
    interface: InterfaceConfig
    arp: ArpConfig = field(default_factory=ArpConfig)
    ip: IpConfig = field(default_factory=IpConfig)
    ip6: Ip6Config = field(default_factory=Ip6Config)
    icmp: IcmpConfig = field(default_factory=IcmpConfig)
    udp: UdpConfig = field(default_factory=UdpConfig)
    tcp: TcpConfig = field(default_factory=TcpConfig)
    outbox_limit: int = 8192  # frames waiting for the next tx_burst
    #: verify received checksums, except in frames the port marked ChecksumVerified; off only
    #: when the port verified every frame it hands up
    verify_checksums: bool = True
    #: TCP data segments leave their checksum to the port (CHECKSUM_PARTIAL)
    tx_checksum_offload: bool = False
    #: the largest IPv4 datagram carrying one TCP segment that the port segments (TSO); 0: no TSO
    tso_max_size: int = 0
    #: the port segments (and checksums) TCP over IPv6 too (with ``tso_max_size``); without, a
    #: TCP/IPv6 segment larger than the MTU is cut in software (``tcp._tcp6``)
    tso6: bool = False
    #: generic segmentation offload: TCP builds segments of up to 64 KB whatever the port, and
    #: when the port has no TSO they are cut into MSS-sized frames in software (native/gso.c)
    #: at the bottom of ether_output, as Linux's GSO does: the layers above run once per 64 KB
    gso: bool = True

    def __post_init__(self) -> None:
        if self.tso_max_size and not self.tx_checksum_offload:
            raise ValueError("TSO needs transmit checksum offload (each segment's checksum is the port's)")
        if not (self.tso_max_size == 0 or self.interface.mtu < self.tso_max_size <= 0xFFFF):
            raise ValueError(f"tso_max_size {self.tso_max_size} must be 0 or above the MTU and at most 65535")
