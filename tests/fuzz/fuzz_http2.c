/*
 * libFuzzer target for the HTTP/2 adapter: arbitrary bytes as the client side of an h2c
 * connection, fed through the real adapter (src/net/http2.c, nghttp2 underneath) on a
 * connection with no socket. The router behind it answers the ways handlers do: at once,
 * "Trailers-Only" (headers, no body), later from the loop (after the input, some before the
 * connection is gone and some after), and as a stream with trailers (gRPC's shape).
 *
 * Input: the first byte picks how the rest is split into reads and whether the client
 * preface is sent first (so the fuzzer need not find it); the rest are the client's bytes.
 * Beyond "never crash, never leak" it checks that every request held by a handler is
 * answered exactly once, that an abort callback comes at most once and never after the end
 * of a stream, and that the server's output is a well-formed sequence of frames.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "net/conn.h"
#include "net/http2.h"
#include "net/loop.h"
#include "net/router.h"
#include "switchboard/config.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            abort();                                                                               \
    } while (0)

#define MAX_HELD 64

static sb_loop *loop;
static sb_router *router;
static sb_config cfg;

static sb_req *held[MAX_HELD];
static int nheld;
static sb_req *streams[MAX_HELD];
static int nstreams;
static int aborts;

static void h_now(sb_req *req, void *ud)
{
    (void)ud;
    sb_resp_header(req, "X-Mixed-Case", sb_str_from("v"));
    sb_resp_send(req, 200, "application/json", "{\"ok\":true}", 11);
}

static void h_trailers_only(sb_req *req, void *ud)
{
    (void)ud;
    sb_resp_header(req, "grpc-status", sb_str_from("5"));
    sb_resp_send(req, 200, "application/grpc", NULL, 0);
}

static void h_later(sb_req *req, void *ud)
{
    (void)ud;
    if (nheld == MAX_HELD) {
        sb_resp_problem(req, 503, "busy", "too many held");
        return;
    }
    held[nheld++] = req;
}

static void on_stream_abort(sb_req *req, void *ud)
{
    (void)ud;
    for (int i = 0; i < nstreams; i++) {
        if (streams[i] == req) {
            streams[i] = streams[--nstreams];
            aborts++;
            return;
        }
    }
    CHECK(!"abort callback for a stream that is not open");
}

static void h_stream(sb_req *req, void *ud)
{
    (void)ud;
    if (nstreams == MAX_HELD) {
        sb_resp_problem(req, 503, "busy", "too many streams");
        return;
    }
    sb_req_on_abort(req, on_stream_abort, NULL);
    if (sb_resp_stream_begin(req, 200, "application/grpc", 0, NULL) != 0)
        return;
    streams[nstreams++] = req;
    /* The body echoes the request body's length as one gRPC-framed message. */
    char msg[5 + 8] = {0};
    size_t n = req->body.len;
    memcpy(msg + 5, &n, sizeof n);
    msg[4] = 8;
    sb_resp_stream_write(req, msg, sizeof msg);
}

static void setup(void)
{
    char *argv[] = {"fuzz",
                    "--dev",
                    "--http.max-body-bytes",
                    "40000",
                    "--http2.connection-window-size",
                    "64KiB",
                    "--http2.max-header-list-size",
                    "1KiB",
                    "--http2.max-concurrent-streams",
                    "16",
                    "--http2.max-resets-per-second",
                    "20",
                    "--http.max-headers",
                    "16",
                    "--log.level",
                    "error",
                    NULL};
    CHECK(sb_config_load(&cfg, (int)(sizeof argv / sizeof argv[0]) - 1, argv, NULL, NULL, NULL,
                         0) == 0);
    loop = sb_calloc(1, sizeof *loop);
    CHECK(loop && uv_loop_init(&loop->uv) == 0);
    sb_buf_init(&loop->staging, SB_CONN_OUT_MAX);
    sb_buf_init(&loop->logbuf, 1 << 20);
    loop->live.idle_timeout_ms = 60000;
    loop->live.body_timeout_ms = 30000;
    loop->live.header_timeout_ms = 10000;
    loop->max_connections = 16;
    loop->reqid_prefix = 0x1234;
    CHECK(sb_router_new(&router) == 0);
    sb_router_add(router, "GET", "/now", h_now, NULL);
    sb_router_add(router, "POST", "/now", h_now, NULL);
    sb_router_add(router, NULL, "/trailers-only", h_trailers_only, NULL);
    sb_router_add(router, NULL, "/later", h_later, NULL);
    sb_router_add(router, NULL, "/stream", h_stream, NULL);
    loop->router = router;
}

/* The server's bytes must be frames back to back (after nothing: h2c has no server
 * preface beyond SETTINGS), each within the default SETTINGS_MAX_FRAME_SIZE. */
static void check_frames(const sb_buf *out)
{
    size_t o = 0;
    bool first = true;
    while (o < out->len) {
        CHECK(out->len - o >= 9);
        const uint8_t *h = (const uint8_t *)out->base + o;
        size_t len = (size_t)h[0] << 16 | (size_t)h[1] << 8 | h[2];
        CHECK(len <= 16384);
        if (first)
            CHECK(h[3] == 4); /* SETTINGS comes first */
        first = false;
        CHECK(out->len - o >= 9 + len);
        o += 9 + len;
    }
}

static void answer_held(int upto)
{
    while (nheld > upto) {
        sb_req *req = held[--nheld];
        sb_resp_send(req, 200, "text/plain", "later", 5);
    }
}

static void end_streams(void)
{
    while (nstreams > 0) {
        /* Names and values in memory that is gone when the call returns, as a handler's
         * stack often is: the adapter must copy them. */
        char *mem = malloc(32);
        CHECK(mem);
        memcpy(mem, "grpc-statusGrpc-Message0fine", 28);
        sb_http_header trailers[] = {{{mem, 11}, {mem + 23, 1}}, {{mem + 11, 12}, {mem + 24, 4}}};
        sb_req *req = streams[--nstreams];
        sb_resp_stream_end_trailers(req, trailers, 2);
        memset(mem, 'X', 32);
        free(mem);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!loop)
        setup();
    if (size < 1)
        return 0;
    uint8_t ctl = data[0];
    data++;
    size--;
    size_t chunk = (size_t)(ctl >> 1) * 7 + 1;
    nheld = nstreams = aborts = 0;

    sb_conn *c = sb_calloc(1, sizeof *c);
    CHECK(c);
    c->loop = loop;
    uv_tcp_init(&loop->uv, &c->tcp);
    loop->conns = c;
    loop->num_conns = 1;
    sb_buf_init(&c->in, 1 << 20);
    sb_buf_init(&c->out, SB_CONN_OUT_MAX);
    sb_buf_init(&c->wout, SB_CONN_OUT_MAX);
    c->in_callback = true; /* as inside a read: nothing is flushed to the (absent) socket */
    c->reading = true;
    CHECK(sb__h2_attach_with(c, &cfg) == 0);

    sb_buf all;
    sb_buf_init(&all, 64 << 20);
    if (ctl & 1)
        CHECK(sb_buf_append(&c->in, SB_H2_PREFACE, SB_H2_PREFACE_LEN) == 0);
    size_t off = 0;
    do {
        size_t n = size - off < chunk ? size - off : chunk;
        if (c->closing || !c->proto)
            break;
        CHECK(sb_buf_append(&c->in, data + off, n) == 0);
        off += n;
        c->proto->on_data(c);
        if (c->out.len) {
            sb_buf_append(&all, c->out.base, c->out.len);
            sb_buf_reset(&c->out);
        }
        /* A handler answering from the loop between reads. */
        if (nheld > 2 && !c->closing)
            answer_held(nheld / 2);
    } while (off < size);

    /* Half of what is held is answered while the connection lives, the rest after. */
    if (!c->closing && c->proto) {
        answer_held(nheld / 2);
        if (ctl & 2)
            end_streams();
        c->proto->on_data(c);
        if (c->out.len)
            sb_buf_append(&all, c->out.base, c->out.len);
        sb_buf_reset(&c->out);
    }
    check_frames(&all);
    sb_buf_free(&all);
    int streams_open = nstreams;
    if (!uv_is_closing((uv_handle_t *)&c->tcp))
        sb_conn_abort(c); /* on_close: abort callbacks, held requests detached */
    CHECK(nstreams == 0);
    CHECK(aborts >= streams_open);
    answer_held(0);
    uv_run(&loop->uv, UV_RUN_NOWAIT); /* the close callback frees c */
    loop->conns = NULL;
    loop->num_conns = 0;
    sb_buf_reset(&loop->logbuf);
    return 0;
}
