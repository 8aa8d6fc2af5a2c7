#include "auth/jose.h"

#include <limits.h>
#include <stdatomic.h>
#include <string.h>
#include <strings.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>

#include "core/alloc.h"
#include "core/sha256.h"
#include "switchboard/error.h"

#define PEM_MAX    (64 * 1024)
#define SEG_MAX    (SB_JOSE_MAX_COMPACT / 4 * 3) /* bytes in the longest decoded segment */
#define HEADER_MAX 1024                          /* header JSON that sb_jwt_sign writes */
#define SIG_MAX    64
#define DER_MAX    72
#define THUMB_LEN  43 /* base64url of a SHA-256 digest */

struct sb_jose_key {
    atomic_uint refs;
    sb_jose_alg alg;
    bool priv;
    EVP_PKEY *pkey;        /* ES256, EdDSA */
    unsigned char *secret; /* HS256: points into the allocation, after kid */
    size_t secret_len;
    char kid[];
};

/* ---- base64url ----------------------------------------------------------------------- */

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* A character's value in the base64url alphabet (url) or the standard one, or -1. */
static int b64_value(unsigned char c, bool url)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == (url ? '-' : '+'))
        return 62;
    if (c == (url ? '_' : '/'))
        return 63;
    return -1;
}

/* Writes SB_JOSE_B64URL_LEN(len) characters to out; returns that count. */
static size_t b64_encode_raw(const unsigned char *in, size_t len, char *out)
{
    size_t o = 0, i = 0;
    for (; i + 3 <= len; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8 | in[i + 2];
        out[o++] = b64_alphabet[v >> 18];
        out[o++] = b64_alphabet[(v >> 12) & 63];
        out[o++] = b64_alphabet[(v >> 6) & 63];
        out[o++] = b64_alphabet[v & 63];
    }
    if (len - i == 1) {
        unsigned v = (unsigned)in[i] << 16;
        out[o++] = b64_alphabet[v >> 18];
        out[o++] = b64_alphabet[(v >> 12) & 63];
    } else if (len - i == 2) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8;
        out[o++] = b64_alphabet[v >> 18];
        out[o++] = b64_alphabet[(v >> 12) & 63];
        out[o++] = b64_alphabet[(v >> 6) & 63];
    }
    return o;
}

int sb_jose_b64url_encode(const void *in, size_t len, sb_buf *out)
{
    if ((!in && len) || !out || len > SIZE_MAX / 2)
        return SB_EINVAL;
    size_t n = SB_JOSE_B64URL_LEN(len);
    if (n == 0)
        return 0;
    int rc = sb_buf_reserve(out, n);
    if (rc)
        return rc;
    out->len += b64_encode_raw(in, len, out->base + out->len);
    return 0;
}

/* sb_jose_b64url_decode for either alphabet, without padding. */
static int b64_decode(const char *in, size_t len, bool url, unsigned char *out, size_t cap,
                      size_t *out_len)
{
    if ((!in && len) || !out_len || (!out && cap))
        return SB_EINVAL;
    size_t rem = len % 4;
    if (rem == 1)
        return SB_EINVAL;
    for (size_t i = 0; i < len; i++)
        if (b64_value((unsigned char)in[i], url) < 0)
            return SB_EINVAL;
    /* The bits past the last whole byte must be zero, or two texts would decode alike. */
    if (rem == 2 && (b64_value((unsigned char)in[len - 1], url) & 0x0F))
        return SB_EINVAL;
    if (rem == 3 && (b64_value((unsigned char)in[len - 1], url) & 0x03))
        return SB_EINVAL;
    size_t n = len / 4 * 3 + (rem ? rem - 1 : 0);
    *out_len = n;
    if (n > cap)
        return SB_EMSGSIZE;
    size_t o = 0, i = 0;
    for (; i + 4 <= len; i += 4) {
        unsigned v = (unsigned)b64_value((unsigned char)in[i], url) << 18 |
                     (unsigned)b64_value((unsigned char)in[i + 1], url) << 12 |
                     (unsigned)b64_value((unsigned char)in[i + 2], url) << 6 |
                     (unsigned)b64_value((unsigned char)in[i + 3], url);
        out[o++] = (unsigned char)(v >> 16);
        out[o++] = (unsigned char)(v >> 8);
        out[o++] = (unsigned char)v;
    }
    if (rem) {
        unsigned v = (unsigned)b64_value((unsigned char)in[i], url) << 18 |
                     (unsigned)b64_value((unsigned char)in[i + 1], url) << 12;
        if (rem == 3)
            v |= (unsigned)b64_value((unsigned char)in[i + 2], url) << 6;
        out[o++] = (unsigned char)(v >> 16);
        if (rem == 3)
            out[o++] = (unsigned char)(v >> 8);
    }
    return 0;
}

int sb_jose_b64url_decode(const char *in, size_t len, unsigned char *out, size_t cap,
                          size_t *out_len)
{
    return b64_decode(in, len, true, out, cap, out_len);
}

int sb_jose_b64_decode(const char *in, size_t len, unsigned char *out, size_t cap, size_t *out_len)
{
    if (!in || len == 0 || len % 4 != 0)
        return SB_EINVAL;
    size_t pad = in[len - 1] == '=' ? (in[len - 2] == '=' ? 2 : 1) : 0;
    return b64_decode(in, len - pad, false, out, cap, out_len);
}

/* ---- small helpers ------------------------------------------------------------------- */

const char *sb_jose_alg_name(sb_jose_alg alg)
{
    switch (alg) {
    case SB_JOSE_ES256:
        return "ES256";
    case SB_JOSE_EDDSA:
        return "EdDSA";
    case SB_JOSE_HS256:
        return "HS256";
    }
    return NULL;
}

/* OpenSSL's error queue is per thread and read by the TLS code: leave it empty. */
static int ossl_fail(int rc)
{
    ERR_clear_error();
    return rc;
}

/* A kid is text that goes into JSON: valid UTF-8 without control characters. */
static bool kid_valid(const char *kid, size_t len)
{
    const unsigned char *s = (const unsigned char *)kid;
    if (len == 0 || len > SB_JOSE_MAX_KID)
        return false;
    for (size_t i = 0; i < len;) {
        unsigned char c = s[i];
        size_t n;
        uint32_t cp;
        if (c < 0x80) {
            if (c < 0x20 || c == 0x7F)
                return false;
            i++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF) {
            n = 2;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            n = 3;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 4;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (len - i < n)
            return false;
        for (size_t k = 1; k < n; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return false;
            cp = cp << 6 | (s[i + k] & 0x3F);
        }
        if ((n == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
            (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
            return false;
        i += n;
    }
    return true;
}

static bool json_str_eq(const json_t *v, const char *s)
{
    size_t n = strlen(s);
    return json_is_string(v) && json_string_length(v) == n &&
           memcmp(json_string_value(v), s, n) == 0;
}

/* ---- ECDSA signature forms ----------------------------------------------------------- */

/* One DER INTEGER for a 32-byte unsigned big-endian value. Returns bytes written (<= 35). */
static size_t der_uint(const unsigned char v[32], unsigned char *out)
{
    size_t skip = 0;
    while (skip < 31 && v[skip] == 0)
        skip++;
    size_t n = 32 - skip;
    bool pad = v[skip] & 0x80;
    size_t o = 0;
    out[o++] = 0x02;
    out[o++] = (unsigned char)(n + pad);
    if (pad)
        out[o++] = 0x00;
    memcpy(out + o, v + skip, n);
    return o + n;
}

int sb__jose_ecdsa_raw_to_der(const unsigned char raw[64], unsigned char *der, size_t cap,
                              size_t *der_len)
{
    unsigned char tmp[DER_MAX];
    size_t n = 2;
    n += der_uint(raw, tmp + n);
    n += der_uint(raw + 32, tmp + n);
    tmp[0] = 0x30;
    tmp[1] = (unsigned char)(n - 2); /* at most 70: always the short length form */
    *der_len = n;
    if (n > cap)
        return SB_EMSGSIZE;
    memcpy(der, tmp, n);
    return 0;
}

/* Parses one canonical positive DER INTEGER of at most 32 value bytes into out[32]. */
static int der_read_uint(const unsigned char **p, const unsigned char *end, unsigned char out[32])
{
    const unsigned char *s = *p;
    if (end - s < 3 || s[0] != 0x02)
        return SB_EINVAL;
    size_t n = s[1];
    s += 2;
    if (n == 0 || n > 33 || (size_t)(end - s) < n)
        return SB_EINVAL;
    if (s[0] & 0x80)
        return SB_EINVAL; /* negative */
    if (s[0] == 0x00) {
        if (n == 1 || !(s[1] & 0x80))
            return SB_EINVAL; /* zero, or a needless leading zero */
        s++;
        n--;
    }
    if (n > 32)
        return SB_EINVAL;
    memset(out, 0, 32 - n);
    memcpy(out + 32 - n, s, n);
    *p = s + n;
    return 0;
}

int sb__jose_ecdsa_der_to_raw(const unsigned char *der, size_t len, unsigned char raw[64])
{
    if (!der || len < 2 || der[0] != 0x30 || der[1] >= 0x80 || (size_t)der[1] != len - 2)
        return SB_EINVAL;
    const unsigned char *p = der + 2, *end = der + len;
    unsigned char tmp[64];
    if (der_read_uint(&p, end, tmp) || der_read_uint(&p, end, tmp + 32) || p != end)
        return SB_EINVAL;
    memcpy(raw, tmp, 64);
    return 0;
}

/* ---- keys ---------------------------------------------------------------------------- */

static int ec_public_xy(const EVP_PKEY *pkey, unsigned char x[32], unsigned char y[32])
{
    BIGNUM *bx = NULL, *by = NULL;
    int rc = SB_ETLS;
    if (EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_EC_PUB_X, &bx) != 1 ||
        EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_EC_PUB_Y, &by) != 1)
        goto fail;
    if (BN_bn2binpad(bx, x, 32) != 32 || BN_bn2binpad(by, y, 32) != 32)
        goto fail;
    rc = 0;
fail:
    BN_free(by);
    BN_free(bx);
    return rc ? ossl_fail(rc) : 0;
}

static int ed25519_public(const EVP_PKEY *pkey, unsigned char x[32])
{
    size_t n = 32;
    if (EVP_PKEY_get_raw_public_key(pkey, x, &n) != 1 || n != 32)
        return ossl_fail(SB_ETLS);
    return 0;
}

/* Appends s to out[*n..cap); false if it does not fit. */
static bool cat(char *out, size_t cap, size_t *n, const char *s, size_t len)
{
    if (len > cap - *n)
        return false;
    memcpy(out + *n, s, len);
    *n += len;
    return true;
}

/* RFC 7638: SHA-256 over the required members in lexicographic order, no whitespace. */
static int thumbprint(sb_jose_alg alg, const EVP_PKEY *pkey, char out[THUMB_LEN + 1])
{
    unsigned char x[32], y[32], digest[32];
    char bx[THUMB_LEN + 1], by[THUMB_LEN + 1], json[160];
    size_t n = 0;
    int rc;
    bool ok;
#define CAT(s, len) cat(json, sizeof json, &n, s, len)
#define CAT_LIT(s)  CAT(s, sizeof(s) - 1)
    if (alg == SB_JOSE_ES256) {
        if ((rc = ec_public_xy(pkey, x, y)))
            return rc;
        b64_encode_raw(x, 32, bx);
        b64_encode_raw(y, 32, by);
        ok = CAT_LIT("{\"crv\":\"P-256\",\"kty\":\"EC\",\"x\":\"") && CAT(bx, THUMB_LEN) &&
             CAT_LIT("\",\"y\":\"") && CAT(by, THUMB_LEN) && CAT_LIT("\"}");
    } else if (alg == SB_JOSE_EDDSA) {
        if ((rc = ed25519_public(pkey, x)))
            return rc;
        b64_encode_raw(x, 32, bx);
        ok = CAT_LIT("{\"crv\":\"Ed25519\",\"kty\":\"OKP\",\"x\":\"") && CAT(bx, THUMB_LEN) &&
             CAT_LIT("\"}");
    } else {
        return SB_EINVAL;
    }
    if (!ok || EVP_Digest(json, n, digest, NULL, EVP_sha256(), NULL) != 1)
        return ossl_fail(SB_ETLS);
    out[b64_encode_raw(digest, 32, out)] = '\0';
    return 0;
#undef CAT_LIT
#undef CAT
}

/* Builds the key; takes ownership of pkey only on success. kid NULL: the thumbprint. */
static int key_new(sb_jose_alg alg, const char *kid, EVP_PKEY *pkey, bool priv, const void *secret,
                   size_t secret_len, sb_jose_key **out)
{
    char thumb[THUMB_LEN + 1];
    int rc;
    if (!kid) {
        if ((rc = thumbprint(alg, pkey, thumb)))
            return rc;
        kid = thumb;
    }
    size_t kid_len = strlen(kid);
    if (!kid_valid(kid, kid_len))
        return SB_EINVAL;
    sb_jose_key *k = sb_malloc(sizeof *k + kid_len + 1 + secret_len);
    if (!k)
        return SB_ENOMEM;
    atomic_init(&k->refs, 1);
    k->alg = alg;
    k->priv = priv;
    k->pkey = pkey;
    memcpy(k->kid, kid, kid_len + 1);
    k->secret = secret_len ? (unsigned char *)k->kid + kid_len + 1 : NULL;
    k->secret_len = secret_len;
    if (secret_len)
        memcpy(k->secret, secret, secret_len);
    *out = k;
    return 0;
}

/* The algorithm of a supported key type; SB_ENOTSUP for any other key. */
static int pkey_alg(const EVP_PKEY *pkey, sb_jose_alg *alg)
{
    if (EVP_PKEY_is_a(pkey, "ED25519")) {
        *alg = SB_JOSE_EDDSA;
        return 0;
    }
    if (EVP_PKEY_is_a(pkey, "EC")) {
        char group[64];
        size_t n = 0;
        if (EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group,
                                           &n) != 1 ||
            strcmp(group, "prime256v1") != 0)
            return ossl_fail(SB_ENOTSUP);
        *alg = SB_JOSE_ES256;
        return 0;
    }
    return SB_ENOTSUP;
}

int sb_jose_key_generate(sb_jose_alg alg, const char *kid, sb_jose_key **out)
{
    EVP_PKEY *pkey = NULL;
    int rc;
    if (!out)
        return SB_EINVAL;
    if (alg == SB_JOSE_ES256)
        pkey = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    else if (alg == SB_JOSE_EDDSA)
        pkey = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    else
        return SB_EINVAL;
    if (!pkey)
        return ossl_fail(SB_ETLS);
    if ((rc = key_new(alg, kid, pkey, true, NULL, 0, out)))
        EVP_PKEY_free(pkey);
    return rc;
}

/* Encrypted PEM must fail, never prompt on a terminal. */
static int no_passphrase(char *buf, int size, int rwflag, void *ud)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)ud;
    return -1;
}

int sb_jose_key_from_pem(const char *kid, const char *pem, size_t len, sb_jose_key **out)
{
    EVP_PKEY *pkey = NULL;
    BIO *bio = NULL;
    bool priv = true;
    sb_jose_alg alg;
    int rc = SB_EINVAL;
    if (!pem || !out || len == 0 || len > PEM_MAX)
        return SB_EINVAL;
    if (!(bio = BIO_new_mem_buf(pem, (int)len))) {
        rc = SB_ENOMEM;
        goto fail;
    }
    pkey = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL);
    if (!pkey) {
        ERR_clear_error();
        priv = false;
        BIO_free(bio);
        if (!(bio = BIO_new_mem_buf(pem, (int)len))) {
            rc = SB_ENOMEM;
            goto fail;
        }
        pkey = PEM_read_bio_PUBKEY(bio, NULL, no_passphrase, NULL);
    }
    if (!pkey)
        goto fail;
    if ((rc = pkey_alg(pkey, &alg)))
        goto fail;
    if ((rc = key_new(alg, kid, pkey, priv, NULL, 0, out)))
        goto fail;
    BIO_free(bio);
    return 0;
fail:
    EVP_PKEY_free(pkey);
    BIO_free(bio);
    return ossl_fail(rc);
}

int sb_jose_key_from_secret(const char *kid, const void *secret, size_t len, sb_jose_key **out)
{
    if (!kid || !secret || !out || len < SB_JOSE_HS256_MIN_SECRET || len > SB_JOSE_HS256_MAX_SECRET)
        return SB_EINVAL;
    return key_new(SB_JOSE_HS256, kid, NULL, false, secret, len, out);
}

/*
 * Decodes the base64url member `name` of a JWK into out[0..max), requiring at least min
 * bytes; *got receives the count. Returns 0, 1 if absent, SB_EINVAL (out then wiped).
 */
static int jwk_bytes(const json_t *jwk, const char *name, unsigned char *out, size_t min,
                     size_t max, size_t *got)
{
    const json_t *v = json_object_get(jwk, name);
    if (!v)
        return 1;
    if (!json_is_string(v))
        return SB_EINVAL;
    size_t n = 0;
    if (sb_jose_b64url_decode(json_string_value(v), json_string_length(v), out, max, &n) ||
        n < min) {
        OPENSSL_cleanse(out, max);
        return SB_EINVAL;
    }
    *got = n;
    return 0;
}

static int jwk_ec(const unsigned char x[32], const unsigned char y[32], const unsigned char *d,
                  EVP_PKEY **out)
{
    unsigned char pub[65];
    OSSL_PARAM_BLD *bld = NULL;
    OSSL_PARAM *params = NULL;
    BIGNUM *bd = NULL;
    EVP_PKEY_CTX *ctx = NULL, *check = NULL;
    EVP_PKEY *pkey = NULL;
    int rc = SB_ENOMEM;

    pub[0] = 0x04; /* uncompressed point */
    memcpy(pub + 1, x, 32);
    memcpy(pub + 33, y, 32);
    if (!(bld = OSSL_PARAM_BLD_new()))
        goto fail;
    if (!OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) ||
        !OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pub, sizeof pub))
        goto fail;
    if (d && (!(bd = BN_secure_new()) || !BN_bin2bn(d, 32, bd) ||
              !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_PRIV_KEY, bd)))
        goto fail;
    if (!(params = OSSL_PARAM_BLD_to_param(bld)))
        goto fail;
    if (!(ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL)))
        goto fail;
    rc = SB_EINVAL;
    if (EVP_PKEY_fromdata_init(ctx) != 1 ||
        EVP_PKEY_fromdata(ctx, &pkey, d ? EVP_PKEY_KEYPAIR : EVP_PKEY_PUBLIC_KEY, params) != 1)
        goto fail;
    if (!(check = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL))) {
        rc = SB_ENOMEM;
        goto fail;
    }
    /* The point must lie on the curve; a private scalar must be in range and match it. */
    if ((d ? EVP_PKEY_check(check) : EVP_PKEY_public_check(check)) != 1)
        goto fail;
    *out = pkey;
    pkey = NULL;
    rc = 0;
fail:
    EVP_PKEY_free(pkey);
    EVP_PKEY_CTX_free(check);
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    BN_clear_free(bd);
    OSSL_PARAM_BLD_free(bld);
    return rc ? ossl_fail(rc) : 0;
}

static int jwk_okp(const unsigned char x[32], const unsigned char *d, EVP_PKEY **out)
{
    EVP_PKEY *pkey;
    unsigned char pub[32];
    if (d)
        pkey = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, d, 32);
    else
        pkey = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, x, 32);
    if (!pkey)
        return ossl_fail(SB_EINVAL);
    if (d && (ed25519_public(pkey, pub) || CRYPTO_memcmp(pub, x, 32) != 0)) {
        EVP_PKEY_free(pkey);
        return ossl_fail(SB_EINVAL);
    }
    *out = pkey;
    return 0;
}

int sb_jose_key_from_jwk(const json_t *jwk, const char *kid, sb_jose_key **out)
{
    unsigned char x[32], y[32], d[SB_JOSE_HS256_MAX_SECRET];
    size_t n = 0;
    EVP_PKEY *pkey = NULL;
    sb_jose_alg alg;
    bool priv = false;
    int rc = SB_EINVAL;

    if (!json_is_object(jwk) || !out)
        return SB_EINVAL;
    const json_t *kty = json_object_get(jwk, "kty");
    const json_t *crv = json_object_get(jwk, "crv");
    const json_t *jalg = json_object_get(jwk, "alg");
    const json_t *use = json_object_get(jwk, "use");
    const json_t *jkid = json_object_get(jwk, "kid");
    if (!json_is_string(kty) || (use && !json_str_eq(use, "sig")))
        return SB_EINVAL;
    if (!kid && jkid) {
        if (!json_is_string(jkid) || strlen(json_string_value(jkid)) != json_string_length(jkid))
            return SB_EINVAL;
        kid = json_string_value(jkid);
    }

    if (json_str_eq(kty, "oct")) {
        alg = SB_JOSE_HS256;
        if (!kid || jwk_bytes(jwk, "k", d, SB_JOSE_HS256_MIN_SECRET, sizeof d, &n) != 0)
            goto fail;
    } else if (json_str_eq(kty, "EC")) {
        alg = SB_JOSE_ES256;
        if (!json_is_string(crv)) {
            goto fail;
        } else if (!json_str_eq(crv, "P-256")) {
            rc = SB_ENOTSUP;
            goto fail;
        }
        if (jwk_bytes(jwk, "x", x, 32, 32, &n) || jwk_bytes(jwk, "y", y, 32, 32, &n))
            goto fail;
        int has_d = jwk_bytes(jwk, "d", d, 32, 32, &n);
        if (has_d < 0)
            goto fail;
        priv = has_d == 0;
        if ((rc = jwk_ec(x, y, priv ? d : NULL, &pkey)))
            goto fail;
    } else if (json_str_eq(kty, "OKP")) {
        alg = SB_JOSE_EDDSA;
        if (!json_is_string(crv)) {
            goto fail;
        } else if (!json_str_eq(crv, "Ed25519")) {
            rc = SB_ENOTSUP;
            goto fail;
        }
        if (jwk_bytes(jwk, "x", x, 32, 32, &n))
            goto fail;
        int has_d = jwk_bytes(jwk, "d", d, 32, 32, &n);
        if (has_d < 0)
            goto fail;
        priv = has_d == 0;
        if ((rc = jwk_okp(x, priv ? d : NULL, &pkey)))
            goto fail;
    } else {
        rc = SB_ENOTSUP;
        goto fail;
    }
    if (jalg && !json_str_eq(jalg, sb_jose_alg_name(alg))) {
        rc = SB_EINVAL;
        goto fail;
    }
    rc = key_new(alg, kid, pkey, priv, d, alg == SB_JOSE_HS256 ? n : 0, out);
    if (rc)
        goto fail;
    OPENSSL_cleanse(d, sizeof d);
    return 0;
fail:
    EVP_PKEY_free(pkey);
    OPENSSL_cleanse(d, sizeof d);
    return rc;
}

sb_jose_key *sb_jose_key_ref(sb_jose_key *key)
{
    if (key)
        atomic_fetch_add_explicit(&key->refs, 1, memory_order_relaxed);
    return key;
}

void sb_jose_key_free(sb_jose_key *key)
{
    if (!key || atomic_fetch_sub_explicit(&key->refs, 1, memory_order_acq_rel) != 1)
        return;
    EVP_PKEY_free(key->pkey);
    if (key->secret)
        OPENSSL_cleanse(key->secret, key->secret_len);
    sb_free(key);
}

sb_jose_alg sb_jose_key_alg(const sb_jose_key *key)
{
    return key->alg;
}

const char *sb_jose_key_kid(const sb_jose_key *key)
{
    return key->kid;
}

bool sb_jose_key_can_sign(const sb_jose_key *key)
{
    return key->alg == SB_JOSE_HS256 || key->priv;
}

static int pem_out(const sb_jose_key *key, bool priv, sb_buf *out)
{
    BIO *bio = NULL;
    char *data = NULL;
    int rc = SB_ENOMEM;
    if (!key || !out || key->alg == SB_JOSE_HS256 || (priv && !key->priv))
        return SB_EINVAL;
    /* Secure memory for private keys: the BIO's buffer is wiped when freed. */
    if (!(bio = BIO_new(priv ? BIO_s_secmem() : BIO_s_mem())))
        goto fail;
    rc = SB_ETLS;
    if (priv ? PEM_write_bio_PrivateKey(bio, key->pkey, NULL, NULL, 0, NULL, NULL) != 1
             : PEM_write_bio_PUBKEY(bio, key->pkey) != 1)
        goto fail;
    long n = BIO_get_mem_data(bio, &data);
    if (n <= 0 || !data)
        goto fail;
    rc = sb_buf_append(out, data, (size_t)n);
fail:
    BIO_free(bio);
    return rc ? ossl_fail(rc) : 0;
}

int sb_jose_key_private_pem(const sb_jose_key *key, sb_buf *out)
{
    return pem_out(key, true, out);
}

int sb_jose_key_public_pem(const sb_jose_key *key, sb_buf *out)
{
    return pem_out(key, false, out);
}

static int set_str(json_t *o, const char *name, const char *v, size_t len)
{
    return json_object_set_new(o, name, json_stringn(v, len)) ? SB_ENOMEM : 0;
}

int sb_jose_key_public_jwk(const sb_jose_key *key, json_t **out)
{
    unsigned char x[32], y[32];
    char bx[THUMB_LEN], by[THUMB_LEN];
    json_t *o = NULL;
    int rc;
    if (!key || !out || key->alg == SB_JOSE_HS256)
        return SB_EINVAL;
    if (key->alg == SB_JOSE_ES256)
        rc = ec_public_xy(key->pkey, x, y);
    else
        rc = ed25519_public(key->pkey, x);
    if (rc)
        return rc;
    rc = SB_ENOMEM;
    if (!(o = json_object()))
        goto fail;
    b64_encode_raw(x, 32, bx);
    if (key->alg == SB_JOSE_ES256) {
        b64_encode_raw(y, 32, by);
        if (set_str(o, "kty", "EC", 2) || set_str(o, "crv", "P-256", 5) ||
            set_str(o, "x", bx, sizeof bx) || set_str(o, "y", by, sizeof by))
            goto fail;
    } else {
        if (set_str(o, "kty", "OKP", 3) || set_str(o, "crv", "Ed25519", 7) ||
            set_str(o, "x", bx, sizeof bx))
            goto fail;
    }
    const char *alg = sb_jose_alg_name(key->alg);
    if (set_str(o, "kid", key->kid, strlen(key->kid)) || set_str(o, "alg", alg, strlen(alg)) ||
        set_str(o, "use", "sig", 3))
        goto fail;
    *out = o;
    return 0;
fail:
    json_decref(o);
    return rc;
}

int sb_jose_key_thumbprint(const sb_jose_key *key, sb_buf *out)
{
    char t[THUMB_LEN + 1];
    if (!key || !out)
        return SB_EINVAL;
    int rc = thumbprint(key->alg, key->pkey, t);
    return rc ? rc : sb_buf_append(out, t, THUMB_LEN);
}

int sb_jose_jwks(const sb_jose_key *const *keys, size_t n, json_t **out)
{
    json_t *doc = NULL, *arr = NULL, *jwk = NULL;
    int rc = SB_ENOMEM;
    if ((!keys && n) || !out)
        return SB_EINVAL;
    if (!(doc = json_object()) || !(arr = json_array()))
        goto fail;
    for (size_t i = 0; i < n; i++) {
        if (!keys[i] || keys[i]->alg == SB_JOSE_HS256)
            continue;
        if ((rc = sb_jose_key_public_jwk(keys[i], &jwk)))
            goto fail;
        rc = SB_ENOMEM;
        if (json_array_append_new(arr, jwk))
            goto fail;
    }
    if (json_object_set_new(doc, "keys", arr)) {
        arr = NULL; /* set_new consumed it */
        goto fail;
    }
    *out = doc;
    return 0;
fail:
    json_decref(arr);
    json_decref(doc);
    return rc;
}

const sb_jose_key *sb_jose_keys_find(const sb_jose_key *const *keys, size_t n, const char *kid)
{
    if (!keys || !kid)
        return NULL;
    for (size_t i = 0; i < n; i++)
        if (keys[i] && strcmp(keys[i]->kid, kid) == 0)
            return keys[i];
    return NULL;
}

/* ---- signatures ---------------------------------------------------------------------- */

static size_t sig_size(sb_jose_alg alg)
{
    return alg == SB_JOSE_HS256 ? 32 : 64;
}

static int hs256(const sb_jose_key *key, const char *in, size_t len, unsigned char mac[32])
{
    unsigned int n = 32;
    if (!HMAC(EVP_sha256(), key->secret, (int)key->secret_len, (const unsigned char *)in, len, mac,
              &n) ||
        n != 32)
        return ossl_fail(SB_ETLS);
    return 0;
}

int sb__jose_sign_input(const sb_jose_key *key, const char *input, size_t len,
                        unsigned char sig[64], size_t *sig_len)
{
    EVP_MD_CTX *ctx = NULL;
    unsigned char der[DER_MAX + 8];
    size_t n;
    int rc = SB_EINVAL;
    if (!key || (!input && len) || !sig || !sig_len || !sb_jose_key_can_sign(key))
        return SB_EINVAL;
    if (key->alg == SB_JOSE_HS256) {
        if ((rc = hs256(key, input, len, sig)))
            return rc;
        *sig_len = 32;
        return 0;
    }
    if (!(ctx = EVP_MD_CTX_new()))
        return SB_ENOMEM;
    rc = SB_ETLS;
    if (EVP_DigestSignInit(ctx, NULL, key->alg == SB_JOSE_ES256 ? EVP_sha256() : NULL, NULL,
                           key->pkey) != 1)
        goto fail;
    if (key->alg == SB_JOSE_ES256) {
        n = sizeof der;
        if (EVP_DigestSign(ctx, der, &n, (const unsigned char *)input, len) != 1 ||
            sb__jose_ecdsa_der_to_raw(der, n, sig) != 0)
            goto fail;
    } else {
        n = 64;
        if (EVP_DigestSign(ctx, sig, &n, (const unsigned char *)input, len) != 1 || n != 64)
            goto fail;
    }
    *sig_len = 64;
    rc = 0;
fail:
    EVP_MD_CTX_free(ctx);
    return rc ? ossl_fail(rc) : 0;
}

/* 1: valid; 0: invalid; SB_ENOMEM. The key's algorithm decides; the caller checked alg. */
static int verify_input(const sb_jose_key *key, const char *in, size_t len,
                        const unsigned char *sig, size_t sig_len)
{
    unsigned char mac[32], der[DER_MAX];
    const unsigned char *s = sig;
    size_t n = sig_len;
    EVP_MD_CTX *ctx;
    int ok;
    if (sig_len != sig_size(key->alg))
        return 0;
    if (key->alg == SB_JOSE_HS256) {
        if (hs256(key, in, len, mac))
            return 0;
        ok = CRYPTO_memcmp(mac, sig, 32) == 0;
        OPENSSL_cleanse(mac, sizeof mac);
        return ok;
    }
    if (key->alg == SB_JOSE_ES256) {
        sb__jose_ecdsa_raw_to_der(sig, der, sizeof der, &n);
        s = der;
    }
    if (!(ctx = EVP_MD_CTX_new()))
        return SB_ENOMEM;
    ok = EVP_DigestVerifyInit(ctx, NULL, key->alg == SB_JOSE_ES256 ? EVP_sha256() : NULL, NULL,
                              key->pkey) == 1 &&
         EVP_DigestVerify(ctx, s, n, (const unsigned char *)in, len) == 1;
    EVP_MD_CTX_free(ctx);
    if (!ok)
        ERR_clear_error();
    return ok;
}

/* Writes BASE64URL(header) '.' BASE64URL(payload) '.' BASE64URL(sig) to out, atomically. */
static int sign_compact(const sb_jose_key *key, const char *header, size_t hlen,
                        const void *payload, size_t plen, size_t limit, sb_buf *out)
{
    unsigned char sig[SIG_MAX];
    size_t sig_len = 0;
    if (hlen > SIZE_MAX / 4 || plen > SIZE_MAX / 4)
        return SB_EMSGSIZE;
    size_t hn = SB_JOSE_B64URL_LEN(hlen), pn = SB_JOSE_B64URL_LEN(plen);
    size_t total = hn + 1 + pn + 1 + SB_JOSE_B64URL_LEN(sig_size(key->alg));
    if (total > limit)
        return SB_EMSGSIZE;
    int rc = sb_buf_reserve(out, total);
    if (rc)
        return rc;
    char *p = out->base + out->len;
    b64_encode_raw((const unsigned char *)header, hlen, p);
    p[hn] = '.';
    b64_encode_raw(payload, plen, p + hn + 1);
    if ((rc = sb__jose_sign_input(key, p, hn + 1 + pn, sig, &sig_len)))
        return rc;
    p[hn + 1 + pn] = '.';
    b64_encode_raw(sig, sig_len, p + hn + 1 + pn + 1);
    out->len += total;
    return 0;
}

/* The json_loadb flags for every header and payload: one meaning per member name. */
#define JSON_FLAGS JSON_REJECT_DUPLICATES

static int json_fail(const json_error_t *e)
{
    return json_error_code(e) == json_error_out_of_memory ? SB_ENOMEM : SB_EINVAL;
}

int sb_jws_sign(const sb_jose_key *key, const char *header, size_t header_len, const void *payload,
                size_t payload_len, sb_buf *out)
{
    json_error_t err;
    json_t *h;
    int rc = SB_EINVAL;
    if (!key || !header || (!payload && payload_len) || !out || !sb_jose_key_can_sign(key))
        return SB_EINVAL;
    if (!(h = json_loadb(header, header_len, JSON_FLAGS, &err)))
        return json_fail(&err);
    if (json_is_object(h) && json_str_eq(json_object_get(h, "alg"), sb_jose_alg_name(key->alg)) &&
        !json_object_get(h, "crit"))
        rc = 0;
    json_decref(h);
    if (rc)
        return rc;
    return sign_compact(key, header, header_len, payload, payload_len, SIZE_MAX, out);
}

int sb_jwt_sign(const sb_jose_key *key, const json_t *claims, const json_t *extra_header,
                sb_buf *out)
{
    char hbuf[HEADER_MAX], pbuf[SEG_MAX];
    json_t *h = NULL;
    size_t hn, pn;
    int rc = SB_EINVAL;
    if (!key || !out || !sb_jose_key_can_sign(key) || !json_is_object(claims) ||
        !json_is_integer(json_object_get(claims, "exp")))
        return SB_EINVAL;
    if (extra_header) {
        const json_t *typ = json_object_get(extra_header, "typ");
        if (!json_is_object(extra_header) || json_object_get(extra_header, "alg") ||
            json_object_get(extra_header, "kid") || json_object_get(extra_header, "crit") ||
            (typ && !json_is_string(typ)))
            return SB_EINVAL;
    }
    const char *alg = sb_jose_alg_name(key->alg);
    rc = SB_ENOMEM;
    if (!(h = json_object()) || set_str(h, "alg", alg, strlen(alg)) ||
        set_str(h, "typ", "JWT", 3) || set_str(h, "kid", key->kid, strlen(key->kid)))
        goto fail;
    /* update() copies references into h; it does not change extra_header. */
    if (extra_header && json_object_update(h, (json_t *)extra_header))
        goto fail;
    if (!(hn = json_dumpb(h, hbuf, sizeof hbuf, JSON_COMPACT)) ||
        !(pn = json_dumpb(claims, pbuf, sizeof pbuf, JSON_COMPACT)))
        goto fail;
    rc = SB_EMSGSIZE;
    if (hn > sizeof hbuf || pn > sizeof pbuf)
        goto fail;
    rc = sign_compact(key, hbuf, hn, pbuf, pn, SB_JOSE_MAX_COMPACT, out);
fail:
    json_decref(h);
    return rc;
}

/* ---- verification -------------------------------------------------------------------- */

const char *sb_jwt_strerror(sb_jwt_reason reason)
{
    switch (reason) {
    case SB_JWT_OK:
        return "ok";
    case SB_JWT_MALFORMED:
        return "malformed";
    case SB_JWT_TOO_LARGE:
        return "too_large";
    case SB_JWT_ALG_NONE:
        return "alg_none";
    case SB_JWT_CRIT:
        return "crit_unsupported";
    case SB_JWT_UNKNOWN_KID:
        return "unknown_kid";
    case SB_JWT_ALG_MISMATCH:
        return "alg_mismatch";
    case SB_JWT_BAD_SIGNATURE:
        return "bad_signature";
    case SB_JWT_WRONG_TYPE:
        return "wrong_type";
    case SB_JWT_BAD_CLAIM:
        return "bad_claim";
    case SB_JWT_EXPIRED:
        return "expired";
    case SB_JWT_NOT_YET_VALID:
        return "not_yet_valid";
    case SB_JWT_ISSUED_IN_FUTURE:
        return "issued_in_future";
    case SB_JWT_LIFETIME:
        return "lifetime_too_long";
    case SB_JWT_WRONG_AUDIENCE:
        return "wrong_audience";
    case SB_JWT_WRONG_ISSUER:
        return "wrong_issuer";
    case SB_JWT_INTERNAL:
        return "internal";
    }
    return "unknown";
}

/* The parts of a compact JWS after the checks that need no key. */
typedef struct compact {
    size_t signed_len; /* bytes of the signing input: header '.' payload */
    const char *payload;
    size_t payload_len;
    json_t *header;
    const char *kid; /* NULL if absent; owned by header */
    const char *alg;
    unsigned char sig[SIG_MAX + 1];
    size_t sig_len; /* SIG_MAX + 1 stands for "longer than any signature" */
} compact;

static int refuse(sb_jwt_reason *reason, sb_jwt_reason why)
{
    *reason = why;
    return SB_EAUTH;
}

/*
 * Splits and decodes a compact JWS and judges its header. scratch receives the decoded
 * header and may be reused afterwards. On 0, c->header is set and owned by the caller.
 */
static int parse_compact(const char *token, size_t len, unsigned char *scratch, compact *c,
                         sb_jwt_reason *reason)
{
    const char *dot1, *dot2;
    size_t n;
    json_error_t err;
    int rc;

    memset(c, 0, sizeof *c);
    if (len > SB_JOSE_MAX_COMPACT)
        return refuse(reason, SB_JWT_TOO_LARGE);
    if (len == 0)
        return refuse(reason, SB_JWT_MALFORMED);
    if (!(dot1 = memchr(token, '.', len)) ||
        !(dot2 = memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - token))) ||
        memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - token)))
        return refuse(reason, SB_JWT_MALFORMED);
    c->signed_len = (size_t)(dot2 - token);
    c->payload = dot1 + 1;
    c->payload_len = (size_t)(dot2 - c->payload);
    const char *sig = dot2 + 1;
    size_t sig_chars = len - (size_t)(sig - token);

    if (sb_jose_b64url_decode(c->payload, c->payload_len, NULL, 0, &n) == SB_EINVAL)
        return refuse(reason, SB_JWT_MALFORMED);
    rc = sb_jose_b64url_decode(sig, sig_chars, c->sig, SIG_MAX, &c->sig_len);
    if (rc == SB_EINVAL)
        return refuse(reason, SB_JWT_MALFORMED);
    if (rc == SB_EMSGSIZE)
        c->sig_len = SIG_MAX + 1;
    if (sb_jose_b64url_decode(token, (size_t)(dot1 - token), scratch, SEG_MAX, &n))
        return refuse(reason, SB_JWT_MALFORMED);

    if (!(c->header = json_loadb((const char *)scratch, n, JSON_FLAGS, &err))) {
        rc = json_fail(&err);
        return rc == SB_ENOMEM ? rc : refuse(reason, SB_JWT_MALFORMED);
    }
    const json_t *alg = json_object_get(c->header, "alg");
    const json_t *kid = json_object_get(c->header, "kid");
    const json_t *typ = json_object_get(c->header, "typ");
    if (!json_is_object(c->header) || !json_is_string(alg) || (typ && !json_is_string(typ)))
        return refuse(reason, SB_JWT_MALFORMED);
    c->alg = json_string_value(alg);
    if (strcasecmp(c->alg, "none") == 0)
        return refuse(reason, SB_JWT_ALG_NONE);
    if (json_object_get(c->header, "crit"))
        return refuse(reason, SB_JWT_CRIT);
    if (kid && (!json_is_string(kid) || json_string_length(kid) == 0))
        return refuse(reason, SB_JWT_UNKNOWN_KID);
    c->kid = kid ? json_string_value(kid) : NULL;
    return 0;
}

/* Checks alg against the key and then the signature. */
static int check_signature(const sb_jose_key *key, const char *token, const compact *c,
                           sb_jwt_reason *reason)
{
    if (strcmp(c->alg, sb_jose_alg_name(key->alg)) != 0)
        return refuse(reason, SB_JWT_ALG_MISMATCH);
    int ok = verify_input(key, token, c->signed_len, c->sig, c->sig_len);
    if (ok < 0)
        return ok;
    return ok ? 0 : refuse(reason, SB_JWT_BAD_SIGNATURE);
}

int sb_jws_verify(const sb_jose_key *key, const char *token, size_t len, sb_buf *payload,
                  sb_jwt_reason *reason)
{
    unsigned char scratch[SEG_MAX];
    sb_jwt_reason dummy;
    compact c;
    size_t n;
    int rc;
    if (!reason)
        reason = &dummy;
    *reason = SB_JWT_INTERNAL;
    if (!key || (!token && len) || !payload)
        return SB_EINVAL;
    if ((rc = parse_compact(token, len, scratch, &c, reason)))
        goto done;
    if (c.kid && strcmp(c.kid, key->kid) != 0) {
        rc = refuse(reason, SB_JWT_UNKNOWN_KID);
        goto done;
    }
    if ((rc = check_signature(key, token, &c, reason)))
        goto done;
    /* Cannot fail: checked in parse_compact, and the token bound keeps it under SEG_MAX. */
    if ((rc = sb_jose_b64url_decode(c.payload, c.payload_len, scratch, SEG_MAX, &n)) ||
        (rc = sb_buf_append(payload, scratch, n)))
        goto done;
    *reason = SB_JWT_OK;
done:
    json_decref(c.header);
    return rc;
}

static bool typ_equal(const char *have, const char *want)
{
    static const char prefix[] = "application/";
    size_t p = sizeof prefix - 1;
    if (strncasecmp(have, prefix, p) == 0)
        have += p;
    if (strncasecmp(want, prefix, p) == 0)
        want += p;
    return strcasecmp(have, want) == 0;
}

static bool expect_valid(const sb_jwt_expect *e)
{
    return e && e->aud && e->aud[0] && e->now >= 0 && e->now <= SB_JWT_MAX_NOW && e->leeway >= 0 &&
           e->leeway <= SB_JWT_MAX_LEEWAY && e->max_lifetime >= 0;
}

/* exp - start > max, without overflow. */
static bool too_long(json_int_t exp, json_int_t start, int64_t max)
{
    long long d;
    return __builtin_sub_overflow((long long)exp, (long long)start, &d) || d > max;
}

int sb_jwt_check_claims(const json_t *claims, const sb_jwt_expect *e, sb_jwt_reason *reason)
{
    sb_jwt_reason dummy;
    if (!reason)
        reason = &dummy;
    *reason = SB_JWT_INTERNAL;
    if (!json_is_object(claims) || !expect_valid(e))
        return SB_EINVAL;
    const json_t *exp = json_object_get(claims, "exp");
    const json_t *nbf = json_object_get(claims, "nbf");
    const json_t *iat = json_object_get(claims, "iat");
    const json_t *iss = json_object_get(claims, "iss");
    const json_t *aud = json_object_get(claims, "aud");
    if (!json_is_integer(exp) || (nbf && !json_is_integer(nbf)) || (iat && !json_is_integer(iat)) ||
        (iss && !json_is_string(iss)) || (aud && !json_is_string(aud) && !json_is_array(aud)))
        return refuse(reason, SB_JWT_BAD_CLAIM);
    /* now and leeway are bounded (expect_valid), so now +/- leeway cannot overflow. */
    json_int_t t_exp = json_integer_value(exp);
    if (e->now - e->leeway >= t_exp)
        return refuse(reason, SB_JWT_EXPIRED);
    if (nbf && json_integer_value(nbf) > e->now + e->leeway)
        return refuse(reason, SB_JWT_NOT_YET_VALID);
    if (iat && json_integer_value(iat) > e->now + e->leeway)
        return refuse(reason, SB_JWT_ISSUED_IN_FUTURE);
    if (e->max_lifetime > 0) {
        bool bad = (iat && too_long(t_exp, json_integer_value(iat), e->max_lifetime)) ||
                   (nbf && too_long(t_exp, json_integer_value(nbf), e->max_lifetime)) ||
                   (!iat && !nbf && too_long(t_exp, e->now, e->max_lifetime));
        if (bad)
            return refuse(reason, SB_JWT_LIFETIME);
    }
    if (e->iss && !(iss && json_str_eq(iss, e->iss)))
        return refuse(reason, SB_JWT_WRONG_ISSUER);
    bool aud_ok = false;
    if (json_is_string(aud)) {
        aud_ok = json_str_eq(aud, e->aud);
    } else if (aud) {
        size_t i;
        const json_t *v;
        json_array_foreach(aud, i, v)
        {
            if (!json_is_string(v))
                return refuse(reason, SB_JWT_BAD_CLAIM);
            aud_ok = aud_ok || json_str_eq(v, e->aud);
        }
    }
    if (!aud_ok)
        return refuse(reason, SB_JWT_WRONG_AUDIENCE);
    *reason = SB_JWT_OK;
    return 0;
}

int sb_jwt_verify(const char *token, size_t len, sb_jose_key_lookup_fn lookup, void *ud,
                  const sb_jwt_expect *expect, json_t **claims_out, sb_jwt_reason *reason)
{
    unsigned char scratch[SEG_MAX];
    sb_jwt_reason dummy;
    const sb_jose_key *key;
    json_t *claims = NULL;
    json_error_t err;
    compact c;
    size_t n;
    int rc;
    if (!reason)
        reason = &dummy;
    *reason = SB_JWT_INTERNAL;
    if (claims_out)
        *claims_out = NULL;
    if ((!token && len) || !lookup || !expect_valid(expect))
        return SB_EINVAL;
    if ((rc = parse_compact(token, len, scratch, &c, reason)))
        goto done;
    if (!c.kid || !(key = lookup(ud, c.kid))) {
        rc = refuse(reason, SB_JWT_UNKNOWN_KID);
        goto done;
    }
    if ((rc = check_signature(key, token, &c, reason)))
        goto done;
    const json_t *typ = json_object_get(c.header, "typ");
    if (expect->typ ? !(typ && typ_equal(json_string_value(typ), expect->typ))
                    : (typ && !typ_equal(json_string_value(typ), "JWT"))) {
        rc = refuse(reason, SB_JWT_WRONG_TYPE);
        goto done;
    }
    if ((rc = sb_jose_b64url_decode(c.payload, c.payload_len, scratch, SEG_MAX, &n)))
        goto done;
    if (!(claims = json_loadb((const char *)scratch, n, JSON_FLAGS, &err))) {
        rc = json_fail(&err);
        if (rc != SB_ENOMEM)
            rc = refuse(reason, SB_JWT_MALFORMED);
        goto done;
    }
    if (!json_is_object(claims)) {
        rc = refuse(reason, SB_JWT_MALFORMED);
        goto done;
    }
    if ((rc = sb_jwt_check_claims(claims, expect, reason)))
        goto done;
    if (claims_out) {
        *claims_out = claims;
        claims = NULL;
    }
done:
    json_decref(claims);
    json_decref(c.header);
    return rc;
}

int sb_jwt_token_hash(const char *token, size_t len, unsigned char out[32])
{
    if ((!token && len) || !out)
        return SB_EINVAL;
    int rc = sb_sha256(token, len, out);
    return rc == SB_ETLS ? ossl_fail(SB_ETLS) : rc;
}
