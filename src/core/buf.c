#include "core/buf.h"

#include <stdio.h>
#include <stdint.h>

#include "core/alloc.h"
#include "core/str.h"
#include "switchboard/error.h"

void sb_buf_free(sb_buf *b)
{
    sb_free(b->base);
    b->base = NULL;
    b->len = b->cap = 0;
}

int sb_buf_reserve(sb_buf *b, size_t extra)
{
    size_t max = b->max ? b->max : SIZE_MAX;
    if (extra > max - b->len)
        return SB_EMSGSIZE;
    size_t need = b->len + extra;
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    if (cap > max)
        cap = max;
    char *p = sb_realloc(b->base, cap);
    if (!p)
        return SB_ENOMEM;
    b->base = p;
    b->cap = cap;
    return 0;
}

int sb_buf_append(sb_buf *b, const void *data, size_t len)
{
    int rc = sb_buf_reserve(b, len);
    if (rc)
        return rc;
    if (len)
        memcpy(b->base + b->len, data, len);
    b->len += len;
    return 0;
}

int sb_buf_appendf(sb_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char tmp[256];
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0)
        return SB_EINVAL;
    if ((size_t)n < sizeof tmp)
        return sb_buf_append(b, tmp, (size_t)n);
    int rc = sb_buf_reserve(b, (size_t)n + 1);
    if (rc)
        return rc;
    va_start(ap, fmt);
    vsnprintf(b->base + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

int sb_buf_append_u64(sb_buf *b, unsigned long long v)
{
    char tmp[SB_U64_DEC_MAX];
    return sb_buf_append(b, tmp, sb_u64_dec(v, tmp));
}

/* Length of the valid UTF-8 sequence at s (1-4), or 0 if it is not valid. */
static size_t utf8_seq(const unsigned char *s, size_t len)
{
    unsigned char c = s[0];
    size_t n;
    uint32_t cp;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
        cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (len < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if ((n == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) || (n == 4 && cp < 0x10000) ||
        cp > 0x10FFFF)
        return 0;
    return n;
}

int sb_buf_append_json_str(sb_buf *b, const char *str, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0, run = 0;
    int rc;
    while (i < len) {
        unsigned char c = s[i];
        const char *esc = NULL;
        char u[6];
        size_t n = 1;
        if (c == '"')
            esc = "\\\"";
        else if (c == '\\')
            esc = "\\\\";
        else if (c == '\n')
            esc = "\\n";
        else if (c == '\r')
            esc = "\\r";
        else if (c == '\t')
            esc = "\\t";
        else if (c < 0x20 || c == 0x7F) {
            u[0] = '\\';
            u[1] = 'u';
            u[2] = '0';
            u[3] = '0';
            u[4] = hex[c >> 4];
            u[5] = hex[c & 15];
        } else if (c >= 0x80) {
            n = utf8_seq(s + i, len - i);
            if (n == 0)
                esc = "\xEF\xBF\xBD";
        }
        if (!esc && (c >= 0x20 && c != 0x7F)) {
            i += n;
            run += n;
            continue;
        }
        if ((rc = sb_buf_append(b, s + i - run, run)))
            return rc;
        run = 0;
        rc = esc ? sb_buf_append(b, esc, strlen(esc)) : sb_buf_append(b, u, 6);
        if (rc)
            return rc;
        i += 1;
    }
    return sb_buf_append(b, s + i - run, run);
}

void sb_buf_consume(sb_buf *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
        return;
    }
    memmove(b->base, b->base + n, b->len - n);
    b->len -= n;
}
