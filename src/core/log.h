/*
 * Structured JSON logs, one object per line:
 *   {"ts":"2026-11-27T07:00:00.123Z","level":"info","msg":"...", ...fields}
 *
 * sb_log writes at once (under a mutex) and is for rare events. Access logs, one per
 * request, go through a per-thread sb_log_batch that is flushed in large writes, so the
 * request path pays no syscall per line. Never pass a secret as a field value.
 */
#ifndef SB_CORE_LOG_H
#define SB_CORE_LOG_H

#include <stdbool.h>
#include <stddef.h>

#include "core/buf.h"
#include "switchboard/config.h"

/* Sets the destination (NULL or "" = stderr) and level. Returns 0 or a negative error. */
int sb_log_open(const char *path, sb_log_level level);
void sb_log_set_level(sb_log_level level);
bool sb_log_enabled(sb_log_level level);
void sb_log_close(void);

/*
 * Logs msg with optional fields given as name/value string pairs terminated by NULL:
 *   sb_log(SB_LOG_WARN, "tls reload failed", "reason", why, NULL);
 * Values are JSON-escaped strings.
 */
void sb_log(sb_log_level level, const char *msg, ...) __attribute__((sentinel));

/* Begins a line in b: `{"ts":"…","level":"…","msg":"<msg>"` (caller appends fields and then
 * calls sb_log_line_end). */
int sb_log_line_begin(sb_buf *b, sb_log_level level, const char *msg);
int sb_log_line_end(sb_buf *b);

/* Writes b's content to the log destination as one write and empties b. */
void sb_log_write_buf(sb_buf *b);

/*
 * For batches of access-log lines from an event loop: hands b's content to the log writer
 * thread and leaves b empty (its memory swapped for a spare), so the loop never waits on
 * the file. When more than SB_LOG_MAX_PENDING bytes are already waiting, writes in place
 * instead: a slow disk slows logging down, it never grows memory or drops lines.
 * sb_log_close drains everything handed over.
 */
#define SB_LOG_MAX_PENDING (8u << 20)
void sb_log_submit_buf(sb_buf *b);

#endif
