/*
 * The store: durable state behind one interface.
 *
 * The embedded backend is one SQLite database in WAL mode:
 *
 *   - One writer thread owns the only read-write connection. Every change is a job
 *     submitted to it; the writer runs queued jobs in batches (group commit): BEGIN
 *     IMMEDIATE, each job in its own SAVEPOINT, one COMMIT (one fsync) for the batch, then
 *     one done callback per job, delivered on the submitter's thread through a post
 *     function the submitter supplies. Submitting never blocks: a full queue is SB_EAGAIN.
 *   - `readers` read-only connections, one per event loop, each used by exactly one thread,
 *     for reads that may run on a loop (indexed point reads and short pages; WAL readers
 *     never wait for the writer).
 *
 * This layer calls nothing above it: completions reach the caller only through the post
 * function, so the store knows nothing of event loops.
 *
 * Durability: a job's changes are durable when its done callback runs. With
 * synchronous_full that means after the WAL fsync of its batch; without it (synchronous =
 * NORMAL) a power loss may drop the last batches, but a process crash (kill -9) still
 * loses nothing that was reported done.
 *
 * PostgreSQL later: sb_store stays the one handle and these functions its interface; a
 * backend becomes a vtable (open, close, submit, run_sync, reader) chosen by the path's
 * scheme, with jobs given a backend connection instead of a sqlite3 *. Until then jobs and
 * readers use SQLite directly, and all schema SQL lives in schema.c so that the other
 * backend brings its own. Group commit and the queue bound stay the same there (one writer
 * connection per node or a small pool; the job contract does not change).
 */
#ifndef SB_STORE_STORE_H
#define SB_STORE_STORE_H

#include <sqlite3.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct sb_store sb_store;

#define SB_STORE_MAX_READERS 256
#define SB_STORE_STMT_CACHE  128 /* cached statements per connection, LRU beyond that */
#define SB_STORE_DEF_BATCH   64
#define SB_STORE_DEF_QUEUE   4096
#define SB_STORE_DEF_BUSY_MS 5000

typedef struct sb_store_opts {
    const char *path;      /* database file; created if missing (its directory must exist) */
    int readers;           /* read-only connections, 0..SB_STORE_MAX_READERS */
    int max_batch;         /* jobs per transaction; 0 = SB_STORE_DEF_BATCH */
    int max_queue;         /* jobs waiting for the writer (not counting the batch it is
                              running); 0 = SB_STORE_DEF_QUEUE */
    bool synchronous_full; /* PRAGMA synchronous = FULL (fsync per commit), else NORMAL */
    int busy_timeout_ms;   /* SQLite busy timeout on every connection; 0 = default */
} sb_store_opts;

/*
 * Opens (creating if needed) the database at o->path: sets journal_mode=WAL, synchronous,
 * foreign_keys=ON, busy_timeout and a WAL size limit, applies pending migrations (each in
 * one transaction), opens o->readers read-only connections and starts the writer thread.
 * On success *out owns all of it until sb_store_close. On failure returns a negative SB_E*
 * and writes a sentence to err (which may be NULL): SB_EINVAL for bad options, SB_ENOTSUP
 * when the database was written by a newer build (schema version above ours), SB_EBUSY when
 * another process holds it locked past the busy timeout, SB_EIO otherwise.
 * Call from any thread; nothing is left open on failure.
 */
int sb_store_open(sb_store **out, const sb_store_opts *o, char *err, size_t errlen);

/*
 * Stops accepting jobs (sb_store_submit then returns SB_ECANCELED), lets the writer finish
 * every job already queued, joins the writer and closes every connection. Done callbacks of
 * those jobs are still posted, so post targets must keep running posted functions until
 * they have; they may run after close returns and must not touch the store then. The
 * caller guarantees that no other thread is using a reader connection or a statement from
 * one, and that nobody calls into the store once close has returned. NULL is ignored. Must
 * not be called on the writer thread (from a job, or a done callback run without post).
 */
void sb_store_close(sb_store *s);

/* The schema version of the open database (after migrations): the latest this build knows. */
int sb_store_schema_version(const sb_store *s);

/*
 * Read-only connection i, 0 <= i < readers (NULL otherwise). Owned by the store, valid until
 * sb_store_close. Each must be used by exactly one thread at a time (connections are opened
 * without SQLite's mutex); give one to each event loop. Keep read transactions short: a
 * reader that holds a statement mid-step pins the WAL and stops checkpoints.
 */
sqlite3 *sb_store_reader(sb_store *s, int i);

/*
 * A prepared statement for sql on db, cached per connection (SQLITE_PREPARE_PERSISTENT) and
 * keyed by the SQL text. db must be a connection of a store: a reader, or the writer inside
 * a job. The statement comes back reset with its bindings cleared; the caller binds, steps
 * and should reset it when done (the writer resets any a job leaves running). It stays
 * owned by the cache: never finalize it. It is valid until sb_store_close, or until
 * SB_STORE_STMT_CACHE other distinct SQL texts have been asked for on the same connection
 * since it was last returned (least-recently-used eviction), so use it at once and do not
 * keep it across jobs or callbacks. Use constant SQL text; SQL built at run time (IN lists
 * of varying length) should be prepared and finalized by the caller instead.
 * sql must be exactly one statement. Returns NULL if preparing fails (sqlite3_errmsg(db)
 * says why), if sql holds more than one statement, or if db is not a store connection.
 * Same thread contract as db itself. Takes a process-wide mutex only the first time a
 * thread asks for a statement on db (again after any store connection closes).
 */
sqlite3_stmt *sb_store_stmt(sqlite3 *db, const char *sql);

/*
 * Runs fn(arg) on the thread behind target (an event loop, typically). The store calls it
 * from the writer thread, once per completed job. It returns nothing, so it must not lose a
 * call: if it cannot queue (out of memory, target already stopped) it must still get
 * fn(arg) run, e.g. by retrying, by running it during its own shutdown drain, or as a last
 * resort by aborting the process. A dropped call leaks the completion (freed by fn) and
 * leaves the submitter waiting forever. It must not block for long: it holds up the writer.
 */
typedef void (*sb_post_fn)(void *target, void (*fn)(void *arg), void *arg);

/*
 * A unit of work run on the writer thread with the writer connection, inside a transaction
 * and its own SAVEPOINT. Returns >= 0 to keep its changes (the value is passed to done) or a
 * negative SB_E* to roll back only its own changes (batch-mates are unaffected). A job must
 * not BEGIN, COMMIT, ROLLBACK or RELEASE anything it did not start, must not block on other
 * threads, and must not call sb_store_run_sync or sb_store_close. It may submit jobs.
 */
typedef int (*sb_store_job_fn)(sqlite3 *db, void *arg);

/*
 * Completion of a job, on the submitter's thread (via post). rc is the job's return value,
 * or SB_EIO when its batch could not be committed (then every job of that batch gets
 * SB_EIO, and none of their changes were kept). arg is the submitter's: free it here.
 */
typedef void (*sb_store_done_fn)(void *arg, int rc);

/*
 * Queues job(db, arg) for the writer. Never blocks. When done is not NULL, done(arg, rc)
 * is run once the job's batch has committed (or failed) through post(post_target, ...);
 * post NULL means done runs directly on the writer thread (it must then be thread-safe and
 * quick). Returns 0, or SB_EAGAIN when max_queue jobs are already waiting (answer 503 and
 * let the client retry), SB_ECANCELED after sb_store_close has begun, SB_ENOMEM, or
 * SB_EINVAL; on error neither job nor done is ever called. Safe from any thread, including
 * from a job or a done callback.
 */
int sb_store_submit(sb_store *s, sb_store_job_fn job, sb_store_done_fn done, void *arg,
                    sb_post_fn post, void *post_target);

/*
 * Submits job and waits for its batch to commit: returns the job's result or SB_EIO as
 * done would. Waits for queue space instead of failing with SB_EAGAIN. Blocks the calling
 * thread, so it is for startup, tools and tests, never for an event loop. SB_EINVAL when
 * called from the writer thread (it would wait for itself).
 */
int sb_store_run_sync(sb_store *s, sb_store_job_fn job, void *arg);

/*
 * The next number of project_id's event sequence (1, 2, 3, ...; never reused, even after
 * events are deleted), from the event_counters table. For jobs writing to the outbox:
 * call it on the writer connection inside the job, so that the number and the event row
 * commit (or roll back) together. Returns 0 and sets *seq, or a negative SB_E*.
 */
int sb_store_event_seq_next(sqlite3 *db, const char *project_id, int64_t *seq);

/* Maps a SQLite result code to SB_E*: unique/primary-key violations are SB_EEXIST, other
 * constraint violations SB_ECONSTRAINT, BUSY/LOCKED SB_EBUSY, NOMEM SB_ENOMEM, anything else
 * that is not OK/ROW/DONE SB_EIO. OK, ROW and DONE map to 0. For jobs turning a failed step
 * into their return value. */
int sb_store_errno(int sqlite_rc);

/*
 * Registers fn(ud), called on the writer thread right after each batch whose COMMIT
 * succeeded, before that batch's done callbacks are posted (never after a failed batch).
 * The event stream uses it to learn that new outbox rows may be visible to readers; it must
 * be quick and must not call into the store. One hook per store; NULL removes it. Safe from
 * any thread; the writer sees the change from its next batch on.
 */
void sb_store_set_commit_hook(sb_store *s, void (*fn)(void *ud), void *ud);

/* More commit hooks beside the one above (same contract), for other listeners such as the
 * webhook dispatcher: at most SB_STORE_MAX_COMMIT_HOOKS. add returns 0 or SB_EAGAIN (full); remove
 * forgets the (fn, ud) pair (no-op if absent); once remove returns, fn is not running and
 * will not be called again. */
#define SB_STORE_MAX_COMMIT_HOOKS 4
int sb_store_add_commit_hook(sb_store *s, void (*fn)(void *ud), void *ud);
void sb_store_remove_commit_hook(sb_store *s, void (*fn)(void *ud), void *ud);

typedef struct sb_store_stats {
    uint64_t jobs_done;      /* jobs whose batch committed (kept or rolled back by the job) */
    uint64_t jobs_failed;    /* jobs that got SB_EIO because their batch failed */
    uint64_t jobs_rejected;  /* submits refused with SB_EAGAIN */
    uint64_t batches;        /* transactions attempted */
    uint64_t max_batch_seen; /* largest batch so far */
    uint32_t queued;         /* jobs waiting right now */
} sb_store_stats;

/* A consistent snapshot of the writer's counters. Safe from any thread. */
void sb_store_get_stats(sb_store *s, sb_store_stats *out);

#endif
