/*
 * sb_hclient against a scripted HTTP server inside the test: both run on one uv loop, the
 * server on 127.0.0.1 port 0, answering each complete request with the bytes a test chose.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <uv.h>

#include "core/alloc.h"
#include "hclient_harness.h"
#include "net/hclient.h"
#include "switchboard/error.h"

/* ---- scripted server ----------------------------------------------------------------------- */

enum { REPLY, SILENT, DROP_SECOND };

#define MAX_SCONNS 16

typedef struct server server;

typedef struct sconn {
    uv_tcp_t tcp;
    server *s;
    int requests;
    bool closed;
    size_t len;
    char buf[8192];
} sconn;

struct server {
    uv_loop_t *loop;
    uv_tcp_t listener;
    int port;
    int mode;
    const char *reply;
    bool close_after_reply;
    int connections;
    int requests;
    sconn *conns[MAX_SCONNS];
    char last_request[2048];
};

typedef struct swrite {
    uv_write_t w;
    sconn *k;
    bool close;
} swrite;

static void sconn_closed(uv_handle_t *h)
{
    free(h->data);
}

static void sconn_close(sconn *k)
{
    if (k->closed)
        return;
    k->closed = true;
    for (int i = 0; i < MAX_SCONNS; i++)
        if (k->s->conns[i] == k)
            k->s->conns[i] = NULL;
    uv_close((uv_handle_t *)&k->tcp, sconn_closed);
}

static void on_swrite(uv_write_t *w, int status)
{
    (void)status;
    swrite *sw = (swrite *)w;
    if (sw->close)
        sconn_close(sw->k);
    free(sw);
}

static void salloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    (void)hint;
    sconn *k = h->data;
    *buf = uv_buf_init(k->buf + k->len, (unsigned)(sizeof(k->buf) - k->len));
}

/* Returns the length of the complete request at the start of k->buf, or 0. */
static size_t complete_request(sconn *k)
{
    char *end = NULL;
    for (size_t i = 0; i + 4 <= k->len; i++)
        if (memcmp(k->buf + i, "\r\n\r\n", 4) == 0) {
            end = k->buf + i + 4;
            break;
        }
    if (!end)
        return 0;
    size_t head = (size_t)(end - k->buf), cl = 0;
    for (char *p = k->buf; p < end; p++)
        if (strncmp(p, "\r\nContent-Length: ", 18) == 0)
            cl = strtoul(p + 18, NULL, 10);
    return k->len >= head + cl ? head + cl : 0;
}

static void sread(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    sconn *k = st->data;
    if (nread < 0) {
        sconn_close(k);
        return;
    }
    k->len += (size_t)nread;
    size_t n;
    while ((n = complete_request(k)) > 0) {
        server *s = k->s;
        s->requests++;
        k->requests++;
        size_t copy = n < sizeof(s->last_request) - 1 ? n : sizeof(s->last_request) - 1;
        memcpy(s->last_request, k->buf, copy);
        s->last_request[copy] = '\0';
        memmove(k->buf, k->buf + n, k->len - n);
        k->len -= n;
        if (s->mode == SILENT)
            continue;
        if (s->mode == DROP_SECOND && k->requests == 2) {
            sconn_close(k);
            return;
        }
        swrite *sw = calloc(1, sizeof(*sw));
        assert_non_null(sw);
        sw->k = k;
        sw->close = s->close_after_reply;
        uv_buf_t b = uv_buf_init((char *)s->reply, (unsigned)strlen(s->reply));
        assert_int_equal(uv_write(&sw->w, st, &b, 1, on_swrite), 0);
    }
}

static void on_sconnection(uv_stream_t *l, int status)
{
    assert_int_equal(status, 0);
    server *s = l->data;
    sconn *k = calloc(1, sizeof(*k));
    assert_non_null(k);
    k->s = s;
    uv_tcp_init(s->loop, &k->tcp);
    k->tcp.data = k;
    assert_int_equal(uv_accept(l, (uv_stream_t *)&k->tcp), 0);
    s->connections++;
    for (int i = 0; i < MAX_SCONNS; i++)
        if (!s->conns[i]) {
            s->conns[i] = k;
            break;
        }
    uv_read_start((uv_stream_t *)&k->tcp, salloc, sread);
}

static void server_start(server *s, uv_loop_t *loop, int mode, const char *reply)
{
    memset(s, 0, sizeof(*s));
    s->loop = loop;
    s->mode = mode;
    s->reply = reply;
    s->listener.data = s;
    s->port = listen_loopback(loop, &s->listener, 16, on_sconnection);
}

static void server_stop(server *s)
{
    for (int i = 0; i < MAX_SCONNS; i++)
        if (s->conns[i])
            sconn_close(s->conns[i]);
    uv_close((uv_handle_t *)&s->listener, NULL);
}

/* ---- harness ------------------------------------------------------------------------------- */

typedef struct fixture {
    uv_loop_t loop;
    server srv;
    sb_hclient *c;
    bool closed;
    uv_timer_t dog; /* watchdog and sleep timer, stopped between uses */
    bool fired;
    char url[128];
} fixture;

static fixture fx;

static void on_done(sb_hclient_req *r, const sb_hclient_result *res)
{
    outcome_record(r->ud, res, uv_now(&fx.loop));
}

static void on_closed(void *ud)
{
    *(bool *)ud = true;
}

static void on_watchdog(uv_timer_t *t)
{
    (void)t;
    fx.fired = true;
}

/* Runs the loop until *calls reaches n, or fails after 5 s. */
static void run_until(const int *calls, int n)
{
    fx.fired = false;
    uv_timer_start(&fx.dog, on_watchdog, 5000, 0);
    while (*calls < n && !fx.fired)
        uv_run(&fx.loop, UV_RUN_ONCE);
    uv_timer_stop(&fx.dog);
    assert_false(fx.fired);
    assert_int_equal(*calls, n);
}

/* Lets the loop turn for ms milliseconds. */
static void run_for(uint64_t ms)
{
    fx.fired = false;
    uv_timer_start(&fx.dog, on_watchdog, ms, 0);
    while (!fx.fired)
        uv_run(&fx.loop, UV_RUN_ONCE);
}

static void setup_with(int mode, const char *reply, const sb_hclient_config *cfg)
{
    assert_int_equal(uv_loop_init(&fx.loop), 0);
    server_start(&fx.srv, &fx.loop, mode, reply);
    assert_int_equal(sb_hclient_new(&fx.c, &fx.loop, cfg), 0);
    uv_timer_init(&fx.loop, &fx.dog);
    fx.closed = false;
    snprintf(fx.url, sizeof(fx.url), "http://127.0.0.1:%d/hook/path?q=1", fx.srv.port);
}

static void teardown(void)
{
    sb_hclient_close(fx.c, on_closed, &fx.closed);
    server_stop(&fx.srv);
    uv_close((uv_handle_t *)&fx.dog, NULL);
    uv_run(&fx.loop, UV_RUN_DEFAULT);
    assert_true(fx.closed);
    assert_int_equal(uv_loop_close(&fx.loop), 0);
}

static const char BODY[] = "{\"event\":\"x\"}";
static const char EXTRA[] = "Content-Type: application/json\r\nX-Sig: abc\r\n";

static int post(const char *url, sb_hclient_req *r, outcome *o, uint64_t timeout_ms)
{
    return sb_hclient_post(fx.c, r, url, EXTRA, strlen(EXTRA), BODY, strlen(BODY), timeout_ms,
                           on_done, o);
}

static const char R204[] = "HTTP/1.1 204 No Content\r\n\r\n";

/* ---- tests --------------------------------------------------------------------------------- */

static void test_keep_alive_reuse(void **state)
{
    (void)state;
    setup_with(REPLY, R204, NULL);
    sb_hclient_req r;
    outcome o = {0};
    for (int i = 0; i < 5; i++) {
        assert_int_equal(post(fx.url, &r, &o, 2000), 0);
        assert_int_equal(o.calls, i); /* never from inside post */
        run_until(&o.calls, i + 1);
        assert_int_equal(o.err, 0);
        assert_int_equal(o.status, 204);
    }
    assert_int_equal(fx.srv.requests, 5);
    assert_int_equal(fx.srv.connections, 1);
    char want[512];
    snprintf(want, sizeof(want),
             "POST /hook/path?q=1 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Length: %zu\r\n%s"
             "\r\n%s",
             fx.srv.port, strlen(BODY), EXTRA, BODY);
    assert_string_equal(fx.srv.last_request, want);
    teardown();
}

static void test_no_extra_headers_no_body(void **state)
{
    (void)state;
    setup_with(REPLY, R204, NULL);
    sb_hclient_req r;
    outcome o = {0};
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", fx.srv.port);
    assert_int_equal(sb_hclient_post(fx.c, &r, url, NULL, 0, NULL, 0, 1000, on_done, &o), 0);
    run_until(&o.calls, 1);
    assert_int_equal(o.status, 204);
    char want[256];
    snprintf(want, sizeof(want),
             "POST / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Length: 0\r\n\r\n", fx.srv.port);
    assert_string_equal(fx.srv.last_request, want);
    teardown();
}

static void test_chunked(void **state)
{
    (void)state;
    setup_with(REPLY,
               "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n3;x=y\r\nefg\r\n"
               "0\r\nT: 1\r\n\r\n",
               NULL);
    sb_hclient_req r;
    outcome o = {0};
    for (int i = 0; i < 2; i++) {
        assert_int_equal(post(fx.url, &r, &o, 2000), 0);
        run_until(&o.calls, i + 1);
        assert_int_equal(o.err, 0);
        assert_int_equal(o.status, 200);
        assert_int_equal(o.body_bytes, 7);
    }
    assert_int_equal(fx.srv.connections, 1);
    teardown();
}

static void test_close_delimited(void **state)
{
    (void)state;
    setup_with(REPLY, "HTTP/1.1 200 OK\r\n\r\nuntil the end", NULL);
    fx.srv.close_after_reply = true;
    sb_hclient_req r;
    outcome o = {0};
    for (int i = 0; i < 2; i++) {
        assert_int_equal(post(fx.url, &r, &o, 2000), 0);
        run_until(&o.calls, i + 1);
        assert_int_equal(o.err, 0);
        assert_int_equal(o.status, 200);
        assert_int_equal(o.body_bytes, 13);
    }
    assert_int_equal(fx.srv.connections, 2);
    teardown();
}

static void test_continue_then_200(void **state)
{
    (void)state;
    setup_with(REPLY, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
               NULL);
    sb_hclient_req r;
    outcome o = {0};
    assert_int_equal(post(fx.url, &r, &o, 2000), 0);
    run_until(&o.calls, 1);
    assert_int_equal(o.err, 0);
    assert_int_equal(o.status, 200);
    assert_int_equal(o.body_bytes, 2);
    teardown();
}

static void test_retry_after(void **state)
{
    (void)state;
    setup_with(REPLY,
               "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 30\r\nContent-Length: 0\r\n\r\n",
               NULL);
    sb_hclient_req r;
    outcome o = {0};
    assert_int_equal(post(fx.url, &r, &o, 2000), 0);
    run_until(&o.calls, 1);
    assert_int_equal(o.err, 0);
    assert_int_equal(o.status, 429);
    assert_true(o.has_retry_after);
    assert_string_equal(o.retry_after, "30");
    teardown();
}

static void test_garbage_after_response(void **state)
{
    (void)state;
    setup_with(REPLY, "HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", NULL);
    sb_hclient_req r;
    outcome o = {0};
    for (int i = 0; i < 2; i++) {
        assert_int_equal(post(fx.url, &r, &o, 2000), 0);
        run_until(&o.calls, i + 1);
        assert_int_equal(o.err, 0);
        assert_int_equal(o.status, 204);
    }
    /* The extra response made the first connection unusable. */
    assert_int_equal(fx.srv.connections, 2);
    teardown();
}

static void test_invalid_response(void **state)
{
    (void)state;
    setup_with(REPLY, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", NULL);
    sb_hclient_req r;
    outcome o = {0};
    assert_int_equal(post(fx.url, &r, &o, 2000), 0);
    run_until(&o.calls, 1);
    assert_int_equal(o.err, SB_EPROTO);
    assert_non_null(strstr(o.error, "invalid HTTP response from 127.0.0.1"));
    teardown();
}

static void test_timeout(void **state)
{
    (void)state;
    setup_with(SILENT, NULL, NULL);
    sb_hclient_req r;
    outcome o = {0};
    uv_update_time(&fx.loop);
    uint64_t start = uv_now(&fx.loop);
    assert_int_equal(post(fx.url, &r, &o, 200), 0);
    run_until(&o.calls, 1);
    assert_int_equal(o.err, SB_ETIMEDOUT);
    assert_int_equal(o.status, 0);
    assert_true(o.at - start >= 200);
    assert_true(o.at - start < 1000);
    assert_string_equal(o.error, "timed out after 200 ms");
    assert_int_equal(fx.srv.requests, 1);
    teardown();
}

static void test_connection_refused(void **state)
{
    (void)state;
    setup_with(REPLY, R204, NULL);
    /* A port that was free a moment ago. */
    uv_tcp_t t;
    uv_tcp_init(&fx.loop, &t);
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    assert_int_equal(uv_tcp_bind(&t, (const struct sockaddr *)&a, 0), 0);
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    uv_tcp_getsockname(&t, (struct sockaddr *)&ss, &len);
    int port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    uv_close((uv_handle_t *)&t, NULL);

    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/secret/path?token=abc", port);
    sb_hclient_req r;
    outcome o = {0};
    assert_int_equal(post(url, &r, &o, 2000), 0);
    run_until(&o.calls, 1);
    assert_int_equal(o.err, SB_EIO);
    char want[128];
    snprintf(want, sizeof(want), "connect to 127.0.0.1 port %d: connection refused", port);
    assert_string_equal(o.error, want);
    teardown();
}

static void test_stale_idle_closed_by_server(void **state)
{
    (void)state;
    setup_with(REPLY, R204, NULL);
    sb_hclient_req r;
    outcome o = {0};
    assert_int_equal(post(fx.url, &r, &o, 2000), 0);
    run_until(&o.calls, 1);
    assert_int_equal(o.err, 0);
    /* The server closes the idle connection; the client notices and drops it. */
    for (int i = 0; i < MAX_SCONNS; i++)
        if (fx.srv.conns[i])
            sconn_close(fx.srv.conns[i]);
    run_for(50);
    assert_int_equal(post(fx.url, &r, &o, 2000), 0);
    run_until(&o.calls, 2);
    assert_int_equal(o.err, 0);
    assert_int_equal(o.status, 204);
    assert_int_equal(fx.srv.requests, 2);
    assert_int_equal(fx.srv.connections, 2);
    teardown();
}

static void test_stale_retry(void **state)
{
    (void)state;
    /* The server closes the reused connection on reading the second request, as a server
     * whose keep-alive timeout fired just as the request arrived would. */
    setup_with(DROP_SECOND, R204, NULL);
    sb_hclient_req r;
    outcome o = {0};
    assert_int_equal(post(fx.url, &r, &o, 2000), 0);
    run_until(&o.calls, 1);
    assert_int_equal(o.err, 0);
    assert_int_equal(post(fx.url, &r, &o, 2000), 0);
    run_until(&o.calls, 2);
    assert_int_equal(o.err, 0);
    assert_int_equal(o.status, 204);
    assert_int_equal(fx.srv.connections, 2);
    assert_int_equal(fx.srv.requests, 3); /* the dropped one, then its retry */
    teardown();
}

static const char *refuse_loopback(const struct sockaddr *sa, void *ud)
{
    int *calls = ud;
    (*calls)++;
    if (sa->sa_family == AF_INET &&
        ((const struct sockaddr_in *)sa)->sin_addr.s_addr == htonl(INADDR_LOOPBACK))
        return "loopback";
    if (sa->sa_family == AF_INET6 &&
        IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)sa)->sin6_addr))
        return "loopback";
    return NULL;
}

static void test_addr_check_refuses(void **state)
{
    (void)state;
    int checks = 0;
    sb_hclient_config cfg = {0, 30000, 8, refuse_loopback, &checks};
    setup_with(REPLY, R204, &cfg);
    sb_hclient_req r;
    outcome o = {0};
    assert_int_equal(post(fx.url, &r, &o, 2000), 0);
    assert_int_equal(o.calls, 0);
    run_until(&o.calls, 1);
    assert_int_equal(o.err, SB_EACCES);
    assert_string_equal(o.refused_ip, "127.0.0.1");
    assert_string_equal(o.refused_why, "loopback");
    assert_int_equal(checks, 1);
    run_for(20);
    assert_int_equal(fx.srv.connections, 0);

    /* Through the resolver, every address of localhost is refused too. */
    char url[64];
    snprintf(url, sizeof(url), "http://LocalHost:%d/", fx.srv.port);
    assert_int_equal(post(url, &r, &o, 2000), 0);
    run_until(&o.calls, 2);
    assert_int_equal(o.err, SB_EACCES);
    assert_true(strcmp(o.refused_ip, "127.0.0.1") == 0 || strcmp(o.refused_ip, "::1") == 0);
    assert_true(checks >= 2);
    run_for(20);
    assert_int_equal(fx.srv.connections, 0);
    teardown();
}

static void test_resolver(void **state)
{
    (void)state;
    setup_with(REPLY, R204, NULL);
    char url[64];
    snprintf(url, sizeof(url), "http://localhost:%d/x", fx.srv.port);
    sb_hclient_req r;
    outcome o = {0};
    for (int i = 0; i < 2; i++) {
        assert_int_equal(post(url, &r, &o, 3000), 0);
        run_until(&o.calls, i + 1);
        assert_int_equal(o.err, 0);
        assert_int_equal(o.status, 204);
    }
    assert_int_equal(fx.srv.connections, 1);
    char want[64];
    snprintf(want, sizeof(want), "Host: localhost:%d\r\n", fx.srv.port);
    assert_non_null(strstr(fx.srv.last_request, want));
    teardown();
}

static void test_bad_urls(void **state)
{
    (void)state;
    setup_with(REPLY, R204, NULL);
    sb_hclient_req r;
    outcome o = {0};
    const char *bad[] = {
        "https://127.0.0.1/",     "ftp://x/",          "http://",
        "http:///path",           "http://user@host/", "http://host:0/",
        "http://host:65536/",     "http://host:/",     "http://host:12a/",
        "http://[::1/",           "http://[nothex]/",  "http://[fe80::1%25eth0]/",
        "http://[fe80::1%eth0]/", "http://ho st/",     "http://host/a b",
        "http://host/a\r\nX: y",  "127.0.0.1:80/",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(post(bad[i], &r, &o, 1000), SB_EINVAL);
    assert_int_equal(post(fx.url, &r, &o, 0), SB_EINVAL);
    run_for(10);
    assert_int_equal(o.calls, 0);
    assert_int_equal(fx.srv.connections, 0);
    teardown();
}

static void test_ipv6_literal(void **state)
{
    (void)state;
    setup_with(REPLY, R204, NULL);
    /* The server listens on IPv4 only, so [::1] is refused, cleanly. */
    char url[64];
    snprintf(url, sizeof(url), "http://[::1]:%d/", fx.srv.port);
    sb_hclient_req r;
    outcome o = {0};
    assert_int_equal(post(url, &r, &o, 2000), 0);
    run_until(&o.calls, 1);
    assert_true(o.err == SB_EIO);
    assert_non_null(strstr(o.error, "connect to ::1 port"));
    teardown();
}

static void test_close_in_flight(void **state)
{
    (void)state;
    setup_with(SILENT, NULL, NULL);
    sb_hclient_req r[3];
    outcome o[3];
    memset(o, 0, sizeof(o));
    for (int i = 0; i < 3; i++)
        assert_int_equal(post(fx.url, &r[i], &o[i], 5000), 0);
    /* One more still resolving, through the thread pool. */
    char url[64];
    snprintf(url, sizeof(url), "http://localhost:%d/", fx.srv.port);
    sb_hclient_req r4;
    outcome o4 = {0};
    assert_int_equal(post(url, &r4, &o4, 5000), 0);
    while (fx.srv.requests < 3)
        uv_run(&fx.loop, UV_RUN_ONCE);
    sb_hclient_close(fx.c, on_closed, &fx.closed);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(o[i].calls, 1);
        assert_int_equal(o[i].err, SB_ECANCELED);
    }
    assert_int_equal(o4.calls, 1);
    assert_int_equal(o4.err, SB_ECANCELED);
    assert_false(fx.closed);
    server_stop(&fx.srv);
    uv_close((uv_handle_t *)&fx.dog, NULL);
    uv_run(&fx.loop, UV_RUN_DEFAULT);
    assert_true(fx.closed);
    assert_int_equal(uv_loop_close(&fx.loop), 0);
}

static void test_idle_timeout(void **state)
{
    (void)state;
    sb_hclient_config cfg = {0, 50, 8, NULL, NULL};
    setup_with(REPLY, R204, &cfg);
    sb_hclient_req r;
    outcome o = {0};
    assert_int_equal(post(fx.url, &r, &o, 2000), 0);
    run_until(&o.calls, 1);
    run_for(150);
    assert_int_equal(post(fx.url, &r, &o, 2000), 0);
    run_until(&o.calls, 2);
    assert_int_equal(o.err, 0);
    assert_int_equal(fx.srv.connections, 2);
    teardown();
}

static void test_concurrent_pool(void **state)
{
    (void)state;
    sb_hclient_config cfg = {0, 30000, 2, NULL, NULL};
    setup_with(REPLY, R204, &cfg);
    sb_hclient_req r[4];
    outcome o = {0};
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < 4; i++)
            assert_int_equal(post(fx.url, &r[i], &o, 2000), 0);
        run_until(&o.calls, 4 * (round + 1));
        assert_int_equal(o.err, 0);
    }
    /* Four at once need four connections; only two stay idle between rounds. */
    assert_int_equal(fx.srv.connections, 4 + 2 + 2);
    teardown();
}

/* The n-th allocation from now fails (1 = the next one); 0 = none fails. */
static int alloc_fail_at;

static void *failing_malloc(size_t size, void *ud)
{
    (void)ud;
    if (alloc_fail_at > 0 && --alloc_fail_at == 0)
        return NULL;
    return malloc(size);
}

static void *failing_realloc(void *ptr, size_t size, void *ud)
{
    (void)ud;
    return realloc(ptr, size);
}

static void failing_free(void *ptr, void *ud)
{
    (void)ud;
    free(ptr);
}

static void test_out_of_memory(void **state)
{
    (void)state;
    static const sb_allocator failing = {failing_malloc, failing_realloc, failing_free, NULL};
    setup_with(REPLY, R204, NULL);
    sb_alloc_set(&failing);
    sb_hclient_req r;
    outcome o = {0};
    alloc_fail_at = 1; /* the origin */
    assert_int_equal(post(fx.url, &r, &o, 1000), SB_ENOMEM);
    alloc_fail_at = 2; /* the connection: the new origin is released again */
    assert_int_equal(post(fx.url, &r, &o, 1000), SB_ENOMEM);
    alloc_fail_at = 0;
    sb_alloc_set(NULL);
    run_for(10);
    assert_int_equal(o.calls, 0);
    assert_int_equal(fx.srv.connections, 0);
    /* Nothing was left behind: a normal request works, and ASan sees no leak at exit. */
    assert_int_equal(post(fx.url, &r, &o, 1000), 0);
    run_until(&o.calls, 1);
    assert_int_equal(o.err, 0);
    teardown();
}

static void test_no_keep_alive_pool(void **state)
{
    (void)state;
    sb_hclient_config cfg = {0, 30000, 0, NULL, NULL};
    setup_with(REPLY, R204, &cfg);
    sb_hclient_req r;
    outcome o = {0};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(post(fx.url, &r, &o, 2000), 0);
        run_until(&o.calls, i + 1);
        assert_int_equal(o.err, 0);
    }
    assert_int_equal(fx.srv.connections, 3);
    teardown();
}

/* done posts the next request with the same sb_hclient_req, as the webhook dispatcher does;
 * it reuses the connection just released, and the Retry-After it was given stays intact. */
static int chain_left;
static char chain_seen[64];

static void on_chain_done(sb_hclient_req *r, const sb_hclient_result *res)
{
    outcome *o = r->ud;
    assert_int_equal(res->err, 0);
    assert_non_null(res->retry_after);
    if (chain_left-- > 0)
        assert_int_equal(
            sb_hclient_post(fx.c, r, fx.url, NULL, 0, BODY, strlen(BODY), 2000, on_chain_done, o),
            0);
    snprintf(chain_seen, sizeof(chain_seen), "%.*s", (int)res->retry_after_len, res->retry_after);
    o->calls++;
}

static void test_post_from_done(void **state)
{
    (void)state;
    setup_with(REPLY, "HTTP/1.1 503 Busy\r\nRetry-After: 120\r\nContent-Length: 0\r\n\r\n", NULL);
    sb_hclient_req r;
    outcome o = {0};
    chain_left = 4;
    assert_int_equal(
        sb_hclient_post(fx.c, &r, fx.url, NULL, 0, BODY, strlen(BODY), 2000, on_chain_done, &o), 0);
    run_until(&o.calls, 5);
    assert_string_equal(chain_seen, "120");
    assert_int_equal(fx.srv.connections, 1);
    assert_int_equal(fx.srv.requests, 5);
    teardown();
}

/* A listener that never accepts, with a backlog of 0: once one connection waits in its accept
 * queue, the kernel drops further SYNs and those connects hang. */
static void test_connect_timeout(void **state)
{
    (void)state;
    sb_hclient_config cfg = {100, 30000, 8, NULL, NULL};
    setup_with(REPLY, R204, &cfg);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(fd, 0), 0);
    socklen_t len = sizeof(a);
    getsockname(fd, (struct sockaddr *)&a, &len);
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/", ntohs(a.sin_port));

    sb_hclient_req r[3];
    outcome o[3];
    memset(o, 0, sizeof(o));
    uv_update_time(&fx.loop);
    uint64_t start = uv_now(&fx.loop);
    for (int i = 0; i < 3; i++)
        assert_int_equal(post(url, &r[i], &o[i], 600), 0);
    int connect_timeouts = 0;
    for (int i = 0; i < 3; i++) {
        run_until(&o[i].calls, 1);
        assert_int_equal(o[i].err, SB_ETIMEDOUT);
        char want[96];
        snprintf(want, sizeof(want), "connect to 127.0.0.1 port %d timed out after 100 ms",
                 ntohs(a.sin_port));
        if (strcmp(o[i].error, want) == 0) {
            connect_timeouts++;
            assert_true(o[i].at - start >= 100 && o[i].at - start < 500);
        } else {
            assert_string_equal(o[i].error, "timed out after 600 ms");
        }
    }
    assert_true(connect_timeouts >= 1);
    close(fd);
    teardown();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keep_alive_reuse),
        cmocka_unit_test(test_no_extra_headers_no_body),
        cmocka_unit_test(test_chunked),
        cmocka_unit_test(test_close_delimited),
        cmocka_unit_test(test_continue_then_200),
        cmocka_unit_test(test_retry_after),
        cmocka_unit_test(test_garbage_after_response),
        cmocka_unit_test(test_invalid_response),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_connection_refused),
        cmocka_unit_test(test_stale_idle_closed_by_server),
        cmocka_unit_test(test_stale_retry),
        cmocka_unit_test(test_addr_check_refuses),
        cmocka_unit_test(test_resolver),
        cmocka_unit_test(test_bad_urls),
        cmocka_unit_test(test_ipv6_literal),
        cmocka_unit_test(test_close_in_flight),
        cmocka_unit_test(test_idle_timeout),
        cmocka_unit_test(test_concurrent_pool),
        cmocka_unit_test(test_out_of_memory),
        cmocka_unit_test(test_no_keep_alive_pool),
        cmocka_unit_test(test_post_from_done),
        cmocka_unit_test(test_connect_timeout),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
