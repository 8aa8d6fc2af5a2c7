#include "core/ids.h"

#include <openssl/rand.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "switchboard/error.h"

int sb_random(void *out, size_t n)
{
    return RAND_bytes(out, (int)n) == 1 ? 0 : SB_EIO;
}

int sb_id_new(const char *prefix, char *out)
{
    static const char b32[] = "0123456789abcdefghjkmnpqrstvwxyz"; /* Crockford, lower */
    unsigned char r[13];
    if (sb_random(r, sizeof r) != 0)
        return SB_EIO;
    size_t p = strlen(prefix);
    if (p + 22 > SB_ID_MAX)
        return SB_EINVAL;
    memcpy(out, prefix, p);
    out[p++] = '_';
    /* 20 characters × 5 bits = 100 bits from the first 12.5 bytes. */
    uint64_t acc = 0;
    int bits = 0;
    size_t ri = 0;
    for (int i = 0; i < 20; i++) {
        if (bits < 5) {
            acc = (acc << 8) | r[ri++];
            bits += 8;
        }
        out[p++] = b32[(acc >> (bits - 5)) & 31];
        bits -= 5;
    }
    out[p] = '\0';
    return 0;
}

int64_t sb_time_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void sb_time_rfc3339(int64_t ms, char *out)
{
    time_t sec = (time_t)(ms / 1000);
    int frac = (int)(ms % 1000);
    if (frac < 0) {
        frac += 1000;
        sec -= 1;
    }
    struct tm tm;
    gmtime_r(&sec, &tm);
    size_t n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 32 - n, ".%03dZ", frac);
}

static int digits(const char **p, int n, int *v)
{
    *v = 0;
    for (int i = 0; i < n; i++) {
        char c = (*p)[i];
        if (c < '0' || c > '9')
            return -1;
        *v = *v * 10 + (c - '0');
    }
    *p += n;
    return 0;
}

int sb_time_parse_rfc3339(const char *s, int64_t *ms)
{
    int Y, M, D, h, m, sec, frac = 0;
    const char *p = s;
    if (digits(&p, 4, &Y) || *p++ != '-' || digits(&p, 2, &M) || *p++ != '-' || digits(&p, 2, &D) ||
        (*p != 'T' && *p != 't') || !++p || digits(&p, 2, &h) || *p++ != ':' || digits(&p, 2, &m) ||
        *p++ != ':' || digits(&p, 2, &sec))
        return SB_EINVAL;
    if (*p == '.') {
        p++;
        int nd = 0;
        while (*p >= '0' && *p <= '9') {
            if (nd < 3)
                frac = frac * 10 + (*p - '0');
            nd++;
            p++;
        }
        if (nd == 0)
            return SB_EINVAL;
        for (; nd < 3; nd++)
            frac *= 10;
    }
    int off = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int sign = *p++ == '-' ? -1 : 1, oh, om;
        if (digits(&p, 2, &oh) || *p++ != ':' || digits(&p, 2, &om) || oh > 23 || om > 59)
            return SB_EINVAL;
        off = sign * (oh * 60 + om);
    } else {
        return SB_EINVAL;
    }
    if (*p || M < 1 || M > 12 || D < 1 || D > 31 || h > 23 || m > 59 || sec > 60)
        return SB_EINVAL;
    struct tm tm = {.tm_year = Y - 1900,
                    .tm_mon = M - 1,
                    .tm_mday = D,
                    .tm_hour = h,
                    .tm_min = m,
                    .tm_sec = sec};
    time_t t = timegm(&tm);
    struct tm back;
    gmtime_r(&t, &back);
    if (back.tm_mday != D && sec != 60) /* 31 February and friends */
        return SB_EINVAL;
    *ms = ((int64_t)t - (int64_t)off * 60) * 1000 + frac;
    return 0;
}
