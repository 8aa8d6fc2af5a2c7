/* The set of revoked token ids shared by the loops (src/auth/revocations.c). */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>

#include "auth/revocations.h"
#include "switchboard/error.h"

static void test_add_has_expire(void **state)
{
    (void)state;
    sb_revocations *r;
    assert_int_equal(sb_revocations_new(&r), 0);
    assert_false(sb_revocations_has(r, "prj_a", "tok_1", 1000));
    assert_int_equal(sb_revocations_add(r, "prj_a", "tok_1", 5000, 1000), 0);
    assert_true(sb_revocations_has(r, "prj_a", "tok_1", 1000));
    assert_true(sb_revocations_has(r, "prj_a", "tok_1", 4999));
    assert_false(sb_revocations_has(r, "prj_a", "tok_1", 5000)); /* until is exclusive */
    /* Tenants apart: the same jti of another project is not revoked. */
    assert_false(sb_revocations_has(r, "prj_b", "tok_1", 1000));
    /* No separator confusion: ("prj_a", "tok_1") is not ("prj_at", "ok_1"). */
    assert_false(sb_revocations_has(r, "prj_at", "ok_1", 1000));
    /* Empty jti: never revoked, never stored. */
    assert_int_equal(sb_revocations_add(r, "prj_a", "", 5000, 1000), 0);
    assert_false(sb_revocations_has(r, "prj_a", "", 1000));
    /* Re-adding extends, never shortens. */
    assert_int_equal(sb_revocations_add(r, "prj_a", "tok_1", 9000, 1000), 0);
    assert_int_equal(sb_revocations_add(r, "prj_a", "tok_1", 2000, 1000), 0);
    assert_true(sb_revocations_has(r, "prj_a", "tok_1", 8999));
    assert_int_equal(sb_revocations_count(r, 1000), 1);
    sb_revocations_free(r);
}

static void test_growth_and_purge(void **state)
{
    (void)state;
    sb_revocations *r;
    char jti[32];
    assert_int_equal(sb_revocations_new(&r), 0);
    /* 10,000 that expire at 2000, then 10,000 more added after that: the table drops the
     * expired ones when it rebuilds instead of growing for them. */
    for (int i = 0; i < 10000; i++) {
        snprintf(jti, sizeof jti, "old_%d", i);
        assert_int_equal(sb_revocations_add(r, "p", jti, 2000, 1000), 0);
    }
    assert_int_equal(sb_revocations_count(r, 1000), 10000);
    for (int i = 0; i < 10000; i++) {
        snprintf(jti, sizeof jti, "new_%d", i);
        assert_int_equal(sb_revocations_add(r, "p", jti, 90000, 3000), 0);
    }
    assert_int_equal(sb_revocations_count(r, 3000), 10000);
    for (int i = 0; i < 10000; i += 97) {
        snprintf(jti, sizeof jti, "new_%d", i);
        assert_true(sb_revocations_has(r, "p", jti, 3000));
        snprintf(jti, sizeof jti, "old_%d", i);
        assert_false(sb_revocations_has(r, "p", jti, 3000));
    }
    sb_revocations_free(r);
}

typedef struct reader_arg {
    sb_revocations *r;
    int hits;
} reader_arg;

static void *reader(void *p)
{
    reader_arg *a = p;
    char jti[32];
    for (int round = 0; round < 50; round++)
        for (int i = 0; i < 200; i++) {
            snprintf(jti, sizeof jti, "t_%d", i);
            a->hits += sb_revocations_has(a->r, "p", jti, 1);
        }
    return NULL;
}

/* Readers on other threads while one thread adds and the table rebuilds under them: every
 * id added is found afterwards, and nothing crashes or trips ASan on the way. */
static void test_concurrent(void **state)
{
    (void)state;
    sb_revocations *r;
    assert_int_equal(sb_revocations_new(&r), 0);
    reader_arg args[3] = {{r, 0}, {r, 0}, {r, 0}};
    pthread_t th[3];
    for (int i = 0; i < 3; i++)
        assert_int_equal(pthread_create(&th[i], NULL, reader, &args[i]), 0);
    char jti[32];
    for (int i = 0; i < 200; i++) {
        snprintf(jti, sizeof jti, "t_%d", i);
        assert_int_equal(sb_revocations_add(r, "p", jti, 100, 1), 0);
    }
    for (int i = 0; i < 3; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < 200; i++) {
        snprintf(jti, sizeof jti, "t_%d", i);
        assert_true(sb_revocations_has(r, "p", jti, 1));
    }
    sb_revocations_free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_add_has_expire),
        cmocka_unit_test(test_growth_and_purge),
        cmocka_unit_test(test_concurrent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
