/* Credential scopes (API.md "Conventions"), as a bit set. */
#ifndef SB_AUTH_SCOPES_H
#define SB_AUTH_SCOPES_H

#include <jansson.h>
#include <stdint.h>

enum {
    SB_SCOPE_ROOMS_READ = 1u << 0,
    SB_SCOPE_ROOMS_WRITE = 1u << 1,
    SB_SCOPE_TOKENS_WRITE = 1u << 2,
    SB_SCOPE_SESSIONS_READ = 1u << 3,
    SB_SCOPE_RECORDINGS_READ = 1u << 4,
    SB_SCOPE_RECORDINGS_WRITE = 1u << 5,
    SB_SCOPE_WEBHOOKS_READ = 1u << 6,
    SB_SCOPE_WEBHOOKS_WRITE = 1u << 7,
    SB_SCOPE_EVENTS_READ = 1u << 8,
    SB_SCOPE_KEYS_READ = 1u << 9,
    SB_SCOPE_KEYS_WRITE = 1u << 10,
    SB_SCOPE_PROJECTS_WRITE = 1u << 11,
};
#define SB_SCOPE_COUNT 12
#define SB_SCOPES_ALL  ((1u << SB_SCOPE_COUNT) - 1)
/* Everything a project's own admin may hold: all but creating other tenants. */
#define SB_SCOPES_PROJECT (SB_SCOPES_ALL & ~(uint32_t)SB_SCOPE_PROJECTS_WRITE)

/* The scope's name ("rooms:read"), or NULL for a bit that is not exactly one scope. */
const char *sb_scope_name(uint32_t bit);

/* Parses a space-separated list. Returns 0, or SB_EINVAL naming the bad scope in *bad. */
int sb_scopes_parse(const char *s, size_t len, uint32_t *out, const char **bad, size_t *badlen);

/* Parses a JSON array of scope strings (not empty). Returns 0 or SB_EINVAL. */
int sb_scopes_from_json(const json_t *arr, uint32_t *out);

/* A JSON array of the names, in canonical order. */
json_t *sb_scopes_to_json(uint32_t scopes);

/* Space-separated names into out (cap ≥ 256). */
void sb_scopes_format(uint32_t scopes, char *out, size_t cap);

#endif
