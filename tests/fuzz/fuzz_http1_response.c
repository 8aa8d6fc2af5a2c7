/*
 * libFuzzer target for the incremental HTTP/1.1 response parser.
 *
 * Beyond "never crash", it checks that the verdict does not depend on how the bytes were
 * split (the first byte picks the split point): the client must read the same body length
 * and keep-alive decision whatever the packet boundaries. Each piece is an exact-size heap
 * copy so that a read past what was given is caught by ASan.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "net/http1_response.h"
#include "switchboard/error.h"

#define MAX_RESPONSES 4

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            abort();                                                                               \
    } while (0)

static int feed_copy(sb_http1_response *p, const uint8_t *data, size_t n, size_t *used)
{
    uint8_t *copy = malloc(n ? n : 1);
    CHECK(copy != NULL);
    if (n)
        memcpy(copy, data, n);
    int rc = sb_http1_response_feed(p, (const char *)copy, n, used);
    free(copy);
    CHECK(rc == 0 || rc == SB_EAGAIN || rc == SB_EPROTO || rc == SB_EMSGSIZE);
    CHECK(rc != SB_EAGAIN || *used == n);
    CHECK(rc != 0 || *used <= n);
    return rc;
}

/* Parses data[0..n) in one piece into a and in two pieces split at cut into b. */
static int parse_both_ways(const uint8_t *data, size_t n, size_t cut, sb_http1_response *a,
                           sb_http1_response *b, size_t *used)
{
    size_t ua = 0, ub = 0, u;
    sb_http1_response_init(a);
    sb_http1_response_init(b);
    int ra = feed_copy(a, data, n, &ua);
    int rb = feed_copy(b, data, cut, &u);
    ub = u;
    if (rb == SB_EAGAIN) {
        rb = feed_copy(b, data + cut, n - cut, &u);
        ub = cut + u;
    }
    CHECK(ra == rb);
    if (ra == 0 || ra == SB_EAGAIN) {
        CHECK(ua == ub);
        CHECK(a->status == b->status);
        CHECK(a->body_bytes == b->body_bytes);
        CHECK(a->has_retry_after == b->has_retry_after);
        CHECK(a->retry_after_len == b->retry_after_len);
        CHECK(a->retry_after_len <= SB_HTTP1_RESPONSE_VALUE_MAX);
        CHECK(memcmp(a->retry_after, b->retry_after, a->retry_after_len) == 0);
        CHECK(sb_http1_response_complete(a) == (ra == 0));
        CHECK(a->status == 0 || (a->status >= 200 && a->status <= 599));
        CHECK(a->body_bytes <= n);
        int ea = sb_http1_response_eof(a), eb = sb_http1_response_eof(b);
        CHECK(ea == eb);
        CHECK(a->keep_alive == b->keep_alive);
        if (ea == 0 && ra == SB_EAGAIN)
            CHECK(!a->keep_alive); /* only a close-delimited body ends at EOF */
    }
    *used = ua;
    return ra;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static sb_http1_response a, b;
    if (size == 0)
        return 0;
    uint8_t pick = data[0];
    data++;
    size--;
    size_t off = 0;
    for (int i = 0; i < MAX_RESPONSES && off <= size; i++) {
        size_t n = size - off, used = 0;
        int rc = parse_both_ways(data + off, n, pick % (n + 1), &a, &b, &used);
        if (rc != 0 || used == 0)
            break;
        off += used;
    }
    return 0;
}
