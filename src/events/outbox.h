/*
 * The durable event outbox (DESIGN.md "Durability").
 *
 * A change and the events it causes are written in one transaction: a store job that
 * changes state calls sb_event_emit with the same connection before it returns, so the
 * event exists exactly when the change does, and a crash can lose neither alone. Webhook,
 * stream and queue delivery read from the table; an event's id is stable across every
 * retry and channel, and its per-project sequence number orders it.
 *
 * Envelope (API.md "Events"): {id, type, created_at, project_id, data}.
 */
#ifndef SB_EVENTS_OUTBOX_H
#define SB_EVENTS_OUTBOX_H

#include <jansson.h>
#include <sqlite3.h>
#include <stdint.h>

#include "core/ids.h"

/*
 * Appends an event inside a store job (writer connection). `data` is stolen (decref'd in
 * all cases). room_name may be NULL. On success returns 0 and, when out_id is not NULL,
 * writes the new event's id there (SB_ID_MAX bytes).
 */
int sb_event_emit(sqlite3 *db, const char *project_id, const char *type, const char *room_name,
                  json_t *data, char *out_id);

/*
 * The projects sb_event_emit ran for on the calling thread since the last call (the writer
 * thread: the batch just committed), at most SB_EVENT_EMITTED_MAX of them. Copies them to
 * out and returns how many (0: no event), or SB_EVENT_EMITTED_ALL when there were more
 * (then out is unspecified: treat every project as changed), and starts a new set. A job
 * that emitted and then rolled back, or a batch that failed, leaves its projects in the set:
 * the next commit reports them too, which costs readers one empty look, never an event.
 */
#define SB_EVENT_EMITTED_MAX 16
#define SB_EVENT_EMITTED_ALL (-1)
int sb_event_take_emitted(char out[][SB_ID_MAX], int max);

/* How many events sb_event_emit has written in this process (committed or later rolled
 * back): a commit hook that sees it change knows that new outbox rows may be visible. */
uint64_t sb_event_emitted_total(void);

/* Builds the envelope of a stored event row: id, type, created_at (ms), project_id, data
 * (JSON text). Returns a new object or NULL. */
json_t *sb_event_envelope(const char *id, const char *type, int64_t created_at_ms,
                          const char *project_id, const char *data_json);

#endif
