#include <stddef.h>
#include <stdint.h>
#define YAS_RING_HEADER 192
#define YAS_RING_MIN_CAPACITY 4096
#define YAS_RING_MAX_PAYLOAD 65599
#define YAS_RING_PAD 0xFFFFFFFFu
#define YAS_RING_BAD_ARGS (-1)
#define YAS_RING_NOT_A_RING (-2)
#define YAS_RING_TOO_LARGE (-3)
#define YAS_RING_CORRUPT (-4)
int yas_ring_init(char *mem, size_t memlen, uint64_t capacity);
int yas_ring_enqueue(char *mem, size_t memlen, const char *frame, size_t len, uint32_t flags);
int yas_ring_enqueue_burst(char *mem, size_t memlen, const char *frames, size_t frameslen,
                           const uint32_t *lens, int n, uint32_t flags);
int yas_ring_dequeue_burst(char *mem, size_t memlen, char *out, size_t outlen, uint32_t *lens,
                           uint32_t *flags, int max);
int yas_ring_prepare_sleep(char *mem, size_t memlen);
int yas_ring_woke(char *mem, size_t memlen);
int yas_ring_doorbell_due(char *mem, size_t memlen, uint64_t *last_rung);
