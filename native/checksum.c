/*
 * The Internet checksum (RFC 1071) for trio_yastack.
 *
 * yas_sum16() returns the 16-bit one's-complement sum of `len` bytes at `buf + offset`, plus
 * `initial` (a partial sum in network byte order, e.g. of a pseudo-header), folded to 16 bits
 * but not inverted.  A sum of all-zero input is 0; any other sum that folds to zero is 0xFFFF,
 * exactly as end-around-carry addition gives.  A range outside `buflen` bytes returns
 * YAS_SUM16_OUT_OF_RANGE and reads nothing.  The pure-Python twin is
 * trio_yastack.stack._native.py_sum16, and tests/test_native.py proves the two agree.
 *
 * The words are added in host byte order and the result swapped once at the end: RFC 1071
 * section 2(B), byte-order independence.  Loads go through memcpy so any alignment is fine.
 */
#include <stdint.h>
#include <string.h>
#include "checksum.h"

static uint64_t add_host_words(const unsigned char *p, size_t len)
{
    uint64_t sum = 0;
    while (len >= 32) {
        uint32_t w[8];
        memcpy(w, p, 32);
        sum += (uint64_t)w[0] + w[1] + w[2] + w[3];
        sum += (uint64_t)w[4] + w[5] + w[6] + w[7];
        p += 32;
        len -= 32;
    }
    while (len >= 4) {
        uint32_t w;
        memcpy(&w, p, 4);
        sum += w;
        p += 4;
        len -= 4;
    }
    if (len >= 2) {
        uint16_t h;
        memcpy(&h, p, 2);
        sum += h;
        p += 2;
        len -= 2;
    }
    if (len) {
        /* The odd last byte is the high byte of a word padded with zero (network order). */
        unsigned char last[2] = {p[0], 0};
        uint16_t h;
        memcpy(&h, last, 2);
        sum += h;
    }
    return sum;
}

static uint32_t fold(uint64_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint32_t)sum;
}

uint32_t yas_sum16(const char *buf, size_t buflen, size_t offset, size_t len, uint32_t initial)
{
    if (offset > buflen || len > buflen - offset)
        return YAS_SUM16_OUT_OF_RANGE;  /* never read outside the caller's buffer */
    uint32_t host = fold(add_host_words((const unsigned char *)buf + offset, len));
    const uint16_t probe = 1;
    if (*(const unsigned char *)&probe == 1)  /* little-endian host: swap to network order */
        host = ((host & 0xff) << 8) | (host >> 8);
    return fold((uint64_t)host + initial);
}
