/*
 * The webhook dispatcher: delivers the durable outbox to each project's webhook endpoints
 * (API.md "Events", Standard Webhooks v1).
 *
 * Durable state lives in SQLite (migrations 3 and 6); memory holds only what can be rebuilt:
 *   - the outbox (events) is the queue: each endpoint reads it past its own cursor (the
 *     "stream") and sends an event before it has a row;
 *   - webhook_delivered (the delivered log): one small row per event delivered at its first
 *     attempt, the common case;
 *   - webhook_deliveries: one row per (endpoint, event) whose first attempt failed (then
 *     pending -> delivered | dead through retries), or that must wait behind its room's chain
 *     of pending rows (a blocked "park"), or sent by POST .../test; an (endpoint, event) is
 *     in one of the two tables, never both, and the API lists their union;
 *   - webhooks.cursor_seq, moved in the same transaction as those rows: every event at or
 *     below it has its row or needed none;
 *   - webhook_attempts: every failed attempt (time, HTTP status, duration, outcome, error);
 *     the successful one is kept in its delivery row (last_attempt_at, last_status, ...).
 * A restart (even after kill -9) resumes from those rows and resends the events past the
 * cursor that had no row yet: delivery is at least once, and `webhook-id` is the event id on
 * every attempt. A delivery appears in the API once its first attempt has finished.
 *
 * Threading: one dedicated thread runs a libuv loop. Plain http:// targets are sent with
 * sb_hclient (src/net/hclient.h: ~6.6 us of CPU per kept-alive POST against libcurl's ~20);
 * https:// ones with libcurl's multi interface (curl_multi_socket_action driven by uv_poll
 * and uv_timer: TLS verification, ALPN h2, multiplexing). Request loops never wait on a
 * receiver. The thread reads with its own store reader connection and writes through store
 * jobs (one job per batch of finished attempts: 256 results or 5 ms). It is woken by the
 * store's commit hook when a commit emitted an event, when an endpoint changes, and by a
 * slow backstop timer (which also picks up events written by another process).
 *
 * Policy: an event of a room is not sent to an endpoint before the earlier events of that
 * room for that endpoint are delivered or dead (events without a room are unordered): a
 * room's later events wait in memory behind its running one, and once that one has to be
 * retried they are parked behind it in the table; at
 * most webhooks.max_in_flight_per_endpoint attempts per endpoint at once; a circuit breaker
 * per endpoint opens after webhooks.breaker_threshold consecutive failures and lets one
 * probe through after webhooks.breaker_cooldown, so a dead receiver costs the others
 * nothing; 2xx = delivered; 410 = endpoint disabled (event webhook.endpoint.disabled);
 * 408, 425, 429, 5xx, timeouts, connection and TLS errors and refused targets are retried on
 * webhooks.retry_schedule with ±20 % jitter, a longer Retry-After honoured; any other status
 * makes the delivery dead at once, and so does the last failed attempt of the schedule
 * (dead letters are listed and replayable through the API). A delivery whose event left
 * the outbox is dead at once.
 *
 * SSRF guard: every address sb_hclient or curl is about to connect to is classified
 * (sb_webhook_addr_refused) unless webhooks.allow_private_targets (or --dev); a refused one
 * fails the attempt with an error naming the address and why.
 */
#ifndef SB_EVENTS_WEBHOOKS_H
#define SB_EVENTS_WEBHOOKS_H

#include <jansson.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdint.h>

#include "switchboard/config.h"

typedef struct sb_webhooks sb_webhooks;
typedef struct sb_app sb_app;
typedef struct sb_store sb_store;

#define SB_WEBHOOKS_MAX_PER_PROJECT 50
#define SB_WEBHOOKS_BACKSTOP_MS     1000 /* wake at least this often */
#define SB_WEBHOOKS_MAX_BUSY        8192 /* attempts in flight or awaiting their write */
#define SB_WEBHOOKS_MAX_BODY        (1 << 20)
#define SB_WEBHOOKS_ROOM_MAX        128 /* room names (rest_rooms.c) */

/* Starts the dispatcher thread. reader: a store reader connection only it will use. The
 * app must outlive it. Returns 0, SB_ENOMEM, or SB_EIO (thread or curl init failed). */
int sb_webhooks_start(sb_webhooks **out, sb_app *app, sb_store *store, sqlite3 *reader,
                      const sb_config *cfg);

/* Stops it: in-flight attempts are abandoned (their deliveries stay pending and are sent
 * again on the next start), finished ones are written, the thread joined. Must run while
 * the store is open. NULL is ignored. */
void sb_webhooks_stop(sb_webhooks *w);

/* An endpoint was created, changed or deleted, or a delivery replayed (committed): reload
 * endpoints and look for due deliveries now. Safe from any thread; NULL is ignored. */
void sb_webhooks_changed(sb_webhooks *w);

/* Whether deliveries may go to private addresses (webhooks.allow_private_targets or --dev). */
bool sb_webhooks_private_allowed(const sb_config *cfg);

/* Inside a store job: makes a pending delivery of an existing event (by id) to one endpoint,
 * due now (POST .../test), and writes its id to delivery_id (SB_ID_MAX). Returns 0, SB_ENOENT
 * (no such event in the project) or another negative SB_E*. */
int sb_webhooks_enqueue_event(sqlite3 *db, const char *webhook_id, const char *project_id,
                              const char *event_id, char *delivery_id);

/* A delivery's id: "dlv_" + the endpoint's rowid (8 hex digits) + the event's seq (12): unique
 * because (endpoint, event) is, and increasing per endpoint. SQL expression over two SQL
 * operands (webhooks.c writes the same in C for the stream). */
#define SB__DELIVERY_ID(webhook_rowid, seq)                                                        \
    "printf('dlv_%08x%012x', " webhook_rowid " & 4294967295, " seq " & 281474976710655)"

/* A delivery id ("dlv_" + the endpoint's rowid in 8 hex digits + the event's seq in 12) ->
 * the event's seq: lookups by id go through (webhook_id, event_seq). False when id is not
 * of that form (no such delivery). */
bool sb_webhooks_delivery_seq(const char *id, int64_t *seq);

/* Per-room order (inside a store job): a room's deliveries to an endpoint are `blocked`
 * except the pending one with the lowest event seq. After a delivery of `room` stopped being
 * pending, or one became pending again (replay), unblock_room unblocks the room's new head
 * unless one is unblocked already; unblock_all does it for every room of the endpoint. */
int sb_webhooks_unblock_room(sqlite3 *db, const char *webhook_id, const char *room);
int sb_webhooks_unblock_all(sqlite3 *db, const char *webhook_id);

/* The endpoint object of the API and of webhook.endpoint.disabled events: {id, url, events,
 * description, enabled, status, disabled_reason, h2c, created_at, updated_at}, never the
 * secret.
 * _json builds it from a row of SB_WEBHOOKS_ENDPOINT_COLS; _read reads it by id and project
 * (0, SB_ENOENT or SB_EIO; *out is new). */
#define SB_WEBHOOKS_ENDPOINT_COLS                                                                  \
    "id, url, events, description, enabled, disabled_reason, created_at, updated_at, h2c, "        \
    "signature_scheme, public_key"
json_t *sb_webhooks_endpoint_json(sqlite3_stmt *st);
int sb_webhooks_endpoint_read(sqlite3 *db, const char *id, const char *project_id, json_t **out);

#endif
