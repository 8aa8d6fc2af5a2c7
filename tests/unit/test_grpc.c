/* gRPC pieces without the wire: the length-prefixed message parser, grpc-timeout,
 * grpc-message encoding, HTTP -> gRPC status, and the JSON <-> protobuf converter. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <string.h>

#include "api/pbjson.h"
#include "google/protobuf/struct.pb-c.h"
#include "grpc/health/v1/health.pb-c.h"
#include "net/grpc_frame.h"
#include "switchboard/error.h"
#include "switchboard/v1/events.pb-c.h"
#include "switchboard/v1/rooms.pb-c.h"

static void test_msg_parse(void **state)
{
    (void)state;
    const uint8_t one[] = {0, 0, 0, 0, 3, 'a', 'b', 'c', 0, 0, 0, 0, 0};
    sb_grpc_msg m;
    assert_int_equal(sb_grpc_msg_parse(one, sizeof one, 100, &m), 0);
    assert_false(m.compressed);
    assert_int_equal(m.data.len, 3);
    assert_memory_equal(m.data.base, "abc", 3);
    assert_int_equal(m.used, 8);
    /* the second message is empty */
    assert_int_equal(sb_grpc_msg_parse(one + 8, 5, 100, &m), 0);
    assert_int_equal(m.data.len, 0);
    /* incomplete prefix, incomplete body */
    assert_int_equal(sb_grpc_msg_parse(one, 4, 100, &m), SB_EAGAIN);
    assert_int_equal(sb_grpc_msg_parse(one, 7, 100, &m), SB_EAGAIN);
    assert_int_equal(sb_grpc_msg_parse(one, 0, 100, &m), SB_EAGAIN);
    /* too large is refused from the prefix alone */
    const uint8_t big[] = {0, 0x7f, 0xff, 0xff, 0xff};
    assert_int_equal(sb_grpc_msg_parse(big, sizeof big, 1 << 20, &m), SB_EMSGSIZE);
    assert_int_equal(sb_grpc_msg_parse(one, sizeof one, 2, &m), SB_EMSGSIZE);
    /* compressed flag, bad flag */
    const uint8_t comp[] = {1, 0, 0, 0, 1, 'x'};
    assert_int_equal(sb_grpc_msg_parse(comp, sizeof comp, 100, &m), 0);
    assert_true(m.compressed);
    const uint8_t bad[] = {2, 0, 0, 0, 1, 'x'};
    assert_int_equal(sb_grpc_msg_parse(bad, sizeof bad, 100, &m), SB_EPROTO);
}

static void test_msg_prefix(void **state)
{
    (void)state;
    uint8_t p[5];
    sb_grpc_msg_prefix(p, 0x01020304);
    const uint8_t want[] = {0, 1, 2, 3, 4};
    assert_memory_equal(p, want, 5);
}

static void test_timeout(void **state)
{
    (void)state;
    int64_t ms = -1;
    assert_int_equal(sb_grpc_timeout_parse(SB_STR_LIT("1S"), &ms), 0);
    assert_int_equal(ms, 1000);
    assert_int_equal(sb_grpc_timeout_parse(SB_STR_LIT("2M"), &ms), 0);
    assert_int_equal(ms, 120000);
    assert_int_equal(sb_grpc_timeout_parse(SB_STR_LIT("1H"), &ms), 0);
    assert_int_equal(ms, 3600000);
    assert_int_equal(sb_grpc_timeout_parse(SB_STR_LIT("250m"), &ms), 0);
    assert_int_equal(ms, 250);
    assert_int_equal(sb_grpc_timeout_parse(SB_STR_LIT("1u"), &ms), 0);
    assert_int_equal(ms, 1); /* rounded up: never 0 for a positive timeout */
    assert_int_equal(sb_grpc_timeout_parse(SB_STR_LIT("1500000n"), &ms), 0);
    assert_int_equal(ms, 2);
    assert_int_equal(sb_grpc_timeout_parse(SB_STR_LIT("0m"), &ms), 0);
    assert_int_equal(ms, 0);
    assert_int_equal(sb_grpc_timeout_parse(SB_STR_LIT("99999999H"), &ms), 0);
    assert_true(ms > 0);
    assert_int_equal(sb_grpc_timeout_parse(SB_STR_LIT("S"), &ms), SB_EINVAL);
    assert_int_equal(sb_grpc_timeout_parse(SB_STR_LIT("123456789S"), &ms),
                     SB_EINVAL); /* 9 digits */
    assert_int_equal(sb_grpc_timeout_parse(SB_STR_LIT("10x"), &ms), SB_EINVAL);
    assert_int_equal(sb_grpc_timeout_parse(SB_STR_LIT("-1S"), &ms), SB_EINVAL);
    assert_int_equal(sb_grpc_timeout_parse(SB_STR_LIT(""), &ms), SB_EINVAL);
}

static void test_percent_encode(void **state)
{
    (void)state;
    char st[64];
    sb_buf b = {st, 0, sizeof st, sizeof st};
    const char in[] = "50% off\n\xc3\xa9";
    assert_int_equal(sb_grpc_percent_encode(&b, in, strlen(in)), 0);
    assert_int_equal(b.len, strlen("50%25 off%0A%C3%A9"));
    assert_memory_equal(b.base, "50%25 off%0A%C3%A9", b.len);
    char tiny[4];
    sb_buf t = {tiny, 0, sizeof tiny, sizeof tiny};
    assert_int_not_equal(sb_grpc_percent_encode(&t, "\n\n\n", 3), 0); /* bounded */
}

static void test_status_map(void **state)
{
    (void)state;
    assert_int_equal(sb_grpc_status_from_http(200), SB_GRPC_OK);
    assert_int_equal(sb_grpc_status_from_http(204), SB_GRPC_OK);
    assert_int_equal(sb_grpc_status_from_http(400), SB_GRPC_INVALID_ARGUMENT);
    assert_int_equal(sb_grpc_status_from_http(401), SB_GRPC_UNAUTHENTICATED);
    assert_int_equal(sb_grpc_status_from_http(403), SB_GRPC_PERMISSION_DENIED);
    assert_int_equal(sb_grpc_status_from_http(404), SB_GRPC_NOT_FOUND);
    assert_int_equal(sb_grpc_status_from_http(409), SB_GRPC_ABORTED);
    assert_int_equal(sb_grpc_status_from_http(412), SB_GRPC_FAILED_PRECONDITION);
    assert_int_equal(sb_grpc_status_from_http(413), SB_GRPC_RESOURCE_EXHAUSTED);
    assert_int_equal(sb_grpc_status_from_http(429), SB_GRPC_RESOURCE_EXHAUSTED);
    assert_int_equal(sb_grpc_status_from_http(500), SB_GRPC_INTERNAL);
    assert_int_equal(sb_grpc_status_from_http(503), SB_GRPC_UNAVAILABLE);
    assert_int_equal(sb_grpc_status_from_http(504), SB_GRPC_DEADLINE_EXCEEDED);
    assert_string_equal(sb_grpc_status_name(SB_GRPC_NOT_FOUND), "NOT_FOUND");
    assert_string_equal(sb_grpc_status_name(SB_GRPC_UNAUTHENTICATED), "UNAUTHENTICATED");
}

static json_t *parse(const char *s)
{
    json_t *j = json_loads(s, 0, NULL);
    assert_non_null(j);
    return j;
}

static void test_json_room(void **state)
{
    (void)state;
    json_t *j = parse("{\"name\":\"r1\",\"metadata\":null,\"max_participants\":5,"
                      "\"empty_timeout_seconds\":300,\"auto_record\":true,\"status\":\"open\","
                      "\"created_at\":\"2026-01-01T00:00:00.000Z\",\"num_participants\":0,"
                      "\"active_session_id\":null,\"added_later\":{\"x\":1}}");
    ProtobufCMessage *m = NULL;
    char err[128];
    assert_int_equal(
        sb_pbjson_to_message(&switchboard__v1__room__descriptor, j, &m, err, sizeof err), 0);
    Switchboard__V1__Room *r = (Switchboard__V1__Room *)m;
    assert_string_equal(r->name, "r1");
    assert_null(r->metadata); /* null = absent */
    assert_true(r->has_max_participants);
    assert_int_equal(r->max_participants, 5);
    assert_true(r->has_auto_record);
    assert_true(r->auto_record);
    assert_true(r->has_num_participants); /* 0 is a value, not absence */
    assert_null(r->active_session_id);

    /* packs, unpacks, and comes back as the same JSON minus the nulls and unknown keys */
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t buf[512];
    assert_true(n < sizeof buf);
    protobuf_c_message_pack(m, buf);
    ProtobufCMessage *u =
        protobuf_c_message_unpack(&switchboard__v1__room__descriptor, &sb_pb_allocator, n, buf);
    assert_non_null(u);
    json_t *back = NULL;
    assert_int_equal(sb_pbjson_from_message(u, &back), 0);
    json_t *want = parse("{\"name\":\"r1\",\"max_participants\":5,\"empty_timeout_seconds\":300,"
                         "\"auto_record\":true,\"status\":\"open\",\"created_at\":"
                         "\"2026-01-01T00:00:00.000Z\",\"num_participants\":0}");
    assert_true(json_equal(back, want));
    json_decref(want);
    json_decref(back);
    json_decref(j);
    protobuf_c_message_free_unpacked(u, &sb_pb_allocator);
    protobuf_c_message_free_unpacked(m, &sb_pb_allocator);
}

static void expect_error(const ProtobufCMessageDescriptor *d, const char *json, int rc,
                         const char *field)
{
    json_t *j = parse(json);
    ProtobufCMessage *m = (ProtobufCMessage *)1;
    char err[128];
    assert_int_equal(sb_pbjson_to_message(d, j, &m, err, sizeof err), rc);
    assert_null(m);
    assert_non_null(strstr(err, field));
    json_decref(j);
}

static void test_json_errors(void **state)
{
    (void)state;
    const ProtobufCMessageDescriptor *room = &switchboard__v1__room__descriptor;
    expect_error(room, "{\"name\":5}", SB_EINVAL, "name");
    expect_error(room, "{\"max_participants\":-1}", SB_EINVAL, "max_participants");
    expect_error(room, "{\"max_participants\":4294967296}", SB_EINVAL, "max_participants");
    expect_error(room, "{\"max_participants\":1.5}", SB_EINVAL, "max_participants");
    expect_error(room, "{\"auto_record\":1}", SB_EINVAL, "auto_record");
    expect_error(room, "[]", SB_EINVAL, "message");
    expect_error(&switchboard__v1__participant__descriptor, "{\"grants\":[true]}", SB_EINVAL,
                 "grants");
    expect_error(&switchboard__v1__send_data_request__descriptor, "{\"to\":\"a\"}", SB_EINVAL,
                 "to");
    expect_error(&switchboard__v1__send_data_request__descriptor, "{\"to\":[\"a\",1]}", SB_EINVAL,
                 "to");
    expect_error(&grpc__health__v1__health_check_response__descriptor, "{\"status\":\"BAD\"}",
                 SB_EINVAL, "status");
}

static void test_json_nested_repeated_enum(void **state)
{
    (void)state;
    json_t *j = parse("{\"identity\":\"a\",\"grants\":{\"publish\":true,\"admin\":false}}");
    ProtobufCMessage *m = NULL;
    assert_int_equal(
        sb_pbjson_to_message(&switchboard__v1__participant__descriptor, j, &m, NULL, 0), 0);
    Switchboard__V1__Participant *p = (Switchboard__V1__Participant *)m;
    assert_non_null(p->grants);
    assert_true(p->grants->has_publish && p->grants->publish);
    assert_true(p->grants->has_admin && !p->grants->admin);
    assert_false(p->grants->has_record);
    json_t *back = NULL;
    assert_int_equal(sb_pbjson_from_message(m, &back), 0);
    assert_true(json_equal(back, j));
    json_decref(back);
    json_decref(j);
    protobuf_c_message_free_unpacked(m, &sb_pb_allocator);

    j = parse("{\"room\":\"r\",\"data\":\"hi\",\"to\":[\"a\",\"b\"]}");
    assert_int_equal(
        sb_pbjson_to_message(&switchboard__v1__send_data_request__descriptor, j, &m, NULL, 0), 0);
    Switchboard__V1__SendDataRequest *s = (Switchboard__V1__SendDataRequest *)m;
    assert_int_equal(s->n_to, 2);
    assert_string_equal(s->to[1], "b");
    assert_int_equal(sb_pbjson_from_message(m, &back), 0);
    assert_true(json_equal(back, j));
    json_decref(back);
    json_decref(j);
    protobuf_c_message_free_unpacked(m, &sb_pb_allocator);

    /* proto3 enum: by name and by number; its default (0) is left out going back */
    j = parse("{\"status\":\"SERVING\"}");
    assert_int_equal(
        sb_pbjson_to_message(&grpc__health__v1__health_check_response__descriptor, j, &m, NULL, 0),
        0);
    assert_int_equal(((Grpc__Health__V1__HealthCheckResponse *)m)->status, 1);
    assert_int_equal(sb_pbjson_from_message(m, &back), 0);
    assert_true(json_equal(back, j));
    json_decref(back);
    json_decref(j);
    protobuf_c_message_free_unpacked(m, &sb_pb_allocator);
    j = parse("{\"status\":0}");
    assert_int_equal(
        sb_pbjson_to_message(&grpc__health__v1__health_check_response__descriptor, j, &m, NULL, 0),
        0);
    assert_int_equal(sb_pbjson_from_message(m, &back), 0);
    assert_int_equal(json_object_size(back), 0);
    json_decref(back);
    json_decref(j);
    protobuf_c_message_free_unpacked(m, &sb_pb_allocator);
}

static void test_json_struct(void **state)
{
    (void)state;
    json_t *j =
        parse("{\"id\":\"evt_1\",\"type\":\"room.created\",\"data\":{\"room\":{\"name\":"
              "\"r\",\"n\":3,\"f\":1.5,\"ok\":true,\"none\":null,\"list\":[1,\"x\",[],{}]}}}");
    ProtobufCMessage *m = NULL;
    assert_int_equal(sb_pbjson_to_message(&switchboard__v1__event__descriptor, j, &m, NULL, 0), 0);
    Switchboard__V1__Event *e = (Switchboard__V1__Event *)m;
    assert_non_null(e->data);
    assert_int_equal(e->data->n_fields, 1);
    assert_string_equal(e->data->fields[0]->key, "room");
    /* through the wire format and back to the same JSON */
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t buf[1024];
    protobuf_c_message_pack(m, buf);
    ProtobufCMessage *u =
        protobuf_c_message_unpack(&switchboard__v1__event__descriptor, &sb_pb_allocator, n, buf);
    assert_non_null(u);
    json_t *back = NULL;
    assert_int_equal(sb_pbjson_from_message(u, &back), 0);
    assert_true(json_equal(back, j));
    json_decref(back);
    json_decref(j);
    protobuf_c_message_free_unpacked(u, &sb_pb_allocator);
    protobuf_c_message_free_unpacked(m, &sb_pb_allocator);
}

static void test_json_depth(void **state)
{
    (void)state;
    char deep[512] = "{\"data\":";
    size_t n = strlen(deep);
    for (int i = 0; i < 40; i++)
        n += (size_t)snprintf(deep + n, sizeof deep - n, "{\"a\":");
    n += (size_t)snprintf(deep + n, sizeof deep - n, "1");
    for (int i = 0; i < 41; i++)
        deep[n++] = '}';
    deep[n] = 0;
    json_t *j = parse(deep);
    ProtobufCMessage *m = NULL;
    char err[128];
    assert_int_equal(
        sb_pbjson_to_message(&switchboard__v1__event__descriptor, j, &m, err, sizeof err),
        SB_EINVAL);
    assert_non_null(strstr(err, "deep"));
    json_decref(j);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_msg_parse),   cmocka_unit_test(test_msg_prefix),
        cmocka_unit_test(test_timeout),     cmocka_unit_test(test_percent_encode),
        cmocka_unit_test(test_status_map),  cmocka_unit_test(test_json_room),
        cmocka_unit_test(test_json_errors), cmocka_unit_test(test_json_nested_repeated_enum),
        cmocka_unit_test(test_json_struct), cmocka_unit_test(test_json_depth),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
