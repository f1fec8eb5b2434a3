/*
 * The checks of the C test programs: count every check, report each failure with its
 * line, a returned code with its name and the thread's last error, and go on.
 */
#ifndef KVS_TEST_CHECK_H
#define KVS_TEST_CHECK_H

#include <stdio.h>

static int failures = 0;
static int checks = 0;

#define CHECK(cond)                                                                  \
    do {                                                                             \
        checks++;                                                                    \
        if (!(cond)) {                                                               \
            failures++;                                                              \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                            \
    } while (0)

#define CHECK_RC(call, want)                                                           \
    do {                                                                               \
        int rc_ = (call);                                                              \
        checks++;                                                                      \
        if (rc_ != (want)) {                                                           \
            char why_[512];                                                            \
            why_[0] = 0;                                                               \
            kvs_last_error(why_, sizeof why_, NULL);                                   \
            failures++;                                                                \
            fprintf(stderr, "%s:%d: %s returned %d (%s), wanted %d; last error: %s\n", \
                    __FILE__, __LINE__, #call, rc_, kvs_strerror(rc_), (want), why_);  \
        }                                                                              \
    } while (0)

static char path_buf[4096];

/* DIR/NAME, in a static buffer (valid until the next call). */
static const char *sub(const char *dir, const char *name) {
    snprintf(path_buf, sizeof path_buf, "%s/%s", dir, name);
    return path_buf;
}

#endif
