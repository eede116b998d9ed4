/*
 * The established-connection fast path's first half, for a whole rx_burst in one call.
 *
 * yas_tcp_fast_classify() walks the `n` frames laid end to end in `frames` (frame i is lens[i]
 * bytes, `lens` n native uint32_t passed as bytes, bit 31 YAS_FAST_VERIFIED when the port
 * already verified the frame's checksums) and writes
 * one record per frame: YAS_FAST_CANDIDATE with the TCP fields for a frame header prediction
 * may take -- an unfragmented IPv4 datagram without options to our address from a sane
 * source, a TCP segment with ACK (and maybe PSH) and no other flag, no options or exactly the
 * aligned timestamp option (NOP NOP TS), valid checksums -- and YAS_FAST_DECLINE for every other
 * frame, which the caller hands to the Python path (ether_input) unchanged, in order.
 * A UDP datagram udp_input would take without a question (to our address, no fragment or
 * options, a sane length, a destination port, a valid checksum or none) comes back as
 * YAS_FAST_UDP with its source, ports and payload bounds: the caller queues it on its socket
 * (UDP's batched input, one call per burst), or hands it to ether_input like a decline.
 *
 * Nothing here decides about a connection: the caller demultiplexes the candidates by their
 * 4-tuple and runs the prediction against the connection's state.  A decline costs nothing but
 * the Python path's own parsing, so every check errs towards declining.
 *
 * The pure-Python twin is trio_yastack.stack.tcp._fastpath.py_classify_frame, and
 * tests/test_tcp_fastpath.py proves the two agree on arbitrary frames.  Fields are read byte by
 * byte, so any alignment is fine.
 */
#include <string.h>
#include "tcp_fast.h"
#include "checksum.h"

static inline uint32_t be16(const unsigned char *p) { return ((uint32_t)p[0] << 8) | p[1]; }
static inline uint32_t be32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void classify_udp(const unsigned char *f, uint32_t len, int verify, uint32_t total, uint32_t src,
                         uint32_t dst, struct yas_tcp_seg *r)
{
    /* The UDP half: what udp_input would deliver without a question -- a length that fits what
     * IP carried, a destination port, a valid checksum or none (0, RFC 768).  Whether a socket
     * takes it (and its queue has room) is the caller's business. */
    const unsigned char *uh = f + 34;
    uint32_t avail = total - 20;
    if (avail < 8)
        return;
    uint32_t ulen = be16(uh + 4);
    if (ulen < 8 || ulen > avail)
        return;
    uint32_t dport = be16(uh + 2);
    if (dport == 0)
        return;
    if (verify && be16(uh + 6)) {
        uint32_t initial = (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + 17 + ulen;
        if (yas_sum16((const char *)f, len, 34, ulen, initial) != 0xFFFF)
            return;
    }
    r->kind = YAS_FAST_UDP;
    r->src = src;
    r->sport = (uint16_t)be16(uh);
    r->dport = (uint16_t)dport;
    r->data_start = 42;
    r->end = 34 + ulen;
}

static void classify(const unsigned char *f, uint32_t len, int verify, const char *mac, uint32_t ip,
                     uint32_t broadcast, struct yas_tcp_seg *r)
{
    memset(r, 0, sizeof *r);
    r->tsval = r->tsecr = -1;
    if (len < 14 + 20 + 8 || memcmp(f, mac, 6) != 0 || f[12] != 0x08 || f[13] != 0x00)
        return;
    const unsigned char *iph = f + 14;
    if (iph[0] != 0x45)
        return; /* not version 4, or IP options */
    uint32_t total = be16(iph + 2);
    if (total < 28 || 14 + (size_t)total > len)
        return;
    if (be16(iph + 6) & 0x3FFF)
        return; /* a fragment (MF or an offset) */
    uint32_t proto = iph[9];
    if (iph[8] == 0 || (proto != 6 && proto != 17))
        return; /* TTL 0, or neither TCP nor UDP */
    if (proto == 6 && total < 40)
        return;
    uint32_t src = be32(iph + 12), dst = be32(iph + 16);
    if (dst != ip || src == ip || src == broadcast || src >= 0xE0000000u || (src >> 24) == 127)
        return;
    if (verify && yas_sum16((const char *)f, len, 14, 20, 0) != 0xFFFF)
        return;
    if (proto == 17) {
        classify_udp(f, len, verify, total, src, dst, r);
        return;
    }
    const unsigned char *th = iph + 20;
    uint32_t tcp_len = total - 20;
    uint32_t thl = (uint32_t)(th[12] >> 4) << 2;
    if (thl < 20 || thl > tcp_len)
        return;
    uint32_t flags = th[13];
    if ((flags & ~0x08u) != 0x10 || (th[12] & 0x0F))
        return; /* anything but ACK or ACK|PSH (or the reserved bits) */
    uint32_t sport = be16(th), dport = be16(th + 2);
    if (sport == 0 || dport == 0)
        return;
    if (thl == 32) {
        if (th[20] != 1 || th[21] != 1 || th[22] != 8 || th[23] != 10)
            return;
        r->tsval = be32(th + 24);
        r->tsecr = be32(th + 28);
    } else if (thl != 20) {
        return;
    }
    if (verify) {
        uint32_t initial = (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + 6 + tcp_len;
        if (yas_sum16((const char *)f, len, 34, tcp_len, initial) != 0xFFFF) {
            r->tsval = r->tsecr = -1;
            return;
        }
    }
    r->kind = YAS_FAST_CANDIDATE;
    r->src = src;
    r->sport = (uint16_t)sport;
    r->dport = (uint16_t)dport;
    r->seq = be32(th + 4);
    r->ack = be32(th + 8);
    r->flags = (uint16_t)flags;
    r->window = (uint16_t)be16(th + 14);
    r->data_start = 34 + thl;
    r->end = 14 + total;
}

int yas_tcp_fast_classify(const char *frames, size_t frameslen, const char *lens, size_t lenslen,
                          int n, const char *mac, uint32_t ip, uint32_t broadcast, int verify,
                          char *out, size_t outlen)
{
    /* `out` is n records of struct yas_tcp_seg (a bytearray on the Python side: written by
     * memcpy, so its alignment does not matter); nothing is read or written outside the
     * lengths given */
    if (frames == NULL || lens == NULL || mac == NULL || out == NULL || n < 0)
        return YAS_FAST_BAD_ARGS;
    if ((size_t)n > lenslen / sizeof(uint32_t) || (size_t)n > outlen / sizeof(struct yas_tcp_seg))
        return YAS_FAST_BAD_ARGS;
    size_t at = 0;
    for (int i = 0; i < n; i++) {
        uint32_t word;
        memcpy(&word, lens + (size_t)i * sizeof word, sizeof word);
        uint32_t len = word & ~YAS_FAST_VERIFIED;
        if (len > frameslen - at)
            return YAS_FAST_BAD_ARGS;
        struct yas_tcp_seg record;
        classify((const unsigned char *)frames + at, len, verify && !(word & YAS_FAST_VERIFIED), mac, ip,
                 broadcast, &record);
        memcpy(out + (size_t)i * sizeof record, &record, sizeof record);
        at += len;
    }
    return n;
}
