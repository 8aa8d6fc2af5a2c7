/* The token endpoint's wire formats: form bodies (RFC 6749 section 3.2, appendix B) and Basic
 * client credentials with the form-urlencoding of section 2.3.1. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "auth/oauth.h"
#include "switchboard/error.h"

static int parse(const char *body, sb_oauth_param *out)
{
    static char scratch[4096];
    return sb_oauth_form_parse(body, strlen(body), scratch, sizeof scratch, out);
}

static void assert_param(const sb_oauth_param *p, int n, const char *name, const char *value)
{
    const sb_str *v = sb_oauth_form_get(p, n, name);
    if (!value) {
        assert_null(v);
        return;
    }
    assert_non_null(v);
    assert_int_equal(v->len, strlen(value));
    assert_memory_equal(v->base, value, v->len);
    assert_int_equal(v->base[v->len], '\0');
}

static void test_form_basic(void **state)
{
    (void)state;
    sb_oauth_param p[SB_OAUTH_MAX_PARAMS];
    int n = parse("grant_type=client_credentials&scope=rooms%3Aread+rooms%3Awrite", p);
    assert_int_equal(n, 2);
    assert_param(p, n, "grant_type", "client_credentials");
    assert_param(p, n, "scope", "rooms:read rooms:write");
    assert_param(p, n, "client_id", NULL);
    /* Empty values are omitted (section 3.1), empty pairs skipped, names decoded too. */
    n = parse("a=&&b&c%5Fd=x%2By&=", p);
    assert_int_equal(n, SB_EINVAL); /* "=" has an empty name */
    n = parse("a=&&b&c%5Fd=x%2By", p);
    assert_int_equal(n, 1);
    assert_param(p, n, "c_d", "x+y");
    assert_param(p, n, "a", NULL);
    assert_int_equal(parse("", p), 0);
    /* An omitted (empty) parameter does not make a later one a duplicate. */
    assert_int_equal(parse("scope=&scope=a", p), 1);
}

static void test_form_rejects(void **state)
{
    (void)state;
    sb_oauth_param p[SB_OAUTH_MAX_PARAMS];
    assert_int_equal(parse("a=1&a=2", p), SB_EEXIST);
    assert_int_equal(parse("a=1&%61=2", p), SB_EEXIST); /* the same name once decoded */
    assert_int_equal(parse("a=%4", p), SB_EINVAL);
    assert_int_equal(parse("a=%zz", p), SB_EINVAL);
    assert_int_equal(parse("a=%", p), SB_EINVAL);
    assert_int_equal(parse("a=%00", p), SB_EINVAL);
    assert_int_equal(parse("=x", p), SB_EINVAL);
    char many[512] = "";
    for (int i = 0; i <= SB_OAUTH_MAX_PARAMS; i++) {
        char one[16];
        snprintf(one, sizeof one, "%sp%d=1", i ? "&" : "", i);
        strncat(many, one, sizeof many - strlen(many) - 1);
    }
    assert_int_equal(parse(many, p), SB_EMSGSIZE);
    char small[8];
    assert_int_equal(sb_oauth_form_parse("a=1", 3, small, sizeof small, p), SB_EMSGSIZE);
    const char raw[] = {'a', '=', 'x', '\0', 'y'};
    char scratch[64];
    assert_int_equal(sb_oauth_form_parse(raw, sizeof raw, scratch, sizeof scratch, p), SB_EINVAL);
}

static int basic(const char *hdr, char *id, char *secret)
{
    char scratch[512];
    sb_str i, s;
    int rc = sb_oauth_basic_decode(sb_str_from(hdr), scratch, sizeof scratch, &i, &s);
    if (rc == 0) {
        memcpy(id, i.base, i.len);
        id[i.len] = '\0';
        memcpy(secret, s.base, s.len);
        secret[s.len] = '\0';
    }
    return rc;
}

static void test_basic(void **state)
{
    (void)state;
    char id[128], secret[128];
    /* "cli_1:s3cr3t" */
    assert_int_equal(basic("Basic Y2xpXzE6czNjcjN0", id, secret), 0);
    assert_string_equal(id, "cli_1");
    assert_string_equal(secret, "s3cr3t");
    /* Section 2.3.1: "a%3Ab:p%25+q%3A" is id "a:b", secret "p% q:". */
    assert_int_equal(basic("basic YSUzQWI6cCUyNStxJTNB", id, secret), 0);
    assert_string_equal(id, "a:b");
    assert_string_equal(secret, "p% q:");
    /* The first ':' splits; an empty secret is allowed (the lookup refuses it). */
    assert_int_equal(basic("BASIC aWQ6", id, secret), 0); /* "id:" */
    assert_string_equal(secret, "");
}

static void test_basic_rejects(void **state)
{
    (void)state;
    char id[128], secret[128];
    assert_int_equal(basic("Bearer abc", id, secret), SB_ENOENT);
    assert_int_equal(basic("Basic", id, secret), SB_ENOENT);
    assert_int_equal(basic("Basic aWQ", id, secret), SB_EINVAL);          /* no padding */
    assert_int_equal(basic("Basic aWQ=", id, secret), SB_EINVAL);         /* "id": no ':' */
    assert_int_equal(basic("Basic OnNlY3JldA==", id, secret), SB_EINVAL); /* ":secret" */
    assert_int_equal(basic("Basic aWQ6c2Vj*mV0", id, secret), SB_EINVAL);
    assert_int_equal(basic("Basic aWQ6cx==", id, secret), SB_EINVAL); /* non-zero spare bits */
    assert_int_equal(basic("Basic aWQ6JTAw", id, secret), SB_EINVAL); /* "id:%00" */
    assert_int_equal(basic("Basic aWQAOng=", id, secret), SB_EINVAL); /* NUL in the id */
    assert_int_equal(basic("Basic aWQ6JTQ=", id, secret), SB_EINVAL); /* "id:%4" */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_form_basic),
        cmocka_unit_test(test_form_rejects),
        cmocka_unit_test(test_basic),
        cmocka_unit_test(test_basic_rejects),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
