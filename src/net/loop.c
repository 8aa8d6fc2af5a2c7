#include "net/loop.h"

#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/log.h"
#include "net/conn.h"
#include "net/http1.h"
#include "net/server_internal.h"
#include "switchboard/error.h"

#define TICK_MS 200

static void finish_if_drained(sb_loop *loop);

static void on_wakeup(uv_async_t *a)
{
    sb_loop *loop = a->data;
    pthread_mutex_lock(&loop->mq_lock);
    sb_loop_msg *m = loop->mq_head;
    loop->mq_head = loop->mq_tail = NULL;
    pthread_mutex_unlock(&loop->mq_lock);
    while (m) {
        sb_loop_msg *next = m->next;
        if (m->plain)
            m->plain(m->arg);
        else
            m->fn(loop, m->arg);
        sb_free(m);
        m = next;
    }
    if (loop->draining)
        finish_if_drained(loop); /* what ran may have been the last work */
}

/* Appends m to the queue; the caller holds mq_lock. */
static void append_locked(sb_loop *loop, sb_loop_msg *m)
{
    if (loop->mq_tail)
        loop->mq_tail->next = m;
    else
        loop->mq_head = m;
    loop->mq_tail = m;
}

static void enqueue(sb_loop *loop, sb_loop_msg *m)
{
    pthread_mutex_lock(&loop->mq_lock);
    append_locked(loop, m);
    pthread_mutex_unlock(&loop->mq_lock);
    uv_async_send(&loop->wakeup);
}

int sb_loop_post(sb_loop *loop, sb_loop_msg_fn fn, void *arg)
{
    sb_loop_msg *m = sb_malloc(sizeof *m);
    if (!m)
        return SB_ENOMEM;
    *m = (sb_loop_msg){.fn = fn, .arg = arg};
    pthread_mutex_lock(&loop->mq_lock);
    bool closed = loop->mq_closed;
    if (!closed)
        append_locked(loop, m);
    pthread_mutex_unlock(&loop->mq_lock);
    if (closed) {
        sb_free(m);
        return SB_ECANCELED;
    }
    uv_async_send(&loop->wakeup);
    return 0;
}

void sb_loop_post_plain(sb_loop *loop, void (*fn)(void *arg), void *arg)
{
    sb_loop_msg *m = NULL;
    for (int i = 0; i < 100 && !(m = sb_malloc(sizeof *m)); i++)
        usleep(1000);
    if (!m) {
        sb_log(SB_LOG_ERROR, "out of memory posting a completion to a loop", NULL);
        abort();
    }
    *m = (sb_loop_msg){.plain = fn, .arg = arg};
    enqueue(loop, m);
}

const char *sb_loop_date(sb_loop *loop)
{
    time_t now = time(NULL);
    if (now != loop->date_sec) {
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(loop->date, sizeof loop->date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
        loop->date_sec = now;
    }
    return loop->date;
}

void sb_loop_new_request_id(sb_loop *loop, char *out, size_t *len)
{
    static const char hex[] = "0123456789abcdef";
    uint64_t p = loop->reqid_prefix, s = ++loop->reqid_seq;
    for (int i = 15; i >= 0; i--, p >>= 4)
        out[i] = hex[p & 15];
    for (int i = 27; i >= 16; i--, s >>= 4)
        out[i] = hex[s & 15];
    out[28] = '\0';
    *len = 28;
}

static void on_tick(uv_timer_t *t)
{
    sb_loop *loop = t->data;
    sb_conn_sweep(loop);
    sb__server_tick(loop);
    if (loop->logbuf.len)
        sb_log_submit_buf(&loop->logbuf);
}

static void on_listener_connection(uv_stream_t *s, int status)
{
    sb_listener *l = (sb_listener *)s;
    if (status < 0) {
        sb_log(SB_LOG_WARN, "accept failed", "reason", uv_strerror(status), NULL);
        return;
    }
    sb_conn_accept(l);
}

int sb__loop_init(sb_loop *loop, sb_server *s, int index, const int *fds, const bool *tls, int nfds,
                  SSL_CTX *ctx, const sb_live *live, const sb_router *router)
{
    const sb_config *cfg = sb__server_config(s);
    loop->index = index;
    loop->server = s;
    loop->router = router;
    loop->live = *live;
    loop->max_connections = (size_t)cfg->http_max_connections;
    sb_buf_init(&loop->staging, SB_CONN_OUT_MAX);
    sb_buf_init(&loop->logbuf, 1 << 20);
    if (RAND_bytes((unsigned char *)&loop->reqid_prefix, sizeof loop->reqid_prefix) != 1)
        loop->reqid_prefix = (uint64_t)time(NULL) ^ ((uint64_t)index << 56);
    int rc = uv_loop_init(&loop->uv);
    if (rc)
        return rc;
    pthread_mutex_init(&loop->mq_lock, NULL);
    uv_async_init(&loop->uv, &loop->wakeup, on_wakeup);
    loop->wakeup.data = loop;
    uv_timer_init(&loop->uv, &loop->tick);
    loop->tick.data = loop;
    uv_timer_init(&loop->uv, &loop->drain_timer);
    loop->drain_timer.data = loop;
    uv_unref((uv_handle_t *)&loop->drain_timer);
    /* Started only while WebSockets wait on it; connections keep the loop alive, not it. */
    uv_prepare_init(&loop->uv, &loop->ws_prepare);
    loop->ws_prepare.data = loop;
    uv_unref((uv_handle_t *)&loop->ws_prepare);
    if (ctx) {
        SSL_CTX_up_ref(ctx);
        loop->ssl_ctx = ctx;
    }
    for (int i = 0; i < nfds; i++) {
        sb_listener *l = &loop->listeners[i];
        l->loop = loop;
        l->tls = tls[i];
        uv_tcp_init(&loop->uv, &l->tcp);
        if ((rc = uv_tcp_open(&l->tcp, fds[i])) != 0) {
            for (int j = i; j < nfds; j++)
                close(fds[j]);
            return rc;
        }
        loop->num_listeners++;
    }
    return 0;
}

static void *loop_thread(void *arg)
{
    sb_loop *loop = arg;
    char name[16];
    snprintf(name, sizeof name, "sb-loop-%d", loop->index);
    pthread_setname_np(pthread_self(), name);
    for (int i = 0; i < loop->num_listeners; i++) {
        int rc = uv_listen((uv_stream_t *)&loop->listeners[i].tcp, SB_LISTEN_BACKLOG,
                           on_listener_connection);
        if (rc)
            sb_log(SB_LOG_ERROR, "listen failed", "reason", uv_strerror(rc), NULL);
    }
    uv_timer_start(&loop->tick, on_tick, TICK_MS, TICK_MS);
    uv_run(&loop->uv, UV_RUN_DEFAULT);
    if (loop->logbuf.len)
        sb_log_submit_buf(&loop->logbuf);
    loop->stopped = true;
    sb__server_loop_exited(loop->server);
    return NULL;
}

int sb__loop_start(sb_loop *loop)
{
    return -pthread_create(&loop->thread, NULL, loop_thread, loop);
}

void sb__loop_join(sb_loop *loop)
{
    pthread_join(loop->thread, NULL);
}

static void close_walk(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

void sb__loop_destroy(sb_loop *loop)
{
    /* Handles left open (a loop that never ran) are closed before the loop is. */
    uv_walk(&loop->uv, close_walk, NULL);
    uv_run(&loop->uv, UV_RUN_DEFAULT);
    uv_loop_close(&loop->uv);
    pthread_mutex_destroy(&loop->mq_lock);
    sb_loop_msg *m = loop->mq_head;
    while (m) {
        sb_loop_msg *n = m->next;
        if (m->fn == sb__loop_apply_reload) {
            sb__reload_msg *rm = m->arg;
            SSL_CTX_free(rm->ctx);
            sb_free(rm);
        } else if (m->fn == sb__conn_move_arrive) {
            sb__conn_move_drop(m->arg); /* a connection handed to this loop after it stopped */
        }
        sb_free(m);
        m = n;
    }
    sb_h1_pool_free(loop);
    sb_buf_free(&loop->staging);
    sb_buf_free(&loop->logbuf);
    SSL_CTX_free(loop->ssl_ctx);
    loop->ssl_ctx = NULL;
}

static void close_if_open(uv_handle_t *h)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static void finish_if_drained(sb_loop *loop)
{
    if (!loop->draining || loop->num_conns > 0 || loop->pending_jobs > 0)
        return;
    /* Messages already queued still run (another loop may wait on their answer); once the
     * queue is empty it closes, and sb_loop_post tells later senders. */
    pthread_mutex_lock(&loop->mq_lock);
    bool queued = loop->mq_head != NULL;
    if (!queued)
        loop->mq_closed = true;
    pthread_mutex_unlock(&loop->mq_lock);
    if (queued) {
        uv_async_send(&loop->wakeup);
        return;
    }
    /* Everything is closed: let uv_run return. */
    close_if_open((uv_handle_t *)&loop->tick);
    close_if_open((uv_handle_t *)&loop->wakeup);
    close_if_open((uv_handle_t *)&loop->drain_timer);
    close_if_open((uv_handle_t *)&loop->ws_prepare);
}

void sb_loop_job_done(sb_loop *loop)
{
    loop->pending_jobs--;
    finish_if_drained(loop);
}

void sb__loop_conn_closed(sb_loop *loop)
{
    finish_if_drained(loop);
}

static void on_drain_deadline(uv_timer_t *t)
{
    sb_loop *loop = t->data;
    sb_log(SB_LOG_WARN, "drain timeout: closing remaining connections", NULL);
    sb_conn_abort_all(loop);
    finish_if_drained(loop);
}

void sb__loop_begin_drain(sb_loop *loop, void *arg)
{
    (void)arg;
    if (loop->draining)
        return;
    loop->draining = true;
    for (int i = 0; i < loop->num_listeners; i++)
        uv_close((uv_handle_t *)&loop->listeners[i].tcp, NULL);
    uv_timer_start(&loop->drain_timer, on_drain_deadline, (uint64_t)loop->live.drain_timeout_ms, 0);
    sb_conn_drain_all(loop);
    finish_if_drained(loop);
}

void sb__loop_abort(sb_loop *loop, void *arg)
{
    sb__loop_begin_drain(loop, arg);
    sb_conn_abort_all(loop);
    finish_if_drained(loop);
}

void sb__loop_apply_reload(sb_loop *loop, void *arg)
{
    sb__reload_msg *m = arg;
    loop->live = m->live;
    if (m->ctx) {
        SSL_CTX_free(loop->ssl_ctx);
        loop->ssl_ctx = m->ctx; /* the message's reference becomes ours */
    }
    sb_free(m);
}
