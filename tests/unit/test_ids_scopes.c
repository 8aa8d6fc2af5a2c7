/* Ids, RFC 3339 times and scopes: the small pieces every API response is built from. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <string.h>

#include "auth/scopes.h"
#include "core/ids.h"
#include "switchboard/error.h"

static void test_ids(void **state)
{
    (void)state;
    char a[SB_ID_MAX], b[SB_ID_MAX];
    assert_int_equal(sb_id_new("rm", a), 0);
    assert_int_equal(sb_id_new("rm", b), 0);
    assert_int_equal(strlen(a), 23);
    assert_memory_equal(a, "rm_", 3);
    assert_string_not_equal(a, b);
    for (size_t i = 3; i < strlen(a); i++)
        assert_non_null(strchr("0123456789abcdefghjkmnpqrstvwxyz", a[i]));
}

static void test_rfc3339(void **state)
{
    (void)state;
    char t[32];
    sb_time_rfc3339(0, t);
    assert_string_equal(t, "1970-01-01T00:00:00.000Z");
    sb_time_rfc3339(1795765541038LL, t);
    assert_string_equal(t, "2026-11-27T07:45:41.038Z");
    int64_t ms;
    assert_int_equal(sb_time_parse_rfc3339("2026-11-27T07:45:41.038Z", &ms), 0);
    assert_int_equal(ms, 1795765541038LL);
    assert_int_equal(sb_time_parse_rfc3339("2026-11-27T08:45:41.038+01:00", &ms), 0);
    assert_int_equal(ms, 1795765541038LL);
    assert_int_equal(sb_time_parse_rfc3339("2026-11-27T07:45:41Z", &ms), 0);
    assert_int_equal(ms, 1795765541000LL);
    const char *bad[] = {"2026-11-27",           "2026-11-27T07:45:41",   "2026-13-01T00:00:00Z",
                         "2026-02-31T00:00:00Z", "2026-11-27T24:00:00Z",  "2026-11-27T07:45:41.Z",
                         "x026-11-27T07:45:41Z", "2026-11-27T07:45:41Zx", ""};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_int_equal(sb_time_parse_rfc3339(bad[i], &ms), SB_EINVAL);
}

static void test_scopes(void **state)
{
    (void)state;
    uint32_t s;
    const char *bad;
    size_t badlen;
    assert_int_equal(sb_scopes_parse("rooms:read  keys:write", 22, &s, &bad, &badlen), 0);
    assert_int_equal(s, SB_SCOPE_ROOMS_READ | SB_SCOPE_KEYS_WRITE);
    assert_int_equal(sb_scopes_parse("rooms:read rooms:admin", 22, &s, &bad, &badlen), SB_EINVAL);
    assert_int_equal(badlen, 11);
    assert_memory_equal(bad, "rooms:admin", 11);
    char out[256];
    sb_scopes_format(SB_SCOPES_ALL, out, sizeof out);
    assert_int_equal(sb_scopes_parse(out, strlen(out), &s, NULL, NULL), 0);
    assert_int_equal(s, SB_SCOPES_ALL);
    assert_null(strstr(out, "  "));
    assert_string_equal(sb_scope_name(SB_SCOPE_PROJECTS_WRITE), "projects:write");
    assert_null(sb_scope_name(3));
    assert_false(SB_SCOPES_PROJECT & SB_SCOPE_PROJECTS_WRITE);

    json_t *j = sb_scopes_to_json(SB_SCOPE_TOKENS_WRITE | SB_SCOPE_EVENTS_READ);
    uint32_t back;
    assert_int_equal(sb_scopes_from_json(j, &back), 0);
    assert_int_equal(back, SB_SCOPE_TOKENS_WRITE | SB_SCOPE_EVENTS_READ);
    json_decref(j);
    j = json_loads("[]", 0, NULL);
    assert_int_equal(sb_scopes_from_json(j, &back), SB_EINVAL);
    json_decref(j);
    j = json_loads("[\"rooms:read\", 5]", 0, NULL);
    assert_int_equal(sb_scopes_from_json(j, &back), SB_EINVAL);
    json_decref(j);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ids),
        cmocka_unit_test(test_rfc3339),
        cmocka_unit_test(test_scopes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
