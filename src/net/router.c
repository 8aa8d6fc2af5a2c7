#include "net/router.h"

#include "core/str.h"
#include "core/alloc.h"
#include "switchboard/error.h"

#define MAX_SEGMENTS 12

typedef struct route {
    const char *method;
    sb_handler_fn fn;
    void *ud;
    int nseg;
    sb_str seg[MAX_SEGMENTS]; /* literal, or "{…}" for a parameter */
} route;

struct sb_router {
    route *routes;
    int n, cap;
    sb_handler_fn fallback;
    void *fallback_ud;
};

int sb_router_new(sb_router **out)
{
    *out = sb_calloc(1, sizeof **out);
    return *out ? 0 : SB_ENOMEM;
}

void sb_router_free(sb_router *r)
{
    if (!r)
        return;
    sb_free(r->routes);
    sb_free(r);
}

static int split(const char *p, size_t len, sb_str *seg, int max)
{
    int n = 0;
    size_t i = 1; /* skip the leading '/' */
    while (i <= len) {
        size_t j = i;
        while (j < len && p[j] != '/')
            j++;
        if (n == max)
            return -1;
        seg[n++] = (sb_str){p + i, j - i};
        i = j + 1;
    }
    return n;
}

int sb_router_add(sb_router *r, const char *method, const char *pattern, sb_handler_fn fn, void *ud)
{
    if (!pattern || pattern[0] != '/')
        return SB_EINVAL;
    if (r->n == r->cap) {
        int cap = r->cap ? r->cap * 2 : 16;
        route *nr = sb_realloc(r->routes, (size_t)cap * sizeof *nr);
        if (!nr)
            return SB_ENOMEM;
        r->routes = nr;
        r->cap = cap;
    }
    route *rt = &r->routes[r->n];
    rt->method = method;
    rt->fn = fn;
    rt->ud = ud;
    rt->nseg = split(pattern, strlen(pattern), rt->seg, MAX_SEGMENTS);
    if (rt->nseg < 0)
        return SB_EINVAL;
    r->n++;
    return 0;
}

int sb_router_wrap_method(sb_router *r, const char *method, sb_handler_fn wrap,
                          void *(*make_ud)(sb_handler_fn fn, void *ud, void *ctx), void *ctx)
{
    for (int i = 0; i < r->n; i++) {
        route *rt = &r->routes[i];
        if (!rt->method || strcmp(rt->method, method) != 0)
            continue;
        void *ud = make_ud(rt->fn, rt->ud, ctx);
        if (!ud)
            return SB_ENOMEM;
        rt->fn = wrap;
        rt->ud = ud;
    }
    return 0;
}

/* Percent-decodes s into the arena. Returns false on a malformed escape, an escaped NUL
 * (every handler treats its parameters as C strings: "key_a%00x" must not become "key_a")
 * or no memory. */
static bool decode(sb_arena *a, sb_str s, sb_str *out)
{
    if (!memchr(s.base, '%', s.len)) {
        *out = s;
        return true;
    }
    char *d = sb_arena_alloc(a, s.len);
    if (!d)
        return false;
    size_t n = 0;
    for (size_t i = 0; i < s.len; i++) {
        if (s.base[i] != '%') {
            d[n++] = s.base[i];
            continue;
        }
        int hi = i + 2 < s.len ? sb_hex_value((unsigned char)s.base[i + 1]) : -1;
        int lo = i + 2 < s.len ? sb_hex_value((unsigned char)s.base[i + 2]) : -1;
        if (hi < 0 || lo < 0 || (hi | lo) == 0)
            return false;
        d[n++] = (char)(hi << 4 | lo);
        i += 2;
    }
    *out = (sb_str){d, n};
    return true;
}

static bool match(const route *rt, const sb_str *seg, int nseg)
{
    if (rt->nseg != nseg)
        return false;
    for (int i = 0; i < nseg; i++) {
        const sb_str *p = &rt->seg[i];
        if (p->len >= 2 && p->base[0] == '{') {
            if (seg[i].len == 0)
                return false;
        } else if (!sb_str_eq(*p, seg[i])) {
            return false;
        }
    }
    return true;
}

void sb_router_dispatch(const sb_router *r, sb_req *req)
{
    sb_str seg[MAX_SEGMENTS];
    int nseg = (req->path.len && req->path.base[0] == '/')
                   ? split(req->path.base, req->path.len, seg, MAX_SEGMENTS)
                   : -1;
    char allow[128];
    size_t allow_len = 0;
    bool path_found = false;
    for (int i = 0; nseg >= 0 && i < r->n; i++) {
        const route *rt = &r->routes[i];
        if (!match(rt, seg, nseg))
            continue;
        path_found = true;
        bool head_as_get =
            sb_str_eq_lit(req->method, "HEAD") && rt->method && strcmp(rt->method, "GET") == 0;
        if (rt->method && !sb_str_eq_lit(req->method, rt->method) && !head_as_get) {
            size_t ml = strlen(rt->method);
            if (allow_len + ml + 2 < sizeof allow) {
                if (allow_len) {
                    allow[allow_len++] = ',';
                    allow[allow_len++] = ' ';
                }
                memcpy(allow + allow_len, rt->method, ml);
                allow_len += ml;
            }
            continue;
        }
        req->num_params = 0;
        for (int s = 0; s < nseg; s++) {
            if (rt->seg[s].len >= 2 && rt->seg[s].base[0] == '{' &&
                req->num_params < SB_REQ_MAX_PARAMS) {
                if (!decode(&req->arena, seg[s], &req->params[req->num_params++])) {
                    sb_resp_problem(req, 400, "bad-path",
                                    "malformed percent-encoding (or an encoded NUL) in path");
                    return;
                }
            }
        }
        rt->fn(req, rt->ud);
        return;
    }
    if (path_found) {
        sb_resp_header(req, "Allow", (sb_str){allow, allow_len});
        sb_resp_problem(req, 405, "method-not-allowed", "this path does not accept that method");
        return;
    }
    if (r->fallback) {
        r->fallback(req, r->fallback_ud);
        return;
    }
    sb_resp_problem(req, 404, "not-found", "no such resource");
}

void sb_router_set_fallback(sb_router *r, sb_handler_fn fn, void *ud)
{
    r->fallback = fn;
    r->fallback_ud = ud;
}
