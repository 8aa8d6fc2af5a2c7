/* GCRA rate limiter: exact boundaries, long runs without drift, eviction, RateLimit headers. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "guard/ratelimit.h"
#include "switchboard/error.h"

#define S  1000000000ull    /* ns per second */
#define T0 1000000000000ull /* an arbitrary "now" far from 0 */

static sb_ratelimit *mk(size_t cap)
{
    sb_ratelimit *rl = NULL;
    assert_int_equal(sb_ratelimit_new(cap, 42, &rl), 0);
    assert_non_null(rl);
    return rl;
}

static sb_rl_result chk(sb_ratelimit *rl, const char *key, double rate, uint32_t burst,
                        uint64_t now)
{
    sb_rl_policy p = {rate, burst};
    sb_rl_result r;
    memset(&r, 0xa5, sizeof r);
    assert_int_equal(sb_ratelimit_check(rl, key, strlen(key), &p, now, &r), 0);
    assert_int_equal(r.limit, burst);
    assert_true(r.remaining < burst);
    if (r.allowed) {
        assert_int_equal(r.retry_after_ns, 0);
        assert_int_equal(r.retry_after_seconds, 0);
    } else {
        assert_int_equal(r.remaining, 0);
        assert_true(r.retry_after_ns >= 1);
        assert_true(r.retry_after_seconds >= 1);
        assert_int_equal(r.retry_after_seconds, (r.retry_after_ns + S - 1) / S);
    }
    assert_int_equal(r.reset_seconds, (r.reset_ns + S - 1) / S);
    return r;
}

/* The whole burst at one instant, then nothing. */
static void test_burst_then_denied(void **state)
{
    (void)state;
    sb_ratelimit *rl = mk(16);
    for (uint64_t base = 0; base <= T0; base += T0) {
        char key[8];
        snprintf(key, sizeof key, "k%llu", (unsigned long long)(base / T0));
        const uint64_t T = S / 10; /* 10/s */
        for (uint32_t i = 0; i < 5; i++) {
            sb_rl_result r = chk(rl, key, 10, 5, base);
            assert_true(r.allowed);
            assert_int_equal(r.remaining, 4 - i);
            assert_int_equal(r.reset_ns, (i + 1) * T);
            assert_int_equal(r.reset_seconds, 1);
        }
        sb_rl_result r = chk(rl, key, 10, 5, base);
        assert_false(r.allowed);
        assert_int_equal(r.remaining, 0);
        assert_int_equal(r.retry_after_ns, T);
        assert_int_equal(r.retry_after_seconds, 1);
        assert_int_equal(r.reset_ns, 5 * T);
        /* A denial changes nothing: asking again gives the same answer. */
        sb_rl_result again = chk(rl, key, 10, 5, base);
        assert_memory_equal(&r, &again, sizeof r);
    }
    sb_ratelimit_free(rl);
}

/* One request comes back exactly T after the bucket drained, not a nanosecond sooner. */
static void test_refill_exactly_one(void **state)
{
    (void)state;
    const double rates[] = {0.5, 3, 10, 1e6};
    const uint64_t Ts[] = {2 * S, 333333333, S / 10, 1000};
    for (size_t k = 0; k < sizeof rates / sizeof rates[0]; k++) {
        for (uint32_t burst = 1; burst <= 4; burst++) {
            sb_ratelimit *rl = mk(4);
            uint64_t T = Ts[k];
            for (uint32_t i = 0; i < burst; i++)
                assert_true(chk(rl, "key", rates[k], burst, T0).allowed);
            sb_rl_result r = chk(rl, "key", rates[k], burst, T0 + T - 1);
            assert_false(r.allowed);
            assert_int_equal(r.retry_after_ns, 1);
            assert_int_equal(r.retry_after_seconds, 1);
            r = chk(rl, "key", rates[k], burst, T0 + T);
            assert_true(r.allowed);
            assert_int_equal(r.remaining, 0);
            assert_int_equal(r.reset_ns, (uint64_t)burst * T);
            r = chk(rl, "key", rates[k], burst, T0 + T);
            assert_false(r.allowed);
            assert_int_equal(r.retry_after_ns, T);
            /* Long idle: back to a full burst, and no more than that. */
            uint64_t later = T0 + 1000 * T;
            for (uint32_t i = 0; i < burst; i++)
                assert_true(chk(rl, "key", rates[k], burst, later).allowed);
            assert_false(chk(rl, "key", rates[k], burst, later).allowed);
            sb_ratelimit_free(rl);
        }
    }
}

/* Rates as exact fractions num/den per second, so request times can be computed exactly. */
typedef struct {
    uint64_t num, den;
    uint64_t T; /* the emission interval the limiter must use */
} frac_rate;

static const frac_rate steady_rates[] = {
    {1, 2, 2 * S},     /* 0.5/s */
    {3, 1, 333333333}, /* T not an integer: 333,333,333.3 ns, rounded down */
    {3, 2, 666666666}, /* 666,666,666.7 ns: round-to-nearest would be stricter than 1.5/s */
    {7, 1, 142857142}, {1, 10, 10 * S}, /* 0.1/s, which is not exact in binary floating point */
    {1000000, 1, 1000}                  /* 1e6/s */
};

#define STEADY_N 1000000ull

/* A client sending exactly at the configured rate, for a million requests: never refused,
 * and the state after every request is exactly the same as after the first (no drift). */
static void test_steady_rate_never_denied(void **state)
{
    (void)state;
    const uint32_t bursts[] = {1, 10};
    for (size_t k = 0; k < sizeof steady_rates / sizeof steady_rates[0]; k++) {
        const frac_rate *fr = &steady_rates[k];
        double rate = (double)fr->num / (double)fr->den;
        for (size_t b = 0; b < sizeof bursts / sizeof bursts[0]; b++) {
            sb_ratelimit *rl = mk(4);
            sb_rl_policy p = {rate, bursts[b]};
            sb_rl_result r;
            uint64_t denied = 0, drift = 0;
            for (uint64_t i = 0; i < STEADY_N; i++) {
                uint64_t t = T0 + i * S * fr->den / fr->num;
                assert_int_equal(sb_ratelimit_check(rl, "steady", 6, &p, t, &r), 0);
                denied += !r.allowed;
                drift += r.reset_ns != fr->T || r.remaining != bursts[b] - 1;
            }
            if (denied || drift)
                fail_msg("rate %g burst %u: %llu denied, %llu drifted", rate, bursts[b],
                         (unsigned long long)denied, (unsigned long long)drift);
            sb_ratelimit_free(rl);
        }
    }
}

/* 0.1% over the rate: after the burst, exactly the excess is refused (±1). */
static void test_over_rate_denied_count(void **state)
{
    (void)state;
    const uint32_t bursts[] = {1, 10};
    for (size_t k = 0; k < sizeof steady_rates / sizeof steady_rates[0]; k++) {
        const frac_rate *fr = &steady_rates[k];
        double rate = (double)fr->num / (double)fr->den;
        for (size_t b = 0; b < sizeof bursts / sizeof bursts[0]; b++) {
            sb_ratelimit *rl = mk(4);
            sb_rl_policy p = {rate, bursts[b]};
            sb_rl_result r;
            uint64_t denied = 0, t = 0, spaced_denied = 0, last = 0;
            for (uint64_t i = 0; i < STEADY_N; i++) {
                /* i / (1.001 × rate) seconds */
                t = T0 + i * S * fr->den * 1000 / (fr->num * 1001);
                assert_int_equal(sb_ratelimit_check(rl, "over", 4, &p, t, &r), 0);
                denied += !r.allowed;
                if (i > 0 && t - last < fr->T)
                    spaced_denied++;
                else
                    last = t;
            }
            /* With a tolerance (burst ≥ 2) the allowed requests are the burst plus one per
             * interval elapsed. With burst 1 there is nothing to bank slack in: a refused
             * request's successor finds the bucket refilled but the waiting lost, so about
             * every other request is refused; GCRA then is exactly "allowed requests at
             * least T apart", which is counted independently above. */
            double span_s = (double)(t - T0) / 1e9;
            double expected = bursts[b] == 1 ? (double)spaced_denied
                                             : (double)STEADY_N - bursts[b] - span_s * rate;
            if (bursts[b] == 1)
                assert_true(spaced_denied > STEADY_N / 2 - STEADY_N / 500 &&
                            spaced_denied <= STEADY_N / 2);
            if (fabs((double)denied - expected) > 1.0)
                fail_msg("rate %g burst %u: %llu denied, expected %.3f", rate, bursts[b],
                         (unsigned long long)denied, expected);
            sb_ratelimit_free(rl);
        }
    }
}

/* remaining rounds down, reset and retry-after round up, retry-after is never 0. */
static void test_header_values_at_boundaries(void **state)
{
    (void)state;
    sb_ratelimit *rl = mk(4);
    /* 0.5/s, burst 1: T = 2 s. */
    sb_rl_result r = chk(rl, "slow", 0.5, 1, T0);
    assert_true(r.allowed);
    assert_int_equal(r.remaining, 0);
    assert_int_equal(r.reset_ns, 2 * S);
    assert_int_equal(r.reset_seconds, 2);
    r = chk(rl, "slow", 0.5, 1, T0 + 1);
    assert_false(r.allowed);
    assert_int_equal(r.retry_after_ns, 2 * S - 1);
    assert_int_equal(r.retry_after_seconds, 2);
    assert_int_equal(r.reset_seconds, 2);
    r = chk(rl, "slow", 0.5, 1, T0 + S);
    assert_int_equal(r.retry_after_ns, S);
    assert_int_equal(r.retry_after_seconds, 1);
    assert_int_equal(r.reset_seconds, 1);
    r = chk(rl, "slow", 0.5, 1, T0 + S - 1);
    assert_int_equal(r.retry_after_seconds, 2);
    r = chk(rl, "slow", 0.5, 1, T0 + 2 * S - 1);
    assert_false(r.allowed);
    assert_int_equal(r.retry_after_ns, 1);
    assert_int_equal(r.retry_after_seconds, 1);
    assert_int_equal(r.reset_seconds, 1);
    assert_true(chk(rl, "slow", 0.5, 1, T0 + 2 * S).allowed);

    /* 1/s, burst 3. */
    for (int i = 0; i < 3; i++)
        r = chk(rl, "mid", 1, 3, T0);
    assert_int_equal(r.remaining, 0);
    assert_int_equal(r.reset_seconds, 3);
    /* 2.5 s later: 2.5 requests' worth back, one taken → 1.5 left, shown as 1. */
    r = chk(rl, "mid", 1, 3, T0 + 2 * S + S / 2);
    assert_true(r.allowed);
    assert_int_equal(r.remaining, 1);
    assert_int_equal(r.reset_ns, S + S / 2);
    assert_int_equal(r.reset_seconds, 2);
    /* One more nanosecond makes no difference to remaining; 0.5 s more adds one. */
    r = chk(rl, "mid", 1, 3, T0 + 3 * S);
    assert_true(r.allowed);
    assert_int_equal(r.remaining, 1);
    assert_int_equal(r.reset_ns, 2 * S);
    assert_int_equal(r.reset_seconds, 2);
    /* Exactly at the limit of the tolerance: allowed with nothing left. */
    r = chk(rl, "mid", 1, 3, T0 + 3 * S);
    assert_true(r.allowed);
    assert_int_equal(r.remaining, 0);
    assert_int_equal(r.reset_ns, 3 * S);
    r = chk(rl, "mid", 1, 3, T0 + 3 * S);
    assert_false(r.allowed);
    assert_int_equal(r.retry_after_ns, S);
    sb_ratelimit_free(rl);
}

static void test_independent_keys(void **state)
{
    (void)state;
    sb_ratelimit *rl = mk(64);
    sb_rl_policy p = {1, 2};
    sb_rl_result r;
    const char *keys[] = {"a", "ab", "b", "key_0001", "key_0002"};
    for (size_t k = 0; k < 5; k++) {
        assert_true(chk(rl, keys[k], 1, 2, T0).allowed);
        assert_true(chk(rl, keys[k], 1, 2, T0).allowed);
        assert_false(chk(rl, keys[k], 1, 2, T0).allowed);
    }
    /* Keys are bytes with a length: embedded NULs count, prefixes are other keys. */
    assert_int_equal(sb_ratelimit_check(rl, "x\0y", 3, &p, T0, &r), 0);
    assert_int_equal(r.remaining, 1);
    assert_int_equal(sb_ratelimit_check(rl, "x\0z", 3, &p, T0, &r), 0);
    assert_int_equal(r.remaining, 1);
    assert_int_equal(sb_ratelimit_check(rl, "x", 1, &p, T0, &r), 0);
    assert_int_equal(r.remaining, 1);
    assert_int_equal(sb_ratelimit_check(rl, "x\0y", 3, &p, T0, &r), 0);
    assert_int_equal(r.remaining, 0);
    assert_int_equal(sb_ratelimit_size(rl), 8);
    /* The same key under a different policy keeps its TAT. */
    r = chk(rl, "a", 1000, 1, T0);
    assert_false(r.allowed);
    assert_int_equal(r.retry_after_ns, 2 * S);
    sb_ratelimit_free(rl);
}

static void test_eviction(void **state)
{
    (void)state;
    /* One key drained for a long time (0.001/s: T = 1000 s), then a flood of other keys,
     * each fully refilled before the next arrives. The table stays at its capacity and the
     * drained key is never the one evicted. */
    sb_ratelimit *rl = mk(8);
    assert_true(chk(rl, "limited", 0.001, 1, T0).allowed);
    assert_false(chk(rl, "limited", 0.001, 1, T0).allowed);
    char key[32];
    for (int i = 0; i < 10000; i++) {
        snprintf(key, sizeof key, "other-%d", i);
        assert_true(chk(rl, key, 1e6, 1, T0 + 10000 * (uint64_t)(i + 1)).allowed);
        assert_true(sb_ratelimit_size(rl) <= 8);
        uint64_t tat;
        assert_int_equal(sb__ratelimit_tat(rl, "limited", 7, &tat), 0);
    }
    assert_int_equal(sb_ratelimit_size(rl), 8);
    sb_rl_result r = chk(rl, "limited", 0.001, 1, T0 + S);
    assert_false(r.allowed);
    assert_int_equal(r.retry_after_ns, 999 * S);
    sb_ratelimit_free(rl);

    /* Every key drained: the new key evicts the one with the smallest TAT, the closest to
     * full, and only that one. */
    rl = mk(4);
    for (uint64_t i = 0; i < 4; i++) {
        snprintf(key, sizeof key, "k%llu", (unsigned long long)i);
        assert_true(chk(rl, key, 1, 1, T0 + i).allowed);
    }
    assert_true(chk(rl, "k4", 1, 1, T0 + 4).allowed);
    assert_int_equal(sb_ratelimit_size(rl), 4);
    uint64_t tat;
    assert_int_equal(sb__ratelimit_tat(rl, "k0", 2, &tat), SB_ENOENT);
    assert_int_equal(sb__ratelimit_tat(rl, "k1", 2, &tat), 0);
    assert_int_equal(tat, T0 + S + 1);
    assert_false(chk(rl, "k1", 1, 1, T0 + 5).allowed);
    assert_false(chk(rl, "k2", 1, 1, T0 + 5).allowed);
    /* k0 is back with a fresh bucket and pushes out k1, now the smallest. */
    assert_true(chk(rl, "k0", 1, 1, T0 + 6).allowed);
    assert_int_equal(sb__ratelimit_tat(rl, "k1", 2, &tat), SB_ENOENT);
    assert_false(chk(rl, "k2", 1, 1, T0 + 7).allowed);
    assert_false(chk(rl, "k3", 1, 1, T0 + 7).allowed);
    assert_false(chk(rl, "k4", 1, 1, T0 + 7).allowed);
    sb_ratelimit_free(rl);
}

/* A naive model of the table (array, linear search, evict the minimum TAT) driven with the
 * real one through many random operations: same verdicts, same stored state. */
#define MODEL_CAP 37
struct model_ent {
    char key[16];
    uint64_t tat;
};

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static void test_against_model(void **state)
{
    (void)state;
    sb_ratelimit *rl = mk(MODEL_CAP);
    struct model_ent m[MODEL_CAP];
    size_t n = 0;
    uint64_t now = T0;
    const uint64_t T = 1000, burst = 3; /* 1e6/s */
    sb_rl_policy p = {1e6, (uint32_t)burst};
    for (int op = 0; op < 200000; op++) {
        now += rnd() % 700;
        char key[16];
        snprintf(key, sizeof key, "u%llu", (unsigned long long)(rnd() % 120));
        size_t len = strlen(key), i;
        for (i = 0; i < n && strcmp(m[i].key, key) != 0; i++)
            ;
        uint64_t tat = i < n && m[i].tat > now ? m[i].tat : now;
        bool allow = tat - now <= (burst - 1) * T;
        sb_rl_result r;
        assert_int_equal(sb_ratelimit_check(rl, key, len, &p, now, &r), 0);
        assert_int_equal(r.allowed, allow);
        if (allow && i < n) {
            m[i].tat = tat + T;
        } else if (allow) {
            if (n == MODEL_CAP) {
                /* Whichever of the minima the table chose must be gone; drop it here. */
                uint64_t min = UINT64_MAX;
                for (size_t j = 0; j < n; j++)
                    min = m[j].tat < min ? m[j].tat : min;
                size_t gone = n, t;
                uint64_t v;
                for (size_t j = 0; j < n; j++)
                    if (sb__ratelimit_tat(rl, m[j].key, strlen(m[j].key), &v) == SB_ENOENT) {
                        assert_int_equal(gone, n);
                        gone = j;
                    }
                assert_true(gone < n);
                assert_int_equal(m[gone].tat, min);
                t = gone;
                m[t] = m[--n];
            }
            snprintf(m[n].key, sizeof m[n].key, "%s", key);
            m[n++].tat = now + T;
        }
        assert_int_equal(sb_ratelimit_size(rl), n);
        if (op % 997 == 0) {
            for (size_t j = 0; j < n; j++) {
                uint64_t v;
                assert_int_equal(sb__ratelimit_tat(rl, m[j].key, strlen(m[j].key), &v), 0);
                assert_int_equal(v, m[j].tat);
            }
        }
    }
    sb_ratelimit_free(rl);
}

static void test_policies(void **state)
{
    (void)state;
    struct {
        double rate;
        uint32_t burst;
        uint64_t T, window;
    } ok[] = {
        {0.5, 1, 2 * S, 2},
        {3, 1, 333333333, 1},
        {3, 4, 333333333, 2},
        {1e6, 5, 1000, 1},
        {0.1, 3, 10 * S, 30},
        {10, 20, S / 10, 2},
        {1e9, 1, 1, 1},
        {1e-6, 1, S * 1000000, 1000000},
        {1.0 / 3.0, 1, 3 * S, 3},
        {1.0 / 99.0, 1, 99 * S, 99}, /* 1e9 / (1/99.) is 98999999999.99998: snapped */
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        sb_ratelimit *rl = mk(2);
        for (uint32_t b = 0; b < ok[i].burst; b++)
            assert_true(chk(rl, "p", ok[i].rate, ok[i].burst, T0).allowed);
        sb_rl_result r = chk(rl, "p", ok[i].rate, ok[i].burst, T0);
        assert_false(r.allowed);
        if (r.retry_after_ns != ok[i].T)
            fail_msg("rate %g: T = %llu, want %llu", ok[i].rate,
                     (unsigned long long)r.retry_after_ns, (unsigned long long)ok[i].T);
        sb_rl_policy p = {ok[i].rate, ok[i].burst};
        assert_int_equal(sb_ratelimit_window_seconds(&p), ok[i].window);
        sb_ratelimit_free(rl);
    }

    sb_rl_policy bad[] = {
        {0, 1},     {-1, 1}, {NAN, 1},    {INFINITY, 1}, {-INFINITY, 1},     {2e9, 1},
        {1e300, 1}, {1, 0},  {1e-300, 1}, {1e-9, 5},     {1e-3, UINT32_MAX},
    };
    sb_ratelimit *rl = mk(2);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        sb_rl_result r;
        memset(&r, 0x5a, sizeof r);
        sb_rl_result before = r;
        assert_int_equal(sb_ratelimit_check(rl, "k", 1, &bad[i], T0, &r), SB_EINVAL);
        assert_memory_equal(&r, &before, sizeof r);
        assert_int_equal(sb_ratelimit_window_seconds(&bad[i]), 0);
    }
    assert_int_equal(sb_ratelimit_size(rl), 0);
    /* The largest burst that fits: 1000/s × 2^32 − 1 is about 49.7 days of burst. */
    sb_rl_policy big = {1000, UINT32_MAX};
    sb_rl_result r;
    assert_int_equal(sb_ratelimit_check(rl, "k", 1, &big, T0, &r), 0);
    assert_true(r.allowed);
    assert_int_equal(r.remaining, UINT32_MAX - 1);
    sb_ratelimit_free(rl);
}

static void test_keys_and_capacity(void **state)
{
    (void)state;
    sb_ratelimit *rl = NULL;
    assert_int_equal(sb_ratelimit_new(0, 0, &rl), SB_ERANGE);
    assert_null(rl);
    assert_int_equal(sb_ratelimit_new(SB_RL_CAPACITY_MAX + 1, 0, &rl), SB_ERANGE);
    rl = mk(1);
    sb_rl_policy p = {1, 1};
    sb_rl_result r;
    char key[SB_RL_KEY_MAX + 1];
    memset(key, 'k', sizeof key);
    assert_int_equal(sb_ratelimit_check(rl, key, 0, &p, T0, &r), SB_EINVAL);
    assert_int_equal(sb_ratelimit_check(rl, NULL, 1, &p, T0, &r), SB_EINVAL);
    assert_int_equal(sb_ratelimit_check(rl, key, SB_RL_KEY_MAX + 1, &p, T0, &r), SB_EINVAL);
    assert_int_equal(sb_ratelimit_check(rl, key, SB_RL_KEY_MAX, &p, T0, &r), 0);
    assert_true(r.allowed);
    assert_int_equal(sb_ratelimit_check(rl, key, SB_RL_KEY_MAX, &p, T0, &r), 0);
    assert_false(r.allowed);
    /* Capacity 1: a second key replaces the first. */
    assert_int_equal(sb_ratelimit_check(rl, key, 1, &p, T0, &r), 0);
    assert_true(r.allowed);
    assert_int_equal(sb_ratelimit_size(rl), 1);
    sb_ratelimit_free(rl);
    sb_ratelimit_free(NULL);

    /* A time near the end of the clock saturates instead of wrapping. */
    rl = mk(2);
    for (int i = 0; i < 3; i++)
        assert_int_equal(sb_ratelimit_check(rl, "end", 3, &p, UINT64_MAX - 5, &r), 0);
    assert_false(r.allowed);
    assert_int_equal(r.reset_ns, 5);
    sb_ratelimit_free(rl);
}

static void test_format_headers(void **state)
{
    (void)state;
    sb_ratelimit *rl = mk(2);
    sb_rl_policy p = {10, 20};
    sb_rl_result r;
    assert_int_equal(sb_ratelimit_check(rl, "h", 1, &p, T0, &r), 0);
    char pol[SB_RL_HEADER_MAX], lim[SB_RL_HEADER_MAX];
    assert_int_equal(sb_ratelimit_format_headers(&r, &p, pol, sizeof pol, lim, sizeof lim), 0);
    assert_string_equal(pol, "\"default\";q=20;w=2");
    assert_string_equal(lim, "\"default\";r=19;t=1");

    sb_rl_policy p2 = {0.5, 1};
    assert_int_equal(sb_ratelimit_check(rl, "h2", 2, &p2, T0, &r), 0);
    assert_int_equal(sb_ratelimit_check(rl, "h2", 2, &p2, T0, &r), 0);
    assert_false(r.allowed);
    assert_int_equal(sb_ratelimit_format_headers(&r, &p2, pol, sizeof pol, lim, sizeof lim), 0);
    assert_string_equal(pol, "\"default\";q=1;w=2");
    assert_string_equal(lim, "\"default\";r=0;t=2");

    /* The longest values fit in SB_RL_HEADER_MAX. */
    sb_rl_policy widest = {1e-3, 4611686};
    sb_rl_result big = {.limit = UINT32_MAX, .remaining = UINT32_MAX, .reset_seconds = UINT64_MAX};
    assert_int_equal(sb_ratelimit_format_headers(&big, &widest, pol, sizeof pol, lim, sizeof lim),
                     0);
    assert_string_equal(pol, "\"default\";q=4611686;w=4611686000");
    assert_string_equal(lim, "\"default\";r=4294967295;t=18446744073709551615");

    assert_int_equal(sb_ratelimit_format_headers(&r, &p, pol, 18, lim, sizeof lim), SB_EMSGSIZE);
    assert_int_equal(sb_ratelimit_format_headers(&r, &p, pol, 19, lim, 5), SB_EMSGSIZE);
    sb_rl_policy bad = {0, 1};
    assert_int_equal(sb_ratelimit_format_headers(&r, &bad, pol, sizeof pol, lim, sizeof lim),
                     SB_EINVAL);
    sb_ratelimit_free(rl);
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
        sb_ratelimit *rl = NULL;
        int rc = sb_ratelimit_new(100, 1, &rl);
        if (rc == 0) {
            sb_ratelimit_free(rl);
            break;
        }
        assert_int_equal(rc, SB_ENOMEM);
        assert_null(rl);
    }
    sb_alloc_set(NULL);
    assert_int_equal(n, 5); /* four allocations, each failure handled */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_burst_then_denied),
        cmocka_unit_test(test_refill_exactly_one),
        cmocka_unit_test(test_steady_rate_never_denied),
        cmocka_unit_test(test_over_rate_denied_count),
        cmocka_unit_test(test_header_values_at_boundaries),
        cmocka_unit_test(test_independent_keys),
        cmocka_unit_test(test_eviction),
        cmocka_unit_test(test_against_model),
        cmocka_unit_test(test_policies),
        cmocka_unit_test(test_keys_and_capacity),
        cmocka_unit_test(test_format_headers),
        cmocka_unit_test(test_alloc_failure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
