/*
 * Single-producer/single-consumer rings of frames in shared memory, between the per-core
 * processes of trio_yastack (DPDK's rte_ring in SP/SC mode, but of variable-size records).
 *
 * The dispatching core hashes a frame to the core that owns its flow and hands it over here;
 * the owner takes whole bursts out.  Nothing is locked: the producer alone writes `head` and
 * the records, the consumer alone writes `tail`, each on its own cache line so the two cores do
 * not bounce a line on every frame.  Everything is in host byte order (both ends are on the
 * same machine); all offsets below are bytes from the start of the shared memory.
 *
 *   line 0 (0..63), written once by yas_ring_init:
 *      0  u32 magic, the bytes "YASR"     4  u32 version (1)     8  u64 capacity (data bytes,
 *      a power of two >= 4096)            16..63 reserved (zero)
 *   line 1 (64..127), written by the producer only:
 *     64  u64 head: byte position of the next record, increasing forever (offset = head % capacity)
 *     72  u64 enqueued    80  u64 dropped (a full ring refused a frame)
 *     88  u64 doorbells (written by the Python producer when it rings the consumer's eventfd)
 *     96..127 reserved
 *   line 2 (128..191), written by the consumer only:
 *    128  u64 tail: byte position of the next record to read (head - tail = bytes in use)
 *    136  u64 dequeued   144  u32 consumer_sleeping: 1 while the consumer waits on its doorbell
 *    148  u32 reserved   152  u64 sleep_seq: the number of the consumer's current or last sleep
 *    160..191 reserved
 *   192.. the data area, `capacity` bytes of records.
 *
 * A record is 8-byte aligned: u32 length, u32 flags, the payload, zero padding to 8 bytes.
 * A record never wraps: when it does not fit before the end of the data area, the producer
 * writes a PAD marker (length 0xFFFFFFFF, flags 0) there and puts the record at the start;
 * the consumer skips from a PAD to the start.  A payload holds at most
 * min(YAS_RING_MAX_PAYLOAD, capacity/2 - 8) bytes (a 64 KB GSO frame and its headers fit a ring
 * of 256 KiB or more), so an empty ring always has room for any record, whatever the PAD
 * costs.  A frame that finds no room is refused and counted in `dropped`: a full ring never
 * blocks the producer.
 *
 * Memory ordering: the producer reads `tail` with acquire (the consumer is done with the bytes
 * it freed), writes the record, then publishes `head` with release; the consumer reads `head`
 * with acquire (the record is complete), copies it out, then publishes `tail` with release.
 * The doorbell is Dekker's handshake: the consumer stores consumer_sleeping = 1 then loads
 * head, the producer stores head then loads consumer_sleeping, each with a full fence between,
 * so at least one of them sees the other and a wake-up is never lost.  The producer rings (an
 * eventfd write, a system call) once per sleep: it remembers the last sleep_seq it rang for.
 *
 * Every call validates the header (magic, version, capacity within `memlen`) and every
 * position and record length it reads, so a corrupt ring returns YAS_RING_CORRUPT and never
 * makes this code touch memory outside `mem`.  The pure-Python twin (PyRingOps in
 * trio_yastack/dispatch/_native_ring.py) keeps the same layout and decisions, byte for byte;
 * tests/test_ring.py proves it.
 */
#include <stdint.h>
#include <string.h>
#include "ring.h"

#define OFF_MAGIC 0
#define OFF_VERSION 4
#define OFF_CAPACITY 8
#define OFF_HEAD 64
#define OFF_ENQUEUED 72
#define OFF_DROPPED 80
#define OFF_TAIL 128
#define OFF_DEQUEUED 136
#define OFF_SLEEPING 144
#define OFF_SLEEP_SEQ 152
#define VERSION 1

#define U64(mem, off) ((uint64_t *)(void *)((mem) + (off)))
#define U32(mem, off) ((uint32_t *)(void *)((mem) + (off)))

static uint32_t magic_value(void)
{
    uint32_t magic;
    memcpy(&magic, "YASR", 4);
    return magic;
}

/* 0 and the capacity when `mem` holds a ring, else a negative YAS_RING_* error. */
static int check(char *mem, size_t memlen, uint64_t *capacity)
{
    if (mem == NULL || ((uintptr_t)mem & 7) || memlen < YAS_RING_HEADER)
        return YAS_RING_BAD_ARGS;
    if (__atomic_load_n(U32(mem, OFF_MAGIC), __ATOMIC_ACQUIRE) != magic_value()
        || *U32(mem, OFF_VERSION) != VERSION)
        return YAS_RING_NOT_A_RING;
    uint64_t cap = *U64(mem, OFF_CAPACITY);
    if (cap < YAS_RING_MIN_CAPACITY || (cap & (cap - 1)) || cap > memlen - YAS_RING_HEADER)
        return YAS_RING_NOT_A_RING;
    *capacity = cap;
    return 0;
}

static uint64_t max_payload(uint64_t cap)
{
    return cap / 2 - 8 < YAS_RING_MAX_PAYLOAD ? cap / 2 - 8 : YAS_RING_MAX_PAYLOAD;
}

static uint64_t record_size(uint64_t len)
{
    return 8 + ((len + 7) & ~(uint64_t)7);
}

/* Positions are 8-byte aligned and the consumer is never ahead of the producer. */
static int positions_ok(uint64_t head, uint64_t tail, uint64_t cap)
{
    return !((head | tail) & 7) && head - tail <= cap;
}

/* Write one record at *head (and a PAD first when it would not fit before the end); 0 and
 * nothing written when the free space, given `tail`, is too small. */
static int put(unsigned char *data, uint64_t cap, uint64_t *head, uint64_t tail, const char *frame,
               uint32_t len, uint32_t flags)
{
    uint64_t need = record_size(len);
    uint64_t off = *head & (cap - 1);
    uint64_t contig = cap - off;
    uint64_t total = need <= contig ? need : contig + need;
    if (total > cap - (*head - tail))
        return 0;
    if (need > contig) {
        const uint32_t pad[2] = {YAS_RING_PAD, 0};
        memcpy(data + off, pad, 8);
        *head += contig;
        off = 0;
    }
    const uint32_t rec[2] = {len, flags};
    memcpy(data + off, rec, 8);
    memcpy(data + off + 8, frame, len);
    memset(data + off + 8 + len, 0, need - 8 - len);
    *head += need;
    return 1;
}

int yas_ring_init(char *mem, size_t memlen, uint64_t capacity)
{
    if (mem == NULL || ((uintptr_t)mem & 7) || memlen < YAS_RING_HEADER)
        return YAS_RING_BAD_ARGS;
    if (capacity < YAS_RING_MIN_CAPACITY || (capacity & (capacity - 1))
        || capacity > memlen - YAS_RING_HEADER)
        return YAS_RING_BAD_ARGS;
    memset(mem, 0, YAS_RING_HEADER);
    *U32(mem, OFF_VERSION) = VERSION;
    *U64(mem, OFF_CAPACITY) = capacity;
    __atomic_store_n(U32(mem, OFF_MAGIC), magic_value(), __ATOMIC_RELEASE);  /* last: complete */
    return 0;
}

int yas_ring_enqueue(char *mem, size_t memlen, const char *frame, size_t len, uint32_t flags)
{
    uint64_t cap;
    int err = check(mem, memlen, &cap);
    if (err)
        return err;
    if (len > max_payload(cap))
        return YAS_RING_TOO_LARGE;
    uint64_t head = __atomic_load_n(U64(mem, OFF_HEAD), __ATOMIC_RELAXED);
    uint64_t tail = __atomic_load_n(U64(mem, OFF_TAIL), __ATOMIC_ACQUIRE);
    if (!positions_ok(head, tail, cap))
        return YAS_RING_CORRUPT;
    if (!put((unsigned char *)mem + YAS_RING_HEADER, cap, &head, tail, frame, (uint32_t)len, flags)) {
        __atomic_store_n(U64(mem, OFF_DROPPED), *U64(mem, OFF_DROPPED) + 1, __ATOMIC_RELAXED);
        return 0;
    }
    __atomic_store_n(U64(mem, OFF_ENQUEUED), *U64(mem, OFF_ENQUEUED) + 1, __ATOMIC_RELAXED);
    __atomic_store_n(U64(mem, OFF_HEAD), head, __ATOMIC_RELEASE);
    return 1;
}

int yas_ring_enqueue_burst(char *mem, size_t memlen, const char *frames, size_t frameslen,
                           const uint32_t *lens, int n, uint32_t flags)
{
    uint64_t cap;
    int err = check(mem, memlen, &cap);
    if (err)
        return err;
    if (n < 0 || (n > 0 && (frames == NULL || lens == NULL)))
        return YAS_RING_BAD_ARGS;
    uint64_t limit = max_payload(cap), total = 0;
    for (int i = 0; i < n; i++) {
        if (lens[i] > limit)
            return YAS_RING_TOO_LARGE;  /* checked first: nothing is enqueued */
        total += lens[i];
    }
    if (total > frameslen)
        return YAS_RING_BAD_ARGS;
    uint64_t head = __atomic_load_n(U64(mem, OFF_HEAD), __ATOMIC_RELAXED);
    uint64_t tail = __atomic_load_n(U64(mem, OFF_TAIL), __ATOMIC_ACQUIRE);
    if (!positions_ok(head, tail, cap))
        return YAS_RING_CORRUPT;
    unsigned char *data = (unsigned char *)mem + YAS_RING_HEADER;
    int taken = 0;
    size_t at = 0;
    for (; taken < n; taken++) {
        if (!put(data, cap, &head, tail, frames + at, lens[taken], flags)) {
            /* full at the tail we read: look once more, the consumer may have moved on */
            tail = __atomic_load_n(U64(mem, OFF_TAIL), __ATOMIC_ACQUIRE);
            if (!positions_ok(head, tail, cap))
                return YAS_RING_CORRUPT;  /* nothing published */
            if (!put(data, cap, &head, tail, frames + at, lens[taken], flags))
                break;
        }
        at += lens[taken];
    }
    if (taken < n) {
        uint64_t dropped = *U64(mem, OFF_DROPPED) + (uint64_t)(n - taken);
        __atomic_store_n(U64(mem, OFF_DROPPED), dropped, __ATOMIC_RELAXED);
    }
    if (taken > 0) {
        uint64_t enqueued = *U64(mem, OFF_ENQUEUED) + (uint64_t)taken;
        __atomic_store_n(U64(mem, OFF_ENQUEUED), enqueued, __ATOMIC_RELAXED);
        __atomic_store_n(U64(mem, OFF_HEAD), head, __ATOMIC_RELEASE);  /* one publication per burst */
    }
    return taken;
}

int yas_ring_dequeue_burst(char *mem, size_t memlen, char *out, size_t outlen, uint32_t *lens,
                           uint32_t *flags, int max)
{
    uint64_t cap;
    int err = check(mem, memlen, &cap);
    if (err)
        return err;
    if (max < 0 || (max > 0 && (lens == NULL || flags == NULL || (out == NULL && outlen))))
        return YAS_RING_BAD_ARGS;
    uint64_t start = __atomic_load_n(U64(mem, OFF_TAIL), __ATOMIC_RELAXED);
    uint64_t head = __atomic_load_n(U64(mem, OFF_HEAD), __ATOMIC_ACQUIRE);
    if (!positions_ok(head, start, cap))
        return YAS_RING_CORRUPT;
    const unsigned char *data = (const unsigned char *)mem + YAS_RING_HEADER;
    uint64_t limit = max_payload(cap), tail = start;
    size_t at = 0;
    int count = 0;
    while (count < max && tail != head) {
        uint64_t off = tail & (cap - 1), avail = head - tail;
        uint32_t rec[2];
        memcpy(rec, data + off, 8);
        if (rec[0] == YAS_RING_PAD) {
            if (cap - off > avail)
                return YAS_RING_CORRUPT;
            tail += cap - off;
            continue;
        }
        uint64_t need = record_size(rec[0]);
        if (rec[0] > limit || need > avail || off + need > cap)
            return YAS_RING_CORRUPT;
        if (rec[0] > outlen - at)
            break;  /* the caller's buffer is full: the record stays for the next call */
        memcpy(out + at, data + off + 8, rec[0]);
        lens[count] = rec[0];
        flags[count] = rec[1];
        at += rec[0];
        count++;
        tail += need;
    }
    if (count > 0)
        __atomic_store_n(U64(mem, OFF_DEQUEUED), *U64(mem, OFF_DEQUEUED) + (uint64_t)count, __ATOMIC_RELAXED);
    if (tail != start)
        __atomic_store_n(U64(mem, OFF_TAIL), tail, __ATOMIC_RELEASE);  /* one publication per burst */
    return count;
}

int yas_ring_prepare_sleep(char *mem, size_t memlen)
{
    uint64_t cap;
    int err = check(mem, memlen, &cap);
    if (err)
        return err;
    uint64_t seq = __atomic_load_n(U64(mem, OFF_SLEEP_SEQ), __ATOMIC_RELAXED) + 1;
    __atomic_store_n(U64(mem, OFF_SLEEP_SEQ), seq, __ATOMIC_RELAXED);
    __atomic_store_n(U32(mem, OFF_SLEEPING), 1, __ATOMIC_RELEASE);  /* after the seq */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);  /* the flag is visible before head is read */
    uint64_t head = __atomic_load_n(U64(mem, OFF_HEAD), __ATOMIC_ACQUIRE);
    if (head != __atomic_load_n(U64(mem, OFF_TAIL), __ATOMIC_RELAXED)) {
        __atomic_store_n(U32(mem, OFF_SLEEPING), 0, __ATOMIC_RELAXED);
        return 0;  /* something arrived meanwhile: do not sleep */
    }
    return 1;
}

int yas_ring_woke(char *mem, size_t memlen)
{
    uint64_t cap;
    int err = check(mem, memlen, &cap);
    if (err)
        return err;
    __atomic_store_n(U32(mem, OFF_SLEEPING), 0, __ATOMIC_RELAXED);
    return 0;
}

int yas_ring_doorbell_due(char *mem, size_t memlen, uint64_t *last_rung)
{
    uint64_t cap;
    int err = check(mem, memlen, &cap);
    if (err)
        return err;
    if (last_rung == NULL)
        return YAS_RING_BAD_ARGS;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);  /* the head stored before is seen before the flag is read */
    if (!__atomic_load_n(U32(mem, OFF_SLEEPING), __ATOMIC_ACQUIRE))
        return 0;
    uint64_t seq = __atomic_load_n(U64(mem, OFF_SLEEP_SEQ), __ATOMIC_RELAXED);
    if (seq == *last_rung)
        return 0;  /* already rung for this sleep */
    *last_rung = seq;
    return 1;
}
