/*
 * Incremental HTTP/1.1 response parser; the contract is in http1_response.h.
 *
 * A byte-at-a-time state machine for the status line, field lines and chunk framing (they
 * are short), and bulk skips for body bytes. The values of the few fields that matter are
 * copied into a bounded buffer as they pass, so the input never has to be kept.
 */
#include "net/http1_response.h"

#include <string.h>

#include "core/str.h"
#include "net/http1_chars.h"
#include "switchboard/error.h"

#define CLS(c) SB__HTTP1_CLS(c)

enum state {
    S_VERSION,     /* "HTTP/1." */
    S_MINOR,       /* '0' or '1' */
    S_VERSION_SP,  /* SP after the version */
    S_CODE,        /* three digits */
    S_CODE_END,    /* SP or CR */
    S_REASON,      /* reason-phrase up to CR */
    S_STATUS_LF,   /* LF after the status line */
    S_FIELD_START, /* a field name, or CR for the end of the section */
    S_NAME,
    S_VALUE_OWS, /* OWS before a field value */
    S_VALUE,
    S_VALUE_LF,
    S_SECTION_LF, /* LF of the empty line ending a section */
    S_BODY_LENGTH,
    S_BODY_CLOSE, /* body delimited by the connection closing */
    S_CHUNK_SIZE,
    S_CHUNK_BWS, /* whitespace after a chunk size: ';' or CR must follow */
    S_CHUNK_EXT,
    S_CHUNK_SIZE_LF,
    S_CHUNK_DATA,
    S_CHUNK_DATA_CR,
    S_CHUNK_DATA_LF,
    S_DONE,
    S_FAILED,
};

enum field {
    F_OTHER,
    F_CONTENT_LENGTH,
    F_TRANSFER_ENCODING,
    F_CONNECTION,
    F_RETRY_AFTER,
};

#define CL_MAX_DIGITS 18
/* The largest chunk size before one more hex digit could overflow a uint64_t. */
#define CHUNK_SIZE_MAX (UINT64_MAX >> 4)

static const char version_prefix[] = "HTTP/1.";

void sb_http1_response_init(sb_http1_response *p)
{
    memset(p, 0, offsetof(sb_http1_response, name));
    p->content_length = -1;
}

bool sb_http1_response_started(const sb_http1_response *p)
{
    return p->header_bytes > 0;
}

bool sb_http1_response_complete(const sb_http1_response *p)
{
    return p->state == S_DONE;
}

static char lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c | 0x20) : c;
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* A field-value byte: VCHAR, obs-text, SP or HTAB. */
static bool is_value_char(char c)
{
    return (CLS(c) & (SB__HTTP1_VCHAR | SB__HTTP1_WS)) != 0;
}

static bool name_is(const sb_http1_response *p, const char *lit)
{
    size_t n = strlen(lit);
    return p->name_len == n && memcmp(p->name, lit, n) == 0;
}

static enum field classify_name(const sb_http1_response *p)
{
    if (p->trailer || p->name_len > SB__HTTP1_RESPONSE_NAME_MAX)
        return F_OTHER;
    if (name_is(p, "content-length"))
        return F_CONTENT_LENGTH;
    if (name_is(p, "transfer-encoding"))
        return F_TRANSFER_ENCODING;
    if (name_is(p, "connection"))
        return F_CONNECTION;
    if (name_is(p, "retry-after"))
        return F_RETRY_AFTER;
    return F_OTHER;
}

static bool ieq(const char *s, size_t n, const char *lit)
{
    if (strlen(lit) != n)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c | 0x20);
        if (c != lit[i])
            return false;
    }
    return true;
}

static size_t token_len(const char *s, size_t n)
{
    size_t i = 0;
    while (i < n && (CLS(s[i]) & SB__HTTP1_TCHAR))
        i++;
    return i;
}

/* One OWS-trimmed element of a Connection list. Empty elements are ignored (RFC 9110
 * §5.6.1.2). */
static int connection_element(sb_http1_response *p, const char *s, size_t n)
{
    if (n == 0)
        return 0;
    if (token_len(s, n) != n)
        return SB_EPROTO;
    if (ieq(s, n, "close"))
        p->conn_close = true;
    else if (ieq(s, n, "keep-alive"))
        p->conn_keep = true;
    return 0;
}

/* transfer-coding = token *( OWS ";" OWS token "=" ( token / quoted-string ) ); quoted
 * parameter values are refused, which no server sends in practice. */
static int te_element(sb_http1_response *p, const char *s, size_t n)
{
    if (n == 0)
        return 0;
    size_t i = token_len(s, n);
    if (i == 0)
        return SB_EPROTO;
    bool chunked = ieq(s, i, "chunked");
    bool params = i < n;
    while (i < n) {
        while (i < n && (CLS(s[i]) & SB__HTTP1_WS))
            i++;
        if (i == n || s[i] != ';')
            return SB_EPROTO;
        i++;
        while (i < n && (CLS(s[i]) & SB__HTTP1_WS))
            i++;
        size_t t = token_len(s + i, n - i);
        if (t == 0 || i + t == n || s[i + t] != '=')
            return SB_EPROTO;
        i += t + 1;
        t = token_len(s + i, n - i);
        if (t == 0)
            return SB_EPROTO;
        i += t;
    }
    /* chunked must be the final coding and appear once (RFC 9112 §6.1): anything after it,
     * including a second chunked, is refused. */
    if (p->chunked)
        return SB_EPROTO;
    p->chunked = chunked && !params;
    if (chunked && params)
        return SB_EPROTO;
    return 0;
}

static int for_each_element(sb_http1_response *p,
                            int (*fn)(sb_http1_response *, const char *, size_t))
{
    const char *v = p->value;
    size_t n = p->value_len, i = 0;
    for (;;) {
        size_t b = i;
        while (i < n && v[i] != ',')
            i++;
        size_t e = i;
        while (b < e && (CLS(v[b]) & SB__HTTP1_WS))
            b++;
        while (e > b && (CLS(v[e - 1]) & SB__HTTP1_WS))
            e--;
        int rc = fn(p, v + b, e - b);
        if (rc)
            return rc;
        if (i == n)
            return 0;
        i++;
    }
}

static int content_length_field(sb_http1_response *p)
{
    size_t n = p->value_len;
    if (n == 0 || n > CL_MAX_DIGITS)
        return SB_EPROTO;
    int64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (!is_digit(p->value[i]))
            return SB_EPROTO;
        v = v * 10 + (p->value[i] - '0');
    }
    if (p->content_length >= 0 && p->content_length != v)
        return SB_EPROTO;
    p->content_length = v;
    return 0;
}

/* A complete field line whose value (OWS-trimmed) is in p->value. */
static int end_field(sb_http1_response *p)
{
    while (p->value_len > 0 && (CLS(p->value[p->value_len - 1]) & SB__HTTP1_WS))
        p->value_len--;
    switch (p->field) {
    case F_CONTENT_LENGTH:
        return content_length_field(p);
    case F_TRANSFER_ENCODING:
        p->te_seen = true; /* an empty value is refused too: it names no final coding */
        return for_each_element(p, te_element);
    case F_CONNECTION:
        return for_each_element(p, connection_element);
    case F_RETRY_AFTER:
        memcpy(p->retry_after, p->value, p->value_len);
        p->retry_after_len = p->value_len;
        p->has_retry_after = true;
        return 0;
    default:
        return 0;
    }
}

/* Resets the per-section fields for the next response after an interim one. */
static void next_section(sb_http1_response *p)
{
    p->state = S_VERSION;
    p->pos = 0;
    p->chunked = p->te_seen = p->conn_close = p->conn_keep = false;
    p->has_retry_after = false;
    p->retry_after_len = 0;
    p->content_length = -1;
}

/* The header section is complete: decide the framing. */
static int end_headers(sb_http1_response *p)
{
    if (p->code < 200) {
        if (p->code == 101)
            return SB_EPROTO;
        next_section(p);
        return 0;
    }
    if (p->te_seen && (p->content_length >= 0 || p->minor_version == 0 || !p->chunked))
        return SB_EPROTO;
    p->status = p->code;
    p->keep_alive = p->minor_version == 1 ? !p->conn_close : (p->conn_keep && !p->conn_close);
    if (p->code == 204 || p->code == 304) {
        p->state = S_DONE;
    } else if (p->chunked) {
        p->state = S_CHUNK_SIZE;
    } else if (p->content_length >= 0) {
        p->left = (uint64_t)p->content_length;
        p->state = p->left ? S_BODY_LENGTH : S_DONE;
    } else {
        p->keep_alive = false;
        p->state = S_BODY_CLOSE;
    }
    return 0;
}

static int fail(sb_http1_response *p, int rc)
{
    p->state = S_FAILED;
    return rc;
}

int sb_http1_response_feed(sb_http1_response *p, const char *buf, size_t len, size_t *used)
{
    size_t i = 0;
    int rc;
    *used = 0;
    while (i < len) {
        uint8_t st = p->state;
        if (st == S_DONE)
            break;
        if (st == S_FAILED)
            return SB_EPROTO;

        /* Body bytes are skipped in bulk. */
        if (st == S_BODY_LENGTH || st == S_CHUNK_DATA || st == S_BODY_CLOSE) {
            uint64_t avail = len - i;
            uint64_t take = st == S_BODY_CLOSE || avail < p->left ? avail : p->left;
            i += (size_t)take;
            p->body_bytes += take;
            if (st != S_BODY_CLOSE) {
                p->left -= take;
                if (p->left == 0)
                    p->state = st == S_BODY_LENGTH ? S_DONE : S_CHUNK_DATA_CR;
            }
            continue;
        }

        /* Runs of bytes that only need checking (a reason phrase, an uncaptured field value,
         * a chunk extension, a field name) are scanned in a tight loop. */
        if (st == S_REASON || st == S_CHUNK_EXT || st == S_NAME ||
            (st == S_VALUE && p->field == F_OTHER)) {
            size_t j = i;
            if (st == S_NAME) {
                for (; j < len && (CLS(buf[j]) & SB__HTTP1_TCHAR); j++) {
                    if (p->name_len < SB__HTTP1_RESPONSE_NAME_MAX)
                        p->name[p->name_len] = lower(buf[j]);
                    if (p->name_len <= SB__HTTP1_RESPONSE_NAME_MAX)
                        p->name_len++;
                }
            } else {
                while (j < len && is_value_char(buf[j]))
                    j++;
            }
            if (j > i) {
                uint32_t n = (uint32_t)(j - i), max = SB_HTTP1_RESPONSE_MAX_HEADER_BYTES;
                uint32_t *count = st == S_CHUNK_EXT ? &p->line_bytes
                                  : p->trailer      ? &p->trailer_bytes
                                                    : &p->header_bytes;
                if (st == S_CHUNK_EXT)
                    max = SB_HTTP1_RESPONSE_MAX_CHUNK_LINE;
                if (n > max - *count)
                    return fail(p, SB_EMSGSIZE);
                *count += n;
                i = j;
                continue;
            }
        }

        char c = buf[i++];
        if (st < S_BODY_LENGTH) {
            uint32_t *count = p->trailer ? &p->trailer_bytes : &p->header_bytes;
            if (++*count > SB_HTTP1_RESPONSE_MAX_HEADER_BYTES)
                return fail(p, SB_EMSGSIZE);
        } else if (st >= S_CHUNK_SIZE && st <= S_CHUNK_SIZE_LF) {
            if (++p->line_bytes > SB_HTTP1_RESPONSE_MAX_CHUNK_LINE)
                return fail(p, SB_EMSGSIZE);
        }

        switch (st) {
        case S_VERSION:
            if (c != version_prefix[p->pos])
                return fail(p, SB_EPROTO);
            if (++p->pos == sizeof(version_prefix) - 1)
                p->state = S_MINOR;
            break;
        case S_MINOR:
            if (c != '0' && c != '1')
                return fail(p, SB_EPROTO);
            p->minor_version = c - '0';
            p->state = S_VERSION_SP;
            break;
        case S_VERSION_SP:
            if (c != ' ')
                return fail(p, SB_EPROTO);
            p->code = 0;
            p->pos = 0;
            p->state = S_CODE;
            break;
        case S_CODE:
            if (!is_digit(c))
                return fail(p, SB_EPROTO);
            p->code = p->code * 10 + (c - '0');
            if (++p->pos == 3) {
                if (p->code < 100 || p->code > 599)
                    return fail(p, SB_EPROTO);
                p->state = S_CODE_END;
            }
            break;
        case S_CODE_END:
            /* RFC 9112 §4 wants the SP even with an empty reason, but servers omit it. */
            if (c == ' ')
                p->state = S_REASON;
            else if (c == '\r')
                p->state = S_STATUS_LF;
            else
                return fail(p, SB_EPROTO);
            break;
        case S_REASON:
            if (c == '\r')
                p->state = S_STATUS_LF;
            else if (!is_value_char(c))
                return fail(p, SB_EPROTO);
            break;
        case S_STATUS_LF:
        case S_VALUE_LF:
            if (c != '\n')
                return fail(p, SB_EPROTO);
            if (st == S_VALUE_LF && (rc = end_field(p)) != 0)
                return fail(p, rc);
            p->state = S_FIELD_START;
            break;
        case S_FIELD_START:
            if (c == '\r') {
                p->state = S_SECTION_LF;
                break;
            }
            /* A leading SP or HTAB is obs-fold (or garbage); both are refused. */
            if (!(CLS(c) & SB__HTTP1_TCHAR))
                return fail(p, SB_EPROTO);
            p->name_len = 0;
            p->state = S_NAME;
            /* fallthrough */
        case S_NAME:
            if (c == ':') {
                p->field = (uint8_t)classify_name(p);
                p->value_len = 0;
                p->state = S_VALUE_OWS;
            } else if (!(CLS(c) & SB__HTTP1_TCHAR)) {
                return fail(p, SB_EPROTO);
            } else if (p->name_len <= SB__HTTP1_RESPONSE_NAME_MAX) {
                if (p->name_len < SB__HTTP1_RESPONSE_NAME_MAX)
                    p->name[p->name_len] = lower(c);
                p->name_len++;
            }
            break;
        case S_VALUE_OWS:
            if (c == ' ' || c == '\t')
                break;
            p->state = S_VALUE;
            /* fallthrough */
        case S_VALUE:
            if (c == '\r') {
                p->state = S_VALUE_LF;
            } else if (!is_value_char(c)) {
                return fail(p, SB_EPROTO);
            } else if (p->field != F_OTHER) {
                if (p->value_len == SB_HTTP1_RESPONSE_VALUE_MAX)
                    return fail(p, SB_EPROTO);
                p->value[p->value_len++] = c;
            }
            break;
        case S_SECTION_LF:
            if (c != '\n')
                return fail(p, SB_EPROTO);
            if (p->trailer) {
                p->state = S_DONE;
            } else if ((rc = end_headers(p)) != 0) {
                return fail(p, rc);
            }
            break;
        case S_CHUNK_SIZE: {
            int h = sb_hex_value((unsigned char)c);
            if (h >= 0) {
                if (p->left > CHUNK_SIZE_MAX)
                    return fail(p, SB_EPROTO);
                p->left = (p->left << 4) | (uint64_t)h;
                p->hex_digits++;
                break;
            }
            if (p->hex_digits == 0)
                return fail(p, SB_EPROTO);
            if (c == ' ' || c == '\t')
                p->state = S_CHUNK_BWS;
            else if (c == ';')
                p->state = S_CHUNK_EXT;
            else if (c == '\r')
                p->state = S_CHUNK_SIZE_LF;
            else
                return fail(p, SB_EPROTO);
            break;
        }
        case S_CHUNK_BWS:
            if (c == ';')
                p->state = S_CHUNK_EXT;
            else if (c == '\r')
                p->state = S_CHUNK_SIZE_LF;
            else if (c != ' ' && c != '\t')
                return fail(p, SB_EPROTO);
            break;
        case S_CHUNK_EXT:
            if (c == '\r')
                p->state = S_CHUNK_SIZE_LF;
            else if (!is_value_char(c))
                return fail(p, SB_EPROTO);
            break;
        case S_CHUNK_SIZE_LF:
            if (c != '\n')
                return fail(p, SB_EPROTO);
            p->line_bytes = 0;
            p->hex_digits = 0;
            if (p->left == 0) {
                p->trailer = true;
                p->state = S_FIELD_START;
            } else {
                p->state = S_CHUNK_DATA;
            }
            break;
        case S_CHUNK_DATA_CR:
            if (c != '\r')
                return fail(p, SB_EPROTO);
            p->state = S_CHUNK_DATA_LF;
            break;
        case S_CHUNK_DATA_LF:
            if (c != '\n')
                return fail(p, SB_EPROTO);
            p->state = S_CHUNK_SIZE;
            break;
        default:
            return fail(p, SB_EPROTO);
        }
    }
    *used = i;
    return p->state == S_DONE ? 0 : SB_EAGAIN;
}

int sb_http1_response_eof(sb_http1_response *p)
{
    if (p->state == S_BODY_CLOSE)
        p->state = S_DONE;
    return p->state == S_DONE ? 0 : SB_EPROTO;
}
