/*
 * Worker event loops.
 *
 * Each worker thread runs one libuv loop with its own listening sockets on the shared ports
 * (SO_REUSEPORT), its own connections, buffers, request pool and stats. Nothing on the
 * request path is shared between loops. Work crosses loops only as messages
 * (sb_loop_post), which a uv_async wakes the target loop to run.
 */
#ifndef SB_NET_LOOP_H
#define SB_NET_LOOP_H

#include <openssl/ssl.h>
#include <pthread.h>
#include <stdbool.h>
#include <uv.h>

#include "core/buf.h"
#include "core/metrics.h"
#include "net/router.h"

#define SB_LOOP_RBUF_SIZE 65536
#define SB_MAX_LISTENERS  16
#define SB_LISTEN_BACKLOG 4096

typedef struct sb_server sb_server;
typedef struct sb_conn sb_conn;
typedef struct sb_ws sb_ws;

/* Settings that SIGHUP may change; each loop has its own copy, replaced by a message. */
typedef struct sb_live {
    int64_t handshake_timeout_ms;
    int64_t header_timeout_ms;
    int64_t body_timeout_ms;
    int64_t idle_timeout_ms;
    int64_t write_timeout_ms;
    int64_t drain_timeout_ms;
    int64_t ws_ping_interval_ms;
    int64_t ws_pong_timeout_ms;
    bool log_access;
    bool metrics_enabled;
} sb_live;

typedef void (*sb_loop_msg_fn)(sb_loop *loop, void *arg);

typedef struct sb_loop_msg {
    struct sb_loop_msg *next;
    sb_loop_msg_fn fn;     /* either this ... */
    void (*plain)(void *); /* ... or this is set */
    void *arg;
} sb_loop_msg;

typedef struct sb_listener {
    uv_tcp_t tcp;
    sb_loop *loop;
    bool tls;
} sb_listener;

struct sb_loop {
    uv_loop_t uv;
    int index;
    sb_server *server;
    pthread_t thread;

    uv_async_t wakeup;
    pthread_mutex_t mq_lock;
    sb_loop_msg *mq_head, *mq_tail;
    bool mq_closed; /* the loop has finished: sb_loop_post refuses (under mq_lock) */

    sb_listener listeners[SB_MAX_LISTENERS];
    int num_listeners;

    uv_timer_t tick;        /* timeouts sweep, access-log flush */
    uv_timer_t drain_timer; /* started on drain: bounds how long draining may take */

    SSL_CTX *ssl_ctx; /* this loop's reference; replaced on reload */
    sb_live live;
    const sb_router *router;
    size_t max_connections;

    sb_conn *conns; /* all open connections (intrusive list) */
    size_t num_conns;
    size_t pending_jobs; /* store jobs whose completion will come back here */
    bool draining;
    bool stopped;

    void *req_pool; /* free pooled requests (adapter-defined) */
    size_t req_pool_len;

    uv_prepare_t ws_prepare; /* writes WebSocket output queued outside read callbacks */
    sb_ws *ws_pending;       /* WebSockets with output or state to act on (websocket.c) */

    sb_buf staging; /* plaintext being built before encryption */
    sb_buf logbuf;  /* access-log lines not yet written */
    uint64_t reqid_prefix;
    uint64_t reqid_seq;
    time_t date_sec;
    char date[40]; /* IMF-fixdate of date_sec */

    sb_loop_stats stats;
    char rbuf[SB_LOOP_RBUF_SIZE]; /* socket reads land here, TLS decrypts from here */
};

/* Queues fn(loop, arg) to run on loop's thread. Safe from any thread. Returns SB_ENOMEM, or
 * SB_ECANCELED once the loop has finished (drained and stopped): fn will never run there. */
int sb_loop_post(sb_loop *loop, sb_loop_msg_fn fn, void *arg);

/* Same, for callbacks that take only their argument (store completions). Never fails: on
 * out-of-memory it retries briefly and then aborts, because a lost completion would leave
 * a request waiting forever. */
void sb_loop_post_plain(sb_loop *loop, void (*fn)(void *arg), void *arg);

/* The cached IMF-fixdate ("Fri, 27 Nov 2026 07:00:00 GMT") for now. */
const char *sb_loop_date(sb_loop *loop);

/* A store job submitted from this loop completed (its callback ran): a draining loop may
 * now be done. */
void sb_loop_job_done(sb_loop *loop);

/* Fills req->request_id with a new id unique in this process run. */
void sb_loop_new_request_id(sb_loop *loop, char *out, size_t *len);

/* Server-wide accessors for handlers. */
int sb_server_loop_count(const sb_server *s);
sb_loop_stats *sb_server_loop_stats(const sb_server *s, int i);
uint64_t sb_server_start_time(const sb_server *s);
bool sb_server_ready(const sb_server *s);

#endif
