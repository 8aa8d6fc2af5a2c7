/*
 * JSON <-> protobuf by reflection over protobuf-c descriptors: the gRPC adapter's only
 * translation layer, so that every gRPC method is the REST route with the same JSON.
 *
 * The mapping is the REST API's JSON, not the canonical proto3 JSON mapping: keys are the
 * fields' .proto names (snake_case, as REST spells them), 64-bit integers are JSON numbers,
 * enums are their value names (numbers without a name stay numbers), google.protobuf.Struct / Value
 * / ListValue are plain JSON objects / values / arrays, and map<string, V> fields are JSON objects.
 * Bytes fields have no JSON form here (SB_ENOTSUP).
 *
 * From JSON, a null or absent key leaves the field unset, and keys the message does not
 * have are ignored (REST may add fields before the .proto does). To JSON, a field is written
 * when it is present: set (proto2 `optional`, oneof members), non-empty (repeated), non-NULL
 * (messages), or not the default value (proto3 singular fields).
 *
 * Every message this module allocates comes from sb_pb_allocator (sb_malloc) and is freed
 * with protobuf_c_message_free_unpacked(m, &sb_pb_allocator).
 */
#ifndef SB_API_PBJSON_H
#define SB_API_PBJSON_H

#include <jansson.h>
#include <protobuf-c/protobuf-c.h>
#include <stddef.h>

#define SB_PBJSON_MAX_DEPTH 32 /* nested messages / JSON containers; deeper is an error */

extern ProtobufCAllocator sb_pb_allocator;

/*
 * Builds a message of type d from the JSON object j into *out (the caller frees it).
 * Returns 0; SB_EINVAL when j does not fit d (wrong JSON type, integer out of range,
 * unknown enum name, too deep), with a one-line reason naming the field in err; SB_ENOTSUP
 * for a bytes field; SB_ENOMEM.
 */
int sb_pbjson_to_message(const ProtobufCMessageDescriptor *d, const json_t *j,
                         ProtobufCMessage **out, char *err, size_t errlen);

/* The JSON object for m (new reference) into *out. Returns 0, SB_ENOTSUP (bytes field, or
 * a float that JSON cannot hold), SB_EINVAL (too deep) or SB_ENOMEM. */
int sb_pbjson_from_message(const ProtobufCMessage *m, json_t **out);

#endif
