/*
 * libFuzzer target for the JWT verifier: arbitrary bytes go to sb_jwt_verify against a
 * fixed keyring (HS256 "hs", ES256 "es", EdDSA "ed"). It must never crash and never
 * accept: the fuzzer cannot forge signatures, and every validly signed seed in
 * tests/fuzz/corpus/jwt/ fails a claim check (expired, wrong audience, nbf in the future,
 * wrong typ, lifetime) at the fixed time below, so any acceptance is a verifier bug.
 *
 * Also checked on the same input: base64url decoding is canonical (decode then encode
 * gives the input back), and sb_jws_verify and sb_jwt_check_claims do not crash.
 *
 * The seeds were made with the RFC 7515 A.3 and RFC 8037 A.1 private keys and the HS256
 * secret below; their public halves form the keyring.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/jose.h"
#include "core/buf.h"
#include "switchboard/error.h"

#define NOW 1700000000LL

static const char hs_secret[] = "switchboard-fuzz-hs256-secret-0123456789";
static const char es_jwk[] = "{\"kty\":\"EC\",\"crv\":\"P-256\","
                             "\"x\":\"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU\","
                             "\"y\":\"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0\"}";
static const char ed_jwk[] = "{\"kty\":\"OKP\",\"crv\":\"Ed25519\","
                             "\"x\":\"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo\"}";

static const sb_jose_key *ring[3];

static sb_jose_key *from_jwk(const char *text, const char *kid)
{
    json_error_t err;
    json_t *j = json_loads(text, 0, &err);
    sb_jose_key *k = NULL;
    if (!j || sb_jose_key_from_jwk(j, kid, &k) != 0)
        abort();
    json_decref(j);
    return k;
}

static void init_ring(void)
{
    sb_jose_key *hs = NULL;
    if (sb_jose_key_from_secret("hs", hs_secret, sizeof hs_secret - 1, &hs) != 0)
        abort();
    ring[0] = hs;
    ring[1] = from_jwk(es_jwk, "es");
    ring[2] = from_jwk(ed_jwk, "ed");
}

static const sb_jose_key *lookup(void *ud, const char *kid)
{
    (void)ud;
    return sb_jose_keys_find(ring, 3, kid);
}

static void check_b64url(const uint8_t *data, size_t size)
{
    unsigned char out[4096];
    size_t n = 0;
    if (size > 5000 || sb_jose_b64url_decode((const char *)data, size, out, sizeof out, &n))
        return;
    sb_buf b;
    sb_buf_init(&b, 0);
    if (sb_jose_b64url_encode(out, n, &b) != 0 || b.len != size ||
        (size && memcmp(b.base, data, size) != 0)) {
        fprintf(stderr, "base64url: decode/encode does not round-trip\n");
        abort();
    }
    sb_buf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!ring[0])
        init_ring();
    const sb_jwt_expect expect = {.aud = "switchboard:rtc",
                                  .iss = NULL,
                                  .typ = NULL,
                                  .now = NOW,
                                  .leeway = 60,
                                  .max_lifetime = 86400};
    json_t *claims = NULL;
    sb_jwt_reason reason = SB_JWT_OK;
    int rc = sb_jwt_verify((const char *)data, size, lookup, NULL, &expect, &claims, &reason);
    if (rc == 0 || claims || (rc == SB_EAUTH && reason == SB_JWT_OK) ||
        (rc != SB_EAUTH && rc != SB_ENOMEM)) {
        fprintf(stderr, "sb_jwt_verify: rc %d, reason %s\n", rc, sb_jwt_strerror(reason));
        abort();
    }

    sb_buf payload;
    sb_buf_init(&payload, 0);
    for (size_t i = 0; i < 3; i++) {
        payload.len = 0;
        (void)sb_jws_verify(ring[i], (const char *)data, size, &payload, &reason);
    }
    sb_buf_free(&payload);

    json_error_t err;
    json_t *j = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &err);
    if (j) {
        (void)sb_jwt_check_claims(j, &expect, &reason);
        json_decref(j);
    }
    check_b64url(data, size);
    return 0;
}
