/*
 * The OAuth 2.0 authorization server's state and access tokens (RFC 6749 section 4.4,
 * RFC 9068, RFC 7009, RFC 8705).
 *
 * Access tokens are JWTs signed with the server key (sb_app_token_key, ES256): header typ
 * "at+jwt"; claims iss and aud (both sb_app_issuer: this server is its own resource
 * server), sub and client_id (the
 * client), scope, jti, iat, exp, project_id, and cnf.x5t#S256 when the client presented a
 * certificate. They are verified with the server keys only (never a project HS256 secret),
 * with typ, aud and iss required, so that a participant token (typ JWT, aud
 * "switchboard:rtc") is never an access token and an access token never a participant
 * token.
 *
 * Revocation: a set of revoked jti shared by every loop (a mutex, taken only when a token is
 * verified, not on cached requests), bounded by SB_OAUTH_MAX_REVOKED live entries, each
 * dropped once its token has expired; kept in the database too, so a restart does not bring
 * a revoked token back. Revoking bumps the credential generation, so every loop re-verifies
 * its cached tokens on their next use.
 */
#ifndef SB_API_OAUTH_H
#define SB_API_OAUTH_H

#include <sqlite3.h>
#include <stdbool.h>
#include <stdint.h>

#include "api/app.h"
#include "auth/jose.h"
#include "guard/ipallow.h"

#define SB_OAUTH_LEEWAY_S    5
#define SB_OAUTH_MAX_REVOKED 16384

typedef struct sb_oauth sb_oauth;

/* Loads the revoked jti that have not expired yet. 0 or SB_ENOMEM/SB_EIO. */
int sb_oauth_new(sb_app *app, sb_oauth **out);
void sb_oauth_free(sb_oauth *o);

/* A verified access token. */
typedef struct sb_access_token {
    sb_auth auth; /* project_id; credential_id = the client_id; scopes (token ∩ client) */
    char jti[SB_ID_MAX];
    int64_t iat, exp; /* Unix seconds */
    bool bound;       /* cnf.x5t#S256 present: x5t holds it */
    unsigned char x5t[32];
    sb_ipallow *allow;   /* the client's allowed_ips (caller frees), NULL = any */
    const char *refusal; /* SB_EAUTH beyond the JWT checks: "revoked", "client_deleted" */
} sb_access_token;

/*
 * Verifies an access token completely: signature with a server key, typ at+jwt, iss, aud,
 * exp/nbf/iat (SB_OAUTH_LEEWAY_S), the claims' types, revocation, and that the client still
 * exists and is not deleted (read through db). Does not check the certificate binding (the
 * caller compares x5t with its connection). Returns 0, SB_EAUTH with *why, or another
 * error.
 */
int sb_oauth_verify(sb_app *app, sqlite3 *db, const char *tok, size_t len, sb_access_token *out,
                    sb_jwt_reason *why);

/* Marks jti revoked until exp (Unix seconds). 0, or SB_EAGAIN when SB_OAUTH_MAX_REVOKED
 * live entries already exist. Thread-safe. */
int sb_oauth_revoke_jti(sb_oauth *o, const char *jti, int64_t exp);
bool sb_oauth_is_revoked(sb_oauth *o, const char *jti);

#endif
