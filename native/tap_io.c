/* TAP port burst I/O: see tap_io.h.  io_uring is driven through its raw system calls (no
 * liburing): one ring per TAP queue, SQEs linked so that the frames leave in order and a refused
 * write stops the burst where the Python loop would stop it. */
#define _GNU_SOURCE
#include "tap_io.h"

#include <errno.h>
#include <linux/fs.h>
#include <linux/io_uring.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#define ETHER_LEN 14
#define VNET_F_NEEDS_CSUM 1
#define VNET_F_DATA_VALID 2
#define VNET_GSO_NONE 0
#define VNET_GSO_TCPV4 1
#define VNET_GSO_TCPV6 4

struct yas_tap_ring {
    int ring_fd;
    int fd;
    int fixed; /* the TAP fd is registered: SQEs name it as file 0 */
    unsigned *sq_head, *sq_tail, *sq_mask, *sq_array;
    unsigned *cq_head, *cq_tail, *cq_mask;
    struct io_uring_sqe *sqes;
    struct io_uring_cqe *cqes;
    void *sq_map, *cq_map;
    size_t sq_map_len, cq_map_len, sqes_len;
    struct iovec iov[YAS_TAP_RING_ENTRIES][2];
    unsigned char hdr[YAS_TAP_RING_ENTRIES][YAS_TAP_VNET_HDR_LEN];
};

static int sys_setup(unsigned entries, struct io_uring_params *p) {
    return (int)syscall(__NR_io_uring_setup, entries, p);
}

static int sys_enter(int ring_fd, unsigned to_submit, unsigned min_complete, unsigned flags) {
    return (int)syscall(__NR_io_uring_enter, ring_fd, to_submit, min_complete, flags, NULL, 0);
}

int yas_tap_ring_open(int fd, struct yas_tap_ring **out) {
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    struct yas_tap_ring *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return -ENOMEM;
    int ring_fd = sys_setup(YAS_TAP_RING_ENTRIES, &p);
    if (ring_fd < 0) {
        int err = errno;
        free(r);
        return -err;
    }
    r->ring_fd = ring_fd;
    r->fd = fd;
    r->sq_map_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    r->cq_map_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    if ((p.features & IORING_FEAT_SINGLE_MMAP) && r->cq_map_len > r->sq_map_len)
        r->sq_map_len = r->cq_map_len;
    r->sq_map = mmap(NULL, r->sq_map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring_fd,
                     IORING_OFF_SQ_RING);
    if (r->sq_map == MAP_FAILED)
        goto fail;
    if (p.features & IORING_FEAT_SINGLE_MMAP) {
        r->cq_map = r->sq_map;
    } else {
        r->cq_map = mmap(NULL, r->cq_map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring_fd,
                         IORING_OFF_CQ_RING);
        if (r->cq_map == MAP_FAILED) {
            r->cq_map = NULL;
            goto fail;
        }
    }
    r->sqes_len = p.sq_entries * sizeof(struct io_uring_sqe);
    r->sqes = mmap(NULL, r->sqes_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring_fd,
                   IORING_OFF_SQES);
    if (r->sqes == MAP_FAILED) {
        r->sqes = NULL;
        goto fail;
    }
    char *sq = r->sq_map, *cq = r->cq_map;
    r->sq_head = (unsigned *)(sq + p.sq_off.head);
    r->sq_tail = (unsigned *)(sq + p.sq_off.tail);
    r->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
    r->sq_array = (unsigned *)(sq + p.sq_off.array);
    r->cq_head = (unsigned *)(cq + p.cq_off.head);
    r->cq_tail = (unsigned *)(cq + p.cq_off.tail);
    r->cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
    r->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
    /* A registered file saves the kernel a descriptor look-up per write; optional. */
    r->fixed = syscall(__NR_io_uring_register, ring_fd, IORING_REGISTER_FILES, &fd, 1) == 0;
    *out = r;
    return 0;
fail : {
    int err = errno;
    yas_tap_ring_close(r);
    return -err;
}
}

void yas_tap_ring_close(struct yas_tap_ring *r) {
    if (r == NULL)
        return;
    if (r->sqes != NULL)
        munmap(r->sqes, r->sqes_len);
    if (r->cq_map != NULL && r->cq_map != r->sq_map)
        munmap(r->cq_map, r->cq_map_len);
    if (r->sq_map != NULL && r->sq_map != MAP_FAILED)
        munmap(r->sq_map, r->sq_map_len);
    close(r->ring_fd);
    free(r);
}

/* The virtio-net header of one frame (see tap.py's _offload_header, its twin); -EINVAL when a
 * partial-checksum frame is not TCP over IPv4 or over IPv6 (no extension header: the stack sends
 * none). */
static int vnet_header(const unsigned char *f, uint32_t len, uint32_t meta, unsigned char *hdr) {
    memset(hdr, 0, YAS_TAP_VNET_HDR_LEN);
    if (!(meta & YAS_TAP_PARTIAL_CSUM))
        return 0;
    uint16_t tcp_at;
    unsigned char gso_type;
    if (len >= ETHER_LEN + 60 && f[12] == 0x86 && f[13] == 0xDD && f[ETHER_LEN + 6] == 6) {
        tcp_at = ETHER_LEN + 40;
        gso_type = VNET_GSO_TCPV6;
    } else if (len < ETHER_LEN + 40 || f[12] != 0x08 || f[13] != 0x00 || f[ETHER_LEN + 9] != 6) {
        return -EINVAL;
    } else {
        tcp_at = ETHER_LEN + ((f[ETHER_LEN] & 0x0F) << 2);
        gso_type = VNET_GSO_TCPV4;
    }
    if ((uint32_t)tcp_at + 13 > len)
        return -EINVAL;
    uint16_t hdr_len = tcp_at + ((f[tcp_at + 12] >> 4) << 2);
    uint16_t gso_size = meta & 0xFFFF, csum_start = tcp_at, csum_offset = 16;
    hdr[0] = VNET_F_NEEDS_CSUM;
    hdr[1] = gso_size ? gso_type : VNET_GSO_NONE;
    memcpy(hdr + 2, &hdr_len, 2); /* native byte order, as the legacy header wants */
    memcpy(hdr + 4, &gso_size, 2);
    memcpy(hdr + 6, &csum_start, 2);
    memcpy(hdr + 8, &csum_offset, 2);
    return 0;
}

/* Check frame i and fill its iovecs; 0, or the -errno that refuses it without a write. */
static int prepare(const char *frame, uint32_t len, uint32_t meta, int vnet, uint32_t max_len,
                   unsigned char *hdr, struct iovec *iov) {
    if (!(meta & 0xFFFF) && len > max_len)
        return -EMSGSIZE;
    if (vnet) {
        int bad = vnet_header((const unsigned char *)frame, len, meta, hdr);
        if (bad)
            return bad;
        iov[0].iov_base = hdr;
        iov[0].iov_len = YAS_TAP_VNET_HDR_LEN;
        iov[1].iov_base = (void *)frame;
        iov[1].iov_len = len;
    } else {
        if (meta & 0xFFFF)
            return -EMSGSIZE; /* TSO without a virtio-net header to ask the kernel with */
        iov[0].iov_base = (void *)frame;
        iov[0].iov_len = len;
    }
    return 0;
}

static int tx_loop(int fd, const char *const *frames, const uint32_t *lens, const uint32_t *meta, int n,
                   int vnet, uint32_t max_len, uint64_t *stats) {
    unsigned char hdr[YAS_TAP_VNET_HDR_LEN];
    struct iovec iov[2];
    for (int i = 0; i < n; i++) {
        int bad = prepare(frames[i], lens[i], meta[i], vnet, max_len, hdr, iov);
        if (!bad) {
            if (writev(fd, iov, vnet ? 2 : 1) < 0) {
                if (errno == EAGAIN)
                    return i;
                bad = -errno;
            } else {
                stats[0]++;
                stats[1] += lens[i];
            }
        }
        if (bad)
            stats[2]++;
    }
    return n;
}

/* One chunk of at most YAS_TAP_RING_ENTRIES frames through the ring. */
static int tx_ring(struct yas_tap_ring *r, const char *const *frames, const uint32_t *lens,
                   const uint32_t *meta, int n, int vnet, uint32_t max_len, uint64_t *stats) {
    unsigned tail = *r->sq_tail, mask = *r->sq_mask;
    unsigned queued = 0;
    int last = -1;
    for (int i = 0; i < n; i++) {
        int bad = prepare(frames[i], lens[i], meta[i], vnet, max_len, r->hdr[i], r->iov[i]);
        if (bad) {
            stats[2]++;
            continue;
        }
        unsigned index = (tail + queued) & mask;
        struct io_uring_sqe *sqe = &r->sqes[index];
        memset(sqe, 0, sizeof(*sqe));
        sqe->opcode = IORING_OP_WRITEV;
        sqe->fd = r->fixed ? 0 : r->fd;
        sqe->flags = (r->fixed ? IOSQE_FIXED_FILE : 0) | IOSQE_IO_LINK;
        sqe->addr = (uint64_t)(uintptr_t)r->iov[i];
        sqe->len = vnet ? 2 : 1;
        /* Never wait: io_uring would otherwise park a write to a full queue on a poll (it does not
         * take the descriptor's O_NONBLOCK as that), and the poll loop would hang in tx_burst. */
        sqe->rw_flags = RWF_NOWAIT;
        sqe->user_data = (uint64_t)i;
        r->sq_array[index] = index;
        queued++;
        last = (int)index;
    }
    if (queued == 0)
        return n;
    r->sqes[last].flags &= (uint8_t)~IOSQE_IO_LINK; /* the chain ends with the burst */
    __atomic_store_n(r->sq_tail, tail + queued, __ATOMIC_RELEASE);
    int entered = sys_enter(r->ring_fd, queued, queued, IORING_ENTER_GETEVENTS);
    if (entered < 0 && errno != EINTR) {
        /* Nothing was submitted: take the SQEs back (the kernel never advanced its head). */
        int err = errno;
        __atomic_store_n(r->sq_tail, tail, __ATOMIC_RELEASE);
        return -err;
    }
    /* Every submitted SQE completes (a broken link with -ECANCELED); writes to a non-blocking
     * TAP complete inside the submission, so the loop below normally reaps them all at once. */
    int taken = n;
    unsigned seen = 0;
    unsigned head = *r->cq_head;
    while (seen < queued) {
        unsigned cq_tail = __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE);
        if (head == cq_tail) {
            __atomic_store_n(r->cq_head, head, __ATOMIC_RELEASE);
            if (sys_enter(r->ring_fd, 0, queued - seen, IORING_ENTER_GETEVENTS) < 0 && errno != EINTR)
                return -errno; /* cannot happen with a sane ring; the frames' fate is unknown */
            continue;
        }
        for (; head != cq_tail; head++, seen++) {
            struct io_uring_cqe *cqe = &r->cqes[head & *r->cq_mask];
            int i = (int)cqe->user_data;
            int res = cqe->res;
            if (res == -EAGAIN || res == -ECANCELED) {
                if (i < taken)
                    taken = i; /* this frame and the rest are the caller's again */
            } else if (res < 0) {
                stats[2]++;
            } else {
                stats[0]++;
                stats[1] += lens[i];
            }
        }
    }
    __atomic_store_n(r->cq_head, head, __ATOMIC_RELEASE);
    return taken;
}

/* At most YAS_TAP_RING_ENTRIES frames, each where its pointer says: the loop or the ring. */
static int tx_chunk(struct yas_tap_ring *ring, int fd, const char *const *frames, const uint32_t *lens,
                    const uint32_t *meta, int n, int vnet, uint32_t max_len, uint64_t *stats) {
    if (ring == NULL)
        return tx_loop(fd, frames, lens, meta, n, vnet, max_len, stats);
    return tx_ring(ring, frames, lens, meta, n, vnet, max_len, stats);
}

int yas_tap_tx_frames(struct yas_tap_ring *ring, int fd, const char *const *frames, const uint32_t *lens,
                      const uint32_t *meta, int n, int vnet, uint32_t max_len, uint64_t *stats) {
    stats[0] = stats[1] = stats[2] = 0;
    if (n < 0)
        return -EINVAL;
    int done = 0;
    while (done < n) {
        int chunk = n - done < YAS_TAP_RING_ENTRIES ? n - done : YAS_TAP_RING_ENTRIES;
        int taken = tx_chunk(ring, fd, frames + done, lens + done, meta + done, chunk, vnet, max_len, stats);
        if (taken < 0)
            return done ? done : taken;
        done += taken;
        if (taken < chunk)
            break;
    }
    return done;
}

int yas_tap_tx_burst(struct yas_tap_ring *ring, int fd, const char *frames, size_t frameslen,
                     const uint32_t *lens, const uint32_t *meta, int n, int vnet, uint32_t max_len,
                     uint64_t *stats) {
    const char *at[YAS_TAP_RING_ENTRIES];
    size_t total = 0;
    stats[0] = stats[1] = stats[2] = 0;
    if (n < 0)
        return -EINVAL;
    for (int i = 0; i < n; i++)
        total += lens[i];
    if (total > frameslen)
        return -EINVAL;
    int done = 0;
    size_t offset = 0;
    while (done < n) {
        int chunk = n - done < YAS_TAP_RING_ENTRIES ? n - done : YAS_TAP_RING_ENTRIES;
        size_t here = offset;
        for (int i = 0; i < chunk; i++) {
            at[i] = frames + here;
            here += lens[done + i];
        }
        int taken = tx_chunk(ring, fd, at, lens + done, meta + done, chunk, vnet, max_len, stats);
        if (taken < 0)
            return done ? done : taken;
        for (int i = 0; i < taken; i++)
            offset += lens[done + i];
        done += taken;
        if (taken < chunk)
            break;
    }
    return done;
}

int yas_tap_rx_burst(int fd, char *out, size_t outlen, size_t size, int vnet, uint32_t *lens, int max_n,
                     uint32_t *errors) {
    if (max_n < 0 || (size_t)max_n * size > outlen || size > 0x7FFFFFFF)
        return -EINVAL;
    size_t hdr = vnet ? YAS_TAP_VNET_HDR_LEN : 0;
    int n = 0;
    while (n < max_n) {
        char *slot = out + (size_t)n * size;
        ssize_t got = read(fd, slot, size);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || n > 0)
                break;
            return -errno;
        }
        if ((size_t)got <= hdr) {
            ++*errors; /* a header and no frame: counted, and its slot reused */
            continue;
        }
        uint32_t len = (uint32_t)((size_t)got - hdr);
        /* NEEDS_CSUM (never computed: the frame never left the machine) or DATA_VALID: the kernel
         * vouches for the checksums */
        if (vnet && (slot[0] & (VNET_F_NEEDS_CSUM | VNET_F_DATA_VALID)))
            len |= YAS_TAP_RX_VERIFIED;
        lens[n++] = len;
    }
    return n;
}
