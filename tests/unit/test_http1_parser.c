#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "net/http1_parser.h"
#include "switchboard/error.h"

static const sb_http1_limits LIM = {8192, 65536, 100};
static sb_http1_request req;

/* Parses from an exact-size heap copy, so that ASan sees any read past the end. */
static int parse_lim(const char *s, size_t n, size_t prev, const sb_http1_limits *lim,
                     sb_http1_request *r, int *status)
{
    char *copy = malloc(n ? n : 1);
    assert_non_null(copy);
    if (n)
        memcpy(copy, s, n);
    int rc = sb_http1_parse_request(copy, n, prev, lim, r, status);
    if (rc > 0) {
        /* Re-point the slices into the caller's string so they outlive the copy. */
        sb_str *slices[4 + 2 * SB_HTTP1_MAX_HEADERS_CAP + 1];
        size_t k = 0;
        slices[k++] = &r->method;
        slices[k++] = &r->target;
        slices[k++] = &r->path;
        slices[k++] = &r->query;
        slices[k++] = &r->host;
        for (size_t i = 0; i < r->num_headers; i++) {
            slices[k++] = &r->headers[i].name;
            slices[k++] = &r->headers[i].value;
        }
        for (size_t i = 0; i < k; i++) {
            uintptr_t b = (uintptr_t)slices[i]->base, c = (uintptr_t)copy;
            if (slices[i]->base && b >= c && b <= c + n)
                slices[i]->base = s + (b - c);
        }
    }
    free(copy);
    return rc;
}

static int parse_n(const char *s, size_t n, int *status)
{
    return parse_lim(s, n, 0, &LIM, &req, status);
}

static int parse(const char *s, int *status)
{
    return parse_n(s, strlen(s), status);
}

/* Feeds every prefix in turn, as a connection receiving one byte at a time would. */
static int parse_bytewise(const char *s, size_t n, const sb_http1_limits *lim, sb_http1_request *r,
                          int *status)
{
    size_t prev = 0;
    int rc = SB_EAGAIN;
    for (size_t i = 1; i <= n; i++) {
        rc = parse_lim(s, i, prev, lim, r, status);
        if (rc != SB_EAGAIN)
            return rc;
        prev = i;
    }
    return rc;
}

static bool str_is(sb_str a, const char *lit)
{
    return a.len == strlen(lit) && (a.len == 0 || memcmp(a.base, lit, a.len) == 0);
}

#define assert_str(a, lit) assert_true(str_is((a), (lit)))

#define assert_rejected(s, code)                                                                   \
    do {                                                                                           \
        int st_ = 0;                                                                               \
        assert_int_equal(parse((s), &st_), SB_EPROTO);                                             \
        assert_int_equal(st_, (code));                                                             \
    } while (0)

#define assert_rejected_n(s, code)                                                                 \
    do {                                                                                           \
        int st_ = 0;                                                                               \
        assert_int_equal(parse_n((s), sizeof(s) - 1, &st_), SB_EPROTO);                            \
        assert_int_equal(st_, (code));                                                             \
    } while (0)

#define H11 "GET / HTTP/1.1\r\nHost: a\r\n"

static void test_simple_get(void **state)
{
    (void)state;
    const char *s = "GET /index.html?a=1&b HTTP/1.1\r\nHost: example.com\r\n\r\n";
    int st = -1;
    assert_int_equal(parse(s, &st), (int)strlen(s));
    assert_int_equal(st, 0);
    assert_str(req.method, "GET");
    assert_str(req.target, "/index.html?a=1&b");
    assert_str(req.path, "/index.html");
    assert_str(req.query, "a=1&b");
    assert_int_equal(req.minor_version, 1);
    assert_int_equal(req.num_headers, 1);
    assert_str(req.host, "example.com");
    assert_int_equal(req.content_length, -1);
    assert_false(req.chunked);
    assert_true(req.keep_alive);
    assert_false(req.expect_continue);
    assert_false(req.upgrade);
}

static void test_headers_extracted(void **state)
{
    (void)state;
    const char *s = "POST /p HTTP/1.1\r\n"
                    "Host: h:8080\r\n"
                    "X-Spaced: \t  two  words \t\r\n"
                    "X-Empty:\r\n"
                    "X-Empty2:   \r\n"
                    "x-Obs: caf\xc3\xa9\r\n"
                    "Content-Length: 5\r\n"
                    "Accept: */*\r\n"
                    "\r\n";
    int st;
    assert_int_equal(parse(s, &st), (int)strlen(s));
    assert_str(req.method, "POST");
    assert_str(req.path, "/p");
    assert_str(req.query, "");
    assert_int_equal(req.num_headers, 7);
    assert_str(req.headers[0].name, "Host");
    assert_str(req.headers[0].value, "h:8080");
    assert_str(req.headers[1].name, "X-Spaced");
    assert_str(req.headers[1].value, "two  words");
    assert_str(req.headers[2].value, "");
    assert_str(req.headers[3].value, "");
    assert_str(req.headers[4].name, "x-Obs");
    assert_str(req.headers[4].value, "caf\xc3\xa9");
    assert_str(req.headers[6].value, "*/*");
    assert_int_equal(req.content_length, 5);
    assert_str(req.host, "h:8080");

    const sb_http_header *h = sb_http1_find_header(&req, "x-spaced");
    assert_non_null(h);
    assert_ptr_equal(h, &req.headers[1]);
    assert_ptr_equal(sb_http1_find_header(&req, "CONTENT-LENGTH"), &req.headers[5]);
    assert_null(sb_http1_find_header(&req, "X-Missing"));
    assert_null(sb_http1_find_header(&req, "X-Spaced2"));
}

static void test_method_case_sensitive_token(void **state)
{
    (void)state;
    int st;
    assert_true(parse("get / HTTP/1.1\r\nHost: a\r\n\r\n", &st) > 0);
    assert_str(req.method, "get");
    assert_true(parse("M-SEARCH! / HTTP/1.1\r\nHost: a\r\n\r\n", &st) > 0);
    assert_str(req.method, "M-SEARCH!");
    assert_rejected("GE(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    assert_rejected("GE\x80T / HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    assert_rejected(" GET / HTTP/1.1\r\nHost: a\r\n\r\n", 400);
}

static void test_keep_alive_rules(void **state)
{
    (void)state;
    int st;
    assert_true(parse(H11 "\r\n", &st) > 0);
    assert_true(req.keep_alive);
    assert_true(parse(H11 "Connection: close\r\n\r\n", &st) > 0);
    assert_false(req.keep_alive);
    assert_true(parse(H11 "Connection: foo, CLOSE\r\n\r\n", &st) > 0);
    assert_false(req.keep_alive);
    assert_true(parse(H11 "Connection: keep-alive\r\nConnection: close\r\n\r\n", &st) > 0);
    assert_false(req.keep_alive);
    assert_true(parse(H11 "Connection: keep-alive\r\n\r\n", &st) > 0);
    assert_true(req.keep_alive);

    assert_true(parse("GET / HTTP/1.0\r\n\r\n", &st) > 0);
    assert_int_equal(req.minor_version, 0);
    assert_false(req.keep_alive);
    assert_true(req.host.len == 0);
    assert_true(parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", &st) > 0);
    assert_true(req.keep_alive);
    assert_true(parse("GET / HTTP/1.0\r\nConnection: ,, keep-alive ,\r\n\r\n", &st) > 0);
    assert_true(req.keep_alive);
    assert_true(parse("GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", &st) > 0);
    assert_false(req.keep_alive);
    assert_true(
        parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n", &st) > 0);
    assert_false(req.keep_alive);

    assert_rejected(H11 "Connection: clo se\r\n\r\n", 400);
    assert_rejected(H11 "Connection: close;x\r\n\r\n", 400);
}

static void test_upgrade_and_expect(void **state)
{
    (void)state;
    int st;
    assert_true(parse(H11 "Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n", &st) > 0);
    assert_true(req.upgrade);
    assert_true(req.keep_alive);
    assert_true(parse(H11 "Upgrade: websocket\r\nConnection: keep-alive\r\n"
                          "Connection: upgrade\r\n\r\n",
                      &st) > 0);
    assert_true(req.upgrade);
    assert_true(parse(H11 "Upgrade: websocket\r\n\r\n", &st) > 0);
    assert_false(req.upgrade);
    assert_true(parse(H11 "Connection: upgrade\r\n\r\n", &st) > 0);
    assert_false(req.upgrade);
    assert_true(parse("GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n", &st) > 0);
    assert_false(req.upgrade);

    assert_true(parse(H11 "Expect: 100-Continue\r\n\r\n", &st) > 0);
    assert_true(req.expect_continue);
    assert_true(parse(H11 "Expect: 100-continue \r\n\r\n", &st) > 0);
    assert_true(req.expect_continue);
    assert_true(parse(H11 "Expect: 200-ok\r\n\r\n", &st) > 0);
    assert_false(req.expect_continue);
    assert_true(parse("GET / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n", &st) > 0);
    assert_false(req.expect_continue);
}

static void test_content_length(void **state)
{
    (void)state;
    int st;
    assert_true(parse(H11 "Content-Length: 42\r\n\r\n", &st) > 0);
    assert_int_equal(req.content_length, 42);
    assert_true(parse(H11 "content-length:0\r\n\r\n", &st) > 0);
    assert_int_equal(req.content_length, 0);
    assert_true(parse(H11 "Content-Length:  \t 5 \t\r\n\r\n", &st) > 0);
    assert_int_equal(req.content_length, 5);
    assert_true(parse(H11 "Content-Length: 999999999999999999\r\n\r\n", &st) > 0);
    assert_int_equal(req.content_length, 999999999999999999LL);
    assert_true(parse(H11 "Content-Length: 007\r\n\r\n", &st) > 0);
    assert_int_equal(req.content_length, 7);

    assert_rejected(H11 "Content-Length: 5\r\nContent-Length: 5\r\n\r\n", 400);
    assert_rejected(H11 "Content-Length: 5\r\ncontent-length: 6\r\n\r\n", 400);
    assert_rejected(H11 "Content-Length: +5\r\n\r\n", 400);
    assert_rejected(H11 "Content-Length: -5\r\n\r\n", 400);
    assert_rejected(H11 "Content-Length: 1,1\r\n\r\n", 400);
    assert_rejected(H11 "Content-Length: 1, 1\r\n\r\n", 400);
    assert_rejected(H11 "Content-Length: 1 5\r\n\r\n", 400);
    assert_rejected(H11 "Content-Length: 5\t5\r\n\r\n", 400);
    assert_rejected(H11 "Content-Length: 0x5\r\n\r\n", 400);
    assert_rejected(H11 "Content-Length: \r\n\r\n", 400);
    assert_rejected(H11 "Content-Length: 1000000000000000000\r\n\r\n", 400);
    assert_rejected(H11 "Content-Length: 99999999999999999999999\r\n\r\n", 400);
}

static void test_transfer_encoding(void **state)
{
    (void)state;
    int st;
    assert_true(parse(H11 "Transfer-Encoding: chunked\r\n\r\n", &st) > 0);
    assert_true(req.chunked);
    assert_int_equal(req.content_length, -1);
    assert_true(parse(H11 "Transfer-Encoding: Chunked\r\n\r\n", &st) > 0);
    assert_true(req.chunked);
    assert_true(parse(H11 "transfer-encoding:  chunked \t\r\n\r\n", &st) > 0);
    assert_true(req.chunked);

    assert_rejected(H11 "Transfer-Encoding: xchunked\r\n\r\n", 400);
    assert_rejected(H11 "Transfer-Encoding: chunkedx\r\n\r\n", 400);
    assert_rejected(H11 "Transfer-Encoding: chunked\x0b\r\n\r\n", 400);
    assert_rejected(H11 "Transfer-Encoding: \x0b"
                        "chunked\r\n\r\n",
                    400);
    assert_rejected(H11 "Transfer-Encoding: chunked, chunked\r\n\r\n", 400);
    assert_rejected(H11 "Transfer-Encoding: chunked,\r\n\r\n", 400);
    assert_rejected(H11 "Transfer-Encoding: chunked;a=b\r\n\r\n", 400);
    assert_rejected(H11 "Transfer-Encoding: \"chunked\"\r\n\r\n", 400);
    assert_rejected(H11 "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400);
    assert_rejected(H11 "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n", 400);
    assert_rejected(H11 "Transfer-Encoding: gzip\r\n\r\n", 400);
    assert_rejected(H11 "Transfer-Encoding: chunked, gzip\r\n\r\n", 400);
    assert_rejected(H11 "Transfer-Encoding:\r\n\r\n", 400);
    assert_rejected("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400);

    assert_rejected(H11 "Transfer-Encoding: gzip, chunked\r\n\r\n", 501);
    assert_rejected(H11 "Transfer-Encoding: gzip;q=1 ,deflate, chunked\r\n\r\n", 501);

    /* Smuggling: both framings, in either order; 400 beats 501. */
    assert_rejected(H11 "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400);
    assert_rejected(H11 "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", 400);
    assert_rejected(H11 "Transfer-Encoding: gzip, chunked\r\nContent-Length: 5\r\n\r\n", 400);
}

static void test_field_syntax(void **state)
{
    (void)state;
    assert_rejected(H11 "X-A : b\r\n\r\n", 400);
    assert_rejected(H11 "X-A\t: b\r\n\r\n", 400);
    assert_rejected(H11 "Transfer-Encoding : chunked\r\n\r\n", 400);
    assert_rejected(H11 "X-A: b\r\n c\r\n\r\n", 400);
    assert_rejected(H11 "X-A: b\r\n\tc\r\n\r\n", 400);
    assert_rejected("GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400);
    assert_rejected(H11 ": b\r\n\r\n", 400);
    assert_rejected(H11 "X-A\r\n\r\n", 400);
    assert_rejected(H11 "X(A): b\r\n\r\n", 400);
    assert_rejected(H11 "X-\xc3\xa9: b\r\n\r\n", 400);
    assert_rejected(H11 "X-A: b\x7f\r\n\r\n", 400);
    assert_rejected(H11 "X-A: b\x01\r\n\r\n", 400);
    assert_rejected(H11 "X-A: b\x1b[0m\r\n\r\n", 400);
    assert_rejected_n(H11 "X-A: b\0c\r\n\r\n", 400);
    assert_rejected_n(H11 "X-\0A: b\r\n\r\n", 400);
    assert_rejected_n("GET /\0 HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    assert_rejected_n("GET\0/ HTTP/1.1\r\nHost: a\r\n\r\n", 400);
}

static void test_bare_cr_lf(void **state)
{
    (void)state;
    assert_rejected("GET / HTTP/1.1\nHost: a\r\n\r\n", 400);
    assert_rejected(H11 "X-A: b\n\r\n", 400);
    assert_rejected(H11 "X-A: b\r\n\n", 400);
    assert_rejected(H11 "\n", 400);
    assert_rejected("GET / HTTP/1.1\r\nHost: a\n\n", 400);
    assert_rejected(H11 "X-A: b\rc\r\n\r\n", 400);
    assert_rejected(H11 "X-A: b\r\r\n\r\n", 400);
    assert_rejected(H11 "X-A\r: b\r\n\r\n", 400);
    assert_rejected("GET /\r HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    assert_rejected("GET / HTTP/1.1\r\r\nHost: a\r\n\r\n", 400);
    assert_rejected("\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    /* Bare LF is refused as soon as it is seen, before the section is complete. */
    assert_rejected(H11 "X-A: b\nX-B: c", 400);
}

static void test_request_line(void **state)
{
    (void)state;
    int st;
    assert_rejected("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    assert_rejected("GET /  HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    assert_rejected("GET / HTTP/1.1 \r\nHost: a\r\n\r\n", 400);
    assert_rejected("GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    assert_rejected("GET /\tx HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    assert_rejected("GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    assert_rejected("GET / HTTP/1.x\r\nHost: a\r\n\r\n", 400);
    assert_rejected("GET / http/1.1\r\nHost: a\r\n\r\n", 400);
    assert_rejected("GET / HTTP/1.10\r\nHost: a\r\n\r\n", 400);
    assert_rejected("GET / HTTP/11\r\nHost: a\r\n\r\n", 400);
    assert_rejected("GET / HTTP/1\r\nHost: a\r\n\r\n", 400);
    assert_rejected("GET /\r\nHost: a\r\n\r\n", 400);
    assert_rejected("GET\r\nHost: a\r\n\r\n", 400);
    assert_rejected("GET  HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    assert_rejected("GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505);
    assert_rejected("GET / HTTP/0.9\r\nHost: a\r\n\r\n", 505);
    assert_rejected("GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505);
    assert_rejected("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505);
    /* The request line is judged as soon as it is complete. */
    assert_int_equal(parse("GET / HTTP/3.0\r\n", &st), SB_EPROTO);
    assert_int_equal(st, 505);
    assert_int_equal(parse("GET / HTTP/1.1\r\nHost: a\r\n", &st), SB_EAGAIN);
}

static void test_host_rules(void **state)
{
    (void)state;
    int st;
    assert_rejected("GET / HTTP/1.1\r\n\r\n", 400);
    assert_rejected("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400);
    assert_rejected("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", 400);
    assert_rejected("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400);
    assert_rejected("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400);
    assert_rejected("GET / HTTP/1.1\r\nHost: user@a\r\n\r\n", 400);
    assert_rejected("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400);
    assert_rejected("GET / HTTP/1.1\r\nHost: a:80x\r\n\r\n", 400);
    assert_rejected("GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", 400);
    assert_rejected("GET / HTTP/1.1\r\nHost: a%zz\r\n\r\n", 400);
    assert_true(parse("GET / HTTP/1.1\r\nHost: [::1]:8443\r\n\r\n", &st) > 0);
    assert_str(req.host, "[::1]:8443");
    assert_true(parse("GET / HTTP/1.1\r\nHost:\r\n\r\n", &st) > 0);
    assert_int_equal(req.host.len, 0);
    assert_true(parse("GET / HTTP/1.0\r\nHost: b.example\r\n\r\n", &st) > 0);
    assert_str(req.host, "b.example");
}

static void test_absolute_form(void **state)
{
    (void)state;
    int st;
    assert_true(parse("GET http://example.com:8080/p/a?x=1 HTTP/1.1\r\nHost: other\r\n\r\n", &st) >
                0);
    assert_str(req.target, "http://example.com:8080/p/a?x=1");
    assert_str(req.path, "/p/a");
    assert_str(req.query, "x=1");
    assert_str(req.host, "example.com:8080");

    assert_true(parse("GET HTTPS://Example.com HTTP/1.1\r\nHost: x\r\n\r\n", &st) > 0);
    assert_str(req.path, "/");
    assert_str(req.query, "");
    assert_str(req.host, "Example.com");
    assert_true(parse("GET http://a?q=1 HTTP/1.1\r\nHost: a\r\n\r\n", &st) > 0);
    assert_str(req.path, "/");
    assert_str(req.query, "q=1");

    assert_rejected("GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    assert_rejected("GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    assert_rejected("GET http://user@a/x HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    assert_rejected("GET http:/a/x HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    assert_rejected("GET http://a/x HTTP/1.1\r\n\r\n", 400);
}

static void test_asterisk_and_authority_form(void **state)
{
    (void)state;
    int st;
    assert_true(parse("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", &st) > 0);
    assert_str(req.path, "*");
    assert_str(req.query, "");
    assert_rejected("GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    assert_rejected("OPTIONS *x HTTP/1.1\r\nHost: a\r\n\r\n", 400);

    assert_true(parse("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", &st) >
                0);
    assert_str(req.method, "CONNECT");
    assert_str(req.path, "example.com:443");
    assert_str(req.host, "example.com:443");
    assert_rejected("CONNECT example.com HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    assert_rejected("CONNECT :443 HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    assert_rejected("GET example.com:443 HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    assert_rejected("GET foo HTTP/1.1\r\nHost: a\r\n\r\n", 400);
}

static void test_leading_empty_lines(void **state)
{
    (void)state;
    int st;
    const char *s = "\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_int_equal(parse(s, &st), (int)strlen(s));
    assert_str(req.method, "GET");
    assert_rejected("\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    assert_int_equal(parse("\r\n\r\n", &st), SB_EAGAIN);
    assert_int_equal(parse("\r\n\r", &st), SB_EAGAIN);
    assert_int_equal(parse("", &st), SB_EAGAIN);
}

static void test_incomplete(void **state)
{
    (void)state;
    int st;
    const char *s = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    for (size_t i = 0; i < strlen(s); i++)
        assert_int_equal(parse_n(s, i, &st), SB_EAGAIN);
    assert_int_equal(parse_n(s, strlen(s), &st), (int)strlen(s));
}

static void test_pipelined(void **state)
{
    (void)state;
    int st;
    const char *a = "GET /a HTTP/1.1\r\nHost: a\r\n\r\n";
    const char *s = "GET /a HTTP/1.1\r\nHost: a\r\n\r\n"
                    "POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
                    "GET /c HTTP/1.1\r\nHost: a\r\n\r\n";
    int n = parse(s, &st);
    assert_int_equal(n, (int)strlen(a));
    assert_str(req.path, "/a");
    int n2 = parse(s + n, &st);
    assert_true(n2 > 0);
    assert_str(req.path, "/b");
    assert_int_equal(req.content_length, 3);
    int n3 = parse(s + n + n2 + 3, &st);
    assert_int_equal(n3, (int)strlen(a));
    assert_str(req.path, "/c");
}

static void test_bytewise_matches_whole(void **state)
{
    (void)state;
    static const char *cases[] = {
        "GET /x?y HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nX-B:  2 \r\n\r\nGET / HTTP/1.1\r\n",
        "\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "GET http://h/p HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX: b\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX : b\r\n\r\n",
        "GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX: \r\r\n\r\n",
        "GET / HTTP/1.1\r\n\r\n",
        "\r\n\n",
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t n = strlen(cases[i]);
        int st1 = 0, st2 = 0;
        int rc1 = parse_n(cases[i], n, &st1);
        sb_http1_request whole = req;
        static sb_http1_request inc;
        int rc2 = parse_bytewise(cases[i], n, &LIM, &inc, &st2);
        assert_int_equal(rc1, rc2);
        assert_int_equal(st1, st2);
        if (rc1 > 0) {
            assert_true(sb_str_eq(whole.method, inc.method));
            assert_true(sb_str_eq(whole.path, inc.path));
            assert_true(sb_str_eq(whole.query, inc.query));
            assert_true(sb_str_eq(whole.host, inc.host));
            assert_int_equal(whole.num_headers, inc.num_headers);
            for (size_t h = 0; h < whole.num_headers; h++) {
                assert_true(sb_str_eq(whole.headers[h].name, inc.headers[h].name));
                assert_true(sb_str_eq(whole.headers[h].value, inc.headers[h].value));
            }
            assert_int_equal(whole.keep_alive, inc.keep_alive);
            assert_int_equal(whole.chunked, inc.chunked);
        }
    }
}

static void test_limit_request_line(void **state)
{
    (void)state;
    const sb_http1_limits lim = {32, 1024, 10};
    int st;
    char buf[256];
    /* "GET /" + path + " HTTP/1.1" is exactly 32 bytes. */
    const char *ok = "GET /aaaaaaaaaaaaaaaaaa HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_int_equal(strlen("GET /aaaaaaaaaaaaaaaaaa HTTP/1.1"), 32);
    assert_true(parse_lim(ok, strlen(ok), 0, &lim, &req, &st) > 0);
    const char *too_long = "GET /aaaaaaaaaaaaaaaaaaa HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_int_equal(parse_lim(too_long, strlen(too_long), 0, &lim, &req, &st), SB_EPROTO);
    assert_int_equal(st, 414);
    assert_int_equal(parse_bytewise(too_long, strlen(too_long), &lim, &req, &st), SB_EPROTO);
    assert_int_equal(st, 414);

    /* No CRLF yet, but already too long: refused without waiting. */
    memset(buf, 'a', sizeof(buf));
    memcpy(buf, "GET /", 5);
    assert_int_equal(parse_lim(buf, 33, 0, &lim, &req, &st), SB_EAGAIN);
    assert_int_equal(parse_lim(buf, 34, 33, &lim, &req, &st), SB_EPROTO);
    assert_int_equal(st, 414);
    assert_int_equal(parse_lim(buf, sizeof(buf), 0, &lim, &req, &st), SB_EPROTO);
    assert_int_equal(st, 414);
}

static void test_limit_header_bytes(void **state)
{
    (void)state;
    const char *s = "GET / HTTP/1.1\r\nHost: a\r\nX-A: 0123456789\r\n\r\n";
    size_t n = strlen(s);
    sb_http1_limits lim = {1024, n, 10};
    int st;
    assert_int_equal(parse_lim(s, n, 0, &lim, &req, &st), (int)n);
    lim.max_header_bytes = n - 1;
    assert_int_equal(parse_lim(s, n, 0, &lim, &req, &st), SB_EPROTO);
    assert_int_equal(st, 431);
    assert_int_equal(parse_bytewise(s, n, &lim, &req, &st), SB_EPROTO);
    assert_int_equal(st, 431);

    /* An incomplete section past the limit is refused at once. */
    char big[600];
    memset(big, 'x', sizeof(big));
    memcpy(big, "GET / HTTP/1.1\r\nHost: a\r\nX-Big: ", 32);
    lim.max_header_bytes = 512;
    assert_int_equal(parse_lim(big, 511, 0, &lim, &req, &st), SB_EAGAIN);
    assert_int_equal(parse_lim(big, 512, 511, &lim, &req, &st), SB_EPROTO);
    assert_int_equal(st, 431);
    assert_int_equal(parse_lim(big, sizeof(big), 0, &lim, &req, &st), SB_EPROTO);
    assert_int_equal(st, 431);

    /* Leading empty lines do not count towards the limit. */
    char lead[128];
    size_t ln = (size_t)snprintf(lead, sizeof(lead), "\r\n\r\n%s", s);
    lim.max_header_bytes = n;
    assert_int_equal(parse_lim(lead, ln, 0, &lim, &req, &st), (int)ln);

    /* A header limit shorter than the request line limit: 431 first. */
    const sb_http1_limits small = {100, 10, 10};
    assert_int_equal(parse_lim(s, n, 0, &small, &req, &st), SB_EPROTO);
    assert_int_equal(st, 431);
}

static void test_limit_header_count(void **state)
{
    (void)state;
    const sb_http1_limits lim = {1024, 4096, 3};
    int st;
    const char *three = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n";
    const char *four = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
    assert_true(parse_lim(three, strlen(three), 0, &lim, &req, &st) > 0);
    assert_int_equal(req.num_headers, 3);
    assert_int_equal(parse_lim(four, strlen(four), 0, &lim, &req, &st), SB_EPROTO);
    assert_int_equal(st, 431);

    /* max_headers above the cap is clamped to it. */
    const sb_http1_limits huge = {1024, 65536, 100000};
    char buf[8192];
    size_t n = (size_t)snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: a\r\n");
    for (int i = 0; i < SB_HTTP1_MAX_HEADERS_CAP; i++)
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "X-%d: v\r\n", i);
    n += (size_t)snprintf(buf + n, sizeof(buf) - n, "\r\n");
    assert_int_equal(parse_lim(buf, n, 0, &huge, &req, &st), SB_EPROTO);
    assert_int_equal(st, 431);
}

static void test_prev_len_beyond_len(void **state)
{
    (void)state;
    int st;
    const char *s = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_int_equal(parse_lim(s, strlen(s), 1000, &LIM, &req, &st), (int)strlen(s));
}

/* ---- chunked ---- */

/* Feeds raw in pieces of `step` bytes (with an extra cut at `cut`), collecting the payload
 * and the leftover. Returns the final return value of the decoder. */
static int decode_split(const char *raw, size_t n, size_t cut, size_t step, uint64_t max_body,
                        char *out, size_t *out_len, char *left, size_t *left_len)
{
    sb_http1_chunked d;
    sb_http1_chunked_init(&d, max_body);
    *out_len = 0;
    *left_len = 0;
    size_t pos = 0;
    int rc = SB_EAGAIN;
    while (pos < n) {
        size_t piece = step ? step : n - pos;
        if (pos < cut && pos + piece > cut)
            piece = cut - pos;
        if (piece > n - pos)
            piece = n - pos;
        char *buf = malloc(piece);
        assert_non_null(buf);
        memcpy(buf, raw + pos, piece);
        size_t len = piece;
        rc = sb_http1_chunked_decode(&d, buf, &len);
        if (rc == SB_EAGAIN || rc >= 0) {
            memcpy(out + *out_len, buf, len);
            *out_len += len;
        }
        if (rc >= 0) {
            memcpy(left, buf + len, (size_t)rc);
            memcpy(left + rc, raw + pos + piece, n - pos - piece);
            *left_len = (size_t)rc + n - pos - piece;
            free(buf);
            return 0;
        }
        free(buf);
        if (rc != SB_EAGAIN)
            return rc;
        pos += piece;
    }
    return rc;
}

static int decode_all(const char *raw, uint64_t max_body, char *out, size_t *out_len)
{
    char left[1024];
    size_t left_len;
    return decode_split(raw, strlen(raw), 0, 0, max_body, out, out_len, left, &left_len);
}

static void test_chunked_simple(void **state)
{
    (void)state;
    char raw[] = "4\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\n\r\n";
    sb_http1_chunked d;
    sb_http1_chunked_init(&d, 1024);
    size_t len = strlen(raw);
    assert_int_equal(sb_http1_chunked_decode(&d, raw, &len), 0);
    assert_int_equal(len, 23);
    assert_memory_equal(raw, "Wikipedia in\r\n\r\nchunks.", 23);
    assert_int_equal(d.total, 23);

    /* Once done, everything more is leftover. */
    char more[] = "GET";
    len = 3;
    assert_int_equal(sb_http1_chunked_decode(&d, more, &len), 3);
    assert_int_equal(len, 0);
    assert_memory_equal(more, "GET", 3);
}

static void test_chunked_every_split(void **state)
{
    (void)state;
    const char *raw = "4;ext=1\r\nWiki\r\n5\r\npedia\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n"
                      "0\r\nX-T: v\r\n\r\nGET / HTTP/1.1\r\n";
    const char *want = "Wikipediaabcdefghijklmnopqrstuvwxyz";
    size_t n = strlen(raw);
    char out[256], left[256];
    size_t out_len, left_len;
    for (size_t cut = 0; cut <= n; cut++) {
        assert_int_equal(decode_split(raw, n, cut, 0, 1024, out, &out_len, left, &left_len), 0);
        assert_int_equal(out_len, strlen(want));
        assert_memory_equal(out, want, out_len);
        assert_int_equal(left_len, strlen("GET / HTTP/1.1\r\n"));
        assert_memory_equal(left, "GET / HTTP/1.1\r\n", left_len);
    }
    for (size_t step = 1; step <= 7; step++) {
        assert_int_equal(decode_split(raw, n, 0, step, 1024, out, &out_len, left, &left_len), 0);
        assert_int_equal(out_len, strlen(want));
        assert_memory_equal(out, want, out_len);
        assert_int_equal(left_len, strlen("GET / HTTP/1.1\r\n"));
    }
}

static void test_chunked_extensions_trailers(void **state)
{
    (void)state;
    char out[256];
    size_t out_len;
    assert_int_equal(decode_all("4;name=value\r\nWiki\r\n5;a;b=\"q s\" ; c\r\npedia\r\n"
                                "0;last\r\nTrailer-A: t\r\nX-B:\r\nX-C: \t v \r\n\r\n",
                                1024, out, &out_len),
                     0);
    assert_int_equal(out_len, 9);
    assert_memory_equal(out, "Wikipedia", 9);
    assert_int_equal(decode_all("3 ;x\r\nabc\r\n0\r\n\r\n", 1024, out, &out_len), 0);
    assert_int_equal(
        decode_all("3;a = b ;\tc= \"x\\\"y\\\\\";d=\"\"\r\nabc\r\n0\r\n\r\n", 1024, out, &out_len),
        0);
    assert_memory_equal(out, "abc", 3);
    assert_int_equal(decode_all("0\r\n\r\n", 1024, out, &out_len), 0);
    assert_int_equal(out_len, 0);
    assert_int_equal(decode_all("000\r\n\r\n", 1024, out, &out_len), 0);
    assert_int_equal(decode_all("A\r\n0123456789\r\n0\r\n\r\n", 1024, out, &out_len), 0);
    assert_int_equal(out_len, 10);
}

static void test_chunked_pipelined(void **state)
{
    (void)state;
    char raw[] = "3\r\nabc\r\n0\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n";
    const char *next = "GET /next HTTP/1.1\r\nHost: a\r\n\r\n";
    sb_http1_chunked d;
    sb_http1_chunked_init(&d, 1024);
    size_t len = strlen(raw);
    int rc = sb_http1_chunked_decode(&d, raw, &len);
    assert_int_equal(rc, (int)strlen(next));
    assert_int_equal(len, 3);
    assert_memory_equal(raw, "abc", 3);
    assert_memory_equal(raw + len, next, (size_t)rc);
    int st;
    assert_int_equal(parse_n(raw + len, (size_t)rc, &st), rc);
    assert_str(req.path, "/next");
}

static void test_chunked_malformed(void **state)
{
    (void)state;
    static const char *bad[] = {
        "\r\n",
        "g\r\n",
        "-1\r\n",
        "+1\r\na\r\n0\r\n\r\n",
        "0x1\r\na\r\n0\r\n\r\n",
        " 1\r\na\r\n0\r\n\r\n",
        "1 \r\na\r\n0\r\n\r\n",
        "1\t\r\na\r\n0\r\n\r\n",
        "1 2\r\n",
        ";x\r\n",
        "1\na\r\n0\r\n\r\n",
        "1\r\na\n0\r\n\r\n",
        "1\r\naX\r\n",
        "1\r\na\r\r\n",
        "1\ra",
        "1;x\x01y\r\n",
        "1;x\ny\r\n",
        "1;\r\na\r\n0\r\n\r\n",
        "1;=x\r\na\r\n0\r\n\r\n",
        "1;a=\r\na\r\n0\r\n\r\n",
        "1;a=\"x\r\na\r\n0\r\n\r\n",
        "1;a=\"x\\\x01\"\r\na\r\n0\r\n\r\n",
        "1;a b\r\na\r\n0\r\n\r\n",
        "1;a=b c\r\na\r\n0\r\n\r\n",
        "1;a \r\na\r\n0\r\n\r\n",
        "1;a=b \r\na\r\n0\r\n\r\n",
        "1;a=\"b\"c\r\na\r\n0\r\n\r\n",
        "1;a;\r\na\r\n0\r\n\r\n",
        "1;a=b=c\r\na\r\n0\r\n\r\n",
        "00000000000000001\r\na\r\n0\r\n\r\n",
        "fffffffffffffffff\r\n",
        "0\r\n\n",
        "0\r\n\rX",
        "0\r\n X: y\r\n\r\n",
        "0\r\nX : y\r\n\r\n",
        "0\r\n: y\r\n\r\n",
        "0\r\nX\r\n\r\n",
        "0\r\nX: y\n\r\n",
        "0\r\nX: y\x7f\r\n\r\n",
        "0\r\nX: y\rz\r\n\r\n",
    };
    char out[256];
    size_t out_len;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc = decode_all(bad[i], UINT64_MAX, out, &out_len);
        if (rc != SB_EPROTO)
            print_error("case %zu: rc %d\n", i, rc);
        assert_int_equal(rc, SB_EPROTO);
    }
    /* NUL in a size line. */
    char nul[] = "1\0\r\na\r\n0\r\n\r\n";
    sb_http1_chunked d;
    sb_http1_chunked_init(&d, 1024);
    size_t len = sizeof(nul) - 1;
    assert_int_equal(sb_http1_chunked_decode(&d, nul, &len), SB_EPROTO);

    /* Errors stick. */
    char again[] = "0\r\n\r\n";
    len = 5;
    assert_int_equal(sb_http1_chunked_decode(&d, again, &len), SB_EPROTO);
}

static void test_chunked_limits(void **state)
{
    (void)state;
    char out[256];
    size_t out_len;
    static char raw[20000];

    /* Sixteen hex digits are allowed; the size then trips max_body. */
    assert_int_equal(decode_all("ffffffffffffffff\r\n", UINT64_MAX - 1, out, &out_len),
                     SB_EMSGSIZE);
    assert_int_equal(decode_all("000000000000000f\r\n", 1024, out, &out_len), SB_EAGAIN);

    assert_int_equal(decode_all("5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n", 10, out, &out_len), 0);
    assert_int_equal(decode_all("5\r\nhello\r\n6\r\nworld!\r\n0\r\n\r\n", 10, out, &out_len),
                     SB_EMSGSIZE);
    assert_int_equal(decode_all("b\r\n", 10, out, &out_len), SB_EMSGSIZE);

    /* A chunk-ext line of 4096 bytes is fine, 4097 is not. */
    memset(raw, 'e', sizeof(raw));
    memcpy(raw, "1;", 2);
    memcpy(raw + 4096, "\r\nx\r\n0\r\n\r\n", 11);
    assert_int_equal(decode_all(raw, 1024, out, &out_len), 0);
    memset(raw, 'e', sizeof(raw));
    memcpy(raw, "1;", 2);
    memcpy(raw + 4097, "\r\nx\r\n0\r\n\r\n", 11);
    assert_int_equal(decode_all(raw, 1024, out, &out_len), SB_EPROTO);

    /* Trailer section: 8192 bytes in all, counted across lines (64 bytes per line here). */
    char line[65];
    memset(line, 'v', 64);
    memcpy(line, "X-Trailer: ", 11);
    memcpy(line + 62, "\r\n", 3);
    memcpy(raw, "0\r\n", 3);
    size_t n = 3;
    for (int i = 0; i < 8192 / 64; i++, n += 64)
        memcpy(raw + n, line, 64);
    memcpy(raw + n, "\r\n", 3);
    assert_int_equal(decode_all(raw, 1024, out, &out_len), 0);
    memcpy(raw + n, "X: y\r\n\r\n", 9);
    assert_int_equal(decode_all(raw, 1024, out, &out_len), SB_EPROTO);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_simple_get),
        cmocka_unit_test(test_headers_extracted),
        cmocka_unit_test(test_method_case_sensitive_token),
        cmocka_unit_test(test_keep_alive_rules),
        cmocka_unit_test(test_upgrade_and_expect),
        cmocka_unit_test(test_content_length),
        cmocka_unit_test(test_transfer_encoding),
        cmocka_unit_test(test_field_syntax),
        cmocka_unit_test(test_bare_cr_lf),
        cmocka_unit_test(test_request_line),
        cmocka_unit_test(test_host_rules),
        cmocka_unit_test(test_absolute_form),
        cmocka_unit_test(test_asterisk_and_authority_form),
        cmocka_unit_test(test_leading_empty_lines),
        cmocka_unit_test(test_incomplete),
        cmocka_unit_test(test_pipelined),
        cmocka_unit_test(test_bytewise_matches_whole),
        cmocka_unit_test(test_limit_request_line),
        cmocka_unit_test(test_limit_header_bytes),
        cmocka_unit_test(test_limit_header_count),
        cmocka_unit_test(test_prev_len_beyond_len),
        cmocka_unit_test(test_chunked_simple),
        cmocka_unit_test(test_chunked_every_split),
        cmocka_unit_test(test_chunked_extensions_trailers),
        cmocka_unit_test(test_chunked_pipelined),
        cmocka_unit_test(test_chunked_malformed),
        cmocka_unit_test(test_chunked_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
