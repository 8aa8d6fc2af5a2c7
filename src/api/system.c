/* Liveness, readiness and Prometheus metrics. No authentication: they say nothing secret
 * (metrics can be switched off with metrics.enabled). */
#include "core/metrics.h"
#include "net/loop.h"
#include "net/router.h"
#include "net/server_internal.h"

static void healthz(sb_req *req, void *ud)
{
    (void)ud;
    static const char body[] = "{\"status\":\"ok\"}";
    sb_resp_send(req, 200, "application/json", body, sizeof body - 1);
}

static void readyz(sb_req *req, void *ud)
{
    sb_server *s = ud;
    if (sb_server_ready(s) && !req->loop->draining) {
        static const char body[] = "{\"status\":\"ready\"}";
        sb_resp_send(req, 200, "application/json", body, sizeof body - 1);
        return;
    }
    sb_resp_problem(req, 503, "not-ready", "the server is starting or draining");
}

static void metrics(sb_req *req, void *ud)
{
    sb_server *s = ud;
    if (!req->loop->live.metrics_enabled) {
        sb_resp_problem(req, 404, "not-found", "no such resource");
        return;
    }
    sb_loop_stats *loops[64];
    int n = sb_server_loop_count(s);
    if (n > 64)
        n = 64;
    for (int i = 0; i < n; i++)
        loops[i] = sb_server_loop_stats(s, i);
    sb_buf out;
    sb_buf_init(&out, 1 << 20);
    if (sb_metrics_render(&out, loops, n, sb_server_start_time(s)) != 0) {
        sb_buf_free(&out);
        sb_resp_problem(req, 500, "internal", "could not render metrics");
        return;
    }
    sb_resp_send(req, 200, "text/plain; version=0.0.4; charset=utf-8", out.base, out.len);
    sb_buf_free(&out);
}

int sb_api_system_register(sb_router *r, sb_server *s)
{
    int rc = sb_router_add(r, "GET", "/healthz", healthz, s);
    rc = rc ? rc : sb_router_add(r, "GET", "/readyz", readyz, s);
    rc = rc ? rc : sb_router_add(r, "GET", "/metrics", metrics, s);
    return rc;
}
