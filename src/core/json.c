#include "core/json.h"

#include <stdio.h>
#include <string.h>

#include "switchboard/error.h"

json_t *sb_json_parse_object(const char *body, size_t len, char *why, size_t whylen)
{
    json_error_t e;
    if (len == 0) {
        snprintf(why, whylen, "the request body must be a JSON object");
        return NULL;
    }
    json_t *j = json_loadb(body, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &e);
    if (!j) {
        snprintf(why, whylen, "invalid JSON at line %d, column %d: %s", e.line, e.column, e.text);
        return NULL;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        snprintf(why, whylen, "the request body must be a JSON object");
        return NULL;
    }
    return j;
}

static int dump_cb(const char *buffer, size_t size, void *data)
{
    return sb_buf_append(data, buffer, size) == 0 ? 0 : -1;
}

int sb_json_dump(const json_t *j, sb_buf *out)
{
    return json_dump_callback(j, dump_cb, out, JSON_COMPACT | JSON_ENCODE_ANY) == 0 ? 0 : SB_ENOMEM;
}

int sb_json_get_string(const json_t *obj, const char *key, const char **out, size_t *len,
                       size_t maxlen, char *why, size_t whylen)
{
    const json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_string(v)) {
        snprintf(why, whylen, "%s must be a string", key);
        return SB_EINVAL;
    }
    size_t n = json_string_length(v);
    if (n > maxlen) {
        snprintf(why, whylen, "%s must be at most %zu bytes", key, maxlen);
        return SB_EINVAL;
    }
    if (memchr(json_string_value(v), '\0', n)) {
        snprintf(why, whylen, "%s must not contain NUL characters", key);
        return SB_EINVAL;
    }
    *out = json_string_value(v);
    if (len)
        *len = n;
    return 0;
}

int sb_json_get_int(const json_t *obj, const char *key, int64_t *out, int64_t min, int64_t max,
                    char *why, size_t whylen)
{
    const json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
        snprintf(why, whylen, "%s must be an integer from %lld to %lld", key, (long long)min,
                 (long long)max);
        return SB_EINVAL;
    }
    *out = json_integer_value(v);
    return 0;
}

int sb_json_get_bool(const json_t *obj, const char *key, bool *out, char *why, size_t whylen)
{
    const json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_boolean(v)) {
        snprintf(why, whylen, "%s must be true or false", key);
        return SB_EINVAL;
    }
    *out = json_is_true(v);
    return 0;
}

int sb_json_only(const json_t *obj, const char *const *allowed, char *why, size_t whylen)
{
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)obj, k, v)
    {
        bool ok = false;
        for (const char *const *a = allowed; *a && !ok; a++)
            ok = strcmp(*a, k) == 0;
        if (!ok) {
            snprintf(why, whylen, "unknown field \"%.64s\"", k);
            return SB_EINVAL;
        }
    }
    return 0;
}
