/*
 * Incremental HTTP/1.1 response parser (RFC 9112) for the client side: no I/O, no
 * allocation, no buffering of the input. Push the bytes as they arrive, split anywhere;
 * the parser never looks past the `len` it is given and keeps what it needs (a few hundred
 * bytes) in the struct.
 *
 * What it reports: the final status (interim 1xx responses such as 100 Continue are
 * skipped whole; 101 Switching Protocols is a protocol error, since nothing here upgrades),
 * the Retry-After value, the body length delivered through its framing (Content-Length,
 * chunked with extensions and trailers, or read-until-close), and whether the connection may
 * carry another request. Body bytes are counted and discarded. The response is taken to be
 * the answer to a POST: 204, 304 and 1xx have no body, every other status does.
 *
 * It is strict because a client that reads a body length differently from a proxy in front of
 * it can be desynchronised: refused with SB_EPROTO are a status line that is not
 * "HTTP/1.0" or "HTTP/1.1", SP, three digits (100-599), then SP and a reason or the line end;
 * bare CR or bare LF; obs-fold; a field name that is not a token or has whitespace before
 * the colon; control characters in a field value; Content-Length together with
 * Transfer-Encoding; Content-Length values that differ (equal duplicates are accepted) or
 * that are not 1*DIGIT or exceed 18 digits; Transfer-Encoding in HTTP/1.0, one whose final
 * coding is not a plain "chunked", or one listing chunked twice; a chunk size that is not hex
 * or overflows; Connection or Transfer-Encoding elements that are not tokens; a captured
 * field (Content-Length, Transfer-Encoding, Connection, Retry-After) whose value is longer
 * than SB_HTTP1_RESPONSE_VALUE_MAX. Limits: the header sections (interim and final together)
 * over SB_HTTP1_RESPONSE_MAX_HEADER_BYTES, the trailer section over the same, or a
 * chunk-size line over SB_HTTP1_RESPONSE_MAX_CHUNK_LINE give SB_EMSGSIZE.
 */
#ifndef SB_NET_HTTP1_RESPONSE_H
#define SB_NET_HTTP1_RESPONSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SB_HTTP1_RESPONSE_MAX_HEADER_BYTES 16384
#define SB_HTTP1_RESPONSE_MAX_CHUNK_LINE   4096
#define SB_HTTP1_RESPONSE_VALUE_MAX        256
#define SB__HTTP1_RESPONSE_NAME_MAX        20 /* longer names are never captured */

typedef struct sb_http1_response {
    /* Results. status, minor_version and retry_after are set once the final header section
     * is complete (status stays 0 before); keep_alive and body_bytes are final once
     * sb_http1_response_feed returned 0 or sb_http1_response_eof returned 0. */
    int status;
    int minor_version;
    bool keep_alive;        /* the connection may carry the next request */
    bool has_retry_after;   /* a Retry-After field was present (the last one wins) */
    size_t retry_after_len; /* OWS-trimmed value bytes in retry_after, not NUL-terminated */
    uint64_t body_bytes;    /* payload bytes seen (after de-chunking) */
    char retry_after[SB_HTTP1_RESPONSE_VALUE_MAX];

    /* Internal state; zeroed by sb_http1_response_init. */
    uint8_t state;
    uint8_t field;          /* which captured field the current line is, if any */
    uint8_t name_len;       /* lowercased name bytes in name (capped) */
    uint8_t pos;            /* progress inside a fixed token such as "HTTP/1." */
    bool trailer;           /* the field lines being read are the trailer section */
    bool chunked;           /* Transfer-Encoding ends in chunked */
    bool te_seen;           /* a Transfer-Encoding field was present */
    bool conn_close;        /* Connection lists close */
    bool conn_keep;         /* Connection lists keep-alive */
    int code;               /* status code of the response being read (may be interim) */
    int64_t content_length; /* -1 when absent */
    uint64_t left;          /* body bytes left in the Content-Length body or current chunk */
    uint32_t header_bytes;  /* header section bytes so far (interim ones included) */
    uint32_t trailer_bytes;
    uint32_t line_bytes; /* bytes of the current chunk-size line */
    uint32_t hex_digits;
    uint16_t value_len;
    char name[SB__HTTP1_RESPONSE_NAME_MAX];
    char value[SB_HTTP1_RESPONSE_VALUE_MAX];
} sb_http1_response;

/* Prepares p for a new response (on a new connection or after the previous response). */
void sb_http1_response_init(sb_http1_response *p);

/*
 * Parses the next bytes of the response.
 * Returns SB_EAGAIN when all of buf[0..len) was consumed and the response is not complete
 * yet; 0 when the response is complete, with *used set to the bytes consumed (any bytes past
 * *used are not part of this response); SB_EPROTO or SB_EMSGSIZE when the response is
 * malformed or over a limit (the parser then stays failed). Once complete, further calls
 * return 0 with *used = 0.
 */
int sb_http1_response_feed(sb_http1_response *p, const char *buf, size_t len, size_t *used);

/*
 * Tells the parser that the peer closed the connection. Returns 0 if that completes the
 * response (a body delimited by the close, or a response already complete), SB_EPROTO if the
 * response was cut short (including when no byte arrived at all).
 */
int sb_http1_response_eof(sb_http1_response *p);

/* True once the parser has seen at least one byte of a response. */
bool sb_http1_response_started(const sb_http1_response *p);

/* True once the response is complete (keep_alive and body_bytes are then final). */
bool sb_http1_response_complete(const sb_http1_response *p);

#endif
