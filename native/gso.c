/*
 * Software GSO for TCP/IPv4 (Linux's tcp4_gso_segment, for ports without TSO).
 *
 * The stack builds one large TCP segment per pass of tcp_output -> ip_output -> ether_output,
 * whatever the port can take; when the port cannot segment, this cuts it at the last moment
 * into frames of at most `mss` payload bytes, as Linux does for a NIC without TSO.  Doing it
 * here runs the TCP/IP layers once per 64 KB instead of once per 1.5 KB.
 *
 * yas_tcp4_segment() reads one frame (Ethernet + IPv4 + TCP + payload; the TCP checksum field
 * is ignored) and writes the segments one after another into `out`, each `stride` bytes apart
 * (stride = headers + mss; the last one may be shorter).  For segment i: IPv4 total length,
 * identification (+i) and header checksum; TCP sequence number (+i*mss), FIN and PSH only on
 * the last segment, CWR only on the first, and the full TCP checksum.  Returns the number of
 * segments, or a negative YAS_GSO_* error having written nothing usable.  The pure-Python
 * twin is trio_yastack.stack._native.py_tcp4_segment; tests/test_native.py proves they agree.
 */
#include <stdint.h>
#include <string.h>
#include "gso.h"

static uint32_t add_words(const unsigned char *p, size_t len, uint64_t sum)
{
    while (len >= 2) {
        sum += ((uint32_t)p[0] << 8) | p[1];
        p += 2;
        len -= 2;
    }
    if (len)
        sum += (uint32_t)p[0] << 8;
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint32_t)sum;
}

/* The payload sum, 8 bytes at a time in host order, folded and swapped to network order. */
static uint32_t payload_sum(const unsigned char *p, size_t len)
{
    uint64_t sum = 0;
    while (len >= 8) {
        uint32_t w[2];
        memcpy(w, p, 8);
        sum += (uint64_t)w[0] + w[1];
        p += 8;
        len -= 8;
    }
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    uint32_t host = (uint32_t)sum;
    const uint16_t probe = 1;
    if (*(const unsigned char *)&probe == 1)
        host = ((host & 0xff) << 8) | (host >> 8);
    return add_words(p, len, host);
}

static void put16(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

static void put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

int yas_tcp4_segment(const char *frame_in, size_t len, size_t mss, char *out_buf, size_t out_len)
{
    const unsigned char *frame = (const unsigned char *)frame_in;
    unsigned char *out = (unsigned char *)out_buf;
    if (mss == 0 || mss > 65535 || len < 14 + 20 + 20)
        return YAS_GSO_BAD_FRAME;
    if (frame[12] != 0x08 || frame[13] != 0x00 || (frame[14] >> 4) != 4 || frame[14 + 9] != 6)
        return YAS_GSO_BAD_FRAME;  /* not TCP over IPv4 */
    size_t ihl = (size_t)(frame[14] & 0x0f) * 4;
    size_t ip_total = ((size_t)frame[16] << 8) | frame[17];
    if (ihl < 20 || 14 + ip_total > len || ip_total < ihl + 20)
        return YAS_GSO_BAD_FRAME;
    size_t tcp_at = 14 + ihl;
    size_t thl = (size_t)(frame[tcp_at + 12] >> 4) * 4;
    if (thl < 20 || ihl + thl > ip_total)
        return YAS_GSO_BAD_FRAME;
    size_t headers = tcp_at + thl;
    size_t payload = 14 + ip_total - headers;
    size_t count = payload ? (payload + mss - 1) / mss : 1;
    size_t stride = headers + mss;
    if ((count - 1) * stride + headers + (payload - (count - 1) * mss) > out_len)
        return YAS_GSO_NO_ROOM;

    uint32_t ident = ((uint32_t)frame[18] << 8) | frame[19];
    uint32_t seq = ((uint32_t)frame[tcp_at + 4] << 24) | ((uint32_t)frame[tcp_at + 5] << 16)
                 | ((uint32_t)frame[tcp_at + 6] << 8) | frame[tcp_at + 7];
    unsigned char flags = frame[tcp_at + 13];
    /* The pseudo-header without its length: source, destination, protocol. */
    uint32_t pseudo = add_words(frame + 14 + 12, 8, 6);

    for (size_t i = 0; i < count; i++) {
        size_t take = (i + 1 < count) ? mss : payload - i * mss;
        unsigned char *seg = out + i * stride;
        memcpy(seg, frame, headers);
        memcpy(seg + headers, frame + headers + i * mss, take);
        unsigned char *ip = seg + 14;
        unsigned char *tcp = seg + tcp_at;
        put16(ip + 2, (uint32_t)(ihl + thl + take));
        put16(ip + 4, (ident + (uint32_t)i) & 0xffff);
        put16(ip + 10, 0);
        put16(ip + 10, ~add_words(ip, ihl, 0) & 0xffff);
        put32(tcp + 4, seq + (uint32_t)(i * mss));
        unsigned char f = flags;
        if (i + 1 < count)
            f &= (unsigned char)~0x09;  /* FIN and PSH go with the last segment */
        if (i > 0)
            f &= (unsigned char)~0x80;  /* CWR with the first */
        tcp[13] = f;
        put16(tcp + 16, 0);
        uint32_t sum = add_words(tcp, thl, (uint64_t)pseudo + thl + take + payload_sum(seg + headers, take));
        put16(tcp + 16, ~sum & 0xffff);
    }
    return (int)count;
}

/*
 * Software GSO for TCP/IPv6 (Linux's tcp6_gso_segment): yas_tcp6_segment() reads one frame
 * (Ethernet + IPv6 with no extension header + TCP + payload; the TCP checksum field is ignored)
 * and writes its segments as yas_tcp4_segment() does.  For segment i: the IPv6 payload length;
 * the TCP sequence number (+i*mss), FIN and PSH only on the last segment, CWR only on the
 * first, and the full TCP checksum over the IPv6 pseudo-header (RFC 8200 8.1).  The twin is
 * trio_yastack.stack._native.py_tcp6_segment; tests/test_gso6.py proves they agree.
 */
int yas_tcp6_segment(const char *frame_in, size_t len, size_t mss, char *out_buf, size_t out_len)
{
    const unsigned char *frame = (const unsigned char *)frame_in;
    unsigned char *out = (unsigned char *)out_buf;
    if (mss == 0 || mss > 65535 || len < 14 + 40 + 20)
        return YAS_GSO_BAD_FRAME;
    if (frame[12] != 0x86 || frame[13] != 0xDD || (frame[14] >> 4) != 6 || frame[14 + 6] != 6)
        return YAS_GSO_BAD_FRAME;  /* not TCP over IPv6 without an extension header */
    size_t plen = ((size_t)frame[18] << 8) | frame[19];
    size_t tcp_at = 14 + 40;
    if (tcp_at + plen > len || plen < 20)
        return YAS_GSO_BAD_FRAME;
    size_t thl = (size_t)(frame[tcp_at + 12] >> 4) * 4;
    if (thl < 20 || thl > plen)
        return YAS_GSO_BAD_FRAME;
    size_t headers = tcp_at + thl;
    size_t payload = plen - thl;
    size_t count = payload ? (payload + mss - 1) / mss : 1;
    size_t stride = headers + mss;
    if ((count - 1) * stride + headers + (payload - (count - 1) * mss) > out_len)
        return YAS_GSO_NO_ROOM;

    uint32_t seq = ((uint32_t)frame[tcp_at + 4] << 24) | ((uint32_t)frame[tcp_at + 5] << 16)
                 | ((uint32_t)frame[tcp_at + 6] << 8) | frame[tcp_at + 7];
    unsigned char flags = frame[tcp_at + 13];
    /* The pseudo-header without its length: source, destination, next header. */
    uint32_t pseudo = add_words(frame + 14 + 8, 32, 6);

    for (size_t i = 0; i < count; i++) {
        size_t take = (i + 1 < count) ? mss : payload - i * mss;
        unsigned char *seg = out + i * stride;
        memcpy(seg, frame, headers);
        memcpy(seg + headers, frame + headers + i * mss, take);
        unsigned char *tcp = seg + tcp_at;
        put16(seg + 18, (uint32_t)(thl + take));
        put32(tcp + 4, seq + (uint32_t)(i * mss));
        unsigned char f = flags;
        if (i + 1 < count)
            f &= (unsigned char)~0x09;  /* FIN and PSH go with the last segment */
        if (i > 0)
            f &= (unsigned char)~0x80;  /* CWR with the first */
        tcp[13] = f;
        put16(tcp + 16, 0);
        uint32_t sum = add_words(tcp, thl, (uint64_t)pseudo + thl + take + payload_sum(seg + headers, take));
        put16(tcp + 16, ~sum & 0xffff);
    }
    return (int)count;
}
