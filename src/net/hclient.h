/*
 * A small HTTP/1.1 client on a libuv loop, for POSTing to plain http:// targets (webhook
 * delivery). https is not handled here.
 *
 * Threading: one sb_hclient per loop, used only from that loop's thread; nothing is
 * thread-safe. Connections are kept alive and pooled per origin (host and port): a finished
 * request returns its connection to the idle pool when the response allows it; idle
 * connections keep reading, so a server closing one frees it at once, and are closed after
 * idle_timeout_ms. On a warm connection a request costs one write and normally one read, and
 * allocates nothing.
 *
 * Host names go through uv_getaddrinfo (the libuv thread pool); numeric IPv4 and IPv6
 * literals do not. Every address, resolved or literal, is shown to addr_check before any
 * connection to it is attempted, which is the SSRF guard: a name that resolves to a refused
 * address (DNS rebinding included) is never connected to.
 *
 * A request sent on a reused connection that gets EOF, ECONNRESET or EPIPE before any
 * response byte (the server closed the idle connection as we wrote) is retried once on a new
 * connection to the same address; the request timeout covers both attempts. A connect that
 * fails or exceeds connect_timeout_ms moves on to the next resolved address, within the
 * request timeout. No other retries.
 *
 * Not limited here: the number of connections per origin (one per request in flight beyond
 * the idle ones; the caller bounds its concurrency). An idle connection was admitted by
 * addr_check when it was opened; it is not checked again when reused.
 *
 * HTTP/2 with prior knowledge (RFC 9113 §3.3, "h2c"), per request with SB_HCLIENT_H2C, for
 * plain http:// receivers configured to speak it (no upgrade, no TLS): an origin gets ONE h2c
 * connection carrying many streams; another is opened only when it has received GOAWAY, is
 * closing, or is full: as many requests as the server's SETTINGS_MAX_CONCURRENT_STREAMS (once
 * received), at most 256. Before the server's SETTINGS arrive at most 100 streams are started
 * (the rest wait on the connection). Output of every request started in one loop turn goes
 * out in one write (flushed from a uv_prepare handle, so `done` may run from it, and after
 * each read). We send ENABLE_PUSH 0, a 1 MiB stream and connection window and a 16 KiB
 * MAX_HEADER_LIST_SIZE (a larger response header list fails its request with SB_EPROTO);
 * response DATA is counted and discarded (windows are updated automatically); PING is answered.
 *
 * h2c errors: RST_STREAM from the server → SB_EIO, except REFUSED_STREAM (not processed),
 * retried once; GOAWAY → streams above its last_stream_id are retried once on another
 * connection, those at or below it that never finish fail with SB_EIO; EOF or reset fails the
 * open streams with SB_EIO, retrying once those that had no response byte yet (never after a
 * GOAWAY); the request timeout sends RST_STREAM(CANCEL) and reports SB_ETIMEDOUT, the
 * connection staying up; sb_hclient_close reports SB_ECANCELED. addr_check applies to h2c
 * connects as to HTTP/1.1 ones. h2c and HTTP/1.1 connections to one origin are separate pools;
 * an h2c connection without requests is closed after idle_timeout_ms (max_idle_per_origin
 * does not apply to h2c).
 *
 * The process must ignore SIGPIPE (src/main.c does), as libuv writes with writev.
 */
#ifndef SB_NET_HCLIENT_H
#define SB_NET_HCLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#define SB_HCLIENT_HOST_MAX 253  /* longest host name in a URL */
#define SB_HCLIENT_PATH_MAX 2048 /* longest path and query (the webhook URL limit) */
/* "POST " path " HTTP/1.1\r\nHost: " [host]:port "\r\nContent-Length: " 20 digits
 * "\r\n\r\n" */
#define SB_HCLIENT_HEAD_MAX (SB_HCLIENT_PATH_MAX + SB_HCLIENT_HOST_MAX + 96)

/* sb_hclient_post_ex flags. */
#define SB_HCLIENT_H2C 1u /* HTTP/2 with prior knowledge over plain TCP (see above) */
/* With SB_HCLIENT_H2C: extra_headers are sent as HPACK literals never indexed (RFC 7541
 * §6.2.3) instead of entering the dynamic table. For values that differ per request (ids,
 * timestamps, signatures): indexing them costs both sides a table insert and evictions per
 * request for no reuse, and a signature should not sit in a shared table anyway. */
#define SB_HCLIENT_H2_NO_INDEX 2u

#define SB_HCLIENT_H2_MAX_STREAMS     256 /* streams per h2c connection, whatever the server allows */
#define SB_HCLIENT_H2_RETRY_AFTER_MAX 64 /* a longer h2c retry-after value is reported absent */

typedef struct sb_hclient sb_hclient;

typedef struct sb_hclient_config {
    uint64_t connect_timeout_ms; /* 0 = only the request timeout bounds a connect */
    uint64_t idle_timeout_ms;    /* idle keep-alive connections are closed after this */
    int max_idle_per_origin;     /* idle connections kept per host:port; 0 = no keep-alive */
    /* SSRF guard: called with every address before connecting to it; returns NULL to allow,
     * or a static reason word ("loopback", "private", ...) to refuse. NULL = allow all. */
    const char *(*addr_check)(const struct sockaddr *sa, void *ud);
    void *addr_check_ud;
} sb_hclient_config;

typedef struct sb_hclient_result {
    /* 0, or SB_ETIMEDOUT (request or connect timeout), SB_EPROTO (invalid or truncated
     * response), SB_EACCES (every address refused by addr_check), SB_EIO (resolve, connect,
     * reset or write failure), SB_ECANCELED (sb_hclient_close), SB_ENOMEM. */
    int err;
    /* Final HTTP status, 0 when none was received. It can be set with err != 0 (the body was
     * cut short or timed out after the header section): check err first. */
    int status;
    /* Raw Retry-After value (OWS trimmed), NULL if absent; valid only during the callback. */
    const char *retry_after;
    size_t retry_after_len;
    uint64_t body_bytes;     /* response payload bytes (read and discarded) */
    char refused_ip[46];     /* with SB_EACCES: the first address refused */
    const char *refused_why; /* with SB_EACCES: addr_check's reason word */
    char error[200];         /* when err != 0: what happened, e.g. "connect to
                                127.0.0.1 port 9: connection refused"; never the URL
                                path or query, nor any header value */
} sb_hclient_result;

typedef struct sb_hclient_req sb_hclient_req;
typedef void (*sb_hclient_done_fn)(sb_hclient_req *r, const sb_hclient_result *res);

/*
 * One request. The caller embeds it in its own object (no allocation per request) and owns
 * its memory; it must stay valid from sb_hclient_post until `done` runs. `done` may reuse it
 * at once for the next post. Only `ud` is for the caller; the other fields are internal.
 */
struct sb_hclient_req {
    void *ud; /* the caller's, as passed to sb_hclient_post */

    /* Internal. */
    sb_hclient_done_fn done;
    struct sb__hconn *conn;
    const char *extra;
    size_t extra_len;
    const char *body;
    size_t body_len;
    uint64_t timeout_ms;
    uint64_t deadline; /* uv_now() + timeout_ms */
    bool retried;      /* already moved once to a new connection (stale keep-alive) */
    /* h2c only. head holds authority then path (then the retry-after value). */
    bool h2;
    bool h2_complete;  /* END_STREAM received */
    bool h2_got_bytes; /* a response frame arrived for this stream */
    bool h2_noindex;   /* SB_HCLIENT_H2_NO_INDEX */
    uint8_t h2_ra_len; /* retry-after length + 1, 0 when absent */
    int32_t stream_id; /* 0 while waiting for a stream */
    uint16_t h2_slot;  /* with a stream: its slot on the connection */
    int h2_status;
    uint32_t h2_hdr_bytes; /* response header list size so far */
    uint16_t h2_auth_len, h2_path_len;
    size_t sent;                   /* body bytes handed to nghttp2 */
    uint64_t h2_body;              /* response DATA bytes */
    sb_hclient_req *dprev, *dnext; /* the connection's requests, by deadline */
    sb_hclient_req *wprev, *wnext; /* the connection's requests waiting for a stream */
    size_t head_len;
    char head[SB_HCLIENT_HEAD_MAX];
};

/* Creates a client on `loop` (cfg NULL: no connect timeout, 30 s idle timeout, 8 idle
 * connections per origin, no address check). Returns 0, SB_EINVAL or SB_ENOMEM. */
int sb_hclient_new(sb_hclient **out, uv_loop_t *loop, const sb_hclient_config *cfg);

/*
 * POSTs body[0..body_len) to url: http://host[:port][/path][?query] (a fragment is dropped;
 * IPv6 literals in brackets; no userinfo; host up to SB_HCLIENT_HOST_MAX bytes, path and
 * query up to SB_HCLIENT_PATH_MAX, visible ASCII only). extra_headers holds complete "Name:
 * value\r\n" lines built by the caller (not checked: they must not come from a peer unvalidated);
 * Host and Content-Length are written by the client. url is not kept (what is needed is
 * copied into r); extra_headers and body must stay valid until `done` runs. timeout_ms (> 0) bounds
 * the whole request: resolve, connect, write and the complete response.
 *
 * Returns 0, after which done(r, res) is called exactly once, later, from the loop (never
 * from inside this call); or, without ever calling done: SB_EINVAL for a URL that is not
 * plain http:// (https included) or a zero timeout, SB_ECANCELED once sb_hclient_close was
 * called, SB_ENOMEM.
 */
int sb_hclient_post(sb_hclient *c, sb_hclient_req *r, const char *url, const char *extra_headers,
                    size_t extra_len, const char *body, size_t body_len, uint64_t timeout_ms,
                    sb_hclient_done_fn done, void *ud);

/*
 * sb_hclient_post with flags: 0 (the same as sb_hclient_post), SB_HCLIENT_H2C, or
 * SB_HCLIENT_H2C | SB_HCLIENT_H2_NO_INDEX (ignored without SB_HCLIENT_H2C). With h2c,
 * extra_headers are checked (SB_EINVAL unless every line is "Name: value\r\n" with a token
 * name, a value without CR, LF or NUL, and none of Host, Content-Length, Connection,
 * Transfer-Encoding, Keep-Alive, Upgrade, Proxy-Connection, TE) and sent with lowercased
 * names; :authority, :path and content-length are written by the client. Unknown flags:
 * SB_EINVAL.
 */
int sb_hclient_post_ex(sb_hclient *c, sb_hclient_req *r, const char *url, const char *extra_headers,
                       size_t extra_len, const char *body, size_t body_len, uint64_t timeout_ms,
                       unsigned flags, sb_hclient_done_fn done, void *ud);

/*
 * Writes now what h2c requests posted since the last write have queued, instead of when the
 * loop is about to poll (which it does by itself). A caller posting many requests in one turn
 * calls it every few posts, so that the receiver starts on the first ones while the next are
 * built. It may run done callbacks (a connection that fails while writing). Not from inside
 * a done callback.
 */
void sb_hclient_flush(sb_hclient *c);

/*
 * Cancels every request in flight (their done runs with SB_ECANCELED before this returns),
 * closes every connection, and frees the client; closed(ud) runs from the loop once all of
 * its libuv handles and resolver requests are finished, so the loop must keep running until
 * then. `closed` may be NULL. The client must not be used after this call.
 */
void sb_hclient_close(sb_hclient *c, void (*closed)(void *ud), void *ud);

/* ---- internal, for the fuzz target and tests ---- */

typedef struct sb__hclient_url {
    const char *host; /* without IPv6 brackets */
    size_t host_len;
    const char *authority; /* as written, for the Host field */
    size_t authority_len;
    const char *path; /* path and query as written; may be empty or start with '?' */
    size_t path_len;
    uint16_t port;
} sb__hclient_url;

/* Parses an http:// URL as sb_hclient_post accepts it; slices point into url. 0 or SB_EINVAL. */
int sb__hclient_parse_url(const char *url, sb__hclient_url *u);

/* Writes the request head ("POST ... Content-Length: N\r\n", and the blank line when
 * r->extra_len is 0) into r->head; the URL bounds make it fit in SB_HCLIENT_HEAD_MAX. */
void sb__hclient_build_head(sb_hclient_req *r, const sb__hclient_url *u, size_t body_len);

/* Splits extra header lines for h2c: calls fn for each "Name: value\r\n" line (value with
 * its surrounding OWS trimmed) until fn returns non-zero; returns 0, fn's value, or
 * SB_EINVAL for a malformed or connection-specific line (nothing is called after that). */
int sb__hclient_h2_headers(const char *extra, size_t len,
                           int (*fn)(const char *name, size_t name_len, const char *value,
                                     size_t value_len, void *ud),
                           void *ud);

#endif
