/* Rooms, their participants and messages, and session history (API.md "Resources"). */
#include <stdio.h>

#include "api/app.h"
#include "api/rtc.h"
#include "auth/scopes.h"
#include "core/alloc.h"
#include "core/json.h"
#include "events/outbox.h"
#include "switchboard/error.h"

#define METADATA_MAX           4096
#define MAX_PARTICIPANTS_LIMIT 100000
#define EMPTY_TIMEOUT_MAX      (7 * 86400)
#define EMPTY_TIMEOUT_DEFAULT  300

#define ROOM_COLS                                                                                  \
    "r.id, r.name, r.metadata, r.max_participants, r.empty_timeout_seconds, r.auto_record, "       \
    "r.status, r.created_at, (SELECT s.id FROM sessions s WHERE s.room_id = r.id AND "             \
    "s.ended_at IS NULL), (SELECT count(*) FROM session_participants p JOIN sessions s ON "        \
    "p.session_id = s.id WHERE s.room_id = r.id AND s.ended_at IS NULL AND p.left_at IS NULL)"

bool sb_room_name_valid(const char *s, size_t n)
{
    if (n == 0 || n > 128)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return false;
    }
    return true;
}

bool sb_identity_valid(const char *s, size_t n)
{
    if (n == 0 || n > SB_IDENTITY_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-' || c == '.' || c == ':' || c == '@'))
            return false;
    }
    return true;
}

static json_t *room_json(sqlite3_stmt *st)
{
    char t[32];
    sb_time_rfc3339(sqlite3_column_int64(st, 7), t);
    json_t *meta = sqlite3_column_type(st, 2) == SQLITE_NULL
                       ? json_null()
                       : json_stringn((const char *)sqlite3_column_text(st, 2),
                                      (size_t)sqlite3_column_bytes(st, 2));
    json_t *sess = sqlite3_column_type(st, 8) == SQLITE_NULL
                       ? json_null()
                       : json_string((const char *)sqlite3_column_text(st, 8));
    return json_pack("{s:s,s:o,s:I,s:I,s:b,s:s,s:s,s:I,s:o}", "name", sqlite3_column_text(st, 1),
                     "metadata", meta, "max_participants", (json_int_t)sqlite3_column_int64(st, 3),
                     "empty_timeout_seconds", (json_int_t)sqlite3_column_int64(st, 4),
                     "auto_record", sqlite3_column_int(st, 5), "status", sqlite3_column_text(st, 6),
                     "created_at", t, "num_participants", (json_int_t)sqlite3_column_int64(st, 9),
                     "active_session_id", sess);
}

/* Reads the open room `name` of the project into *out (NULL if none). */
static int room_read(sqlite3 *db, const char *project, const char *name, size_t nlen, json_t **out)
{
    sqlite3_stmt *st = sb_store_stmt(db, "SELECT " ROOM_COLS " FROM rooms r WHERE r.project_id = "
                                         "?1 AND r.name = ?2 AND r.status = 'open'");
    if (!st)
        return SB_EIO;
    sqlite3_bind_text(st, 1, project, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, name, (int)nlen, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    *out = rc == SQLITE_ROW ? room_json(st) : NULL;
    sqlite3_reset(st);
    if (rc == SQLITE_ROW)
        return *out ? 0 : SB_ENOMEM;
    return rc == SQLITE_DONE ? 0 : SB_EIO;
}

int sb_room_read_open(sqlite3 *db, const char *project, const char *name, size_t nlen, json_t **out)
{
    return room_read(db, project, name, nlen, out);
}

/* The {name} path parameter, checked; answers 404 for a name no room could have. */
static bool room_param(sb_req *req, sb_str *name)
{
    *name = req->params[0];
    if (!sb_room_name_valid(name->base, name->len)) {
        sb_resp_problem(req, 404, "not-found", "no such open room in this project");
        return false;
    }
    return true;
}

/* ---- POST /v1/rooms ---------------------------------------------------------------- */

typedef struct room_write {
    sb_req *req;
    sb_app *app;
    sb_auth who;
    char id[SB_ID_MAX];
    char name[129];
    const char *metadata; /* arena; NULL = leave / null */
    bool set_metadata;
    int64_t max_participants;
    bool set_max;
    int64_t empty_timeout;
    bool set_timeout;
    bool auto_record;
    json_t *result;
    bool created;
} room_write;

static int room_create_run(sqlite3 *db, void *arg)
{
    room_write *w = arg;
    int rc = room_read(db, w->who.project_id, w->name, strlen(w->name), &w->result);
    if (rc || w->result)
        return rc; /* exists: answered unchanged */
    int64_t now = sb_time_ms();
    sqlite3_stmt *st =
        sb_store_stmt(db, "INSERT INTO rooms (id, project_id, name, metadata, max_participants, "
                          "empty_timeout_seconds, auto_record, status, created_at, updated_at) "
                          "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'open', ?8, ?8)");
    if (!st)
        return SB_EIO;
    sqlite3_bind_text(st, 1, w->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, w->who.project_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, w->name, -1, SQLITE_STATIC);
    if (w->metadata)
        sqlite3_bind_text(st, 4, w->metadata, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, w->max_participants);
    sqlite3_bind_int64(st, 6, w->set_timeout ? w->empty_timeout : EMPTY_TIMEOUT_DEFAULT);
    sqlite3_bind_int(st, 7, w->auto_record);
    sqlite3_bind_int64(st, 8, now);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    if ((rc = sb_store_errno(rc)) != 0)
        return rc;
    w->created = true;
    rc = sb_app_audit(db, &w->who, w->req->request_id, "room.create", "room", w->name);
    rc = rc ? rc : room_read(db, w->who.project_id, w->name, strlen(w->name), &w->result);
    rc = rc ? rc
            : sb_event_emit(db, w->who.project_id, "room.created", w->name,
                            json_pack("{s:O}", "room", w->result), NULL);
    return rc;
}

static void room_write_done(void *arg, int rc)
{
    room_write *w = arg;
    if (rc >= 0 && (w->created || w->result))
        sb_app_cache_bump();
    if (rc < 0 || !w->result) {
        json_decref(w->result);
        if (rc >= 0) {
            sb_resp_problem(w->req, 404, "not-found", "no such open room in this project");
            return;
        }
        sb_app_internal_error(w->req, "writing a room", rc);
        return;
    }
    sb_app_send_json(w->req, w->created ? 201 : 200, w->result);
}

static void room_updated_live(sb_rtc_call *c)
{
    room_write_done(c->arg, 0);
}

/* An update also reaches the live room: new limits, room_updated to every participant. */
static void room_update_done(void *arg, int rc)
{
    room_write *w = arg;
    sb_rtc_call *c = rc >= 0 && w->result ? sb_arena_alloc(&w->req->arena, sizeof *c) : NULL;
    if (!c) {
        room_write_done(w, rc);
        return;
    }
    memset(c, 0, sizeof *c);
    c->kind = SB_RTC_ROOM;
    memcpy(c->project_id, w->who.project_id, sizeof c->project_id);
    snprintf(c->room, sizeof c->room, "%s", w->name);
    c->room_json = w->result;
    c->done = room_updated_live;
    c->arg = w;
    sb_rtc_run(w->app, w->req, c);
}

/* Validates the writable fields common to create and update. */
static bool room_fields(sb_req *req, json_t *body, room_write *w, char *why, size_t whylen)
{
    const json_t *m = json_object_get(body, "metadata");
    if (m) {
        if (!json_is_null(m)) {
            const char *s;
            size_t n;
            if (sb_json_get_string(body, "metadata", &s, &n, METADATA_MAX, why, whylen))
                return false;
            if (!(w->metadata = sb_arena_strndup(&req->arena, s, n))) {
                snprintf(why, whylen, "out of memory");
                return false;
            }
        }
        w->set_metadata = true;
    }
    if (json_object_get(body, "max_participants") &&
        !json_is_null(json_object_get(body, "max_participants"))) {
        if (sb_json_get_int(body, "max_participants", &w->max_participants, 0,
                            MAX_PARTICIPANTS_LIMIT, why, whylen))
            return false;
        w->set_max = true;
    }
    if (json_object_get(body, "empty_timeout_seconds") &&
        !json_is_null(json_object_get(body, "empty_timeout_seconds"))) {
        if (sb_json_get_int(body, "empty_timeout_seconds", &w->empty_timeout, 0, EMPTY_TIMEOUT_MAX,
                            why, whylen))
            return false;
        w->set_timeout = true;
    }
    return true;
}

static void rooms_create(sb_req *req, void *ud)
{
    sb_app *app = ud;
    sb_auth who;
    if (!sb_app_auth(app, req, SB_SCOPE_ROOMS_WRITE, &who))
        return;
    json_t *body = req->body.len ? sb_app_body(req) : json_object();
    if (!body)
        return;
    static const char *const fields[] = {
        "name", "metadata", "max_participants", "empty_timeout_seconds", "auto_record", NULL};
    char why[256] = "";
    room_write *w = sb_app_ctx(req, sizeof *w, "creating a room");
    const char *name = NULL;
    size_t nlen = 0;
    if (!w) {
        json_decref(body);
        return;
    }
    if (sb_json_only(body, fields, why, sizeof why) ||
        sb_json_get_string(body, "name", &name, &nlen, 128, why, sizeof why) ||
        !room_fields(req, body, w, why, sizeof why) ||
        sb_json_get_bool(body, "auto_record", &w->auto_record, why, sizeof why))
        goto invalid;
    if (name && !sb_room_name_valid(name, nlen)) {
        snprintf(why, sizeof why, "name must match ^[A-Za-z0-9_-]{1,128}$");
        goto invalid;
    }
    w->req = req;
    w->who = who;
    if (name) {
        memcpy(w->name, name, nlen);
        w->name[nlen] = '\0';
    }
    json_decref(body); /* name pointed into it */
    if (sb_id_new("rm", w->id) != 0 || (!name && sb_id_new("room", w->name) != 0)) {
        sb_app_internal_error(req, "creating a room", SB_EIO);
        return;
    }
    sb_app_submit(app, req, room_create_run, room_write_done, w);
    return;
invalid:
    json_decref(body);
    sb_resp_problem(req, 400, "invalid-request", why);
}

/* ---- GET /v1/rooms, GET /v1/rooms/{name} -------------------------------------------- */

static void rooms_list(sb_req *req, void *ud)
{
    sb_app_list_project(ud, req, SB_SCOPE_ROOMS_READ,
                        "SELECT " ROOM_COLS
                        " FROM rooms r WHERE r.project_id = ?1 AND r.status = 'open' AND "
                        "(?2 = 0 OR r.created_at > ?3 OR (r.created_at = ?3 AND r.id > ?4)) "
                        "ORDER BY r.created_at, r.id LIMIT ?5",
                        room_json, 7, 0, "listing rooms");
}

static void rooms_get(sb_req *req, void *ud)
{
    sb_app *app = ud;
    sb_auth who;
    sb_str name;
    if (!sb_app_auth(app, req, SB_SCOPE_ROOMS_READ, &who) || !room_param(req, &name))
        return;
    /* The hot path: "<project>/<name>" → the serialized room, per loop. */
    char key[SB_ID_MAX + 130];
    size_t pl = strlen(who.project_id), kl = pl + 1 + name.len;
    memcpy(key, who.project_id, pl);
    key[pl] = '/';
    memcpy(key + pl + 1, name.base, name.len);
    size_t len;
    const char *hit = sb_app_cache_get(app, req, key, kl, &len);
    if (hit) {
        sb_resp_send(req, 200, "application/json", hit, len);
        return;
    }
    uint64_t gen = sb_app_cache_generation();
    json_t *room;
    int rc = room_read(sb_app_reader(app, req), who.project_id, name.base, name.len, &room);
    if (rc) {
        sb_app_internal_error(req, "reading a room", rc);
        return;
    }
    if (!room) {
        sb_resp_problem(req, 404, "not-found", "no such open room in this project");
        return;
    }
    sb_buf b;
    sb_buf_init(&b, 1 << 20);
    rc = sb_json_dump(room, &b);
    json_decref(room);
    if (rc) {
        sb_buf_free(&b);
        sb_app_internal_error(req, "serializing a room", rc);
        return;
    }
    sb_app_cache_put(app, req, key, kl, gen, b.base, b.len);
    sb_resp_send(req, 200, "application/json", b.base, b.len);
    sb_buf_free(&b);
}

/* ---- PATCH /v1/rooms/{name} -------------------------------------------------------- */

static int room_update_run(sqlite3 *db, void *arg)
{
    room_write *w = arg;
    sqlite3_stmt *st = sb_store_stmt(
        db, "UPDATE rooms SET metadata = CASE WHEN ?1 THEN ?2 ELSE metadata END, "
            "max_participants = CASE WHEN ?3 THEN ?4 ELSE max_participants END, "
            "empty_timeout_seconds = CASE WHEN ?5 THEN ?6 ELSE empty_timeout_seconds END, "
            "updated_at = ?7 WHERE project_id = ?8 AND name = ?9 AND status = 'open'");
    if (!st)
        return SB_EIO;
    sqlite3_bind_int(st, 1, w->set_metadata);
    if (w->metadata)
        sqlite3_bind_text(st, 2, w->metadata, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 3, w->set_max);
    sqlite3_bind_int64(st, 4, w->max_participants);
    sqlite3_bind_int(st, 5, w->set_timeout);
    sqlite3_bind_int64(st, 6, w->empty_timeout);
    sqlite3_bind_int64(st, 7, sb_time_ms());
    sqlite3_bind_text(st, 8, w->who.project_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 9, w->name, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if ((rc = sb_store_errno(rc)) != 0 || sqlite3_changes(db) == 0)
        return rc;
    rc = sb_app_audit(db, &w->who, w->req->request_id, "room.update", "room", w->name);
    rc = rc ? rc : room_read(db, w->who.project_id, w->name, strlen(w->name), &w->result);
    rc = rc ? rc
            : sb_event_emit(db, w->who.project_id, "room.updated", w->name,
                            json_pack("{s:O}", "room", w->result), NULL);
    return rc;
}

static void rooms_update(sb_req *req, void *ud)
{
    sb_app *app = ud;
    sb_auth who;
    sb_str name;
    if (!sb_app_auth(app, req, SB_SCOPE_ROOMS_WRITE, &who) || !room_param(req, &name))
        return;
    json_t *body = sb_app_body(req);
    if (!body)
        return;
    static const char *const fields[] = {"metadata", "max_participants", "empty_timeout_seconds",
                                         NULL};
    char why[256] = "";
    room_write *w = sb_app_ctx(req, sizeof *w, "updating a room");
    if (!w) {
        json_decref(body);
        return;
    }
    if (sb_json_only(body, fields, why, sizeof why) ||
        !room_fields(req, body, w, why, sizeof why)) {
        json_decref(body);
        sb_resp_problem(req, 400, "invalid-request", why);
        return;
    }
    json_decref(body);
    w->req = req;
    w->who = who;
    memcpy(w->name, name.base, name.len);
    w->name[name.len] = '\0';
    w->app = app;
    sb_app_submit(app, req, room_update_run, room_update_done, w);
}

/* ---- DELETE /v1/rooms/{name} ------------------------------------------------------- */

static int room_close_run(sqlite3 *db, void *arg)
{
    room_write *w = arg;
    int64_t now = sb_time_ms();
    /* The active session, if any, ends with the room: its event comes first. */
    sqlite3_stmt *st = sb_store_stmt(
        db, "SELECT s.id FROM sessions s JOIN rooms r ON s.room_id = r.id WHERE r.project_id = ?1 "
            "AND r.name = ?2 AND r.status = 'open' AND s.ended_at IS NULL");
    if (!st)
        return SB_EIO;
    sqlite3_bind_text(st, 1, w->who.project_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, w->name, -1, SQLITE_STATIC);
    char session[SB_ID_MAX] = "";
    if (sqlite3_step(st) == SQLITE_ROW)
        snprintf(session, sizeof session, "%s", (const char *)sqlite3_column_text(st, 0));
    sqlite3_reset(st);
    int rc;
    if (session[0] && (rc = sb_app_session_end(db, w->who.project_id, session, w->name,
                                               "room_closed", "room_closed", now)) < 0)
        return rc;
    st = sb_store_stmt(db, "UPDATE rooms SET status = 'closed', closed_at = ?1, updated_at = ?1 "
                           "WHERE project_id = ?2 AND name = ?3 AND status = 'open'");
    if (!st)
        return SB_EIO;
    sqlite3_bind_int64(st, 1, now);
    sqlite3_bind_text(st, 2, w->who.project_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, w->name, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    if ((rc = sb_store_errno(rc)) != 0 || sqlite3_changes(db) == 0)
        return rc;
    rc = sb_app_audit(db, &w->who, w->req->request_id, "room.close", "room", w->name);
    rc = rc ? rc
            : sb_event_emit(db, w->who.project_id, "room.closed", w->name,
                            json_pack("{s:s}", "room", w->name), NULL);
    return rc ? rc : 1;
}

static void room_closed_live(sb_rtc_call *c)
{
    sb_resp_send(c->arg, 204, NULL, NULL, 0);
}

static void room_close_done(void *arg, int rc)
{
    room_write *w = arg;
    if (rc > 0) {
        sb_app_cache_bump();
        /* Everyone connected is disconnected (4004) before the answer. */
        sb_rtc_call *c = sb_arena_alloc(&w->req->arena, sizeof *c);
        if (c) {
            memset(c, 0, sizeof *c);
            c->kind = SB_RTC_CLOSE;
            memcpy(c->project_id, w->who.project_id, sizeof c->project_id);
            snprintf(c->room, sizeof c->room, "%s", w->name);
            c->done = room_closed_live;
            c->arg = w->req;
            sb_rtc_run(w->app, w->req, c);
            return;
        }
    }
    if (rc < 0)
        sb_app_internal_error(w->req, "closing a room", rc);
    else if (rc == 0)
        sb_resp_problem(w->req, 404, "not-found", "no such open room in this project");
    else
        sb_resp_send(w->req, 204, NULL, NULL, 0);
}

static void rooms_delete(sb_req *req, void *ud)
{
    sb_app *app = ud;
    sb_auth who;
    sb_str name;
    if (!sb_app_auth(app, req, SB_SCOPE_ROOMS_WRITE, &who) || !room_param(req, &name))
        return;
    room_write *w = sb_app_ctx(req, sizeof *w, "closing a room");
    if (!w)
        return;
    w->req = req;
    w->app = app;
    w->who = who;
    memcpy(w->name, name.base, name.len);
    w->name[name.len] = '\0';
    sb_app_submit(app, req, room_close_run, room_close_done, w);
}

int sb_api_rooms_register(sb_app *app, sb_router *r)
{
    int rc = sb_router_add(r, "POST", "/v1/rooms", rooms_create, app);
    rc = rc ? rc : sb_router_add(r, "GET", "/v1/rooms", rooms_list, app);
    rc = rc ? rc : sb_router_add(r, "GET", "/v1/rooms/{name}", rooms_get, app);
    rc = rc ? rc : sb_router_add(r, "PATCH", "/v1/rooms/{name}", rooms_update, app);
    rc = rc ? rc : sb_router_add(r, "DELETE", "/v1/rooms/{name}", rooms_delete, app);
    return rc;
}
