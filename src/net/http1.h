/* The HTTP/1.1 protocol adapter (RFC 9112) on a connection. */
#ifndef SB_NET_HTTP1_H
#define SB_NET_HTTP1_H

#include "net/conn.h"

/* Makes HTTP/1.1 the connection's protocol and starts the first request's header timer. */
void sb_h1_attach(sb_conn *c);

/*
 * Protocol upgrade (WebSocket). Answers req, an HTTP/1.1 request being served, with
 * "101 Switching Protocols" (status line, Date, X-Request-Id and the response headers added
 * to req), releases the request, and makes `proto` the connection's protocol with `state`
 * as c->proto_data. Bytes received after the request's head stay in c->in for the new
 * protocol, and reading resumes. Nothing is flushed and no callback of `proto` runs here:
 * the response goes out when the current callback returns or at the caller's next flush.
 * Returns 0 with *out set; SB_ENOTSUP if req is not an HTTP/1.1 request, or SB_ECANCELED
 * if its connection is gone (req untouched in both cases: answer it as usual); SB_EIO if
 * the response could not be queued (the connection is closed and req released).
 */
int sb_h1_upgrade(sb_req *req, const sb_proto *proto, void *state, sb_conn **out);

/* Frees a loop's pool of request objects (at loop exit). */
void sb_h1_pool_free(sb_loop *loop);

#endif
