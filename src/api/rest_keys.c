/* Projects (tenants), API keys and the audit log. */
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>

#include "api/app.h"
#include "api/credential.h"
#include "auth/scopes.h"
#include "core/alloc.h"
#include "core/json.h"
#include "switchboard/error.h"

#define NAME_MAX_LEN 256

/* A new key: sbk_<key id>_<43 base64url chars of 32 random bytes>. */
static int new_secret(const char *id, char *out, size_t cap)
{
    char prefix[SB_ID_MAX + 8];
    snprintf(prefix, sizeof prefix, "sbk_%s_", id);
    return sb_credential_new_secret(prefix, out, cap);
}

#define KEY_COLS                                                                                   \
    "id, name, scopes, created_at, expires_at, revoked_at, last_used_at, allowed_ips, "            \
    "rate_limit_rps, rate_limit_burst, tls_client_cert_sha256"

static json_t *key_json(sqlite3_stmt *st)
{
    const char *sc = (const char *)sqlite3_column_text(st, 2);
    uint32_t scopes = 0;
    sb_scopes_parse(sc, strlen(sc), &scopes, NULL, NULL);
    json_t *rl = json_null();
    if (sqlite3_column_type(st, 8) != SQLITE_NULL)
        rl = json_pack("{s:f,s:I}", "requests_per_second", sqlite3_column_double(st, 8), "burst",
                       (json_int_t)sqlite3_column_int64(st, 9));
    json_t *fp = sqlite3_column_type(st, 10) == SQLITE_NULL
                     ? json_null()
                     : json_string((const char *)sqlite3_column_text(st, 10));
    return json_pack(
        "{s:s,s:s,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o}", "id", sqlite3_column_text(st, 0), "name",
        sqlite3_column_text(st, 1), "scopes", sb_scopes_to_json(scopes), "created_at",
        sb_app_time_or_null(st, 3), "expires_at", sb_app_time_or_null(st, 4), "revoked_at",
        sb_app_time_or_null(st, 5), "last_used_at", sb_app_time_or_null(st, 6), "allowed_ips",
        sb_app_json_or_null(st, 7), "rate_limit", rl, "tls_client_certificate_sha256", fp);
}

/* ---- POST /v1/keys ---------------------------------------------------------------- */

typedef struct key_create {
    sb_app *app;
    sb_req *req;
    sb_auth who;
    char id[SB_ID_MAX];
    char *name;
    uint32_t scopes;
    int64_t expires_at;
    char *allowed_ips; /* JSON text or NULL */
    double rps;
    int64_t burst;
    char fingerprint[65]; /* "" = not bound */
    char secret[128];
    json_t *result;
} key_create;

static int key_insert(sqlite3 *db, const char *id, const char *project, const char *name,
                      const unsigned char hash[32], uint32_t scopes, int64_t expires_at,
                      const char *allowed_ips, double rps, int64_t burst, const char *fingerprint)
{
    char sc[256];
    sb_scopes_format(scopes, sc, sizeof sc);
    sqlite3_stmt *st = sb_store_stmt(
        db, "INSERT INTO api_keys (id, project_id, name, secret_hash, scopes, created_at, "
            "expires_at, allowed_ips, rate_limit_rps, rate_limit_burst, tls_client_cert_sha256) "
            "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)");
    if (!st)
        return SB_EIO;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, project, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, name, -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 4, hash, 32, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 5, sc, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 6, sb_time_ms());
    if (expires_at)
        sqlite3_bind_int64(st, 7, expires_at);
    if (allowed_ips)
        sqlite3_bind_text(st, 8, allowed_ips, -1, SQLITE_STATIC);
    if (rps > 0) {
        sqlite3_bind_double(st, 9, rps);
        sqlite3_bind_int64(st, 10, burst);
    }
    if (fingerprint && fingerprint[0])
        sqlite3_bind_text(st, 11, fingerprint, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return sb_store_errno(rc);
}

/* The key hash is computed by the app (it holds the pepper); exposed through a tiny hook so
 * that this file never sees the pepper. */
void sb__app_hash_secret(const sb_app *app, const char *secret, size_t len, unsigned char out[32]);

static int key_create_run(sqlite3 *db, void *arg)
{
    key_create *k = arg;
    unsigned char h[32];
    sb__app_hash_secret(k->app, k->secret, strlen(k->secret), h);
    int rc = key_insert(db, k->id, k->who.project_id, k->name, h, k->scopes, k->expires_at,
                        k->allowed_ips, k->rps, k->burst, k->fingerprint);
    rc = rc ? rc : sb_app_audit(db, &k->who, k->req->request_id, "key.create", "key", k->id);
    rc = rc ? rc
            : sb_credential_read(db, "SELECT " KEY_COLS " FROM api_keys WHERE id = ?1", k->id,
                                 key_json, &k->result);
    return rc;
}

static void key_create_done(void *arg, int rc)
{
    key_create *k = arg;
    sb_credential_created(k->req, rc, k->result, "secret", k->secret, sizeof k->secret,
                          "creating a key");
}

static void keys_create(sb_req *req, void *ud)
{
    sb_app *app = ud;
    sb_auth who;
    if (!sb_app_auth(app, req, SB_SCOPE_KEYS_WRITE, &who))
        return;
    json_t *body = sb_app_body(req);
    if (!body)
        return;
    static const char *const fields[] = {"name",       "scopes",
                                         "expires_at", "allowed_ips",
                                         "rate_limit", "tls_client_certificate_sha256",
                                         NULL};
    char why[256];
    const char *name = NULL, *exp = NULL, *fp = NULL;
    size_t nlen = 0, fplen = 0;
    key_create *k = sb_app_ctx(req, sizeof *k, "allocating");
    if (!k) {
        json_decref(body);
        return;
    }
    if (sb_json_only(body, fields, why, sizeof why) ||
        sb_json_get_string(body, "name", &name, &nlen, NAME_MAX_LEN, why, sizeof why) ||
        sb_json_get_string(body, "expires_at", &exp, NULL, 64, why, sizeof why) ||
        sb_json_get_string(body, "tls_client_certificate_sha256", &fp, &fplen, 128, why,
                           sizeof why))
        goto invalid;
    if (!sb_credential_fingerprint(fp, fplen, k->fingerprint, why, sizeof why))
        goto invalid;
    if (!name || nlen == 0) {
        snprintf(why, sizeof why, "name is required");
        goto invalid;
    }
    if (!sb_credential_scopes(body, &k->scopes, why, sizeof why))
        goto invalid;
    if (exp && (sb_time_parse_rfc3339(exp, &k->expires_at) != 0 || k->expires_at <= sb_time_ms())) {
        snprintf(why, sizeof why, "expires_at must be an RFC 3339 time in the future");
        goto invalid;
    }
    int ips_rc = sb_credential_allowed_ips(req, body, &k->allowed_ips, why, sizeof why);
    if (ips_rc == SB_ENOMEM) {
        json_decref(body);
        sb_app_internal_error(req, "creating a key", ips_rc);
        return;
    }
    if (ips_rc)
        goto invalid;
    const json_t *rl = json_object_get(body, "rate_limit");
    if (rl && !json_is_null(rl)) {
        const json_t *rps = json_object_get(rl, "requests_per_second");
        const json_t *burst = json_object_get(rl, "burst");
        if (!json_is_object(rl) || !json_is_number(rps) || json_number_value(rps) <= 0 ||
            json_number_value(rps) > 1e6 || !json_is_integer(burst) ||
            json_integer_value(burst) < 1 || json_integer_value(burst) > 1000000) {
            snprintf(why, sizeof why,
                     "rate_limit must be {requests_per_second: >0, burst: integer >= 1}");
            goto invalid;
        }
        k->rps = json_number_value(rps);
        k->burst = json_integer_value(burst);
    }
    if ((k->scopes & who.scopes) != k->scopes) {
        json_decref(body);
        sb_resp_problem(req, 403, "scope-escalation",
                        "a key cannot be given scopes that the calling credential lacks");
        return;
    }
    k->app = app;
    k->req = req;
    k->who = who;
    k->name = sb_arena_strndup(&req->arena, name, nlen);
    json_decref(body);
    if (!k->name || sb_id_new("key", k->id) != 0 ||
        new_secret(k->id, k->secret, sizeof k->secret)) {
        sb_app_internal_error(req, "creating a key", SB_ENOMEM);
        return;
    }
    sb_app_submit(app, req, key_create_run, key_create_done, k);
    return;
invalid:
    json_decref(body);
    sb_resp_problem(req, 400, "invalid-request", why);
}

/* ---- GET /v1/keys, GET /v1/keys/{id} ------------------------------------------------ */

static void keys_list(sb_req *req, void *ud)
{
    sb_app_list_project(ud, req, SB_SCOPE_KEYS_READ,
                        "SELECT " KEY_COLS " FROM api_keys WHERE project_id = ?1 AND "
                        "(?2 = 0 OR created_at > ?3 OR (created_at = ?3 AND id > ?4)) "
                        "ORDER BY created_at, id LIMIT ?5",
                        key_json, 3, 0, "listing keys");
}

static void keys_get(sb_req *req, void *ud)
{
    sb_app *app = ud;
    sb_auth who;
    if (!sb_app_auth(app, req, SB_SCOPE_KEYS_READ, &who))
        return;
    sqlite3 *db = sb_app_reader(app, req);
    sqlite3_stmt *st =
        sb_store_stmt(db, "SELECT " KEY_COLS " FROM api_keys WHERE id = ?1 AND project_id = ?2");
    if (!st) {
        sb_app_internal_error(req, "reading a key", SB_EIO);
        return;
    }
    sqlite3_bind_text(st, 1, req->params[0].base, (int)req->params[0].len, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, who.project_id, -1, SQLITE_STATIC);
    json_t *k = sqlite3_step(st) == SQLITE_ROW ? key_json(st) : NULL;
    sqlite3_reset(st);
    if (!k) {
        sb_resp_problem(req, 404, "not-found", "no such key in this project");
        return;
    }
    sb_app_send_json(req, 200, k);
}

/* ---- DELETE /v1/keys/{id} ---------------------------------------------------------- */

static const sb_app_revoke_spec key_revoke = {
    .sql = "UPDATE api_keys SET revoked_at = ?1 WHERE id = ?2 AND project_id = ?3 AND "
           "revoked_at IS NULL",
    .action = "key.revoke",
    .target_type = "key",
    .what = "revoking a key",
    .not_found = "no such active key in this project",
    .committed = sb_app_forget_key,
};

static void keys_delete(sb_req *req, void *ud)
{
    sb_app *app = ud;
    sb_auth who;
    if (!sb_app_auth(app, req, SB_SCOPE_KEYS_WRITE, &who))
        return;
    if (req->params[0].len >= SB_ID_MAX) {
        sb_resp_problem(req, 404, "not-found", key_revoke.not_found);
        return;
    }
    sb_app_revoke_credential(app, req, &who, req->params[0], &key_revoke);
}

/* ---- POST /v1/projects ------------------------------------------------------------- */

typedef struct project_create {
    sb_app *app;
    sb_req *req;
    sb_auth who;
    char id[SB_ID_MAX];
    char key_id[SB_ID_MAX];
    char *name;
    char secret[128];
    int64_t created_at;
} project_create;

static int project_create_run(sqlite3 *db, void *arg)
{
    project_create *p = arg;
    sqlite3_stmt *st =
        sb_store_stmt(db, "INSERT INTO projects (id, name, created_at) VALUES (?1, ?2, ?3)");
    if (!st)
        return SB_EIO;
    sqlite3_bind_text(st, 1, p->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, p->name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, p->created_at);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if ((rc = sb_store_errno(rc)) != 0)
        return rc;
    unsigned char h[32];
    sb__app_hash_secret(p->app, p->secret, strlen(p->secret), h);
    rc = key_insert(db, p->key_id, p->id, "project admin", h, SB_SCOPES_PROJECT, 0, NULL, 0, 0,
                    NULL);
    rc =
        rc ? rc : sb_app_audit(db, &p->who, p->req->request_id, "project.create", "project", p->id);
    return rc;
}

static void project_create_done(void *arg, int rc)
{
    project_create *p = arg;
    if (rc < 0) {
        OPENSSL_cleanse(p->secret, sizeof p->secret);
        sb_app_internal_error(p->req, "creating a project", rc);
        return;
    }
    char t[32];
    sb_time_rfc3339(p->created_at, t);
    json_t *j = json_pack("{s:s,s:s,s:s,s:s}", "id", p->id, "name", p->name, "created_at", t,
                          "admin_key", p->secret);
    OPENSSL_cleanse(p->secret, sizeof p->secret);
    sb_resp_header(p->req, "Cache-Control", SB_STR_LIT("no-store"));
    sb_app_send_json(p->req, 201, j);
}

static void projects_create(sb_req *req, void *ud)
{
    sb_app *app = ud;
    sb_auth who;
    if (!sb_app_auth(app, req, SB_SCOPE_PROJECTS_WRITE, &who))
        return;
    json_t *body = sb_app_body(req);
    if (!body)
        return;
    static const char *const fields[] = {"name", NULL};
    char why[256];
    const char *name = NULL;
    size_t nlen = 0;
    if (sb_json_only(body, fields, why, sizeof why) ||
        sb_json_get_string(body, "name", &name, &nlen, NAME_MAX_LEN, why, sizeof why) || !name ||
        nlen == 0) {
        if (!name && !why[0])
            snprintf(why, sizeof why, "name is required");
        json_decref(body);
        sb_resp_problem(req, 400, "invalid-request", why[0] ? why : "name is required");
        return;
    }
    project_create *p = sb_app_ctx(req, sizeof *p, "creating a project");
    if (!p) {
        json_decref(body);
        return;
    }
    p->app = app;
    p->req = req;
    p->who = who;
    p->created_at = sb_time_ms();
    p->name = sb_arena_strndup(&req->arena, name, nlen);
    json_decref(body);
    if (!p->name || sb_id_new("prj", p->id) || sb_id_new("key", p->key_id) ||
        new_secret(p->key_id, p->secret, sizeof p->secret)) {
        sb_app_internal_error(req, "creating a project", SB_ENOMEM);
        return;
    }
    sb_app_submit(app, req, project_create_run, project_create_done, p);
}

/* ---- GET /v1/audit ----------------------------------------------------------------- */

static json_t *audit_json(sqlite3_stmt *st)
{
    char t[32];
    sb_time_rfc3339(sqlite3_column_int64(st, 1), t);
    return json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:s}", "seq", sqlite3_column_text(st, 0), "at", t,
                     "credential_id", sqlite3_column_text(st, 2), "request_id",
                     sqlite3_column_text(st, 3), "action", sqlite3_column_text(st, 4),
                     "target_type", sqlite3_column_text(st, 5), "target_id",
                     sqlite3_column_text(st, 6));
}

static void audit_list(sb_req *req, void *ud)
{
    sb_app *app = ud;
    sb_auth who;
    sb_page pg;
    if (!sb_app_auth(app, req, SB_SCOPE_KEYS_READ, &who) || !sb_app_page(req, &pg))
        return;
    sqlite3 *db = sb_app_reader(app, req);
    sqlite3_stmt *st = sb_store_stmt(
        db, "SELECT seq, at, credential_id, request_id, action, target_type, target_id "
            "FROM audit_log WHERE project_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3");
    if (!st) {
        sb_app_internal_error(req, "listing the audit log", SB_EIO);
        return;
    }
    sqlite3_bind_text(st, 1, who.project_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, pg.has_cursor ? pg.after_ms : 0);
    sqlite3_bind_int(st, 3, pg.limit + 1);
    sb_app_send_page(req, st, &pg, audit_json, 0, 0, "listing the audit log");
}

int sb_api_keys_register(sb_app *app, sb_router *r)
{
    int rc = sb_router_add(r, "POST", "/v1/projects", projects_create, app);
    rc = rc ? rc : sb_router_add(r, "POST", "/v1/keys", keys_create, app);
    rc = rc ? rc : sb_router_add(r, "GET", "/v1/keys", keys_list, app);
    rc = rc ? rc : sb_router_add(r, "GET", "/v1/keys/{id}", keys_get, app);
    rc = rc ? rc : sb_router_add(r, "DELETE", "/v1/keys/{id}", keys_delete, app);
    rc = rc ? rc : sb_router_add(r, "GET", "/v1/audit", audit_list, app);
    return rc;
}
