/* Byte slices that point into someone else's buffer. Never owning, never NUL-terminated. */
#ifndef SB_CORE_STR_H
#define SB_CORE_STR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct sb_str {
    const char *base;
    size_t len;
} sb_str;

#define SB_STR_LIT(s) ((sb_str){(s), sizeof(s) - 1})
#define SB_STR_NULL   ((sb_str){NULL, 0})

static inline sb_str sb_str_from(const char *s)
{
    return (sb_str){s, s ? strlen(s) : 0};
}

static inline bool sb_str_eq(sb_str a, sb_str b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.base, b.base, a.len) == 0);
}

static inline bool sb_str_eq_lit(sb_str a, const char *lit)
{
    size_t n = strlen(lit);
    return a.len == n && memcmp(a.base, lit, n) == 0;
}

/* ASCII case-insensitive comparison, as HTTP field names and tokens need. */
bool sb_str_case_eq(sb_str a, const char *lit);

/* The value of hexadecimal digit c (either case), or -1. */
static inline int sb_hex_value(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

#define SB_U64_DEC_MAX 21 /* 20 digits and the NUL */

/* Writes v in decimal, NUL-terminated, at out (SB_U64_DEC_MAX bytes); returns its length. */
static inline size_t sb_u64_dec(uint64_t v, char *out)
{
    char tmp[SB_U64_DEC_MAX - 1];
    size_t i = sizeof tmp;
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    size_t n = sizeof tmp - i;
    memcpy(out, tmp + i, n);
    out[n] = '\0';
    return n;
}

#endif
