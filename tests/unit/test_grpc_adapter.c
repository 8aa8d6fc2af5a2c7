/* The gRPC adapter without the wire: a gRPC request with capturing ops goes through a real
 * router to fake REST handlers, so the translation and the call's lifetime rules can be
 * checked one by one: answers, problems, Trailers-Only, the query and headers the REST side
 * sees, deadlines (also with the REST answer arriving after the deadline), a stream the client
 * cancels or whose deadline passes, unknown methods and bad messages. ASan checks that every
 * call is freed exactly once. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "api/grpc.h"
#include "api/pbjson.h"
#include "core/alloc.h"
#include "net/loop.h"
#include "switchboard/v1/events.pb-c.h"
#include "switchboard/v1/rooms.pb-c.h"

static const char ROOM[] = "{\"name\":\"sync\",\"metadata\":null,\"max_participants\":3,"
                           "\"empty_timeout_seconds\":300,\"auto_record\":false,\"status\":"
                           "\"open\",\"created_at\":\"2026-01-01T00:00:00.000Z\","
                           "\"num_participants\":0,\"active_session_id\":null}";

/* What the gRPC request received. */
static struct {
    int sends, begins, ends;
    int http_status;
    char grpc_status[8], grpc_message[128], trailer_status[8];
    bool details, accept_identity;
    uint8_t data[4096];
    size_t data_len;
    void (*abort_fn)(sb_req *req, void *ud);
    void *abort_ud;
} o;

/* What the REST side saw, and requests it holds. */
static struct {
    char query[256], auth[128], accept[64], ctype[64];
    sb_req *held;
    sb_req *stream;
    bool stream_aborted;
} rest;

static void copy_hdr(const sb_req *req, const char *name, char *out, size_t n)
{
    out[0] = 0;
    for (int i = 0; i < req->num_resp_headers; i++)
        if (sb_str_case_eq(req->resp_headers[i].name, name)) {
            size_t l =
                req->resp_headers[i].value.len < n - 1 ? req->resp_headers[i].value.len : n - 1;
            memcpy(out, req->resp_headers[i].value.base, l);
            out[l] = 0;
        }
}

static void o_send(sb_req *req, int status, sb_str ctype, const void *body, size_t len)
{
    (void)ctype, (void)body;
    req->responded = true;
    o.sends++;
    o.http_status = status;
    o.data_len = len;
    char tmp[16];
    copy_hdr(req, "grpc-status", o.grpc_status, sizeof o.grpc_status);
    copy_hdr(req, "grpc-message", o.grpc_message, sizeof o.grpc_message);
    char d[8];
    copy_hdr(req, "grpc-status-details-bin", d, sizeof d);
    o.details = d[0] != 0;
    copy_hdr(req, "grpc-accept-encoding", tmp, sizeof tmp);
    o.accept_identity = strcmp(tmp, "identity") == 0;
}

static int o_begin(sb_req *req, int status, sb_str ctype, int64_t hb_ms, sb_str hb)
{
    (void)ctype, (void)hb_ms, (void)hb;
    req->responded = true;
    o.begins++;
    o.http_status = status;
    return 0;
}

static int o_write(sb_req *req, const void *data, size_t len)
{
    (void)req;
    assert_true(o.data_len + len <= sizeof o.data);
    memcpy(o.data + o.data_len, data, len);
    o.data_len += len;
    return 0;
}

static void o_end_trailers(sb_req *req, const sb_http_header *t, size_t n)
{
    (void)req;
    o.ends++;
    for (size_t i = 0; i < n; i++)
        if (sb_str_eq_lit(t[i].name, "grpc-status")) {
            memcpy(o.trailer_status, t[i].value.base, t[i].value.len);
            o.trailer_status[t[i].value.len] = 0;
        }
}

static void o_on_abort(sb_req *req, void (*fn)(sb_req *req, void *ud), void *ud)
{
    (void)req;
    o.abort_fn = fn;
    o.abort_ud = ud;
}

static const sb_req_ops outer_ops = {
    .proto = "test",
    .send = o_send,
    .stream_begin = o_begin,
    .stream_write = o_write,
    .stream_end_trailers = o_end_trailers,
    .on_abort = o_on_abort,
};

/* ---- fake REST routes ---------------------------------------------------------------- */

static void seen(sb_req *req)
{
    snprintf(rest.query, sizeof rest.query, "%.*s", (int)req->query.len,
             req->query.base ? req->query.base : "");
    const sb_http_header *h = sb_req_header(req, "authorization");
    snprintf(rest.auth, sizeof rest.auth, "%.*s", h ? (int)h->value.len : 0,
             h ? h->value.base : "");
    h = sb_req_header(req, "accept");
    snprintf(rest.accept, sizeof rest.accept, "%.*s", h ? (int)h->value.len : 0,
             h ? h->value.base : "");
    h = sb_req_header(req, "content-type");
    snprintf(rest.ctype, sizeof rest.ctype, "%.*s", h ? (int)h->value.len : 0,
             h ? h->value.base : "");
}

static void room_get(sb_req *req, void *ud)
{
    (void)ud;
    seen(req);
    if (sb_str_eq_lit(req->params[0], "sync"))
        sb_resp_send(req, 200, "application/json", ROOM, sizeof ROOM - 1);
    else if (sb_str_eq_lit(req->params[0], "later"))
        rest.held = req;
    else
        sb_resp_problem(req, 404, "not-found", "no such open room in this project");
}

static void rooms_list(sb_req *req, void *ud)
{
    (void)ud;
    seen(req);
    static const char list[] = "{\"data\":[],\"next_cursor\":null}";
    sb_resp_send(req, 200, "application/json", list, sizeof list - 1);
}

static void stream_aborted(sb_req *req, void *ud)
{
    (void)req, (void)ud;
    rest.stream_aborted = true;
    rest.stream = NULL;
}

static void events(sb_req *req, void *ud)
{
    (void)ud;
    seen(req);
    sb_req_on_abort(req, stream_aborted, NULL);
    assert_int_equal(sb_resp_stream_begin(req, 200, "application/x-ndjson", 15000, "\n"), 0);
    rest.stream = req;
    static const char ev[] = "{\"id\":\"evt_1\",\"type\":\"room.created\",\"created_at\":\"x\","
                             "\"project_id\":\"prj_1\",\"data\":{\"room\":{\"name\":\"r\"}}}\n";
    assert_int_equal(sb_resp_stream_write(req, ev, sizeof ev - 1), 0);
}

/* ---- harness --------------------------------------------------------------------------- */

static sb_router *router;
static void *state;
static sb_loop *loop;
static sb_req outer;
static char outer_arena[4096];
static sb_http_header hdrs[4];
static uint8_t body[256];

static int setup(void **st)
{
    (void)st;
    assert_int_equal(sb_router_new(&router), 0);
    assert_int_equal(sb_router_add(router, "GET", "/v1/rooms/{name}", room_get, NULL), 0);
    assert_int_equal(sb_router_add(router, "GET", "/v1/rooms", rooms_list, NULL), 0);
    assert_int_equal(sb_router_add(router, "GET", "/v1/events", events, NULL), 0);
    assert_int_equal(sb__grpc_install(router, 1024, 1, &state), 0);
    loop = sb_calloc(1, sizeof *loop);
    assert_non_null(loop);
    assert_int_equal(uv_loop_init(&loop->uv), 0);
    loop->router = router;
    return 0;
}

static int teardown(void **st)
{
    (void)st;
    uv_run(&loop->uv, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop->uv), 0); /* no timer left behind */
    sb_free(loop);
    sb_router_free(router);
    sb_free(state);
    return 0;
}

/* Sends one gRPC request: message bytes (already a protobuf) behind a prefix with `flag`. */
static void call_raw(const char *path, const void *msg, size_t len, uint8_t flag,
                     const char *timeout, const char *ctype)
{
    memset(&o, 0, sizeof o);
    memset(&rest.query, 0, sizeof rest.query);
    memset(&outer, 0, sizeof outer);
    sb_arena_init(&outer.arena, outer_arena, sizeof outer_arena, 1 << 20);
    int n = 0;
    hdrs[n++] = (sb_http_header){SB_STR_LIT("content-type"), sb_str_from(ctype)};
    hdrs[n++] = (sb_http_header){SB_STR_LIT("authorization"), SB_STR_LIT("Bearer k")};
    hdrs[n++] = (sb_http_header){SB_STR_LIT("te"), SB_STR_LIT("trailers")};
    if (timeout)
        hdrs[n++] = (sb_http_header){SB_STR_LIT("grpc-timeout"), sb_str_from(timeout)};
    outer.headers = hdrs;
    outer.num_headers = (size_t)n;
    outer.method = SB_STR_LIT("POST");
    outer.path = sb_str_from(path);
    body[0] = flag;
    body[1] = (uint8_t)(len >> 24), body[2] = (uint8_t)(len >> 16), body[3] = (uint8_t)(len >> 8),
    body[4] = (uint8_t)len;
    memcpy(body + 5, msg, len);
    outer.body = (sb_str){(const char *)body, len + 5};
    outer.ops = &outer_ops;
    outer.loop = loop;
    memcpy(outer.request_id, "rid1", 4);
    outer.request_id_len = 4;
    sb_router_dispatch(router, &outer);
}

static void call(const char *path, const ProtobufCMessage *m, const char *timeout)
{
    uint8_t b[200];
    size_t n = protobuf_c_message_pack(m, b);
    call_raw(path, b, n, 0, timeout, "application/grpc");
}

static void get_room(const char *name, const char *timeout)
{
    Switchboard__V1__GetRoomRequest r = SWITCHBOARD__V1__GET_ROOM_REQUEST__INIT;
    r.name = (char *)name;
    call("/switchboard.v1.RoomService/GetRoom", &r.base, timeout);
}

static void done(void)
{
    sb_arena_reset(&outer.arena);
}

/* ---- tests ------------------------------------------------------------------------------ */

static void test_unary_ok(void **st)
{
    (void)st;
    get_room("sync", NULL);
    assert_string_equal(rest.auth, "Bearer k");
    assert_string_equal(rest.accept, "application/json");
    assert_int_equal(o.begins, 1);
    assert_int_equal(o.ends, 1);
    assert_string_equal(o.trailer_status, "0");
    assert_true(o.data_len > 5);
    assert_int_equal(o.data[0], 0);
    Switchboard__V1__Room *r =
        switchboard__v1__room__unpack(&sb_pb_allocator, o.data_len - 5, o.data + 5);
    assert_non_null(r);
    assert_string_equal(r->name, "sync");
    assert_true(r->has_max_participants);
    assert_int_equal(r->max_participants, 3);
    assert_null(r->metadata);
    switchboard__v1__room__free_unpacked(r, &sb_pb_allocator);
    done();
    /* the same answer again comes from the converted-answer cache: same bytes */
    uint8_t first[512];
    size_t flen = o.data_len;
    memcpy(first, o.data, flen);
    get_room("sync", NULL);
    assert_int_equal(o.data_len, flen);
    assert_memory_equal(o.data, first, flen);
    done();
}

static void test_problem_trailers_only(void **st)
{
    (void)st;
    get_room("missing", NULL);
    assert_int_equal(o.begins, 0);
    assert_int_equal(o.sends, 1);
    assert_int_equal(o.http_status, 200);
    assert_int_equal(o.data_len, 0);
    assert_string_equal(o.grpc_status, "5");
    assert_string_equal(o.grpc_message, "no such open room in this project");
    assert_true(o.details);
    done();
}

static void test_query_and_body_fields(void **st)
{
    (void)st;
    Switchboard__V1__ListRoomsRequest r = SWITCHBOARD__V1__LIST_ROOMS_REQUEST__INIT;
    r.has_limit = 1;
    r.limit = 2;
    r.cursor = "a b/c";
    call("/switchboard.v1.RoomService/ListRooms", &r.base, NULL);
    assert_string_equal(rest.query, "limit=2&cursor=a%20b%2Fc");
    assert_string_equal(o.trailer_status, "0");
    assert_int_equal(o.data_len, 5); /* an empty ListRoomsResponse */
    done();
    /* a path field that is missing never reaches REST */
    rest.query[0] = 0;
    get_room(NULL, NULL);
    assert_string_equal(o.grpc_status, "3");
    assert_string_equal(o.grpc_message, "name is required");
    done();
}

static void test_unary_deadline_then_late_answer(void **st)
{
    (void)st;
    rest.held = NULL;
    get_room("later", "20m");
    assert_non_null(rest.held);
    assert_int_equal(o.sends + o.begins, 0);
    uv_run(&loop->uv, UV_RUN_DEFAULT); /* the deadline passes */
    assert_int_equal(o.sends, 1);
    assert_string_equal(o.grpc_status, "4");
    done();
    memset(&o, 0, sizeof o);
    /* the REST handler finishes afterwards: nothing reaches the finished gRPC request */
    sb_resp_send(rest.held, 200, "application/json", ROOM, sizeof ROOM - 1);
    rest.held = NULL;
    assert_int_equal(o.sends + o.begins + o.ends, 0);
}

static void test_answer_before_deadline(void **st)
{
    (void)st;
    rest.held = NULL;
    get_room("later", "10S");
    sb_resp_send(rest.held, 200, "application/json", ROOM, sizeof ROOM - 1);
    assert_string_equal(o.trailer_status, "0");
    uv_run(&loop->uv, UV_RUN_DEFAULT); /* the timer was closed: returns at once */
    done();
}

static void test_stream_cancelled(void **st)
{
    (void)st;
    rest.stream_aborted = false;
    Switchboard__V1__SubscribeRequest s = SWITCHBOARD__V1__SUBSCRIBE_REQUEST__INIT;
    s.since = "evt_0";
    call("/switchboard.v1.EventService/Subscribe", &s.base, NULL);
    assert_string_equal(rest.accept, "application/x-ndjson");
    assert_string_equal(rest.query, "since=evt_0");
    assert_int_equal(o.begins, 1);
    assert_true(o.data_len > 5);
    Switchboard__V1__Event *e =
        switchboard__v1__event__unpack(&sb_pb_allocator, o.data_len - 5, o.data + 5);
    assert_non_null(e);
    assert_string_equal(e->id, "evt_1");
    assert_non_null(e->data);
    assert_string_equal(e->data->fields[0]->key, "room");
    switchboard__v1__event__free_unpacked(e, &sb_pb_allocator);
    assert_non_null(o.abort_fn);
    o.abort_fn(&outer, o.abort_ud); /* the client cancels */
    assert_true(rest.stream_aborted);
    done();
}

static void test_stream_deadline(void **st)
{
    (void)st;
    rest.stream_aborted = false;
    Switchboard__V1__SubscribeRequest s = SWITCHBOARD__V1__SUBSCRIBE_REQUEST__INIT;
    call("/switchboard.v1.EventService/Subscribe", &s.base, "15m");
    assert_int_equal(o.begins, 1);
    uv_run(&loop->uv, UV_RUN_DEFAULT);
    assert_int_equal(o.ends, 1);
    assert_string_equal(o.trailer_status, "4");
    assert_true(rest.stream_aborted);
    done();
}

static void test_unknown_and_bad(void **st)
{
    (void)st;
    call_raw("/switchboard.v1.Nope/Nope", "", 0, 0, NULL, "application/grpc+proto");
    assert_string_equal(o.grpc_status, "12");
    done();
    call_raw("/nothing/here", "", 0, 0, NULL, "application/json");
    assert_int_equal(o.http_status, 404);
    assert_string_equal(o.grpc_status, "");
    done();
    call_raw("/switchboard.v1.RoomService/GetRoom", "\x0a\x01x", 3, 1, NULL, "application/grpc");
    assert_string_equal(o.grpc_status, "12");
    assert_true(o.accept_identity);
    done();
    call_raw("/switchboard.v1.RoomService/GetRoom", "\x0a\x09x", 3, 0, NULL, "application/grpc");
    assert_string_equal(o.grpc_status, "3"); /* malformed protobuf */
    done();
    call_raw("/switchboard.v1.RoomService/GetRoom", "", 0, 0, "0m", "application/grpc");
    assert_string_equal(o.grpc_status, "4"); /* a deadline already past */
    done();
    call_raw("/switchboard.v1.RoomService/GetRoom", "", 0, 0, NULL, "text/plain");
    assert_int_equal(o.http_status, 415);
    done();
}

static void test_oversized(void **st)
{
    (void)st;
    static uint8_t msg[1100];
    memset(msg, 0, sizeof msg);
    call_raw("/switchboard.v1.RoomService/GetRoom", msg, 200, 0, NULL, "application/grpc");
    /* 200 bytes of zeros is not a valid message: field 0 */
    assert_string_equal(o.grpc_status, "3");
    done();
    /* a prefix announcing more than grpc.max_message_bytes */
    memset(&o, 0, sizeof o);
    memset(&outer, 0, sizeof outer);
    sb_arena_init(&outer.arena, outer_arena, sizeof outer_arena, 1 << 20);
    static const uint8_t pre[] = {0, 0, 0, 0x04, 0x4c, 1, 2, 3};
    hdrs[0] = (sb_http_header){SB_STR_LIT("content-type"), SB_STR_LIT("application/grpc")};
    outer.headers = hdrs;
    outer.num_headers = 1;
    outer.method = SB_STR_LIT("POST");
    outer.path = SB_STR_LIT("/switchboard.v1.RoomService/GetRoom");
    outer.body = (sb_str){(const char *)pre, sizeof pre};
    outer.ops = &outer_ops;
    outer.loop = loop;
    sb_router_dispatch(router, &outer);
    assert_string_equal(o.grpc_status, "8");
    done();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unary_ok),
        cmocka_unit_test(test_problem_trailers_only),
        cmocka_unit_test(test_query_and_body_fields),
        cmocka_unit_test(test_unary_deadline_then_late_answer),
        cmocka_unit_test(test_answer_before_deadline),
        cmocka_unit_test(test_stream_cancelled),
        cmocka_unit_test(test_stream_deadline),
        cmocka_unit_test(test_unknown_and_bad),
        cmocka_unit_test(test_oversized),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
