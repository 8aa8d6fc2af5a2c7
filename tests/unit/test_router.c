/* Routing: literal and {param} segments, 404, 405 with Allow, percent-decoding. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <string.h>

#include "net/router.h"

static int sent_status;
static char sent_body[1024];
static const char *called;

static void capture(sb_req *req, int status, sb_str ctype, const void *body, size_t len)
{
    (void)req;
    (void)ctype;
    sent_status = status;
    memcpy(sent_body, body, len < sizeof sent_body - 1 ? len : sizeof sent_body - 1);
    sent_body[len < sizeof sent_body - 1 ? len : sizeof sent_body - 1] = '\0';
}

static const sb_req_ops capture_ops = {.proto = "test", .send = capture};

static void h_room(sb_req *req, void *ud)
{
    called = ud;
    sb_resp_send(req, 200, "text/plain", req->params[0].base, req->params[0].len);
}

static void h_participant(sb_req *req, void *ud)
{
    called = ud;
    char both[256];
    size_t n = 0;
    memcpy(both, req->params[0].base, req->params[0].len);
    n += req->params[0].len;
    both[n++] = '|';
    memcpy(both + n, req->params[1].base, req->params[1].len);
    n += req->params[1].len;
    sb_resp_send(req, 200, "text/plain", both, n);
}

static char arena_mem[4096];

static sb_req make(const char *method, const char *path)
{
    sb_req r;
    memset(&r, 0, sizeof r);
    r.method = sb_str_from(method);
    r.path = sb_str_from(path);
    r.ops = &capture_ops;
    sb_arena_init(&r.arena, arena_mem, sizeof arena_mem, 1 << 20);
    called = NULL;
    sent_status = 0;
    return r;
}

static sb_router *router;

static int setup(void **state)
{
    (void)state;
    if (sb_router_new(&router))
        return -1;
    sb_router_add(router, "GET", "/v1/rooms/{name}", h_room, "get-room");
    sb_router_add(router, "DELETE", "/v1/rooms/{name}", h_room, "delete-room");
    sb_router_add(router, "GET", "/v1/rooms/{name}/participants/{identity}", h_participant,
                  "get-participant");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    sb_router_free(router);
    return 0;
}

static void test_params(void **state)
{
    (void)state;
    sb_req r = make("GET", "/v1/rooms/lobby");
    sb_router_dispatch(router, &r);
    assert_string_equal(called, "get-room");
    assert_int_equal(sent_status, 200);
    assert_string_equal(sent_body, "lobby");

    r = make("GET", "/v1/rooms/a%20b/participants/alice%2Fx");
    sb_router_dispatch(router, &r);
    assert_string_equal(called, "get-participant");
    assert_string_equal(sent_body, "a b|alice/x");

    r = make("DELETE", "/v1/rooms/lobby");
    sb_router_dispatch(router, &r);
    assert_string_equal(called, "delete-room");
}

static void test_not_found(void **state)
{
    (void)state;
    const char *paths[] = {"/v1/rooms", "/v1/rooms/", "/v1/rooms/x/y", "/nope", "*", ""};
    for (size_t i = 0; i < sizeof paths / sizeof *paths; i++) {
        sb_req r = make("GET", paths[i]);
        sb_router_dispatch(router, &r);
        assert_null(called);
        assert_int_equal(sent_status, 404);
        assert_non_null(strstr(sent_body, "\"status\":404"));
    }
}

static void test_method_not_allowed(void **state)
{
    (void)state;
    sb_req r = make("POST", "/v1/rooms/lobby");
    sb_router_dispatch(router, &r);
    assert_null(called);
    assert_int_equal(sent_status, 405);
    assert_int_equal(r.num_resp_headers, 1);
    assert_true(sb_str_eq_lit(r.resp_headers[0].name, "Allow"));
    assert_true(sb_str_eq_lit(r.resp_headers[0].value, "GET, DELETE"));
}

static void test_head_as_get(void **state)
{
    (void)state;
    sb_req r = make("HEAD", "/v1/rooms/lobby");
    sb_router_dispatch(router, &r);
    assert_string_equal(called, "get-room");
}

static void test_bad_escape(void **state)
{
    (void)state;
    sb_req r = make("GET", "/v1/rooms/a%2");
    sb_router_dispatch(router, &r);
    assert_null(called);
    assert_int_equal(sent_status, 400);
    r = make("GET", "/v1/rooms/%zz");
    sb_router_dispatch(router, &r);
    assert_int_equal(sent_status, 400);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_params),
        cmocka_unit_test(test_not_found),
        cmocka_unit_test(test_method_not_allowed),
        cmocka_unit_test(test_head_as_get),
        cmocka_unit_test(test_bad_escape),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
