/*
 * JSON in and out of requests (jansson).
 *
 * Request bodies are parsed strictly: an object at the top, duplicate member names refused,
 * the size already bounded by http.max_body_bytes. Responses are serialized compactly into
 * a bounded buffer.
 */
#ifndef SB_CORE_JSON_H
#define SB_CORE_JSON_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/buf.h"

/* Parses body as a JSON object. On failure returns NULL and writes a caller-facing reason
 * (position and jansson's message; never the body itself) into why. */
json_t *sb_json_parse_object(const char *body, size_t len, char *why, size_t whylen);

/* Appends the compact serialization of j to out. */
int sb_json_dump(const json_t *j, sb_buf *out);

/* Typed field access for validation. Each returns 0 when the field is absent or null
 * (leaving *out untouched: null means "not given") or valid, and SB_EINVAL (with why filled: "name
 * must be a string") otherwise. */
int sb_json_get_string(const json_t *obj, const char *key, const char **out, size_t *len,
                       size_t maxlen, char *why, size_t whylen);
int sb_json_get_int(const json_t *obj, const char *key, int64_t *out, int64_t min, int64_t max,
                    char *why, size_t whylen);
int sb_json_get_bool(const json_t *obj, const char *key, bool *out, char *why, size_t whylen);

/* Refuses members not in the NULL-terminated allowed list, naming the first unknown one. */
int sb_json_only(const json_t *obj, const char *const *allowed, char *why, size_t whylen);

#endif
