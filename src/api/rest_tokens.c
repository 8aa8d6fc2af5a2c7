/* Participant tokens (API.md "Participant tokens"). */
#include <stdio.h>
#include <string.h>

#include "api/app.h"
#include "api/rtc.h"
#include "auth/scopes.h"
#include "core/json.h"
#include "switchboard/error.h"

#define TTL_DEFAULT 600
#define TTL_MAX     86400

/* Grants with their defaults filled in; unknown members or non-booleans refused. */
static json_t *grants_from(const json_t *in, char *why, size_t whylen)
{
    static const char *const names[] = {"publish", "subscribe", "publish_data",
                                        "admin",   "hidden",    "record"};
    static const bool defaults[] = {true, true, true, false, false, false};
    if (in && !json_is_object(in)) {
        snprintf(why, whylen, "grants must be an object of booleans");
        return NULL;
    }
    if (in && sb_json_only(in,
                           (const char *const[]){"publish", "subscribe", "publish_data", "admin",
                                                 "hidden", "record", NULL},
                           why, whylen))
        return NULL;
    json_t *g = json_object();
    for (size_t i = 0; g && i < sizeof names / sizeof *names; i++) {
        bool v = defaults[i];
        if (in && sb_json_get_bool(in, names[i], &v, why, whylen)) {
            json_decref(g);
            return NULL;
        }
        json_object_set_new(g, names[i], json_boolean(v));
    }
    return g;
}

static void tokens_create(sb_req *req, void *ud)
{
    sb_app *app = ud;
    sb_auth who;
    if (!sb_app_auth(app, req, SB_SCOPE_TOKENS_WRITE, &who))
        return;
    json_t *body = sb_app_body(req);
    if (!body)
        return;
    static const char *const fields[] = {"room",        "identity", "name", "metadata",
                                         "ttl_seconds", "grants",   NULL};
    char why[256] = "";
    const char *room = NULL, *identity = NULL, *name = NULL, *metadata = NULL;
    size_t rl = 0, il = 0, nl = 0, ml = 0;
    int64_t ttl = TTL_DEFAULT;
    json_t *grants = NULL, *claims = NULL;
    if (sb_json_only(body, fields, why, sizeof why) ||
        sb_json_get_string(body, "room", &room, &rl, 128, why, sizeof why) ||
        sb_json_get_string(body, "identity", &identity, &il, SB_IDENTITY_MAX, why, sizeof why) ||
        sb_json_get_string(body, "name", &name, &nl, 256, why, sizeof why) ||
        sb_json_get_string(body, "metadata", &metadata, &ml, 4096, why, sizeof why) ||
        sb_json_get_int(body, "ttl_seconds", &ttl, 1, TTL_MAX, why, sizeof why))
        goto invalid;
    if (!room || !sb_room_name_valid(room, rl)) {
        snprintf(why, sizeof why, "room is required and must match ^[A-Za-z0-9_-]{1,128}$");
        goto invalid;
    }
    if (!identity || !sb_identity_valid(identity, il)) {
        snprintf(why, sizeof why, "identity is required and must match ^[A-Za-z0-9_.:@-]{1,128}$");
        goto invalid;
    }
    const json_t *gin = json_object_get(body, "grants");
    if (!(grants = grants_from(json_is_null(gin) ? NULL : gin, why, sizeof why)))
        goto invalid;

    char jti[SB_ID_MAX];
    int64_t now = sb_time_ms() / 1000;
    if (sb_id_new("tok", jti) != 0) {
        json_decref(grants);
        json_decref(body);
        sb_app_internal_error(req, "minting a token", SB_EIO);
        return;
    }
    claims = json_pack("{s:s,s:s#,s:s,s:s#,s:s,s:o,s:s,s:I,s:I,s:I}", "iss", sb_app_issuer(app),
                       "sub", identity, il, "aud", "switchboard:rtc", "room", room, rl,
                       "project_id", who.project_id, "grants", grants, "jti", jti, "iat",
                       (json_int_t)now, "nbf", (json_int_t)now, "exp", (json_int_t)(now + ttl));
    if (claims && name)
        json_object_set_new(claims, "name", json_stringn(name, nl));
    if (claims && metadata)
        json_object_set_new(claims, "metadata", json_stringn(metadata, ml));
    json_decref(body);
    sb_buf tok;
    sb_buf_init(&tok, SB_JOSE_MAX_COMPACT);
    int rc = claims ? sb_jwt_sign(sb_app_token_key(app), claims, NULL, &tok) : SB_ENOMEM;
    json_decref(claims);
    if (rc != 0) {
        sb_buf_free(&tok);
        sb_app_internal_error(req, "minting a token", rc);
        return;
    }
    char exp[32];
    sb_time_rfc3339((now + ttl) * 1000, exp);
    json_t *resp = json_pack("{s:s#,s:s}", "token", tok.base, (int)tok.len, "expires_at", exp);
    sb_buf_free(&tok);
    sb_resp_header(req, "Cache-Control", SB_STR_LIT("no-store"));
    sb_app_send_json(req, 201, resp);
    return;
invalid:
    json_decref(body);
    sb_resp_problem(req, 400, "invalid-request", why);
}

/* ---- DELETE /v1/tokens/{jti} ------------------------------------------------------------
 * Revokes a participant token by id: joins with it are refused (4001) from the 204 on, and
 * participants connected with it are closed (4001). Kept for the longest a token can live,
 * so it also covers tokens a backend minted itself with a signing secret. */

typedef struct token_revoke {
    sb_app *app;
    sb_req *req;
    sb_auth who;
    char jti[SB_ID_MAX];
    int64_t until_ms;
} token_revoke;

static int token_revoke_run(sqlite3 *db, void *arg)
{
    token_revoke *t = arg;
    sqlite3_stmt *st = sb_store_stmt(
        db, "INSERT INTO revoked_tokens (project_id, jti, revoked_at, until_at) VALUES "
            "(?1, ?2, ?3, ?4) ON CONFLICT (project_id, jti) DO UPDATE SET until_at = ?4");
    if (!st)
        return SB_EIO;
    sqlite3_bind_text(st, 1, t->who.project_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, t->jti, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, sb_time_ms());
    sqlite3_bind_int64(st, 4, t->until_ms);
    int rc = sb_store_errno(sqlite3_step(st));
    sqlite3_reset(st);
    return rc ? rc : sb_app_audit(db, &t->who, t->req->request_id, "token.revoke", "token", t->jti);
}

static void token_revoke_done(void *arg, int rc)
{
    token_revoke *t = arg;
    if (rc < 0) {
        sb_app_internal_error(t->req, "revoking a token", rc);
        return;
    }
    rc = sb_app_revoke_participant_token(t->app, t->who.project_id, t->jti, t->until_ms);
    if (rc == SB_EAGAIN) {
        /* Stored, so the next start enforces it; this node cannot hold more right now. */
        sb_resp_header(t->req, "Retry-After", SB_STR_LIT("60"));
        sb_resp_problem(t->req, 503, "unavailable", "too many revoked tokens are in force");
        return;
    }
    if (rc) {
        sb_app_internal_error(t->req, "revoking a token", rc);
        return;
    }
    sb_rtc_kick_token(t->app, t->who.project_id, t->jti);
    sb_resp_send(t->req, 204, NULL, NULL, 0);
}

static void tokens_revoke(sb_req *req, void *ud)
{
    sb_app *app = ud;
    sb_auth who;
    if (!sb_app_auth(app, req, SB_SCOPE_TOKENS_WRITE, &who))
        return;
    sb_str jti = req->params[0];
    if (jti.len == 0 || jti.len >= SB_ID_MAX) {
        sb_resp_problem(req, 400, "invalid-request", "a token id (jti) is 1 to 63 bytes");
        return;
    }
    for (size_t i = 0; i < jti.len; i++)
        if ((unsigned char)jti.base[i] < 0x20 || jti.base[i] == 0x7f) {
            sb_resp_problem(req, 400, "invalid-request", "a token id has no control characters");
            return;
        }
    token_revoke *t = sb_app_ctx(req, sizeof *t, "revoking a token");
    if (!t)
        return;
    t->app = app;
    t->req = req;
    t->who = who;
    memcpy(t->jti, jti.base, jti.len);
    t->jti[jti.len] = '\0';
    t->until_ms = sb_time_ms() + (int64_t)TTL_MAX * 1000 + 60000; /* + the verifier's leeway */
    sb_app_submit(app, req, token_revoke_run, token_revoke_done, t);
}

int sb_api_tokens_register(sb_app *app, sb_router *r)
{
    int rc = sb_router_add(r, "POST", "/v1/tokens", tokens_create, app);
    return rc ? rc : sb_router_add(r, "DELETE", "/v1/tokens/{jti}", tokens_revoke, app);
}
