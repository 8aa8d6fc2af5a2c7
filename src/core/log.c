#include "core/log.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

#include "core/alloc.h"
#include "switchboard/error.h"

static int log_fd = STDERR_FILENO;
static _Atomic int log_level = SB_LOG_INFO;
static pthread_mutex_t log_mutex = PTHREAD_MUTEX_INITIALIZER;

static const char *level_names[] = {"debug", "info", "warn", "error"};

/* The writer thread's queue of full buffers (a singly linked list, FIFO). */
typedef struct pending {
    struct pending *next;
    sb_buf buf;
} pending;

static pthread_mutex_t q_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t q_cond = PTHREAD_COND_INITIALIZER;
static pending *q_head, *q_tail;
static size_t q_bytes;
static bool q_running, q_stop;
static pthread_t q_thread;

static void write_all(const char *p, size_t len)
{
    size_t off = 0;
    while (off < len) {
        ssize_t n = write(log_fd, p + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break; /* nowhere left to report a logging failure */
        off += (size_t)n;
    }
}

static void *writer_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&q_mutex);
    for (;;) {
        while (!q_head && !q_stop)
            pthread_cond_wait(&q_cond, &q_mutex);
        if (!q_head)
            break;
        pending *p = q_head;
        q_head = p->next;
        if (!q_head)
            q_tail = NULL;
        pthread_mutex_unlock(&q_mutex);
        pthread_mutex_lock(&log_mutex);
        write_all(p->buf.base, p->buf.len);
        pthread_mutex_unlock(&log_mutex);
        pthread_mutex_lock(&q_mutex);
        q_bytes -= p->buf.len;
        sb_buf_free(&p->buf);
        sb_free(p);
    }
    pthread_mutex_unlock(&q_mutex);
    return NULL;
}

void sb_log_submit_buf(sb_buf *b)
{
    if (b->len == 0)
        return;
    pthread_mutex_lock(&q_mutex);
    if (!q_running && !q_stop)
        q_running = pthread_create(&q_thread, NULL, writer_main, NULL) == 0;
    pending *p = q_running && q_bytes + b->len <= SB_LOG_MAX_PENDING ? sb_malloc(sizeof *p) : NULL;
    if (p) {
        p->next = NULL;
        p->buf = *b; /* the loop's buffer moves to the queue; the loop starts a fresh one */
        sb_buf_init(b, p->buf.max);
        if (q_tail)
            q_tail->next = p;
        else
            q_head = p;
        q_tail = p;
        q_bytes += p->buf.len;
        pthread_cond_signal(&q_cond);
        pthread_mutex_unlock(&q_mutex);
        return;
    }
    pthread_mutex_unlock(&q_mutex);
    sb_log_write_buf(b);
}

static void writer_stop(void)
{
    pthread_mutex_lock(&q_mutex);
    bool running = q_running;
    q_stop = true;
    pthread_cond_signal(&q_cond);
    pthread_mutex_unlock(&q_mutex);
    if (running)
        pthread_join(q_thread, NULL);
    pthread_mutex_lock(&q_mutex);
    q_running = false;
    q_stop = false;
    pthread_mutex_unlock(&q_mutex);
}

int sb_log_open(const char *path, sb_log_level level)
{
    atomic_store(&log_level, (int)level);
    if (!path || !*path)
        return 0;
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (fd < 0)
        return -errno;
    pthread_mutex_lock(&log_mutex);
    if (log_fd != STDERR_FILENO)
        close(log_fd);
    log_fd = fd;
    pthread_mutex_unlock(&log_mutex);
    return 0;
}

void sb_log_close(void)
{
    writer_stop();
    pthread_mutex_lock(&log_mutex);
    if (log_fd != STDERR_FILENO)
        close(log_fd);
    log_fd = STDERR_FILENO;
    pthread_mutex_unlock(&log_mutex);
}

void sb_log_set_level(sb_log_level level)
{
    atomic_store(&log_level, (int)level);
}

bool sb_log_enabled(sb_log_level level)
{
    return (int)level >= atomic_load_explicit(&log_level, memory_order_relaxed);
}

int sb_log_line_begin(sb_buf *b, sb_log_level level, const char *msg)
{
    /* Formatting the date is the slow part of a log line: once a second per thread. */
    static _Thread_local time_t cached_sec = -1;
    static _Thread_local char when[40];
    static _Thread_local size_t n;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (ts.tv_sec != cached_sec) {
        struct tm tm;
        gmtime_r(&ts.tv_sec, &tm);
        n = strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
        cached_sec = ts.tv_sec;
    }
    int rc = sb_buf_append_str(b, "{\"ts\":\"");
    rc = rc ? rc : sb_buf_append(b, when, n);
    rc = rc ? rc
            : sb_buf_appendf(b, ".%03ldZ\",\"level\":\"%s\",\"msg\":\"", ts.tv_nsec / 1000000,
                             level_names[level]);
    rc = rc ? rc : sb_buf_append_json_str(b, msg, strlen(msg));
    return rc ? rc : sb_buf_append(b, "\"", 1);
}

int sb_log_line_end(sb_buf *b)
{
    return sb_buf_append(b, "}\n", 2);
}

void sb_log_write_buf(sb_buf *b)
{
    pthread_mutex_lock(&log_mutex);
    write_all(b->base, b->len);
    pthread_mutex_unlock(&log_mutex);
    sb_buf_reset(b);
}

void sb_log(sb_log_level level, const char *msg, ...)
{
    if (!sb_log_enabled(level))
        return;
    char stack[2048];
    sb_buf b = {stack, 0, sizeof stack, sizeof stack};
    va_list ap;
    va_start(ap, msg);
    int rc = sb_log_line_begin(&b, level, msg);
    const char *k;
    while (!rc && (k = va_arg(ap, const char *)) != NULL) {
        const char *v = va_arg(ap, const char *);
        rc = sb_buf_append(&b, ",\"", 2);
        rc = rc ? rc : sb_buf_append_json_str(&b, k, strlen(k));
        rc = rc ? rc : sb_buf_append(&b, "\":\"", 3);
        rc = rc ? rc : sb_buf_append_json_str(&b, v ? v : "", v ? strlen(v) : 0);
        rc = rc ? rc : sb_buf_append(&b, "\"", 1);
    }
    va_end(ap);
    if (rc) {
        /* Too long for the stack buffer: keep the message, drop the fields. */
        b.len = 0;
        rc = sb_log_line_begin(&b, level, msg);
        rc = rc ? rc : sb_buf_append_str(&b, ",\"truncated\":true");
        if (rc)
            return;
    }
    if (sb_buf_append(&b, "}\n", 2) == 0)
        sb_log_write_buf(&b);
}
