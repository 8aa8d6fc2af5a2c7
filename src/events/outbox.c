#include "events/outbox.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "store/store.h"
#include "switchboard/error.h"

/* Projects with events emitted on this thread since the last sb_event_take_emitted. */
static _Thread_local struct {
    int n;
    bool overflow;
    char ids[SB_EVENT_EMITTED_MAX][SB_ID_MAX];
} emitted;

static void note_emitted(const char *project_id)
{
    if (emitted.overflow)
        return;
    for (int i = 0; i < emitted.n; i++)
        if (strcmp(emitted.ids[i], project_id) == 0)
            return;
    size_t len = strlen(project_id);
    if (emitted.n == SB_EVENT_EMITTED_MAX || len >= SB_ID_MAX) {
        emitted.overflow = true;
        return;
    }
    memcpy(emitted.ids[emitted.n++], project_id, len + 1);
}

/* Every sb_event_emit, process-wide (sb_event_emitted_total). */
static _Atomic uint64_t emitted_total;

uint64_t sb_event_emitted_total(void)
{
    return atomic_load_explicit(&emitted_total, memory_order_acquire);
}

int sb_event_take_emitted(char out[][SB_ID_MAX], int max)
{
    int n = emitted.overflow || emitted.n > max ? SB_EVENT_EMITTED_ALL : emitted.n;
    for (int i = 0; i < n; i++)
        memcpy(out[i], emitted.ids[i], SB_ID_MAX);
    emitted.n = 0;
    emitted.overflow = false;
    return n;
}

int sb_event_emit(sqlite3 *db, const char *project_id, const char *type, const char *room_name,
                  json_t *data, char *out_id)
{
    char id[SB_ID_MAX];
    int64_t seq;
    char *text = data ? json_dumps(data, JSON_COMPACT) : NULL;
    json_decref(data);
    if (!text)
        return SB_ENOMEM;
    int rc = sb_id_new("evt", id);
    rc = rc ? rc : sb_store_event_seq_next(db, project_id, &seq);
    sqlite3_stmt *st = rc ? NULL
                          : sb_store_stmt(db, "INSERT INTO events (project_id, seq, id, type, "
                                              "created_at, room_name, data) VALUES (?1, ?2, ?3, "
                                              "?4, ?5, ?6, ?7)");
    if (!rc && !st)
        rc = SB_EIO;
    if (!rc) {
        sqlite3_bind_text(st, 1, project_id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, seq);
        sqlite3_bind_text(st, 3, id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 4, type, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 5, sb_time_ms());
        if (room_name)
            sqlite3_bind_text(st, 6, room_name, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 7, text, -1, SQLITE_STATIC);
        rc = sb_store_errno(sqlite3_step(st));
        sqlite3_reset(st);
    }
    free(text);
    if (!rc) {
        note_emitted(project_id);
        atomic_fetch_add_explicit(&emitted_total, 1, memory_order_acq_rel);
    }
    if (!rc && out_id)
        memcpy(out_id, id, sizeof id);
    return rc;
}

json_t *sb_event_envelope(const char *id, const char *type, int64_t created_at_ms,
                          const char *project_id, const char *data_json)
{
    char t[32];
    sb_time_rfc3339(created_at_ms, t);
    json_t *data = json_loads(data_json, 0, NULL);
    if (!data)
        return NULL;
    return json_pack("{s:s,s:s,s:s,s:s,s:o}", "id", id, "type", type, "created_at", t, "project_id",
                     project_id, "data", data);
}
