/*
 * The Toeplitz hash of receive-side scaling (RSS), for trio_yastack's software dispatch.
 *
 * A NIC with RSS hashes each packet's flow (source address, destination address, source port,
 * destination port, in network byte order) with this function and a secret key, and uses the
 * low bits of the hash to index its redirection table; when a port cannot do that (one TAP
 * queue), the dispatching core does it here, once per packet, so the hash must be cheap.
 *
 * The Microsoft definition ("RSS hashing functions"): for each bit of the input, from the most
 * significant bit of the first byte on, if the bit is set, XOR into the result the 32 bits of
 * the key that start at that bit's position.  The last input bit needs key bits up to
 * 8*len + 30, so the key must hold at least len + 4 bytes; a shorter key returns 0 and reads
 * nothing past it (0 is also a valid hash: the Python wrapper checks the length first and
 * raises ValueError).  The twin is trio_yastack.dispatch._native_rss.py_toeplitz, and
 * tests/test_rss.py proves both against the published verification vectors and each other.
 */
#include <stdint.h>
#include "rss.h"

uint32_t yas_toeplitz(const char *key_in, size_t keylen, const char *data_in, size_t len)
{
    const unsigned char *key = (const unsigned char *)key_in;
    const unsigned char *data = (const unsigned char *)data_in;
    if (keylen < 4 || keylen - 4 < len)
        return 0;
    /* `window` is the 32 key bits starting at the current input bit; each input bit shifts in
     * the next key bit, taken from key[i + 4] (which exists: i + 4 < len + 4 <= keylen). */
    uint32_t window = ((uint32_t)key[0] << 24) | ((uint32_t)key[1] << 16) | ((uint32_t)key[2] << 8) | key[3];
    uint32_t result = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned byte = data[i];
        unsigned next = key[i + 4];
        for (int bit = 7; bit >= 0; bit--) {
            /* branch-free: the mask is all ones when the input bit is set */
            result ^= window & (0u - ((byte >> bit) & 1u));
            window = (window << 1) | ((next >> bit) & 1u);
        }
    }
    return result;
}
