#include "auth/scopes.h"

#include <string.h>

#include "switchboard/error.h"

static const char *const names[SB_SCOPE_COUNT] = {
    "rooms:read",      "rooms:write",      "tokens:write",  "sessions:read",
    "recordings:read", "recordings:write", "webhooks:read", "webhooks:write",
    "events:read",     "keys:read",        "keys:write",    "projects:write",
};

const char *sb_scope_name(uint32_t bit)
{
    for (int i = 0; i < SB_SCOPE_COUNT; i++)
        if (bit == 1u << i)
            return names[i];
    return NULL;
}

static int lookup(const char *s, size_t n, uint32_t *bit)
{
    for (int i = 0; i < SB_SCOPE_COUNT; i++) {
        if (strlen(names[i]) == n && memcmp(names[i], s, n) == 0) {
            *bit = 1u << i;
            return 0;
        }
    }
    return SB_EINVAL;
}

int sb_scopes_parse(const char *s, size_t len, uint32_t *out, const char **bad, size_t *badlen)
{
    uint32_t acc = 0;
    size_t i = 0;
    while (i < len) {
        while (i < len && s[i] == ' ')
            i++;
        size_t j = i;
        while (j < len && s[j] != ' ')
            j++;
        if (j > i) {
            uint32_t bit;
            if (lookup(s + i, j - i, &bit) != 0) {
                if (bad) {
                    *bad = s + i;
                    *badlen = j - i;
                }
                return SB_EINVAL;
            }
            acc |= bit;
        }
        i = j;
    }
    *out = acc;
    return 0;
}

int sb_scopes_from_json(const json_t *arr, uint32_t *out)
{
    if (!json_is_array(arr) || json_array_size(arr) == 0)
        return SB_EINVAL;
    uint32_t acc = 0;
    size_t i;
    const json_t *v;
    json_array_foreach(arr, i, v)
    {
        uint32_t bit;
        if (!json_is_string(v) || lookup(json_string_value(v), json_string_length(v), &bit) != 0)
            return SB_EINVAL;
        acc |= bit;
    }
    *out = acc;
    return 0;
}

json_t *sb_scopes_to_json(uint32_t scopes)
{
    json_t *a = json_array();
    for (int i = 0; a && i < SB_SCOPE_COUNT; i++)
        if (scopes & (1u << i))
            json_array_append_new(a, json_string(names[i]));
    return a;
}

void sb_scopes_format(uint32_t scopes, char *out, size_t cap)
{
    size_t n = 0;
    out[0] = '\0';
    for (int i = 0; i < SB_SCOPE_COUNT; i++) {
        if (!(scopes & (1u << i)))
            continue;
        size_t l = strlen(names[i]);
        if (n + l + 2 > cap)
            break;
        if (n)
            out[n++] = ' ';
        memcpy(out + n, names[i], l);
        n += l;
        out[n] = '\0';
    }
}
