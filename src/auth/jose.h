/*
 * JOSE and JWT on OpenSSL: base64url, signing keys, compact JWS, JWT sign and verify
 * (RFC 7515, 7517, 7518, 7519, 7638, 8037), following the JWT best practices of RFC 8725.
 *
 * Three algorithms exist here, one per key type, so the algorithm is a property of the key
 * and never of the token:
 *
 *   ES256  ECDSA P-256 with SHA-256; signatures are the 64-byte JOSE form R || S
 *   EdDSA  Ed25519 (RFC 8037); signatures are 64 bytes
 *   HS256  HMAC-SHA-256 with a secret of at least 32 bytes; never published in a JWKS
 *
 * Verification takes the key by the token's `kid` and then requires the token's `alg` to
 * equal the key's algorithm exactly; `alg: none` in any spelling, `crit`, duplicate member
 * names, non-object JSON and oversized tokens are refused before any claim is looked at,
 * and the payload is parsed only after its signature has been checked.
 *
 * Keys are immutable once built and reference-counted: one key may be used for signing and
 * verification from any number of threads at once. Nothing here keeps global mutable state
 * beyond what OpenSSL keeps for itself.
 *
 * JSON values (claims, headers, JWKs) are jansson objects; jansson allocates them with its
 * own allocator, and the caller releases what it receives with json_decref.
 *
 * Errors are SB_E* codes. A token that is well formed enough to judge but is refused
 * returns SB_EAUTH, with the precise reason reported as an sb_jwt_reason.
 */
#ifndef SB_AUTH_JOSE_H
#define SB_AUTH_JOSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "core/buf.h"

/* Longest compact JWS or JWT accepted or produced, in bytes. Longer input is refused
 * (SB_JWT_TOO_LARGE) before any decoding; sb_jwt_sign refuses to produce a longer token. */
#define SB_JOSE_MAX_COMPACT 8192

/* Longest `kid`, in bytes. */
#define SB_JOSE_MAX_KID 255

/* HS256 secrets: at least the hash size (RFC 7518 section 3.2), at most this. */
#define SB_JOSE_HS256_MIN_SECRET 32
#define SB_JOSE_HS256_MAX_SECRET 1024

/* Bounds on sb_jwt_expect.leeway and .now (the latter: 9999-12-31T23:59:59Z). */
#define SB_JWT_MAX_LEEWAY 86400
#define SB_JWT_MAX_NOW    253402300799LL

/* ---- base64url (RFC 4648 section 5, no padding; RFC 7515 section 2) ---------------- */

/* Characters needed to encode n bytes. */
#define SB_JOSE_B64URL_LEN(n) (((n) / 3) * 4 + ((n) % 3 ? (n) % 3 + 1 : 0))

/* Appends the base64url encoding of in[0..len) to out, without padding. SB_EMSGSIZE if it
 * would pass out->max (out is then unchanged), SB_ENOMEM. */
int sb_jose_b64url_encode(const void *in, size_t len, sb_buf *out);

/*
 * Decodes strictly: only the characters A-Z a-z 0-9 '-' '_' are accepted (no '=' padding,
 * no whitespace, no '+' or '/'); a length of 1 modulo 4 and unused trailing bits that are
 * not zero are refused, so every byte string has exactly one accepted encoding.
 * Writes the bytes to out (which may be NULL when cap is 0) and their number to *out_len.
 * Returns 0, SB_EINVAL for invalid input, or SB_EMSGSIZE if valid input does not fit in
 * cap bytes (*out_len then holds the size needed). Nothing is written to out on error.
 */
int sb_jose_b64url_decode(const char *in, size_t len, unsigned char *out, size_t cap,
                          size_t *out_len);

/* The same for standard base64 with padding (RFC 4648 section 4, as HTTP Basic uses it):
 * '+' and '/' instead of '-' and '_', a non-empty length that is a multiple of 4, at most
 * two '=' and only at the end; unused bits must be zero. */
int sb_jose_b64_decode(const char *in, size_t len, unsigned char *out, size_t cap, size_t *out_len);

/* ---- keys ---------------------------------------------------------------------------- */

typedef enum sb_jose_alg {
    SB_JOSE_ES256 = 1,
    SB_JOSE_EDDSA,
    SB_JOSE_HS256,
} sb_jose_alg;

/* The JWA name ("ES256", "EdDSA", "HS256"), or NULL for a value outside the enum. */
const char *sb_jose_alg_name(sb_jose_alg alg);

typedef struct sb_jose_key sb_jose_key;

/*
 * Constructors. Each returns 0 and stores a new key with one reference in *out, or a
 * negative error with *out untouched: SB_EINVAL (malformed input, wrong size, key and
 * declared parameters disagree, kid too long or empty), SB_ENOTSUP (a well-formed key of
 * a type not supported here, e.g. RSA or P-384), SB_ENOMEM, SB_ETLS (OpenSSL failed for
 * another reason).
 *
 * kid: 1..SB_JOSE_MAX_KID bytes, copied. Where a constructor accepts kid == NULL for an
 * asymmetric key, the kid becomes the key's RFC 7638 JWK thumbprint (SHA-256, base64url),
 * which is stable across restarts for a persisted key.
 */

/* A fresh ES256 (P-256) or EdDSA (Ed25519) key pair. SB_EINVAL for SB_JOSE_HS256. */
int sb_jose_key_generate(sb_jose_alg alg, const char *kid, sb_jose_key **out);

/*
 * A key from PEM text: a private key (PKCS#8 "PRIVATE KEY" or SEC1 "EC PRIVATE KEY") or a
 * public key ("PUBLIC KEY", SubjectPublicKeyInfo). The algorithm follows from the key
 * type: P-256 gives ES256, Ed25519 gives EdDSA. Encrypted PEM is refused (SB_EINVAL); no
 * passphrase prompt can ever appear. pem need not be NUL-terminated; at most 64 KiB.
 */
int sb_jose_key_from_pem(const char *kid, const char *pem, size_t len, sb_jose_key **out);

/* An HS256 key from secret bytes (copied, wiped when the key is freed). kid is required. */
int sb_jose_key_from_secret(const char *kid, const void *secret, size_t len, sb_jose_key **out);

/*
 * A key from a JWK (RFC 7517): kty "EC" with crv "P-256" and x, y (and d for a private
 * key); kty "OKP" with crv "Ed25519" and x (and d); kty "oct" with k (HS256). Coordinates
 * and private scalars must have their exact lengths (32 bytes). If the JWK has "alg" it
 * must name the algorithm of the key type; if it has "use" it must be "sig". For OKP with
 * both d and x, x must be the public key of d; EC points must lie on the curve.
 * kid: if NULL, the JWK's "kid" is used; if that is absent too, the thumbprint (EC, OKP)
 * or SB_EINVAL (oct).
 */
int sb_jose_key_from_jwk(const json_t *jwk, const char *kid, sb_jose_key **out);

/* Adds a reference; returns key. Thread-safe. */
sb_jose_key *sb_jose_key_ref(sb_jose_key *key);

/* Drops a reference; the last one frees the key and wipes HS256 secret bytes. NULL is a
 * no-op. Thread-safe. */
void sb_jose_key_free(sb_jose_key *key);

sb_jose_alg sb_jose_key_alg(const sb_jose_key *key);

/* The kid, NUL-terminated; valid while the caller holds a reference. */
const char *sb_jose_key_kid(const sb_jose_key *key);

/* True if the key can sign: an asymmetric private key, or any HS256 key. */
bool sb_jose_key_can_sign(const sb_jose_key *key);

/*
 * Appends the private key as unencrypted PKCS#8 PEM to out, for persistence. The text is
 * a secret: the caller stores it with restrictive permissions and wipes the buffer
 * (OPENSSL_cleanse) before freeing it. SB_EINVAL for HS256 or public-only keys;
 * SB_EMSGSIZE (out unchanged), SB_ENOMEM, SB_ETLS.
 */
int sb_jose_key_private_pem(const sb_jose_key *key, sb_buf *out);

/* Appends the public key as SubjectPublicKeyInfo PEM. SB_EINVAL for HS256. */
int sb_jose_key_public_pem(const sb_jose_key *key, sb_buf *out);

/*
 * The public JWK: {"kty","crv","x"[,"y"],"kid","alg","use":"sig"}; never any private
 * member. Stores a new object in *out (caller json_decref). SB_EINVAL for HS256.
 */
int sb_jose_key_public_jwk(const sb_jose_key *key, json_t **out);

/* Appends the key's RFC 7638 JWK thumbprint (base64url SHA-256, 43 characters).
 * SB_EINVAL for HS256. */
int sb_jose_key_thumbprint(const sb_jose_key *key, sb_buf *out);

/*
 * A JWKS document {"keys":[...]} with the public JWK of every ES256 and EdDSA key in
 * keys[0..n); HS256 keys are skipped silently, so a mixed key list may be passed as is.
 * Stores a new object in *out (caller json_decref). SB_ENOMEM, SB_ETLS.
 */
int sb_jose_jwks(const sb_jose_key *const *keys, size_t n, json_t **out);

/* The key in keys[0..n) whose kid equals kid, or NULL. A building block for lookups. */
const sb_jose_key *sb_jose_keys_find(const sb_jose_key *const *keys, size_t n, const char *kid);

/* ---- outcome of verification -------------------------------------------------------- */

/* Why a token was refused. sb_jwt_strerror gives a short stable string for logs and
 * metrics labels; the strings are part of the interface and never change. */
typedef enum sb_jwt_reason {
    SB_JWT_OK = 0,           /* "ok" */
    SB_JWT_MALFORMED,        /* "malformed": not three base64url segments of JSON objects,
                                duplicate member names, invalid UTF-8, bad header types */
    SB_JWT_TOO_LARGE,        /* "too_large": longer than SB_JOSE_MAX_COMPACT */
    SB_JWT_ALG_NONE,         /* "alg_none": unsecured JWS, refused always */
    SB_JWT_CRIT,             /* "crit_unsupported": a "crit" header (we understand none) */
    SB_JWT_UNKNOWN_KID,      /* "unknown_kid": kid missing, not a string, or not found */
    SB_JWT_ALG_MISMATCH,     /* "alg_mismatch": header alg is not the key's algorithm */
    SB_JWT_BAD_SIGNATURE,    /* "bad_signature": wrong length or does not verify */
    SB_JWT_WRONG_TYPE,       /* "wrong_type": header typ is not the one expected */
    SB_JWT_BAD_CLAIM,        /* "bad_claim": exp missing, or exp/nbf/iat/iss/aud of the
                                wrong JSON type (times must be integers) */
    SB_JWT_EXPIRED,          /* "expired" */
    SB_JWT_NOT_YET_VALID,    /* "not_yet_valid": nbf in the future beyond the leeway */
    SB_JWT_ISSUED_IN_FUTURE, /* "issued_in_future": iat in the future beyond the leeway */
    SB_JWT_LIFETIME,         /* "lifetime_too_long": exp too far after iat/nbf/now */
    SB_JWT_WRONG_AUDIENCE,   /* "wrong_audience": aud missing or without the expected one */
    SB_JWT_WRONG_ISSUER,     /* "wrong_issuer" */
    SB_JWT_INTERNAL,         /* "internal": not a judgement on the token (SB_ENOMEM etc.) */
} sb_jwt_reason;

/* Never NULL; "unknown" for values outside the enum. */
const char *sb_jwt_strerror(sb_jwt_reason reason);

/* ---- compact JWS --------------------------------------------------------------------- */

/*
 * Appends the compact JWS BASE64URL(header) '.' BASE64URL(payload) '.' BASE64URL(sig) to
 * out. header is the exact protected-header JSON text, signed as given: it must be a JSON
 * object without duplicate names whose "alg" is the key's algorithm, and without "crit".
 * The payload is any bytes. The key must be able to sign.
 * Returns 0, SB_EINVAL, SB_EMSGSIZE (past out->max), SB_ENOMEM or SB_ETLS; on error out
 * is left as it was.
 */
int sb_jws_sign(const sb_jose_key *key, const char *header, size_t header_len, const void *payload,
                size_t payload_len, sb_buf *out);

/*
 * Verifies a compact JWS of at most SB_JOSE_MAX_COMPACT bytes against the one given key
 * (the caller chose it) and appends the decoded payload, which may be any bytes, to
 * payload. The header must be a JSON object whose "alg" equals the key's algorithm and
 * which has no "crit"; if it has a "kid", it must be the key's kid. No claim is examined:
 * for JWTs use sb_jwt_verify.
 * Returns 0, SB_EAUTH (refused; *reason says why), SB_EINVAL (bad arguments), SB_EMSGSIZE
 * (payload past its max), SB_ENOMEM. reason may be NULL; it is always set when given.
 */
int sb_jws_verify(const sb_jose_key *key, const char *token, size_t len, sb_buf *payload,
                  sb_jwt_reason *reason);

/* ---- JWT ----------------------------------------------------------------------------- */

/*
 * Signs claims (a JSON object, which must contain an integer "exp") as a JWT and appends
 * the compact form to out. The header is {"alg":<key alg>,"typ":"JWT","kid":<key kid>}
 * followed by the members of extra_header (may be NULL), which may replace "typ" (e.g.
 * "at+jwt", RFC 9068) and add other members, but must not contain "alg", "kid" or "crit".
 * Returns 0, SB_EINVAL, SB_EMSGSIZE (the token would pass SB_JOSE_MAX_COMPACT or
 * out->max, or the header JSON 1 KiB), SB_ENOMEM, SB_ETLS; on error out is left as it
 * was.
 */
int sb_jwt_sign(const sb_jose_key *key, const json_t *claims, const json_t *extra_header,
                sb_buf *out);

/*
 * Finds the verification key for a kid (NUL-terminated, never NULL). Returns a borrowed
 * key that stays valid until sb_jwt_verify returns, or NULL if the kid is unknown.
 * Called synchronously, at most once per sb_jwt_verify call, from the calling thread; it
 * is a lookup, not a completion callback, and may be called whatever the result.
 */
typedef const sb_jose_key *(*sb_jose_key_lookup_fn)(void *ud, const char *kid);

/* What the verifier requires of a JWT besides a valid signature. */
typedef struct sb_jwt_expect {
    /* Required: "aud" must equal it, or be an array of strings containing it. */
    const char *aud;
    /* Optional: if set, "iss" must equal it. */
    const char *iss;
    /*
     * Optional: the header "typ" required (compared case-insensitively, with an optional
     * "application/" prefix, RFC 7515 section 4.1.9), e.g. "at+jwt". If NULL, "typ" must
     * be absent or "JWT", so that explicitly typed tokens of another kind (RFC 8725
     * section 3.11) are never taken for plain JWTs.
     */
    const char *typ;
    /* Current time, Unix seconds, 0..SB_JWT_MAX_NOW. */
    int64_t now;
    /* Allowed clock skew in seconds, 0..SB_JWT_MAX_LEEWAY. */
    int64_t leeway;
    /* If > 0: exp - iat and exp - nbf (where present) and, if neither is present,
     * exp - now must not exceed it. */
    int64_t max_lifetime;
} sb_jwt_expect;

/*
 * Checks the registered claims of a verified payload (a JSON object):
 *   exp: required integer; valid while now < exp + leeway.
 *   nbf: optional integer; valid once now >= nbf - leeway.
 *   iat: optional integer; refused if iat > now + leeway.
 *   max_lifetime as described at sb_jwt_expect.
 *   iss: checked when expect->iss is set; aud: always checked.
 * Other claims are the caller's. Returns 0, SB_EAUTH (*reason set) or SB_EINVAL (bad
 * arguments; *reason = SB_JWT_INTERNAL). reason may be NULL.
 */
int sb_jwt_check_claims(const json_t *claims, const sb_jwt_expect *expect, sb_jwt_reason *reason);

/*
 * Verifies a compact JWT and, if it is accepted, stores its claims in *claims_out (caller
 * json_decref; claims_out may be NULL to discard them). In order:
 *   1. at most SB_JOSE_MAX_COMPACT bytes (token need not be NUL-terminated);
 *   2. three base64url segments, header a JSON object without duplicate names;
 *   3. "alg" a string and not "none" in any case; no "crit";
 *   4. "kid" a non-empty string that lookup resolves to a key;
 *   5. "alg" equal to that key's algorithm;
 *   6. the signature (HS256 compared in constant time; ES256 exactly 64 bytes R || S);
 *   7. header "typ" as expect->typ requires;
 *   8. payload a JSON object without duplicate names (parsed only now);
 *   9. sb_jwt_check_claims.
 * Returns 0 (accepted, *reason = SB_JWT_OK), SB_EAUTH (refused, *reason says why; the
 * caller answers 401 or closes with 4001), SB_EINVAL (lookup or expect invalid; lookup is
 * then never called), SB_ENOMEM. reason may be NULL. On any error *claims_out is NULL.
 *
 * A cache of verified tokens in front of this must be keyed by the whole token (see
 * sb_jwt_token_hash), never by its signature alone, and must still check exp.
 */
int sb_jwt_verify(const char *token, size_t len, sb_jose_key_lookup_fn lookup, void *ud,
                  const sb_jwt_expect *expect, json_t **claims_out, sb_jwt_reason *reason);

/* SHA-256 of the whole token, for keying a verified-token cache. Returns 0 or SB_ETLS. */
int sb_jwt_token_hash(const char *token, size_t len, unsigned char out[32]);

/* ---- internals, for unit tests ------------------------------------------------------- */

/* Signs the JWS signing input as is with key; writes the JOSE-form signature (32 bytes
 * for HS256, 64 otherwise) to sig. Lets tests build tokens no public function would. */
int sb__jose_sign_input(const sb_jose_key *key, const char *input, size_t len,
                        unsigned char sig[64], size_t *sig_len);

/* ECDSA P-256 signature conversions between DER (ECDSA-Sig-Value) and JOSE R || S.
 * der_to_raw: SB_EINVAL unless der is one canonical DER signature with 0 < r, s < 2^256.
 * raw_to_der: writes at most 72 bytes; SB_EMSGSIZE if cap is smaller than needed. */
int sb__jose_ecdsa_der_to_raw(const unsigned char *der, size_t len, unsigned char raw[64]);
int sb__jose_ecdsa_raw_to_der(const unsigned char raw[64], unsigned char *der, size_t cap,
                              size_t *der_len);

#endif
