"""Why a layer dropped a frame: one registry of reasons per layer, the names of its drop counters.

Each layer counts a refused or lost frame under a reason (``stats.drop(TcpDrop.PAWS)``), and users
and tests read the counters by those strings (``statistics().tcp.dropped["paws"]``, ``netstat -s``
style in ``format()``).  The reasons are named here, as constants, so that the type checker
refuses a misspelt one and the counters cannot grow a key by accident: ``drop()`` checks a reason
the first time a layer counts it (see ``_stats.py``), which costs nothing on the next drops.  The
reasons a layer's parser gives (:class:`~trio_yastack.stack.wire.WireReason`) are in its registry
too, since ``exc.reason`` becomes the counter.

The sets beside the constants sort the reasons for the counters' arithmetic (what
``tests/helpers.py``'s accounting oracle adds up): which are about sending rather than a received
frame, which are a layer's own refusals before it hands a frame on.
"""

from __future__ import annotations

from typing import Final

from .wire._errors import WireReason as W

__all__ = [
    "ArpDrop", "EtherDrop", "Icmp6Drop", "IcmpDrop", "Ip6Drop", "IpDrop", "Nd6Drop", "TcpDrop", "UdpDrop",
    "registered",
]  # fmt: skip


def registered(registry: type) -> frozenset[str]:
    """Every reason a registry class names (its upper-case string constants)."""
    return frozenset(
        value for name, value in vars(registry).items() if name.isupper() and isinstance(value, str)
    )


class EtherDrop:
    """``ether_input``'s reasons, and ``ether_output``'s and the runtime's ``tx_burst``'s."""

    TOO_SHORT: Final = W.TOO_SHORT  # shorter than an Ethernet header (or cut in a VLAN tag)
    NOT_FOR_US: Final = "not_for_us"  # another station's unicast address
    TOO_MANY_TAGS: Final = W.TOO_MANY_TAGS
    UNKNOWN_VLAN: Final = "unknown_vlan"  # only priority-tagged frames (VLAN 0) are ours
    UNKNOWN_ETHERTYPE: Final = "unknown_ethertype"
    NOT_ETHERNET_II: Final = W.NOT_ETHERNET_II  # an 802.3 length where the type should be
    OUTBOX_FULL: Final = "outbox_full"
    TX_REFUSED: Final = "tx_refused"  # the port took fewer frames than the burst held
    #: about sending, not about a received frame
    OUTPUT: Final = frozenset({OUTBOX_FULL, TX_REFUSED})


class ArpDrop:
    """``arp_input``'s reasons, and those of resolution on the way out (``arpresolve``)."""

    TOO_SHORT: Final = W.TOO_SHORT
    BAD_FORMAT: Final = W.BAD_FORMAT  # not Ethernet/IPv4
    BAD_OPERATION: Final = W.BAD_OPERATION  # neither request nor reply
    OWN_FRAME: Final = "own_frame"  # our own request, looped back by a switch or a tee
    BAD_SENDER_MAC: Final = "bad_sender_mac"  # a group address is never a station's
    ADDRESS_CONFLICT: Final = "address_conflict"  # someone else claims our address
    CACHE_EVICTED: Final = "cache_evicted"  # a full cache let an entry (and its held packet) go
    TOO_MANY_PENDING: Final = "too_many_pending"
    HOLD_QUEUE_FULL: Final = "hold_queue_full"
    UNRESOLVED: Final = "unresolved"  # held for an address that never answered
    #: about sending, not about a received frame
    OUTPUT: Final = frozenset({TOO_MANY_PENDING, HOLD_QUEUE_FULL, UNRESOLVED, CACHE_EVICTED})


class IpDrop:
    """``ip_input``'s reasons, reassembly's, and ``ip_output``'s."""

    TOO_SHORT: Final = W.TOO_SHORT
    BAD_VERSION: Final = W.BAD_VERSION
    BAD_HEADER_LENGTH: Final = W.BAD_HEADER_LENGTH
    BAD_LENGTH: Final = W.BAD_LENGTH
    BAD_CHECKSUM: Final = W.BAD_CHECKSUM
    NOT_FOR_US: Final = "not_for_us"  # a host does not forward (multicast lands here too)
    BAD_SOURCE: Final = "bad_source"  # martian: ours, broadcast, multicast/class E or loopback
    BAD_TTL: Final = "bad_ttl"  # RFC 1122 3.2.1.7: a host never sends TTL 0
    UNKNOWN_PROTOCOL: Final = "unknown_protocol"
    # reassembly (RFC 791, RFC 815), each losing a fragment or a whole datagram
    BAD_FRAGMENT: Final = "bad_fragment"
    FRAGMENT_TOO_LARGE: Final = "fragment_too_large"
    DUPLICATE_FRAGMENT: Final = "duplicate_fragment"
    OVERLAPPING_FRAGMENT: Final = "overlapping_fragment"
    TOO_MANY_FRAGMENTS: Final = "too_many_fragments"
    REASSEMBLY_MEMORY: Final = "reassembly_memory"
    REASSEMBLY_EVICTED: Final = "reassembly_evicted"
    REASSEMBLY_TIMEOUT: Final = "reassembly_timeout"
    # output
    NO_ROUTE: Final = "no_route"
    TOO_BIG: Final = "too_big"
    CANNOT_FRAGMENT: Final = "cannot_fragment"
    LOOPBACK_FULL: Final = "loopback_full"
    #: ``ip_input``'s own refusals, before reassembly or demultiplexing
    HEADER: Final = frozenset(
        {TOO_SHORT, BAD_VERSION, BAD_HEADER_LENGTH, BAD_LENGTH, BAD_CHECKSUM, NOT_FOR_US, BAD_SOURCE, BAD_TTL}
    )
    #: about sending, not about a received datagram
    OUTPUT: Final = frozenset({NO_ROUTE, TOO_BIG, CANNOT_FRAGMENT, LOOPBACK_FULL})


class IcmpDrop:
    """``icmp_input``'s reasons (echo, errors for the transports)."""

    TOO_SHORT: Final = W.TOO_SHORT
    BAD_CHECKSUM: Final = W.BAD_CHECKSUM
    UNKNOWN_TYPE: Final = "unknown_type"
    BROADCAST_ECHO: Final = "broadcast_echo"
    NO_ROUTE_BACK: Final = "no_route_back"
    NO_ECHO_ENDPOINT: Final = "no_echo_endpoint"
    ECHO_QUEUE_FULL: Final = "echo_queue_full"
    IGNORED_TYPE: Final = "ignored_type"  # redirects (a host with one route) and source quench
    BAD_QUOTE: Final = "bad_quote"  # an error whose quoted header is not one of ours
    ERROR_NO_SOCKET: Final = "error_no_socket"
    #: the message could not be parsed
    PARSE: Final = frozenset({TOO_SHORT, BAD_CHECKSUM})
    #: an error message (destination unreachable, time exceeded...) not delivered to a transport
    ERROR_INPUT: Final = frozenset({IGNORED_TYPE, BAD_QUOTE, ERROR_NO_SOCKET})


class UdpDrop:
    """``udp_input``'s reasons."""

    TOO_SHORT: Final = W.TOO_SHORT
    BAD_LENGTH: Final = W.BAD_LENGTH
    BAD_CHECKSUM: Final = W.BAD_CHECKSUM
    BAD_PORT: Final = W.BAD_PORT  # destination port 0
    NO_SOCKET: Final = "no_socket"  # answered with ICMP port unreachable
    SOCKET_BUFFER_FULL: Final = "socket_buffer_full"


class TcpDrop:
    """``tcp_input``'s reasons, the connections' (RFC 9293 3.10.7) and TCP output's."""

    TOO_SHORT: Final = W.TOO_SHORT
    BAD_HEADER_LENGTH: Final = W.BAD_HEADER_LENGTH
    BAD_CHECKSUM: Final = W.BAD_CHECKSUM
    BAD_OPTION: Final = W.BAD_OPTION
    NOT_UNICAST: Final = "not_unicast"  # TCP never answers broadcasts
    BAD_FLAGS: Final = "bad_flags"  # SYN+FIN, SYN+RST, or no SYN/ACK/RST at all
    BAD_PORT: Final = "bad_port"  # source or destination port 0
    NO_SOCKET: Final = "no_socket"  # answered with a RST (rate limited)
    # LISTEN (RFC 9293 3.10.7.2), the SYN and accept queues
    RST_TO_LISTENER: Final = "rst_to_listener"
    NO_SYN_TO_LISTENER: Final = "no_syn_to_listener"
    LISTEN_QUEUE_OVERFLOW: Final = "listen_queue_overflow"
    SYN_QUEUE_FULL: Final = "syn_queue_full"
    SYN_SHED: Final = "syn_shed"  # cookie mode and the port backlogged: the burst's SYN budget spent
    # SYN-SENT (3.10.7.3)
    BAD_ACK_IN_SYN_SENT: Final = "bad_ack_in_syn_sent"
    RST_WITHOUT_ACK_IN_SYN_SENT: Final = "rst_without_ack_in_syn_sent"
    NO_SYN_IN_SYN_SENT: Final = "no_syn_in_syn_sent"
    # the other states (3.10.7.4), in the order of its checks
    PAWS: Final = "paws"  # RFC 7323 5.3: an old timestamp
    RST_OUT_OF_WINDOW: Final = "rst_out_of_window"
    NO_ACK: Final = "no_ack"
    ACK_TOO_NEW: Final = "ack_too_new"  # RFC 5961 5.2: acknowledges data never sent
    DATA_AFTER_CLOSE: Final = "data_after_close"  # the application closed: reset
    DATA_AFTER_FIN: Final = "data_after_fin"
    RECEIVE_WINDOW_FULL: Final = "receive_window_full"
    REASSEMBLY_OVERFLOW: Final = "reassembly_overflow"
    OUT_OF_ORDER_QUEUE_FULL: Final = "out_of_order_queue_full"
    OUT_OF_ORDER_DUPLICATE: Final = "out_of_order_duplicate"
    ICMP_OUT_OF_WINDOW: Final = "icmp_out_of_window"  # RFC 5927 4.1: an ICMP error not about us
    # output and timers
    OUTPUT_ERROR: Final = "output_error"  # ip_output refused the segment (no route)
    RESET_RATE_LIMITED: Final = "reset_rate_limited"
    CHALLENGE_ACK_RATE_LIMITED: Final = "challenge_ack_rate_limited"  # RFC 5961 7
    FIN_WAIT_2_TIMEOUT: Final = "fin_wait_2_timeout"


# -- IPv6 ------------------------------------------------------------------------------------


class Ip6Drop:
    """``ip6_input``'s reasons (the header, the extension header walk), reassembly's (the same
    bounds as IPv4's, RFC 5722's overlap rule) and ``ip6_output``'s."""

    TOO_SHORT: Final = W.TOO_SHORT
    BAD_VERSION: Final = W.BAD_VERSION
    BAD_LENGTH: Final = W.BAD_LENGTH
    BAD_FORMAT: Final = W.BAD_FORMAT  # hop-by-hop options not first, a fragment inside a fragment
    BAD_OPTION: Final = W.BAD_OPTION  # an option whose type asks for discarding
    TOO_MANY_HEADERS: Final = W.TOO_MANY_HEADERS
    BAD_ROUTING_HEADER: Final = W.BAD_ROUTING_HEADER  # segments left (or type 0): we do not route
    NOT_FOR_US: Final = "not_for_us"  # not our address nor a group we joined (a host does not forward)
    BAD_SOURCE: Final = "bad_source"  # multicast, loopback, or ours from the wire
    TENTATIVE: Final = "tentative"  # to an address still under DAD (RFC 4862 5.4)
    UNKNOWN_PROTOCOL: Final = "unknown_protocol"  # answered with a parameter problem
    NO_NEXT_HEADER: Final = "no_next_header"  # next header 59: nothing to deliver
    # reassembly (RFC 8200 4.5, RFC 5722)
    BAD_FRAGMENT: Final = IpDrop.BAD_FRAGMENT
    FRAGMENT_TOO_LARGE: Final = IpDrop.FRAGMENT_TOO_LARGE
    DUPLICATE_FRAGMENT: Final = IpDrop.DUPLICATE_FRAGMENT
    OVERLAPPING_FRAGMENT: Final = IpDrop.OVERLAPPING_FRAGMENT
    TOO_MANY_FRAGMENTS: Final = IpDrop.TOO_MANY_FRAGMENTS
    REASSEMBLY_MEMORY: Final = IpDrop.REASSEMBLY_MEMORY
    REASSEMBLY_EVICTED: Final = IpDrop.REASSEMBLY_EVICTED
    REASSEMBLY_TIMEOUT: Final = IpDrop.REASSEMBLY_TIMEOUT
    # output
    NO_ROUTE: Final = "no_route"
    NO_SOURCE: Final = "no_source"  # no usable (non-tentative) address of the right scope
    TOO_BIG: Final = "too_big"
    LOOPBACK_FULL: Final = "loopback_full"
    #: ``ip6_input``'s own refusals, before reassembly or demultiplexing
    HEADER: Final = frozenset(
        {
            TOO_SHORT, BAD_VERSION, BAD_LENGTH, BAD_FORMAT, BAD_OPTION, TOO_MANY_HEADERS, BAD_ROUTING_HEADER,
            NOT_FOR_US, BAD_SOURCE, TENTATIVE,
        }
    )  # fmt: skip
    #: about sending, not about a received datagram
    OUTPUT: Final = frozenset({NO_ROUTE, NO_SOURCE, TOO_BIG, LOOPBACK_FULL})


class Icmp6Drop:
    """``icmp6_input``'s reasons (echo, errors for the transports); ND's are :class:`Nd6Drop`."""

    TOO_SHORT: Final = W.TOO_SHORT
    BAD_CHECKSUM: Final = W.BAD_CHECKSUM
    UNKNOWN_TYPE: Final = "unknown_type"
    MULTICAST_ECHO: Final = "multicast_echo"
    NO_ROUTE_BACK: Final = "no_route_back"
    NO_ECHO_ENDPOINT: Final = "no_echo_endpoint"
    ECHO_QUEUE_FULL: Final = "echo_queue_full"
    BAD_QUOTE: Final = "bad_quote"  # an error whose quoted header is not one of ours
    ERROR_NO_SOCKET: Final = "error_no_socket"
    #: the message could not be parsed
    PARSE: Final = frozenset({TOO_SHORT, BAD_CHECKSUM})
    #: an error message not delivered to a transport
    ERROR_INPUT: Final = frozenset({BAD_QUOTE, ERROR_NO_SOCKET})


class Nd6Drop:
    """``nd6_input``'s reasons (RFC 4861 7.1.x validity checks, DAD) and ``nd6_resolve``'s."""

    BAD_OPTION: Final = W.BAD_OPTION
    BAD_HOP_LIMIT: Final = "bad_hop_limit"  # not 255: the message crossed a router (RFC 4861 7.1)
    BAD_MESSAGE: Final = "bad_message"  # code not 0, too short, or a field RFC 4861 7.1 forbids
    BAD_TARGET: Final = "bad_target"  # multicast target, or not ours (NS)
    NOT_FROM_ROUTER: Final = "not_from_router"  # an RA whose source is not link-local
    IGNORED: Final = "ignored"  # router solicitations and redirects (a host's single default route)
    OWN_FRAME: Final = "own_frame"  # our own ND message looped back (a switch, a tee): never a conflict
    DAD_FAILED: Final = "dad_failed"  # another node claims an address we were testing (RFC 4862 5.4)
    ADDRESS_CONFLICT: Final = "address_conflict"  # an NA for an address we already use
    TOO_MANY_PREFIXES: Final = "too_many_prefixes"
    # the neighbour cache, on the way out
    CACHE_EVICTED: Final = "cache_evicted"
    HOLD_QUEUE_FULL: Final = "hold_queue_full"
    UNRESOLVED: Final = "unresolved"  # held for a neighbour that never answered
    #: about sending, not about a received message
    OUTPUT: Final = frozenset({CACHE_EVICTED, HOLD_QUEUE_FULL, UNRESOLVED})
