/* Bounded buffers, JSON escaping, the arena and the allocation hook. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/arena.h"
#include "core/buf.h"
#include "core/str.h"
#include "switchboard/error.h"

/* An allocator that fails the N-th allocation (counting from 1), 0 = never. */
static int fail_at, alloc_count;

static void *failing_malloc(size_t n, void *ud)
{
    (void)ud;
    if (fail_at && ++alloc_count == fail_at)
        return NULL;
    return malloc(n);
}

static void *failing_realloc(void *p, size_t n, void *ud)
{
    (void)ud;
    if (fail_at && ++alloc_count == fail_at)
        return NULL;
    return realloc(p, n);
}

static void plain_free(void *p, void *ud)
{
    (void)ud;
    free(p);
}

static const sb_allocator failing = {failing_malloc, failing_realloc, plain_free, NULL};

static void test_append_and_max(void **state)
{
    (void)state;
    sb_buf b;
    sb_buf_init(&b, 10);
    assert_int_equal(sb_buf_append(&b, "hello", 5), 0);
    assert_int_equal(sb_buf_append(&b, "world", 5), 0);
    assert_int_equal(b.len, 10);
    /* Past the maximum: refused, contents untouched. */
    assert_int_equal(sb_buf_append(&b, "!", 1), SB_EMSGSIZE);
    assert_int_equal(b.len, 10);
    assert_memory_equal(b.base, "helloworld", 10);
    sb_buf_consume(&b, 5);
    assert_int_equal(b.len, 5);
    assert_memory_equal(b.base, "world", 5);
    sb_buf_consume(&b, 99);
    assert_int_equal(b.len, 0);
    sb_buf_free(&b);
    assert_null(b.base);
}

static void test_appendf_long(void **state)
{
    (void)state;
    sb_buf b;
    sb_buf_init(&b, 0);
    char big[600];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    assert_int_equal(sb_buf_appendf(&b, "[%s|%d]", big, 42), 0);
    assert_int_equal(b.len, 599 + 5);
    assert_memory_equal(b.base + 600, "|42]", 4);
    sb_buf_free(&b);

    sb_buf_init(&b, 8);
    assert_int_equal(sb_buf_appendf(&b, "%s", "123456789"), SB_EMSGSIZE);
    assert_int_equal(b.len, 0);
    sb_buf_free(&b);
}

static void test_u64(void **state)
{
    (void)state;
    sb_buf b;
    sb_buf_init(&b, 0);
    sb_buf_append_u64(&b, 0);
    sb_buf_append(&b, ",", 1);
    sb_buf_append_u64(&b, 18446744073709551615ull);
    assert_int_equal(b.len, 22);
    assert_memory_equal(b.base, "0,18446744073709551615", 22);
    sb_buf_free(&b);
    /* the formatter under it (also used for HTTP Content-Length and webhook timestamps) */
    char d[SB_U64_DEC_MAX];
    assert_int_equal(sb_u64_dec(0, d), 1);
    assert_string_equal(d, "0");
    assert_int_equal(sb_u64_dec(1700000000, d), 10);
    assert_string_equal(d, "1700000000");
    assert_int_equal(sb_u64_dec(UINT64_MAX, d), 20);
    assert_string_equal(d, "18446744073709551615");
}

static void json_is(const char *in, size_t inlen, const char *want)
{
    sb_buf b;
    sb_buf_init(&b, 0);
    assert_int_equal(sb_buf_append_json_str(&b, in, inlen), 0);
    assert_int_equal(b.len, strlen(want));
    assert_memory_equal(b.base, want, b.len);
    sb_buf_free(&b);
}

static void test_json_escape(void **state)
{
    (void)state;
    json_is("plain", 5, "plain");
    json_is("a\"b\\c", 5, "a\\\"b\\\\c");
    json_is("\n\r\t", 3, "\\n\\r\\t");
    json_is("\x01\x1f\x7f", 3, "\\u0001\\u001f\\u007f");
    json_is("nul\0x", 5, "nul\\u0000x");
    /* Valid UTF-8 passes through; invalid bytes become U+FFFD. */
    json_is("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 9, "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80");
    json_is("a\xff"
            "b",
            3,
            "a\xef\xbf\xbd"
            "b");
    json_is("\xc0\xaf", 2, "\xef\xbf\xbd\xef\xbf\xbd");                 /* overlong */
    json_is("\xed\xa0\x80", 3, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"); /* surrogate */
    json_is("\xe2\x82", 2, "\xef\xbf\xbd\xef\xbf\xbd");                 /* truncated */
}

static void test_alloc_failure(void **state)
{
    (void)state;
    sb_alloc_set(&failing);
    fail_at = 1;
    alloc_count = 0;
    sb_buf b;
    sb_buf_init(&b, 0);
    assert_int_equal(sb_buf_append(&b, "x", 1), SB_ENOMEM);
    assert_int_equal(b.len, 0);
    assert_null(b.base);
    fail_at = 2;
    alloc_count = 0;
    assert_int_equal(sb_buf_append(&b, "abc", 3), 0);
    char big[1000] = {0};
    assert_int_equal(sb_buf_append(&b, big, sizeof big), SB_ENOMEM);
    assert_int_equal(b.len, 3); /* the old contents survive a failed growth */
    assert_memory_equal(b.base, "abc", 3);
    sb_buf_free(&b);
    assert_null(sb_calloc(SIZE_MAX / 2, 4)); /* overflow is refused before allocating */
    fail_at = 0;
    sb_alloc_set(NULL);
}

static void test_arena(void **state)
{
    (void)state;
    char first[64];
    sb_arena a;
    sb_arena_init(&a, first, sizeof first, 20000);
    char *p = sb_arena_alloc(&a, 10);
    assert_ptr_equal(p, first);
    char *q = sb_arena_alloc(&a, 10);
    assert_ptr_equal(q, first + 16); /* 16-byte aligned */
    char *big = sb_arena_alloc(&a, 9000);
    assert_non_null(big);
    memset(big, 1, 9000);
    assert_null(sb_arena_alloc(&a, 12000)); /* over max */
    char *s = sb_arena_strndup(&a, "hello", 3);
    assert_string_equal(s, "hel");
    sb_arena_reset(&a);
    assert_ptr_equal(sb_arena_alloc(&a, 1), first);
    sb_arena_reset(&a);

    sb_alloc_set(&failing);
    fail_at = 1;
    alloc_count = 0;
    sb_arena_init(&a, first, sizeof first, 1 << 20);
    assert_null(sb_arena_alloc(&a, 100)); /* needs a block, allocation fails */
    fail_at = 0;
    sb_alloc_set(NULL);
    sb_arena_reset(&a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_append_and_max),
        cmocka_unit_test(test_appendf_long),
        cmocka_unit_test(test_u64),
        cmocka_unit_test(test_json_escape),
        cmocka_unit_test(test_alloc_failure),
        cmocka_unit_test(test_arena),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
