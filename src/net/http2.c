#include "net/http2.h"

#include <nghttp2/nghttp2.h>
#include <pthread.h>
#include <stdio.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
#include "net/router.h"
#include "net/server_internal.h"
#include "switchboard/error.h"

#define STREAM_ARENA_INLINE 1024
#define STREAM_ARENA_MAX    (4 * 1024 * 1024)
#define TLS_BATCH           (64 * 1024) /* plaintext encrypted per SSL_write batch */
#define MAX_BLOCK_FRAMES    64          /* HEADERS + CONTINUATION frames of one header block */
#define HDRS_FIRST          16

typedef struct h2_conn h2_conn;

typedef struct h2_stream {
    sb_req req;  /* first: the adapter casts back */
    h2_conn *h2; /* NULL once the connection is gone */
    struct h2_stream *prev, *next;
    int32_t id;
    sb_http_header *hdrs; /* in the arena */
    size_t nhdrs, hdrs_cap;
    size_t hdr_bytes; /* decoded header list size, RFC 9113 §6.5.2 accounting */
    int64_t content_length;
    sb_buf body;          /* request body, at most http.max_body_bytes */
    sb_buf out;           /* response body not yet taken by nghttp2 */
    size_t out_off;       /* taken from out so far */
    nghttp2_nv *trailers; /* in the arena */
    size_t ntrailers;
    void (*abort_fn)(sb_req *req, void *ud);
    void *abort_ud;
    void (*writable_fn)(sb_req *req, void *ud); /* sb_req_on_writable */
    void *writable_ud;
    bool want_writable; /* its queue went under the pacing mark: call writable_fn */
    bool grpc;          /* a streamed application/grpc response: ends with grpc-status */
    int64_t hb_ms;
    sb_str hb; /* in the arena */
    uint64_t hb_due_ms;
    bool *gone;        /* set when the stream is freed during a call that reports it */
    size_t reserve;    /* admitted: bytes of h2->reserved this stream's body holds */
    size_t unconsumed; /* not admitted: body bytes whose stream window is not given back */
    bool admitted;     /* its body gets flow-control window (admit) */
    bool headers_done; /* the request's header block is complete */
    bool too_large;    /* header list over a limit */
    bool dispatched;   /* handed to the router (or refused): the request is the handler's */
    bool closed;       /* nghttp2 closed the stream */
    bool streaming;    /* a streamed response is open (sb_resp_stream_begin) */
    bool out_eof;      /* the response body is complete in out */
    bool deferred;     /* the data source said DEFERRED: resume when out grows */
    bool discard;      /* request body no longer wanted */
    _Alignas(16) char arena_first[STREAM_ARENA_INLINE];
} h2_stream;

struct h2_conn {
    sb_conn *c;
    nghttp2_session *s;
    h2_stream *streams; /* every stream with an sb_req, until released */
    size_t max_body, max_hdr_list, max_headers, conn_window;
    size_t max_streams; /* ours to enforce: nghttp2 is told "unlimited" (see patch_settings) */
    size_t nopen;       /* streams with an sb_req that nghttp2 has not closed */
    int max_resets;
    size_t reserved; /* request-body bytes reserved by admitted streams (see admit) */
    size_t queued;   /* response bytes in streams' out buffers, not yet taken by nghttp2 */
    size_t block_bytes, block_frames; /* header block being received */
    uint64_t rst_window_ms;
    int rst_count;
    int busy;          /* inside nghttp2 (recv or send): do not re-enter */
    bool fatal;        /* close once the queued output is out */
    bool settings_out; /* the first SETTINGS frame went through pump */
    bool settings_in;  /* the client's preface SETTINGS arrived: http.header_timeout is over */
    sb_buf wbuf;       /* TLS: plaintext frames gathered for one SSL_write (produce) */
    bool draining;
};

static void h2_on_data(sb_conn *c);
static void h2_on_timeout(sb_conn *c, sb_deadline_kind kind);
static void h2_on_writable(sb_conn *c);
static void h2_on_drain(sb_conn *c);
static void h2_on_close(sb_conn *c);
static void h2_send(sb_req *req, int status, sb_str ctype, const void *body, size_t len);
static int h2_stream_begin(sb_req *req, int status, sb_str ctype, int64_t hb_ms, sb_str hb);
static int h2_stream_write(sb_req *req, const void *data, size_t len);
static void h2_stream_end(sb_req *req);
static void h2_stream_end_trailers(sb_req *req, const sb_http_header *trailers, size_t n);
static void h2_on_abort(sb_req *req, void (*fn)(sb_req *req, void *ud), void *ud);
static size_t h2_stream_queued(sb_req *req);
static void h2_on_req_writable(sb_req *req, void (*fn)(sb_req *req, void *ud), void *ud);
static void kick(h2_conn *h2);
static void notify_writable(h2_conn *h2);
static void pump(h2_conn *h2);

static const sb_proto h2_proto = {
    .name = "h2",
    .on_data = h2_on_data,
    .on_timeout = h2_on_timeout,
    .on_writable = h2_on_writable,
    .on_drain = h2_on_drain,
    .on_close = h2_on_close,
};

static const sb_req_ops h2_ops = {
    .proto = "HTTP/2",
    .send = h2_send,
    .stream_begin = h2_stream_begin,
    .stream_write = h2_stream_write,
    .stream_end = h2_stream_end,
    .stream_end_trailers = h2_stream_end_trailers,
    .on_abort = h2_on_abort,
    .stream_queued = h2_stream_queued,
    .on_writable = h2_on_req_writable,
};

/* ---- nghttp2 allocations through the sb_alloc hooks ----------------------------------- */

static void *mem_malloc(size_t n, void *ud)
{
    (void)ud;
    return sb_malloc(n);
}

static void mem_free(void *p, void *ud)
{
    (void)ud;
    sb_free(p);
}

static void *mem_calloc(size_t n, size_t size, void *ud)
{
    (void)ud;
    return sb_calloc(n, size);
}

static void *mem_realloc(void *p, size_t n, void *ud)
{
    (void)ud;
    return sb_realloc(p, n);
}

static nghttp2_mem h2_mem = {NULL, mem_malloc, mem_free, mem_calloc, mem_realloc};

/* ---- streams ---------------------------------------------------------------------------- */

static uint64_t now_ms(h2_conn *h2)
{
    return uv_now(&h2->c->loop->uv);
}

static h2_stream *stream_new(h2_conn *h2, int32_t id)
{
    h2_stream *s = sb_malloc(sizeof *s);
    if (!s)
        return NULL;
    memset(s, 0, offsetof(h2_stream, arena_first));
    s->h2 = h2;
    s->id = id;
    s->content_length = -1;
    sb_buf_init(&s->body, h2->max_body);
    sb_buf_init(&s->out, SB_CONN_OUT_MAX);
    sb_req *req = &s->req;
    req->loop = h2->c->loop;
    req->ops = &h2_ops;
    req->transport = s;
    req->peer = h2->c->peer;
    req->tls_client_cert_sha256 = h2->c->has_client_cert ? h2->c->client_cert_sha256 : NULL;
    req->start_ns = sb_now_ns();
    sb_arena_init(&req->arena, s->arena_first, sizeof s->arena_first, STREAM_ARENA_MAX);
    s->next = h2->streams;
    if (h2->streams)
        h2->streams->prev = s;
    h2->streams = s;
    h2->nopen++;
    return s;
}

/*
 * Request bodies and flow control. A stream's body is buffered whole (the handler gets it at
 * once), so what a connection buffers is bounded by admission: a stream that starts sending a
 * body reserves its Content-Length (or http.max_body_bytes) out of
 * http2.connection_window_size; while the reservations of other streams fill it, the stream's
 * window is not replenished, so it can send at most http2.initial_window_size, and it is
 * admitted when earlier bodies are released. The first stream is always admitted, so a body
 * can always complete: no deadlock, whatever order the client sends DATA in. The connection
 * window is replenished at once (it does not bound anything the stream windows do not).
 */
static void admit(h2_conn *h2, h2_stream *s)
{
    size_t reserve = s->content_length >= 0 && (size_t)s->content_length < h2->max_body
                         ? (size_t)s->content_length
                         : h2->max_body;
    if (h2->reserved && h2->reserved + reserve > h2->conn_window)
        return;
    s->admitted = true;
    s->reserve = reserve;
    h2->reserved += reserve;
    if (s->unconsumed && !s->closed)
        nghttp2_session_consume_stream(h2->s, s->id, s->unconsumed);
    s->unconsumed = 0;
}

static void body_release(h2_stream *s)
{
    h2_conn *h2 = s->h2;
    sb_buf_free(&s->body);
    if (!h2)
        return;
    if (s->unconsumed && !s->closed)
        nghttp2_session_consume_stream(h2->s, s->id, s->unconsumed);
    s->unconsumed = 0;
    if (!s->admitted)
        return;
    s->admitted = false;
    h2->reserved -= s->reserve;
    s->reserve = 0;
    /* Room again: streams waiting with part of a body, oldest first (the list is newest
     * first, so walk to the end and back). */
    h2_stream *t = h2->streams;
    while (t && t->next)
        t = t->next;
    for (; t; t = t->prev)
        if (!t->admitted && t->unconsumed && !t->dispatched && !t->discard)
            admit(h2, t);
}

static void stream_unlink(h2_stream *s)
{
    h2_conn *h2 = s->h2;
    if (s->prev)
        s->prev->next = s->next;
    else if (h2->streams == s)
        h2->streams = s->next;
    if (s->next)
        s->next->prev = s->prev;
    s->prev = s->next = NULL;
}

/* Drops what a stream's response buffer still holds. */
static void out_drop(h2_stream *s)
{
    if (s->h2)
        s->h2->queued -= s->out.len - s->out_off;
    sb_buf_free(&s->out);
    s->out_off = 0;
}

static void stream_free(h2_stream *s)
{
    if (s->gone)
        *s->gone = true;
    body_release(s);
    if (s->h2) {
        if (!s->closed)
            nghttp2_session_set_stream_user_data(s->h2->s, s->id, NULL);
        stream_unlink(s);
    }
    out_drop(s);
    sb_arena_reset(&s->req.arena);
    sb_free(s);
}

static h2_stream *stream_of(h2_conn *h2, int32_t id)
{
    return nghttp2_session_get_stream_user_data(h2->s, id);
}

/* ---- responses -------------------------------------------------------------------------- */

static bool hop_by_hop(sb_str n)
{
    return sb_str_case_eq(n, "connection") || sb_str_case_eq(n, "keep-alive") ||
           sb_str_case_eq(n, "transfer-encoding") || sb_str_case_eq(n, "upgrade") ||
           sb_str_case_eq(n, "proxy-connection") || sb_str_case_eq(n, "content-length");
}

static nghttp2_nv nv(const char *name, size_t nlen, const char *value, size_t vlen)
{
    return (nghttp2_nv){(uint8_t *)name, (uint8_t *)value, nlen, vlen, NGHTTP2_NV_FLAG_NONE};
}

/* HTTP/2 field names are lower case (RFC 9113 §8.2.1): a copy in the arena when needed. */
static const char *lower_name(sb_arena *a, sb_str n)
{
    size_t i = 0;
    while (i < n.len && !(n.base[i] >= 'A' && n.base[i] <= 'Z'))
        i++;
    if (i == n.len)
        return n.base;
    char *p = sb_arena_alloc(a, n.len + 1);
    if (!p)
        return NULL;
    for (i = 0; i < n.len; i++) {
        char ch = n.base[i];
        p[i] = ch >= 'A' && ch <= 'Z' ? (char)(ch + 32) : ch;
    }
    p[n.len] = '\0';
    return p;
}

static ssize_t read_body(nghttp2_session *session, int32_t id, uint8_t *buf, size_t length,
                         uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    (void)ud;
    h2_stream *s = src->ptr;
    size_t avail = s->out.len - s->out_off;
    size_t n = avail < length ? avail : length;
    if (n) {
        memcpy(buf, s->out.base + s->out_off, n);
        s->out_off += n;
        s->h2->queued -= n;
        if (s->out_off == s->out.len) {
            sb_buf_reset(&s->out);
            s->out_off = 0;
        }
        /* A paced writer continues once what it queued is mostly taken (notify_writable). */
        if (s->writable_fn && s->streaming && s->out.len - s->out_off < SB_STREAM_MAX_QUEUED / 4)
            s->want_writable = true;
    }
    if (s->out.len == 0 && s->out_eof) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        if (s->ntrailers) {
            if (nghttp2_submit_trailer(session, id, s->trailers, s->ntrailers) == 0)
                *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        }
        sb_buf_free(&s->out);
        return (ssize_t)n;
    }
    if (n == 0) {
        s->deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    return (ssize_t)n;
}

/* Queues the response head: :status, content-type, content-length (clen >= 0), date,
 * x-request-id and the handler's headers. */
static int submit_head(h2_stream *s, int status, sb_str ctype, int64_t clen, bool with_body)
{
    sb_req *req = &s->req;
    nghttp2_nv nva[SB_REQ_MAX_RESP_HEADERS + 5];
    size_t n = 0;
    char st[4] = {(char)('0' + status / 100 % 10), (char)('0' + status / 10 % 10),
                  (char)('0' + status % 10), '\0'};
    nva[n++] = nv(":status", 7, st, 3);
    if (ctype.len)
        nva[n++] = nv("content-type", 12, ctype.base, ctype.len);
    char cl[24];
    if (clen >= 0) {
        int k = snprintf(cl, sizeof cl, "%lld", (long long)clen);
        nva[n++] = nv("content-length", 14, cl, (size_t)k);
    }
    const char *date = sb_loop_date(req->loop);
    nva[n++] = nv("date", 4, date, strlen(date));
    nva[n++] = nv("x-request-id", 12, req->request_id, req->request_id_len);
    for (int i = 0; i < req->num_resp_headers; i++) {
        const sb_http_header *h = &req->resp_headers[i];
        if (hop_by_hop(h->name))
            continue;
        const char *name = lower_name(&req->arena, h->name);
        if (!name)
            return SB_ENOMEM;
        nva[n++] = nv(name, h->name.len, h->value.base, h->value.len);
    }
    nghttp2_data_provider prd = {.source.ptr = s, .read_callback = read_body};
    int rc = nghttp2_submit_response(s->h2->s, s->id, nva, n, with_body ? &prd : NULL);
    return rc == 0 ? 0 : SB_EIO;
}

/* kick() on behalf of a stream operation: SB_ECANCELED if the stream ended meanwhile (the
 * connection closed while writing: its abort callback has run), else 0. */
static int kick_stream(h2_stream *s)
{
    bool gone = false;
    s->gone = &gone;
    kick(s->h2);
    if (gone)
        return SB_ECANCELED;
    s->gone = NULL;
    return 0;
}

static void h2_send(sb_req *req, int status, sb_str ctype, const void *body, size_t len)
{
    h2_stream *s = (h2_stream *)req;
    h2_conn *h2 = s->h2;
    sb_loop *loop = req->loop;
    req->responded = true;
    uint64_t dur = sb_now_ns() - req->start_ns;
    sb_stats_request(&loop->stats, status, dur);
    if (!h2 || s->closed) { /* the client left (or reset the stream) while the handler worked */
        sb_req_log_access(req, status, 0, dur);
        stream_free(s);
        return;
    }
    bool no_body = status < 200 || status == 204 || status == 304;
    bool with_body = !no_body && !req->head && len > 0;
    int rc = 0;
    if (with_body) {
        rc = sb_buf_append(&s->out, body, len);
        h2->queued += rc ? 0 : len;
        s->out_eof = true;
    }
    /* content-length only for a body (or a HEAD's would-be body): an empty response is one
     * HEADERS frame with END_STREAM and nothing more (gRPC's Trailers-Only). */
    int64_t clen = no_body || (len == 0 && !req->head) ? -1 : (int64_t)len;
    rc = rc ? rc : submit_head(s, status, ctype, clen, with_body);
    if (rc) {
        out_drop(s);
        nghttp2_submit_rst_stream(h2->s, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_INTERNAL_ERROR);
        sb_req_log_access(req, status, 0, dur);
    } else {
        sb_req_log_access(req, status, with_body ? len : 0, dur);
    }
    s->discard = true;
    body_release(s); /* the handler is done with req->body */
    kick(h2);
}

/* ---- streaming responses ---------------------------------------------------------------- */

static void h2_on_abort(sb_req *req, void (*fn)(sb_req *req, void *ud), void *ud)
{
    h2_stream *s = (h2_stream *)req;
    s->abort_fn = fn;
    s->abort_ud = ud;
}

static void arm_deadline(h2_conn *h2);

static size_t h2_stream_queued(sb_req *req)
{
    h2_stream *s = (h2_stream *)req;
    return s->out.len - s->out_off;
}

static void h2_on_req_writable(sb_req *req, void (*fn)(sb_req *req, void *ud), void *ud)
{
    h2_stream *s = (h2_stream *)req;
    s->writable_fn = fn;
    s->writable_ud = ud;
}

/* Calls the writable callbacks of paced streams whose queue has room again, then sends what
 * they wrote. Like the heartbeat path: busy while handler code runs, one pump after. */
static void notify_writable(h2_conn *h2)
{
    for (int round = 0; round < 64; round++) {
        bool any = false;
        h2->busy++;
        for (;;) {
            h2_stream *s = h2->streams;
            while (s && !(s->want_writable && s->streaming && !s->closed))
                s = s->next;
            if (!s)
                break;
            s->want_writable = false;
            any = true;
            s->writable_fn(&s->req, s->writable_ud);
        }
        h2->busy--;
        if (!any)
            return;
        sb_conn *c = h2->c;
        pump(h2); /* may close the connection: h2 is gone then */
        if (c->closing)
            return;
    }
}

static int h2_stream_begin(sb_req *req, int status, sb_str ctype, int64_t hb_ms, sb_str hb)
{
    h2_stream *s = (h2_stream *)req;
    h2_conn *h2 = s->h2;
    sb_loop *loop = req->loop;
    if (!h2 || s->closed || h2->draining || loop->draining) {
        s->abort_fn = NULL;
        sb_resp_problem(req, 503, "unavailable", "the server is shutting down");
        return SB_ECANCELED;
    }
    if (hb.len && !(s->hb.base = sb_arena_strndup(&req->arena, hb.base, hb.len)))
        hb.len = 0;
    s->hb.len = hb.len;
    s->hb_ms = hb.len ? hb_ms : 0;
    s->hb_due_ms = now_ms(h2) + (uint64_t)(s->hb_ms > 0 ? s->hb_ms : 0);
    req->responded = true;
    uint64_t dur = sb_now_ns() - req->start_ns;
    sb_stats_request(&loop->stats, status, dur);
    s->discard = true; /* req->body stays valid until the stream ends, as on HTTP/1.1 */
    if (submit_head(s, status, ctype, -1, true) != 0) {
        sb_req_log_access(req, status, 0, dur);
        s->abort_fn = NULL;
        nghttp2_submit_rst_stream(h2->s, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_INTERNAL_ERROR);
        kick(h2);
        return SB_EIO;
    }
    sb_req_log_access(req, status, 0, dur);
    s->streaming = true;
    s->out_eof = false;
    s->grpc = ctype.len >= 16 && strncasecmp(ctype.base, "application/grpc", 16) == 0;
    return kick_stream(s);
}

static void resume(h2_stream *s)
{
    if (s->deferred && s->h2 && !s->closed) {
        s->deferred = false;
        nghttp2_session_resume_data(s->h2->s, s->id);
    }
}

/* Ends a streamed response other than by the handler: tells it (abort callback) first. */
static void stream_abort(h2_stream *s, uint32_t error_code)
{
    void (*fn)(sb_req *, void *) = s->abort_fn;
    s->abort_fn = NULL;
    s->streaming = false;
    if (s->h2 && !s->closed)
        nghttp2_submit_rst_stream(s->h2->s, NGHTTP2_FLAG_NONE, s->id, error_code);
    if (fn)
        fn(&s->req, s->abort_ud);
}

static int h2_stream_write(sb_req *req, const void *data, size_t len)
{
    h2_stream *s = (h2_stream *)req;
    h2_conn *h2 = s->h2;
    if (!s->streaming || !h2 || s->closed)
        return SB_ECANCELED;
    if (len == 0)
        return 0;
    if (s->out.len - s->out_off + len > SB_STREAM_MAX_QUEUED ||
        h2->queued + len > SB_CONN_OUT_MAX) {
        /* The client does not read this stream (or, across its streams, the connection):
         * reset it; it reconnects and resumes. */
        sb_stat_add(&req->loop->stats.timeouts, 1);
        stream_abort(s, NGHTTP2_CANCEL);
        kick(h2);
        return SB_EAGAIN;
    }
    if (sb_buf_append(&s->out, data, len) != 0) {
        stream_abort(s, NGHTTP2_INTERNAL_ERROR);
        kick(h2);
        return SB_ECANCELED;
    }
    h2->queued += len;
    if (s->hb_ms > 0)
        s->hb_due_ms = now_ms(h2) + (uint64_t)s->hb_ms;
    resume(s);
    return kick_stream(s);
}

static void stream_finish(h2_stream *s)
{
    s->streaming = false;
    s->abort_fn = NULL;
    s->out_eof = true;
    resume(s);
}

static void h2_stream_end(sb_req *req)
{
    h2_stream *s = (h2_stream *)req;
    if (!s->streaming || !s->h2 || s->closed)
        return;
    stream_finish(s);
    kick(s->h2);
}

static void h2_stream_end_trailers(sb_req *req, const sb_http_header *t, size_t n)
{
    h2_stream *s = (h2_stream *)req;
    if (!s->streaming || !s->h2 || s->closed)
        return;
    nghttp2_nv *nva = n ? sb_arena_alloc(&req->arena, n * sizeof *nva) : NULL;
    size_t k = 0;
    for (size_t i = 0; nva && i < n; i++) {
        /* Copied: they go out after this call returns (when the body before them has). */
        char *name = sb_arena_strndup(&req->arena, t[i].name.base, t[i].name.len);
        for (size_t j = 0; name && j < t[i].name.len; j++)
            name[j] = name[j] >= 'A' && name[j] <= 'Z' ? (char)(name[j] + 32) : name[j];
        char *value =
            sb_arena_strndup(&req->arena, t[i].value.base ? t[i].value.base : "", t[i].value.len);
        if (!name || !value)
            break;
        nva[k++] = nv(name, t[i].name.len, value, t[i].value.len);
    }
    s->trailers = nva;
    s->ntrailers = k;
    stream_finish(s);
    kick(s->h2);
}

/* ---- requests --------------------------------------------------------------------------- */

static void refuse(h2_stream *s, int status, const char *slug, const char *detail)
{
    s->dispatched = true;
    s->discard = true;
    sb_req_set_request_id(&s->req, SB_STR_NULL);
    sb_stat_add(&s->req.loop->stats.protocol_errors, 1);
    sb_resp_problem(&s->req, status, slug, detail);
}

static void dispatch(h2_stream *s)
{
    if (s->dispatched)
        return;
    sb_req *req = &s->req;
    if (s->too_large) {
        refuse(s, 431, "headers-too-large",
               "the header list is larger than http2.max_header_list_size or has more than "
               "http.max_headers fields");
        return;
    }
    s->dispatched = true;
    req->headers = s->hdrs;
    req->num_headers = s->nhdrs;
    req->body = s->body.len ? (sb_str){s->body.base, s->body.len} : SB_STR_NULL;
    req->head = sb_str_eq_lit(req->method, "HEAD");
    const sb_http_header *rid = sb_req_header(req, "x-request-id");
    sb_req_set_request_id(req, rid ? rid->value : SB_STR_NULL);
    sb_router_dispatch(req->loop->router, req);
}

static int on_begin_frame(nghttp2_session *session, const nghttp2_frame_hd *hd, void *ud)
{
    h2_conn *h2 = ud;
    if (hd->type == NGHTTP2_HEADERS || hd->type == NGHTTP2_PUSH_PROMISE) {
        h2->block_bytes = hd->length;
        h2->block_frames = 1;
    } else if (hd->type == NGHTTP2_CONTINUATION) {
        h2->block_bytes += hd->length;
        h2->block_frames++;
    } else {
        return 0;
    }
    if (h2->block_frames > MAX_BLOCK_FRAMES || h2->block_bytes > 4 * h2->max_hdr_list + 16384) {
        sb_stat_add(&h2->c->loop->stats.protocol_errors, 1);
        nghttp2_session_terminate_session(session, NGHTTP2_ENHANCE_YOUR_CALM);
        h2->fatal = true;
    }
    return 0;
}

static int on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *ud)
{
    h2_conn *h2 = ud;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    if (h2->fatal || h2->draining || h2->nopen >= h2->max_streams) {
        /* RFC 9113 §5.1.2: a stream error, not a connection error; the client may retry it.
         * The stream gets no sb_req: its headers and body are ignored. */
        nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame->hd.stream_id,
                                  NGHTTP2_REFUSED_STREAM);
        return 0;
    }
    h2_stream *s = stream_new(h2, frame->hd.stream_id);
    if (!s)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* RST_STREAM INTERNAL_ERROR */
    nghttp2_session_set_stream_user_data(session, frame->hd.stream_id, s);
    return 0;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags, void *ud)
{
    (void)flags;
    h2_conn *h2 = ud;
    h2_stream *s = stream_of(h2, frame->hd.stream_id);
    if (!s)
        return 0;
    s->hdr_bytes += namelen + valuelen + 32;
    if (s->hdr_bytes > 4 * h2->max_hdr_list) {
        /* Far past what SETTINGS_MAX_HEADER_LIST_SIZE announced: not a client to serve. */
        sb_stat_add(&h2->c->loop->stats.protocol_errors, 1);
        nghttp2_session_terminate_session(session, NGHTTP2_ENHANCE_YOUR_CALM);
        h2->fatal = true;
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    if (s->hdr_bytes > h2->max_hdr_list)
        s->too_large = true;
    if (s->too_large || frame->headers.cat != NGHTTP2_HCAT_REQUEST || s->dispatched)
        return 0; /* trailers and refused requests: counted, not kept */
    sb_req *req = &s->req;
    char *v = sb_arena_strndup(&req->arena, (const char *)value, valuelen);
    if (!v)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    sb_str val = {v, valuelen};
    if (namelen && name[0] == ':') {
        sb_str n = {(const char *)name, namelen};
        if (sb_str_eq_lit(n, ":method")) {
            req->method = val;
        } else if (sb_str_eq_lit(n, ":path")) {
            const char *q = memchr(v, '?', valuelen);
            req->path = (sb_str){v, q ? (size_t)(q - v) : valuelen};
            req->query = q ? (sb_str){q + 1, valuelen - (size_t)(q - v) - 1} : SB_STR_NULL;
        } else if (sb_str_eq_lit(n, ":authority")) {
            req->authority = val;
        }
        return 0;
    }
    if (s->nhdrs >= h2->max_headers) {
        s->too_large = true;
        return 0;
    }
    if (s->nhdrs == s->hdrs_cap) {
        size_t cap = s->hdrs_cap ? s->hdrs_cap * 2 : HDRS_FIRST;
        sb_http_header *nh = sb_arena_alloc(&req->arena, cap * sizeof *nh);
        if (!nh)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        if (s->nhdrs)
            memcpy(nh, s->hdrs, s->nhdrs * sizeof *nh);
        s->hdrs = nh;
        s->hdrs_cap = cap;
    }
    char *nm = sb_arena_strndup(&req->arena, (const char *)name, namelen);
    if (!nm)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    s->hdrs[s->nhdrs++] = (sb_http_header){{nm, namelen}, val};
    if (namelen == 4 && memcmp(name, "host", 4) == 0 && !req->authority.len)
        req->authority = val;
    if (namelen == 14 && memcmp(name, "content-length", 14) == 0) {
        int64_t cl = 0;
        for (size_t i = 0; i < valuelen && cl <= INT64_MAX / 10 - 10; i++)
            cl = cl * 10 + (v[i] - '0');
        s->content_length = cl;
    }
    return 0;
}

static int on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t id, const uint8_t *data,
                         size_t len, void *ud)
{
    (void)flags;
    h2_conn *h2 = ud;
    nghttp2_session_consume_connection(session, len);
    h2_stream *s = stream_of(h2, id);
    if (!s || s->discard || s->dispatched) {
        nghttp2_session_consume_stream(session, id, len);
        return 0;
    }
    if (s->body.len + len > h2->max_body) {
        nghttp2_session_consume_stream(session, id, len);
        body_release(s);
        refuse(s, 413, "body-too-large", "the body is larger than http.max_body_bytes");
        return 0;
    }
    if (sb_buf_append(&s->body, data, len) != 0) {
        nghttp2_session_consume_stream(session, id, len);
        body_release(s);
        refuse(s, 500, "internal", "out of memory");
        return 0;
    }
    if (!s->admitted) {
        s->unconsumed += len;
        admit(h2, s); /* gives back what it has received so far if admitted */
    } else {
        nghttp2_session_consume_stream(session, id, len);
    }
    return 0;
}

static void count_reset(h2_conn *h2)
{
    uint64_t now = now_ms(h2);
    if (now - h2->rst_window_ms >= 1000) {
        h2->rst_window_ms = now;
        h2->rst_count = 0;
    }
    if (++h2->rst_count > h2->max_resets && !h2->fatal) {
        sb_stat_add(&h2->c->loop->stats.protocol_errors, 1);
        char peer[INET6_ADDRSTRLEN];
        sb_req_peer_str(&h2->c->peer, peer, sizeof peer);
        sb_log(SB_LOG_WARN, "http2: too many stream resets, closing (rapid reset)", "remote", peer,
               NULL);
        nghttp2_session_terminate_session(h2->s, NGHTTP2_ENHANCE_YOUR_CALM);
        h2->fatal = true;
    }
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *ud)
{
    (void)session;
    h2_conn *h2 = ud;
    switch (frame->hd.type) {
    case NGHTTP2_RST_STREAM:
        count_reset(h2);
        return 0;
    case NGHTTP2_SETTINGS:
        h2->settings_in = true;
        return 0;
    case NGHTTP2_HEADERS:
    case NGHTTP2_DATA:
        break;
    default:
        return 0;
    }
    h2_stream *s = stream_of(h2, frame->hd.stream_id);
    if (!s || s->dispatched)
        return 0;
    if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
        s->headers_done = true;
        if (s->too_large) {
            dispatch(s); /* 431 */
            return 0;
        }
        if (s->content_length > (int64_t)h2->max_body) {
            refuse(s, 413, "body-too-large", "the body is larger than http.max_body_bytes");
            return 0;
        }
    }
    if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)
        dispatch(s);
    return 0;
}

static int on_stream_close(nghttp2_session *session, int32_t id, uint32_t error_code, void *ud)
{
    (void)session;
    (void)error_code;
    h2_conn *h2 = ud;
    h2_stream *s = stream_of(h2, id);
    if (!s)
        return 0;
    s->closed = true;
    h2->nopen--;
    if (s->streaming)
        stream_abort(s, NGHTTP2_NO_ERROR); /* closed: nothing is sent */
    if (!s->dispatched || s->req.responded)
        stream_free(s);
    /* else the handler still holds the request: h2_send frees it */
    return 0;
}

static int on_invalid_frame(nghttp2_session *session, const nghttp2_frame *frame, int lib_error,
                            void *ud)
{
    (void)session;
    (void)frame;
    (void)lib_error;
    h2_conn *h2 = ud;
    sb_stat_add(&h2->c->loop->stats.protocol_errors, 1);
    return 0;
}

static nghttp2_session_callbacks *callbacks;
static pthread_once_t callbacks_once = PTHREAD_ONCE_INIT;

static void make_callbacks(void)
{
    if (nghttp2_session_callbacks_new(&callbacks) != 0)
        return;
    nghttp2_session_callbacks_set_on_begin_frame_callback(callbacks, on_begin_frame);
    nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(callbacks, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, on_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, on_stream_close);
    nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(callbacks, on_invalid_frame);
}

/* ---- the connection --------------------------------------------------------------------- */

int sb_h2_attach(sb_conn *c)
{
    return sb__h2_attach_with(c, sb__server_config(c->loop->server));
}

int sb__h2_attach_with(sb_conn *c, const sb_config *cfg)
{
    pthread_once(&callbacks_once, make_callbacks);
    if (!callbacks)
        return SB_ENOMEM;
    h2_conn *h2 = sb_calloc(1, sizeof *h2);
    nghttp2_option *opt = NULL;
    if (!h2 || nghttp2_option_new(&opt) != 0)
        goto fail;
    h2->c = c;
    sb_buf_init(&h2->wbuf, SB_CONN_OUT_MAX);
    h2->max_body = cfg->http_max_body_bytes;
    h2->max_hdr_list = cfg->http2_max_header_list_size;
    h2->max_headers = cfg->http_max_headers;
    h2->max_resets = cfg->http2_max_resets_per_second;
    h2->max_streams = cfg->http2_max_concurrent_streams;
    size_t win = cfg->http2_connection_window_size;
    if (win < h2->max_body + 65536)
        win = h2->max_body + 65536;
    if (win > INT32_MAX)
        win = INT32_MAX;
    h2->conn_window = win;
    size_t swin =
        cfg->http2_initial_window_size > INT32_MAX ? INT32_MAX : cfg->http2_initial_window_size;

    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_no_closed_streams(opt, 1);
#ifdef SB_HAVE_NGHTTP2_RESET_LIMIT
    /* Ours (count_reset) answers first and with ENHANCE_YOUR_CALM; nghttp2's is a backstop. */
    nghttp2_option_set_stream_reset_rate_limit(opt, (uint64_t)h2->max_resets * 10,
                                               (uint64_t)h2->max_resets * 2);
#endif
#ifdef SB_HAVE_NGHTTP2_MAX_CONTINUATIONS
    nghttp2_option_set_max_continuations(opt, MAX_BLOCK_FRAMES);
#endif
    if (nghttp2_session_server_new3(&h2->s, callbacks, h2, opt, &h2_mem) != 0)
        goto fail;
    nghttp2_option_del(opt);
    opt = NULL;
    /* MAX_CONCURRENT_STREAMS first: patch_settings puts the real value on the wire. */
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 0x7fffffffu},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, (uint32_t)swin},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, (uint32_t)h2->max_hdr_list},
    };
    if (nghttp2_submit_settings(h2->s, NGHTTP2_FLAG_NONE, iv, sizeof iv / sizeof iv[0]) != 0 ||
        nghttp2_session_set_local_window_size(h2->s, NGHTTP2_FLAG_NONE, 0, (int32_t)win) != 0)
        goto fail;
    c->proto = &h2_proto;
    c->proto_data = h2;
    sb_conn_set_deadline(c, SB_DL_HEADER, c->loop->live.header_timeout_ms);
    return 0;
fail:
    nghttp2_option_del(opt);
    if (h2 && h2->s)
        nghttp2_session_del(h2->s);
    sb_free(h2);
    return SB_ENOMEM;
}

/* Deadlines: the client's preface within the header timeout; a heartbeat due on a streamed
 * response; the body timeout while a request is
 * still arriving; the idle timeout when no stream is open; none while handlers work. */
static void arm_deadline(h2_conn *h2)
{
    sb_conn *c = h2->c;
    if (!h2->settings_in)
        return; /* the connection preface is due within http.header_timeout (sb_h2_attach) */
    sb_loop *loop = c->loop;
    uint64_t now = now_ms(h2);
    uint64_t hb_due = 0;
    bool receiving = false, any = false;
    for (h2_stream *s = h2->streams; s; s = s->next) {
        any = true;
        if (s->streaming && s->hb_ms > 0 && (!hb_due || s->hb_due_ms < hb_due))
            hb_due = s->hb_due_ms;
        if (!s->dispatched && !s->closed)
            receiving = true;
    }
    if (hb_due)
        sb_conn_set_deadline(c, SB_DL_PING, hb_due > now ? (int64_t)(hb_due - now) : 0);
    else if (receiving)
        sb_conn_set_deadline(c, SB_DL_BODY, loop->live.body_timeout_ms);
    else if (!any)
        sb_conn_set_deadline(c, SB_DL_IDLE, loop->live.idle_timeout_ms);
    else
        sb_conn_set_deadline(c, SB_DL_NONE, 0);
}

/*
 * nghttp2 answers a stream past an acknowledged SETTINGS_MAX_CONCURRENT_STREAMS with a
 * connection error (GOAWAY PROTOCOL_ERROR), which would kill the client's other streams too.
 * So nghttp2 is told the limit is "unlimited", the client is told the real one by rewriting
 * the value in our first SETTINGS frame on its way out (the entry submitted first, at payload
 * offset 0), and on_begin_headers refuses streams past it with REFUSED_STREAM.
 */
static void patch_settings(h2_conn *h2, uint8_t *f, size_t len)
{
    h2->settings_out = true;
    if (len < 9 + 6 || f[3] != NGHTTP2_SETTINGS || (f[4] & NGHTTP2_FLAG_ACK) || f[9] != 0 ||
        f[10] != NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS)
        return;
    uint32_t v = (uint32_t)h2->max_streams;
    f[11] = (uint8_t)(v >> 24);
    f[12] = (uint8_t)(v >> 16);
    f[13] = (uint8_t)(v >> 8);
    f[14] = (uint8_t)v;
}

/* Frames from nghttp2 into the transport until nghttp2 has none (0) or the transport holds
 * SB_CONN_OUT_HIGH (1); SB_EIO if they could not be queued.
 *
 * Plain: straight into c->out. TLS: gathered in h2->wbuf and encrypted in TLS_BATCH pieces
 * (few, full records). Not the loop's staging buffer: nghttp2 runs callbacks while producing
 * (a stream closing calls a handler's abort callback), and handler code may write to other
 * connections, which use the staging buffer. */
static int produce(h2_conn *h2)
{
    sb_conn *c = h2->c;
    bool tls = sb_conn_is_tls(c);
    sb_buf *o = tls ? &h2->wbuf : &c->out;
    int r = 0;
    for (;;) {
        if (c->out.len + c->wout.len + (tls ? o->len : 0) >= SB_CONN_OUT_HIGH) {
            r = 1;
            break;
        }
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(h2->s, &data);
        if (n < 0) {
            h2->fatal = true;
            break;
        }
        if (n == 0)
            break;
        size_t at = o->len;
        if (sb_buf_append(o, data, (size_t)n) != 0) {
            r = SB_EIO;
            break;
        }
        if (!h2->settings_out)
            patch_settings(h2, (uint8_t *)o->base + at, (size_t)n);
        if (tls && o->len >= TLS_BATCH) {
            if (sb_conn_write(c, o->base, o->len) != 0) {
                r = SB_EIO;
                break;
            }
            sb_buf_reset(o);
        }
    }
    if (tls) {
        if (r != SB_EIO && o->len && sb_conn_write(c, o->base, o->len) != 0)
            r = SB_EIO;
        if (o->cap > TLS_BATCH + 16384)
            sb_buf_free(o); /* a big frame grew it: do not keep that per connection */
        else
            sb_buf_reset(o);
    }
    return r;
}

/* Moves frames from nghttp2 to the transport while it holds less than the high mark. May
 * close the connection (on_close frees h2): the caller must not touch h2 after it. */
static void pump(h2_conn *h2)
{
    sb_conn *c = h2->c;
    if (h2->busy || c->closing)
        return;
    for (;;) {
        h2->busy++;
        int r = produce(h2);
        h2->busy--;
        if (r < 0) {
            sb_conn_abort(c);
            return;
        }
        if (r == 0)
            break;
        if (c->writing) {
            /* The peer is not reading: stop reading too (its PINGs, SETTINGS and requests
             * would only queue more output); h2_on_writable resumes. */
            sb_conn_pause_reading(c, true);
            break;
        }
        /* Over the high mark and nothing in flight: nobody would call on_writable, so write
         * now (also from inside on_data, as HTTP/1.1's pipelining does). */
        bool cb = c->in_callback;
        c->in_callback = false;
        sb_conn_flush(c);
        c->in_callback = cb;
        if (c->closing)
            return;
    }
    if (h2->fatal || (!nghttp2_session_want_read(h2->s) && !nghttp2_session_want_write(h2->s))) {
        /* Write the GOAWAY now. A peer that reads gets it and the transport lingers for a
         * moment, reading and discarding, so that unread input does not turn into a reset
         * that destroys it; a peer that does not read (its output is stuck) is not read
         * from either: the write timeout ends it. */
        bool cb = c->in_callback;
        c->in_callback = false;
        sb_conn_close_after_write(c); /* may close now: h2 is gone then */
        c->in_callback = cb;
        if (!uv_is_closing((uv_handle_t *)&c->tcp) && c->writing)
            sb_conn_pause_reading(c, true);
        return;
    }
    arm_deadline(h2);
}

/* After an operation outside the connection's own callbacks: produce frames and write. */
static void kick(h2_conn *h2)
{
    sb_conn *c = h2->c;
    if (h2->busy)
        return; /* the running recv/send picks the new frames up */
    pump(h2);
    if (!c->closing)
        notify_writable(h2);
    if (!c->in_callback && !c->closing)
        sb_conn_flush(c);
}

static void h2_on_data(sb_conn *c)
{
    h2_conn *h2 = c->proto_data;
    if (c->in.len && !h2->fatal) {
        h2->busy++;
        ssize_t n = nghttp2_session_mem_recv(h2->s, (const uint8_t *)c->in.base, c->in.len);
        h2->busy--;
        if (n < 0) {
            sb_stat_add(&c->loop->stats.protocol_errors, 1);
            if (sb_log_enabled(SB_LOG_DEBUG))
                sb_log(SB_LOG_DEBUG, "http2: session error", "reason", nghttp2_strerror((int)n),
                       NULL);
            nghttp2_session_terminate_session(h2->s, n == NGHTTP2_ERR_FLOODED ||
                                                             n == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS
                                                         ? NGHTTP2_ENHANCE_YOUR_CALM
                                                         : NGHTTP2_PROTOCOL_ERROR);
            h2->fatal = true;
        }
    }
    sb_buf_reset(&c->in);
    if (c->eof)
        h2->fatal = true; /* the client is done sending: finish what is queued and close */
    pump(h2);
    if (!c->closing)
        notify_writable(h2); /* a WINDOW_UPDATE may have let paced streams' data go */
}

static void h2_on_writable(sb_conn *c)
{
    h2_conn *h2 = c->proto_data;
    pump(h2);
    if (!c->closing)
        notify_writable(h2);
    if (!c->closing)
        sb_conn_flush(c);
    if (!c->closing && !c->writing)
        sb_conn_pause_reading(c, false);
}

static void h2_on_timeout(sb_conn *c, sb_deadline_kind kind)
{
    h2_conn *h2 = c->proto_data;
    if (kind == SB_DL_PING) {
        /* One due stream at a time, from the head: a write may end other streams (an abort
         * callback is handler code). Each write either moves the stream's due time or ends
         * its streaming, so this terminates. */
        uint64_t now = now_ms(h2);
        h2->busy++; /* one pump below, not one per write */
        for (;;) {
            h2_stream *s = h2->streams;
            while (s && !(s->streaming && s->hb_ms > 0 && s->hb_due_ms <= now && !s->closed))
                s = s->next;
            if (!s)
                break;
            h2_stream_write(&s->req, s->hb.base, s->hb.len);
        }
        h2->busy--;
    } else if (kind == SB_DL_BODY) {
        /* A body that stopped arriving gets 408 on its stream; a header block that stopped
         * arriving holds the whole connection (nothing else may be sent meanwhile): GOAWAY. */
        bool stalled_block = false;
        for (h2_stream *s = h2->streams; s; s = s->next) {
            if (s->dispatched || s->closed)
                continue;
            if (!s->headers_done)
                stalled_block = true;
            else
                refuse(s, 408, "request-timeout",
                       "the request body did not arrive within http.body_timeout");
        }
        if (stalled_block) {
            nghttp2_session_terminate_session(h2->s, NGHTTP2_NO_ERROR);
            h2->fatal = true;
        }
    } else {
        /* Idle, or no request since the connection opened. */
        nghttp2_session_terminate_session(h2->s, NGHTTP2_NO_ERROR);
        h2->fatal = true;
    }
    pump(h2);
    if (!c->closing)
        sb_conn_flush(c);
}

static void h2_on_drain(sb_conn *c)
{
    h2_conn *h2 = c->proto_data;
    h2->draining = true;
    nghttp2_submit_goaway(h2->s, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(h2->s),
                          NGHTTP2_NO_ERROR, NULL, 0);
    /* End streamed bodies cleanly and tell their handlers, as HTTP/1.1 does; from the head
     * each time, since a callback may end other streams. */
    h2->busy++;
    for (;;) {
        h2_stream *s = h2->streams;
        while (s && !s->streaming)
            s = s->next;
        if (!s)
            break;
        void (*fn)(sb_req *, void *) = s->abort_fn;
        void *ud = s->abort_ud;
        if (s->grpc) {
            /* A gRPC client reads a stream that ends without grpc-status as INTERNAL; this
             * one says why, and that a retry elsewhere (or later) is right. */
            static const nghttp2_nv unavailable[] = {
                {(uint8_t *)"grpc-status", (uint8_t *)"14", 11, 2, NGHTTP2_NV_FLAG_NONE},
                {(uint8_t *)"grpc-message", (uint8_t *)"server%20shutting%20down", 12, 24,
                 NGHTTP2_NV_FLAG_NONE},
            };
            s->trailers = (nghttp2_nv *)unavailable;
            s->ntrailers = 2;
        }
        stream_finish(s);
        if (fn)
            fn(&s->req, ud);
    }
    h2->busy--;
    pump(h2);
    if (!c->closing)
        sb_conn_flush(c);
}

static void h2_on_close(sb_conn *c)
{
    h2_conn *h2 = c->proto_data;
    if (!h2)
        return;
    h2->busy++; /* no frames from here on */
    while (h2->streams) {
        h2_stream *s = h2->streams;
        stream_unlink(s);
        body_release(s);
        s->h2 = NULL;
        s->closed = true;
        if (s->streaming) {
            void (*fn)(sb_req *, void *) = s->abort_fn;
            s->abort_fn = NULL;
            s->streaming = false;
            if (fn)
                fn(&s->req, s->abort_ud);
            stream_free(s);
        } else if (s->dispatched && !s->req.responded) {
            /* the handler still holds it: h2_send frees it */
        } else {
            stream_free(s);
        }
    }
    nghttp2_session_del(h2->s);
    sb_buf_free(&h2->wbuf);
    sb_free(h2);
    c->proto_data = NULL;
}
