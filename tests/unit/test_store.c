/* The store: migrations, group commit, done delivery, bounds, statement cache, durability. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/alloc.h"
#include "store/schema.h"
#include "store/store.h"
#include "switchboard/error.h"

/* ---- fixture: a fresh directory per test ---------------------------------------------- */

typedef struct fixture {
    char dir[64];
    char path[96];
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    snprintf(f->dir, sizeof f->dir, "/tmp/sb-store-XXXXXX");
    if (!mkdtemp(f->dir)) {
        free(f);
        return -1;
    }
    snprintf(f->path, sizeof f->path, "%s/sb.db", f->dir);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    static const char *const suffix[] = {"", "-wal", "-shm", "-journal"};
    for (size_t i = 0; i < sizeof suffix / sizeof suffix[0]; i++) {
        char p[128];
        snprintf(p, sizeof p, "%s%s", f->path, suffix[i]);
        unlink(p);
    }
    rmdir(f->dir);
    free(f);
    return 0;
}

static sb_store *open_store(const fixture *f, int readers, int max_batch, int max_queue)
{
    sb_store_opts o = {.path = f->path,
                       .readers = readers,
                       .max_batch = max_batch,
                       .max_queue = max_queue,
                       .synchronous_full = true};
    char err[256];
    sb_store *s = NULL;
    int rc = sb_store_open(&s, &o, err, sizeof err);
    if (rc != 0)
        print_error("open: %s\n", err);
    assert_int_equal(rc, 0);
    return s;
}

/* ---- a post function that queues to a list drained by the test thread ----------------- */

typedef struct posted {
    struct posted *next;
    void (*fn)(void *);
    void *arg;
} posted;

static pthread_mutex_t pq_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pq_cond = PTHREAD_COND_INITIALIZER;
static posted *pq_head, *pq_tail;
static int pq_target; /* its address is the post target */

static void test_post(void *target, void (*fn)(void *), void *arg)
{
    /* Runs on the writer thread, where a cmocka assert cannot unwind: abort instead. */
    posted *p = malloc(sizeof *p);
    if (target != &pq_target || !p)
        abort();
    *p = (posted){NULL, fn, arg};
    pthread_mutex_lock(&pq_lock);
    if (pq_tail)
        pq_tail->next = p;
    else
        pq_head = p;
    pq_tail = p;
    pthread_cond_signal(&pq_cond);
    pthread_mutex_unlock(&pq_lock);
}

/* Runs posted functions on this thread until n have run. */
static void drain(int n)
{
    for (int done = 0; done < n; done++) {
        pthread_mutex_lock(&pq_lock);
        while (!pq_head)
            pthread_cond_wait(&pq_cond, &pq_lock);
        posted *p = pq_head;
        pq_head = p->next;
        if (!pq_head)
            pq_tail = NULL;
        pthread_mutex_unlock(&pq_lock);
        p->fn(p->arg);
        free(p);
    }
}

static bool pq_empty(void)
{
    pthread_mutex_lock(&pq_lock);
    bool empty = pq_head == NULL;
    pthread_mutex_unlock(&pq_lock);
    return empty;
}

/* ---- jobs ------------------------------------------------------------------------------ */

typedef struct ins {
    char id[32];
    int fail; /* return this after inserting, when negative */
    int rc;   /* from done */
    bool called;
    pthread_t thread;
} ins;

static int insert_project(sqlite3 *db, void *arg)
{
    ins *a = arg;
    sqlite3_stmt *st = sb_store_stmt(db, "INSERT INTO projects(id, name, created_at) "
                                         "VALUES (?1, ?1, 1700000000000)");
    if (!st)
        return SB_EIO;
    sqlite3_bind_text(st, 1, a->id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return sb_store_errno(rc);
    return a->fail < 0 ? a->fail : 7;
}

static void ins_done(void *arg, int rc)
{
    ins *a = arg;
    a->rc = rc;
    a->called = true;
    a->thread = pthread_self();
}

static int count_rows(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st = sb_store_stmt(db, sql);
    assert_non_null(st);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    int n = sqlite3_column_int(st, 0);
    sqlite3_reset(st);
    return n;
}

static int project_exists(sqlite3 *db, const char *id)
{
    sqlite3_stmt *st = sb_store_stmt(db, "SELECT count(*) FROM projects WHERE id = ?1");
    assert_non_null(st);
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    int n = sqlite3_column_int(st, 0);
    sqlite3_reset(st);
    return n;
}

/* A job that holds the writer until released, so that later jobs pile up in the queue and
 * are taken as one batch. */
static pthread_mutex_t gate_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cond = PTHREAD_COND_INITIALIZER;
static bool gate_open, gate_entered;

static void gate_reset(void)
{
    pthread_mutex_lock(&gate_lock);
    gate_open = gate_entered = false;
    pthread_mutex_unlock(&gate_lock);
}

static int gate_job(sqlite3 *db, void *arg)
{
    (void)db;
    (void)arg;
    pthread_mutex_lock(&gate_lock);
    gate_entered = true;
    pthread_cond_broadcast(&gate_cond);
    while (!gate_open)
        pthread_cond_wait(&gate_cond, &gate_lock);
    pthread_mutex_unlock(&gate_lock);
    return 0;
}

static void gate_wait_entered(void)
{
    pthread_mutex_lock(&gate_lock);
    while (!gate_entered)
        pthread_cond_wait(&gate_cond, &gate_lock);
    pthread_mutex_unlock(&gate_lock);
}

static void gate_release(void)
{
    pthread_mutex_lock(&gate_lock);
    gate_open = true;
    pthread_cond_broadcast(&gate_cond);
    pthread_mutex_unlock(&gate_lock);
}

static int noop_job(sqlite3 *db, void *arg)
{
    (void)db;
    (void)arg;
    return 0;
}

/* ---- tests ----------------------------------------------------------------------------- */

static void test_open_schema(void **state)
{
    fixture *f = *state;
    sb_store *s = open_store(f, 1, 0, 0);
    assert_int_equal(sb_store_schema_version(s), sb__store_schema_latest());
    assert_int_equal(sb_store_schema_version(s), sb__store_schema_latest());
    sqlite3 *r = sb_store_reader(s, 0);
    assert_non_null(r);
    assert_null(sb_store_reader(s, 1));
    assert_null(sb_store_reader(s, -1));
    assert_int_equal(count_rows(r, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND "
                                   "name IN ('projects','api_keys','signing_keys','rooms',"
                                   "'sessions','session_participants','idempotency_keys',"
                                   "'audit_log','events','event_counters')"),
                     10);
    sqlite3_stmt *st = sb_store_stmt(r, "PRAGMA journal_mode");
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(st, 0), "wal");
    sqlite3_reset(st);
    /* Readers are read-only. */
    st = sb_store_stmt(r, "INSERT INTO projects VALUES ('x', 'x', 1)");
    assert_non_null(st);
    assert_int_equal(sqlite3_step(st), SQLITE_READONLY);
    sqlite3_reset(st);
    sb_store_close(s);
}

static void test_bad_options(void **state)
{
    fixture *f = *state;
    sb_store *s = NULL;
    char err[128];
    sb_store_opts o = {.path = f->path, .readers = -1};
    assert_int_equal(sb_store_open(&s, &o, err, sizeof err), SB_EINVAL);
    assert_null(s);
    o = (sb_store_opts){.path = NULL};
    assert_int_equal(sb_store_open(&s, &o, NULL, 0), SB_EINVAL);
    o = (sb_store_opts){.path = "/nonexistent-dir/x/sb.db"};
    assert_int_equal(sb_store_open(&s, &o, err, sizeof err), SB_EIO);
    assert_non_null(strstr(err, "cannot open"));
}

static void test_reopen_idempotent(void **state)
{
    fixture *f = *state;
    sb_store *s = open_store(f, 0, 0, 0);
    ins a = {.id = "p1"};
    assert_int_equal(sb_store_run_sync(s, insert_project, &a), 7);
    sb_store_close(s);
    for (int i = 0; i < 2; i++) {
        s = open_store(f, 1, 0, 0);
        assert_int_equal(sb_store_schema_version(s), sb__store_schema_latest());
        assert_int_equal(project_exists(sb_store_reader(s, 0), "p1"), 1);
        sb_store_close(s);
    }
}

static void test_newer_version_refused(void **state)
{
    fixture *f = *state;
    sb_store_close(open_store(f, 0, 0, 0));
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "PRAGMA user_version = 99", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);

    sb_store *s = NULL;
    char err[256];
    sb_store_opts o = {.path = f->path, .readers = 2};
    assert_int_equal(sb_store_open(&s, &o, err, sizeof err), SB_ENOTSUP);
    assert_null(s);
    assert_non_null(strstr(err, "newer than this build"));
    assert_non_null(strstr(err, "99"));
}

static void test_migration_failure_rolls_back(void **state)
{
    fixture *f = *state;
    static const sb_store_migration m[] = {
        {1, "one", "CREATE TABLE a(x INTEGER)"},
        {2, "two", "CREATE TABLE b(x INTEGER); CREATE TABLE a(x INTEGER)"}, /* fails */
    };
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    int v = -1;
    char err[256];
    assert_int_equal(sb__store_migrate_with(db, m, 2, &v, err, sizeof err), SB_EIO);
    assert_non_null(strstr(err, "migration 2 (two)"));
    /* Version 1 stays applied, nothing of version 2 remains. */
    assert_int_equal(sb__store_migrate_with(db, m, 1, &v, err, sizeof err), 0);
    assert_int_equal(v, 1);
    assert_int_equal(sqlite3_exec(db, "SELECT * FROM b", NULL, NULL, NULL), SQLITE_ERROR);
    sqlite3_close(db);
}

/* Migration 6 rebuilds webhook_deliveries: rows, rowids, indexes and the allowed states
 * survive; id is no longer indexed on its own. */
static void test_migration_6_keeps_deliveries(void **state)
{
    fixture *f = *state;
    size_t n;
    const sb_store_migration *m = sb__store_migrations(&n);
    assert_true(n >= 6);
    assert_int_equal(m[4].version, 5);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    int v = -1;
    char err[256];
    assert_int_equal(sb__store_migrate_with(db, m, 5, &v, err, sizeof err), 0);
    assert_int_equal(v, 5);
    assert_int_equal(
        sqlite3_exec(db,
                     "INSERT INTO webhook_deliveries (rowid, id, webhook_id, project_id, "
                     "event_seq, event_id, event_type, room_name, state, attempts, "
                     "round_attempts, blocked, next_at, last_status, created_at, updated_at) "
                     "VALUES (7, 'dlv_00000001000000000005', 'wh_a', 'prj_a', 5, 'evt_5', "
                     "'room.created', 'r1', 'delivered', 1, 1, 0, 10, 204, 10, 11), "
                     "(9, 'dlv_00000001000000000006', 'wh_a', 'prj_a', 6, 'evt_6', "
                     "'room.updated', 'r1', 'pending', 2, 2, 0, 20, 503, 12, 13)",
                     NULL, NULL, NULL),
        SQLITE_OK);
    assert_int_equal(sb__store_migrate(db, &v, err, sizeof err), 0);
    assert_int_equal(v, sb__store_schema_latest());
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "SELECT rowid, id, state, attempts, last_status FROM "
                                        "webhook_deliveries ORDER BY rowid",
                                        -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), 7);
    assert_string_equal((const char *)sqlite3_column_text(st, 1), "dlv_00000001000000000005");
    assert_string_equal((const char *)sqlite3_column_text(st, 2), "delivered");
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), 9);
    assert_string_equal((const char *)sqlite3_column_text(st, 2), "pending");
    assert_int_equal(sqlite3_column_int(st, 3), 2);
    assert_int_equal(sqlite3_column_int(st, 4), 503);
    assert_int_equal(sqlite3_step(st), SQLITE_DONE);
    sqlite3_finalize(st);
    /* the pending one is in the per-room index, the states are still checked, and
     * (webhook_id, event_seq) is still unique */
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "SELECT COUNT(*) FROM webhook_deliveries INDEXED BY "
                                        "webhook_deliveries_room WHERE webhook_id = 'wh_a' AND "
                                        "state = 'pending'",
                                        -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), 1);
    sqlite3_finalize(st);
    assert_int_equal(sqlite3_exec(db,
                                  "UPDATE webhook_deliveries SET state = 'lost' WHERE rowid = 7",
                                  NULL, NULL, NULL),
                     SQLITE_CONSTRAINT);
    assert_int_equal(sqlite3_exec(db,
                                  "INSERT INTO webhook_deliveries (id, webhook_id, project_id, "
                                  "event_seq, event_id, event_type, state, next_at, created_at, "
                                  "updated_at) VALUES ('x', 'wh_a', 'prj_a', 5, 'e', 't', "
                                  "'pending', 0, 0, 0)",
                                  NULL, NULL, NULL),
                     SQLITE_CONSTRAINT);
    sqlite3_close(db);
}

static void test_commit_visible_to_readers(void **state)
{
    fixture *f = *state;
    sb_store *s = open_store(f, 2, 0, 0);
    ins a = {.id = "p1"};
    sqlite3 *r0 = sb_store_reader(s, 0), *r1 = sb_store_reader(s, 1);
    assert_int_equal(project_exists(r0, "p1"), 0);
    assert_int_equal(sb_store_submit(s, insert_project, ins_done, &a, test_post, &pq_target), 0);
    drain(1);
    assert_true(a.called);
    assert_int_equal(a.rc, 7);
    assert_true(pthread_equal(a.thread, pthread_self()));
    assert_int_equal(project_exists(r0, "p1"), 1);
    assert_int_equal(project_exists(r1, "p1"), 1);
    /* A duplicate id is the job's own failure, mapped to SB_EEXIST. */
    ins b = {.id = "p1"};
    assert_int_equal(sb_store_run_sync(s, insert_project, &b), SB_EEXIST);
    sb_store_close(s);
}

static void test_failing_job_rolls_back_alone(void **state)
{
    fixture *f = *state;
    sb_store *s = open_store(f, 1, 64, 0);
    ins a[5] = {{.id = "a"},
                {.id = "b", .fail = SB_EINVAL},
                {.id = "c"},
                {.id = "d", .fail = SB_ECONSTRAINT},
                {.id = "e"}};
    sb_store_stats st0, st1;

    gate_reset();
    assert_int_equal(sb_store_submit(s, gate_job, NULL, NULL, NULL, NULL), 0);
    gate_wait_entered();
    sb_store_get_stats(s, &st0);
    for (int i = 0; i < 5; i++)
        assert_int_equal(sb_store_submit(s, insert_project, ins_done, &a[i], test_post, &pq_target),
                         0);
    gate_release();
    drain(5);
    sb_store_get_stats(s, &st1);
    assert_int_equal(st1.batches - st0.batches, 2); /* the gate's, then all five at once */
    assert_true(st1.max_batch_seen >= 5);

    sqlite3 *r = sb_store_reader(s, 0);
    for (int i = 0; i < 5; i++) {
        assert_true(a[i].called);
        assert_int_equal(a[i].rc, a[i].fail < 0 ? a[i].fail : 7);
        assert_int_equal(project_exists(r, a[i].id), a[i].fail < 0 ? 0 : 1);
    }
    sb_store_close(s);
}

static void test_done_through_post(void **state)
{
    fixture *f = *state;
    sb_store *s = open_store(f, 0, 8, 0);
    enum { N = 100 };
    ins *a = calloc(N, sizeof *a);
    assert_non_null(a);
    for (int i = 0; i < N; i++) {
        snprintf(a[i].id, sizeof a[i].id, "p%d", i);
        a[i].fail = i % 10 == 3 ? SB_ERANGE : 0;
        assert_int_equal(sb_store_submit(s, insert_project, ins_done, &a[i], test_post, &pq_target),
                         0);
    }
    drain(N);
    for (int i = 0; i < N; i++) {
        assert_true(a[i].called);
        assert_true(pthread_equal(a[i].thread, pthread_self()));
        assert_int_equal(a[i].rc, i % 10 == 3 ? SB_ERANGE : 7);
    }
    sb_store_stats st;
    sb_store_get_stats(s, &st);
    assert_int_equal(st.jobs_done, N);
    assert_int_equal(st.jobs_failed, 0);
    assert_true(st.max_batch_seen <= 8);
    assert_true(pq_empty());
    sb_store_close(s);
    free(a);
}

static void test_queue_bound(void **state)
{
    fixture *f = *state;
    sb_store *s = open_store(f, 0, 0, 3);
    ins a[4] = {{.id = "a"}, {.id = "b"}, {.id = "c"}, {.id = "d"}};

    gate_reset();
    assert_int_equal(sb_store_submit(s, gate_job, NULL, NULL, NULL, NULL), 0);
    gate_wait_entered(); /* the writer holds the gate job: the queue is empty again */
    for (int i = 0; i < 3; i++)
        assert_int_equal(sb_store_submit(s, insert_project, ins_done, &a[i], test_post, &pq_target),
                         0);
    assert_int_equal(sb_store_submit(s, insert_project, ins_done, &a[3], test_post, &pq_target),
                     SB_EAGAIN);
    sb_store_stats st;
    sb_store_get_stats(s, &st);
    assert_int_equal(st.queued, 3);
    assert_int_equal(st.jobs_rejected, 1);
    gate_release();
    drain(3);
    assert_false(a[3].called); /* a refused submit never calls back */
    assert_true(pq_empty());
    /* Room again. */
    assert_int_equal(sb_store_submit(s, insert_project, ins_done, &a[3], test_post, &pq_target), 0);
    drain(1);
    assert_int_equal(a[3].rc, 7);
    sb_store_close(s);
}

typedef struct closer {
    sb_store *s;
    int unexpected; /* a submit result other than 0 or SB_ECANCELED */
} closer;

/* Learns that close has begun (submits start failing), then lets the writer go on. */
static void *release_when_closing(void *arg)
{
    closer *c = arg;
    for (;;) {
        int rc = sb_store_submit(c->s, noop_job, NULL, NULL, NULL, NULL);
        if (rc == SB_ECANCELED)
            break;
        if (rc != 0)
            c->unexpected = rc;
        usleep(1000);
    }
    gate_release();
    return NULL;
}

static void test_close_drains(void **state)
{
    fixture *f = *state;
    enum { N = 50 };
    ins a[N];
    memset(a, 0, sizeof a);
    sb_store *s = open_store(f, 0, 4, 0);

    gate_reset();
    assert_int_equal(sb_store_submit(s, gate_job, NULL, NULL, NULL, NULL), 0);
    gate_wait_entered();
    for (int i = 0; i < N; i++) {
        snprintf(a[i].id, sizeof a[i].id, "p%d", i);
        assert_int_equal(sb_store_submit(s, insert_project, ins_done, &a[i], test_post, &pq_target),
                         0);
    }
    closer c = {s, 0};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, release_when_closing, &c), 0);
    sb_store_close(s); /* every queued job still runs and is reported */
    pthread_join(t, NULL);
    assert_int_equal(c.unexpected, 0);
    drain(N);
    for (int i = 0; i < N; i++) {
        assert_true(a[i].called);
        assert_int_equal(a[i].rc, 7);
    }
    s = open_store(f, 1, 0, 0);
    assert_int_equal(count_rows(sb_store_reader(s, 0), "SELECT count(*) FROM projects"), N);
    sb_store_close(s);
}

static int run_sync_inside(sqlite3 *db, void *arg)
{
    (void)db;
    return sb_store_run_sync(arg, noop_job, NULL);
}

static void test_run_sync(void **state)
{
    fixture *f = *state;
    sb_store *s = open_store(f, 0, 0, 1);
    assert_int_equal(sb_store_run_sync(s, noop_job, NULL), 0);
    assert_int_equal(sb_store_run_sync(s, run_sync_inside, s), SB_EINVAL);
    /* run_sync waits for room instead of failing on a full queue. */
    gate_reset();
    assert_int_equal(sb_store_submit(s, gate_job, NULL, NULL, NULL, NULL), 0);
    gate_wait_entered();
    assert_int_equal(sb_store_submit(s, noop_job, NULL, NULL, NULL, NULL), 0);
    assert_int_equal(sb_store_submit(s, noop_job, NULL, NULL, NULL, NULL), SB_EAGAIN);
    gate_release();
    ins a = {.id = "x"};
    assert_int_equal(sb_store_run_sync(s, insert_project, &a), 7);
    sb_store_close(s);
}

static void test_stmt_cache(void **state)
{
    fixture *f = *state;
    sb_store *s = open_store(f, 1, 0, 0);
    sqlite3 *r = sb_store_reader(s, 0);

    sqlite3_stmt *a = sb_store_stmt(r, "SELECT ?1");
    assert_non_null(a);
    assert_ptr_equal(sb_store_stmt(r, "SELECT ?1"), a);
    char copy[] = "SELECT ?1"; /* same text, other pointer */
    assert_ptr_equal(sb_store_stmt(r, copy), a);
    assert_ptr_not_equal(sb_store_stmt(r, "SELECT ?1 + 1"), a);

    /* Returned reset, with bindings cleared. */
    sqlite3_bind_int(a, 1, 42);
    assert_int_equal(sqlite3_step(a), SQLITE_ROW);
    assert_ptr_equal(sb_store_stmt(r, "SELECT ?1"), a);
    assert_false(sqlite3_stmt_busy(a));
    assert_int_equal(sqlite3_step(a), SQLITE_ROW);
    assert_int_equal(sqlite3_column_type(a, 0), SQLITE_NULL);
    sqlite3_reset(a);

    /* Not one statement, or not a store connection. */
    assert_null(sb_store_stmt(r, "SELECT 1; SELECT 2"));
    assert_null(sb_store_stmt(r, "   "));
    assert_null(sb_store_stmt(r, "SELEC nonsense"));
    assert_non_null(sb_store_stmt(r, "SELECT 3;  \n"));
    sqlite3 *other = NULL;
    assert_int_equal(sqlite3_open(":memory:", &other), SQLITE_OK);
    assert_null(sb_store_stmt(other, "SELECT 1"));
    sqlite3_close(other);

    /* Bounded: many distinct texts keep at most SB_STORE_STMT_CACHE prepared. */
    for (int i = 0; i < 3 * SB_STORE_STMT_CACHE; i++) {
        char sql[48];
        snprintf(sql, sizeof sql, "SELECT %d", i);
        sqlite3_stmt *st = sb_store_stmt(r, sql);
        assert_non_null(st);
        assert_int_equal(sqlite3_step(st), SQLITE_ROW);
        assert_int_equal(sqlite3_column_int(st, 0), i);
        sqlite3_reset(st);
    }
    int n = 0;
    for (sqlite3_stmt *st = sqlite3_next_stmt(r, NULL); st; st = sqlite3_next_stmt(r, st))
        n++;
    assert_int_equal(n, SB_STORE_STMT_CACHE);
    sb_store_close(s);
}

typedef struct room {
    const char *id;
    const char *name;
    const char *status;
} room;

static int insert_room(sqlite3 *db, void *arg)
{
    room *r = arg;
    sqlite3_stmt *st =
        sb_store_stmt(db, "INSERT INTO rooms(id, project_id, name, status, created_at, updated_at) "
                          "VALUES (?1, 'p', ?2, ?3, 1, 1)");
    if (!st)
        return SB_EIO;
    sqlite3_bind_text(st, 1, r->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, r->name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, r->status, -1, SQLITE_STATIC);
    return sb_store_errno(sqlite3_step(st));
}

static int close_room(sqlite3 *db, void *arg)
{
    sqlite3_stmt *st = sb_store_stmt(
        db, "UPDATE rooms SET status = 'closed', closed_at = 2 WHERE id = ?1 AND status = 'open'");
    if (!st)
        return SB_EIO;
    sqlite3_bind_text(st, 1, arg, -1, SQLITE_STATIC);
    int rc = sb_store_errno(sqlite3_step(st));
    return rc < 0 ? rc : sqlite3_changes(db);
}

static void test_open_room_name_unique(void **state)
{
    fixture *f = *state;
    sb_store *s = open_store(f, 0, 0, 0);
    room r1 = {"r1", "lobby", "open"}, r2 = {"r2", "lobby", "open"}, r3 = {"r3", "lobby", "open"};
    room other = {"r4", "other", "open"}, bad = {"r5", "x", "paused"};
    assert_int_equal(sb_store_run_sync(s, insert_room, &r1), 0);
    assert_int_equal(sb_store_run_sync(s, insert_room, &r2), SB_EEXIST);
    assert_int_equal(sb_store_run_sync(s, insert_room, &other), 0);
    assert_int_equal(sb_store_run_sync(s, insert_room, &bad), SB_ECONSTRAINT);
    assert_int_equal(sb_store_run_sync(s, close_room, (void *)"r1"), 1);
    assert_int_equal(sb_store_run_sync(s, insert_room, &r2), 0);
    /* And again only one open one. */
    assert_int_equal(sb_store_run_sync(s, insert_room, &r3), SB_EEXIST);
    sb_store_close(s);
}

static int fk_violation(sqlite3 *db, void *arg)
{
    (void)arg;
    sqlite3_stmt *st =
        sb_store_stmt(db, "INSERT INTO sessions(id, project_id, room_id, room_name, started_at) "
                          "VALUES ('s1', 'p', 'no-such-room', 'x', 1)");
    return st ? sb_store_errno(sqlite3_step(st)) : SB_EIO;
}

static void test_foreign_keys_enforced(void **state)
{
    fixture *f = *state;
    sb_store *s = open_store(f, 0, 0, 0);
    assert_int_equal(sb_store_run_sync(s, fk_violation, NULL), SB_ECONSTRAINT);
    sb_store_close(s);
}

typedef struct seqs {
    int64_t v[4];
} seqs;

static int take_seqs(sqlite3 *db, void *arg)
{
    seqs *q = arg;
    static const char *const proj[] = {"a", "a", "b", "a"};
    for (int i = 0; i < 4; i++) {
        int rc = sb_store_event_seq_next(db, proj[i], &q->v[i]);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int take_seqs_and_fail(sqlite3 *db, void *arg)
{
    int rc = take_seqs(db, arg);
    return rc < 0 ? rc : SB_EINVAL;
}

static void test_event_seq(void **state)
{
    fixture *f = *state;
    sb_store *s = open_store(f, 0, 0, 0);
    seqs q;
    assert_int_equal(sb_store_run_sync(s, take_seqs, &q), 0);
    assert_int_equal(q.v[0], 1);
    assert_int_equal(q.v[1], 2);
    assert_int_equal(q.v[2], 1);
    assert_int_equal(q.v[3], 3);
    /* A rolled-back job gives its numbers back... */
    assert_int_equal(sb_store_run_sync(s, take_seqs_and_fail, &q), SB_EINVAL);
    assert_int_equal(sb_store_run_sync(s, take_seqs, &q), 0);
    assert_int_equal(q.v[0], 4);
    assert_int_equal(q.v[2], 2);
    sb_store_close(s);
}

/* Parent and child agree on N; the child commits them and dies without closing. */
enum { CRASH_N = 300 };

static void crash_child(const fixture *f)
{
    sb_store_opts o = {.path = f->path, .max_batch = 16, .synchronous_full = true};
    sb_store *s = NULL;
    if (sb_store_open(&s, &o, NULL, 0) != 0)
        _exit(2);
    static ins a[CRASH_N];
    for (int i = 0; i < CRASH_N; i++) {
        snprintf(a[i].id, sizeof a[i].id, "k%d", i);
        if (sb_store_submit(s, insert_project, ins_done, &a[i], test_post, &pq_target) != 0)
            _exit(3);
    }
    drain(CRASH_N);
    for (int i = 0; i < CRASH_N; i++) {
        if (a[i].rc != 7)
            _exit(4);
    }
    raise(SIGKILL);
    _exit(5);
}

static void test_crash_durability(void **state)
{
    fixture *f = *state;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        crash_child(f);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (WIFEXITED(status))
        fail_msg("child exited with %d instead of being killed", WEXITSTATUS(status));
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGKILL);

    char wal[128];
    snprintf(wal, sizeof wal, "%s-wal", f->path);
    assert_int_equal(access(wal, F_OK), 0); /* not closed: the WAL was left behind */

    sb_store *s = open_store(f, 1, 0, 0);
    assert_int_equal(count_rows(sb_store_reader(s, 0), "SELECT count(*) FROM projects"), CRASH_N);
    assert_int_equal(project_exists(sb_store_reader(s, 0), "k0"), 1);
    assert_int_equal(project_exists(sb_store_reader(s, 0), "k299"), 1);
    sb_store_close(s);
}

/* An allocator that fails the N-th allocation (from 1), or every one while fail_all is set.
 * It is installed before any store thread runs and stays the same while they run. */
static atomic_int fail_at, alloc_count;
static atomic_bool fail_all;

static void *failing_malloc(size_t n, void *ud)
{
    (void)ud;
    if (atomic_load(&fail_all))
        return NULL;
    if (atomic_load(&fail_at) && atomic_fetch_add(&alloc_count, 1) + 1 == atomic_load(&fail_at))
        return NULL;
    return malloc(n);
}

static void *failing_realloc(void *p, size_t n, void *ud)
{
    (void)ud;
    return atomic_load(&fail_all) ? NULL : realloc(p, n);
}

static void plain_free(void *p, void *ud)
{
    (void)ud;
    free(p);
}

static const sb_allocator failing = {failing_malloc, failing_realloc, plain_free, NULL};

static void test_out_of_memory(void **state)
{
    fixture *f = *state;
    sb_alloc_set(&failing);
    sb_store_opts o = {.path = f->path, .readers = 2};
    sb_store *s = NULL;
    char err[256];
    int n = 1;
    for (;; n++) {
        atomic_store(&alloc_count, 0);
        atomic_store(&fail_at, n);
        int rc = sb_store_open(&s, &o, err, sizeof err);
        if (rc == 0)
            break;
        assert_int_equal(rc, SB_ENOMEM); /* and nothing leaked: LeakSanitizer checks */
        assert_null(s);
    }
    assert_true(n > 4); /* the store, the reader array, three statement caches */
    atomic_store(&fail_at, 0);

    atomic_store(&fail_all, true);
    assert_int_equal(sb_store_submit(s, noop_job, NULL, NULL, NULL, NULL), SB_ENOMEM);
    assert_null(sb_store_stmt(sb_store_reader(s, 0), "SELECT 1")); /* cache key copy */
    atomic_store(&fail_all, false);
    assert_non_null(sb_store_stmt(sb_store_reader(s, 0), "SELECT 1"));
    assert_int_equal(sb_store_run_sync(s, noop_job, NULL), 0);
    sb_store_close(s);
    sb_alloc_set(NULL);
}

static void test_errno_map(void **state)
{
    (void)state;
    assert_int_equal(sb_store_errno(SQLITE_DONE), 0);
    assert_int_equal(sb_store_errno(SQLITE_CONSTRAINT_UNIQUE), SB_EEXIST);
    assert_int_equal(sb_store_errno(SQLITE_CONSTRAINT_PRIMARYKEY), SB_EEXIST);
    assert_int_equal(sb_store_errno(SQLITE_CONSTRAINT_NOTNULL), SB_ECONSTRAINT);
    assert_int_equal(sb_store_errno(SQLITE_BUSY_SNAPSHOT), SB_EBUSY);
    assert_int_equal(sb_store_errno(SQLITE_IOERR_FSYNC), SB_EIO);
    assert_string_equal(sb_strerror(SB_ECONSTRAINT), "constraint violation");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_open_schema, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_options, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopen_idempotent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_newer_version_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_migration_failure_rolls_back, setup, teardown),
        cmocka_unit_test_setup_teardown(test_migration_6_keeps_deliveries, setup, teardown),
        cmocka_unit_test_setup_teardown(test_commit_visible_to_readers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failing_job_rolls_back_alone, setup, teardown),
        cmocka_unit_test_setup_teardown(test_done_through_post, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queue_bound, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_drains, setup, teardown),
        cmocka_unit_test_setup_teardown(test_run_sync, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stmt_cache, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_room_name_unique, setup, teardown),
        cmocka_unit_test_setup_teardown(test_foreign_keys_enforced, setup, teardown),
        cmocka_unit_test_setup_teardown(test_event_seq, setup, teardown),
        cmocka_unit_test_setup_teardown(test_crash_durability, setup, teardown),
        cmocka_unit_test_setup_teardown(test_out_of_memory, setup, teardown),
        cmocka_unit_test(test_errno_map),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
