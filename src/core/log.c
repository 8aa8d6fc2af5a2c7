#include "core/log.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

#include "switchboard/error.h"

static int log_fd = STDERR_FILENO;
static _Atomic int log_level = SB_LOG_INFO;
static pthread_mutex_t log_mutex = PTHREAD_MUTEX_INITIALIZER;

static const char *level_names[] = {"debug", "info", "warn", "error"};

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
    size_t off = 0;
    while (off < b->len) {
        ssize_t n = write(log_fd, b->base + off, b->len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break; /* nowhere left to report a logging failure */
        off += (size_t)n;
    }
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
