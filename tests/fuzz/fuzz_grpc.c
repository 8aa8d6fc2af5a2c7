/*
 * libFuzzer target for the gRPC adapter's parsers: the length-prefixed message reader and
 * the JSON <-> protobuf converter (both directions), over the messages the adapter uses.
 *
 * Input: one selector byte (which message type), one mode byte, then the data.
 *   mode even: the data is a gRPC body: messages are read one after another as the adapter
 *     does; each is unpacked as the selected type and converted to JSON;
 *   mode odd: the data is JSON, converted to the selected type.
 * Beyond "never crash", whenever a message converts to JSON, that JSON converts back to a
 * message and to JSON again unchanged (the converter is stable), and the parser never
 * reports a message that does not fit in the input or is larger than its bound.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "api/pbjson.h"
#include "google/protobuf/struct.pb-c.h"
#include "grpc/health/v1/health.pb-c.h"
#include "net/grpc_frame.h"
#include "switchboard/error.h"
#include "switchboard/v1/events.pb-c.h"
#include "switchboard/v1/rooms.pb-c.h"
#include "switchboard/v1/sessions.pb-c.h"
#include "switchboard/v1/tokens.pb-c.h"
#include "switchboard/v1/webhooks.pb-c.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            abort();                                                                               \
    } while (0)

#define MAX_MSG 65536

static const ProtobufCMessageDescriptor *const types[] = {
    &switchboard__v1__room__descriptor,
    &switchboard__v1__participant__descriptor,
    &switchboard__v1__create_room_request__descriptor,
    &switchboard__v1__update_participant_request__descriptor,
    &switchboard__v1__send_data_request__descriptor,
    &switchboard__v1__list_rooms_response__descriptor,
    &switchboard__v1__create_token_request__descriptor,
    &switchboard__v1__list_sessions_response__descriptor,
    &switchboard__v1__update_webhook_request__descriptor,
    &switchboard__v1__retry_webhook_deliveries_request__descriptor,
    &switchboard__v1__list_webhook_deliveries_response__descriptor,
    &switchboard__v1__event__descriptor,
    &google__protobuf__struct__descriptor,
    &google__protobuf__value__descriptor,
    &grpc__health__v1__health_check_request__descriptor,
    &grpc__health__v1__health_check_response__descriptor,
};

/* JSON from a message of type d: it must survive JSON -> message -> JSON unchanged. */
static void check_stable(const ProtobufCMessageDescriptor *d, const json_t *j1)
{
    ProtobufCMessage *m = NULL;
    int rc = sb_pbjson_to_message(d, j1, &m, NULL, 0);
    if (rc == SB_ENOMEM)
        return;
    CHECK(rc == 0);
    json_t *j2 = NULL;
    rc = sb_pbjson_from_message(m, &j2);
    CHECK(rc == 0 || rc == SB_ENOMEM);
    if (rc == 0)
        CHECK(json_equal(j1, j2));
    json_decref(j2);
    /* and the message packs to something that unpacks */
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = malloc(n ? n : 1);
    if (buf) {
        protobuf_c_message_pack(m, buf);
        ProtobufCMessage *u = protobuf_c_message_unpack(d, &sb_pb_allocator, n, buf);
        CHECK(u != NULL);
        protobuf_c_message_free_unpacked(u, &sb_pb_allocator);
        free(buf);
    }
    protobuf_c_message_free_unpacked(m, &sb_pb_allocator);
}

static void from_wire(const ProtobufCMessageDescriptor *d, const uint8_t *data, size_t len)
{
    size_t off = 0;
    for (int i = 0; i < 16 && off < len; i++) {
        sb_grpc_msg msg;
        int rc = sb_grpc_msg_parse(data + off, len - off, MAX_MSG, &msg);
        if (rc) {
            CHECK(rc == SB_EAGAIN || rc == SB_EMSGSIZE || rc == SB_EPROTO);
            return;
        }
        CHECK(msg.used >= SB_GRPC_PREFIX_LEN && msg.used <= len - off);
        CHECK(msg.data.len <= MAX_MSG && msg.used == msg.data.len + SB_GRPC_PREFIX_LEN);
        CHECK((const uint8_t *)msg.data.base == data + off + SB_GRPC_PREFIX_LEN);
        off += msg.used;
        ProtobufCMessage *m = protobuf_c_message_unpack(d, &sb_pb_allocator, msg.data.len,
                                                        (const uint8_t *)msg.data.base);
        if (!m)
            continue;
        json_t *j = NULL;
        if (sb_pbjson_from_message(m, &j) == 0) {
            check_stable(d, j);
            json_decref(j);
        }
        protobuf_c_message_free_unpacked(m, &sb_pb_allocator);
    }
}

static void from_json(const ProtobufCMessageDescriptor *d, const uint8_t *data, size_t len)
{
    json_t *j = json_loadb((const char *)data, len, 0, NULL);
    if (!j)
        return;
    ProtobufCMessage *m = NULL;
    char err[128];
    int rc = sb_pbjson_to_message(d, j, &m, err, sizeof err);
    CHECK(rc == 0 || rc == SB_EINVAL || rc == SB_ENOTSUP || rc == SB_ENOMEM);
    CHECK(rc == 0 ? m != NULL : m == NULL);
    if (m) {
        json_t *j1 = NULL;
        if (sb_pbjson_from_message(m, &j1) == 0) {
            check_stable(d, j1);
            json_decref(j1);
        }
        protobuf_c_message_free_unpacked(m, &sb_pb_allocator);
    }
    json_decref(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    const ProtobufCMessageDescriptor *d = types[data[0] % (sizeof types / sizeof types[0])];
    if (data[1] & 1)
        from_json(d, data + 2, size - 2);
    else
        from_wire(d, data + 2, size - 2);
    return 0;
}
