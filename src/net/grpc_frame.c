#include "net/grpc_frame.h"

#include "switchboard/error.h"

int sb_grpc_msg_parse(const void *buf, size_t len, size_t max, sb_grpc_msg *out)
{
    const uint8_t *p = buf;
    if (len < SB_GRPC_PREFIX_LEN)
        return SB_EAGAIN;
    if (p[0] > 1)
        return SB_EPROTO;
    uint32_t n = (uint32_t)p[1] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 8 | p[4];
    if (n > max)
        return SB_EMSGSIZE;
    if (len - SB_GRPC_PREFIX_LEN < n)
        return SB_EAGAIN;
    out->compressed = p[0] == 1;
    out->data = (sb_str){(const char *)p + SB_GRPC_PREFIX_LEN, n};
    out->used = SB_GRPC_PREFIX_LEN + (size_t)n;
    return 0;
}

void sb_grpc_msg_prefix(uint8_t out[SB_GRPC_PREFIX_LEN], size_t len)
{
    out[0] = 0;
    out[1] = (uint8_t)(len >> 24);
    out[2] = (uint8_t)(len >> 16);
    out[3] = (uint8_t)(len >> 8);
    out[4] = (uint8_t)len;
}

int sb_grpc_timeout_parse(sb_str v, int64_t *ms)
{
    if (v.len < 2 || v.len > 9)
        return SB_EINVAL;
    int64_t n = 0;
    for (size_t i = 0; i + 1 < v.len; i++) {
        char c = v.base[i];
        if (c < '0' || c > '9')
            return SB_EINVAL;
        n = n * 10 + (c - '0');
    }
    int64_t r;
    switch (v.base[v.len - 1]) {
    case 'H':
        r = n * 3600000;
        break;
    case 'M':
        r = n * 60000;
        break;
    case 'S':
        r = n * 1000;
        break;
    case 'm':
        r = n;
        break;
    case 'u':
        r = (n + 999) / 1000;
        break;
    case 'n':
        r = (n + 999999) / 1000000;
        break;
    default:
        return SB_EINVAL;
    }
    *ms = r;
    return 0;
}

int sb_grpc_percent_encode(sb_buf *out, const char *s, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        int rc;
        if (c >= 0x20 && c <= 0x7e && c != '%') {
            rc = sb_buf_append(out, (const char *)&c, 1);
        } else {
            char e[3] = {'%', hex[c >> 4], hex[c & 15]};
            rc = sb_buf_append(out, e, 3);
        }
        if (rc)
            return rc;
    }
    return 0;
}

sb_grpc_status sb_grpc_status_from_http(int st)
{
    if (st >= 200 && st < 300)
        return SB_GRPC_OK;
    switch (st) {
    case 400:
    case 405:
    case 411:
    case 414:
    case 415:
    case 422:
    case 431:
        return SB_GRPC_INVALID_ARGUMENT;
    case 401:
        return SB_GRPC_UNAUTHENTICATED;
    case 403:
        return SB_GRPC_PERMISSION_DENIED;
    case 404:
    case 410:
        return SB_GRPC_NOT_FOUND;
    case 408:
    case 504:
        return SB_GRPC_DEADLINE_EXCEEDED;
    case 409:
        return SB_GRPC_ABORTED;
    case 412:
        return SB_GRPC_FAILED_PRECONDITION;
    case 413:
    case 429:
        return SB_GRPC_RESOURCE_EXHAUSTED;
    case 501:
        return SB_GRPC_UNIMPLEMENTED;
    case 502:
    case 503:
        return SB_GRPC_UNAVAILABLE;
    default:
        return st >= 500 ? SB_GRPC_INTERNAL : SB_GRPC_UNKNOWN;
    }
}

const char *sb_grpc_status_name(sb_grpc_status s)
{
    static const char *const names[] = {
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    };
    return (unsigned)s < sizeof names / sizeof names[0] ? names[s] : "UNKNOWN";
}
