#include "api/oauth.h"

#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>

#include "auth/scopes.h"
#include "core/alloc.h"
#include "store/store.h"
#include "switchboard/error.h"

/* Open addressing with linear probing, at most 3/4 full; rebuilt (dropping expired entries)
 * when it gets there. Removal happens only in rebuilds, so probes never meet tombstones. */
#define SLOTS          (SB_OAUTH_MAX_REVOKED * 4 / 3 + 1)
#define MAX_LIFETIME_S 3600

typedef struct rev_slot {
    unsigned char h[16]; /* SHA-256 of the jti, truncated */
    int64_t exp;         /* 0 = free */
} rev_slot;

struct sb_oauth {
    sb_app *app;
    pthread_mutex_t lock;
    rev_slot *slots;
    size_t count;
};

static void jti_hash(const char *jti, unsigned char h[16])
{
    unsigned char d[32];
    unsigned int n = 32;
    EVP_Digest(jti, strlen(jti), d, &n, EVP_sha256(), NULL);
    memcpy(h, d, 16);
}

static size_t slot_of(const unsigned char h[16])
{
    uint64_t v;
    memcpy(&v, h, sizeof v);
    return (size_t)(v % SLOTS);
}

static rev_slot *probe(rev_slot *slots, const unsigned char h[16])
{
    size_t i = slot_of(h);
    while (slots[i].exp != 0 && memcmp(slots[i].h, h, 16) != 0)
        i = (i + 1) % SLOTS;
    return &slots[i];
}

static void rebuild(sb_oauth *o, int64_t now)
{
    rev_slot *fresh = sb_calloc(SLOTS, sizeof *fresh);
    if (!fresh)
        return; /* keep the old table: still correct, only fuller */
    size_t n = 0;
    for (size_t i = 0; i < SLOTS; i++)
        if (o->slots[i].exp > now) {
            *probe(fresh, o->slots[i].h) = o->slots[i];
            n++;
        }
    sb_free(o->slots);
    o->slots = fresh;
    o->count = n;
}

static int revoke_locked(sb_oauth *o, const unsigned char h[16], int64_t exp, int64_t now)
{
    if (exp <= now)
        return 0; /* expired already: nothing to remember */
    rev_slot *s = probe(o->slots, h);
    if (s->exp != 0) {
        if (exp > s->exp)
            s->exp = exp;
        return 0;
    }
    if (o->count >= SB_OAUTH_MAX_REVOKED) {
        rebuild(o, now);
        if (o->count >= SB_OAUTH_MAX_REVOKED)
            return SB_EAGAIN;
        s = probe(o->slots, h);
    }
    memcpy(s->h, h, 16);
    s->exp = exp;
    o->count++;
    return 0;
}

int sb_oauth_revoke_jti(sb_oauth *o, const char *jti, int64_t exp)
{
    unsigned char h[16];
    jti_hash(jti, h);
    pthread_mutex_lock(&o->lock);
    int rc = revoke_locked(o, h, exp, sb_time_ms() / 1000);
    pthread_mutex_unlock(&o->lock);
    return rc;
}

bool sb_oauth_is_revoked(sb_oauth *o, const char *jti)
{
    unsigned char h[16];
    jti_hash(jti, h);
    pthread_mutex_lock(&o->lock);
    bool r = probe(o->slots, h)->exp != 0;
    pthread_mutex_unlock(&o->lock);
    return r;
}

typedef struct load_ctx {
    sb_oauth *o;
} load_ctx;

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
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        unsigned char h[16];
        jti_hash((const char *)sqlite3_column_text(st, 0), h);
        revoke_locked(o, h, sqlite3_column_int64(st, 1), now);
    }
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : SB_EIO;
}

int sb_oauth_new(sb_app *app, sb_oauth **out)
{
    sb_oauth *o = sb_calloc(1, sizeof *o);
    if (!o)
        return SB_ENOMEM;
    o->app = app;
    o->slots = sb_calloc(SLOTS, sizeof *o->slots);
    if (!o->slots) {
        sb_free(o);
        return SB_ENOMEM;
    }
    pthread_mutex_init(&o->lock, NULL);
    int rc = sb_store_run_sync(sb__app_store(app), load_revoked, o);
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
    pthread_mutex_destroy(&o->lock);
    sb_free(o->slots);
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

static sb_ipallow *allow_from_text(const char *text)
{
    json_t *a = text ? json_loads(text, 0, NULL) : NULL;
    size_t n = json_is_array(a) ? json_array_size(a) : 0;
    const char *entries[SB_IPALLOW_MAX_ENTRIES];
    sb_ipallow *out = NULL;
    if (n > 0 && n <= SB_IPALLOW_MAX_ENTRIES) {
        for (size_t i = 0; i < n; i++)
            entries[i] = json_string_value(json_array_get(a, i));
        if (sb_ipallow_new(entries, n, &out, NULL, 0) != 0)
            out = NULL;
    }
    json_decref(a);
    return out;
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
        if (sqlite3_column_type(st, 1) != SQLITE_NULL) {
            out->allow = allow_from_text((const char *)sqlite3_column_text(st, 1));
            if (!out->allow)
                step = SQLITE_DONE; /* cannot enforce it: refuse */
        }
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
