/*
 * Idempotency-Key on every POST (API.md "Conventions"): the same key with the same request
 * replays the first response; with another request it is 422; while the first is still
 * running it is 409. Keys are per credential and live 24 hours.
 *
 * The claim on a key is a row written by the store's single writer, so two concurrent
 * requests with one key cannot both run. The response is captured by swapping the
 * request's adapter ops for one that records it and then sends it as usual. Only successful
 * responses are kept: an error (4xx, 5xx) changed nothing, so it releases the key and a retry
 * runs again. A claim left 'running' by a crash is taken over after a minute.
 */
#include <openssl/evp.h>
#include <stdio.h>

#include "api/app.h"
#include "core/alloc.h"
#include "core/log.h"
#include "switchboard/error.h"

#define KEY_TTL_MS       (24 * 3600 * 1000LL)
#define STALE_RUNNING_MS 60000
#define KEY_MAX          255

typedef struct idem_route {
    sb_handler_fn fn;
    void *ud;
    sb_app *app;
} idem_route;

enum { CLAIMED = 1, REPLAY, BUSY, MISMATCH };

typedef struct idem_ctx {
    idem_route *route;
    sb_req *req;
    const sb_req_ops *orig_ops;
    sb_req_ops ops;
    char credential[SB_ID_MAX];
    char key[KEY_MAX + 1];
    unsigned char hash[32];
    /* replay */
    int status;
    char *ctype;
    json_t *headers;
    void *body;
    size_t body_len;
} idem_ctx;

static int claim_run(sqlite3 *db, void *arg)
{
    idem_ctx *c = arg;
    int64_t now = sb_time_ms();
    static _Thread_local int64_t last_purge;
    if (now - last_purge > 60000) {
        last_purge = now;
        sqlite3_stmt *p = sb_store_stmt(db, "DELETE FROM idempotency_keys WHERE created_at < ?1");
        if (p) {
            sqlite3_bind_int64(p, 1, now - KEY_TTL_MS);
            sqlite3_step(p);
            sqlite3_reset(p);
        }
    }
    sqlite3_stmt *st = sb_store_stmt(
        db, "SELECT request_hash, state, status, response_headers, response_body, created_at "
            "FROM idempotency_keys WHERE credential_id = ?1 AND key = ?2");
    if (!st)
        return SB_EIO;
    sqlite3_bind_text(st, 1, c->credential, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, c->key, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    int result = CLAIMED;
    bool takeover = false;
    if (rc == SQLITE_ROW) {
        int64_t created = sqlite3_column_int64(st, 5);
        bool running = strcmp((const char *)sqlite3_column_text(st, 1), "running") == 0;
        bool same = sqlite3_column_bytes(st, 0) == 32 &&
                    memcmp(sqlite3_column_blob(st, 0), c->hash, 32) == 0;
        if (created < now - KEY_TTL_MS || (running && created < now - STALE_RUNNING_MS)) {
            takeover = true;
        } else if (!same) {
            result = MISMATCH;
        } else if (running) {
            result = BUSY;
        } else {
            result = REPLAY;
            c->status = sqlite3_column_int(st, 2);
            json_t *h = json_loads((const char *)sqlite3_column_text(st, 3), 0, NULL);
            const char *ct = json_string_value(json_object_get(h, "content_type"));
            c->ctype = ct ? sb_strdup(ct) : NULL;
            c->headers = json_incref(json_object_get(h, "headers"));
            json_decref(h);
            sb_buf plain;
            sb_buf_init(&plain, 0);
            if (sb__app_open(c->route->app, sqlite3_column_blob(st, 4),
                             (size_t)sqlite3_column_bytes(st, 4), &plain) == 0) {
                c->body = plain.base;
                c->body_len = plain.len;
            } else {
                sb_buf_free(&plain);
                c->body_len = 1; /* flags the failure to claim_done */
            }
        }
    } else if (rc != SQLITE_DONE) {
        sqlite3_reset(st);
        return SB_EIO;
    }
    sqlite3_reset(st);
    if (result != CLAIMED)
        return result;
    st = sb_store_stmt(db, takeover ? "UPDATE idempotency_keys SET request_hash = ?3, state = "
                                      "'running', status = NULL, response_headers = NULL, "
                                      "response_body = NULL, created_at = ?4 WHERE "
                                      "credential_id = ?1 AND key = ?2"
                                    : "INSERT INTO idempotency_keys (credential_id, key, "
                                      "request_hash, state, created_at) VALUES (?1, ?2, ?3, "
                                      "'running', ?4)");
    if (!st)
        return SB_EIO;
    sqlite3_bind_text(st, 1, c->credential, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, c->key, -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 3, c->hash, 32, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, now);
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    return (rc = sb_store_errno(rc)) != 0 ? rc : CLAIMED;
}

/* ---- recording the first response -------------------------------------------------- */

typedef struct finish_job {
    char credential[SB_ID_MAX];
    char key[KEY_MAX + 1];
    bool release;
    int status;
    char *headers;
    void *body;
    size_t body_len;
} finish_job;

static int finish_run(sqlite3 *db, void *arg)
{
    finish_job *f = arg;
    sqlite3_stmt *st = sb_store_stmt(
        db, f->release ? "DELETE FROM idempotency_keys WHERE credential_id = ?1 AND key = ?2"
                       : "UPDATE idempotency_keys SET state = 'done', status = ?3, "
                         "response_headers = ?4, response_body = ?5 WHERE credential_id = ?1 "
                         "AND key = ?2");
    if (!st)
        return SB_EIO;
    sqlite3_bind_text(st, 1, f->credential, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, f->key, -1, SQLITE_STATIC);
    if (!f->release) {
        sqlite3_bind_int(st, 3, f->status);
        sqlite3_bind_text(st, 4, f->headers, -1, SQLITE_STATIC);
        sqlite3_bind_blob(st, 5, f->body ? f->body : "", (int)f->body_len, SQLITE_STATIC);
    }
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return sb_store_errno(rc);
}

static void finish_done(void *arg, int rc)
{
    finish_job *f = arg;
    if (rc < 0)
        sb_log(SB_LOG_WARN, "could not record an idempotent response", "reason", sb_strerror(rc),
               NULL);
    free(f->headers); /* jansson's */
    sb_free(f->body);
    sb_free(f);
}

static void record_send(sb_req *req, int status, sb_str ctype, const void *body, size_t len)
{
    idem_ctx *c = (idem_ctx *)((char *)req->ops - offsetof(idem_ctx, ops));
    req->ops = c->orig_ops;
    finish_job *f = sb_calloc(1, sizeof *f);
    if (f) {
        memcpy(f->credential, c->credential, sizeof f->credential);
        memcpy(f->key, c->key, sizeof f->key);
        /* Only successes are kept: an error had no effect, and running the request again
         * gives the caller a fresh answer with its own request id. */
        f->release = status >= 400;
        f->status = status;
        if (!f->release) {
            json_t *hs = json_array();
            for (int i = 0; i < req->num_resp_headers; i++)
                json_array_append_new(hs, json_pack("[s#,s#]", req->resp_headers[i].name.base,
                                                    (int)req->resp_headers[i].name.len,
                                                    req->resp_headers[i].value.base,
                                                    (int)req->resp_headers[i].value.len));
            json_t *h = json_pack("{s:s#,s:o}", "content_type", ctype.base ? ctype.base : "",
                                  (int)ctype.len, "headers", hs);
            f->headers = h ? json_dumps(h, JSON_COMPACT) : NULL;
            json_decref(h);
            sb_buf sealed;
            sb_buf_init(&sealed, 0);
            if (sb__app_seal(c->route->app, body, len, &sealed) == 0) {
                f->body = sealed.base; /* ownership moves to the job */
                f->body_len = sealed.len;
            } else {
                sb_buf_free(&sealed);
                f->release = true; /* cannot keep it safely: let a retry run again */
            }
        }
        if ((!f->release && (!f->headers || !f->body)) ||
            sb_store_submit(sb__app_store(c->route->app), finish_run, finish_done, f, NULL, NULL) !=
                0)
            finish_done(f, SB_ENOMEM);
    }
    c->orig_ops->send(req, status, ctype, body, len);
}

static void claim_done(void *arg, int rc)
{
    idem_ctx *c = arg;
    sb_req *req = c->req;
    switch (rc) {
    case CLAIMED:
        c->orig_ops = req->ops;
        c->ops = (sb_req_ops){.proto = req->ops->proto, .send = record_send};
        req->ops = &c->ops;
        c->route->fn(req, c->route->ud);
        return;
    case REPLAY: {
        if (!c->body && c->body_len) {
            sb_app_internal_error(req, "replaying a response", SB_ENOMEM);
            break;
        }
        size_t i;
        json_t *h;
        json_array_foreach(c->headers, i, h)
        {
            sb_resp_header(req, json_string_value(json_array_get(h, 0)),
                           sb_str_from(json_string_value(json_array_get(h, 1))));
        }
        sb_resp_header(req, "Idempotent-Replayed", SB_STR_LIT("true"));
        sb_resp_send(req, c->status, c->ctype && *c->ctype ? c->ctype : NULL, c->body, c->body_len);
        break;
    }
    case BUSY:
        sb_resp_problem(req, 409, "idempotency-key-in-use",
                        "a request with this Idempotency-Key is still being processed");
        break;
    case MISMATCH:
        sb_resp_problem(req, 422, "idempotency-key-reused",
                        "this Idempotency-Key was used with a different request");
        break;
    default:
        sb_app_internal_error(req, "checking an Idempotency-Key", rc);
        break;
    }
    sb_free(c->ctype);
    json_decref(c->headers);
    sb_free(c->body);
}

static bool key_valid(sb_str k)
{
    if (k.len == 0 || k.len > KEY_MAX)
        return false;
    for (size_t i = 0; i < k.len; i++)
        if ((unsigned char)k.base[i] < 0x21 || (unsigned char)k.base[i] > 0x7e)
            return false;
    return true;
}

static void idem_entry(sb_req *req, void *ud)
{
    idem_route *r = ud;
    const sb_http_header *h = sb_req_header(req, "idempotency-key");
    /* OAuth endpoints have their own semantics (RFC 6749): a token request is not a change to
     * replay, and its client authentication is not a bearer credential. */
    if (!h || (req->path.len >= 7 && memcmp(req->path.base, "/oauth/", 7) == 0)) {
        r->fn(req, r->ud);
        return;
    }
    if (!key_valid(h->value)) {
        sb_resp_problem(req, 400, "invalid-idempotency-key",
                        "Idempotency-Key must be 1 to 255 visible ASCII characters");
        return;
    }
    sb_auth who;
    if (!sb_app_auth(r->app, req, 0, &who))
        return;
    idem_ctx *c = sb_app_ctx(req, sizeof *c, "checking an Idempotency-Key");
    if (!c)
        return;
    c->route = r;
    c->req = req;
    memcpy(c->credential, who.credential_id, sizeof c->credential);
    memcpy(c->key, h->value.base, h->value.len);
    /* The request is its method, path, query and body. */
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned int n = 32;
    if (!md || !EVP_DigestInit_ex(md, EVP_sha256(), NULL) ||
        !EVP_DigestUpdate(md, req->method.base, req->method.len) || !EVP_DigestUpdate(md, " ", 1) ||
        !EVP_DigestUpdate(md, req->path.base, req->path.len) || !EVP_DigestUpdate(md, "?", 1) ||
        (req->query.len && !EVP_DigestUpdate(md, req->query.base, req->query.len)) ||
        !EVP_DigestUpdate(md, "\n", 1) ||
        (req->body.len && !EVP_DigestUpdate(md, req->body.base, req->body.len)) ||
        !EVP_DigestFinal_ex(md, c->hash, &n)) {
        EVP_MD_CTX_free(md);
        sb_app_internal_error(req, "hashing a request", SB_ENOMEM);
        return;
    }
    EVP_MD_CTX_free(md);
    sb_app_submit(r->app, req, claim_run, claim_done, c);
}

static void *make_route(sb_handler_fn fn, void *ud, void *ctx)
{
    idem_route *r = sb_malloc(sizeof *r);
    if (r)
        *r = (idem_route){fn, ud, ctx};
    return sb__app_own(ctx, r);
}

int sb_api_idempotency_install(sb_app *app, sb_router *r)
{
    return sb_router_wrap_method(r, "POST", idem_entry, make_route, app);
}
