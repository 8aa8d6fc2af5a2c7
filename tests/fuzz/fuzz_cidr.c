/*
 * libFuzzer target for the CIDR entry parser, the matcher and the X-Forwarded-For walk.
 *
 * Input: one selector byte, then allowlist entries one per line, then an empty line, then an
 * X-Forwarded-For value. Beyond "never crash", it holds the code to what ipallow.h promises:
 *   - an accepted entry has no bits past its prefix, formats to text that parses back to the
 *     same entry, and its address is exactly what glibc's inet_pton makes of the same text
 *     (and glibc accepts exactly the addresses we accept: its inet_pton is as strict);
 *   - every accepted entry contains its own network address, in every form of it;
 *   - the walk gives the same answer as a small independent reference built on inet_pton,
 *     and never reads the header when the peer is not trusted.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "guard/ipallow.h"
#include "switchboard/error.h"

#define MAX_LINE 128

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            abort();                                                                               \
    } while (0)

static const uint8_t mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

/* s[0..n) as a NUL-terminated string in buf, or false if it holds a NUL or is too long. */
static bool cstr(const char *s, size_t n, char *buf, size_t cap)
{
    if (n >= cap || memchr(s, '\0', n))
        return false;
    memcpy(buf, s, n);
    buf[n] = '\0';
    return true;
}

/* What glibc makes of an address literal: 4 or 6 (bytes in out, IPv4 mapped), or 0. */
static int pton(const char *s, size_t n, uint8_t out[16])
{
    char buf[MAX_LINE];
    if (!cstr(s, n, buf, sizeof buf))
        return 0;
    if (inet_pton(AF_INET, buf, out + 12) == 1) {
        memcpy(out, mapped_prefix, 12);
        return 4;
    }
    return inet_pton(AF_INET6, buf, out) == 1 ? 6 : 0;
}

static void check_entry(const char *s, size_t n)
{
    sb_cidr c;
    char err[SB_IPALLOW_ERR_MAX];
    memset(err, 'x', sizeof err);
    int rc = sb_ipallow_parse_entry(s, n, &c, err, sizeof err);
    CHECK(rc == 0 || rc == SB_EINVAL);

    const char *slash = memchr(s, '/', n);
    size_t alen = slash ? (size_t)(slash - s) : n;
    uint8_t ref[16];
    int fam = pton(s, alen, ref);

    if (rc != 0) {
        size_t len = strnlen(err, sizeof err);
        CHECK(len > 0 && len < sizeof err);
        for (size_t i = 0; i < len; i++)
            CHECK(err[i] >= 0x20 && err[i] < 0x7f);
        /* Refused although glibc reads the address: only the prefix part may be at fault. */
        if (fam && !slash)
            CHECK(!"an address glibc accepts was refused");
        return;
    }
    CHECK(c.prefix <= 128);
    CHECK(c.family == AF_INET || c.family == AF_INET6);
    CHECK(fam == (c.family == AF_INET ? 4 : 6));
    if (c.family == AF_INET)
        CHECK(c.prefix >= 96 && memcmp(c.addr, mapped_prefix, 12) == 0);
    CHECK(memcmp(c.addr, ref, 16) == 0); /* host bits are zero, so this is the network too */
    if (!slash)
        CHECK(c.prefix == 128);

    char text[SB_CIDR_STR_MAX];
    CHECK(sb_ipallow_format_entry(&c, text, sizeof text) == 0);
    sb_cidr back;
    CHECK(sb_ipallow_parse_entry(text, strlen(text), &back, NULL, 0) == 0);
    CHECK(memcmp(back.addr, c.addr, 16) == 0 && back.prefix == c.prefix);
    CHECK(back.family == c.family);

    /* The list of just this entry contains its network address, as IPv6 and as IPv4. */
    sb_ipallow *a = NULL;
    CHECK(sb_ipallow_new_cidrs(&c, 1, &a) == 0);
    struct sockaddr_in6 in6 = {.sin6_family = AF_INET6};
    memcpy(&in6.sin6_addr, c.addr, 16);
    CHECK(sb_ipallow_match(a, (struct sockaddr *)&in6));
    if (memcmp(c.addr, mapped_prefix, 12) == 0) {
        struct sockaddr_in in = {.sin_family = AF_INET};
        memcpy(&in.sin_addr, c.addr + 12, 4);
        CHECK(sb_ipallow_match(a, (struct sockaddr *)&in) == (c.prefix >= 96));
    }
    sb_ipallow_free(a);
}

/* ---- a reference X-Forwarded-For walk on inet_pton ------------------------------------- */

static bool ref_port(const char *s, size_t n)
{
    if (n < 1 || n > 5 || (n > 1 && s[0] == '0'))
        return false;
    unsigned v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    return v <= 65535;
}

static bool ref_element(const char *s, size_t n, uint8_t out[16])
{
    if (n > 64)
        return false;
    if (s[0] == '[') {
        const char *close = memchr(s, ']', n);
        if (!close)
            return false;
        size_t alen = (size_t)(close - s) - 1, rest = n - alen - 2;
        if (pton(s + 1, alen, out) != 6)
            return false;
        return rest == 0 || (close[1] == ':' && ref_port(close + 2, rest - 1));
    }
    size_t colons = 0, first = n;
    for (size_t i = 0; i < n; i++)
        if (s[i] == ':' && colons++ == 0)
            first = i;
    if (colons == 1)
        return pton(s, first, out) == 4 && ref_port(s + first + 1, n - first - 1);
    return pton(s, n, out) == (colons ? 6 : 4);
}

static bool in_list(const sb_cidr *c, size_t n, const uint8_t a[16])
{
    for (size_t i = 0; i < n; i++) {
        bool in = true;
        for (unsigned bit = 0; bit < c[i].prefix && in; bit++) {
            unsigned byte = bit / 8, mask = 0x80u >> (bit % 8);
            in = (a[byte] & mask) == (c[i].addr[byte] & mask);
        }
        if (in)
            return true;
    }
    return false;
}

/* 0 = peer, 1 = *out, -1 = malformed (peer). */
static int ref_walk(const char *x, size_t n, const sb_cidr *c, size_t nc, uint8_t out[16])
{
    size_t end = n;
    unsigned hops = 0;
    bool any = false;
    for (;;) {
        size_t start = end;
        while (start > 0 && x[start - 1] != ',')
            start--;
        size_t a = start, b = end;
        while (a < b && (x[a] == ' ' || x[a] == '\t'))
            a++;
        while (b > a && (x[b - 1] == ' ' || x[b - 1] == '\t'))
            b--;
        if (a < b) {
            uint8_t addr[16];
            if (hops++ == SB_IPALLOW_MAX_HOPS || !ref_element(x + a, b - a, addr))
                return -1;
            memcpy(out, addr, 16);
            any = true;
            if (!in_list(c, nc, addr))
                return 1;
        }
        if (start == 0)
            break;
        end = start - 1;
    }
    return any ? 1 : 0;
}

static void addr_of(const struct sockaddr_storage *ss, uint8_t out[16])
{
    if (ss->ss_family == AF_INET) {
        memcpy(out, mapped_prefix, 12);
        memcpy(out + 12, &((const struct sockaddr_in *)ss)->sin_addr, 4);
    } else {
        CHECK(ss->ss_family == AF_INET6);
        memcpy(out, &((const struct sockaddr_in6 *)ss)->sin6_addr, 16);
        CHECK(memcmp(out, mapped_prefix, 12) != 0); /* mapped results come back as IPv4 */
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    uint8_t sel = data[0];
    const char *in = (const char *)data + 1;
    size_t n = size - 1, split = n, xoff = n;
    for (size_t i = 0; i + 1 < n; i++)
        if (in[i] == '\n' && in[i + 1] == '\n') {
            split = i;
            xoff = i + 2;
            break;
        }

    static sb_cidr cidrs[SB_IPALLOW_MAX_ENTRIES];
    size_t nc = 0;
    for (size_t pos = 0; pos <= split && nc < SB_IPALLOW_MAX_ENTRIES;) {
        const char *nl = memchr(in + pos, '\n', split - pos);
        size_t end = nl ? (size_t)(nl - in) : split;
        check_entry(in + pos, end - pos);
        if (sb_ipallow_parse_entry(in + pos, end - pos, &cidrs[nc], NULL, 0) == 0)
            nc++;
        pos = end + 1;
    }
    sb_ipallow *trusted = NULL;
    CHECK(sb_ipallow_new_cidrs(cidrs, nc, &trusted) == 0);
    CHECK(sb_ipallow_count(trusted) == nc);

    /* The peer: the first entry's network address (trusted) or a fixed outsider, written
     * as IPv4 when it is one unless the selector asks for the mapped IPv6 form. */
    uint8_t peer128[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 77};
    if ((sel & 1) && nc > 0)
        memcpy(peer128, cidrs[0].addr, 16);
    struct sockaddr_storage peer, out;
    memset(&peer, 0, sizeof peer);
    if (memcmp(peer128, mapped_prefix, 12) == 0 && !(sel & 2)) {
        struct sockaddr_in *p4 = (struct sockaddr_in *)&peer;
        p4->sin_family = AF_INET;
        p4->sin_port = htons(443);
        memcpy(&p4->sin_addr, peer128 + 12, 4);
    } else {
        struct sockaddr_in6 *p6 = (struct sockaddr_in6 *)&peer;
        p6->sin6_family = AF_INET6;
        p6->sin6_port = htons(443);
        memcpy(&p6->sin6_addr, peer128, 16);
    }
    bool peer_trusted = in_list(cidrs, nc, peer128);
    CHECK(sb_ipallow_contains(trusted, (struct sockaddr *)&peer) == peer_trusted);
    CHECK(sb_ipallow_match(trusted, (struct sockaddr *)&peer) == (peer_trusted || nc == 0));

    const char *xff = in + xoff;
    size_t xlen = n - xoff;
    int rc = sb_ipallow_client_addr((struct sockaddr *)&peer, xff, xlen, trusted, &out);
    uint8_t want[16], got[16];
    int ref = peer_trusted ? ref_walk(xff, xlen, cidrs, nc, want) : 0;
    if (ref == 1) {
        CHECK(rc == 1);
        addr_of(&out, got);
        CHECK(memcmp(got, want, 16) == 0);
    } else {
        CHECK(rc == (ref == 0 ? 0 : SB_EPROTO));
        CHECK(memcmp(&out, &peer, sizeof out) == 0);
    }
    sb_ipallow_free(trusted);
    return 0;
}
