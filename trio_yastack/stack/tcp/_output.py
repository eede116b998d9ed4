"""TCP output (FreeBSD's ``tcp_output.c``): what the windows allow goes out, as segments built here.

``tcp_output`` decides (new data within min(SND.WND, cwnd), Nagle and sender SWS avoidance, a FIN,
a SYN, an ACK that is due, SACK-based retransmission during recovery) and the ``_send_*`` methods
build: ``_send_segment`` is the general builder (options, SACK blocks, TSO), ``_send_bare_ack`` and
``_send_data_segment`` pack the two segments a bulk transfer sends most in one ``pack_into`` each.
Every segment leaves through :func:`tcp_checksum_and_send` -> ``ip_output``, except where the fast
path (``StackCore.fast_path``) predicts the common case: ``_output_predicted`` sends a response's
one segment without the general loop (``_output_fin_predicted`` a closing connection's last one,
with its FIN), and ``_frame_predicted`` writes a data segment's whole frame (Ethernet, IPv4, TCP)
in one step to an on-link peer -- each the same frame and counters as the general code, which the
differential tests in ``tests/test_tcp_fastpath.py`` and ``tests/test_tcp_conn_cycle.py`` hold
them to.

Each function here is a method of :class:`~trio_yastack.stack.tcp._conn.TcpConnection`, bound in
its class body (``self`` is the connection).  ``trio_yastack._journey`` traces ``tcp_output`` by
overriding it in a subclass, so its name and signature are fixed.
"""

from __future__ import annotations

import errno
import functools
import struct
from typing import TYPE_CHECKING

from .._drops import TcpDrop
from .._ip import FRAME_HEADROOM
from .._offload import OffloadPacket
from ..wire._checksum import sum16
from ..wire.ethernet import ETHERTYPE_IPV4
from ..wire.ipv4 import IP_DF, IPPROTO_TCP
from ..wire.tcp import TCP_ACK, TCP_FIN, TCP_HEADER, TCP_HEADER_LEN, TCP_PSH, TCP_RST, TCP_SYN, TcpOptions
from ._buffers import NO_REASSEMBLY
from ._cc import INFINITE_SSTHRESH
from ._rack import RACKED, REXMT_RTO, REXMT_TLP_LONE
from ._states import CLOSED, ESTABLISHED, SYN_RECEIVED, SYN_SENT, TIME_WAIT

if TYPE_CHECKING:
    from .._core import StackCore
    from .._stats import TcpStats
    from ._conn import TcpConnection

__all__ = ["MAX_WINDOW_SHIFT", "tcp_checksum_and_send", "tcp_output", "window_shift_for"]

_MASK = 0xFFFFFFFF
_TS_OPTION = struct.Struct("!III")  # NOP NOP kind=8 len=10, TSval, TSecr
_U32X2 = struct.Struct("!II")
_ACK_WITH_TIMESTAMPS = struct.Struct("!HHIIBBHHHIII")  # a TCP header and NOP NOP TS in one
#: Ethernet, IPv4 (no options) and that TCP header in one: a whole frame's headers
_FRAME_WITH_TIMESTAMPS = struct.Struct("!6s6sH" + "BBHHHBBHII" + "HHIIBBHHHIII")
#: Ethernet and IPv4 (no options) headers in one: the frame of any TCP segment already packed
_ETHER_IPV4 = struct.Struct("!6s6sH" + "BBHHHBBHII")
#: a SYN (or SYN-ACK) header with every option in Linux's layout: MSS; SACK-permitted and
#: timestamps; NOP and window scale (``TcpOptions.emit_into``'s order) -- 40 bytes
_SYN_WITH_OPTIONS = struct.Struct("!HHIIBBHHH" + "HH" + "IIIBBBB")
_SYN_MSS_KIND = 0x0204  # kind 2, length 4
_SYN_SACK_TS_KIND = 0x0402080A  # SACK-permitted (kind 4, length 2), then timestamps (kind 8, length 10)
#: the largest window shift RFC 7323 2.3 allows
MAX_WINDOW_SHIFT = 14


@functools.lru_cache(maxsize=64)
def window_shift_for(buffer: int) -> int:
    """The smallest shift that lets a 16-bit window field cover ``buffer`` bytes (at most 14):
    the RCV.WIND.SHIFT we offer in a SYN (RFC 7323 2.2).  Remembered per size (a passive open
    asks it for the same buffer every time)."""
    shift = 0
    while shift < MAX_WINDOW_SHIFT and (0xFFFF << shift) < buffer:
        shift += 1
    return shift


def tcp_checksum_and_send(
    core: StackCore, stats: TcpStats, packet: bytearray, tcp_len: int, dst: int, now: float
) -> int:
    """Fill in the checksum of the TCP segment at ``FRAME_HEADROOM`` and hand it to
    ``ip_output``; returns 0, or the errno of a routing failure (counted as ``output_error``)."""
    local_ip = core.ip
    pseudo = (local_ip >> 16) + (local_ip & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + IPPROTO_TCP + tcp_len
    if packet.__class__ is OffloadPacket:
        # CHECKSUM_PARTIAL: the field holds the folded pseudo-header sum, not complemented, and
        # the port completes it (for a TSO segment, per segment, adjusting the length as
        # Linux's tcp_gso_segment does; software GSO computes each segment's whole).
        pseudo = (pseudo & 0xFFFF) + (pseudo >> 16)
        field = (pseudo & 0xFFFF) + (pseudo >> 16)
        gso_size = packet.gso_size
        if gso_size:  # count the segments the wire will carry, as Linux counts OutSegs
            payload = tcp_len - ((packet[FRAME_HEADROOM + 12] >> 4) << 2)
            stats.segments_sent += (payload + gso_size - 1) // gso_size - 1
    else:
        field = ~sum16(packet, FRAME_HEADROOM, tcp_len, pseudo) & 0xFFFF
    packet[FRAME_HEADROOM + 16] = field >> 8
    packet[FRAME_HEADROOM + 17] = field & 0xFF
    stats.segments_sent += 1
    try:
        core.ip_layer.ip_output(packet, IPPROTO_TCP, dst, now)
    except OSError as exc:
        stats.drop(TcpDrop.OUTPUT_ERROR)
        return exc.errno or errno.EHOSTUNREACH
    return 0


def tcp_output(self: TcpConnection, now: float, *, limited_transmit: bool = False) -> None:
    """Send what the windows allow: new data, a FIN, a SYN, or an ACK that is due."""
    state = self.state
    if state in (CLOSED, TIME_WAIT):
        return
    if state in (SYN_SENT, SYN_RECEIVED):
        if self.snd_nxt == self.iss:
            self._send_syn(now)
        elif self.ack_now:
            self._send_segment(self.snd_nxt, TCP_ACK, b"", now)
        return
    sndbuf = self.sndbuf
    if (
        not self.ack_now
        and not self.in_recovery
        and self.snd_nxt >= sndbuf.end
        and (self.fin_seq < 0 or self.snd_nxt > self.fin_seq)
    ):
        return  # the common case on a receiver: nothing to send and no ACK due
    if self.snd_nxt >= sndbuf.end and self.fin_seq < 0 and not self.in_recovery and self.core.fast_path:
        # A receiver's ACK that is due (so ack_now), nothing of ours to send: a bulk receiver's
        # every turn.  What the general loop below decides for it, without its set-up: no FIN
        # queued means SND.MAX <= the buffer's end, so SND.NXT == SND.MAX (no go-back-N), the
        # loop finds no length, and the ACK leaves; no persist timer with nothing queued.
        if self.last_send and now - self.last_send > self.rto and self.snd_max == self.snd_una:
            self.cc.on_idle_restart(now, self.rto, now - self.last_send)
        self._send_segment(self.snd_nxt, TCP_ACK, b"", now)
        return
    if state == ESTABLISHED and not limited_transmit and self.core.fast_path and self._output_predicted(now):
        return  # the common case on a sender: one segment, all that is queued, and room for it
    if self.fin_seq >= 0 and not limited_transmit and self.core.fast_path and self._output_fin_predicted(now):
        return  # a closing connection's last segment: the rest of the data with the FIN, or the FIN
    mss = self._data_mss()
    # With TSO one frame carries as many whole segments as the port takes (less room for
    # the IPv4 and TCP headers with every option); the port cuts it into ``mss`` pieces.
    gso_max = self.core.gso_max_size
    burst = mss * max((gso_max - 100) // mss, 1) if gso_max else mss
    cc = self.cc
    if burst > 2 * mss and cc.ssthresh < INFINITE_SSTHRESH:
        # TSO autosizing once the path has lost something (Linux's tcp_tso_autosize sizes by
        # pacing rate, always): at least two frames per window, so that one frame lost is not
        # the whole flight -- a tail loss with nothing behind it to be SACKed, which only the
        # probe or the timer can repair.  Not more: where frames are lost whole (a TAP, a
        # bridge), each frame is a loss event, and four per window made NewReno halve cwnd
        # three to four times as often as Linux's Reno with its 64 KB frames (issue 19).
        # A path that never lost keeps the largest frames.  Half rounded up to whole segments:
        # rounded down, two frames of it left one or two segments of cwnd over, which went as
        # a third frame of a segment or two after every ACK that let the window out (one frame
        # in twelve of a bulk sender at 0.5 % loss through a TAP, each costing a whole frame's
        # path on both sides).
        half = (cc.cwnd + 2 * mss - 1) // (2 * mss) * mss
        if half < burst:
            burst = half if half > 2 * mss else 2 * mss
    if self.last_send and now - self.last_send > self.rto and self.snd_max == self.snd_una:
        cc.on_idle_restart(now, self.rto, now - self.last_send)
    sent_any = False
    data_end = sndbuf.end  # sending never changes it
    in_recovery = self.in_recovery
    sack_recovery = in_recovery and self.sack_on
    # Recovery without SACK (PRR, _rack.reno_*): the duplicate ACKs counted left the network, so
    # cwnd (pipe + PRR's sndcnt) is measured against the flight less them, RFC 6937's pipe.
    reno_recovery = in_recovery and not sack_recovery
    reno_delivered = self.dupacks * self.mss if reno_recovery else 0
    rack = self.rack
    pipe = rack.pipe() if sack_recovery and rack is not None else 0
    hint = 0  # the entry of the sent log to look for the next loss from
    sacked_at = -1  # going back N: where the next SACKed entry begins (-1: none)
    for _ in range(64):  # bounded work per call; the next ACK or the poll loop continues
        if sack_recovery and rack is not None:
            # RACK / RFC 6675 from the sent log: lost entries first, within cwnd - pipe (the
            # cwnd PRR set, RFC 6937), then new data.
            if cc.cwnd - pipe < mss:
                break
            index = rack.next_lost(hint)
            if index >= 0:
                start, end, flags = rack.span(index)
                # TSO-aware: a lost TSO segment goes again in as few segments as cwnd allows.
                length = min(end - start, burst, max((cc.cwnd - pipe) // mss, 1) * mss)
                self._retransmit(start, now, length)
                if flags & RACKED:
                    self.stats.rack_retransmits += 1
                pipe += length
                self.prr_out += length
                hint = index + 1
                sent_any = True
                continue
            flight = pipe
        elif sack_recovery:
            # RFC 6675 alone (config.rack off): retransmit lost holes first, within cwnd - pipe.
            pipe = self.scoreboard.pipe(self.snd_una, self.snd_max, self.high_rxt, mss)
            if cc.cwnd - pipe < mss:
                break
            hole = self.scoreboard.next_seg(self.snd_una, self.snd_max, self.high_rxt, mss)
            if hole is not None:
                self._retransmit(hole[0], now, hole[1] - hole[0])
                sent_any = True
                continue
            flight = pipe
        else:
            sacked_at = -1
            if self.snd_nxt < self.snd_max and rack is not None:
                # Going back N after an RTO: what the receiver SACKed since is not sent again
                # (Linux's loss state retransmits only what is marked lost).
                self.snd_nxt, sacked_at = rack.unsacked_from(self.snd_nxt)
            flight = self.snd_nxt - self.snd_una - reno_delivered
        window = min(self.snd_wnd, cc.cwnd)
        if limited_transmit:
            if sent_any:
                break  # RFC 3042: one new segment per duplicate ACK
            window = min(self.snd_wnd, cc.cwnd + 2 * mss)
        available = data_end - self.snd_nxt
        room = window - flight if not sack_recovery else cc.cwnd - flight
        room = min(room, self.snd_una + self.snd_wnd - self.snd_nxt)
        length = min(available, burst, room) if room > 0 else 0
        if (
            length == available
            and 0 < length < burst
            and (self.tx_gen == self.core.tx_gen or (sndbuf.nospace and sndbuf._size < sndbuf.limit))
            and self.core.cork_tails
            and self.fin_seq < 0
            and (length >= mss or self.nodelay or self.snd_nxt == self.snd_una)  # else Nagle holds it
        ):
            # Autocorking (Linux's tcp_autocorking, and its TSO deferral): the rest of the queue,
            # less than a full frame, waits while a frame of ours is still in the outbox; the
            # application's next write, made while the poll loop turns, joins it in a full
            # frame, and the loop sends it a turn or two later (``StackCore.release_corked``),
            # never after it sleeps, if none comes.  A 64 KiB write was a full TSO frame and a
            # 376-byte one, each costing the whole path on both sides.  Likewise, with no frame
            # of ours in the outbox, while the writer waits for room (``sndbuf.nospace``) and
            # there is room: the ACK that made it woke the writer, and its write joins the tail
            # (with no room, nothing would wake it before the release).  A bulk sender with
            # its send buffer full otherwise sent the buffer's remainder beyond whole frames as
            # a frame of one segment whenever an ACK caught it up (8-9 % of its frames).
            # (Linux's sendmsg fills whole 64 KB skbs, and sends the queue's tail when it waits
            # for room; the tail then still grows until a TX completion, tcp_autocorking.)
            core = self.core
            core.corked[self] = core.tx_gen
            self.stats.autocorked += 1
            break
        if length > mss and length % mss:
            # A large (TSO/GSO) segment carries whole segments; its short tail goes too only
            # where Nagle would let it: with TCP_NODELAY or a FIN after it (Linux's
            # tcp_mss_split_point), otherwise it waits like any short segment.
            fin_after = self.fin_seq >= 0 and self.snd_nxt + length == self.fin_seq
            if length < available or not (self.nodelay or fin_after):
                length -= length % mss
        if sacked_at >= 0 and self.snd_nxt + length > sacked_at:
            length = sacked_at - self.snd_nxt  # up to what the receiver holds
        fin_due = self.fin_seq >= 0 and self.snd_nxt + max(length, 0) == self.fin_seq
        # Nagle (RFC 896) and sender-side SWS avoidance (RFC 9293 3.8.6.2.1).
        if 0 < length < mss and not fin_due:
            if available > length:
                # Window-limited: wait unless the sliver is half the largest window seen.
                length = length if length >= self.max_sndwnd // 2 else 0
            elif not self.nodelay and self.snd_nxt > self.snd_una:
                length = 0
        if length > 0:
            flags = TCP_ACK | (TCP_PSH if self.snd_nxt + length == data_end else 0)
            if fin_due and self.snd_nxt + length == self.fin_seq:
                flags |= TCP_FIN
            if self.snd_nxt < self.snd_max:
                self.stats.rto_retransmits += 1  # going back N after a timeout
            self._send_data(self.snd_nxt, length, flags, now)
            if sack_recovery:
                pipe += length
                self.prr_out += length
            elif reno_recovery:
                self.prr_out += length
            sent_any = True
            continue
        if (
            fin_due
            and self.snd_nxt == self.fin_seq
            and (self.snd_max <= self.fin_seq or self.snd_nxt < self.snd_max)
        ):
            self._send_data(self.snd_nxt, 0, TCP_ACK | TCP_FIN, now)
            sent_any = True
            continue
        break
    if self.ack_now and not sent_any:
        self._send_segment(self.snd_nxt, TCP_ACK, b"", now)
    # Data waiting, nothing in flight and no timer: a zero window, or a window too small for
    # silly-window avoidance to send into.  The persist timer probes the first and forces a
    # segment into the second (FreeBSD tcp_setpersist; RFC 9293 3.8.6.2.1's override timeout).
    if self.snd_max == self.snd_una and sndbuf.end > self.snd_nxt and not (self.t_persist or self.t_rexmt):
        self.persist_shift = 0
        self.t_persist = now + self._persist_interval()
        self._arm()


def _output_predicted(self: TcpConnection, now: float) -> bool:
    """Send prediction, the twin of header prediction on the way out: when everything queued
    is new data of at most one MSS, the windows have room for all of it and Nagle lets it go
    (a request's response on an established connection), send it as one segment and return
    True -- the segment, and every field it moves, that the general loop below would send.
    False (nothing sent, nothing changed) leaves the decision to the general loop.

    Excluded, so that the general loop alone decides them: recovery, a FIN queued, a
    go-back-N after a timeout (SND.NXT below SND.MAX), out-of-order data held (SACK blocks
    shorten the MSS), an idle restart due (it lowers cwnd first), limited transmit, and a tail
    autocorking may hold (a frame of ours in the outbox, or a writer waiting for room).

    With timestamps (every Linux peer's case) ``_send_data`` -> ``_send_data_segment`` are
    written out here, ``_frame_predicted`` called directly: the same fields and frame, three
    calls fewer per response (``test_send_prediction_sends_what_the_general_loop_sends``)."""
    snd_nxt = self.snd_nxt
    sndbuf = self.sndbuf
    length = sndbuf.end - snd_nxt
    if (
        length <= 0
        or length > self.mss
        or self.in_recovery
        or self.fin_seq >= 0
        or snd_nxt != self.snd_max
        or (self.sack_on and len(self.reasm))
    ):
        return False
    flight = snd_nxt - self.snd_una
    if (
        length > self.snd_wnd - flight
        or length > self.cc.cwnd - flight
        or (flight and length < self.mss and not self.nodelay)  # Nagle (RFC 896): wait for the ACK
        or (self.last_send and now - self.last_send > self.rto and not flight)  # idle restart
        or ((self.tx_gen == self.core.tx_gen or sndbuf.nospace) and self.core.cork_tails)  # autocorking
    ):
        return False
    reasm = self.reasm
    if (
        not self.ts_on
        or (reasm is not NO_REASSEMBLY and len(reasm))
        or self.__class__._send_data_segment is not _send_data_segment  # IPv6's own (_tcp6.py)
    ):
        self._send_data(snd_nxt, length, TCP_ACK | TCP_PSH, now)
        return True
    # _send_data -> _send_data_segment for this segment (new data, one MSS or less, timestamps,
    # no SACK blocks), written out: two calls and the receive window's fewer per response.
    rcv_nxt = self.rcv_nxt
    scale = self.rcv_scale
    rcvbuf = self.rcvbuf  # _receive_window(), in line (the buffer's length without its __len__)
    limit = rcvbuf.limit
    free = limit - len(rcvbuf._buf) + rcvbuf._head
    if free < self.mss and free < limit >> 1:
        free = 0  # receiver SWS avoidance: do not advertise a sliver
    promised = self.rcv_adv - rcv_nxt
    if promised > free:
        free = promised
    most = 0xFFFF << scale
    wire_window = (free if free < most else most) >> scale
    edge = rcv_nxt + (wire_window << scale)  # _acknowledged(), in line
    if edge > self.rcv_adv:
        self.rcv_adv = edge
    self.last_ack_sent = rcv_nxt
    self.ack_now = False
    self.segs_unacked = 0
    self.t_delack = 0.0
    core = self.core
    packet = (
        OffloadPacket(FRAME_HEADROOM + 32, 0) if core.tx_checksum_offload else bytearray(FRAME_HEADROOM + 32)
    )
    self.sndbuf.append_to(packet, snd_nxt, length)
    if not _frame_predicted(
        self, core, packet, snd_nxt, rcv_nxt, TCP_ACK | TCP_PSH, wire_window, 32 + length, now
    ):
        _ACK_WITH_TIMESTAMPS.pack_into(
            packet, FRAME_HEADROOM, self.local_port, self.remote_port, snd_nxt & _MASK, rcv_nxt & _MASK,
            0x80, TCP_ACK | TCP_PSH, wire_window, 0, 0, 0x0101080A,
            (int(now * 1000) + self.ts_offset) & _MASK, self.ts_recent & _MASK,
        )  # fmt: skip
        self._checksum_and_send(packet, 32 + length, now)
    # the rest of _send_data: new data, timed by timestamps (no Karn timing), at SND.NXT = SND.MAX
    end = snd_nxt + length
    self.stats.bytes_sent += length
    rack = self.rack
    if rack is not None:
        rack.sent(snd_nxt, end, now)  # RFC 8985: every segment's transmission time
    self.snd_nxt = self.snd_max = end
    if not self.t_rexmt or self.rexmt_mode == REXMT_TLP_LONE:
        self._arm_rexmt(now)
    self.last_send = now
    self.tx_gen = core.tx_gen  # a frame of ours is in the outbox (autocorking)
    return True


def _output_fin_predicted(self: TcpConnection, now: float) -> bool:
    """Send prediction for a connection the application shut down (FIN-WAIT-1, LAST-ACK): when
    what is queued, at most one MSS, and the FIN after it have not left, nothing is in recovery
    or going back N, and the windows have room for the data, send them as one segment (or the
    FIN alone) and return True -- the segment, and every field it moves, that the general loop
    below sends then (a ``Connection: close`` response and its FIN: autocorking, Nagle and SWS
    avoidance never hold back a segment the FIN ends).  False (nothing sent, nothing changed)
    leaves the decision to the general loop, as do an idle restart due (it lowers cwnd first)
    and out-of-order data held (SACK blocks shorten the MSS)."""
    snd_nxt = self.snd_nxt
    fin_seq = self.fin_seq
    length = fin_seq - snd_nxt
    if (
        length < 0
        or length > self.mss
        or snd_nxt != self.snd_max
        or fin_seq != self.sndbuf.end
        or self.in_recovery
        or (self.sack_on and len(self.reasm))
    ):
        return False
    flight = snd_nxt - self.snd_una
    if (length and (length > self.snd_wnd - flight or length > self.cc.cwnd - flight)) or (
        self.last_send and now - self.last_send > self.rto and not flight
    ):
        return False
    self._send_data(snd_nxt, length, TCP_ACK | TCP_PSH | TCP_FIN if length else TCP_ACK | TCP_FIN, now)
    return True


def _send_data(self: TcpConnection, seq: int, length: int, flags: int, now: float) -> None:
    retransmission = seq < self.snd_max
    if length and self.ts_on and not len(self.reasm) and flags & TCP_ACK:
        self._send_data_segment(seq, length, flags, now)
    else:
        self._send_segment(seq, flags, self.sndbuf.peek(seq, length) if length else b"", now)
    end = seq + length + (1 if flags & TCP_FIN else 0)
    stats = self.stats
    stats.bytes_sent += length
    if retransmission:
        stats.retransmitted_segments += 1
        stats.retransmitted_bytes += length
    elif not self.ts_on and self.rtt_seq < 0:
        self.rtt_seq, self.rtt_time = seq, now  # time this segment (Karn: never a retransmission)
    rack = self.rack
    if rack is not None:
        rack.sent(seq, end, now)  # RFC 8985: every segment's transmission time
    if end > self.snd_nxt:
        self.snd_nxt = end
    if end > self.snd_max:
        self.snd_max = end
    if not self.t_rexmt or self.rexmt_mode == REXMT_TLP_LONE:
        self._arm_rexmt(now)  # (a lone segment's PTO is too long once more follows it)
    self.last_send = now
    self.tx_gen = self.core.tx_gen  # a frame of ours is in the outbox (autocorking)


def _retransmit(self: TcpConnection, seq: int, now: float, length: int | None = None) -> None:
    """Send one segment again starting at ``seq`` (fast retransmit, SACK hole, partial ACK):
    at most one MSS, or a whole TSO segment of ``length`` when the port segments (TSO/GSO)."""
    if seq >= self.snd_max:
        return
    if self.rtt_seq >= 0 and seq <= self.rtt_seq:
        self.rtt_seq = -1  # Karn: the timed segment is being retransmitted
    limit = self.snd_max - seq
    data_end = self.sndbuf.end
    mss = self._data_mss()
    most = mss
    if length is not None and length > mss and self.core.gso_max_size:
        most = mss * max((self.core.gso_max_size - 100) // mss, 1)
        if length % mss and length < limit:
            length -= length % mss  # whole segments only, as tcp_output sends them
    length = min(mss if length is None else length, most, limit, max(data_end - seq, 0))
    flags = TCP_ACK
    if self.fin_seq >= 0 and seq + length == self.fin_seq and self.snd_max > self.fin_seq:
        flags |= TCP_FIN
    if length <= 0 and not flags & TCP_FIN:
        return
    saved_nxt = self.snd_nxt
    self._send_data(seq, length, flags, now)
    self.snd_nxt = max(saved_nxt, self.snd_nxt)
    self.high_rxt = max(self.high_rxt, seq + length)


def _send_syn(self: TcpConnection, now: float) -> None:
    config = self.config
    ts = (int(now * 1000) + self.ts_offset) & _MASK
    active = self.state == SYN_SENT
    # Active: offer everything configured.  Passive: answer only what the peer offered.
    offer_scale = config.window_scaling and (active or bool(self.snd_scale or self.rcv_scale))
    offer_timestamps = config.timestamps if active else self.ts_on
    sack = config.sack if active else self.sack_on
    flags = TCP_SYN | (0 if active else TCP_ACK)
    if offer_scale and offer_timestamps and sack:
        # What every Linux peer's SYN asks for (and our own): the options packed in place.
        self._send_syn_packed(flags, 0 if active else self.ts_recent, ts, now)
    else:
        options = TcpOptions(
            mss=self.core.mtu - self.IP_TCP_HEADERS,
            window_scale=self.rcv_scale if offer_scale else None,
            sack_permitted=sack,
            timestamps=(ts, 0 if active else self.ts_recent) if offer_timestamps else None,
        )
        self._send_segment(self.iss, flags, b"", now, syn_options=options)
    if self.snd_nxt == self.iss:
        self.snd_nxt = self.iss + 1
    self.snd_max = max(self.snd_max, self.iss + 1)
    if not self.t_rexmt:
        self.t_rexmt = now + self.rto
        self.rexmt_mode = REXMT_RTO
        self._arm()


def _send_syn_packed(self: TcpConnection, flags: int, tsecr: int, tsval: int, now: float) -> None:
    """A SYN or SYN-ACK with MSS, SACK-permitted, timestamps and window scale, header and
    options in one ``pack_into``: what ``_send_segment`` builds from a :class:`TcpOptions`
    (``tests/test_tcp_synack.py`` holds the two to the same bytes), without the options
    object, its ``to_bytes`` and the general builder's tests."""
    rcv_nxt = self.rcv_nxt
    wire_window = self._receive_window()
    if wire_window > 0xFFFF:
        wire_window = 0xFFFF  # a SYN's window is never scaled (RFC 7323 2.2)
    if flags & TCP_ACK:
        self._acknowledged(rcv_nxt, wire_window, 0)
        ack_field = rcv_nxt & _MASK
    else:
        ack_field = 0
    packet = bytearray(FRAME_HEADROOM + 40)
    _SYN_WITH_OPTIONS.pack_into(
        packet, FRAME_HEADROOM, self.local_port, self.remote_port, self.iss & _MASK, ack_field, 0xA0, flags,
        wire_window, 0, 0, _SYN_MSS_KIND, self.core.mtu - self.IP_TCP_HEADERS, _SYN_SACK_TS_KIND, tsval,
        tsecr & _MASK, 1, 3, 3, self.rcv_scale,
    )  # fmt: skip
    self._checksum_and_send(packet, 40, now)


def _receive_window(self: TcpConnection) -> int:
    """The window to advertise: the receive buffer's free space, never less than what was
    already promised (RFC 9293 3.8.6.2.2: no shrinking).

    Out-of-order data is not subtracted: it lies inside the window already offered (the
    reassembly queue takes nothing beyond RCV.ADV), so buffer plus queue stay within the limit.
    Subtracting it changed the window with every out-of-order segment, and an ACK whose window
    changed is no duplicate ACK (RFC 5681 2): a sender without SACK then missed nearly every
    loss and waited for its retransmission timer."""
    rcvbuf = self.rcvbuf
    limit = rcvbuf.limit
    free = limit - len(rcvbuf)
    if free < self.mss and free < limit >> 1:
        free = 0  # receiver SWS avoidance: do not advertise a sliver
    promised = self.rcv_adv - self.rcv_nxt
    if promised > free:
        free = promised
    most = 0xFFFF << self.rcv_scale
    return free if free < most else most


def _data_mss(self: TcpConnection) -> int:
    """Payload bytes per segment now: the MSS less the SACK option our segments carry while
    out-of-order data is held (options count against the MSS, RFC 9293 3.7.1)."""
    if not (self.sack_on and len(self.reasm)):
        return self.mss
    blocks = len(self.reasm.sack_blocks(3 if self.ts_on else 4))
    return self.mss - (4 + 8 * blocks if blocks else 0)


def _send_segment(
    self: TcpConnection,
    seq: int,
    flags: int,
    payload: bytes,
    now: float,
    syn_options: TcpOptions | None = None,
    dsack: tuple[int, int] | None = None,
) -> None:
    """Build and send one segment (the bottom of tcp_output: header, options, checksum).
    ``dsack``: a duplicate's range, reported first in the SACK option (RFC 2883)."""
    if not payload and seq == self.snd_nxt and not flags & (TCP_SYN | TCP_FIN | TCP_RST):
        # A bare ACK carries the next unsent octet, not a rewound SND.NXT during
        # retransmission: the peer already holds data below SND.MAX and would find an
        # older sequence number unacceptable and ignore the ACK in it (FreeBSD does this).
        seq = self.snd_max
        if flags == TCP_ACK and not len(self.reasm) and dsack is None:
            self._send_bare_ack(seq, now)
            return
    rcv_nxt = self.rcv_nxt
    if flags & TCP_SYN:
        wire_window = min(self._receive_window(), 0xFFFF)
        if flags & TCP_ACK:
            self._acknowledged(rcv_nxt, wire_window, 0)
    else:
        wire_window = self._receive_window() >> self.rcv_scale
        if flags & TCP_ACK:
            self._acknowledged(rcv_nxt, wire_window, self.rcv_scale)
    timestamps = self.ts_on and not flags & TCP_RST and syn_options is None
    options = syn_options.to_bytes() if syn_options is not None else b""
    # A payload longer than one segment is a TSO segment: every piece the port cuts from it
    # carries ``gso_size`` bytes and a copy of these headers.
    gso_size = self._data_mss() if len(payload) > self.mss else 0
    if self.sack_on and flags & TCP_ACK and not flags & (TCP_SYN | TCP_RST) and (len(self.reasm) or dsack):
        # As many blocks as fit beside the payload in one MSS (the MSS already counts the
        # timestamp option), so a segment carrying SACK never exceeds the path MTU.
        seg_len = gso_size or len(payload)
        room = (self.mss - seg_len - 4) // 8 if payload else 4
        most = min(3 if self.ts_on else 4, room)
        if dsack is not None and most > 0:
            blocks = [dsack, *self.reasm.sack_blocks(most - 1)]
        else:
            blocks = self.reasm.sack_blocks(most) if room > 0 else []
        if blocks:
            options = bytes((1, 1, 5, 2 + 8 * len(blocks))) + b"".join(
                _U32X2.pack(left & _MASK, right & _MASK) for left, right in blocks
            )
    header_len = TCP_HEADER_LEN + len(options) + (12 if timestamps else 0)
    tcp_len = header_len + len(payload)
    if payload and (gso_size or self.core.tx_checksum_offload):
        packet: bytearray = OffloadPacket(FRAME_HEADROOM + tcp_len, gso_size)
    else:
        packet = bytearray(FRAME_HEADROOM + tcp_len)
    ack_field = rcv_nxt & _MASK if flags & TCP_ACK else 0
    TCP_HEADER.pack_into(
        packet, FRAME_HEADROOM, self.local_port, self.remote_port, seq & _MASK, ack_field,
        (header_len >> 2) << 4, flags, wire_window, 0, 0,
    )  # fmt: skip
    option_at = FRAME_HEADROOM + TCP_HEADER_LEN
    if timestamps:  # NOP NOP TS first, as Linux lays them out
        _TS_OPTION.pack_into(
            packet,
            option_at,
            0x0101080A,
            (int(now * 1000) + self.ts_offset) & _MASK,
            self.ts_recent & _MASK,
        )
        option_at += 12
    if options:
        packet[option_at : FRAME_HEADROOM + header_len] = options
    if payload:
        packet[FRAME_HEADROOM + header_len :] = payload
    self._checksum_and_send(packet, tcp_len, now)


def _acknowledged(self: TcpConnection, rcv_nxt: int, wire_window: int, scale: int) -> None:
    """Bookkeeping for a segment that carries our ACK: the window edge it promises, the
    ACK point for timestamps, and no delayed ACK owed any more."""
    edge = rcv_nxt + (wire_window << scale)
    if edge > self.rcv_adv:
        self.rcv_adv = edge
    self.last_ack_sent = rcv_nxt
    self.ack_now = False
    self.segs_unacked = 0
    self.t_delack = 0.0


def _send_bare_ack(self: TcpConnection, seq: int, now: float) -> None:
    """The segment a bulk receiver sends most: an ACK with timestamps and nothing else,
    packed in one go (Linux keeps tcp_send_ack apart from its general transmit path too).
    With timestamps to an on-link peer it is the whole frame in one go (``_frame_predicted``,
    the same frame as the layers below would make): a short connection's last ACK, the one
    that takes it into TIME_WAIT, is such an ACK, and so is every ACK of a bulk receiver."""
    rcv_nxt = self.rcv_nxt
    scale = self.rcv_scale
    wire_window = self._receive_window() >> scale
    self._acknowledged(rcv_nxt, wire_window, scale)
    if self.ts_on:
        tcp_len = 32
        packet = bytearray(FRAME_HEADROOM + 32)
        core = self.core
        if core.fast_path and _frame_predicted(
            self, core, packet, seq, rcv_nxt, TCP_ACK, wire_window, 32, now
        ):
            return
        _ACK_WITH_TIMESTAMPS.pack_into(
            packet, FRAME_HEADROOM, self.local_port, self.remote_port, seq & _MASK, rcv_nxt & _MASK,
            0x80, TCP_ACK, wire_window, 0, 0, 0x0101080A, (int(now * 1000) + self.ts_offset) & _MASK,
            self.ts_recent & _MASK,
        )  # fmt: skip
    else:
        tcp_len = 20
        packet = bytearray(FRAME_HEADROOM + 20)
        TCP_HEADER.pack_into(
            packet, FRAME_HEADROOM, self.local_port, self.remote_port, seq & _MASK, rcv_nxt & _MASK,
            0x50, TCP_ACK, wire_window, 0, 0,
        )  # fmt: skip
    self._checksum_and_send(packet, tcp_len, now)


def _send_data_segment(self: TcpConnection, seq: int, length: int, flags: int, now: float) -> None:
    """The segment a bulk sender sends most: data with timestamps and no other option (one MSS
    or less, or a TSO segment of whole MSS-sized pieces), its header packed in one go and its
    payload copied once, straight from the send buffer into the frame (what ``_send_segment``
    does, without the general cases)."""
    rcv_nxt = self.rcv_nxt
    scale = self.rcv_scale
    wire_window = self._receive_window() >> scale
    edge = rcv_nxt + (wire_window << scale)  # _acknowledged(), inline
    if edge > self.rcv_adv:
        self.rcv_adv = edge
    self.last_ack_sent = rcv_nxt
    self.ack_now = False
    self.segs_unacked = 0
    self.t_delack = 0.0
    tcp_len = 32 + length
    headers = FRAME_HEADROOM + 32
    core = self.core
    offload = core.tx_checksum_offload
    # as _send_segment: a payload longer than one MSS is a TSO segment (no SACK option here)
    gso_size = self.mss if length > self.mss else 0
    packet = OffloadPacket(headers, gso_size) if offload or gso_size else bytearray(headers)
    self.sndbuf.append_to(packet, seq, length)
    if core.fast_path and _frame_predicted(
        self, core, packet, seq, rcv_nxt, flags, wire_window, tcp_len, now
    ):
        return
    _ACK_WITH_TIMESTAMPS.pack_into(
        packet, FRAME_HEADROOM, self.local_port, self.remote_port, seq & _MASK, rcv_nxt & _MASK,
        0x80, flags, wire_window, 0, 0, 0x0101080A, (int(now * 1000) + self.ts_offset) & _MASK,
        self.ts_recent & _MASK,
    )  # fmt: skip
    self._checksum_and_send(packet, tcp_len, now)


def _frame_predicted(
    conn: TcpConnection,
    core: StackCore,
    packet: bytearray,
    seq: int,
    rcv_nxt: int,
    flags: int,
    wire_window: int,
    tcp_len: int,
    now: float,
) -> bool:
    """The bottom of the output path for the common case, in one step: the Ethernet, IPv4
    and TCP (timestamps) headers of a data segment to an on-link peer whose MAC is cached and
    fresh, packed in one ``pack_into`` with both checksums, and the frame queued -- what
    ``tcp_checksum_and_send`` -> ``ip_output`` -> ``_to_link`` -> ``ether_output`` do, with
    their counters, without four calls and three packs.

    A TSO segment (an ``OffloadPacket`` with ``gso_size``) is taken when the port segments it
    (``core.tso_max_size``: the datagram may then exceed the MTU, up to the port's TSO size),
    with the layered path's frame and counters: one IP identification for the whole segment
    (the port numbers the pieces it cuts from it, +1 each, as Linux's and virtio's TSO do),
    one ``ip_output``/``ether_output`` datagram, and a TCP segment counted per piece the wire
    will carry (Linux's OutSegs).  Without TSO the port cannot take it whole, so it declines,
    and ``ether_output`` cuts it in software (GSO) -- also when the segment fits the MTU,
    which a peer's small MSS allows.

    False (nothing written, nothing counted) for everything else: an off-link or broadcast
    peer, our own address, an ARP entry missing or due for refresh, a full outbox, a datagram
    over the MTU (over the TSO size for a TSO segment), and a traced core (a traced segment
    passes every layer's trace point)."""
    dst = conn.remote_ip
    ip_layer = core.ip_layer
    arp = core.arp
    entry = arp.cache.get(dst)
    total_len = 20 + tcp_len
    outbox = core.outbox
    offload = packet.__class__ is OffloadPacket
    gso_size: int = packet.gso_size if offload else 0  # type: ignore[attr-defined]  # an OffloadPacket's mark
    if (
        entry is None
        or now >= entry[1] - arp.config.refresh_before
        or dst & ip_layer.netmask != ip_layer.network
        or dst == ip_layer.broadcast
        or dst == core.ip
        or total_len > (core.tso_max_size if gso_size else core.mtu)  # no TSO: tso_max_size is 0
        or len(outbox) >= core.outbox_limit
        # the journey tracer's mark on a swapped class, looked up in the class's own namespace (where
        # the tracer puts it): hasattr() on a class that lacks it raised and caught an
        # AttributeError, ~0.5 us of every segment sent
        or "_yas_tracer" in core.__class__.__dict__
    ):
        return False
    src = core.ip
    ident = ip_layer.ident = (ip_layer.ident + 1) & 0xFFFF
    ttl = ip_layer.config.default_ttl
    addresses = (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF)
    total = 0x4500 + total_len + ident + IP_DF + (ttl << 8) + IPPROTO_TCP + addresses  # as _ip._emit_header
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    pseudo = addresses + IPPROTO_TCP + tcp_len
    if offload:  # CHECKSUM_PARTIAL, as tcp_checksum_and_send: the folded pseudo-header sum
        pseudo = (pseudo & 0xFFFF) + (pseudo >> 16)
        field = (pseudo & 0xFFFF) + (pseudo >> 16)
    else:
        field = 0
    _FRAME_WITH_TIMESTAMPS.pack_into(
        packet, 0, entry[0], core.mac, ETHERTYPE_IPV4,
        0x45, 0, total_len, ident, IP_DF, ttl, IPPROTO_TCP, ~total & 0xFFFF, src, dst,
        conn.local_port, conn.remote_port, seq & _MASK, rcv_nxt & _MASK, 0x80, flags, wire_window, field, 0,
        0x0101080A, (int(now * 1000) + conn.ts_offset) & _MASK, conn.ts_recent & _MASK,
    )  # fmt: skip
    if not offload:
        field = ~sum16(packet, FRAME_HEADROOM, tcp_len, pseudo) & 0xFFFF
        packet[FRAME_HEADROOM + 16] = field >> 8
        packet[FRAME_HEADROOM + 17] = field & 0xFF
    if gso_size:  # the segments the port cuts, as tcp_checksum_and_send counts them
        conn.stats.segments_sent += (tcp_len - 32 + gso_size - 1) // gso_size
    else:
        conn.stats.segments_sent += 1
    ip_layer.stats.sent += 1
    outbox.append(packet if offload else bytes(packet))
    core.stats_ether.sent += 1
    return True


def _checksum_and_send(self: TcpConnection, packet: bytearray, tcp_len: int, now: float) -> None:
    core = self.core
    if core.fast_path and _headers_predicted(self, core, packet, tcp_len, now):
        return
    error = tcp_checksum_and_send(core, self.stats, packet, tcp_len, self.remote_ip, now)
    if error:
        self.soft_error = error


def _headers_predicted(
    conn: TcpConnection, core: StackCore, packet: bytearray, tcp_len: int, now: float
) -> bool:
    """``_frame_predicted`` for a TCP segment already packed at ``FRAME_HEADROOM`` (a SYN-ACK,
    a FIN, a segment with SACK blocks...): its Ethernet and IPv4 headers in one ``pack_into``,
    its checksum, and the frame queued -- what ``tcp_checksum_and_send`` -> ``ip_output`` ->
    ``_to_link`` -> ``ether_output`` do, with their counters (IPv6's twin is
    ``TcpConnection6._frame_predicted6``).  The same declines as ``_frame_predicted``, and the
    same TSO rule: a TSO segment (one with SACK blocks, or to a peer without timestamps) is taken
    when the port segments it, counted per piece; False (nothing written, nothing counted) sends
    it the general way."""
    dst = conn.remote_ip
    ip_layer = core.ip_layer
    arp = core.arp
    entry = arp.cache.get(dst)
    total_len = 20 + tcp_len
    outbox = core.outbox
    offload = packet.__class__ is OffloadPacket
    gso_size: int = packet.gso_size if offload else 0  # type: ignore[attr-defined]  # an OffloadPacket's mark
    if (
        entry is None
        or now >= entry[1] - arp.config.refresh_before
        or dst & ip_layer.netmask != ip_layer.network
        or dst == ip_layer.broadcast
        or dst == core.ip
        or total_len > (core.tso_max_size if gso_size else core.mtu)  # no TSO: tso_max_size is 0
        or len(outbox) >= core.outbox_limit
        # the journey tracer's mark on a swapped class, looked up in the class's own namespace (where
        # the tracer puts it): hasattr() on a class that lacks it raised and caught an
        # AttributeError, ~0.5 us of every segment sent
        or "_yas_tracer" in core.__class__.__dict__
    ):
        return False
    src = core.ip
    ident = ip_layer.ident = (ip_layer.ident + 1) & 0xFFFF
    ttl = ip_layer.config.default_ttl
    addresses = (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF)
    total = 0x4500 + total_len + ident + IP_DF + (ttl << 8) + IPPROTO_TCP + addresses  # as _emit_header
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    _ETHER_IPV4.pack_into(
        packet, 0, entry[0], core.mac, ETHERTYPE_IPV4,
        0x45, 0, total_len, ident, IP_DF, ttl, IPPROTO_TCP, ~total & 0xFFFF, src, dst,
    )  # fmt: skip
    pseudo = addresses + IPPROTO_TCP + tcp_len
    if offload:  # CHECKSUM_PARTIAL, as tcp_checksum_and_send: the folded pseudo-header sum
        pseudo = (pseudo & 0xFFFF) + (pseudo >> 16)
        field = (pseudo & 0xFFFF) + (pseudo >> 16)
    else:
        field = ~sum16(packet, FRAME_HEADROOM, tcp_len, pseudo) & 0xFFFF
    packet[FRAME_HEADROOM + 16] = field >> 8
    packet[FRAME_HEADROOM + 17] = field & 0xFF
    if gso_size:  # the segments the port cuts, as tcp_checksum_and_send counts them
        payload = tcp_len - ((packet[FRAME_HEADROOM + 12] >> 4) << 2)
        conn.stats.segments_sent += (payload + gso_size - 1) // gso_size
    else:
        conn.stats.segments_sent += 1
    ip_layer.stats.sent += 1
    outbox.append(packet if offload else bytes(packet))
    core.stats_ether.sent += 1
    return True


def _ack_now(self: TcpConnection, now: float) -> None:
    self.ack_now = True
    self._send_segment(self.snd_nxt, TCP_ACK, b"", now)


def _challenge_ack(self: TcpConnection, now: float) -> None:
    """RFC 5961 3.2/4.2: answer a suspicious RST or SYN with an ACK (rate limited per layer)."""
    if self.layer.challenge_ack_allowed(now):
        self.stats.challenge_acks_sent += 1
        self._ack_now(now)
    else:
        self.stats.drop(TcpDrop.CHALLENGE_ACK_RATE_LIMITED)
