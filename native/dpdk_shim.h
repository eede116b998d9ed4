/* The DPDK shim: what trio_yastack.nic.dpdk calls, one crossing into C per burst.  See dpdk_shim.c. */
#ifndef YAS_DPDK_SHIM_H
#define YAS_DPDK_SHIM_H
#include <stddef.h>
#include <stdint.h>

/* meta[i] of yas_dpdk_tx_burst: 0 for a finished frame; YAS_TX_PARTIAL_CSUM | gso_size for an
 * OffloadPacket (TCP checksum field holds the folded pseudo-header sum; gso_size > 0: segment). */
#define YAS_TX_PARTIAL_CSUM 0x10000u
/* the queue argument of yas_dpdk_rx_burst that polls every rx queue of the port in turn */
#define YAS_ALL_QUEUES 0xFFFF

struct yas_dpdk_info {
    int port_id;
    uint8_t mac[6];
    uint16_t mtu;
    uint16_t max_rx_queues;
    uint16_t max_tx_queues;
    char driver[64];
};

struct yas_dpdk_stats {
    uint64_t ipackets, opackets, ibytes, obytes, imissed, ierrors, oerrors;
};

int yas_dpdk_eal_init(int argc, char **argv);
int yas_dpdk_eal_cleanup(void);
int yas_dpdk_last_errno(void);
const char *yas_dpdk_strerror(int errnum);
int yas_dpdk_open(const char *devargs, const char *name, int is_pci, uint32_t nb_mbufs, uint16_t nb_desc,
                  uint16_t nb_rx_queues, struct yas_dpdk_info *info);
int yas_dpdk_close(int port_id, const char *name, int is_pci);
int yas_dpdk_rx_burst(int port_id, uint16_t queue, char *buf, size_t buflen, uint32_t *lens, int max_n);
int yas_dpdk_tx_burst(int port_id, uint16_t queue, const char *frames, size_t frameslen, const uint32_t *lens,
                      const uint32_t *meta, int n, uint32_t max_frame_len);
int yas_dpdk_complete_checksum(char *frame, uint32_t len);
int yas_dpdk_tx_prepare(const char *frames, size_t frameslen, const uint32_t *lens, const uint32_t *meta, int n,
                        uint32_t max_frame_len, char *out, size_t outlen, uint32_t *outlens, int max_out);
int yas_dpdk_stats_get(int port_id, struct yas_dpdk_stats *stats);

#endif
