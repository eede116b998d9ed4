#include <stddef.h>
#include <stdint.h>
#include <xdp/xsk.h>

#define YAS_XSK_MODE_AUTO 0
#define YAS_XSK_MODE_COPY 1
#define YAS_XSK_MODE_ZEROCOPY 2
#define YAS_XSK_BAD_ARGS (-1)
#define YAS_XSK_CORRUPT (-2)
#define YAS_XSK_ATTACH_SKB 1
#define YAS_XSK_ATTACH_DRV 2

/* One XDP socket and its UMEM: the four rings of libxdp, the UMEM area, and the stack of free
 * transmit frames.  Frames [0, rx_frames) of the UMEM belong to receive (they circulate between
 * the fill ring, the kernel and the rx ring), frames [rx_frames, nframes) to transmit (the free
 * stack, the tx ring, the kernel and the completion ring).  fd is -1 for rings that a test built
 * over ordinary memory: nothing is ever kicked then. */
struct yas_xsk {
    struct xsk_ring_prod fill;
    struct xsk_ring_cons comp;
    struct xsk_ring_cons rx;
    struct xsk_ring_prod tx;
    char *umem_area;
    uint64_t umem_len;
    uint32_t frame_size;
    uint32_t nframes;
    uint32_t rx_frames;
    int fd;
    uint64_t *free_frames;
    uint32_t n_free;
    uint32_t attach; /* YAS_XSK_ATTACH_SKB or _DRV */
    int zerocopy;
    uint64_t rx_wakeups;
    uint64_t tx_wakeups;
    uint64_t tx_too_long;
    struct xsk_umem *umem;
    struct xsk_socket *xsk;
    int netns_fd; /* the network namespace it was opened in: libxdp's teardown speaks netlink by
                     ifindex, which means another interface in another namespace */
};

int yas_xsk_open(const char *ifname, uint32_t queue, uint32_t nframes, uint32_t frame_size, int mode,
                 struct yas_xsk **out, char *why, size_t whylen);
void yas_xsk_close(struct yas_xsk *x);
void yas_xsk_forget(struct yas_xsk *x);
int yas_xsk_rx_burst(struct yas_xsk *x, char *out, size_t outlen, uint32_t *lens, int max);
int yas_xsk_tx_burst(struct yas_xsk *x, const char *frames, size_t frameslen, const uint32_t *lens, int n,
                     uint32_t max_len);
int yas_xsk_reap(struct yas_xsk *x);
int yas_xsk_kernel_stats(struct yas_xsk *x, uint64_t *out);
