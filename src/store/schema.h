/*
 * Schema migrations of the embedded (SQLite) store. Internal to src/store/.
 *
 * Migrations are an ordered table of {version, description, SQL}. The version a database
 * has reached is kept in `PRAGMA user_version`; each pending migration runs in its own
 * transaction together with the user_version update, so a crash leaves the database at one
 * version or the next, never between. All SQL text of the store lives in schema.c, so that a
 * PostgreSQL backend would bring its own table beside this one.
 */
#ifndef SB_STORE_SCHEMA_H
#define SB_STORE_SCHEMA_H

#include <sqlite3.h>
#include <stddef.h>

typedef struct sb_store_migration {
    int version; /* strictly increasing from 1 */
    const char *description;
    const char *sql; /* one or more statements, run with sqlite3_exec */
} sb_store_migration;

/* The highest version this build knows. */
int sb__store_schema_latest(void);

/*
 * Brings db up to sb__store_schema_latest() and stores the resulting version in *version.
 * Idempotent: a database already at the latest version is left untouched. A database newer
 * than this build, or a failed migration, returns a negative SB_E* with a sentence in err
 * (SB_ENOTSUP for "too new"); a failed migration is rolled back entirely. Runs on the
 * caller's thread; db must not be in a transaction.
 */
int sb__store_migrate(sqlite3 *db, int *version, char *err, size_t errlen);

/* Migrations as a test hook: the same as sb__store_migrate with a caller-supplied table. */
int sb__store_migrate_with(sqlite3 *db, const sb_store_migration *m, size_t n, int *version,
                           char *err, size_t errlen);

/* The build's migration table (for tests that stop at an older version). */
const sb_store_migration *sb__store_migrations(size_t *n);

/* The one-statement upsert behind sb_store_event_seq_next (kept here with all other SQL). */
extern const char *const sb__store_sql_event_seq_next;

#endif
