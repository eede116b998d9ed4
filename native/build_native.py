"""cffi build script for trio_yastack's native part (run by setup.py at install time).

Out-of-line API mode, one extension per layer that uses it, so that each layer loads only its
own C and importing the sans-IO stack loads nothing of the dispatcher's:

- ``trio_yastack.stack._native_cffi``: the Internet checksum, software GSO and the TCP fast
  path's per-burst classifier (``checksum.c``, ``gso.c``, ``tcp_fast.c``); Python twins in
  ``trio_yastack/stack/_native.py`` and ``trio_yastack/stack/tcp/_fastpath.py``;
- ``trio_yastack.dispatch._native_cffi``: the Toeplitz hash of RSS and the shared-memory SPSC
  rings (``rss.c``, ``ring.c``); Python twins in ``trio_yastack/dispatch/_native_rss.py`` and
  ``_native_ring.py``;
- ``trio_yastack.nic._af_packet_cffi`` and ``trio_yastack.nic._tap_io_cffi``: the AF_PACKET and TAP
  ports' burst I/O (Linux only, the kernel's headers only; see each below);
- ``trio_yastack.nic._af_xdp_cffi``: the AF_XDP port's rings and UMEM (``af_xdp.c``), built only
  where ``pkg-config`` finds ``libxdp`` and ``libbpf`` (Debian: ``libxdp-dev libbpf-dev``); twin of
  its ring arithmetic in ``trio_yastack/nic/_af_xdp_ring.py``.
- ``trio_yastack.nic._dpdk_cffi``: the DPDK shim (``dpdk_shim.c``, with ``checksum.c`` and ``gso.c``
  for the software checksum and GSO of its tx path), built only where ``pkg-config`` finds
  ``libdpdk`` (Debian: ``libdpdk-dev``); ``dpdk_ffi`` is ``None`` elsewhere and setup.py leaves it
  out.  DPDK's own functions have no Python twin (see ``trio_yastack/nic/dpdk.py``).

Every function declared here has a pure-Python twin with the same name minus ``yas_``, and a
``_native_cffi.pyi`` stub beside its extension gives the type checker the same declarations.
"""

import shlex
import subprocess
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent


def _source(name: str) -> str:
    """A C source path, relative to the build's working directory when it can be (setuptools
    refuses absolute source paths in some versions)."""
    path = HERE / name
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def _extension(module: str, cdef: str, sources: list[str]) -> FFI:
    """One out-of-line extension ``module`` from ``sources`` (their ``.h`` beside them)."""
    builder = FFI()
    builder.cdef(cdef)
    builder.set_source(
        module,
        "".join(f'#include "{Path(name).with_suffix(".h")}"\n' for name in sources),
        sources=[_source(name) for name in sources],
        include_dirs=[str(HERE)],
        extra_compile_args=["-O3", "-std=c11"],
    )
    return builder


stack_ffi = _extension(
    "trio_yastack.stack._native_cffi",
    """
    #define YAS_SUM16_OUT_OF_RANGE 0xFFFFFFFF
    uint32_t yas_sum16(const char *buf, size_t buflen, size_t offset, size_t len, uint32_t initial);
    #define YAS_GSO_BAD_FRAME -1
    #define YAS_GSO_NO_ROOM -2
    int yas_tcp4_segment(const char *frame, size_t len, size_t mss, char *out, size_t out_len);
    int yas_tcp6_segment(const char *frame, size_t len, size_t mss, char *out, size_t out_len);
    struct yas_tcp_seg {
        uint32_t kind; uint32_t src; uint16_t sport, dport; uint32_t seq, ack;
        uint16_t flags, window; int64_t tsval, tsecr; uint32_t data_start, end;
    };
    #define YAS_FAST_DECLINE 0
    #define YAS_FAST_CANDIDATE 1
    #define YAS_FAST_UDP 2
    #define YAS_FAST_CANDIDATE6 3
    #define YAS_FAST_UDP6 4
    #define YAS_FAST_SRC6_SLOTS 4096
    #define YAS_FAST_VERIFIED 0x80000000
    #define YAS_FAST_BAD_ARGS -1
    int yas_tcp_fast_classify(const char *frames, size_t frameslen, const char *lens, size_t lenslen,
                              int n, const char *mac, uint32_t ip, uint32_t broadcast, const char *ip6,
                              size_t ip6len, uint32_t ip6_usable, const char *src6, size_t src6len,
                              int verify, char *out, size_t outlen);
    """,
    ["checksum.c", "gso.c", "tcp_fast.c"],
)

dispatch_ffi = _extension(
    "trio_yastack.dispatch._native_cffi",
    """
    uint32_t yas_toeplitz(const char *key, size_t keylen, const char *data, size_t len);
    #define YAS_RING_HEADER 192
    #define YAS_RING_MIN_CAPACITY 4096
    #define YAS_RING_MAX_PAYLOAD 65599
    #define YAS_RING_BAD_ARGS -1
    #define YAS_RING_NOT_A_RING -2
    #define YAS_RING_TOO_LARGE -3
    #define YAS_RING_CORRUPT -4
    int yas_ring_init(char *mem, size_t memlen, uint64_t capacity);
    int yas_ring_enqueue(char *mem, size_t memlen, const char *frame, size_t len, uint32_t flags);
    int yas_ring_enqueue_burst(char *mem, size_t memlen, const char *frames, size_t frameslen,
                               const uint32_t *lens, int n, uint32_t flags);
    int yas_ring_dequeue_burst(char *mem, size_t memlen, char *out, size_t outlen, uint32_t *lens,
                               uint32_t *flags, int max);
    int yas_ring_prepare_sleep(char *mem, size_t memlen);
    int yas_ring_woke(char *mem, size_t memlen);
    int yas_ring_doorbell_due(char *mem, size_t memlen, uint64_t *last_rung);
    """,
    ["rss.c", "ring.c"],
)

#: ``trio_yastack.nic._af_packet_cffi``: the AF_PACKET port's ring walks (TPACKET_V3 and V2) and
#: sendmmsg burst (``af_packet.c``; Linux only, it needs nothing but the kernel's headers, so it is
#: built wherever ``<linux/if_packet.h>`` is: elsewhere the build fails and setup.py skips it).
#: Python twins: ``trio_yastack/nic/af_packet.py``'s ``py_rx_walk`` and ``py_rx_walk_v2``.
af_packet_ffi = _extension(
    "trio_yastack.nic._af_packet_cffi",
    """
    struct yas_afp_cursor { uint32_t block; uint32_t left; uint32_t offset; uint32_t bad_blocks; };
    int yas_afp_rx_walk(char *ring, size_t block_size, uint32_t block_count, struct yas_afp_cursor *cursor,
                        int max_n, char *out, size_t out_len, uint32_t *lens, uint32_t *status);
    int yas_afp_rx_walk_v2(char *ring, size_t block_size, size_t frame_size, uint32_t frame_count,
                           struct yas_afp_cursor *cursor, int max_n, char *out, size_t out_len,
                           uint32_t *lens, uint32_t *status);
    int yas_afp_tx_burst(int fd, const char *frames, const uint32_t *lens, int n);
    """,
    ["af_packet.c"],
)


#: ``trio_yastack.nic._tap_io_cffi``: the TAP port's burst I/O (``tap_io.c``), one crossing into C
#: per burst: one writev per frame from C (the default), or the transmit burst in one io_uring_enter
#: (raw system calls, no liburing: only the kernel's headers; measured slower here, kept to measure);
#: the receive loop of read(2).  Python twins: the os.writev and os.read loops of
#: ``trio_yastack/nic/tap.py``; ``trio_yastack/nic/_tap_io.py`` wraps it.
tap_io_ffi = _extension(
    "trio_yastack.nic._tap_io_cffi",
    """
    #define YAS_TAP_PARTIAL_CSUM 0x10000
    #define YAS_TAP_VNET_HDR_LEN 10
    #define YAS_TAP_RING_ENTRIES 256
    struct yas_tap_ring;
    int yas_tap_ring_open(int fd, struct yas_tap_ring **out);
    void yas_tap_ring_close(struct yas_tap_ring *ring);
    int yas_tap_tx_burst(struct yas_tap_ring *ring, int fd, const char *frames, size_t frameslen,
                         const uint32_t *lens, const uint32_t *meta, int n, int vnet, uint32_t max_len,
                         uint64_t *stats);
    int yas_tap_tx_frames(struct yas_tap_ring *ring, int fd, const char *const *frames, const uint32_t *lens,
                          const uint32_t *meta, int n, int vnet, uint32_t max_len, uint64_t *stats);
    #define YAS_TAP_RX_VERIFIED 0x80000000
    int yas_tap_rx_burst(int fd, char *out, size_t outlen, size_t size, int vnet, uint32_t *lens, int max_n,
                         uint32_t *errors);
    """,
    ["tap_io.c"],
)


def _pkg_config(*packages: str) -> list[str] | None:
    """``pkg-config --cflags --libs`` of ``packages``, or None when any is missing."""
    try:
        found = subprocess.run(
            ["pkg-config", "--cflags", "--libs", *packages], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return shlex.split(found.stdout)


def _af_xdp_extension() -> FFI:
    """The AF_XDP shim, compiled against libxdp's static inline ring helpers (API mode).  Where
    the libraries are missing it is a source that fails to compile with the reason, which
    setup.py's OptionalBuildExt reports as a warning: the package installs without it."""
    builder = FFI()
    builder.cdef(
        """
        struct xsk_ring_prod { uint32_t cached_prod; uint32_t cached_cons; uint32_t mask; uint32_t size;
                               uint32_t *producer; uint32_t *consumer; void *ring; uint32_t *flags; };
        struct xsk_ring_cons { uint32_t cached_prod; uint32_t cached_cons; uint32_t mask; uint32_t size;
                               uint32_t *producer; uint32_t *consumer; void *ring; uint32_t *flags; };
        struct yas_xsk {
            struct xsk_ring_prod fill; struct xsk_ring_cons comp;
            struct xsk_ring_cons rx; struct xsk_ring_prod tx;
            char *umem_area; uint64_t umem_len; uint32_t frame_size; uint32_t nframes; uint32_t rx_frames;
            int fd; uint64_t *free_frames; uint32_t n_free; uint32_t attach; int zerocopy;
            uint64_t rx_wakeups; uint64_t tx_wakeups; uint64_t tx_too_long;
            ...;
        };
        #define YAS_XSK_MODE_AUTO 0
        #define YAS_XSK_MODE_COPY 1
        #define YAS_XSK_MODE_ZEROCOPY 2
        #define YAS_XSK_ATTACH_SKB 1
        #define YAS_XSK_ATTACH_DRV 2
        #define YAS_XSK_BAD_ARGS -1
        #define YAS_XSK_CORRUPT -2
        int yas_xsk_open(const char *ifname, uint32_t queue, uint32_t nframes, uint32_t frame_size, int mode,
                         struct yas_xsk **out, char *why, size_t whylen);
        void yas_xsk_close(struct yas_xsk *x);
        void yas_xsk_forget(struct yas_xsk *x);
        int yas_xsk_rx_burst(struct yas_xsk *x, char *out, size_t outlen, uint32_t *lens, int max);
        int yas_xsk_tx_burst(struct yas_xsk *x, const char *frames, size_t frameslen, const uint32_t *lens,
                             int n, uint32_t max_len);
        int yas_xsk_reap(struct yas_xsk *x);
        int yas_xsk_kernel_stats(struct yas_xsk *x, uint64_t *out);
        """
    )
    flags = _pkg_config("libxdp", "libbpf")
    if flags is None:
        builder.set_source(
            "trio_yastack.nic._af_xdp_cffi",
            '#error "libxdp or libbpf not found by pkg-config: apt-get install libxdp-dev libbpf-dev"',
        )
        return builder
    builder.set_source(
        "trio_yastack.nic._af_xdp_cffi",
        '#include "af_xdp.h"\n',
        sources=[_source("af_xdp.c")],
        include_dirs=[str(HERE)] + [flag[2:] for flag in flags if flag.startswith("-I")],
        libraries=[flag[2:] for flag in flags if flag.startswith("-l")],
        library_dirs=[flag[2:] for flag in flags if flag.startswith("-L")],
        extra_compile_args=["-O3", "-std=gnu11"],
    )
    return builder


def _pkg_config_split(package: str) -> tuple[list[str], list[str]] | None:
    """``(cflags, libs)`` of ``package`` from pkg-config, or None when it (or pkg-config) is missing."""
    try:
        flags = [
            subprocess.run(["pkg-config", option, package], capture_output=True, text=True, check=True).stdout
            for option in ("--cflags", "--libs")
        ]
    except (OSError, subprocess.CalledProcessError):
        return None
    return shlex.split(flags[0]), shlex.split(flags[1])


def _dpdk_extension() -> FFI | None:
    """The DPDK shim's extension, or None without libdpdk's development files."""
    found = _pkg_config_split("libdpdk")
    if found is None:
        return None
    cflags, libs = found
    sources = ["dpdk_shim.c", "checksum.c", "gso.c"]
    builder = FFI()
    builder.cdef(
        """
        #define YAS_TX_PARTIAL_CSUM 0x10000
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
        int yas_dpdk_open(const char *devargs, const char *name, int is_pci, uint32_t nb_mbufs,
                          uint16_t nb_desc, uint16_t nb_rx_queues, struct yas_dpdk_info *info);
        int yas_dpdk_close(int port_id, const char *name, int is_pci);
        int yas_dpdk_rx_burst(int port_id, uint16_t queue, char *buf, size_t buflen, uint32_t *lens,
                              int max_n);
        int yas_dpdk_tx_burst(int port_id, uint16_t queue, const char *frames, size_t frameslen,
                              const uint32_t *lens, const uint32_t *meta, int n, uint32_t max_frame_len);
        int yas_dpdk_stats_get(int port_id, struct yas_dpdk_stats *stats);
        int yas_dpdk_complete_checksum(char *frame, uint32_t len);
        int yas_dpdk_tx_prepare(const char *frames, size_t frameslen, const uint32_t *lens,
                                const uint32_t *meta, int n, uint32_t max_frame_len, char *out,
                                size_t outlen, uint32_t *outlens, int max_out);
        """
    )
    builder.set_source(
        "trio_yastack.nic._dpdk_cffi",
        '#include "dpdk_shim.h"\n',
        sources=[_source(name) for name in sources],
        include_dirs=[str(HERE)],
        # DPDK's headers need GNU C (typeof, statement expressions) and its -include rte_config.h
        extra_compile_args=["-O3", "-std=gnu11", *cflags],
        extra_link_args=libs,
    )
    return builder


af_xdp_ffi = _af_xdp_extension()

#: None where libdpdk's development files are missing (setup.py then skips it)
dpdk_ffi = _dpdk_extension()

if __name__ == "__main__":
    for builder in (stack_ffi, dispatch_ffi, af_packet_ffi, tap_io_ffi, af_xdp_ffi, dpdk_ffi):
        if builder is not None:
            builder.compile(verbose=True)
