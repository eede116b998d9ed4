/*
 * The AF_XDP poll-mode driver's C half: one XDP socket per queue with its UMEM, the four rings
 * driven through libxdp's inline helpers (<xdp/xsk.h>), one call per burst each way.
 *
 * The ring protocol (linux/if_xdp.h, Documentation/networking/af_xdp.rst): each ring is a
 * power-of-two array shared with the kernel, with a u32 producer and a u32 consumer index that
 * increase forever (entry = index & mask).  User space produces into the fill ring (free
 * receive frames) and the tx ring (frames to send), and consumes from the rx ring (received
 * frames) and the completion ring (sent frames that are ours again).  The helpers cache the
 * other side's index and read it again only when the cache says "empty" or "full"; a producer
 * publishes with a release store, a consumer reads with an acquire load.  need_wakeup
 * (XDP_USE_NEED_WAKEUP): the kernel sets XDP_RING_NEED_WAKEUP in a ring's flags when it will
 * not look at the ring again until it is kicked (recvfrom for the fill ring, sendto for the tx
 * ring); with the flag clear, no system call is made at all.
 *
 * The Python twin of the ring arithmetic, the bursts and the reaping is
 * trio_yastack/nic/_af_xdp_ring.py, with the same names; tests/test_af_xdp.py runs both over
 * the same rings in ordinary memory (fd -1: no kicks) and compares every byte.
 */
#define _GNU_SOURCE
#include "af_xdp.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/stat.h>
#include <linux/if_link.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>
#include <xdp/libxdp.h>

#ifndef SOL_XDP
#define SOL_XDP 283
#endif

static int quiet_libbpf(enum libbpf_print_level level, const char *format, va_list args)
{
    (void)level;
    (void)format;
    (void)args;
    return 0;
}

static int quiet_libxdp(enum libxdp_print_level level, const char *format, va_list args)
{
    (void)level;
    (void)format;
    (void)args;
    return 0;
}

static int is_power_of_two(uint32_t v) { return v && !(v & (v - 1)); }

/* The frame of the UMEM that an address points into (aligned mode: frames are frame_size
 * apart, a power of two). */
static inline uint64_t frame_base(const struct yas_xsk *x, uint64_t addr)
{
    return addr & ~((uint64_t)x->frame_size - 1);
}

static void say(char *why, size_t whylen, const char *fmt, ...)
{
    va_list args;
    if (!why || !whylen)
        return;
    va_start(args, fmt);
    vsnprintf(why, whylen, fmt, args);
    va_end(args);
}

static int make_umem(struct yas_xsk *x, uint32_t ring_size)
{
    struct xsk_umem_config cfg = {
        .fill_size = ring_size,
        .comp_size = ring_size,
        .frame_size = x->frame_size,
        .frame_headroom = 0,
        .flags = 0,
    };
    return xsk_umem__create(&x->umem, x->umem_area, x->umem_len, &x->fill, &x->comp, &cfg);
}

int yas_xsk_open(const char *ifname, uint32_t queue, uint32_t nframes, uint32_t frame_size, int mode,
                 struct yas_xsk **out, char *why, size_t whylen)
{
    static const struct {
        int mode;
        uint32_t attach;
        uint16_t bind;
        const char *name;
    } attempts[] = {
        {YAS_XSK_MODE_ZEROCOPY, YAS_XSK_ATTACH_DRV, XDP_ZEROCOPY, "driver XDP, zero-copy"},
        {YAS_XSK_MODE_AUTO, YAS_XSK_ATTACH_DRV, XDP_COPY, "driver XDP, copy"},
        {YAS_XSK_MODE_COPY, YAS_XSK_ATTACH_SKB, XDP_COPY, "generic XDP, copy"},
    };
    struct yas_xsk *x;
    uint32_t ring_size, idx, i;
    int err = -EINVAL;
    size_t k;

    *out = NULL;
    if (!is_power_of_two(nframes) || nframes < 16 || !is_power_of_two(frame_size) || frame_size < 2048 ||
        frame_size > 4096 || mode < YAS_XSK_MODE_AUTO || mode > YAS_XSK_MODE_ZEROCOPY) {
        say(why, whylen, "frames must be a power of two >= 16 and frame_size 2048 or 4096");
        return -EINVAL;
    }
    libbpf_set_print(quiet_libbpf);
    libxdp_set_print(quiet_libxdp);
    x = calloc(1, sizeof(*x));
    if (!x)
        return -ENOMEM;
    x->fd = -1;
    x->netns_fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    x->frame_size = frame_size;
    x->nframes = nframes;
    x->rx_frames = nframes / 2;
    x->umem_len = (uint64_t)nframes * frame_size;
    x->free_frames = calloc(nframes - x->rx_frames, sizeof(uint64_t));
    /* MAP_SHARED: a fork never splits the frames the kernel writes from the ones we read */
    x->umem_area = mmap(NULL, x->umem_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (x->umem_area == MAP_FAILED) {
        x->umem_area = NULL;
        err = -errno;
        say(why, whylen, "mmap of a %llu-byte UMEM", (unsigned long long)x->umem_len);
        goto fail;
    }
    if (!x->free_frames) {
        err = -ENOMEM;
        goto fail;
    }
    ring_size = nframes / 2;
    for (k = 0; k < sizeof(attempts) / sizeof(attempts[0]); k++) {
        struct xsk_socket_config cfg = {
            .rx_size = ring_size,
            .tx_size = ring_size,
            .libxdp_flags = 0,
            .xdp_flags = attempts[k].attach == YAS_XSK_ATTACH_SKB ? XDP_FLAGS_SKB_MODE : XDP_FLAGS_DRV_MODE,
            .bind_flags = attempts[k].bind | XDP_USE_NEED_WAKEUP,
        };
        if (mode != YAS_XSK_MODE_AUTO && attempts[k].mode != mode)
            continue;
        /* a fresh UMEM per attempt: a failed xsk_socket__create unmaps the fill and completion
         * rings of the UMEM it was given */
        err = make_umem(x, ring_size);
        if (err) {
            say(why, whylen, "xsk_umem__create (registering %u frames of %u bytes)", nframes, frame_size);
            goto fail;
        }
        err = xsk_socket__create(&x->xsk, ifname, queue, x->umem, &x->rx, &x->tx, &cfg);
        if (!err) {
            x->attach = attempts[k].attach;
            x->zerocopy = attempts[k].bind == XDP_ZEROCOPY;
            break;
        }
        say(why, whylen, "xsk_socket__create on %s queue %u (%s)", ifname, queue, attempts[k].name);
        xsk_umem__delete(x->umem);
        x->umem = NULL;
        x->xsk = NULL;
        /* no point in the next mode when the cause is not the mode */
        if (err == -EBUSY || err == -ENODEV || err == -EPERM || err == -EACCES || err == -ENOMEM)
            goto fail;
    }
    if (!x->xsk)
        goto fail;
    x->fd = xsk_socket__fd(x->xsk);
    /* every receive frame starts in the fill ring; the fill ring holds them all */
    if (xsk_ring_prod__reserve(&x->fill, x->rx_frames, &idx) != x->rx_frames) {
        err = -EIO;
        say(why, whylen, "the fill ring has no room for %u frames", x->rx_frames);
        goto fail;
    }
    for (i = 0; i < x->rx_frames; i++)
        *xsk_ring_prod__fill_addr(&x->fill, idx + i) = (uint64_t)i * frame_size;
    xsk_ring_prod__submit(&x->fill, x->rx_frames);
    /* and every transmit frame on the free stack, the lowest on top */
    for (i = 0; i < nframes - x->rx_frames; i++)
        x->free_frames[i] = (uint64_t)(nframes - 1 - i) * frame_size;
    x->n_free = nframes - x->rx_frames;
    *out = x;
    return 0;
fail:
    yas_xsk_close(x);
    return err < 0 ? err : -EIO;
}

/* Step the calling thread into the namespace x was opened in; returns the fd of the one to go
 * back to, or -1 when already there (or when it cannot: then the teardown runs where we are). */
static int enter_netns(const struct yas_xsk *x)
{
    struct stat here, there;
    int home;
    if (x->netns_fd < 0 || fstat(x->netns_fd, &there) < 0)
        return -1;
    home = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (home < 0)
        return -1;
    if (fstat(home, &here) == 0 && here.st_ino == there.st_ino && here.st_dev == there.st_dev) {
        close(home);
        return -1;
    }
    if (setns(x->netns_fd, CLONE_NEWNET) < 0) {
        close(home);
        return -1;
    }
    return home;
}

void yas_xsk_close(struct yas_xsk *x)
{
    int home;
    if (!x)
        return;
    home = enter_netns(x);
    if (x->xsk)
        xsk_socket__delete(x->xsk);
    if (x->umem)
        xsk_umem__delete(x->umem);
    if (home >= 0) {
        setns(home, CLONE_NEWNET);
        close(home);
    }
    if (x->netns_fd >= 0)
        close(x->netns_fd);
    if (x->umem_area)
        munmap(x->umem_area, x->umem_len);
    free(x->free_frames);
    free(x);
}

/* Drop this process's hold on a socket that another process (a forked worker) goes on using:
 * unmap its rings and its UMEM and close its descriptor, without libxdp's teardown, which would
 * take the queue out of the XSK map and detach the XDP program under the worker's feet.
 * libxdp's own small bookkeeping structures are left allocated. */
void yas_xsk_forget(struct yas_xsk *x)
{
    struct xdp_mmap_offsets off;
    socklen_t optlen = sizeof(off);
    if (!x)
        return;
    if (x->fd >= 0 && getsockopt(x->fd, SOL_XDP, XDP_MMAP_OFFSETS, &off, &optlen) == 0) {
        munmap((char *)x->rx.producer - off.rx.producer, off.rx.desc + x->rx.size * sizeof(struct xdp_desc));
        munmap((char *)x->tx.producer - off.tx.producer, off.tx.desc + x->tx.size * sizeof(struct xdp_desc));
        munmap((char *)x->fill.producer - off.fr.producer, off.fr.desc + x->fill.size * sizeof(uint64_t));
        munmap((char *)x->comp.producer - off.cr.producer, off.cr.desc + x->comp.size * sizeof(uint64_t));
    }
    if (x->fd >= 0)
        close(x->fd);
    if (x->netns_fd >= 0)
        close(x->netns_fd);
    if (x->umem_area)
        munmap(x->umem_area, x->umem_len);
    free(x->free_frames);
    free(x);
}

/* sendto until the kernel has taken the tx ring (copy mode sends at most a batch of 32 per
 * call and answers EAGAIN while more wait), bounded; only when the ring asks for it. */
static void kick_tx(struct yas_xsk *x)
{
    int tries;
    if (x->fd < 0 || !xsk_ring_prod__needs_wakeup(&x->tx))
        return;
    x->tx_wakeups++;
    for (tries = 0; tries < 64; tries++) {
        if (sendto(x->fd, NULL, 0, MSG_DONTWAIT, NULL, 0) >= 0)
            return;
        if (errno != EAGAIN && errno != EBUSY && errno != ENOBUFS)
            return; /* ENETDOWN and friends: the frames wait in the ring for the next kick */
        if (__atomic_load_n(x->tx.consumer, __ATOMIC_ACQUIRE) == *x->tx.producer)
            return;
        yas_xsk_reap(x);
    }
}

int yas_xsk_rx_burst(struct yas_xsk *x, char *out, size_t outlen, uint32_t *lens, int max)
{
    uint32_t idx_rx = 0, idx_fill = 0, n, i;
    size_t off = 0;

    if (max <= 0)
        return 0;
    /* a tx ring the kernel left unfinished (a busy device) is kicked again here, so frames never
     * wait in it for the next transmit burst */
    if (x->fd >= 0 && x->tx.cached_prod != __atomic_load_n(x->tx.consumer, __ATOMIC_ACQUIRE))
        kick_tx(x);
    n = xsk_ring_cons__peek(&x->rx, (uint32_t)max, &idx_rx);
    if (n == 0) {
        if (x->fd >= 0 && xsk_ring_prod__needs_wakeup(&x->fill)) {
            x->rx_wakeups++;
            recvfrom(x->fd, NULL, 0, MSG_DONTWAIT, NULL, NULL);
        }
        return 0;
    }
    for (i = 0; i < n; i++) {
        const struct xdp_desc *desc = xsk_ring_cons__rx_desc(&x->rx, idx_rx + i);
        uint64_t addr = xsk_umem__add_offset_to_addr(desc->addr);
        uint32_t len = desc->len;
        if (addr >= x->umem_len || len > x->umem_len - addr || len > x->frame_size) {
            xsk_ring_cons__cancel(&x->rx, n);
            return YAS_XSK_CORRUPT;
        }
        if (len > outlen - off)
            break;
        memcpy(out + off, x->umem_area + addr, len);
        lens[i] = len;
        off += len;
    }
    if (i < n) {
        xsk_ring_cons__cancel(&x->rx, n - i);
        n = i;
    }
    /* the fill ring has room for every receive frame, so this never falls short */
    if (xsk_ring_prod__reserve(&x->fill, n, &idx_fill) != n) {
        xsk_ring_cons__cancel(&x->rx, n);
        return YAS_XSK_CORRUPT;
    }
    for (i = 0; i < n; i++)
        *xsk_ring_prod__fill_addr(&x->fill, idx_fill + i) =
            frame_base(x, xsk_ring_cons__rx_desc(&x->rx, idx_rx + i)->addr);
    xsk_ring_prod__submit(&x->fill, n);
    xsk_ring_cons__release(&x->rx, n);
    return (int)n;
}

int yas_xsk_reap(struct yas_xsk *x)
{
    uint32_t idx = 0, n, i, cap = x->nframes - x->rx_frames;
    n = xsk_ring_cons__peek(&x->comp, x->comp.size, &idx);
    if (n > cap - x->n_free) {
        xsk_ring_cons__cancel(&x->comp, n);
        return YAS_XSK_CORRUPT;
    }
    for (i = 0; i < n; i++)
        x->free_frames[x->n_free++] = frame_base(x, *xsk_ring_cons__comp_addr(&x->comp, idx + i));
    if (n)
        xsk_ring_cons__release(&x->comp, n);
    return (int)n;
}

int yas_xsk_tx_burst(struct yas_xsk *x, const char *frames, size_t frameslen, const uint32_t *lens, int n,
                     uint32_t max_len)
{
    uint32_t room, slots, used = 0, idx = 0;
    size_t off = 0;
    int taken;

    if (n <= 0)
        return 0;
    for (taken = 0; taken < n; taken++) {
        if (lens[taken] > frameslen - off)
            return YAS_XSK_BAD_ARGS;
        off += lens[taken];
    }
    off = 0;
    if (yas_xsk_reap(x) < 0)
        return YAS_XSK_CORRUPT;
    room = xsk_prod_nb_free(&x->tx, (uint32_t)n);
    slots = (uint32_t)n < room ? (uint32_t)n : room;
    if (slots > x->n_free)
        slots = x->n_free;
    if (slots)
        xsk_ring_prod__reserve(&x->tx, slots, &idx);
    for (taken = 0; taken < n; taken++) {
        uint32_t len = lens[taken];
        struct xdp_desc *desc;
        uint64_t addr;
        if (len > max_len || len > x->frame_size) {
            x->tx_too_long++; /* not sent, and accepted: the caller counts it as an error */
            off += len;
            continue;
        }
        if (used == slots)
            break;
        addr = x->free_frames[--x->n_free];
        memcpy(x->umem_area + addr, frames + off, len);
        desc = xsk_ring_prod__tx_desc(&x->tx, idx + used);
        desc->addr = addr;
        desc->len = len;
        desc->options = 0;
        used++;
        off += len;
    }
    x->tx.cached_prod -= slots - used; /* reserved but not filled: give the slots back */
    if (used) {
        xsk_ring_prod__submit(&x->tx, used);
        kick_tx(x);
    }
    return taken;
}

int yas_xsk_kernel_stats(struct yas_xsk *x, uint64_t *out)
{
    struct xdp_statistics stats;
    socklen_t len = sizeof(stats);
    memset(&stats, 0, sizeof(stats));
    if (x->fd < 0)
        return -EBADF;
    if (getsockopt(x->fd, SOL_XDP, XDP_STATISTICS, &stats, &len) < 0)
        return -errno;
    out[0] = stats.rx_dropped;
    out[1] = stats.rx_invalid_descs;
    out[2] = stats.tx_invalid_descs;
    out[3] = stats.rx_ring_full;
    out[4] = stats.rx_fill_ring_empty_descs;
    out[5] = stats.tx_ring_empty_descs;
    return 0;
}
