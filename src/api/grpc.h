/*
 * gRPC on the HTTP/2 listener (docs/grpc.md): every method of proto/switchboard/v1 is the
 * REST route that does the same thing.
 *
 * A call arrives as a request routed by path ("/switchboard.v1.RoomService/GetRoom"). The
 * adapter decodes the one length-prefixed message, builds a synthetic REST request (method,
 * path and query from the message's fields, the rest as the JSON body, the caller's
 * metadata as headers, so `authorization` authenticates it exactly as REST) and dispatches
 * it through the same router. Its response is converted back: 2xx JSON becomes the reply
 * message and grpc-status 0 in trailers; a problem becomes a Trailers-Only response with
 * grpc-status mapped from the HTTP status (sb_grpc_status_from_http), grpc-message (the
 * problem's detail, percent-encoded) and grpc-status-details-bin (google.rpc.Status with a
 * google.rpc.ErrorInfo: reason = the problem slug, metadata type and request_id).
 * EventService/Subscribe is GET /v1/events as NDJSON, one Event message per line.
 *
 * Only identity encoding is accepted; a compressed message is UNIMPLEMENTED with
 * grpc-accept-encoding: identity. grpc-timeout ends the call with DEADLINE_EXCEEDED (and
 * ends a Subscribe stream); a unary handler already running finishes unseen.
 */
#ifndef SB_API_GRPC_H
#define SB_API_GRPC_H

#include "api/app.h"
#include "net/router.h"

/* Registers every gRPC method path and the router's fallback (UNIMPLEMENTED for unknown
 * gRPC paths, 404 otherwise). Register after every REST route. Returns 0 or SB_ENOMEM. */
int sb_api_grpc_register(sb_app *app, sb_router *r);

/* Internal (unit tests): the same without an app. *state receives the memory the routes
 * use (also on failure, or NULL); the caller frees it with sb_free after the router. */
int sb__grpc_install(sb_router *r, size_t max_message, int nloops, void **state);

#endif
