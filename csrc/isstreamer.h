/*
 * isstreamer: shared-memory ring and JSON batch encoder.
 *
 * A ring-format file is mapped MAP_SHARED by the processes that use it:
 *
 *   [iss_ring_hdr (4096)] [iss_bucket x nbuckets] [ (iss_seg_hdr (320) + data) x nsegs ]
 *
 * A Streamer's ring is a table file (iss_ring_hdr with ISS_TABLE_MAGIC, the bucket table, then
 * iss_slot x nslots: the producers' registry) plus one ring-format file per producer process
 * with a single segment (nsegs = 1, nbuckets = 1; records carry indices into the table's
 * buckets). A segment is a single-producer / single-consumer byte ring. Threads of the owning
 * process serialise on the segment's spinlock; the sender process is the only consumer. A
 * producer publishes a record by a release store of `head` after writing it, so a producer
 * killed mid-write never publishes a torn record and never wedges the consumer. Ownership is
 * a POSIX record lock on the segment file held by the producer process (the kernel drops it
 * when the process dies; fork children do not inherit it): see isstreamer/ring/.
 *
 * Every cross-process field is fixed-width and naturally aligned; 64-bit fields are accessed
 * through csrc/atomics.h only (lock-free on x86-64, aarch64 and ARMv7 with LDREXD/STREXD).
 * The Python side (isstreamer/ring/layout.py) mirrors these offsets; a test checks they agree.
 */
#ifndef ISSTREAMER_H
#define ISSTREAMER_H

#include <stddef.h>
#include <stdint.h>

#define ISS_MAGIC UINT64_C(0x315347524e525349) /* "ISRNRGS1" little-endian */
#define ISS_TABLE_MAGIC UINT64_C(0x3142415452525349) /* "ISRRTAB1" little-endian */
#define ISS_LAYOUT_VERSION 3u

#define ISS_HDR_SIZE 4096u
#define ISS_BUCKET_SIZE 2048u
#define ISS_BUCKET_KEY_MAX 1000u
#define ISS_BUCKET_NAME_MAX 1000u
#define ISS_SEG_HDR_SIZE 320u
#define ISS_REC_HDR_SIZE 24u
#define ISS_KEY_MAX 1024u   /* bytes of UTF-8 */
#define ISS_STR_MAX 8192u   /* bytes of UTF-8 */
#define ISS_REC_MAX (ISS_REC_HDR_SIZE + 8u + ISS_KEY_MAX + ISS_STR_MAX)
#define ISS_SEG_DATA_MIN (4u * ISS_REC_MAX)
#define ISS_NCOUNTERS 32u
#define ISS_NDROPS 16u

/* record types */
#define ISS_T_PAD 1u
#define ISS_T_F64 2u
#define ISS_T_I64 3u
#define ISS_T_STR 4u
#define ISS_T_TRUE 5u
#define ISS_T_FALSE 6u

/* producer slot states (table file) */
#define ISS_SLOT_FREE 0u
#define ISS_SLOT_OWNED 1u
#define ISS_SLOT_RELEASED 2u
#define ISS_SLOT_SIZE 64u

/* put() return codes */
#define ISS_OK 0
#define ISS_FULL 1
#define ISS_DROPPED 2 /* full or out of reserved pages, in a drop episode: counted by the put */
#define ISS_WAKE 3    /* published, and the sender sleeps: the caller should wake it */
#define ISS_CHECK 4   /* published; check_every passed: the caller should check the sender lives */
#define ISS_RESERVE 5 /* not written: the pages ahead of head are not reserved yet (see reserved) */
#define ISS_CLOSED 6  /* not written: the handle's guard is closed (the segment is being released) */
#define ISS_ETOOBIG (-1)
#define ISS_EINVAL (-2)

/* drop reasons the C side counts itself (indices into drops[], see isstreamer/ring/layout.py) */
#define ISS_DROP_RING_FULL 0u
#define ISS_DROP_NO_SPACE 11u

typedef struct {
    uint64_t magic;
    uint32_t version;
    uint32_t hdr_size;
    uint32_t nsegs;
    uint32_t seg_data_size;
    uint32_t nbuckets;
    uint32_t bucket_size;
    uint64_t total_size;
    /* sender control (offset 40) */
    uint64_t sender_pid;          /* informational: liveness is the sender's record lock */
    uint64_t closing;             /* table: set by the sender when it removes the ring */
    uint64_t sleeping;            /* table: nonzero (a number new to each sleep) while the sender
                                     blocks idle; a producer that publishes while it is set wakes
                                     it (ISS_WAKE), once per sleep */
    uint64_t flush_seq;           /* bumped by flush(): send partial batches now */
    uint64_t close_by;            /* table: CLOCK_MONOTONIC ns until which a closing producer
                                     waits; the sender retries until then instead of spooling */
    uint64_t nbuckets_used;
    uint64_t nslots_used;         /* table: high-water mark of producer slots ever claimed */
    uint64_t flush_done;          /* table: the last flush_seq the sender fully served (with
                                     downsampling rules flush() waits for it: its events may be
                                     folded, with their windows still open) */
    uint64_t cut_seq;             /* table: bumped by flush(timeout) with downsampling rules,
                                     before flush_seq: every open window closes now */
    uint8_t _pad0[128 - 112];
    /* counters written by the sender, or atomically by anyone (offset 128) */
    uint64_t counters[ISS_NCOUNTERS];
    uint64_t drops[ISS_NDROPS]; /* drops folded in from reclaimed segments and global drops */
} iss_ring_hdr;

typedef struct {
    uint32_t state; /* 0 empty, 1 being written, 2 ready */
    uint16_t keylen;
    uint16_t namelen;
    uint64_t _pad;
    char key[ISS_BUCKET_KEY_MAX];
    char name[ISS_BUCKET_NAME_MAX];
    uint8_t _pad2[ISS_BUCKET_SIZE - 16u - ISS_BUCKET_KEY_MAX - ISS_BUCKET_NAME_MAX];
} iss_bucket;

typedef struct {
    /* cache line 0: unused (ownership is a record lock on the file, the threads' lock is
       process-local: see iss_guard) */
    uint8_t _pad0[64];
    /* producer, offset 64 */
    uint64_t head;    /* bytes published (monotonic) */
    uint64_t logged;  /* records published */
    uint64_t drops[ISS_NDROPS]; /* events refused by the producer, by reason */
    uint64_t reserved; /* position up to which the data pages are allocated (fallocate): a put
                          never writes at or past it, so a full file system is never a SIGBUS */
    uint8_t _pad1[256 - 64 - 16 - 8 * ISS_NDROPS - 8];
    /* consumer, offset 256 */
    uint64_t tail;     /* bytes released back by the sender */
    uint64_t consumed; /* records released back */
    /* the commit journal: the sender stores rel_consumed, then rel_end (release), then returns
       the pages of [tail, rel_end), then stores consumed and tail. A sender that finds
       rel_end > tail finishes that commit: its successor never reads returned (zeroed) pages. */
    uint64_t rel_end;
    uint64_t rel_consumed;
    uint64_t lost; /* records the sender found unreadable and skipped (counted as dropped) */
    uint8_t _pad2[ISS_SEG_HDR_SIZE - 256 - 40];
} iss_seg_hdr;

typedef struct {
    uint32_t size;  /* whole record incl. header, multiple of 8 */
    uint8_t type;
    uint8_t flags;
    uint16_t bucket;
    uint16_t keylen;
    uint16_t _reserved;
    uint32_t vallen; /* bytes of the string value, 0 otherwise */
    double epoch;
    /* then: 8-byte number (F64/I64) | key bytes | string bytes | zero padding to 8 */
} iss_rec;

/* Table file: one registered producer segment file. */
typedef struct {
    uint64_t state;     /* ISS_SLOT_* */
    uint64_t seg_id;    /* random, names the segment file; 0 while free */
    uint64_t owner_pid; /* informational only: liveness is the segment file's record lock */
    uint64_t data_size; /* bytes of the segment's data area */
    uint64_t _reserved[4];
} iss_slot;

/* Process-local: the lock of the threads writing one segment, and whether the segment is
 * closed. Every put takes the lock and checks `closed` before it touches the mapping, so once
 * iss_guard_close() returned no put of this process reads or writes the segment (or the
 * table's `sleeping` word) again: the mappings can then be unmapped. */
typedef struct {
    uint64_t lock;
    uint64_t closed;
} iss_guard;

/* Process-local producer handle (not shared). */
typedef struct {
    uint8_t *base;       /* start of the mapping */
    uint64_t map_size;   /* bytes mapped */
    iss_seg_hdr *seg;
    uint8_t *data;
    uint64_t data_size;
    uint64_t cached_tail;
    uint32_t bucket;
    uint32_t seg_index;
    uint32_t dropping; /* set by the caller after a full-ring (or no-space) wait: ISS_FULL is
                          then counted as a ring_full drop (ISS_RESERVE as no_space, except once
                          per retry_ns) and returned as ISS_DROPPED; cleared by a put */
    uint32_t reserve;  /* 1: honour seg->reserved (set by the library, which reserves pages) */
    const uint64_t *wake; /* the table's `sleeping` flag, or NULL: see ISS_WAKE */
    uint64_t woke;        /* the last `sleeping` value this handle rang for */
    iss_guard *guard;     /* the segment's guard (shared by the process's handles on it) */
    iss_guard own_guard;  /* the guard of a handle used alone (iss_producer_attach sets it) */
    uint64_t cached_reserved;
    uint64_t check_every; /* ns; nonzero: ISS_CHECK once per interval (monotonic clock) */
    uint64_t check_at;
    uint64_t retry_ns;    /* while dropping for want of reserved pages: ISS_RESERVE once per */
    uint64_t retry_at;
} iss_producer;

/* Result of one encoded batch. */
typedef struct {
    uint64_t end;       /* segment position just after the last record taken */
    uint32_t nevents;   /* events encoded */
    uint32_t bucket;    /* bucket of every event in the batch */
    uint32_t corrupt;   /* 1 if a corrupt record made the encoder skip to head */
    uint32_t skipped;   /* records skipped as corrupt */
} iss_batch;

/* --- layout --- */
uint64_t iss_layout_size(uint32_t nsegs, uint32_t seg_data_size, uint32_t nbuckets);
int iss_ring_init(uint8_t *base, uint64_t map_size, uint32_t nsegs, uint32_t seg_data_size,
                  uint32_t nbuckets);
int iss_ring_check(const uint8_t *base, uint64_t map_size);

/* --- producer --- */
int iss_producer_attach(iss_producer *p, uint8_t *base, uint64_t map_size, uint32_t seg_index);
void iss_guard_close(iss_guard *g);
int iss_put_f64(iss_producer *p, const char *key, size_t keylen, double v, double epoch);
int iss_put_i64(iss_producer *p, const char *key, size_t keylen, int64_t v, double epoch);
int iss_put_bool(iss_producer *p, const char *key, size_t keylen, int v, double epoch);
int iss_put_str(iss_producer *p, const char *key, size_t keylen, const char *s, size_t slen,
                double epoch);

/* --- hot path: interned keys (process-local table); epoch NaN = now --- */
#define ISS_KEYTAB_CHUNK 1024u
#define ISS_KEYTAB_CHUNKS 64u
int32_t iss_key_intern(const char *key, size_t keylen);
int iss_log_f64_at(iss_producer *p, uint32_t key_id, double v, double epoch);
int iss_log_i64_at(iss_producer *p, uint32_t key_id, int64_t v, double epoch);
int iss_log_bool_at(iss_producer *p, uint32_t key_id, int v, double epoch);
int iss_log_str_at(iss_producer *p, uint32_t key_id, const char *s, size_t slen, double epoch);

/* --- fork: the process-local key table's lock is reset in a fork child --- */
void iss_before_fork(void);
void iss_after_fork_parent(void);
void iss_after_fork_child(void);

/* --- atomics on the mapping, for the Python side --- */
uint64_t iss_load64(const uint8_t *base, uint64_t map_size, uint64_t off);
void iss_store64(uint8_t *base, uint64_t map_size, uint64_t off, uint64_t v);
uint64_t iss_add64(uint8_t *base, uint64_t map_size, uint64_t off, uint64_t v);

/* --- consumer --- */
int64_t iss_encode_batch(const uint8_t *base, uint64_t map_size, uint32_t seg_index,
                         uint64_t from, uint32_t max_events, char *out, size_t out_cap,
                         iss_batch *info);
size_t iss_format_double(double v, char *out, size_t cap);

#endif
