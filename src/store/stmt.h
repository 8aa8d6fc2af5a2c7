/*
 * Per-connection prepared-statement cache behind sb_store_stmt. Internal to src/store/.
 *
 * sb_store_stmt receives only a sqlite3 *, and SQLite 3.40 has no per-connection user
 * pointer, so caches are found through a process-wide registry of the store's connections.
 * Each thread remembers the last few (connection, cache) pairs it used, so the registry's
 * mutex is taken only the first time a thread uses a connection; a generation counter,
 * bumped whenever a connection is detached, invalidates those memos (a new connection may
 * reuse a closed one's address).
 */
#ifndef SB_STORE_STMT_H
#define SB_STORE_STMT_H

#include <sqlite3.h>

/* Creates db's cache and registers it. SB_ENOMEM. Call before db is handed to any thread. */
int sb__stmt_cache_attach(sqlite3 *db);

/* Unregisters db's cache and finalizes its statements. Call when no thread uses db any
 * more, before sqlite3_close. Does nothing for a db without a cache. */
void sb__stmt_cache_detach(sqlite3 *db);

#endif
