#include "api/rtc_token.h"

#include <openssl/evp.h>
#include <stdio.h>

#include "core/alloc.h"
#include "net/loop.h"
#include "switchboard/error.h"

#define LEEWAY_S       10
#define MAX_LIFETIME_S 86400

typedef struct lookup_ctx {
    sb_app *app;
    sqlite3 *db;
    sb_jose_key *owned; /* a project key built for this verification */
    char key_project[SB_ID_MAX];
    bool server_key;
} lookup_ctx;

static const sb_jose_key *lookup(void *ud, const char *kid)
{
    lookup_ctx *c = ud;
    const sb_jose_key *server = sb_app_server_key(c->app, kid);
    if (server) {
        c->server_key = true;
        return server;
    }
    sqlite3_stmt *st = sb_store_stmt(c->db, "SELECT project_id, material FROM signing_keys WHERE "
                                            "kid = ?1 AND alg = 'HS256' AND project_id IS NOT "
                                            "NULL AND retired_at IS NULL");
    if (!st)
        return NULL;
    sqlite3_bind_text(st, 1, kid, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW) {
        snprintf(c->key_project, sizeof c->key_project, "%s",
                 (const char *)sqlite3_column_text(st, 0));
        sb_jose_key_from_secret(kid, sqlite3_column_blob(st, 1),
                                (size_t)sqlite3_column_bytes(st, 1), &c->owned);
    }
    sqlite3_reset(st);
    return c->owned;
}

static bool copy_str(const json_t *v, char *out, size_t cap, bool required)
{
    if (!v)
        return !required;
    if (!json_is_string(v) || json_string_length(v) >= cap)
        return false;
    memcpy(out, json_string_value(v), json_string_length(v) + 1);
    return true;
}

/* The claims beyond the registered ones, checked and copied. */
static bool read_claims(const json_t *c, const lookup_ctx *lc, sb_rtc_claims *out)
{
    memset(out, 0, offsetof(sb_rtc_claims, metadata) + 1);
    if (!copy_str(json_object_get(c, "sub"), out->identity, sizeof out->identity, true) ||
        !sb_identity_valid(out->identity, strlen(out->identity)) ||
        !copy_str(json_object_get(c, "room"), out->room, sizeof out->room, true) ||
        !sb_room_name_valid(out->room, strlen(out->room)) ||
        !copy_str(json_object_get(c, "jti"), out->jti, sizeof out->jti, lc->server_key) ||
        !copy_str(json_object_get(c, "name"), out->name, sizeof out->name, false) ||
        !copy_str(json_object_get(c, "metadata"), out->metadata, sizeof out->metadata, false) ||
        !copy_str(json_object_get(c, "project_id"), out->project_id, sizeof out->project_id,
                  lc->server_key))
        return false;
    if (!lc->server_key) {
        if (out->project_id[0] && strcmp(out->project_id, lc->key_project) != 0)
            return false;
        memcpy(out->project_id, lc->key_project, sizeof out->project_id);
    }
    static const char *const names[] = {"publish", "subscribe", "publish_data",
                                        "admin",   "hidden",    "record"};
    const json_t *g = json_object_get(c, "grants");
    out->grants = SB_GRANTS_DEFAULT;
    if (g) {
        if (!json_is_object(g))
            return false;
        for (unsigned i = 0; i < 6; i++) {
            const json_t *v = json_object_get(g, names[i]);
            if (!v)
                continue;
            if (!json_is_boolean(v))
                return false;
            out->grants = json_is_true(v) ? out->grants | (1u << i) : out->grants & ~(1u << i);
        }
    }
    out->exp = json_integer_value(json_object_get(c, "exp"));
    return true;
}

json_t *sb_rtc_grants_json(unsigned g)
{
    return json_pack("{s:b,s:b,s:b,s:b,s:b,s:b}", "publish", !!(g & SB_GRANT_PUBLISH), "subscribe",
                     !!(g & SB_GRANT_SUBSCRIBE), "publish_data", !!(g & SB_GRANT_PUBLISH_DATA),
                     "admin", !!(g & SB_GRANT_ADMIN), "hidden", !!(g & SB_GRANT_HIDDEN), "record",
                     !!(g & SB_GRANT_RECORD));
}

int sb_rtc_verify(sb_app *app, sb_req *req, const char *token, size_t len, sb_rtc_claims *out,
                  sb_jwt_reason *why)
{
    return sb_rtc_verify_on(app, req->loop->index, token, len, out, why);
}

int sb_rtc_verify_on(sb_app *app, int loop_index, const char *token, size_t len, sb_rtc_claims *out,
                     sb_jwt_reason *why)
{
    unsigned char digest[32];
    if (sb_jwt_token_hash(token, len, digest) != 0) {
        *why = SB_JWT_TOO_LARGE;
        return SB_EAUTH;
    }
    int64_t now = sb_time_ms() / 1000;
    uint64_t gen = sb_app_cache_generation();
    sb_rtc_cache_entry *cache = sb__app_rtc_cache(app, loop_index);
    sb_rtc_cache_entry *e = &cache[(digest[0] | (unsigned)digest[1] << 8) % SB_RTC_CACHE_SIZE];
    if (e->valid && e->gen == gen && memcmp(e->digest, digest, 32) == 0) {
        if (now >= e->claims.exp + LEEWAY_S) {
            e->valid = false;
            *why = SB_JWT_EXPIRED;
            return SB_EAUTH;
        }
        *out = e->claims;
        *why = SB_JWT_OK;
        return 0;
    }

    lookup_ctx lc = {.app = app, .db = sb_store_reader(sb__app_store(app), loop_index)};
    sb_jwt_expect expect = {
        .aud = "switchboard:rtc", .now = now, .leeway = LEEWAY_S, .max_lifetime = MAX_LIFETIME_S};
    json_t *claims = NULL;
    int rc = sb_jwt_verify(token, len, lookup, &lc, &expect, &claims, why);
    /* Our own tokens must also name us as issuer. */
    if (rc == 0 && lc.server_key) {
        const char *iss = json_string_value(json_object_get(claims, "iss"));
        if (!iss || strcmp(iss, sb_app_issuer(app)) != 0) {
            *why = SB_JWT_WRONG_ISSUER;
            rc = SB_EAUTH;
        }
    }
    if (rc == 0 && !read_claims(claims, &lc, out)) {
        *why = SB_JWT_BAD_CLAIM;
        rc = SB_EAUTH;
    }
    json_decref(claims);
    sb_jose_key_free(lc.owned);
    if (rc != 0)
        return rc;
    memcpy(e->digest, digest, 32);
    e->claims = *out;
    e->gen = gen;
    e->valid = true;
    return 0;
}
