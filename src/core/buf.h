/*
 * Bounded dynamic byte buffer.
 *
 * Every buffer that a peer's input can grow has a maximum (`max`): appending past it fails
 * with SB_EMSGSIZE and leaves the contents untouched, so the caller can answer with a clean
 * protocol error (413, 431, close 1009) instead of growing without end. The buffer owns its
 * memory; sb_buf_free releases it and leaves an empty buffer that may be reused.
 */
#ifndef SB_CORE_BUF_H
#define SB_CORE_BUF_H

#include <stdarg.h>
#include <stddef.h>
#include <string.h>

typedef struct sb_buf {
    char *base;
    size_t len; /* bytes in use */
    size_t cap; /* bytes allocated */
    size_t max; /* hard limit on len; 0 means SIZE_MAX */
} sb_buf;

static inline void sb_buf_init(sb_buf *b, size_t max)
{
    b->base = NULL;
    b->len = b->cap = 0;
    b->max = max;
}

void sb_buf_free(sb_buf *b);

/* Makes room for `extra` more bytes. SB_EMSGSIZE past max, SB_ENOMEM if allocation fails. */
int sb_buf_reserve(sb_buf *b, size_t extra);

int sb_buf_append(sb_buf *b, const void *data, size_t len);

static inline int sb_buf_append_str(sb_buf *b, const char *s)
{
    return sb_buf_append(b, s, strlen(s));
}

/* printf-style append. The formatted text must fit under max. */
int sb_buf_appendf(sb_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Appends `s` escaped for a JSON string body (no surrounding quotes). Invalid UTF-8 bytes
 * are replaced with U+FFFD so that the output is always valid JSON. */
int sb_buf_append_json_str(sb_buf *b, const char *s, size_t len);

/* Appends an unsigned decimal. */
int sb_buf_append_u64(sb_buf *b, unsigned long long v);

/* Drops the first n bytes, moving the rest to the front. */
void sb_buf_consume(sb_buf *b, size_t n);

static inline void sb_buf_reset(sb_buf *b)
{
    b->len = 0;
}

#endif
