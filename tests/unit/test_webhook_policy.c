/* Webhook policy: Standard Webhooks signatures (the published test vector), secrets, the
 * retry schedule and delays, Retry-After, the SSRF address classifier, endpoint URLs. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "events/webhook_policy.h"
#include "switchboard/error.h"

/* ---- signatures ------------------------------------------------------------------------- */

static void test_sign_vector(void **state)
{
    (void)state;
    /* The Standard Webhooks specification's test vector. */
    unsigned char key[SB_WEBHOOK_KEY_MAX];
    int kl = sb_webhook_secret_decode("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", key);
    assert_int_equal(kl, 24);
    const char body[] = "{\"test\": 2432232314}";
    char sig[SB_WEBHOOK_SIG_MAX];
    assert_int_equal(sb_webhook_sign(key, (size_t)kl, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330,
                                     body, strlen(body), sig),
                     0);
    assert_string_equal(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    /* the prefix is optional; any change of id, time or body changes it */
    assert_int_equal(sb_webhook_secret_decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", key), 24);
    char other[SB_WEBHOOK_SIG_MAX];
    sb_webhook_sign(key, 24, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265331, body, strlen(body), other);
    assert_string_not_equal(sig, other);
    sb_webhook_sign(key, 24, "msg_p5jXN8AQM9LWM0D4loKWxJeK", 1614265330, body, strlen(body), other);
    assert_string_not_equal(sig, other);
    sb_webhook_sign(key, 24, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body, strlen(body) - 1,
                    other);
    assert_string_not_equal(sig, other);
}

static void test_signer(void **state)
{
    (void)state;
    unsigned char key[SB_WEBHOOK_KEY_MAX], key2[SB_WEBHOOK_KEY_MAX];
    int kl = sb_webhook_secret_decode("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", key);
    assert_int_equal(kl, 24);
    int kl2 = sb_webhook_secret_decode("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD", key2);
    assert_true(kl2 > 0);
    sb_webhook_signer *s = NULL, *s2 = NULL;
    assert_int_equal(sb_webhook_signer_new(key, (size_t)kl, &s), 0);
    assert_int_equal(sb_webhook_signer_new(key2, (size_t)kl2, &s2), 0);
    const char body[] = "{\"test\": 2432232314}";
    char sig[SB_WEBHOOK_SIG_MAX], want[SB_WEBHOOK_SIG_MAX];
    /* the specification's vector, then the same signer again and again (each signature
     * restarts from the key, not from the last message), interleaved with another key */
    for (int i = 0; i < 3; i++) {
        assert_int_equal(sb_webhook_signer_sign(s, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body,
                                                strlen(body), sig),
                         0);
        assert_string_equal(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert_int_equal(sb_webhook_signer_sign(s2, "msg_x", 1614265330 + i, body, i, sig), 0);
        assert_int_equal(
            sb_webhook_sign(key2, (size_t)kl2, "msg_x", 1614265330 + i, body, (size_t)i, want), 0);
        assert_string_equal(sig, want);
    }
    /* a negative time is written with its sign: checked against OpenSSL's one-shot HMAC */
    assert_int_equal(sb_webhook_signer_sign(s, "msg_y", -5, body, strlen(body), sig), 0);
    char msg[64];
    int ml = snprintf(msg, sizeof msg, "msg_y.-5.%s", body);
    unsigned char mac[32];
    unsigned int maclen = 0;
    assert_non_null(
        HMAC(EVP_sha256(), key, kl, (const unsigned char *)msg, (size_t)ml, mac, &maclen));
    memcpy(want, "v1,", 3);
    EVP_EncodeBlock((unsigned char *)want + 3, mac, (int)maclen);
    assert_string_equal(sig, want);
    sb_webhook_signer_free(s);
    sb_webhook_signer_free(s2);
    sb_webhook_signer_free(NULL);
    assert_int_equal(sb_webhook_signer_new(key, 0, &s), SB_EINVAL);
    assert_null(s);
}

/* Verifies a "v1a,<base64>" signature of msg with a "whpk_" key through OpenSSL. */
static bool v1a_verifies(const char *public_key, const char *msg, const char *sig)
{
    unsigned char pub[33], raw[66];
    if (strncmp(public_key, "whpk_", 5) != 0 || strncmp(sig, "v1a,", 4) != 0 ||
        strlen(sig + 4) != 88 ||
        EVP_DecodeBlock(pub, (const unsigned char *)public_key + 5, 44) != 33 ||
        EVP_DecodeBlock(raw, (const unsigned char *)sig + 4, 88) != 66)
        return false;
    EVP_PKEY *k = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, pub, 32);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    bool ok = k && md && EVP_DigestVerifyInit(md, NULL, NULL, NULL, k) == 1 &&
              EVP_DigestVerify(md, raw, 64, (const unsigned char *)msg, strlen(msg)) == 1;
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(k);
    return ok;
}

static void test_v1a(void **state)
{
    (void)state;
    /* RFC 8032 7.1 TEST 1: the public key of this private key */
    static const unsigned char seed[32] = {0x9d, 0x61, 0xb1, 0x9d, 0xef, 0xfd, 0x5a, 0x60,
                                           0xba, 0x84, 0x4a, 0xf4, 0x92, 0xec, 0x2c, 0xc4,
                                           0x44, 0x49, 0xc5, 0x69, 0x7b, 0x32, 0x69, 0x19,
                                           0x70, 0x3b, 0xac, 0x03, 0x1c, 0xae, 0x7f, 0x60};
    static const unsigned char want_pub[32] = {0xd7, 0x5a, 0x98, 0x01, 0x82, 0xb1, 0x0a, 0xb7,
                                               0xd5, 0x4b, 0xfe, 0xd3, 0xc9, 0x64, 0x07, 0x3a,
                                               0x0e, 0xe1, 0x72, 0xf3, 0xda, 0xa6, 0x23, 0x25,
                                               0xaf, 0x02, 0x1a, 0x68, 0xf7, 0x07, 0x51, 0x1a};
    char secret[SB_WEBHOOK_SECRET_MAX] = "whsk_", pub[SB_WEBHOOK_PUBLIC_KEY_MAX];
    char want[SB_WEBHOOK_PUBLIC_KEY_MAX] = "whpk_";
    EVP_EncodeBlock((unsigned char *)secret + 5, seed, 32);
    EVP_EncodeBlock((unsigned char *)want + 5, want_pub, 32);
    assert_int_equal(sb_webhook_public_key(secret, pub), 0);
    assert_string_equal(pub, want);

    /* a signer from the secret signs "id.timestamp.body"; the signature verifies with the
     * public key, and not for another message */
    sb_webhook_signer *s = NULL;
    assert_int_equal(sb_webhook_signer_from_secret(secret, &s), 0);
    char sig[SB_WEBHOOK_SIG_MAX];
    const char body[] = "{\"test\": 2432232314}";
    assert_int_equal(sb_webhook_signer_sign(s, "msg_1", 1614265330, body, strlen(body), sig), 0);
    assert_int_equal(strlen(sig), 4 + 88);
    assert_true(v1a_verifies(pub, "msg_1.1614265330.{\"test\": 2432232314}", sig));
    assert_false(v1a_verifies(pub, "msg_1.1614265331.{\"test\": 2432232314}", sig));
    /* a body longer than the stack buffer */
    static char big[5000];
    memset(big, 'x', sizeof big - 1);
    assert_int_equal(sb_webhook_signer_sign(s, "m", -7, big, strlen(big), sig), 0);
    char *msg = malloc(strlen(big) + 8);
    assert_non_null(msg);
    snprintf(msg, strlen(big) + 8, "m.-7.%s", big);
    assert_true(v1a_verifies(pub, msg, sig));
    free(msg);
    sb_webhook_signer_free(s);

    /* new pairs: distinct, consistent, usable */
    char s1[SB_WEBHOOK_SECRET_MAX] = {0}, p1[SB_WEBHOOK_PUBLIC_KEY_MAX] = {0};
    char s2[SB_WEBHOOK_SECRET_MAX] = {0}, p2[SB_WEBHOOK_PUBLIC_KEY_MAX] = {0};
    assert_int_equal(sb_webhook_keypair_new(s1, p1), 0);
    assert_int_equal(sb_webhook_keypair_new(s2, p2), 0);
    assert_int_equal(strlen(s1), 5 + 44);
    assert_int_equal(strlen(p1), 5 + 44);
    assert_string_not_equal(s1, s2);
    assert_string_not_equal(p1, p2);
    assert_int_equal(sb_webhook_public_key(s1, pub), 0);
    assert_string_equal(pub, p1);
    assert_int_equal(sb_webhook_signer_from_secret(s1, &s), 0);
    assert_int_equal(sb_webhook_signer_sign(s, "a", 1, "b", 1, sig), 0);
    assert_true(v1a_verifies(p1, "a.1.b", sig));
    assert_false(v1a_verifies(p2, "a.1.b", sig));
    sb_webhook_signer_free(s);

    /* whsec_ still makes an HMAC signer; anything else is refused */
    assert_int_equal(sb_webhook_signer_from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", &s),
                     0);
    assert_int_equal(sb_webhook_signer_sign(s, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body,
                                            strlen(body), sig),
                     0);
    assert_string_equal(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    sb_webhook_signer_free(s);
    const char *bad[] = {"whsk_",
                         "whsk_short",
                         "whsk_"
                         "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                         "whsk_!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!",
                         "whsec_",
                         "whsec_@@@@"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        s = (sb_webhook_signer *)1;
        assert_int_equal(sb_webhook_signer_from_secret(bad[i], &s), SB_EINVAL);
        assert_null(s);
    }
    assert_int_equal(sb_webhook_public_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", pub),
                     SB_EINVAL);
}

static void test_secrets(void **state)
{
    (void)state;
    char a[SB_WEBHOOK_SECRET_MAX], b[SB_WEBHOOK_SECRET_MAX];
    assert_int_equal(sb_webhook_secret_new(a), 0);
    assert_int_equal(sb_webhook_secret_new(b), 0);
    assert_int_equal(strlen(a), 6 + 44);
    assert_memory_equal(a, "whsec_", 6);
    assert_string_not_equal(a, b);
    unsigned char key[SB_WEBHOOK_KEY_MAX];
    assert_int_equal(sb_webhook_secret_decode(a, key), 32);
    assert_int_equal(sb_webhook_secret_decode("whsec_", key), SB_EINVAL);
    assert_int_equal(sb_webhook_secret_decode("whsec_abc", key),
                     SB_EINVAL); /* not a multiple of 4 */
    assert_int_equal(sb_webhook_secret_decode("whsec_ab!d", key), SB_EINVAL); /* not base64 */
    char big[200] = "whsec_";
    memset(big + 6, 'A', 100);
    assert_int_equal(sb_webhook_secret_decode(big, key), SB_EINVAL); /* too long */
}

/* ---- schedule, delays, Retry-After -------------------------------------------------------- */

static void test_durations(void **state)
{
    (void)state;
    int64_t ms;
#define DUR(s, want)                                                                               \
    do {                                                                                           \
        assert_int_equal(sb_webhook_duration_parse(s, strlen(s), &ms), 0);                         \
        assert_int_equal(ms, want);                                                                \
    } while (0)
    DUR("0", 0);
    DUR("250", 250);
    DUR("200ms", 200);
    DUR("5s", 5000);
    DUR("5m", 300000);
    DUR("2h", 7200000);
    DUR("1d", 86400000);
    DUR("7d", 7 * 86400000LL);
#undef DUR
    const char *bad[] = {"",     "s",  "5x", "5 s", "-1", "1.5s", "8d", "99999999999999999999",
                         "5sec", "ms", " 5s"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_int_equal(sb_webhook_duration_parse(bad[i], strlen(bad[i]), &ms), SB_EINVAL);
}

static void test_schedule(void **state)
{
    (void)state;
    int64_t s[SB_WEBHOOK_SCHEDULE_MAX];
    char why[128];
    assert_int_equal(sb_webhook_schedule_parse("0,5s,5m,30m,2h,5h,10h,10h", s, 32, why, sizeof why),
                     8);
    assert_int_equal(s[0], 0);
    assert_int_equal(s[1], 5000);
    assert_int_equal(s[2], 300000);
    assert_int_equal(s[7], 36000000);
    assert_int_equal(sb_webhook_schedule_parse(" 0 , 200ms,400ms ", s, 32, why, sizeof why), 3);
    assert_int_equal(s[1], 200);
    assert_int_equal(sb_webhook_schedule_parse("0", s, 32, why, sizeof why), 1);
    assert_int_equal(sb_webhook_schedule_parse("", s, 32, why, sizeof why), SB_EINVAL);
    assert_int_equal(sb_webhook_schedule_parse("0,,5s", s, 32, why, sizeof why), SB_EINVAL);
    assert_non_null(strstr(why, "entry 2"));
    assert_int_equal(sb_webhook_schedule_parse("0,5s,", s, 32, why, sizeof why), SB_EINVAL);
    assert_int_equal(sb_webhook_schedule_parse("0,1,2,3", s, 3, why, sizeof why), SB_EINVAL);
    assert_non_null(strstr(why, "more than 3"));
}

static void test_next_delay(void **state)
{
    (void)state;
    const int64_t s[] = {0, 1000, 60000};
    /* after attempt 1 → s[1] with jitter in [0.8, 1.2) */
    for (uint32_t r = 0; r < 0xffffffffu - 0x01000000u; r += 0x01000000u) {
        int64_t d = sb_webhook_next_delay(s, 3, 1, -1, r);
        assert_true(d >= 800 && d < 1200);
    }
    assert_int_equal(sb_webhook_next_delay(s, 3, 1, -1, 0), 800);
    assert_true(sb_webhook_next_delay(s, 3, 1, -1, 0xffffffffu) >= 1199);
    /* Retry-After wins when it asks for more, not when it asks for less */
    assert_int_equal(sb_webhook_next_delay(s, 3, 1, 5000, 0), 5000);
    assert_int_equal(sb_webhook_next_delay(s, 3, 2, 5000, 0), 48000);
    /* the schedule is exhausted after its last entry: dead */
    assert_int_equal(sb_webhook_next_delay(s, 3, 3, -1, 0), -1);
    assert_int_equal(sb_webhook_next_delay(s, 3, 3, 1000, 0), -1);
    assert_int_equal(sb_webhook_next_delay(s, 1, 1, -1, 0), -1);
    assert_int_equal(sb_webhook_next_delay(s, 3, 0, -1, 0), -1);
}

static void test_retry_after(void **state)
{
    (void)state;
    int64_t d;
    const int64_t now = 784111777000LL; /* Sun, 06 Nov 1994 08:49:37 GMT */
#define RA(s, want)                                                                                \
    do {                                                                                           \
        assert_int_equal(sb_webhook_retry_after_parse(s, strlen(s), now, &d), 0);                  \
        assert_int_equal(d, want);                                                                 \
    } while (0)
    RA("120", 120000);
    RA(" 1 \r\n", 1000);
    RA("0", 0);
    RA("99999999999999999999", 7 * 86400000LL);  /* clamped */
    RA("Sun, 06 Nov 1994 08:49:40 GMT", 3000);   /* IMF-fixdate */
    RA("Sunday, 06-Nov-94 08:50:37 GMT", 60000); /* RFC 850 */
    RA("Sun Nov  6 08:49:47 1994", 10000);       /* asctime */
    RA("Sat, 05 Nov 1994 08:49:37 GMT", 0);      /* past */
#undef RA
    const char *bad[] = {"", "  ", "-1", "1.5", "12abc", "soon", "\x01", "0x10", "+5"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_int_equal(sb_webhook_retry_after_parse(bad[i], strlen(bad[i]), now, &d), SB_EINVAL);
    char longv[300];
    memset(longv, '1', sizeof longv);
    assert_int_equal(sb_webhook_retry_after_parse(longv, sizeof longv, now, &d), SB_EINVAL);
}

/* ---- SSRF classifier ------------------------------------------------------------------------ */

static const char *classify(const char *ip)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    if (strchr(ip, ':')) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6;
        assert_int_equal(inet_pton(AF_INET6, ip, &a->sin6_addr), 1);
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        assert_int_equal(inet_pton(AF_INET, ip, &a->sin_addr), 1);
    }
    return sb_webhook_addr_refused((struct sockaddr *)&ss);
}

static void test_ssrf(void **state)
{
    (void)state;
    static const struct {
        const char *ip, *why;
    } cases[] = {
        {"127.0.0.1", "loopback"},
        {"127.255.255.254", "loopback"},
        {"10.0.0.1", "private"},
        {"172.16.0.1", "private"},
        {"172.31.255.255", "private"},
        {"192.168.1.1", "private"},
        {"169.254.169.254", "metadata"},
        {"169.254.1.1", "link-local"},
        {"100.64.0.1", "shared (CGNAT)"},
        {"100.127.255.255", "shared (CGNAT)"},
        {"0.0.0.0", "unspecified"},
        {"0.1.2.3", "unspecified"},
        {"224.0.0.1", "multicast"},
        {"239.255.255.250", "multicast"},
        {"255.255.255.255", "broadcast"},
        {"240.0.0.1", "reserved"},
        {"192.0.2.1", "reserved"},
        {"198.18.0.1", "reserved"},
        {"::", "unspecified"},
        {"::1", "loopback"},
        {"fd00:ec2::254", "metadata"},
        {"fd12:3456::1", "private"},
        {"fc00::1", "private"},
        {"fe80::1", "link-local"},
        {"febf::1", "link-local"},
        {"fec0::1", "private"},
        {"ff02::1", "multicast"},
        {"::ffff:127.0.0.1", "loopback"},
        {"::ffff:10.0.0.1", "private"},
        {"::ffff:169.254.169.254", "metadata"},
        {"64:ff9b::a9fe:a9fe", "metadata"},
        {"64:ff9b::7f00:1", "loopback"},
        {"::127.0.0.1", "loopback"},
        {"::8.8.8.8", "reserved"},
        {"2002:7f00:1::", "loopback"},
        {"2002:c0a8:101::1", "private"},
        {"2001:db8::1", "reserved"},
        {"100::1", "reserved"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const char *why = classify(cases[i].ip);
        if (!why || strcmp(why, cases[i].why) != 0)
            fail_msg("%s: got %s, want %s", cases[i].ip, why ? why : "(allowed)", cases[i].why);
    }
    const char *allowed[] = {"8.8.8.8",         "1.1.1.1",          "172.15.255.255",
                             "172.32.0.1",      "100.63.255.255",   "100.128.0.1",
                             "169.253.255.255", "11.0.0.1",         "2606:4700::1111",
                             "::ffff:8.8.8.8",  "64:ff9b::808:808", "2002:808:808::"};
    for (size_t i = 0; i < sizeof allowed / sizeof *allowed; i++) {
        const char *why = classify(allowed[i]);
        if (why)
            fail_msg("%s refused as %s", allowed[i], why);
    }
    struct sockaddr un = {.sa_family = AF_UNIX};
    assert_non_null(sb_webhook_addr_refused(&un));
    assert_non_null(sb_webhook_addr_refused(NULL));
}

static void test_urls(void **state)
{
    (void)state;
    char why[160];
    assert_true(sb_webhook_url_ok("https://example.com/hook?x=1", false, why, sizeof why));
    assert_true(sb_webhook_url_ok("https://[2001:db8::1]:8443/h", false, why, sizeof why));
    assert_false(sb_webhook_url_ok("http://example.com/", false, why, sizeof why));
    assert_non_null(strstr(why, "allow_http"));
    assert_true(sb_webhook_url_ok("http://example.com/", true, why, sizeof why));
    assert_false(sb_webhook_url_ok("ftp://example.com/", true, why, sizeof why));
    assert_false(sb_webhook_url_ok("https://u:p@example.com/", true, why, sizeof why));
    assert_non_null(strstr(why, "credentials"));
    assert_false(sb_webhook_url_ok("https://u@example.com/", true, why, sizeof why));
    assert_false(sb_webhook_url_ok("https://example.com/#frag", true, why, sizeof why));
    assert_false(sb_webhook_url_ok("example.com/hook", true, why, sizeof why));
    assert_false(sb_webhook_url_ok("https://", true, why, sizeof why));
    assert_false(sb_webhook_url_ok("https://exa mple.com/", true, why, sizeof why));
    assert_false(sb_webhook_url_ok("", true, why, sizeof why));
    char longurl[2100] = "https://example.com/";
    memset(longurl + 20, 'a', sizeof longurl - 21);
    longurl[sizeof longurl - 1] = '\0';
    assert_false(sb_webhook_url_ok(longurl, true, why, sizeof why));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sign_vector), cmocka_unit_test(test_signer),
        cmocka_unit_test(test_v1a),         cmocka_unit_test(test_secrets),
        cmocka_unit_test(test_durations),   cmocka_unit_test(test_schedule),
        cmocka_unit_test(test_next_delay),  cmocka_unit_test(test_retry_after),
        cmocka_unit_test(test_ssrf),        cmocka_unit_test(test_urls),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
