/*
 * A set of revoked token ids (participant tokens' `jti`), shared by every loop.
 *
 * Keys are (project_id, jti) pairs, kept as a 128-bit digest so that entries are fixed-size;
 * each entry lives until its `until` time (a token can live at most 24 h, so a revocation
 * need not outlive that) and is dropped when the table is next rebuilt. Lookups take a read
 * lock: revocations are rare and the check happens once per join, not per frame.
 * Bounded: at most SB_REVOCATIONS_MAX live entries; past that sb_revocations_add returns
 * SB_EAGAIN (the caller answers 503) rather than growing without limit.
 */
#ifndef SB_AUTH_REVOCATIONS_H
#define SB_AUTH_REVOCATIONS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SB_REVOCATIONS_MAX (1u << 20)

typedef struct sb_revocations sb_revocations;

int sb_revocations_new(sb_revocations **out);
void sb_revocations_free(sb_revocations *r);

/* Adds (project_id, jti) until `until_ms` (wall clock). 0, SB_ENOMEM or SB_EAGAIN (full). */
int sb_revocations_add(sb_revocations *r, const char *project_id, const char *jti, int64_t until_ms,
                       int64_t now_ms);

/* Whether (project_id, jti) is revoked at now_ms. An empty jti is never revoked. */
bool sb_revocations_has(sb_revocations *r, const char *project_id, const char *jti, int64_t now_ms);

/* Live entries (for metrics and tests). */
size_t sb_revocations_count(sb_revocations *r, int64_t now_ms);

#endif
