/*
 * The OAuth 2.0 authorization server's endpoints and the clients behind them:
 *
 *   POST /oauth/token        client_credentials (RFC 6749 section 4.4), RFC 9068 JWTs
 *   POST /oauth/introspect   RFC 7662
 *   POST /oauth/revoke       RFC 7009
 *   GET  /.well-known/oauth-authorization-server   RFC 8414
 *   POST/GET /v1/oauth-clients, DELETE /v1/oauth-clients/{client_id}
 *
 * Client authentication (every /oauth endpoint): client_secret_basic (with the
 * form-urlencoding of RFC 6749 section 2.3.1), client_secret_post, or tls_client_auth
 * (RFC 8705 section 2: the verified client certificate's SHA-256 equals the registered
 * one). A client uses exactly the method it was registered with, and one method per
 * request. Errors follow RFC 6749 section 5.2 exactly; the /oauth endpoints are never wrapped by
 * Idempotency-Key, and they are limited per client address (oauth.requests_per_second).
 */
#include <openssl/crypto.h>
#include <stdio.h>

#include "api/credential.h"
#include "api/oauth.h"
#include "auth/oauth.h"
#include "auth/scopes.h"
#include "core/alloc.h"
#include "core/json.h"
#include "core/log.h"
#include "switchboard/error.h"

#define NAME_MAX_LEN   256
#define SECRET_MAX_LEN 256
#define MAX_FORM       16384 /* a token request is a few hundred bytes */

void sb__app_hash_secret(const sb_app *app, const char *secret, size_t len, unsigned char out[32]);

typedef enum auth_method {
    AUTH_BASIC = 1,
    AUTH_POST,
    AUTH_TLS,
} auth_method;

static const char *const method_names[] = {NULL, "client_secret_basic", "client_secret_post",
                                           "tls_client_auth"};

static auth_method method_from(const char *s)
{
    for (int i = 1; i <= 3; i++)
        if (s && strcmp(s, method_names[i]) == 0)
            return (auth_method)i;
    return 0;
}

/* ---- RFC 6749 section 5.2 errors ---------------------------------------------------- */

static void no_store(sb_req *req)
{
    sb_resp_header(req, "Cache-Control", SB_STR_LIT("no-store"));
    sb_resp_header(req, "Pragma", SB_STR_LIT("no-cache"));
}

/* status 401 adds WWW-Authenticate: Basic (section 5.2: when the client tried Basic). */
static void oauth_error(sb_req *req, int status, const char *error, const char *description)
{
    sb_app_oauth_error(req, status, error, description);
}

/* ---- request parsing and client authentication -------------------------------------- */

typedef struct oauth_call {
    sb_oauth_param params[SB_OAUTH_MAX_PARAMS];
    int nparams;
    bool basic; /* the client used (or tried) HTTP Basic */
    /* the authenticated client */
    char client_id[SB_ID_MAX];
    char project_id[SB_ID_MAX];
    uint32_t scopes;
    bool may_client_credentials;
} oauth_call;

static bool form_media_type(const sb_req *req)
{
    const sb_http_header *ct = sb_req_header(req, "content-type");
    if (!ct)
        return false;
    size_t n = 0;
    while (n < ct->value.len && ct->value.base[n] != ';' && ct->value.base[n] != ' ')
        n++;
    return sb_str_case_eq((sb_str){ct->value.base, n}, "application/x-www-form-urlencoded");
}

/* Guards shared by every /oauth endpoint: address allowlist, per-address rate, the form. */
static bool oauth_begin(sb_app *app, sb_req *req, oauth_call *c)
{
    if (!sb_app_address_allowed(app, req, NULL)) {
        oauth_error(req, 403, "access_denied",
                    "this address may not call the authorization server");
        return false;
    }
    if (!sb_app_oauth_rate_ok(app, req))
        return false;
    if (!form_media_type(req)) {
        oauth_error(req, 400, "invalid_request",
                    "the body must be application/x-www-form-urlencoded");
        return false;
    }
    if (req->body.len > MAX_FORM) {
        oauth_error(req, 400, "invalid_request", "the form is too large");
        return false;
    }
    size_t cap = req->body.len + 2 * SB_OAUTH_MAX_PARAMS;
    char *scratch = sb_arena_alloc(&req->arena, cap);
    if (!scratch) {
        sb_app_internal_error(req, "parsing a form", SB_ENOMEM);
        return false;
    }
    int n = sb_oauth_form_parse(req->body.base, req->body.len, scratch, cap, c->params);
    if (n == SB_EEXIST) {
        oauth_error(req, 400, "invalid_request", "a parameter was sent more than once");
        return false;
    }
    if (n < 0) {
        oauth_error(req, 400, "invalid_request",
                    n == SB_EMSGSIZE ? "too many parameters" : "the form is not well encoded");
        return false;
    }
    c->nparams = n;
    return true;
}

static const sb_str *param(const oauth_call *c, const char *name)
{
    return sb_oauth_form_get(c->params, c->nparams, name);
}

static void invalid_client(sb_req *req, const oauth_call *c, const char *why)
{
    /* 401 with WWW-Authenticate when Basic was used (section 5.2); 400 otherwise, since a
     * 401 must name a scheme the client did not use. */
    oauth_error(req, c->basic ? 401 : 400, "invalid_client", why);
}

static bool authenticate_client(sb_app *app, sb_req *req, oauth_call *c)
{
    sb_str id = SB_STR_NULL, secret = SB_STR_NULL;
    const sb_str *body_id = param(c, "client_id"), *body_secret = param(c, "client_secret");
    auth_method used;
    const sb_http_header *h = sb_req_header(req, "authorization");
    if (h) {
        c->basic = true;
        char *scratch = sb_arena_alloc(&req->arena, h->value.len + 2);
        int rc = scratch ? sb_oauth_basic_decode(h->value, scratch, h->value.len + 2, &id, &secret)
                         : SB_ENOMEM;
        if (rc == SB_ENOENT) {
            invalid_client(req, c, "the Authorization scheme must be Basic");
            return false;
        }
        if (rc != 0) {
            invalid_client(req, c, "the Basic credentials are malformed");
            return false;
        }
        if (body_secret) {
            oauth_error(req, 400, "invalid_request",
                        "use one client authentication method, not Basic and client_secret");
            return false;
        }
        if (body_id && !sb_str_eq(*body_id, id)) {
            oauth_error(req, 400, "invalid_request", "client_id differs from the Basic user");
            return false;
        }
        used = AUTH_BASIC;
    } else if (body_secret) {
        if (!body_id) {
            oauth_error(req, 400, "invalid_request", "client_secret without client_id");
            return false;
        }
        id = *body_id;
        secret = *body_secret;
        used = AUTH_POST;
    } else if (body_id) {
        id = *body_id;
        used = AUTH_TLS;
    } else {
        c->basic = true; /* tell the client which scheme to use */
        invalid_client(req, c, "client authentication is required");
        return false;
    }
    if (id.len == 0 || id.len >= SB_ID_MAX || secret.len > SECRET_MAX_LEN) {
        invalid_client(req, c, "unknown client or bad credentials");
        return false;
    }
    memcpy(c->client_id, id.base, id.len);
    c->client_id[id.len] = '\0';

    sqlite3_stmt *st =
        sb_store_stmt(sb_app_reader(app, req),
                      "SELECT project_id, secret_hash, scopes, auth_method, grant_types, "
                      "tls_client_cert_sha256, allowed_ips FROM oauth_clients WHERE id = ?1 AND "
                      "revoked_at IS NULL");
    if (!st) {
        sb_app_internal_error(req, "reading a client", SB_EIO);
        return false;
    }
    sqlite3_bind_text(st, 1, c->client_id, -1, SQLITE_STATIC);
    bool ok = false;
    const char *why = "unknown client or bad credentials";
    /* Hash what was sent whether or not the client exists: no timing tells which ids do. */
    unsigned char h_sent[32];
    sb__app_hash_secret(app, secret.base ? secret.base : "", secret.len, h_sent);
    sb_ipallow *allow = NULL;
    if (sqlite3_step(st) == SQLITE_ROW) {
        auth_method registered = method_from((const char *)sqlite3_column_text(st, 3));
        const void *stored = sqlite3_column_blob(st, 1);
        if (registered != used) {
            why = "the client must authenticate with the method it was registered with";
        } else if (used == AUTH_TLS) {
            unsigned char want[32];
            ok = req->tls_client_cert_sha256 && sqlite3_column_type(st, 5) != SQLITE_NULL &&
                 sb_hex_decode32((const char *)sqlite3_column_text(st, 5), want) == 0 &&
                 CRYPTO_memcmp(want, req->tls_client_cert_sha256, 32) == 0;
            if (!ok)
                why = "no client certificate, or not the one registered for this client";
        } else {
            ok = stored && sqlite3_column_bytes(st, 1) == 32 &&
                 CRYPTO_memcmp(stored, h_sent, 32) == 0;
        }
        if (ok) {
            snprintf(c->project_id, sizeof c->project_id, "%s",
                     (const char *)sqlite3_column_text(st, 0));
            const char *sc = (const char *)sqlite3_column_text(st, 2);
            sb_scopes_parse(sc, strlen(sc), &c->scopes, NULL, NULL);
            const char *gt = (const char *)sqlite3_column_text(st, 4);
            c->may_client_credentials = strstr(gt, "client_credentials") != NULL;
            if (!sb_app_allow_column(st, 6, &allow))
                ok = false; /* cannot enforce it: refuse */
        }
    }
    sqlite3_reset(st);
    OPENSSL_cleanse(h_sent, sizeof h_sent);
    if (ok && allow && !sb_app_address_allowed(app, req, allow)) {
        ok = false;
        why = "this client may not be used from this address";
    }
    sb_ipallow_free(allow);
    if (!ok)
        invalid_client(req, c, why);
    return ok;
}

/* ---- POST /oauth/token --------------------------------------------------------------- */

static int b64url_sha(const unsigned char h[32], char out[44])
{
    sb_buf b = {out, 0, 44, 44};
    int rc = sb_jose_b64url_encode(h, 32, &b);
    if (rc == 0)
        out[b.len] = '\0';
    return rc;
}

static void token(sb_req *req, void *ud)
{
    sb_app *app = ud;
    oauth_call c;
    memset(&c, 0, sizeof c);
    if (!oauth_begin(app, req, &c))
        return;
    const sb_str *grant = param(&c, "grant_type");
    if (!grant) {
        oauth_error(req, 400, "invalid_request", "grant_type is required");
        return;
    }
    if (!authenticate_client(app, req, &c))
        return;
    if (sb_str_eq_lit(*grant, "refresh_token")) {
        oauth_error(req, 400, "invalid_grant",
                    "this server issues no refresh tokens, so none is valid");
        return;
    }
    if (!sb_str_eq_lit(*grant, "client_credentials")) {
        oauth_error(req, 400, "unsupported_grant_type", "only client_credentials is supported");
        return;
    }
    if (!c.may_client_credentials) {
        oauth_error(req, 400, "unauthorized_client",
                    "this client is not allowed the client_credentials grant");
        return;
    }
    uint32_t scopes = c.scopes;
    const sb_str *scope = param(&c, "scope");
    if (scope) {
        uint32_t want = 0;
        if (sb_scopes_parse(scope->base, scope->len, &want, NULL, NULL) != 0 || want == 0) {
            oauth_error(req, 400, "invalid_scope", "the scope names an unknown scope");
            return;
        }
        if ((want & c.scopes) != want) {
            oauth_error(req, 400, "invalid_scope", "the scope exceeds what this client may get");
            return;
        }
        scopes = want;
    }
    char sc[256], jti[SB_ID_MAX], x5t[44];
    sb_scopes_format(scopes, sc, sizeof sc);
    int64_t now = sb_time_ms() / 1000;
    int64_t ttl = sb_app_config(app)->oauth_access_token_ttl_ms / 1000;
    int rc = sb_id_new("at", jti);
    json_t *claims =
        rc ? NULL
           : json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:I,s:I}", "iss", sb_app_issuer(app), "aud",
                       sb_app_issuer(app), "sub", c.client_id, "client_id", c.client_id, "scope",
                       sc, "jti", jti, "project_id", c.project_id, "iat", (json_int_t)now, "exp",
                       (json_int_t)(now + ttl));
    /* RFC 8705 section 3: bind the token to the certificate the client used here. */
    if (claims && req->tls_client_cert_sha256 &&
        (b64url_sha(req->tls_client_cert_sha256, x5t) != 0 ||
         json_object_set_new(claims, "cnf", json_pack("{s:s}", "x5t#S256", x5t)) != 0)) {
        json_decref(claims);
        claims = NULL;
    }
    json_t *hdr = json_pack("{s:s}", "typ", "at+jwt");
    sb_buf tok;
    sb_buf_init(&tok, SB_JOSE_MAX_COMPACT);
    rc = claims && hdr ? sb_jwt_sign(sb_app_token_key(app), claims, hdr, &tok) : SB_ENOMEM;
    json_decref(claims);
    json_decref(hdr);
    if (rc == 0)
        rc = sb_buf_append(&tok, "", 1);
    if (rc != 0) {
        sb_buf_free(&tok);
        sb_app_internal_error(req, "issuing an access token", rc);
        return;
    }
    json_t *resp = json_pack("{s:s,s:s,s:I,s:s}", "access_token", tok.base, "token_type", "Bearer",
                             "expires_in", (json_int_t)ttl, "scope", sc);
    OPENSSL_cleanse(tok.base, tok.len);
    sb_buf_free(&tok);
    no_store(req);
    sb_app_send_json(req, 200, resp);
}

/* ---- POST /oauth/introspect ---------------------------------------------------------- */

/* What /oauth/introspect and /oauth/revoke start with: the form, its token parameter, the
 * client's authentication and the token's verification. False when it has answered (a bad
 * request or client; an internal error, logged as what). Otherwise *active tells whether
 * the token is valid and of the client's project; at is filled, its allow list freed. */
static bool token_request(sb_app *app, sb_req *req, oauth_call *c, sb_access_token *at,
                          bool *active, const char *what)
{
    memset(c, 0, sizeof *c);
    if (!oauth_begin(app, req, c))
        return false;
    const sb_str *t = param(c, "token");
    if (!t) {
        oauth_error(req, 400, "invalid_request", "token is required");
        return false;
    }
    if (!authenticate_client(app, req, c))
        return false;
    sb_jwt_reason why;
    int rc = sb_oauth_verify(app, sb_app_reader(app, req), t->base, t->len, at, &why);
    sb_ipallow_free(at->allow);
    if (rc != 0 && rc != SB_EAUTH) {
        sb_app_internal_error(req, what, rc);
        return false;
    }
    *active = rc == 0 && strcmp(at->auth.project_id, c->project_id) == 0;
    return true;
}

static void introspect(sb_req *req, void *ud)
{
    sb_app *app = ud;
    oauth_call c;
    sb_access_token at;
    bool active;
    if (!token_request(app, req, &c, &at, &active, "introspecting a token"))
        return;
    json_t *j;
    if (!active) {
        j = json_pack("{s:b}", "active", 0);
    } else {
        char sc[256];
        sb_scopes_format(at.auth.scopes, sc, sizeof sc);
        j = json_pack("{s:b,s:s,s:s,s:s,s:s,s:I,s:I,s:s,s:s,s:s,s:s}", "active", 1, "scope", sc,
                      "client_id", at.auth.credential_id, "sub", at.auth.credential_id,
                      "token_type", "Bearer", "exp", (json_int_t)at.exp, "iat", (json_int_t)at.iat,
                      "iss", sb_app_issuer(app), "aud", sb_app_issuer(app), "jti", at.jti,
                      "project_id", at.auth.project_id);
        char x5t[44];
        if (j && at.bound && b64url_sha(at.x5t, x5t) == 0)
            json_object_set_new(j, "cnf", json_pack("{s:s}", "x5t#S256", x5t));
    }
    no_store(req);
    sb_app_send_json(req, 200, j);
}

/* ---- POST /oauth/revoke -------------------------------------------------------------- */

typedef struct revoke_job {
    sb_app *app;
    sb_req *req;
    sb_auth who; /* the client, for the audit log */
    char jti[SB_ID_MAX];
    int64_t exp;
} revoke_job;

static int revoke_run(sqlite3 *db, void *arg)
{
    revoke_job *j = arg;
    sqlite3_stmt *st =
        sb_store_stmt(db, "INSERT OR IGNORE INTO oauth_revoked_tokens (jti, exp) VALUES (?1, ?2)");
    if (!st)
        return SB_EIO;
    sqlite3_bind_text(st, 1, j->jti, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, j->exp);
    int rc = sb_store_errno(sqlite3_step(st));
    sqlite3_reset(st);
    if (rc || sqlite3_changes(db) == 0)
        return rc; /* revoked before: audited then */
    return sb_app_audit(db, &j->who, j->req->request_id, "oauth_token.revoke", "oauth_token",
                        j->jti);
}

static void revoke_done(void *arg, int rc)
{
    revoke_job *j = arg;
    if (rc < 0) {
        sb_app_internal_error(j->req, "revoking a token", rc);
        return;
    }
    if (sb_oauth_revoke_jti(sb__app_oauth(j->app), j->jti, j->exp) != 0) {
        /* RFC 7009 section 2.2.1: 503 tells the client to retry later. */
        sb_resp_header(j->req, "Retry-After", SB_STR_LIT("60"));
        oauth_error(j->req, 503, "temporarily_unavailable",
                    "too many revoked tokens are live; retry later");
        return;
    }
    sb_app_token_revoked(j->app); /* refused on every loop from the next request on */
    no_store(j->req);
    sb_resp_send(j->req, 200, NULL, NULL, 0);
}

static void revoke(sb_req *req, void *ud)
{
    sb_app *app = ud;
    oauth_call c;
    sb_access_token at;
    bool active;
    if (!token_request(app, req, &c, &at, &active, "revoking a token"))
        return;
    /* Section 2.2: an invalid, expired or unknown token (or one of another project) is
     * answered 200 as if revoked: the client's goal is reached either way. Only a client's
     * own tokens are revoked; another's is answered like an unknown one, so that revocation
     * reveals nothing about other clients' tokens. */
    if (!active || strcmp(at.auth.credential_id, c.client_id) != 0) {
        no_store(req);
        sb_resp_send(req, 200, NULL, NULL, 0);
        return;
    }
    revoke_job *j = sb_app_ctx(req, sizeof *j, "revoking a token");
    if (!j)
        return;
    j->app = app;
    j->req = req;
    memset(&j->who, 0, sizeof j->who);
    memcpy(j->who.project_id, c.project_id, sizeof j->who.project_id);
    memcpy(j->who.credential_id, c.client_id, sizeof j->who.credential_id);
    memcpy(j->jti, at.jti, sizeof j->jti);
    j->exp = at.exp + SB_OAUTH_LEEWAY_S;
    sb_app_submit(app, req, revoke_run, revoke_done, j);
}

/* ---- GET /.well-known/oauth-authorization-server --------------------------------------- */

typedef struct metadata {
    char *json;
    size_t len;
} metadata;

static void well_known(sb_req *req, void *ud)
{
    metadata *m = ud;
    sb_resp_header(req, "Cache-Control", SB_STR_LIT("public, max-age=300"));
    sb_resp_send(req, 200, "application/json", m->json, m->len);
}

static json_t *url(const char *issuer, const char *path)
{
    size_t il = strlen(issuer);
    while (il && issuer[il - 1] == '/')
        il--;
    char buf[1200];
    snprintf(buf, sizeof buf, "%.*s%s", (int)il, issuer, path);
    return json_string(buf);
}

static metadata *make_metadata(sb_app *app)
{
    const char *iss = sb_app_issuer(app);
    json_t *methods =
        json_pack("[s,s,s]", "client_secret_basic", "client_secret_post", "tls_client_auth");
    json_t *j = json_pack(
        "{s:s,s:o,s:o,s:o,s:o,s:[s],s:[],s:O,s:O,s:O,s:o,s:b}", "issuer", iss, "token_endpoint",
        url(iss, "/oauth/token"), "introspection_endpoint", url(iss, "/oauth/introspect"),
        "revocation_endpoint", url(iss, "/oauth/revoke"), "jwks_uri",
        url(iss, "/.well-known/jwks.json"), "grant_types_supported", "client_credentials",
        "response_types_supported", "token_endpoint_auth_methods_supported", methods,
        "introspection_endpoint_auth_methods_supported", methods,
        "revocation_endpoint_auth_methods_supported", methods, "scopes_supported",
        sb_scopes_to_json(SB_SCOPES_PROJECT), "tls_client_certificate_bound_access_tokens", 1);
    json_decref(methods);
    metadata *m = sb__app_own(app, sb_calloc(1, sizeof *m));
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!m || !text) {
        free(text);
        return NULL;
    }
    m->json = sb__app_own(app, sb_strdup(text));
    free(text);
    if (!m->json)
        return NULL;
    m->len = strlen(m->json);
    return m;
}

/* ---- /v1/oauth-clients --------------------------------------------------------------- */

#define CLIENT_COLS                                                                                \
    "id, name, scopes, auth_method, grant_types, tls_client_cert_sha256, allowed_ips, "            \
    "created_at"

static json_t *client_json(sqlite3_stmt *st)
{
    const char *sc = (const char *)sqlite3_column_text(st, 2);
    uint32_t scopes = 0;
    sb_scopes_parse(sc, strlen(sc), &scopes, NULL, NULL);
    json_t *gt = json_array();
    const char *g = (const char *)sqlite3_column_text(st, 4);
    if (gt && strstr(g, "client_credentials"))
        json_array_append_new(gt, json_string("client_credentials"));
    json_t *fp = sqlite3_column_type(st, 5) == SQLITE_NULL
                     ? json_null()
                     : json_string((const char *)sqlite3_column_text(st, 5));
    return json_pack("{s:s,s:s,s:o,s:s,s:o,s:o,s:o,s:o}", "client_id", sqlite3_column_text(st, 0),
                     "name", sqlite3_column_text(st, 1), "scopes", sb_scopes_to_json(scopes),
                     "token_endpoint_auth_method", sqlite3_column_text(st, 3), "grant_types", gt,
                     "tls_client_certificate_sha256", fp, "allowed_ips", sb_app_json_or_null(st, 6),
                     "created_at", sb_app_time_or_null(st, 7));
}

typedef struct client_create {
    sb_app *app;
    sb_req *req;
    sb_auth who;
    char id[SB_ID_MAX];
    char *name;
    uint32_t scopes;
    auth_method method;
    bool client_credentials;
    char fingerprint[65]; /* "" = none */
    char *allowed_ips;    /* JSON text or NULL */
    char secret[96];      /* "" for tls_client_auth */
    json_t *result;
} client_create;

static int client_create_run(sqlite3 *db, void *arg)
{
    client_create *k = arg;
    char sc[256];
    sb_scopes_format(k->scopes, sc, sizeof sc);
    sqlite3_stmt *st = sb_store_stmt(
        db, "INSERT INTO oauth_clients (id, project_id, name, secret_hash, scopes, auth_method, "
            "grant_types, tls_client_cert_sha256, allowed_ips, created_at) "
            "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)");
    if (!st)
        return SB_EIO;
    sqlite3_bind_text(st, 1, k->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, k->who.project_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, k->name, -1, SQLITE_STATIC);
    if (k->secret[0]) {
        unsigned char h[32];
        sb__app_hash_secret(k->app, k->secret, strlen(k->secret), h);
        sqlite3_bind_blob(st, 4, h, 32, SQLITE_TRANSIENT);
    }
    sqlite3_bind_text(st, 5, sc, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 6, method_names[k->method], -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 7, k->client_credentials ? "client_credentials" : "", -1, SQLITE_STATIC);
    if (k->fingerprint[0])
        sqlite3_bind_text(st, 8, k->fingerprint, -1, SQLITE_STATIC);
    if (k->allowed_ips)
        sqlite3_bind_text(st, 9, k->allowed_ips, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 10, sb_time_ms());
    int rc = sb_store_errno(sqlite3_step(st));
    sqlite3_reset(st);
    rc = rc ? rc
            : sb_app_audit(db, &k->who, k->req->request_id, "oauth_client.create", "oauth_client",
                           k->id);
    if (rc)
        return rc;
    return sb_credential_read(db, "SELECT " CLIENT_COLS " FROM oauth_clients WHERE id = ?1", k->id,
                              client_json, &k->result);
}

static void client_create_done(void *arg, int rc)
{
    client_create *k = arg;
    sb_credential_created(k->req, rc, k->result, "client_secret", k->secret, sizeof k->secret,
                          "creating an OAuth client");
}

static void clients_create(sb_req *req, void *ud)
{
    sb_app *app = ud;
    sb_auth who;
    if (!sb_app_auth(app, req, SB_SCOPE_KEYS_WRITE, &who))
        return;
    json_t *body = sb_app_body(req);
    if (!body)
        return;
    static const char *const fields[] = {"name",
                                         "scopes",
                                         "token_endpoint_auth_method",
                                         "tls_client_certificate_sha256",
                                         "allowed_ips",
                                         "grant_types",
                                         NULL};
    char why[256] = "";
    const char *name = NULL, *method = NULL, *fp = NULL;
    size_t nlen = 0, fplen = 0;
    client_create *k = sb_app_ctx(req, sizeof *k, "allocating");
    if (!k) {
        json_decref(body);
        return;
    }
    k->client_credentials = true;
    if (sb_json_only(body, fields, why, sizeof why) ||
        sb_json_get_string(body, "name", &name, &nlen, NAME_MAX_LEN, why, sizeof why) ||
        sb_json_get_string(body, "token_endpoint_auth_method", &method, NULL, 64, why,
                           sizeof why) ||
        sb_json_get_string(body, "tls_client_certificate_sha256", &fp, &fplen, 128, why,
                           sizeof why))
        goto invalid;
    if (!name || nlen == 0) {
        snprintf(why, sizeof why, "name is required");
        goto invalid;
    }
    if (!sb_credential_scopes(body, &k->scopes, why, sizeof why))
        goto invalid;
    if (k->scopes & SB_SCOPE_PROJECTS_WRITE) {
        snprintf(why, sizeof why, "an OAuth client cannot hold projects:write");
        goto invalid;
    }
    k->method = method_from(method);
    if (!k->method) {
        snprintf(why, sizeof why,
                 "token_endpoint_auth_method must be client_secret_basic, client_secret_post "
                 "or tls_client_auth");
        goto invalid;
    }
    if (!sb_credential_fingerprint(fp, fplen, k->fingerprint, why, sizeof why))
        goto invalid;
    if ((k->method == AUTH_TLS) != (fp != NULL)) {
        snprintf(why, sizeof why,
                 "tls_client_certificate_sha256 is required with "
                 "tls_client_auth, and only with it");
        goto invalid;
    }
    const json_t *gt = json_object_get(body, "grant_types");
    if (gt && !json_is_null(gt)) {
        size_t i;
        const json_t *v;
        if (!json_is_array(gt) || json_array_size(gt) > 1) {
            snprintf(why, sizeof why, "grant_types must be [] or [\"client_credentials\"]");
            goto invalid;
        }
        k->client_credentials = false;
        json_array_foreach(gt, i, v)
        {
            if (!json_is_string(v) || strcmp(json_string_value(v), "client_credentials") != 0) {
                snprintf(why, sizeof why, "grant_types must be [] or [\"client_credentials\"]");
                goto invalid;
            }
            k->client_credentials = true;
        }
    }
    int ips_rc = sb_credential_allowed_ips(req, body, &k->allowed_ips, why, sizeof why);
    if (ips_rc == SB_ENOMEM) {
        json_decref(body);
        sb_app_internal_error(req, "creating an OAuth client", ips_rc);
        return;
    }
    if (ips_rc)
        goto invalid;
    if ((k->scopes & who.scopes) != k->scopes) {
        json_decref(body);
        sb_resp_problem(req, 403, "scope-escalation",
                        "a client cannot be given scopes that the calling credential lacks");
        return;
    }
    k->app = app;
    k->req = req;
    k->who = who;
    k->name = sb_arena_strndup(&req->arena, name, nlen);
    json_decref(body);
    if (!k->name || sb_id_new("cli", k->id) != 0) {
        sb_app_internal_error(req, "creating an OAuth client", SB_ENOMEM);
        return;
    }
    if (k->method != AUTH_TLS && sb_credential_new_secret("sbcs_", k->secret, sizeof k->secret)) {
        sb_app_internal_error(req, "creating an OAuth client", SB_EIO);
        return;
    }
    sb_app_submit(app, req, client_create_run, client_create_done, k);
    return;
invalid:
    json_decref(body);
    sb_resp_problem(req, 400, "invalid-request", why);
}

static void clients_list(sb_req *req, void *ud)
{
    sb_app_list_project(ud, req, SB_SCOPE_KEYS_READ,
                        "SELECT " CLIENT_COLS
                        " FROM oauth_clients WHERE project_id = ?1 AND revoked_at IS NULL "
                        "AND (?2 = 0 OR created_at > ?3 OR (created_at = ?3 AND id > ?4)) "
                        "ORDER BY created_at, id LIMIT ?5",
                        client_json, 7, 0, "listing OAuth clients");
}

static const sb_app_revoke_spec client_revoke = {
    .sql = "UPDATE oauth_clients SET revoked_at = ?1 WHERE id = ?2 AND project_id = ?3 AND "
           "revoked_at IS NULL",
    .action = "oauth_client.delete",
    .target_type = "oauth_client",
    .what = "deleting an OAuth client",
    .not_found = "no such OAuth client in this project",
    .committed = sb_app_forget_key, /* its tokens stop working on every loop */
};

static void clients_delete(sb_req *req, void *ud)
{
    sb_app *app = ud;
    sb_auth who;
    if (!sb_app_auth(app, req, SB_SCOPE_KEYS_WRITE, &who))
        return;
    if (req->params[0].len >= SB_ID_MAX) {
        sb_resp_problem(req, 404, "not-found", client_revoke.not_found);
        return;
    }
    sb_app_revoke_credential(app, req, &who, req->params[0], &client_revoke);
}

int sb_api_oauth_register(sb_app *app, sb_router *r)
{
    metadata *m = make_metadata(app);
    if (!m)
        return SB_ENOMEM;
    int rc = sb_router_add(r, "GET", "/.well-known/oauth-authorization-server", well_known, m);
    rc = rc ? rc : sb_router_add(r, "POST", "/oauth/token", token, app);
    rc = rc ? rc : sb_router_add(r, "POST", "/oauth/introspect", introspect, app);
    rc = rc ? rc : sb_router_add(r, "POST", "/oauth/revoke", revoke, app);
    rc = rc ? rc : sb_router_add(r, "POST", "/v1/oauth-clients", clients_create, app);
    rc = rc ? rc : sb_router_add(r, "GET", "/v1/oauth-clients", clients_list, app);
    rc = rc ? rc : sb_router_add(r, "DELETE", "/v1/oauth-clients/{client_id}", clients_delete, app);
    return rc;
}
