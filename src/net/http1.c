#include "net/http1.h"

#include <stdio.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
#include "net/http2.h"
#include "net/router.h"
#include "net/server_internal.h"
#include "switchboard/error.h"

enum { H1_IDLE, H1_HEAD, H1_BODY_CL, H1_BODY_CHUNKED, H1_WAIT };

#define REQ_ARENA_INLINE 2048
#define REQ_ARENA_MAX    (4 * 1024 * 1024)
#define REQ_POOL_KEEP    256

typedef struct sb_h1_req {
    sb_req req; /* first: the adapter casts back */
    sb_http1_request parsed;
    sb_conn *conn;         /* NULL once the connection is gone */
    const char *parsed_at; /* where the header section was when parsed */
    size_t req_len;        /* bytes of c->in this request occupies */
    struct sb_h1_req *next_free;
    /* A streaming response (sb_resp_stream_begin): the request stays in H1_WAIT until the
     * stream ends. */
    bool streaming;
    bool chunked; /* HTTP/1.1: chunked body; HTTP/1.0: raw body ended by closing */
    void (*abort_fn)(sb_req *req, void *ud);
    void *abort_ud;
    int64_t hb_ms;
    sb_str hb; /* in the arena */
    _Alignas(16) char arena_first[REQ_ARENA_INLINE];
} sb_h1_req;

static void h1_on_data(sb_conn *c);
static void h1_on_timeout(sb_conn *c, sb_deadline_kind kind);
static void h1_on_writable(sb_conn *c);
static void h1_on_drain(sb_conn *c);
static void h1_on_close(sb_conn *c);
static void h1_send(sb_req *req, int status, sb_str ctype, const void *body, size_t len);
static int h1_stream_begin(sb_req *req, int status, sb_str ctype, int64_t hb_ms, sb_str hb);
static int h1_stream_write(sb_req *req, const void *data, size_t len);
static void h1_stream_end(sb_req *req);
static void h1_on_abort(sb_req *req, void (*fn)(sb_req *req, void *ud), void *ud);
static void stream_finish(sb_conn *c, sb_h1_req *r, bool notify);

static const sb_proto h1_proto = {
    .name = "http/1.1",
    .on_data = h1_on_data,
    .on_timeout = h1_on_timeout,
    .on_writable = h1_on_writable,
    .on_drain = h1_on_drain,
    .on_close = h1_on_close,
};

static const sb_req_ops h1_ops = {
    .proto = "HTTP/1.1",
    .send = h1_send,
    .stream_begin = h1_stream_begin,
    .stream_write = h1_stream_write,
    .stream_end = h1_stream_end,
    .on_abort = h1_on_abort,
};

static sb_h1_req *req_acquire(sb_conn *c)
{
    sb_loop *loop = c->loop;
    sb_h1_req *r = loop->req_pool;
    if (r) {
        loop->req_pool = r->next_free;
        loop->req_pool_len--;
    } else {
        r = sb_malloc(sizeof *r);
        if (!r)
            return NULL;
    }
    memset(&r->req, 0, sizeof r->req);
    r->parsed.num_headers = 0;
    r->conn = c;
    r->parsed_at = NULL;
    r->req_len = 0;
    r->streaming = false;
    r->chunked = false;
    r->abort_fn = NULL;
    r->abort_ud = NULL;
    r->hb_ms = 0;
    r->hb = SB_STR_NULL;
    r->req.loop = loop;
    r->req.ops = &h1_ops;
    r->req.transport = r;
    r->req.peer = c->peer;
    sb_arena_init(&r->req.arena, r->arena_first, sizeof r->arena_first, REQ_ARENA_MAX);
    return r;
}

static void req_release(sb_loop *loop, sb_h1_req *r)
{
    sb_arena_reset(&r->req.arena);
    if (loop->req_pool_len >= REQ_POOL_KEEP) {
        sb_free(r);
        return;
    }
    r->next_free = loop->req_pool;
    loop->req_pool = r;
    loop->req_pool_len++;
}

void sb_h1_pool_free(sb_loop *loop)
{
    sb_h1_req *r = loop->req_pool;
    while (r) {
        sb_h1_req *n = r->next_free;
        sb_free(r);
        r = n;
    }
    loop->req_pool = NULL;
    loop->req_pool_len = 0;
}

void sb_h1_attach(sb_conn *c)
{
    c->proto = &h1_proto;
    memset(&c->h1, 0, sizeof c->h1);
    c->h1.state = H1_IDLE;
    /* The first request must arrive within the header timeout, not the idle one. */
    sb_conn_set_deadline(c, SB_DL_HEADER, c->loop->live.header_timeout_ms);
}

static sb_http1_limits limits_of(const sb_config *cfg)
{
    return (sb_http1_limits){
        .max_request_line = cfg->http_max_request_line,
        .max_header_bytes = cfg->http_max_header_bytes,
        .max_headers = cfg->http_max_headers,
    };
}

static void set_request_id(sb_h1_req *r)
{
    const sb_http_header *h = sb_http1_find_header(&r->parsed, "x-request-id");
    sb_req_set_request_id(&r->req, h ? h->value : SB_STR_NULL);
}

/* Answers a request the parser or framing refused, then closes the connection. `parsed`: the
 * header section was valid (413, 408 on the body), so the request's fields are usable. */
static void refuse(sb_conn *c, int status, const char *slug, const char *detail, bool parsed)
{
    sb_h1_req *r = c->h1.req;
    if (!r) {
        r = req_acquire(c);
        if (!r) {
            sb_conn_abort(c);
            return;
        }
        c->h1.req = r;
    }
    r->req.start_ns = r->req.start_ns ? r->req.start_ns : sb_now_ns();
    if (parsed) {
        r->req.method = r->parsed.method;
        r->req.path = r->parsed.path;
        set_request_id(r);
    } else {
        r->parsed.minor_version = 1;
        r->req.method = SB_STR_NULL;
        r->req.path = SB_STR_NULL;
        sb_loop_new_request_id(c->loop, r->req.request_id, &r->req.request_id_len);
    }
    c->h1.close_after = true;
    c->h1.state = H1_WAIT;
    sb_stat_add(&c->loop->stats.protocol_errors, 1);
    sb_resp_problem(&r->req, status, slug, detail);
}

static const char *slug_for(int status)
{
    switch (status) {
    case 414:
        return "uri-too-long";
    case 431:
        return "headers-too-large";
    case 501:
        return "not-implemented";
    case 505:
        return "http-version-not-supported";
    default:
        return "malformed-request";
    }
}

static const char *detail_for(int status)
{
    switch (status) {
    case 414:
        return "the request line is longer than http.max_request_line";
    case 431:
        return "the header section is larger than http.max_header_bytes or has too many fields";
    case 501:
        return "only the chunked transfer coding is supported";
    case 505:
        return "only HTTP/1.0 and HTTP/1.1 are served on this connection";
    default:
        return "the request is not valid HTTP/1.1 (RFC 9112)";
    }
}

static void dispatch(sb_conn *c, size_t pos, sb_str body)
{
    sb_h1_state *h = &c->h1;
    sb_h1_req *r = h->req;
    const sb_config *cfg = sb__server_config(c->loop->server);
    /* A read may have moved the buffer since the header section was parsed. */
    if (r->parsed_at != c->in.base + pos) {
        sb_http1_limits lim = limits_of(cfg);
        int status;
        sb_http1_parse_request(c->in.base + pos, h->head_len, 0, &lim, &r->parsed, &status);
    }
    sb_req *req = &r->req;
    req->method = r->parsed.method;
    req->path = r->parsed.path;
    req->query = r->parsed.query;
    req->authority = r->parsed.host;
    req->headers = r->parsed.headers;
    req->num_headers = r->parsed.num_headers;
    req->body = body;
    req->head = sb_str_eq_lit(r->parsed.method, "HEAD");
    if (!r->parsed.keep_alive)
        h->close_after = true;
    set_request_id(r);
    h->state = H1_WAIT;
    h->prev_len = pos; /* the request's offset in c->in while it is being served */
    sb_conn_set_deadline(c, SB_DL_NONE, 0);
    sb_router_dispatch(c->loop->router, req);
}

static void send_continue(sb_conn *c)
{
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    if (c->h1.sent_continue || c->h1.req->parsed.minor_version == 0)
        return;
    c->h1.sent_continue = true;
    sb_buf *o = sb_conn_write_begin(c);
    if (sb_buf_append(o, cont, sizeof cont - 1) != 0 || sb_conn_write_end(c) != 0)
        sb_conn_abort(c);
}

/* Parses and serves the complete requests in c->in, in order, up to http.max_pipelined of
 * them or until the queued output passes the high mark. Returns true if it stopped for that
 * reason with input left, so the caller writes first and then calls again. */
static bool h1_process(sb_conn *c)
{
    sb_h1_state *h = &c->h1;
    sb_loop *loop = c->loop;
    const sb_config *cfg = sb__server_config(loop->server);
    size_t pos = 0;
    int served = 0;
    bool more = false;

    while (!c->closing && h->state != H1_WAIT && c->proto == &h1_proto) {
        size_t avail = c->in.len - pos;
        if (h->state == H1_IDLE && avail > 0 &&
            (served >= cfg->http_max_pipelined || c->out.len + c->wout.len > SB_CONN_OUT_HIGH)) {
            more = true;
            break;
        }
        if (h->state == H1_IDLE) {
            if (avail == 0)
                break;
            h->req = req_acquire(c);
            if (!h->req) {
                sb_conn_abort(c);
                return false;
            }
            h->req->req.start_ns = 0;
            h->state = H1_HEAD;
            h->prev_len = 0;
            h->sent_continue = false;
            if (c->deadline_kind != SB_DL_HEADER)
                sb_conn_set_deadline(c, SB_DL_HEADER, loop->live.header_timeout_ms);
        }
        sb_h1_req *r = h->req;
        size_t req_len = 0;
        if (h->state == H1_HEAD) {
            sb_http1_limits lim = limits_of(cfg);
            int status = 400;
            int rc = sb_http1_parse_request(c->in.base + pos, avail, h->prev_len, &lim, &r->parsed,
                                            &status);
            if (rc == SB_EAGAIN) {
                h->prev_len = avail;
                break;
            }
            r->req.start_ns = sb_now_ns();
            if (rc < 0) {
                refuse(c, status, slug_for(status), detail_for(status), false);
                break;
            }
            h->head_len = (size_t)rc;
            r->parsed_at = c->in.base + pos;
            if (r->parsed.content_length > (int64_t)cfg->http_max_body_bytes) {
                refuse(c, 413, "body-too-large", "the body is larger than http.max_body_bytes",
                       true);
                break;
            }
            if (r->parsed.chunked) {
                sb_http1_chunked_init(&h->chunked, cfg->http_max_body_bytes);
                h->body_have = 0;
                h->state = H1_BODY_CHUNKED;
            } else if (r->parsed.content_length > 0) {
                h->state = H1_BODY_CL;
            } else {
                req_len = r->req_len = h->head_len;
                dispatch(c, pos, SB_STR_NULL); /* may release r */
                if (h->state == H1_WAIT)
                    break;
                pos += req_len;
                continue;
            }
            sb_conn_set_deadline(c, SB_DL_BODY, loop->live.body_timeout_ms);
        }
        if (h->state == H1_BODY_CL) {
            size_t need = h->head_len + (size_t)r->parsed.content_length;
            if (avail < need) {
                if (r->parsed.expect_continue)
                    send_continue(c);
                sb_conn_set_deadline(c, SB_DL_BODY, loop->live.body_timeout_ms);
                break;
            }
            r->req_len = req_len = need;
            dispatch(c, pos,
                     (sb_str){c->in.base + pos + h->head_len, (size_t)r->parsed.content_length});
        } else if (h->state == H1_BODY_CHUNKED) {
            size_t start = pos + h->head_len + h->body_have;
            char *p = c->in.base + start;
            size_t len = c->in.len - start;
            int rc = sb_http1_chunked_decode(&h->chunked, p, &len);
            if (rc == SB_EAGAIN) {
                h->body_have += len;
                c->in.len = start + len; /* framing bytes are consumed by the decoder */
                if (r->parsed.expect_continue)
                    send_continue(c);
                sb_conn_set_deadline(c, SB_DL_BODY, loop->live.body_timeout_ms);
                break;
            }
            if (rc == SB_EMSGSIZE) {
                refuse(c, 413, "body-too-large", "the body is larger than http.max_body_bytes",
                       true);
                break;
            }
            if (rc < 0) {
                refuse(c, 400, "malformed-chunked-body", "the chunked body is malformed", true);
                break;
            }
            h->body_have += len;
            c->in.len = start + len + (size_t)rc; /* leftover follows the payload */
            r->req_len = req_len = h->head_len + h->body_have;
            dispatch(c, pos, (sb_str){c->in.base + pos + h->head_len, h->body_have});
        }
        if (h->state == H1_WAIT)
            break;
        pos += req_len;
        served++;
    }

    if (c->closing || c->proto != &h1_proto)
        return false; /* an upgraded connection's input is the new protocol's */
    if (h->state == H1_WAIT) {
        /* A handler answers later: keep the request's bytes where they are. A streamed
         * response keeps reading, to notice the client leaving (h1_on_data). */
        h->prev_len = pos; /* reused as the request's offset while waiting */
        sb_conn_pause_reading(c, !(h->req && h->req->streaming));
        return false;
    }
    if (pos)
        sb_buf_consume(&c->in, pos);
    return more;
}

/* Serves what c->in holds, writing between batches; called with c->in_callback set. */
static void h1_run(sb_conn *c)
{
    while (h1_process(c)) {
        c->in_callback = false;
        sb_conn_flush(c);
        c->in_callback = true;
        if (c->closing)
            return;
        if (c->writing) {
            /* The peer is not reading: stop reading too; h1_on_writable resumes. */
            sb_conn_pause_reading(c, true);
            return;
        }
    }
    if (c->closing || c->h1.state == H1_WAIT || c->proto != &h1_proto)
        return;
    if (c->eof) {
        sb_conn_close_after_write(c);
        return;
    }
    if (c->out.len + c->wout.len > SB_CONN_OUT_HIGH)
        sb_conn_pause_reading(c, true);
}

/* h2c with prior knowledge (RFC 9113 §3.3): a plain connection that starts with the HTTP/2
 * client preface is handed to the HTTP/2 adapter. Returns true when c->in holds only a
 * prefix of it so far (wait for more), or the connection changed hands. */
static bool h1_sniff_h2(sb_conn *c)
{
    c->h1.h2_checked = true;
    size_t n = c->in.len < SB_H2_PREFACE_LEN ? c->in.len : SB_H2_PREFACE_LEN;
    if (memcmp(c->in.base, SB_H2_PREFACE, n) != 0)
        return false;
    if (n < SB_H2_PREFACE_LEN) {
        c->h1.h2_checked = c->eof;
        return !c->eof;
    }
    if (sb_h2_attach(c) != 0) {
        sb_conn_abort(c);
        return true;
    }
    c->proto->on_data(c);
    return true;
}

static void h1_on_data(sb_conn *c)
{
    if (!c->h1.h2_checked && !c->ssl && c->h1.state == H1_IDLE && c->in.len && h1_sniff_h2(c))
        return;
    if (c->h1.state == H1_WAIT && c->h1.req && c->h1.req->streaming) {
        /* A streamed response has no more requests behind it: what the client sends is
         * dropped, and its end of the connection means it is gone. */
        c->in.len = 0;
        if (c->eof)
            sb_conn_abort(c); /* on_close tells the handler */
        return;
    }
    if (c->h1.state == H1_WAIT)
        return;
    h1_run(c);
}

static void h1_on_writable(sb_conn *c)
{
    sb_h1_state *h = &c->h1;
    if (h->state == H1_WAIT && h->req && h->req->streaming) {
        sb_conn_pause_reading(c, false); /* to notice the client leaving */
        return;
    }
    if (h->state == H1_WAIT)
        return;
    c->in_callback = true;
    h1_run(c);
    c->in_callback = false;
    if (c->closing || c->proto != &h1_proto) {
        sb_conn_flush(c);
        return;
    }
    /* Deadlines paused while our output waited; a partial request gets a fresh one. */
    if (h->state == H1_HEAD)
        sb_conn_set_deadline(c, SB_DL_HEADER, c->loop->live.header_timeout_ms);
    else if (h->state == H1_BODY_CL || h->state == H1_BODY_CHUNKED)
        sb_conn_set_deadline(c, SB_DL_BODY, c->loop->live.body_timeout_ms);
    sb_conn_flush(c);
    if (!c->writing && !c->closing)
        sb_conn_pause_reading(c, false);
}

static void h1_on_timeout(sb_conn *c, sb_deadline_kind kind)
{
    sb_h1_state *h = &c->h1;
    if (h->state == H1_WAIT && h->req && h->req->streaming) {
        if (kind == SB_DL_PING && h->req->hb.len)
            h1_stream_write(&h->req->req, h->req->hb.base, h->req->hb.len);
        return;
    }
    if (kind == SB_DL_IDLE || (kind == SB_DL_HEADER && h->state == H1_IDLE)) {
        sb_conn_close_after_write(c);
        return;
    }
    if (h->state == H1_HEAD || h->state == H1_BODY_CL || h->state == H1_BODY_CHUNKED) {
        h->req->req.start_ns = h->req->req.start_ns ? h->req->req.start_ns : sb_now_ns();
        bool body = h->state != H1_HEAD;
        refuse(c, 408, "request-timeout",
               body ? "the body did not arrive within http.body_timeout"
                    : "the header section did not arrive within http.header_timeout",
               body);
        sb_conn_flush(c);
    }
}

static void h1_on_drain(sb_conn *c)
{
    if (c->h1.state == H1_WAIT && c->h1.req && c->h1.req->streaming) {
        stream_finish(c, c->h1.req, true);
        sb_conn_flush(c);
        return;
    }
    c->h1.close_after = true;
    if (c->h1.state == H1_IDLE && c->in.len == 0)
        sb_conn_close_after_write(c);
}

static void h1_on_close(sb_conn *c)
{
    sb_h1_req *r = c->h1.req;
    c->h1.req = NULL;
    if (!r)
        return;
    if (r->streaming) {
        void (*fn)(sb_req *, void *) = r->abort_fn;
        r->streaming = false;
        r->abort_fn = NULL;
        if (fn)
            fn(&r->req, r->abort_ud);
        req_release(c->loop, r);
        return;
    }
    if (c->h1.state == H1_WAIT && !r->req.responded) {
        r->conn = NULL; /* the handler still holds it; h1_send releases */
        return;
    }
    req_release(c->loop, r);
}

static void head_begin(sb_buf *o, int status, sb_loop *loop)
{
    char line[16] = "HTTP/1.1 000 ";
    line[9] = (char)('0' + status / 100 % 10);
    line[10] = (char)('0' + status / 10 % 10);
    line[11] = (char)('0' + status % 10);
    sb_buf_append(o, line, 13);
    sb_buf_append_str(o, sb_http_reason(status));
    sb_buf_append(o, "\r\n", 2);
    sb_buf_append_str(o, "Date: ");
    sb_buf_append_str(o, sb_loop_date(loop));
}

/* The end of every response head: the request id, the handler's headers, the blank line. */
static int head_end(sb_buf *o, const sb_req *req)
{
    sb_buf_append_str(o, "\r\nX-Request-Id: ");
    sb_buf_append(o, req->request_id, req->request_id_len);
    for (int i = 0; i < req->num_resp_headers; i++) {
        sb_buf_append(o, "\r\n", 2);
        sb_buf_append(o, req->resp_headers[i].name.base, req->resp_headers[i].name.len);
        sb_buf_append(o, ": ", 2);
        sb_buf_append(o, req->resp_headers[i].value.base, req->resp_headers[i].value.len);
    }
    return sb_buf_append(o, "\r\n\r\n", 4);
}

static void h1_send(sb_req *req, int status, sb_str ctype, const void *body, size_t len)
{
    sb_h1_req *r = (sb_h1_req *)req;
    sb_conn *c = r->conn;
    sb_loop *loop = req->loop;
    req->responded = true;
    uint64_t dur = sb_now_ns() - req->start_ns;
    sb_stats_request(&loop->stats, status, dur);
    if (!c) { /* the client left while the handler worked */
        sb_req_log_access(&r->req, status, 0, dur);
        req_release(loop, r);
        return;
    }
    sb_h1_state *h = &c->h1;
    bool close = h->close_after || loop->draining;
    bool no_body = status < 200 || status == 204 || status == 304;

    sb_buf *o = sb_conn_write_begin(c);
    size_t before = o->len;
    head_begin(o, status, loop);
    if (ctype.len) {
        sb_buf_append_str(o, "\r\nContent-Type: ");
        sb_buf_append(o, ctype.base, ctype.len);
    }
    if (!no_body) {
        sb_buf_append_str(o, "\r\nContent-Length: ");
        sb_buf_append_u64(o, len);
    }
    if (close)
        sb_buf_append_str(o, "\r\nConnection: close");
    else if (r->parsed.minor_version == 0)
        sb_buf_append_str(o, "\r\nConnection: keep-alive");
    int rc = head_end(o, req);
    if (!no_body && !req->head && len)
        rc = rc ? rc : sb_buf_append(o, body, len);
    size_t bytes = o->len - before;
    if (rc || sb_conn_write_end(c) != 0) {
        sb_buf_reset(&loop->staging);
        sb_req_log_access(&r->req, status, 0, dur);
        sb_conn_abort(c); /* releases r through on_close */
        return;
    }
    sb_req_log_access(&r->req, status, bytes, dur);

    /* The request is done: its bytes leave the input when processing resumes. */
    bool async = !c->in_callback;
    size_t offset = h->prev_len;
    size_t req_len = r->req_len;
    h->req = NULL;
    req_release(loop, r);
    h->state = H1_IDLE;
    if (close) {
        sb_conn_close_after_write(c);
        return;
    }
    sb_conn_set_deadline(c, SB_DL_IDLE, loop->live.idle_timeout_ms);
    if (async) {
        sb_buf_consume(&c->in, offset + req_len);
        c->in_callback = true;
        h1_run(c);
        c->in_callback = false;
        if (!c->closing && h->state != H1_WAIT && !c->writing && c->proto == &h1_proto)
            sb_conn_pause_reading(c, false);
        sb_conn_flush(c);
    }
}

int sb_h1_upgrade(sb_req *req, const sb_proto *proto, void *state, sb_conn **out)
{
    if (req->ops != &h1_ops)
        return SB_ENOTSUP;
    sb_h1_req *r = (sb_h1_req *)req;
    sb_conn *c = r->conn;
    if (!c || c->closing || c->h1.req != r || c->h1.state != H1_WAIT)
        return SB_ECANCELED;
    sb_loop *loop = req->loop;
    sb_h1_state *h = &c->h1;
    req->responded = true;
    req->status = 101;
    uint64_t dur = sb_now_ns() - req->start_ns;
    sb_stats_request(&loop->stats, 101, dur);

    sb_buf *o = sb_conn_write_begin(c);
    size_t before = o->len;
    head_begin(o, 101, loop);
    int rc = head_end(o, req);
    size_t bytes = o->len - before;
    if (rc || sb_conn_write_end(c) != 0) {
        sb_buf_reset(&loop->staging);
        sb_req_log_access(&r->req, 101, 0, dur);
        sb_conn_abort(c); /* releases r through on_close */
        return SB_EIO;
    }
    sb_req_log_access(&r->req, 101, bytes, dur);

    /* What follows the request in c->in is the new protocol's. */
    size_t used = h->prev_len + r->req_len;
    h->req = NULL;
    req_release(loop, r);
    sb_buf_consume(&c->in, used);
    h->state = H1_IDLE;
    c->proto = proto;
    c->proto_data = state;
    sb_conn_set_deadline(c, SB_DL_NONE, 0);
    sb_conn_pause_reading(c, false);
    *out = c;
    return 0;
}

/* ---- streaming responses ------------------------------------------------------------ */

static void h1_on_abort(sb_req *req, void (*fn)(sb_req *req, void *ud), void *ud)
{
    sb_h1_req *r = (sb_h1_req *)req;
    r->abort_fn = fn;
    r->abort_ud = ud;
}

static int h1_stream_begin(sb_req *req, int status, sb_str ctype, int64_t hb_ms, sb_str hb)
{
    sb_h1_req *r = (sb_h1_req *)req;
    sb_conn *c = r->conn;
    sb_loop *loop = req->loop;
    if (!c || c->closing || c->h1.req != r || c->h1.state != H1_WAIT || loop->draining) {
        /* Finish the request the ordinary way (it is released when the client is gone). */
        r->abort_fn = NULL;
        sb_resp_problem(req, 503, "unavailable", "the server is shutting down");
        return SB_ECANCELED;
    }
    if (hb.len && !(r->hb.base = sb_arena_strndup(&req->arena, hb.base, hb.len)))
        hb.len = 0;
    r->hb.len = hb.len;
    r->hb_ms = hb_ms;
    r->chunked = r->parsed.minor_version >= 1;
    req->responded = true;
    uint64_t dur = sb_now_ns() - req->start_ns;
    sb_stats_request(&loop->stats, status, dur);

    sb_buf *o = sb_conn_write_begin(c);
    size_t before = o->len;
    head_begin(o, status, loop);
    if (ctype.len) {
        sb_buf_append_str(o, "\r\nContent-Type: ");
        sb_buf_append(o, ctype.base, ctype.len);
    }
    if (r->chunked)
        sb_buf_append_str(o, "\r\nTransfer-Encoding: chunked");
    sb_buf_append_str(o, "\r\nConnection: close"); /* the stream is the connection's last use */
    int rc = head_end(o, req);
    size_t bytes = o->len - before;
    if (rc || sb_conn_write_end(c) != 0) {
        sb_buf_reset(&loop->staging);
        sb_req_log_access(&r->req, status, 0, dur);
        r->abort_fn = NULL;
        sb_conn_abort(c); /* releases r through on_close */
        return SB_EIO;
    }
    sb_req_log_access(&r->req, status, bytes, dur);
    r->streaming = true;
    c->h1.close_after = true;
    /* Nothing else bounds a stream's life: no header/idle deadline; the write timeout still
     * drops a client that stops reading, and the heartbeat deadline keeps proxies awake. */
    if (hb_ms > 0)
        sb_conn_set_deadline(c, SB_DL_PING, hb_ms);
    else
        sb_conn_set_deadline(c, SB_DL_NONE, 0);
    sb_conn_pause_reading(c, false);
    if (!c->in_callback)
        sb_conn_flush(c);
    return 0;
}

static int h1_stream_write(sb_req *req, const void *data, size_t len)
{
    sb_h1_req *r = (sb_h1_req *)req;
    sb_conn *c = r->conn;
    if (!r->streaming || !c || c->closing)
        return SB_ECANCELED;
    if (len == 0)
        return 0;
    if (c->out.len + c->wout.len > SB_STREAM_MAX_QUEUED) {
        sb_stat_add(&c->loop->stats.timeouts, 1);
        sb_conn_abort(c); /* on_close calls the abort callback and releases r */
        return SB_EAGAIN;
    }
    sb_buf *o = sb_conn_write_begin(c);
    int rc = 0;
    if (r->chunked) {
        rc = sb_buf_appendf(o, "%zx\r\n", len);
        rc = rc ? rc : sb_buf_append(o, data, len);
        rc = rc ? rc : sb_buf_append(o, "\r\n", 2);
    } else {
        rc = sb_buf_append(o, data, len);
    }
    if (rc || sb_conn_write_end(c) != 0) {
        sb_buf_reset(&c->loop->staging);
        sb_conn_abort(c);
        return SB_ECANCELED;
    }
    if (r->hb_ms > 0)
        sb_conn_set_deadline(c, SB_DL_PING, r->hb_ms);
    if (!c->in_callback) {
        sb_conn_flush(c); /* may close the connection (on_close: abort callback) */
        if (c->closing)
            return SB_ECANCELED;
    }
    return 0;
}

/* Ends the body cleanly and closes after it. notify: tell the handler (server drain). */
static void stream_finish(sb_conn *c, sb_h1_req *r, bool notify)
{
    void (*fn)(sb_req *, void *) = notify ? r->abort_fn : NULL;
    void *ud = r->abort_ud;
    r->streaming = false;
    r->abort_fn = NULL;
    c->h1.req = NULL;
    c->h1.state = H1_IDLE;
    c->h1.close_after = true;
    int rc = 0;
    if (r->chunked) {
        sb_buf *o = sb_conn_write_begin(c);
        rc = sb_buf_append(o, "0\r\n\r\n", 5);
        if (rc || sb_conn_write_end(c) != 0) {
            sb_buf_reset(&c->loop->staging);
            rc = SB_EIO;
        }
    }
    if (fn)
        fn(&r->req, ud);
    req_release(c->loop, r);
    sb_conn_set_deadline(c, SB_DL_NONE, 0);
    if (rc)
        sb_conn_abort(c);
    else
        sb_conn_close_after_write(c);
}

static void h1_stream_end(sb_req *req)
{
    sb_h1_req *r = (sb_h1_req *)req;
    sb_conn *c = r->conn;
    if (!r->streaming || !c || c->closing)
        return;
    stream_finish(c, r, false);
}
