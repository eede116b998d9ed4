/* AF_PACKET port: the TPACKET_V3 receive-ring walk and the sendmmsg transmit burst.
 * Python twins: trio_yastack/nic/af_packet.py (py_rx_walk); tests/test_af_packet.py holds them
 * to the same frames from the same ring memory. */
#include <stddef.h>
#include <stdint.h>

/* Where the walk stands: the block it reads, the frames left in it and the offset of the next
 * one (all zero at the start: block 0, nothing taken yet).  A TPACKET_V2 walk uses `block` as
 * the index of the next frame slot and leaves the rest alone. */
struct yas_afp_cursor {
    uint32_t block;
    uint32_t left;
    uint32_t offset;
    uint32_t bad_blocks; /* blocks whose frame headers pointed outside the block: skipped */
};

#define YAS_AFP_HDR_MIN 48 /* sizeof(struct tpacket3_hdr) */

int yas_afp_rx_walk(char *ring, size_t block_size, uint32_t block_count, struct yas_afp_cursor *cursor,
                    int max_n, char *out, size_t out_len, uint32_t *lens, uint32_t *status);
int yas_afp_rx_walk_v2(char *ring, size_t block_size, size_t frame_size, uint32_t frame_count,
                       struct yas_afp_cursor *cursor, int max_n, char *out, size_t out_len, uint32_t *lens,
                       uint32_t *status);
int yas_afp_tx_burst(int fd, const char *frames, const uint32_t *lens, int n);
