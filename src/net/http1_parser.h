/*
 * Strict HTTP/1.1 request parser (RFC 9112), written here because no parser is packaged.
 *
 * The parser is stateless over a contiguous buffer: call sb_http1_parse_request with
 * everything received so far; it returns SB_EAGAIN until the whole header section is
 * there, then the length of the header section. All slices in the result point into the
 * caller's buffer, which must outlive them. Pass `prev_len` (the buffer length at the last
 * SB_EAGAIN, or 0) so that a request arriving in many pieces is not rescanned from the
 * start each time.
 *
 * It is strict on purpose, because a lenient parser behind or in front of another one is how
 * request smuggling happens. Refused with 400: bare CR or LF, obs-fold, whitespace before a
 * field's colon, invalid token characters in a method or field name, control characters in
 * a field value or the request target, more than one Content-Length (even if equal), a
 * Content-Length that is not 1*DIGIT or overflows, Content-Length together with
 * Transfer-Encoding, more than one Transfer-Encoding field, a Transfer-Encoding whose value
 * is not exactly the token "chunked" (case-insensitive, OWS trimmed), Transfer-Encoding in
 * HTTP/1.0, a missing or repeated Host in HTTP/1.1. A Transfer-Encoding that lists another
 * coding (e.g. "gzip, chunked") gets 501. HTTP versions other than 1.0 and 1.1 get 505.
 * Limits: request line over `max_request_line` → 414, header section over
 * `max_header_bytes` or more than `max_headers` fields → 431.
 */
#ifndef SB_NET_HTTP1_PARSER_H
#define SB_NET_HTTP1_PARSER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/str.h"

#define SB_HTTP1_MAX_HEADERS_CAP 128 /* hard upper bound for limits.max_headers */

typedef struct sb_http_header {
    sb_str name;  /* as sent (case preserved); valid token */
    sb_str value; /* OWS trimmed on both ends */
} sb_http_header;

typedef struct sb_http1_limits {
    size_t max_request_line; /* bytes, without CRLF; over → 414 */
    size_t max_header_bytes; /* whole header section incl. request line; over → 431 */
    size_t max_headers;      /* number of fields, ≤ SB_HTTP1_MAX_HEADERS_CAP; over → 431 */
} sb_http1_limits;

typedef struct sb_http1_request {
    sb_str method;     /* token, e.g. "GET" */
    sb_str target;     /* request-target as sent */
    sb_str path;       /* origin-form path (absolute-form reduced to its path); "*" for
                          asterisk-form; starts with '/' otherwise */
    sb_str query;      /* after '?', without it; empty if none */
    int minor_version; /* 0 or 1 */

    sb_http_header headers[SB_HTTP1_MAX_HEADERS_CAP];
    size_t num_headers;

    /* Framing and connection facts derived from the fields above. */
    int64_t content_length; /* -1 if no Content-Length */
    bool chunked;           /* Transfer-Encoding: chunked */
    bool keep_alive;        /* 1.1 unless "Connection: close"; 1.0 only with "keep-alive" */
    bool expect_continue;   /* Expect: 100-continue */
    bool upgrade;           /* Connection lists "upgrade" and an Upgrade field is present */
    sb_str host;            /* Host value (authority from absolute-form wins) */
} sb_http1_request;

/*
 * Parses the header section at buf[0..len).
 * Returns the header section's length (> 0, including the final CRLF CRLF) on success;
 * SB_EAGAIN if more bytes are needed (and no limit is exceeded yet); or SB_EPROTO with
 * *status set to the HTTP status to answer with (400, 414, 431, 501, 505). Up to a few empty
 * lines (CRLF) before the request line are skipped, as RFC 9112 §2.2 allows.
 */
int sb_http1_parse_request(const char *buf, size_t len, size_t prev_len,
                           const sb_http1_limits *limits, sb_http1_request *req, int *status);

/*
 * Chunked transfer coding decoder (RFC 9112 §7.1), decoding in place.
 *
 * Feed it the raw body bytes as they arrive: sb_http1_chunked_decode rewrites buf[0..*len)
 * so that its first *len bytes (updated) are decoded payload. Returns SB_EAGAIN when it needs
 * more input, or, once the last chunk and trailer section are complete, the number of
 * bytes left over after the body (the start of a pipelined request) — those bytes are
 * moved to directly follow the decoded payload, i.e. they sit at buf[*len .. *len+ret).
 * Malformed input (bad hex, chunk size overflow, missing CRLF, bare LF, chunk-ext or
 * trailer over the limits below) returns SB_EPROTO; decoded payload past `max_body`
 * returns SB_EMSGSIZE (answer 413).
 */
typedef struct sb_http1_chunked {
    int state;
    uint64_t chunk_left;  /* payload bytes left in the current chunk */
    uint64_t total;       /* payload bytes decoded so far */
    uint64_t max_body;    /* limit on total payload */
    size_t line_len;      /* bytes in the current size/ext/trailer line so far */
    size_t trailer_bytes; /* bytes of trailer section so far */
    int hex_digits;       /* digits in the current chunk-size */
} sb_http1_chunked;

void sb_http1_chunked_init(sb_http1_chunked *d, uint64_t max_body);
int sb_http1_chunked_decode(sb_http1_chunked *d, char *buf, size_t *len);

/* Looks up a header by case-insensitive name; returns NULL if absent. */
const sb_http_header *sb_http1_find_header(const sb_http1_request *req, const char *name);

#endif
