/* Internal interfaces between the server, its loops and the connection code. */
#ifndef SB_NET_SERVER_INTERNAL_H
#define SB_NET_SERVER_INTERNAL_H

#include "net/loop.h"
#include "switchboard/config.h"
#include "switchboard/server.h"

/* The configuration the server was started with (static keys are read from it). */
const sb_config *sb__server_config(const sb_server *s);

/* The i-th worker loop (0 <= i < sb_server_loop_count). */
sb_loop *sb_server_loop(const sb_server *s, int i);

/* Loop lifecycle, in loop.c. sb__loop_init runs on the creating thread before the loop's
 * thread starts; the listening sockets are already bound (fds). */
int sb__loop_init(sb_loop *loop, sb_server *s, int index, const int *fds, const bool *tls, int nfds,
                  SSL_CTX *ctx, const sb_live *live, const sb_router *router);
int sb__loop_start(sb_loop *loop);
void sb__loop_join(sb_loop *loop);
void sb__loop_destroy(sb_loop *loop);

/* Messages the server sends to loops. */
void sb__loop_begin_drain(sb_loop *loop, void *arg);
void sb__loop_abort(sb_loop *loop, void *arg);
typedef struct sb__reload_msg {
    sb_live live;
    SSL_CTX *ctx; /* a reference for the loop to take, or NULL to keep its own */
} sb__reload_msg;
void sb__loop_apply_reload(sb_loop *loop, void *arg);

/* A connection closed: a draining loop may now be done. */
void sb__loop_conn_closed(sb_loop *loop);

/* A hook the control plane runs on every loop's tick (set before the loops start), and the
 * call loop.c makes on each tick. */
void sb__server_set_tick(sb_server *s, void (*fn)(sb_loop *loop, void *ud), void *ud);
void sb__server_tick(sb_loop *loop);

/* Called by a loop's thread as it exits (any thread may call; wakes the main loop). */
void sb__server_loop_exited(sb_server *s);

/* The system endpoints: /healthz, /readyz, /metrics (api/system.c). */
int sb_api_system_register(sb_router *r, sb_server *s);

/* Test-only endpoints, registered when debug.ws_echo is set: GET /debug/ws-echo (api/debug.c). */
int sb_api_debug_register(sb_router *r);

#endif
