/*
 * The control plane: what the REST (and later gRPC and SOAP) adapters call.
 *
 * sb_app owns the store, the secrets kept in data_dir (the key-hashing pepper, the server's
 * token-signing key) and one context per event loop (credential cache, the loop's store
 * reader). Handlers run on a loop: reads go to that loop's reader connection (short, indexed
 * reads); every change is a store job run on the writer thread, answered from its done
 * callback back on the loop, so no loop ever waits on disk for a write.
 */
#ifndef SB_API_APP_H
#define SB_API_APP_H

#include <sqlite3.h>
#include <stdbool.h>
#include <stdint.h>

#include "auth/jose.h"
#include "core/ids.h"
#include "net/request.h"
#include "net/router.h"
#include "store/store.h"
#include "switchboard/config.h"

typedef struct sb_app sb_app;
typedef struct sb_server sb_server;

/* Who is calling, once authenticated. */
typedef struct sb_auth {
    char project_id[SB_ID_MAX];
    char credential_id[SB_ID_MAX];
    uint32_t scopes;
} sb_auth;

/* Opens the store in cfg->data_dir, creates the default project and the bootstrap admin key
 * on first start (from SWITCHBOARD_ADMIN_KEY when set), loads or creates the signing key.
 * Returns 0 or an error with err filled. */
int sb_app_new(sb_app **out, const sb_config *cfg, sb_server *server, int nloops, char *err,
               size_t errlen);
void sb_app_free(sb_app *app);

/* The generated admin key if this start created one (to print once), else NULL. */
const char *sb_app_generated_admin_key(const sb_app *app);

/* Registers every /v1, /oauth and /.well-known route. */
int sb_app_register(sb_app *app, sb_router *r);

/* ---- for handlers ------------------------------------------------------------------- */

/* Authenticates the bearer credential and checks it holds `need` (all bits). On failure
 * answers 401 (with WWW-Authenticate) or 403 and returns false. */
bool sb_app_auth(sb_app *app, sb_req *req, uint32_t need, sb_auth *out);

/* The calling loop's read-only connection. */
sqlite3 *sb_app_reader(sb_app *app, sb_req *req);

/* Runs job on the writer thread, then done(arg, rc) on req's loop. On a full queue answers
 * 503 itself and returns false (neither job nor done will run). */
bool sb_app_submit(sb_app *app, sb_req *req, sb_store_job_fn job, sb_store_done_fn done, void *arg);

/* The same for work not tied to a request: done(arg, rc) runs on `loop`, which stays alive
 * (pending_jobs) until it has; NULL loop runs the job synchronously (at shutdown). Returns
 * false when the job could not be queued (neither job nor done will run). */
bool sb_app_submit_loop(sb_app *app, sb_loop *loop, sb_store_job_fn job, sb_store_done_fn done,
                        void *arg);

/* Answers 500 and logs why (never to the client). */
void sb_app_internal_error(sb_req *req, const char *what, int rc);

/* A handler's context: size zeroed bytes in req's arena (freed with the request). On
 * failure answers 500 (logging `what`, like sb_app_internal_error) and returns NULL; the
 * caller then only releases what it holds and returns. */
void *sb_app_ctx(sb_req *req, size_t size, const char *what);

/* Parses the body as a JSON object or answers 400/415 and returns NULL. */
json_t *sb_app_body(sb_req *req);

/* Sends a JSON value (stolen). */
void sb_app_send_json(sb_req *req, int status, json_t *j);

/* Writes an audit row inside a job. action like "room.create"; target_type "room". */
int sb_app_audit(sqlite3 *db, const sb_auth *who, const char *request_id, const char *action,
                 const char *target_type, const char *target_id);

/* Drops cached credentials of key_id on every loop (after a revoke is committed). */
void sb_app_forget_key(sb_app *app, const char *key_id);

/*
 * DELETE of one of the caller's credentials (API key, OAuth client, signing key). A store
 * job runs sql with ?1 = now (ms), ?2 = id, ?3 = the caller's project; the statement must
 * change only a row that is still active, so that a second DELETE changes nothing. When it
 * changed a row, the job writes the audit row (action on target_type id) in the same
 * transaction; then committed(app, id) runs on the loop before 204 is answered. Nothing
 * changed answers 404 not-found with not_found; an error 500, logged as what. The caller
 * has checked id (shorter than SB_ID_MAX, else it answers 404 itself); spec must outlive the
 * request (a static).
 */
typedef struct sb_app_revoke_spec {
    const char *sql;
    const char *action, *target_type;
    const char *what, *not_found;
    void (*committed)(sb_app *app, const char *id);
} sb_app_revoke_spec;
void sb_app_revoke_credential(sb_app *app, sb_req *req, const sb_auth *who, sb_str id,
                              const sb_app_revoke_spec *spec);

/* Participant tokens revoked by id (DELETE /v1/tokens/{jti}): checked on every join. An
 * empty jti is never revoked. Revoking returns 0, SB_ENOMEM or SB_EAGAIN (the set is full). */
bool sb_app_participant_token_revoked(sb_app *app, const char *project_id, const char *jti);
int sb_app_revoke_participant_token(sb_app *app, const char *project_id, const char *jti,
                                    int64_t until_ms);

/* After a jti was added to the revoked set: every loop checks its cached access tokens
 * against the set before their next use (cheaper than sb_app_forget_key, which makes every
 * loop verify every credential again). */
void sb_app_token_revoked(sb_app *app);

const sb_config *sb_app_config(const sb_app *app);

/* The shared signing keys. sb_app_token_key signs; sb_app_server_key finds any server key
 * that still verifies (the current one and recently retired ones) by kid, or NULL. */
const sb_jose_key *sb_app_token_key(const sb_app *app);
const sb_jose_key *sb_app_server_key(const sb_app *app, const char *kid);
const char *sb_app_jwks_json(const sb_app *app, size_t *len);
const char *sb_app_issuer(const sb_app *app);

/* Keyset pagination: limit (1..200, default 50) and cursor from the query string. The
 * cursor is opaque to clients: base64url of "<ms>:<id>". Answers 400 and returns false on
 * bad input. */
typedef struct sb_page {
    int limit;
    bool has_cursor;
    int64_t after_ms;
    char after_id[SB_ID_MAX];
} sb_page;
bool sb_app_page(sb_req *req, sb_page *p);
/* Adds "next_cursor" (string, or null) to a list response object. */
int sb_app_page_next(json_t *resp, bool more, int64_t last_ms, const char *last_id);

/* Binds ?2..?5 of a keyset list query: has_cursor, after_ms, after_id, limit + 1 (the query
 * orders by (ms, id) and filters "?2 = 0 OR ms > ?3 OR (ms = ?3 AND id > ?4)" LIMIT ?5). */
void sb_app_bind_page(sqlite3_stmt *st, const sb_page *pg);

/* Steps a bound list query and answers {data: [row(st)…], next_cursor}, the cursor taken
 * from columns ms_col and id_col of the last row. `what` names the list in error logs. */
void sb_app_send_page(sb_req *req, sqlite3_stmt *st, const sb_page *pg,
                      json_t *(*row)(sqlite3_stmt *st), int ms_col, int id_col, const char *what);

/* GET of a keyset-paged list in the caller's project: authenticates `need`, reads the page
 * (sb_app_page), prepares sql on the loop's reader, binds the project id to ?1 and the page
 * to ?2..?5 (sb_app_bind_page) and answers it (sb_app_send_page). Answers every error
 * itself; `what` names the list in error logs. */
void sb_app_list_project(sb_app *app, sb_req *req, uint32_t need, const char *sql,
                         json_t *(*row)(sqlite3_stmt *st), int ms_col, int id_col,
                         const char *what);

/* An INTEGER ms column as an RFC 3339 string, or JSON null. */
json_t *sb_app_time_or_null(sqlite3_stmt *st, int col);

/* A TEXT column holding JSON as that value; SQL NULL or text that does not parse: JSON null. */
json_t *sb_app_json_or_null(sqlite3_stmt *st, int col);

/* A query-string parameter, percent-decoded into the request arena; false if absent. */
bool sb_req_query(sb_req *req, const char *name, sb_str *out);

/* The caller's address: the TCP peer, or the client named by X-Forwarded-For when the peer
 * is one of http.trusted_proxies. False when the peer is not an IP address. */
struct sockaddr_storage;
struct sb_ipallow;
bool sb_app_client_addr(sb_app *app, sb_req *req, struct sockaddr_storage *out);

/* A credential's allowed_ips column (the JSON array of addresses and CIDRs checked when the
 * credential was made) as a matcher in *out, which the caller frees; NULL for SQL NULL (no
 * list). False, *out NULL, when the column holds a list that cannot be built (bad JSON, no
 * entries, too many, out of memory): the caller then refuses the credential rather than
 * allow every address. */
bool sb_app_allow_column(sqlite3_stmt *st, int col, struct sb_ipallow **out);

/* Whether the caller's address passes security.allowed_ips and `list` (NULL: no list). */
bool sb_app_address_allowed(sb_app *app, sb_req *req, const struct sb_ipallow *list);

/* The per-address limit on the /oauth endpoints (oauth.requests_per_second, oauth.burst); answers
 * 429 itself and returns false when over it. */
bool sb_app_oauth_rate_ok(sb_app *app, sb_req *req);

/* An RFC 6749 section 5.2 error response {"error", "error_description"} with Cache-Control:
 * no-store; status 401 adds WWW-Authenticate: Basic. What every /oauth endpoint answers. */
void sb_app_oauth_error(sb_req *req, int status, const char *error, const char *description);

/* 64 hex digits (either case) to 32 bytes. 0 or SB_EINVAL. */
int sb_hex_decode32(const char *hex, unsigned char out[32]);

/* Registration of each resource group (rest_*.c). */
int sb_api_keys_register(sb_app *app, sb_router *r);
int sb_api_rooms_register(sb_app *app, sb_router *r);
int sb_api_tokens_register(sb_app *app, sb_router *r);
int sb_api_sessions_register(sb_app *app, sb_router *r);
int sb_api_signing_keys_register(sb_app *app, sb_router *r);
int sb_api_events_register(sb_app *app, sb_router *r);   /* events/stream.c */
int sb_api_oauth_register(sb_app *app, sb_router *r);    /* rest_oauth.c */
int sb_api_webhooks_register(sb_app *app, sb_router *r); /* rest_webhooks.c */

/* The webhook dispatcher (NULL before sb_app_register has started it). */
struct sb_webhooks *sb_app_webhooks(const sb_app *app);

/* Idempotency-Key on every POST route registered before it (idempotency.c). */
int sb_api_idempotency_install(sb_app *app, sb_router *r);

/* Internal: the store, and memory the app frees with itself (NULL if p is NULL or no room;
 * p is then freed). */
sb_store *sb__app_store(const sb_app *app);
int sb__app_nloops(const sb_app *app);
struct sb_rtc *sb__app_rtc(const sb_app *app);
struct sb_oauth *sb__app_oauth(const sb_app *app);
struct sb_rtc_cache_entry *sb__app_rtc_cache(sb_app *app, int loop_index);
void *sb__app_own(sb_app *app, void *p);

/* Internal: authenticated encryption of data kept at rest (idempotent replays). */
int sb__app_seal(const sb_app *app, const void *in, size_t len, sb_buf *out);
int sb__app_open(const sb_app *app, const void *in, size_t len, sb_buf *out);

/*
 * A per-loop cache of serialized read responses (GET /v1/rooms/{name}), so that the hot
 * read path touches neither the database nor the JSON encoder. One global generation
 * invalidates everything: every committed change that a cached response could show must
 * call sb_app_cache_bump before it answers (writes are rare next to reads). Read the
 * generation *before* reading the data you cache, and pass it to put, so that a change
 * racing with the read leaves a stale-stamped entry rather than a stale-looking fresh one.
 */
const char *sb_app_cache_get(sb_app *app, sb_req *req, const char *key, size_t keylen, size_t *len);
void sb_app_cache_put(sb_app *app, sb_req *req, const char *key, size_t keylen, uint64_t gen,
                      const char *body, size_t len);
uint64_t sb_app_cache_generation(void);
void sb_app_cache_bump(void);

/*
 * Ends an active session inside a store job: sets ended_at/end_reason, closes the open
 * participant rows with participant_reason, and emits session.ended — the one place a
 * session ends, whoever ends it (API, room close, the real-time tick). Returns 1 when it
 * ended the session, 0 when it had already ended (nothing written), or a negative error.
 */
int sb_app_session_end(sqlite3 *db, const char *project_id, const char *session_id,
                       const char *room, const char *reason, const char *participant_reason,
                       int64_t now_ms);

/* Room names: ^[A-Za-z0-9_-]{1,128}$ (rest_rooms.c). */
bool sb_room_name_valid(const char *s, size_t n);

/* Participant identities: ^[A-Za-z0-9_.:@-]{1,128}$ (rest_rooms.c). */
#define SB_IDENTITY_MAX 128
bool sb_identity_valid(const char *s, size_t n);

#endif
