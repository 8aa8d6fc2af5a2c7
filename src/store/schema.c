#include "store/schema.h"

#include <stdio.h>

#include "switchboard/error.h"

/*
 * Conventions of every table: ids are TEXT, times are INTEGER milliseconds since the Unix
 * epoch, a column is NOT NULL unless it is written "NULL" in DESIGN/API terms (optional
 * field, or a state not reached yet). Tables are STRICT so that a wrongly typed bind fails
 * loudly instead of being stored as something else.
 */
static const char migration_1[] =
    "CREATE TABLE projects ("
    "  id TEXT PRIMARY KEY,"
    "  name TEXT NOT NULL,"
    "  created_at INTEGER NOT NULL"
    ") STRICT;"

    "CREATE TABLE api_keys ("
    "  id TEXT PRIMARY KEY,"
    "  project_id TEXT NOT NULL REFERENCES projects(id),"
    "  name TEXT NOT NULL,"
    "  secret_hash BLOB NOT NULL,"
    "  scopes TEXT NOT NULL," /* space-separated */
    "  created_at INTEGER NOT NULL,"
    "  expires_at INTEGER NULL,"
    "  revoked_at INTEGER NULL,"
    "  last_used_at INTEGER NULL,"
    "  allowed_ips TEXT NULL," /* JSON array of CIDRs */
    "  rate_limit_rps REAL NULL,"
    "  rate_limit_burst INTEGER NULL,"
    "  tls_client_cert_sha256 TEXT NULL"
    ") STRICT;"
    "CREATE INDEX api_keys_project ON api_keys(project_id, created_at, id);"

    "CREATE TABLE signing_keys ("
    "  kid TEXT PRIMARY KEY,"
    "  project_id TEXT NULL," /* NULL = a server key */
    "  alg TEXT NOT NULL,"
    "  material BLOB NOT NULL,"
    "  created_at INTEGER NOT NULL,"
    "  retired_at INTEGER NULL"
    ") STRICT;"
    "CREATE INDEX signing_keys_project ON signing_keys(project_id);"

    "CREATE TABLE rooms ("
    "  id TEXT PRIMARY KEY,"
    "  project_id TEXT NOT NULL,"
    "  name TEXT NOT NULL,"
    "  metadata TEXT NULL,"
    "  max_participants INTEGER NOT NULL DEFAULT 0 CHECK (max_participants >= 0),"
    "  empty_timeout_seconds INTEGER NOT NULL DEFAULT 300 CHECK (empty_timeout_seconds >= 0),"
    "  auto_record INTEGER NOT NULL DEFAULT 0 CHECK (auto_record IN (0, 1)),"
    "  status TEXT NOT NULL CHECK (status IN ('open', 'closed')),"
    "  created_at INTEGER NOT NULL,"
    "  updated_at INTEGER NOT NULL,"
    "  closed_at INTEGER NULL"
    ") STRICT;"
    /* At most one open room per name and project; closed ones are history. */
    "CREATE UNIQUE INDEX rooms_open_name ON rooms(project_id, name) WHERE status = 'open';"
    "CREATE INDEX rooms_page ON rooms(project_id, created_at, id);"

    "CREATE TABLE sessions ("
    "  id TEXT PRIMARY KEY,"
    "  project_id TEXT NOT NULL,"
    "  room_id TEXT NOT NULL REFERENCES rooms(id),"
    "  room_name TEXT NOT NULL,"
    "  started_at INTEGER NOT NULL,"
    "  ended_at INTEGER NULL,"
    "  end_reason TEXT NULL"
    ") STRICT;"
    "CREATE INDEX sessions_room_name ON sessions(project_id, room_name, started_at);"
    "CREATE INDEX sessions_room_id ON sessions(room_id);" /* foreign-key checks */

    "CREATE TABLE session_participants ("
    "  session_id TEXT NOT NULL REFERENCES sessions(id),"
    "  identity TEXT NOT NULL,"
    "  name TEXT NULL,"
    "  metadata TEXT NULL,"
    "  joined_at INTEGER NOT NULL,"
    "  left_at INTEGER NULL,"
    "  leave_reason TEXT NULL,"
    "  PRIMARY KEY (session_id, identity, joined_at)"
    ") STRICT;"

    "CREATE TABLE idempotency_keys ("
    "  credential_id TEXT NOT NULL,"
    "  key TEXT NOT NULL,"
    "  request_hash BLOB NOT NULL,"
    "  state TEXT NOT NULL CHECK (state IN ('running', 'done')),"
    "  status INTEGER NULL,"
    "  response_headers TEXT NULL,"
    "  response_body BLOB NULL,"
    "  created_at INTEGER NOT NULL,"
    "  PRIMARY KEY (credential_id, key)"
    ") STRICT;"
    "CREATE INDEX idempotency_keys_created ON idempotency_keys(created_at);"

    "CREATE TABLE audit_log ("
    "  seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  project_id TEXT NOT NULL,"
    "  at INTEGER NOT NULL,"
    "  credential_id TEXT NOT NULL,"
    "  request_id TEXT NOT NULL,"
    "  action TEXT NOT NULL,"
    "  target_type TEXT NOT NULL,"
    "  target_id TEXT NOT NULL,"
    "  detail TEXT NULL"
    ") STRICT;"
    "CREATE INDEX audit_log_project ON audit_log(project_id, seq);"

    /* The durable outbox: written in the same transaction as the change it reports. */
    "CREATE TABLE events ("
    "  project_id TEXT NOT NULL,"
    "  seq INTEGER NOT NULL,"
    "  id TEXT NOT NULL UNIQUE,"
    "  type TEXT NOT NULL,"
    "  created_at INTEGER NOT NULL,"
    "  room_name TEXT NULL,"
    "  data TEXT NOT NULL,"
    "  PRIMARY KEY (project_id, seq)"
    ") STRICT;"
    /*
     * Per-project event sequence. A counter row rather than MAX(seq)+1: MAX would hand out a
     * used number again once retention has deleted a project's newest events, and a counter
     * row is what a PostgreSQL backend needs anyway (row lock instead of one writer).
     */
    "CREATE TABLE event_counters ("
    "  project_id TEXT PRIMARY KEY,"
    "  next_seq INTEGER NOT NULL CHECK (next_seq >= 1)"
    ") STRICT;";

/* Listing a project's sessions without a room filter. */
static const char migration_2[] =
    "CREATE INDEX sessions_project_started ON sessions(project_id, started_at, id);";

/*
 * OAuth 2.0 clients (client credentials) and revoked access tokens. A client secret is kept
 * as an HMAC under the pepper, as API keys are. Revoked jti are kept until the token would
 * have expired anyway, so that a restart does not bring a revoked token back.
 */
static const char migration_4[] =
    "CREATE TABLE oauth_clients ("
    "  id TEXT PRIMARY KEY," /* the client_id */
    "  project_id TEXT NOT NULL REFERENCES projects(id),"
    "  name TEXT NOT NULL,"
    "  secret_hash BLOB NULL," /* NULL for tls_client_auth */
    "  scopes TEXT NOT NULL,"
    "  auth_method TEXT NOT NULL CHECK (auth_method IN ('client_secret_basic', "
    "'client_secret_post', 'tls_client_auth')),"
    "  grant_types TEXT NOT NULL,"        /* space-separated */
    "  tls_client_cert_sha256 TEXT NULL," /* lower-case hex */
    "  allowed_ips TEXT NULL,"            /* JSON array of CIDRs */
    "  created_at INTEGER NOT NULL,"
    "  revoked_at INTEGER NULL"
    ") STRICT;"
    "CREATE INDEX oauth_clients_project ON oauth_clients(project_id, created_at, id);"
    "CREATE TABLE oauth_revoked_tokens ("
    "  jti TEXT PRIMARY KEY,"
    "  exp INTEGER NOT NULL" /* Unix seconds */
    ") STRICT;";

/* Revoked participant tokens (DELETE /v1/tokens/{jti}); loaded into memory at start. */
static const char migration_5[] = "CREATE TABLE revoked_tokens ("
                                  "  project_id TEXT NOT NULL,"
                                  "  jti TEXT NOT NULL,"
                                  "  revoked_at INTEGER NOT NULL,"
                                  "  until_at INTEGER NOT NULL,"
                                  "  PRIMARY KEY (project_id, jti)"
                                  ") STRICT, WITHOUT ROWID;"
                                  "CREATE INDEX revoked_tokens_until ON revoked_tokens(until_at);";

/* ---- migration 3: webhooks (events/webhooks.c, api/rest_webhooks.c) ---- */
/*
 * webhooks: endpoints; secrets sealed (AES-GCM under the app's data key) because they must be
 * usable to sign. cursor_seq: every event of the project up to it has its delivery row for
 * this endpoint or needed none (events/webhooks.h: rows are written once an attempt has
 * finished). webhook_deliveries: one row per (endpoint, event), the delivery state machine
 * pending -> delivered | dead (dead -> pending on replay).
 * webhook_attempts: every failed attempt, kept for GET /v1/webhooks/{id}/deliveries; the
 * successful one is the delivery row's last_* columns (one write less on the common path).
 */
static const char migration_3[] =
    "CREATE TABLE webhooks ("
    "  id TEXT PRIMARY KEY,"
    "  project_id TEXT NOT NULL,"
    "  url TEXT NOT NULL,"
    "  events TEXT NOT NULL," /* JSON array of event types; [] = all */
    "  description TEXT NULL,"
    "  enabled INTEGER NOT NULL CHECK (enabled IN (0, 1)),"
    "  secret BLOB NOT NULL,"
    "  old_secret BLOB NULL,"
    "  old_secret_until INTEGER NULL,"
    "  disabled_reason TEXT NULL,"
    "  cursor_seq INTEGER NOT NULL,"
    "  created_at INTEGER NOT NULL,"
    "  updated_at INTEGER NOT NULL"
    ") STRICT;"
    "CREATE INDEX webhooks_project ON webhooks(project_id, created_at, id);"
    "CREATE TABLE webhook_deliveries ("
    "  id TEXT PRIMARY KEY,"
    "  webhook_id TEXT NOT NULL,"
    "  project_id TEXT NOT NULL,"
    "  event_seq INTEGER NOT NULL,"
    "  event_id TEXT NOT NULL,"
    "  event_type TEXT NOT NULL,"
    "  room_name TEXT NULL,"
    "  state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'dead')),"
    "  attempts INTEGER NOT NULL DEFAULT 0,"       /* all attempts, replays included */
    "  round_attempts INTEGER NOT NULL DEFAULT 0," /* since creation or the last replay */
    /* 1 while an earlier pending delivery of the same room and endpoint exists: only the
     * room's head is unblocked, so picking due deliveries is one index range, no sort. */
    "  blocked INTEGER NOT NULL DEFAULT 0 CHECK (blocked IN (0, 1)),"
    "  next_at INTEGER NOT NULL,"
    "  last_attempt_at INTEGER NULL,"
    "  last_duration_ms INTEGER NULL,"
    "  last_status INTEGER NULL,"
    "  last_error TEXT NULL,"
    "  created_at INTEGER NOT NULL,"
    "  updated_at INTEGER NOT NULL,"
    "  UNIQUE (webhook_id, event_seq)"
    ") STRICT;"
    "CREATE INDEX webhook_deliveries_due ON webhook_deliveries(webhook_id, next_at) "
    "  WHERE state = 'pending' AND blocked = 0;"
    "CREATE INDEX webhook_deliveries_room ON webhook_deliveries(webhook_id, room_name, event_seq) "
    "  WHERE state = 'pending';"
    "CREATE INDEX webhook_deliveries_dead ON webhook_deliveries(webhook_id, event_seq) "
    "  WHERE state = 'dead';"
    "CREATE TABLE webhook_attempts ("
    "  delivery_id TEXT NOT NULL,"
    "  attempt INTEGER NOT NULL,"
    "  at INTEGER NOT NULL,"
    "  status INTEGER NULL,"
    "  duration_ms INTEGER NOT NULL,"
    "  outcome TEXT NOT NULL,"
    "  error TEXT NULL,"
    "  PRIMARY KEY (delivery_id, attempt)"
    ") STRICT;";
/* ---- end migration 3 ---- */

/* ---- migration 6: cheaper webhook_deliveries rows ---- */
/*
 * Every delivered event writes a row, so the table is rebuilt (same columns, rowids and
 * allowed states) to cost less per row:
 *   - a CHECK (x IN (three or more values)) made SQLite build an ephemeral index of the list
 *     on every INSERT and UPDATE (OpenEphemeral, then closing a temporary btree): ~2.4 us of
 *     the ~5 us a row cost; the check is written as comparisons;
 *   - id loses its own unique index (a third b-tree per row, ~1.5 us): it is derived from
 *     (webhook rowid, event_seq), which UNIQUE (webhook_id, event_seq) already makes unique,
 *     and lookups by id go through that index (sb_webhooks_delivery_seq).
 */
static const char migration_6[] =
    "CREATE TABLE webhook_deliveries_new ("
    "  id TEXT NOT NULL,"
    "  webhook_id TEXT NOT NULL,"
    "  project_id TEXT NOT NULL,"
    "  event_seq INTEGER NOT NULL,"
    "  event_id TEXT NOT NULL,"
    "  event_type TEXT NOT NULL,"
    "  room_name TEXT NULL,"
    "  state TEXT NOT NULL CHECK (state = 'pending' OR state = 'delivered' OR state = 'dead'),"
    "  attempts INTEGER NOT NULL DEFAULT 0,"
    "  round_attempts INTEGER NOT NULL DEFAULT 0,"
    "  blocked INTEGER NOT NULL DEFAULT 0 CHECK (blocked = 0 OR blocked = 1),"
    "  next_at INTEGER NOT NULL,"
    "  last_attempt_at INTEGER NULL,"
    "  last_duration_ms INTEGER NULL,"
    "  last_status INTEGER NULL,"
    "  last_error TEXT NULL,"
    "  created_at INTEGER NOT NULL,"
    "  updated_at INTEGER NOT NULL,"
    "  UNIQUE (webhook_id, event_seq)"
    ") STRICT;"
    "INSERT INTO webhook_deliveries_new (rowid, id, webhook_id, project_id, event_seq, event_id, "
    "  event_type, room_name, state, attempts, round_attempts, blocked, next_at, "
    "  last_attempt_at, last_duration_ms, last_status, last_error, created_at, updated_at) "
    "SELECT rowid, id, webhook_id, project_id, event_seq, event_id, event_type, room_name, "
    "  state, attempts, round_attempts, blocked, next_at, last_attempt_at, last_duration_ms, "
    "  last_status, last_error, created_at, updated_at FROM webhook_deliveries;"
    "DROP TABLE webhook_deliveries;"
    "ALTER TABLE webhook_deliveries_new RENAME TO webhook_deliveries;"
    "CREATE INDEX webhook_deliveries_due ON webhook_deliveries(webhook_id, next_at) "
    "  WHERE state = 'pending' AND blocked = 0;"
    "CREATE INDEX webhook_deliveries_room ON webhook_deliveries(webhook_id, room_name, event_seq) "
    "  WHERE state = 'pending';"
    "CREATE INDEX webhook_deliveries_dead ON webhook_deliveries(webhook_id, event_seq) "
    "  WHERE state = 'dead';";
/* ---- end migration 6 ---- */

/* ---- migration 7: webhooks.h2c ---- */
/* 1: the endpoint's http:// receiver is sent HTTP/2 with prior knowledge (RFC 9113 3.3). */
static const char migration_7[] =
    "ALTER TABLE webhooks ADD COLUMN h2c INTEGER NOT NULL DEFAULT 0 CHECK (h2c = 0 OR h2c = 1);";
/* ---- end migration 7 ---- */

/* ---- migration 8: webhook_delivered ---- */
/*
 * The delivered log: an event delivered at its first attempt (the common case by far) is
 * recorded here, one small row in one b-tree (~2 us less per delivery than a
 * webhook_deliveries row with its texts and second index), instead of in webhook_deliveries.
 * An (endpoint, event) is in one of the two tables, never both; the API lists their union
 * (the event's id, type and room come from the outbox).
 */
static const char migration_8[] = "CREATE TABLE webhook_delivered ("
                                  "  webhook_id TEXT NOT NULL,"
                                  "  event_seq INTEGER NOT NULL,"
                                  "  at INTEGER NOT NULL,"
                                  "  duration_ms INTEGER NOT NULL,"
                                  "  status INTEGER NOT NULL,"
                                  "  PRIMARY KEY (webhook_id, event_seq)"
                                  ") STRICT, WITHOUT ROWID;";
/* ---- end migration 8 ---- */

/* ---- migration 9: webhooks.signature_scheme, webhooks.public_key ---- */
/*
 * Standard Webhooks signature schemes: 'v1' HMAC-SHA256 under a shared whsec_ secret, or 'v1a'
 * Ed25519: the sealed secret is then a whsk_ signing key and public_key its whpk_ verifying
 * key, public, kept in clear so that reading an endpoint never opens the secret.
 */
static const char migration_9[] =
    "ALTER TABLE webhooks ADD COLUMN signature_scheme TEXT NOT NULL DEFAULT 'v1' "
    "  CHECK (signature_scheme = 'v1' OR signature_scheme = 'v1a');"
    "ALTER TABLE webhooks ADD COLUMN public_key TEXT;";
/* ---- end migration 9 ---- */

static const sb_store_migration migrations[] = {
    {1, "control plane: projects, keys, rooms, sessions, idempotency, audit, events", migration_1},
    {2, "index for listing a project's sessions", migration_2},
    {3, "webhooks: endpoints, deliveries, attempts", migration_3},
    {4, "OAuth 2.0 clients and revoked access tokens", migration_4},
    {5, "revoked participant tokens", migration_5},
    {6, "webhook_deliveries rebuilt for cheaper rows (no IN-list CHECK, no index on id)",
     migration_6},
    {7, "webhooks.h2c: HTTP/2 with prior knowledge to http:// receivers", migration_7},
    {8, "webhook_delivered: the log of deliveries that succeeded at their first attempt",
     migration_8},
    {9, "webhooks.signature_scheme and public_key: Ed25519 (v1a) signatures", migration_9},
};

const char *const sb__store_sql_event_seq_next =
    "INSERT INTO event_counters(project_id, next_seq) VALUES (?1, 2) "
    "ON CONFLICT(project_id) DO UPDATE SET next_seq = next_seq + 1 "
    "RETURNING next_seq - 1";

const sb_store_migration *sb__store_migrations(size_t *n)
{
    *n = sizeof migrations / sizeof migrations[0];
    return migrations;
}

int sb__store_schema_latest(void)
{
    return migrations[sizeof migrations / sizeof migrations[0] - 1].version;
}

static int get_version(sqlite3 *db, int *out)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *out = sqlite3_column_int(st, 0);
        rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    return rc;
}

static int apply(sqlite3 *db, const sb_store_migration *m, char *err, size_t errlen)
{
    char *msg = NULL;
    char pragma[48];
    int rc = sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, &msg);
    if (rc != SQLITE_OK)
        goto fail;
    rc = sqlite3_exec(db, m->sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK)
        goto fail_rollback;
    /* PRAGMA cannot take a bound parameter; the version is our own integer. */
    snprintf(pragma, sizeof pragma, "PRAGMA user_version = %d", m->version);
    rc = sqlite3_exec(db, pragma, NULL, NULL, &msg);
    if (rc != SQLITE_OK)
        goto fail_rollback;
    rc = sqlite3_exec(db, "COMMIT", NULL, NULL, &msg);
    if (rc != SQLITE_OK)
        goto fail_rollback;
    return 0;

fail_rollback:
    snprintf(err, errlen, "store: migration %d (%s) failed: %s", m->version, m->description,
             msg ? msg : sqlite3_errstr(rc));
    sqlite3_free(msg);
    if (!sqlite3_get_autocommit(db))
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    return (rc & 0xff) == SQLITE_BUSY ? SB_EBUSY : SB_EIO;
fail:
    snprintf(err, errlen, "store: cannot start migration %d: %s", m->version,
             msg ? msg : sqlite3_errstr(rc));
    sqlite3_free(msg);
    return (rc & 0xff) == SQLITE_BUSY ? SB_EBUSY : SB_EIO;
}

int sb__store_migrate_with(sqlite3 *db, const sb_store_migration *m, size_t n, int *version,
                           char *err, size_t errlen)
{
    int have = 0;
    int latest = n ? m[n - 1].version : 0;
    int rc = get_version(db, &have);
    if (rc != SQLITE_OK) {
        snprintf(err, errlen, "store: cannot read schema version: %s", sqlite3_errmsg(db));
        return SB_EIO;
    }
    if (have > latest) {
        snprintf(err, errlen,
                 "store: database schema version %d is newer than this build supports (%d); "
                 "run a newer switchboard or use another data directory",
                 have, latest);
        return SB_ENOTSUP;
    }
    for (size_t i = 0; i < n; i++) {
        if (m[i].version <= have)
            continue;
        rc = apply(db, &m[i], err, errlen);
        if (rc < 0)
            return rc;
        have = m[i].version;
    }
    *version = have;
    return 0;
}

int sb__store_migrate(sqlite3 *db, int *version, char *err, size_t errlen)
{
    return sb__store_migrate_with(db, migrations, sizeof migrations / sizeof migrations[0], version,
                                  err, errlen);
}
