/* sb_sha256: FIPS 180-2 vectors, agreement with OpenSSL's one-shot EVP_Digest for every length
 * up to a few blocks, the per-thread context reused across calls and threads. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/evp.h>

#include "core/sha256.h"

static void hex(const unsigned char d[32], char out[65])
{
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}

static void test_vectors(void **state)
{
    (void)state;
    static const struct {
        const char *in, *want;
    } v[] = {
        {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
        {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
        {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
         "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        unsigned char d[32];
        char h[65];
        assert_int_equal(sb_sha256(v[i].in, strlen(v[i].in), d), 0);
        hex(d, h);
        assert_string_equal(h, v[i].want);
    }
}

/* Every length 0..600 of a pattern: the same as EVP_Digest; returns the mismatches. */
static int compare_lengths(unsigned seed)
{
    unsigned char buf[600];
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (unsigned char)(i * 131 + seed);
    int bad = 0;
    for (size_t len = 0; len <= sizeof buf; len++) {
        unsigned char a[32], b[32];
        unsigned int n = 0;
        if (sb_sha256(buf, len, a) != 0 || EVP_Digest(buf, len, b, &n, EVP_sha256(), NULL) != 1 ||
            memcmp(a, b, 32) != 0)
            bad++;
    }
    return bad;
}

static void test_matches_openssl(void **state)
{
    (void)state;
    assert_int_equal(compare_lengths(7), 0);
    assert_int_equal(compare_lengths(8), 0); /* the context is reused: no state carried over */
}

static void *worker(void *arg)
{
    int *bad = arg;
    for (unsigned r = 0; r < 20; r++)
        *bad += compare_lengths(r);
    return NULL;
}

static void test_threads(void **state)
{
    (void)state;
    pthread_t t[4];
    int bad[4] = {0};
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&t[i], NULL, worker, &bad[i]), 0);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(pthread_join(t[i], NULL), 0);
        assert_int_equal(bad[i], 0);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vectors),
        cmocka_unit_test(test_matches_openssl),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
