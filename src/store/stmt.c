#include "store/stmt.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#include "core/alloc.h"
#include "store/store.h"
#include "switchboard/error.h"

#define MEMO_SLOTS 4

typedef struct entry {
    uint64_t hash;
    uint64_t used;   /* cache tick of the last return: LRU order */
    char *sql;       /* the caller's text, the key (sqlite3_sql may differ in trailing bytes) */
    const char *src; /* where the caller's text was: callers pass literals, so the next call
                      * usually has the same address (checked with strcmp, not trusted) */
    sqlite3_stmt *st;
} entry;

typedef struct cache {
    struct cache *next; /* registry list */
    sqlite3 *db;
    uint64_t tick;
    int n;
    entry e[SB_STORE_STMT_CACHE];
} cache;

typedef struct memo {
    sqlite3 *db;
    cache *c;
    uint64_t gen;
} memo;

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static cache *registry;
static _Atomic uint64_t registry_gen = 1;

static _Thread_local memo memos[MEMO_SLOTS];
static _Thread_local unsigned memo_next;

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 0xcbf29ce484222325u;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 0x100000001b3u;
    }
    return h;
}

int sb__stmt_cache_attach(sqlite3 *db)
{
    cache *c = sb_calloc(1, sizeof *c);
    if (!c)
        return SB_ENOMEM;
    c->db = db;
    pthread_mutex_lock(&registry_lock);
    c->next = registry;
    registry = c;
    pthread_mutex_unlock(&registry_lock);
    return 0;
}

void sb__stmt_cache_detach(sqlite3 *db)
{
    cache *c = NULL;
    pthread_mutex_lock(&registry_lock);
    for (cache **p = &registry; *p; p = &(*p)->next) {
        if ((*p)->db == db) {
            c = *p;
            *p = c->next;
            break;
        }
    }
    atomic_fetch_add_explicit(&registry_gen, 1, memory_order_release);
    pthread_mutex_unlock(&registry_lock);
    if (!c)
        return;
    for (int i = 0; i < c->n; i++) {
        sqlite3_finalize(c->e[i].st);
        sb_free(c->e[i].sql);
    }
    sb_free(c);
}

static cache *find(sqlite3 *db)
{
    uint64_t gen = atomic_load_explicit(&registry_gen, memory_order_acquire);
    for (int i = 0; i < MEMO_SLOTS; i++) {
        if (memos[i].db == db && memos[i].gen == gen)
            return memos[i].c;
    }
    cache *c;
    pthread_mutex_lock(&registry_lock);
    gen = atomic_load_explicit(&registry_gen, memory_order_relaxed);
    for (c = registry; c && c->db != db; c = c->next)
        ;
    pthread_mutex_unlock(&registry_lock);
    if (c) {
        memo *m = &memos[memo_next++ % MEMO_SLOTS];
        m->db = db;
        m->c = c;
        m->gen = gen;
    }
    return c;
}

static bool only_space(const char *s)
{
    for (; *s; s++) {
        if (*s != ' ' && *s != '\t' && *s != '\n' && *s != '\r')
            return false;
    }
    return true;
}

sqlite3_stmt *sb_store_stmt(sqlite3 *db, const char *sql)
{
    if (!db || !sql)
        return NULL;
    cache *c = find(db);
    if (!c)
        return NULL;
    for (int i = 0; i < c->n; i++) {
        entry *e = &c->e[i];
        if (e->src == sql && strcmp(e->sql, sql) == 0) {
            e->used = ++c->tick;
            sqlite3_reset(e->st);
            sqlite3_clear_bindings(e->st);
            return e->st;
        }
    }
    uint64_t h = fnv1a(sql);
    for (int i = 0; i < c->n; i++) {
        entry *e = &c->e[i];
        if (e->hash == h && strcmp(e->sql, sql) == 0) {
            e->src = sql;
            e->used = ++c->tick;
            sqlite3_reset(e->st);
            sqlite3_clear_bindings(e->st);
            return e->st;
        }
    }

    sqlite3_stmt *st = NULL;
    const char *tail = NULL;
    char *key = NULL;
    if (sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, &tail) != SQLITE_OK)
        goto fail;
    if (!st || (tail && !only_space(tail)))
        goto fail; /* empty, or more than one statement */
    key = sb_strdup(sql);
    if (!key)
        goto fail;

    entry *e;
    if (c->n < SB_STORE_STMT_CACHE) {
        e = &c->e[c->n++];
    } else {
        e = &c->e[0];
        for (int i = 1; i < c->n; i++) {
            if (c->e[i].used < e->used)
                e = &c->e[i];
        }
        sqlite3_finalize(e->st);
        sb_free(e->sql);
    }
    e->hash = h;
    e->used = ++c->tick;
    e->sql = key;
    e->src = sql;
    e->st = st;
    return st;

fail:
    sqlite3_finalize(st);
    return NULL;
}
