/*
 * The established-connection fast path's first half, for a whole rx_burst in one call.
 *
 * yas_tcp_fast_classify() walks the `n` frames laid end to end in `frames` (frame i is lens[i]
 * bytes, `lens` n native uint32_t passed as bytes, bit 31 YAS_FAST_VERIFIED when the port
 * already verified the frame's checksums) and writes
 * one record per frame: YAS_FAST_CANDIDATE with the TCP fields for a frame header prediction
 * may take -- an unfragmented IPv4 datagram without options to our address from a sane
 * source, a TCP segment with ACK (and maybe PSH) and no other flag, no options or exactly the
 * aligned timestamp option (NOP NOP TS), valid checksums; or the same with FIN too (a
 * connection's FIN, which the caller hands to the connection's general path, skipping only
 * the layers' parsing again); or a SYN alone with any options (a connection request, which the
 * caller hands to the listener's input with the options it parses, tsval and tsecr -1 in the
 * record) -- and YAS_FAST_DECLINE for every other
 * frame, which the caller hands to the Python path (ether_input) unchanged, in order.
 * An IPv6 frame is a candidate on the terms without FIN or SYN (YAS_FAST_CANDIDATE6): no extension header,
 * next header TCP, to one of our usable unicast addresses from a source that is none of ours,
 * not multicast, loopback or unspecified, a hop limit above 0, the checksum over the IPv6
 * pseudo-header valid; the record's `src` is the index of the destination among the usable
 * addresses (the caller keys the connection by the 128-bit source in the frame, bytes 22..37,
 * and that address of ours: two connections may differ in that alone).
 * A UDP datagram udp_input would take without a question (to our address, no fragment or
 * options, a sane length, a destination port, a valid checksum or none) comes back as
 * YAS_FAST_UDP with its source, ports and payload bounds: the caller queues it on its socket
 * (UDP's batched input, one call per burst), or hands it to ether_input like a decline.
 * A UDP datagram over IPv6 that ip6_input -> udp6_input would take without a question (the
 * IPv6 terms above with next header UDP, a UDP length that fits the payload, a destination port,
 * a nonzero checksum -- mandatory over IPv6, RFC 8200 8.1 -- valid or vouched for by the port)
 * comes back as YAS_FAST_UDP6 with ports and payload bounds.  Its source (bytes 22..37) is looked up
 * in the caller's table of sources, `src6` (YAS_FAST_SRC6_SLOTS slots of 16 bytes, direct-mapped by
 * src6_slot(); empty slots hold ::, never a source we take): `seq` is the source's slot and `src`
 * the slot + 1 when the slot holds it, else 0.  The caller keeps the 128-bit integer of each slot's
 * address beside the table, so a known source costs it a list index instead of a conversion; it
 * changes a slot (bytes and integer together) only between bursts.
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

/* what tcp_fields may take besides ACK(|PSH): IPv4's, not IPv6's (whose caller has no use yet) */
#define YAS_FAST_MORE_FIN 0x01u /* a FIN with its ACK (the flag's own bit) */
#define YAS_FAST_MORE_SYN 0x02u /* a SYN alone, with any options */

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

static int tcp_fields(const unsigned char *f, uint32_t len, int verify, uint32_t at, uint32_t tcp_len,
                      uint32_t sum_at, uint32_t initial, uint32_t more, struct yas_tcp_seg *r)
{
    /* The TCP half, for both families: the segment at f[at:at + tcp_len], its checksum summed
     * from f[sum_at] (before `at` for IPv6, whose addresses sit right before the segment and
     * are summed with it) with `initial` the rest of the pseudo-header.  `more` says what else
     * may be a candidate (IPv4: YAS_FAST_MORE_FIN | YAS_FAST_MORE_SYN, IPv6: 0): a FIN with its
     * ACK, which the caller hands to the connection's general path, and a SYN alone with any
     * options (their bytes left to the caller: tsval and tsecr stay -1), which it hands to the
     * listener's.  Fills the record's TCP fields and returns 1, or 0 (the record left a
     * decline). */
    const unsigned char *th = f + at;
    uint32_t thl = (uint32_t)(th[12] >> 4) << 2;
    if (thl < 20 || thl > tcp_len)
        return 0;
    uint32_t flags = th[13];
    if (th[12] & 0x0F)
        return 0; /* the reserved bits */
    int syn = flags == 0x02 && (more & YAS_FAST_MORE_SYN);
    if (!syn && (flags & ~(0x08u | (more & YAS_FAST_MORE_FIN))) != 0x10)
        return 0; /* anything but ACK or ACK|PSH, ACK|FIN(|PSH) as `more` allows, or SYN alone */
    uint32_t sport = be16(th), dport = be16(th + 2);
    if (sport == 0 || dport == 0)
        return 0;
    int64_t tsval = -1, tsecr = -1;
    if (syn) {
        /* any options: parsed by the caller, as tcp_input would */
    } else if (thl == 32) {
        if (th[20] != 1 || th[21] != 1 || th[22] != 8 || th[23] != 10)
            return 0;
        tsval = be32(th + 24);
        tsecr = be32(th + 28);
    } else if (thl != 20) {
        return 0;
    }
    if (verify && yas_sum16((const char *)f, len, sum_at, at + tcp_len - sum_at, initial) != 0xFFFF)
        return 0;
    r->sport = (uint16_t)sport;
    r->dport = (uint16_t)dport;
    r->seq = be32(th + 4);
    r->ack = be32(th + 8);
    r->flags = (uint16_t)flags;
    r->window = (uint16_t)be16(th + 14);
    r->tsval = tsval;
    r->tsecr = tsecr;
    r->data_start = at + thl;
    r->end = at + tcp_len;
    return 1;
}

static int in_addresses(const unsigned char *a, const char *ip6, uint32_t count)
{
    for (uint32_t i = 0; i < count; i++)
        if (memcmp(a, ip6 + (size_t)i * 16, 16) == 0)
            return 1;
    return 0;
}

static uint32_t address_index(const unsigned char *a, const char *ip6, uint32_t count)
{
    /* 1 + where a is among the count addresses at ip6, or 0 */
    for (uint32_t i = 0; i < count; i++)
        if (memcmp(a, ip6 + (size_t)i * 16, 16) == 0)
            return i + 1;
    return 0;
}

static uint32_t src6_slot(const unsigned char *a)
{
    /* the slot of an IPv6 address in the table of sources: its four words folded, then
     * Fibonacci hashing (Knuth's multiplier) to the top YAS_FAST_SRC6_BITS bits */
    uint32_t h = be32(a) ^ be32(a + 4) ^ be32(a + 8) ^ be32(a + 12);
    return (h * 0x9E3779B1u) >> (32 - YAS_FAST_SRC6_BITS);
}

static void classify_udp6(const unsigned char *f, uint32_t len, int verify, uint32_t payload_len,
                          const char *src6, struct yas_tcp_seg *r)
{
    /* The UDP half over IPv6, what udp6_input takes without a question: a UDP length that fits
     * the IPv6 payload, a nonzero checksum (refused even unverified: RFC 8200 8.1), valid over
     * the pseudo-header (addresses summed in place, then length and next header), a destination
     * port.  Whether a socket takes it is the caller's business. */
    if (payload_len < 8 || 54 + (size_t)payload_len > len)
        return;
    const unsigned char *uh = f + 54;
    uint32_t ulen = be16(uh + 4);
    if (ulen < 8 || ulen > payload_len)
        return;
    uint32_t dport = be16(uh + 2);
    if (dport == 0 || be16(uh + 6) == 0)
        return;
    if (verify && yas_sum16((const char *)f, len, 22, 32 + ulen, 17 + ulen) != 0xFFFF)
        return;
    r->kind = YAS_FAST_UDP6;
    uint32_t slot = src6_slot(f + 22);
    r->seq = slot;
    if (memcmp(src6 + (size_t)slot * 16, f + 22, 16) == 0)
        r->src = slot + 1;
    r->sport = (uint16_t)be16(uh);
    r->dport = (uint16_t)dport;
    r->data_start = 62;
    r->end = 54 + ulen;
}

static void classify6(const unsigned char *f, uint32_t len, int verify, const char *ip6, uint32_t n_usable,
                      uint32_t n_all, const char *src6, struct yas_tcp_seg *r)
{
    /* What ip6_input -> tcp6_input / udp6_input take without a question: version 6, next header
     * TCP or UDP (no extension header), a hop limit, to a usable address of ours
     * (ip6[0:16 * n_usable]), from a source that is none of ours (all n_all, tentative ones too)
     * nor multicast, loopback or unspecified; then the transport's own terms. */
    const unsigned char *ip = f + 14;
    uint32_t nxt = ip[6];
    if ((ip[0] >> 4) != 6 || (nxt != 6 && nxt != 17) || ip[7] == 0)
        return;
    uint32_t payload_len = be16(ip + 4);
    if (nxt == 6 && (payload_len < 20 || 54 + (size_t)payload_len > len))
        return;
    const unsigned char *src = ip + 8;
    if (src[0] == 0xFF)
        return;
    static const unsigned char zero[15];
    if (memcmp(src, zero, 15) == 0 && src[15] <= 1)
        return; /* :: or ::1 */
    uint32_t ours = address_index(ip + 24, ip6, n_usable);
    if (!ours || in_addresses(src, ip6, n_all))
        return;
    if (nxt == 17) {
        classify_udp6(f, len, verify, payload_len, src6, r);
        return;
    }
    /* the pseudo-header (RFC 8200 8.1): addresses (summed in place), length, next header */
    if (!tcp_fields(f, len, verify, 54, payload_len, 22, 6 + payload_len, 0, r))
        return;
    r->kind = YAS_FAST_CANDIDATE6;
    r->src = ours - 1; /* which of our usable addresses it is for: the TCP layer's key holds it */
}

static void classify(const unsigned char *f, uint32_t len, int verify, const char *mac, uint32_t ip,
                     uint32_t broadcast, const char *ip6, uint32_t n_usable, uint32_t n_all,
                     const char *src6, struct yas_tcp_seg *r)
{
    memset(r, 0, sizeof *r);
    r->tsval = r->tsecr = -1;
    if (len < 14 + 20 + 8 || memcmp(f, mac, 6) != 0)
        return;
    if (f[12] == 0x86 && f[13] == 0xDD) {
        if (len >= 14 + 40 + 8 && n_usable) /* a UDP header at least (TCP's 20 checked after) */
            classify6(f, len, verify, ip6, n_usable, n_all, src6, r);
        return;
    }
    if (f[12] != 0x08 || f[13] != 0x00)
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
    uint32_t initial = (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + 6 + (total - 20);
    if (!tcp_fields(f, len, verify, 34, total - 20, 34, initial, YAS_FAST_MORE_FIN | YAS_FAST_MORE_SYN, r))
        return;
    r->kind = YAS_FAST_CANDIDATE;
    r->src = src;
}

int yas_tcp_fast_classify(const char *frames, size_t frameslen, const char *lens, size_t lenslen,
                          int n, const char *mac, uint32_t ip, uint32_t broadcast, const char *ip6,
                          size_t ip6len, uint32_t ip6_usable, const char *src6, size_t src6len, int verify,
                          char *out, size_t outlen)
{
    /* `out` is n records of struct yas_tcp_seg (a bytearray on the Python side: written by
     * memcpy, so its alignment does not matter); nothing is read or written outside the
     * lengths given */
    if (frames == NULL || lens == NULL || mac == NULL || ip6 == NULL || out == NULL || n < 0)
        return YAS_FAST_BAD_ARGS;
    /* src6: the table of UDP6 sources, YAS_FAST_SRC6_SLOTS addresses of 16 bytes */
    if (src6 == NULL || src6len != (size_t)YAS_FAST_SRC6_SLOTS * 16)
        return YAS_FAST_BAD_ARGS;
    /* ip6: our IPv6 addresses, 16 bytes each, the ip6_usable usable ones (past DAD) first */
    if (ip6len % 16 || ip6len / 16 > YAS_FAST_MAX_IP6 || ip6_usable > ip6len / 16)
        return YAS_FAST_BAD_ARGS;
    uint32_t n_all = (uint32_t)(ip6len / 16);
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
                 broadcast, ip6, ip6_usable, n_all, src6, &record);
        memcpy(out + (size_t)i * sizeof record, &record, sizeof record);
        at += len;
    }
    return n;
}
