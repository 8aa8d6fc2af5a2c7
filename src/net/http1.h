/* The HTTP/1.1 protocol adapter (RFC 9112) on a connection. */
#ifndef SB_NET_HTTP1_H
#define SB_NET_HTTP1_H

#include "net/conn.h"

/* Makes HTTP/1.1 the connection's protocol and starts the first request's header timer. */
void sb_h1_attach(sb_conn *c);

/* Frees a loop's pool of request objects (at loop exit). */
void sb_h1_pool_free(sb_loop *loop);

#endif
