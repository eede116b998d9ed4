/* TAP port: a burst of frames to or from a TAP descriptor in one crossing into C, and (where the
 * kernel allows io_uring) in one system call.  Python twin: the loops of os.writev/os.read in
 * trio_yastack/nic/tap.py (TapPort.tx_burst, rx_burst); trio_yastack/nic/_tap_io.py wraps these
 * functions and tests/test_tap_io.py holds both to the same frames on the wire. */
#include <stddef.h>
#include <stdint.h>

/* Bits of a transmit frame's meta word: the low 16 bits are its gso_size (TSO), and
 * YAS_TAP_PARTIAL_CSUM says its TCP checksum field holds only the pseudo-header sum (an
 * OffloadPacket) and the kernel must complete it (virtio-net NEEDS_CSUM). */
#define YAS_TAP_PARTIAL_CSUM 0x10000
#define YAS_TAP_VNET_HDR_LEN 10
/* The largest burst handed to the kernel in one io_uring_enter (longer bursts take several). */
#define YAS_TAP_RING_ENTRIES 256

struct yas_tap_ring;

/* Set up an io_uring for writes to `fd`; 0 and *out, or -errno (ENOSYS, EPERM where io_uring is
 * disabled or refused: the caller then uses yas_tap_tx_burst without a ring). */
int yas_tap_ring_open(int fd, struct yas_tap_ring **out);
void yas_tap_ring_close(struct yas_tap_ring *ring);

/* Write frames[0..n) (laid end to end, lens[i] bytes each) to the TAP `fd`, each behind a
 * virtio-net header when `vnet` (built from meta[i]; a partial-checksum frame that is not TCP
 * over IPv4 is refused with -EINVAL).  A frame longer than max_len (meta without gso_size) is
 * refused with -EMSGSIZE.  With `ring` the whole burst goes to the kernel in one io_uring_enter,
 * else one writev(2) per frame.  stats: frames written, their bytes (headers not counted), frames
 * refused (by this check or by the kernel).  Returns how many frames
 * were taken (written or refused); the rest stay the caller's (the kernel said EAGAIN), or
 * -errno when the ring itself failed before anything was written. */
int yas_tap_tx_burst(struct yas_tap_ring *ring, int fd, const char *frames, size_t frameslen,
                     const uint32_t *lens, const uint32_t *meta, int n, int vnet, uint32_t max_len,
                     uint64_t *stats);

/* yas_tap_tx_burst with each frame where frames[i] points (lens[i] bytes): a burst of large
 * frames (TSO segments) is written from the caller's own buffers, not copied end to end first. */
int yas_tap_tx_frames(struct yas_tap_ring *ring, int fd, const char *const *frames, const uint32_t *lens,
                      const uint32_t *meta, int n, int vnet, uint32_t max_len, uint64_t *stats);

/* Read up to max_n frames from the non-blocking TAP `fd`, frame i into the slot at out + i * size
 * (out holds max_n slots of `size` bytes), behind its virtio-net header when `vnet`.  lens[i]: the
 * frame's length without the header, with YAS_TAP_RX_VERIFIED set when the header says the kernel
 * vouches for its checksums.  A read of no more than a header is counted in *errors and skipped.
 * Stops at the first EAGAIN; returns the number of frames, or -errno when the first read failed
 * with something else. */
#define YAS_TAP_RX_VERIFIED 0x80000000u
int yas_tap_rx_burst(int fd, char *out, size_t outlen, size_t size, int vnet, uint32_t *lens, int max_n,
                     uint32_t *errors);
