/* CIDR allowlists: strict parsing, prefix boundaries, IPv4-mapped addresses, X-Forwarded-For. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "core/alloc.h"
#include "guard/ipallow.h"
#include "switchboard/error.h"

/* A sockaddr for an address literal (IPv4 if it parses as one), with a port. */
static struct sockaddr_storage sa(const char *text, uint16_t port)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *in = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, text, &in->sin_addr) == 1) {
        in->sin_family = AF_INET;
        in->sin_port = htons(port);
    } else {
        assert_int_equal(inet_pton(AF_INET6, text, &in6->sin6_addr), 1);
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(port);
    }
    return ss;
}

/* The address part of a sockaddr as text, with the family: "4 1.2.3.4", "6 ::1". */
static const char *text_of(const struct sockaddr_storage *ss)
{
    static char buf[INET6_ADDRSTRLEN + 8];
    char a[INET6_ADDRSTRLEN];
    if (ss->ss_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, a, sizeof a);
    else if (ss->ss_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)ss)->sin6_addr, a, sizeof a);
    else
        snprintf(a, sizeof a, "family %d", ss->ss_family);
    snprintf(buf, sizeof buf, "%c %s", ss->ss_family == AF_INET ? '4' : '6', a);
    return buf;
}

static sb_ipallow *list(const char *const *entries, size_t n)
{
    sb_ipallow *a = NULL;
    char err[SB_IPALLOW_ERR_MAX];
    int rc = sb_ipallow_new(entries, n, &a, err, sizeof err);
    if (rc != 0)
        fail_msg("sb_ipallow_new: %d %s", rc, err);
    return a;
}

static bool m(const sb_ipallow *a, const char *addr)
{
    struct sockaddr_storage ss = sa(addr, 1234);
    return sb_ipallow_match(a, (struct sockaddr *)&ss);
}

static void test_parse_accepts(void **state)
{
    (void)state;
    struct {
        const char *in, *canonical;
        int family;
    } ok[] = {
        {"10.0.0.0/8", "10.0.0.0/8", AF_INET},
        {"192.168.1.7", "192.168.1.7/32", AF_INET},
        {"0.0.0.0/0", "0.0.0.0/0", AF_INET},
        {"255.255.255.255/32", "255.255.255.255/32", AF_INET},
        {"100.64.0.0/10", "100.64.0.0/10", AF_INET},
        {"2001:db8::/32", "2001:db8::/32", AF_INET6},
        {"2001:DB8::/32", "2001:db8::/32", AF_INET6},
        {"::1", "::1/128", AF_INET6},
        {"::", "::/128", AF_INET6},
        {"::/0", "::/0", AF_INET6},
        {"1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8/128", AF_INET6},
        {"0001:0002:0003:0004:0005:0006:0007:0008", "1:2:3:4:5:6:7:8/128", AF_INET6},
        {"1::", "1::/128", AF_INET6},
        {"1:2:3:4:5:6:7::", "1:2:3:4:5:6:7:0/128", AF_INET6},
        {"::2:3:4:5:6:7:8", "0:2:3:4:5:6:7:8/128", AF_INET6},
        {"1:2:3::6:7:8", "1:2:3::6:7:8/128", AF_INET6},
        {"fe80::/10", "fe80::/10", AF_INET6},
        {"::ffff:10.0.0.0/104", "::ffff:10.0.0.0/104", AF_INET6},
        {"::ffff:0:0/96", "::ffff:0.0.0.0/96", AF_INET6},
        {"64:ff9b::1.2.3.4", "64:ff9b::102:304/128", AF_INET6},
        {"1:2:3:4:5:6:1.2.3.4", "1:2:3:4:5:6:102:304/128", AF_INET6},
        {"8000::/1", "8000::/1", AF_INET6},
        {"2001:db8::/127", "2001:db8::/127", AF_INET6},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        sb_cidr c;
        char err[SB_IPALLOW_ERR_MAX] = "", out[SB_CIDR_STR_MAX];
        int rc = sb_ipallow_parse_entry(ok[i].in, strlen(ok[i].in), &c, err, sizeof err);
        if (rc != 0)
            fail_msg("%s: %s", ok[i].in, err);
        assert_int_equal(c.family, ok[i].family);
        assert_int_equal(sb_ipallow_format_entry(&c, out, sizeof out), 0);
        if (strcmp(out, ok[i].canonical) != 0)
            fail_msg("%s formats as %s, want %s", ok[i].in, out, ok[i].canonical);
        /* The canonical form parses to the same prefix. */
        sb_cidr back;
        assert_int_equal(sb_ipallow_parse_entry(out, strlen(out), &back, NULL, 0), 0);
        assert_memory_equal(back.addr, c.addr, 16);
        assert_int_equal(back.prefix, c.prefix);
    }
    /* IPv4 is stored mapped, with the prefix counted over 128 bits. */
    sb_cidr c;
    assert_int_equal(sb_ipallow_parse_entry("10.0.0.0/8", 10, &c, NULL, 0), 0);
    static const uint8_t mapped10[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 0};
    assert_memory_equal(c.addr, mapped10, 16);
    assert_int_equal(c.prefix, 104);
    /* The length bounds the parse: what follows is not looked at. */
    assert_int_equal(sb_ipallow_parse_entry("10.0.0.0/8 junk", 10, &c, NULL, 0), 0);
}

static void test_parse_rejects(void **state)
{
    (void)state;
    const char *bad[] = {
        "",
        "10.0.0.0/33",
        "10.1/8",
        "10.1",
        "10",
        "10.0.0.1/8",
        "010.0.0.1",
        "10.0.0.01",
        "1.2.3.256",
        "1.2.3.4.5",
        "1..2.3",
        "1.2.3.",
        ".1.2.3",
        "1.2.3.4/",
        "1.2.3.4/08",
        "1.2.3.4/-1",
        "1.2.3.4/+8",
        "1.2.3.4/ 8",
        "1.2.3.4/32/1",
        "1.2.3.4/1000000000000",
        " 1.2.3.4",
        "1.2.3.4 ",
        "1.2.3.4\n",
        "0x1.2.3.4",
        "1.2.3.4:80",
        "::1/129",
        "::/00",
        "1:2:3:4:5:6:7:8:9",
        "1:2:3:4:5:6:7:8::",
        "::1:2:3:4:5:6:7:8",
        "1::2::3",
        ":::",
        ":",
        "1:",
        ":1",
        "1:2:3:4:5:6:7",
        "12345::",
        "g::",
        "fe80::1%eth0",
        "[::1]",
        "::ffff:1.2.3",
        "::ffff:1.2.3.4.5",
        "::ffff:01.2.3.4",
        "1:2:3:4:5:6:7:1.2.3.4",
        "1.2.3.4::",
        "::1.2.3.4:1",
        "2001:db8::1/32",
        "::ffff:10.0.0.1/104",
        "1.2.3.4\0",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        sb_cidr c;
        char err[SB_IPALLOW_ERR_MAX] = "";
        size_t len = strlen(bad[i]) + (i == sizeof bad / sizeof bad[0] - 1);
        if (sb_ipallow_parse_entry(bad[i], len, &c, err, sizeof err) != SB_EINVAL)
            fail_msg("accepted \"%s\"", bad[i]);
        assert_true(strlen(err) > 0);
        for (const char *p = err; *p; p++)
            assert_true(*p >= 0x20 && *p < 0x7f);
    }

    /* Host bits: the message offers both readings. */
    char err[SB_IPALLOW_ERR_MAX];
    sb_cidr c;
    assert_int_equal(sb_ipallow_parse_entry("10.0.0.1/8", 10, &c, err, sizeof err), SB_EINVAL);
    assert_non_null(strstr(err, "10.0.0.0/8"));
    assert_non_null(strstr(err, "10.0.0.1/32"));
    assert_int_equal(sb_ipallow_parse_entry("2001:db8::1/32", 14, &c, err, sizeof err), SB_EINVAL);
    assert_non_null(strstr(err, "2001:db8::/32"));
    assert_non_null(strstr(err, "2001:db8::1/128"));
    assert_int_equal(sb_ipallow_parse_entry("10.0.0.0/33", 11, &c, err, sizeof err), SB_EINVAL);
    assert_non_null(strstr(err, "0-32"));

    /* Quoted input is printable and bounded; the message is truncated to the buffer. */
    char evil[300];
    memset(evil, 'A', sizeof evil);
    evil[3] = '\x01';
    evil[4] = '"';
    assert_int_equal(sb_ipallow_parse_entry(evil, sizeof evil, &c, err, sizeof err), SB_EINVAL);
    assert_true(strlen(err) < 100 + 64);
    assert_non_null(strstr(err, "AAA??AAA"));
    assert_non_null(strstr(err, "..."));
    char tiny[8];
    assert_int_equal(sb_ipallow_parse_entry("nope", 4, &c, tiny, sizeof tiny), SB_EINVAL);
    assert_int_equal(strlen(tiny), 7);
}

static void test_prefix_boundaries_v4(void **state)
{
    (void)state;
    const char *e0[] = {"0.0.0.0/0"};
    sb_ipallow *a = list(e0, 1);
    assert_true(m(a, "0.0.0.0"));
    assert_true(m(a, "255.255.255.255"));
    assert_true(m(a, "::ffff:1.2.3.4"));
    assert_false(m(a, "::1"));
    assert_false(m(a, "::"));
    assert_false(m(a, "2001:db8::1"));
    assert_false(m(a, "::1.2.3.4"));
    sb_ipallow_free(a);

    const char *e1[] = {"128.0.0.0/1"};
    a = list(e1, 1);
    assert_true(m(a, "128.0.0.0"));
    assert_true(m(a, "255.255.255.255"));
    assert_false(m(a, "127.255.255.255"));
    assert_false(m(a, "0.0.0.0"));
    sb_ipallow_free(a);

    const char *e31[] = {"10.0.0.2/31"};
    a = list(e31, 1);
    assert_false(m(a, "10.0.0.1"));
    assert_true(m(a, "10.0.0.2"));
    assert_true(m(a, "10.0.0.3"));
    assert_false(m(a, "10.0.0.4"));
    sb_ipallow_free(a);

    const char *e32[] = {"10.0.0.7", "10.0.0.9/32"};
    a = list(e32, 2);
    assert_false(m(a, "10.0.0.6"));
    assert_true(m(a, "10.0.0.7"));
    assert_false(m(a, "10.0.0.8"));
    assert_true(m(a, "10.0.0.9"));
    assert_false(m(a, "10.0.0.10"));
    sb_ipallow_free(a);

    const char *e8[] = {"10.0.0.0/8"};
    a = list(e8, 1);
    assert_false(m(a, "9.255.255.255"));
    assert_true(m(a, "10.0.0.0"));
    assert_true(m(a, "10.255.255.255"));
    assert_false(m(a, "11.0.0.0"));
    sb_ipallow_free(a);
}

static void test_prefix_boundaries_v6(void **state)
{
    (void)state;
    const char *e0[] = {"::/0"};
    sb_ipallow *a = list(e0, 1);
    assert_true(m(a, "::"));
    assert_true(m(a, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"));
    assert_true(m(a, "1.2.3.4"));
    sb_ipallow_free(a);

    const char *e1[] = {"8000::/1"};
    a = list(e1, 1);
    assert_true(m(a, "8000::"));
    assert_true(m(a, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"));
    assert_false(m(a, "7fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"));
    assert_false(m(a, "1.2.3.4"));
    sb_ipallow_free(a);

    /* Around the 64-bit split of the stored form. */
    const char *e63[] = {"2001:db8:0:2::/63"};
    a = list(e63, 1);
    assert_false(m(a, "2001:db8:0:1:ffff:ffff:ffff:ffff"));
    assert_true(m(a, "2001:db8:0:2::"));
    assert_true(m(a, "2001:db8:0:3:ffff:ffff:ffff:ffff"));
    assert_false(m(a, "2001:db8:0:4::"));
    sb_ipallow_free(a);
    const char *e64[] = {"2001:db8:0:1::/64"};
    a = list(e64, 1);
    assert_true(m(a, "2001:db8:0:1:ffff:ffff:ffff:ffff"));
    assert_false(m(a, "2001:db8:0:2::"));
    assert_false(m(a, "2001:db8:0:0:ffff:ffff:ffff:ffff"));
    sb_ipallow_free(a);
    const char *e65[] = {"2001:db8::/65"};
    a = list(e65, 1);
    assert_true(m(a, "2001:db8::7fff:ffff:ffff:ffff"));
    assert_false(m(a, "2001:db8::8000:0:0:0"));
    sb_ipallow_free(a);

    const char *e127[] = {"2001:db8::/127"};
    a = list(e127, 1);
    assert_true(m(a, "2001:db8::"));
    assert_true(m(a, "2001:db8::1"));
    assert_false(m(a, "2001:db8::2"));
    assert_false(m(a, "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff"));
    sb_ipallow_free(a);

    const char *e128[] = {"2001:db8::1", "::1/128"};
    a = list(e128, 2);
    assert_false(m(a, "2001:db8::"));
    assert_true(m(a, "2001:db8::1"));
    assert_false(m(a, "2001:db8::2"));
    assert_true(m(a, "::1"));
    assert_false(m(a, "::"));
    assert_false(m(a, "127.0.0.1"));
    sb_ipallow_free(a);
}

static void test_mapped_both_ways(void **state)
{
    (void)state;
    /* An IPv4 entry matches a peer seen through a dual-stack socket. */
    const char *v4[] = {"10.0.0.0/8", "192.0.2.1"};
    sb_ipallow *a = list(v4, 2);
    assert_true(m(a, "::ffff:10.1.2.3"));
    assert_true(m(a, "::ffff:192.0.2.1"));
    assert_false(m(a, "::ffff:192.0.2.2"));
    assert_false(m(a, "::ffff:11.0.0.1"));
    /* Only the mapped form: compatible and NAT64 embeddings are other addresses. */
    assert_false(m(a, "::10.1.2.3"));
    assert_false(m(a, "64:ff9b::10.1.2.3"));
    assert_false(m(a, "2002:a01:203::1"));
    sb_ipallow_free(a);

    /* A mapped IPv6 entry matches the plain IPv4 peer. */
    const char *v6[] = {"::ffff:10.0.0.0/104", "::ffff:192.0.2.1"};
    a = list(v6, 2);
    assert_true(m(a, "10.1.2.3"));
    assert_true(m(a, "192.0.2.1"));
    assert_false(m(a, "192.0.2.2"));
    assert_true(m(a, "::ffff:10.9.9.9"));
    sb_ipallow_free(a);

    const char *all4[] = {"::ffff:0:0/96"};
    a = list(all4, 1);
    assert_true(m(a, "0.0.0.0"));
    assert_true(m(a, "255.255.255.255"));
    assert_false(m(a, "::1"));
    sb_ipallow_free(a);
}

static void test_lists(void **state)
{
    (void)state;
    /* Empty and NULL: no restriction for match, nothing for contains. */
    sb_ipallow *a = list(NULL, 0);
    assert_int_equal(sb_ipallow_count(a), 0);
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    struct sockaddr_storage v4 = sa("203.0.113.9", 80);
    assert_true(sb_ipallow_match(a, (struct sockaddr *)&v4));
    assert_true(sb_ipallow_match(a, (struct sockaddr *)&un));
    assert_true(sb_ipallow_match(a, NULL));
    assert_true(sb_ipallow_match(NULL, (struct sockaddr *)&v4));
    assert_false(sb_ipallow_contains(a, (struct sockaddr *)&v4));
    assert_false(sb_ipallow_contains(NULL, (struct sockaddr *)&v4));
    sb_ipallow_free(a);
    sb_ipallow_free(NULL);

    /* Non-empty: only IP addresses inside it. */
    const char *e[] = {"203.0.113.0/24", "2001:db8::/32"};
    a = list(e, 2);
    assert_int_equal(sb_ipallow_count(a), 2);
    assert_true(sb_ipallow_match(a, (struct sockaddr *)&v4));
    assert_true(sb_ipallow_contains(a, (struct sockaddr *)&v4));
    assert_false(sb_ipallow_match(a, (struct sockaddr *)&un));
    assert_false(sb_ipallow_match(a, NULL));
    assert_true(m(a, "2001:db8:ffff::1"));
    assert_false(m(a, "2001:db9::1"));
    sb_ipallow_free(a);

    /* At most 256 entries; a bad one is named by position. */
    static char store[SB_IPALLOW_MAX_ENTRIES + 1][24];
    const char *many[SB_IPALLOW_MAX_ENTRIES + 1];
    for (int i = 0; i <= SB_IPALLOW_MAX_ENTRIES; i++) {
        snprintf(store[i], sizeof store[i], "10.%d.%d.0/24", i / 256, i % 256);
        many[i] = store[i];
    }
    a = list(many, SB_IPALLOW_MAX_ENTRIES);
    assert_int_equal(sb_ipallow_count(a), SB_IPALLOW_MAX_ENTRIES);
    assert_true(m(a, "10.0.255.77"));
    assert_false(m(a, "10.1.0.1"));
    sb_ipallow_free(a);
    char err[SB_IPALLOW_ERR_MAX];
    a = (sb_ipallow *)1;
    assert_int_equal(sb_ipallow_new(many, SB_IPALLOW_MAX_ENTRIES + 1, &a, err, sizeof err),
                     SB_EMSGSIZE);
    assert_null(a);
    assert_non_null(strstr(err, "256"));
    const char *withbad[] = {"10.0.0.0/8", "10.0.0.1/8", "::1"};
    assert_int_equal(sb_ipallow_new(withbad, 3, &a, err, sizeof err), SB_EINVAL);
    assert_null(a);
    assert_non_null(strstr(err, "entry 2: \"10.0.0.1/8\""));

    /* From parsed entries: checked again. */
    sb_cidr c[2];
    assert_int_equal(sb_ipallow_parse_entry("10.0.0.0/8", 10, &c[0], NULL, 0), 0);
    c[1] = c[0];
    c[1].prefix = 129;
    assert_int_equal(sb_ipallow_new_cidrs(c, 2, &a), SB_EINVAL);
    c[1].prefix = 104;
    c[1].addr[15] = 1;
    assert_int_equal(sb_ipallow_new_cidrs(c, 2, &a), SB_EINVAL);
    assert_null(a);
    assert_int_equal(sb_ipallow_new_cidrs(c, 1, &a), 0);
    assert_true(m(a, "10.2.3.4"));
    sb_ipallow_free(a);
}

/* ---- X-Forwarded-For ------------------------------------------------------------------ */

static const char *const proxies[] = {"10.0.0.0/8", "2001:db8:ffff::/48", "::1"};

/* Runs the walk for a peer and header; returns the code, and the answer in *got. */
static int walk(const char *peer, const char *xff, const sb_ipallow *trusted, const char **got)
{
    struct sockaddr_storage p = sa(peer, 5555), out;
    memset(&out, 0x77, sizeof out);
    int rc =
        sb_ipallow_client_addr((struct sockaddr *)&p, xff, xff ? strlen(xff) : 0, trusted, &out);
    *got = text_of(&out);
    if (rc == 0 || rc == SB_EPROTO) {
        /* The peer, unchanged, port and all. */
        size_t n =
            p.ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
        assert_memory_equal(&out, &p, n);
    } else if (rc == 1) {
        if (out.ss_family == AF_INET)
            assert_int_equal(((struct sockaddr_in *)&out)->sin_port, 0);
        else
            assert_int_equal(((struct sockaddr_in6 *)&out)->sin6_port, 0);
    }
    return rc;
}

static void test_xff_untrusted_peer(void **state)
{
    (void)state;
    sb_ipallow *t = list(proxies, 3);
    const char *got;
    /* A client that sends the header itself gets nowhere. */
    assert_int_equal(walk("203.0.113.66", "10.0.0.1", t, &got), 0);
    assert_string_equal(got, "4 203.0.113.66");
    assert_int_equal(walk("203.0.113.66", "198.51.100.1, 10.0.0.2", t, &got), 0);
    assert_string_equal(got, "4 203.0.113.66");
    assert_int_equal(walk("2001:db8:1::5", "garbage", t, &got), 0);
    assert_string_equal(got, "6 2001:db8:1::5");
    /* No trusted proxies at all: nobody is trusted, however the list is empty. */
    assert_int_equal(walk("10.0.0.1", "198.51.100.1", NULL, &got), 0);
    assert_string_equal(got, "4 10.0.0.1");
    sb_ipallow *none = list(NULL, 0);
    assert_int_equal(walk("10.0.0.1", "198.51.100.1", none, &got), 0);
    assert_string_equal(got, "4 10.0.0.1");
    sb_ipallow_free(none);
    sb_ipallow_free(t);
}

static void test_xff_trusted_chain(void **state)
{
    (void)state;
    sb_ipallow *t = list(proxies, 3);
    const char *got;
    assert_int_equal(walk("10.0.0.1", "203.0.113.5", t, &got), 1);
    assert_string_equal(got, "4 203.0.113.5");
    /* Rightmost untrusted wins; what the client wrote further left is ignored. */
    assert_int_equal(walk("10.0.0.1", "198.51.100.7, 203.0.113.5, 10.0.0.2, 10.0.0.3", t, &got), 1);
    assert_string_equal(got, "4 203.0.113.5");
    /* Spoofing: the client claims to be one of our proxies; the proxy appended the truth. */
    assert_int_equal(walk("10.0.0.1", "10.0.0.9, 203.0.113.5", t, &got), 1);
    assert_string_equal(got, "4 203.0.113.5");
    assert_int_equal(walk("10.0.0.1", "::1,203.0.113.5", t, &got), 1);
    assert_string_equal(got, "4 203.0.113.5");
    /* Everyone in the chain is trusted: the leftmost is the client. */
    assert_int_equal(walk("10.0.0.1", "10.1.1.1, 10.0.0.2", t, &got), 1);
    assert_string_equal(got, "4 10.1.1.1");
    /* IPv6 peers and addresses; a mapped peer is trusted by the IPv4 entry. */
    assert_int_equal(walk("::1", "2001:db8:1::42, 2001:db8:ffff::3", t, &got), 1);
    assert_string_equal(got, "6 2001:db8:1::42");
    assert_int_equal(walk("::ffff:10.0.0.1", "203.0.113.5", t, &got), 1);
    assert_string_equal(got, "4 203.0.113.5");
    assert_int_equal(walk("10.0.0.1", "::ffff:203.0.113.5", t, &got), 1);
    assert_string_equal(got, "4 203.0.113.5");
    /* Ports, as some proxies write them. */
    assert_int_equal(walk("10.0.0.1", "203.0.113.5:4711", t, &got), 1);
    assert_string_equal(got, "4 203.0.113.5");
    assert_int_equal(walk("10.0.0.1", "[2001:db8:1::42]:443, 10.0.0.2:80", t, &got), 1);
    assert_string_equal(got, "6 2001:db8:1::42");
    assert_int_equal(walk("10.0.0.1", "[2001:db8:1::42]", t, &got), 1);
    assert_string_equal(got, "6 2001:db8:1::42");
    /* List syntax: OWS and empty elements. */
    assert_int_equal(walk("10.0.0.1", " \t203.0.113.5 \t,, ,", t, &got), 1);
    assert_string_equal(got, "4 203.0.113.5");
    assert_int_equal(walk("10.0.0.1", "203.0.113.5,10.0.0.2", t, &got), 1);
    assert_string_equal(got, "4 203.0.113.5");
    /* No elements: the peer. */
    assert_int_equal(walk("10.0.0.1", "", t, &got), 0);
    assert_int_equal(walk("10.0.0.1", NULL, t, &got), 0);
    assert_int_equal(walk("10.0.0.1", " , ,\t", t, &got), 0);
    assert_string_equal(got, "4 10.0.0.1");
    sb_ipallow_free(t);
}

static void test_xff_garbage(void **state)
{
    (void)state;
    sb_ipallow *t = list(proxies, 3);
    const char *got;
    const char *bad[] = {
        "garbage",
        "203.0.113.5, garbage",
        "unknown",
        "1.2.3.4, _hidden, 10.0.0.2",
        "203.0.113.5 10.0.0.2",
        "203.0.113.5;10.0.0.2",
        "203.0.113.5:",
        "203.0.113.5:99999",
        "203.0.113.5:80:80",
        "[2001:db8::5",
        "[2001:db8::5]:",
        "[2001:db8::5]x",
        "[203.0.113.5]",
        "2001:db8::5]",
        "fe80::1%eth0",
        "010.0.0.1",
        "10.0.0.2/8",
        "\"203.0.113.5\"",
        "for=203.0.113.5",
        "203.0.113.5, 2001:db8:ffff::1:2:3:4:5:6:7:8:9:0:1:2:3:4:5:6:7:8:9:0",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = walk("10.0.0.1", bad[i], t, &got);
        if (rc != SB_EPROTO)
            fail_msg("\"%s\": %d %s", bad[i], rc, got);
        assert_string_equal(got, "4 10.0.0.1");
    }
    /* Garbage left of the client was written by the client and is not our concern. */
    assert_int_equal(walk("10.0.0.1", "garbage, 203.0.113.5", t, &got), 1);
    assert_string_equal(got, "4 203.0.113.5");
    assert_int_equal(walk("10.0.0.1", "\x01\xff, 203.0.113.5, 10.0.0.2", t, &got), 1);
    assert_string_equal(got, "4 203.0.113.5");
    /* An embedded NUL is a malformed element, not an end of string. */
    struct sockaddr_storage p = sa("10.0.0.1", 1), out;
    assert_int_equal(sb_ipallow_client_addr((struct sockaddr *)&p, "203.0.113.5\0", 12, t, &out),
                     SB_EPROTO);
    /* A peer that is not IP. */
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    memset(&out, 0x55, sizeof out);
    assert_int_equal(sb_ipallow_client_addr((struct sockaddr *)&un, "1.2.3.4", 7, t, &out),
                     SB_EINVAL);
    assert_int_equal(out.ss_family, 0);
    assert_int_equal(sb_ipallow_client_addr(NULL, "1.2.3.4", 7, t, &out), SB_EINVAL);
    sb_ipallow_free(t);
}

static void test_xff_hop_limit(void **state)
{
    (void)state;
    sb_ipallow *t = list(proxies, 3);
    char xff[2048];
    const char *got;
    /* Exactly SB_IPALLOW_MAX_HOPS elements, all trusted: the leftmost. */
    size_t n = 0;
    for (int i = 0; i < SB_IPALLOW_MAX_HOPS; i++)
        n += (size_t)snprintf(xff + n, sizeof xff - n, "%s10.0.0.%d", i ? "," : "", i + 1);
    assert_int_equal(walk("10.0.0.1", xff, t, &got), 1);
    assert_string_equal(got, "4 10.0.0.1");
    /* The client at the limit: itself and SB_IPALLOW_MAX_HOPS − 1 proxies. */
    char more[2100];
    snprintf(more, sizeof more, "9.9.9.9,%s", strchr(xff, ',') + 1);
    assert_int_equal(walk("10.0.0.1", more, t, &got), 1);
    assert_string_equal(got, "4 9.9.9.9");
    /* One element more than the limit, whatever it is. */
    snprintf(more, sizeof more, "9.9.9.9,%s", xff);
    assert_int_equal(walk("10.0.0.1", more, t, &got), SB_EPROTO);
    assert_string_equal(got, "4 10.0.0.1");
    sb_ipallow_free(t);
}

/* An allocator that fails the N-th allocation (counting from 1). */
static int fail_at, alloc_count;

static void *failing_malloc(size_t n, void *ud)
{
    (void)ud;
    if (++alloc_count == fail_at)
        return NULL;
    return malloc(n);
}

static void *failing_realloc(void *p, size_t n, void *ud)
{
    (void)ud;
    if (++alloc_count == fail_at)
        return NULL;
    return realloc(p, n);
}

static void plain_free(void *p, void *ud)
{
    (void)ud;
    free(p);
}

static void test_alloc_failure(void **state)
{
    (void)state;
    static const sb_allocator failing = {failing_malloc, failing_realloc, plain_free, NULL};
    sb_alloc_set(&failing);
    int n;
    for (n = 1;; n++) {
        fail_at = n;
        alloc_count = 0;
        sb_ipallow *a = NULL;
        int rc = sb_ipallow_new(proxies, 3, &a, NULL, 0);
        if (rc == 0) {
            sb_ipallow_free(a);
            break;
        }
        assert_int_equal(rc, SB_ENOMEM);
        assert_null(a);
    }
    sb_alloc_set(NULL);
    assert_int_equal(n, 3);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_accepts),        cmocka_unit_test(test_parse_rejects),
        cmocka_unit_test(test_prefix_boundaries_v4), cmocka_unit_test(test_prefix_boundaries_v6),
        cmocka_unit_test(test_mapped_both_ways),     cmocka_unit_test(test_lists),
        cmocka_unit_test(test_xff_untrusted_peer),   cmocka_unit_test(test_xff_trusted_chain),
        cmocka_unit_test(test_xff_garbage),          cmocka_unit_test(test_xff_hop_limit),
        cmocka_unit_test(test_alloc_failure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
