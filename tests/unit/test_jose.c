/*
 * JOSE/JWT: base64url, keys, RFC known-answer vectors, round trips and forged tokens.
 *
 * Known-answer vectors, copied from the RFCs (each one checks itself: a wrong byte in a
 * key or signature makes the verification below fail, and the Ed25519 signature is
 * deterministic):
 *   RFC 7515 A.1 (HS256 token and JWK), A.3 (ES256 token and JWK, incl. "d");
 *   RFC 8037 A.1 (Ed25519 private JWK), A.2 (public JWK), A.3 (JWK thumbprint),
 *   A.4 (Ed25519 signature over the example payload), A.5 (its validation);
 *   RFC 4648 section 10 (base64 test vectors, here in the base64url alphabet).
 * Derived with the openssl CLI (no RFC gives one): the RFC 7638 thumbprint of the RFC 7515
 * A.3 P-256 key.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>

#include "auth/jose.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "switchboard/error.h"

/* ---- RFC vectors --------------------------------------------------------------------- */

/* RFC 7515 A.1: {"typ":"JWT",\r\n "alg":"HS256"} and the JWT claims with CRLFs. */
static const char a1_token[] = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9"
                               "."
                               "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFt"
                               "cGxlLmNvbS9pc19yb290Ijp0cnVlfQ"
                               "."
                               "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
static const char a1_jwk[] = "{\"kty\":\"oct\",\"k\":\"AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-"
                             "EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow\"}";
static const char a1_payload[] =
    "{\"iss\":\"joe\",\r\n \"exp\":1300819380,\r\n \"http://example.com/is_root\":true}";

/* RFC 7515 A.3: {"alg":"ES256"}, the same payload. */
static const char a3_token[] =
    "eyJhbGciOiJFUzI1NiJ9"
    "."
    "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFt"
    "cGxlLmNvbS9pc19yb290Ijp0cnVlfQ"
    "."
    "DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";
static const char a3_jwk_pub[] = "{\"kty\":\"EC\",\"crv\":\"P-256\","
                                 "\"x\":\"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU\","
                                 "\"y\":\"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0\"}";
static const char a3_jwk_priv[] = "{\"kty\":\"EC\",\"crv\":\"P-256\","
                                  "\"x\":\"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU\","
                                  "\"y\":\"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0\","
                                  "\"d\":\"jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI\"}";

/* RFC 8037 A.1, A.2, A.3, A.4. */
static const char ed_jwk_priv[] = "{\"kty\":\"OKP\",\"crv\":\"Ed25519\","
                                  "\"d\":\"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A\","
                                  "\"x\":\"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo\"}";
static const char ed_jwk_pub[] = "{\"kty\":\"OKP\",\"crv\":\"Ed25519\","
                                 "\"x\":\"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo\"}";
static const char ed_thumbprint[] = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k";
static const char ed_payload[] = "Example of Ed25519 signing";
static const char ed_token[] =
    "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc."
    "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";

/* ---- fixtures ------------------------------------------------------------------------ */

#define NOW 1700000000LL

static sb_jose_key *k_es, *k_ed, *k_hs;
static const sb_jose_key *ring[3];
static int lookups;

static const sb_jose_key *lookup(void *ud, const char *kid)
{
    (void)ud;
    lookups++;
    return sb_jose_keys_find(ring, 3, kid);
}

typedef struct ring_ud {
    const sb_jose_key *const *keys;
    size_t n;
} ring_ud;

static const sb_jose_key *ud_lookup(void *ud, const char *kid)
{
    const ring_ud *r = ud;
    return sb_jose_keys_find(r->keys, r->n, kid);
}

static const char hs_secret[] = "0123456789abcdef0123456789abcdef-hs256-test-secret";

static int setup(void **state)
{
    (void)state;
    if (sb_jose_key_generate(SB_JOSE_ES256, "es", &k_es) ||
        sb_jose_key_generate(SB_JOSE_EDDSA, "ed", &k_ed) ||
        sb_jose_key_from_secret("hs", hs_secret, sizeof hs_secret - 1, &k_hs))
        return -1;
    ring[0] = k_es;
    ring[1] = k_ed;
    ring[2] = k_hs;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    sb_jose_key_free(k_es);
    sb_jose_key_free(k_ed);
    sb_jose_key_free(k_hs);
    return 0;
}

static sb_jwt_expect expect_default(void)
{
    sb_jwt_expect e = {.aud = "switchboard:rtc",
                       .iss = NULL,
                       .typ = NULL,
                       .now = NOW,
                       .leeway = 60,
                       .max_lifetime = 0};
    return e;
}

static json_t *claims_default(void)
{
    json_t *c = json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:s}", "iss", "https://sb.example", "sub",
                          "alice", "aud", "switchboard:rtc", "iat", (json_int_t)NOW, "nbf",
                          (json_int_t)NOW, "exp", (json_int_t)(NOW + 600), "room", "r1");
    assert_non_null(c);
    return c;
}

/* A JWT from a key, claims and an optional extra header; caller frees. */
static char *sign(const sb_jose_key *key, json_t *claims, json_t *extra)
{
    sb_buf b;
    sb_buf_init(&b, 0);
    assert_int_equal(sb_jwt_sign(key, claims, extra, &b), 0);
    assert_int_equal(sb_buf_append(&b, "", 1), 0);
    return b.base;
}

/* A token with exactly the given header and payload text, signed as is by key (any
 * header, no checks), or with an empty signature if key is NULL. Caller frees. */
static char *forge(const sb_jose_key *key, const char *header, const void *payload, size_t plen)
{
    sb_buf b;
    unsigned char sig[64];
    size_t n = 0;
    sb_buf_init(&b, 0);
    assert_int_equal(sb_jose_b64url_encode(header, strlen(header), &b), 0);
    assert_int_equal(sb_buf_append(&b, ".", 1), 0);
    assert_int_equal(sb_jose_b64url_encode(payload, plen, &b), 0);
    if (key)
        assert_int_equal(sb__jose_sign_input(key, b.base, b.len, sig, &n), 0);
    assert_int_equal(sb_buf_append(&b, ".", 1), 0);
    assert_int_equal(sb_jose_b64url_encode(sig, n, &b), 0);
    assert_int_equal(sb_buf_append(&b, "", 1), 0);
    return b.base;
}

static char *forge_str(const sb_jose_key *key, const char *header, const char *payload)
{
    return forge(key, header, payload, strlen(payload));
}

static sb_jwt_reason verify_n(const char *token, size_t len, const sb_jwt_expect *e,
                              json_t **claims)
{
    sb_jwt_reason r = SB_JWT_INTERNAL;
    int rc = sb_jwt_verify(token, len, lookup, NULL, e, claims, &r);
    if (r == SB_JWT_OK)
        assert_int_equal(rc, 0);
    else
        assert_int_equal(rc, SB_EAUTH);
    return r;
}

static sb_jwt_reason verify(const char *token, const sb_jwt_expect *e)
{
    return verify_n(token, strlen(token), e, NULL);
}

static sb_jwt_reason verify_default(const char *token)
{
    sb_jwt_expect e = expect_default();
    return verify(token, &e);
}

#define assert_reason(got, want) assert_string_equal(sb_jwt_strerror(got), sb_jwt_strerror(want))

static sb_jose_key *key_from_jwk_text(const char *text, const char *kid)
{
    json_error_t err;
    json_t *j = json_loads(text, 0, &err);
    sb_jose_key *k = NULL;
    assert_non_null(j);
    assert_int_equal(sb_jose_key_from_jwk(j, kid, &k), 0);
    json_decref(j);
    return k;
}

static int jwk_text_rc(const char *text)
{
    json_error_t err;
    json_t *j = json_loads(text, 0, &err);
    sb_jose_key *k = NULL;
    assert_non_null(j);
    int rc = sb_jose_key_from_jwk(j, "k", &k);
    json_decref(j);
    sb_jose_key_free(k);
    return rc;
}

/* ---- base64url ----------------------------------------------------------------------- */

static void test_b64url_vectors(void **state)
{
    (void)state;
    static const char *const plain[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *const enc[] = {"", "Zg", "Zm8", "Zm9v", "Zm9vYg", "Zm9vYmE", "Zm9vYmFy"};
    for (size_t i = 0; i < 7; i++) {
        sb_buf b;
        unsigned char out[8];
        size_t n = 99;
        sb_buf_init(&b, 0);
        assert_int_equal(sb_jose_b64url_encode(plain[i], strlen(plain[i]), &b), 0);
        assert_int_equal(b.len, strlen(enc[i]));
        assert_int_equal(b.len, SB_JOSE_B64URL_LEN(strlen(plain[i])));
        if (b.len)
            assert_memory_equal(b.base, enc[i], b.len);
        assert_int_equal(sb_jose_b64url_decode(enc[i], strlen(enc[i]), out, sizeof out, &n), 0);
        assert_int_equal(n, strlen(plain[i]));
        assert_memory_equal(out, plain[i], n);
        sb_buf_free(&b);
    }
    /* The two characters that differ from standard base64. */
    const unsigned char fb[] = {0xFB, 0xFF, 0xBF};
    sb_buf b;
    sb_buf_init(&b, 0);
    assert_int_equal(sb_jose_b64url_encode(fb, 3, &b), 0);
    assert_memory_equal(b.base, "-_-_", 4);
    sb_buf_free(&b);
}

static void test_b64url_strict(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "Zg==",   "Zg=",      "Zm8=",  "Z",    "Zm9vY", "Zm 9v", " Zm9v",
        "Zm9v\n", "Zm9v\r\n", "+/8A",  "ab/c", "Zm9\t", "Zh", /* 'h' leaves a non-zero trailing bit
                                                               */
        "Zm9",                                                /* '9' likewise */
        "AB",     "AAB",      "Zm\0v",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        unsigned char out[8];
        size_t n = 0;
        size_t len = i == sizeof bad / sizeof bad[0] - 1 ? 4 : strlen(bad[i]);
        assert_int_equal(sb_jose_b64url_decode(bad[i], len, out, sizeof out, &n), SB_EINVAL);
    }
    /* Canonical neighbours of the non-canonical ones are fine. */
    unsigned char out[4];
    size_t n;
    assert_int_equal(sb_jose_b64url_decode("Zg", 2, out, sizeof out, &n), 0);
    assert_int_equal(sb_jose_b64url_decode("AA", 2, out, sizeof out, &n), 0);
    assert_int_equal(sb_jose_b64url_decode("AAA", 3, out, sizeof out, &n), 0);
    /* Too small a buffer: nothing written, the size needed reported. */
    memset(out, 0x55, sizeof out);
    assert_int_equal(sb_jose_b64url_decode("Zm9vYmFy", 8, out, 4, &n), SB_EMSGSIZE);
    assert_int_equal(n, 6);
    assert_int_equal(out[0], 0x55);
    /* Bounded output buffer. */
    sb_buf b;
    sb_buf_init(&b, 3);
    assert_int_equal(sb_jose_b64url_encode("foo", 3, &b), SB_EMSGSIZE);
    assert_int_equal(b.len, 0);
    sb_buf_free(&b);
}

/* The padded standard alphabet (HTTP Basic) shares the decoder and its strictness. */
static void test_b64_padded(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        const char *out;
    } good[] = {{"Zg==", "f"}, {"Zm8=", "fo"}, {"Zm9v", "foo"}, {"+/8A", "\xfb\xff"}};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        unsigned char out[8];
        size_t n = 0;
        size_t want = i == 3 ? 3 : strlen(good[i].out);
        assert_int_equal(sb_jose_b64_decode(good[i].in, strlen(good[i].in), out, sizeof out, &n),
                         0);
        assert_int_equal(n, want);
        assert_memory_equal(out, good[i].out, want); /* "\xfb\xff" ends in its NUL: 3 bytes */
    }
    static const char *const bad[] = {
        "", "Zg", "Zg=", "Zh==", "Zm9=", "Z===", "====", "Zg=A", "-_8A", "Zm 9", "Zm9v\n"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        unsigned char out[8];
        size_t n = 0;
        assert_int_equal(sb_jose_b64_decode(bad[i], strlen(bad[i]), out, sizeof out, &n),
                         SB_EINVAL);
    }
}

static void test_b64url_roundtrip_all_lengths(void **state)
{
    (void)state;
    unsigned char in[256], out[256];
    for (size_t i = 0; i < sizeof in; i++)
        in[i] = (unsigned char)(i * 7 + 3);
    for (size_t len = 0; len <= sizeof in; len++) {
        sb_buf b;
        size_t n = 0;
        sb_buf_init(&b, 0);
        assert_int_equal(sb_jose_b64url_encode(in, len, &b), 0);
        assert_int_equal(sb_jose_b64url_decode(b.base, b.len, out, sizeof out, &n), 0);
        assert_int_equal(n, len);
        assert_memory_equal(in, out, len);
        sb_buf_free(&b);
    }
}

/* ---- RFC known answers --------------------------------------------------------------- */

static void test_rfc7515_a1_hs256(void **state)
{
    (void)state;
    sb_jose_key *k = key_from_jwk_text(a1_jwk, "rfc7515-a1");
    sb_buf payload;
    sb_jwt_reason r;
    sb_buf_init(&payload, 0);
    assert_int_equal(sb_jose_key_alg(k), SB_JOSE_HS256);
    assert_int_equal(sb_jws_verify(k, a1_token, strlen(a1_token), &payload, &r), 0);
    assert_int_equal(r, SB_JWT_OK);
    assert_int_equal(payload.len, strlen(a1_payload));
    assert_memory_equal(payload.base, a1_payload, payload.len);

    /* HMAC is deterministic: the same key reproduces the RFC's signature exactly. */
    unsigned char sig[64];
    size_t n = 0;
    const char *dot2 = strrchr(a1_token, '.');
    sb_buf enc;
    sb_buf_init(&enc, 0);
    assert_int_equal(sb__jose_sign_input(k, a1_token, (size_t)(dot2 - a1_token), sig, &n), 0);
    assert_int_equal(n, 32);
    assert_int_equal(sb_jose_b64url_encode(sig, n, &enc), 0);
    assert_int_equal(enc.len, strlen(dot2 + 1));
    assert_memory_equal(enc.base, dot2 + 1, enc.len);
    sb_buf_free(&enc);

    /* The claims: exp 1300819380 is valid one second before, expired at that second.
     * The example has no "aud", so the audience check is what refuses it. */
    json_error_t err;
    json_t *claims = json_loadb(payload.base, payload.len, 0, &err);
    assert_non_null(claims);
    sb_jwt_expect e = {.aud = "switchboard:rtc", .now = 1300819379, .leeway = 0};
    assert_int_equal(sb_jwt_check_claims(claims, &e, &r), SB_EAUTH);
    assert_reason(r, SB_JWT_WRONG_AUDIENCE);
    e.now = 1300819380;
    assert_int_equal(sb_jwt_check_claims(claims, &e, &r), SB_EAUTH);
    assert_reason(r, SB_JWT_EXPIRED);
    json_decref(claims);

    /* As a JWT of ours it lacks a kid, which sb_jwt_verify requires. */
    e.now = 1300819379;
    r = SB_JWT_OK;
    assert_int_equal(sb_jwt_verify(a1_token, strlen(a1_token), lookup, NULL, &e, NULL, &r),
                     SB_EAUTH);
    assert_reason(r, SB_JWT_UNKNOWN_KID);

    /* One flipped signature character: refused. */
    char *t = strdup(a1_token);
    t[strlen(t) - 2] = t[strlen(t) - 2] == 'X' ? 'Y' : 'X';
    payload.len = 0;
    assert_int_equal(sb_jws_verify(k, t, strlen(t), &payload, &r), SB_EAUTH);
    assert_reason(r, SB_JWT_BAD_SIGNATURE);
    assert_int_equal(payload.len, 0);
    free(t);
    sb_buf_free(&payload);
    sb_jose_key_free(k);
}

static void test_rfc7515_a3_es256(void **state)
{
    (void)state;
    sb_jose_key *pub = key_from_jwk_text(a3_jwk_pub, "rfc7515-a3");
    sb_jose_key *priv = key_from_jwk_text(a3_jwk_priv, "rfc7515-a3");
    sb_buf payload;
    sb_jwt_reason r;
    sb_buf_init(&payload, 0);
    assert_int_equal(sb_jose_key_alg(pub), SB_JOSE_ES256);
    assert_false(sb_jose_key_can_sign(pub));
    assert_true(sb_jose_key_can_sign(priv));
    assert_int_equal(sb_jws_verify(pub, a3_token, strlen(a3_token), &payload, &r), 0);
    assert_int_equal(payload.len, strlen(a1_payload));
    assert_memory_equal(payload.base, a1_payload, payload.len);
    payload.len = 0;
    assert_int_equal(sb_jws_verify(priv, a3_token, strlen(a3_token), &payload, &r), 0);

    /* ECDSA signatures are randomised: sign the same input anew, verify with the RFC key. */
    sb_buf tok;
    sb_buf_init(&tok, 0);
    assert_int_equal(
        sb_jws_sign(priv, "{\"alg\":\"ES256\"}", 15, a1_payload, strlen(a1_payload), &tok), 0);
    assert_int_equal(strchr(a3_token, '.') - a3_token, strchr(tok.base, '.') - tok.base);
    payload.len = 0;
    assert_int_equal(sb_jws_verify(pub, tok.base, tok.len, &payload, &r), 0);
    assert_memory_equal(payload.base, a1_payload, payload.len);

    /* The RFC's token against another P-256 key, or with a different payload: refused. */
    assert_int_equal(sb_jws_verify(k_es, a3_token, strlen(a3_token), &payload, &r), SB_EAUTH);
    assert_reason(r, SB_JWT_BAD_SIGNATURE);
    sb_buf_free(&tok);
    sb_buf_free(&payload);
    sb_jose_key_free(pub);
    sb_jose_key_free(priv);
}

static void test_rfc8037_ed25519(void **state)
{
    (void)state;
    sb_jose_key *priv = key_from_jwk_text(ed_jwk_priv, "rfc8037");
    sb_buf tok, payload;
    sb_jwt_reason r;
    sb_buf_init(&tok, 0);
    sb_buf_init(&payload, 0);

    /* A.4: deterministic, so the whole compact serialization is known. */
    assert_int_equal(
        sb_jws_sign(priv, "{\"alg\":\"EdDSA\"}", 15, ed_payload, strlen(ed_payload), &tok), 0);
    assert_int_equal(tok.len, strlen(ed_token));
    assert_memory_equal(tok.base, ed_token, tok.len);

    /* A.2/A.3: the public key, and the thumbprint as kid when none is given. */
    json_error_t err;
    json_t *j = json_loads(ed_jwk_pub, 0, &err);
    sb_jose_key *pub = NULL;
    assert_int_equal(sb_jose_key_from_jwk(j, NULL, &pub), 0);
    json_decref(j);
    assert_string_equal(sb_jose_key_kid(pub), ed_thumbprint);
    sb_buf th;
    sb_buf_init(&th, 0);
    assert_int_equal(sb_jose_key_thumbprint(priv, &th), 0);
    assert_int_equal(th.len, strlen(ed_thumbprint));
    assert_memory_equal(th.base, ed_thumbprint, th.len);
    sb_buf_free(&th);

    /* A.5: validation with the public key. */
    assert_int_equal(sb_jws_verify(pub, ed_token, strlen(ed_token), &payload, &r), 0);
    assert_int_equal(payload.len, strlen(ed_payload));
    assert_memory_equal(payload.base, ed_payload, payload.len);

    /* The exported public JWK carries the RFC's x. */
    json_t *jwk = NULL;
    assert_int_equal(sb_jose_key_public_jwk(pub, &jwk), 0);
    assert_string_equal(json_string_value(json_object_get(jwk, "x")),
                        "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo");
    assert_string_equal(json_string_value(json_object_get(jwk, "alg")), "EdDSA");
    assert_null(json_object_get(jwk, "d"));
    json_decref(jwk);

    /* As a JWT it is refused: it has no kid (nor a JSON payload). */
    sb_jwt_expect e = expect_default();
    assert_reason(verify(ed_token, &e), SB_JWT_UNKNOWN_KID);
    sb_buf_free(&tok);
    sb_buf_free(&payload);
    sb_jose_key_free(pub);
    sb_jose_key_free(priv);
}

/* ---- round trips --------------------------------------------------------------------- */

static void roundtrip_one(const sb_jose_key *key)
{
    json_t *claims = claims_default(), *got = NULL;
    char *t = sign(key, claims, NULL);
    sb_jwt_expect e = expect_default();
    e.iss = "https://sb.example";
    e.max_lifetime = 600;
    assert_reason(verify_n(t, strlen(t), &e, &got), SB_JWT_OK);
    assert_true(json_equal(claims, got));
    json_decref(got);

    /* The header is {"alg","typ":"JWT","kid"} in that order. */
    char hdr[256];
    size_t n = 0;
    const char *dot = strchr(t, '.');
    assert_int_equal(
        sb_jose_b64url_decode(t, (size_t)(dot - t), (unsigned char *)hdr, sizeof hdr - 1, &n), 0);
    hdr[n] = '\0';
    char want[128];
    snprintf(want, sizeof want, "{\"alg\":\"%s\",\"typ\":\"JWT\",\"kid\":\"%s\"}",
             sb_jose_alg_name(sb_jose_key_alg(key)), sb_jose_key_kid(key));
    assert_string_equal(hdr, want);
    free(t);
    json_decref(claims);
}

static void test_roundtrip_each_alg(void **state)
{
    (void)state;
    roundtrip_one(k_es);
    roundtrip_one(k_ed);
    roundtrip_one(k_hs);
}

static void test_pem_roundtrip(void **state)
{
    (void)state;
    const sb_jose_key *keys[] = {k_es, k_ed};
    for (size_t i = 0; i < 2; i++) {
        sb_buf priv, pub;
        sb_jose_key *kp = NULL, *kq = NULL;
        sb_buf_init(&priv, 0);
        sb_buf_init(&pub, 0);
        assert_int_equal(sb_jose_key_private_pem(keys[i], &priv), 0);
        assert_int_equal(sb_jose_key_public_pem(keys[i], &pub), 0);
        assert_non_null(memmem(priv.base, priv.len, "-----BEGIN PRIVATE KEY-----", 27));
        assert_non_null(memmem(pub.base, pub.len, "-----BEGIN PUBLIC KEY-----", 26));
        assert_int_equal(sb_jose_key_from_pem(NULL, priv.base, priv.len, &kp), 0);
        assert_int_equal(sb_jose_key_from_pem(NULL, pub.base, pub.len, &kq), 0);
        assert_int_equal(sb_jose_key_alg(kp), sb_jose_key_alg(keys[i]));
        assert_true(sb_jose_key_can_sign(kp));
        assert_false(sb_jose_key_can_sign(kq));
        /* Without a kid, both get the same RFC 7638 thumbprint. */
        assert_string_equal(sb_jose_key_kid(kp), sb_jose_key_kid(kq));
        assert_int_equal(strlen(sb_jose_key_kid(kp)), 43);
        /* The reloaded private key signs what the original's public key verifies. */
        json_t *c = claims_default();
        sb_buf tok, out;
        sb_jwt_reason r;
        sb_buf_init(&tok, 0);
        sb_buf_init(&out, 0);
        assert_int_equal(
            sb_jws_sign(kp, i ? "{\"alg\":\"EdDSA\"}" : "{\"alg\":\"ES256\"}", 15, "x", 1, &tok),
            0);
        assert_int_equal(sb_jws_verify(kq, tok.base, tok.len, &out, &r), 0);
        /* Another key of the same type does not verify it. */
        sb_jose_key *k2 = NULL;
        assert_int_equal(sb_jose_key_generate(sb_jose_key_alg(keys[i]), "other", &k2), 0);
        out.len = 0;
        assert_int_equal(sb_jws_verify(k2, tok.base, tok.len, &out, &r), SB_EAUTH);
        assert_reason(r, SB_JWT_BAD_SIGNATURE);
        /* A public key cannot sign or export a private PEM. */
        sb_buf x;
        sb_buf_init(&x, 0);
        assert_int_equal(sb_jose_key_private_pem(kq, &x), SB_EINVAL);
        assert_int_equal(sb_jwt_sign(kq, c, NULL, &x), SB_EINVAL);
        assert_int_equal(x.len, 0);
        json_decref(c);
        sb_buf_free(&tok);
        sb_buf_free(&out);
        sb_jose_key_free(k2);
        sb_jose_key_free(kp);
        sb_jose_key_free(kq);
        OPENSSL_cleanse(priv.base, priv.len);
        sb_buf_free(&priv);
        sb_buf_free(&pub);
    }
    /* HS256 keys have no PEM. */
    sb_buf x;
    sb_buf_init(&x, 0);
    assert_int_equal(sb_jose_key_private_pem(k_hs, &x), SB_EINVAL);
    assert_int_equal(sb_jose_key_public_pem(k_hs, &x), SB_EINVAL);
}

static void test_jwk_roundtrip_and_jwks(void **state)
{
    (void)state;
    const sb_jose_key *keys[] = {k_hs, k_es, k_ed, NULL};
    json_t *jwks = NULL;
    assert_int_equal(sb_jose_jwks(keys, 4, &jwks), 0);
    char *text = json_dumps(jwks, JSON_COMPACT);
    json_decref(jwks);
    assert_non_null(text);
    /* What a client sees: parse the text back. */
    json_error_t err;
    json_t *doc = json_loads(text, JSON_REJECT_DUPLICATES, &err);
    assert_non_null(doc);
    assert_null(strstr(text, "\"d\""));
    assert_null(strstr(text, "\"k\""));
    assert_null(strstr(text, "\"hs\""));
    json_t *arr = json_object_get(doc, "keys");
    assert_true(json_is_array(arr));
    assert_int_equal(json_array_size(arr), 2);
    for (size_t i = 0; i < 2; i++) {
        json_t *jwk = json_array_get(arr, i);
        const sb_jose_key *orig = keys[i + 1];
        assert_string_equal(json_string_value(json_object_get(jwk, "kid")), sb_jose_key_kid(orig));
        assert_string_equal(json_string_value(json_object_get(jwk, "alg")),
                            sb_jose_alg_name(sb_jose_key_alg(orig)));
        assert_string_equal(json_string_value(json_object_get(jwk, "use")), "sig");
        assert_int_equal(json_object_size(jwk), i == 0 ? 7 : 6);
        assert_string_equal(json_string_value(json_object_get(jwk, "kty")), i ? "OKP" : "EC");
        /* Importing the published JWK verifies tokens of the original key. */
        sb_jose_key *k = NULL;
        assert_int_equal(sb_jose_key_from_jwk(jwk, NULL, &k), 0);
        assert_string_equal(sb_jose_key_kid(k), sb_jose_key_kid(orig));
        assert_false(sb_jose_key_can_sign(k));
        json_t *c = claims_default();
        char *t = sign(orig, c, NULL);
        const sb_jose_key *one[] = {k};
        ring_ud ud = {one, 1};
        sb_jwt_expect e = expect_default();
        json_t *got = NULL;
        sb_jwt_reason r;
        assert_int_equal(sb_jwt_verify(t, strlen(t), ud_lookup, &ud, &e, &got, &r), 0);
        assert_true(json_equal(got, c));
        json_decref(got);
        free(t);
        json_decref(c);
        sb_jose_key_free(k);
    }
    json_decref(doc);
    free(text);

    /* An empty key list is a valid, empty JWKS. */
    assert_int_equal(sb_jose_jwks(NULL, 0, &jwks), 0);
    assert_int_equal(json_array_size(json_object_get(jwks, "keys")), 0);
    json_decref(jwks);
}

/* ---- forged and refused tokens ------------------------------------------------------- */

static const char good_claims[] = "{\"aud\":\"switchboard:rtc\",\"exp\":1700000600,"
                                  "\"iat\":1700000000,\"sub\":\"alice\"}";

static void test_alg_none(void **state)
{
    (void)state;
    static const char *const algs[] = {"none", "None", "NONE", "nOnE"};
    json_t *c = claims_default();
    char *valid = sign(k_hs, c, NULL);
    const char *valid_sig = strrchr(valid, '.');
    for (size_t i = 0; i < 4; i++) {
        char hdr[64];
        snprintf(hdr, sizeof hdr, "{\"alg\":\"%s\",\"kid\":\"hs\",\"typ\":\"JWT\"}", algs[i]);
        char *t = forge_str(NULL, hdr, good_claims);
        assert_reason(verify_default(t), SB_JWT_ALG_NONE);
        /* The same with a real signature of another token appended. */
        size_t n = strlen(t);
        char *t2 = malloc(n + strlen(valid_sig) + 1);
        memcpy(t2, t, n - 1);
        memcpy(t2 + n - 1, valid_sig, strlen(valid_sig) + 1);
        assert_reason(verify_default(t2), SB_JWT_ALG_NONE);
        /* And without a kid: still alg_none, decided before any key is looked up. */
        free(t);
        snprintf(hdr, sizeof hdr, "{\"alg\":\"%s\"}", algs[i]);
        t = forge_str(NULL, hdr, good_claims);
        lookups = 0;
        assert_reason(verify_default(t), SB_JWT_ALG_NONE);
        assert_int_equal(lookups, 0);
        free(t);
        free(t2);
    }
    /* Two-segment unsecured form. */
    assert_reason(verify_default("eyJhbGciOiJub25lIn0.eyJleHAiOjF9"), SB_JWT_MALFORMED);
    free(valid);
    json_decref(c);
}

static void test_key_confusion(void **state)
{
    (void)state;
    /* The attacker HMACs with the ES256 public key's published bytes as the secret. */
    sb_buf pem;
    json_t *jwk = NULL;
    sb_buf_init(&pem, 0);
    assert_int_equal(sb_jose_key_public_pem(k_es, &pem), 0);
    assert_int_equal(sb_jose_key_public_jwk(k_es, &jwk), 0);
    char *jwk_text = json_dumps(jwk, JSON_COMPACT);
    json_t *c = claims_default();
    const void *secrets[] = {pem.base, jwk_text};
    size_t lens[] = {pem.len, strlen(jwk_text)};
    for (size_t i = 0; i < 2; i++) {
        sb_jose_key *evil = NULL;
        assert_int_equal(sb_jose_key_from_secret("es", secrets[i], lens[i], &evil), 0);
        char *t = sign(evil, c, NULL);
        assert_reason(verify_default(t), SB_JWT_ALG_MISMATCH);
        free(t);
        sb_jose_key_free(evil);
    }
    free(jwk_text);
    json_decref(jwk);
    json_decref(c);
    sb_buf_free(&pem);
}

static void test_alg_swapped(void **state)
{
    (void)state;
    static const char *const es_as[] = {"EdDSA", "HS256",  "ES384", "RS256",
                                        "es256", "ES256 ", "PS256"};
    for (size_t i = 0; i < sizeof es_as / sizeof es_as[0]; i++) {
        char hdr[64];
        snprintf(hdr, sizeof hdr, "{\"alg\":\"%s\",\"kid\":\"es\"}", es_as[i]);
        /* Signed correctly by the ES256 key, but the header names another algorithm. */
        char *t = forge_str(k_es, hdr, good_claims);
        assert_reason(verify_default(t), SB_JWT_ALG_MISMATCH);
        free(t);
    }
    char *t = forge_str(k_hs, "{\"alg\":\"HS512\",\"kid\":\"hs\"}", good_claims);
    assert_reason(verify_default(t), SB_JWT_ALG_MISMATCH);
    free(t);
    t = forge_str(k_ed, "{\"alg\":\"Ed25519\",\"kid\":\"ed\"}", good_claims);
    assert_reason(verify_default(t), SB_JWT_ALG_MISMATCH);
    free(t);
    /* And the properly labelled token of each passes. */
    t = forge_str(k_ed, "{\"alg\":\"EdDSA\",\"kid\":\"ed\"}", good_claims);
    assert_reason(verify_default(t), SB_JWT_OK);
    free(t);
    /* A token whose kid names another key of the ring, with that key's alg. */
    t = forge_str(k_es, "{\"alg\":\"EdDSA\",\"kid\":\"ed\"}", good_claims);
    assert_reason(verify_default(t), SB_JWT_BAD_SIGNATURE);
    free(t);
}

static void test_kid(void **state)
{
    (void)state;
    static const char *const hdrs[] = {
        "{\"alg\":\"ES256\",\"kid\":\"nope\"}", "{\"alg\":\"ES256\"}",
        "{\"alg\":\"ES256\",\"kid\":\"\"}",     "{\"alg\":\"ES256\",\"kid\":7}",
        "{\"alg\":\"ES256\",\"kid\":null}",     "{\"alg\":\"ES256\",\"kid\":[\"es\"]}",
        "{\"alg\":\"ES256\",\"kid\":\"ES\"}",
    };
    for (size_t i = 0; i < sizeof hdrs / sizeof hdrs[0]; i++) {
        char *t = forge_str(k_es, hdrs[i], good_claims);
        assert_reason(verify_default(t), SB_JWT_UNKNOWN_KID);
        free(t);
    }
    /* sb_jws_verify: a kid, if present, must be the key's. */
    char *t = forge_str(k_es, "{\"alg\":\"ES256\",\"kid\":\"other\"}", good_claims);
    sb_buf p;
    sb_jwt_reason r;
    sb_buf_init(&p, 0);
    assert_int_equal(sb_jws_verify(k_es, t, strlen(t), &p, &r), SB_EAUTH);
    assert_reason(r, SB_JWT_UNKNOWN_KID);
    free(t);
    sb_buf_free(&p);
}

static char *token_with(const sb_jose_key *key, const char *claims_json)
{
    char hdr[64];
    snprintf(hdr, sizeof hdr, "{\"alg\":\"%s\",\"kid\":\"%s\"}",
             sb_jose_alg_name(sb_jose_key_alg(key)), sb_jose_key_kid(key));
    return forge_str(key, hdr, claims_json);
}

static sb_jwt_reason claims_reason(const char *claims_json, const sb_jwt_expect *e)
{
    char *t = token_with(k_ed, claims_json);
    sb_jwt_reason r = verify(t, e);
    free(t);
    return r;
}

static void test_time_claims(void **state)
{
    (void)state;
    sb_jwt_expect e = expect_default();
    e.leeway = 60;
    const char *aud = "\"aud\":\"switchboard:rtc\"";
    char c[256];

    /* exp: valid while now < exp + leeway. */
    snprintf(c, sizeof c, "{%s,\"exp\":%lld}", aud, NOW - 59);
    assert_reason(claims_reason(c, &e), SB_JWT_OK);
    snprintf(c, sizeof c, "{%s,\"exp\":%lld}", aud, NOW - 60);
    assert_reason(claims_reason(c, &e), SB_JWT_EXPIRED);
    snprintf(c, sizeof c, "{%s,\"exp\":%lld}", aud, NOW - 86400);
    assert_reason(claims_reason(c, &e), SB_JWT_EXPIRED);
    e.leeway = 0;
    snprintf(c, sizeof c, "{%s,\"exp\":%lld}", aud, NOW);
    assert_reason(claims_reason(c, &e), SB_JWT_EXPIRED);
    snprintf(c, sizeof c, "{%s,\"exp\":%lld}", aud, NOW + 1);
    assert_reason(claims_reason(c, &e), SB_JWT_OK);
    e.leeway = 60;

    /* nbf: valid once now >= nbf - leeway. */
    snprintf(c, sizeof c, "{%s,\"exp\":%lld,\"nbf\":%lld}", aud, NOW + 600, NOW + 60);
    assert_reason(claims_reason(c, &e), SB_JWT_OK);
    snprintf(c, sizeof c, "{%s,\"exp\":%lld,\"nbf\":%lld}", aud, NOW + 600, NOW + 61);
    assert_reason(claims_reason(c, &e), SB_JWT_NOT_YET_VALID);
    snprintf(c, sizeof c, "{%s,\"exp\":%lld,\"nbf\":%lld}", aud, NOW + 600, NOW + 3600);
    assert_reason(claims_reason(c, &e), SB_JWT_NOT_YET_VALID);

    /* iat: not in the future beyond the leeway. */
    snprintf(c, sizeof c, "{%s,\"exp\":%lld,\"iat\":%lld}", aud, NOW + 600, NOW + 60);
    assert_reason(claims_reason(c, &e), SB_JWT_OK);
    snprintf(c, sizeof c, "{%s,\"exp\":%lld,\"iat\":%lld}", aud, NOW + 600, NOW + 61);
    assert_reason(claims_reason(c, &e), SB_JWT_ISSUED_IN_FUTURE);

    /* Lifetime. */
    e.max_lifetime = 3600;
    snprintf(c, sizeof c, "{%s,\"exp\":%lld,\"iat\":%lld}", aud, NOW + 3600, NOW);
    assert_reason(claims_reason(c, &e), SB_JWT_OK);
    snprintf(c, sizeof c, "{%s,\"exp\":%lld,\"iat\":%lld}", aud, NOW + 3601, NOW);
    assert_reason(claims_reason(c, &e), SB_JWT_LIFETIME);
    snprintf(c, sizeof c, "{%s,\"exp\":%lld,\"nbf\":%lld}", aud, NOW + 3601, NOW);
    assert_reason(claims_reason(c, &e), SB_JWT_LIFETIME);
    snprintf(c, sizeof c, "{%s,\"exp\":%lld}", aud, NOW + 3601);
    assert_reason(claims_reason(c, &e), SB_JWT_LIFETIME);
    snprintf(c, sizeof c, "{%s,\"exp\":9223372036854775807,\"iat\":-9223372036854775807}", aud);
    assert_reason(claims_reason(c, &e), SB_JWT_LIFETIME);
    e.max_lifetime = 0;
    snprintf(c, sizeof c, "{%s,\"exp\":9223372036854775807}", aud);
    assert_reason(claims_reason(c, &e), SB_JWT_OK);

    /* exp required and an integer; the other times integers when present. */
    snprintf(c, sizeof c, "{%s}", aud);
    assert_reason(claims_reason(c, &e), SB_JWT_BAD_CLAIM);
    static const char *const bad[] = {
        "\"exp\":1700000600.0",
        "\"exp\":\"1700000600\"",
        "\"exp\":null",
        "\"exp\":true",
        "\"exp\":1700000600,\"nbf\":\"0\"",
        "\"exp\":1700000600,\"iat\":1.5",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(c, sizeof c, "{%s,%s}", aud, bad[i]);
        assert_reason(claims_reason(c, &e), SB_JWT_BAD_CLAIM);
    }
    /* An integer too large for jansson is not JSON we accept. */
    snprintf(c, sizeof c, "{%s,\"exp\":99999999999999999999}", aud);
    assert_reason(claims_reason(c, &e), SB_JWT_MALFORMED);
}

static void test_aud_iss(void **state)
{
    (void)state;
    sb_jwt_expect e = expect_default();
    static const struct {
        const char *claims;
        sb_jwt_reason want;
    } cases[] = {
        {"{\"exp\":1700000600,\"aud\":\"switchboard:rtc\"}", SB_JWT_OK},
        {"{\"exp\":1700000600,\"aud\":[\"x\",\"switchboard:rtc\"]}", SB_JWT_OK},
        {"{\"exp\":1700000600,\"aud\":\"switchboard:api\"}", SB_JWT_WRONG_AUDIENCE},
        {"{\"exp\":1700000600,\"aud\":\"switchboard:rtc \"}", SB_JWT_WRONG_AUDIENCE},
        {"{\"exp\":1700000600,\"aud\":\"SWITCHBOARD:RTC\"}", SB_JWT_WRONG_AUDIENCE},
        {"{\"exp\":1700000600,\"aud\":[\"x\",\"y\"]}", SB_JWT_WRONG_AUDIENCE},
        {"{\"exp\":1700000600,\"aud\":[]}", SB_JWT_WRONG_AUDIENCE},
        {"{\"exp\":1700000600}", SB_JWT_WRONG_AUDIENCE},
        {"{\"exp\":1700000600,\"aud\":[\"switchboard:rtc\",1]}", SB_JWT_BAD_CLAIM},
        {"{\"exp\":1700000600,\"aud\":{\"switchboard:rtc\":1}}", SB_JWT_BAD_CLAIM},
        {"{\"exp\":1700000600,\"aud\":null}", SB_JWT_BAD_CLAIM},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        assert_reason(claims_reason(cases[i].claims, &e), cases[i].want);

    e.iss = "https://sb.example";
    assert_reason(claims_reason("{\"exp\":1700000600,\"aud\":\"switchboard:rtc\","
                                "\"iss\":\"https://sb.example\"}",
                                &e),
                  SB_JWT_OK);
    assert_reason(claims_reason("{\"exp\":1700000600,\"aud\":\"switchboard:rtc\","
                                "\"iss\":\"https://evil.example\"}",
                                &e),
                  SB_JWT_WRONG_ISSUER);
    assert_reason(claims_reason("{\"exp\":1700000600,\"aud\":\"switchboard:rtc\"}", &e),
                  SB_JWT_WRONG_ISSUER);
    assert_reason(claims_reason("{\"exp\":1700000600,\"aud\":\"switchboard:rtc\",\"iss\":5}", &e),
                  SB_JWT_BAD_CLAIM);
}

static void test_header_rules(void **state)
{
    (void)state;
    static const struct {
        const char *hdr;
        sb_jwt_reason want;
    } cases[] = {
        {"{\"alg\":\"EdDSA\",\"kid\":\"ed\",\"crit\":[\"exp\"]}", SB_JWT_CRIT},
        {"{\"alg\":\"EdDSA\",\"kid\":\"ed\",\"crit\":[]}", SB_JWT_CRIT},
        {"{\"alg\":\"EdDSA\",\"kid\":\"ed\",\"b64\":false,\"crit\":[\"b64\"]}", SB_JWT_CRIT},
        {"{\"alg\":\"EdDSA\",\"kid\":\"ed\",\"alg\":\"EdDSA\"}", SB_JWT_MALFORMED},
        {"{\"alg\":\"none\",\"kid\":\"ed\",\"alg\":\"EdDSA\"}", SB_JWT_MALFORMED},
        {"{\"kid\":\"ed\"}", SB_JWT_MALFORMED},
        {"{\"alg\":null,\"kid\":\"ed\"}", SB_JWT_MALFORMED},
        {"{\"alg\":[\"EdDSA\"],\"kid\":\"ed\"}", SB_JWT_MALFORMED},
        {"[\"EdDSA\"]", SB_JWT_MALFORMED},
        {"\"EdDSA\"", SB_JWT_MALFORMED},
        {"", SB_JWT_MALFORMED},
        {"{\"alg\":\"EdDSA\",\"kid\":\"ed\"} x", SB_JWT_MALFORMED},
        {"{\"alg\":\"EdDSA\",\"kid\":\"ed\",\"typ\":7}", SB_JWT_MALFORMED},
        {"{\"alg\":\"EdDSA\",\"kid\":\"ed\",\"x\":\"\\u0000\"}", SB_JWT_MALFORMED},
        {"{\"alg\":\"EdDSA\",\"kid\":\"ed\",\"typ\":\"JWT\"}", SB_JWT_OK},
        {"{\"alg\":\"EdDSA\",\"kid\":\"ed\",\"typ\":\"jwt\"}", SB_JWT_OK},
        {"{\"alg\":\"EdDSA\",\"kid\":\"ed\",\"typ\":\"application/jwt\"}", SB_JWT_OK},
        {"{\"alg\":\"EdDSA\",\"kid\":\"ed\",\"typ\":\"at+jwt\"}", SB_JWT_WRONG_TYPE},
        /* Keys in headers are never trusted, and never needed: ignored. */
        {"{\"alg\":\"EdDSA\",\"kid\":\"ed\",\"jku\":\"https://evil.example/jwks\"}", SB_JWT_OK},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *t = forge_str(k_ed, cases[i].hdr, good_claims);
        assert_reason(verify_default(t), cases[i].want);
        free(t);
    }
    /* Invalid UTF-8 in the header. */
    char *t = forge_str(k_ed, "{\"alg\":\"EdDSA\",\"kid\":\"ed\",\"n\":\"\xC3\x28\"}", good_claims);
    assert_reason(verify_default(t), SB_JWT_MALFORMED);
    free(t);
}

static void test_typ(void **state)
{
    (void)state;
    json_t *c = claims_default();
    json_t *extra = json_pack("{s:s, s:s}", "typ", "at+jwt", "x5t#S256", "abc");
    char *t = sign(k_es, c, extra);
    sb_jwt_expect e = expect_default();
    assert_reason(verify(t, &e), SB_JWT_WRONG_TYPE);
    e.typ = "at+jwt";
    assert_reason(verify(t, &e), SB_JWT_OK);
    e.typ = "application/at+jwt";
    assert_reason(verify(t, &e), SB_JWT_OK);
    free(t);
    t = sign(k_es, c, NULL);
    assert_reason(verify(t, &e), SB_JWT_WRONG_TYPE);
    free(t);
    t = forge_str(k_es, "{\"alg\":\"ES256\",\"kid\":\"es\",\"typ\":\"application/at+jwt\"}",
                  good_claims);
    assert_reason(verify(t, &e), SB_JWT_OK);
    free(t);
    t = forge_str(k_es, "{\"alg\":\"ES256\",\"kid\":\"es\"}", good_claims);
    assert_reason(verify(t, &e), SB_JWT_WRONG_TYPE);
    free(t);
    json_decref(extra);

    /* extra_header may not replace alg or kid, nor add crit. */
    sb_buf b;
    sb_buf_init(&b, 0);
    static const char *const refused[] = {"alg", "kid", "crit"};
    for (size_t i = 0; i < 3; i++) {
        extra = json_pack("{s:s}", refused[i], "x");
        assert_int_equal(sb_jwt_sign(k_es, c, extra, &b), SB_EINVAL);
        json_decref(extra);
    }
    extra = json_pack("{s:i}", "typ", 1);
    assert_int_equal(sb_jwt_sign(k_es, c, extra, &b), SB_EINVAL);
    json_decref(extra);
    extra = json_pack("[s]", "typ");
    assert_int_equal(sb_jwt_sign(k_es, c, extra, &b), SB_EINVAL);
    json_decref(extra);
    assert_int_equal(b.len, 0);
    /* Claims without an integer exp are not signed. */
    json_object_del(c, "exp");
    assert_int_equal(sb_jwt_sign(k_es, c, NULL, &b), SB_EINVAL);
    json_decref(c);
    sb_buf_free(&b);
}

static void test_payload_rules(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "{\"aud\":\"switchboard:rtc\",\"exp\":1700000600,\"exp\":1900000000}",
        "{\"aud\":\"x\",\"exp\":1700000600,\"aud\":\"switchboard:rtc\"}",
        "[{\"aud\":\"switchboard:rtc\",\"exp\":1700000600}]",
        "\"switchboard:rtc\"",
        "1700000600",
        "null",
        "",
        "{\"aud\":\"switchboard:rtc\",\"exp\":1700000600",
        "{\"aud\":\"switchboard:rtc\",\"exp\":1700000600}{}",
        "{\"aud\":\"switchboard:rtc\",\"exp\":1700000600,\"n\":\"\\u0000\"}",
        "{\"aud\":\"switchboard:rtc\",\"exp\":1700000600,\"n\":\"\xC0\xAF\"}",
        "{\"aud\":\"switchboard:rtc\",\"exp\":1700000600,\"n\":\"\xED\xA0\x80\"}",
    };
    sb_jwt_expect e = expect_default();
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_reason(claims_reason(bad[i], &e), SB_JWT_MALFORMED);
    /* A NUL byte in the raw payload. */
    static const char nul[] = "{\"aud\":\"switchboard:rtc\",\"exp\":1700000600}\0";
    char *t = forge(k_ed, "{\"alg\":\"EdDSA\",\"kid\":\"ed\"}", nul, sizeof nul - 1);
    assert_reason(verify_default(t), SB_JWT_MALFORMED);
    free(t);
}

static void test_bad_base64_and_structure(void **state)
{
    (void)state;
    json_t *c = claims_default();
    char *good = sign(k_hs, c, NULL);
    json_decref(c);
    assert_reason(verify_default(good), SB_JWT_OK);
    const char *dot1 = strchr(good, '.'), *dot2 = strrchr(good, '.');
    size_t len = strlen(good), p1 = (size_t)(dot1 - good), p2 = (size_t)(dot2 - good);
    char t[1024];
    assert_true(len + 8 < sizeof t);

    /* Insert text at an offset: padding and foreign characters in each segment. */
    static const char *const inserts[] = {"=", "==", "+", "/", " ", "\n", "%3D", "\x80", "*"};
    size_t offsets[] = {p1, p2, len, 0, p1 + 1, p2 + 1};
    for (size_t i = 0; i < sizeof inserts / sizeof inserts[0]; i++) {
        for (size_t j = 0; j < sizeof offsets / sizeof offsets[0]; j++) {
            size_t n = strlen(inserts[i]);
            memcpy(t, good, offsets[j]);
            memcpy(t + offsets[j], inserts[i], n);
            memcpy(t + offsets[j] + n, good + offsets[j], len - offsets[j] + 1);
            sb_jwt_reason r = verify(t, &(sb_jwt_expect){.aud = "switchboard:rtc", .now = NOW});
            assert_reason(r, SB_JWT_MALFORMED);
        }
    }
    /* Segment counts. */
    static const char *const shapes[] = {"",  ".",   "..",      "...",
                                         "a", "a.b", "a.b.c.d", "eyJ9.eyJ9.."};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        assert_reason(verify_default(shapes[i]), SB_JWT_MALFORMED);
    /* A token with an embedded NUL is judged on all its bytes, not up to the NUL. */
    memcpy(t, good, len + 1);
    t[len] = '\0';
    assert_reason(
        verify_n(t, len + 1, &(sb_jwt_expect){.aud = "switchboard:rtc", .now = NOW}, NULL),
        SB_JWT_MALFORMED);
    free(good);
}

static void test_signature_forms(void **state)
{
    (void)state;
    json_t *c = claims_default();
    const sb_jose_key *keys[] = {k_es, k_ed, k_hs};
    for (size_t k = 0; k < 3; k++) {
        char *good = sign(keys[k], c, NULL);
        size_t len = strlen(good);
        char *sig = strrchr(good, '.') + 1;
        size_t sig_chars = strlen(sig);
        char *t = malloc(len + 200);

        unsigned char raw[130];
        size_t n = 0;
        sb_buf b;
        sb_buf_init(&b, 0);
        assert_int_equal(sb_buf_append(&b, good, (size_t)(sig - good)), 0);
        assert_int_equal(sb_jose_b64url_decode(sig, sig_chars, raw, sizeof raw, &n), 0);
        assert_int_equal(n, keys[k] == k_hs ? 32 : 64);

        /* Truncated by whole bytes: bad signature. */
        static const size_t keep[] = {0, 1, 31, 32, 63};
        for (size_t i = 0; i < sizeof keep / sizeof keep[0] && keep[i] < n; i++) {
            b.len = (size_t)(sig - good);
            assert_int_equal(sb_jose_b64url_encode(raw, keep[i], &b), 0);
            assert_int_equal(sb_buf_append(&b, "", 1), 0);
            assert_reason(verify_default(b.base), SB_JWT_BAD_SIGNATURE);
        }
        /* Truncated by characters: never accepted; 85 characters are no base64url. */
        for (size_t cut = 1; cut <= 3; cut++) {
            memcpy(t, good, len - cut);
            t[len - cut] = '\0';
            assert_int_not_equal(verify_default(t), SB_JWT_OK);
        }
        if (n == 64) {
            memcpy(t, good, len - 1);
            t[len - 1] = '\0';
            assert_reason(verify_default(t), SB_JWT_MALFORMED);
        }
        /* Extended by a zero byte, and doubled. */
        raw[n] = 0;
        b.len = (size_t)(sig - good);
        assert_int_equal(sb_jose_b64url_encode(raw, n + 1, &b), 0);
        assert_int_equal(sb_buf_append(&b, "", 1), 0);
        assert_reason(verify_default(b.base), SB_JWT_BAD_SIGNATURE);
        b.len = (size_t)(sig - good);
        memcpy(raw + n, raw, n);
        assert_int_equal(sb_jose_b64url_encode(raw, 2 * n, &b), 0);
        assert_int_equal(sb_buf_append(&b, "", 1), 0);
        assert_reason(verify_default(b.base), SB_JWT_BAD_SIGNATURE);

        /* Every single-bit flip of the signature. */
        for (size_t bit = 0; bit < n * 8; bit++) {
            unsigned char flipped[64];
            memcpy(flipped, raw, n);
            flipped[bit / 8] ^= (unsigned char)(1u << (bit % 8));
            b.len = (size_t)(sig - good);
            assert_int_equal(sb_jose_b64url_encode(flipped, n, &b), 0);
            assert_int_equal(sb_buf_append(&b, "", 1), 0);
            assert_reason(verify_default(b.base), SB_JWT_BAD_SIGNATURE);
        }
        /* Every character of the token replaced by another: never accepted. */
        for (size_t i = 0; i < len; i++) {
            memcpy(t, good, len + 1);
            t[i] = t[i] == 'A' ? 'B' : 'A';
            assert_int_not_equal(verify_default(t), SB_JWT_OK);
        }
        sb_buf_free(&b);
        free(t);
        free(good);
    }
    json_decref(c);
}

static void test_es256_der_signature_refused(void **state)
{
    (void)state;
    json_t *c = claims_default();
    char *good = sign(k_es, c, NULL);
    json_decref(c);
    char *sig = strrchr(good, '.') + 1;
    unsigned char raw[64], der[80];
    size_t n = 0, dn = 0;
    assert_int_equal(sb_jose_b64url_decode(sig, strlen(sig), raw, sizeof raw, &n), 0);
    assert_int_equal(n, 64);
    assert_int_equal(sb__jose_ecdsa_raw_to_der(raw, der, sizeof der, &dn), 0);
    /* The DER form is a valid signature for OpenSSL... */
    sb_buf pem;
    sb_buf_init(&pem, 0);
    assert_int_equal(sb_jose_key_public_pem(k_es, &pem), 0);
    BIO *bio = BIO_new_mem_buf(pem.base, (int)pem.len);
    EVP_PKEY *pk = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    assert_int_equal(EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, pk), 1);
    assert_int_equal(
        EVP_DigestVerify(ctx, der, dn, (const unsigned char *)good, (size_t)(sig - 1 - good)), 1);
    EVP_MD_CTX_free(ctx);
    EVP_PKEY_free(pk);
    BIO_free(bio);
    sb_buf_free(&pem);
    /* ...but not a JOSE one. */
    sb_buf b;
    sb_buf_init(&b, 0);
    assert_int_equal(sb_buf_append(&b, good, (size_t)(sig - good)), 0);
    assert_int_equal(sb_jose_b64url_encode(der, dn, &b), 0);
    assert_int_equal(sb_buf_append(&b, "", 1), 0);
    assert_reason(verify_default(b.base), SB_JWT_BAD_SIGNATURE);
    /* r = 0 or s = 0, and r = s = n (the group order): refused. */
    unsigned char zero[64];
    static const unsigned char order[32] = {0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0x00,
                                            0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                                            0xBC, 0xE6, 0xFA, 0xAD, 0xA7, 0x17, 0x9E, 0x84,
                                            0xF3, 0xB9, 0xCA, 0xC2, 0xFC, 0x63, 0x25, 0x51};
    for (int v = 0; v < 3; v++) {
        memcpy(zero, raw, 64);
        if (v == 0)
            memset(zero, 0, 32);
        else if (v == 1)
            memset(zero + 32, 0, 32);
        else {
            memcpy(zero, order, 32);
            memcpy(zero + 32, order, 32);
        }
        b.len = (size_t)(sig - good);
        assert_int_equal(sb_jose_b64url_encode(zero, 64, &b), 0);
        assert_int_equal(sb_buf_append(&b, "", 1), 0);
        assert_reason(verify_default(b.base), SB_JWT_BAD_SIGNATURE);
    }
    sb_buf_free(&b);
    free(good);
}

static void test_ecdsa_der_conversion(void **state)
{
    (void)state;
    /* Small values, a high bit that needs a 0x00 pad, and leading zero bytes. */
    unsigned char raw[64] = {0}, back[64], der[80];
    size_t n = 0;
    raw[31] = 0x01;
    raw[62] = 0x00;
    raw[63] = 0xFF;
    assert_int_equal(sb__jose_ecdsa_raw_to_der(raw, der, sizeof der, &n), 0);
    static const unsigned char want[] = {0x30, 0x07, 0x02, 0x01, 0x01, 0x02, 0x02, 0x00, 0xFF};
    assert_int_equal(n, sizeof want);
    assert_memory_equal(der, want, n);
    assert_int_equal(sb__jose_ecdsa_der_to_raw(der, n, back), 0);
    assert_memory_equal(back, raw, 64);
    /* Cap too small. */
    assert_int_equal(sb__jose_ecdsa_raw_to_der(raw, der, 8, &n), SB_EMSGSIZE);

    /* Against OpenSSL's own encoder, over values with 0..3 leading zero bytes. */
    for (int i = 0; i < 400; i++) {
        unsigned char r[64];
        for (int j = 0; j < 64; j++)
            r[j] = (unsigned char)(rand() & 0xFF);
        int zr = i % 4, zs = (i / 4) % 4;
        memset(r, 0, (size_t)zr);
        memset(r + 32, 0, (size_t)zs);
        if (i % 7 == 0)
            r[zr] |= 0x80;
        ECDSA_SIG *es = ECDSA_SIG_new();
        BIGNUM *br = BN_bin2bn(r, 32, NULL), *bs = BN_bin2bn(r + 32, 32, NULL);
        assert_int_equal(ECDSA_SIG_set0(es, br, bs), 1);
        unsigned char *ossl = NULL;
        int on = i2d_ECDSA_SIG(es, &ossl);
        assert_true(on > 0);
        assert_int_equal(sb__jose_ecdsa_raw_to_der(r, der, sizeof der, &n), 0);
        assert_int_equal(n, (size_t)on);
        assert_memory_equal(der, ossl, n);
        assert_int_equal(sb__jose_ecdsa_der_to_raw(ossl, (size_t)on, back), 0);
        assert_memory_equal(back, r, 64);
        OPENSSL_free(ossl);
        ECDSA_SIG_free(es);
    }

    /* Non-canonical or out-of-range DER is refused. */
    static const struct {
        unsigned char b[12];
        size_t n;
    } bad[] = {
        {{0x30, 0x08, 0x02, 0x02, 0x00, 0x01, 0x02, 0x02, 0x00, 0xFF}, 10}, /* needless 00 */
        {{0x30, 0x06, 0x02, 0x01, 0x81, 0x02, 0x01, 0x01}, 8},              /* negative */
        {{0x30, 0x06, 0x02, 0x01, 0x00, 0x02, 0x01, 0x01}, 8},              /* zero r: "00" */
        {{0x30, 0x05, 0x02, 0x00, 0x02, 0x01, 0x01}, 7},                    /* empty int */
        {{0x30, 0x07, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01, 0x00}, 9},        /* trailing */
        {{0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01, 0x00}, 9},        /* len mismatch */
        {{0x31, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01}, 8},              /* not SEQUENCE */
        {{0x30, 0x06, 0x03, 0x01, 0x01, 0x02, 0x01, 0x01}, 8},              /* not INTEGER */
        {{0x30, 0x81, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01}, 9},        /* long form */
        {{0x30}, 1},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(sb__jose_ecdsa_der_to_raw(bad[i].b, bad[i].n, back), SB_EINVAL);
    /* 2^256 and more: 33 significant bytes, with and without the sign pad. */
    unsigned char big[41] = {0x30, 39, 0x02, 34, 0x00, 0x80};
    memset(big + 6, 0x11, 32);
    memcpy(big + 38, "\x02\x01\x01", 3);
    assert_int_equal(sb__jose_ecdsa_der_to_raw(big, 41, back), SB_EINVAL);
    unsigned char big2[40] = {0x30, 38, 0x02, 33, 0x01};
    memset(big2 + 5, 0x11, 32);
    memcpy(big2 + 37, "\x02\x01\x01", 3);
    assert_int_equal(sb__jose_ecdsa_der_to_raw(big2, 40, back), SB_EINVAL);
    big2[4] = 0x00; /* now a needless pad before 0x11: refused too */
    assert_int_equal(sb__jose_ecdsa_der_to_raw(big2, 40, back), SB_EINVAL);
}

static void test_es256_leading_zero_roundtrip(void **state)
{
    (void)state;
    /* 600 ES256 tokens: about 4 have an R or S below 2^248; all must verify. */
    sb_buf b, p;
    sb_buf_init(&b, 0);
    sb_buf_init(&p, 0);
    int zeros = 0;
    for (int i = 0; i < 600; i++) {
        char payload[32];
        sb_jwt_reason r;
        snprintf(payload, sizeof payload, "payload %d", i);
        b.len = 0;
        p.len = 0;
        assert_int_equal(sb_jws_sign(k_es, "{\"alg\":\"ES256\"}", 15, payload, strlen(payload), &b),
                         0);
        assert_int_equal(sb_jws_verify(k_es, b.base, b.len, &p, &r), 0);
        unsigned char sig[64];
        size_t n = 0;
        const char *s = memrchr(b.base, '.', b.len) + 1;
        assert_int_equal(
            sb_jose_b64url_decode(s, b.len - (size_t)(s - b.base), sig, sizeof sig, &n), 0);
        assert_int_equal(n, 64);
        zeros += sig[0] == 0 || sig[32] == 0;
    }
    print_message("ES256 signatures with a leading zero in R or S: %d of 600\n", zeros);
    sb_buf_free(&b);
    sb_buf_free(&p);
}

static void test_too_large(void **state)
{
    (void)state;
    char *t = malloc(SB_JOSE_MAX_COMPACT + 2);
    memset(t, 'A', SB_JOSE_MAX_COMPACT + 1);
    t[100] = '.';
    t[200] = '.';
    t[SB_JOSE_MAX_COMPACT + 1] = '\0';
    assert_reason(verify_default(t), SB_JWT_TOO_LARGE);
    sb_buf p;
    sb_jwt_reason r;
    sb_buf_init(&p, 0);
    assert_int_equal(sb_jws_verify(k_es, t, SB_JOSE_MAX_COMPACT + 1, &p, &r), SB_EAUTH);
    assert_reason(r, SB_JWT_TOO_LARGE);
    sb_buf_free(&p);
    free(t);

    /* Signing: a token up to the limit is made and accepted; past it, SB_EMSGSIZE. */
    json_t *c = claims_default();
    sb_buf b;
    sb_buf_init(&b, 0);
    size_t pad = 0, last_ok = 0;
    char *filler = malloc(SB_JOSE_MAX_COMPACT);
    for (pad = 5000; pad < SB_JOSE_MAX_COMPACT; pad++) {
        memset(filler, 'x', pad);
        filler[pad] = '\0';
        json_object_set_new(c, "pad", json_string(filler));
        b.len = 0;
        int rc = sb_jwt_sign(k_hs, c, NULL, &b);
        if (rc == SB_EMSGSIZE) {
            assert_int_equal(b.len, 0);
            break;
        }
        assert_int_equal(rc, 0);
        assert_true(b.len <= SB_JOSE_MAX_COMPACT);
        last_ok = b.len;
    }
    assert_true(last_ok > SB_JOSE_MAX_COMPACT - 4);
    filler[pad - 1] = '\0';
    json_object_set_new(c, "pad", json_string(filler));
    b.len = 0;
    assert_int_equal(sb_jwt_sign(k_hs, c, NULL, &b), 0);
    assert_int_equal(sb_buf_append(&b, "", 1), 0);
    assert_reason(verify_default(b.base), SB_JWT_OK);
    /* The output buffer's own maximum is honoured too. */
    sb_buf small;
    sb_buf_init(&small, 64);
    assert_int_equal(sb_jwt_sign(k_hs, c, NULL, &small), SB_EMSGSIZE);
    assert_int_equal(small.len, 0);
    free(filler);
    sb_buf_free(&b);
    sb_buf_free(&small);
    json_decref(c);
}

/* ---- keys ---------------------------------------------------------------------------- */

static void test_key_constructors(void **state)
{
    (void)state;
    sb_jose_key *k = NULL;
    char secret[SB_JOSE_HS256_MAX_SECRET + 1];
    memset(secret, 's', sizeof secret);
    assert_int_equal(sb_jose_key_from_secret("h", secret, 31, &k), SB_EINVAL);
    assert_int_equal(sb_jose_key_from_secret("h", secret, sizeof secret, &k), SB_EINVAL);
    assert_int_equal(sb_jose_key_from_secret(NULL, secret, 32, &k), SB_EINVAL);
    assert_int_equal(sb_jose_key_from_secret("", secret, 32, &k), SB_EINVAL);
    assert_int_equal(sb_jose_key_from_secret("a\nb", secret, 32, &k), SB_EINVAL);
    assert_int_equal(sb_jose_key_from_secret("\xC3\x28", secret, 32, &k), SB_EINVAL);
    char longkid[SB_JOSE_MAX_KID + 2];
    memset(longkid, 'k', sizeof longkid - 1);
    longkid[sizeof longkid - 1] = '\0';
    assert_int_equal(sb_jose_key_from_secret(longkid, secret, 32, &k), SB_EINVAL);
    longkid[SB_JOSE_MAX_KID] = '\0';
    assert_int_equal(sb_jose_key_from_secret(longkid, secret, 32, &k), 0);
    sb_jose_key_free(k);
    assert_int_equal(sb_jose_key_from_secret("caf\xC3\xA9 key", secret, 32, &k), 0);
    assert_true(sb_jose_key_can_sign(k));
    /* HS256 keys have no JWK, thumbprint or generation. */
    json_t *j = NULL;
    sb_buf b;
    sb_buf_init(&b, 0);
    assert_int_equal(sb_jose_key_public_jwk(k, &j), SB_EINVAL);
    assert_int_equal(sb_jose_key_thumbprint(k, &b), SB_EINVAL);
    sb_jose_key_free(k);
    k = NULL;
    assert_int_equal(sb_jose_key_generate(SB_JOSE_HS256, "h", &k), SB_EINVAL);
    assert_int_equal(sb_jose_key_generate((sb_jose_alg)99, "h", &k), SB_EINVAL);
    assert_null(k);

    /* Reference counting. */
    assert_int_equal(sb_jose_key_generate(SB_JOSE_EDDSA, NULL, &k), 0);
    assert_ptr_equal(sb_jose_key_ref(k), k);
    sb_jose_key_free(k);
    assert_int_equal(sb_jose_key_alg(k), SB_JOSE_EDDSA);
    sb_jose_key_free(k);
    sb_jose_key_free(NULL);

    /* PEM: garbage, truncated, other key types, encrypted. */
    assert_int_equal(sb_jose_key_from_pem("p", "hello", 5, &k), SB_EINVAL);
    assert_int_equal(sb_jose_key_from_pem("p", "", 0, &k), SB_EINVAL);
    sb_buf pem;
    sb_buf_init(&pem, 0);
    assert_int_equal(sb_jose_key_private_pem(k_es, &pem), 0);
    assert_int_equal(sb_jose_key_from_pem("p", pem.base, pem.len / 2, &k), SB_EINVAL);
    sb_buf_free(&pem);

    static const char *const other[][2] = {{"RSA", NULL}, {"EC", "P-384"}, {"X25519", NULL}};
    for (size_t i = 0; i < 3; i++) {
        EVP_PKEY *pk = other[i][1] ? EVP_PKEY_Q_keygen(NULL, NULL, other[i][0], other[i][1])
                                   : (i == 0 ? EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048)
                                             : EVP_PKEY_Q_keygen(NULL, NULL, other[i][0]));
        assert_non_null(pk);
        BIO *bio = BIO_new(BIO_s_mem());
        char *data;
        assert_int_equal(PEM_write_bio_PrivateKey(bio, pk, NULL, NULL, 0, NULL, NULL), 1);
        long n = BIO_get_mem_data(bio, &data);
        assert_int_equal(sb_jose_key_from_pem("p", data, (size_t)n, &k), SB_ENOTSUP);
        BIO_free(bio);
        bio = BIO_new(BIO_s_mem());
        assert_int_equal(PEM_write_bio_PUBKEY(bio, pk), 1);
        n = BIO_get_mem_data(bio, &data);
        assert_int_equal(sb_jose_key_from_pem("p", data, (size_t)n, &k), SB_ENOTSUP);
        BIO_free(bio);
        EVP_PKEY_free(pk);
    }
    {
        EVP_PKEY *pk = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
        BIO *bio = BIO_new(BIO_s_mem());
        char *data;
        assert_int_equal(PEM_write_bio_PrivateKey(bio, pk, EVP_aes_256_cbc(),
                                                  (unsigned char *)"passphrase", 10, NULL, NULL),
                         1);
        long n = BIO_get_mem_data(bio, &data);
        assert_non_null(memmem(data, (size_t)n, "ENCRYPTED", 9));
        assert_int_equal(sb_jose_key_from_pem("p", data, (size_t)n, &k), SB_EINVAL);
        BIO_free(bio);
        /* SEC1 "EC PRIVATE KEY" is read too. */
        bio = BIO_new(BIO_s_mem());
        assert_int_equal(PEM_write_bio_PrivateKey_traditional(bio, pk, NULL, NULL, 0, NULL, NULL),
                         1);
        n = BIO_get_mem_data(bio, &data);
        assert_non_null(memmem(data, (size_t)n, "EC PRIVATE KEY", 14));
        assert_int_equal(sb_jose_key_from_pem("p", data, (size_t)n, &k), 0);
        assert_true(sb_jose_key_can_sign(k));
        sb_jose_key_free(k);
        BIO_free(bio);
        EVP_PKEY_free(pk);
    }
}

static void test_jwk_import_rules(void **state)
{
    (void)state;
    /* x of the RFC 8037 key with its last bit changed: no longer d's public key. */
    assert_int_equal(jwk_text_rc("{\"kty\":\"OKP\",\"crv\":\"Ed25519\","
                                 "\"d\":\"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A\","
                                 "\"x\":\"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURQ\"}"),
                     SB_EINVAL);
    /* d of the RFC 7515 A.3 key off by one: EC key pair check fails. */
    assert_int_equal(jwk_text_rc("{\"kty\":\"EC\",\"crv\":\"P-256\","
                                 "\"x\":\"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU\","
                                 "\"y\":\"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0\","
                                 "\"d\":\"jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LM\"}"),
                     SB_EINVAL);
    /* A point not on the curve (y changed). */
    assert_int_equal(jwk_text_rc("{\"kty\":\"EC\",\"crv\":\"P-256\","
                                 "\"x\":\"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU\","
                                 "\"y\":\"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a4\"}"),
                     SB_EINVAL);
    /* Short coordinate (31 bytes), missing y, padding. */
    assert_int_equal(jwk_text_rc("{\"kty\":\"EC\",\"crv\":\"P-256\","
                                 "\"x\":\"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVA\","
                                 "\"y\":\"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0\"}"),
                     SB_EINVAL);
    assert_int_equal(jwk_text_rc("{\"kty\":\"EC\",\"crv\":\"P-256\","
                                 "\"x\":\"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU\"}"),
                     SB_EINVAL);
    assert_int_equal(jwk_text_rc("{\"kty\":\"EC\",\"crv\":\"P-256\","
                                 "\"x\":\"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU=\","
                                 "\"y\":\"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0\"}"),
                     SB_EINVAL);
    /* alg and use must agree with the key type. */
    assert_int_equal(jwk_text_rc("{\"kty\":\"EC\",\"crv\":\"P-256\",\"alg\":\"HS256\","
                                 "\"x\":\"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU\","
                                 "\"y\":\"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0\"}"),
                     SB_EINVAL);
    assert_int_equal(jwk_text_rc("{\"kty\":\"EC\",\"crv\":\"P-256\",\"use\":\"enc\","
                                 "\"x\":\"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU\","
                                 "\"y\":\"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0\"}"),
                     SB_EINVAL);
    assert_int_equal(jwk_text_rc("{\"kty\":\"EC\",\"crv\":\"P-256\",\"alg\":\"ES256\","
                                 "\"use\":\"sig\","
                                 "\"x\":\"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU\","
                                 "\"y\":\"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0\"}"),
                     0);
    assert_int_equal(jwk_text_rc("{\"kty\":\"oct\",\"alg\":\"HS512\",\"k\":\"AyM1SysPpbyDfgZld3u"
                                 "mj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9"
                                 "CAow\"}"),
                     SB_EINVAL);
    /* Short oct secret; unsupported types and curves. */
    assert_int_equal(jwk_text_rc("{\"kty\":\"oct\",\"k\":\"c2hvcnQ\"}"), SB_EINVAL);
    assert_int_equal(jwk_text_rc("{\"kty\":\"RSA\",\"n\":\"AQAB\",\"e\":\"AQAB\"}"), SB_ENOTSUP);
    assert_int_equal(jwk_text_rc("{\"kty\":\"EC\",\"crv\":\"P-384\",\"x\":\"AA\",\"y\":\"AA\"}"),
                     SB_ENOTSUP);
    assert_int_equal(jwk_text_rc("{\"kty\":\"OKP\",\"crv\":\"X25519\",\"x\":\"AA\"}"), SB_ENOTSUP);
    assert_int_equal(jwk_text_rc("{\"crv\":\"P-256\"}"), SB_EINVAL);

    /* kid: argument first, then the JWK's, then the thumbprint. */
    sb_jose_key *k = key_from_jwk_text("{\"kty\":\"EC\",\"crv\":\"P-256\",\"kid\":\"mine\","
                                       "\"x\":\"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU\","
                                       "\"y\":\"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0\"}",
                                       NULL);
    assert_string_equal(sb_jose_key_kid(k), "mine");
    sb_jose_key_free(k);
    k = key_from_jwk_text(a3_jwk_pub, "given");
    assert_string_equal(sb_jose_key_kid(k), "given");
    sb_jose_key_free(k);
    /* RFC 7638 has no EC example; this value was derived with the openssl CLI:
     *   printf '%s' '{"crv":"P-256","kty":"EC","x":"f83O…VEU","y":"x_FE…I5a0"}' |
     *   openssl dgst -sha256 -binary | basenc --base64url   (padding dropped) */
    k = key_from_jwk_text(a3_jwk_pub, NULL);
    assert_string_equal(sb_jose_key_kid(k), "oKIywvGUpTVTyxMQ3bwIIeQUudfr_CkLMjCE19ECD-U");
    sb_jose_key *k2 = key_from_jwk_text(a3_jwk_priv, NULL);
    assert_string_equal(sb_jose_key_kid(k), sb_jose_key_kid(k2));
    sb_jose_key_free(k);
    sb_jose_key_free(k2);
    /* oct without any kid. */
    json_error_t err;
    json_t *j = json_loads(a1_jwk, 0, &err);
    k = NULL;
    assert_int_equal(sb_jose_key_from_jwk(j, NULL, &k), SB_EINVAL);
    assert_null(k);
    json_decref(j);
}

/* ---- allocation failures and argument checks ----------------------------------------- */

static int fail_at, alloc_count;

static void *failing_malloc(size_t n, void *ud)
{
    (void)ud;
    if (fail_at && ++alloc_count == fail_at)
        return NULL;
    return malloc(n);
}

static void *failing_realloc(void *p, size_t n, void *ud)
{
    (void)ud;
    if (fail_at && ++alloc_count == fail_at)
        return NULL;
    return realloc(p, n);
}

static void plain_free(void *p, void *ud)
{
    (void)ud;
    free(p);
}

static const sb_allocator failing = {failing_malloc, failing_realloc, plain_free, NULL};

static void test_alloc_failures(void **state)
{
    (void)state;
    json_t *c = claims_default();
    sb_alloc_set(&failing);
    for (fail_at = 1;; fail_at++) {
        alloc_count = 0;
        sb_jose_key *k = NULL;
        sb_buf b;
        sb_buf_init(&b, 0);
        int rc = sb_jose_key_from_secret("hs", hs_secret, 32, &k);
        if (rc == 0)
            rc = sb_jwt_sign(k, c, NULL, &b);
        if (rc == 0) {
            sb_jwt_reason r;
            sb_buf p;
            sb_buf_init(&p, 0);
            rc = sb_jws_verify(k, b.base, b.len, &p, &r);
            sb_buf_free(&p);
        }
        sb_buf_free(&b);
        sb_jose_key_free(k);
        if (rc == 0)
            break;
        assert_int_equal(rc, SB_ENOMEM);
        assert_true(fail_at < 20);
    }
    fail_at = 0;
    sb_alloc_set(NULL);
    json_decref(c);
}

static void test_arguments(void **state)
{
    (void)state;
    json_t *c = claims_default(), *out = (json_t *)1;
    char *t = sign(k_es, c, NULL);
    sb_jwt_reason r = SB_JWT_OK;
    sb_jwt_expect e = expect_default();
    lookups = 0;
    e.aud = NULL;
    assert_int_equal(sb_jwt_verify(t, strlen(t), lookup, NULL, &e, &out, &r), SB_EINVAL);
    assert_null(out);
    assert_reason(r, SB_JWT_INTERNAL);
    e = expect_default();
    e.leeway = -1;
    assert_int_equal(sb_jwt_verify(t, strlen(t), lookup, NULL, &e, NULL, &r), SB_EINVAL);
    e.leeway = SB_JWT_MAX_LEEWAY + 1;
    assert_int_equal(sb_jwt_verify(t, strlen(t), lookup, NULL, &e, NULL, &r), SB_EINVAL);
    e = expect_default();
    e.now = -1;
    assert_int_equal(sb_jwt_verify(t, strlen(t), lookup, NULL, &e, NULL, &r), SB_EINVAL);
    e.now = SB_JWT_MAX_NOW + 1;
    assert_int_equal(sb_jwt_verify(t, strlen(t), lookup, NULL, &e, NULL, &r), SB_EINVAL);
    assert_int_equal(sb_jwt_verify(t, strlen(t), lookup, NULL, NULL, NULL, &r), SB_EINVAL);
    assert_int_equal(lookups, 0);
    /* Lookup is called once per verification; reason may be NULL. */
    e = expect_default();
    assert_int_equal(sb_jwt_verify(t, strlen(t), lookup, NULL, &e, NULL, NULL), 0);
    assert_int_equal(lookups, 1);
    assert_int_equal(sb_jwt_verify(NULL, 0, lookup, NULL, &e, NULL, &r), SB_EAUTH);
    assert_reason(r, SB_JWT_MALFORMED);
    /* sb_jws_sign checks the header it is given. */
    sb_buf b;
    sb_buf_init(&b, 0);
    static const char *const bad_hdrs[] = {
        "{\"alg\":\"EdDSA\"}",
        "{\"alg\":\"ES256\",\"crit\":[]}",
        "{\"alg\":\"ES256\",\"alg\":\"ES256\"}",
        "{\"alg\":\"es256\"}",
        "[]",
        "{",
    };
    for (size_t i = 0; i < sizeof bad_hdrs / sizeof bad_hdrs[0]; i++)
        assert_int_equal(sb_jws_sign(k_es, bad_hdrs[i], strlen(bad_hdrs[i]), "x", 1, &b),
                         SB_EINVAL);
    assert_int_equal(b.len, 0);
    /* Token hash: the whole token. */
    unsigned char h1[32], h2[32];
    assert_int_equal(sb_jwt_token_hash(t, strlen(t), h1), 0);
    t[0] ^= 1;
    assert_int_equal(sb_jwt_token_hash(t, strlen(t), h2), 0);
    assert_memory_not_equal(h1, h2, 32);
    free(t);
    json_decref(c);
}

static void test_strerror(void **state)
{
    (void)state;
    static const char *const names[] = {
        "ok",
        "malformed",
        "too_large",
        "alg_none",
        "crit_unsupported",
        "unknown_kid",
        "alg_mismatch",
        "bad_signature",
        "wrong_type",
        "bad_claim",
        "expired",
        "not_yet_valid",
        "issued_in_future",
        "lifetime_too_long",
        "wrong_audience",
        "wrong_issuer",
        "internal",
    };
    for (int i = 0; i <= SB_JWT_INTERNAL; i++)
        assert_string_equal(sb_jwt_strerror((sb_jwt_reason)i), names[i]);
    assert_string_equal(sb_jwt_strerror((sb_jwt_reason)999), "unknown");
    assert_string_equal(sb_strerror(SB_EAUTH), "authentication failed");
    assert_null(sb_jose_alg_name((sb_jose_alg)0));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_b64url_vectors),
        cmocka_unit_test(test_b64url_strict),
        cmocka_unit_test(test_b64_padded),
        cmocka_unit_test(test_b64url_roundtrip_all_lengths),
        cmocka_unit_test(test_rfc7515_a1_hs256),
        cmocka_unit_test(test_rfc7515_a3_es256),
        cmocka_unit_test(test_rfc8037_ed25519),
        cmocka_unit_test(test_roundtrip_each_alg),
        cmocka_unit_test(test_pem_roundtrip),
        cmocka_unit_test(test_jwk_roundtrip_and_jwks),
        cmocka_unit_test(test_alg_none),
        cmocka_unit_test(test_key_confusion),
        cmocka_unit_test(test_alg_swapped),
        cmocka_unit_test(test_kid),
        cmocka_unit_test(test_time_claims),
        cmocka_unit_test(test_aud_iss),
        cmocka_unit_test(test_header_rules),
        cmocka_unit_test(test_typ),
        cmocka_unit_test(test_payload_rules),
        cmocka_unit_test(test_bad_base64_and_structure),
        cmocka_unit_test(test_signature_forms),
        cmocka_unit_test(test_es256_der_signature_refused),
        cmocka_unit_test(test_ecdsa_der_conversion),
        cmocka_unit_test(test_es256_leading_zero_roundtrip),
        cmocka_unit_test(test_too_large),
        cmocka_unit_test(test_key_constructors),
        cmocka_unit_test(test_jwk_import_rules),
        cmocka_unit_test(test_alloc_failures),
        cmocka_unit_test(test_arguments),
        cmocka_unit_test(test_strerror),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
