/* Endpoints for tests only, served when debug.ws_echo is set; never enable them in production.
 *
 * GET /debug/ws-echo upgrades to a WebSocket that sends every message back as it came (text as
 * text, binary as binary). `?close=CODE` makes the server close with CODE right after the
 * handshake, so that clients' handling of server close codes can be tested.
 *
 * GET /debug/stream answers the two shapes gRPC needs from an adapter: `?mode=trailers` streams
 * "a" then "b" and ends with trailer fields (x-status: 0, x-message: done); `?mode=only` sends
 * headers and no body (x-status: 5), which HTTP/2 sends as a single HEADERS frame
 * ("Trailers-Only"). */
#include <stdint.h>

#include "net/router.h"
#include "net/server_internal.h"
#include "net/websocket.h"

static void echo_open(sb_ws *ws, void *ud)
{
    unsigned code = (unsigned)(uintptr_t)ud;
    if (code)
        sb_ws_close(ws, (uint16_t)code, "closed as requested by ?close");
}

static void echo_message(sb_ws *ws, void *ud, int opcode, const void *data, size_t len)
{
    (void)ud;
    sb_ws_send(ws, opcode, data, len); /* a full queue closes with 4008 */
}

static void echo_close(sb_ws *ws, void *ud, uint16_t code, sb_str reason)
{
    (void)ws, (void)ud, (void)code, (void)reason;
}

static const sb_ws_handler echo_handler = {
    .on_open = echo_open,
    .on_message = echo_message,
    .on_close = echo_close,
};

/* `close=CODE` in the query, if present: 0 without it, -1 if malformed or not sendable. */
static long close_param(sb_str q)
{
    const char *p = q.base, *end = q.base + q.len;
    long code = 0;
    while (p < end) {
        const char *e = memchr(p, '&', (size_t)(end - p));
        if (!e)
            e = end;
        if (e - p > 6 && memcmp(p, "close=", 6) == 0) {
            code = 0;
            for (const char *d = p + 6; d < e; d++) {
                if (*d < '0' || *d > '9' || code > 9999)
                    return -1;
                code = code * 10 + (*d - '0');
            }
            if (!sb_ws_close_code_valid((unsigned)code))
                return -1;
        } else if (e - p >= 5 && memcmp(p, "close", 5) == 0 && (e - p == 5 || p[5] == '=')) {
            return -1;
        }
        p = e + 1;
    }
    return code;
}

static void ws_echo(sb_req *req, void *ud)
{
    (void)ud;
    long code = close_param(req->query);
    if (code < 0) {
        sb_resp_problem(req, 400, "bad-query",
                        "close must be a code a server may send: 1000-1003, 1007-1014, "
                        "3000-4999");
        return;
    }
    sb_ws *ws;
    sb_ws_accept(req, &echo_handler, (void *)(uintptr_t)code, &ws); /* answers on failure */
}

static void stream_shapes(sb_req *req, void *ud)
{
    (void)ud;
    if (sb_str_eq_lit(req->query, "mode=only")) {
        sb_resp_header(req, "x-status", SB_STR_LIT("5"));
        sb_resp_send(req, 200, "text/plain", NULL, 0);
        return;
    }
    if (!sb_str_eq_lit(req->query, "mode=trailers")) {
        sb_resp_problem(req, 400, "bad-query", "mode must be trailers or only");
        return;
    }
    if (sb_resp_stream_begin(req, 200, "text/plain", 0, NULL) != 0)
        return;
    static const sb_http_header trailers[] = {{SB_STR_LIT("x-status"), SB_STR_LIT("0")},
                                              {SB_STR_LIT("X-Message"), SB_STR_LIT("done")}};
    if (sb_resp_stream_write(req, "a", 1) == 0 && sb_resp_stream_write(req, "b", 1) == 0)
        sb_resp_stream_end_trailers(req, trailers, 2);
}

int sb_api_debug_register(sb_router *r)
{
    int rc = sb_router_add(r, "GET", "/debug/ws-echo", ws_echo, NULL);
    return rc ? rc : sb_router_add(r, "GET", "/debug/stream", stream_shapes, NULL);
}
