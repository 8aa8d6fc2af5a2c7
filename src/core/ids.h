/* Identifiers and timestamps as the API shows them. */
#ifndef SB_CORE_IDS_H
#define SB_CORE_IDS_H

#include <stddef.h>
#include <stdint.h>

#define SB_ID_MAX 48 /* longest id including its prefix and NUL */

/* A new random id: `prefix` + "_" + 20 lowercase base32 characters (100 bits from the
 * CSPRNG), e.g. "rm_3k5x…". out must hold SB_ID_MAX bytes. Returns 0 or SB_EIO. */
int sb_id_new(const char *prefix, char *out);

/* Milliseconds since the Unix epoch, wall clock. */
int64_t sb_time_ms(void);

/* RFC 3339 UTC with milliseconds, "2026-11-27T07:38:18.229Z"; out holds 32 bytes. */
void sb_time_rfc3339(int64_t ms, char *out);

/* Parses RFC 3339 ("…Z" or "…±hh:mm", optional fraction) into ms. Returns 0 or SB_EINVAL. */
int sb_time_parse_rfc3339(const char *s, int64_t *ms);

/* Random bytes from the CSPRNG. Returns 0 or SB_EIO. */
int sb_random(void *out, size_t n);

#endif
