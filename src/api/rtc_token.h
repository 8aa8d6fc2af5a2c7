/*
 * Participant tokens presented to /v1/rtc (API.md "Participant tokens").
 *
 * Two kinds verify: tokens this server minted (ES256, the server key, `iss` = this server,
 * `project_id` claim naming the tenant) and tokens a backend minted itself with one of its
 * project's signing secrets (HS256, `kid` = the signing key's id; the tenant is the key's
 * project, and a `project_id` claim, if present, must agree). The algorithm always comes
 * from the key (RFC 8725). Verified tokens are cached per loop, keyed by the SHA-256 of the
 * whole token, until they expire or a signing key is retired (sb_app_cache_bump); the
 * caller still checks what can change while a token is valid: bans and revoked jti.
 */
#ifndef SB_API_RTC_TOKEN_H
#define SB_API_RTC_TOKEN_H

#include <stdbool.h>
#include <stdint.h>

#include "api/app.h"
#include "auth/jose.h"

enum {
    SB_GRANT_PUBLISH = 1 << 0,
    SB_GRANT_SUBSCRIBE = 1 << 1,
    SB_GRANT_PUBLISH_DATA = 1 << 2,
    SB_GRANT_ADMIN = 1 << 3,
    SB_GRANT_HIDDEN = 1 << 4,
    SB_GRANT_RECORD = 1 << 5,
};
#define SB_GRANTS_DEFAULT (SB_GRANT_PUBLISH | SB_GRANT_SUBSCRIBE | SB_GRANT_PUBLISH_DATA)

typedef struct sb_rtc_claims {
    char project_id[SB_ID_MAX];
    char room[129];
    char identity[129];
    char jti[SB_ID_MAX]; /* "" if the token had none (backend-minted) */
    char name[257];
    char metadata[4097];
    unsigned grants;
    int64_t exp; /* Unix seconds */
} sb_rtc_claims;

#define SB_RTC_CACHE_SIZE 128 /* verified tokens per loop */

typedef struct sb_rtc_cache_entry {
    unsigned char digest[32];
    bool valid;
    uint64_t gen;
    sb_rtc_claims claims;
} sb_rtc_cache_entry;

/* Verifies token on req's loop. Returns 0 and fills *out, or SB_EAUTH with *why set (the
 * caller closes with 4001), or another negative error. */
int sb_rtc_verify(sb_app *app, sb_req *req, const char *token, size_t len, sb_rtc_claims *out,
                  sb_jwt_reason *why);

/* The same from loop `loop_index` without a request (a fresh token sent over /v1/rtc). */
int sb_rtc_verify_on(sb_app *app, int loop_index, const char *token, size_t len, sb_rtc_claims *out,
                     sb_jwt_reason *why);

/* Grants as the API shows them. */
json_t *sb_rtc_grants_json(unsigned grants);

#endif
