/*
 * A bounded set of token ids (jti) with expiry times: the revoked access tokens.
 *
 * At most `capacity` live entries; an entry whose expiry has passed is dropped when room is
 * needed (a revoked token that has expired is refused by its exp anyway). Ids are kept as
 * 128 bits of their SHA-256, so the memory is fixed at creation (about 32 bytes per entry
 * with the table's slack) and nothing is allocated afterwards except when expired entries
 * are swept out. Thread-safe: one mutex, held for a hash probe.
 */
#ifndef SB_AUTH_JTI_SET_H
#define SB_AUTH_JTI_SET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct sb_jti_set sb_jti_set;

/* capacity 1..(1 << 24). Returns 0, SB_ERANGE or SB_ENOMEM. */
int sb_jti_set_new(size_t capacity, sb_jti_set **out);
void sb_jti_set_free(sb_jti_set *s);

/* Adds jti until exp (Unix seconds; the later exp wins for an id already present). An exp
 * ≤ now adds nothing. Returns 0, or SB_EAGAIN when `capacity` unexpired entries exist. */
int sb_jti_set_add(sb_jti_set *s, const char *jti, int64_t exp, int64_t now);

/* Whether jti is in the set (expired entries not yet swept out count as present). */
bool sb_jti_set_contains(sb_jti_set *s, const char *jti);

/* Entries held (live and not yet swept). */
size_t sb_jti_set_size(sb_jti_set *s);

#endif
