/*
 * The C library as an installed library: version, options that grow (kvs_options_init,
 * struct_size), the last error's detail (message, file, errno) and the host's log
 * callback. Uses only <kvs.h>; the tests build it both against the repository and, via
 * pkg-config, against an installed prefix. Run as: test_lib DIR
 */
#define _GNU_SOURCE
#include <kvs.h>

#include "check.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void last_error(char *buf, size_t len) {
    size_t n = 0;
    buf[0] = 0;
    kvs_last_error(buf, len, &n);
}

static void test_version(void) {
    char want[32];
    CHECK(kvs_version() == KVS_VERSION);
    CHECK(KVS_VERSION == KVS_VERSION_MAJOR * 10000 + KVS_VERSION_MINOR * 100 + KVS_VERSION_PATCH);
    CHECK(kvs_version() / 10000 == KVS_VERSION_MAJOR);
    snprintf(want, sizeof want, "%d.%d.%d", KVS_VERSION_MAJOR, KVS_VERSION_MINOR,
             KVS_VERSION_PATCH);
    CHECK(strcmp(kvs_version_string(), want) == 0);
}

/* kvs_options as an older kvs.h with only its first four fields declared it. */
typedef struct {
    uint64_t struct_size;
    uint64_t buffer_size;
    uint64_t flush_horizon;
    uint64_t flush_interval_ms;
} old_options;

/* kvs_options as a newer kvs.h with two more fields would declare it. */
typedef struct {
    kvs_options known;
    uint64_t future[2];
} new_options;

static void test_options(const char *dir) {
    kvs_options o;
    old_options old;
    new_options newer;
    kvs_t *db = NULL;
    kvs_stats st;
    char why[512];

    CHECK_RC(kvs_options_init(&o, sizeof o), KVS_OK);
    CHECK(o.struct_size == sizeof o);
    CHECK(o.buffer_size == 256u << 20 && o.durability == KVS_DURABILITY_BATCH);
    CHECK(o.max_value_size == 5u << 20 && o.file_mode == 0600);
    CHECK_RC(kvs_options_init(NULL, sizeof o), KVS_ERR_INVALID_ARGUMENT);
    CHECK_RC(kvs_options_init(&o, 0), KVS_ERR_OPTIONS_SIZE);
    CHECK_RC(kvs_options_init(&o, 12), KVS_ERR_OPTIONS_SIZE);

    /* An older program's smaller struct: its fields are used, the rest default. */
    memset(&old, 0xab, sizeof old);
    CHECK_RC(kvs_options_init((kvs_options *)&old, sizeof old), KVS_OK);
    CHECK(old.struct_size == sizeof old && old.buffer_size == 256u << 20);
    old.buffer_size = 16u << 20;
    CHECK_RC(kvs_open(sub(dir, "old"), (const kvs_options *)&old, &db), KVS_OK);
    CHECK_RC(kvs_get_stats(db, &st), KVS_OK);
    CHECK(st.buffer_capacity == 16u << 20);
    CHECK_RC(kvs_close(db), KVS_OK);

    /* A newer program's larger struct: fine while the fields this library does not
       know are 0, refused (nothing opened) once one is set. */
    CHECK_RC(kvs_options_init((kvs_options *)&newer, sizeof newer), KVS_OK);
    CHECK(newer.known.struct_size == sizeof newer && newer.future[0] == 0 &&
          newer.future[1] == 0);
    newer.known.buffer_size = 8u << 20;
    CHECK_RC(kvs_open(sub(dir, "new"), (const kvs_options *)&newer, &db), KVS_OK);
    CHECK_RC(kvs_close(db), KVS_OK);
    newer.future[1] = 7;
    db = (kvs_t *)1;
    CHECK_RC(kvs_open(sub(dir, "new"), (const kvs_options *)&newer, &db), KVS_ERR_OPTIONS_SIZE);
    CHECK(db == NULL);
    last_error(why, sizeof why);
    CHECK(strstr(why, "does not know") != NULL);

    /* A struct never set up: refused, and the message says what to do. */
    memset(&o, 0, sizeof o);
    CHECK_RC(kvs_open(sub(dir, "zero"), &o, &db), KVS_ERR_OPTIONS_SIZE);
    last_error(why, sizeof why);
    CHECK(strstr(why, "kvs_options_init") != NULL);
    CHECK_RC(kvs_rebuild(sub(dir, "zero"), &o), KVS_ERR_OPTIONS_SIZE);

    /* A struct never set up whose struct_size holds garbage (here a pointer's value):
       refused before anything past the struct is read. */
    o.struct_size = (uint64_t)(uintptr_t)&o;
    o.struct_size &= ~(uint64_t)7;
    if (o.struct_size <= 4096) {
        o.struct_size = 1u << 20;
    }
    CHECK_RC(kvs_open(sub(dir, "garbage"), &o, &db), KVS_ERR_OPTIONS_SIZE);
    last_error(why, sizeof why);
    CHECK(strstr(why, "kvs_options_init") != NULL);
    o.struct_size = 4096 + 8;
    CHECK_RC(kvs_open(sub(dir, "garbage"), &o, &db), KVS_ERR_OPTIONS_SIZE);
    CHECK_RC(kvs_options_init(&o, 4096 + 8), KVS_ERR_OPTIONS_SIZE);
}

static void *no_error_yet(void *arg) {
    size_t n = 99;
    char buf[16] = "x";
    (void)arg;
    /* A thread with no failed call has no last error. */
    if (kvs_last_error(buf, sizeof buf, &n) != KVS_NOT_FOUND || n != 0 || buf[0] != 0 ||
        kvs_last_errno() != 0) {
        return (void *)1;
    }
    return NULL;
}

static void test_last_error(const char *dir) {
    kvs_t *db = NULL, *second = NULL;
    char why[512], small[8];
    size_t n = 0, full = 0;
    pthread_t t;
    void *res = (void *)1;
    FILE *f;

    CHECK(pthread_create(&t, NULL, no_error_yet, NULL) == 0);
    CHECK(pthread_join(t, &res) == 0);
    CHECK(res == NULL);

    /* A path below a plain file: the error names the file and keeps ENOTDIR. */
    f = fopen(sub(dir, "plainfile"), "w");
    CHECK(f != NULL);
    if (f) fclose(f);
    CHECK_RC(kvs_open(sub(dir, "plainfile/below"), NULL, &db), KVS_ERR_IO);
    CHECK(kvs_last_errno() == ENOTDIR);
    CHECK_RC(kvs_last_error(NULL, 0, &full), KVS_OK);
    last_error(why, sizeof why);
    CHECK(strlen(why) == full);
    CHECK(strstr(why, "plainfile") != NULL);
    CHECK(strstr(why, "os error 20") != NULL);
    /* Cut to the buffer, NUL-terminated; the full length is still reported. */
    CHECK_RC(kvs_last_error(small, sizeof small, &n), KVS_OK);
    CHECK(n == full && strlen(small) == sizeof small - 1 && memcmp(small, why, 7) == 0);
    CHECK_RC(kvs_last_error(NULL, 4, &n), KVS_ERR_INVALID_ARGUMENT);

    /* A successful call keeps it; a later failure replaces it. */
    CHECK_RC(kvs_open(sub(dir, "locked"), NULL, &db), KVS_OK);
    last_error(why, sizeof why);
    CHECK(strstr(why, "plainfile") != NULL);
    CHECK_RC(kvs_open(sub(dir, "locked"), NULL, &second), KVS_ERR_LOCKED);
    last_error(why, sizeof why);
    CHECK(strstr(why, "locked") != NULL);
    CHECK(kvs_last_errno() == 0);
    {
        size_t vl = 99;
        CHECK_RC(kvs_put(db, "k", 1, "value", 5), KVS_OK);
        CHECK_RC(kvs_value_len(db, "k", 1, &vl), KVS_OK);
        CHECK(vl == 5);
        CHECK_RC(kvs_value_len(db, "absent", 6, &vl), KVS_NOT_FOUND);
        CHECK(vl == 0);
        CHECK_RC(kvs_value_len(db, "k", 1, NULL), KVS_ERR_INVALID_ARGUMENT);
    }
    CHECK_RC(kvs_put(db, "", 0, "v", 1), KVS_ERR_INVALID_ARGUMENT);
    last_error(why, sizeof why);
    CHECK(strstr(why, "key") != NULL);
    /* A length no buffer can have (nothing is read): said so, not "value is NULL". */
    CHECK_RC(kvs_put(db, "k", 1, "v", (size_t)-1), KVS_ERR_INVALID_ARGUMENT);
    last_error(why, sizeof why);
    CHECK(strstr(why, "more than memory holds") != NULL);
    CHECK_RC(kvs_close(db), KVS_OK);
}

struct log_seen {
    pthread_mutex_t lock;
    int lines;
    int above_level;
    int opened;
    int wrong_userdata;
};

static struct log_seen seen = {PTHREAD_MUTEX_INITIALIZER, 0, 0, 0, 0};
static int max_level = KVS_LOG_INFO;

static void on_log(void *userdata, int level, const char *target, const char *message) {
    pthread_mutex_lock(&seen.lock);
    if (userdata != &seen) seen.wrong_userdata++;
    seen.lines++;
    if (level > max_level || level < KVS_LOG_ERROR) seen.above_level++;
    if (strncmp(target, "kvs", 3) == 0 && strstr(message, "opened") != NULL) seen.opened++;
    pthread_mutex_unlock(&seen.lock);
}

static void test_log_callback(const char *dir) {
    kvs_t *db = NULL;
    int lines;

    CHECK_RC(kvs_set_log_callback(on_log, &seen, 9), KVS_ERR_INVALID_ARGUMENT);
    CHECK_RC(kvs_set_log_callback(on_log, &seen, KVS_LOG_INFO), KVS_OK);
    CHECK_RC(kvs_open(sub(dir, "logged"), NULL, &db), KVS_OK);
    CHECK_RC(kvs_put(db, "k", 1, "v", 1), KVS_OK);
    CHECK_RC(kvs_close(db), KVS_OK);
    pthread_mutex_lock(&seen.lock);
    CHECK(seen.lines > 0 && seen.opened > 0);
    CHECK(seen.above_level == 0 && seen.wrong_userdata == 0);
    pthread_mutex_unlock(&seen.lock);

    /* At KVS_LOG_WARN, an uneventful open and close say nothing. */
    max_level = KVS_LOG_WARN;
    pthread_mutex_lock(&seen.lock);
    seen.lines = 0;
    pthread_mutex_unlock(&seen.lock);
    CHECK_RC(kvs_set_log_callback(on_log, &seen, KVS_LOG_WARN), KVS_OK);
    CHECK_RC(kvs_open(sub(dir, "logged"), NULL, &db), KVS_OK);
    CHECK_RC(kvs_close(db), KVS_OK);
    pthread_mutex_lock(&seen.lock);
    CHECK(seen.lines == 0 && seen.above_level == 0);
    pthread_mutex_unlock(&seen.lock);

    /* Removed: nothing more arrives. */
    CHECK_RC(kvs_set_log_callback(NULL, NULL, KVS_LOG_OFF), KVS_OK);
    CHECK_RC(kvs_open(sub(dir, "logged"), NULL, &db), KVS_OK);
    CHECK_RC(kvs_close(db), KVS_OK);
    pthread_mutex_lock(&seen.lock);
    lines = seen.lines;
    pthread_mutex_unlock(&seen.lock);
    CHECK(lines == 0);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    mkdir(argv[1], 0700);
    test_version();
    test_options(argv[1]);
    test_last_error(argv[1]);
    test_log_callback(argv[1]);
    printf("%d checks, %d failed\n", checks, failures);
    return failures == 0 ? 0 : 1;
}
