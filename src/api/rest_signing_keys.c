/*
 * Project signing secrets for backends that mint HS256 participant tokens themselves
 * (API.md "Participant tokens"): the token's kid names the key, the secret is shown once at
 * creation and never again. Retiring a key keeps its row (so that audits and lists still
 * name it) and stops it from verifying tokens.
 */
#include <openssl/crypto.h>
#include <stdio.h>

#include "api/app.h"
#include "auth/scopes.h"
#include "core/alloc.h"
#include "core/json.h"
#include "switchboard/error.h"

#define SECRET_BYTES 32
#define NAME_MAX_LEN 256

/* ---- POST /v1/signing-keys --------------------------------------------------------- */

typedef struct skey_create {
    sb_req *req;
    sb_auth who;
    char kid[SB_ID_MAX];
    unsigned char secret[SECRET_BYTES];
    int64_t created_at;
} skey_create;

static int skey_create_run(sqlite3 *db, void *arg)
{
    skey_create *k = arg;
    sqlite3_stmt *st = sb_store_stmt(db, "INSERT INTO signing_keys (kid, project_id, alg, "
                                         "material, created_at) VALUES (?1, ?2, 'HS256', ?3, ?4)");
    if (!st)
        return SB_EIO;
    sqlite3_bind_text(st, 1, k->kid, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, k->who.project_id, -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 3, k->secret, sizeof k->secret, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, k->created_at);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if ((rc = sb_store_errno(rc)) != 0)
        return rc;
    return sb_app_audit(db, &k->who, k->req->request_id, "signing_key.create", "signing_key",
                        k->kid);
}

static void skey_create_done(void *arg, int rc)
{
    skey_create *k = arg;
    json_t *j = NULL;
    if (rc >= 0) {
        char enc[64], t[32];
        sb_buf b = {enc, 0, sizeof enc, sizeof enc};
        rc = sb_jose_b64url_encode(k->secret, sizeof k->secret, &b);
        sb_time_rfc3339(k->created_at, t);
        if (rc == 0)
            j = json_pack("{s:s,s:s,s:s#,s:s}", "kid", k->kid, "alg", "HS256", "secret", enc,
                          (int)b.len, "created_at", t);
        OPENSSL_cleanse(enc, sizeof enc);
        if (rc == 0 && !j)
            rc = SB_ENOMEM;
    }
    OPENSSL_cleanse(k->secret, sizeof k->secret);
    if (rc < 0) {
        /* If only the answer failed, the key exists unseen; it can be retired by kid. */
        sb_app_internal_error(k->req, "creating a signing key", rc);
        return;
    }
    sb_resp_header(k->req, "Cache-Control", SB_STR_LIT("no-store"));
    sb_app_send_json(k->req, 201, j);
}

static void skey_create_handler(sb_req *req, void *ud)
{
    sb_app *app = ud;
    sb_auth who;
    if (!sb_app_auth(app, req, SB_SCOPE_KEYS_WRITE, &who))
        return;
    json_t *body = req->body.len ? sb_app_body(req) : json_object();
    if (!body)
        return;
    /* A name is accepted for clients that send one, but signing_keys has no column for it:
     * the kid is the key's only name. */
    static const char *const fields[] = {"name", NULL};
    char why[256] = "";
    const char *name = NULL;
    int bad = sb_json_only(body, fields, why, sizeof why) ||
              sb_json_get_string(body, "name", &name, NULL, NAME_MAX_LEN, why, sizeof why);
    json_decref(body);
    if (bad) {
        sb_resp_problem(req, 400, "invalid-request", why);
        return;
    }
    skey_create *k = sb_app_ctx(req, sizeof *k, "creating a signing key");
    if (!k)
        return;
    k->req = req;
    k->who = who;
    k->created_at = sb_time_ms();
    if (sb_id_new("sk", k->kid) != 0 || sb_random(k->secret, sizeof k->secret) != 0) {
        OPENSSL_cleanse(k->secret, sizeof k->secret);
        sb_app_internal_error(req, "creating a signing key", SB_EIO);
        return;
    }
    if (!sb_app_submit(app, req, skey_create_run, skey_create_done, k))
        OPENSSL_cleanse(k->secret, sizeof k->secret);
}

/* ---- GET /v1/signing-keys ---------------------------------------------------------- */

static json_t *skey_json(sqlite3_stmt *st)
{
    return json_pack("{s:s,s:s,s:o,s:o}", "kid", sqlite3_column_text(st, 0), "alg",
                     sqlite3_column_text(st, 1), "created_at", sb_app_time_or_null(st, 2),
                     "retired_at", sb_app_time_or_null(st, 3));
}

static void skey_list(sb_req *req, void *ud)
{
    /* Never the material: the secret is shown once, at creation. */
    sb_app_list_project(
        ud, req, SB_SCOPE_KEYS_READ,
        "SELECT kid, alg, created_at, retired_at FROM signing_keys WHERE project_id = ?1 AND "
        "(?2 = 0 OR created_at > ?3 OR (created_at = ?3 AND kid > ?4)) "
        "ORDER BY created_at, kid LIMIT ?5",
        skey_json, 2, 0, "listing signing keys");
}

/* ---- DELETE /v1/signing-keys/{kid} ------------------------------------------------- */

/* Tokens it signed leave every loop's verified-token cache. */
static void skey_retired(sb_app *app, const char *kid)
{
    (void)app;
    (void)kid;
    sb_app_cache_bump();
}

/* project_id = ?3 also keeps the server's own keys (project_id NULL) out of reach. */
static const sb_app_revoke_spec skey_retire = {
    .sql = "UPDATE signing_keys SET retired_at = ?1 WHERE kid = ?2 AND project_id = ?3 AND "
           "retired_at IS NULL",
    .action = "signing_key.retire",
    .target_type = "signing_key",
    .what = "retiring a signing key",
    .not_found = "no such active signing key in this project",
    .committed = skey_retired,
};

static void skey_delete(sb_req *req, void *ud)
{
    sb_app *app = ud;
    sb_auth who;
    if (!sb_app_auth(app, req, SB_SCOPE_KEYS_WRITE, &who))
        return;
    sb_str kid = req->params[0];
    if (kid.len >= SB_ID_MAX || memchr(kid.base, '\0', kid.len)) {
        sb_resp_problem(req, 404, "not-found", skey_retire.not_found);
        return;
    }
    sb_app_revoke_credential(app, req, &who, kid, &skey_retire);
}

int sb_api_signing_keys_register(sb_app *app, sb_router *r)
{
    int rc = sb_router_add(r, "POST", "/v1/signing-keys", skey_create_handler, app);
    rc = rc ? rc : sb_router_add(r, "GET", "/v1/signing-keys", skey_list, app);
    rc = rc ? rc : sb_router_add(r, "DELETE", "/v1/signing-keys/{kid}", skey_delete, app);
    return rc;
}
