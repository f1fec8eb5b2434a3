/*
 * C API test: uses only include/kvs.h. Run as: test_api DIR
 * Exercises every function and every status code the C side can provoke, bad arguments,
 * a value larger than the caller's buffer, reopen persistence, and two threads.
 */
#define _GNU_SOURCE
#include "kvs.h"

#include "check.h"

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>

static void fill(unsigned char *p, size_t n, unsigned seed) {
    size_t i;
    for (i = 0; i < n; i++) {
        p[i] = (unsigned char)((i * 31u + seed * 17u) ^ (i >> 8));
    }
}

static kvs_options small_options(void) {
    kvs_options o;
    if (kvs_options_init(&o, sizeof o) != KVS_OK) {
        abort();
    }
    o.buffer_size = 8u << 20;
    o.flush_interval_ms = 2;
    return o;
}

static void test_arguments(const char *dir) {
    kvs_t *db = (kvs_t *)1;
    kvs_options bad = small_options();
    unsigned char v[4];
    size_t len = 99;
    void *p = (void *)1;
    char longkey[4097];

    CHECK_RC(kvs_open(NULL, NULL, &db), KVS_ERR_INVALID_ARGUMENT);
    CHECK(db == NULL);
    CHECK_RC(kvs_open(dir, NULL, NULL), KVS_ERR_INVALID_ARGUMENT);
    bad.buffer_size = 12345; /* not a multiple of 4096 */
    CHECK_RC(kvs_open(sub(dir, "bad"), &bad, &db), KVS_ERR_INVALID_ARGUMENT);
    CHECK(db == NULL);
    CHECK_RC(kvs_close(NULL), KVS_OK);
    kvs_free(NULL);

    CHECK_RC(kvs_open(sub(dir, "args"), NULL, &db), KVS_OK);
    CHECK(db != NULL);
    CHECK_RC(kvs_put(NULL, "k", 1, "v", 1), KVS_ERR_INVALID_ARGUMENT);
    CHECK_RC(kvs_put(db, NULL, 1, "v", 1), KVS_ERR_INVALID_ARGUMENT);
    CHECK_RC(kvs_put(db, "k", 0, "v", 1), KVS_ERR_INVALID_ARGUMENT);
    CHECK_RC(kvs_put(db, "k", 1, NULL, 1), KVS_ERR_INVALID_ARGUMENT);
    memset(longkey, 'x', sizeof longkey);
    CHECK_RC(kvs_put(db, longkey, 4097, "v", 1), KVS_ERR_INVALID_ARGUMENT);
    CHECK_RC(kvs_put(db, longkey, 4096, "v", 1), KVS_OK);
    CHECK_RC(kvs_get(db, "k", 1, v, sizeof v, NULL), KVS_ERR_INVALID_ARGUMENT);
    CHECK_RC(kvs_get(db, "k", 1, NULL, 4, &len), KVS_ERR_INVALID_ARGUMENT);
    CHECK_RC(kvs_get_alloc(db, "k", 1, NULL, &len), KVS_ERR_INVALID_ARGUMENT);
    CHECK_RC(kvs_get_alloc(db, "k", 1, &p, NULL), KVS_ERR_INVALID_ARGUMENT);
    CHECK_RC(kvs_delete(db, NULL, 1), KVS_ERR_INVALID_ARGUMENT);
    CHECK_RC(kvs_delete(NULL, "k", 1), KVS_ERR_INVALID_ARGUMENT);
    CHECK_RC(kvs_sync(NULL), KVS_ERR_INVALID_ARGUMENT);
    CHECK_RC(kvs_get_stats(db, NULL), KVS_ERR_INVALID_ARGUMENT);
    /* The rejected calls changed nothing: only the 4096-byte key is there. */
    CHECK_RC(kvs_get(db, "k", 1, v, sizeof v, &len), KVS_NOT_FOUND);
    CHECK(len == 0);
    {
        kvs_stats st;
        CHECK_RC(kvs_get_stats(db, &st), KVS_OK);
        CHECK(st.records == 1);
    }
    CHECK_RC(kvs_close(db), KVS_OK);
}

static void test_basic_and_reopen(const char *dir) {
    kvs_t *db = NULL;
    kvs_options o = small_options();
    size_t big_len = 3u << 20, len = 0;
    unsigned char *big = malloc(big_len), *out = malloc(big_len);
    unsigned char small[16];
    void *alloc = NULL;
    kvs_pinned_t *pinned_after_close = NULL;
    kvs_stats st;

    CHECK_RC(kvs_open(sub(dir, "basic"), &o, &db), KVS_OK);
    fill(big, big_len, 1);
    CHECK_RC(kvs_put(db, "big", 3, big, big_len), KVS_OK);
    CHECK_RC(kvs_put(db, "empty", 5, NULL, 0), KVS_OK);
    CHECK_RC(kvs_put(db, "gone", 4, "x", 1), KVS_OK);

    /* Too small a buffer reports the size needed, and a second call succeeds. */
    CHECK_RC(kvs_get(db, "big", 3, small, sizeof small, &len), KVS_ERR_BUFFER_TOO_SMALL);
    CHECK(len == big_len);
    CHECK_RC(kvs_get(db, "big", 3, NULL, 0, &len), KVS_ERR_BUFFER_TOO_SMALL);
    CHECK(len == big_len);
    CHECK_RC(kvs_get(db, "big", 3, out, big_len, &len), KVS_OK);
    CHECK(len == big_len && memcmp(out, big, big_len) == 0);
    CHECK_RC(kvs_get(db, "empty", 5, NULL, 0, &len), KVS_OK);
    CHECK(len == 0);

    CHECK_RC(kvs_get_alloc(db, "big", 3, &alloc, &len), KVS_OK);
    CHECK(alloc != NULL && len == big_len && memcmp(alloc, big, big_len) == 0);
    kvs_free(alloc);
    CHECK_RC(kvs_get_alloc(db, "empty", 5, &alloc, &len), KVS_OK);
    CHECK(alloc != NULL && len == 0);
    kvs_free(alloc);
    CHECK_RC(kvs_get_alloc(db, "nope", 4, &alloc, &len), KVS_NOT_FOUND);
    CHECK(alloc == NULL && len == 0);

    /* Pinned values own their memory: valid after the key changes and the store closes
       (freed below, after the close). */
    {
        kvs_pinned_t *pinned = NULL, *empty = NULL, *none = (kvs_pinned_t *)1;
        CHECK_RC(kvs_get_pinned(db, "big", 3, &pinned), KVS_OK);
        CHECK(pinned != NULL && kvs_pinned_len(pinned) == big_len);
        CHECK(memcmp(kvs_pinned_data(pinned), big, big_len) == 0);
        CHECK_RC(kvs_get_pinned(db, "empty", 5, &empty), KVS_OK);
        CHECK(empty != NULL && kvs_pinned_len(empty) == 0);
        CHECK_RC(kvs_get_pinned(db, "nope", 4, &none), KVS_NOT_FOUND);
        CHECK(none == NULL);
        CHECK_RC(kvs_get_pinned(db, "big", 3, NULL), KVS_ERR_INVALID_ARGUMENT);
        CHECK(kvs_pinned_data(NULL) == NULL && kvs_pinned_len(NULL) == 0);
        kvs_pinned_free(NULL);
        CHECK_RC(kvs_put(db, "big", 3, "changed", 7), KVS_OK);
        CHECK(memcmp(kvs_pinned_data(pinned), big, big_len) == 0);
        CHECK_RC(kvs_put(db, "big", 3, big, big_len), KVS_OK);
        kvs_pinned_free(empty);
        pinned_after_close = pinned;
    }

    CHECK_RC(kvs_delete(db, "gone", 4), KVS_OK);
    CHECK_RC(kvs_delete(db, "gone", 4), KVS_NOT_FOUND);
    CHECK_RC(kvs_get(db, "gone", 4, small, sizeof small, &len), KVS_NOT_FOUND);

    /* Over the limit: rejected, nothing changed. */
    {
        size_t huge = (5u << 20) + 1;
        unsigned char *h = calloc(1, huge);
        CHECK_RC(kvs_put(db, "big", 3, h, huge), KVS_ERR_TOO_LARGE);
        free(h);
        CHECK_RC(kvs_get(db, "big", 3, out, big_len, &len), KVS_OK);
        CHECK(len == big_len && memcmp(out, big, big_len) == 0);
    }

    /* A second open of the same store is refused while the first is open. */
    {
        kvs_t *second = (kvs_t *)1;
        CHECK_RC(kvs_open(sub(dir, "basic"), &o, &second), KVS_ERR_LOCKED);
        CHECK(second == NULL);
    }

    CHECK_RC(kvs_sync(db), KVS_OK);
    CHECK_RC(kvs_verify(db, NULL), KVS_OK);
    CHECK_RC(kvs_get_stats(db, &st), KVS_OK);
    CHECK(st.records == 2 && st.buffer_unflushed == 0 && st.index_bytes > 0);
    CHECK_RC(kvs_close(db), KVS_OK);
    CHECK(memcmp(kvs_pinned_data(pinned_after_close), big, big_len) == 0);
    kvs_pinned_free(pinned_after_close);

    /* Reopen: everything is still there. */
    db = NULL;
    CHECK_RC(kvs_open(sub(dir, "basic"), &o, &db), KVS_OK);
    CHECK_RC(kvs_get(db, "big", 3, out, big_len, &len), KVS_OK);
    CHECK(len == big_len && memcmp(out, big, big_len) == 0);
    CHECK_RC(kvs_get(db, "empty", 5, NULL, 0, &len), KVS_OK);
    CHECK_RC(kvs_get(db, "gone", 4, small, sizeof small, &len), KVS_NOT_FOUND);
    CHECK_RC(kvs_checkpoint(db), KVS_OK);
    CHECK_RC(kvs_checkpoint(NULL), KVS_ERR_INVALID_ARGUMENT);
    CHECK_RC(kvs_close(db), KVS_OK);

    /* Every durability mode opens and works; an unknown one is refused. */
    {
        int modes[] = {KVS_DURABILITY_NONE, KVS_DURABILITY_BATCH, KVS_DURABILITY_ALWAYS};
        size_t m;
        for (m = 0; m < 3; m++) {
            kvs_options mo = o;
            mo.durability = (uint32_t)modes[m];
            CHECK_RC(kvs_open(sub(dir, "basic"), &mo, &db), KVS_OK);
            CHECK_RC(kvs_put(db, "mode", 4, "x", 1), KVS_OK);
            CHECK_RC(kvs_delete(db, "mode", 4), KVS_OK);
            CHECK_RC(kvs_close(db), KVS_OK);
        }
        o.durability = 9;
        CHECK_RC(kvs_open(sub(dir, "basic"), &o, &db), KVS_ERR_INVALID_ARGUMENT);
        CHECK(db == NULL);
    }
    free(big);
    free(out);
}

/* Flips one byte inside the stored value; the get must say CORRUPTION, never the bytes. */
static void test_corruption(const char *dir) {
    kvs_t *db = NULL;
    kvs_options o = small_options();
    unsigned char value[5000], out[5000];
    size_t len = 0, n, i;
    FILE *f;
    unsigned char *file;
    long size;

    fill(value, sizeof value, 7);
    memcpy(value, "MARKER-0123456789", 17);
    CHECK_RC(kvs_open(sub(dir, "corrupt"), &o, &db), KVS_OK);
    CHECK_RC(kvs_put(db, "victim", 6, value, sizeof value), KVS_OK);
    CHECK_RC(kvs_put(db, "bystander", 9, "fine", 4), KVS_OK);
    CHECK_RC(kvs_close(db), KVS_OK);

    f = fopen(sub(dir, "corrupt/disk_file"), "r+b");
    CHECK(f != NULL);
    if (f == NULL) return;
    fseek(f, 0, SEEK_END);
    size = ftell(f);
    file = malloc((size_t)size);
    fseek(f, 0, SEEK_SET);
    n = fread(file, 1, (size_t)size, f);
    CHECK(n == (size_t)size);
    for (i = 0; i + 17 <= n; i++) {
        if (memcmp(file + i, "MARKER-0123456789", 17) == 0) break;
    }
    CHECK(i + 17 <= n);
    fseek(f, (long)(i + 100), SEEK_SET);
    fputc(file[i + 100] ^ 0x01, f);
    fclose(f);
    free(file);

    CHECK_RC(kvs_open(sub(dir, "corrupt"), &o, &db), KVS_OK);
    {
        kvs_verify_report rep;
        CHECK_RC(kvs_verify(db, &rep), KVS_ERR_CORRUPTION);
        CHECK(rep.records == 1 && rep.corrupt == 1);
        CHECK_RC(kvs_verify(NULL, &rep), KVS_ERR_INVALID_ARGUMENT);
    }
    CHECK_RC(kvs_get(db, "victim", 6, out, sizeof out, &len), KVS_ERR_CORRUPTION);
    CHECK_RC(kvs_get(db, "bystander", 9, out, sizeof out, &len), KVS_OK);
    CHECK(len == 4 && memcmp(out, "fine", 4) == 0);
    CHECK_RC(kvs_close(db), KVS_OK);
}

/* A file-size limit makes the flush fail with EFBIG. A failed write latches the store
 * as failed: sync reports KVS_ERR_FAILED and no later sync on the handle succeeds (the
 * kernel may have dropped what it had), changes are refused, gets keep working; after a
 * reopen the store recovers what is really on disk and works on. */
static void test_write_failure_latches(const char *dir) {
    kvs_t *db = NULL;
    kvs_options o = small_options();
    struct rlimit old, lim;
    unsigned char value[200000], out[200000];
    size_t len = 0;
    kvs_stats st;

    signal(SIGXFSZ, SIG_IGN);
    CHECK_RC(kvs_open(sub(dir, "full"), &o, &db), KVS_OK);
    CHECK_RC(kvs_put(db, "before", 6, "safe", 4), KVS_OK);
    CHECK_RC(kvs_sync(db), KVS_OK);
    getrlimit(RLIMIT_FSIZE, &old);
    lim = old;
    lim.rlim_cur = 64 * 1024;
    CHECK(setrlimit(RLIMIT_FSIZE, &lim) == 0);
    fill(value, sizeof value, 3);
    CHECK_RC(kvs_put(db, "after", 5, value, sizeof value), KVS_OK);
    CHECK_RC(kvs_sync(db), KVS_ERR_FAILED);
    /* Every change is refused and changes nothing; gets keep working. */
    CHECK_RC(kvs_put(db, "refused", 7, "x", 1), KVS_ERR_FAILED);
    CHECK_RC(kvs_delete(db, "before", 6), KVS_ERR_FAILED);
    CHECK_RC(kvs_checkpoint(db), KVS_ERR_FAILED);
    CHECK_RC(kvs_compact(db, NULL), KVS_ERR_FAILED);
    CHECK_RC(kvs_get(db, "refused", 7, out, sizeof out, &len), KVS_NOT_FOUND);
    CHECK_RC(kvs_get(db, "before", 6, out, sizeof out, &len), KVS_OK);
    CHECK_RC(kvs_get(db, "after", 5, out, sizeof out, &len), KVS_OK);
    CHECK(len == sizeof value && memcmp(out, value, len) == 0);
    CHECK_RC(kvs_get_stats(db, &st), KVS_OK);
    CHECK(st.failed == 1);
    /* Space coming back does not make the failure go away: only a reopen does. */
    CHECK(setrlimit(RLIMIT_FSIZE, &old) == 0);
    CHECK_RC(kvs_sync(db), KVS_ERR_FAILED);
    CHECK_RC(kvs_close(db), KVS_ERR_FAILED);
    CHECK_RC(kvs_open(sub(dir, "full"), &o, &db), KVS_OK);
    CHECK_RC(kvs_get(db, "before", 6, out, sizeof out, &len), KVS_OK);
    CHECK(len == 4 && memcmp(out, "safe", 4) == 0);
    /* "after" was never acknowledged durable: it is there whole or not at all. */
    {
        int rc = kvs_get(db, "after", 5, out, sizeof out, &len);
        CHECK(rc == KVS_NOT_FOUND || (rc == KVS_OK && len == sizeof value &&
                                      memcmp(out, value, len) == 0));
    }
    CHECK_RC(kvs_get_stats(db, &st), KVS_OK);
    CHECK(st.failed == 0);
    CHECK_RC(kvs_put(db, "accepted", 8, "y", 1), KVS_OK);
    CHECK_RC(kvs_sync(db), KVS_OK);
    CHECK_RC(kvs_close(db), KVS_OK);

    /* The store's LOG tells the story: the failed flush and the failure. */
    {
        char log[16384];
        size_t n;
        FILE *f = fopen(sub(dir, "full/LOG"), "r");
        CHECK(f != NULL);
        if (f != NULL) {
            n = fread(log, 1, sizeof log - 1, f);
            log[n] = '\0';
            fclose(f);
            CHECK(strstr(log, "no space left on the device") != NULL);
            CHECK(strstr(log, "IMAGE_file not written") != NULL);
        }
    }
}

static void test_io_error(const char *dir) {
    kvs_t *db = NULL;
    FILE *f = fopen(sub(dir, "plainfile"), "w");
    CHECK(f != NULL);
    if (f) fclose(f);
    /* A store path that is a file, and one below a file. */
    CHECK_RC(kvs_open(sub(dir, "plainfile"), NULL, &db), KVS_ERR_INVALID_ARGUMENT);
    CHECK_RC(kvs_open(sub(dir, "plainfile/below"), NULL, &db), KVS_ERR_IO);
    CHECK(db == NULL);
}

/* kvs_rebuild takes the lock first: against an open store it changes nothing; on a
 * closed one it rebuilds the index from disk_file alone. */
static void test_rebuild(const char *dir) {
    kvs_t *db = NULL;
    kvs_options o = small_options();
    unsigned char out[16];
    size_t len = 0;
    CHECK_RC(kvs_open(sub(dir, "rebuild"), &o, &db), KVS_OK);
    CHECK_RC(kvs_put(db, "a", 1, "one", 3), KVS_OK);
    CHECK_RC(kvs_put(db, "b", 1, "two", 3), KVS_OK);
    CHECK_RC(kvs_delete(db, "a", 1), KVS_OK);
    CHECK_RC(kvs_rebuild(sub(dir, "rebuild"), &o), KVS_ERR_LOCKED);
    CHECK_RC(kvs_close(db), KVS_OK);
    CHECK_RC(kvs_rebuild(NULL, &o), KVS_ERR_INVALID_ARGUMENT);
    CHECK_RC(kvs_rebuild(sub(dir, "rebuild"), &o), KVS_OK);
    CHECK_RC(kvs_open(sub(dir, "rebuild"), &o, &db), KVS_OK);
    CHECK_RC(kvs_get(db, "a", 1, out, sizeof out, &len), KVS_NOT_FOUND);
    CHECK_RC(kvs_get(db, "b", 1, out, sizeof out, &len), KVS_OK);
    CHECK(len == 3 && memcmp(out, "two", 3) == 0);
    CHECK_RC(kvs_close(db), KVS_OK);
}

static void test_strerror(void) {
    int codes[] = {KVS_OK, KVS_NOT_FOUND, KVS_ERR_INVALID_ARGUMENT, KVS_ERR_BUFFER_TOO_SMALL,
                   KVS_ERR_TOO_LARGE, KVS_ERR_IO, KVS_ERR_CORRUPTION, KVS_ERR_NO_SPACE,
                   KVS_ERR_LOCKED, KVS_ERR_PANIC, KVS_ERR_FAILED,
                   KVS_ERR_UNSUPPORTED_VERSION, KVS_ERR_INDEX_FULL, KVS_ERR_OPTIONS_SIZE};
    size_t i, j;
    for (i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        CHECK(kvs_strerror(codes[i]) != NULL && strlen(kvs_strerror(codes[i])) > 0);
        for (j = 0; j < i; j++) CHECK(strcmp(kvs_strerror(codes[i]), kvs_strerror(codes[j])) != 0);
    }
    CHECK(strcmp(kvs_strerror(12345), "unknown status code") == 0);
    CHECK(KVS_OK == 0 && KVS_NOT_FOUND == 1);
}

struct worker {
    kvs_t *db;
    int id;
    int errors;
};

static void *worker_main(void *arg) {
    struct worker *w = arg;
    unsigned char value[30000], out[30000];
    char key[32];
    size_t len;
    int i;
    for (i = 0; i < 300; i++) {
        int n = snprintf(key, sizeof key, "w%d-%d", w->id, i % 40);
        size_t vlen = (size_t)(i * 97 % 30000);
        fill(value, vlen, (unsigned)(w->id * 1000 + i));
        if (kvs_put(w->db, key, (size_t)n, value, vlen) != KVS_OK) w->errors++;
        if (kvs_get(w->db, key, (size_t)n, out, sizeof out, &len) != KVS_OK || len != vlen ||
            memcmp(out, value, vlen) != 0)
            w->errors++;
        if (i % 7 == 0 && kvs_delete(w->db, key, (size_t)n) != KVS_OK) w->errors++;
    }
    return NULL;
}

static void test_threads(const char *dir) {
    kvs_t *db = NULL;
    kvs_options o = small_options();
    pthread_t t[2];
    struct worker w[2];
    int i;
    CHECK_RC(kvs_open(sub(dir, "threads"), &o, &db), KVS_OK);
    for (i = 0; i < 2; i++) {
        w[i].db = db;
        w[i].id = i;
        w[i].errors = 0;
        CHECK(pthread_create(&t[i], NULL, worker_main, &w[i]) == 0);
    }
    for (i = 0; i < 2; i++) {
        pthread_join(t[i], NULL);
        CHECK(w[i].errors == 0);
    }
    CHECK_RC(kvs_close(db), KVS_OK);
}

static void test_compact(const char *dir) {
    kvs_t *db = NULL;
    kvs_options o = small_options();
    kvs_stats before, after, full;
    kvs_compact_report rep;
    unsigned char value[20000], out[20000];
    char key[16];
    size_t len = 0;
    int round, k, ok = 1;
    o.segment_size = 256u << 10;
    o.max_value_size = 64u << 10;
    o.disable_background_reclaim = 1;
    /* Bad reclaim settings are refused like any other option. */
    o.reclaim_threshold = 2.0;
    CHECK_RC(kvs_open(sub(dir, "compact"), &o, &db), KVS_ERR_INVALID_ARGUMENT);
    o.reclaim_threshold = 0;
    o.segment_size = 4096;
    CHECK_RC(kvs_open(sub(dir, "compact"), &o, &db), KVS_ERR_INVALID_ARGUMENT);
    o.segment_size = 256u << 10;
    CHECK_RC(kvs_open(sub(dir, "compact"), &o, &db), KVS_OK);
    /* A third of the keys keep their first version: the first segments stay a third live
     * (records to move), the later ones hold dead bytes only. */
    for (round = 0; round < 5; round++) {
        for (k = 0; k < 60; k++) {
            if (round > 0 && k % 3 == 0) {
                continue;
            }
            snprintf(key, sizeof key, "k%d", k);
            fill(value, sizeof value, (unsigned)(round * 100 + k));
            CHECK_RC(kvs_put(db, key, strlen(key), value, sizeof value), KVS_OK);
        }
        /* Every version reaches disk (the ring drops overwritten ones it still holds). */
        CHECK_RC(kvs_sync(db), KVS_OK);
    }
    CHECK_RC(kvs_get_stats(db, &before), KVS_OK);
    CHECK(before.dead_bytes > 2 * before.live_bytes);
    memset(&rep, 0, sizeof rep);
    CHECK_RC(kvs_compact(db, &rep), KVS_OK);
    CHECK(rep.segments_freed > 0 && rep.records_moved > 0 && rep.bytes_moved > 0);
    CHECK_RC(kvs_compact(db, NULL), KVS_OK);
    CHECK_RC(kvs_compact(NULL, &rep), KVS_ERR_INVALID_ARGUMENT);
    CHECK_RC(kvs_get_stats(db, &after), KVS_OK);
    CHECK(after.segments_freed >= rep.segments_freed);
    CHECK(after.dead_bytes < before.dead_bytes);
    CHECK(after.disk_file_allocated < before.disk_file_allocated);
    /* A compaction keeps no slot it gave back with its blocks (recycled): du is down. */
    memset(&full, 0xff, sizeof full);
    CHECK_RC(kvs_get_stats_sized(db, &full, sizeof full), KVS_OK);
    CHECK(full.recycled_segments == 0 && full.free_segments > 0);
    for (k = 0; k < 60; k++) {
        snprintf(key, sizeof key, "k%d", k);
        fill(value, sizeof value, (unsigned)(k % 3 == 0 ? k : 400 + k));
        if (kvs_get(db, key, strlen(key), out, sizeof out, &len) != KVS_OK ||
            len != sizeof value || memcmp(out, value, len) != 0) {
            ok = 0;
        }
    }
    CHECK(ok);
    CHECK_RC(kvs_close(db), KVS_OK);
}

/* Listing keys: every key once with its value length, prefixes, a buffer too small for a
 * key (the same key comes again), a listing after close of the store. */
static void test_iter(const char *dir) {
    kvs_t *db = NULL;
    kvs_iter_t *it = NULL;
    kvs_options o = small_options();
    char key[64];
    unsigned char value[300];
    size_t key_len = 0, value_len = 0;
    int seen[100], i, n = 0, rc;
    memset(seen, 0, sizeof seen);
    CHECK_RC(kvs_open(sub(dir, "iter"), &o, &db), KVS_OK);
    for (i = 0; i < 100; i++) {
        snprintf(key, sizeof key, "%s/%03d", i % 2 ? "odd" : "even", i);
        fill(value, (size_t)i * 3, (unsigned)i);
        CHECK_RC(kvs_put(db, key, strlen(key), value, (size_t)i * 3), KVS_OK);
    }
    CHECK_RC(kvs_delete(db, "odd/001", 7), KVS_OK);
    CHECK_RC(kvs_iter_open(db, NULL, 0, NULL), KVS_ERR_INVALID_ARGUMENT);
    CHECK_RC(kvs_iter_open(db, NULL, 3, &it), KVS_ERR_INVALID_ARGUMENT);
    CHECK(it == NULL);
    CHECK_RC(kvs_iter_open(db, "odd/", 4, &it), KVS_OK);
    /* A buffer too small: the needed size, and the key again. */
    CHECK_RC(kvs_iter_next(it, key, 2, &key_len, &value_len), KVS_ERR_BUFFER_TOO_SMALL);
    CHECK(key_len == 7);
    CHECK_RC(kvs_iter_next(it, key, sizeof key, NULL, &value_len), KVS_ERR_INVALID_ARGUMENT);
    while ((rc = kvs_iter_next(it, key, sizeof key, &key_len, &value_len)) == KVS_OK) {
        CHECK(key_len == 7 && memcmp(key, "odd/", 4) == 0);
        key[key_len] = 0;
        i = atoi(key + 4);
        CHECK(i % 2 == 1 && i != 1 && !seen[i]);
        CHECK(value_len == (size_t)i * 3);
        seen[i] = 1;
        n++;
    }
    CHECK(rc == KVS_NOT_FOUND && key_len == 0);
    CHECK(n == 49);
    CHECK_RC(kvs_iter_next(it, key, sizeof key, &key_len, &value_len), KVS_NOT_FOUND);
    kvs_iter_close(it);
    /* Every key. */
    CHECK_RC(kvs_iter_open(db, "", 0, &it), KVS_OK);
    n = 0;
    while (kvs_iter_next(it, key, sizeof key, &key_len, &value_len) == KVS_OK) {
        n++;
    }
    CHECK(n == 99);
    kvs_iter_close(it);
    kvs_iter_close(NULL);
    /* A listing left open across kvs_close reports the store closed. */
    CHECK_RC(kvs_iter_open(db, "even/", 5, &it), KVS_OK);
    CHECK_RC(kvs_close(db), KVS_OK);
    CHECK_RC(kvs_iter_next(it, key, sizeof key, &key_len, &value_len), KVS_ERR_IO);
    /* And again: the error ended it, and is not taken for the end of a whole listing
       (KVS_NOT_FOUND, before a review). */
    CHECK_RC(kvs_iter_next(it, key, sizeof key, &key_len, &value_len), KVS_ERR_IO);
    kvs_iter_close(it);
}

/* Atomic batches: applied whole, left reusable; a bad one changes nothing. */
static void test_batch(const char *dir) {
    kvs_t *db = NULL;
    kvs_options o = small_options();
    kvs_batch_t *b = kvs_batch_new();
    unsigned char out[64];
    size_t len = 0;
    CHECK(b != NULL);
    /* Refused at once, leaving the batch as it was (the write below shows it): a key
       over 4096 bytes, a value over 256 MiB, which no store takes. */
    {
        static char longkey[4097];
        size_t huge = (256u << 20) + 1;
        char *big = malloc(huge);
        CHECK(big != NULL);
        memset(longkey, 'k', sizeof longkey);
        CHECK_RC(kvs_batch_put(b, longkey, sizeof longkey, "x", 1), KVS_ERR_INVALID_ARGUMENT);
        /* Found by review: a delete took it, and the write failed as a whole later. */
        CHECK_RC(kvs_batch_delete(b, longkey, sizeof longkey), KVS_ERR_INVALID_ARGUMENT);
        CHECK_RC(kvs_batch_put(b, "h", 1, big, huge), KVS_ERR_TOO_LARGE);
        free(big);
    }
    CHECK_RC(kvs_open(sub(dir, "batch"), &o, &db), KVS_OK);
    CHECK_RC(kvs_put(db, "gone", 4, "x", 1), KVS_OK);
    CHECK_RC(kvs_batch_put(b, "a", 1, "one", 3), KVS_OK);
    CHECK_RC(kvs_batch_put(b, "b", 1, "two", 3), KVS_OK);
    CHECK_RC(kvs_batch_put(b, "a", 1, "uno", 3), KVS_OK);
    CHECK_RC(kvs_batch_delete(b, "gone", 4), KVS_OK);
    CHECK_RC(kvs_batch_put(NULL, "a", 1, "x", 1), KVS_ERR_INVALID_ARGUMENT);
    CHECK_RC(kvs_batch_put(b, NULL, 1, "x", 1), KVS_ERR_INVALID_ARGUMENT);
    CHECK_RC(kvs_batch_write(db, NULL), KVS_ERR_INVALID_ARGUMENT);
    CHECK_RC(kvs_batch_write(db, b), KVS_OK);
    CHECK_RC(kvs_get(db, "a", 1, out, sizeof out, &len), KVS_OK);
    CHECK(len == 3 && memcmp(out, "uno", 3) == 0);
    CHECK_RC(kvs_get(db, "b", 1, out, sizeof out, &len), KVS_OK);
    CHECK_RC(kvs_get(db, "gone", 4, out, sizeof out, &len), KVS_NOT_FOUND);
    /* An empty key makes the whole batch fail, and nothing of it lands. */
    CHECK_RC(kvs_batch_put(b, "c", 1, "three", 5), KVS_OK);
    CHECK_RC(kvs_batch_put(b, "", 0, "empty", 5), KVS_OK);
    CHECK_RC(kvs_batch_write(db, b), KVS_ERR_INVALID_ARGUMENT);
    CHECK_RC(kvs_get(db, "c", 1, out, sizeof out, &len), KVS_NOT_FOUND);
    /* Refused operations are not counted; a cleared batch is reused without the bad key. */
    CHECK(kvs_batch_len(b) == 6);
    CHECK(kvs_batch_len(NULL) == 0);
    CHECK_RC(kvs_batch_clear(NULL), KVS_ERR_INVALID_ARGUMENT);
    CHECK_RC(kvs_batch_clear(b), KVS_OK);
    CHECK(kvs_batch_len(b) == 0);
    CHECK_RC(kvs_batch_put(b, "c", 1, "three", 5), KVS_OK);
    CHECK(kvs_batch_len(b) == 1);
    CHECK_RC(kvs_batch_write(db, b), KVS_OK);
    CHECK_RC(kvs_get(db, "c", 1, out, sizeof out, &len), KVS_OK);
    CHECK(len == 5 && memcmp(out, "three", 5) == 0);
    CHECK_RC(kvs_get(db, "a", 1, out, sizeof out, &len), KVS_OK);
    CHECK(len == 3 && memcmp(out, "uno", 3) == 0);
    kvs_batch_free(b);
    kvs_batch_free(NULL);
    CHECK_RC(kvs_close(db), KVS_OK);
    CHECK_RC(kvs_open(sub(dir, "batch"), &o, &db), KVS_OK);
    CHECK_RC(kvs_get(db, "a", 1, out, sizeof out, &len), KVS_OK);
    CHECK(len == 3 && memcmp(out, "uno", 3) == 0);
    CHECK_RC(kvs_close(db), KVS_OK);
}

/* kvs_get_stats writes only the first version of kvs_stats; kvs_get_stats_sized writes as
 * many bytes as the caller says its struct has, zeroing what this library lacks. */
static void test_stats(const char *dir) {
    kvs_options o = small_options();
    kvs_t *db = NULL;
    kvs_stats st;
    unsigned char value[3000];
    size_t i;
    /* A caller's struct from a newer kvs.h: two fields this library does not know. */
    struct {
        kvs_stats known;
        uint64_t later[2];
    } newer;
    /* A caller's struct from the first kvs.h, with bytes after it that must stay. */
    union {
        kvs_stats whole;
        unsigned char bytes[sizeof(kvs_stats)];
    } old;

    CHECK(offsetof(kvs_stats, segment_size) == KVS_STATS_SIZE_1);
    CHECK(sizeof(kvs_stats) <= KVS_MAX_STRUCT_SIZE);
    CHECK_RC(kvs_open(sub(dir, "stats"), &o, &db), KVS_OK);
    fill(value, sizeof value, 7);
    CHECK_RC(kvs_put(db, "a", 1, value, sizeof value), KVS_OK);
    CHECK_RC(kvs_put(db, "b", 1, value, sizeof value), KVS_OK);
    CHECK_RC(kvs_put(db, "a", 1, value, 10), KVS_OK);
    CHECK_RC(kvs_sync(db), KVS_OK);

    /* One scratch buffer for the key and the value: the key at its start, then inside. */
    {
        unsigned char scratch[4000];
        size_t n = 0;
        memcpy(scratch, "b", 1);
        CHECK_RC(kvs_get(db, scratch, 1, scratch, sizeof scratch, &n), KVS_OK);
        CHECK(n == sizeof value && memcmp(scratch, value, sizeof value) == 0);
        memcpy(scratch + 500, "b", 1);
        CHECK_RC(kvs_get(db, scratch + 500, 1, scratch, sizeof scratch, &n), KVS_OK);
        CHECK(n == sizeof value && memcmp(scratch, value, sizeof value) == 0);
        memcpy(scratch + 10, "a", 1);
        CHECK_RC(kvs_get(db, scratch + 10, 1, scratch, 5, &n), KVS_ERR_BUFFER_TOO_SMALL);
        CHECK(n == 10);
    }

    CHECK_RC(kvs_get_stats_sized(db, NULL, sizeof st), KVS_ERR_INVALID_ARGUMENT);
    memset(&st, 0xAB, sizeof st);
    CHECK_RC(kvs_get_stats_sized(db, &st, KVS_STATS_SIZE_1 - 8), KVS_ERR_INVALID_ARGUMENT);
    CHECK_RC(kvs_get_stats_sized(db, &st, KVS_STATS_SIZE_1 + 4), KVS_ERR_INVALID_ARGUMENT);
    CHECK_RC(kvs_get_stats_sized(db, &st, KVS_MAX_STRUCT_SIZE + 8), KVS_ERR_INVALID_ARGUMENT);
    CHECK(st.records == 0xABABABABABABABABull); /* refused calls wrote nothing */

    CHECK_RC(kvs_get_stats_sized(db, &st, sizeof st), KVS_OK);
    CHECK(st.records == 2 && st.failed == 0);
    CHECK(st.segment_size > 0 && st.segments >= 1 && st.log_end > 0);
    CHECK(st.flushed_bytes >= 2 * sizeof value && st.syncs >= 1);
    CHECK(st.flushes == st.flushes_asked + st.flushes_horizon + st.flushes_interval);
    CHECK(st.format_version >= 6 && st.opened_from_image == 0);

    memset(&old, 0xAB, sizeof old);
    CHECK_RC(kvs_get_stats(db, &old.whole), KVS_OK);
    CHECK(old.whole.records == 2 && old.whole.live_record_bytes == st.live_record_bytes);
    for (i = KVS_STATS_SIZE_1; i < sizeof old.bytes; i++) {
        CHECK(old.bytes[i] == 0xAB);
    }
    memset(&old, 0xAB, sizeof old);
    CHECK_RC(kvs_get_stats_sized(db, &old.whole, KVS_STATS_SIZE_1), KVS_OK);
    CHECK(old.whole.records == 2 && old.bytes[KVS_STATS_SIZE_1] == 0xAB);

    memset(&newer, 0xAB, sizeof newer);
    CHECK_RC(kvs_get_stats_sized(db, &newer.known, sizeof newer), KVS_OK);
    CHECK(newer.known.records == 2 && newer.known.segment_size == st.segment_size);
    CHECK(newer.later[0] == 0 && newer.later[1] == 0);
    CHECK_RC(kvs_close(db), KVS_OK);

    /* Reopened from the image close wrote. */
    db = NULL;
    CHECK_RC(kvs_open(sub(dir, "stats"), &o, &db), KVS_OK);
    CHECK_RC(kvs_get_stats_sized(db, &st, sizeof st), KVS_OK);
    CHECK(st.records == 2 && st.opened_from_image == 1);
    CHECK_RC(kvs_close(db), KVS_OK);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    mkdir(argv[1], 0700);
    test_strerror();
    test_arguments(argv[1]);
    test_basic_and_reopen(argv[1]);
    test_corruption(argv[1]);
    test_write_failure_latches(argv[1]);
    test_rebuild(argv[1]);
    test_io_error(argv[1]);
    test_threads(argv[1]);
    test_compact(argv[1]);
    test_iter(argv[1]);
    test_batch(argv[1]);
    test_stats(argv[1]);
    printf("%d checks, %d failed\n", checks, failures);
    return failures == 0 ? 0 : 1;
}
