#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "net/http1_response.h"
#include "switchboard/error.h"

static sb_http1_response p;

/* Feeds s[0..n) in pieces of `step` bytes, each from an exact-size heap copy so that ASan
 * sees any read past what was given. Returns the final rc; *used_total counts the bytes
 * consumed up to completion. */
static int feed_steps(const char *s, size_t n, size_t step, size_t *used_total)
{
    sb_http1_response_init(&p);
    size_t off = 0;
    int rc = SB_EAGAIN;
    *used_total = 0;
    while (off < n) {
        size_t len = n - off < step ? n - off : step;
        char *copy = malloc(len);
        assert_non_null(copy);
        memcpy(copy, s + off, len);
        size_t used = 99999;
        rc = sb_http1_response_feed(&p, copy, len, &used);
        free(copy);
        if (rc == SB_EAGAIN) {
            assert_int_equal(used, len);
            off += len;
            continue;
        }
        if (rc == 0) {
            assert_true(used <= len);
            *used_total = off + used;
        }
        return rc;
    }
    return rc;
}

/* Parses whole, then at every split point and byte by byte, expecting the same verdict. */
static int parse_all_ways(const char *s, size_t *used)
{
    size_t n = strlen(s);
    size_t u0;
    int rc0 = feed_steps(s, n, n ? n : 1, &u0);
    sb_http1_response whole = p;
    for (size_t cut = 1; cut < n; cut++) {
        sb_http1_response_init(&p);
        size_t u1 = 0, ua;
        int rc = sb_http1_response_feed(&p, s, cut, &ua);
        if (rc == SB_EAGAIN) {
            rc = sb_http1_response_feed(&p, s + cut, n - cut, &ua);
            u1 = cut + ua;
        } else {
            u1 = ua;
        }
        assert_int_equal(rc, rc0);
        if (rc == 0) {
            assert_int_equal(u1, u0);
            assert_int_equal(p.status, whole.status);
            assert_int_equal(p.body_bytes, whole.body_bytes);
            assert_int_equal(p.keep_alive, whole.keep_alive);
        }
    }
    size_t u2;
    int rc = feed_steps(s, n, 1, &u2);
    assert_int_equal(rc, rc0);
    if (rc == 0)
        assert_int_equal(u2, u0);
    p = whole;
    if (used)
        *used = u0;
    return rc0;
}

static void complete(const char *s, int status, uint64_t body, bool keep)
{
    size_t used;
    assert_int_equal(parse_all_ways(s, &used), 0);
    assert_int_equal(used, strlen(s));
    assert_int_equal(p.status, status);
    assert_int_equal(p.body_bytes, body);
    assert_int_equal(p.keep_alive, keep);
    assert_true(sb_http1_response_complete(&p));
}

static void rejected(const char *s, int rc)
{
    assert_int_equal(parse_all_ways(s, NULL), rc);
}

static void test_content_length(void **state)
{
    (void)state;
    complete("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 200, 5, true);
    complete("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 200, 0, true);
    complete("HTTP/1.1 200 OK\r\ncontent-LENGTH:   3  \r\nX: y\r\n\r\nabc", 200, 3, true);
    /* Equal duplicates are fine. */
    complete("HTTP/1.1 201 Created\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok", 201, 2,
             true);
    /* Empty reason, with and without the SP. */
    complete("HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n", 200, 0, true);
    complete("HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", 200, 0, true);
}

static void test_no_body_statuses(void **state)
{
    (void)state;
    complete("HTTP/1.1 204 No Content\r\nServer: x\r\n\r\n", 204, 0, true);
    complete("HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\n\r\n", 304, 0, true);
    /* Bytes after a 204 belong to the next response, not to this one. */
    size_t used;
    const char *s = "HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\n";
    assert_int_equal(parse_all_ways(s, &used), 0);
    assert_int_equal(used, strlen("HTTP/1.1 204 No Content\r\n\r\n"));
}

static void test_chunked(void **state)
{
    (void)state;
    complete("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
             "5\r\nhello\r\n6;ext=1;q=\"x\"\r\n world\r\n0\r\n\r\n",
             200, 11, true);
    /* Trailers, uppercase hex, leading zeros, BWS before an extension. */
    complete("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
             "00A \t;x\r\n0123456789\r\n0\r\nExpires: never\r\nX-Sum: 1\r\n\r\n",
             200, 10, true);
    complete("HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 500, 0, true);
    /* A Content-Length in the trailer is ignored. */
    complete("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n"
             "Content-Length: 9\r\n\r\n",
             200, 1, true);
}

static void test_close_delimited(void **state)
{
    (void)state;
    const char *s = "HTTP/1.1 200 OK\r\nServer: x\r\n\r\nsome body";
    assert_int_equal(parse_all_ways(s, NULL), SB_EAGAIN);
    assert_int_equal(p.status, 200);
    assert_false(p.keep_alive);
    assert_false(sb_http1_response_complete(&p));
    assert_int_equal(sb_http1_response_eof(&p), 0);
    assert_int_equal(p.body_bytes, 9);
    assert_true(sb_http1_response_complete(&p));

    /* EOF in the middle of a Content-Length body or of the headers is a truncation. */
    assert_int_equal(parse_all_ways("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", NULL),
                     SB_EAGAIN);
    assert_int_equal(sb_http1_response_eof(&p), SB_EPROTO);
    assert_int_equal(parse_all_ways("HTTP/1.1 200 OK\r\nConte", NULL), SB_EAGAIN);
    assert_true(sb_http1_response_started(&p));
    assert_int_equal(sb_http1_response_eof(&p), SB_EPROTO);
    sb_http1_response_init(&p);
    assert_false(sb_http1_response_started(&p));
    assert_int_equal(sb_http1_response_eof(&p), SB_EPROTO);
}

static void test_interim(void **state)
{
    (void)state;
    complete("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, 2,
             true);
    complete("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
             "HTTP/1.1 204 No Content\r\n\r\n",
             204, 0, true);
    /* An interim response's fields do not leak into the final one. */
    complete("HTTP/1.1 100 Continue\r\nConnection: close\r\nRetry-After: 5\r\n\r\n"
             "HTTP/1.1 204 No Content\r\n\r\n",
             204, 0, true);
    assert_false(p.has_retry_after);
    rejected("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", SB_EPROTO);
}

static void test_retry_after(void **state)
{
    (void)state;
    complete("HTTP/1.1 429 Too Many\r\nRetry-After:  120 \r\nContent-Length: 0\r\n\r\n", 429, 0,
             true);
    assert_true(p.has_retry_after);
    assert_int_equal(p.retry_after_len, 3);
    assert_memory_equal(p.retry_after, "120", 3);
    complete("HTTP/1.1 503 Busy\r\nretry-after: Fri, 31 Dec 1999 23:59:59 GMT\r\n"
             "Content-Length: 0\r\n\r\n",
             503, 0, true);
    assert_int_equal(p.retry_after_len, 29);
    assert_memory_equal(p.retry_after, "Fri, 31 Dec 1999 23:59:59 GMT", 29);
    complete("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 200, 0, true);
    assert_false(p.has_retry_after);
}

static void test_keep_alive(void **state)
{
    (void)state;
    complete("HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n", 204, 0, false);
    complete("HTTP/1.1 204 No Content\r\nConnection: foo, CLOSE\r\n\r\n", 204, 0, false);
    complete("HTTP/1.1 204 No Content\r\nConnection: keep-alive\r\n\r\n", 204, 0, true);
    complete("HTTP/1.0 204 No Content\r\n\r\n", 204, 0, false);
    complete("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 1\r\n\r\nx", 200, 1,
             true);
    complete("HTTP/1.0 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 0\r\n\r\n", 200,
             0, false);
    /* Close-delimited never keeps the connection, even in HTTP/1.1 with keep-alive. */
    assert_int_equal(parse_all_ways("HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\r\nx", NULL),
                     SB_EAGAIN);
    assert_false(p.keep_alive);
    assert_int_equal(parse_all_ways("HTTP/1.0 200 OK\r\n\r\n", NULL), SB_EAGAIN);
    assert_int_equal(sb_http1_response_eof(&p), 0);
    assert_false(p.keep_alive);
}

static void test_rejections(void **state)
{
    (void)state;
    /* status line */
    rejected("HTTP/1.1 2000 OK\r\n\r\n", SB_EPROTO);
    rejected("HTTP/1.1 20 OK\r\n\r\n", SB_EPROTO);
    rejected("HTTP/1.1 099 OK\r\n\r\n", SB_EPROTO);
    rejected("HTTP/1.1 600 OK\r\n\r\n", SB_EPROTO);
    rejected("HTTP/2.0 200 OK\r\n\r\n", SB_EPROTO);
    rejected("HTTP/1.2 200 OK\r\n\r\n", SB_EPROTO);
    rejected("http/1.1 200 OK\r\n\r\n", SB_EPROTO);
    rejected("HTTP/1.1  200 OK\r\n\r\n", SB_EPROTO);
    rejected("\r\nHTTP/1.1 200 OK\r\n\r\n", SB_EPROTO);
    rejected("SSH-2.0-OpenSSH\r\n", SB_EPROTO);
    rejected("HTTP/1.1 200 O\x01K\r\n\r\n", SB_EPROTO);
    /* line endings */
    rejected("HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n", SB_EPROTO);
    rejected("HTTP/1.1 200 OK\r\nContent-Length: 0\n\r\n", SB_EPROTO);
    rejected("HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n", SB_EPROTO);
    rejected("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\n", SB_EPROTO);
    /* field lines */
    rejected("HTTP/1.1 200 OK\r\nX: a\r\n folded\r\nContent-Length: 0\r\n\r\n", SB_EPROTO);
    rejected("HTTP/1.1 200 OK\r\nX: a\r\n\tfolded\r\n\r\n", SB_EPROTO);
    rejected("HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n", SB_EPROTO);
    rejected("HTTP/1.1 200 OK\r\nBad[Name]: 0\r\n\r\n", SB_EPROTO);
    rejected("HTTP/1.1 200 OK\r\n: empty\r\n\r\n", SB_EPROTO);
    rejected("HTTP/1.1 200 OK\r\nNoColon\r\n\r\n", SB_EPROTO);
    rejected("HTTP/1.1 200 OK\r\nX: a\x7f\r\n\r\n", SB_EPROTO);
    size_t used;
    static const char nul[] = "HTTP/1.1 200 OK\r\nX: a\0b\r\n\r\n";
    assert_int_equal(feed_steps(nul, sizeof(nul) - 1, 1, &used), SB_EPROTO);
    /* framing */
    rejected("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
             SB_EPROTO);
    rejected("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
             SB_EPROTO);
    rejected("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", SB_EPROTO);
    rejected("HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\n", SB_EPROTO);
    rejected("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", SB_EPROTO);
    rejected("HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n", SB_EPROTO);
    rejected("HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n", SB_EPROTO);
    rejected("HTTP/1.1 200 OK\r\nContent-Length: 9999999999999999999\r\n\r\n", SB_EPROTO);
    rejected("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", SB_EPROTO);
    rejected("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", SB_EPROTO);
    rejected("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
             SB_EPROTO);
    rejected("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked;a=b\r\n\r\n", SB_EPROTO);
    rejected("HTTP/1.1 200 OK\r\nTransfer-Encoding: \r\n\r\n", SB_EPROTO);
    rejected("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", SB_EPROTO);
    rejected("HTTP/1.1 200 OK\r\nConnection: a b\r\n\r\n", SB_EPROTO);
    /* chunks */
    const char *te = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    const char *bad_chunks[] = {
        "g\r\n",       "\r\n",
        ";x\r\n",      "1 2\r\n",
        "1\r\nab\r\n", "1\r\na\n",
        "1\ra",        "11111111111111111\r\n", /* 17 hex digits overflow */
        "0\r\nX: a\n", "0\r\n folded: x\r\n\r\n",
        "1;\x01\r\n",
    };
    for (size_t i = 0; i < sizeof(bad_chunks) / sizeof(bad_chunks[0]); i++) {
        char msg[256];
        snprintf(msg, sizeof(msg), "%s%s", te, bad_chunks[i]);
        rejected(msg, SB_EPROTO);
    }
    /* 16 hex digits are fine (body follows). */
    char msg[256];
    snprintf(msg, sizeof(msg), "%s%s", te, "000000000000000F\r\nabc");
    assert_int_equal(parse_all_ways(msg, NULL), SB_EAGAIN);
    assert_int_equal(p.body_bytes, 3);
}

static void test_limits(void **state)
{
    (void)state;
    size_t n = SB_HTTP1_RESPONSE_MAX_HEADER_BYTES + 100;
    char *big = malloc(n + 1);
    assert_non_null(big);
    const char *head = "HTTP/1.1 200 OK\r\nX-Big: ";
    memcpy(big, head, strlen(head));
    memset(big + strlen(head), 'a', n - strlen(head));
    big[n] = '\0';
    size_t used;
    assert_int_equal(feed_steps(big, n, 1000, &used), SB_EMSGSIZE);
    /* Just under the limit, the section completes. */
    size_t ok = SB_HTTP1_RESPONSE_MAX_HEADER_BYTES;
    memcpy(big + ok - 4, "\r\n\r\n", 4);
    assert_int_equal(feed_steps(big, ok, 777, &used), SB_EAGAIN);
    assert_int_equal(p.status, 200);
    /* One byte more is over. */
    memset(big + ok - 4, 'a', 4);
    memcpy(big + ok - 3, "\r\n\r\n", 4);
    assert_int_equal(feed_steps(big, ok + 1, 777, &used), SB_EMSGSIZE);
    free(big);

    /* A captured value over the value limit. */
    char ra[600];
    int m = snprintf(ra, sizeof(ra), "HTTP/1.1 200 OK\r\nRetry-After: %0300d\r\n\r\n", 1);
    assert_int_equal(feed_steps(ra, (size_t)m, (size_t)m, &used), SB_EPROTO);
    /* An uncaptured long value is fine. */
    m = snprintf(ra, sizeof(ra), "HTTP/1.1 204 OK\r\nX-Long: %0500d\r\n\r\n", 1);
    assert_int_equal(feed_steps(ra, (size_t)m, (size_t)m, &used), 0);

    /* A chunk extension over the line limit. */
    size_t cn = SB_HTTP1_RESPONSE_MAX_CHUNK_LINE + 200;
    char *chunk = malloc(cn);
    assert_non_null(chunk);
    const char *ch = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;";
    memcpy(chunk, ch, strlen(ch));
    memset(chunk + strlen(ch), 'x', cn - strlen(ch));
    assert_int_equal(feed_steps(chunk, cn, 512, &used), SB_EMSGSIZE);
    free(chunk);
}

static void test_done_and_failed_states(void **state)
{
    (void)state;
    size_t used;
    sb_http1_response_init(&p);
    const char *s = "HTTP/1.1 204 No Content\r\n\r\n";
    assert_int_equal(sb_http1_response_feed(&p, s, strlen(s), &used), 0);
    assert_int_equal(sb_http1_response_feed(&p, "xyz", 3, &used), 0);
    assert_int_equal(used, 0);
    assert_int_equal(sb_http1_response_eof(&p), 0);

    sb_http1_response_init(&p);
    assert_int_equal(sb_http1_response_feed(&p, "XTTP", 4, &used), SB_EPROTO);
    assert_int_equal(sb_http1_response_feed(&p, "HTTP/1.1 204 OK\r\n\r\n", 19, &used), SB_EPROTO);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_content_length), cmocka_unit_test(test_no_body_statuses),
        cmocka_unit_test(test_chunked),        cmocka_unit_test(test_close_delimited),
        cmocka_unit_test(test_interim),        cmocka_unit_test(test_retry_after),
        cmocka_unit_test(test_keep_alive),     cmocka_unit_test(test_rejections),
        cmocka_unit_test(test_limits),         cmocka_unit_test(test_done_and_failed_states),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
