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
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
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
    uint8_t state;
    uint8_t handles;  /* open libuv handles (timer, tcp) */
    bool tcp_open;    /* tcp initialised and not yet closing */
    bool gai_pending; /* the resolver callback has not run yet */
    bool writing;
    bool got_bytes;     /* a response byte arrived for the current request */
    bool reused;        /* has completed a response before: the server may have dropped it */
    bool stale_retry;   /* reconnecting to the same peer after a stale keep-alive failure */
    bool connect_timer; /* the timer runs the connect timeout, not the request one */
    bool connected;     /* a connect was attempted (an error then reports it, not refusal) */
    int err;            /* the error a C_DEFERRED connection reports */
    int connect_err;    /* SB_EIO or SB_ETIMEDOUT: how the last connect failed */
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
    char digits[20];
    size_t d = sizeof(digits);
    do {
        digits[--d] = (char)('0' + body_len % 10);
        body_len /= 10;
    } while (body_len);
    n = append(h, n, digits + d, sizeof(digits) - d);
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

int sb_hclient_post(sb_hclient *c, sb_hclient_req *r, const char *url, const char *extra_headers,
                    size_t extra_len, const char *body, size_t body_len, uint64_t timeout_ms,
                    sb_hclient_done_fn done, void *ud)
{
    if (c->closing)
        return SB_ECANCELED;
    sb__hclient_url u;
    if (!done || timeout_ms == 0 || (extra_len && !extra_headers) || (body_len && !body) ||
        extra_len > UINT32_MAX || body_len > UINT32_MAX || sb__hclient_parse_url(url, &u) < 0)
        return SB_EINVAL;

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
    *out = c;
    return 0;
}

static void on_client_handle_closed(uv_handle_t *h)
{
    sb_hclient *c = h->data;
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
        if (k->req) {
            set_error(k, "cancelled: client closed");
            finish(k, SB_ECANCELED, false);
        } else {
            conn_close(k);
        }
    }
    uv_close((uv_handle_t *)&c->handle, on_client_handle_closed);
}
