#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/log.h"
#include "api/app.h"
#include "net/loop.h"
#include "net/server_internal.h"
#include "net/tls.h"
#include "switchboard/devcert.h"
#include "switchboard/error.h"
#include "switchboard/server.h"

#define MAX_LOOPS 64

typedef struct listen_spec {
    struct sockaddr_storage addr;
    bool tls;
    char url[80];
} listen_spec;

struct sb_server {
    const sb_config *cfg;
    int nloops;
    sb_loop *loops[MAX_LOOPS];
    sb_router *router;
    sb_app *app;
    void (*tick_fn)(sb_loop *loop, void *ud); /* the app's per-loop tick, or NULL */
    void *tick_ud;
    SSL_CTX *ssl_ctx;
    char *cert_path, *key_path, *dev_ca_path;
    listen_spec listen[SB_MAX_LISTENERS];
    int nlisten;
    uint64_t start_time;
    _Atomic bool ready;
    _Atomic int loops_exited;

    uv_loop_t main;
    uv_signal_t sig_term, sig_int, sig_hup;
    uv_async_t loop_exit;
    bool draining;

    sb_server_reload_fn reload;
    void *reload_ud;
};

const sb_config *sb__server_config(const sb_server *s)
{
    return s->cfg;
}

int sb_server_loop_count(const sb_server *s)
{
    return s->nloops;
}

sb_loop_stats *sb_server_loop_stats(const sb_server *s, int i)
{
    return &s->loops[i]->stats;
}

uint64_t sb_server_start_time(const sb_server *s)
{
    return s->start_time;
}

bool sb_server_ready(const sb_server *s)
{
    return atomic_load(&s->ready);
}

int sb_server_listener_count(const sb_server *s)
{
    return s->nlisten;
}

const char *sb_server_listener_url(const sb_server *s, int i)
{
    return i >= 0 && i < s->nlisten ? s->listen[i].url : NULL;
}

sb_loop *sb_server_loop(const sb_server *s, int i)
{
    return s->loops[i];
}

const char *sb_server_generated_admin_key(const sb_server *s)
{
    return s->app ? sb_app_generated_admin_key(s->app) : NULL;
}

const char *sb_server_dev_ca_path(const sb_server *s)
{
    return s->dev_ca_path;
}

static sb_live live_of(const sb_config *cfg)
{
    return (sb_live){
        .handshake_timeout_ms = cfg->tls_handshake_timeout_ms,
        .header_timeout_ms = cfg->http_header_timeout_ms,
        .body_timeout_ms = cfg->http_body_timeout_ms,
        .idle_timeout_ms = cfg->http_idle_timeout_ms,
        .write_timeout_ms = cfg->http_write_timeout_ms,
        .drain_timeout_ms = cfg->shutdown_drain_timeout_ms,
        .ws_ping_interval_ms = cfg->ws_ping_interval_ms,
        .ws_pong_timeout_ms = cfg->ws_pong_timeout_ms,
        .log_access = cfg->log_access,
        .metrics_enabled = cfg->metrics_enabled,
    };
}

static char *join_path(const char *dir, const char *rest)
{
    size_t a = strlen(dir), b = strlen(rest);
    char *p = sb_malloc(a + b + 2);
    if (p) {
        memcpy(p, dir, a);
        p[a] = '/';
        memcpy(p + a + 1, rest, b + 1);
    }
    return p;
}

static void format_url(listen_spec *l)
{
    char host[INET6_ADDRSTRLEN];
    int port;
    if (l->addr.ss_family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&l->addr;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
        port = ntohs(a->sin6_port);
        snprintf(l->url, sizeof l->url, "%s://[%s]:%d", l->tls ? "https" : "http", host, port);
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&l->addr;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
        port = ntohs(a->sin_port);
        snprintf(l->url, sizeof l->url, "%s://%s:%d", l->tls ? "https" : "http", host, port);
    }
}

static int bind_one(listen_spec *l, char *err, size_t errlen)
{
    int fd = socket(l->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        goto fail;
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0)
        goto fail;
    if (l->addr.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    socklen_t alen =
        l->addr.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    /* Listen now: the port accepts (into this socket's backlog) from the moment the start is
     * announced, before the loop threads run. */
    if (bind(fd, (struct sockaddr *)&l->addr, alen) != 0 || listen(fd, SB_LISTEN_BACKLOG) != 0)
        goto fail;
    /* Port 0: every loop must share the port the kernel picked for the first socket. */
    struct sockaddr_storage got;
    socklen_t glen = sizeof got;
    if (getsockname(fd, (struct sockaddr *)&got, &glen) == 0)
        memcpy(&l->addr, &got, glen);
    return fd;
fail:;
    int e = errno;
    if (fd >= 0)
        close(fd);
    format_url(l);
    snprintf(err, errlen, "cannot listen on %s: %s", l->url, strerror(e));
    return -e;
}

static int mkdir_p(const char *path, mode_t mode)
{
    char tmp[4096];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof tmp)
        return SB_EINVAL;
    memcpy(tmp, path, n + 1);
    for (char *p = tmp + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            if (mkdir(tmp, mode) != 0 && errno != EEXIST)
                return -errno;
            *p = '/';
        }
    }
    if (mkdir(tmp, mode) != 0 && errno != EEXIST)
        return -errno;
    return 0;
}

int sb_server_new(sb_server **out, const sb_config *cfg, char *err, size_t errlen)
{
    int rc = SB_ENOMEM;
    int fds[MAX_LOOPS][SB_MAX_LISTENERS];
    bool tls[SB_MAX_LISTENERS];
    int handed = 0; /* loops that own their fds */
    for (int l = 0; l < MAX_LOOPS; l++)
        for (int i = 0; i < SB_MAX_LISTENERS; i++)
            fds[l][i] = -1;
    sb_server *s = sb_calloc(1, sizeof *s);
    if (!s)
        goto fail;
    s->cfg = cfg;
    s->start_time = (uint64_t)time(NULL);
    s->nloops = cfg->workers > 0 ? cfg->workers : (int)uv_available_parallelism();
    if (s->nloops > MAX_LOOPS)
        s->nloops = MAX_LOOPS;

    if ((rc = mkdir_p(cfg->data_dir, 0700)) != 0) {
        snprintf(err, errlen, "cannot create data_dir %s: %s", cfg->data_dir, sb_strerror(rc));
        goto fail;
    }

    /* Listeners: TLS first, then plain. */
    struct sockaddr_storage addrs[SB_MAX_LISTENERS];
    int n = 0;
    if (cfg->listen && *cfg->listen) {
        n = sb_config_parse_listen(cfg->listen, addrs, SB_MAX_LISTENERS, err, errlen);
        if (n < 0) {
            rc = n;
            goto fail;
        }
        for (int i = 0; i < n; i++)
            s->listen[s->nlisten++] = (listen_spec){.addr = addrs[i], .tls = true};
    }
    if (cfg->plain_listen && *cfg->plain_listen) {
        n = sb_config_parse_listen(cfg->plain_listen, addrs, SB_MAX_LISTENERS - s->nlisten, err,
                                   errlen);
        if (n < 0) {
            rc = n;
            goto fail;
        }
        for (int i = 0; i < n; i++)
            s->listen[s->nlisten++] = (listen_spec){.addr = addrs[i], .tls = false};
    }

    /* TLS material: configured files, or the development CA's certificate. */
    bool any_tls = false;
    for (int i = 0; i < s->nlisten; i++)
        any_tls |= s->listen[i].tls;
    if (any_tls) {
        if (cfg->tls_cert && *cfg->tls_cert) {
            s->cert_path = sb_strdup(cfg->tls_cert);
            s->key_path = sb_strdup(cfg->tls_key);
        } else if (cfg->dev) {
            if ((rc = sb_devcert_ensure(cfg->data_dir, err, errlen)) != 0)
                goto fail;
            s->cert_path = join_path(cfg->data_dir, "tls/server.pem");
            s->key_path = join_path(cfg->data_dir, "tls/server.key");
            s->dev_ca_path = join_path(cfg->data_dir, "tls/ca.pem");
            if (!s->dev_ca_path) {
                rc = SB_ENOMEM;
                goto fail;
            }
        } else {
            snprintf(err, errlen, "tls.cert and tls.key are required unless --dev");
            rc = SB_ECONFIG;
            goto fail;
        }
        if (!s->cert_path || !s->key_path) {
            rc = SB_ENOMEM;
            goto fail;
        }
        s->ssl_ctx =
            sb_tls_ctx_new(s->cert_path, s->key_path, cfg->tls_session_tickets, NULL, err, errlen);
        if (!s->ssl_ctx || sb_tls_ctx_set_client_auth(s->ssl_ctx, cfg->tls_client_auth,
                                                      cfg->tls_client_ca, err, errlen) != 0) {
            rc = SB_ETLS;
            goto fail;
        }
    }

    if ((rc = sb_router_new(&s->router)) != 0 || (rc = sb_api_system_register(s->router, s)) != 0)
        goto fail;
    if (cfg->debug_ws_echo && (rc = sb_api_debug_register(s->router)) != 0)
        goto fail;

    /* Bind every loop's sockets now, so that a port in use fails the start, not a thread. */
    for (int l = 0; l < s->nloops; l++) {
        for (int i = 0; i < s->nlisten; i++) {
            int fd = bind_one(&s->listen[i], err, errlen);
            if (fd < 0) {
                rc = fd;
                goto fail_fds;
            }
            fds[l][i] = fd;
            tls[i] = s->listen[i].tls;
        }
    }
    for (int i = 0; i < s->nlisten; i++)
        format_url(&s->listen[i]);

    /* The control plane, once the base URL (its token issuer) is known. */
    if ((rc = sb_app_new(&s->app, cfg, s, s->nloops, err, errlen)) != 0 ||
        (rc = sb_app_register(s->app, s->router)) != 0)
        goto fail_fds;

    sb_live live = live_of(cfg);
    for (int l = 0; l < s->nloops; l++) {
        sb_loop *loop = sb_calloc(1, sizeof *loop);
        if (!loop) {
            rc = SB_ENOMEM;
            goto fail_fds;
        }
        s->loops[l] = loop;
        rc = sb__loop_init(loop, s, l, fds[l], tls, s->nlisten, s->ssl_ctx, &live, s->router);
        handed = l + 1; /* the loop owns these fds now, even on failure */
        if (rc) {
            snprintf(err, errlen, "cannot start event loop: %s", uv_strerror(rc));
            goto fail_fds;
        }
    }
    *out = s;
    return 0;

fail_fds:
    for (int l = handed; l < s->nloops; l++)
        for (int i = 0; i < s->nlisten; i++)
            if (fds[l][i] >= 0)
                close(fds[l][i]);
fail:
    if (rc == SB_ENOMEM && err[0] == '\0')
        snprintf(err, errlen, "out of memory");
    sb_server_free(s);
    return rc;
}

int sb_server_check(const sb_config *cfg, char *err, size_t errlen)
{
    struct sockaddr_storage addrs[SB_MAX_LISTENERS];
    int n;
    if (cfg->listen && *cfg->listen &&
        (n = sb_config_parse_listen(cfg->listen, addrs, SB_MAX_LISTENERS, err, errlen)) < 0)
        return n;
    if (cfg->plain_listen && *cfg->plain_listen &&
        (n = sb_config_parse_listen(cfg->plain_listen, addrs, SB_MAX_LISTENERS, err, errlen)) < 0)
        return n;
    if (cfg->tls_cert && *cfg->tls_cert) {
        SSL_CTX *ctx = sb_tls_ctx_new(cfg->tls_cert, cfg->tls_key, cfg->tls_session_tickets, NULL,
                                      err, errlen);
        if (!ctx)
            return SB_ETLS;
        int bad =
            sb_tls_ctx_set_client_auth(ctx, cfg->tls_client_auth, cfg->tls_client_ca, err, errlen);
        SSL_CTX_free(ctx);
        if (bad)
            return SB_ETLS;
    }
    return 0;
}

void sb_server_set_reload(sb_server *s, sb_server_reload_fn fn, void *ud)
{
    s->reload = fn;
    s->reload_ud = ud;
}

static void log_static_change(const char *key, void *ud)
{
    (void)ud;
    sb_log(SB_LOG_WARN, "config change needs a restart to take effect", "key", key, NULL);
}

static void do_reload(sb_server *s)
{
    char err[512] = "";
    sb_config fresh;
    memset(&fresh, 0, sizeof fresh);
    sb_log(SB_LOG_INFO, "reloading (SIGHUP)", NULL);
    if (s->reload) {
        if (s->reload(&fresh, err, sizeof err, s->reload_ud) != 0) {
            sb_log(SB_LOG_ERROR, "config reload failed; keeping the running config", "reason", err,
                   NULL);
            sb_config_free(&fresh);
            return;
        }
        sb_config_diff_static(s->cfg, &fresh, log_static_change, NULL);
    }
    const sb_config *c = s->reload ? &fresh : s->cfg;
    SSL_CTX *ctx = NULL;
    if (s->ssl_ctx) {
        ctx = sb_tls_ctx_new(s->cert_path, s->key_path, c->tls_session_tickets, s->ssl_ctx, err,
                             sizeof err);
        if (ctx && sb_tls_ctx_set_client_auth(ctx, s->cfg->tls_client_auth, s->cfg->tls_client_ca,
                                              err, sizeof err) != 0) {
            SSL_CTX_free(ctx);
            ctx = NULL;
        }
        if (!ctx)
            sb_log(SB_LOG_ERROR, "TLS reload failed; keeping the current certificate", "reason",
                   err, NULL);
    }
    sb_log_set_level(c->log_level);
    sb_live live = live_of(c);
    for (int i = 0; i < s->nloops; i++) {
        sb__reload_msg *m = sb_malloc(sizeof *m);
        if (!m)
            continue;
        m->live = live;
        m->ctx = ctx;
        if (ctx)
            SSL_CTX_up_ref(ctx);
        if (sb_loop_post(s->loops[i], sb__loop_apply_reload, m) != 0) {
            SSL_CTX_free(m->ctx);
            sb_free(m);
        }
    }
    if (ctx) {
        SSL_CTX_free(s->ssl_ctx);
        s->ssl_ctx = ctx;
        sb_log(SB_LOG_INFO, "TLS certificate reloaded", "cert", s->cert_path, NULL);
    }
    if (s->reload)
        sb_config_free(&fresh);
    sb_log(SB_LOG_INFO, "reload complete", NULL);
}

static void on_signal(uv_signal_t *h, int signum)
{
    sb_server *s = h->data;
    if (signum == SIGHUP) {
        do_reload(s);
        return;
    }
    if (!s->draining) {
        s->draining = true;
        atomic_store(&s->ready, false);
        sb_log(SB_LOG_INFO, "shutting down: draining connections", "signal",
               signum == SIGTERM ? "SIGTERM" : "SIGINT", NULL);
        for (int i = 0; i < s->nloops; i++)
            sb_loop_post(s->loops[i], sb__loop_begin_drain, NULL);
        return;
    }
    sb_log(SB_LOG_WARN, "second signal: closing every connection now", NULL);
    for (int i = 0; i < s->nloops; i++)
        sb_loop_post(s->loops[i], sb__loop_abort, NULL);
}

void sb__server_loop_exited(sb_server *s)
{
    atomic_fetch_add(&s->loops_exited, 1);
    uv_async_send(&s->loop_exit);
}

static void on_loop_exit(uv_async_t *a)
{
    sb_server *s = a->data;
    if (atomic_load(&s->loops_exited) < s->nloops)
        return;
    uv_close((uv_handle_t *)&s->sig_term, NULL);
    uv_close((uv_handle_t *)&s->sig_int, NULL);
    uv_close((uv_handle_t *)&s->sig_hup, NULL);
    uv_close((uv_handle_t *)&s->loop_exit, NULL);
}

int sb_server_run(sb_server *s)
{
    int rc = uv_loop_init(&s->main);
    if (rc)
        return rc;
    uv_signal_init(&s->main, &s->sig_term);
    uv_signal_init(&s->main, &s->sig_int);
    uv_signal_init(&s->main, &s->sig_hup);
    s->sig_term.data = s->sig_int.data = s->sig_hup.data = s;
    uv_signal_start(&s->sig_term, on_signal, SIGTERM);
    uv_signal_start(&s->sig_int, on_signal, SIGINT);
    uv_signal_start(&s->sig_hup, on_signal, SIGHUP);
    uv_async_init(&s->main, &s->loop_exit, on_loop_exit);
    s->loop_exit.data = s;

    int started = 0;
    for (; started < s->nloops; started++) {
        if ((rc = sb__loop_start(s->loops[started])) != 0)
            break;
    }
    if (rc) {
        sb_log(SB_LOG_ERROR, "cannot start loop threads", "reason", strerror(-rc), NULL);
        for (int i = 0; i < started; i++)
            sb_loop_post(s->loops[i], sb__loop_abort, NULL);
        atomic_fetch_add(&s->loops_exited, s->nloops - started);
    } else {
        atomic_store(&s->ready, true);
        for (int i = 0; i < s->nlisten; i++)
            sb_log(SB_LOG_INFO, "listening", "url", s->listen[i].url, NULL);
    }
    uv_run(&s->main, UV_RUN_DEFAULT);
    for (int i = 0; i < started; i++)
        sb__loop_join(s->loops[i]);
    uv_loop_close(&s->main);
    if (!rc)
        sb_log(SB_LOG_INFO, "stopped", NULL);
    return rc;
}

void sb_server_free(sb_server *s)
{
    if (!s)
        return;
    /* The store first: its last completions still reach the loops' queues (they are all
     * idle by now: a loop only exits with no job pending). */
    sb_app_free(s->app);
    for (int i = 0; i < s->nloops; i++) {
        if (s->loops[i]) {
            sb__loop_destroy(s->loops[i]);
            sb_free(s->loops[i]);
        }
    }
    sb_router_free(s->router);
    SSL_CTX_free(s->ssl_ctx);
    sb_free(s->cert_path);
    sb_free(s->key_path);
    sb_free(s->dev_ca_path);
    sb_free(s);
}

void sb__server_set_tick(sb_server *s, void (*fn)(sb_loop *loop, void *ud), void *ud)
{
    s->tick_fn = fn;
    s->tick_ud = ud;
}

void sb__server_tick(sb_loop *loop)
{
    sb_server *s = loop->server;
    if (s && s->tick_fn)
        s->tick_fn(loop, s->tick_ud);
}
