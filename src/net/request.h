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
    const char *proto; /* "HTTP/1.1", "HTTP/2" — for logs */
    /* Serializes and queues the response; status line, Date, Content-Length and
     * X-Request-Id are the adapter's to write. */
    void (*send)(sb_req *req, int status, sb_str content_type, const void *body, size_t len);
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

/* The standard reason phrase for a status code ("Not Found"), or "Unknown". */
const char *sb_http_reason(int status);

/* Formats a peer address as text (no port) into out. */
void sb_req_peer_str(const struct sockaddr_in6 *peer, char *out, size_t outlen);

#endif
