/*
 * CIDR allowlists. Every address is handled as 128 bits (IPv4 mapped into ::ffff:0:0/96),
 * stored as two host-order 64-bit halves with their masks, and matched by a linear scan:
 * with at most 256 entries that is a few hundred word compares and no pointer chasing.
 *
 * The text parsers are written here rather than taken from inet_pton so that what is
 * accepted is exactly what ipallow.h promises (glibc's inet_pton has its own leniencies),
 * and so the fuzz target can hold them to it.
 */
#include "guard/ipallow.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "core/str.h"
#include "core/alloc.h"
#include "switchboard/error.h"

#define QUOTE_MAX 64 /* bytes of a bad entry quoted in a message */
#define ELEMENT_MAX                                                                                \
    64 /* longest X-Forwarded-For element worth parsing: "[v6 with v4 tail]:port"                  \
        */

struct pfx {
    uint64_t hi, lo;   /* network, already masked */
    uint64_t mhi, mlo; /* mask */
};

struct sb_ipallow {
    size_t n;
    struct pfx p[];
};

/* ---- text → address ----------------------------------------------------------------- */

static int digit(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : -1;
}

/* A decimal 0..max without sign or leading zeros, all of s[0..len). */
static bool parse_dec(const char *s, size_t len, unsigned max, unsigned *out)
{
    if (len < 1 || len > 5 || (len > 1 && s[0] == '0'))
        return false;
    unsigned v = 0;
    for (size_t i = 0; i < len; i++) {
        int d = digit(s[i]);
        if (d < 0)
            return false;
        v = v * 10 + (unsigned)d;
    }
    if (v > max)
        return false;
    *out = v;
    return true;
}

/* Exactly a.b.c.d, decimal octets without leading zeros. */
static bool parse_v4(const char *s, size_t len, uint8_t out[4])
{
    size_t start = 0;
    for (int part = 0; part < 4; part++) {
        size_t end = start;
        while (end < len && s[end] != '.')
            end++;
        if ((part < 3) != (end < len))
            return false;
        unsigned v;
        if (!parse_dec(s + start, end - start, 255, &v))
            return false;
        out[part] = (uint8_t)v;
        start = end + 1;
    }
    return true;
}

/* RFC 4291 section 2.2 text, without zone or brackets. */
static bool parse_v6(const char *s, size_t len, uint8_t out[16])
{
    uint16_t words[8];
    int n = 0, gap = -1; /* words parsed; where "::" stands, in words */
    size_t i = 0;

    if (len >= 1 && s[0] == ':') {
        if (len < 2 || s[1] != ':')
            return false;
        gap = 0;
        i = 2;
        if (i == len)
            goto done;
    }
    for (;;) {
        size_t start = i;
        unsigned v = 0;
        while (i < len && i - start < 5 && sb_hex_value((unsigned char)s[i]) >= 0)
            v = v * 16 + (unsigned)sb_hex_value((unsigned char)s[i++]);
        if (i < len && s[i] == '.') {
            /* A dotted IPv4 tail takes the last 32 bits and ends the text. */
            uint8_t v4[4];
            if (n > 6 || !parse_v4(s + start, len - start, v4))
                return false;
            words[n++] = (uint16_t)(v4[0] << 8 | v4[1]);
            words[n++] = (uint16_t)(v4[2] << 8 | v4[3]);
            break;
        }
        if (i == start || i - start > 4 || n == 8)
            return false;
        words[n++] = (uint16_t)v;
        if (i == len)
            break;
        if (s[i] != ':')
            return false;
        i++;
        if (i < len && s[i] == ':') {
            if (gap >= 0)
                return false;
            gap = n;
            i++;
            if (i == len)
                break;
        } else if (i == len) {
            return false; /* a single trailing ':' */
        }
    }
done:
    if (gap < 0 ? n != 8 : n > 7)
        return false;
    memset(out, 0, 16);
    int tail = gap < 0 ? 0 : n - gap; /* words after "::" go to the end */
    for (int k = 0; k < n; k++) {
        int pos = gap >= 0 && k >= gap ? 8 - tail + (k - gap) : k;
        out[2 * pos] = (uint8_t)(words[k] >> 8);
        out[2 * pos + 1] = (uint8_t)words[k];
    }
    return true;
}

static void map_v4(const uint8_t v4[4], uint8_t out[16])
{
    memset(out, 0, 10);
    out[10] = out[11] = 0xff;
    memcpy(out + 12, v4, 4);
}

static bool is_mapped(const uint8_t a[16])
{
    static const uint8_t prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    return memcmp(a, prefix, 12) == 0;
}

static bool has_colon(const char *s, size_t len)
{
    return memchr(s, ':', len) != NULL;
}

/* ---- 128-bit helpers ---------------------------------------------------------------- */

static uint64_t load_be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

static void masks(unsigned prefix, uint64_t *mhi, uint64_t *mlo)
{
    *mhi = prefix >= 64 ? UINT64_MAX : prefix == 0 ? 0 : UINT64_MAX << (64 - prefix);
    *mlo = prefix <= 64 ? 0 : prefix >= 128 ? UINT64_MAX : UINT64_MAX << (128 - prefix);
}

static void apply_mask(uint8_t a[16], unsigned prefix)
{
    for (unsigned i = 0; i < 16; i++) {
        unsigned keep = prefix > 8 * i ? prefix - 8 * i : 0;
        if (keep < 8)
            a[i] &= (uint8_t)(0xff00u >> keep);
    }
}

static bool sockaddr_128(const struct sockaddr *sa, uint8_t out[16])
{
    if (!sa)
        return false;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        uint8_t v4[4];
        memcpy(v4, &in->sin_addr, 4);
        map_v4(v4, out);
        return true;
    }
    if (sa->sa_family == AF_INET6) {
        memcpy(out, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
        return true;
    }
    return false;
}

static bool contains128(const sb_ipallow *a, const uint8_t addr[16])
{
    if (!a)
        return false;
    uint64_t hi = load_be64(addr), lo = load_be64(addr + 8);
    for (size_t i = 0; i < a->n; i++) {
        const struct pfx *p = &a->p[i];
        if ((hi & p->mhi) == p->hi && (lo & p->mlo) == p->lo)
            return true;
    }
    return false;
}

/* ---- entries -------------------------------------------------------------------------- */

/* s quoted for a message: at most QUOTE_MAX bytes, anything but printable ASCII as '?'. */
static void quote(const char *s, size_t len, char out[QUOTE_MAX + 4])
{
    size_t n = len < QUOTE_MAX ? len : QUOTE_MAX, j = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        out[j++] = c >= 0x20 && c < 0x7f && c != '"' && c != '\\' ? (char)c : '?';
    }
    if (n < len) {
        memcpy(out + j, "...", 3);
        j += 3;
    }
    out[j] = '\0';
}

static int fail(char *err, size_t errcap, const char *s, size_t len, const char *why)
{
    if (errcap) {
        char q[QUOTE_MAX + 4];
        quote(s, len, q);
        snprintf(err, errcap, "\"%s\": %s", q, why);
    }
    return SB_EINVAL;
}

int sb_ipallow_parse_entry(const char *s, size_t len, sb_cidr *out, char *err, size_t errcap)
{
    if (len == 0)
        return fail(err, errcap, s, len, "empty entry");
    if (s[0] == ' ' || s[0] == '\t' || s[len - 1] == ' ' || s[len - 1] == '\t')
        return fail(err, errcap, s, len, "surrounding whitespace");

    const char *slash = memchr(s, '/', len);
    size_t alen = slash ? (size_t)(slash - s) : len;
    sb_cidr c;
    memset(&c, 0, sizeof c);
    unsigned width;
    if (has_colon(s, alen)) {
        if (!parse_v6(s, alen, c.addr))
            return fail(err, errcap, s, len, "not an IPv6 address (RFC 4291 text, no zone)");
        c.family = AF_INET6;
        width = 128;
    } else {
        uint8_t v4[4];
        if (!parse_v4(s, alen, v4))
            return fail(err, errcap, s, len,
                        "not an IPv4 address (four decimal octets 0-255, no leading zeros)");
        map_v4(v4, c.addr);
        c.family = AF_INET;
        width = 32;
    }

    unsigned plen = width;
    if (slash && !parse_dec(slash + 1, len - alen - 1, width, &plen))
        return fail(err, errcap, s, len,
                    width == 32 ? "prefix length must be 0-32 for IPv4, in plain decimal"
                                : "prefix length must be 0-128 for IPv6, in plain decimal");
    c.prefix = (uint8_t)(128 - width + plen);

    uint8_t masked[16];
    memcpy(masked, c.addr, 16);
    apply_mask(masked, c.prefix);
    if (memcmp(masked, c.addr, 16) != 0) {
        if (errcap) {
            sb_cidr net = c, host = c;
            memcpy(net.addr, masked, 16);
            host.prefix = 128;
            char why[2 * SB_CIDR_STR_MAX + 64], a[SB_CIDR_STR_MAX], b[SB_CIDR_STR_MAX];
            sb_ipallow_format_entry(&net, a, sizeof a);
            sb_ipallow_format_entry(&host, b, sizeof b);
            snprintf(why, sizeof why, "address bits set past /%u; did you mean %s or %s?", plen, a,
                     b);
            fail(err, errcap, s, len, why);
        }
        return SB_EINVAL;
    }
    *out = c;
    return 0;
}

int sb_ipallow_format_entry(const sb_cidr *c, char *out, size_t cap)
{
    char text[INET6_ADDRSTRLEN];
    unsigned plen = c->prefix;
    if (c->family == AF_INET && is_mapped(c->addr) && c->prefix >= 96) {
        inet_ntop(AF_INET, c->addr + 12, text, sizeof text);
        plen -= 96;
    } else {
        inet_ntop(AF_INET6, c->addr, text, sizeof text);
    }
    int n = snprintf(out, cap, "%s/%u", text, plen);
    return n < 0 || (size_t)n >= cap ? SB_EMSGSIZE : 0;
}

int sb_ipallow_new_cidrs(const sb_cidr *cidrs, size_t n, sb_ipallow **out)
{
    *out = NULL;
    if (n > SB_IPALLOW_MAX_ENTRIES)
        return SB_EMSGSIZE;
    sb_ipallow *a = sb_malloc(sizeof *a + n * sizeof a->p[0]);
    if (!a)
        return SB_ENOMEM;
    a->n = n;
    for (size_t i = 0; i < n; i++) {
        const sb_cidr *c = &cidrs[i];
        uint8_t masked[16];
        memcpy(masked, c->addr, 16);
        apply_mask(masked, c->prefix);
        if (c->prefix > 128 || memcmp(masked, c->addr, 16) != 0) {
            sb_free(a);
            return SB_EINVAL;
        }
        struct pfx *p = &a->p[i];
        p->hi = load_be64(c->addr);
        p->lo = load_be64(c->addr + 8);
        masks(c->prefix, &p->mhi, &p->mlo);
    }
    *out = a;
    return 0;
}

int sb_ipallow_new(const char *const *entries, size_t n, sb_ipallow **out, char *err, size_t errcap)
{
    *out = NULL;
    if (errcap)
        err[0] = '\0';
    if (n > SB_IPALLOW_MAX_ENTRIES) {
        if (errcap)
            snprintf(err, errcap, "%zu entries; at most %d are allowed", n, SB_IPALLOW_MAX_ENTRIES);
        return SB_EMSGSIZE;
    }
    int rc;
    sb_cidr *cidrs = sb_calloc(n ? n : 1, sizeof *cidrs);
    if (!cidrs)
        return SB_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        char why[SB_IPALLOW_ERR_MAX];
        rc = sb_ipallow_parse_entry(entries[i], strlen(entries[i]), &cidrs[i], why, sizeof why);
        if (rc != 0) {
            if (errcap)
                snprintf(err, errcap, "entry %zu: %s", i + 1, why);
            goto done;
        }
    }
    rc = sb_ipallow_new_cidrs(cidrs, n, out);
done:
    sb_free(cidrs);
    return rc;
}

int sb_ipallow_from_list(const char *list, sb_ipallow **out, char *err, size_t errcap)
{
    *out = NULL;
    if (errcap)
        err[0] = '\0';
    const char *p = list ? list : "";
    size_t n = 0;
    sb_cidr *cidrs = sb_calloc(SB_IPALLOW_MAX_ENTRIES, sizeof *cidrs);
    if (!cidrs)
        return SB_ENOMEM;
    int rc = 0;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        while (len && (*p == ' ' || *p == '\t')) {
            p++;
            len--;
        }
        while (len && (p[len - 1] == ' ' || p[len - 1] == '\t'))
            len--;
        if (len) {
            char why[SB_IPALLOW_ERR_MAX];
            if (n == SB_IPALLOW_MAX_ENTRIES) {
                if (errcap)
                    snprintf(err, errcap, "more than %d entries", SB_IPALLOW_MAX_ENTRIES);
                rc = SB_EMSGSIZE;
                goto done;
            }
            if ((rc = sb_ipallow_parse_entry(p, len, &cidrs[n], why, sizeof why)) != 0) {
                if (errcap)
                    snprintf(err, errcap, "entry %zu: %s", n + 1, why);
                goto done;
            }
            n++;
        }
        if (!comma)
            break;
        p = comma + 1;
    }
    rc = n ? sb_ipallow_new_cidrs(cidrs, n, out) : 0;
done:
    sb_free(cidrs);
    return rc;
}

void sb_ipallow_free(sb_ipallow *a)
{
    sb_free(a);
}

size_t sb_ipallow_count(const sb_ipallow *a)
{
    return a ? a->n : 0;
}

bool sb_ipallow_match(const sb_ipallow *a, const struct sockaddr *sa)
{
    if (!a || a->n == 0)
        return true;
    uint8_t addr[16];
    return sockaddr_128(sa, addr) && contains128(a, addr);
}

bool sb_ipallow_contains(const sb_ipallow *a, const struct sockaddr *sa)
{
    uint8_t addr[16];
    return a && a->n && sockaddr_128(sa, addr) && contains128(a, addr);
}

/* ---- X-Forwarded-For ------------------------------------------------------------------ */

static bool parse_port(const char *s, size_t len)
{
    unsigned port;
    return parse_dec(s, len, 65535, &port);
}

/* One element: "v4", "v4:port", "v6", "[v6]" or "[v6]:port". */
static bool parse_element(const char *s, size_t len, uint8_t out[16])
{
    if (len > ELEMENT_MAX)
        return false;
    if (s[0] == '[') {
        const char *close = memchr(s, ']', len);
        if (!close)
            return false;
        size_t alen = (size_t)(close - s) - 1, rest = len - alen - 2;
        if (!parse_v6(s + 1, alen, out))
            return false;
        return rest == 0 || (close[1] == ':' && parse_port(close + 2, rest - 1));
    }
    const char *colon = memchr(s, ':', len);
    if (colon && memchr(colon + 1, ':', len - (size_t)(colon - s) - 1))
        return parse_v6(s, len, out);
    uint8_t v4[4];
    size_t alen = colon ? (size_t)(colon - s) : len;
    if (!parse_v4(s, alen, v4) || (colon && !parse_port(colon + 1, len - alen - 1)))
        return false;
    map_v4(v4, out);
    return true;
}

static void copy_peer(const struct sockaddr *peer, struct sockaddr_storage *out)
{
    memset(out, 0, sizeof *out);
    memcpy(out, peer,
           peer->sa_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6));
}

static void set_addr(const uint8_t addr[16], struct sockaddr_storage *out)
{
    memset(out, 0, sizeof *out);
    if (is_mapped(addr)) {
        struct sockaddr_in *in = (struct sockaddr_in *)out;
        in->sin_family = AF_INET;
        memcpy(&in->sin_addr, addr + 12, 4);
    } else {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)out;
        in6->sin6_family = AF_INET6;
        memcpy(&in6->sin6_addr, addr, 16);
    }
}

static bool ows(char c)
{
    return c == ' ' || c == '\t';
}

int sb_ipallow_client_addr(const struct sockaddr *peer, const char *xff, size_t len,
                           const sb_ipallow *trusted_proxies, struct sockaddr_storage *out)
{
    if (!peer || (peer->sa_family != AF_INET && peer->sa_family != AF_INET6)) {
        memset(out, 0, sizeof *out);
        return SB_EINVAL;
    }
    copy_peer(peer, out);
    if (!xff || len == 0 || !sb_ipallow_contains(trusted_proxies, peer))
        return 0;

    uint8_t addr[16], leftmost[16];
    unsigned hops = 0;
    size_t end = len;
    for (;;) {
        size_t start = end;
        while (start > 0 && xff[start - 1] != ',')
            start--;
        size_t a = start, b = end;
        while (a < b && ows(xff[a]))
            a++;
        while (b > a && ows(xff[b - 1]))
            b--;
        if (a < b) {
            if (hops == SB_IPALLOW_MAX_HOPS || !parse_element(xff + a, b - a, addr)) {
                copy_peer(peer, out);
                return SB_EPROTO;
            }
            hops++;
            if (!contains128(trusted_proxies, addr)) {
                set_addr(addr, out);
                return 1;
            }
            memcpy(leftmost, addr, 16);
        }
        if (start == 0)
            break;
        end = start - 1;
    }
    if (hops == 0)
        return 0;
    set_addr(leftmost, out);
    return 1;
}
