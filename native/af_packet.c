/* AF_PACKET port: the TPACKET_V3 receive-ring walk and the sendmmsg transmit burst.
 *
 * Receive (packet_mmap.rst, "TPACKET_V3"): the ring is block_count blocks of block_size bytes;
 * the kernel fills a block with variable-length frames and hands it over by setting
 * TP_STATUS_USER in its block_status (when it is full or its retire timer fires).  One call
 * copies up to max_n frames, from as many handed-over blocks as it takes, into `out` (frames
 * back to back, their lengths in lens[], their tp_status in status[]) and gives each block it
 * finished back to the kernel (TP_STATUS_KERNEL), so Python makes one crossing per burst and
 * then cuts `out` into bytes objects.  A VLAN tag the kernel took off (TP_STATUS_VLAN_VALID) is
 * put back, so the stack sees the frame as it was on the wire.
 *
 * Transmit: one sendmmsg(2) for the whole burst on the bound packet socket. */
#define _GNU_SOURCE
#include "af_packet.h"

#include <errno.h>
#include <linux/if_packet.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

static inline uint32_t load_acquire(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }

static inline void release_block(struct tpacket_block_desc *desc) {
    __atomic_store_n(&desc->hdr.bh1.block_status, TP_STATUS_KERNEL, __ATOMIC_RELEASE);
}

int yas_afp_rx_walk(char *ring, size_t block_size, uint32_t block_count, struct yas_afp_cursor *cursor,
                    int max_n, char *out, size_t out_len, uint32_t *lens, uint32_t *status) {
    int n = 0;
    size_t used = 0;
    if (block_count == 0 || block_size < sizeof(struct tpacket_block_desc) || cursor->block >= block_count)
        return -1;
    while (n < max_n) {
        struct tpacket_block_desc *desc = (struct tpacket_block_desc *)(ring + (size_t)cursor->block * block_size);
        if (cursor->left == 0) {
            if (!(load_acquire(&desc->hdr.bh1.block_status) & TP_STATUS_USER))
                break; /* the kernel still fills it */
            cursor->left = desc->hdr.bh1.num_pkts;
            cursor->offset = desc->hdr.bh1.offset_to_first_pkt;
            if (cursor->left == 0) {
                release_block(desc);
                cursor->block = (cursor->block + 1) % block_count;
                continue;
            }
        }
        const char *base = (const char *)desc;
        const struct tpacket3_hdr *hdr = (const struct tpacket3_hdr *)(base + cursor->offset);
        uint32_t snap = 0, mac = 0, st = 0;
        int bad = (size_t)cursor->offset + YAS_AFP_HDR_MIN > block_size;
        if (!bad) {
            snap = hdr->tp_snaplen;
            mac = hdr->tp_mac;
            st = hdr->tp_status;
            bad = (size_t)cursor->offset + mac + snap > block_size || snap < 12;
        }
        if (bad) { /* a header outside the block: give the rest of the block up */
            cursor->bad_blocks++;
            cursor->left = 0;
            release_block(desc);
            cursor->block = (cursor->block + 1) % block_count;
            continue;
        }
        int tagged = (st & TP_STATUS_VLAN_VALID) != 0;
        size_t need = snap + (tagged ? 4 : 0);
        if (used + need > out_len)
            break; /* the caller's buffer is full: the frame stays for the next burst */
        const char *frame = base + cursor->offset + mac;
        char *dst = out + used;
        if (tagged) {
            uint16_t tpid = (st & TP_STATUS_VLAN_TPID_VALID) && hdr->hv1.tp_vlan_tpid ? hdr->hv1.tp_vlan_tpid : 0x8100;
            uint16_t tci = (uint16_t)hdr->hv1.tp_vlan_tci;
            memcpy(dst, frame, 12);
            dst[12] = (char)(tpid >> 8);
            dst[13] = (char)(tpid & 0xFF);
            dst[14] = (char)(tci >> 8);
            dst[15] = (char)(tci & 0xFF);
            memcpy(dst + 16, frame + 12, snap - 12);
        } else {
            memcpy(dst, frame, snap);
        }
        lens[n] = (uint32_t)need;
        status[n] = st;
        used += need;
        n++;
        cursor->offset += hdr->tp_next_offset;
        if (--cursor->left == 0) {
            release_block(desc);
            cursor->block = (cursor->block + 1) % block_count;
        }
    }
    return n;
}

/* TPACKET_V2: fixed slots of frame_size bytes (block_size / frame_size of them per block), each
 * handed over on its own (tp_status), so the kernel wakes the reader per frame: no block timer to
 * wait for, at the price of a slot per frame however small.  Same output as the V3 walk. */
int yas_afp_rx_walk_v2(char *ring, size_t block_size, size_t frame_size, uint32_t frame_count,
                       struct yas_afp_cursor *cursor, int max_n, char *out, size_t out_len, uint32_t *lens,
                       uint32_t *status) {
    int n = 0;
    size_t used = 0;
    if (frame_size < sizeof(struct tpacket2_hdr) || frame_size > block_size || frame_count == 0 ||
        cursor->block >= frame_count)
        return -1;
    size_t per_block = block_size / frame_size;
    while (n < max_n) {
        uint32_t slot = cursor->block;
        struct tpacket2_hdr *hdr =
            (struct tpacket2_hdr *)(ring + (slot / per_block) * block_size + (slot % per_block) * frame_size);
        uint32_t st = load_acquire(&hdr->tp_status);
        if (!(st & TP_STATUS_USER))
            break;
        uint32_t snap = hdr->tp_snaplen, mac = hdr->tp_mac;
        if ((size_t)mac + snap > frame_size || snap < 12) { /* outside its slot: not read */
            cursor->bad_blocks++;
        } else {
            int tagged = (st & TP_STATUS_VLAN_VALID) != 0;
            size_t need = snap + (tagged ? 4 : 0);
            if (used + need > out_len)
                break;
            const char *frame = (const char *)hdr + mac;
            char *dst = out + used;
            if (tagged) {
                uint16_t tpid = (st & TP_STATUS_VLAN_TPID_VALID) && hdr->tp_vlan_tpid ? hdr->tp_vlan_tpid : 0x8100;
                uint16_t tci = hdr->tp_vlan_tci;
                memcpy(dst, frame, 12);
                dst[12] = (char)(tpid >> 8);
                dst[13] = (char)(tpid & 0xFF);
                dst[14] = (char)(tci >> 8);
                dst[15] = (char)(tci & 0xFF);
                memcpy(dst + 16, frame + 12, snap - 12);
            } else {
                memcpy(dst, frame, snap);
            }
            lens[n] = (uint32_t)need;
            status[n] = st;
            used += need;
            n++;
        }
        __atomic_store_n(&hdr->tp_status, TP_STATUS_KERNEL, __ATOMIC_RELEASE);
        cursor->block = (slot + 1) % frame_count;
    }
    return n;
}

#define TX_BATCH 64

int yas_afp_tx_burst(int fd, const char *frames, const uint32_t *lens, int n) {
    struct mmsghdr msgs[TX_BATCH];
    struct iovec iov[TX_BATCH];
    int done = 0;
    size_t offset = 0;
    while (done < n) {
        int batch = n - done < TX_BATCH ? n - done : TX_BATCH;
        size_t at = offset;
        for (int i = 0; i < batch; i++) {
            iov[i].iov_base = (void *)(frames + at);
            iov[i].iov_len = lens[done + i];
            at += lens[done + i];
            memset(&msgs[i], 0, sizeof(msgs[i]));
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        int sent = sendmmsg(fd, msgs, (unsigned int)batch, MSG_DONTWAIT);
        if (sent < 0)
            return done ? done : -errno;
        for (int i = 0; i < sent; i++)
            offset += lens[done + i];
        done += sent;
        if (sent < batch)
            break;
    }
    return done;
}
