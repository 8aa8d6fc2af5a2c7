/*
 * Store group-commit throughput: tiny inserts per second against max_batch.
 *
 * Not part of the build. After a release build of the library (`make build`):
 *
 *   cc -O2 -std=c17 -D_GNU_SOURCE -Iinclude -Isrc bench/store_bench.c \
 *      build/libswitchboard.a $(pkg-config --libs sqlite3 jansson yaml-0.1 libuv openssl) \
 *      -lpthread -lm -o build/store_bench
 *   build/store_bench DIR [jobs] [in_flight]
 *
 * Keeps `in_flight` jobs queued (a server with that many concurrent writes) and runs `jobs`
 * one-row inserts for max_batch 1 and 64, with synchronous FULL and NORMAL, each on a fresh
 * database in DIR (which should be on the disk under test, not tmpfs).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "core/clock.h"
#include "store/store.h"
#include "switchboard/error.h"

typedef struct bench {
    sb_store *s;
    atomic_int next; /* ids handed out */
    atomic_int done;
    atomic_int failed;
    int jobs;
    pthread_mutex_t lock;
    pthread_cond_t cond;
} bench;

static int insert(sqlite3 *db, void *arg)
{
    sqlite3_stmt *st = sb_store_stmt(db, "INSERT INTO audit_log(project_id, at, credential_id, "
                                         "request_id, action, target_type, target_id) "
                                         "VALUES ('p', ?1, 'c', 'r', 'bench', 't', 'x')");
    if (!st)
        return SB_EIO;
    sqlite3_bind_int64(st, 1, (sqlite3_int64)(intptr_t)arg);
    return sb_store_errno(sqlite3_step(st));
}

static bench *current;

static void submit_next(bench *b);

/* Runs on the writer (post NULL): counts and keeps the window full. */
static void on_done(void *arg, int rc)
{
    (void)arg;
    bench *b = current;
    if (rc < 0)
        atomic_fetch_add(&b->failed, 1);
    if (atomic_fetch_add(&b->done, 1) + 1 == b->jobs) {
        pthread_mutex_lock(&b->lock);
        pthread_cond_signal(&b->cond);
        pthread_mutex_unlock(&b->lock);
        return;
    }
    submit_next(b);
}

static void submit_next(bench *b)
{
    int id = atomic_fetch_add(&b->next, 1);
    if (id >= b->jobs)
        return;
    if (sb_store_submit(b->s, insert, on_done, (void *)(intptr_t)id, NULL, NULL) != 0) {
        fprintf(stderr, "submit failed\n");
        exit(1);
    }
}

static void run(const char *dir, int max_batch, bool full, int jobs, int in_flight)
{
    char path[512];
    snprintf(path, sizeof path, "%s/bench-%d-%d.db", dir, max_batch, full);
    unlink(path);
    sb_store_opts o = {
        .path = path, .max_batch = max_batch, .max_queue = in_flight + 1, .synchronous_full = full};
    char err[256];
    bench b = {.jobs = jobs};
    pthread_mutex_init(&b.lock, NULL);
    pthread_cond_init(&b.cond, NULL);
    if (sb_store_open(&b.s, &o, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        exit(1);
    }
    current = &b;
    uint64_t t0 = sb_now_ns();
    for (int i = 0; i < in_flight; i++)
        submit_next(&b);
    pthread_mutex_lock(&b.lock);
    while (atomic_load(&b.done) < jobs)
        pthread_cond_wait(&b.cond, &b.lock);
    pthread_mutex_unlock(&b.lock);
    double secs = (double)(sb_now_ns() - t0) / 1e9;
    sb_store_stats st;
    sb_store_get_stats(b.s, &st);
    printf("max_batch %3d  synchronous %-6s  %7d jobs  %7.3f s  %9.0f jobs/s  %6.1f jobs/txn  "
           "failed %d\n",
           max_batch, full ? "FULL" : "NORMAL", jobs, secs, jobs / secs,
           (double)st.jobs_done / (double)(st.batches ? st.batches : 1), atomic_load(&b.failed));
    sb_store_close(b.s);
    pthread_cond_destroy(&b.cond);
    pthread_mutex_destroy(&b.lock);
    unlink(path);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIR [jobs] [in_flight]\n", argv[0]);
        return 2;
    }
    int jobs = argc > 2 ? atoi(argv[2]) : 20000;
    int in_flight = argc > 3 ? atoi(argv[3]) : 256;
    for (int full = 1; full >= 0; full--) {
        run(argv[1], 1, full, jobs, in_flight);
        run(argv[1], 64, full, jobs, in_flight);
    }
    return 0;
}
