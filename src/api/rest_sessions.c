/*
 * Session history, live participants and server messages (API.md "Resources").
 *
 * Sessions and their participant rows are written by the real-time layer; this file reads
 * them and offers the control-plane changes (ending a session, updating or ejecting a
 * participant). Until live connections exist, the rows are the only truth there is: a
 * participant is "present" when it has a row in the room's active session with no left_at.
 *
 * Participant pages are keyed by (joined_at, rowid): identities are up to 128 bytes and do
 * not fit the opaque cursor (SB_ID_MAX), and the table has no other short unique key. The
 * server never VACUUMs, so rowids stay stable while a client pages.
 */
#include <stdio.h>
#include <stdlib.h>

#include "api/app.h"
#include "api/rtc.h"
#include "events/outbox.h"
#include "auth/scopes.h"
#include "core/alloc.h"
#include "core/json.h"
#include "switchboard/error.h"

#define METADATA_MAX    4096
#define MESSAGE_MAX     (64 * 1024)
#define TOPIC_MAX       128
#define TO_MAX          1000
#define BAN_SECONDS_MAX (7 * 86400)

#define NO_ROOM        "no such open room in this project"
#define NO_SESSION     "no such session in this project"
#define NO_PARTICIPANT "no such participant in this room"

#define SESSION_COLS                                                                               \
    "s.id, s.room_name, s.started_at, s.ended_at, s.end_reason, (SELECT count(DISTINCT "           \
    "p.identity) FROM session_participants p WHERE p.session_id = s.id)"

/* Live rows of the open room ?1/?2 (project, name). */
#define LIVE_FROM                                                                                  \
    " FROM session_participants p JOIN sessions s ON s.id = p.session_id JOIN rooms r ON r.id = "  \
    "s.room_id WHERE r.project_id = ?1 AND r.name = ?2 AND r.status = 'open' AND s.ended_at IS "   \
    "NULL AND p.left_at IS NULL"

#define LIVE_COLS "p.rowid, p.identity, p.name, p.metadata, p.joined_at, p.session_id"

static json_t *text_or_null(sqlite3_stmt *st, int col)
{
    if (sqlite3_column_type(st, col) == SQLITE_NULL)
        return json_null();
    return json_stringn((const char *)sqlite3_column_text(st, col),
                        (size_t)sqlite3_column_bytes(st, col));
}

/* Grants are not stored yet: every participant holds the token defaults. */
static json_t *default_grants(void)
{
    return json_pack("{s:b,s:b,s:b,s:b,s:b,s:b}", "publish", 1, "subscribe", 1, "publish_data", 1,
                     "admin", 0, "hidden", 0, "record", 0);
}

static json_t *session_json(sqlite3_stmt *st)
{
    return json_pack("{s:s,s:s,s:o,s:o,s:o,s:I}", "id", sqlite3_column_text(st, 0), "room",
                     sqlite3_column_text(st, 1), "started_at", sb_app_time_or_null(st, 2),
                     "ended_at", sb_app_time_or_null(st, 3), "end_reason", text_or_null(st, 4),
                     "num_participants", (json_int_t)sqlite3_column_int64(st, 5));
}

/* A participant object from LIVE_COLS. */
static json_t *participant_json(sqlite3_stmt *st)
{
    return json_pack("{s:s,s:o,s:o,s:o,s:o,s:s}", "identity", sqlite3_column_text(st, 1), "name",
                     text_or_null(st, 2), "metadata", text_or_null(st, 3), "grants",
                     default_grants(), "joined_at", sb_app_time_or_null(st, 4), "session_id",
                     sqlite3_column_text(st, 5));
}

/* Reads session id of the project into *out (NULL if none). */
static int session_read(sqlite3 *db, const char *project, const char *id, size_t idlen,
                        json_t **out)
{
    *out = NULL;
    sqlite3_stmt *st =
        sb_store_stmt(db, "SELECT " SESSION_COLS " FROM sessions s WHERE s.id = ?1 AND "
                          "s.project_id = ?2");
    if (!st)
        return SB_EIO;
    sqlite3_bind_text(st, 1, id, (int)idlen, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, project, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        *out = session_json(st);
    sqlite3_reset(st);
    if (rc == SQLITE_ROW)
        return *out ? 0 : SB_ENOMEM;
    return rc == SQLITE_DONE ? 0 : SB_EIO;
}

/* Whether the project has an open room of that name. */
static int room_open(sqlite3 *db, const char *project, const char *name, size_t nlen, bool *open)
{
    sqlite3_stmt *st = sb_store_stmt(db, "SELECT 1 FROM rooms WHERE project_id = ?1 AND name = ?2 "
                                         "AND status = 'open'");
    if (!st)
        return SB_EIO;
    sqlite3_bind_text(st, 1, project, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, name, (int)nlen, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    *open = rc == SQLITE_ROW;
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : SB_EIO;
}

/* Whether the project has an open room `name`; answers 404 (also for a name no room can
 * have) or 500 and returns false otherwise. */
static bool room_open_or_404(sb_app *app, sb_req *req, const char *project, sb_str name)
{
    bool open = false;
    int rc = sb_room_name_valid(name.base, name.len)
                 ? room_open(sb_app_reader(app, req), project, name.base, name.len, &open)
                 : 0;
    if (rc) {
        sb_app_internal_error(req, "reading a room", rc);
        return false;
    }
    if (!open)
        sb_resp_problem(req, 404, "not-found", NO_ROOM);
    return open;
}

/* Reads the live participant identity of the open room into *out (NULL if absent). */
static int participant_read(sqlite3 *db, const char *project, const char *room, size_t rlen,
                            const char *identity, size_t ilen, json_t **out)
{
    *out = NULL;
    sqlite3_stmt *st = sb_store_stmt(db, "SELECT " LIVE_COLS LIVE_FROM " AND p.identity = ?3 "
                                         "ORDER BY p.joined_at DESC LIMIT 1");
    if (!st)
        return SB_EIO;
    sqlite3_bind_text(st, 1, project, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, room, (int)rlen, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, identity, (int)ilen, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        *out = participant_json(st);
    sqlite3_reset(st);
    if (rc == SQLITE_ROW)
        return *out ? 0 : SB_ENOMEM;
    return rc == SQLITE_DONE ? 0 : SB_EIO;
}

/* The rowid half of a participant cursor; answers 400 for a cursor of another list. */
static bool rowid_cursor(sb_req *req, const sb_page *pg, int64_t *rowid)
{
    *rowid = 0;
    if (!pg->has_cursor)
        return true;
    char *endp;
    long long v = strtoll(pg->after_id, &endp, 10);
    if (pg->after_id[0] == '\0' || *endp || v < 0) {
        sb_resp_problem(req, 400, "invalid-parameter", "cursor is not one this server issued");
        return false;
    }
    *rowid = v;
    return true;
}

/* ---- GET /v1/sessions -------------------------------------------------------------- */

/* Newest first: history is read from the recent end. Two texts so that the room filter can
 * use the sessions_room_name index. */
#define SESSIONS_PAGE                                                                              \
    " AND (?2 = 0 OR s.started_at < ?3 OR (s.started_at = ?3 AND s.id < ?4)) ORDER BY "            \
    "s.started_at DESC, s.id DESC LIMIT ?5"

static void sessions_list(sb_req *req, void *ud)
{
    sb_app *app = ud;
    sb_auth who;
    sb_page pg;
    sb_str room = SB_STR_NULL;
    if (!sb_app_auth(app, req, SB_SCOPE_SESSIONS_READ, &who) || !sb_app_page(req, &pg))
        return;
    bool by_room = sb_req_query(req, "room", &room);
    if (by_room && !sb_room_name_valid(room.base, room.len)) {
        sb_resp_problem(req, 400, "invalid-parameter", "room must match ^[A-Za-z0-9_-]{1,128}$");
        return;
    }
    sqlite3_stmt *st = sb_store_stmt(
        sb_app_reader(app, req),
        by_room ? "SELECT " SESSION_COLS " FROM sessions s WHERE s.project_id = ?1 AND "
                  "s.room_name = ?6" SESSIONS_PAGE
                : "SELECT " SESSION_COLS " FROM sessions s WHERE s.project_id = ?1" SESSIONS_PAGE);
    if (!st) {
        sb_app_internal_error(req, "listing sessions", SB_EIO);
        return;
    }
    sqlite3_bind_text(st, 1, who.project_id, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 2, pg.has_cursor);
    sqlite3_bind_int64(st, 3, pg.after_ms);
    sqlite3_bind_text(st, 4, pg.after_id, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 5, pg.limit + 1);
    if (by_room)
        sqlite3_bind_text(st, 6, room.base, (int)room.len, SQLITE_STATIC);
    sb_app_send_page(req, st, &pg, session_json, 2, 0, "listing sessions");
}

/* ---- GET /v1/sessions/{id}, GET /v1/sessions/{id}/participants -------------------- */

static void sessions_get(sb_req *req, void *ud)
{
    sb_app *app = ud;
    sb_auth who;
    if (!sb_app_auth(app, req, SB_SCOPE_SESSIONS_READ, &who))
        return;
    json_t *s;
    int rc = session_read(sb_app_reader(app, req), who.project_id, req->params[0].base,
                          req->params[0].len, &s);
    if (rc) {
        sb_app_internal_error(req, "reading a session", rc);
        return;
    }
    if (!s) {
        sb_resp_problem(req, 404, "not-found", NO_SESSION);
        return;
    }
    sb_app_send_json(req, 200, s);
}

static json_t *history_json(sqlite3_stmt *st)
{
    return json_pack("{s:s,s:o,s:o,s:o,s:o,s:o}", "identity", sqlite3_column_text(st, 1), "name",
                     text_or_null(st, 2), "metadata", text_or_null(st, 3), "joined_at",
                     sb_app_time_or_null(st, 4), "left_at", sb_app_time_or_null(st, 5),
                     "leave_reason", text_or_null(st, 6));
}

static void sessions_participants(sb_req *req, void *ud)
{
    sb_app *app = ud;
    sb_auth who;
    sb_page pg;
    int64_t after_rowid;
    if (!sb_app_auth(app, req, SB_SCOPE_SESSIONS_READ, &who) || !sb_app_page(req, &pg) ||
        !rowid_cursor(req, &pg, &after_rowid))
        return;
    sqlite3 *db = sb_app_reader(app, req);
    sb_str id = req->params[0];
    json_t *s;
    int rc = session_read(db, who.project_id, id.base, id.len, &s);
    if (rc) {
        sb_app_internal_error(req, "reading a session", rc);
        return;
    }
    if (!s) {
        sb_resp_problem(req, 404, "not-found", NO_SESSION);
        return;
    }
    json_decref(s);
    sqlite3_stmt *st = sb_store_stmt(
        db, "SELECT p.rowid, p.identity, p.name, p.metadata, p.joined_at, p.left_at, "
            "p.leave_reason FROM session_participants p JOIN sessions s ON s.id = p.session_id "
            "WHERE s.id = ?1 AND s.project_id = ?6 AND (?2 = 0 OR p.joined_at > ?3 OR "
            "(p.joined_at = ?3 AND p.rowid > ?4)) ORDER BY p.joined_at, p.rowid LIMIT ?5");
    if (!st) {
        sb_app_internal_error(req, "listing session participants", SB_EIO);
        return;
    }
    sqlite3_bind_text(st, 1, id.base, (int)id.len, SQLITE_STATIC);
    sqlite3_bind_int(st, 2, pg.has_cursor);
    sqlite3_bind_int64(st, 3, pg.after_ms);
    sqlite3_bind_int64(st, 4, after_rowid);
    sqlite3_bind_int(st, 5, pg.limit + 1);
    sqlite3_bind_text(st, 6, who.project_id, -1, SQLITE_STATIC);
    sb_app_send_page(req, st, &pg, history_json, 4, 0, "listing session participants");
}

/* ---- POST /v1/sessions/{id}/end ---------------------------------------------------- */

enum { END_NOT_FOUND = 0, END_DONE = 1, END_ALREADY = 2 };

typedef struct session_end {
    sb_req *req;
    sb_app *app;
    sb_auth who;
    char id[SB_ID_MAX];
    json_t *result;
} session_end;

static int exec_end(sqlite3 *db, const char *sql, int64_t now, const char *reason,
                    const char *session)
{
    sqlite3_stmt *st = sb_store_stmt(db, sql);
    if (!st)
        return SB_EIO;
    sqlite3_bind_int64(st, 1, now);
    sqlite3_bind_text(st, 2, reason, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, session, -1, SQLITE_STATIC);
    int rc = sb_store_errno(sqlite3_step(st));
    sqlite3_reset(st);
    return rc;
}

int sb_app_session_end(sqlite3 *db, const char *project_id, const char *session_id,
                       const char *room, const char *reason, const char *participant_reason,
                       int64_t now_ms)
{
    /* The room name for the event, when the caller does not have it at hand. */
    char name[129] = "";
    if (!room) {
        sqlite3_stmt *st = sb_store_stmt(db, "SELECT room_name FROM sessions WHERE id = ?1");
        if (!st)
            return SB_EIO;
        sqlite3_bind_text(st, 1, session_id, -1, SQLITE_STATIC);
        if (sqlite3_step(st) == SQLITE_ROW)
            snprintf(name, sizeof name, "%s", (const char *)sqlite3_column_text(st, 0));
        sqlite3_reset(st);
        room = name;
    }
    int rc = exec_end(db,
                      "UPDATE sessions SET ended_at = ?1, end_reason = ?2 WHERE id = ?3 AND "
                      "ended_at IS NULL",
                      now_ms, reason, session_id);
    if (rc)
        return rc;
    if (sqlite3_changes(db) == 0)
        return 0;
    rc = exec_end(db,
                  "UPDATE session_participants SET left_at = ?1, leave_reason = ?2 WHERE "
                  "session_id = ?3 AND left_at IS NULL",
                  now_ms, participant_reason, session_id);
    rc = rc ? rc
            : sb_event_emit(db, project_id, "session.ended", room,
                            json_pack("{s:s,s:s,s:s}", "session_id", session_id, "room", room,
                                      "reason", reason),
                            NULL);
    return rc ? rc : 1;
}

static int session_end_run(sqlite3 *db, void *arg)
{
    session_end *e = arg;
    sqlite3_stmt *st = sb_store_stmt(db, "SELECT ended_at IS NOT NULL FROM sessions WHERE id = "
                                         "?1 AND project_id = ?2");
    if (!st)
        return SB_EIO;
    sqlite3_bind_text(st, 1, e->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, e->who.project_id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    bool ended = rc == SQLITE_ROW && sqlite3_column_int(st, 0);
    sqlite3_reset(st);
    if (rc == SQLITE_DONE)
        return END_NOT_FOUND;
    if (rc != SQLITE_ROW)
        return SB_EIO;
    if (ended)
        return END_ALREADY;

    rc = sb_app_session_end(db, e->who.project_id, e->id, NULL, "ended_by_api", "session_ended",
                            sb_time_ms());
    if (rc < 0)
        return rc;
    if (rc == 0)
        return END_ALREADY;
    rc = sb_app_audit(db, &e->who, e->req->request_id, "session.end", "session", e->id);
    rc = rc ? rc : session_read(db, e->who.project_id, e->id, strlen(e->id), &e->result);
    if (rc == 0 && !e->result)
        rc = SB_EIO; /* we just updated it */
    return rc ? rc : END_DONE;
}

static void session_ended_live(sb_rtc_call *c)
{
    session_end *e = c->arg;
    sb_app_send_json(e->req, 200, e->result);
}

static void session_end_done(void *arg, int rc)
{
    session_end *e = arg;
    if (rc != END_DONE) {
        json_decref(e->result);
        if (rc < 0)
            sb_app_internal_error(e->req, "ending a session", rc);
        else if (rc == END_ALREADY)
            sb_resp_problem(e->req, 409, "conflict", "the session has already ended");
        else
            sb_resp_problem(e->req, 404, "not-found", NO_SESSION);
        return;
    }
    sb_app_cache_bump(); /* cached rooms show active_session_id and num_participants */
    /* The live room's participants are disconnected (4004); a later join starts a new
     * session. */
    const char *room = json_string_value(json_object_get(e->result, "room"));
    sb_rtc_call *c =
        room && strlen(room) < sizeof c->room ? sb_arena_alloc(&e->req->arena, sizeof *c) : NULL;
    if (c) {
        memset(c, 0, sizeof *c);
        c->kind = SB_RTC_CLOSE;
        memcpy(c->project_id, e->who.project_id, sizeof c->project_id);
        snprintf(c->room, sizeof c->room, "%s", room);
        c->done = session_ended_live;
        c->arg = e;
        sb_rtc_run(e->app, e->req, c);
        return;
    }
    sb_app_send_json(e->req, 200, e->result);
}

static void sessions_end(sb_req *req, void *ud)
{
    sb_app *app = ud;
    sb_auth who;
    if (!sb_app_auth(app, req, SB_SCOPE_ROOMS_WRITE, &who))
        return;
    sb_str id = req->params[0];
    if (id.len >= SB_ID_MAX || memchr(id.base, '\0', id.len)) {
        sb_resp_problem(req, 404, "not-found", NO_SESSION);
        return;
    }
    session_end *e = sb_app_ctx(req, sizeof *e, "ending a session");
    if (!e)
        return;
    e->req = req;
    e->who = who;
    e->app = app;
    memcpy(e->id, id.base, id.len);
    e->id[id.len] = '\0';
    sb_app_submit(app, req, session_end_run, session_end_done, e);
}

/* ---- GET /v1/rooms/{name}/participants[/{identity}] -------------------------------- */

/* The live participants come from the room's home loop, so a join or leave shows at once
 * (the session rows are written a moment later). Pages are ordered by (joined_at, identity);
 * the cursor holds the last pair (identity cut to the cursor's size: only ties within the
 * same millisecond between identities sharing that prefix could repeat). */
typedef struct live_read {
    sb_req *req;
    sb_page pg;
    bool one; /* GET …/{identity} */
    sb_rtc_call call;
} live_read;

typedef struct live_row {
    int64_t ms;
    const char *identity;
    json_t *v;
} live_row;

static int live_row_cmp(const void *a, const void *b)
{
    const live_row *x = a, *y = b;
    if (x->ms != y->ms)
        return x->ms < y->ms ? -1 : 1;
    return strcmp(x->identity, y->identity);
}

static void live_read_done(sb_rtc_call *c)
{
    live_read *lr = c->arg;
    sb_req *req = lr->req;
    json_t *list = c->json; /* NULL: nobody is connected */
    if (c->result != 0 && c->result != SB_ENOENT) {
        json_decref(list);
        sb_app_internal_error(req, "listing participants", c->result);
        return;
    }
    if (lr->one) {
        json_t *found = NULL;
        size_t i;
        json_t *v;
        json_array_foreach(list, i, v)
        {
            if (strcmp(json_string_value(json_object_get(v, "identity")) ?: "", c->identity) == 0)
                found = json_incref(v);
        }
        json_decref(list);
        if (!found)
            sb_resp_problem(req, 404, "not-found", NO_PARTICIPANT);
        else
            sb_app_send_json(req, 200, found);
        return;
    }
    size_t n = list ? json_array_size(list) : 0;
    live_row *rows = n ? sb_arena_alloc(&req->arena, n * sizeof *rows) : NULL;
    if (n && !rows) {
        json_decref(list);
        sb_app_internal_error(req, "listing participants", SB_ENOMEM);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_array_get(list, i);
        rows[i].v = v;
        rows[i].identity = json_string_value(json_object_get(v, "identity")) ?: "";
        rows[i].ms = 0;
        sb_time_parse_rfc3339(json_string_value(json_object_get(v, "joined_at")) ?: "",
                              &rows[i].ms);
    }
    if (n)
        qsort(rows, n, sizeof *rows, live_row_cmp);
    json_t *data = json_array();
    int64_t last_ms = 0;
    const char *last_id = "";
    bool more = false;
    for (size_t i = 0; i < n && data; i++) {
        if (lr->pg.has_cursor &&
            (rows[i].ms < lr->pg.after_ms ||
             (rows[i].ms == lr->pg.after_ms &&
              strncmp(rows[i].identity, lr->pg.after_id, sizeof lr->pg.after_id - 1) <= 0)))
            continue;
        if ((int)json_array_size(data) == lr->pg.limit) {
            more = true;
            break;
        }
        json_array_append(data, rows[i].v);
        last_ms = rows[i].ms;
        last_id = rows[i].identity;
    }
    json_t *resp = data ? json_pack("{s:o}", "data", data) : NULL;
    char cut[SB_ID_MAX];
    snprintf(cut, sizeof cut, "%s", last_id);
    if (!resp || sb_app_page_next(resp, more, last_ms, cut) != 0) {
        json_decref(resp);
        json_decref(list);
        sb_app_internal_error(req, "listing participants", SB_ENOMEM);
        return;
    }
    json_decref(list);
    sb_app_send_json(req, 200, resp);
}

static void live_read_start(sb_app *app, sb_req *req, bool one)
{
    sb_auth who;
    live_read *lr = NULL;
    if (!sb_app_auth(app, req, SB_SCOPE_ROOMS_READ, &who))
        return;
    if (!(lr = sb_app_ctx(req, sizeof *lr, "listing participants")))
        return;
    lr->req = req;
    lr->one = one;
    if (!one && !sb_app_page(req, &lr->pg))
        return;
    sb_str name = req->params[0];
    if (!room_open_or_404(app, req, who.project_id, name))
        return;
    if (one) {
        sb_str identity = req->params[1];
        if (!sb_identity_valid(identity.base, identity.len)) {
            sb_resp_problem(req, 404, "not-found", NO_PARTICIPANT);
            return;
        }
        memcpy(lr->call.identity, identity.base, identity.len);
    }
    lr->call.kind = SB_RTC_LIST;
    snprintf(lr->call.project_id, sizeof lr->call.project_id, "%s", who.project_id);
    memcpy(lr->call.room, name.base, name.len);
    lr->call.done = live_read_done;
    lr->call.arg = lr;
    sb_rtc_run(app, req, &lr->call);
}

static void participants_list(sb_req *req, void *ud)
{
    live_read_start(ud, req, false);
}

static void participants_get(sb_req *req, void *ud)
{
    live_read_start(ud, req, true);
}

/* ---- PATCH, DELETE /v1/rooms/{name}/participants/{identity} ------------------------ */

typedef struct participant_write {
    sb_req *req;
    sb_app *app;
    int db_rc;
    int64_t ban;
    sb_auth who;
    char room[129];
    char identity[SB_IDENTITY_MAX + 1];
    char target[129 + SB_IDENTITY_MAX + 1]; /* audit target: "<room>/<identity>" */
    const char *metadata;                   /* arena; NULL with set_metadata = clear */
    bool set_metadata;
    json_t *grants; /* requested grant changes (owned), or NULL */
    json_t *result;
} participant_write;

/* Grant changes: an object of known grant names with boolean values. */
static bool grants_valid(const json_t *g, char *why, size_t whylen)
{
    static const char *const names[] = {"publish", "subscribe", "publish_data", "admin", "hidden",
                                        "record",  NULL};
    if (!json_is_object(g)) {
        snprintf(why, whylen, "grants must be an object of booleans");
        return false;
    }
    if (sb_json_only(g, names, why, whylen))
        return false;
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)g, k, v)
    {
        if (!json_is_boolean(v)) {
            snprintf(why, whylen, "grants.%s must be true or false", k);
            return false;
        }
    }
    return true;
}

/* Copies the path's room and identity; false when no participant could have them. */
static bool participant_target(sb_req *req, participant_write *w)
{
    sb_str name = req->params[0], identity = req->params[1];
    if (!sb_room_name_valid(name.base, name.len) || !sb_identity_valid(identity.base, identity.len))
        return false;
    memcpy(w->room, name.base, name.len);
    w->room[name.len] = '\0';
    memcpy(w->identity, identity.base, identity.len);
    w->identity[identity.len] = '\0';
    snprintf(w->target, sizeof w->target, "%s/%s", w->room, w->identity);
    return true;
}

static int participant_update_run(sqlite3 *db, void *arg)
{
    participant_write *w = arg;
    sqlite3_stmt *st = sb_store_stmt(
        db, "UPDATE session_participants SET metadata = CASE WHEN ?4 THEN ?5 ELSE metadata END "
            "WHERE rowid IN (SELECT p.rowid" LIVE_FROM " AND p.identity = ?3)");
    if (!st)
        return SB_EIO;
    sqlite3_bind_text(st, 1, w->who.project_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, w->room, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, w->identity, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 4, w->set_metadata);
    if (w->metadata)
        sqlite3_bind_text(st, 5, w->metadata, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if ((rc = sb_store_errno(rc)) != 0 || sqlite3_changes(db) == 0)
        return rc;
    rc = sb_app_audit(db, &w->who, w->req->request_id, "participant.update", "participant",
                      w->target);
    return rc ? rc
              : participant_read(db, w->who.project_id, w->room, strlen(w->room), w->identity,
                                 strlen(w->identity), &w->result);
}

static void participant_update_answer(participant_write *w, int rc);

static unsigned grant_bit(const char *k)
{
    static const char *const names[] = {"publish", "subscribe", "publish_data",
                                        "admin",   "hidden",    "record"};
    for (unsigned i = 0; i < 6; i++)
        if (strcmp(k, names[i]) == 0)
            return 1u << i; /* the order of SB_GRANT_* */
    return 0;
}

static void participant_updated_live(sb_rtc_call *c)
{
    participant_write *w = c->arg;
    if (c->result == 0 && c->json) {
        /* The live connection is the truth: answer with it. */
        json_decref(w->result);
        json_decref(w->grants);
        sb_app_send_json(w->req, 200, c->json);
        return;
    }
    json_decref(c->json);
    participant_update_answer(w, w->db_rc);
}

static void participant_update_done(void *arg, int rc)
{
    participant_write *w = arg;
    if (rc >= 0) {
        w->db_rc = rc;
        sb_rtc_call *c = sb_arena_alloc(&w->req->arena, sizeof *c);
        if (c) {
            memset(c, 0, sizeof *c);
            c->kind = SB_RTC_UPDATE;
            memcpy(c->project_id, w->who.project_id, sizeof c->project_id);
            memcpy(c->room, w->room, sizeof c->room);
            memcpy(c->identity, w->identity, sizeof c->identity);
            c->metadata = w->metadata;
            c->set_metadata = w->set_metadata;
            const char *k;
            json_t *v;
            json_object_foreach(w->grants, k, v)
            {
                if (json_is_true(v))
                    c->grants_on |= grant_bit(k);
                else
                    c->grants_off |= grant_bit(k);
            }
            c->done = participant_updated_live;
            c->arg = w;
            sb_rtc_run(w->app, w->req, c);
            return;
        }
    }
    participant_update_answer(w, rc);
}

static void participant_update_answer(participant_write *w, int rc)
{
    if (rc < 0 || !w->result) {
        json_decref(w->result);
        json_decref(w->grants);
        if (rc < 0)
            sb_app_internal_error(w->req, "updating a participant", rc);
        else
            sb_resp_problem(w->req, 404, "not-found", NO_PARTICIPANT);
        return;
    }
    /* Grants act on the live connection (real-time layer) and are not stored: the answer
     * shows what this request asked for on top of the defaults. */
    if (w->grants)
        json_object_update_existing(json_object_get(w->result, "grants"), w->grants);
    json_decref(w->grants);
    sb_app_send_json(w->req, 200, w->result);
}

static void participants_update(sb_req *req, void *ud)
{
    sb_app *app = ud;
    sb_auth who;
    if (!sb_app_auth(app, req, SB_SCOPE_ROOMS_WRITE, &who))
        return;
    json_t *body = sb_app_body(req);
    if (!body)
        return;
    static const char *const fields[] = {"metadata", "grants", NULL};
    char why[256] = "";
    participant_write *w = sb_app_ctx(req, sizeof *w, "updating a participant");
    if (!w) {
        json_decref(body);
        return;
    }
    if (sb_json_only(body, fields, why, sizeof why))
        goto invalid;
    const json_t *m = json_object_get(body, "metadata");
    if (m && !json_is_null(m)) {
        const char *s = NULL;
        size_t n = 0;
        if (sb_json_get_string(body, "metadata", &s, &n, METADATA_MAX, why, sizeof why))
            goto invalid;
        if (!(w->metadata = sb_arena_strndup(&req->arena, s, n))) {
            json_decref(body);
            sb_app_internal_error(req, "updating a participant", SB_ENOMEM);
            return;
        }
    }
    w->set_metadata = m != NULL;
    json_t *g = json_object_get(body, "grants");
    if (g && !grants_valid(g, why, sizeof why))
        goto invalid;
    w->grants = json_incref(g);
    json_decref(body);
    w->req = req;
    w->app = app;
    w->who = who;
    if (!participant_target(req, w)) {
        json_decref(w->grants);
        sb_resp_problem(req, 404, "not-found", NO_PARTICIPANT);
        return;
    }
    if (!sb_app_submit(app, req, participant_update_run, participant_update_done, w))
        json_decref(w->grants);
    return;
invalid:
    json_decref(body);
    sb_resp_problem(req, 400, "invalid-request", why);
}

static int participant_eject_run(sqlite3 *db, void *arg)
{
    participant_write *w = arg;
    sqlite3_stmt *st =
        sb_store_stmt(db, "UPDATE session_participants SET left_at = ?4, leave_reason = 'ejected' "
                          "WHERE rowid IN (SELECT p.rowid" LIVE_FROM " AND p.identity = ?3)");
    if (!st)
        return SB_EIO;
    sqlite3_bind_text(st, 1, w->who.project_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, w->room, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, w->identity, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, sb_time_ms());
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if ((rc = sb_store_errno(rc)) != 0 || sqlite3_changes(db) == 0)
        return rc;
    rc = sb_app_audit(db, &w->who, w->req->request_id, "participant.eject", "participant",
                      w->target);
    return rc ? rc : 1;
}

static void participant_ejected_live(sb_rtc_call *c)
{
    participant_write *w = c->arg;
    if (c->result == 0 && w->db_rc == 0)
        sb_app_cache_bump();
    if (w->db_rc < 0)
        sb_app_internal_error(w->req, "ejecting a participant", w->db_rc);
    else if (w->db_rc == 0 && c->result != 0)
        sb_resp_problem(w->req, 404, "not-found", NO_PARTICIPANT);
    else
        sb_resp_send(w->req, 204, NULL, NULL, 0);
}

static void participant_eject_done(void *arg, int rc)
{
    participant_write *w = arg;
    if (rc > 0)
        sb_app_cache_bump(); /* cached rooms show num_participants */
    w->db_rc = rc;
    sb_rtc_call *c = rc >= 0 ? sb_arena_alloc(&w->req->arena, sizeof *c) : NULL;
    if (c) {
        /* The connection goes (4003), and a ban refuses the identity's rejoin. */
        memset(c, 0, sizeof *c);
        c->kind = SB_RTC_EJECT;
        memcpy(c->project_id, w->who.project_id, sizeof c->project_id);
        memcpy(c->room, w->room, sizeof c->room);
        memcpy(c->identity, w->identity, sizeof c->identity);
        c->ban_seconds = w->ban;
        c->done = participant_ejected_live;
        c->arg = w;
        sb_rtc_run(w->app, w->req, c);
        return;
    }
    if (rc < 0)
        sb_app_internal_error(w->req, "ejecting a participant", rc);
    else if (rc == 0)
        sb_resp_problem(w->req, 404, "not-found", NO_PARTICIPANT);
    else {
        sb_app_cache_bump(); /* cached rooms show num_participants */
        sb_resp_send(w->req, 204, NULL, NULL, 0);
    }
}

/* ?ban_seconds: decimal digits only, 0..BAN_SECONDS_MAX. */
static bool ban_param(sb_req *req, int64_t *out)
{
    sb_str v;
    *out = 0;
    if (!sb_req_query(req, "ban_seconds", &v))
        return true;
    int64_t n = 0;
    bool ok = v.len > 0 && v.len <= 7;
    for (size_t i = 0; ok && i < v.len; i++) {
        ok = v.base[i] >= '0' && v.base[i] <= '9';
        n = n * 10 + (v.base[i] - '0');
    }
    if (!ok || n > BAN_SECONDS_MAX) {
        sb_resp_problem(req, 400, "invalid-parameter",
                        "ban_seconds must be an integer from 0 to 604800");
        return false;
    }
    *out = n;
    return true;
}

static void participants_delete(sb_req *req, void *ud)
{
    sb_app *app = ud;
    sb_auth who;
    int64_t ban;
    if (!sb_app_auth(app, req, SB_SCOPE_ROOMS_WRITE, &who) || !ban_param(req, &ban))
        return;
    /* The ban itself is the real-time layer's (it refuses the rejoin), kept in memory on the
     * room's home loop; nothing stores it. */
    participant_write *w = sb_app_ctx(req, sizeof *w, "ejecting a participant");
    if (!w)
        return;
    w->req = req;
    w->app = app;
    w->who = who;
    w->ban = ban;
    if (!participant_target(req, w)) {
        sb_resp_problem(req, 404, "not-found", NO_PARTICIPANT);
        return;
    }
    sb_app_submit(app, req, participant_eject_run, participant_eject_done, w);
}

/* ---- POST /v1/rooms/{name}/messages ------------------------------------------------ */

static bool message_valid(const json_t *body, char *why, size_t whylen)
{
    static const char *const fields[] = {"data", "topic", "to", NULL};
    const char *data = NULL, *topic = NULL;
    if (sb_json_only(body, fields, why, whylen) ||
        sb_json_get_string(body, "data", &data, NULL, MESSAGE_MAX, why, whylen) ||
        sb_json_get_string(body, "topic", &topic, NULL, TOPIC_MAX, why, whylen))
        return false;
    if (!data) {
        snprintf(why, whylen, "data is required");
        return false;
    }
    const json_t *to = json_object_get(body, "to");
    if (!to)
        return true;
    if (!json_is_array(to) || json_array_size(to) > TO_MAX) {
        snprintf(why, whylen, "to must be an array of at most %d identities", TO_MAX);
        return false;
    }
    size_t i;
    const json_t *v;
    json_array_foreach(to, i, v)
    {
        if (!json_is_string(v) || !sb_identity_valid(json_string_value(v), json_string_length(v))) {
            snprintf(why, whylen, "to[%zu] must be an identity matching ^[A-Za-z0-9_.:@-]{1,128}$",
                     i);
            return false;
        }
    }
    return true;
}

static void message_sent(sb_rtc_call *c)
{
    sb_req *req = c->arg;
    if (c->result < 0 && c->result != SB_ENOENT) {
        sb_resp_problem(req, 400, "invalid-request", "the message is too large");
        return;
    }
    /* Not live (nobody connected): delivered to nobody. */
    sb_app_send_json(req, 202, json_pack("{s:i}", "delivered", c->result > 0 ? c->result : 0));
}

static void messages_send(sb_req *req, void *ud)
{
    sb_app *app = ud;
    sb_auth who;
    if (!sb_app_auth(app, req, SB_SCOPE_ROOMS_WRITE, &who))
        return;
    json_t *body = sb_app_body(req);
    if (!body)
        return;
    char why[256] = "";
    bool ok = message_valid(body, why, sizeof why);
    if (!ok) {
        json_decref(body);
        sb_resp_problem(req, 400, "invalid-request", why);
        return;
    }
    sb_rtc_call *c = sb_arena_alloc(&req->arena, sizeof *c);
    const json_t *d = json_object_get(body, "data"), *t = json_object_get(body, "topic"),
                 *to = json_object_get(body, "to");
    size_t nto = json_array_size(to);
    const char **tov = nto ? sb_arena_alloc(&req->arena, nto * sizeof *tov) : NULL;
    if (c) {
        memset(c, 0, sizeof *c);
        c->data_len = json_string_length(d);
        c->data = sb_arena_strndup(&req->arena, json_string_value(d), c->data_len);
        c->topic = json_is_string(t)
                       ? sb_arena_strndup(&req->arena, json_string_value(t), json_string_length(t))
                       : NULL;
        for (size_t i = 0; tov && i < nto; i++)
            tov[i] = sb_arena_strndup(&req->arena, json_string_value(json_array_get(to, i)),
                                      json_string_length(json_array_get(to, i)));
        c->to = tov;
        c->nto = nto;
    }
    json_decref(body);
    if (!c || !c->data || (nto && !tov)) {
        sb_app_internal_error(req, "sending a message", SB_ENOMEM);
        return;
    }
    for (size_t i = 0; i < nto; i++)
        if (!tov[i]) {
            sb_app_internal_error(req, "sending a message", SB_ENOMEM);
            return;
        }
    sb_str name = req->params[0];
    if (!room_open_or_404(app, req, who.project_id, name))
        return;
    c->kind = SB_RTC_SEND;
    snprintf(c->project_id, sizeof c->project_id, "%s", who.project_id);
    memcpy(c->room, name.base, name.len);
    c->room[name.len] = '\0';
    c->done = message_sent;
    c->arg = req;
    sb_rtc_run(app, req, c);
}

int sb_api_sessions_register(sb_app *app, sb_router *r)
{
    int rc = sb_router_add(r, "GET", "/v1/sessions", sessions_list, app);
    rc = rc ? rc : sb_router_add(r, "GET", "/v1/sessions/{id}", sessions_get, app);
    rc = rc ? rc
            : sb_router_add(r, "GET", "/v1/sessions/{id}/participants", sessions_participants, app);
    rc = rc ? rc : sb_router_add(r, "POST", "/v1/sessions/{id}/end", sessions_end, app);
    rc = rc ? rc : sb_router_add(r, "GET", "/v1/rooms/{name}/participants", participants_list, app);
    rc = rc ? rc
            : sb_router_add(r, "GET", "/v1/rooms/{name}/participants/{identity}", participants_get,
                            app);
    rc = rc ? rc
            : sb_router_add(r, "PATCH", "/v1/rooms/{name}/participants/{identity}",
                            participants_update, app);
    rc = rc ? rc
            : sb_router_add(r, "DELETE", "/v1/rooms/{name}/participants/{identity}",
                            participants_delete, app);
    rc = rc ? rc : sb_router_add(r, "POST", "/v1/rooms/{name}/messages", messages_send, app);
    return rc;
}
