#include "net/conn.h"

#include <openssl/err.h>

#include "core/alloc.h"
#include "core/log.h"
#include "net/http1.h"
#include "net/http2.h"
#include "net/server_internal.h"
#include "net/tls.h"
#include "switchboard/error.h"

#define LINGER_MS 2000

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void close_now(sb_conn *c);

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    sb_conn *c = (sb_conn *)h;
    buf->base = c->loop->rbuf;
    buf->len = sizeof c->loop->rbuf;
}

static void link_conn(sb_loop *loop, sb_conn *c)
{
    c->next = loop->conns;
    if (loop->conns)
        loop->conns->prev = c;
    loop->conns = c;
    loop->num_conns++;
}

static void unlink_conn(sb_loop *loop, sb_conn *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        loop->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    loop->num_conns--;
}

static void on_closed(uv_handle_t *h)
{
    sb_conn *c = (sb_conn *)h;
    sb_buf_free(&c->in);
    sb_buf_free(&c->out);
    sb_buf_free(&c->wout);
    sb_free(c);
}

static void on_reject_closed(uv_handle_t *h)
{
    sb_free(h);
}

void sb_conn_accept(sb_listener *l)
{
    sb_loop *loop = l->loop;
    const sb_config *cfg = sb__server_config(loop->server);
    sb_conn *c = sb_calloc(1, sizeof *c);
    if (!c) {
        sb_log(SB_LOG_ERROR, "out of memory accepting a connection", NULL);
        return;
    }
    uv_tcp_init(&loop->uv, &c->tcp);
    if (uv_accept((uv_stream_t *)&l->tcp, (uv_stream_t *)&c->tcp) != 0) {
        uv_close((uv_handle_t *)&c->tcp, on_reject_closed);
        return;
    }
    if (loop->num_conns >= loop->max_connections || loop->draining) {
        sb_stat_add(&loop->stats.connections_rejected, 1);
        uv_close((uv_handle_t *)&c->tcp, on_reject_closed);
        return;
    }
    c->loop = loop;
    uv_tcp_nodelay(&c->tcp, 1);
    int alen = sizeof c->peer;
    uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&c->peer, &alen);
    sb_buf_init(&c->in, cfg->http_max_header_bytes + cfg->http_max_body_bytes + SB_LOOP_RBUF_SIZE);
    sb_buf_init(&c->out, SB_CONN_OUT_MAX);
    sb_buf_init(&c->wout, SB_CONN_OUT_MAX);
    link_conn(loop, c);
    sb_stat_add(&loop->stats.connections_active, 1);
    sb_stat_add(&loop->stats.connections_total, 1);

    if (l->tls) {
        c->ssl = SSL_new(loop->ssl_ctx);
        BIO *bio = c->ssl ? BIO_new(sb_tls_conn_bio_method()) : NULL;
        if (!bio) {
            sb_log(SB_LOG_ERROR, "cannot create TLS session", NULL);
            ERR_clear_error();
            sb_conn_abort(c);
            return;
        }
        BIO_set_data(bio, c);
        SSL_set_bio(c->ssl, bio, bio);
        SSL_set_accept_state(c->ssl);
        c->handshaking = true;
        sb_conn_set_deadline(c, SB_DL_HANDSHAKE, loop->live.handshake_timeout_ms);
    } else {
        sb_h1_attach(c);
    }
    c->reading = true;
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

bool sb_conn_is_tls(const sb_conn *c)
{
    return c->ssl != NULL;
}

void sb_conn_set_deadline(sb_conn *c, sb_deadline_kind kind, int64_t timeout_ms)
{
    c->deadline_kind = kind;
    c->deadline_ms = kind == SB_DL_NONE ? 0 : uv_now(&c->loop->uv) + (uint64_t)timeout_ms;
}

sb_buf *sb_conn_write_begin(sb_conn *c)
{
    if (c->ssl) {
        sb_buf_reset(&c->loop->staging);
        return &c->loop->staging;
    }
    return &c->out;
}

int sb_conn_write_end(sb_conn *c)
{
    if (!c->ssl)
        return 0;
    sb_buf *s = &c->loop->staging;
    size_t off = 0;
    while (off < s->len) {
        size_t chunk = s->len - off > INT32_MAX ? INT32_MAX : s->len - off;
        int n = SSL_write(c->ssl, s->base + off, (int)chunk);
        if (n <= 0) {
            ERR_clear_error();
            sb_buf_reset(s);
            return SB_EIO;
        }
        off += (size_t)n;
    }
    sb_buf_reset(s);
    return 0;
}

int sb_conn_write(sb_conn *c, const void *data, size_t len)
{
    if (!c->ssl)
        return sb_buf_append(&c->out, data, len);
    const char *p = data;
    size_t off = 0;
    while (off < len) {
        size_t chunk = len - off > INT32_MAX ? INT32_MAX : len - off;
        int n = SSL_write(c->ssl, p + off, (int)chunk);
        if (n <= 0) {
            ERR_clear_error();
            return SB_EIO;
        }
        off += (size_t)n;
    }
    return 0;
}

static void deliver(sb_conn *c)
{
    if (!c->proto || c->closing)
        return;
    c->in_callback = true;
    c->proto->on_data(c);
    c->in_callback = false;
    if (!c->closing || c->close_after_write)
        sb_conn_flush(c);
}

static void tls_read(sb_conn *c)
{
    if (c->handshaking) {
        int r = SSL_do_handshake(c->ssl);
        if (r != 1) {
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_READ) {
                sb_conn_flush(c);
                return;
            }
            sb_stat_add(&c->loop->stats.tls_handshakes_failed, 1);
            if (sb_log_enabled(SB_LOG_DEBUG)) {
                char why[160];
                ERR_error_string_n(ERR_peek_error(), why, sizeof why);
                sb_log(SB_LOG_DEBUG, "tls handshake failed", "reason", why, NULL);
            }
            ERR_clear_error();
            /* Send the alert OpenSSL queued, then close. */
            c->closing = true;
            c->close_after_write = true;
            sb_conn_flush(c);
            return;
        }
        c->handshaking = false;
        sb_stat_add(&c->loop->stats.tls_handshakes_ok, 1);
        if (SSL_session_reused(c->ssl))
            sb_stat_add(&c->loop->stats.tls_resumed, 1);
        const unsigned char *alpn = NULL;
        unsigned alpn_len = 0;
        SSL_get0_alpn_selected(c->ssl, &alpn, &alpn_len);
        if (alpn_len == 2 && memcmp(alpn, "h2", 2) == 0) {
            if (sb_h2_attach(c) != 0) {
                sb_conn_abort(c);
                return;
            }
        } else {
            sb_h1_attach(c);
        }
    }
    for (;;) {
        if (sb_buf_reserve(&c->in, 4096) != 0) {
            /* Input limit reached: the adapter refuses the request from what it has. */
            break;
        }
        int n = SSL_read(c->ssl, c->in.base + c->in.len, (int)(c->in.cap - c->in.len));
        if (n > 0) {
            c->in.len += (size_t)n;
            continue;
        }
        int e = SSL_get_error(c->ssl, n);
        if (e == SSL_ERROR_WANT_READ)
            break;
        if (e == SSL_ERROR_ZERO_RETURN) {
            c->eof = true;
            break;
        }
        ERR_clear_error();
        sb_conn_abort(c);
        return;
    }
    deliver(c);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    sb_conn *c = (sb_conn *)s;
    if (nread == 0)
        return;
    if (nread < 0) {
        if (nread != UV_EOF || c->handshaking || c->closing) {
            close_now(c);
            return;
        }
        c->eof = true;
        uv_read_stop(s);
        c->reading = false;
        deliver(c); /* the adapter sees c->eof and finishes or closes */
        return;
    }
    sb_stat_add(&c->loop->stats.bytes_in, (uint64_t)nread);
    if (c->closing)
        return; /* lingering: discard */
    if (c->ssl) {
        c->tls_in = buf->base;
        c->tls_in_len = (size_t)nread;
        tls_read(c);
        c->tls_in = NULL;
        c->tls_in_len = 0;
        return;
    }
    if (sb_buf_append(&c->in, buf->base, (size_t)nread) != 0) {
        sb_conn_abort(c);
        return;
    }
    deliver(c);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    sb_conn *c = req->data;
    sb_free(req);
    if (status != 0 || c->eof || !c->reading) {
        close_now(c);
        return;
    }
    sb_conn_set_deadline(c, SB_DL_DRAIN, LINGER_MS);
}

/* The response is out; close the way that keeps it from being lost: send FIN, then read
 * and discard what the peer still sends for a short while, so that unread input does not
 * make the kernel answer with a reset that would destroy the response in flight. */
static void linger_close(sb_conn *c)
{
    if (c->eof || !c->reading) {
        close_now(c);
        return;
    }
    uv_shutdown_t *req = sb_malloc(sizeof *req);
    if (!req || uv_shutdown(req, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
        sb_free(req);
        close_now(c);
        return;
    }
    req->data = c;
    c->close_after_write = false; /* done; the shutdown callback finishes */
    c->deadline_kind = SB_DL_NONE;
}

static void on_write(uv_write_t *req, int status)
{
    sb_conn *c = req->data;
    if (status == UV_ECANCELED)
        return; /* the handle is closing */
    c->writing = false;
    sb_stat_add(&c->loop->stats.bytes_out, c->wout.len);
    sb_buf_reset(&c->wout);
    if (status < 0) {
        close_now(c);
        return;
    }
    if (c->out.len) {
        sb_conn_flush(c);
        /* Still writing, or closed. If the rest went out at once, the adapter must still hear
         * that the output drained (it may have paused reading or be holding frames back). */
        if (c->writing || c->closing)
            return;
    }
    if (c->close_after_write) {
        linger_close(c);
        return;
    }
    if (!c->closing && c->proto && c->proto->on_writable)
        c->proto->on_writable(c);
}

void sb_conn_flush(sb_conn *c)
{
    if (c->writing || c->in_callback)
        return;
    if (c->out.len) {
        uv_buf_t b = uv_buf_init(c->out.base, (unsigned)c->out.len);
        int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
        if (n == UV_EAGAIN || n == UV_ENOSYS)
            n = 0;
        if (n < 0) {
            close_now(c);
            return;
        }
        sb_stat_add(&c->loop->stats.bytes_out, (uint64_t)n);
        if ((size_t)n == c->out.len) {
            c->out.len = 0;
        } else {
            sb_buf_consume(&c->out, (size_t)n);
            sb_buf tmp = c->wout;
            c->wout = c->out;
            c->out = tmp;
            c->wreq.data = c;
            b = uv_buf_init(c->wout.base, (unsigned)c->wout.len);
            if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_write) != 0) {
                close_now(c);
                return;
            }
            c->writing = true;
            c->last_write_progress_ms = uv_now(&c->loop->uv);
            if (c->out.len + c->wout.len > SB_CONN_OUT_HIGH && c->reading &&
                !(c->proto && c->proto->bounds_output))
                sb_conn_pause_reading(c, true);
            return;
        }
    }
    if (c->close_after_write)
        linger_close(c);
}

void sb_conn_pause_reading(sb_conn *c, bool pause)
{
    if (pause && c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    } else if (!pause && !c->reading && !c->eof && !c->closing) {
        c->reading = true;
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    }
}

void sb_conn_close_after_write(sb_conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    c->close_after_write = true;
    if (c->ssl && !c->handshaking) {
        SSL_shutdown(c->ssl); /* queues close_notify into c->out */
        ERR_clear_error();
    }
    sb_conn_flush(c);
}

static void close_now(sb_conn *c)
{
    if (uv_is_closing((uv_handle_t *)&c->tcp))
        return;
    c->closing = true;
    if (c->proto && c->proto->on_close)
        c->proto->on_close(c);
    c->proto = NULL;
    if (c->ssl) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    sb_loop *loop = c->loop;
    unlink_conn(loop, c);
    sb_stat_sub(&loop->stats.connections_active, 1);
    uv_close((uv_handle_t *)&c->tcp, on_closed);
    sb__loop_conn_closed(loop);
}

void sb_conn_abort(sb_conn *c)
{
    close_now(c);
}

void sb_conn_sweep(sb_loop *loop)
{
    uint64_t now = uv_now(&loop->uv);
    sb_conn *c = loop->conns;
    while (c) {
        sb_conn *next = c->next;
        if (c->writing &&
            now - c->last_write_progress_ms >= (uint64_t)loop->live.write_timeout_ms) {
            sb_stat_add(&loop->stats.timeouts, 1);
            close_now(c);
        } else if (c->deadline_ms && now >= c->deadline_ms &&
                   (!c->writing || c->deadline_kind == SB_DL_CLOSE)) {
            /* While our output waits on the peer, the write timeout governs; the adapter
             * re-arms its own deadline when the output drains. A closing handshake does not
             * wait for a peer that does not read. */
            sb_deadline_kind kind = c->deadline_kind;
            c->deadline_ms = 0;
            c->deadline_kind = SB_DL_NONE;
            if (kind == SB_DL_DRAIN) {
                close_now(c);
            } else {
                if (kind != SB_DL_PING)
                    sb_stat_add(&loop->stats.timeouts, 1);
                if (kind == SB_DL_HANDSHAKE || !c->proto || !c->proto->on_timeout)
                    close_now(c);
                else
                    c->proto->on_timeout(c, kind);
            }
        } else if (c->deadline_kind == SB_DL_IDLE && !c->writing && c->in.len == 0 &&
                   c->out.len == 0 && c->in.cap > 0 &&
                   now + (uint64_t)loop->live.idle_timeout_ms >= c->deadline_ms + 1000) {
            /* An idle keep-alive connection holds no buffers. */
            sb_buf_free(&c->in);
            sb_buf_free(&c->out);
            sb_buf_free(&c->wout);
        } else if (c->proto && c->proto->on_sweep) {
            c->proto->on_sweep(c, now);
        }
        c = next;
    }
}

void sb_conn_drain_all(sb_loop *loop)
{
    sb_conn *c = loop->conns;
    while (c) {
        sb_conn *next = c->next;
        if (c->handshaking || !c->proto || !c->proto->on_drain)
            close_now(c);
        else if (!c->closing)
            c->proto->on_drain(c);
        c = next;
    }
}

void sb_conn_abort_all(sb_loop *loop)
{
    while (loop->conns)
        close_now(loop->conns);
}
