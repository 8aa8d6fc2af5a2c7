/*
 * The protocol-neutral request and response.
 *
 * A protocol adapter (HTTP/1.1 now; HTTP/2, gRPC-web and WebSocket upgrades later) fills an
 * sb_req and hands it to the router; the handler answers with sb_resp_send (or one of its
 * helpers) exactly once, either before it returns or later from the same loop. The adapter
 * owns the request: every slice in it stays valid until the response is sent, and the arena
 * is reset right after, so a handler must copy anything it keeps.
 */
#ifndef SB_NET_REQUEST_H
#define SB_NET_REQUEST_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/arena.h"
#include "core/buf.h"
#include "core/str.h"
#include "net/http1_parser.h"

#define SB_REQ_MAX_PARAMS       8
#define SB_REQ_MAX_RESP_HEADERS 16
#define SB_REQUEST_ID_MAX       64

typedef struct sb_req sb_req;
typedef struct sb_loop sb_loop;

/* What a protocol adapter does with a finished response. */
typedef struct sb_req_ops {
    const char *proto; /* "HTTP/1.1", "HTTP/2": for logs, and for a handler that must know */
    /* Serializes and queues the response; status line, Date, Content-Length and
     * X-Request-Id are the adapter's to write. */
    void (*send)(sb_req *req, int status, sb_str content_type, const void *body, size_t len);
    /* Optional (NULL: the adapter cannot stream): see sb_resp_stream_begin below. */
    int (*stream_begin)(sb_req *req, int status, sb_str content_type, int64_t heartbeat_ms,
                        sb_str heartbeat);
    int (*stream_write)(sb_req *req, const void *data, size_t len);
    void (*stream_end)(sb_req *req);
    /* Optional (NULL: no trailers; HTTP/2 has them): ends a stream with trailer fields. */
    void (*stream_end_trailers)(sb_req *req, const sb_http_header *trailers, size_t n);
    void (*on_abort)(sb_req *req, void (*fn)(sb_req *req, void *ud), void *ud);
    /* Optional: bytes of a streamed body still waiting for the client, and a callback for
     * when they have been written out (see sb_resp_stream_queued). */
    size_t (*stream_queued)(sb_req *req);
    void (*on_writable)(sb_req *req, void (*fn)(sb_req *req, void *ud), void *ud);
} sb_req_ops;

struct sb_req {
    sb_str method;
    sb_str path;  /* raw, as sent */
    sb_str query; /* raw, without '?' */
    sb_str authority;
    const sb_http_header *headers;
    size_t num_headers;
    sb_str body;

    /* Set by the router from {name} segments of the matched pattern; percent-decoded. */
    sb_str params[SB_REQ_MAX_PARAMS];
    int num_params;

    char request_id[SB_REQUEST_ID_MAX + 1];
    size_t request_id_len;
    uint64_t start_ns;
    struct sockaddr_in6 peer; /* IPv4 peers as AF_INET in the same storage */
    /* SHA-256 of the DER client certificate the TLS peer presented and the server verified
     * (tls.client_auth), or NULL: no certificate, or not TLS. Every adapter that serves
     * requests over TLS must set it (it binds OAuth tokens and API keys, RFC 8705). */
    const unsigned char *tls_client_cert_sha256;

    sb_loop *loop;
    const sb_req_ops *ops;
    void *transport; /* the adapter's connection/stream */
    sb_arena arena;

    sb_http_header resp_headers[SB_REQ_MAX_RESP_HEADERS];
    int num_resp_headers;
    int status;
    size_t resp_body_len;
    bool responded;
    bool head; /* HEAD: send headers only */
};

/* First header with that name (case-insensitive), or NULL. */
const sb_http_header *sb_req_header(const sb_req *req, const char *name);

/* Adds a response header. Name and value are copied into the request arena. Returns
 * SB_EMSGSIZE past SB_REQ_MAX_RESP_HEADERS, SB_ENOMEM, or 0. */
int sb_resp_header(sb_req *req, const char *name, sb_str value);

/* Sends the response. Must be called exactly once per request. */
void sb_resp_send(sb_req *req, int status, const char *content_type, const void *body, size_t len);

/* application/json body from a buffer. */
void sb_resp_json(sb_req *req, int status, const sb_buf *body);

/*
 * RFC 9457 problem details: {"type":"urn:switchboard:problem:<slug>","title":<reason phrase>,
 * "status":N,"detail":<detail>,"request_id":<id>} as application/problem+json. `detail` is
 * shown to the caller: never put a secret in it.
 */
void sb_resp_problem(sb_req *req, int status, const char *slug, const char *detail);

/*
 * Streaming responses (Server-Sent Events): a response whose body is written piece by piece
 * for as long as the handler wants, instead of sb_resp_send.
 *
 * sb_resp_stream_begin sends the head (status, content type, headers added with
 * sb_resp_header; HTTP/1.1 uses the chunked transfer coding, HTTP/1.0 `Connection: close`
 * and a raw body) and returns 0; the request then stays open. When heartbeat_ms > 0 the
 * adapter writes `heartbeat` whenever that long has passed without output (SSE keep-alive
 * comments). SB_ENOTSUP if the adapter cannot stream (nothing sent: answer normally);
 * SB_ECANCELED if the client is already gone, SB_EIO if the head could not be queued: in both
 * cases the request is finished and must not be used again.
 *
 * Register sb_req_on_abort before (or right after) beginning: fn(req, ud) is called exactly
 * once if the stream ends other than by sb_resp_stream_end: the client disconnected, a write
 * failed, the output waiting for a slow client passed its bound, or the server is draining
 * (SIGTERM; the adapter then ends the body cleanly). After fn returns req is gone: drop every
 * pointer to it inside fn. fn may run from inside sb_resp_stream_write.
 *
 * sb_resp_stream_write queues len bytes as body (one chunk) and writes it out. Returns 0;
 * SB_ECANCELED when the stream is over (fn has been called, possibly during this call);
 * SB_EAGAIN when more than SB_STREAM_MAX_QUEUED bytes already wait for the client: the
 * connection is closed and fn has been called. The client reconnects and resumes.
 *
 * sb_resp_stream_end ends the body and closes the connection after it; fn is not called and
 * req must not be used again.
 *
 * HTTP/2: a streamed response is one stream, not the connection: no chunked coding, the end is
 * END_STREAM and the connection stays open; SB_EAGAIN resets the stream (CANCEL), also when
 * the connection's streams together hold more than SB_CONN_OUT_MAX; fn also runs when the
 * client resets the stream. req->body stays valid until the stream ends.
 */
#define SB_STREAM_MAX_QUEUED (1024 * 1024)
int sb_resp_stream_begin(sb_req *req, int status, const char *content_type, int64_t heartbeat_ms,
                         const char *heartbeat);
int sb_resp_stream_write(sb_req *req, const void *data, size_t len);
void sb_resp_stream_end(sb_req *req);
/*
 * Like sb_resp_stream_end, but ends the body with trailer fields (gRPC's grpc-status).
 * Names and values are sent as given (lower-case names for HTTP/2). An adapter without
 * trailers (HTTP/1.1 today) ends the stream as sb_resp_stream_end does.
 */
void sb_resp_stream_end_trailers(sb_req *req, const sb_http_header *trailers, size_t n);
void sb_req_on_abort(sb_req *req, void (*fn)(sb_req *req, void *ud), void *ud);

/*
 * Pacing a long stream: sb_resp_stream_queued is how many bytes already written wait for the
 * client (0 when the adapter cannot tell), and fn(req, ud) registered with
 * sb_req_on_writable runs on the loop each time that output has been written out, until the
 * stream ends. A writer that stops at a threshold and continues from fn never reaches
 * SB_STREAM_MAX_QUEUED. An adapter without the notification never calls fn.
 */
size_t sb_resp_stream_queued(sb_req *req);
void sb_req_on_writable(sb_req *req, void (*fn)(sb_req *req, void *ud), void *ud);

/*
 * For protocol adapters. sb_req_set_request_id takes the client's X-Request-Id value when it
 * is a valid id (1-64 of [A-Za-z0-9-_.:~]) and otherwise makes a new one. sb_req_log_access
 * writes the access-log line of a response whose head was queued (bytes: what went on the
 * wire for it, 0 if nothing); the "proto" field is req->ops->proto.
 */
void sb_req_set_request_id(sb_req *req, sb_str client_value);
void sb_req_log_access(sb_req *req, int status, size_t bytes, uint64_t dur_ns);

/* The standard reason phrase for a status code ("Not Found"), or "Unknown". */
const char *sb_http_reason(int status);

/* Formats a peer address as text (no port) into out. */
void sb_req_peer_str(const struct sockaddr_in6 *peer, char *out, size_t outlen);

#endif
