/*
 * gRPC over HTTP/2 (grpc/grpc doc/PROTOCOL-HTTP2.md): the pieces that do not depend on
 * messages or routes, kept apart so they can be unit-tested and fuzzed on their own.
 */
#ifndef SB_NET_GRPC_FRAME_H
#define SB_NET_GRPC_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "core/str.h"

#define SB_GRPC_PREFIX_LEN 5

/* Status codes (grpc/grpc doc/statuscodes.md). */
typedef enum sb_grpc_status {
    SB_GRPC_OK = 0,
    SB_GRPC_CANCELLED = 1,
    SB_GRPC_UNKNOWN = 2,
    SB_GRPC_INVALID_ARGUMENT = 3,
    SB_GRPC_DEADLINE_EXCEEDED = 4,
    SB_GRPC_NOT_FOUND = 5,
    SB_GRPC_ALREADY_EXISTS = 6,
    SB_GRPC_PERMISSION_DENIED = 7,
    SB_GRPC_RESOURCE_EXHAUSTED = 8,
    SB_GRPC_FAILED_PRECONDITION = 9,
    SB_GRPC_ABORTED = 10,
    SB_GRPC_OUT_OF_RANGE = 11,
    SB_GRPC_UNIMPLEMENTED = 12,
    SB_GRPC_INTERNAL = 13,
    SB_GRPC_UNAVAILABLE = 14,
    SB_GRPC_DATA_LOSS = 15,
    SB_GRPC_UNAUTHENTICATED = 16,
} sb_grpc_status;

/* One length-prefixed message: a slice of the input, not a copy. */
typedef struct sb_grpc_msg {
    bool compressed; /* the Compressed-Flag byte was 1 */
    sb_str data;
    size_t used; /* prefix + data: where the next message starts */
} sb_grpc_msg;

/*
 * Parses the length-prefixed message at the start of buf[0..len). Returns 0 and fills *out;
 * SB_EAGAIN when buf holds less than the whole message; SB_EMSGSIZE when its declared
 * length is above max (nothing else is read); SB_EPROTO when the flag byte is neither 0
 * nor 1.
 */
int sb_grpc_msg_parse(const void *buf, size_t len, size_t max, sb_grpc_msg *out);

/* Writes the 5-byte prefix for a message of len bytes (uncompressed) into out. */
void sb_grpc_msg_prefix(uint8_t out[SB_GRPC_PREFIX_LEN], size_t len);

/*
 * Parses a grpc-timeout value ("1*8DIGIT unit", unit one of H M S m u n) into
 * milliseconds, rounded up so that a positive timeout never becomes 0. Returns 0 or
 * SB_EINVAL.
 */
int sb_grpc_timeout_parse(sb_str v, int64_t *ms);

/* Appends s percent-encoded as grpc-message wants (bytes outside 0x20..0x7E, and '%').
 * Returns 0 or the sb_buf error. */
int sb_grpc_percent_encode(sb_buf *out, const char *s, size_t len);

/* The status for an HTTP status a REST handler answered with (docs/grpc.md). */
sb_grpc_status sb_grpc_status_from_http(int http_status);

/* "NOT_FOUND" etc. */
const char *sb_grpc_status_name(sb_grpc_status s);

#endif
