/* Webhook endpoints, their deliveries and replays (API.md "Resources", "Events"). Delivery
 * itself is events/webhooks.c. */
#include <openssl/crypto.h>
#include <stdio.h>
#include <string.h>

#include "api/app.h"
#include "auth/scopes.h"
#include "core/alloc.h"
#include "core/json.h"
#include "events/outbox.h"
#include "events/webhook_policy.h"
#include "events/webhooks.h"
#include "switchboard/error.h"

#define DESCRIPTION_MAX 1024
#define EVENTS_MAX      32
#define BULK_RETRY_MAX  10000
#define BULK_RETRY_DEF  1000
#define ATTEMPTS_SHOWN  50 /* newest attempts listed per delivery */
#define RC_LIMIT        2  /* job results beyond 0/1 */
#define RC_CONFLICT     3

static const char *const event_types[] = {"room.created",        "room.updated",
                                          "room.closed",         "session.started",
                                          "session.ended",       "participant.joined",
                                          "participant.left",    "participant.ejected",
                                          "participant.updated", "recording.started",
                                          "recording.stopped",   "recording.complete",
                                          "recording.failed",    "webhook.endpoint.disabled",
                                          "webhook.test",        NULL};

static bool known_type(const char *t)
{
    for (int i = 0; event_types[i]; i++)
        if (strcmp(event_types[i], t) == 0)
            return true;
    return false;
}

typedef struct wh_job {
    sb_app *app;
    sb_req *req;
    sb_auth who;
    char id[SB_ID_MAX];
    char delivery_id[SB_ID_MAX];
    char event_id[SB_ID_MAX];
    char *url;         /* NULL: unchanged */
    char *events;      /* JSON array text; NULL: unchanged */
    char *description; /* with has_description */
    bool has_description;
    int enabled; /* -1 unchanged */
    int h2c;     /* -1 unchanged */
    char secret[SB_WEBHOOK_SECRET_MAX];
    bool v1a;                                   /* signature_scheme "v1a" (Ed25519) */
    char public_key[SB_WEBHOOK_PUBLIC_KEY_MAX]; /* with v1a: the new key's */
    sb_buf sealed;
    int64_t now;
    int64_t overlap_ms;
    const char *event_type; /* bulk filter */
    int64_t since, until;   /* bulk filter, 0 = none */
    int limit;
    int count;
    json_t *result;
} wh_job;

#define WH_COLS SB_WEBHOOKS_ENDPOINT_COLS

static int read_back(sqlite3 *db, wh_job *j)
{
    return sb_webhooks_endpoint_read(db, j->id, j->who.project_id, &j->result);
}

static int step_done(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return sb_store_errno(rc);
}

/* sql prepared on db with ?1 = the job's webhook id and ?2 = the caller's project; NULL when
 * it cannot be prepared. */
static sqlite3_stmt *webhook_stmt(sqlite3 *db, const wh_job *j, const char *sql)
{
    sqlite3_stmt *st = sb_store_stmt(db, sql);
    if (st) {
        sqlite3_bind_text(st, 1, j->id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, j->who.project_id, -1, SQLITE_STATIC);
    }
    return st;
}

/* Steps a bound statement that changes this webhook; when it changed a row, writes the audit
 * row of action in the same transaction. SB_ENOENT when it changed nothing. */
static int step_audit(sqlite3 *db, wh_job *j, sqlite3_stmt *st, const char *action)
{
    int rc = step_done(st);
    if (rc)
        return rc;
    if (sqlite3_changes(db) == 0)
        return SB_ENOENT;
    return sb_app_audit(db, &j->who, j->req->request_id, action, "webhook", j->id);
}

/* Whether webhook id is in project: 1 yes, 0 no, -1 on error. */
static int webhook_exists(sqlite3 *db, const char *id, const char *project_id)
{
    sqlite3_stmt *st =
        sb_store_stmt(db, "SELECT 1 FROM webhooks WHERE id = ?1 AND project_id = ?2");
    if (!st)
        return -1;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, project_id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : -1;
}

static wh_job *job_new(sb_app *app, sb_req *req, const sb_auth *who)
{
    wh_job *j = sb_arena_alloc(&req->arena, sizeof *j);
    if (!j) {
        sb_resp_problem(req, 503, "overloaded", "out of memory; retry later");
        return NULL;
    }
    memset(j, 0, sizeof *j);
    j->app = app;
    j->req = req;
    j->who = *who;
    j->enabled = -1;
    j->h2c = -1;
    j->now = sb_time_ms();
    sb_buf_init(&j->sealed, 4096);
    return j;
}

static bool take_id(sb_req *req, int i, char *out)
{
    if (req->params[i].len == 0 || req->params[i].len >= SB_ID_MAX)
        return false;
    memcpy(out, req->params[i].base, req->params[i].len);
    out[req->params[i].len] = '\0';
    return true;
}

#define NO_WEBHOOK "no such webhook in this project"

static void not_found(sb_req *req)
{
    sb_resp_problem(req, 404, "not-found", NO_WEBHOOK);
}

static void wipe(wh_job *j)
{
    OPENSSL_cleanse(j->secret, sizeof j->secret);
    if (j->sealed.base)
        OPENSSL_cleanse(j->sealed.base, j->sealed.len);
    sb_buf_free(&j->sealed);
}

/* A new secret (v1: whsec_; v1a: a whsk_ signing key and its whpk_ public key), and its
 * sealed form for the database. */
static int make_secret(wh_job *j)
{
    int rc = j->v1a ? sb_webhook_keypair_new(j->secret, j->public_key)
                    : sb_webhook_secret_new(j->secret);
    return rc ? rc : sb__app_seal(j->app, j->secret, strlen(j->secret), &j->sealed);
}

/* ---- validation of {url, events, description, enabled} ------------------------------------ */

static bool parse_fields(sb_app *app, sb_req *req, json_t *body, wh_job *j, bool create, char *why,
                         size_t whylen)
{
    static const char *const fields[] = {"url", "events",           "description", "enabled",
                                         "h2c", "signature_scheme", NULL};
    const sb_config *cfg = sb_app_config(app);
    const char *url = NULL, *desc = NULL, *scheme = NULL;
    size_t ulen = 0, dlen = 0, slen = 0;
    bool enabled = true, h2c = false;
    if (sb_json_only(body, fields, why, whylen) ||
        sb_json_get_bool(body, "h2c", &h2c, why, whylen) ||
        sb_json_get_string(body, "signature_scheme", &scheme, &slen, 8, why, whylen) ||
        sb_json_get_string(body, "url", &url, &ulen, 2048, why, whylen) ||
        sb_json_get_string(body, "description", &desc, &dlen, DESCRIPTION_MAX, why, whylen) ||
        sb_json_get_bool(body, "enabled", &enabled, why, whylen))
        return false;
    if (create && !url) {
        snprintf(why, whylen, "url is required");
        return false;
    }
    if (scheme && !create) {
        snprintf(why, whylen,
                 "signature_scheme cannot be changed: receivers verify with the key they were "
                 "given; create a new endpoint");
        return false;
    }
    if (scheme && strcmp(scheme, "v1") != 0 && strcmp(scheme, "v1a") != 0) {
        snprintf(why, whylen, "signature_scheme must be \"v1\" (HMAC-SHA256) or \"v1a\" (Ed25519)");
        return false;
    }
    j->v1a = scheme && strcmp(scheme, "v1a") == 0;
    if (url) {
        bool http = cfg->webhooks_allow_http || sb_webhooks_private_allowed(cfg);
        if (!sb_webhook_url_ok(url, http, why, whylen))
            return false;
        j->url = sb_arena_strndup(&req->arena, url, ulen);
    }
    const json_t *ev = json_object_get(body, "events");
    if (ev && !json_is_null(ev)) {
        if (!json_is_array(ev) || json_array_size(ev) > EVENTS_MAX) {
            snprintf(why, whylen, "events must be an array of at most %d event types", EVENTS_MAX);
            return false;
        }
        size_t i;
        const json_t *v;
        json_array_foreach(ev, i, v)
        {
            if (!json_is_string(v) || !known_type(json_string_value(v))) {
                snprintf(why, whylen, "events[%zu] is not a known event type", i);
                return false;
            }
        }
        char *t = json_dumps(ev, JSON_COMPACT);
        j->events = t ? sb_arena_strndup(&req->arena, t, strlen(t)) : NULL;
        free(t);
    } else if (create) {
        j->events = sb_arena_strndup(&req->arena, "[]", 2);
    }
    if (json_object_get(body, "description")) {
        j->has_description = true;
        j->description = desc ? sb_arena_strndup(&req->arena, desc, dlen) : NULL;
    }
    if (json_object_get(body, "enabled") && !json_is_null(json_object_get(body, "enabled")))
        j->enabled = enabled;
    else if (create)
        j->enabled = 1;
    if (json_object_get(body, "h2c") && !json_is_null(json_object_get(body, "h2c")))
        j->h2c = h2c;
    else if (create)
        j->h2c = 0;
    return true;
}

/* ---- the job of a webhooks:write request ----------------------------------------------- */

/* Authenticates webhooks:write; when body is not NULL parses the JSON body into *body (an
 * empty body as {} when empty_ok); then makes the job. Answers every error itself and returns
 * NULL, holding nothing; otherwise the caller owns *body. */
static wh_job *write_job(sb_app *app, sb_req *req, json_t **body, bool empty_ok)
{
    sb_auth who;
    if (!sb_app_auth(app, req, SB_SCOPE_WEBHOOKS_WRITE, &who))
        return NULL;
    if (body) {
        *body = empty_ok && !req->body.len ? json_object() : sb_app_body(req);
        if (!*body)
            return NULL;
    }
    wh_job *j = job_new(app, req, &who);
    if (!j && body) {
        json_decref(*body);
        *body = NULL;
    }
    return j;
}

/* write_job for the webhook named by the path's {id}; an id that cannot be one answers 404. */
static wh_job *path_job(sb_app *app, sb_req *req)
{
    wh_job *j = write_job(app, req, NULL, false);
    if (j && !take_id(req, 0, j->id)) {
        not_found(req);
        return NULL;
    }
    return j;
}

/* write_job with the body's {url, events, description, enabled} (parse_fields); a body that
 * does not pass answers 400. */
static wh_job *fields_job(sb_app *app, sb_req *req, bool create)
{
    char why[256] = "";
    json_t *body;
    wh_job *j = write_job(app, req, &body, false);
    if (!j)
        return NULL;
    bool ok = parse_fields(app, req, body, j, create, why, sizeof why);
    json_decref(body);
    if (!ok) {
        sb_resp_problem(req, 400, "invalid-request", why);
        return NULL;
    }
    return j;
}

/* ---- POST /v1/webhooks ------------------------------------------------------------------ */

static int create_run(sqlite3 *db, void *arg)
{
    wh_job *j = arg;
    sqlite3_stmt *st = sb_store_stmt(db, "SELECT COUNT(*) FROM webhooks WHERE project_id = ?1");
    if (!st)
        return SB_EIO;
    sqlite3_bind_text(st, 1, j->who.project_id, -1, SQLITE_STATIC);
    int n = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int(st, 0) : -1;
    sqlite3_reset(st);
    if (n < 0)
        return SB_EIO;
    if (n >= SB_WEBHOOKS_MAX_PER_PROJECT)
        return RC_LIMIT;
    st = webhook_stmt(
        db, j,
        "INSERT INTO webhooks (id, project_id, url, events, description, enabled, secret, "
        "cursor_seq, created_at, updated_at, h2c, signature_scheme, public_key) VALUES (?1, ?2, "
        "?3, ?4, ?5, ?6, ?7, COALESCE((SELECT next_seq - 1 FROM event_counters WHERE "
        "project_id = ?2), 0), ?8, ?8, ?9, ?10, ?11)");
    if (!st)
        return SB_EIO;
    sqlite3_bind_text(st, 3, j->url, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, j->events, -1, SQLITE_STATIC);
    if (j->description)
        sqlite3_bind_text(st, 5, j->description, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 6, j->enabled ? 1 : 0);
    sqlite3_bind_int(st, 9, j->h2c > 0 ? 1 : 0);
    sqlite3_bind_text(st, 10, j->v1a ? "v1a" : "v1", -1, SQLITE_STATIC);
    if (j->v1a)
        sqlite3_bind_text(st, 11, j->public_key, -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 7, j->sealed.base, (int)j->sealed.len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 8, j->now);
    int rc = step_done(st);
    rc =
        rc ? rc : sb_app_audit(db, &j->who, j->req->request_id, "webhook.create", "webhook", j->id);
    rc = rc ? rc : read_back(db, j);
    return rc;
}

/* How a job's result is answered (a static per route): success as status with j->result
 * (and the secret when a v1 one was made: a v1a signing key is never shown, its public key is
 * in the endpoint; 204 without a body), SB_ENOENT as 404 missing, conflict_rc
 * (RC_LIMIT or RC_CONFLICT; 0 for none) as 409 conflict/detail, another error as 500 logged
 * as what. */
typedef struct wh_answer {
    int status;
    const char *what, *missing;
    int conflict_rc;
    const char *conflict, *detail;
} wh_answer;

/* Shared completion of every job: answers rc as a says, then frees what the job holds. */
static void answer(wh_job *j, int rc, const wh_answer *a)
{
    if (rc == SB_ENOENT) {
        sb_resp_problem(j->req, 404, "not-found", a->missing);
    } else if (a->conflict_rc && rc == a->conflict_rc) {
        sb_resp_problem(j->req, 409, a->conflict, a->detail);
    } else if (rc < 0) {
        sb_app_internal_error(j->req, a->what, rc);
    } else {
        sb_webhooks_changed(sb_app_webhooks(j->app));
        if (j->secret[0] && !j->v1a)
            json_object_set_new(j->result, "secret", json_string(j->secret));
        if (j->secret[0])
            sb_resp_header(j->req, "Cache-Control", SB_STR_LIT("no-store"));
        if (a->status == 204) {
            sb_resp_send(j->req, 204, NULL, NULL, 0);
        } else {
            sb_app_send_json(j->req, a->status, j->result);
            j->result = NULL;
        }
    }
    json_decref(j->result);
    wipe(j);
}

static void create_done(void *arg, int rc)
{
    static const wh_answer a = {.status = 201,
                                .what = "creating a webhook",
                                .missing = NO_WEBHOOK,
                                .conflict_rc = RC_LIMIT,
                                .conflict = "limit-reached",
                                .detail = "this project has the most webhooks allowed"};
    answer(arg, rc, &a);
}

static void webhooks_create(sb_req *req, void *ud)
{
    sb_app *app = ud;
    wh_job *j = fields_job(app, req, true);
    if (!j)
        return;
    if (!j->url || !j->events || sb_id_new("wh", j->id) != 0 || make_secret(j) != 0) {
        wipe(j);
        sb_app_internal_error(req, "creating a webhook", SB_ENOMEM);
        return;
    }
    if (!sb_app_submit(app, req, create_run, create_done, j))
        wipe(j);
}

/* ---- GET /v1/webhooks, GET /v1/webhooks/{id} --------------------------------------------- */

static void webhooks_list(sb_req *req, void *ud)
{
    sb_app_list_project(ud, req, SB_SCOPE_WEBHOOKS_READ,
                        "SELECT " WH_COLS
                        " FROM webhooks WHERE project_id = ?1 AND (?2 = 0 OR created_at > ?3 OR "
                        "(created_at = ?3 AND id > ?4)) ORDER BY created_at, id LIMIT ?5",
                        sb_webhooks_endpoint_json, 6, 0, "listing webhooks");
}

/* Whether webhook id exists in the caller's project (reader). -1 on error. */
static int owned(sb_app *app, sb_req *req, const sb_auth *who, const char *id)
{
    return webhook_exists(sb_app_reader(app, req), id, who->project_id);
}

static void webhooks_get(sb_req *req, void *ud)
{
    sb_app *app = ud;
    sb_auth who;
    char id[SB_ID_MAX];
    if (!sb_app_auth(app, req, SB_SCOPE_WEBHOOKS_READ, &who))
        return;
    if (!take_id(req, 0, id)) {
        not_found(req);
        return;
    }
    sqlite3_stmt *st =
        sb_store_stmt(sb_app_reader(app, req),
                      "SELECT " WH_COLS " FROM webhooks WHERE id = ?1 AND project_id = ?2");
    if (!st) {
        sb_app_internal_error(req, "reading a webhook", SB_EIO);
        return;
    }
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, who.project_id, -1, SQLITE_STATIC);
    json_t *w = sqlite3_step(st) == SQLITE_ROW ? sb_webhooks_endpoint_json(st) : NULL;
    sqlite3_reset(st);
    if (!w) {
        not_found(req);
        return;
    }
    sb_app_send_json(req, 200, w);
}

/* ---- PATCH /v1/webhooks/{id} ------------------------------------------------------------- */

static int update_run(sqlite3 *db, void *arg)
{
    wh_job *j = arg;
    /* Re-enabling starts from the project's newest event: what happened while disabled is
     * not sent (replay dead letters for what failed before). */
    sqlite3_stmt *st = webhook_stmt(
        db, j,
        "UPDATE webhooks SET url = COALESCE(?3, url), events = COALESCE(?4, events), "
        "description = CASE WHEN ?5 THEN ?6 ELSE description END, "
        "cursor_seq = CASE WHEN ?7 = 1 AND enabled = 0 THEN COALESCE((SELECT next_seq - 1 "
        "FROM event_counters WHERE project_id = ?2), 0) ELSE cursor_seq END, "
        "disabled_reason = CASE WHEN ?7 = 1 THEN NULL WHEN ?7 = 0 AND enabled = 1 THEN "
        "'manual' ELSE disabled_reason END, "
        "enabled = CASE WHEN ?7 >= 0 THEN ?7 ELSE enabled END, h2c = CASE WHEN ?9 >= 0 THEN ?9 "
        "ELSE h2c END, updated_at = MAX(?8, updated_at + 1) WHERE id = ?1 AND project_id = ?2");
    if (!st)
        return SB_EIO;
    if (j->url)
        sqlite3_bind_text(st, 3, j->url, -1, SQLITE_STATIC);
    if (j->events)
        sqlite3_bind_text(st, 4, j->events, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 5, j->has_description);
    if (j->description)
        sqlite3_bind_text(st, 6, j->description, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 7, j->enabled);
    sqlite3_bind_int64(st, 8, j->now);
    sqlite3_bind_int(st, 9, j->h2c);
    int rc = step_audit(db, j, st, "webhook.update");
    return rc ? rc : read_back(db, j);
}

static void update_done(void *arg, int rc)
{
    static const wh_answer a = {.status = 200, .what = "updating a webhook", .missing = NO_WEBHOOK};
    answer(arg, rc, &a);
}

static void webhooks_update(sb_req *req, void *ud)
{
    sb_app *app = ud;
    wh_job *j = fields_job(app, req, false);
    if (!j)
        return;
    if (!take_id(req, 0, j->id)) {
        not_found(req);
        return;
    }
    sb_app_submit(app, req, update_run, update_done, j);
}

/* ---- DELETE /v1/webhooks/{id} ------------------------------------------------------------ */

static int delete_run(sqlite3 *db, void *arg)
{
    wh_job *j = arg;
    sqlite3_stmt *st =
        webhook_stmt(db, j, "DELETE FROM webhooks WHERE id = ?1 AND project_id = ?2");
    if (!st)
        return SB_EIO;
    int rc = step_done(st);
    if (rc)
        return rc;
    if (sqlite3_changes(db) == 0)
        return SB_ENOENT;
    /* its deliveries go with it: attempts first (they are found through the rows) */
    static const char attempts[] = "DELETE FROM webhook_attempts WHERE delivery_id IN (SELECT id "
                                   "FROM webhook_deliveries WHERE webhook_id = ?1)";
    static const char *const cleanup[] = {
        attempts,
        "DELETE FROM webhook_deliveries WHERE webhook_id = ?1",
        "DELETE FROM webhook_delivered WHERE webhook_id = ?1",
    };
    for (size_t i = 0; i < sizeof cleanup / sizeof cleanup[0]; i++) {
        st = sb_store_stmt(db, cleanup[i]);
        if (!st)
            return SB_EIO;
        sqlite3_bind_text(st, 1, j->id, -1, SQLITE_STATIC);
        if ((rc = step_done(st)) != 0)
            return rc;
    }
    return sb_app_audit(db, &j->who, j->req->request_id, "webhook.delete", "webhook", j->id);
}

static void delete_done(void *arg, int rc)
{
    static const wh_answer a = {.status = 204, .what = "deleting a webhook", .missing = NO_WEBHOOK};
    answer(arg, rc, &a);
}

static void webhooks_delete(sb_req *req, void *ud)
{
    wh_job *j = path_job(ud, req);
    if (j)
        sb_app_submit(ud, req, delete_run, delete_done, j);
}

/* ---- POST /v1/webhooks/{id}/rotate-secret ------------------------------------------------- */

static int rotate_run(sqlite3 *db, void *arg)
{
    wh_job *j = arg;
    sqlite3_stmt *st =
        webhook_stmt(db, j,
                     "UPDATE webhooks SET old_secret = CASE WHEN ?4 > 0 THEN secret END, "
                     "old_secret_until = CASE WHEN ?4 > 0 THEN ?5 + ?4 END, secret = ?3, "
                     "public_key = ?7, updated_at = MAX(?5, updated_at + 1) WHERE id = ?1 AND "
                     "project_id = ?2 AND signature_scheme = ?6");
    if (!st)
        return SB_EIO;
    /* the scheme the key was made for (read before; it never changes) */
    sqlite3_bind_text(st, 6, j->v1a ? "v1a" : "v1", -1, SQLITE_STATIC);
    if (j->v1a)
        sqlite3_bind_text(st, 7, j->public_key, -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 3, j->sealed.base, (int)j->sealed.len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, j->overlap_ms);
    sqlite3_bind_int64(st, 5, j->now);
    int rc = step_audit(db, j, st, "webhook.rotate_secret");
    rc = rc ? rc : read_back(db, j);
    if (!rc) {
        char t[32];
        sb_time_rfc3339(j->now + j->overlap_ms, t);
        json_object_set_new(j->result, "previous_secret_expires_at",
                            j->overlap_ms > 0 ? json_string(t) : json_null());
    }
    return rc;
}

static void rotate_done(void *arg, int rc)
{
    static const wh_answer a = {
        .status = 200, .what = "rotating a webhook secret", .missing = NO_WEBHOOK};
    answer(arg, rc, &a);
}

static void webhooks_rotate(sb_req *req, void *ud)
{
    sb_app *app = ud;
    wh_job *j = path_job(app, req);
    if (!j)
        return;
    j->overlap_ms = sb_app_config(app)->webhooks_rotation_overlap_ms;
    /* the new key is of the endpoint's scheme */
    sqlite3_stmt *st = sb_store_stmt(sb_app_reader(app, req),
                                     "SELECT signature_scheme FROM webhooks WHERE id = ?1 AND "
                                     "project_id = ?2");
    int s = SQLITE_ERROR;
    if (st) {
        sqlite3_bind_text(st, 1, j->id, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, j->who.project_id, -1, SQLITE_STATIC);
        s = sqlite3_step(st);
        if (s == SQLITE_ROW)
            j->v1a = strcmp((const char *)sqlite3_column_text(st, 0), "v1a") == 0;
        sqlite3_reset(st);
    }
    if (s == SQLITE_DONE) {
        wipe(j);
        not_found(req);
        return;
    }
    if (s != SQLITE_ROW) {
        wipe(j);
        sb_app_internal_error(req, "rotating a webhook secret", SB_EIO);
        return;
    }
    if (make_secret(j) != 0) {
        wipe(j);
        sb_app_internal_error(req, "rotating a webhook secret", SB_ENOMEM);
        return;
    }
    if (!sb_app_submit(app, req, rotate_run, rotate_done, j))
        wipe(j);
}

/* ---- the delivery object ------------------------------------------------------------------ */

/* A delivered-log entry (migration 8) as the columns of DLV_COLS: its id, and its event's
 * id, type and room from the outbox (empty when the event has left it). Ends in a WHERE
 * clause selecting endpoint ?1. */
#define LOG_COLS                                                                                   \
    SB__DELIVERY_ID("w.rowid", "l.event_seq")                                                      \
    ", l.webhook_id, COALESCE(e.id, ''), COALESCE(e.type, ''), e.room_name, 'delivered', 1, "      \
    "l.at, l.status, NULL, l.at, l.event_seq, l.at, l.duration_ms FROM webhook_delivered l JOIN "  \
    "webhooks w ON w.id = l.webhook_id LEFT JOIN events e ON e.project_id = w.project_id AND "     \
    "e.seq = l.event_seq WHERE l.webhook_id = ?1"

#define DLV_COLS                                                                                   \
    "d.id, d.webhook_id, d.event_id, d.event_type, d.room_name, d.state, d.attempts, d.next_at, "  \
    "d.last_status, d.last_error, d.created_at, d.event_seq, d.last_attempt_at, "                  \
    "d.last_duration_ms"

static json_t *text_or_null(sqlite3_stmt *st, int col)
{
    return sqlite3_column_type(st, col) == SQLITE_NULL
               ? json_null()
               : json_string((const char *)sqlite3_column_text(st, col));
}

static json_t *attempts_json(sqlite3 *db, sqlite3_stmt *d);

/* A row of DLV_COLS as {id, endpoint_id, event_id, event_type, room, status, attempts,
 * created_at, last_attempt_at, next_attempt_at, last_response_status, last_error,
 * attempt_log} (attempt_log only when db is not NULL). */
static json_t *delivery_json(sqlite3 *db, sqlite3_stmt *st)
{
    const char *id = (const char *)sqlite3_column_text(st, 0);
    const char *state = (const char *)sqlite3_column_text(st, 5);
    bool pending = strcmp(state, "pending") == 0;
    json_t *o = json_pack(
        "{s:s,s:s,s:s,s:s,s:o,s:s,s:i,s:o,s:o,s:o,s:o,s:o}", "id", id, "endpoint_id",
        sqlite3_column_text(st, 1), "event_id", sqlite3_column_text(st, 2), "event_type",
        sqlite3_column_text(st, 3), "room", text_or_null(st, 4), "status", state, "attempts",
        sqlite3_column_int(st, 6), "created_at", sb_app_time_or_null(st, 10), "last_attempt_at",
        sb_app_time_or_null(st, 12), "next_attempt_at",
        pending ? sb_app_time_or_null(st, 7) : json_null(), "last_response_status",
        sqlite3_column_type(st, 8) == SQLITE_NULL ? json_null()
                                                  : json_integer(sqlite3_column_int(st, 8)),
        "last_error", text_or_null(st, 9));
    if (o && db) {
        json_t *log = attempts_json(db, st);
        if (!log || json_object_set_new(o, "attempt_log", log) != 0) {
            json_decref(o);
            return NULL;
        }
    }
    return o;
}

/* Reads one delivery of webhook_id by id into *out (inside a job). */
static int delivery_read(sqlite3 *db, const char *webhook_id, const char *id, json_t **out)
{
    int64_t seq;
    if (!sb_webhooks_delivery_seq(id, &seq))
        return SB_ENOENT;
    sqlite3_stmt *st = sb_store_stmt(db, "SELECT " DLV_COLS " FROM webhook_deliveries d WHERE "
                                         "d.webhook_id = ?2 AND d.event_seq = ?3 AND d.id = ?1");
    if (!st)
        return SB_EIO;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, webhook_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, seq);
    int rc = sqlite3_step(st);
    *out = rc == SQLITE_ROW ? delivery_json(NULL, st) : NULL;
    sqlite3_reset(st);
    return rc == SQLITE_ROW && *out ? 0 : rc == SQLITE_DONE ? SB_ENOENT : SB_EIO;
}

/* ---- POST /v1/webhooks/{id}/test ------------------------------------------------------- */

static int test_run(sqlite3 *db, void *arg)
{
    wh_job *j = arg;
    sqlite3_stmt *st =
        webhook_stmt(db, j, "SELECT enabled FROM webhooks WHERE id = ?1 AND project_id = ?2");
    if (!st)
        return SB_EIO;
    int s = sqlite3_step(st);
    int enabled = s == SQLITE_ROW ? sqlite3_column_int(st, 0) : -1;
    sqlite3_reset(st);
    if (s != SQLITE_ROW && s != SQLITE_DONE)
        return SB_EIO;
    if (enabled < 0)
        return SB_ENOENT;
    if (!enabled)
        return RC_CONFLICT;
    json_t *data = json_pack("{s:s,s:s}", "endpoint_id", j->id, "message",
                             "This is a test event from Switchboard.");
    int rc = data ? sb_event_emit(db, j->who.project_id, "webhook.test", NULL, data, j->event_id)
                  : SB_ENOMEM;
    rc = rc ? rc
            : sb_webhooks_enqueue_event(db, j->id, j->who.project_id, j->event_id, j->delivery_id);
    rc = rc ? rc : sb_app_audit(db, &j->who, j->req->request_id, "webhook.test", "webhook", j->id);
    rc = rc ? rc : delivery_read(db, j->id, j->delivery_id, &j->result);
    return rc;
}

static void test_done(void *arg, int rc)
{
    static const wh_answer a = {.status = 202,
                                .what = "sending a test event",
                                .missing = NO_WEBHOOK,
                                .conflict_rc = RC_CONFLICT,
                                .conflict = "webhook-disabled",
                                .detail = "the webhook is disabled; enable it first"};
    answer(arg, rc, &a);
}

static void webhooks_test(sb_req *req, void *ud)
{
    wh_job *j = path_job(ud, req);
    if (j)
        sb_app_submit(ud, req, test_run, test_done, j);
}

/* ---- GET /v1/webhooks/{id}/deliveries ------------------------------------------------------ */

/* The attempt log of the delivery row d (DLV_COLS): its failed attempts (the newest
 * ATTEMPTS_SHOWN) from webhook_attempts, then the successful one from the row itself. */
static json_t *attempts_json(sqlite3 *db, sqlite3_stmt *d)
{
    sqlite3_stmt *st = sb_store_stmt(
        db, "SELECT attempt, at, status, duration_ms, outcome, error FROM (SELECT * FROM "
            "webhook_attempts WHERE delivery_id = ?1 ORDER BY attempt DESC LIMIT ?2) ORDER BY "
            "attempt");
    json_t *a = json_array();
    if (!st || !a) {
        json_decref(a);
        return NULL;
    }
    sqlite3_bind_text(st, 1, (const char *)sqlite3_column_text(d, 0), -1, SQLITE_TRANSIENT);
    sqlite3_bind_int(st, 2, ATTEMPTS_SHOWN);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        json_t *o = json_pack("{s:i,s:o,s:o,s:I,s:s,s:o}", "attempt", sqlite3_column_int(st, 0),
                              "at", sb_app_time_or_null(st, 1), "status",
                              sqlite3_column_type(st, 2) == SQLITE_NULL
                                  ? json_null()
                                  : json_integer(sqlite3_column_int(st, 2)),
                              "duration_ms", (json_int_t)sqlite3_column_int64(st, 3), "outcome",
                              sqlite3_column_text(st, 4), "error", text_or_null(st, 5));
        if (!o || json_array_append_new(a, o) != 0) {
            rc = SQLITE_NOMEM;
            break;
        }
    }
    sqlite3_reset(st);
    if (rc == SQLITE_DONE && strcmp((const char *)sqlite3_column_text(d, 5), "delivered") == 0 &&
        sqlite3_column_type(d, 12) != SQLITE_NULL) {
        json_t *o = json_pack("{s:i,s:o,s:o,s:I,s:s,s:n}", "attempt", sqlite3_column_int(d, 6),
                              "at", sb_app_time_or_null(d, 12), "status",
                              sqlite3_column_type(d, 8) == SQLITE_NULL
                                  ? json_null()
                                  : json_integer(sqlite3_column_int(d, 8)),
                              "duration_ms", (json_int_t)sqlite3_column_int64(d, 13), "outcome",
                              "delivered", "error");
        if (!o || json_array_append_new(a, o) != 0)
            rc = SQLITE_NOMEM;
    }
    if (rc != SQLITE_DONE) {
        json_decref(a);
        return NULL;
    }
    return a;
}

static void deliveries_list(sb_req *req, void *ud)
{
    sb_app *app = ud;
    sb_auth who;
    sb_page pg;
    char id[SB_ID_MAX];
    sb_str status = SB_STR_NULL;
    if (!sb_app_auth(app, req, SB_SCOPE_WEBHOOKS_READ, &who) || !sb_app_page(req, &pg))
        return;
    if (sb_req_query(req, "status", &status) && !sb_str_eq_lit(status, "pending") &&
        !sb_str_eq_lit(status, "delivered") && !sb_str_eq_lit(status, "dead")) {
        sb_resp_problem(req, 400, "invalid-parameter", "status must be pending, delivered or dead");
        return;
    }
    int own = take_id(req, 0, id) ? owned(app, req, &who, id) : 0;
    if (own <= 0) {
        if (own < 0)
            sb_app_internal_error(req, "listing deliveries", SB_EIO);
        else
            not_found(req);
        return;
    }
    sqlite3 *db = sb_app_reader(app, req);
    /* webhook_deliveries and the delivered log (migration 8) hold each (endpoint, event) once
     * between them, so event_seq orders the union alone: both sides come from their index in
     * that order and are merged (no sort), the page cursor being the last seq. */
    sqlite3_stmt *st = sb_store_stmt(
        db, "SELECT " DLV_COLS " FROM webhook_deliveries d WHERE d.webhook_id = ?1 AND (?6 IS "
            "NULL OR d.state = ?6) AND (?2 = 0 OR d.event_seq > ?3) UNION ALL SELECT " LOG_COLS
            " AND (?6 IS NULL OR ?6 = 'delivered') AND (?2 = 0 OR l.event_seq > ?3) ORDER BY 12 "
            "LIMIT ?5");
    if (!st) {
        sb_app_internal_error(req, "listing deliveries", SB_EIO);
        return;
    }
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    sb_app_bind_page(st, &pg);
    if (status.base)
        sqlite3_bind_text(st, 6, status.base, (int)status.len, SQLITE_STATIC);
    json_t *data = json_array();
    int n = 0, rc = SQLITE_NOMEM;
    bool more = false;
    int64_t last_seq = 0;
    char last_id[SB_ID_MAX] = "";
    while (data && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == pg.limit) {
            more = true;
            break;
        }
        json_t *o = delivery_json(db, st);
        if (!o || json_array_append_new(data, o) != 0) {
            rc = SQLITE_NOMEM;
            break;
        }
        last_seq = sqlite3_column_int64(st, 11);
        snprintf(last_id, sizeof last_id, "%s", sqlite3_column_text(st, 0));
        n++;
    }
    sqlite3_reset(st);
    if (!data || (rc != SQLITE_ROW && rc != SQLITE_DONE)) {
        json_decref(data);
        sb_app_internal_error(req, "listing deliveries", SB_EIO);
        return;
    }
    json_t *resp = json_pack("{s:o}", "data", data);
    if (resp && sb_app_page_next(resp, more, last_seq, last_id) != 0) {
        json_decref(resp);
        resp = NULL;
    }
    sb_app_send_json(req, 200, resp);
}

/* ---- POST …/deliveries/{delivery_id}/retry and …/deliveries/retry ------------------------ */

static int retry_one_run(sqlite3 *db, void *arg)
{
    wh_job *j = arg;
    int64_t seq;
    if (!sb_webhooks_delivery_seq(j->delivery_id, &seq))
        return SB_ENOENT;
    /* its state, from webhook_deliveries or the delivered log (delivered at once) */
    sqlite3_stmt *st = sb_store_stmt(
        db, "SELECT d.state FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id "
            "WHERE d.webhook_id = ?2 AND d.event_seq = ?4 AND d.id = ?1 AND w.project_id = ?3 "
            "UNION ALL SELECT 'delivered' FROM webhook_delivered l JOIN webhooks w ON w.id = "
            "l.webhook_id WHERE l.webhook_id = ?2 AND l.event_seq = ?4 AND w.project_id = ?3 "
            "AND " SB__DELIVERY_ID("w.rowid", "l.event_seq") " = ?1");
    if (!st)
        return SB_EIO;
    sqlite3_bind_text(st, 1, j->delivery_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, j->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, j->who.project_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, seq);
    int s = sqlite3_step(st);
    bool dead = s == SQLITE_ROW && strcmp((const char *)sqlite3_column_text(st, 0), "dead") == 0;
    sqlite3_reset(st);
    if (s == SQLITE_DONE)
        return SB_ENOENT;
    if (s != SQLITE_ROW)
        return SB_EIO;
    if (!dead)
        return RC_CONFLICT;
    /* Back in its room's order: blocked behind the room's pending head, if there is one. */
    st = sb_store_stmt(db, "UPDATE webhook_deliveries SET state = 'pending', round_attempts = 0, "
                           "blocked = room_name IS NOT NULL, next_at = ?2, updated_at = ?2 WHERE "
                           "webhook_id = ?3 AND event_seq = ?4 AND id = ?1 RETURNING room_name");
    if (!st)
        return SB_EIO;
    sqlite3_bind_text(st, 1, j->delivery_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, j->now);
    sqlite3_bind_text(st, 3, j->id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, seq);
    char room[SB_WEBHOOKS_ROOM_MAX + 1] = "";
    s = sqlite3_step(st);
    if (s == SQLITE_ROW) {
        if (sqlite3_column_type(st, 0) != SQLITE_NULL)
            snprintf(room, sizeof room, "%s", sqlite3_column_text(st, 0));
        s = sqlite3_step(st);
    }
    sqlite3_reset(st);
    int rc = sb_store_errno(s);
    rc = rc || !room[0] ? rc : sb_webhooks_unblock_room(db, j->id, room);
    rc = rc ? rc
            : sb_app_audit(db, &j->who, j->req->request_id, "webhook.delivery_retry",
                           "webhook_delivery", j->delivery_id);
    return rc ? rc : delivery_read(db, j->id, j->delivery_id, &j->result);
}

#define NO_DELIVERY "no such delivery of this webhook"

static void retry_one_done(void *arg, int rc)
{
    static const wh_answer a = {
        .status = 202,
        .what = "replaying a delivery",
        .missing = NO_DELIVERY,
        .conflict_rc = RC_CONFLICT,
        .conflict = "not-dead",
        .detail = "only a dead delivery can be replayed; this one is pending or delivered"};
    answer(arg, rc, &a);
}

static void delivery_retry(sb_req *req, void *ud)
{
    sb_app *app = ud;
    wh_job *j = write_job(app, req, NULL, false);
    if (!j)
        return;
    if (!take_id(req, 0, j->id) || !take_id(req, 1, j->delivery_id)) {
        sb_resp_problem(req, 404, "not-found", NO_DELIVERY);
        return;
    }
    sb_app_submit(app, req, retry_one_run, retry_one_done, j);
}

static int retry_bulk_run(sqlite3 *db, void *arg)
{
    wh_job *j = arg;
    int own = webhook_exists(db, j->id, j->who.project_id);
    if (own <= 0)
        return own < 0 ? SB_EIO : SB_ENOENT;
    sqlite3_stmt *st = sb_store_stmt(
        db, "UPDATE webhook_deliveries SET state = 'pending', round_attempts = 0, next_at = ?2, "
            "blocked = room_name IS NOT NULL, updated_at = ?2 WHERE id IN (SELECT id FROM "
            "webhook_deliveries WHERE webhook_id = ?1 "
            "AND state = 'dead' AND (?3 IS NULL OR event_type = ?3) AND (?4 = 0 OR created_at >= "
            "?4) AND (?5 = 0 OR created_at < ?5) ORDER BY event_seq LIMIT ?6)");
    if (!st)
        return SB_EIO;
    sqlite3_bind_text(st, 1, j->id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, j->now);
    if (j->event_type)
        sqlite3_bind_text(st, 3, j->event_type, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, j->since);
    sqlite3_bind_int64(st, 5, j->until);
    sqlite3_bind_int(st, 6, j->limit);
    int rc = step_done(st);
    if (rc)
        return rc;
    j->count = sqlite3_changes(db);
    rc = sb_webhooks_unblock_all(db, j->id);
    rc = rc ? rc
            : sb_app_audit(db, &j->who, j->req->request_id, "webhook.delivery_retry_bulk",
                           "webhook", j->id);
    return rc;
}

static void retry_bulk_done(void *arg, int rc)
{
    static const wh_answer a = {
        .status = 202, .what = "replaying deliveries", .missing = NO_WEBHOOK};
    wh_job *j = arg;
    if (rc >= 0)
        j->result = json_pack("{s:i}", "replayed", j->count);
    answer(j, rc, &a);
}

static void deliveries_retry(sb_req *req, void *ud)
{
    sb_app *app = ud;
    char why[256] = "";
    json_t *body;
    wh_job *j = write_job(app, req, &body, true);
    if (!j)
        return;
    static const char *const fields[] = {"state", "event_type", "since", "until", "limit", NULL};
    const char *state = NULL, *type = NULL, *since = NULL, *until = NULL;
    int64_t limit = BULK_RETRY_DEF;
    if (sb_json_only(body, fields, why, sizeof why) ||
        sb_json_get_string(body, "state", &state, NULL, 16, why, sizeof why) ||
        sb_json_get_string(body, "event_type", &type, NULL, 64, why, sizeof why) ||
        sb_json_get_string(body, "since", &since, NULL, 64, why, sizeof why) ||
        sb_json_get_string(body, "until", &until, NULL, 64, why, sizeof why) ||
        sb_json_get_int(body, "limit", &limit, 1, BULK_RETRY_MAX, why, sizeof why))
        goto invalid;
    if (state && strcmp(state, "dead") != 0) {
        snprintf(why, sizeof why, "state must be \"dead\" (only dead letters are replayed)");
        goto invalid;
    }
    if (type && !known_type(type)) {
        snprintf(why, sizeof why, "event_type is not a known event type");
        goto invalid;
    }
    if ((since && sb_time_parse_rfc3339(since, &j->since) != 0) ||
        (until && sb_time_parse_rfc3339(until, &j->until) != 0)) {
        snprintf(why, sizeof why, "since and until must be RFC 3339 times");
        goto invalid;
    }
    j->event_type = type ? sb_arena_strndup(&req->arena, type, strlen(type)) : NULL;
    j->limit = (int)limit;
    json_decref(body);
    if (!take_id(req, 0, j->id)) {
        not_found(req);
        return;
    }
    sb_app_submit(app, req, retry_bulk_run, retry_bulk_done, j);
    return;
invalid:
    json_decref(body);
    sb_resp_problem(req, 400, "invalid-request", why);
}

/* ---- registration -------------------------------------------------------------------------- */

int sb_api_webhooks_register(sb_app *app, sb_router *r)
{
    int rc = sb_router_add(r, "POST", "/v1/webhooks", webhooks_create, app);
    rc = rc ? rc : sb_router_add(r, "GET", "/v1/webhooks", webhooks_list, app);
    rc = rc ? rc : sb_router_add(r, "GET", "/v1/webhooks/{id}", webhooks_get, app);
    rc = rc ? rc : sb_router_add(r, "PATCH", "/v1/webhooks/{id}", webhooks_update, app);
    rc = rc ? rc : sb_router_add(r, "DELETE", "/v1/webhooks/{id}", webhooks_delete, app);
    rc =
        rc ? rc : sb_router_add(r, "POST", "/v1/webhooks/{id}/rotate-secret", webhooks_rotate, app);
    rc = rc ? rc : sb_router_add(r, "POST", "/v1/webhooks/{id}/test", webhooks_test, app);
    rc = rc ? rc : sb_router_add(r, "GET", "/v1/webhooks/{id}/deliveries", deliveries_list, app);
    rc = rc ? rc
            : sb_router_add(r, "POST", "/v1/webhooks/{id}/deliveries/retry", deliveries_retry, app);
    rc = rc ? rc
            : sb_router_add(r, "POST", "/v1/webhooks/{id}/deliveries/{delivery_id}/retry",
                            delivery_retry, app);
    return rc;
}
