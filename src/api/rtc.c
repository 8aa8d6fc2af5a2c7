/* GET /v1/rtc and the control plane's effects on live rooms (see rtc.h). */
#include "api/rtc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/rtc_token.h"
#include "core/alloc.h"
#include "core/log.h"
#include "events/outbox.h"
#include "net/loop.h"
#include "net/server_internal.h"
#include "net/websocket.h"
#include "rooms/live.h"
#include "switchboard/error.h"

#define MAX_TOKEN     8192
#define TICK_EVERY_MS 1000

typedef struct rtc_loop rtc_loop;

/* One participant: its WebSocket, served by its room's home loop, and its place in the room. */
typedef struct rtc_member {
    struct rtc_member *prev, *next; /* the loop's members */
    sb_ws *ws;
    rtc_loop *lp;
    sb_live_participant *p;
} rtc_member;

typedef struct rtc_ban {
    struct rtc_ban *next;
    char project_id[SB_ID_MAX];
    char room[129];
    char identity[129];
    int64_t until_ms;
} rtc_ban;

struct rtc_loop {
    sb_rtc *rtc;
    int index;
    sb_live_rooms *rooms;
    rtc_member *members;
    rtc_ban *bans;
    int64_t last_tick_ms;
};

struct sb_rtc {
    sb_app *app;
    sb_server *server;
    int nloops;
    rtc_loop *loops;
    bool shutdown; /* every loop has stopped: hooks run synchronously */
};

/* A join on its way to the room's home loop. */
typedef struct rtc_join {
    sb_rtc *rtc;
    json_t *room_json;
    uint32_t max_participants, empty_timeout;
    sb_rtc_claims claims;
} rtc_join;

static int home_of(const sb_rtc *rtc, const char *project, const char *room)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a of "project/room" */
    for (const char *s = project; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    h = (h ^ '/') * 1099511628211ull;
    for (const char *s = room; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return (int)(h % (uint64_t)rtc->nloops);
}

static sb_loop *loop_at(const sb_rtc *rtc, int i)
{
    return sb_server_loop(rtc->server, i);
}

static void member_unlink(rtc_loop *lp, rtc_member *m)
{
    if (m->prev)
        m->prev->next = m->next;
    else
        lp->members = m->next;
    if (m->next)
        m->next->prev = m->prev;
    m->prev = m->next = NULL;
}

/* ---- connection ops (home loop) ------------------------------------------------------- */

static int conn_send(void *conn, int opcode, const void *data, size_t len)
{
    rtc_member *m = conn;
    if (!m->ws)
        return SB_ECANCELED;
    return sb_ws_send(m->ws, opcode == SB_LIVE_OP_BINARY ? SB_WS_BINARY : SB_WS_TEXT, data, len);
}

static void conn_close(void *conn, uint16_t code, const char *reason)
{
    rtc_member *m = conn;
    if (m->ws)
        sb_ws_close(m->ws, code, reason);
}

static const sb_live_conn_ops conn_ops = {conn_send, conn_close};

static void send_json(sb_ws *ws, json_t *j)
{
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    if (s)
        sb_ws_send(ws, SB_WS_TEXT, s, strlen(s));
    free(s);
    json_decref(j);
}

static void send_error(rtc_member *m, const char *code, const char *message)
{
    send_json(m->ws, json_pack("{s:s,s:s,s:s}", "type", "error", "code", code, "message", message));
}

/* ---- hooks: store jobs (home loop) ---------------------------------------------------- */

enum { J_SESSION_START = 1, J_JOINED, J_LEFT, J_SESSION_END };

typedef struct hook_job {
    int kind;
    char project_id[SB_ID_MAX];
    char room[129];
    char session[SB_ID_MAX];
    char identity[129];
    char name[257];
    char metadata[4097];
    char reason[32];
    unsigned grants;
    int64_t at, joined_at;
} hook_job;

static int step(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return sb_store_errno(rc);
}

static int hook_run(sqlite3 *db, void *arg)
{
    hook_job *j = arg;
    sqlite3_stmt *st;
    int rc;
    switch (j->kind) {
    case J_SESSION_START:
        st = sb_store_stmt(db, "INSERT INTO sessions (id, project_id, room_id, room_name, "
                               "started_at) SELECT ?1, project_id, id, name, ?4 FROM rooms WHERE "
                               "project_id = ?2 AND name = ?3 AND status = 'open'");
        if (!st)
            return SB_EIO;
        sqlite3_bind_text(st, 1, j->session, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, j->project_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, j->room, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 4, j->at);
        if ((rc = step(st)) != 0 || sqlite3_changes(db) == 0)
            return rc; /* the room was closed meanwhile */
        return sb_event_emit(db, j->project_id, "session.started", j->room,
                             json_pack("{s:s,s:s}", "session_id", j->session, "room", j->room),
                             NULL);
    case J_JOINED:
        st = sb_store_stmt(db, "INSERT INTO session_participants (session_id, identity, name, "
                               "metadata, joined_at) SELECT ?1, ?2, ?3, ?4, ?5 WHERE EXISTS "
                               "(SELECT 1 FROM sessions WHERE id = ?1 AND ended_at IS NULL)");
        if (!st)
            return SB_EIO;
        sqlite3_bind_text(st, 1, j->session, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, j->identity, -1, SQLITE_STATIC);
        if (j->name[0])
            sqlite3_bind_text(st, 3, j->name, -1, SQLITE_STATIC);
        else
            sqlite3_bind_null(st, 3);
        if (j->metadata[0])
            sqlite3_bind_text(st, 4, j->metadata, -1, SQLITE_STATIC);
        else
            sqlite3_bind_null(st, 4);
        sqlite3_bind_int64(st, 5, j->joined_at);
        if ((rc = step(st)) != 0 || sqlite3_changes(db) == 0)
            return rc;
        {
            char at[32];
            sb_time_rfc3339(j->joined_at, at);
            json_t *p = json_pack(
                "{s:s,s:s?,s:s?,s:o,s:s,s:s}", "identity", j->identity, "name",
                j->name[0] ? j->name : NULL, "metadata", j->metadata[0] ? j->metadata : NULL,
                "grants", sb_rtc_grants_json(j->grants), "joined_at", at, "session_id", j->session);
            /* identity at the top as well: the same key as participant.left carries. */
            return sb_event_emit(db, j->project_id, "participant.joined", j->room,
                                 p ? json_pack("{s:s,s:s,s:s,s:o}", "room", j->room, "session_id",
                                               j->session, "identity", j->identity, "participant",
                                               p)
                                   : NULL,
                                 NULL);
        }
    case J_LEFT:
        st = sb_store_stmt(db, "UPDATE session_participants SET left_at = ?1, leave_reason = ?2 "
                               "WHERE session_id = ?3 AND identity = ?4 AND joined_at = ?5 AND "
                               "left_at IS NULL");
        if (!st)
            return SB_EIO;
        sqlite3_bind_int64(st, 1, j->at);
        sqlite3_bind_text(st, 2, j->reason, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 3, j->session, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 4, j->identity, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 5, j->joined_at);
        if ((rc = step(st)) != 0)
            return rc;
        /* The event even when a REST call already closed the row (eject, room close). */
        return sb_event_emit(
            db, j->project_id,
            strcmp(j->reason, "ejected") == 0 ? "participant.ejected" : "participant.left", j->room,
            json_pack("{s:s,s:s,s:s,s:s}", "room", j->room, "session_id", j->session, "identity",
                      j->identity, "reason", j->reason),
            NULL);
    case J_SESSION_END:
        /* 0: already ended through the API, whose event exists. */
        rc =
            sb_app_session_end(db, j->project_id, j->session, j->room, j->reason, j->reason, j->at);
        return rc < 0 ? rc : 0;
    }
    return SB_EINVAL;
}

static void hook_done(void *arg, int rc)
{
    hook_job *j = arg;
    if (rc < 0)
        sb_log(SB_LOG_ERROR, "rtc: recording a session change failed", "room", j->room,
               "session_id", j->session, "reason", sb_strerror(rc), NULL);
    sb_app_cache_bump(); /* rooms show num_participants and active_session_id */
    sb_free(j);
}

static hook_job *hook_new(int kind, const sb_live_room *room)
{
    hook_job *j = sb_calloc(1, sizeof *j);
    if (!j)
        return NULL;
    j->kind = kind;
    j->at = sb_time_ms();
    snprintf(j->project_id, sizeof j->project_id, "%s", sb_live_room_project(room));
    snprintf(j->room, sizeof j->room, "%s", sb_live_room_name(room));
    const char *s = sb_live_room_session(room);
    snprintf(j->session, sizeof j->session, "%s", s ? s : "");
    return j;
}

static void hook_submit(rtc_loop *lp, hook_job *j)
{
    if (!j) {
        sb_log(SB_LOG_ERROR, "rtc: out of memory recording a session change", NULL);
        return;
    }
    sb_rtc *rtc = lp->rtc;
    if (!sb_app_submit_loop(rtc->app, rtc->shutdown ? NULL : loop_at(rtc, lp->index), hook_run,
                            hook_done, j)) {
        sb_log(SB_LOG_ERROR, "rtc: the write queue refused a session change", "room", j->room,
               NULL);
        sb_free(j);
    }
}

static void on_session_started(void *ud, const sb_live_room *room, char *session_id)
{
    sb_id_new("ses", session_id);
    hook_job *j = hook_new(J_SESSION_START, room);
    if (j)
        snprintf(j->session, sizeof j->session, "%s", session_id);
    hook_submit(ud, j);
}

static void on_session_ended(void *ud, const sb_live_room *room, const char *reason)
{
    hook_job *j = hook_new(J_SESSION_END, room);
    if (j)
        snprintf(j->reason, sizeof j->reason, "%s", reason);
    hook_submit(ud, j);
}

static void on_participant_joined(void *ud, const sb_live_room *room, const sb_live_participant *p)
{
    hook_job *j = hook_new(J_JOINED, room);
    if (j) {
        const sb_live_claims *c = sb_live_participant_claims(p);
        memcpy(j->identity, c->identity, sizeof j->identity);
        memcpy(j->name, c->name, sizeof j->name);
        snprintf(j->metadata, sizeof j->metadata, "%s", c->metadata);
        j->grants = c->grants;
        j->joined_at = sb_live_participant_joined_at(p);
    }
    hook_submit(ud, j);
}

static void on_participant_left(void *ud, const sb_live_room *room, const sb_live_participant *p,
                                const char *reason)
{
    hook_job *j = hook_new(J_LEFT, room);
    if (j) {
        memcpy(j->identity, sb_live_participant_claims(p)->identity, sizeof j->identity);
        j->joined_at = sb_live_participant_joined_at(p);
        snprintf(j->reason, sizeof j->reason, "%s", reason ? reason : "left");
    }
    hook_submit(ud, j);
}

/* ---- bans (home loop) ------------------------------------------------------------------- */

static bool banned(rtc_loop *lp, const sb_rtc_claims *c, int64_t now)
{
    for (rtc_ban **pp = &lp->bans; *pp;) {
        rtc_ban *b = *pp;
        if (b->until_ms <= now) {
            *pp = b->next;
            sb_free(b);
            continue;
        }
        if (strcmp(b->project_id, c->project_id) == 0 && strcmp(b->room, c->room) == 0 &&
            strcmp(b->identity, c->identity) == 0)
            return true;
        pp = &b->next;
    }
    return false;
}

static void ban_add(rtc_loop *lp, const sb_rtc_call *c, int64_t now)
{
    rtc_ban *b = sb_calloc(1, sizeof *b);
    if (!b)
        return;
    memcpy(b->project_id, c->project_id, sizeof b->project_id);
    memcpy(b->room, c->room, sizeof b->room);
    memcpy(b->identity, c->identity, sizeof b->identity);
    b->until_ms = now + c->ban_seconds * 1000;
    b->next = lp->bans;
    lp->bans = b;
}

/* ---- the participant's WebSocket (home loop) ------------------------------------------- */

static void on_refresh(rtc_member *m, json_t *msg);
static void send_json(sb_ws *ws, json_t *j);

static void ws_open(sb_ws *ws, void *ud)
{
    (void)ws;
    (void)ud;
}

static void ws_message(sb_ws *ws, void *ud, int opcode, const void *data, size_t len)
{
    (void)ws;
    rtc_member *m = ud;
    rtc_loop *lp = m->lp;
    int rc;
    if (opcode == SB_WS_TEXT && len <= MAX_TOKEN + 64 &&
        memmem(data, len, "\"refresh_token\"", 15)) {
        /* Possibly the connection's own message rather than one for the room. */
        json_t *j = json_loadb(data, len, JSON_REJECT_DUPLICATES, NULL);
        const char *type = json_string_value(json_object_get(j, "type"));
        if (type && strcmp(type, "refresh_token") == 0) {
            on_refresh(m, j);
            json_decref(j);
            return;
        }
        json_decref(j);
    }
    if (opcode == SB_WS_TEXT)
        rc = sb_live_on_text(lp->rooms, m->p, data, len);
    else
        rc = sb_live_on_binary(lp->rooms, m->p, data, len);
    if (rc == SB_EACCES)
        send_error(m, "forbidden",
                   opcode == SB_WS_TEXT ? "sending data needs the publish_data grant"
                                        : "sending binary frames needs the publish grant");
    else if (rc == SB_EINVAL)
        send_error(m, "invalid_message",
                   "expected {\"type\":\"data\",\"data\":…,\"topic\"?,\"to\"?} or "
                   "{\"type\":\"refresh_token\",\"token\":…}");
}

/* {"type":"refresh_token","token":…}: a fresh token for the same participant (same project,
 * room and identity) moves its expiry; anything else is refused without closing. */
static void on_refresh(rtc_member *m, json_t *msg)
{
    rtc_loop *lp = m->lp;
    const char *tok = json_string_value(json_object_get(msg, "token"));
    size_t len = tok ? strlen(tok) : 0;
    sb_rtc_claims c;
    sb_jwt_reason why;
    if (!tok || len > MAX_TOKEN ||
        sb_rtc_verify_on(lp->rtc->app, lp->index, tok, len, &c, &why) != 0) {
        send_error(m, "invalid_token", "the token is invalid or expired");
        return;
    }
    const sb_live_claims *cur = sb_live_participant_claims(m->p);
    if (strcmp(c.project_id, cur->project_id) != 0 || strcmp(c.room, cur->room) != 0 ||
        strcmp(c.identity, cur->identity) != 0) {
        send_error(m, "invalid_token", "the token is for another room or identity");
        return;
    }
    if (sb_app_participant_token_revoked(lp->rtc->app, c.project_id, c.jti)) {
        send_error(m, "invalid_token", "the token has been revoked");
        return;
    }
    if (sb_live_refresh(lp->rooms, m->p, c.exp) != 0)
        return;
    char exp[32];
    sb_time_rfc3339(c.exp * 1000, exp);
    send_json(m->ws, json_pack("{s:s,s:s}", "type", "token_refreshed", "expires_at", exp));
}

static void ws_closed(sb_ws *ws, void *ud, uint16_t code, sb_str reason)
{
    (void)ws;
    (void)reason;
    rtc_member *m = ud;
    rtc_loop *lp = m->lp;
    m->ws = NULL;
    member_unlink(lp, m);
    const char *why = code == SB_WS_CLOSE_TOO_SLOW ? "too_slow"
                      : code == SB_WS_CLOSE_ABNORMAL || code == SB_WS_CLOSE_PROTOCOL ||
                              code == SB_WS_CLOSE_TOO_BIG || code == SB_WS_CLOSE_INVALID_DATA
                          ? "error"
                          : "left";
    sb_live_leave(lp->rtc->shutdown ? NULL : lp->rooms, m->p, why);
    sb_free(m);
    if (!lp->rtc->shutdown)
        sb_loop_job_done(loop_at(lp->rtc, lp->index));
}

static const sb_ws_handler rtc_ws = {
    .on_open = ws_open, .on_message = ws_message, .on_close = ws_closed};

/* The handler of a WebSocket that is not (yet) a participant: owns nothing. */
static void idle_open(sb_ws *ws, void *ud)
{
    (void)ws;
    (void)ud;
}
static void idle_message(sb_ws *ws, void *ud, int opcode, const void *data, size_t len)
{
    (void)ws, (void)ud, (void)opcode, (void)data, (void)len;
}
static void idle_close(sb_ws *ws, void *ud, uint16_t code, sb_str reason)
{
    (void)ws, (void)ud, (void)code, (void)reason;
}
static const sb_ws_handler idle_ws = {
    .on_open = idle_open, .on_message = idle_message, .on_close = idle_close};

static void join_free(rtc_join *j)
{
    if (j) {
        json_decref(j->room_json);
        sb_free(j);
    }
}

/* On the room's home loop: the participant joins (or is refused with a close code). */
static void join_here(rtc_loop *lp, sb_ws *ws, rtc_join *j)
{
    int64_t now = sb_time_ms();
    if (banned(lp, &j->claims, now)) {
        sb_ws_close(ws, SB_CLOSE_EJECTED, "banned");
        return;
    }
    if (sb_app_participant_token_revoked(lp->rtc->app, j->claims.project_id, j->claims.jti)) {
        sb_ws_close(ws, SB_CLOSE_TOKEN_EXPIRED, "token revoked");
        return;
    }
    rtc_member *m = sb_calloc(1, sizeof *m);
    if (!m) {
        sb_ws_close(ws, SB_WS_CLOSE_INTERNAL, "out of memory");
        return;
    }
    m->ws = ws;
    m->lp = lp;
    sb_live_room_settings st = {j->max_participants, j->empty_timeout, j->room_json};
    int code = SB_WS_CLOSE_INTERNAL;
    int rc = sb_live_join(lp->rooms, &j->claims, &st, m, &conn_ops, now, &m->p, &code);
    if (rc != 0) {
        sb_free(m);
        sb_ws_close(ws, (uint16_t)(code ? code : SB_WS_CLOSE_INTERNAL),
                    code == SB_CLOSE_ROOM_FULL ? "room full" : "cannot join");
        return;
    }
    m->next = lp->members;
    if (lp->members)
        lp->members->prev = m;
    lp->members = m;
    sb_ws_set_handler(ws, &rtc_ws, m);
    loop_at(lp->rtc, lp->index)->pending_jobs++; /* until the leave: draining waits for it */
}

static void join_moved(sb_ws *ws, void *ud, int rc)
{
    rtc_join *j = ud;
    if (rc == 0) {
        sb_rtc *rtc = j->rtc;
        join_here(&rtc->loops[sb_ws_loop(ws)->index], ws, j);
    }
    join_free(j);
}

/* ---- the edge: GET /v1/rtc --------------------------------------------------------------- */

/* Accepts the upgrade only to close it with `code`, so that the client sees the code. */
static void refuse(sb_req *req, uint16_t code, const char *reason)
{
    sb_ws *ws;
    if (sb_ws_accept(req, &idle_ws, NULL, &ws) == 0)
        sb_ws_close(ws, code, reason);
}

static bool is_upgrade(sb_req *req)
{
    const sb_http_header *h = sb_req_header(req, "upgrade");
    if (!h)
        return false;
    for (size_t i = 0; i + 9 <= h->value.len; i++)
        if (sb_str_case_eq((sb_str){h->value.base + i, 9}, "websocket"))
            return true;
    return false;
}

static void rtc_handler(sb_req *req, void *ud)
{
    sb_app *app = ud;
    sb_rtc *rtc = sb__app_rtc(app);
    if (!is_upgrade(req)) {
        sb_resp_header(req, "Upgrade", SB_STR_LIT("websocket"));
        sb_resp_problem(req, 426, "upgrade-required",
                        "GET /v1/rtc is a WebSocket: send Upgrade: websocket");
        return;
    }
    sb_str tok = {0};
    if (!sb_req_query(req, "access_token", &tok)) {
        const sb_http_header *h = sb_req_header(req, "authorization");
        if (h && h->value.len > 7 && sb_str_case_eq((sb_str){h->value.base, 7}, "bearer ")) {
            tok = (sb_str){h->value.base + 7, h->value.len - 7};
            while (tok.len && *tok.base == ' ') {
                tok.base++;
                tok.len--;
            }
        }
    }
    if (tok.len == 0) {
        sb_resp_header(req, "WWW-Authenticate", SB_STR_LIT("Bearer realm=\"switchboard\""));
        sb_resp_problem(req, 401, "unauthorized",
                        "a participant token is required (access_token or Authorization)");
        return;
    }
    sb_rtc_claims claims;
    sb_jwt_reason why;
    if (tok.len > MAX_TOKEN || sb_rtc_verify(app, req, tok.base, tok.len, &claims, &why) != 0) {
        refuse(req, SB_CLOSE_TOKEN_EXPIRED, "invalid or expired token");
        return;
    }
    if (sb_app_participant_token_revoked(app, claims.project_id, claims.jti)) {
        refuse(req, SB_CLOSE_TOKEN_EXPIRED, "token revoked");
        return;
    }
    json_t *room = NULL;
    int rc = sb_room_read_open(sb_app_reader(app, req), claims.project_id, claims.room,
                               strlen(claims.room), &room);
    if (rc) {
        sb_app_internal_error(req, "reading a room", rc);
        return;
    }
    if (!room) {
        sb_resp_problem(req, 404, "not-found", "no such open room in this project");
        return;
    }
    rtc_join *j = sb_malloc(sizeof *j);
    if (!j) {
        json_decref(room);
        sb_app_internal_error(req, "joining a room", SB_ENOMEM);
        return;
    }
    j->rtc = rtc;
    j->room_json = room;
    j->max_participants = (uint32_t)json_integer_value(json_object_get(room, "max_participants"));
    j->empty_timeout = (uint32_t)json_integer_value(json_object_get(room, "empty_timeout_seconds"));
    memcpy(&j->claims, &claims, sizeof claims);
    sb_ws *ws;
    if (sb_ws_accept(req, &idle_ws, NULL, &ws) != 0) {
        join_free(j);
        return;
    }
    /* The connection moves to the room's home loop: everything in a room is loop-local. */
    int home = home_of(rtc, claims.project_id, claims.room);
    rc = sb_ws_move(ws, loop_at(rtc, home), join_moved, j);
    if (rc) {
        sb_ws_close(ws, SB_WS_CLOSE_INTERNAL, "cannot join");
        join_free(j);
    }
}

/* ---- tick ----------------------------------------------------------------------------- */

static void rtc_tick(sb_loop *loop, void *ud)
{
    sb_rtc *rtc = ud;
    if (loop->index >= rtc->nloops)
        return;
    rtc_loop *lp = &rtc->loops[loop->index];
    int64_t now = sb_time_ms();
    if (now - lp->last_tick_ms < TICK_EVERY_MS)
        return;
    lp->last_tick_ms = now;
    sb_live_tick(lp->rooms, now);
}

/* ---- control-plane effects ------------------------------------------------------------ */

static void call_back(void *arg)
{
    sb_rtc_call *c = arg;
    sb_loop *origin = c->origin;
    c->done(c);
    sb_loop_job_done(origin);
}

static json_t *find_participant(json_t *list, const char *identity)
{
    size_t i;
    json_t *v;
    json_array_foreach(list, i, v)
    {
        if (strcmp(json_string_value(json_object_get(v, "identity")) ?: "", identity) == 0)
            return json_incref(v);
    }
    return NULL;
}

static void call_home(sb_loop *loop, void *arg)
{
    sb_rtc_call *c = arg;
    rtc_loop *lp = &c->rtc->loops[loop->index];
    int64_t now = sb_time_ms();
    switch (c->kind) {
    case SB_RTC_EJECT:
        if (c->ban_seconds > 0)
            ban_add(lp, c, now);
        c->result = sb_live_eject(lp->rooms, c->project_id, c->room, c->identity);
        break;
    case SB_RTC_CLOSE:
        c->result = sb_live_close_room(lp->rooms, c->project_id, c->room);
        break;
    case SB_RTC_UPDATE: {
        json_t *list = sb_live_list(lp->rooms, c->project_id, c->room, true);
        c->result = SB_ENOENT;
        unsigned grants = 0;
        bool found = false;
        for (rtc_member *m = lp->members; m && !found; m = m->next) {
            const sb_live_claims *cl = m->p ? sb_live_participant_claims(m->p) : NULL;
            if (cl && strcmp(cl->project_id, c->project_id) == 0 &&
                strcmp(cl->room, c->room) == 0 && strcmp(cl->identity, c->identity) == 0) {
                grants = cl->grants;
                found = true;
            }
        }
        json_decref(list);
        if (!found)
            break;
        unsigned ng = (grants | c->grants_on) & ~c->grants_off;
        c->result =
            sb_live_update_participant(lp->rooms, c->project_id, c->room, c->identity,
                                       c->set_metadata ? (c->metadata ? c->metadata : "") : NULL,
                                       (c->grants_on | c->grants_off) ? &ng : NULL);
        if (c->result == 0) {
            list = sb_live_list(lp->rooms, c->project_id, c->room, true);
            c->json = find_participant(list, c->identity);
            json_decref(list);
        }
        break;
    }
    case SB_RTC_SEND:
        c->result = sb_live_send_data(lp->rooms, c->project_id, c->room, c->data, c->data_len,
                                      c->topic, c->to, c->nto);
        break;
    case SB_RTC_ROOM: {
        sb_live_room_settings st = {
            (uint32_t)json_integer_value(json_object_get(c->room_json, "max_participants")),
            (uint32_t)json_integer_value(json_object_get(c->room_json, "empty_timeout_seconds")),
            (json_t *)c->room_json};
        c->result = sb_live_update_room(lp->rooms, c->project_id, c->room, &st);
        break;
    }
    case SB_RTC_LIST:
        c->json = sb_live_list(lp->rooms, c->project_id, c->room, false);
        c->result = c->json ? 0 : SB_ENOENT;
        break;
    }
    if (loop == c->origin)
        return; /* run in place by sb_rtc_run */
    sb_loop_post_plain(c->origin, call_back, c);
}

void sb_rtc_run(sb_app *app, sb_req *req, sb_rtc_call *c)
{
    sb_rtc *rtc = sb__app_rtc(app);
    c->rtc = rtc;
    c->origin = req->loop;
    c->result = SB_ENOENT;
    c->json = NULL;
    int home = home_of(rtc, c->project_id, c->room);
    if (home == req->loop->index) {
        call_home(req->loop, c);
        c->done(c);
        return;
    }
    int rc = sb_loop_post(loop_at(rtc, home), call_home, c);
    if (rc != 0) {
        c->result = rc; /* SB_ECANCELED: the home loop has shut down */
        c->done(c);
        return;
    }
    req->loop->pending_jobs++;
}

/* ---- revoked tokens ------------------------------------------------------------------- */

typedef struct rtc_kick {
    sb_rtc *rtc;
    char project_id[SB_ID_MAX];
    char jti[SB_ID_MAX];
} rtc_kick;

static void kick_here(sb_loop *loop, void *arg)
{
    rtc_kick *k = arg;
    rtc_loop *lp = &k->rtc->loops[loop->index];
    for (rtc_member *m = lp->members; m; m = m->next) {
        const sb_live_claims *c = m->p ? sb_live_participant_claims(m->p) : NULL;
        if (c && m->ws && strcmp(c->jti, k->jti) == 0 && strcmp(c->project_id, k->project_id) == 0)
            sb_ws_close(m->ws, SB_CLOSE_TOKEN_EXPIRED, "token revoked");
    }
    sb_free(k);
}

void sb_rtc_kick_token(sb_app *app, const char *project_id, const char *jti)
{
    sb_rtc *rtc = sb__app_rtc(app);
    for (int i = 0; i < rtc->nloops && !rtc->shutdown; i++) {
        rtc_kick *k = sb_malloc(sizeof *k);
        if (!k)
            break;
        k->rtc = rtc;
        snprintf(k->project_id, sizeof k->project_id, "%s", project_id);
        snprintf(k->jti, sizeof k->jti, "%s", jti);
        if (sb_loop_post(loop_at(rtc, i), kick_here, k) != 0)
            sb_free(k);
    }
}

/* ---- lifecycle ------------------------------------------------------------------------ */

int sb_rtc_new(sb_rtc **out, sb_app *app, sb_server *server, int nloops)
{
    sb_rtc *rtc = sb_calloc(1, sizeof *rtc);
    if (!rtc)
        return SB_ENOMEM;
    rtc->app = app;
    rtc->server = server;
    rtc->nloops = nloops;
    rtc->loops = sb_calloc((size_t)nloops, sizeof *rtc->loops);
    if (!rtc->loops) {
        sb_free(rtc);
        return SB_ENOMEM;
    }
    for (int i = 0; i < nloops; i++) {
        rtc_loop *lp = &rtc->loops[i];
        lp->rtc = rtc;
        lp->index = i;
        sb_live_hooks h = {lp, on_session_started, on_session_ended, on_participant_joined,
                           on_participant_left};
        int rc = sb_live_rooms_new(&lp->rooms, &h);
        if (rc) {
            sb_rtc_free(rtc);
            return rc;
        }
    }
    if (server)
        sb__server_set_tick(server, rtc_tick, rtc);
    *out = rtc;
    return 0;
}

void sb_rtc_free(sb_rtc *rtc)
{
    if (!rtc)
        return;
    rtc->shutdown = true;
    if (rtc->server)
        sb__server_set_tick(rtc->server, NULL, NULL);
    for (int i = 0; rtc->loops && i < rtc->nloops; i++) {
        rtc_loop *lp = &rtc->loops[i];
        sb_live_rooms_free(lp->rooms); /* hooks run synchronously now */
        while (lp->members) {
            rtc_member *m = lp->members;
            member_unlink(lp, m);
            if (m->ws)
                sb_ws_set_handler(m->ws, &idle_ws, NULL);
            sb_live_leave(NULL, m->p, NULL); /* detached: only freed */
            sb_free(m);
        }
        while (lp->bans) {
            rtc_ban *n = lp->bans->next;
            sb_free(lp->bans);
            lp->bans = n;
        }
    }
    sb_free(rtc->loops);
    sb_free(rtc);
}

int sb_api_rtc_register(sb_app *app, sb_router *r)
{
    return sb_router_add(r, "GET", "/v1/rtc", rtc_handler, app);
}
