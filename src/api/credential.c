/* The parts of creating an API key and an OAuth client that are the same (credential.h). */
#include "api/credential.h"

#include <openssl/crypto.h>
#include <stdio.h>

#include "auth/scopes.h"
#include "core/alloc.h"
#include "guard/ipallow.h"
#include "switchboard/error.h"

bool sb_credential_scopes(const json_t *body, uint32_t *out, char *why, size_t whylen)
{
    if (sb_scopes_from_json(json_object_get(body, "scopes"), out) == 0)
        return true;
    snprintf(why, whylen, "scopes must be a non-empty array of known scope names");
    return false;
}

static bool valid_ips(const json_t *a, char *why, size_t whylen)
{
    if (!json_is_array(a) || json_array_size(a) == 0 ||
        json_array_size(a) > SB_IPALLOW_MAX_ENTRIES) {
        snprintf(why, whylen, "allowed_ips must be an array of 1 to %d addresses or CIDRs",
                 SB_IPALLOW_MAX_ENTRIES);
        return false;
    }
    size_t i;
    const json_t *v;
    json_array_foreach(a, i, v)
    {
        sb_cidr cidr;
        char err[160];
        if (!json_is_string(v) ||
            sb_ipallow_parse_entry(json_string_value(v), json_string_length(v), &cidr, err,
                                   sizeof err) != 0) {
            snprintf(why, whylen, "allowed_ips[%zu]: %s", i,
                     json_is_string(v) ? err : "must be a string");
            return false;
        }
    }
    return true;
}

int sb_credential_allowed_ips(sb_req *req, const json_t *body, char **text, char *why,
                              size_t whylen)
{
    const json_t *ips = json_object_get(body, "allowed_ips");
    *text = NULL;
    if (!ips || json_is_null(ips))
        return 0;
    if (!valid_ips(ips, why, whylen))
        return SB_EINVAL;
    char *t = json_dumps(ips, JSON_COMPACT);
    *text = t ? sb_arena_strndup(&req->arena, t, strlen(t)) : NULL;
    free(t);
    /* Never a credential without the restriction its creator asked for. */
    return *text ? 0 : SB_ENOMEM;
}

/* 64 hex digits, or the colon-separated form openssl prints; stored as lower-case hex. */
static bool normalise_fingerprint(const char *in, size_t len, char out[65])
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        char ch = in[i];
        if (ch == ':' && n % 2 == 0 && n > 0 && i + 1 < len)
            continue;
        if (n == 64 ||
            !((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F')))
            return false;
        out[n++] = (char)(ch >= 'A' && ch <= 'F' ? ch - 'A' + 'a' : ch);
    }
    out[n] = '\0';
    return n == 64;
}

bool sb_credential_fingerprint(const char *fp, size_t len, char out[65], char *why, size_t whylen)
{
    if (!fp || normalise_fingerprint(fp, len, out))
        return true;
    snprintf(why, whylen, "tls_client_certificate_sha256 must be the certificate's SHA-256 in hex");
    return false;
}

int sb_credential_new_secret(const char *prefix, char *out, size_t cap)
{
    unsigned char r[32];
    char enc[48];
    sb_buf b = {enc, 0, sizeof enc, sizeof enc};
    int rc = sb_random(r, sizeof r);
    rc = rc ? rc : sb_jose_b64url_encode(r, sizeof r, &b);
    OPENSSL_cleanse(r, sizeof r);
    if (rc == 0) {
        int n = snprintf(out, cap, "%s%.*s", prefix, (int)b.len, b.base);
        rc = n < 0 || (size_t)n >= cap ? SB_EMSGSIZE : 0;
    }
    OPENSSL_cleanse(enc, sizeof enc);
    return rc;
}

int sb_credential_read(sqlite3 *db, const char *sql, const char *id,
                       json_t *(*row)(sqlite3_stmt *st), json_t **out)
{
    sqlite3_stmt *st = sb_store_stmt(db, sql);
    if (!st)
        return SB_EIO;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW)
        *out = row(st);
    sqlite3_reset(st);
    return *out ? 0 : SB_EIO;
}

void sb_credential_created(sb_req *req, int rc, json_t *result, const char *field, char *secret,
                           size_t cap, const char *what)
{
    if (rc < 0) {
        json_decref(result);
        OPENSSL_cleanse(secret, cap);
        sb_app_internal_error(req, what, rc);
        return;
    }
    if (secret[0])
        json_object_set_new(result, field, json_string(secret));
    OPENSSL_cleanse(secret, cap);
    sb_resp_header(req, "Cache-Control", SB_STR_LIT("no-store"));
    sb_app_send_json(req, 201, result);
}
