#include "store/store.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "core/alloc.h"
#include "core/log.h"
#include "store/schema.h"
#include "store/stmt.h"
#include "switchboard/error.h"

/* Keeps the WAL file from staying large after a burst (it is truncated to this after a
 * checkpoint); the WAL still grows past it while a reader pins an old snapshot. */
#define WAL_SIZE_LIMIT (64 * 1024 * 1024)

typedef struct job {
    struct job *next;
    sb_store_job_fn fn;
    sb_store_done_fn done;
    void *arg;
    sb_post_fn post;
    void *target;
    int rc;
} job;

struct sb_store {
    sqlite3 *wdb; /* the writer's connection: writer thread only, once it runs */
    sqlite3 **readers;
    int nreaders;
    int version;
    int max_batch;
    int max_queue;

    /* Transaction control, prepared once on wdb and kept out of the LRU cache. */
    sqlite3_stmt *st_begin, *st_savepoint, *st_release, *st_rollback_to, *st_commit, *st_rollback;

    pthread_t writer;
    pthread_mutex_t lock; /* guards everything below */
    pthread_cond_t nonempty;
    pthread_cond_t notfull;
    job *head, *tail;
    int count;
    int space_waiters;
    bool stopping;
    sb_store_stats stats;
    void (*commit_hook)(void *ud);
    void *commit_ud;
    /* sb_store_add_commit_hook: more listeners (the webhook dispatcher) */
    void (*extra_hooks[SB_STORE_MAX_COMMIT_HOOKS])(void *ud);
    void *extra_ud[SB_STORE_MAX_COMMIT_HOOKS];
    int nextra;
    pthread_mutex_t hook_lock; /* guards the three above; held while they run */
};

static void set_err(char *err, size_t errlen, const char *what, sqlite3 *db)
{
    snprintf(err, errlen, "store: %s: %s", what, db ? sqlite3_errmsg(db) : "out of memory");
}

int sb_store_errno(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_OK:
    case SQLITE_ROW:
    case SQLITE_DONE:
        return 0;
    case SQLITE_CONSTRAINT:
        if (rc == SQLITE_CONSTRAINT_UNIQUE || rc == SQLITE_CONSTRAINT_PRIMARYKEY)
            return SB_EEXIST;
        return SB_ECONSTRAINT;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return SB_EBUSY;
    case SQLITE_NOMEM:
        return SB_ENOMEM;
    default:
        return SB_EIO;
    }
}

/* Runs a one-row PRAGMA and copies its text result (empty if it returns no row). */
static int pragma_text(sqlite3 *db, const char *sql, char *out, size_t outlen)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rc;
    out[0] = '\0';
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const unsigned char *t = sqlite3_column_text(st, 0);
        snprintf(out, outlen, "%s", t ? (const char *)t : "");
        rc = SQLITE_OK;
    } else if (rc == SQLITE_DONE) {
        rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    return rc;
}

static int configure_writer(sqlite3 *db, const sb_store_opts *o, int busy_ms, char *err,
                            size_t errlen)
{
    char sql[80], val[32];
    int rc;

    sqlite3_busy_timeout(db, busy_ms);
    rc = pragma_text(db, "PRAGMA journal_mode = WAL", val, sizeof val);
    if (rc != SQLITE_OK) {
        set_err(err, errlen, "cannot enable WAL", db);
        return (rc & 0xff) == SQLITE_BUSY ? SB_EBUSY : SB_EIO;
    }
    if (strcasecmp(val, "wal") != 0) {
        snprintf(err, errlen, "store: %s does not support WAL (journal mode stays %s)", o->path,
                 val);
        return SB_EINVAL;
    }
    snprintf(sql, sizeof sql, "PRAGMA synchronous = %s; PRAGMA journal_size_limit = %d",
             o->synchronous_full ? "FULL" : "NORMAL", WAL_SIZE_LIMIT);
    /* temp_store MEMORY: every job runs in a SAVEPOINT, whose sub-journal otherwise spills to
     * a temp file (open, write, unlink) once a job changes more than 64 KiB of pages, as a
     * webhook fan-out or attempt batch does; measured: 377 temp files and about half of the
     * pwrite calls for 20,000 webhook deliveries. The journal holds pages the transaction
     * changed, so it is bounded like the page cache is. */
    if (sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_exec(db, "PRAGMA temp_store = MEMORY", NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_exec(db, "PRAGMA foreign_keys = ON", NULL, NULL, NULL) != SQLITE_OK) {
        set_err(err, errlen, "cannot set pragmas", db);
        return SB_EIO;
    }
    if (pragma_text(db, "PRAGMA foreign_keys", val, sizeof val) != SQLITE_OK ||
        strcmp(val, "1") != 0) {
        snprintf(err, errlen, "store: this SQLite cannot enforce foreign keys");
        return SB_ENOTSUP;
    }
    return 0;
}

static int prepare_control(sb_store *s)
{
    static const struct {
        size_t off;
        const char *sql;
    } ctl[] = {
        {offsetof(sb_store, st_begin), "BEGIN IMMEDIATE"},
        {offsetof(sb_store, st_savepoint), "SAVEPOINT sb_job"},
        {offsetof(sb_store, st_release), "RELEASE sb_job"},
        {offsetof(sb_store, st_rollback_to), "ROLLBACK TO sb_job"},
        {offsetof(sb_store, st_commit), "COMMIT"},
        {offsetof(sb_store, st_rollback), "ROLLBACK"},
    };
    for (size_t i = 0; i < sizeof ctl / sizeof ctl[0]; i++) {
        sqlite3_stmt **p = (sqlite3_stmt **)((char *)s + ctl[i].off);
        if (sqlite3_prepare_v3(s->wdb, ctl[i].sql, -1, SQLITE_PREPARE_PERSISTENT, p, NULL) !=
            SQLITE_OK)
            return SB_EIO;
    }
    return 0;
}

static void finalize_control(sb_store *s)
{
    sqlite3_finalize(s->st_begin);
    sqlite3_finalize(s->st_savepoint);
    sqlite3_finalize(s->st_release);
    sqlite3_finalize(s->st_rollback_to);
    sqlite3_finalize(s->st_commit);
    sqlite3_finalize(s->st_rollback);
}

/* Closes a connection of ours. Every statement should be finalized by now (cache detached);
 * close_v2 still frees everything later if a caller leaked one, instead of leaking db. */
static void close_db(sqlite3 *db)
{
    if (!db)
        return;
    sb__stmt_cache_detach(db);
    if (sqlite3_close(db) != SQLITE_OK) {
        sb_log(SB_LOG_WARN, "store: connection closed with unfinalized statements", NULL);
        sqlite3_close_v2(db);
    }
}

static int step_ctl(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : rc;
}

/* A statement a job left mid-step would hold its read position across ROLLBACK TO and
 * COMMIT; reset them so each job starts clean. */
static void reset_running(sqlite3 *db)
{
    for (sqlite3_stmt *st = sqlite3_next_stmt(db, NULL); st; st = sqlite3_next_stmt(db, st)) {
        if (sqlite3_stmt_busy(st))
            sqlite3_reset(st);
    }
}

/* Runs one batch in one transaction. On return every job's rc is final. Returns true if the
 * batch committed. */
static bool run_batch(sb_store *s, job *first)
{
    sqlite3 *db = s->wdb;
    const char *what = "BEGIN";
    int rc = step_ctl(s->st_begin);
    job *j = first;
    if (rc != 0)
        goto fail;

    for (; j; j = j->next) {
        what = "SAVEPOINT";
        rc = step_ctl(s->st_savepoint);
        if (rc != 0)
            goto fail;
        int jrc = j->fn(db, j->arg);
        reset_running(db);
        /* SQLite rolls back the whole transaction on some errors (disk full, I/O); a job
         * that ended it itself has broken its contract. Either way the batch is lost. */
        if (sqlite3_get_autocommit(db)) {
            what = "job (transaction ended inside it)";
            rc = SQLITE_ERROR;
            goto fail;
        }
        if (jrc < 0) {
            what = "ROLLBACK TO";
            rc = step_ctl(s->st_rollback_to);
            if (rc != 0)
                goto fail;
        }
        what = "RELEASE";
        rc = step_ctl(s->st_release);
        if (rc != 0)
            goto fail;
        j->rc = jrc;
    }
    what = "COMMIT";
    rc = step_ctl(s->st_commit);
    if (rc != 0)
        goto fail;
    return true;

fail:
    sb_log(SB_LOG_ERROR, "store: batch failed", "step", what, "error", sqlite3_errmsg(db), NULL);
    if (!sqlite3_get_autocommit(db))
        step_ctl(s->st_rollback);
    for (j = first; j; j = j->next)
        j->rc = SB_EIO;
    return false;
}

static void deliver(void *p)
{
    job *j = p;
    sb_store_done_fn done = j->done;
    void *arg = j->arg;
    int rc = j->rc;
    sb_free(j);
    done(arg, rc);
}

static void complete(job *first)
{
    while (first) {
        job *j = first;
        first = j->next; /* j may be freed on another thread once posted */
        if (!j->done)
            sb_free(j);
        else if (j->post)
            j->post(j->target, deliver, j);
        else
            deliver(j);
    }
}

static void *writer_main(void *arg)
{
    sb_store *s = arg;
    pthread_mutex_lock(&s->lock);
    for (;;) {
        while (!s->head && !s->stopping)
            pthread_cond_wait(&s->nonempty, &s->lock);
        if (!s->head)
            break; /* stopping and drained */

        job *first = s->head, *last = first;
        int n = 1;
        while (n < s->max_batch && last->next) {
            last = last->next;
            n++;
        }
        s->head = last->next;
        if (!s->head)
            s->tail = NULL;
        last->next = NULL;
        s->count -= n;
        if (s->space_waiters)
            pthread_cond_broadcast(&s->notfull);
        pthread_mutex_unlock(&s->lock);

        bool ok = run_batch(s, first);

        pthread_mutex_lock(&s->lock);
        s->stats.batches++;
        if (ok)
            s->stats.jobs_done += (uint64_t)n;
        else
            s->stats.jobs_failed += (uint64_t)n;
        if ((uint64_t)n > s->stats.max_batch_seen)
            s->stats.max_batch_seen = (uint64_t)n;
        void (*hook)(void *) = ok ? s->commit_hook : NULL;
        void *hook_ud = s->commit_ud;
        pthread_mutex_unlock(&s->lock);

        if (hook)
            hook(hook_ud); /* before the completions: a stream may see an event first */
        if (ok) {
            pthread_mutex_lock(&s->hook_lock); /* held while they run: see remove */
            for (int i = 0; i < s->nextra; i++)
                s->extra_hooks[i](s->extra_ud[i]);
            pthread_mutex_unlock(&s->hook_lock);
        }

        complete(first); /* outside the lock: done callbacks may submit */
        pthread_mutex_lock(&s->lock);
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

int sb_store_open(sb_store **out, const sb_store_opts *o, char *err, size_t errlen)
{
    int rc = SB_EINVAL;
    sb_store *s = NULL;
    int busy_ms;
    char scratch[8];

    if (!err || !errlen) {
        err = scratch; /* every path below may write a message */
        errlen = sizeof scratch;
    }
    err[0] = '\0';
    if (out)
        *out = NULL;
    if (!out || !o || !o->path || !o->path[0] || o->readers < 0 ||
        o->readers > SB_STORE_MAX_READERS || o->max_batch < 0 || o->max_queue < 0 ||
        o->busy_timeout_ms < 0) {
        snprintf(err, errlen, "store: invalid options");
        goto fail;
    }
    if (!sqlite3_threadsafe()) {
        snprintf(err, errlen, "store: SQLite was built without thread support");
        rc = SB_ENOTSUP;
        goto fail;
    }
    busy_ms = o->busy_timeout_ms ? o->busy_timeout_ms : SB_STORE_DEF_BUSY_MS;

    rc = SB_ENOMEM;
    s = sb_calloc(1, sizeof *s);
    if (!s)
        goto fail;
    s->max_batch = o->max_batch ? o->max_batch : SB_STORE_DEF_BATCH;
    s->max_queue = o->max_queue ? o->max_queue : SB_STORE_DEF_QUEUE;
    if (o->readers) {
        s->readers = sb_calloc((size_t)o->readers, sizeof *s->readers);
        if (!s->readers)
            goto fail_free;
    }

    rc = SB_EIO;
    if (sqlite3_open_v2(o->path, &s->wdb,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK) {
        set_err(err, errlen, "cannot open database", s->wdb);
        goto fail_close;
    }
    sqlite3_extended_result_codes(s->wdb, 1);
    rc = configure_writer(s->wdb, o, busy_ms, err, errlen);
    if (rc < 0)
        goto fail_close;
    rc = sb__store_migrate(s->wdb, &s->version, err, errlen);
    if (rc < 0)
        goto fail_close;
    rc = prepare_control(s);
    if (rc < 0) {
        set_err(err, errlen, "cannot prepare transaction statements", s->wdb);
        goto fail_close;
    }
    rc = sb__stmt_cache_attach(s->wdb);
    if (rc < 0) {
        set_err(err, errlen, "statement cache", NULL);
        goto fail_close;
    }

    for (; s->nreaders < o->readers; s->nreaders++) {
        sqlite3 **r = &s->readers[s->nreaders];
        int orc = sqlite3_open_v2(o->path, r, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL);
        if (orc != SQLITE_OK) {
            set_err(err, errlen, "cannot open reader", *r);
            sqlite3_close(*r);
            *r = NULL;
            rc = SB_EIO;
            goto fail_close;
        }
        sqlite3_extended_result_codes(*r, 1);
        sqlite3_busy_timeout(*r, busy_ms);
        rc = sb__stmt_cache_attach(*r);
        if (rc < 0) {
            set_err(err, errlen, "statement cache", NULL);
            sqlite3_close(*r);
            *r = NULL;
            goto fail_close;
        }
    }

    rc = SB_EIO;
    s->hook_lock = (pthread_mutex_t)PTHREAD_MUTEX_INITIALIZER;
    if (pthread_mutex_init(&s->lock, NULL) != 0) {
        snprintf(err, errlen, "store: cannot create mutex");
        goto fail_close;
    }
    if (pthread_cond_init(&s->nonempty, NULL) != 0) {
        snprintf(err, errlen, "store: cannot create condition variable");
        goto fail_mutex;
    }
    if (pthread_cond_init(&s->notfull, NULL) != 0) {
        snprintf(err, errlen, "store: cannot create condition variable");
        goto fail_cond;
    }
    if (pthread_create(&s->writer, NULL, writer_main, s) != 0) {
        snprintf(err, errlen, "store: cannot start the writer thread");
        goto fail_cond2;
    }
    *out = s;
    return 0;

fail_cond2:
    pthread_cond_destroy(&s->notfull);
fail_cond:
    pthread_cond_destroy(&s->nonempty);
fail_mutex:
    pthread_mutex_destroy(&s->lock);
fail_close:
    for (int i = 0; i < s->nreaders; i++)
        close_db(s->readers[i]);
    finalize_control(s);
    close_db(s->wdb);
fail_free:
    sb_free(s->readers);
    sb_free(s);
fail:
    return rc;
}

void sb_store_close(sb_store *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->lock);
    s->stopping = true;
    pthread_cond_broadcast(&s->nonempty);
    pthread_cond_broadcast(&s->notfull);
    pthread_mutex_unlock(&s->lock);
    pthread_join(s->writer, NULL);

    for (int i = 0; i < s->nreaders; i++)
        close_db(s->readers[i]);
    finalize_control(s);
    close_db(s->wdb); /* the last connection: checkpoints and removes the WAL */
    pthread_cond_destroy(&s->notfull);
    pthread_cond_destroy(&s->nonempty);
    pthread_mutex_destroy(&s->lock);
    pthread_mutex_destroy(&s->hook_lock);
    sb_free(s->readers);
    sb_free(s);
}

int sb_store_schema_version(const sb_store *s)
{
    return s->version;
}

sqlite3 *sb_store_reader(sb_store *s, int i)
{
    if (!s || i < 0 || i >= s->nreaders)
        return NULL;
    return s->readers[i];
}

static int enqueue(sb_store *s, job *j, bool wait)
{
    int rc = 0;
    pthread_mutex_lock(&s->lock);
    while (wait && !s->stopping && s->count >= s->max_queue) {
        s->space_waiters++;
        pthread_cond_wait(&s->notfull, &s->lock);
        s->space_waiters--;
    }
    if (s->stopping) {
        rc = SB_ECANCELED;
    } else if (s->count >= s->max_queue) {
        s->stats.jobs_rejected++;
        rc = SB_EAGAIN;
    } else {
        if (s->tail)
            s->tail->next = j;
        else
            s->head = j;
        s->tail = j;
        /* The writer sleeps only on an empty queue. */
        if (s->count++ == 0)
            pthread_cond_signal(&s->nonempty);
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

static int submit(sb_store *s, sb_store_job_fn fn, sb_store_done_fn done, void *arg,
                  sb_post_fn post, void *target, bool wait)
{
    if (!s || !fn)
        return SB_EINVAL;
    job *j = sb_malloc(sizeof *j);
    if (!j)
        return SB_ENOMEM;
    *j = (job){.fn = fn, .done = done, .arg = arg, .post = post, .target = target};
    int rc = enqueue(s, j, wait);
    if (rc < 0)
        sb_free(j);
    return rc;
}

int sb_store_submit(sb_store *s, sb_store_job_fn job_fn, sb_store_done_fn done, void *arg,
                    sb_post_fn post, void *post_target)
{
    return submit(s, job_fn, done, arg, post, post_target, false);
}

typedef struct sync_wait {
    sb_store_job_fn fn;
    void *arg;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool done;
    int rc;
} sync_wait;

static int sync_job(sqlite3 *db, void *arg)
{
    sync_wait *w = arg;
    return w->fn(db, w->arg);
}

static void sync_done(void *arg, int rc)
{
    sync_wait *w = arg;
    pthread_mutex_lock(&w->lock);
    w->rc = rc;
    w->done = true;
    pthread_cond_signal(&w->cond); /* under the lock: the waiter frees w once it sees done */
    pthread_mutex_unlock(&w->lock);
}

int sb_store_run_sync(sb_store *s, sb_store_job_fn job_fn, void *arg)
{
    if (!s || !job_fn || pthread_equal(pthread_self(), s->writer))
        return SB_EINVAL;
    sync_wait w = {.fn = job_fn, .arg = arg, .done = false, .rc = 0};
    int rc = SB_EIO;
    if (pthread_mutex_init(&w.lock, NULL) != 0)
        goto fail;
    if (pthread_cond_init(&w.cond, NULL) != 0)
        goto fail_mutex;
    rc = submit(s, sync_job, sync_done, &w, NULL, NULL, true);
    if (rc < 0)
        goto fail_cond;
    pthread_mutex_lock(&w.lock);
    while (!w.done)
        pthread_cond_wait(&w.cond, &w.lock);
    rc = w.rc;
    pthread_mutex_unlock(&w.lock);
fail_cond:
    pthread_cond_destroy(&w.cond);
fail_mutex:
    pthread_mutex_destroy(&w.lock);
fail:
    return rc;
}

int sb_store_event_seq_next(sqlite3 *db, const char *project_id, int64_t *seq)
{
    sqlite3_stmt *st = sb_store_stmt(db, sb__store_sql_event_seq_next);
    if (!st)
        return SB_EIO;
    int rc = sqlite3_bind_text(st, 1, project_id, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *seq = sqlite3_column_int64(st, 0);
        rc = sqlite3_step(st); /* RETURNING completes the write on the next step */
    }
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : rc == SQLITE_ROW ? SB_EIO : sb_store_errno(rc);
}

void sb_store_set_commit_hook(sb_store *s, void (*fn)(void *ud), void *ud)
{
    pthread_mutex_lock(&s->lock);
    s->commit_hook = fn;
    s->commit_ud = ud;
    pthread_mutex_unlock(&s->lock);
}

int sb_store_add_commit_hook(sb_store *s, void (*fn)(void *ud), void *ud)
{
    int rc = SB_EAGAIN;
    pthread_mutex_lock(&s->hook_lock);
    if (fn && s->nextra < SB_STORE_MAX_COMMIT_HOOKS) {
        s->extra_hooks[s->nextra] = fn;
        s->extra_ud[s->nextra++] = ud;
        rc = 0;
    }
    pthread_mutex_unlock(&s->hook_lock);
    return rc;
}

void sb_store_remove_commit_hook(sb_store *s, void (*fn)(void *ud), void *ud)
{
    pthread_mutex_lock(&s->hook_lock);
    for (int i = 0; i < s->nextra; i++) {
        if (s->extra_hooks[i] == fn && s->extra_ud[i] == ud) {
            for (int j = i + 1; j < s->nextra; j++) {
                s->extra_hooks[j - 1] = s->extra_hooks[j];
                s->extra_ud[j - 1] = s->extra_ud[j];
            }
            s->nextra--;
            break;
        }
    }
    pthread_mutex_unlock(&s->hook_lock);
}

void sb_store_get_stats(sb_store *s, sb_store_stats *out)
{
    pthread_mutex_lock(&s->lock);
    *out = s->stats;
    out->queued = (uint32_t)s->count;
    pthread_mutex_unlock(&s->lock);
}
