#include "api/oauth.h"

#include <stdio.h>

#include "auth/jti_set.h"
#include "auth/scopes.h"
#include "core/alloc.h"
#include "store/store.h"
#include "switchboard/error.h"

#define MAX_LIFETIME_S 3600 /* oauth.access_token_ttl's maximum */

struct sb_oauth {
    sb_app *app;
    sb_jti_set *revoked;
};

int sb_oauth_revoke_jti(sb_oauth *o, const char *jti, int64_t exp)
{
    return sb_jti_set_add(o->revoked, jti, exp, sb_time_ms() / 1000);
}

bool sb_oauth_is_revoked(sb_oauth *o, const char *jti)
{
    return sb_jti_set_contains(o->revoked, jti);
}

static int load_revoked(sqlite3 *db, void *arg)
{
    sb_oauth *o = arg;
    int64_t now = sb_time_ms() / 1000;
    sqlite3_stmt *st = sb_store_stmt(db, "DELETE FROM oauth_revoked_tokens WHERE exp <= ?1");
    if (!st)
        return SB_EIO;
    sqlite3_bind_int64(st, 1, now);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return SB_EIO;
    st = sb_store_stmt(db, "SELECT jti, exp FROM oauth_revoked_tokens ORDER BY exp DESC LIMIT ?1");
    if (!st)
        return SB_EIO;
    sqlite3_bind_int(st, 1, SB_OAUTH_MAX_REVOKED);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        sb_jti_set_add(o->revoked, (const char *)sqlite3_column_text(st, 0),
                       sqlite3_column_int64(st, 1), now);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : SB_EIO;
}

int sb_oauth_new(sb_app *app, sb_oauth **out)
{
    sb_oauth *o = sb_calloc(1, sizeof *o);
    if (!o)
        return SB_ENOMEM;
    o->app = app;
    int rc = sb_jti_set_new(SB_OAUTH_MAX_REVOKED, &o->revoked);
    if (rc != 0) {
        sb_free(o);
        return rc;
    }
    rc = sb_store_run_sync(sb__app_store(app), load_revoked, o);
    if (rc < 0) {
        sb_oauth_free(o);
        return rc;
    }
    *out = o;
    return 0;
}

void sb_oauth_free(sb_oauth *o)
{
    if (!o)
        return;
    sb_jti_set_free(o->revoked);
    sb_free(o);
}

/* ---- verification ------------------------------------------------------------------ */

static const sb_jose_key *server_key(void *ud, const char *kid)
{
    return sb_app_server_key(ud, kid);
}

static bool copy_claim(const json_t *claims, const char *name, char *out, size_t cap)
{
    const json_t *v = json_object_get(claims, name);
    if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) >= cap)
        return false;
    memcpy(out, json_string_value(v), json_string_length(v) + 1);
    return true;
}

static int refuse(sb_jwt_reason *why, sb_jwt_reason r)
{
    *why = r;
    return SB_EAUTH;
}

int sb_oauth_verify(sb_app *app, sqlite3 *db, const char *tok, size_t len, sb_access_token *out,
                    sb_jwt_reason *why)
{
    memset(out, 0, sizeof *out);
    sb_jwt_expect expect = {.aud = sb_app_issuer(app),
                            .iss = sb_app_issuer(app),
                            .typ = "at+jwt",
                            .now = sb_time_ms() / 1000,
                            .leeway = SB_OAUTH_LEEWAY_S,
                            .max_lifetime = MAX_LIFETIME_S};
    json_t *claims = NULL;
    int rc = sb_jwt_verify(tok, len, server_key, app, &expect, &claims, why);
    if (rc != 0)
        return rc;
    char client[SB_ID_MAX], sub[SB_ID_MAX], scope[512];
    const json_t *exp = json_object_get(claims, "exp"), *iat = json_object_get(claims, "iat");
    const json_t *cnf = json_object_get(claims, "cnf");
    if (!copy_claim(claims, "client_id", client, sizeof client) ||
        !copy_claim(claims, "sub", sub, sizeof sub) || strcmp(client, sub) != 0 ||
        !copy_claim(claims, "jti", out->jti, sizeof out->jti) ||
        !copy_claim(claims, "project_id", out->auth.project_id, sizeof out->auth.project_id) ||
        !copy_claim(claims, "scope", scope, sizeof scope) || !json_is_integer(iat) ||
        sb_scopes_parse(scope, strlen(scope), &out->auth.scopes, NULL, NULL) != 0) {
        rc = refuse(why, SB_JWT_BAD_CLAIM);
        goto out;
    }
    if (cnf) {
        const json_t *x = json_object_get(cnf, "x5t#S256");
        size_t n = 0;
        if (!json_is_object(cnf) || !json_is_string(x) ||
            sb_jose_b64url_decode(json_string_value(x), json_string_length(x), out->x5t,
                                  sizeof out->x5t, &n) != 0 ||
            n != 32) {
            rc = refuse(why, SB_JWT_BAD_CLAIM);
            goto out;
        }
        out->bound = true;
    }
    out->exp = json_integer_value(exp);
    out->iat = json_integer_value(iat);
    memcpy(out->auth.credential_id, client, sizeof client);
    if (sb_oauth_is_revoked(sb__app_oauth(app), out->jti)) {
        out->refusal = "revoked";
        rc = refuse(why, SB_JWT_BAD_CLAIM);
        goto out;
    }
    /* The client must still exist in that project; its current scopes bound the token's. */
    sqlite3_stmt *st = sb_store_stmt(db, "SELECT scopes, allowed_ips FROM oauth_clients WHERE "
                                         "id = ?1 AND project_id = ?2 AND revoked_at IS NULL");
    if (!st) {
        rc = SB_EIO;
        goto out;
    }
    sqlite3_bind_text(st, 1, client, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, out->auth.project_id, -1, SQLITE_STATIC);
    int step = sqlite3_step(st);
    if (step == SQLITE_ROW) {
        const char *sc = (const char *)sqlite3_column_text(st, 0);
        uint32_t now_scopes = 0;
        sb_scopes_parse(sc, strlen(sc), &now_scopes, NULL, NULL);
        out->auth.scopes &= now_scopes;
        if (!sb_app_allow_column(st, 1, &out->allow))
            step = SQLITE_DONE; /* cannot enforce it: refuse */
    }
    sqlite3_reset(st);
    if (step != SQLITE_ROW) {
        sb_ipallow_free(out->allow);
        out->allow = NULL;
        out->refusal = "client_deleted";
        rc = step == SQLITE_DONE ? refuse(why, SB_JWT_BAD_CLAIM) : SB_EIO;
        goto out;
    }
    *why = SB_JWT_OK;
out:
    json_decref(claims);
    return rc;
}
