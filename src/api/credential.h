/*
 * What creating a long-lived credential (POST /v1/keys, POST /v1/oauth-clients) shares:
 * the checks of the body members both take, the secret shown once, and the 201 that shows
 * it. Each check answers nothing itself: it returns false with `why` (the 400 detail) filled,
 * so that the handler keeps the order of its own checks (the first failing one is the one
 * reported).
 */
#ifndef SB_API_CREDENTIAL_H
#define SB_API_CREDENTIAL_H

#include <jansson.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "api/app.h"

/* "scopes": a non-empty array of known scope names, into *out. */
bool sb_credential_scopes(const json_t *body, uint32_t *out, char *why, size_t whylen);

/* "allowed_ips": absent or null leaves *text NULL; otherwise 1 to SB_IPALLOW_MAX_ENTRIES
 * addresses or CIDRs, kept as compact JSON text in req's arena. Returns 0, SB_EINVAL (why
 * says what is wrong: answer 400) or SB_ENOMEM (the copy failed: answer 500, never create
 * the credential without its list). */
int sb_credential_allowed_ips(sb_req *req, const json_t *body, char **text, char *why,
                              size_t whylen);

/* "tls_client_certificate_sha256" as read from the body (fp NULL: absent, out untouched):
 * 64 hex digits or openssl's colon-separated form, written to out as 64 lower-case hex
 * digits. */
bool sb_credential_fingerprint(const char *fp, size_t len, char out[65], char *why, size_t whylen);

/* A new secret: prefix followed by the base64url of 32 random bytes (43 characters). The
 * random bytes are wiped; the caller wipes out once it has shown it. 0, or SB_EMSGSIZE when
 * cap is too small, or the error of the random source. */
int sb_credential_new_secret(const char *prefix, char *out, size_t cap);

/* Inside a create job: the row that sql (?1 = id) selects, as row(st) in *out. 0, or SB_EIO
 * when there is no such row or it cannot be read. */
int sb_credential_read(sqlite3 *db, const char *sql, const char *id,
                       json_t *(*row)(sqlite3_stmt *st), json_t **out);

/* A create job's done: rc < 0 answers 500 (logged as what) and drops result; otherwise adds
 * secret (unless empty) to result as member `field` and answers 201 with Cache-Control:
 * no-store. Wipes secret[0..cap) either way. */
void sb_credential_created(sb_req *req, int rc, json_t *result, const char *field, char *secret,
                           size_t cap, const char *what);

#endif
