"""TCP's eleven states (RFC 9293 3.3.2; FreeBSD's ``tcp_fsm.h``) and the sets of them the code tests.

``TcpState`` is the public name; the plain ``int`` constants are what the connection stores and
compares on the hot path (an ``IntEnum`` member lookup costs more than a module global).
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "CLOSED",
    "CLOSE_WAIT",
    "CLOSING",
    "ESTABLISHED",
    "FIN_WAIT_1",
    "FIN_WAIT_2",
    "LAST_ACK",
    "LISTEN",
    "RECEIVES_DATA",
    "SENDS_DATA",
    "SYNCHRONIZED",
    "SYN_RECEIVED",
    "SYN_SENT",
    "TIME_WAIT",
    "TcpState",
]


class TcpState(IntEnum):
    CLOSED = 0
    LISTEN = 1
    SYN_SENT = 2
    SYN_RECEIVED = 3
    ESTABLISHED = 4
    CLOSE_WAIT = 5
    FIN_WAIT_1 = 6
    CLOSING = 7
    LAST_ACK = 8
    FIN_WAIT_2 = 9
    TIME_WAIT = 10


CLOSED, LISTEN, SYN_SENT, SYN_RECEIVED, ESTABLISHED, CLOSE_WAIT = range(6)
FIN_WAIT_1, CLOSING, LAST_ACK, FIN_WAIT_2, TIME_WAIT = range(6, 11)
#: both SYNs exchanged and acknowledged (RFC 9293 "synchronized states")
SYNCHRONIZED = frozenset({ESTABLISHED, CLOSE_WAIT, FIN_WAIT_1, CLOSING, LAST_ACK, FIN_WAIT_2, TIME_WAIT})
#: the peer may still send data (its FIN has not arrived)
RECEIVES_DATA = frozenset({ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2})
#: we may still queue data (the application has not shut down writing)
SENDS_DATA = frozenset({ESTABLISHED, CLOSE_WAIT})
