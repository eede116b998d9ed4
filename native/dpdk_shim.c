/*
 * The DPDK shim of trio_yastack.nic.dpdk: DPDK's ethdev API, one crossing into C per burst.
 *
 * rte_eth_rx_burst, rte_eth_tx_burst and rte_pktmbuf_alloc are static inline in DPDK's headers,
 * so Python cannot call them through a library: this file, compiled against
 * `pkg-config --cflags --libs libdpdk` by cffi (native/build_native.py's dpdk_ffi), exports them
 * as bursts of plain bytes:
 *
 * - yas_dpdk_rx_burst: rte_eth_rx_burst, then every mbuf's data (all its segments) copied into
 *   one caller-owned buffer, back to back, with the lengths in `lens`; the mbufs are freed.
 * - yas_dpdk_tx_burst: the frames (back to back in one buffer, lengths in `lens`) copied into
 *   freshly allocated mbufs and handed to rte_eth_tx_burst; an OffloadPacket (meta !=0) gets its
 *   TCP checksum completed and, with a gso_size and longer than the MTU, is cut into MSS-sized
 *   frames first (native/gso.c: the same software GSO the stack's twin is held to).  The vdevs
 *   this runs on here (net_af_packet, net_af_xdp) offer no checksum or TSO offload, so this is
 *   done in software, once per burst in C, for every PMD.
 * - open (probe a device by its devargs, one mempool, one rx and one tx queue, start) and
 *   close (stop, close, hot-unplug the vdev, free the mempool), statistics (rte_eth_stats_get
 *   plus what this shim dropped itself).
 *
 * No Python twin is possible for any of this (it is DPDK's own code); the Python side's part of
 * the burst (cutting the rx buffer into frames, joining frames for tx) has its twin and test.
 * Every function returns a negative errno on failure; yas_dpdk_strerror names it.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <rte_bus.h>
#include <rte_dev.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>

#include "checksum.h"
#include "dpdk_shim.h"
#include "gso.h"

#define RX_MAX 256     /* mbufs taken per rx call */
#define TX_CHUNK 256   /* mbufs handed to rte_eth_tx_burst per call (af_packet's tx ring holds 512) */
#define TX_TRIES 8     /* rte_eth_tx_burst calls that accept nothing before the rest is refused */
#define SCRATCH_LEN (65535 + 14 + 4 + 64 * 128) /* one TSO frame's segments, headers repeated */

struct port_state {
    int in_use;
    uint16_t nb_rx_queues; /* polled in turn by yas_dpdk_rx_burst(..., YAS_ALL_QUEUES, ...) */
    uint16_t next_rx;
    struct rte_mempool *pool;
    char *scratch;
    uint64_t rx_dropped; /* frames longer than the room left in the caller's buffer */
    uint64_t tx_dropped; /* frames too long for the MTU, or offload frames that are not TCP/IPv4 */
};

static struct port_state ports[RTE_MAX_ETHPORTS];
static unsigned pool_generation;

int yas_dpdk_eal_init(int argc, char **argv)
{
    int r = rte_eal_init(argc, argv);
    return r < 0 ? -rte_errno : r;
}

int yas_dpdk_eal_cleanup(void)
{
    return rte_eal_cleanup();
}

int yas_dpdk_last_errno(void)
{
    return rte_errno;
}

const char *yas_dpdk_strerror(int errnum)
{
    return rte_strerror(errnum);
}

static int valid_port(int port_id)
{
    return port_id >= 0 && port_id < RTE_MAX_ETHPORTS && ports[port_id].in_use;
}

static void release(uint16_t pid, const char *name, int is_pci, int started)
{
    if (started)
        rte_eth_dev_stop(pid);
    rte_eth_dev_close(pid);
    if (!is_pci)
        rte_eal_hotplug_remove("vdev", name);
}

int yas_dpdk_open(const char *devargs, const char *name, int is_pci, uint32_t nb_mbufs, uint16_t nb_desc,
                  uint16_t nb_rx_queues, struct yas_dpdk_info *info)
{
    if (nb_rx_queues == 0 || nb_rx_queues == YAS_ALL_QUEUES)
        return -EINVAL;
    uint16_t pid;
    int r;
    if (rte_eth_dev_get_port_by_name(name, &pid) == 0) {
        if (!is_pci || ports[pid].in_use)
            return -EBUSY; /* this process has it open already */
    } else {
        if (is_pci)
            return -ENODEV; /* EAL probes a PCI device at init (-a ADDR): it was not found */
        r = rte_dev_probe(devargs);
        if (r < 0)
            return r;
        if (rte_eth_dev_get_port_by_name(name, &pid) != 0)
            return -ENODEV;
    }
    struct rte_eth_dev_info dev_info;
    r = rte_eth_dev_info_get(pid, &dev_info);
    if (r < 0)
        goto fail;
    char pool_name[RTE_MEMPOOL_NAMESIZE];
    snprintf(pool_name, sizeof(pool_name), "yas%u_%u", (unsigned)pid, pool_generation++);
    int socket = rte_eth_dev_socket_id(pid);
    struct rte_mempool *pool = rte_pktmbuf_pool_create(pool_name, nb_mbufs, 256, 0, RTE_MBUF_DEFAULT_BUF_SIZE,
                                                       socket < 0 ? (int)SOCKET_ID_ANY : socket);
    if (pool == NULL) {
        r = -rte_errno;
        goto fail;
    }
    char *scratch = malloc(SCRATCH_LEN);
    if (scratch == NULL) {
        rte_mempool_free(pool);
        r = -ENOMEM;
        goto fail;
    }
    struct rte_eth_conf conf;
    memset(&conf, 0, sizeof(conf));
    int started = 0;
    r = rte_eth_dev_configure(pid, nb_rx_queues, 1, &conf);
    for (uint16_t q = 0; r == 0 && q < nb_rx_queues; q++)
        r = rte_eth_rx_queue_setup(pid, q, nb_desc, socket < 0 ? (unsigned)SOCKET_ID_ANY : (unsigned)socket,
                                   NULL, pool);
    if (r == 0)
        r = rte_eth_tx_queue_setup(pid, 0, nb_desc, socket < 0 ? (unsigned)SOCKET_ID_ANY : (unsigned)socket,
                                   NULL);
    if (r == 0) {
        r = rte_eth_dev_start(pid);
        started = r == 0;
    }
    struct rte_ether_addr mac;
    if (r == 0)
        r = rte_eth_macaddr_get(pid, &mac);
    uint16_t mtu = 1500;
    if (r == 0 && rte_eth_dev_get_mtu(pid, &mtu) != 0)
        mtu = 1500;
    if (r != 0) {
        release(pid, name, is_pci, started);
        free(scratch);
        rte_mempool_free(pool);
        return r;
    }
    ports[pid] = (struct port_state){.in_use = 1, .nb_rx_queues = nb_rx_queues, .pool = pool, .scratch = scratch};
    info->port_id = pid;
    memcpy(info->mac, mac.addr_bytes, 6);
    info->mtu = mtu;
    info->max_rx_queues = dev_info.max_rx_queues;
    info->max_tx_queues = dev_info.max_tx_queues;
    snprintf(info->driver, sizeof(info->driver), "%s", dev_info.driver_name ? dev_info.driver_name : "");
    return 0;
fail:
    release(pid, name, is_pci, 0);
    return r;
}

int yas_dpdk_close(int port_id, const char *name, int is_pci)
{
    if (!valid_port(port_id))
        return -EINVAL;
    struct port_state *state = &ports[port_id];
    release((uint16_t)port_id, name, is_pci, 1);
    rte_mempool_free(state->pool);
    free(state->scratch);
    memset(state, 0, sizeof(*state));
    return 0;
}

int yas_dpdk_rx_burst(int port_id, uint16_t queue, char *buf, size_t buflen, uint32_t *lens, int max_n)
{
    if (!valid_port(port_id))
        return -EINVAL;
    struct rte_mbuf *mbufs[RX_MAX];
    if (max_n > RX_MAX)
        max_n = RX_MAX;
    if (max_n <= 0)
        return 0;
    uint16_t n = 0;
    if (queue != YAS_ALL_QUEUES) {
        n = rte_eth_rx_burst((uint16_t)port_id, queue, mbufs, (uint16_t)max_n);
    } else {
        /* Every queue of this port in turn, starting one further each call (fairness). */
        struct port_state *state = &ports[port_id];
        uint16_t nq = state->nb_rx_queues;
        for (uint16_t k = 0; k < nq && n < max_n; k++) {
            uint16_t q = (uint16_t)((state->next_rx + k) % nq);
            n += rte_eth_rx_burst((uint16_t)port_id, q, mbufs + n, (uint16_t)(max_n - n));
        }
        state->next_rx = (uint16_t)((state->next_rx + 1) % nq);
    }
    size_t at = 0;
    int out = 0;
    for (uint16_t i = 0; i < n; i++) {
        struct rte_mbuf *m = mbufs[i];
        uint32_t len = rte_pktmbuf_pkt_len(m);
        if (len > buflen - at) {
            ports[port_id].rx_dropped++;
            continue;
        }
        if (m->nb_segs == 1) {
            memcpy(buf + at, rte_pktmbuf_mtod(m, const char *), len);
        } else {
            const void *p = rte_pktmbuf_read(m, 0, len, buf + at);
            if (p != buf + at)
                memcpy(buf + at, p, len);
        }
        lens[out++] = len;
        at += len;
    }
    rte_pktmbuf_free_bulk(mbufs, n);
    return out;
}

/* Hand mbufs[0..count) to the PMD; returns how many it took (retrying while it makes progress). */
static int send_all(uint16_t pid, uint16_t queue, struct rte_mbuf **mbufs, int count)
{
    int sent = 0, idle = 0;
    while (sent < count && idle < TX_TRIES) {
        uint16_t k = rte_eth_tx_burst(pid, queue, mbufs + sent, (uint16_t)(count - sent));
        sent += k;
        idle = k ? 0 : idle + 1;
    }
    return sent;
}

/* The TCP checksum of a TCP/IPv4 frame whose field holds the folded pseudo-header sum; 0 on
 * success, -1 when the frame is not one. */
static int complete_tcp_checksum(unsigned char *frame, uint32_t len)
{
    if (len < 14 + 20 + 20 || frame[12] != 8 || frame[13] != 0 || frame[14] >> 4 != 4 || frame[23] != 6)
        return -1;
    uint32_t ihl = (uint32_t)(frame[14] & 0x0f) * 4;
    uint32_t total = ((uint32_t)frame[16] << 8) | frame[17];
    uint32_t tcp_at = 14 + ihl;
    if (ihl < 20 || 14 + total > len || total < ihl + 20)
        return -1;
    uint32_t sum = yas_sum16((const char *)frame, len, tcp_at, 14 + total - tcp_at, 0);
    if (sum == YAS_SUM16_OUT_OF_RANGE)
        return -1;
    uint32_t checksum = ~sum & 0xffff;
    frame[tcp_at + 16] = (unsigned char)(checksum >> 8);
    frame[tcp_at + 17] = (unsigned char)checksum;
    return 0;
}

/* What one frame of a tx burst becomes: `count` pieces `stride` bytes apart from `base` (the
 * last one `last_len` long), each needing its TCP checksum completed when `csum` is set. */
struct pieces {
    const char *base;
    uint32_t stride, count, last_len;
    int csum;
};

/* Plan one frame: finished frames go as they are, an OffloadPacket gets its checksum completed
 * and, with a gso_size and longer than the MTU, is segmented into `scratch` (full checksums).
 * Returns 0, or -1 when the frame is to be dropped (too long, or an offload frame that is not
 * TCP/IPv4).  Shared by the tx path and yas_dpdk_tx_prepare, which the tests hold to the twin. */
static int plan_frame(const char *frame, uint32_t len, uint32_t meta, uint32_t max_frame_len, uint32_t room,
                      char *scratch, struct pieces *p)
{
    uint32_t gso = meta & 0xffff;
    *p = (struct pieces){.base = frame, .stride = len, .count = 1, .last_len = len, .csum = 0};
    if (meta & YAS_TX_PARTIAL_CSUM && gso && len > max_frame_len) {
        int count = yas_tcp4_segment(frame, len, gso, scratch, SCRATCH_LEN);
        if (count <= 0)
            return -1;
        const unsigned char *f = (const unsigned char *)frame;
        uint32_t tcp_at = 14 + (uint32_t)(f[14] & 0x0f) * 4;
        uint32_t headers = tcp_at + (uint32_t)(f[tcp_at + 12] >> 4) * 4;
        p->base = scratch;
        p->stride = headers + gso;
        p->count = (uint32_t)count;
        p->last_len = len - (uint32_t)(count - 1) * gso;
        return p->stride > max_frame_len || p->stride > room ? -1 : 0;
    }
    if (len > max_frame_len || len > room)
        return -1;
    p->csum = (meta & YAS_TX_PARTIAL_CSUM) != 0;
    return 0;
}

int yas_dpdk_complete_checksum(char *frame, uint32_t len)
{
    return complete_tcp_checksum((unsigned char *)frame, len);
}

int yas_dpdk_tx_prepare(const char *frames, size_t frameslen, const uint32_t *lens, const uint32_t *meta, int n,
                        uint32_t max_frame_len, char *out, size_t outlen, uint32_t *outlens, int max_out)
{
    static char scratch[SCRATCH_LEN];
    size_t at = 0, out_at = 0;
    int made = 0;
    for (int i = 0; i < n; i++) {
        uint32_t len = lens[i];
        if (len > frameslen - at)
            return -EINVAL;
        const char *frame = frames + at;
        at += len;
        struct pieces p;
        if (plan_frame(frame, len, meta[i], max_frame_len, UINT32_MAX, scratch, &p) != 0)
            continue;
        for (uint32_t s = 0; s < p.count; s++) {
            uint32_t piece = s + 1 < p.count ? p.stride : p.last_len;
            if (made >= max_out || piece > outlen - out_at)
                return -ENOSPC;
            memcpy(out + out_at, p.base + (size_t)s * p.stride, piece);
            if (p.csum && complete_tcp_checksum((unsigned char *)out + out_at, piece) != 0)
                break; /* dropped: not TCP/IPv4 */
            outlens[made++] = piece;
            out_at += piece;
        }
    }
    return made;
}

static struct rte_mbuf *copy_to_mbuf(struct rte_mempool *pool, const char *data, uint32_t len)
{
    struct rte_mbuf *m = rte_pktmbuf_alloc(pool);
    if (m == NULL)
        return NULL;
    char *room = rte_pktmbuf_append(m, (uint16_t)len);
    if (room == NULL) {
        rte_pktmbuf_free(m);
        return NULL;
    }
    memcpy(room, data, len);
    return m;
}

/* How many frames count as taken when the PMD took only mbufs[0..sent) of mbufs[0..built):
 * a frame whose first piece went counts (its other pieces are lost, as on a wire). */
static int refuse_rest(struct rte_mbuf **mbufs, const int *owner, int sent, int built)
{
    int accepted = owner[sent] + (sent > 0 && owner[sent - 1] == owner[sent]);
    rte_pktmbuf_free_bulk(mbufs + sent, (unsigned)(built - sent));
    return accepted;
}

int yas_dpdk_tx_burst(int port_id, uint16_t queue, const char *frames, size_t frameslen, const uint32_t *lens,
                      const uint32_t *meta, int n, uint32_t max_frame_len)
{
    if (!valid_port(port_id))
        return -EINVAL;
    struct port_state *state = &ports[port_id];
    uint16_t pid = (uint16_t)port_id;
    uint32_t room = rte_pktmbuf_data_room_size(state->pool) - RTE_PKTMBUF_HEADROOM;
    struct rte_mbuf *mbufs[TX_CHUNK];
    int owner[TX_CHUNK]; /* the frame each mbuf came from */
    int built = 0;
    size_t at = 0;
    int i;
    for (i = 0; i < n; i++) {
        uint32_t len = lens[i];
        if (len > frameslen - at)
            return -EINVAL;
        const char *frame = frames + at;
        at += len;
        struct pieces p;
        if (plan_frame(frame, len, meta[i], max_frame_len, room, state->scratch, &p) != 0) {
            state->tx_dropped++;
            continue;
        }
        if (built + (int)p.count > TX_CHUNK) {
            int sent = send_all(pid, queue, mbufs, built);
            if (sent < built)
                return refuse_rest(mbufs, owner, sent, built);
            built = 0;
        }
        int first = built;
        for (uint32_t s = 0; s < p.count; s++) {
            uint32_t piece = s + 1 < p.count ? p.stride : p.last_len;
            struct rte_mbuf *m = copy_to_mbuf(state->pool, p.base + (size_t)s * p.stride, piece);
            if (m == NULL) {
                /* The mempool is empty: this frame and the ones after it are refused. */
                rte_pktmbuf_free_bulk(mbufs + first, (unsigned)(built - first));
                built = first;
                goto flush;
            }
            if (p.csum && complete_tcp_checksum(rte_pktmbuf_mtod(m, unsigned char *), piece) != 0) {
                rte_pktmbuf_free(m);
                state->tx_dropped++;
                break;
            }
            mbufs[built] = m;
            owner[built] = i;
            built++;
        }
    }
flush:;
    int sent = send_all(pid, queue, mbufs, built);
    if (sent < built)
        return refuse_rest(mbufs, owner, sent, built);
    return i;
}

int yas_dpdk_stats_get(int port_id, struct yas_dpdk_stats *out)
{
    if (!valid_port(port_id))
        return -EINVAL;
    struct rte_eth_stats stats;
    int r = rte_eth_stats_get((uint16_t)port_id, &stats);
    if (r < 0)
        return r;
    out->ipackets = stats.ipackets;
    out->opackets = stats.opackets;
    out->ibytes = stats.ibytes;
    out->obytes = stats.obytes;
    out->imissed = stats.imissed;
    out->ierrors = stats.ierrors + ports[port_id].rx_dropped;
    out->oerrors = stats.oerrors + ports[port_id].tx_dropped;
    return 0;
}
