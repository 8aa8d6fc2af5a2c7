/*
 * Strict HTTP/1.1 request parser; the contract is in http1_parser.h.
 *
 * The header section is read in two passes. The first looks only at line ends (memchr for
 * LF), resumes at prev_len so that a request arriving in small pieces is not rescanned, and
 * judges the size limits and bare LF in the order their bytes arrive: the verdict then does
 * not depend on how the input was split. The request line is validated as soon as it is
 * complete, so a bad method or version is refused without waiting for the headers. The
 * second pass runs once the section is complete and checks every byte against a class
 * table.
 */
#include "net/http1_parser.h"

#include <limits.h>
#include <string.h>

#include "core/str.h"
#include "net/http1_chars.h"
#include "switchboard/error.h"

#define CLS(c) SB__HTTP1_CLS(c)

#define MAX_LEADING_BLANKS 4
/* Keeps offsets representable in the int return value whatever limits the caller passes. */
#define SECTION_CAP   ((size_t)INT_MAX / 2)
#define CL_MAX_DIGITS 18

static inline size_t min_size(size_t a, size_t b)
{
    return a < b ? a : b;
}

static inline unsigned char lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c | 0x20) : c;
}

/* `lit` must be lowercase. */
static bool ieq(const char *s, size_t n, const char *lit, size_t lit_len)
{
    if (n != lit_len)
        return false;
    for (size_t i = 0; i < n; i++)
        if (lower((unsigned char)s[i]) != (unsigned char)lit[i])
            return false;
    return true;
}

#define IEQ(s, n, lit) ieq((s), (n), (lit), sizeof(lit) - 1)

static bool all_tchar(const char *s, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!(CLS(s[i]) & SB__HTTP1_TCHAR))
            return false;
    return true;
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

enum { AUTH_NEED_HOST = 1, AUTH_NEED_PORT = 2 };

/* uri-host [ ":" port ] (RFC 3986); userinfo is refused because it only serves confusion. */
static bool valid_authority(const char *s, size_t n, int flags)
{
    size_t i = 0;
    if (n > 0 && s[0] == '[') {
        for (i = 1; i < n && s[i] != ']'; i++)
            if (!(CLS(s[i]) & SB__HTTP1_HOST) || s[i] == '[')
                return false;
        if (i == n || i == 1)
            return false;
        i++;
    } else {
        for (; i < n && s[i] != ':'; i++) {
            char c = s[i];
            if (!(CLS(c) & SB__HTTP1_HOST) || c == '[' || c == ']')
                return false;
            if (c == '%') {
                if (n - i < 3 || !(CLS(s[i + 1]) & SB__HTTP1_HEX) ||
                    !(CLS(s[i + 2]) & SB__HTTP1_HEX))
                    return false;
                i += 2;
            }
        }
    }
    if (i == 0 && (flags & AUTH_NEED_HOST))
        return false;
    if (i == n)
        return !(flags & AUTH_NEED_PORT);
    if (s[i] != ':')
        return false;
    size_t port = ++i;
    for (; i < n; i++)
        if (!is_digit(s[i]))
            return false;
    return port < n || !(flags & AUTH_NEED_PORT);
}

static void split_path_query(sb_http1_request *req, const char *s, size_t n)
{
    const char *q = memchr(s, '?', n);
    if (q) {
        req->path = (sb_str){s, (size_t)(q - s)};
        req->query = (sb_str){q + 1, n - (size_t)(q - s) - 1};
    } else {
        req->path = (sb_str){s, n};
        req->query = (sb_str){s + n, 0};
    }
}

/* Returns 0 or the status to answer with. */
static int classify_target(sb_http1_request *req)
{
    const char *t = req->target.base;
    size_t n = req->target.len;

    if (t[0] == '/') {
        split_path_query(req, t, n);
        return 0;
    }
    req->query = (sb_str){t + n, 0};
    if (n == 1 && t[0] == '*') {
        if (!sb_str_eq_lit(req->method, "OPTIONS"))
            return 400;
        req->path = req->target;
        return 0;
    }
    if (sb_str_eq_lit(req->method, "CONNECT")) {
        if (!valid_authority(t, n, AUTH_NEED_HOST | AUTH_NEED_PORT))
            return 400;
        req->path = req->target;
        return 0;
    }

    size_t a;
    if (n >= 7 && IEQ(t, 7, "http://"))
        a = 7;
    else if (n >= 8 && IEQ(t, 8, "https://"))
        a = 8;
    else
        return 400;
    size_t auth = a;
    while (a < n && t[a] != '/' && t[a] != '?')
        a++;
    if (!valid_authority(t + auth, a - auth, AUTH_NEED_HOST))
        return 400;
    req->host = (sb_str){t + auth, a - auth};
    if (a < n && t[a] == '/') {
        split_path_query(req, t + a, n - a);
    } else {
        /* "http://h" and "http://h?q" have an empty path, which means "/" (RFC 9112 §3.2.2).
         * A static string lives longer than any caller's buffer. */
        req->path = SB_STR_LIT("/");
        if (a < n)
            req->query = (sb_str){t + a + 1, n - a - 1};
    }
    return 0;
}

/* Validates buf[start..cr) as a request line and fills the request-line fields of req. */
static int parse_request_line(const char *buf, size_t start, size_t cr, sb_http1_request *req)
{
    size_t p = start;
    while (p < cr && (CLS(buf[p]) & SB__HTTP1_TCHAR))
        p++;
    if (p == start || p == cr || buf[p] != ' ')
        return 400;
    req->method = (sb_str){buf + start, p - start};

    size_t ts = ++p;
    while (p < cr && (CLS(buf[p]) & SB__HTTP1_TARGET))
        p++;
    if (p == ts || p == cr || buf[p] != ' ')
        return 400;
    req->target = (sb_str){buf + ts, p - ts};

    const char *v = buf + p + 1;
    if (cr - (p + 1) != 8 || memcmp(v, "HTTP/", 5) != 0 || !is_digit(v[5]) || v[6] != '.' ||
        !is_digit(v[7]))
        return 400;
    if (v[5] != '1' || (v[7] != '0' && v[7] != '1'))
        return 505;
    req->minor_version = v[7] - '0';

    req->host = SB_STR_NULL;
    return classify_target(req);
}

/* Calls fn on each comma-separated element of a field value with OWS trimmed; empty elements
 * are passed too, so that each caller decides whether it tolerates them. */
typedef int (*list_fn)(const char *s, size_t n, void *ctx);

static int for_each_element(sb_str v, list_fn fn, void *ctx)
{
    size_t i = 0;
    for (;;) {
        size_t b = i;
        while (i < v.len && v.base[i] != ',')
            i++;
        size_t e = i;
        while (b < e && (CLS(v.base[b]) & SB__HTTP1_WS))
            b++;
        while (e > b && (CLS(v.base[e - 1]) & SB__HTTP1_WS))
            e--;
        int rc = fn(v.base + b, e - b, ctx);
        if (rc)
            return rc;
        if (i == v.len)
            return 0;
        i++;
    }
}

enum { CONN_CLOSE = 1, CONN_KEEP_ALIVE = 2, CONN_UPGRADE = 4 };

static int connection_element(const char *s, size_t n, void *ctx)
{
    int *flags = ctx;
    if (n == 0)
        return 0; /* RFC 9110 §5.6.1.2: empty list elements are ignored */
    if (!all_tchar(s, n))
        return 400;
    if (IEQ(s, n, "close"))
        *flags |= CONN_CLOSE;
    else if (IEQ(s, n, "keep-alive"))
        *flags |= CONN_KEEP_ALIVE;
    else if (IEQ(s, n, "upgrade"))
        *flags |= CONN_UPGRADE;
    return 0;
}

struct te_state {
    size_t elements;
    size_t chunked;
    bool last_chunked;
};

/* transfer-coding = token *( OWS ";" OWS token "=" token ); quoted parameter values are not
 * accepted, which only turns a 501 into a 400. */
static int te_element(const char *s, size_t n, void *ctx)
{
    struct te_state *te = ctx;
    if (n == 0)
        return 400;
    size_t i = 0;
    while (i < n && (CLS(s[i]) & SB__HTTP1_TCHAR))
        i++;
    if (i == 0)
        return 400;
    bool chunked = IEQ(s, i, "chunked");
    bool params = i < n;
    while (i < n) {
        while (i < n && (CLS(s[i]) & SB__HTTP1_WS))
            i++;
        if (i == n || s[i] != ';')
            return 400;
        i++;
        while (i < n && (CLS(s[i]) & SB__HTTP1_WS))
            i++;
        size_t b = i;
        while (i < n && (CLS(s[i]) & SB__HTTP1_TCHAR))
            i++;
        if (i == b || i == n || s[i] != '=')
            return 400;
        b = ++i;
        while (i < n && (CLS(s[i]) & SB__HTTP1_TCHAR))
            i++;
        if (i == b)
            return 400;
    }
    te->elements++;
    te->last_chunked = chunked && !params;
    if (chunked)
        te->chunked++;
    return 0;
}

/* Returns 0, 400, or 501 for a well-formed list of codings that ends in chunked. */
static int check_transfer_encoding(sb_str v)
{
    struct te_state te = {0, 0, false};
    int rc = for_each_element(v, te_element, &te);
    if (rc)
        return rc;
    /* RFC 9112 §6.3: without chunked as the final coding the body length is unknowable. */
    if (!te.last_chunked || te.chunked != 1)
        return 400;
    return te.elements == 1 ? 0 : 501;
}

static int parse_content_length(sb_str v, int64_t *out)
{
    if (v.len == 0 || v.len > CL_MAX_DIGITS)
        return 400;
    int64_t n = 0;
    for (size_t i = 0; i < v.len; i++) {
        if (!is_digit(v.base[i]))
            return 400;
        n = n * 10 + (v.base[i] - '0');
    }
    *out = n;
    return 0;
}

struct fields_seen {
    bool content_length;
    bool transfer_encoding;
    bool host;
    bool upgrade;
    int te_status;
    int connection;
};

static int apply_field(sb_http1_request *req, const sb_http_header *h, bool host_from_target,
                       struct fields_seen *seen)
{
    const char *n = h->name.base;
    int rc;
    switch (h->name.len) {
    case 4:
        if (!IEQ(n, 4, "host"))
            break;
        if (seen->host || !valid_authority(h->value.base, h->value.len, 0))
            return 400;
        seen->host = true;
        if (!host_from_target)
            req->host = h->value;
        break;
    case 6:
        if (IEQ(n, 6, "expect") && IEQ(h->value.base, h->value.len, "100-continue"))
            req->expect_continue = true;
        break;
    case 7:
        if (IEQ(n, 7, "upgrade"))
            seen->upgrade = true;
        break;
    case 10:
        if (!IEQ(n, 10, "connection"))
            break;
        rc = for_each_element(h->value, connection_element, &seen->connection);
        if (rc)
            return rc;
        break;
    case 14:
        if (!IEQ(n, 14, "content-length"))
            break;
        if (seen->content_length)
            return 400;
        seen->content_length = true;
        return parse_content_length(h->value, &req->content_length);
    case 17:
        if (!IEQ(n, 17, "transfer-encoding"))
            break;
        if (seen->transfer_encoding || req->minor_version == 0)
            return 400;
        seen->transfer_encoding = true;
        rc = check_transfer_encoding(h->value);
        if (rc == 400)
            return rc;
        /* 501 waits until every field is seen so that a smuggling attempt still gets 400. */
        seen->te_status = rc;
        req->chunked = rc == 0;
        break;
    default:
        break;
    }
    return 0;
}

/* Second pass over the complete header section: buf[first..end) holds the field lines and
 * the final empty line. */
static int parse_fields(const char *buf, size_t first, size_t end, size_t max_fields,
                        sb_http1_request *req)
{
    struct fields_seen seen = {false, false, false, false, 0, 0};
    bool host_from_target = req->host.base != NULL;
    size_t last = end - 2;
    size_t p = first;

    while (p < last) {
        size_t ns = p;
        /* A line starting with whitespace is obs-fold (or junk before the first field). */
        while (CLS(buf[p]) & SB__HTTP1_TCHAR)
            p++;
        if (p == ns || buf[p] != ':')
            return 400;
        size_t ne = p++;
        while (CLS(buf[p]) & SB__HTTP1_WS)
            p++;
        size_t vs = p;
        while (CLS(buf[p]) & (SB__HTTP1_VCHAR | SB__HTTP1_WS))
            p++;
        size_t ve = p;
        while (ve > vs && (CLS(buf[ve - 1]) & SB__HTTP1_WS))
            ve--;
        if (buf[p] != '\r' || buf[p + 1] != '\n')
            return 400;
        p += 2;

        if (req->num_headers >= max_fields)
            return 431;
        sb_http_header *h = &req->headers[req->num_headers++];
        h->name = (sb_str){buf + ns, ne - ns};
        h->value = (sb_str){buf + vs, ve - vs};
        int rc = apply_field(req, h, host_from_target, &seen);
        if (rc)
            return rc;
    }

    if (seen.transfer_encoding && seen.content_length)
        return 400;
    if (req->minor_version == 1 && !seen.host)
        return 400;
    if (seen.te_status)
        return seen.te_status;

    bool conn_close = seen.connection & CONN_CLOSE;
    if (req->minor_version == 1) {
        req->keep_alive = !conn_close;
        req->upgrade = (seen.connection & CONN_UPGRADE) && seen.upgrade;
    } else {
        /* RFC 9110 §10.1.1 and §7.8: 1.0 requests cannot use 100-continue or Upgrade. */
        req->keep_alive = !conn_close && (seen.connection & CONN_KEEP_ALIVE);
        req->expect_continue = false;
    }
    return 0;
}

static int fail(int *status, int code)
{
    *status = code;
    return SB_EPROTO;
}

int sb_http1_parse_request(const char *buf, size_t len, size_t prev_len,
                           const sb_http1_limits *limits, sb_http1_request *req, int *status)
{
    size_t max_rl = min_size(limits->max_request_line, SECTION_CAP);
    size_t max_hdr = min_size(limits->max_header_bytes, SECTION_CAP);
    size_t max_fields = min_size(limits->max_headers, SB_HTTP1_MAX_HEADERS_CAP);

    *status = 0;
    if (prev_len > len)
        prev_len = 0;

    size_t start = 0;
    int blanks = 0;
    while (blanks < MAX_LEADING_BLANKS && len - start >= 2 && buf[start] == '\r' &&
           buf[start + 1] == '\n') {
        start += 2;
        blanks++;
    }
    if (blanks < MAX_LEADING_BLANKS && (start == len || (buf[start] == '\r' && start + 1 == len)))
        return SB_EAGAIN;

    /* The request line's LF may sit at most at start + max_rl + 1, and the section must end
     * by hdr_end; whichever bound comes first decides between 414 and 431. */
    size_t hdr_end = start + max_hdr;
    size_t rl_window = start + max_rl + 2;
    size_t window = min_size(rl_window, hdr_end);
    const char *lf = memchr(buf + start, '\n', min_size(len, window) - start);
    if (!lf) {
        if (len < window)
            return SB_EAGAIN;
        return fail(status, rl_window <= hdr_end ? 414 : 431);
    }
    size_t rl_lf = (size_t)(lf - buf);
    if (rl_lf == start || buf[rl_lf - 1] != '\r')
        return fail(status, 400);

    req->num_headers = 0;
    req->content_length = -1;
    req->chunked = false;
    req->keep_alive = false;
    req->expect_continue = false;
    req->upgrade = false;

    bool rl_parsed = false;
    int rc;
    if (rl_lf >= prev_len) {
        rc = parse_request_line(buf, start, rl_lf - 1, req);
        if (rc)
            return fail(status, rc);
        rl_parsed = true;
    }

    /* An end found now must finish at an LF at or after prev_len, or the last call would
     * have found it; the LFs before were already checked for a CR. */
    size_t from = rl_lf + 1 > prev_len ? rl_lf + 1 : prev_len;
    size_t stop = min_size(len, hdr_end);
    size_t end = 0;
    while (from < stop) {
        const char *q = memchr(buf + from, '\n', stop - from);
        if (!q)
            break;
        size_t p = (size_t)(q - buf);
        if (buf[p - 1] != '\r')
            return fail(status, 400);
        if (buf[p - 2] == '\n') {
            end = p + 1;
            break;
        }
        from = p + 1;
    }
    if (!end)
        return len >= hdr_end ? fail(status, 431) : SB_EAGAIN;

    if (!rl_parsed) {
        rc = parse_request_line(buf, start, rl_lf - 1, req);
        if (rc)
            return fail(status, rc);
    }
    rc = parse_fields(buf, rl_lf + 1, end, max_fields, req);
    if (rc)
        return fail(status, rc);
    return (int)end;
}

const sb_http_header *sb_http1_find_header(const sb_http1_request *req, const char *name)
{
    for (size_t i = 0; i < req->num_headers; i++)
        if (sb_str_case_eq(req->headers[i].name, name))
            return &req->headers[i];
    return NULL;
}

/* Chunked decoder. Framing is walked byte by byte; payload runs are moved with memmove. */

#define CHUNK_LINE_MAX    4096
#define CHUNK_TRAILER_MAX 8192
#define CHUNK_HEX_MAX     16

enum {
    CH_SIZE_START,
    CH_SIZE,
    CH_BWS_SEMI, /* BWS where only ';' may follow */
    CH_EXT_PRE_NAME,
    CH_EXT_NAME,
    CH_EXT_NAME_WS, /* BWS after a name: '=' or ';' */
    CH_EXT_PRE_VALUE,
    CH_EXT_TOKEN,
    CH_EXT_QUOTED,
    CH_EXT_QUOTED_ESC,
    CH_EXT_AFTER_VALUE,
    CH_SIZE_LF,
    CH_DATA,
    CH_DATA_CR,
    CH_DATA_LF,
    CH_TRAILER_START, /* a trailer field or the final CRLF */
    CH_TRAILER_NAME,
    CH_TRAILER_VALUE,
    CH_TRAILER_LF,
    CH_FINAL_LF,
    CH_DONE,
    CH_ERR_PROTO,
    CH_ERR_SIZE,
};

void sb_http1_chunked_init(sb_http1_chunked *d, uint64_t max_body)
{
    memset(d, 0, sizeof(*d));
    d->state = CH_SIZE_START;
    d->max_body = max_body;
}

/* chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] ), RFC 9112 §7.1.1.
 * Validated in full so that no two parsers can disagree on where the size line ends. */
static int ext_step(int state, unsigned char c)
{
    bool ws = CLS(c) & SB__HTTP1_WS, tchar = CLS(c) & SB__HTTP1_TCHAR;
    switch (state) {
    case CH_BWS_SEMI:
        if (ws)
            return CH_BWS_SEMI;
        return c == ';' ? CH_EXT_PRE_NAME : CH_ERR_PROTO;
    case CH_EXT_PRE_NAME:
        if (ws)
            return CH_EXT_PRE_NAME;
        return tchar ? CH_EXT_NAME : CH_ERR_PROTO;
    case CH_EXT_NAME:
        if (tchar)
            return CH_EXT_NAME;
        if (c == '\r')
            return CH_SIZE_LF;
        /* fall through */
    case CH_EXT_NAME_WS:
        if (ws)
            return CH_EXT_NAME_WS;
        if (c == '=')
            return CH_EXT_PRE_VALUE;
        return c == ';' ? CH_EXT_PRE_NAME : CH_ERR_PROTO;
    case CH_EXT_PRE_VALUE:
        if (ws)
            return CH_EXT_PRE_VALUE;
        if (c == '"')
            return CH_EXT_QUOTED;
        return tchar ? CH_EXT_TOKEN : CH_ERR_PROTO;
    case CH_EXT_TOKEN:
        if (tchar)
            return CH_EXT_TOKEN;
        /* fall through */
    case CH_EXT_AFTER_VALUE:
        if (c == '\r')
            return CH_SIZE_LF;
        if (ws)
            return CH_BWS_SEMI;
        return c == ';' ? CH_EXT_PRE_NAME : CH_ERR_PROTO;
    case CH_EXT_QUOTED:
        if (c == '"')
            return CH_EXT_AFTER_VALUE;
        if (c == '\\')
            return CH_EXT_QUOTED_ESC;
        return (CLS(c) & (SB__HTTP1_VCHAR | SB__HTTP1_WS)) ? CH_EXT_QUOTED : CH_ERR_PROTO;
    case CH_EXT_QUOTED_ESC:
        return (CLS(c) & (SB__HTTP1_VCHAR | SB__HTTP1_WS)) ? CH_EXT_QUOTED : CH_ERR_PROTO;
    default:
        return CH_ERR_PROTO;
    }
}

/* Consumes one framing byte; returns the next state. */
static int chunk_step(sb_http1_chunked *d, unsigned char c)
{
    int h;
    switch (d->state) {
    case CH_SIZE_START:
        h = sb_hex_value((unsigned char)c);
        if (h < 0)
            return CH_ERR_PROTO;
        d->chunk_left = (uint64_t)h;
        d->hex_digits = 1;
        d->line_len = 1;
        return CH_SIZE;
    case CH_SIZE:
        if (c == '\r')
            return CH_SIZE_LF;
        if (++d->line_len > CHUNK_LINE_MAX)
            return CH_ERR_PROTO;
        h = sb_hex_value((unsigned char)c);
        if (h >= 0) {
            if (d->hex_digits == CHUNK_HEX_MAX)
                return CH_ERR_PROTO;
            d->chunk_left = d->chunk_left << 4 | (uint64_t)h;
            d->hex_digits++;
            return CH_SIZE;
        }
        return ext_step(CH_BWS_SEMI, c);
    case CH_BWS_SEMI:
    case CH_EXT_PRE_NAME:
    case CH_EXT_NAME:
    case CH_EXT_NAME_WS:
    case CH_EXT_PRE_VALUE:
    case CH_EXT_TOKEN:
    case CH_EXT_QUOTED:
    case CH_EXT_QUOTED_ESC:
    case CH_EXT_AFTER_VALUE:
        if (c != '\r' && ++d->line_len > CHUNK_LINE_MAX)
            return CH_ERR_PROTO;
        return ext_step(d->state, c);
    case CH_SIZE_LF:
        if (c != '\n')
            return CH_ERR_PROTO;
        if (d->chunk_left == 0) {
            d->trailer_bytes = 0;
            return CH_TRAILER_START;
        }
        /* Refuse a chunk that would pass the limit before its bytes arrive. */
        if (d->chunk_left > d->max_body - d->total)
            return CH_ERR_SIZE;
        return CH_DATA;
    case CH_DATA_CR:
        return c == '\r' ? CH_DATA_LF : CH_ERR_PROTO;
    case CH_DATA_LF:
        return c == '\n' ? CH_SIZE_START : CH_ERR_PROTO;
    case CH_TRAILER_START:
        if (c == '\r')
            return CH_FINAL_LF;
        if (++d->trailer_bytes > CHUNK_TRAILER_MAX)
            return CH_ERR_PROTO;
        return (CLS(c) & SB__HTTP1_TCHAR) ? CH_TRAILER_NAME : CH_ERR_PROTO;
    case CH_TRAILER_NAME:
    case CH_TRAILER_VALUE:
    case CH_TRAILER_LF:
        if (++d->trailer_bytes > CHUNK_TRAILER_MAX)
            return CH_ERR_PROTO;
        if (d->state == CH_TRAILER_LF)
            return c == '\n' ? CH_TRAILER_START : CH_ERR_PROTO;
        if (d->state == CH_TRAILER_NAME) {
            if (c == ':')
                return CH_TRAILER_VALUE;
            return (CLS(c) & SB__HTTP1_TCHAR) ? CH_TRAILER_NAME : CH_ERR_PROTO;
        }
        if (c == '\r')
            return CH_TRAILER_LF;
        return (CLS(c) & (SB__HTTP1_VCHAR | SB__HTTP1_WS)) ? CH_TRAILER_VALUE : CH_ERR_PROTO;
    case CH_FINAL_LF:
        return c == '\n' ? CH_DONE : CH_ERR_PROTO;
    default:
        return d->state;
    }
}

int sb_http1_chunked_decode(sb_http1_chunked *d, char *buf, size_t *len)
{
    size_t n = *len;
    size_t r = 0, w = 0;

    if (n > (size_t)INT_MAX)
        return SB_EINVAL;

    while (r < n && d->state < CH_DONE) {
        if (d->state == CH_DATA) {
            size_t run = (size_t)(d->chunk_left < n - r ? d->chunk_left : n - r);
            if (w != r)
                memmove(buf + w, buf + r, run);
            w += run;
            r += run;
            d->chunk_left -= run;
            d->total += run;
            if (d->chunk_left == 0)
                d->state = CH_DATA_CR;
            continue;
        }
        d->state = chunk_step(d, (unsigned char)buf[r++]);
    }

    *len = w;
    switch (d->state) {
    case CH_DONE:
        if (r < n && w != r)
            memmove(buf + w, buf + r, n - r);
        return (int)(n - r);
    case CH_ERR_PROTO:
        return SB_EPROTO;
    case CH_ERR_SIZE:
        return SB_EMSGSIZE;
    default:
        return SB_EAGAIN;
    }
}
