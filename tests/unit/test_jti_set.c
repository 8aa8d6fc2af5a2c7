/* The revoked-token set: bounded, expired entries swept out when room is needed, the later
 * expiry wins, safe from several threads. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdio.h>

#include "auth/jti_set.h"
#include "switchboard/error.h"

static void test_add_contains(void **state)
{
    (void)state;
    sb_jti_set *s;
    assert_int_equal(sb_jti_set_new(4, &s), 0);
    assert_false(sb_jti_set_contains(s, "at_1"));
    assert_int_equal(sb_jti_set_add(s, "at_1", 200, 100), 0);
    assert_true(sb_jti_set_contains(s, "at_1"));
    assert_false(sb_jti_set_contains(s, "at_2"));
    /* Already expired: nothing to remember. */
    assert_int_equal(sb_jti_set_add(s, "at_old", 100, 100), 0);
    assert_false(sb_jti_set_contains(s, "at_old"));
    /* Again, later: one entry, the later expiry. */
    assert_int_equal(sb_jti_set_add(s, "at_1", 300, 100), 0);
    assert_int_equal(sb_jti_set_size(s), 1);
    sb_jti_set_free(s);
    assert_int_equal(sb_jti_set_new(0, &s), SB_ERANGE);
}

static void test_bounded_and_swept(void **state)
{
    (void)state;
    sb_jti_set *s;
    assert_int_equal(sb_jti_set_new(3, &s), 0);
    assert_int_equal(sb_jti_set_add(s, "a", 150, 100), 0);
    assert_int_equal(sb_jti_set_add(s, "b", 500, 100), 0);
    assert_int_equal(sb_jti_set_add(s, "c", 500, 100), 0);
    /* Full of live entries: refused, and nothing already there is lost. */
    assert_int_equal(sb_jti_set_add(s, "d", 500, 120), SB_EAGAIN);
    assert_false(sb_jti_set_contains(s, "d"));
    assert_true(sb_jti_set_contains(s, "a"));
    /* Once "a" has expired, its room is reused; the live ones stay. */
    assert_int_equal(sb_jti_set_add(s, "d", 500, 150), 0);
    assert_false(sb_jti_set_contains(s, "a"));
    assert_true(sb_jti_set_contains(s, "b") && sb_jti_set_contains(s, "c") &&
                sb_jti_set_contains(s, "d"));
    assert_int_equal(sb_jti_set_size(s), 3);
    /* The later expiry of an existing entry keeps it through a sweep. */
    assert_int_equal(sb_jti_set_add(s, "b", 900, 150), 0);
    assert_int_equal(sb_jti_set_add(s, "e", 1000, 600), 0); /* c and d expired at 500 */
    assert_true(sb_jti_set_contains(s, "b"));
    assert_false(sb_jti_set_contains(s, "c"));
    assert_int_equal(sb_jti_set_size(s), 2);
    sb_jti_set_free(s);
}

static void *adder(void *arg)
{
    sb_jti_set *s = arg;
    static _Atomic int next = 0;
    for (int i = 0; i < 500; i++) {
        char id[32];
        snprintf(id, sizeof id, "at_%d", next++);
        sb_jti_set_add(s, id, 1000, 1);
    }
    return NULL;
}

static void test_threads(void **state)
{
    (void)state;
    sb_jti_set *s;
    assert_int_equal(sb_jti_set_new(4096, &s), 0);
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&t[i], NULL, adder, s), 0);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(sb_jti_set_size(s), 2000);
    for (int i = 0; i < 2000; i++) {
        char id[32];
        snprintf(id, sizeof id, "at_%d", i);
        assert_true(sb_jti_set_contains(s, id));
    }
    sb_jti_set_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_add_contains),
        cmocka_unit_test(test_bounded_and_swept),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
