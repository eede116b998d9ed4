#include <stddef.h>
#include <stdint.h>
/* One record per frame of a burst, written by yas_tcp_fast_classify (48 bytes, no padding;
 * trio_yastack/stack/tcp/_fastpath.py reads it with struct format "=IIHHIIHHqqII"). */
struct yas_tcp_seg {
    uint32_t kind;       /* YAS_FAST_CANDIDATE(6), YAS_FAST_UDP(6) or YAS_FAST_DECLINE */
    uint32_t src;        /* IPv4 source address (IPv6: the frame's bytes 22..37; UDP6: see there) */
    uint16_t sport, dport;
    uint32_t seq, ack;
    uint16_t flags, window;
    int64_t tsval, tsecr; /* -1: no timestamp option */
    uint32_t data_start, end; /* the payload is frame[data_start:end] */
};
#define YAS_FAST_DECLINE 0
#define YAS_FAST_CANDIDATE 1
#define YAS_FAST_UDP 2 /* src, sport, dport, data_start (the payload), end */
#define YAS_FAST_CANDIDATE6 3 /* a candidate over IPv6: the TCP fields as for YAS_FAST_CANDIDATE, `src`
                               * the index of its destination among the usable addresses (ip6) */
#define YAS_FAST_UDP6 4 /* a UDP datagram over IPv6: as YAS_FAST_UDP, its source in the frame's bytes
                          * 22..37, `seq` its slot in the table of sources, `src` slot + 1 when there */
#define YAS_FAST_SRC6_BITS 12
#define YAS_FAST_SRC6_SLOTS (1 << YAS_FAST_SRC6_BITS) /* the table of UDP6 sources: 16 bytes each */
#define YAS_FAST_MAX_IP6 64 /* the most IPv6 addresses (ip6len / 16) a call compares with */
#define YAS_FAST_VERIFIED 0x80000000u
#define YAS_FAST_BAD_ARGS -1
int yas_tcp_fast_classify(const char *frames, size_t frameslen, const char *lens, size_t lenslen,
                          int n, const char *mac, uint32_t ip, uint32_t broadcast, const char *ip6,
                          size_t ip6len, uint32_t ip6_usable, const char *src6, size_t src6len, int verify,
                          char *out, size_t outlen);
_Static_assert(sizeof(struct yas_tcp_seg) == 48, "the record layout _fastpath.py unpacks");
