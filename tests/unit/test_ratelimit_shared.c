/* The lock-free shared rate limiter: the same verdicts as the single-threaded table, exact
 * boundaries, exactly-once counting under concurrent threads, and eviction that spares a
 * limited key. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "guard/ratelimit.h"
#include "switchboard/error.h"

#define MS 1000000ull
#define S  1000000000ull

static sb_rl_result check(sb_ratelimit_shared *rl, const char *key, double rate, uint32_t burst,
                          uint64_t now)
{
    sb_rl_policy p = {rate, burst};
    sb_rl_result r;
    assert_int_equal(sb_ratelimit_shared_check(rl, key, strlen(key), &p, now, &r), 0);
    return r;
}

static void test_boundary(void **state)
{
    (void)state;
    sb_ratelimit_shared *rl;
    assert_int_equal(sb_ratelimit_shared_new(64, 1, &rl), 0);
    uint64_t t = 10 * S;
    for (int i = 0; i < 3; i++) {
        sb_rl_result r = check(rl, "k", 2, 3, t);
        assert_true(r.allowed);
        assert_int_equal(r.remaining, 2 - i);
    }
    sb_rl_result r = check(rl, "k", 2, 3, t);
    assert_false(r.allowed);
    assert_int_equal(r.retry_after_ns, 500 * MS);
    assert_int_equal(r.retry_after_seconds, 1);
    assert_false(check(rl, "k", 2, 3, t + 500 * MS - 1).allowed);
    assert_true(check(rl, "k", 2, 3, t + 500 * MS).allowed);
    assert_false(check(rl, "k", 2, 3, t + 500 * MS).allowed);
    /* Another key has its own budget. */
    assert_true(check(rl, "other", 2, 3, t).allowed);
    sb_rl_policy bad = {0, 1};
    assert_int_equal(sb_ratelimit_shared_check(rl, "k", 1, &bad, t, &r), SB_EINVAL);
    assert_int_equal(sb_ratelimit_shared_check(rl, "", 0, &(sb_rl_policy){1, 1}, t, &r), SB_EINVAL);
    sb_ratelimit_shared_free(rl);
}

static void test_no_drift(void **state)
{
    (void)state;
    sb_ratelimit_shared *rl;
    assert_int_equal(sb_ratelimit_shared_new(8, 2, &rl), 0);
    /* Exactly at the rate, burst 1, for a long time: never refused. 0.1/s has T = 1e10. */
    for (uint64_t i = 0; i < 100000; i++)
        assert_true(check(rl, "paced", 0.1, 1, S + i * 10 * S).allowed);
    for (uint64_t i = 0; i < 100000; i++)
        assert_true(check(rl, "fast", 3, 1, S + i * 333333333ull + i / 3).allowed);
    sb_ratelimit_shared_free(rl);
}

static void test_same_as_single_threaded(void **state)
{
    (void)state;
    sb_ratelimit_shared *a;
    sb_ratelimit *b;
    assert_int_equal(sb_ratelimit_shared_new(256, 3, &a), 0);
    assert_int_equal(sb_ratelimit_new(256, 3, &b), 0);
    uint64_t x = 88172645463325252ull, now = S;
    for (int i = 0; i < 200000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        char key[16];
        snprintf(key, sizeof key, "k%u", (unsigned)(x % 40));
        now += (x >> 20) % (20 * MS);
        sb_rl_policy p = {(double)(1 + (x >> 40) % 50), (uint32_t)(1 + (x >> 50) % 10)};
        sb_rl_result ra, rb;
        assert_int_equal(sb_ratelimit_shared_check(a, key, strlen(key), &p, now, &ra), 0);
        assert_int_equal(sb_ratelimit_check(b, key, strlen(key), &p, now, &rb), 0);
        assert_int_equal(ra.allowed, rb.allowed);
        assert_int_equal(ra.remaining, rb.remaining);
        assert_int_equal(ra.reset_ns, rb.reset_ns);
        assert_int_equal(ra.retry_after_ns, rb.retry_after_ns);
    }
    sb_ratelimit_shared_free(a);
    sb_ratelimit_free(b);
}

typedef struct worker {
    sb_ratelimit_shared *rl;
    int allowed;
} worker;

static void *hammer(void *arg)
{
    worker *w = arg;
    sb_rl_policy p = {0.001, 1000}; /* nothing refills during the test */
    for (int i = 0; i < 20000; i++) {
        sb_rl_result r;
        if (sb_ratelimit_shared_check(w->rl, "hot", 3, &p, 5 * S, &r) == 0 && r.allowed)
            w->allowed++;
    }
    return NULL;
}

static void test_threads_count_exactly_once(void **state)
{
    (void)state;
    sb_ratelimit_shared *rl;
    assert_int_equal(sb_ratelimit_shared_new(64, 4, &rl), 0);
    worker w[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (worker){rl, 0};
        assert_int_equal(pthread_create(&th[i], NULL, hammer, &w[i]), 0);
    }
    int total = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        total += w[i].allowed;
    }
    assert_int_equal(total, 1000); /* the burst, exactly: none lost, none counted twice */
    sb_ratelimit_shared_free(rl);
}

static void test_eviction_spares_limited_key(void **state)
{
    (void)state;
    sb_ratelimit_shared *rl;
    assert_int_equal(sb_ratelimit_shared_new(1, 5, &rl), 0); /* 16 slots, one window */
    uint64_t t = S;
    assert_true(check(rl, "limited", 1, 1, t).allowed);
    assert_false(check(rl, "limited", 1, 1, t).allowed);
    for (int i = 0; i < 200; i++) {
        char key[16];
        snprintf(key, sizeof key, "n%d", i);
        assert_true(check(rl, key, 1000, 1, t).allowed); /* newcomers start full */
    }
    assert_false(check(rl, "limited", 1, 1, t).allowed);
    assert_true(check(rl, "limited", 1, 1, t + S).allowed);
    sb_ratelimit_shared_free(rl);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_boundary),
        cmocka_unit_test(test_no_drift),
        cmocka_unit_test(test_same_as_single_threaded),
        cmocka_unit_test(test_threads_count_exactly_once),
        cmocka_unit_test(test_eviction_spares_limited_key),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
