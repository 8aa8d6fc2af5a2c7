/*
 * libFuzzer target for the HTTP/1 request parser and the chunked decoder.
 *
 * Beyond "never crash", it checks that the verdict does not depend on how the bytes were
 * split across reads (the first byte picks the split point), because a parser whose answer
 * changes with packet boundaries is one that can be smuggled past.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "net/http1_parser.h"
#include "switchboard/error.h"

#define MAX_PIPELINED 4
#define MAX_BODY      256

static const sb_http1_limits limits = {64, 512, 16};

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            abort();                                                                               \
    } while (0)

static char *dup_bytes(const char *p, size_t n)
{
    char *b = malloc(n ? n : 1);
    CHECK(b != NULL);
    if (n)
        memcpy(b, p, n);
    return b;
}

static bool within(sb_str s, const char *base, size_t len)
{
    if (s.len == 0)
        return true;
    uintptr_t b = (uintptr_t)base, p = (uintptr_t)s.base;
    return p >= b && p - b <= len && s.len <= len - (p - b);
}

static void check_request(const sb_http1_request *r, const char *buf, size_t len)
{
    CHECK(r->minor_version == 0 || r->minor_version == 1);
    CHECK(r->method.len > 0 && within(r->method, buf, len));
    CHECK(r->target.len > 0 && within(r->target, buf, len));
    CHECK(r->path.len > 0);
    CHECK(r->path.base[0] == '/' || r->path.base[0] == '*' || sb_str_eq_lit(r->method, "CONNECT"));
    CHECK(within(r->query, buf, len) && within(r->host, buf, len));
    CHECK(r->num_headers <= limits.max_headers);
    CHECK(!(r->chunked && r->content_length >= 0));
    CHECK(!(r->chunked && r->minor_version == 0));
    for (size_t i = 0; i < r->num_headers; i++) {
        const sb_http_header *h = &r->headers[i];
        CHECK(h->name.len > 0 && within(h->name, buf, len) && within(h->value, buf, len));
        for (size_t j = 0; j < h->value.len; j++) {
            unsigned char c = (unsigned char)h->value.base[j];
            CHECK(c >= 0x20 || c == '\t');
            CHECK(c != 0x7f);
        }
        if (h->value.len) {
            CHECK(h->value.base[0] != ' ' && h->value.base[0] != '\t');
            CHECK(h->value.base[h->value.len - 1] != ' ' &&
                  h->value.base[h->value.len - 1] != '\t');
        }
    }
}

static bool same_request(const sb_http1_request *a, const sb_http1_request *b)
{
    if (!sb_str_eq(a->method, b->method) || !sb_str_eq(a->target, b->target) ||
        !sb_str_eq(a->path, b->path) || !sb_str_eq(a->query, b->query) ||
        !sb_str_eq(a->host, b->host) || a->num_headers != b->num_headers ||
        a->minor_version != b->minor_version || a->content_length != b->content_length ||
        a->chunked != b->chunked || a->keep_alive != b->keep_alive ||
        a->expect_continue != b->expect_continue || a->upgrade != b->upgrade)
        return false;
    for (size_t i = 0; i < a->num_headers; i++)
        if (!sb_str_eq(a->headers[i].name, b->headers[i].name) ||
            !sb_str_eq(a->headers[i].value, b->headers[i].value))
            return false;
    return true;
}

struct decoded {
    int rc; /* SB_EAGAIN, SB_EPROTO, SB_EMSGSIZE, or 0 when complete */
    size_t body_len;
    size_t left_len;
    char body[MAX_BODY];
};

/* Decodes raw[0..n) fed as two reads split at `cut`. */
static void decode(const char *raw, size_t n, size_t cut, struct decoded *out)
{
    sb_http1_chunked d;
    sb_http1_chunked_init(&d, MAX_BODY);
    out->body_len = 0;
    out->left_len = 0;
    out->rc = SB_EAGAIN;
    size_t pos = 0;
    for (int piece = 0; piece < 2 && out->rc == SB_EAGAIN; piece++) {
        size_t end = piece == 0 ? cut : n;
        char *buf = dup_bytes(raw + pos, end - pos);
        size_t len = end - pos;
        int rc = sb_http1_chunked_decode(&d, buf, &len);
        CHECK(rc == SB_EAGAIN || rc == SB_EPROTO || rc == SB_EMSGSIZE || rc >= 0);
        CHECK(len <= end - pos);
        if (rc == SB_EAGAIN || rc >= 0) {
            CHECK(out->body_len + len <= MAX_BODY);
            memcpy(out->body + out->body_len, buf, len);
            out->body_len += len;
        }
        if (rc >= 0) {
            CHECK(len + (size_t)rc <= end - pos);
            /* The leftover must be the input's tail, moved down intact. */
            CHECK(rc == 0 || memcmp(buf + len, raw + end - (size_t)rc, (size_t)rc) == 0);
            out->left_len = (size_t)rc + (n - end);
            out->rc = 0;
        } else {
            out->rc = rc;
        }
        free(buf);
        pos = end;
    }
    CHECK(d.total == out->body_len || out->rc < 0);
}

static void fuzz_chunked(const char *raw, size_t n, size_t cut)
{
    struct decoded *whole = malloc(sizeof(*whole));
    struct decoded *split = malloc(sizeof(*split));
    CHECK(whole && split);
    decode(raw, n, n, whole);
    decode(raw, n, cut, split);
    CHECK(whole->rc == split->rc);
    if (whole->rc == 0 || whole->rc == SB_EAGAIN) {
        CHECK(whole->body_len == split->body_len);
        CHECK(memcmp(whole->body, split->body, whole->body_len) == 0);
        CHECK(whole->left_len == split->left_len);
    }
    free(whole);
    free(split);
}

/* Parses buf[0..n) whole and in two reads; returns the result of the whole parse. */
static int parse_both_ways(const char *buf, size_t n, size_t cut, sb_http1_request *a,
                           sb_http1_request *b)
{
    int sa = -1, sb = -1;
    int ra = sb_http1_parse_request(buf, n, 0, &limits, a, &sa);

    char *first = dup_bytes(buf, cut);
    int rb = sb_http1_parse_request(first, cut, 0, &limits, b, &sb);
    if (rb == SB_EAGAIN) {
        rb = sb_http1_parse_request(buf, n, cut, &limits, b, &sb);
        if (rb > 0)
            check_request(b, buf, n);
    } else if (rb > 0) {
        check_request(b, first, cut);
    }
    CHECK(ra == rb);
    if (ra == SB_EPROTO) {
        CHECK(sa == sb);
        CHECK(sa == 400 || sa == 414 || sa == 431 || sa == 501 || sa == 505);
    } else {
        CHECK(ra == SB_EAGAIN || (ra > 0 && (size_t)ra <= n));
    }
    if (ra > 0) {
        check_request(a, buf, n);
        CHECK(same_request(a, b));
    }
    free(first);
    return ra;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static sb_http1_request a, b;
    if (size == 0)
        return 0;
    size_t cut0 = data[0] % (size + 1);
    char *buf = dup_bytes((const char *)data, size);

    fuzz_chunked(buf, size, cut0);

    size_t off = 0;
    for (int i = 0; i < MAX_PIPELINED && off < size; i++) {
        size_t n = size - off;
        size_t cut = cut0 % (n + 1);
        int rc = parse_both_ways(buf + off, n, cut, &a, &b);
        if (rc <= 0)
            break;
        off += (size_t)rc;
        if (a.chunked) {
            fuzz_chunked(buf + off, size - off, cut0 % (size - off + 1));
            sb_http1_chunked d;
            sb_http1_chunked_init(&d, MAX_BODY);
            size_t len = size - off;
            char *body = dup_bytes(buf + off, len);
            int drc = sb_http1_chunked_decode(&d, body, &len);
            free(body);
            if (drc < 0)
                break;
            off = size - (size_t)drc;
        } else if (a.content_length > 0) {
            if ((uint64_t)a.content_length >= size - off)
                break;
            off += (size_t)a.content_length;
        }
    }

    free(buf);
    return 0;
}
