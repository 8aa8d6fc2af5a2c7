#include "api/app.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api/grpc.h"
#include "api/oauth.h"
#include "api/rtc.h"
#include "api/rtc_token.h"
#include "auth/jti_set.h"
#include "auth/scopes.h"
#include "guard/ipallow.h"
#include "guard/ratelimit.h"
#include "core/alloc.h"
#include "core/json.h"
#include "core/log.h"
#include "core/sha256.h"
#include "core/str.h"
#include "events/webhooks.h"
#include "net/loop.h"
#include "net/server_internal.h"
#include "switchboard/error.h"

#define CRED_CACHE_SIZE    1024 /* per loop, direct-mapped */
#define CRED_CACHE_TTL_MS  60000
#define LAST_USED_EVERY_MS 60000
#define BOOTSTRAP_KEY_ID   "key_bootstrap"
#define MAX_BEARER         4096
/* Credentials tracked by the rate limiter at once (32 bytes each); past it the one
 * furthest from being limited is forgotten, which loses nothing. */
#define SB_APP_RATELIMIT_KEYS 8192
/* Server signing keys loaded at once: the current one and those retired recently enough
 * that tokens they signed may still be valid. */
#define SB_APP_MAX_SERVER_KEYS 8
/* A retired key verifies this long: the longest participant token (24 h) plus leeway. */
#define RETIRED_KEY_KEEP_MS ((24 * 3600 + 600) * 1000LL)

typedef struct cred_entry {
    unsigned char digest[32]; /* SHA-256 of the bearer string */
    bool valid;
    uint64_t gen;     /* cred_generation when cached */
    int64_t until_ms; /* cache expiry: min(key expiry, cached + TTL) */
    int64_t last_used_recorded_ms;
    sb_auth auth;
    sb_ipallow *allow;  /* the key's allowed_ips; NULL = any address */
    sb_rl_policy limit; /* rate 0: the configured default */
    bool bound;         /* usable only over TLS with the client certificate x5t (RFC 8705) */
    unsigned char x5t[32];
    bool token;    /* an OAuth access token: jti and rgen below apply */
    uint64_t rgen; /* revocation_generation when last checked */
    char jti[SB_ID_MAX];
} cred_entry;

#define RESP_CACHE_SIZE     512 /* per loop, direct-mapped */
#define RESP_CACHE_KEY      192
#define RESP_CACHE_MAX_BODY 16384

typedef struct resp_entry {
    uint64_t gen;
    size_t keylen, len;
    char key[RESP_CACHE_KEY];
    char *body;
} resp_entry;

typedef struct app_loop {
    cred_entry cache[CRED_CACHE_SIZE];
    resp_entry resp[RESP_CACHE_SIZE];
    sb_rtc_cache_entry *rtc; /* SB_RTC_CACHE_SIZE */
} app_loop;

/* Bumped after a credential is revoked, before the revoke is answered: every loop then
 * re-reads any cached credential once, so a revoke is effective for the very next request on
 * any connection of any loop. */
static _Atomic uint64_t cred_generation = 1;

/* Bumped after an access token is revoked: a loop then checks each cached token once
 * against the revoked set (a hash probe), instead of verifying every credential again. */
static _Atomic uint64_t revocation_generation = 1;

/* Bumped after every committed change that a cached read could show. */
static _Atomic uint64_t resp_generation = 1;

struct sb_app {
    const sb_config *cfg;
    sb_server *server;
    sb_store *store;
    int nloops;
    app_loop *loops;
    unsigned char pepper[32];
    sb_jose_key *token_key; /* signs: server_keys[0] */
    sb_jose_key *server_keys[SB_APP_MAX_SERVER_KEYS];
    int nserver_keys;
    char *jwks_json;
    size_t jwks_len;
    char *issuer;
    char default_project[SB_ID_MAX];
    char *generated_admin_key;
    void *owned[64]; /* route data made at registration, freed with the app */
    int nowned;
    sb_ratelimit_shared *rl;       /* per credential, shared by every loop, lock-free */
    sb_ratelimit_shared *oauth_rl; /* per client address on the /oauth endpoints */
    sb_rtc *rtc;
    sb_jti_set *revoked_rtc; /* participant tokens revoked by id (project + jti) */
    sb_oauth *oauth;
    sb_ipallow *allowed_ips;      /* security.allowed_ips; NULL = any */
    sb_ipallow *trusted_proxies;  /* http.trusted_proxies; NULL = none */
    struct sb_webhooks *webhooks; /* the webhook dispatcher (events/webhooks.c) */
};

sb_oauth *sb__app_oauth(const sb_app *app)
{
    return app->oauth;
}

/* Participant tokens revoked by id: one set for every project, keyed "project_id/jti" (a
 * project id has no '/'), so that one tenant cannot revoke another's token of the same id. */
#define SB_RTC_MAX_REVOKED 65536

static bool rtc_key(char *out, size_t cap, const char *project_id, const char *jti)
{
    int n = snprintf(out, cap, "%s/%s", project_id, jti);
    return jti[0] && n > 0 && (size_t)n < cap;
}

bool sb_app_participant_token_revoked(sb_app *app, const char *project_id, const char *jti)
{
    char key[2 * SB_ID_MAX + 2];
    return rtc_key(key, sizeof key, project_id, jti) && sb_jti_set_contains(app->revoked_rtc, key);
}

int sb_app_revoke_participant_token(sb_app *app, const char *project_id, const char *jti,
                                    int64_t until_ms)
{
    char key[2 * SB_ID_MAX + 2];
    if (!rtc_key(key, sizeof key, project_id, jti))
        return 0;
    return sb_jti_set_add(app->revoked_rtc, key, (until_ms + 999) / 1000, sb_time_ms() / 1000);
}

/* Revocations still in force, from the database into memory (at start). */
static int load_revocations(sqlite3 *db, void *arg)
{
    sb_app *app = arg;
    int64_t now = sb_time_ms();
    sqlite3_stmt *st = sb_store_stmt(db, "DELETE FROM revoked_tokens WHERE until_at <= ?1");
    if (!st)
        return SB_EIO;
    sqlite3_bind_int64(st, 1, now);
    int rc = sb_store_errno(sqlite3_step(st));
    sqlite3_reset(st);
    if (rc)
        return rc;
    st = sb_store_stmt(db, "SELECT project_id, jti, until_at FROM revoked_tokens");
    if (!st)
        return SB_EIO;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int r = sb_app_revoke_participant_token(app, (const char *)sqlite3_column_text(st, 0),
                                                (const char *)sqlite3_column_text(st, 1),
                                                sqlite3_column_int64(st, 2));
        if (r) {
            sqlite3_reset(st);
            return r;
        }
    }
    sqlite3_reset(st);
    return sb_store_errno(rc);
}

sb_rtc *sb__app_rtc(const sb_app *app)
{
    return app->rtc;
}

int sb__app_nloops(const sb_app *app)
{
    return app->nloops;
}

sb_store *sb__app_store(const sb_app *app)
{
    return app->store;
}

void *sb__app_own(sb_app *app, void *p)
{
    if (!p || app->nowned == (int)(sizeof app->owned / sizeof *app->owned)) {
        sb_free(p);
        return NULL;
    }
    app->owned[app->nowned++] = p;
    return p;
}

/* ---- files in data_dir ------------------------------------------------------------- */

static char *path_join(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    char *p = sb_malloc(la + lb + 2);
    if (p) {
        memcpy(p, a, la);
        p[la] = '/';
        memcpy(p + la + 1, b, lb + 1);
    }
    return p;
}

/* The pepper that keys every stored credential hash. Kept outside the database so that a
 * copy of the database alone does not allow offline guessing of key secrets. */
static int load_pepper(sb_app *app, char *err, size_t errlen)
{
    int rc = SB_ENOMEM;
    char *dir = path_join(app->cfg->data_dir, "secrets");
    char *file = dir ? path_join(dir, "pepper") : NULL;
    if (!file)
        goto out;
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        rc = -errno;
        snprintf(err, errlen, "cannot create %s: %s", dir, strerror(errno));
        goto out;
    }
    int fd = open(file, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, app->pepper, sizeof app->pepper);
        close(fd);
        if (n != (ssize_t)sizeof app->pepper) {
            rc = SB_EIO;
            snprintf(err, errlen, "%s is damaged (expected %zu bytes)", file, sizeof app->pepper);
            goto out;
        }
        rc = 0;
        goto out;
    }
    if (errno != ENOENT) {
        rc = -errno;
        snprintf(err, errlen, "cannot read %s: %s", file, strerror(errno));
        goto out;
    }
    if ((rc = sb_random(app->pepper, sizeof app->pepper)) != 0)
        goto out;
    fd = open(file, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 || write(fd, app->pepper, sizeof app->pepper) != (ssize_t)sizeof app->pepper ||
        fsync(fd) != 0) {
        rc = SB_EIO;
        snprintf(err, errlen, "cannot write %s: %s", file, strerror(errno));
        if (fd >= 0)
            close(fd);
        goto out;
    }
    close(fd);
    rc = 0;
out:
    sb_free(file);
    sb_free(dir);
    return rc;
}

/* ---- credentials ------------------------------------------------------------------- */

static void hash_secret(const sb_app *app, const char *secret, size_t len, unsigned char out[32])
{
    unsigned int n = 32;
    HMAC(EVP_sha256(), app->pepper, sizeof app->pepper, (const unsigned char *)secret, len, out,
         &n);
}

/* Key ids are embedded in the secret: sbk_<key id>_<random>. */
static bool key_id_of(const char *tok, size_t len, char *id)
{
    if (len < 8 || memcmp(tok, "sbk_", 4) != 0)
        return false;
    const char *start = tok + 4;
    const char *us = memchr(start, '_', len - 4);
    if (!us) /* "sbk_key_<20>_<secret>": the id itself holds one underscore */
        return false;
    us = memchr(us + 1, '_', (size_t)(tok + len - us - 1));
    if (!us || (size_t)(us - start) >= SB_ID_MAX)
        return false;
    memcpy(id, start, (size_t)(us - start));
    id[us - start] = '\0';
    return true;
}

typedef struct lookup_result {
    bool found;
    sb_auth auth;
    int64_t expires_at; /* 0 = never */
    sb_ipallow *allow;  /* owned by the caller */
    sb_rl_policy limit;
    bool bound;
    unsigned char x5t[32];
} lookup_result;

bool sb_app_allow_column(sqlite3_stmt *st, int col, sb_ipallow **out)
{
    *out = NULL;
    if (sqlite3_column_type(st, col) == SQLITE_NULL)
        return true;
    json_t *a = json_loads((const char *)sqlite3_column_text(st, col), 0, NULL);
    size_t n = json_is_array(a) ? json_array_size(a) : 0;
    const char *entries[SB_IPALLOW_MAX_ENTRIES];
    if (n > 0 && n <= SB_IPALLOW_MAX_ENTRIES) {
        for (size_t i = 0; i < n; i++)
            entries[i] = json_string_value(json_array_get(a, i));
        if (sb_ipallow_new(entries, n, out, NULL, 0) != 0)
            *out = NULL;
    }
    json_decref(a);
    return *out != NULL;
}

static int lookup_key_id(sqlite3 *db, const sb_app *app, const char *tok, size_t len,
                         const char *id, lookup_result *res);

int sb_hex_decode32(const char *hex, unsigned char out[32])
{
    if (!hex || strlen(hex) != 64)
        return SB_EINVAL;
    for (int i = 0; i < 32; i++) {
        int hi = sb_hex_value((unsigned char)hex[2 * i]),
            lo = sb_hex_value((unsigned char)hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return SB_EINVAL;
        out[i] = (unsigned char)(hi << 4 | lo);
    }
    return 0;
}

static int lookup_key(sqlite3 *db, const sb_app *app, const char *tok, size_t len,
                      lookup_result *res)
{
    char id[SB_ID_MAX];
    if (!key_id_of(tok, len, id))
        memcpy(id, BOOTSTRAP_KEY_ID, sizeof BOOTSTRAP_KEY_ID);
    int rc = lookup_key_id(db, app, tok, len, id, res);
    if (rc == 0 && !res->found && strcmp(id, BOOTSTRAP_KEY_ID) != 0) {
        /* A chosen SWITCHBOARD_ADMIN_KEY may itself look like "sbk_…". */
        memcpy(id, BOOTSTRAP_KEY_ID, sizeof BOOTSTRAP_KEY_ID);
        rc = lookup_key_id(db, app, tok, len, id, res);
    }
    return rc;
}

static int lookup_key_id(sqlite3 *db, const sb_app *app, const char *tok, size_t len,
                         const char *id, lookup_result *res)
{
    sqlite3_stmt *st =
        sb_store_stmt(db, "SELECT project_id, secret_hash, scopes, expires_at, revoked_at, "
                          "allowed_ips, rate_limit_rps, rate_limit_burst, tls_client_cert_sha256 "
                          "FROM api_keys WHERE id = ?1");
    if (!st)
        return SB_EIO;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    res->found = false;
    if (rc == SQLITE_ROW) {
        unsigned char h[32];
        hash_secret(app, tok, len, h);
        const void *stored = sqlite3_column_blob(st, 1);
        bool match =
            stored && sqlite3_column_bytes(st, 1) == 32 && CRYPTO_memcmp(h, stored, 32) == 0;
        int64_t exp = sqlite3_column_int64(st, 3);
        bool revoked = sqlite3_column_type(st, 4) != SQLITE_NULL;
        if (match && !revoked && (exp == 0 || exp > sb_time_ms())) {
            res->found = true;
            snprintf(res->auth.project_id, sizeof res->auth.project_id, "%s",
                     (const char *)sqlite3_column_text(st, 0));
            snprintf(res->auth.credential_id, sizeof res->auth.credential_id, "%s", id);
            const char *sc = (const char *)sqlite3_column_text(st, 2);
            sb_scopes_parse(sc, strlen(sc), &res->auth.scopes, NULL, NULL);
            res->expires_at = exp;
            res->limit.rate_per_second = sqlite3_column_double(st, 6);
            res->limit.burst = (uint32_t)sqlite3_column_int64(st, 7);
            res->allow = NULL;
            res->bound = sqlite3_column_type(st, 8) != SQLITE_NULL;
            if (res->bound &&
                sb_hex_decode32((const char *)sqlite3_column_text(st, 8), res->x5t) != 0)
                res->found = false;
            if (res->found && !sb_app_allow_column(st, 5, &res->allow))
                res->found = false; /* cannot enforce it: refuse rather than allow everyone */
        }
        rc = SQLITE_DONE;
    }
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : SB_EIO;
}

typedef struct last_used_job {
    char id[SB_ID_MAX];
    int64_t at;
} last_used_job;

static int last_used_run(sqlite3 *db, void *arg)
{
    last_used_job *j = arg;
    sqlite3_stmt *st = sb_store_stmt(db, "UPDATE api_keys SET last_used_at = ?1 WHERE id = ?2");
    if (!st)
        return SB_EIO;
    sqlite3_bind_int64(st, 1, j->at);
    sqlite3_bind_text(st, 2, j->id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return sb_store_errno(rc);
}

static void last_used_done(void *arg, int rc)
{
    (void)rc;
    sb_free(arg);
}

/* Recorded at most once a minute per key and loop: a write per request would cost more
 * than the request. Fire and forget: losing one such update on a crash is harmless. */
/* What every verified credential puts in its cache slot; e takes allow (and frees the list
 * it held). The caller sets the kind-specific rest (limit, expiry, token fields). */
static void cache_fill(cred_entry *e, const unsigned char digest[32], uint64_t gen,
                       const sb_auth *auth, sb_ipallow *allow, bool bound,
                       const unsigned char x5t[32])
{
    memcpy(e->digest, digest, 32);
    e->valid = true;
    e->gen = gen;
    e->auth = *auth;
    sb_ipallow_free(e->allow);
    e->allow = allow;
    e->bound = bound;
    memcpy(e->x5t, x5t, 32);
}

static void note_last_used(sb_app *app, cred_entry *e, int64_t now)
{
    if (now - e->last_used_recorded_ms < LAST_USED_EVERY_MS)
        return;
    e->last_used_recorded_ms = now;
    last_used_job *j = sb_malloc(sizeof *j);
    if (!j)
        return;
    memcpy(j->id, e->auth.credential_id, sizeof j->id);
    j->at = now;
    if (sb_store_submit(app->store, last_used_run, last_used_done, j, NULL, NULL) != 0)
        sb_free(j);
}

static void unauthorized(sb_req *req, const char *detail)
{
    sb_resp_header(req, "WWW-Authenticate",
                   SB_STR_LIT("Bearer realm=\"switchboard\", error=\"invalid_token\""));
    sb_resp_problem(req, 401, "unauthorized", detail);
}

/* A request authenticated twice (the Idempotency-Key wrapper, then the handler) counts once. */
static bool rate_counted(const sb_req *req)
{
    for (int i = 0; i < req->num_resp_headers; i++)
        if (sb_str_eq_lit(req->resp_headers[i].name, "RateLimit"))
            return true;
    return false;
}

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* One check against a table shared by every loop; answers 429 itself when refused. No lock:
 * a check is a compare-and-swap on the key's 64-bit TAT (sb_ratelimit_shared_check). */
static bool rate_check(sb_app *app, sb_req *req, sb_ratelimit_shared *rl, const char *key,
                       const sb_rl_policy *pol, const char *detail, bool oauth)
{
    (void)app;
    sb_rl_result r;
    uint64_t now = mono_ns();
    int rc = sb_ratelimit_shared_check(rl, key, strlen(key), pol, now, &r);
    if (rc != 0)
        return true; /* an invalid stored policy must not lock the caller out */
    char policy[SB_RL_HEADER_MAX], limit[SB_RL_HEADER_MAX];
    if (sb_ratelimit_format_headers(&r, pol, policy, sizeof policy, limit, sizeof limit) == 0) {
        sb_resp_header(req, "RateLimit-Policy", sb_str_from(policy));
        sb_resp_header(req, "RateLimit", sb_str_from(limit));
    }
    if (r.allowed)
        return true;
    char retry[24];
    snprintf(retry, sizeof retry, "%llu", (unsigned long long)r.retry_after_seconds);
    sb_resp_header(req, "Retry-After", sb_str_from(retry));
    if (oauth) {
        sb_app_oauth_error(req, 429, "temporarily_unavailable", detail);
        return false;
    }
    sb_resp_problem(req, 429, "rate-limited", detail);
    return false;
}

/* Per credential (an API key, or an OAuth client for all of its tokens), shared by every
 * loop so that a client gets its limit however its connections are spread. */
static bool rate_ok(sb_app *app, sb_req *req, const cred_entry *e)
{
    sb_rl_policy pol = e->limit;
    if (pol.rate_per_second <= 0 || pol.burst == 0)
        pol = (sb_rl_policy){(double)app->cfg->ratelimit_rps, (uint32_t)app->cfg->ratelimit_burst};
    return rate_check(app, req, app->rl, e->auth.credential_id, &pol,
                      "this credential is over its rate limit", false);
}

bool sb_app_client_addr(sb_app *app, sb_req *req, struct sockaddr_storage *out)
{
    const struct sockaddr *peer = (const struct sockaddr *)&req->peer;
    const char *xff = NULL;
    size_t xlen = 0;
    if (app->trusted_proxies && sb_ipallow_contains(app->trusted_proxies, peer)) {
        /* Several X-Forwarded-For fields count as one list joined with ",". */
        size_t total = 0;
        int n = 0;
        for (size_t i = 0; i < req->num_headers; i++)
            if (sb_str_case_eq(req->headers[i].name, "x-forwarded-for")) {
                total += req->headers[i].value.len + 1;
                n++;
            }
        char *joined = n ? sb_arena_alloc(&req->arena, total) : NULL;
        for (size_t i = 0; joined && i < req->num_headers; i++)
            if (sb_str_case_eq(req->headers[i].name, "x-forwarded-for")) {
                if (xlen)
                    joined[xlen++] = ',';
                memcpy(joined + xlen, req->headers[i].value.base, req->headers[i].value.len);
                xlen += req->headers[i].value.len;
            }
        xff = joined;
    }
    int rc = sb_ipallow_client_addr(peer, xff, xlen, app->trusted_proxies, out);
    if (rc == SB_EINVAL) /* not an IP peer (tests over a pipe): only the peer can be used */
        return false;
    return true;
}

bool sb_app_address_allowed(sb_app *app, sb_req *req, const sb_ipallow *list)
{
    struct sockaddr_storage addr;
    bool have = sb_app_client_addr(app, req, &addr);
    const struct sockaddr *sa = have ? (const struct sockaddr *)&addr : NULL;
    if (app->allowed_ips && !sb_ipallow_match(app->allowed_ips, sa))
        return false;
    return !list || sb_ipallow_match(list, sa);
}

void sb_app_oauth_error(sb_req *req, int status, const char *error, const char *description)
{
    sb_resp_header(req, "Cache-Control", SB_STR_LIT("no-store"));
    sb_resp_header(req, "Pragma", SB_STR_LIT("no-cache"));
    if (status == 401)
        sb_resp_header(req, "WWW-Authenticate", SB_STR_LIT("Basic realm=\"switchboard\""));
    sb_app_send_json(req, status,
                     json_pack("{s:s,s:s}", "error", error, "error_description", description));
}

bool sb_app_oauth_rate_ok(sb_app *app, sb_req *req)
{
    struct sockaddr_storage addr;
    char key[SB_RL_KEY_MAX] = "oauth:?";
    if (sb_app_client_addr(app, req, &addr)) {
        char ip[INET6_ADDRSTRLEN];
        sb_req_peer_str((const struct sockaddr_in6 *)&addr, ip, sizeof ip);
        snprintf(key, sizeof key, "oauth:%s", ip);
    }
    sb_rl_policy pol = {(double)app->cfg->oauth_rps, (uint32_t)app->cfg->oauth_burst};
    return rate_check(app, req, app->oauth_rl, key, &pol,
                      "too many requests to the authorization server from this address", true);
}

/* An access token is a compact JWS: three base64url segments. API keys never hold a '.'. */
static bool looks_like_jwt(const char *tok, size_t len)
{
    int dots = 0;
    for (size_t i = 0; i < len; i++)
        dots += tok[i] == '.';
    return dots == 2 && !(len > 4 && memcmp(tok, "sbk_", 4) == 0);
}

bool sb_app_auth(sb_app *app, sb_req *req, uint32_t need, sb_auth *out)
{
    if (app->allowed_ips && !sb_app_address_allowed(app, req, NULL)) {
        sb_resp_problem(req, 403, "address-not-allowed",
                        "this address may not call the API (security.allowed_ips)");
        return false;
    }
    const sb_http_header *h = sb_req_header(req, "authorization");
    if (!h) {
        sb_resp_header(req, "WWW-Authenticate", SB_STR_LIT("Bearer realm=\"switchboard\""));
        sb_resp_problem(req, 401, "unauthorized",
                        "an Authorization: Bearer credential is required");
        return false;
    }
    sb_str v = h->value;
    if (v.len < 8 || !sb_str_case_eq((sb_str){v.base, 7}, "bearer ") || v.len - 7 > MAX_BEARER) {
        unauthorized(req, "the Authorization header must be: Bearer <credential>");
        return false;
    }
    const char *tok = v.base + 7;
    size_t len = v.len - 7;
    while (len && *tok == ' ') {
        tok++;
        len--;
    }
    unsigned char digest[32];
    if (sb_sha256(tok, len, digest) != 0) {
        sb_app_internal_error(req, "credential lookup", SB_ETLS);
        return false;
    }
    app_loop *al = &app->loops[req->loop->index];
    cred_entry *e = &al->cache[(digest[0] | (unsigned)digest[1] << 8) % CRED_CACHE_SIZE];
    int64_t now = sb_time_ms();
    uint64_t gen = atomic_load_explicit(&cred_generation, memory_order_acquire);
    uint64_t rgen = atomic_load_explicit(&revocation_generation, memory_order_acquire);
    if (e->valid && e->token && e->rgen != rgen && e->gen == gen &&
        memcmp(e->digest, digest, 32) == 0) {
        if (sb_oauth_is_revoked(app->oauth, e->jti)) {
            e->valid = false;
            unauthorized(req, "the access token is not valid (revoked)");
            return false;
        }
        e->rgen = rgen;
    }
    if (!(e->valid && e->gen == gen && memcmp(e->digest, digest, 32) == 0 && now < e->until_ms)) {
        lookup_result res;
        memset(&res, 0, sizeof res);
        if (looks_like_jwt(tok, len)) {
            sb_access_token at;
            sb_jwt_reason why = SB_JWT_OK;
            int rc = sb_oauth_verify(app, sb_app_reader(app, req), tok, len, &at, &why);
            if (rc == SB_EAUTH && why != SB_JWT_MALFORMED) {
                char detail[128];
                snprintf(detail, sizeof detail, "the access token is not valid (%s)",
                         at.refusal ? at.refusal : sb_jwt_strerror(why));
                unauthorized(req, detail);
                return false;
            }
            if (rc != 0 && rc != SB_EAUTH) {
                sb_app_internal_error(req, "access token verification", rc);
                return false;
            }
            if (rc == 0) {
                cache_fill(e, digest, gen, &at.auth, at.allow, at.bound, at.x5t);
                e->limit = (sb_rl_policy){0, 0};
                e->until_ms = at.exp * 1000 + SB_OAUTH_LEEWAY_S * 1000;
                e->last_used_recorded_ms = now; /* tokens have no last_used_at */
                e->token = true;
                e->rgen = rgen; /* read before the revoked set was: a later revoke bumps it */
                memcpy(e->jti, at.jti, sizeof e->jti);
                goto cached;
            }
        }
        if (lookup_key(sb_app_reader(app, req), app, tok, len, &res) != 0) {
            sb_app_internal_error(req, "credential lookup", SB_EIO);
            return false;
        }
        if (!res.found) {
            unauthorized(req, "the credential is not valid (unknown, revoked or expired)");
            return false;
        }
        cache_fill(e, digest, gen, &res.auth, res.allow, res.bound, res.x5t);
        e->limit = res.limit;
        e->until_ms = now + CRED_CACHE_TTL_MS;
        if (res.expires_at && res.expires_at < e->until_ms)
            e->until_ms = res.expires_at;
        e->last_used_recorded_ms = 0;
        e->token = false;
    }
cached:
    /* RFC 8705 section 3: a certificate-bound credential is only good over a connection
     * that proves possession of that certificate. */
    if (e->bound && !(req->tls_client_cert_sha256 &&
                      CRYPTO_memcmp(req->tls_client_cert_sha256, e->x5t, 32) == 0)) {
        unauthorized(req, "the credential is bound to a client certificate that this connection "
                          "did not present");
        return false;
    }
    if (e->allow && !sb_app_address_allowed(app, req, e->allow)) {
        sb_resp_problem(req, 403, "address-not-allowed",
                        "this credential may not be used from this address");
        return false;
    }
    if (memcmp(e->auth.credential_id, "key_", 4) == 0) /* API keys; tokens have no row */
        note_last_used(app, e, now);
    if (app->cfg->ratelimit_enabled && !rate_counted(req) && !rate_ok(app, req, e))
        return false;
    if ((e->auth.scopes & need) != need) {
        char want[256];
        sb_scopes_format(need & ~e->auth.scopes, want, sizeof want);
        char detail[320];
        snprintf(detail, sizeof detail, "the credential lacks the scope: %s", want);
        sb_resp_problem(req, 403, "insufficient-scope", detail);
        return false;
    }
    *out = e->auth;
    return true;
}

void sb_app_token_revoked(sb_app *app)
{
    (void)app;
    atomic_fetch_add_explicit(&revocation_generation, 1, memory_order_acq_rel);
}

void sb_app_forget_key(sb_app *app, const char *key_id)
{
    (void)app;
    (void)key_id;
    atomic_fetch_add_explicit(&cred_generation, 1, memory_order_acq_rel);
}

/* ---- handler helpers --------------------------------------------------------------- */

sqlite3 *sb_app_reader(sb_app *app, sb_req *req)
{
    return sb_store_reader(app->store, req->loop->index);
}

static void post_to_loop(void *target, void (*fn)(void *arg), void *arg)
{
    sb_loop_post_plain(target, fn, arg);
}

typedef struct submit_ctx {
    sb_store_job_fn job;
    sb_store_done_fn done;
    void *arg;
    sb_loop *loop;
} submit_ctx;

static int submit_job(sqlite3 *db, void *arg)
{
    submit_ctx *c = arg;
    return c->job(db, c->arg);
}

static void submit_done(void *arg, int rc)
{
    submit_ctx *c = arg;
    sb_loop *loop = c->loop;
    c->done(c->arg, rc);
    sb_loop_job_done(loop);
}

bool sb_app_submit(sb_app *app, sb_req *req, sb_store_job_fn job, sb_store_done_fn done, void *arg)
{
    /* The wrapper lives in the request's arena, which outlives the job: the request is only
     * released once answered, and only done answers it. */
    submit_ctx *c = sb_arena_alloc(&req->arena, sizeof *c);
    if (!c) {
        sb_resp_problem(req, 503, "overloaded", "out of memory; retry later");
        return false;
    }
    *c = (submit_ctx){job, done, arg, req->loop};
    int rc = sb_store_submit(app->store, submit_job, submit_done, c, post_to_loop, req->loop);
    if (rc == SB_EAGAIN) {
        sb_resp_header(req, "Retry-After", SB_STR_LIT("1"));
        sb_resp_problem(req, 503, "overloaded", "the write queue is full; retry shortly");
        return false;
    }
    if (rc != 0) {
        sb_app_internal_error(req, "submitting a write", rc);
        return false;
    }
    req->loop->pending_jobs++;
    return true;
}

/* Jobs not tied to a request (the real-time layer's): the wrapper is malloc'd and freed
 * after done. loop NULL (shutdown, every loop has stopped): runs the job synchronously. */
static void loop_submit_done(void *arg, int rc)
{
    submit_ctx *c = arg;
    sb_loop *loop = c->loop;
    c->done(c->arg, rc);
    sb_free(c);
    sb_loop_job_done(loop);
}

bool sb_app_submit_loop(sb_app *app, sb_loop *loop, sb_store_job_fn job, sb_store_done_fn done,
                        void *arg)
{
    if (!loop) {
        done(arg, sb_store_run_sync(app->store, job, arg));
        return true;
    }
    submit_ctx *c = sb_malloc(sizeof *c);
    if (!c)
        return false;
    *c = (submit_ctx){job, done, arg, loop};
    if (sb_store_submit(app->store, submit_job, loop_submit_done, c, post_to_loop, loop) != 0) {
        sb_free(c);
        return false;
    }
    loop->pending_jobs++;
    return true;
}

void sb_app_internal_error(sb_req *req, const char *what, int rc)
{
    if (rc == SB_ECANCELED) { /* the loop that owns the work has shut down */
        sb_resp_header(req, "Retry-After", SB_STR_LIT("1"));
        sb_resp_problem(req, 503, "shutting-down", "the server is shutting down; retry");
        return;
    }
    sb_log(SB_LOG_ERROR, "internal error", "what", what, "reason", sb_strerror(rc), "request_id",
           req->request_id, NULL);
    sb_resp_problem(req, 500, "internal", "an internal error occurred; see the server log");
}

void *sb_app_ctx(sb_req *req, size_t size, const char *what)
{
    void *p = sb_arena_alloc(&req->arena, size);
    if (!p) {
        sb_app_internal_error(req, what, SB_ENOMEM);
        return NULL;
    }
    memset(p, 0, size);
    return p;
}

json_t *sb_app_body(sb_req *req)
{
    const sb_http_header *ct = sb_req_header(req, "content-type");
    if (ct) {
        sb_str v = ct->value;
        size_t n = 0;
        while (n < v.len && v.base[n] != ';' && v.base[n] != ' ')
            n++;
        if (!sb_str_case_eq((sb_str){v.base, n}, "application/json")) {
            sb_resp_problem(req, 415, "unsupported-media-type",
                            "the request body must be application/json");
            return NULL;
        }
    }
    char why[256];
    json_t *j = sb_json_parse_object(req->body.base, req->body.len, why, sizeof why);
    if (!j)
        sb_resp_problem(req, 400, "invalid-json", why);
    return j;
}

void sb_app_send_json(sb_req *req, int status, json_t *j)
{
    sb_buf b;
    sb_buf_init(&b, 64u << 20);
    int rc = j ? sb_json_dump(j, &b) : SB_ENOMEM;
    json_decref(j);
    if (rc != 0) {
        sb_buf_free(&b);
        sb_app_internal_error(req, "serializing a response", rc);
        return;
    }
    sb_resp_send(req, status, "application/json", b.base, b.len);
    sb_buf_free(&b);
}

int sb_app_audit(sqlite3 *db, const sb_auth *who, const char *request_id, const char *action,
                 const char *target_type, const char *target_id)
{
    sqlite3_stmt *st = sb_store_stmt(
        db, "INSERT INTO audit_log (project_id, at, credential_id, request_id, action, "
            "target_type, target_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)");
    if (!st)
        return SB_EIO;
    sqlite3_bind_text(st, 1, who->project_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, sb_time_ms());
    sqlite3_bind_text(st, 3, who->credential_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, request_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, action, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, target_type, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 7, target_id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return sb_store_errno(rc);
}

typedef struct credential_revoke {
    sb_app *app;
    sb_req *req;
    const sb_app_revoke_spec *spec;
    sb_auth who;
    char id[SB_ID_MAX];
} credential_revoke;

static int credential_revoke_run(sqlite3 *db, void *arg)
{
    credential_revoke *k = arg;
    sqlite3_stmt *st = sb_store_stmt(db, k->spec->sql);
    if (!st)
        return SB_EIO;
    sqlite3_bind_int64(st, 1, sb_time_ms());
    sqlite3_bind_text(st, 2, k->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, k->who.project_id, -1, SQLITE_STATIC);
    int rc = sb_store_errno(sqlite3_step(st));
    sqlite3_reset(st);
    if (rc || sqlite3_changes(db) == 0)
        return rc; /* 0: unknown or already revoked */
    rc =
        sb_app_audit(db, &k->who, k->req->request_id, k->spec->action, k->spec->target_type, k->id);
    return rc ? rc : 1;
}

static void credential_revoke_done(void *arg, int rc)
{
    credential_revoke *k = arg;
    if (rc < 0) {
        sb_app_internal_error(k->req, k->spec->what, rc);
        return;
    }
    if (rc == 0) {
        sb_resp_problem(k->req, 404, "not-found", k->spec->not_found);
        return;
    }
    /* Committed: the credential stops working on every loop before anyone hears 204. */
    k->spec->committed(k->app, k->id);
    sb_resp_send(k->req, 204, NULL, NULL, 0);
}

void sb_app_revoke_credential(sb_app *app, sb_req *req, const sb_auth *who, sb_str id,
                              const sb_app_revoke_spec *spec)
{
    credential_revoke *k = sb_app_ctx(req, sizeof *k, spec->what);
    if (!k)
        return;
    k->app = app;
    k->req = req;
    k->spec = spec;
    k->who = *who;
    memcpy(k->id, id.base, id.len);
    k->id[id.len] = '\0';
    sb_app_submit(app, req, credential_revoke_run, credential_revoke_done, k);
}

bool sb_req_query(sb_req *req, const char *name, sb_str *out)
{
    size_t nl = strlen(name);
    const char *q = req->query.base, *end = q + req->query.len;
    while (q && q < end) {
        const char *amp = memchr(q, '&', (size_t)(end - q));
        const char *pe = amp ? amp : end;
        const char *eq = memchr(q, '=', (size_t)(pe - q));
        const char *ke = eq ? eq : pe;
        if ((size_t)(ke - q) == nl && memcmp(q, name, nl) == 0) {
            const char *v = eq ? eq + 1 : pe;
            size_t vl = (size_t)(pe - v);
            char *d = sb_arena_alloc(&req->arena, vl + 1);
            if (!d)
                return false;
            size_t n = 0;
            for (size_t i = 0; i < vl; i++) {
                if (v[i] == '+') {
                    d[n++] = ' ';
                } else if (v[i] == '%' && i + 2 < vl &&
                           sb_hex_value((unsigned char)v[i + 1]) >= 0 &&
                           sb_hex_value((unsigned char)v[i + 2]) >= 0) {
                    d[n++] = (char)(sb_hex_value((unsigned char)v[i + 1]) << 4 |
                                    sb_hex_value((unsigned char)v[i + 2]));
                    i += 2;
                } else {
                    d[n++] = v[i];
                }
            }
            d[n] = '\0';
            *out = (sb_str){d, n};
            return true;
        }
        q = amp ? amp + 1 : end;
    }
    return false;
}

bool sb_app_page(sb_req *req, sb_page *p)
{
    sb_str v;
    p->limit = 50;
    p->has_cursor = false;
    if (sb_req_query(req, "limit", &v)) {
        char *endp;
        long n = strtol(v.base, &endp, 10);
        if (v.len == 0 || v.len > 3 || v.base[0] < '0' || v.base[0] > '9' || *endp || n < 1 ||
            n > 200) {
            sb_resp_problem(req, 400, "invalid-parameter",
                            "limit must be an integer from 1 to 200");
            return false;
        }
        p->limit = (int)n;
    }
    if (sb_req_query(req, "cursor", &v) && v.len) {
        unsigned char raw[96];
        size_t n;
        if (sb_jose_b64url_decode(v.base, v.len, raw, sizeof raw - 1, &n) != 0)
            goto bad;
        raw[n] = '\0';
        char *colon = memchr(raw, ':', n);
        if (!colon || (size_t)((char *)raw + n - colon - 1) >= SB_ID_MAX)
            goto bad;
        *colon = '\0';
        char *endp;
        p->after_ms = strtoll((char *)raw, &endp, 10);
        if (*endp || colon == (char *)raw)
            goto bad;
        memcpy(p->after_id, colon + 1, strlen(colon + 1) + 1);
        p->has_cursor = true;
    }
    return true;
bad:
    sb_resp_problem(req, 400, "invalid-parameter", "cursor is not one this server issued");
    return false;
}

int sb_app_page_next(json_t *resp, bool more, int64_t last_ms, const char *last_id)
{
    if (!more)
        return json_object_set_new(resp, "next_cursor", json_null());
    char raw[96];
    int n = snprintf(raw, sizeof raw, "%lld:%s", (long long)last_ms, last_id);
    sb_buf b;
    sb_buf_init(&b, 256);
    int rc = sb_jose_b64url_encode(raw, (size_t)n, &b);
    rc = rc ? rc : sb_buf_append(&b, "", 1);
    if (rc == 0)
        rc = json_object_set_new(resp, "next_cursor", json_string(b.base));
    sb_buf_free(&b);
    return rc;
}

/* ---- start-up ---------------------------------------------------------------------- */

typedef struct bootstrap {
    sb_app *app;
    const char *env_key;
    char generated[128];
    bool made_key;
    char *pems[SB_APP_MAX_SERVER_KEYS]; /* server keys found, newest first */
    size_t pem_lens[SB_APP_MAX_SERVER_KEYS];
    char kids[SB_APP_MAX_SERVER_KEYS][SB_ID_MAX];
    int nkeys;
    char kid[SB_ID_MAX]; /* of fresh */
    sb_jose_key *fresh;  /* made now: it signs */
    char err[256];
} bootstrap;

static int step_done(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return sb_store_errno(rc);
}

static int bootstrap_run(sqlite3 *db, void *arg)
{
    bootstrap *b = arg;
    sb_app *app = b->app;
    int64_t now = sb_time_ms();
    int rc;
    sqlite3_stmt *st = sb_store_stmt(
        db, "INSERT OR IGNORE INTO projects (id, name, created_at) VALUES (?1, 'default', ?2)");
    if (!st)
        return SB_EIO;
    sqlite3_bind_text(st, 1, app->default_project, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, now);
    if ((rc = step_done(st)) != 0)
        return rc;

    char scopes[256];
    sb_scopes_format(SB_SCOPES_ALL, scopes, sizeof scopes);
    unsigned char h[32];
    const char *secret = b->env_key;
    if (!secret) {
        st = sb_store_stmt(db, "SELECT 1 FROM api_keys WHERE id = ?1");
        if (!st)
            return SB_EIO;
        sqlite3_bind_text(st, 1, BOOTSTRAP_KEY_ID, -1, SQLITE_STATIC);
        bool exists = sqlite3_step(st) == SQLITE_ROW;
        sqlite3_reset(st);
        if (!exists) {
            unsigned char r[32];
            sb_buf enc;
            char encbuf[64];
            sb_buf_init(&enc, 0);
            enc = (sb_buf){encbuf, 0, sizeof encbuf, sizeof encbuf};
            if ((rc = sb_random(r, sizeof r)) != 0 || (rc = sb_jose_b64url_encode(r, 32, &enc)))
                return rc;
            snprintf(b->generated, sizeof b->generated, "sbk_%s_%.*s", BOOTSTRAP_KEY_ID,
                     (int)enc.len, enc.base);
            secret = b->generated;
            b->made_key = true;
        }
    }
    if (secret) {
        hash_secret(app, secret, strlen(secret), h);
        st = sb_store_stmt(db, "INSERT INTO api_keys (id, project_id, name, secret_hash, scopes, "
                               "created_at) VALUES (?1, ?2, 'bootstrap admin', ?3, ?4, ?5) "
                               "ON CONFLICT (id) DO UPDATE SET secret_hash = excluded.secret_hash, "
                               "scopes = excluded.scopes, revoked_at = NULL, expires_at = NULL");
        if (!st)
            return SB_EIO;
        sqlite3_bind_text(st, 1, BOOTSTRAP_KEY_ID, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, app->default_project, -1, SQLITE_STATIC);
        sqlite3_bind_blob(st, 3, h, 32, SQLITE_TRANSIENT);
        sqlite3_bind_text(st, 4, scopes, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(st, 5, now);
        if ((rc = step_done(st)) != 0)
            return rc;
    }

    /* The server's signing keys (oauth.signing_alg, ES256 by default; participant and access
     * tokens). The newest active one of that algorithm signs; it is replaced once older than
     * oauth.signing_key_rotation (or when the algorithm changes), and a retired key is still
     * loaded (and published in the JWKS) until every token it can have signed has expired. */
    const char *alg = app->cfg->oauth_signing_alg && *app->cfg->oauth_signing_alg
                          ? app->cfg->oauth_signing_alg
                          : "ES256";
    sb_jose_alg jalg = strcmp(alg, "EdDSA") == 0 ? SB_JOSE_EDDSA : SB_JOSE_ES256;
    st = sb_store_stmt(db, "SELECT kid, material, created_at, retired_at, alg = ?3 FROM "
                           "signing_keys WHERE project_id IS NULL AND alg IN ('ES256', 'EdDSA') "
                           "AND (retired_at IS NULL OR retired_at > ?1) ORDER BY (retired_at IS "
                           "NULL AND alg = ?3) DESC, created_at DESC, kid DESC LIMIT ?2");
    if (!st)
        return SB_EIO;
    sqlite3_bind_int64(st, 1, now - RETIRED_KEY_KEEP_MS);
    sqlite3_bind_int(st, 2, SB_APP_MAX_SERVER_KEYS - 1);
    sqlite3_bind_text(st, 3, sb_jose_alg_name(jalg), -1, SQLITE_STATIC);
    bool need_new = true;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int i = b->nkeys;
        if (i == 0 && sqlite3_column_type(st, 3) == SQLITE_NULL && sqlite3_column_int(st, 4)) {
            int64_t age = now - sqlite3_column_int64(st, 2);
            need_new =
                app->cfg->oauth_key_rotation_ms > 0 && age >= app->cfg->oauth_key_rotation_ms;
        }
        snprintf(b->kids[i], sizeof b->kids[i], "%s", (const char *)sqlite3_column_text(st, 0));
        b->pem_lens[i] = (size_t)sqlite3_column_bytes(st, 1);
        b->pems[i] = sb_strndup(sqlite3_column_blob(st, 1), b->pem_lens[i]);
        if (!b->pems[i]) {
            sqlite3_reset(st);
            return SB_ENOMEM;
        }
        b->nkeys++;
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return SB_EIO;
    if (!need_new)
        return 0;
    if ((rc = sb_id_new("sk", b->kid)) != 0 ||
        (rc = sb_jose_key_generate(jalg, b->kid, &b->fresh)) != 0)
        return rc;
    sb_buf pem;
    sb_buf_init(&pem, 1 << 16);
    if ((rc = sb_jose_key_private_pem(b->fresh, &pem)) != 0) {
        sb_buf_free(&pem);
        return rc;
    }
    st = sb_store_stmt(db, "UPDATE signing_keys SET retired_at = ?1 WHERE project_id IS NULL AND "
                           "alg IN ('ES256', 'EdDSA') AND retired_at IS NULL");
    if (!st) {
        sb_buf_free(&pem);
        return SB_EIO;
    }
    sqlite3_bind_int64(st, 1, now);
    if ((rc = step_done(st)) != 0) {
        sb_buf_free(&pem);
        return rc;
    }
    st = sb_store_stmt(db, "INSERT INTO signing_keys (kid, project_id, alg, material, created_at) "
                           "VALUES (?1, NULL, ?4, ?2, ?3)");
    if (!st) {
        sb_buf_free(&pem);
        return SB_EIO;
    }
    sqlite3_bind_text(st, 1, b->kid, -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 2, pem.base, (int)pem.len, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 3, now);
    sqlite3_bind_text(st, 4, sb_jose_alg_name(jalg), -1, SQLITE_STATIC);
    rc = step_done(st);
    OPENSSL_cleanse(pem.base, pem.len);
    sb_buf_free(&pem);
    if (rc == 0 && b->nkeys > 0)
        sb_log(SB_LOG_INFO, "server signing key rotated", "kid", b->kid, "previous", b->kids[0],
               NULL);
    return rc;
}

static int build_jwks(sb_app *app)
{
    json_t *jwks = NULL;
    int rc = sb_jose_jwks((const sb_jose_key *const *)app->server_keys, (size_t)app->nserver_keys,
                          &jwks);
    if (rc)
        return rc;
    app->jwks_json = json_dumps(jwks, JSON_COMPACT);
    json_decref(jwks);
    if (!app->jwks_json)
        return SB_ENOMEM;
    app->jwks_len = strlen(app->jwks_json);
    return 0;
}

static void bootstrap_wipe(bootstrap *b)
{
    for (int i = 0; i < b->nkeys; i++) {
        if (b->pems[i]) {
            OPENSSL_cleanse(b->pems[i], b->pem_lens[i]);
            sb_free(b->pems[i]);
            b->pems[i] = NULL;
        }
    }
    b->nkeys = 0;
}

int sb_app_new(sb_app **out, const sb_config *cfg, sb_server *server, int nloops, char *err,
               size_t errlen)
{
    int rc = SB_ENOMEM;
    char *dbpath = NULL;
    bootstrap b;
    memset(&b, 0, sizeof b);
    sb_app *app = sb_calloc(1, sizeof *app);
    if (!app)
        goto fail;
    app->cfg = cfg;
    app->server = server;
    app->nloops = nloops;
    snprintf(app->default_project, sizeof app->default_project, "prj_default");
    app->loops = sb_calloc((size_t)nloops, sizeof *app->loops);
    if (!app->loops)
        goto fail;
    for (int i = 0; i < nloops; i++)
        if (!(app->loops[i].rtc = sb_calloc(SB_RTC_CACHE_SIZE, sizeof *app->loops[i].rtc)))
            goto fail;
    const char *base = sb_server_listener_url(server, 0);
    if (cfg->oauth_issuer && *cfg->oauth_issuer)
        base = cfg->oauth_issuer;
    app->issuer = sb_strdup(base ? base : "https://localhost");
    if (!app->issuer)
        goto fail;
    if ((rc = load_pepper(app, err, errlen)) != 0)
        goto fail;
    uint64_t seed;
    if ((rc = sb_random(&seed, sizeof seed)) != 0 ||
        (rc = sb_ratelimit_shared_new(SB_APP_RATELIMIT_KEYS, seed, &app->rl)) != 0 ||
        (rc = sb_ratelimit_shared_new(SB_APP_RATELIMIT_KEYS, seed ^ 0x9e3779b97f4a7c15ull,
                                      &app->oauth_rl)) != 0)
        goto fail;
    if ((rc = sb_ipallow_from_list(cfg->security_allowed_ips, &app->allowed_ips, err, errlen)) ||
        (rc = sb_ipallow_from_list(cfg->http_trusted_proxies, &app->trusted_proxies, err, errlen)))
        goto fail;

    b.app = app;
    b.env_key = getenv("SWITCHBOARD_ADMIN_KEY");
    if (b.env_key && strlen(b.env_key) < 32) {
        snprintf(err, errlen, "SWITCHBOARD_ADMIN_KEY must be at least 32 characters");
        rc = SB_ECONFIG;
        goto fail;
    }
    dbpath = path_join(cfg->data_dir, "switchboard.db");
    if (!dbpath)
        goto fail;
    /* One reader per loop, plus one for the webhook dispatcher's thread (the last). */
    sb_store_opts so = {.path = dbpath, .readers = nloops + 1, .synchronous_full = true};
    if ((rc = sb_store_open(&app->store, &so, err, errlen)) != 0)
        goto fail;
    if ((rc = sb_store_run_sync(app->store, bootstrap_run, &b)) < 0) {
        snprintf(err, errlen, "cannot initialise the database: %s", sb_strerror(rc));
        goto fail;
    }
    if (b.fresh) {
        app->server_keys[app->nserver_keys++] = b.fresh;
        b.fresh = NULL;
    }
    for (int i = 0; i < b.nkeys && app->nserver_keys < SB_APP_MAX_SERVER_KEYS; i++) {
        sb_jose_key *k = NULL;
        if ((rc = sb_jose_key_from_pem(b.kids[i], b.pems[i], b.pem_lens[i], &k)) != 0) {
            snprintf(err, errlen, "the stored token-signing key %s cannot be loaded", b.kids[i]);
            goto fail;
        }
        app->server_keys[app->nserver_keys++] = k;
    }
    app->token_key = app->server_keys[0];
    if ((rc = build_jwks(app)) != 0)
        goto fail;
    if (b.made_key && !(app->generated_admin_key = sb_strdup(b.generated))) {
        rc = SB_ENOMEM;
        goto fail;
    }
    OPENSSL_cleanse(b.generated, sizeof b.generated);
    bootstrap_wipe(&b);
    if ((rc = sb_jti_set_new(SB_RTC_MAX_REVOKED, &app->revoked_rtc)) != 0 ||
        (rc = sb_store_run_sync(app->store, load_revocations, app)) < 0) {
        snprintf(err, errlen, "cannot load revoked tokens: %s", sb_strerror(rc));
        goto fail;
    }
    if ((rc = sb_rtc_new(&app->rtc, app, server, nloops)) != 0 ||
        (rc = sb_oauth_new(app, &app->oauth)) != 0)
        goto fail;
    sb_free(dbpath);
    *out = app;
    return 0;
fail:
    OPENSSL_cleanse(b.generated, sizeof b.generated);
    bootstrap_wipe(&b);
    sb_jose_key_free(b.fresh);
    sb_free(dbpath);
    sb_app_free(app);
    return rc;
}

void sb_app_free(sb_app *app)
{
    if (!app)
        return;
    sb_rtc_free(app->rtc); /* its last hooks still write */
    sb_jti_set_free(app->revoked_rtc);
    sb_oauth_free(app->oauth);
    sb_webhooks_stop(app->webhooks); /* writes its last attempts; before the store closes */
    sb_store_close(app->store);
    for (int i = 0; i < app->nserver_keys; i++)
        sb_jose_key_free(app->server_keys[i]);
    sb_ipallow_free(app->allowed_ips);
    sb_ipallow_free(app->trusted_proxies);
    sb_ratelimit_shared_free(app->oauth_rl);
    free(app->jwks_json); /* jansson's allocation */
    sb_free(app->issuer);
    if (app->generated_admin_key) {
        OPENSSL_cleanse(app->generated_admin_key, strlen(app->generated_admin_key));
        sb_free(app->generated_admin_key);
    }
    OPENSSL_cleanse(app->pepper, sizeof app->pepper);
    sb_ratelimit_shared_free(app->rl);
    for (int i = 0; i < app->nowned; i++)
        sb_free(app->owned[i]);
    for (int l = 0; app->loops && l < app->nloops; l++) {
        for (int i = 0; i < RESP_CACHE_SIZE; i++)
            sb_free(app->loops[l].resp[i].body);
        sb_free(app->loops[l].rtc);
        for (int i = 0; i < CRED_CACHE_SIZE; i++)
            sb_ipallow_free(app->loops[l].cache[i].allow);
    }
    sb_free(app->loops);
    sb_free(app);
}

const sb_config *sb_app_config(const sb_app *app)
{
    return app->cfg;
}

struct sb_webhooks *sb_app_webhooks(const sb_app *app)
{
    return app->webhooks;
}

const char *sb_app_generated_admin_key(const sb_app *app)
{
    return app->generated_admin_key;
}

const sb_jose_key *sb_app_token_key(const sb_app *app)
{
    return app->token_key;
}

const sb_jose_key *sb_app_server_key(const sb_app *app, const char *kid)
{
    return sb_jose_keys_find((const sb_jose_key *const *)app->server_keys,
                             (size_t)app->nserver_keys, kid);
}

const char *sb_app_jwks_json(const sb_app *app, size_t *len)
{
    *len = app->jwks_len;
    return app->jwks_json;
}

const char *sb_app_issuer(const sb_app *app)
{
    return app->issuer;
}

static void jwks(sb_req *req, void *ud)
{
    sb_app *app = ud;
    sb_resp_header(req, "Cache-Control", SB_STR_LIT("public, max-age=300"));
    sb_resp_send(req, 200, "application/json", app->jwks_json, app->jwks_len);
}

int sb_app_register(sb_app *app, sb_router *r)
{
    int rc = sb_router_add(r, "GET", "/.well-known/jwks.json", jwks, app);
    rc = rc ? rc : sb_api_keys_register(app, r);
    rc = rc ? rc : sb_api_rooms_register(app, r);
    rc = rc ? rc : sb_api_tokens_register(app, r);
    rc = rc ? rc : sb_api_sessions_register(app, r);
    rc = rc ? rc : sb_api_signing_keys_register(app, r);
    rc = rc ? rc : sb_api_events_register(app, r);
    rc = rc ? rc : sb_api_rtc_register(app, r);
    rc = rc ? rc : sb_api_oauth_register(app, r);
    rc = rc ? rc : sb_api_webhooks_register(app, r);
    if (!rc && !app->webhooks) /* webhooks: the dispatcher thread, with the last reader */
        rc = sb_webhooks_start(&app->webhooks, app, app->store,
                               sb_store_reader(app->store, app->nloops), app->cfg);
    rc = rc ? rc : sb_api_idempotency_install(app, r); /* last: wraps every POST (not /oauth) */
    /* gRPC after it: a call's inner REST POST is wrapped already, the call itself is not. */
    rc = rc ? rc : sb_api_grpc_register(app, r);
    return rc;
}

void sb__app_hash_secret(const sb_app *app, const char *secret, size_t len, unsigned char out[32])
{
    hash_secret(app, secret, len, out);
}

/* Responses kept for Idempotency-Key replays can carry secrets that are shown once (a new
 * key's secret): they are sealed with AES-256-GCM under a key derived from the pepper, so the
 * database alone reveals none of them. Layout: 12-byte nonce || ciphertext || 16-byte tag. */
static int seal_key(const sb_app *app, unsigned char key[32])
{
    unsigned int n = 32;
    return HMAC(EVP_sha256(), app->pepper, sizeof app->pepper,
                (const unsigned char *)"switchboard idempotency v1", 26, key, &n)
               ? 0
               : SB_EIO;
}

int sb__app_seal(const sb_app *app, const void *in, size_t len, sb_buf *out)
{
    unsigned char key[32], nonce[12], tag[16];
    int rc = seal_key(app, key);
    rc = rc ? rc : sb_random(nonce, sizeof nonce);
    rc = rc ? rc : sb_buf_reserve(out, len + 28);
    EVP_CIPHER_CTX *x = rc ? NULL : EVP_CIPHER_CTX_new();
    int n = 0, m = 0;
    if (!rc &&
        (!x || !EVP_EncryptInit_ex(x, EVP_aes_256_gcm(), NULL, key, nonce) ||
         !EVP_EncryptUpdate(x, (unsigned char *)out->base + out->len + 12, &n, in, (int)len) ||
         !EVP_EncryptFinal_ex(x, (unsigned char *)out->base + out->len + 12 + n, &m) ||
         !EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_GCM_GET_TAG, 16, tag)))
        rc = SB_EIO;
    if (!rc) {
        memcpy(out->base + out->len, nonce, 12);
        memcpy(out->base + out->len + 12 + n + m, tag, 16);
        out->len += 12 + (size_t)(n + m) + 16;
    }
    EVP_CIPHER_CTX_free(x);
    OPENSSL_cleanse(key, sizeof key);
    return rc;
}

int sb__app_open(const sb_app *app, const void *in, size_t len, sb_buf *out)
{
    const unsigned char *p = in;
    unsigned char key[32];
    if (len < 28)
        return SB_EINVAL;
    int rc = seal_key(app, key);
    rc = rc ? rc : sb_buf_reserve(out, len - 28 + 16);
    EVP_CIPHER_CTX *x = rc ? NULL : EVP_CIPHER_CTX_new();
    int n = 0, m = 0;
    if (!rc && (!x || !EVP_DecryptInit_ex(x, EVP_aes_256_gcm(), NULL, key, p) ||
                !EVP_DecryptUpdate(x, (unsigned char *)out->base + out->len, &n, p + 12,
                                   (int)(len - 28)) ||
                !EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_GCM_SET_TAG, 16, (void *)(p + len - 16)) ||
                EVP_DecryptFinal_ex(x, (unsigned char *)out->base + out->len + n, &m) <= 0))
        rc = SB_EIO;
    if (!rc)
        out->len += (size_t)(n + m);
    EVP_CIPHER_CTX_free(x);
    OPENSSL_cleanse(key, sizeof key);
    return rc;
}

/* ---- read cache ------------------------------------------------------------------- */

static size_t key_slot(const char *key, size_t len)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)key[i]) * 1099511628211ull;
    return (size_t)(h % RESP_CACHE_SIZE);
}

const char *sb_app_cache_get(sb_app *app, sb_req *req, const char *key, size_t keylen, size_t *len)
{
    resp_entry *e = &app->loops[req->loop->index].resp[key_slot(key, keylen)];
    if (!e->body || e->keylen != keylen || memcmp(e->key, key, keylen) != 0 ||
        e->gen != atomic_load_explicit(&resp_generation, memory_order_acquire))
        return NULL;
    *len = e->len;
    return e->body;
}

void sb_app_cache_put(sb_app *app, sb_req *req, const char *key, size_t keylen, uint64_t gen,
                      const char *body, size_t len)
{
    if (keylen > RESP_CACHE_KEY || len > RESP_CACHE_MAX_BODY)
        return;
    resp_entry *e = &app->loops[req->loop->index].resp[key_slot(key, keylen)];
    char *copy = sb_realloc(e->body, len ? len : 1);
    if (!copy)
        return;
    memcpy(copy, body, len);
    memcpy(e->key, key, keylen);
    e->body = copy;
    e->keylen = keylen;
    e->len = len;
    e->gen = gen;
}

uint64_t sb_app_cache_generation(void)
{
    return atomic_load_explicit(&resp_generation, memory_order_acquire);
}

void sb_app_cache_bump(void)
{
    atomic_fetch_add_explicit(&resp_generation, 1, memory_order_acq_rel);
}

sb_rtc_cache_entry *sb__app_rtc_cache(sb_app *app, int loop_index)
{
    return app->loops[loop_index].rtc;
}

void sb_app_bind_page(sqlite3_stmt *st, const sb_page *pg)
{
    sqlite3_bind_int(st, 2, pg->has_cursor);
    sqlite3_bind_int64(st, 3, pg->after_ms);
    sqlite3_bind_text(st, 4, pg->after_id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int(st, 5, pg->limit + 1);
}

void sb_app_send_page(sb_req *req, sqlite3_stmt *st, const sb_page *pg,
                      json_t *(*row)(sqlite3_stmt *st), int ms_col, int id_col, const char *what)
{
    json_t *data = json_array();
    int n = 0, rc;
    int64_t last_ms = 0;
    char last_id[SB_ID_MAX] = "";
    bool more = false;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == pg->limit) {
            more = true;
            break;
        }
        if (!data || json_array_append_new(data, row(st)) != 0) {
            rc = SQLITE_NOMEM;
            break;
        }
        last_ms = sqlite3_column_int64(st, ms_col);
        snprintf(last_id, sizeof last_id, "%s", (const char *)sqlite3_column_text(st, id_col));
        n++;
    }
    sqlite3_reset(st);
    if (!data || (rc != SQLITE_ROW && rc != SQLITE_DONE)) {
        json_decref(data);
        sb_app_internal_error(req, what, rc == SQLITE_NOMEM ? SB_ENOMEM : SB_EIO);
        return;
    }
    json_t *resp = json_pack("{s:o}", "data", data);
    if (resp && sb_app_page_next(resp, more, last_ms, last_id) != 0) {
        json_decref(resp);
        resp = NULL;
    }
    sb_app_send_json(req, 200, resp);
}

void sb_app_list_project(sb_app *app, sb_req *req, uint32_t need, const char *sql,
                         json_t *(*row)(sqlite3_stmt *st), int ms_col, int id_col, const char *what)
{
    sb_auth who;
    sb_page pg;
    if (!sb_app_auth(app, req, need, &who) || !sb_app_page(req, &pg))
        return;
    sqlite3_stmt *st = sb_store_stmt(sb_app_reader(app, req), sql);
    if (!st) {
        sb_app_internal_error(req, what, SB_EIO);
        return;
    }
    sqlite3_bind_text(st, 1, who.project_id, -1, SQLITE_STATIC);
    sb_app_bind_page(st, &pg);
    sb_app_send_page(req, st, &pg, row, ms_col, id_col, what);
}

json_t *sb_app_time_or_null(sqlite3_stmt *st, int col)
{
    if (sqlite3_column_type(st, col) == SQLITE_NULL)
        return json_null();
    char t[32];
    sb_time_rfc3339(sqlite3_column_int64(st, col), t);
    return json_string(t);
}

json_t *sb_app_json_or_null(sqlite3_stmt *st, int col)
{
    if (sqlite3_column_type(st, col) == SQLITE_NULL)
        return json_null();
    json_t *j = json_loads((const char *)sqlite3_column_text(st, col), 0, NULL);
    return j ? j : json_null();
}
