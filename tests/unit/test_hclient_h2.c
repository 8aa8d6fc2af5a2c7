/*
 * sb_hclient with SB_HCLIENT_H2C against an h2c server inside the test: an nghttp2 server
 * session on a uv TCP server, on the same loop, scripted by request path.
 *
 *   /status/NNN   answers NNN (429 with retry-after: 7)
 *   /silent       never answers
 *   /rst          RST_STREAM(INTERNAL_ERROR)
 *   /refuse-once  RST_STREAM(REFUSED_STREAM) the first time, then 204
 *   /close        closes the connection while close_conns > 0 (decremented), else 204
 *   /big          200 with a 2 MiB body
 *   /bighdr       200 with three 8000-byte header fields
 * With goaway_n set, the first connection answers its first goaway_n streams and sends GOAWAY
 * with the last of them as last_stream_id, leaving the later ones unanswered.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nghttp2/nghttp2.h>
#include <uv.h>

#include "core/alloc.h"
#include "hclient_harness.h"
#include "net/hclient.h"
#include "switchboard/error.h"

#define BIG_BODY (2u << 20)

typedef struct h2srv h2srv;

typedef struct sstream {
    struct sstream *prev, *next; /* the connection's open streams */
    int32_t id;
    char path[256];
    char hdrs[1024];
    size_t hlen;
    size_t body;
    size_t big_left;
} sstream;

typedef struct sconn {
    uv_tcp_t tcp;
    h2srv *s;
    nghttp2_session *ng;
    sstream *streams;
    int index;
    int nstreams;
    int open;
    bool closed;
    bool goaway_sent;
} sconn;

#define MAX_SCONNS 16

struct h2srv {
    uv_loop_t *loop;
    uv_tcp_t listener;
    int port;
    uint32_t max_streams; /* 0: no SETTINGS_MAX_CONCURRENT_STREAMS */
    int goaway_n;
    int close_conns;
    int connections;
    int closed_conns;
    int streams;
    int max_open;
    int rst_cancel;
    int refused_once;
    int ping_acks;
    sconn *conns[MAX_SCONNS];
    char last_path[256];
    char last_hdrs[1024];
    size_t last_body;
};

static void sconn_freed(uv_handle_t *h)
{
    sconn *k = h->data;
    nghttp2_session_del(k->ng);
    while (k->streams) {
        sstream *st = k->streams;
        k->streams = st->next;
        free(st);
    }
    free(k);
}

static void sconn_close(sconn *k)
{
    if (k->closed)
        return;
    k->closed = true;
    k->s->closed_conns++;
    for (int i = 0; i < MAX_SCONNS; i++)
        if (k->s->conns[i] == k)
            k->s->conns[i] = NULL;
    uv_close((uv_handle_t *)&k->tcp, sconn_freed);
}

static void on_swrite(uv_write_t *w, int status)
{
    (void)status;
    free(w);
}

static void sflush(sconn *k)
{
    if (k->closed)
        return;
    for (;;) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(k->ng, &data);
        assert_true(n >= 0);
        if (n == 0)
            break;
        uv_write_t *w = malloc(sizeof(*w) + (size_t)n);
        assert_non_null(w);
        memcpy(w + 1, data, (size_t)n);
        uv_buf_t b = uv_buf_init((char *)(w + 1), (unsigned)n);
        assert_int_equal(uv_write(w, (uv_stream_t *)&k->tcp, &b, 1, on_swrite), 0);
    }
}

static ssize_t big_read(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
                        nghttp2_data_source *src, void *ud)
{
    (void)ng;
    (void)id;
    (void)buf;
    (void)ud;
    sstream *st = src->ptr;
    size_t n = st->big_left < len ? st->big_left : len;
    memset(buf, 'b', n);
    st->big_left -= n;
    if (st->big_left == 0)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

static void respond(sconn *k, sstream *st, const char *status, const char *ra)
{
    nghttp2_nv nv[2] = {
        {(uint8_t *)":status", (uint8_t *)status, 7, strlen(status), NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)"retry-after", (uint8_t *)ra, 11, ra ? strlen(ra) : 0, NGHTTP2_NV_FLAG_NONE},
    };
    assert_int_equal(nghttp2_submit_response(k->ng, st->id, nv, ra ? 2 : 1, NULL), 0);
}

/* A complete request arrived on stream st. */
static void on_request(sconn *k, sstream *st)
{
    h2srv *s = k->s;
    s->streams++;
    k->nstreams++;
    snprintf(s->last_path, sizeof(s->last_path), "%s", st->path);
    memcpy(s->last_hdrs, st->hdrs, sizeof(s->last_hdrs));
    s->last_body = st->body;
    if (s->goaway_n && k->index == 0 && st->id > 2 * s->goaway_n - 1)
        return;
    if (strncmp(st->path, "/status/", 8) == 0) {
        char code[4];
        snprintf(code, sizeof(code), "%s", st->path + 8); /* a query may follow */
        respond(k, st, code, strcmp(code, "429") == 0 ? "7" : NULL);
    } else if (strcmp(st->path, "/silent") == 0) {
        /* nothing */
    } else if (strcmp(st->path, "/rst") == 0) {
        nghttp2_submit_rst_stream(k->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
    } else if (strcmp(st->path, "/refuse-once") == 0) {
        if (s->refused_once++ == 0)
            nghttp2_submit_rst_stream(k->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_REFUSED_STREAM);
        else
            respond(k, st, "204", NULL);
    } else if (strcmp(st->path, "/close") == 0) {
        if (s->close_conns > 0) {
            s->close_conns--;
            sconn_close(k);
        } else {
            respond(k, st, "204", NULL);
        }
    } else if (strcmp(st->path, "/bighdr") == 0) {
        static char v[8000];
        memset(v, 'v', sizeof(v));
        nghttp2_nv nv[4] = {
            {(uint8_t *)":status", (uint8_t *)"200", 7, 3, NGHTTP2_NV_FLAG_NONE},
            {(uint8_t *)"x-a", (uint8_t *)v, 3, sizeof(v), NGHTTP2_NV_FLAG_NONE},
            {(uint8_t *)"x-b", (uint8_t *)v, 3, sizeof(v), NGHTTP2_NV_FLAG_NONE},
            {(uint8_t *)"x-c", (uint8_t *)v, 3, sizeof(v), NGHTTP2_NV_FLAG_NONE},
        };
        assert_int_equal(nghttp2_submit_response(k->ng, st->id, nv, 4, NULL), 0);
    } else if (strcmp(st->path, "/big") == 0) {
        st->big_left = BIG_BODY;
        nghttp2_nv nv = {(uint8_t *)":status", (uint8_t *)"200", 7, 3, NGHTTP2_NV_FLAG_NONE};
        nghttp2_data_provider dp = {.source.ptr = st, .read_callback = big_read};
        assert_int_equal(nghttp2_submit_response(k->ng, st->id, &nv, 1, &dp), 0);
    } else {
        respond(k, st, "404", NULL);
    }
}

static int s_begin_headers(nghttp2_session *ng, const nghttp2_frame *f, void *ud)
{
    sconn *k = ud;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    sstream *st = calloc(1, sizeof(*st));
    assert_non_null(st);
    st->id = f->hd.stream_id;
    st->next = k->streams;
    if (k->streams)
        k->streams->prev = st;
    k->streams = st;
    nghttp2_session_set_stream_user_data(ng, st->id, st);
    if (++k->open > k->s->max_open)
        k->s->max_open = k->open;
    return 0;
}

static int s_header(nghttp2_session *ng, const nghttp2_frame *f, const uint8_t *name,
                    size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags, void *ud)
{
    (void)ud;
    sstream *st = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
    if (!st)
        return 0;
    if (namelen == 5 && memcmp(name, ":path", 5) == 0)
        snprintf(st->path, sizeof(st->path), "%.*s", (int)valuelen, (const char *)value);
    /* a field sent as a literal never indexed (RFC 7541 §6.2.3) is marked */
    int n = snprintf(st->hdrs + st->hlen, sizeof(st->hdrs) - st->hlen, "%.*s: %.*s%s\n",
                     (int)namelen, (const char *)name, (int)valuelen, (const char *)value,
                     (flags & NGHTTP2_NV_FLAG_NO_INDEX) ? " (never indexed)" : "");
    if (n > 0 && st->hlen + (size_t)n < sizeof(st->hdrs))
        st->hlen += (size_t)n;
    return 0;
}

static int s_data(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data, size_t len,
                  void *ud)
{
    (void)flags;
    (void)data;
    (void)ud;
    sstream *st = nghttp2_session_get_stream_user_data(ng, id);
    if (st)
        st->body += len;
    return 0;
}

static int s_frame(nghttp2_session *ng, const nghttp2_frame *f, void *ud)
{
    sconn *k = ud;
    if (f->hd.type == NGHTTP2_RST_STREAM && f->rst_stream.error_code == NGHTTP2_CANCEL)
        k->s->rst_cancel++;
    if (f->hd.type == NGHTTP2_PING && (f->hd.flags & NGHTTP2_FLAG_ACK))
        k->s->ping_acks++;
    if ((f->hd.type == NGHTTP2_HEADERS || f->hd.type == NGHTTP2_DATA) &&
        (f->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        sstream *st = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
        if (st)
            on_request(k, st);
    }
    return 0;
}

static int s_close(nghttp2_session *ng, int32_t id, uint32_t code, void *ud)
{
    (void)code;
    sconn *k = ud;
    sstream *st = nghttp2_session_get_stream_user_data(ng, id);
    if (st) {
        k->open--;
        if (st->prev)
            st->prev->next = st->next;
        else
            k->streams = st->next;
        if (st->next)
            st->next->prev = st->prev;
        free(st);
    }
    return 0;
}

static void salloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    (void)h;
    (void)hint;
    static char rb[65536];
    *buf = uv_buf_init(rb, sizeof(rb));
}

static void sread(uv_stream_t *stm, ssize_t nread, const uv_buf_t *buf)
{
    sconn *k = stm->data;
    if (nread < 0) {
        sconn_close(k);
        return;
    }
    if (k->closed)
        return;
    ssize_t rv = nghttp2_session_mem_recv(k->ng, (const uint8_t *)buf->base, (size_t)nread);
    if (rv < 0) {
        sconn_close(k);
        return;
    }
    if (k->closed)
        return;
    h2srv *s = k->s;
    if (s->goaway_n && k->index == 0 && !k->goaway_sent && k->nstreams >= s->goaway_n) {
        k->goaway_sent = true;
        nghttp2_submit_goaway(k->ng, NGHTTP2_FLAG_NONE, 2 * s->goaway_n - 1, NGHTTP2_NO_ERROR, NULL,
                              0);
    }
    sflush(k);
}

static void on_sconnection(uv_stream_t *l, int status)
{
    assert_int_equal(status, 0);
    h2srv *s = l->data;
    sconn *k = calloc(1, sizeof(*k));
    assert_non_null(k);
    k->s = s;
    k->index = s->connections++;
    uv_tcp_init(s->loop, &k->tcp);
    k->tcp.data = k;
    assert_int_equal(uv_accept(l, (uv_stream_t *)&k->tcp), 0);
    for (int i = 0; i < MAX_SCONNS; i++)
        if (!s->conns[i]) {
            s->conns[i] = k;
            break;
        }
    nghttp2_session_callbacks *cb;
    assert_int_equal(nghttp2_session_callbacks_new(&cb), 0);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, s_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, s_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, s_data);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, s_frame);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, s_close);
    assert_int_equal(nghttp2_session_server_new(&k->ng, cb, k), 0);
    nghttp2_session_callbacks_del(cb);
    nghttp2_settings_entry iv[1] = {{NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, s->max_streams}};
    assert_int_equal(nghttp2_submit_settings(k->ng, NGHTTP2_FLAG_NONE, iv, s->max_streams ? 1 : 0),
                     0);
    assert_int_equal(nghttp2_submit_ping(k->ng, NGHTTP2_FLAG_NONE, NULL), 0);
    sflush(k);
    uv_read_start((uv_stream_t *)&k->tcp, salloc, sread);
}

static void server_start(h2srv *s, uv_loop_t *loop)
{
    memset(s, 0, sizeof(*s));
    s->loop = loop;
    s->listener.data = s;
    s->port = listen_loopback(loop, &s->listener, 64, on_sconnection);
}

static void server_stop(h2srv *s)
{
    for (int i = 0; i < MAX_SCONNS; i++)
        if (s->conns[i])
            sconn_close(s->conns[i]);
    uv_close((uv_handle_t *)&s->listener, NULL);
}

/* ---- harness ------------------------------------------------------------------------------- */

typedef struct fixture {
    uv_loop_t loop;
    h2srv srv;
    sb_hclient *c;
    bool closed;
    uv_timer_t dog;
    uv_timer_t tick;
    bool fired;
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

static void on_tick(uv_timer_t *t)
{
    (void)t;
}

/* A done callback can run from hclient's uv_prepare handle, after which UV_RUN_ONCE would
 * block in poll: a 5 ms tick brings the loop back to check cond. */
static void run_until_fn(bool (*cond)(void *), void *arg)
{
    fx.fired = false;
    uv_timer_start(&fx.dog, on_watchdog, 5000, 0);
    uv_timer_start(&fx.tick, on_tick, 5, 5);
    while (!cond(arg) && !fx.fired)
        uv_run(&fx.loop, UV_RUN_ONCE);
    uv_timer_stop(&fx.dog);
    uv_timer_stop(&fx.tick);
    assert_false(fx.fired);
}

static bool all_called(void *arg)
{
    outcome *o = arg;
    return o->calls > 0;
}

static void run_until(outcome *o)
{
    run_until_fn(all_called, o);
    assert_int_equal(o->calls, 1);
}

static void run_all(outcome *o, int n)
{
    for (int i = 0; i < n; i++)
        run_until(&o[i]);
}

static void run_for(uint64_t ms)
{
    fx.fired = false;
    uv_timer_start(&fx.dog, on_watchdog, ms, 0);
    while (!fx.fired)
        uv_run(&fx.loop, UV_RUN_ONCE);
}

static void setup_with(const sb_hclient_config *cfg)
{
    assert_int_equal(uv_loop_init(&fx.loop), 0);
    server_start(&fx.srv, &fx.loop);
    assert_int_equal(sb_hclient_new(&fx.c, &fx.loop, cfg), 0);
    uv_timer_init(&fx.loop, &fx.dog);
    uv_timer_init(&fx.loop, &fx.tick);
    fx.closed = false;
}

static void teardown(void)
{
    sb_hclient_close(fx.c, on_closed, &fx.closed);
    server_stop(&fx.srv);
    uv_close((uv_handle_t *)&fx.dog, NULL);
    uv_close((uv_handle_t *)&fx.tick, NULL);
    uv_run(&fx.loop, UV_RUN_DEFAULT);
    assert_true(fx.closed);
    assert_int_equal(uv_loop_close(&fx.loop), 0);
}

static const char BODY[] = "{\"event\":\"x\"}";
static const char EXTRA[] = "Content-Type: application/json\r\nX-Sig:  abc \r\n";

static int post(const char *path, sb_hclient_req *r, outcome *o, uint64_t timeout_ms)
{
    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", fx.srv.port, path);
    memset(o, 0, sizeof(*o));
    return sb_hclient_post_ex(fx.c, r, url, EXTRA, strlen(EXTRA), BODY, strlen(BODY), timeout_ms,
                              SB_HCLIENT_H2C, on_done, o);
}

/* Posts n requests to path (3 s timeout each), runs them all, and checks that each one
 * succeeded with status want. */
static void post_all(const char *path, sb_hclient_req *r, outcome *o, int n, int want)
{
    for (int i = 0; i < n; i++)
        assert_int_equal(post(path, &r[i], &o[i], 3000), 0);
    run_all(o, n);
    for (int i = 0; i < n; i++) {
        assert_int_equal(o[i].err, 0);
        assert_int_equal(o[i].status, want);
    }
}

/* ---- tests --------------------------------------------------------------------------------- */

#define N_MANY 50

static void test_many_streams_one_connection(void **state)
{
    (void)state;
    setup_with(NULL);
    static sb_hclient_req r[N_MANY];
    static outcome o[N_MANY];
    for (int i = 0; i < N_MANY; i++) {
        assert_int_equal(post("/status/204", &r[i], &o[i], 3000), 0);
        assert_int_equal(o[i].calls, 0);
    }
    run_all(o, N_MANY);
    for (int i = 0; i < N_MANY; i++) {
        assert_int_equal(o[i].err, 0);
        assert_int_equal(o[i].status, 204);
    }
    assert_int_equal(fx.srv.connections, 1);
    assert_int_equal(fx.srv.streams, N_MANY);
    /* A second round reuses the connection. */
    for (int i = 0; i < 5; i++)
        assert_int_equal(post("/status/204", &r[i], &o[i], 3000), 0);
    run_all(o, 5);
    assert_int_equal(fx.srv.connections, 1);
    assert_int_equal(fx.srv.streams, N_MANY + 5);
    teardown();
}

static void test_request_headers(void **state)
{
    (void)state;
    setup_with(NULL);
    sb_hclient_req r;
    outcome o;
    assert_int_equal(post("/status/204?q=1", &r, &o, 2000), 0);
    run_until(&o);
    assert_int_equal(o.status, 204);
    char want[512];
    snprintf(want, sizeof(want),
             ":method: POST\n:scheme: http\n:authority: 127.0.0.1:%d\n:path: /status/204?q=1\n"
             "content-length: %zu\ncontent-type: application/json\nx-sig: abc\n",
             fx.srv.port, strlen(BODY));
    assert_string_equal(fx.srv.last_hdrs, want);
    assert_int_equal(fx.srv.last_body, strlen(BODY));

    /* SB_HCLIENT_H2_NO_INDEX: the extra headers are never indexed, the client's own are. */
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/x", fx.srv.port);
    memset(&o, 0, sizeof(o));
    assert_int_equal(sb_hclient_post_ex(fx.c, &r, url, EXTRA, strlen(EXTRA), BODY, strlen(BODY),
                                        2000, SB_HCLIENT_H2C | SB_HCLIENT_H2_NO_INDEX, on_done, &o),
                     0);
    run_until(&o);
    snprintf(want, sizeof(want),
             ":method: POST\n:scheme: http\n:authority: 127.0.0.1:%d\n:path: /x\n"
             "content-length: %zu\ncontent-type: application/json (never indexed)\n"
             "x-sig: abc (never indexed)\n",
             fx.srv.port, strlen(BODY));
    assert_string_equal(fx.srv.last_hdrs, want);

    /* No body, no extra headers, no path. */
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", fx.srv.port);
    memset(&o, 0, sizeof(o));
    assert_int_equal(
        sb_hclient_post_ex(fx.c, &r, url, NULL, 0, NULL, 0, 2000, SB_HCLIENT_H2C, on_done, &o), 0);
    run_until(&o);
    assert_int_equal(o.status, 404);
    assert_string_equal(fx.srv.last_path, "/");
    assert_int_equal(fx.srv.last_body, 0);
    teardown();
}

static void test_bad_extra_headers(void **state)
{
    (void)state;
    setup_with(NULL);
    const char *bad[] = {
        "Bad Name: x\r\n",
        "X: a\r\nb\r\n",
        "Host: x\r\n",
        "X: y",
        "X: y\n",
        ": y\r\n",
        "X: a\rb\r\n",
        "Connection: close\r\n",
        "TE: trailers\r\n",
        "X: a\x01\r\n",
        "Transfer-Encoding: chunked\r\n",
        "content-length: 1\r\n",
    };
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/", fx.srv.port);
    sb_hclient_req r;
    outcome o = {0};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(sb_hclient_post_ex(fx.c, &r, url, bad[i], strlen(bad[i]), NULL, 0, 1000,
                                            SB_HCLIENT_H2C, on_done, &o),
                         SB_EINVAL);
    assert_int_equal(sb_hclient_post_ex(fx.c, &r, url, NULL, 0, NULL, 0, 1000, 0x80, on_done, &o),
                     SB_EINVAL);
    run_for(10);
    assert_int_equal(o.calls, 0);
    assert_int_equal(fx.srv.connections, 0);
    teardown();
}

static void test_status_and_retry_after(void **state)
{
    (void)state;
    setup_with(NULL);
    const char *paths[] = {"/status/204", "/status/500", "/status/410", "/status/429"};
    int want[] = {204, 500, 410, 429};
    sb_hclient_req r[4];
    outcome o[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(post(paths[i], &r[i], &o[i], 2000), 0);
    run_all(o, 4);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(o[i].err, 0);
        assert_int_equal(o[i].status, want[i]);
        assert_int_equal(o[i].has_retry_after, want[i] == 429);
    }
    assert_string_equal(o[3].retry_after, "7");
    assert_int_equal(fx.srv.connections, 1);
    teardown();
}

static void test_big_response_body(void **state)
{
    (void)state;
    setup_with(NULL);
    sb_hclient_req r[2];
    outcome o[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(post("/big", &r[i], &o[i], 4000), 0);
    run_all(o, 2);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(o[i].err, 0);
        assert_int_equal(o[i].status, 200);
        assert_int_equal(o[i].body_bytes, BIG_BODY);
    }
    teardown();
}

static void test_timeout_keeps_connection(void **state)
{
    (void)state;
    setup_with(NULL);
    sb_hclient_req r, r2;
    outcome o, o2;
    assert_int_equal(post("/silent", &r, &o, 200), 0);
    assert_int_equal(post("/status/204", &r2, &o2, 2000), 0);
    run_until(&o2);
    assert_int_equal(o2.status, 204);
    run_until(&o);
    assert_int_equal(o.err, SB_ETIMEDOUT);
    assert_string_equal(o.error, "timed out after 200 ms");
    assert_int_equal(o.status, 0);
    run_for(30);
    assert_int_equal(fx.srv.rst_cancel, 1);
    assert_int_equal(post("/status/204", &r, &o, 2000), 0);
    run_until(&o);
    assert_int_equal(o.err, 0);
    assert_int_equal(o.status, 204);
    assert_int_equal(fx.srv.connections, 1);
    assert_int_equal(fx.srv.closed_conns, 0);
    teardown();
}

static void test_server_rst_stream(void **state)
{
    (void)state;
    setup_with(NULL);
    sb_hclient_req r;
    outcome o;
    assert_int_equal(post("/rst", &r, &o, 2000), 0);
    run_until(&o);
    assert_int_equal(o.err, SB_EIO);
    assert_non_null(strstr(o.error, "stream reset by 127.0.0.1 port"));
    assert_non_null(strstr(o.error, "(HTTP/2 error 2)"));
    /* REFUSED_STREAM: not processed, retried once. */
    assert_int_equal(post("/refuse-once", &r, &o, 2000), 0);
    run_until(&o);
    assert_int_equal(o.err, 0);
    assert_int_equal(o.status, 204);
    assert_int_equal(fx.srv.streams, 3);
    assert_int_equal(fx.srv.connections, 1);
    teardown();
}

static void test_goaway_retries_later_streams(void **state)
{
    (void)state;
    setup_with(NULL);
    fx.srv.goaway_n = 3;
    sb_hclient_req r[6];
    outcome o[6];
    post_all("/status/204", r, o, 6, 204);
    assert_int_equal(fx.srv.connections, 2);
    assert_int_equal(fx.srv.streams, 6 + 3); /* streams 7, 9, 11 again on the new connection */
    /* New requests go to the new connection. */
    assert_int_equal(post("/status/204", &r[0], &o[0], 3000), 0);
    run_until(&o[0]);
    assert_int_equal(o[0].status, 204);
    assert_int_equal(fx.srv.connections, 2);
    teardown();
}

static void test_server_closes_connection(void **state)
{
    (void)state;
    setup_with(NULL);
    fx.srv.close_conns = 1;
    sb_hclient_req r[3];
    outcome o[3];
    post_all("/close", r, o, 3, 204);
    assert_int_equal(fx.srv.connections, 2);

    /* Closed again on the retry: reported. */
    fx.srv.close_conns = 2;
    assert_int_equal(post("/close", &r[0], &o[0], 3000), 0);
    run_until(&o[0]);
    assert_int_equal(o[0].err, SB_EIO);
    assert_non_null(strstr(o[0].error, "closed"));
    assert_int_equal(fx.srv.connections, 3);
    teardown();
}

static void test_max_concurrent_streams(void **state)
{
    (void)state;
    setup_with(NULL);
    fx.srv.max_streams = 2;
    sb_hclient_req r[10];
    outcome o[10];
    post_all("/status/204", r, o, 10, 204);
    assert_true(fx.srv.max_open <= 2);
    assert_int_equal(fx.srv.connections, 1);
    /* Once SETTINGS is known, no stream is refused: 10 more, at most 2 open at a time. */
    int before = fx.srv.streams;
    post_all("/status/204", r, o, 10, 204);
    assert_int_equal(fx.srv.streams - before, 10);
    assert_true(fx.srv.max_open <= 2);
    /* The first connection was full at the server's limit: the rest went to a second one. */
    assert_int_equal(fx.srv.connections, 2);
    teardown();
}

static void test_response_headers_too_large(void **state)
{
    (void)state;
    setup_with(NULL);
    sb_hclient_req r;
    outcome o;
    assert_int_equal(post("/bighdr", &r, &o, 2000), 0);
    run_until(&o);
    assert_int_equal(o.err, SB_EPROTO);
    assert_non_null(strstr(o.error, "header section too large"));
    /* Only that stream was reset. */
    assert_int_equal(post("/status/204", &r, &o, 2000), 0);
    run_until(&o);
    assert_int_equal(o.status, 204);
    assert_int_equal(fx.srv.connections, 1);
    teardown();
}

static void test_large_request_body_and_ping(void **state)
{
    (void)state;
    setup_with(NULL);
    /* More than the server's 64 KiB initial windows: sent as its WINDOW_UPDATEs come. */
    size_t n = 300000;
    char *big = malloc(n);
    assert_non_null(big);
    memset(big, 'a', n);
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/status/204", fx.srv.port);
    sb_hclient_req r[2];
    outcome o[2];
    for (int i = 0; i < 2; i++) {
        memset(&o[i], 0, sizeof(o[i]));
        assert_int_equal(sb_hclient_post_ex(fx.c, &r[i], url, NULL, 0, big, n, 3000, SB_HCLIENT_H2C,
                                            on_done, &o[i]),
                         0);
    }
    run_all(o, 2);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(o[i].err, 0);
        assert_int_equal(o[i].status, 204);
    }
    assert_int_equal(fx.srv.last_body, n);
    assert_int_equal(fx.srv.ping_acks, 1); /* the server's PING was answered */
    free(big);
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
    if (alloc_fail_at > 0 && --alloc_fail_at == 0)
        return NULL;
    return realloc(ptr, size);
}

static void failing_free(void *ptr, void *ud)
{
    (void)ud;
    free(ptr);
}

/* Every allocation on the way of two requests (the first opens the connection) fails in turn:
 * post reports SB_ENOMEM, or done runs with an error or success; nothing hangs or leaks. */
static void test_out_of_memory(void **state)
{
    (void)state;
    static const sb_allocator failing = {failing_malloc, failing_realloc, failing_free, NULL};
    int failures = 0, last_failures = 0;
    for (int at = 1; at <= 150; at++) {
        last_failures = failures;
        setup_with(NULL);
        sb_alloc_set(&failing);
        alloc_fail_at = at;
        sb_hclient_req r;
        outcome o;
        for (int i = 0; i < 2; i++) {
            int rc = post("/status/204", &r, &o, 2000);
            if (rc == SB_ENOMEM) {
                failures++;
                continue;
            }
            assert_int_equal(rc, 0);
            run_until(&o);
            assert_true(o.err == 0 || o.err == SB_ENOMEM || o.err == SB_EIO || o.err == SB_EPROTO);
            if (o.err)
                failures++;
            else
                assert_int_equal(o.status, 204);
        }
        alloc_fail_at = 0;
        teardown();
        sb_alloc_set(NULL);
    }
    assert_true(failures > 0);
    assert_int_equal(failures, last_failures); /* the last round had no failing allocation */
}

static bool server_saw(void *arg)
{
    return fx.srv.streams >= *(int *)arg;
}

static void test_close_in_flight(void **state)
{
    (void)state;
    setup_with(NULL);
    sb_hclient_req r[5];
    outcome o[5];
    for (int i = 0; i < 5; i++)
        assert_int_equal(post("/silent", &r[i], &o[i], 5000), 0);
    int n = 5;
    run_until_fn(server_saw, &n);
    /* And one still waiting for a connection that resolves a name. */
    char url[64];
    snprintf(url, sizeof(url), "http://localhost:%d/silent", fx.srv.port);
    sb_hclient_req r6;
    outcome o6 = {0};
    assert_int_equal(sb_hclient_post_ex(fx.c, &r6, url, NULL, 0, BODY, strlen(BODY), 5000,
                                        SB_HCLIENT_H2C, on_done, &o6),
                     0);
    sb_hclient_close(fx.c, on_closed, &fx.closed);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(o[i].calls, 1);
        assert_int_equal(o[i].err, SB_ECANCELED);
    }
    assert_int_equal(o6.calls, 1);
    assert_int_equal(o6.err, SB_ECANCELED);
    assert_false(fx.closed);
    server_stop(&fx.srv);
    uv_close((uv_handle_t *)&fx.dog, NULL);
    uv_close((uv_handle_t *)&fx.tick, NULL);
    uv_run(&fx.loop, UV_RUN_DEFAULT);
    assert_true(fx.closed);
    assert_int_equal(uv_loop_close(&fx.loop), 0);
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
    setup_with(&cfg);
    sb_hclient_req r[2];
    outcome o[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(post("/status/204", &r[i], &o[i], 2000), 0);
    run_all(o, 2);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(o[i].err, SB_EACCES);
        assert_string_equal(o[i].refused_why, "loopback");
    }
    assert_int_equal(checks, 1); /* one connection for both */
    char url[64];
    snprintf(url, sizeof(url), "http://localhost:%d/", fx.srv.port);
    memset(&o[0], 0, sizeof(o[0]));
    assert_int_equal(sb_hclient_post_ex(fx.c, &r[0], url, NULL, 0, NULL, 0, 2000, SB_HCLIENT_H2C,
                                        on_done, &o[0]),
                     0);
    run_until(&o[0]);
    assert_int_equal(o[0].err, SB_EACCES);
    run_for(20);
    assert_int_equal(fx.srv.connections, 0);
    teardown();
}

static void test_idle_timeout(void **state)
{
    (void)state;
    sb_hclient_config cfg = {0, 50, 8, NULL, NULL};
    setup_with(&cfg);
    sb_hclient_req r;
    outcome o;
    assert_int_equal(post("/status/204", &r, &o, 2000), 0);
    run_until(&o);
    run_for(150);
    assert_int_equal(fx.srv.closed_conns, 1);
    assert_int_equal(post("/status/204", &r, &o, 2000), 0);
    run_until(&o);
    assert_int_equal(o.err, 0);
    assert_int_equal(fx.srv.connections, 2);
    teardown();
}

/* done posts the next request with the same sb_hclient_req (as the dispatcher does). */
static int chain_left;

static void on_chain_done(sb_hclient_req *r, const sb_hclient_result *res)
{
    outcome *o = r->ud;
    assert_int_equal(res->err, 0);
    assert_int_equal(res->status, 429);
    assert_int_equal(res->retry_after_len, 1);
    if (chain_left-- > 0) {
        char url[64];
        snprintf(url, sizeof(url), "http://127.0.0.1:%d/status/429", fx.srv.port);
        assert_int_equal(sb_hclient_post_ex(fx.c, r, url, NULL, 0, BODY, strlen(BODY), 2000,
                                            SB_HCLIENT_H2C, on_chain_done, o),
                         0);
    }
    o->calls++;
}

static bool chain_done(void *arg)
{
    return ((outcome *)arg)->calls >= 20;
}

static void test_post_from_done(void **state)
{
    (void)state;
    setup_with(NULL);
    sb_hclient_req r[4];
    outcome o = {0};
    chain_left = 16;
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/status/429", fx.srv.port);
    for (int i = 0; i < 4; i++)
        assert_int_equal(sb_hclient_post_ex(fx.c, &r[i], url, NULL, 0, BODY, strlen(BODY), 2000,
                                            SB_HCLIENT_H2C, on_chain_done, &o),
                         0);
    run_until_fn(chain_done, &o);
    assert_int_equal(o.calls, 20);
    assert_int_equal(fx.srv.connections, 1);
    assert_int_equal(fx.srv.streams, 20);
    teardown();
}

static void test_h1_and_h2c_side_by_side(void **state)
{
    (void)state;
    setup_with(NULL);
    /* An HTTP/1.1 request to the h2c-only server fails (nghttp2 rejects the bytes), and does
     * not disturb the h2c connection. */
    sb_hclient_req r[2];
    outcome o[2];
    assert_int_equal(post("/status/204", &r[0], &o[0], 2000), 0);
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/status/204", fx.srv.port);
    memset(&o[1], 0, sizeof(o[1]));
    assert_int_equal(sb_hclient_post(fx.c, &r[1], url, NULL, 0, NULL, 0, 2000, on_done, &o[1]), 0);
    run_all(o, 2);
    assert_int_equal(o[0].status, 204);
    assert_true(o[1].err != 0);
    assert_int_equal(fx.srv.connections, 2);
    teardown();
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN); /* as src/main.c does; hclient.h requires it */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_many_streams_one_connection),
        cmocka_unit_test(test_request_headers),
        cmocka_unit_test(test_bad_extra_headers),
        cmocka_unit_test(test_status_and_retry_after),
        cmocka_unit_test(test_big_response_body),
        cmocka_unit_test(test_timeout_keeps_connection),
        cmocka_unit_test(test_server_rst_stream),
        cmocka_unit_test(test_goaway_retries_later_streams),
        cmocka_unit_test(test_server_closes_connection),
        cmocka_unit_test(test_max_concurrent_streams),
        cmocka_unit_test(test_response_headers_too_large),
        cmocka_unit_test(test_large_request_body_and_ping),
        cmocka_unit_test(test_out_of_memory),
        cmocka_unit_test(test_close_in_flight),
        cmocka_unit_test(test_addr_check_refuses),
        cmocka_unit_test(test_idle_timeout),
        cmocka_unit_test(test_post_from_done),
        cmocka_unit_test(test_h1_and_h2c_side_by_side),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
