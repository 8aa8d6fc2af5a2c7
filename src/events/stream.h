/*
 * The live event stream: GET /v1/events (API.md "Events").
 *
 * A subscriber is a WebSocket (an Upgrade request), a Server-Sent Events response
 * (`Accept: text/event-stream`) or an NDJSON response (`Accept: application/x-ndjson`: one
 * envelope per line, an empty line as keep-alive; what gRPC's EventService/Subscribe reads
 * through its synthetic request) on one event loop, for one project. It starts after the
 * event named by `?since=` (or the `Last-Event-ID` header), else at the project's newest
 * event (only new ones are sent). Events are read from the outbox (events table) with the
 * loop's reader connection, in sequence order, and sent as the envelope
 * {id, type, created_at, project_id, data}: one text message per event on a WebSocket,
 * `id:`/`event:`/`data:` lines on SSE (plus a `: keep-alive` comment every 15 s).
 *
 * Wake-ups: the store's commit hook runs on the writer thread after every committed batch;
 * if a job of the batch called sb_event_emit, each loop that has subscribers gets one
 * message (coalesced: at most one waiting per loop) naming the projects that changed, and
 * reads what its subscribers of those projects have not seen. Nothing is kept in memory
 * per event: a subscriber is its position (last sequence number sent), so a slow one costs
 * nothing but its own bounded send queue. When that queue is full the connection is closed
 * (WebSocket 4008; SSE: the connection ends) and the client resumes with since=.
 */
#ifndef SB_EVENTS_STREAM_H
#define SB_EVENTS_STREAM_H

#include "api/app.h"
#include "net/router.h"

#define SB_EVENTS_PAGE         100   /* rows read per query */
#define SB_EVENTS_HEARTBEAT_MS 15000 /* SSE keep-alive comment interval */

/* Registers GET /v1/events and installs the store's commit hook. The state it makes is
 * freed with the app (after the store is closed). Returns 0 or SB_ENOMEM. */
int sb_api_events_register(sb_app *app, sb_router *r);

#endif
