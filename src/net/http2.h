/*
 * The HTTP/2 protocol adapter (RFC 9113), on nghttp2.
 *
 * A connection becomes HTTP/2 when TLS negotiates ALPN "h2", or when a plain connection
 * starts with the client preface (h2c with prior knowledge, RFC 9113 §3.3). Every stream is
 * an sb_req handed to the router, so REST handlers run unchanged; req->ops->proto is
 * "HTTP/2" and the adapter supports streaming responses and trailers
 * (sb_resp_stream_end_trailers), which is what gRPC needs. A response with no body goes out
 * as a single HEADERS frame with END_STREAM (gRPC "Trailers-Only").
 *
 * Bounds (config keys http2.*): concurrent streams (REFUSED_STREAM beyond), the decoded
 * header list (431; a header block far larger, a CONTINUATION flood, ends the connection
 * with GOAWAY ENHANCE_YOUR_CALM), request bodies (http.max_body_bytes, 413) and the bytes
 * buffered across a connection's streams (the connection flow-control window is only
 * replenished as they are released), stream resets per second (rapid reset, CVE-2023-44487:
 * GOAWAY ENHANCE_YOUR_CALM), and output: frames are produced only while the transport holds
 * less than SB_CONN_OUT_HIGH, and a streamed response queues at most SB_STREAM_MAX_QUEUED
 * for a client that does not read (the stream is then reset).
 *
 * What a handler sees on HTTP/2 (gRPC builds on this): strcmp(req->ops->proto, "HTTP/2") == 0;
 * req->method/path/query/authority from the pseudo-header fields (path without the query);
 * header names in lower case (sb_req_header is case-insensitive anyway); req->body is the
 * whole request body, handed over at END_STREAM (no request streaming), valid until the
 * response is sent or the streamed response ends. Response header names are sent lower-case;
 * hop-by-hop fields and Content-Length given by the handler are dropped. Shapes:
 *   - sb_resp_send with a body: HEADERS (content-length), DATA..., END_STREAM.
 *   - sb_resp_send with no body: one HEADERS frame with END_STREAM (gRPC Trailers-Only:
 *     add grpc-status etc. with sb_resp_header first).
 *   - sb_req_on_abort, sb_resp_stream_begin (heartbeat 0), sb_resp_stream_write...,
 *     sb_resp_stream_end_trailers: HEADERS, DATA..., trailer HEADERS with END_STREAM (names
 *     and values copied). The abort callback runs when the client resets the stream or the
 *     connection goes; a request that is not streamed gets no callback: answer it as usual
 *     (the answer is dropped if the stream is gone).
 * Handlers may answer later from the same loop (after a store job); the request stays valid.
 */
#ifndef SB_NET_HTTP2_H
#define SB_NET_HTTP2_H

#include "net/conn.h"
#include "switchboard/config.h"

#define SB_H2_PREFACE     "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#define SB_H2_PREFACE_LEN 24

/* Makes HTTP/2 the connection's protocol; c->in may already hold the client preface and
 * frames. Queues the server's SETTINGS. SB_ENOMEM (the caller closes the connection). */
int sb_h2_attach(sb_conn *c);

/* The same with the limits taken from cfg instead of the server's (the fuzz target). */
int sb__h2_attach_with(sb_conn *c, const sb_config *cfg);

#endif
