/*
 * HTTP/1.1 POST client on libuv; the contract is in hclient.h.
 *
 * One struct (a connection) carries a request from start to end: it owns the timer that
 * bounds the request (and then the idle period), the resolver request, the TCP handle, the
 * parser and a fixed read buffer. A connection that must be replaced while its request is
 * in flight (the next address after a failed connect, or a stale keep-alive connection)
 * closes only its TCP handle and opens a new one in the close callback, so the request never
 * changes hands. Early failures inside sb_hclient_post are reported through the same timer
 * started at 0 ms, which keeps "done never runs inside post" without a separate queue.
 *
 * Reading stays on for the whole life of a connection, idle included: a server's close is
 * noticed at once, and a warm request costs no epoll_ctl.
 */
#include "net/hclient.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <nghttp2/nghttp2.h>

#include "core/alloc.h"
#include "core/str.h"
#include "net/http1_response.h"
#include "switchboard/error.h"

#define READ_BUF_SIZE  16384
#define ORIGIN_BUCKETS 256

enum conn_state {
    C_DEFERRED,     /* failed inside sb_hclient_post; the 0 ms timer reports it */
    C_RESOLVING,    /* uv_getaddrinfo in flight */
    C_CONNECTING,   /* uv_tcp_connect in flight */
    C_RECONNECTING, /* the TCP handle is closing; a new one is opened in its close callback */
    C_ACTIVE,       /* connected, request written or being written */
    C_IDLE,         /* in its origin's idle list */
    C_CLOSING,      /* handles closing; freed once they all are */
};

typedef struct origin {
    struct origin *next;    /* hash chain */
    struct sb__hconn *idle; /* idle connections, most recently used first */
    struct sb__hconn *h2;   /* h2c connections (linked through iprev/inext) */
    int nidle;
    int nconns; /* connections of this origin, any state; the origin is freed at 0 */
    uint32_t hash;
    uint16_t port;
    bool numeric; /* host is an IP literal, in addr */
    struct sockaddr_storage addr;
    size_t host_len;
    char host[SB_HCLIENT_HOST_MAX + 1]; /* lowercased, without IPv6 brackets, NUL-terminated */
} origin;

typedef struct sb__hconn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_getaddrinfo_t gai;
    uv_connect_t connect;
    uv_write_t write;

    sb_hclient *c;
    origin *o;
    sb_hclient_req *req;             /* the request in flight, or NULL */
    struct sb__hconn *prev, *next;   /* the client's list of every connection */
    struct sb__hconn *iprev, *inext; /* the origin's idle list */
    struct addrinfo *ai, *ai_next;   /* resolver answer (owned) and the next to try */
    struct h2state *h2;              /* h2c connections only */
    uint8_t state;
    uint8_t handles;  /* open libuv handles (timer, tcp) */
    bool tcp_open;    /* tcp initialised and not yet closing */
    bool gai_pending; /* the resolver callback has not run yet */
    bool writing;
    bool got_bytes;      /* a response byte arrived for the current request */
    bool reused;         /* has completed a response before: the server may have dropped it */
    bool stale_retry;    /* reconnecting to the same peer after a stale keep-alive failure */
    bool connect_timer;  /* the timer runs the connect timeout, not the request one */
    bool connected;      /* a connect was attempted (an error then reports it, not refusal) */
    int err;             /* the error a C_DEFERRED connection reports */
    int connect_err;     /* SB_EIO or SB_ETIMEDOUT: how the last connect failed */
    uint64_t connect_at; /* uv_now() when the current connect started */
    struct sockaddr_storage peer;
    char ip[46];
    const char *refused_why;
    char refused_ip[46];
    char error[200];
    sb_http1_response resp;
    char rbuf[READ_BUF_SIZE];
} hconn;

struct sb_hclient {
    uv_loop_t *loop;
    sb_hclient_config cfg;
    uv_timer_t handle; /* never started: closing it makes `closed` asynchronous */
    uv_prepare_t prep; /* flushes the h2c connections in `dirty` before the loop polls */
    int nhandles;      /* of the two above, not yet closed */
    hconn *dirty;      /* h2c connections with output or waiting requests */
    hconn *conns;
    bool closing;
    bool handle_closed;
    void (*closed)(void *ud);
    void *closed_ud;
    origin *origins[ORIGIN_BUCKETS];
};

static void conn_close(hconn *k);
static void connect_peer(hconn *k);
static void try_next_address(hconn *k);
static void io_error(hconn *k, int status);
static void defer(hconn *k, int err);
static void on_timer(uv_timer_t *t);
static void h2_conn_fail(hconn *k, int err);
static void h2_arm(hconn *k);
static void h2_timer(hconn *k);
static void h2_connected(hconn *k);
static void h2_conn_closing(hconn *k);
static void h2_free(hconn *k);
static void h2_fail_all(hconn *k, int err);

__attribute__((format(printf, 2, 3))) static void set_error(hconn *k, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(k->error, sizeof(k->error), fmt, ap);
    va_end(ap);
}

/* ---- origins ----------------------------------------------------------------------------- */

static uint32_t origin_hash(const char *host, size_t len, uint16_t port)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)host[i]) * 16777619u;
    return (h ^ port) * 16777619u;
}

static origin *origin_get(sb_hclient *c, const char *host, size_t len, uint16_t port)
{
    uint32_t h = origin_hash(host, len, port);
    origin **slot = &c->origins[h % ORIGIN_BUCKETS];
    for (origin *o = *slot; o; o = o->next)
        if (o->hash == h && o->port == port && o->host_len == len && !memcmp(o->host, host, len))
            return o;
    origin *o = sb_calloc(1, sizeof(*o));
    if (!o)
        return NULL;
    o->hash = h;
    o->port = port;
    o->host_len = len;
    memcpy(o->host, host, len);
    o->host[len] = '\0';
    struct sockaddr_in *v4 = (struct sockaddr_in *)&o->addr;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&o->addr;
    if (uv_ip4_addr(o->host, port, v4) == 0)
        o->numeric = true;
    else if (uv_ip6_addr(o->host, port, v6) == 0)
        o->numeric = true;
    o->next = *slot;
    *slot = o;
    return o;
}

static void origin_release(sb_hclient *c, origin *o)
{
    if (--o->nconns > 0)
        return;
    origin **p = &c->origins[o->hash % ORIGIN_BUCKETS];
    while (*p != o)
        p = &(*p)->next;
    *p = o->next;
    sb_free(o);
}

/* ---- URL --------------------------------------------------------------------------------- */

static bool ieq_prefix(const char *s, const char *lit)
{
    for (; *lit; s++, lit++) {
        char ch = *s;
        if (ch >= 'A' && ch <= 'Z')
            ch = (char)(ch | 0x20);
        if (ch != *lit)
            return false;
    }
    return true;
}

static bool reg_name_char(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '-' || ch == '.' || ch == '_';
}

int sb__hclient_parse_url(const char *url, sb__hclient_url *u)
{
    if (!url || !ieq_prefix(url, "http://"))
        return SB_EINVAL;
    const char *a = url + 7, *e = a;
    while (*e && *e != '/' && *e != '?' && *e != '#')
        e++;
    u->authority = a;
    u->authority_len = (size_t)(e - a);
    const char *p = a;
    if (*p == '[') {
        const char *close = memchr(p, ']', (size_t)(e - p));
        /* No zone id ("%eth0"): it is meaningless to the server and link-local anyway. */
        if (!close || close == p + 1 || close - p - 1 > 45 || memchr(p, '%', (size_t)(close - p)))
            return SB_EINVAL;
        u->host = p + 1;
        u->host_len = (size_t)(close - p - 1);
        char tmp[46];
        memcpy(tmp, u->host, u->host_len);
        tmp[u->host_len] = '\0';
        unsigned char bin[16];
        if (uv_inet_pton(AF_INET6, tmp, bin) != 0)
            return SB_EINVAL;
        p = close + 1;
    } else {
        while (p < e && reg_name_char(*p))
            p++;
        u->host = a;
        u->host_len = (size_t)(p - a);
        if (u->host_len == 0 || u->host_len > SB_HCLIENT_HOST_MAX)
            return SB_EINVAL;
    }
    u->port = 80;
    if (p < e) {
        if (*p != ':' || p + 1 == e || e - p - 1 > 5)
            return SB_EINVAL;
        unsigned port = 0;
        for (p++; p < e; p++) {
            if (*p < '0' || *p > '9')
                return SB_EINVAL;
            port = port * 10 + (unsigned)(*p - '0');
        }
        if (port == 0 || port > 65535)
            return SB_EINVAL;
        u->port = (uint16_t)port;
    }
    const char *q = e;
    while (*q && *q != '#') {
        /* Only visible ASCII: a space or control byte would split the request line. */
        if ((unsigned char)*q <= 0x20 || (unsigned char)*q >= 0x7f)
            return SB_EINVAL;
        q++;
    }
    u->path = e;
    u->path_len = (size_t)(q - e);
    if (u->path_len > SB_HCLIENT_PATH_MAX)
        return SB_EINVAL;
    return 0;
}

static size_t append(char *dst, size_t at, const char *s, size_t n)
{
    memcpy(dst + at, s, n);
    return at + n;
}

#define APPEND_LIT(dst, at, lit) append((dst), (at), (lit), sizeof(lit) - 1)

/* "POST " path " HTTP/1.1\r\nHost: " authority "\r\nContent-Length: " N "\r\n" [CRLF when
 * there are no extra fields]; the bounds on path and authority make it fit. */
void sb__hclient_build_head(sb_hclient_req *r, const sb__hclient_url *u, size_t body_len)
{
    char *h = r->head;
    size_t n = APPEND_LIT(h, 0, "POST ");
    if (u->path_len == 0 || u->path[0] == '?')
        n = APPEND_LIT(h, n, "/");
    n = append(h, n, u->path, u->path_len);
    n = APPEND_LIT(h, n, " HTTP/1.1\r\nHost: ");
    n = append(h, n, u->authority, u->authority_len);
    n = APPEND_LIT(h, n, "\r\nContent-Length: ");
    char digits[SB_U64_DEC_MAX];
    n = append(h, n, digits, sb_u64_dec(body_len, digits));
    n = APPEND_LIT(h, n, "\r\n");
    if (r->extra_len == 0)
        n = APPEND_LIT(h, n, "\r\n");
    r->head_len = n;
}

/* ---- connection lifetime ----------------------------------------------------------------- */

static void maybe_finalize_client(sb_hclient *c)
{
    if (!c->closing || !c->handle_closed || c->conns)
        return;
    void (*closed)(void *) = c->closed;
    void *ud = c->closed_ud;
    sb_free(c);
    if (closed)
        closed(ud);
}

static void maybe_free(hconn *k)
{
    if (k->handles > 0 || k->gai_pending)
        return;
    sb_hclient *c = k->c;
    if (k->prev)
        k->prev->next = k->next;
    else
        c->conns = k->next;
    if (k->next)
        k->next->prev = k->prev;
    if (k->ai)
        uv_freeaddrinfo(k->ai);
    if (k->h2)
        h2_free(k);
    origin_release(c, k->o);
    sb_free(k);
    maybe_finalize_client(c);
}

static void on_timer_closed(uv_handle_t *h)
{
    hconn *k = h->data;
    k->handles--;
    maybe_free(k);
}

static void on_tcp_closed(uv_handle_t *h)
{
    hconn *k = h->data;
    k->handles--;
    if (k->state != C_RECONNECTING) {
        maybe_free(k);
    } else if (k->stale_retry) {
        k->stale_retry = false;
        connect_peer(k);
    } else {
        try_next_address(k);
    }
}

static void idle_unlink(hconn *k)
{
    origin *o = k->o;
    if (k->iprev)
        k->iprev->inext = k->inext;
    else
        o->idle = k->inext;
    if (k->inext)
        k->inext->iprev = k->iprev;
    k->iprev = k->inext = NULL;
    o->nidle--;
}

static void close_tcp(hconn *k)
{
    if (k->tcp_open) {
        k->tcp_open = false;
        uv_close((uv_handle_t *)&k->tcp, on_tcp_closed);
    }
}

static void conn_close(hconn *k)
{
    if (k->state == C_CLOSING)
        return;
    if (k->state == C_IDLE)
        idle_unlink(k);
    if (k->h2)
        h2_conn_closing(k);
    k->state = C_CLOSING;
    uv_close((uv_handle_t *)&k->timer, on_timer_closed);
    close_tcp(k);
    if (k->gai_pending)
        uv_cancel((uv_req_t *)&k->gai);
}

static hconn *conn_new(sb_hclient *c, origin *o)
{
    hconn *k = sb_malloc(sizeof(*k));
    if (!k)
        return NULL;
    /* Everything but the read buffer, which is only ever written by the kernel. */
    memset(k, 0, offsetof(hconn, rbuf));
    k->c = c;
    k->o = o;
    uv_timer_init(c->loop, &k->timer);
    k->timer.data = k;
    k->handles = 1;
    o->nconns++;
    k->next = c->conns;
    if (c->conns)
        c->conns->prev = k;
    c->conns = k;
    return k;
}

/* ---- requests ---------------------------------------------------------------------------- */

static void finish(hconn *k, int err, bool keep)
{
    if (k->h2) {
        h2_conn_fail(k, err);
        return;
    }
    sb_hclient *c = k->c;
    sb_hclient_req *r = k->req;
    k->req = NULL;
    r->conn = NULL;
    uv_timer_stop(&k->timer);

    sb_hclient_result res;
    char retry_after[SB_HTTP1_RESPONSE_VALUE_MAX];
    res.err = err;
    res.status = k->resp.status;
    res.retry_after = NULL;
    res.retry_after_len = 0;
    if (k->resp.has_retry_after && k->resp.status) {
        /* Copied because `done` may post on this very connection, which resets its parser. */
        memcpy(retry_after, k->resp.retry_after, k->resp.retry_after_len);
        res.retry_after = retry_after;
        res.retry_after_len = k->resp.retry_after_len;
    }
    res.body_bytes = k->resp.body_bytes;
    res.refused_ip[0] = '\0';
    res.refused_why = NULL;
    res.error[0] = '\0';
    if (err) {
        memcpy(res.error, k->error, sizeof(res.error));
        res.error[sizeof(res.error) - 1] = '\0';
    }
    if (err == SB_EACCES) {
        memcpy(res.refused_ip, k->refused_ip, sizeof(res.refused_ip));
        res.refused_why = k->refused_why;
    }

    origin *o = k->o;
    if (err == 0 && keep && !c->closing && o->nidle < c->cfg.max_idle_per_origin) {
        k->state = C_IDLE;
        k->reused = true;
        k->iprev = NULL;
        k->inext = o->idle;
        if (o->idle)
            o->idle->iprev = k;
        o->idle = k;
        o->nidle++;
        if (c->cfg.idle_timeout_ms)
            uv_timer_start(&k->timer, on_timer, c->cfg.idle_timeout_ms, 0);
    } else {
        conn_close(k);
    }
    r->done(r, &res);
}

/* Runs the request timer for the time left (or the connect timeout, when shorter). */
static void arm_timer(hconn *k)
{
    if (k->h2) {
        h2_arm(k);
        return;
    }
    uint64_t now = uv_now(k->c->loop);
    uint64_t left = k->req->deadline > now ? k->req->deadline - now : 0;
    uint64_t ct = k->c->cfg.connect_timeout_ms;
    k->connect_timer = k->state == C_CONNECTING && ct && ct < left;
    uv_timer_start(&k->timer, on_timer, k->connect_timer ? ct : left, 0);
}

static void on_write(uv_write_t *w, int status)
{
    hconn *k = w->data;
    k->writing = false;
    if (status == UV_ECANCELED || k->state != C_ACTIVE || status >= 0)
        return;
    io_error(k, status);
}

/* Writes the request. uv_try_write first: when the socket takes it all (the normal case)
 * there is no write request, no callback and no epoll_ctl (a completed uv_write re-arms the
 * watcher in libuv 1.44); whatever is left goes through uv_write. A synchronous error is left
 * to uv_write too, so that it arrives through on_write, never inside sb_hclient_post. */
static void send_request(hconn *k)
{
    sb_hclient_req *r = k->req;
    sb_http1_response_init(&k->resp);
    k->got_bytes = false;
    uv_buf_t bufs[4];
    unsigned n = 0;
    bufs[n++] = uv_buf_init(r->head, (unsigned)r->head_len);
    if (r->extra_len) {
        bufs[n++] = uv_buf_init((char *)r->extra, (unsigned)r->extra_len);
        bufs[n++] = uv_buf_init((char *)"\r\n", 2);
    }
    if (r->body_len)
        bufs[n++] = uv_buf_init((char *)r->body, (unsigned)r->body_len);
    uv_buf_t *b = bufs;
    int sent = uv_try_write((uv_stream_t *)&k->tcp, bufs, n);
    if (sent > 0) {
        size_t left = (size_t)sent;
        while (n > 0 && left >= b->len) {
            left -= b->len;
            b++;
            n--;
        }
        if (n == 0)
            return;
        b->base += left;
        b->len -= left;
    }
    k->write.data = k;
    int rc = uv_write(&k->write, (uv_stream_t *)&k->tcp, b, n, on_write);
    if (rc < 0) {
        set_error(k, "write to %s port %u: %s", k->ip, (unsigned)k->o->port, uv_strerror(rc));
        defer(k, SB_EIO);
        return;
    }
    k->writing = true;
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    (void)hint;
    hconn *k = h->data;
    *buf = uv_buf_init(k->rbuf, sizeof(k->rbuf));
}

/* A read or write error (or EOF) on a connection with a request in flight. */
static void io_error(hconn *k, int status)
{
    sb_hclient_req *r = k->req;
    bool stale = status == UV_EOF || status == UV_ECONNRESET || status == UV_EPIPE;
    if (stale && k->reused && !k->got_bytes && !r->retried) {
        /* The server dropped the idle connection as we wrote: the request almost surely
         * went unread. Sending it again, once, on a new connection is what browsers and curl
         * do; a webhook carries its id, so a rare duplicate is the receiver's to drop. */
        r->retried = true;
        k->reused = false;
        k->stale_retry = true;
        k->state = C_RECONNECTING;
        close_tcp(k);
        return;
    }
    if (status == UV_EOF && sb_http1_response_eof(&k->resp) == 0) {
        finish(k, 0, false); /* a body delimited by the close */
        return;
    }
    if (status == UV_EOF) {
        set_error(k, "connection to %s port %u closed %s", k->ip, (unsigned)k->o->port,
                  k->got_bytes ? "in the middle of the response" : "before any response");
        finish(k, k->got_bytes ? SB_EPROTO : SB_EIO, false);
        return;
    }
    set_error(k, "connection to %s port %u: %s", k->ip, (unsigned)k->o->port, uv_strerror(status));
    finish(k, SB_EIO, false);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    hconn *k = s->data;
    if (nread == 0)
        return;
    if (k->state == C_IDLE) {
        conn_close(k); /* EOF, an error, or bytes nobody asked for */
        return;
    }
    if (k->state != C_ACTIVE)
        return;
    if (nread < 0) {
        io_error(k, (int)nread);
        return;
    }
    k->got_bytes = true;
    size_t used;
    int rc = sb_http1_response_feed(&k->resp, buf->base, (size_t)nread, &used);
    if (rc == SB_EAGAIN)
        return;
    if (rc < 0) {
        set_error(k,
                  rc == SB_EMSGSIZE ? "response from %s port %u: header section too large"
                                    : "invalid HTTP response from %s port %u",
                  k->ip, (unsigned)k->o->port);
        finish(k, SB_EPROTO, false);
        return;
    }
    /* Bytes past the response (a server pipelining garbage) leave the connection unusable. */
    finish(k, 0, k->resp.keep_alive && used == (size_t)nread && !k->writing);
}

static void on_connect(uv_connect_t *cr, int status)
{
    hconn *k = cr->data;
    if (k->state != C_CONNECTING)
        return;
    if (status < 0) {
        set_error(k, "connect to %s port %u: %s", k->ip, (unsigned)k->o->port, uv_strerror(status));
        k->connect_err = SB_EIO;
        if (k->ai_next) {
            k->state = C_RECONNECTING;
            close_tcp(k);
        } else {
            finish(k, SB_EIO, false);
        }
        return;
    }
    if (k->h2) {
        h2_connected(k);
        return;
    }
    int rc = uv_read_start((uv_stream_t *)&k->tcp, on_alloc, on_read);
    if (rc < 0) {
        set_error(k, "read from %s port %u: %s", k->ip, (unsigned)k->o->port, uv_strerror(rc));
        finish(k, SB_EIO, false);
        return;
    }
    k->state = C_ACTIVE;
    if (k->connect_timer)
        arm_timer(k);
    send_request(k);
}

static void format_ip(const struct sockaddr *sa, char *out, size_t len)
{
    if (sa->sa_family == AF_INET6)
        uv_ip6_name((const struct sockaddr_in6 *)sa, out, len);
    else
        uv_ip4_name((const struct sockaddr_in *)sa, out, len);
}

/* Opens a TCP handle and connects it to k->peer. */
static void connect_peer(hconn *k)
{
    sb_hclient *c = k->c;
    uv_tcp_init(c->loop, &k->tcp);
    k->tcp.data = k;
    k->handles++;
    k->tcp_open = true;
    k->connected = true;
    uv_tcp_nodelay(&k->tcp, 1);
    k->connect.data = k;
    k->state = C_CONNECTING;
    k->connect_at = uv_now(c->loop);
    int rc = uv_tcp_connect(&k->connect, &k->tcp, (const struct sockaddr *)&k->peer, on_connect);
    if (rc < 0) {
        set_error(k, "connect to %s port %u: %s", k->ip, (unsigned)k->o->port, uv_strerror(rc));
        defer(k, SB_EIO);
        return;
    }
    arm_timer(k);
}

/* Shows sa to the address check; copies it to k->peer and returns true when allowed. */
static bool admit(hconn *k, const struct sockaddr *sa)
{
    sb_hclient *c = k->c;
    char ip[46];
    format_ip(sa, ip, sizeof(ip));
    const char *why = c->cfg.addr_check ? c->cfg.addr_check(sa, c->cfg.addr_check_ud) : NULL;
    if (why) {
        if (!k->refused_why) {
            k->refused_why = why;
            memcpy(k->refused_ip, ip, sizeof(ip));
        }
        return false;
    }
    size_t len =
        sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    memcpy(&k->peer, sa, len);
    memcpy(k->ip, ip, sizeof(ip));
    return true;
}

static void refused(hconn *k)
{
    set_error(k, "address %s refused (%s)", k->refused_ip, k->refused_why);
}

static void try_next_address(hconn *k)
{
    while (k->ai_next) {
        struct addrinfo *a = k->ai_next;
        k->ai_next = a->ai_next;
        if (a->ai_family != AF_INET && a->ai_family != AF_INET6)
            continue;
        ((struct sockaddr_in *)a->ai_addr)->sin_port = htons(k->o->port);
        if (admit(k, a->ai_addr)) {
            connect_peer(k);
            return;
        }
    }
    if (k->connected) {
        finish(k, k->connect_err, false); /* k->error holds the last connect error */
    } else if (k->refused_why) {
        refused(k);
        finish(k, SB_EACCES, false);
    } else {
        set_error(k, "resolve %s: no usable address", k->o->host);
        finish(k, SB_EIO, false);
    }
}

static void on_resolved(uv_getaddrinfo_t *g, int status, struct addrinfo *res)
{
    hconn *k = g->data;
    k->gai_pending = false;
    if (k->state != C_RESOLVING) {
        if (res)
            uv_freeaddrinfo(res);
        maybe_free(k);
        return;
    }
    if (status < 0) {
        set_error(k, "resolve %s: %s", k->o->host, uv_strerror(status));
        finish(k, SB_EIO, false);
        return;
    }
    k->ai = k->ai_next = res;
    try_next_address(k);
}

static void on_timer(uv_timer_t *t)
{
    hconn *k = t->data;
    switch (k->state) {
    case C_IDLE:
        conn_close(k);
        return;
    case C_DEFERRED:
        finish(k, k->err, false);
        return;
    case C_CLOSING:
        return;
    default:
        break;
    }
    if (k->h2) {
        h2_timer(k);
        return;
    }
    if (k->connect_timer && k->state == C_CONNECTING) {
        set_error(k, "connect to %s port %u timed out after %" PRIu64 " ms", k->ip,
                  (unsigned)k->o->port, k->c->cfg.connect_timeout_ms);
        if (k->ai_next) {
            /* An address that does not answer (often IPv6 without a route): try the next. */
            k->connect_err = SB_ETIMEDOUT;
            k->state = C_RECONNECTING;
            close_tcp(k);
            return;
        }
    } else {
        set_error(k, "timed out after %" PRIu64 " ms", k->req->timeout_ms);
    }
    finish(k, SB_ETIMEDOUT, false);
}

/* Reports err (with k->error) from the loop, never from the caller's stack. */
static void defer(hconn *k, int err)
{
    k->state = C_DEFERRED;
    k->err = err;
    close_tcp(k);
    uv_timer_start(&k->timer, on_timer, 0, 0);
}

/* A new connection for k->req: resolve (or use the literal), check, connect. */
static void conn_start(hconn *k)
{
    origin *o = k->o;
    if (o->numeric) {
        if (!admit(k, (const struct sockaddr *)&o->addr)) {
            refused(k);
            defer(k, SB_EACCES);
            return;
        }
        connect_peer(k);
        return;
    }
    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    k->gai.data = k;
    k->state = C_RESOLVING;
    int rc = uv_getaddrinfo(k->c->loop, &k->gai, on_resolved, o->host, NULL, &hints);
    if (rc < 0) {
        set_error(k, "resolve %s: %s", o->host, uv_strerror(rc));
        defer(k, SB_EIO);
        return;
    }
    k->gai_pending = true;
    arm_timer(k);
}

/* ---- h2c ---------------------------------------------------------------------------------- */

#define H2_OUT_MAX      (1u << 20) /* pending output per connection; nghttp2 waits beyond it */
#define H2_WINDOW       (1 << 20)  /* stream and connection receive windows */
#define H2_HDR_LIST_MAX 16384      /* SETTINGS_MAX_HEADER_LIST_SIZE we announce */
#define H2_EXTRA_MAX    8192       /* extra header bytes accepted for one h2c request */
#define H2_EXTRA_LINES  64         /* extra header lines accepted for one h2c request */
#define H2_PEER_STREAMS 100        /* streams assumed before the server's SETTINGS arrive */

typedef struct h2state {
    nghttp2_session *s;
    sb_hclient_req *dhead, *dtail; /* every request on the connection, by deadline */
    sb_hclient_req *whead, *wtail; /* requests waiting for a stream, in order */
    hconn *dnext;                  /* the client's dirty list */
    int nreqs;                     /* requests on the connection */
    int nstreams;                  /* slots in use: open streams, finished requests included */
    int32_t goaway_last;
    bool goaway;   /* GOAWAY received: no new stream here */
    bool settings; /* the server's SETTINGS arrived */
    bool linked;   /* in the origin's h2 list */
    bool dirty;    /* in the client's dirty list */
    bool in_recv;  /* inside nghttp2_session_mem_recv: no send, no free */
    bool writing;  /* a uv_write of wout is in flight */
    char *out;     /* output collected since the last write */
    size_t out_len, out_cap;
    char *wout; /* output being written */
    size_t wout_cap;
    uint16_t nfree;
    uint16_t freeidx[SB_HCLIENT_H2_MAX_STREAMS];
    sb_hclient_req *slot[SB_HCLIENT_H2_MAX_STREAMS]; /* by stream user data - 1; NULL when the
                                                        request finished before its stream */
} h2state;

static void *h2_malloc(size_t n, void *ud)
{
    (void)ud;
    return sb_malloc(n);
}

static void h2_mfree(void *p, void *ud)
{
    (void)ud;
    sb_free(p);
}

static void *h2_calloc(size_t n, size_t size, void *ud)
{
    (void)ud;
    return sb_calloc(n, size);
}

static void *h2_realloc(void *p, size_t n, void *ud)
{
    (void)ud;
    return sb_realloc(p, n);
}

static nghttp2_mem h2_mem = {NULL, h2_malloc, h2_mfree, h2_calloc, h2_realloc};

/* RFC 9110 tchar. */
static const unsigned char tchars[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1, ['+'] = 1,
    ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1,  ['~'] = 1, ['0'] = 1,
    ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1,  ['7'] = 1, ['8'] = 1,
    ['9'] = 1, ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1,  ['F'] = 1, ['G'] = 1,
    ['H'] = 1, ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1,  ['N'] = 1, ['O'] = 1,
    ['P'] = 1, ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1,  ['V'] = 1, ['W'] = 1,
    ['X'] = 1, ['Y'] = 1, ['Z'] = 1, ['a'] = 1, ['b'] = 1, ['c'] = 1,  ['d'] = 1, ['e'] = 1,
    ['f'] = 1, ['g'] = 1, ['h'] = 1, ['i'] = 1, ['j'] = 1, ['k'] = 1,  ['l'] = 1, ['m'] = 1,
    ['n'] = 1, ['o'] = 1, ['p'] = 1, ['q'] = 1, ['r'] = 1, ['s'] = 1,  ['t'] = 1, ['u'] = 1,
    ['v'] = 1, ['w'] = 1, ['x'] = 1, ['y'] = 1, ['z'] = 1,
};

static bool ieq(const char *a, size_t n, const char *lit, size_t m)
{
    if (n != m)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = a[i];
        if (ch >= 'A' && ch <= 'Z')
            ch = (char)(ch | 0x20);
        if (ch != lit[i])
            return false;
    }
    return true;
}

#define IEQ(a, n, lit) ieq((a), (n), (lit), sizeof(lit) - 1)

/* Connection-specific fields (RFC 9113 §8.2.2) and the ones the client writes itself. */
static bool banned_field(const char *n, size_t len)
{
    switch (len) {
    case 2:
        return IEQ(n, len, "te");
    case 4:
        return IEQ(n, len, "host");
    case 7:
        return IEQ(n, len, "upgrade");
    case 10:
        return IEQ(n, len, "connection") || IEQ(n, len, "keep-alive");
    case 14:
        return IEQ(n, len, "content-length");
    case 16:
        return IEQ(n, len, "proxy-connection");
    case 17:
        return IEQ(n, len, "transfer-encoding");
    default:
        return false;
    }
}

/* One pass over the lines; fn (may be NULL) sees each line before the next is checked. */
static int h2_lines(const char *extra, size_t len,
                    int (*fn)(const char *, size_t, const char *, size_t, void *), void *ud)
{
    size_t i = 0;
    while (i < len) {
        size_t n0 = i;
        while (i < len && tchars[(unsigned char)extra[i]])
            i++;
        size_t nlen = i - n0;
        if (nlen == 0 || i >= len || extra[i] != ':' || banned_field(extra + n0, nlen))
            return SB_EINVAL;
        i++;
        while (i < len && (extra[i] == ' ' || extra[i] == '\t'))
            i++;
        size_t v0 = i;
        while (i < len) {
            unsigned char ch = (unsigned char)extra[i];
            if (ch < 0x20 && ch != '\t')
                break;
            if (ch == 0x7f)
                return SB_EINVAL;
            i++;
        }
        if (i + 1 >= len || extra[i] != '\r' || extra[i + 1] != '\n')
            return SB_EINVAL;
        size_t v1 = i;
        while (v1 > v0 && (extra[v1 - 1] == ' ' || extra[v1 - 1] == '\t'))
            v1--;
        i += 2;
        if (fn) {
            int rc = fn(extra + n0, nlen, extra + v0, v1 - v0, ud);
            if (rc)
                return rc;
        }
    }
    return 0;
}

/* h2_lines for lines it already accepted: memchr instead of byte checks. */
static int h2_lines_checked(const char *extra, size_t len,
                            int (*fn)(const char *, size_t, const char *, size_t, void *), void *ud)
{
    const char *p = extra, *end = extra + len;
    while (p < end) {
        const char *colon = memchr(p, ':', (size_t)(end - p));
        const char *cr = memchr(colon, '\r', (size_t)(end - colon));
        const char *v0 = colon + 1, *v1 = cr;
        while (v0 < v1 && (*v0 == ' ' || *v0 == '\t'))
            v0++;
        while (v1 > v0 && (v1[-1] == ' ' || v1[-1] == '\t'))
            v1--;
        int rc = fn(p, (size_t)(colon - p), v0, (size_t)(v1 - v0), ud);
        if (rc)
            return rc;
        p = cr + 2;
    }
    return 0;
}

int sb__hclient_h2_headers(const char *extra, size_t len,
                           int (*fn)(const char *name, size_t name_len, const char *value,
                                     size_t value_len, void *ud),
                           void *ud)
{
    /* Checked in full first, so that fn never sees a part of an invalid list; then split as
     * h2_submit_waiting does, so the fuzz target checks what requests carry. */
    int rc = h2_lines(extra, len, NULL, NULL);
    return rc ? rc : h2_lines_checked(extra, len, fn, ud);
}

/* -- request lists -- */

static void h2_wait_push(h2state *h, sb_hclient_req *r)
{
    r->wnext = NULL;
    r->wprev = h->wtail;
    if (h->wtail)
        h->wtail->wnext = r;
    else
        h->whead = r;
    h->wtail = r;
}

static void h2_wait_unlink(h2state *h, sb_hclient_req *r)
{
    if (r->wprev)
        r->wprev->wnext = r->wnext;
    else
        h->whead = r->wnext;
    if (r->wnext)
        r->wnext->wprev = r->wprev;
    else
        h->wtail = r->wprev;
    r->wprev = r->wnext = NULL;
}

/* Puts r on k: in the deadline list (from the tail: deadlines mostly grow) and waiting. */
static void h2_attach(hconn *k, sb_hclient_req *r)
{
    h2state *h = k->h2;
    sb_hclient_req *p = h->dtail;
    while (p && p->deadline > r->deadline)
        p = p->dprev;
    r->dprev = p;
    r->dnext = p ? p->dnext : h->dhead;
    if (r->dnext)
        r->dnext->dprev = r;
    else
        h->dtail = r;
    if (p)
        p->dnext = r;
    else
        h->dhead = r;
    r->conn = k;
    r->stream_id = 0;
    h->nreqs++;
    h2_wait_push(h, r);
}

static void h2_detach(hconn *k, sb_hclient_req *r)
{
    h2state *h = k->h2;
    if (r->stream_id == 0)
        h2_wait_unlink(h, r);
    if (r->dprev)
        r->dprev->dnext = r->dnext;
    else
        h->dhead = r->dnext;
    if (r->dnext)
        r->dnext->dprev = r->dprev;
    else
        h->dtail = r->dprev;
    r->dprev = r->dnext = NULL;
    r->conn = NULL;
    h->nreqs--;
}

/* Clears the slot of a request that has a stream; the slot itself is freed when the stream
 * closes. */
static void h2_unslot(hconn *k, sb_hclient_req *r)
{
    if (r->stream_id == 0)
        return;
    k->h2->slot[r->h2_slot] = NULL;
}

static void h2_reset_response(sb_hclient_req *r)
{
    r->h2_complete = false;
    r->h2_got_bytes = false;
    r->h2_ra_len = 0;
    r->h2_status = 0;
    r->h2_hdr_bytes = 0;
    r->sent = 0;
    r->h2_body = 0;
}

/* Detaches r from k and calls done. error NULL: k->error. */
static void h2_done(hconn *k, sb_hclient_req *r, int err, const char *error)
{
    h2_unslot(k, r);
    h2_detach(k, r);
    sb_hclient_result res;
    char retry_after[SB_HCLIENT_H2_RETRY_AFTER_MAX];
    res.err = err;
    res.status = r->h2_status;
    res.retry_after = NULL;
    res.retry_after_len = 0;
    if (r->h2_ra_len && r->h2_status) {
        memcpy(retry_after, r->head + r->h2_auth_len + r->h2_path_len, r->h2_ra_len - 1u);
        res.retry_after = retry_after;
        res.retry_after_len = r->h2_ra_len - 1u;
    }
    res.body_bytes = r->h2_body;
    res.refused_ip[0] = '\0';
    res.refused_why = NULL;
    res.error[0] = '\0';
    if (err) {
        snprintf(res.error, sizeof(res.error), "%s", error ? error : k->error);
    }
    if (err == SB_EACCES) {
        memcpy(res.refused_ip, k->refused_ip, sizeof(res.refused_ip));
        res.refused_why = k->refused_why;
    }
    r->done(r, &res);
}

static void on_prepare(uv_prepare_t *p);

static void h2_mark(hconn *k)
{
    h2state *h = k->h2;
    if (h->dirty || k->state == C_CLOSING)
        return;
    sb_hclient *c = k->c;
    h->dirty = true;
    h->dnext = c->dirty;
    if (!c->dirty)
        uv_prepare_start(&c->prep, on_prepare);
    c->dirty = k;
}

static hconn *h2_conn_new(sb_hclient *c, origin *o);
static void h2_start_new(hconn *k);

/* Takes an h2c connection out of its origin's list (no new request is put on it). */
static void h2_unlink(hconn *k)
{
    h2state *h = k->h2;
    if (!h->linked)
        return;
    h->linked = false;
    origin *o = k->o;
    if (k->iprev)
        k->iprev->inext = k->inext;
    else
        o->h2 = k->inext;
    if (k->inext)
        k->inext->iprev = k->iprev;
    k->iprev = k->inext = NULL;
}

/* Puts r on a usable h2c connection of o, opening one when there is none. */
static int h2_dispatch(sb_hclient *c, origin *o, sb_hclient_req *r)
{
    hconn *k;
    for (k = o->h2; k; k = k->inext) {
        /* Full at the server's limit (once known) or ours: the next connection, or a new one. */
        h2state *h = k->h2;
        uint32_t max = SB_HCLIENT_H2_MAX_STREAMS;
        if (h->settings) {
            uint32_t srv =
                nghttp2_session_get_remote_settings(h->s, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
            if (srv < max)
                max = srv ? srv : 1;
        }
        if (!h->goaway && k->state != C_CLOSING && (uint32_t)h->nreqs < max)
            break;
    }
    if (k) {
        h2_attach(k, r);
        if (k->state == C_ACTIVE)
            h2_mark(k);
        h2_arm(k);
        return 0;
    }
    k = h2_conn_new(c, o);
    if (!k)
        return SB_ENOMEM;
    h2_attach(k, r);
    h2_start_new(k);
    return 0;
}

/* Moves r (detached from its old connection, or never attached) to a connection of origin o,
 * reporting failures through done. */
static void h2_requeue(hconn *from, sb_hclient_req *r)
{
    sb_hclient *c = from->c;
    h2_unslot(from, r);
    if (c->closing) {
        h2_done(from, r, SB_ECANCELED, "cancelled: client closed");
        return;
    }
    h2_detach(from, r);
    h2_reset_response(r);
    if (h2_dispatch(c, from->o, r) < 0) {
        /* Attach back to report it through the same path. */
        h2_attach(from, r);
        h2_done(from, r, SB_ENOMEM, "out of memory");
    }
}

static void h2_write_cb(uv_write_t *w, int status);
static void h2_flush(hconn *k);

/* The connection is gone (EOF, reset, protocol error, write error) or ends after a GOAWAY:
 * requests without a response byte (and not after GOAWAY) are retried once elsewhere, the
 * others fail with err; waiting requests move to another connection. */
static void h2_conn_lost(hconn *k, int err)
{
    h2state *h = k->h2;
    conn_close(k);
    for (int i = 0; i < SB_HCLIENT_H2_MAX_STREAMS; i++) {
        sb_hclient_req *r = h->slot[i];
        if (!r)
            continue;
        if (!h->goaway && !r->h2_got_bytes && !r->retried) {
            r->retried = true;
            h2_requeue(k, r);
        } else {
            h2_done(k, r, err, NULL);
        }
    }
    while (h->whead)
        h2_requeue(k, h->whead);
}

/* Everything on k fails with err (connect failures, client close). */
static void h2_fail_all(hconn *k, int err)
{
    h2state *h = k->h2;
    while (h->dhead)
        h2_done(k, h->dhead, err, NULL);
}

static void h2_conn_fail(hconn *k, int err)
{
    conn_close(k);
    h2_fail_all(k, err);
}

/* -- nghttp2 callbacks -- */

static sb_hclient_req *h2_req(hconn *k, int32_t stream_id)
{
    uintptr_t idx = (uintptr_t)nghttp2_session_get_stream_user_data(k->h2->s, stream_id);
    if (idx == 0 || idx > SB_HCLIENT_H2_MAX_STREAMS)
        return NULL;
    return k->h2->slot[idx - 1];
}

static ssize_t h2_send_cb(nghttp2_session *s, const uint8_t *data, size_t len, int flags, void *ud)
{
    (void)s;
    (void)flags;
    h2state *h = ((hconn *)ud)->h2;
    if (h->out_len + len > h->out_cap) {
        size_t cap = h->out_cap ? h->out_cap : 16384;
        while (cap < h->out_len + len)
            cap *= 2;
        if (cap > H2_OUT_MAX)
            return h->out_len ? NGHTTP2_ERR_WOULDBLOCK : NGHTTP2_ERR_CALLBACK_FAILURE;
        char *p = sb_realloc(h->out, cap);
        if (!p)
            return h->out_len ? NGHTTP2_ERR_WOULDBLOCK : NGHTTP2_ERR_CALLBACK_FAILURE;
        h->out = p;
        h->out_cap = cap;
    }
    memcpy(h->out + h->out_len, data, len);
    h->out_len += len;
    return (ssize_t)len;
}

static ssize_t h2_read_body(nghttp2_session *s, int32_t stream_id, uint8_t *buf, size_t len,
                            uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    (void)s;
    (void)src;
    sb_hclient_req *r = h2_req(ud, stream_id);
    if (!r) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        return 0;
    }
    size_t n = r->body_len - r->sent;
    if (n > len)
        n = len;
    memcpy(buf, r->body + r->sent, n);
    r->sent += n;
    if (r->sent == r->body_len)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

static int h2_on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name,
                        size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                        void *ud)
{
    (void)s;
    (void)flags;
    if (f->hd.type != NGHTTP2_HEADERS)
        return 0;
    sb_hclient_req *r = h2_req(ud, f->hd.stream_id);
    if (!r)
        return 0;
    r->h2_got_bytes = true;
    /* RFC 9113 §6.5.2 counts 32 bytes per field; nghttp2 does not enforce ours. */
    r->h2_hdr_bytes += (uint32_t)(namelen + valuelen + 32);
    if (r->h2_hdr_bytes > H2_HDR_LIST_MAX) {
        r->h2_hdr_bytes = UINT32_MAX;
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* resets the stream */
    }
    if (namelen == 7 && memcmp(name, ":status", 7) == 0) {
        /* nghttp2 checked it is three digits. */
        int st =
            valuelen == 3 ? (value[0] - '0') * 100 + (value[1] - '0') * 10 + (value[2] - '0') : 0;
        if (st >= 200)
            r->h2_status = st;
    } else if (namelen == 11 && memcmp(name, "retry-after", 11) == 0) {
        while (valuelen && (*value == ' ' || *value == '\t'))
            value++, valuelen--;
        while (valuelen && (value[valuelen - 1] == ' ' || value[valuelen - 1] == '\t'))
            valuelen--;
        if (valuelen < SB_HCLIENT_H2_RETRY_AFTER_MAX) {
            memcpy(r->head + r->h2_auth_len + r->h2_path_len, value, valuelen);
            r->h2_ra_len = (uint8_t)(valuelen + 1);
        }
    }
    return 0;
}

static int h2_on_data(nghttp2_session *s, uint8_t flags, int32_t stream_id, const uint8_t *data,
                      size_t len, void *ud)
{
    (void)s;
    (void)flags;
    (void)data;
    sb_hclient_req *r = h2_req(ud, stream_id);
    if (r) {
        r->h2_got_bytes = true;
        r->h2_body += len;
    }
    return 0;
}

static int h2_on_frame(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    (void)s;
    hconn *k = ud;
    h2state *h = k->h2;
    switch (f->hd.type) {
    case NGHTTP2_HEADERS:
    case NGHTTP2_DATA:
        if (f->hd.flags & NGHTTP2_FLAG_END_STREAM) {
            sb_hclient_req *r = h2_req(k, f->hd.stream_id);
            if (r)
                r->h2_complete = true;
        }
        break;
    case NGHTTP2_SETTINGS:
        if (!(f->hd.flags & NGHTTP2_FLAG_ACK))
            h->settings = true;
        break;
    case NGHTTP2_GOAWAY:
        if (!h->goaway || f->goaway.last_stream_id < h->goaway_last)
            h->goaway_last = f->goaway.last_stream_id;
        h->goaway = true;
        h2_unlink(k); /* no new request comes here any more */
        while (h->whead)
            h2_requeue(k, h->whead);
        break;
    default:
        break;
    }
    return 0;
}

static int h2_on_close(nghttp2_session *s, int32_t stream_id, uint32_t code, void *ud)
{
    hconn *k = ud;
    h2state *h = k->h2;
    uintptr_t idx = (uintptr_t)nghttp2_session_get_stream_user_data(s, stream_id);
    if (idx == 0 || idx > SB_HCLIENT_H2_MAX_STREAMS)
        return 0;
    sb_hclient_req *r = h->slot[idx - 1];
    h->slot[idx - 1] = NULL;
    h->freeidx[h->nfree++] = (uint16_t)(idx - 1);
    h->nstreams--;
    if (!r || k->state == C_CLOSING)
        return 0;
    if (r->h2_complete && r->h2_status) {
        h2_done(k, r, 0, NULL);
        return 0;
    }
    bool refused = code == NGHTTP2_REFUSED_STREAM || (h->goaway && stream_id > h->goaway_last);
    if (refused && !r->h2_got_bytes && !r->retried) {
        r->retried = true;
        if (h->goaway) {
            h2_requeue(k, r);
        } else {
            /* Back in line on this connection (REFUSED_STREAM: it was not processed). */
            r->stream_id = 0;
            h2_reset_response(r);
            h2_wait_push(h, r);
        }
        return 0;
    }
    char msg[200];
    if (r->h2_hdr_bytes == UINT32_MAX) {
        snprintf(msg, sizeof(msg), "response from %s port %u: header section too large", k->ip,
                 (unsigned)k->o->port);
        h2_done(k, r, SB_EPROTO, msg);
        return 0;
    }
    if (r->h2_complete)
        snprintf(msg, sizeof(msg), "invalid HTTP/2 response from %s port %u: no status", k->ip,
                 (unsigned)k->o->port);
    else
        snprintf(msg, sizeof(msg), "stream reset by %s port %u (HTTP/2 error %u)", k->ip,
                 (unsigned)k->o->port, (unsigned)code);
    h2_done(k, r, r->h2_complete ? SB_EPROTO : SB_EIO, msg);
    return 0;
}

static nghttp2_session_callbacks *h2_callbacks;
static pthread_once_t h2_callbacks_once = PTHREAD_ONCE_INIT;

static void h2_make_callbacks(void)
{
    nghttp2_session_callbacks *cb;
    if (nghttp2_session_callbacks_new(&cb) != 0)
        return;
    nghttp2_session_callbacks_set_send_callback(cb, h2_send_cb);
    nghttp2_session_callbacks_set_on_header_callback(cb, h2_on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, h2_on_data);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, h2_on_frame);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, h2_on_close);
    h2_callbacks = cb;
}

static int h2_callbacks_init(void)
{
    pthread_once(&h2_callbacks_once, h2_make_callbacks);
    return h2_callbacks ? 0 : SB_ENOMEM;
}

/* -- connection -- */

static hconn *h2_conn_new(sb_hclient *c, origin *o)
{
    hconn *k = conn_new(c, o);
    if (!k)
        return NULL;
    h2state *h = sb_calloc(1, sizeof(*h));
    nghttp2_option *opt = NULL;
    k->h2 = h;
    if (!h || nghttp2_option_new(&opt) != 0)
        goto fail;
    nghttp2_option_set_no_closed_streams(opt, 1);
    nghttp2_option_set_peer_max_concurrent_streams(opt, H2_PEER_STREAMS);
#ifdef SB_HAVE_NGHTTP2_MAX_CONTINUATIONS
    nghttp2_option_set_max_continuations(opt, 8);
#endif
    if (nghttp2_session_client_new3(&h->s, h2_callbacks, k, opt, &h2_mem) != 0)
        goto fail;
    nghttp2_option_del(opt);
    opt = NULL;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 0},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, H2_WINDOW},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, H2_HDR_LIST_MAX},
    };
    if (nghttp2_submit_settings(h->s, NGHTTP2_FLAG_NONE, iv, sizeof(iv) / sizeof(iv[0])) != 0 ||
        nghttp2_session_set_local_window_size(h->s, NGHTTP2_FLAG_NONE, 0, H2_WINDOW) != 0)
        goto fail;
    for (int i = 0; i < SB_HCLIENT_H2_MAX_STREAMS; i++)
        h->freeidx[i] = (uint16_t)(SB_HCLIENT_H2_MAX_STREAMS - 1 - i);
    h->nfree = SB_HCLIENT_H2_MAX_STREAMS;
    /* At the tail: requests go to the oldest connection with room. */
    h->linked = true;
    hconn *last = o->h2;
    while (last && last->inext)
        last = last->inext;
    k->iprev = last;
    k->inext = NULL;
    if (last)
        last->inext = k;
    else
        o->h2 = k;
    return k;
fail:
    nghttp2_option_del(opt);
    /* A connection without a session: closed at once, freed from the loop. */
    k->state = C_CLOSING;
    uv_close((uv_handle_t *)&k->timer, on_timer_closed);
    return NULL;
}

static void h2_start_new(hconn *k)
{
    conn_start(k);
}

/* conn_close of an h2c connection: out of the origin's list and the dirty list. */
static void h2_conn_closing(hconn *k)
{
    h2state *h = k->h2;
    h2_unlink(k);
    if (h->dirty) {
        hconn **p = &k->c->dirty;
        while (*p != k)
            p = &(*p)->h2->dnext;
        *p = h->dnext;
        h->dirty = false;
    }
}

static void h2_free(hconn *k)
{
    h2state *h = k->h2;
    if (h->s)
        nghttp2_session_del(h->s);
    sb_free(h->out);
    sb_free(h->wout);
    sb_free(h);
    k->h2 = NULL;
}

static void h2_arm(hconn *k)
{
    h2state *h = k->h2;
    if (k->state == C_DEFERRED || k->state == C_CLOSING)
        return;
    uint64_t now = uv_now(k->c->loop);
    uint64_t at = h->dhead ? h->dhead->deadline : UINT64_MAX;
    uint64_t ct = k->c->cfg.connect_timeout_ms;
    k->connect_timer = false;
    if (k->state == C_CONNECTING && ct && k->connect_at + ct < at) {
        at = k->connect_at + ct;
        k->connect_timer = true;
    }
    if (at == UINT64_MAX) {
        if (!k->c->cfg.idle_timeout_ms) {
            uv_timer_stop(&k->timer);
            return;
        }
        at = now + k->c->cfg.idle_timeout_ms;
    }
    uv_timer_start(&k->timer, on_timer, at > now ? at - now : 0, 0);
}

static void h2_timer(hconn *k)
{
    h2state *h = k->h2;
    if (k->connect_timer && k->state == C_CONNECTING) {
        set_error(k, "connect to %s port %u timed out after %" PRIu64 " ms", k->ip,
                  (unsigned)k->o->port, k->c->cfg.connect_timeout_ms);
        k->connect_err = SB_ETIMEDOUT;
        if (k->ai_next) {
            k->state = C_RECONNECTING;
            close_tcp(k);
            return;
        }
        h2_conn_fail(k, SB_ETIMEDOUT);
        return;
    }
    if (!h->dhead) {
        conn_close(k); /* idle */
        return;
    }
    uint64_t now = uv_now(k->c->loop);
    while (h->dhead && h->dhead->deadline <= now && k->state != C_CLOSING) {
        sb_hclient_req *r = h->dhead;
        if (r->stream_id && k->state == C_ACTIVE)
            nghttp2_submit_rst_stream(h->s, NGHTTP2_FLAG_NONE, r->stream_id, NGHTTP2_CANCEL);
        char msg[64];
        snprintf(msg, sizeof(msg), "timed out after %" PRIu64 " ms", r->timeout_ms);
        h2_done(k, r, SB_ETIMEDOUT, msg);
    }
    if (k->state == C_ACTIVE)
        h2_mark(k);
    h2_arm(k);
}

typedef struct nvbuild {
    nghttp2_nv *nv;
    size_t n;
    char *lower;
    uint8_t flags; /* NGHTTP2_NV_FLAG_* for every line */
} nvbuild;

static int nv_add(const char *name, size_t nlen, const char *value, size_t vlen, void *ud)
{
    nvbuild *b = ud;
    for (size_t i = 0; i < nlen; i++) {
        char ch = name[i];
        b->lower[i] = (ch >= 'A' && ch <= 'Z') ? (char)(ch | 0x20) : ch;
    }
    b->nv[b->n++] = (nghttp2_nv){(uint8_t *)b->lower, (uint8_t *)value, nlen, vlen, b->flags};
    b->lower += nlen;
    return 0;
}

#define NV_LIT(n, v, vlen)                                                                         \
    (nghttp2_nv)                                                                                   \
    {                                                                                              \
        (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, (vlen), NGHTTP2_NV_FLAG_NONE                \
    }

/* Starts streams for waiting requests while the server's limit (and ours) allows. */
static void h2_submit_waiting(hconn *k)
{
    h2state *h = k->h2;
    if (h->goaway)
        return;
    uint32_t max =
        nghttp2_session_get_remote_settings(h->s, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
    if (max > SB_HCLIENT_H2_MAX_STREAMS)
        max = SB_HCLIENT_H2_MAX_STREAMS;
    while (h->whead && (uint32_t)h->nstreams < max && h->nfree) {
        sb_hclient_req *r = h->whead;
        nghttp2_nv nv[5 + H2_EXTRA_LINES];
        char lower[H2_EXTRA_MAX];
        char digits[SB_U64_DEC_MAX];
        size_t nd = sb_u64_dec(r->body_len, digits);
        nv[0] = NV_LIT(":method", "POST", 4);
        nv[1] = NV_LIT(":scheme", "http", 4);
        nv[2] = NV_LIT(":authority", r->head, r->h2_auth_len);
        nv[3] = NV_LIT(":path", r->head + r->h2_auth_len, r->h2_path_len);
        nv[4] = NV_LIT("content-length", digits, nd);
        nvbuild b = {nv, 5, lower,
                     r->h2_noindex ? (uint8_t)NGHTTP2_NV_FLAG_NO_INDEX : NGHTTP2_NV_FLAG_NONE};
        if (r->extra_len)
            (void)h2_lines_checked(r->extra, r->extra_len, nv_add, &b); /* checked in post */
        nghttp2_data_provider dp = {.source.ptr = NULL, .read_callback = h2_read_body};
        uint16_t idx = h->freeidx[h->nfree - 1];
        int32_t id = nghttp2_submit_request(h->s, NULL, nv, b.n, r->body_len ? &dp : NULL,
                                            (void *)(uintptr_t)(idx + 1u));
        if (id < 0) {
            if (id == NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE) {
                /* Stream ids used up: this connection takes no more. */
                h->goaway = true;
                h->goaway_last = INT32_MAX;
                while (h->whead)
                    h2_requeue(k, h->whead);
                return;
            }
            h2_done(k, r, SB_ENOMEM, "out of memory");
            continue;
        }
        h->nfree--;
        h2_wait_unlink(h, r);
        h->slot[idx] = r;
        r->h2_slot = idx;
        r->stream_id = id;
        h->nstreams++;
    }
}

/* Submits waiting requests, serialises everything nghttp2 has to send and writes it: one
 * uv_try_write, the rest through uv_write (further output then waits for it). */
static void h2_flush(hconn *k)
{
    h2state *h = k->h2;
    if (k->state != C_ACTIVE || h->in_recv)
        return;
    h2_submit_waiting(k);
    if (k->state != C_ACTIVE)
        return;
    /* Normally one pass; more only when nghttp2 had more than H2_OUT_MAX to send. */
    for (;;) {
        int rv = nghttp2_session_send(h->s);
        if (rv < 0) {
            set_error(k, "HTTP/2 connection to %s port %u: %s", k->ip, (unsigned)k->o->port,
                      nghttp2_strerror(rv));
            h2_conn_lost(k, SB_EIO);
            return;
        }
        if (k->state != C_ACTIVE)
            return; /* a done callback run by a stream closing on send closed the client */
        if (h->out_len == 0 || h->writing)
            break;
        uv_buf_t b = uv_buf_init(h->out, (unsigned)h->out_len);
        int n = uv_try_write((uv_stream_t *)&k->tcp, &b, 1);
        if (n == (int)h->out_len) {
            h->out_len = 0;
            if (!nghttp2_session_want_write(h->s))
                break;
            continue;
        }
        /* The rest goes through uv_write; output collected meanwhile waits in the other
         * buffer until h2_write_cb. */
        size_t off = n > 0 ? (size_t)n : 0;
        char *p = h->out;
        size_t cap = h->out_cap;
        h->out = h->wout;
        h->out_cap = h->wout_cap;
        h->wout = p;
        h->wout_cap = cap;
        b = uv_buf_init(p + off, (unsigned)(h->out_len - off));
        h->out_len = 0;
        k->write.data = k;
        int rc = (n < 0 && n != UV_EAGAIN)
                     ? n
                     : uv_write(&k->write, (uv_stream_t *)&k->tcp, &b, 1, h2_write_cb);
        if (rc < 0) {
            set_error(k, "write to %s port %u: %s", k->ip, (unsigned)k->o->port, uv_strerror(rc));
            h2_conn_lost(k, SB_EIO);
            return;
        }
        h->writing = true;
        break;
    }
    if (!h->writing && !nghttp2_session_want_read(h->s) && !nghttp2_session_want_write(h->s)) {
        /* Finished by GOAWAY (ours or the server's) with nothing left open. */
        set_error(k, "connection to %s port %u ended by GOAWAY", k->ip, (unsigned)k->o->port);
        h2_conn_lost(k, SB_EIO);
        return;
    }
    h2_arm(k);
}

static void h2_write_cb(uv_write_t *w, int status)
{
    hconn *k = w->data;
    k->h2->writing = false;
    if (k->state != C_ACTIVE)
        return;
    if (status < 0) {
        set_error(k, "write to %s port %u: %s", k->ip, (unsigned)k->o->port, uv_strerror(status));
        h2_conn_lost(k, SB_EIO);
        return;
    }
    h2_flush(k);
}

static void h2_on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    hconn *k = st->data;
    h2state *h = k->h2;
    if (nread == 0 || k->state != C_ACTIVE)
        return;
    if (nread < 0) {
        if (nread == UV_EOF)
            set_error(k, "connection to %s port %u closed", k->ip, (unsigned)k->o->port);
        else
            set_error(k, "connection to %s port %u: %s", k->ip, (unsigned)k->o->port,
                      uv_strerror((int)nread));
        h2_conn_lost(k, SB_EIO);
        return;
    }
    h->in_recv = true;
    ssize_t rv = nghttp2_session_mem_recv(h->s, (const uint8_t *)buf->base, (size_t)nread);
    h->in_recv = false;
    if (k->state != C_ACTIVE)
        return;
    if (rv < 0) {
        set_error(k, "invalid HTTP/2 from %s port %u: %s", k->ip, (unsigned)k->o->port,
                  nghttp2_strerror((int)rv));
        h2_conn_lost(k, SB_EPROTO);
        return;
    }
    h2_flush(k);
}

static void h2_connected(hconn *k)
{
    int rc = uv_read_start((uv_stream_t *)&k->tcp, on_alloc, h2_on_read);
    if (rc < 0) {
        set_error(k, "read from %s port %u: %s", k->ip, (unsigned)k->o->port, uv_strerror(rc));
        h2_conn_fail(k, SB_EIO);
        return;
    }
    k->state = C_ACTIVE;
    h2_flush(k);
}

void sb_hclient_flush(sb_hclient *c)
{
    hconn *k;
    while ((k = c->dirty) != NULL) {
        c->dirty = k->h2->dnext;
        k->h2->dirty = false;
        h2_flush(k);
    }
    uv_prepare_stop(&c->prep);
}

static void on_prepare(uv_prepare_t *p)
{
    sb_hclient_flush(p->data);
}

/* ---- public ------------------------------------------------------------------------------ */

static int count_line(const char *n, size_t nl, const char *v, size_t vl, void *ud)
{
    (void)n;
    (void)nl;
    (void)v;
    (void)vl;
    return ++*(int *)ud > H2_EXTRA_LINES ? SB_EINVAL : 0;
}

int sb_hclient_post(sb_hclient *c, sb_hclient_req *r, const char *url, const char *extra_headers,
                    size_t extra_len, const char *body, size_t body_len, uint64_t timeout_ms,
                    sb_hclient_done_fn done, void *ud)
{
    return sb_hclient_post_ex(c, r, url, extra_headers, extra_len, body, body_len, timeout_ms, 0,
                              done, ud);
}

int sb_hclient_post_ex(sb_hclient *c, sb_hclient_req *r, const char *url, const char *extra_headers,
                       size_t extra_len, const char *body, size_t body_len, uint64_t timeout_ms,
                       unsigned flags, sb_hclient_done_fn done, void *ud)
{
    if (c->closing)
        return SB_ECANCELED;
    sb__hclient_url u;
    if (!done || timeout_ms == 0 || (extra_len && !extra_headers) || (body_len && !body) ||
        extra_len > UINT32_MAX || body_len > UINT32_MAX ||
        (flags & ~(SB_HCLIENT_H2C | SB_HCLIENT_H2_NO_INDEX)) || sb__hclient_parse_url(url, &u) < 0)
        return SB_EINVAL;
    bool h2 = flags & SB_HCLIENT_H2C;
    if (h2) {
        int lines = 0;
        if (extra_len > H2_EXTRA_MAX || h2_lines(extra_headers, extra_len, count_line, &lines) != 0)
            return SB_EINVAL;
        if (h2_callbacks_init() < 0)
            return SB_ENOMEM;
    }

    char host[SB_HCLIENT_HOST_MAX];
    for (size_t i = 0; i < u.host_len; i++) {
        char ch = u.host[i];
        host[i] = (ch >= 'A' && ch <= 'Z') ? (char)(ch | 0x20) : ch;
    }
    origin *o = origin_get(c, host, u.host_len, u.port);
    if (!o)
        return SB_ENOMEM;

    r->ud = ud;
    r->done = done;
    r->extra = extra_headers;
    r->extra_len = extra_len;
    r->body = body;
    r->body_len = body_len;
    r->timeout_ms = timeout_ms;
    r->deadline = uv_now(c->loop) + timeout_ms;
    r->retried = false;
    r->h2 = h2;
    r->h2_noindex = h2 && (flags & SB_HCLIENT_H2_NO_INDEX);
    if (h2) {
        /* head: authority, then the path ("/" added when it is empty or a bare query). */
        size_t n = append(r->head, 0, u.authority, u.authority_len);
        if (u.path_len == 0 || u.path[0] == '?')
            n = APPEND_LIT(r->head, n, "/");
        n = append(r->head, n, u.path, u.path_len);
        r->h2_auth_len = (uint16_t)u.authority_len;
        r->h2_path_len = (uint16_t)(n - u.authority_len);
        h2_reset_response(r);
        o->nconns++; /* held across the dispatch, which may free nothing else */
        int rc = h2_dispatch(c, o, r);
        origin_release(c, o);
        return rc;
    }
    sb__hclient_build_head(r, &u, body_len);

    hconn *k = o->idle;
    if (k) {
        idle_unlink(k);
        k->state = C_ACTIVE;
        k->req = r;
        r->conn = k;
        arm_timer(k);
        send_request(k);
        return 0;
    }
    k = conn_new(c, o);
    if (!k) {
        o->nconns++;
        origin_release(c, o); /* frees it if nothing else uses it */
        return SB_ENOMEM;
    }
    k->req = r;
    r->conn = k;
    conn_start(k);
    return 0;
}

int sb_hclient_new(sb_hclient **out, uv_loop_t *loop, const sb_hclient_config *cfg)
{
    static const sb_hclient_config defaults = {0, 30000, 8, NULL, NULL};
    if (!out || !loop || (cfg && cfg->max_idle_per_origin < 0))
        return SB_EINVAL;
    sb_hclient *c = sb_calloc(1, sizeof(*c));
    if (!c)
        return SB_ENOMEM;
    c->loop = loop;
    c->cfg = cfg ? *cfg : defaults;
    uv_timer_init(loop, &c->handle);
    c->handle.data = c;
    uv_prepare_init(loop, &c->prep);
    c->prep.data = c;
    c->nhandles = 2;
    *out = c;
    return 0;
}

static void on_client_handle_closed(uv_handle_t *h)
{
    sb_hclient *c = h->data;
    if (--c->nhandles > 0)
        return;
    c->handle_closed = true;
    maybe_finalize_client(c);
}

void sb_hclient_close(sb_hclient *c, void (*closed)(void *ud), void *ud)
{
    if (!c || c->closing)
        return;
    c->closing = true;
    c->closed = closed;
    c->closed_ud = ud;
    /* Connections leave the list only in close callbacks, so the walk is safe even though
     * `done` runs in the middle of it. */
    for (hconn *k = c->conns; k; k = k->next) {
        if (k->h2) {
            set_error(k, "cancelled: client closed");
            h2_conn_fail(k, SB_ECANCELED);
        } else if (k->req) {
            set_error(k, "cancelled: client closed");
            finish(k, SB_ECANCELED, false);
        } else {
            conn_close(k);
        }
    }
    uv_close((uv_handle_t *)&c->handle, on_client_handle_closed);
    uv_close((uv_handle_t *)&c->prep, on_client_handle_closed);
}
