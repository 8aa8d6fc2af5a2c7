/*
 * The wire formats of an OAuth 2.0 token endpoint that are not JSON: the
 * application/x-www-form-urlencoded request body (RFC 6749 section 3.2, appendix B) and
 * HTTP Basic client credentials with the extra form-urlencoding of RFC 6749 section 2.3.1.
 *
 * Both parsers are strict, bounded and allocation-free: they decode into a scratch buffer
 * the caller provides (at least as long as the input), so their results live as long as
 * that buffer. No I/O, no global state; safe from any thread.
 */
#ifndef SB_AUTH_OAUTH_H
#define SB_AUTH_OAUTH_H

#include <stdbool.h>
#include <stddef.h>

#include "core/str.h"

/* Most parameters in one form body; more is SB_EMSGSIZE. */
#define SB_OAUTH_MAX_PARAMS 16

typedef struct sb_oauth_param {
    sb_str name; /* decoded, NUL-terminated in the scratch buffer */
    sb_str value;
} sb_oauth_param;

/*
 * Parses body[0..len) as name=value pairs joined by '&', each percent-decoded with '+' as
 * space. Decoded bytes go to scratch (cap ≥ len + 2 × SB_OAUTH_MAX_PARAMS). Parameters
 * without a value ("a=" or "a") count as omitted (RFC 6749 section 3.1) and are left out of
 * out; empty pairs ("a=1&&b=2") are skipped. Returns the number of parameters in out, or:
 *   SB_EINVAL    bad percent-encoding, an empty name, or a decoded NUL byte;
 *   SB_EEXIST    a name sent twice with values (RFC 6749 section 3.2: MUST NOT repeat);
 *   SB_EMSGSIZE  more than SB_OAUTH_MAX_PARAMS parameters, or cap too small.
 */
int sb_oauth_form_parse(const char *body, size_t len, char *scratch, size_t cap,
                        sb_oauth_param out[SB_OAUTH_MAX_PARAMS]);

/* The value of parameter `name` among params[0..n), or NULL. */
const sb_str *sb_oauth_form_get(const sb_oauth_param *params, int n, const char *name);

/*
 * Decodes an Authorization header value "Basic <base64>" (scheme case-insensitive, strict
 * base64 with padding) into the client id and secret: the decoded text is split at its
 * first ':', and each part is then form-urldecoded (RFC 6749 section 2.3.1), so a secret
 * containing ':' or '%' survives. Parts go to scratch (cap ≥ len). Returns 0, SB_ENOENT if
 * the scheme is not Basic, SB_EINVAL for anything malformed (no ':', empty id, bad
 * encoding, NUL bytes), SB_EMSGSIZE if cap is too small.
 */
int sb_oauth_basic_decode(sb_str header, char *scratch, size_t cap, sb_str *id, sb_str *secret);

#endif
