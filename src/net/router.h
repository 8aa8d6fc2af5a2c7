/*
 * Method + path routing, shared by every protocol adapter.
 *
 * Patterns are literal segments and `{name}` segments that match one non-empty segment
 * ("/v1/rooms/{name}/participants/{identity}"). Routes are matched in the order added.
 * The router is built at start and read-only afterwards, so every loop reads it without
 * locks.
 */
#ifndef SB_NET_ROUTER_H
#define SB_NET_ROUTER_H

#include "net/request.h"

typedef void (*sb_handler_fn)(sb_req *req, void *ud);

typedef struct sb_router sb_router;

int sb_router_new(sb_router **out);
void sb_router_free(sb_router *r);

/* method NULL matches any method. Pattern must start with '/'. The strings must outlive the
 * router (string literals in practice). */
int sb_router_add(sb_router *r, const char *method, const char *pattern, sb_handler_fn fn,
                  void *ud);

/* Replaces the handler of every route of `method` with wrap, whose ud is what make_ud
 * returns for the original (fn, ud). For cross-cutting behaviour such as Idempotency-Key on
 * every POST. Returns SB_ENOMEM if make_ud returns NULL. */
int sb_router_wrap_method(sb_router *r, const char *method, sb_handler_fn wrap,
                          void *(*make_ud)(sb_handler_fn fn, void *ud, void *ctx), void *ctx);

/* fn answers, instead of the 404, requests whose path no route has (gRPC answers
 * UNIMPLEMENTED to unknown methods). NULL restores the 404. */
void sb_router_set_fallback(sb_router *r, sb_handler_fn fn, void *ud);

/* Routes req: on a match, fills req->params and calls the handler. Otherwise answers 404,
 * or 405 with an Allow header when the path exists for other methods. */
void sb_router_dispatch(const sb_router *r, sb_req *req);

#endif
