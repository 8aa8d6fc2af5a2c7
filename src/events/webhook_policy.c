#include "events/webhook_policy.h"

#include "core/alloc.h"
#include "core/str.h"

#include <curl/curl.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "core/ids.h"
#include "switchboard/error.h"

/* ---- durations and the schedule ------------------------------------------------------- */

int sb_webhook_duration_parse(const char *s, size_t n, int64_t *ms)
{
    size_t i = 0;
    int64_t v = 0;
    if (n == 0 || s[0] < '0' || s[0] > '9')
        return SB_EINVAL;
    for (; i < n && s[i] >= '0' && s[i] <= '9'; i++) {
        if (v > SB_WEBHOOK_DELAY_MAX)
            return SB_EINVAL;
        v = v * 10 + (s[i] - '0');
    }
    size_t ul = n - i;
    const char *u = s + i;
    int64_t mult;
    if (ul == 0 || (ul == 2 && memcmp(u, "ms", 2) == 0))
        mult = 1;
    else if (ul == 1 && u[0] == 's')
        mult = 1000;
    else if (ul == 1 && u[0] == 'm')
        mult = 60000;
    else if (ul == 1 && u[0] == 'h')
        mult = 3600000;
    else if (ul == 1 && u[0] == 'd')
        mult = 86400000;
    else
        return SB_EINVAL;
    if (v > SB_WEBHOOK_DELAY_MAX / mult)
        return SB_EINVAL;
    *ms = v * mult;
    return 0;
}

int sb_webhook_schedule_parse(const char *s, int64_t *out, int max, char *why, size_t whylen)
{
    int n = 0;
    const char *p = s ? s : "";
    for (;;) {
        const char *comma = strchr(p, ',');
        const char *end = comma ? comma : p + strlen(p);
        const char *a = p, *b = end;
        while (a < b && (*a == ' ' || *a == '\t'))
            a++;
        while (b > a && (b[-1] == ' ' || b[-1] == '\t'))
            b--;
        if (n == max) {
            snprintf(why, whylen, "more than %d entries", max);
            return SB_EINVAL;
        }
        if (sb_webhook_duration_parse(a, (size_t)(b - a), &out[n]) != 0) {
            snprintf(why, whylen,
                     "entry %d is not a duration (an integer with ms, s, m, h or d, at most 7d)",
                     n + 1);
            return SB_EINVAL;
        }
        n++;
        if (!comma)
            return n;
        p = comma + 1;
    }
}

int sb_webhook_retry_after_parse(const char *v, size_t n, int64_t now_ms, int64_t *delay_ms)
{
    char buf[129];
    while (n && (*v == ' ' || *v == '\t')) {
        v++;
        n--;
    }
    while (n && (v[n - 1] == ' ' || v[n - 1] == '\t' || v[n - 1] == '\r' || v[n - 1] == '\n'))
        n--;
    if (n == 0 || n >= sizeof buf)
        return SB_EINVAL;
    if (v[0] >= '0' && v[0] <= '9') {
        int64_t secs = 0;
        for (size_t i = 0; i < n; i++) {
            if (v[i] < '0' || v[i] > '9')
                return SB_EINVAL;
            if (secs <= SB_WEBHOOK_DELAY_MAX / 1000)
                secs = secs * 10 + (v[i] - '0');
        }
        *delay_ms = secs > SB_WEBHOOK_DELAY_MAX / 1000 ? SB_WEBHOOK_DELAY_MAX : secs * 1000;
        return 0;
    }
    /* An HTTP-date starts with a day name; curl_getdate is lenient beyond that, so insist. */
    if (!((v[0] >= 'A' && v[0] <= 'Z') || (v[0] >= 'a' && v[0] <= 'z')))
        return SB_EINVAL;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)v[i] < 0x20 || (unsigned char)v[i] > 0x7e)
            return SB_EINVAL;
    memcpy(buf, v, n);
    buf[n] = '\0';
    time_t t = curl_getdate(buf, NULL);
    if (t == (time_t)-1)
        return SB_EINVAL;
    int64_t secs = (int64_t)t, now_s = now_ms / 1000;
    if (secs > now_s + SB_WEBHOOK_DELAY_MAX / 1000) { /* far future: no overflow below */
        *delay_ms = SB_WEBHOOK_DELAY_MAX;
        return 0;
    }
    if (secs < now_s) {
        *delay_ms = 0;
        return 0;
    }
    int64_t at = secs * 1000, d = at - now_ms;
    *delay_ms = d < 0 ? 0 : d > SB_WEBHOOK_DELAY_MAX ? SB_WEBHOOK_DELAY_MAX : d;
    return 0;
}

int64_t sb_webhook_next_delay(const int64_t *schedule, int n, int attempts, int64_t retry_after_ms,
                              uint32_t rnd)
{
    if (attempts < 1 || attempts >= n)
        return -1;
    int64_t base = schedule[attempts];
    /* factor = 0.8 + 0.4 * rnd / 2^32, in integer arithmetic */
    int64_t d = base - base / 5 + (int64_t)(((uint64_t)base * 2 / 5 * rnd) >> 32);
    if (retry_after_ms > d)
        d = retry_after_ms;
    return d > SB_WEBHOOK_DELAY_MAX ? SB_WEBHOOK_DELAY_MAX : d;
}

/* ---- SSRF classifier ------------------------------------------------------------------ */

static const char *v4_refused(uint32_t a)
{
#define IN4(net, bits) ((bits) == 0 || (a >> (32 - (bits))) == ((uint32_t)(net) >> (32 - (bits))))
    if (a == 0xa9fea9feu) /* 169.254.169.254 */
        return "metadata";
    if (a == 0xffffffffu)
        return "broadcast";
    if (IN4(0x00000000u, 8))
        return "unspecified";
    if (IN4(0x7f000000u, 8))
        return "loopback";
    if (IN4(0x0a000000u, 8) || IN4(0xac100000u, 12) || IN4(0xc0a80000u, 16))
        return "private";
    if (IN4(0xa9fe0000u, 16))
        return "link-local";
    if (IN4(0x64400000u, 10))
        return "shared (CGNAT)";
    if (IN4(0xe0000000u, 4))
        return "multicast";
    if (IN4(0xf0000000u, 4) || IN4(0xc0000000u, 24) || IN4(0xc0000200u, 24) ||
        IN4(0xc6120000u, 15) || IN4(0xc6336400u, 24) || IN4(0xcb007100u, 24))
        return "reserved";
    return NULL;
#undef IN4
}

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static const char *v6_refused(const unsigned char *b)
{
    static const unsigned char zero[16];
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    static const unsigned char nat64[12] = {0, 0x64, 0xff, 0x9b};
    static const unsigned char metadata[16] = {0xfd, 0, 0x0e, 0xc2, [15] = 0x54, [14] = 0x02};
    if (memcmp(b, zero, 16) == 0)
        return "unspecified";
    if (memcmp(b, zero, 15) == 0 && b[15] == 1)
        return "loopback";
    if (memcmp(b, mapped, 12) == 0 || memcmp(b, nat64, 12) == 0 || memcmp(b, zero, 12) == 0) {
        const char *why = v4_refused(be32(b + 12));
        return why ? why : memcmp(b, zero, 12) == 0 ? "reserved" : NULL;
    }
    if (memcmp(b, metadata, 16) == 0)
        return "metadata";
    if (b[0] == 0x20 && b[1] == 0x02) /* 6to4 carries an IPv4 address */
        return v4_refused(be32(b + 2));
    if ((b[0] & 0xfe) == 0xfc)
        return "private";
    if (b[0] == 0xfe && (b[1] & 0xc0) == 0x80)
        return "link-local";
    if (b[0] == 0xfe && (b[1] & 0xc0) == 0xc0)
        return "private"; /* site-local, deprecated */
    if (b[0] == 0xff)
        return "multicast";
    if (b[0] == 0x20 && b[1] == 0x01 && b[2] == 0x0d && b[3] == 0xb8)
        return "reserved"; /* documentation */
    if (b[0] == 0x01 && memcmp(b + 1, zero, 7) == 0)
        return "reserved"; /* discard-only 100::/64 */
    return NULL;
}

const char *sb_webhook_addr_refused(const struct sockaddr *sa)
{
    if (!sa)
        return "unsupported address family";
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        return v4_refused(ntohl(in->sin_addr.s_addr));
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        return v6_refused(in6->sin6_addr.s6_addr);
    }
    return "unsupported address family";
}

/* ---- secrets and signatures ----------------------------------------------------------- */

int sb_webhook_secret_new(char *out)
{
    unsigned char r[32];
    int rc = sb_random(r, sizeof r);
    if (rc)
        return rc;
    memcpy(out, "whsec_", 6);
    EVP_EncodeBlock((unsigned char *)out + 6, r, (int)sizeof r);
    OPENSSL_cleanse(r, sizeof r);
    return 0;
}

int sb_webhook_secret_decode(const char *secret, unsigned char key[SB_WEBHOOK_KEY_MAX])
{
    if (strncmp(secret, "whsec_", 6) == 0)
        secret += 6;
    size_t n = strlen(secret);
    unsigned char tmp[SB_WEBHOOK_KEY_MAX + 3];
    if (n == 0 || n % 4 != 0 || n / 4 * 3 > sizeof tmp)
        return SB_EINVAL;
    int len = EVP_DecodeBlock(tmp, (const unsigned char *)secret, (int)n);
    if (len < 0)
        return SB_EINVAL;
    /* EVP_DecodeBlock counts padding as zero bytes. */
    if (secret[n - 1] == '=')
        len--;
    if (secret[n - 2] == '=')
        len--;
    if (len < 1 || len > SB_WEBHOOK_KEY_MAX)
        return SB_EINVAL;
    memcpy(key, tmp, (size_t)len);
    OPENSSL_cleanse(tmp, sizeof tmp);
    return len;
}

/* Fetched once: a provider lookup per signature would cost more than the HMAC. */
/* One HMAC-SHA256 context per thread, its digest set once: each signature only re-keys it
 * (fetching the digest and allocating a context per signature was ~40% of signing). */
static pthread_once_t hmac_once = PTHREAD_ONCE_INIT;
static EVP_MAC *hmac;
static pthread_key_t hmac_key;
static bool hmac_key_ok;
static void hmac_ctx_free(void *c)
{
    EVP_MAC_CTX_free(c);
}
static void hmac_fetch(void)
{
    hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    hmac_key_ok = pthread_key_create(&hmac_key, hmac_ctx_free) == 0;
}

/* A new HMAC-SHA256 context, not keyed yet. */
static EVP_MAC_CTX *hmac_new(void)
{
    pthread_once(&hmac_once, hmac_fetch);
    if (!hmac)
        return NULL;
    EVP_MAC_CTX *c = EVP_MAC_CTX_new(hmac);
    char digest[] = "SHA256";
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string("digest", digest, 0),
                           OSSL_PARAM_construct_end()};
    if (c && !EVP_MAC_CTX_set_params(c, params)) {
        EVP_MAC_CTX_free(c);
        return NULL;
    }
    return c;
}

static EVP_MAC_CTX *hmac_ctx(void)
{
    pthread_once(&hmac_once, hmac_fetch);
    if (!hmac || !hmac_key_ok)
        return NULL;
    EVP_MAC_CTX *c = pthread_getspecific(hmac_key);
    if (c)
        return c;
    c = hmac_new();
    if (c && pthread_setspecific(hmac_key, c) != 0) {
        EVP_MAC_CTX_free(c);
        return NULL;
    }
    return c;
}

/* timestamp in decimal with its sign, NUL-terminated (out: SB_U64_DEC_MAX + 1 bytes); its length */
static size_t time_dec(int64_t timestamp, char *out)
{
    if (timestamp >= 0)
        return sb_u64_dec((uint64_t)timestamp, out);
    out[0] = '-';
    return 1 + sb_u64_dec(0 - (uint64_t)timestamp, out + 1);
}

/* "v1,<base64 HMAC>" of "id.timestamp.body" with c, re-keyed with key, or with the key it
 * holds when key is NULL (OpenSSL's HMAC then restarts from its precomputed pads). */
static int mac_sign(EVP_MAC_CTX *c, const unsigned char *key, size_t keylen, const char *id,
                    int64_t timestamp, const void *body, size_t len, char *out)
{
    char ts[SB_U64_DEC_MAX + 1];
    size_t tl = time_dec(timestamp, ts);
    unsigned char mac[32];
    size_t maclen = sizeof mac;
    int ok = c && EVP_MAC_init(c, key, keylen, NULL) &&
             EVP_MAC_update(c, (const unsigned char *)id, strlen(id)) &&
             EVP_MAC_update(c, (const unsigned char *)".", 1) &&
             EVP_MAC_update(c, (const unsigned char *)ts, tl) &&
             EVP_MAC_update(c, (const unsigned char *)".", 1) && EVP_MAC_update(c, body, len) &&
             EVP_MAC_final(c, mac, &maclen, sizeof mac);
    if (!ok)
        return SB_EIO;
    memcpy(out, "v1,", 3);
    EVP_EncodeBlock((unsigned char *)out + 3, mac, (int)maclen);
    OPENSSL_cleanse(mac, sizeof mac);
    return 0;
}

int sb_webhook_sign(const unsigned char *key, size_t keylen, const char *id, int64_t timestamp,
                    const void *body, size_t len, char *out)
{
    return mac_sign(hmac_ctx(), key, keylen, id, timestamp, body, len, out);
}

struct sb_webhook_signer {
    EVP_MAC_CTX *c; /* v1: HMAC-SHA256, keyed once */
    EVP_PKEY *ed;   /* v1a: the Ed25519 private key */
    EVP_MD_CTX *md; /* v1a: re-initialised per signature (Ed25519 signs in one shot) */
};

int sb_webhook_signer_new(const unsigned char *key, size_t keylen, sb_webhook_signer **out)
{
    *out = NULL;
    if (keylen < 1 || keylen > SB_WEBHOOK_KEY_MAX)
        return SB_EINVAL;
    sb_webhook_signer *s = sb_calloc(1, sizeof *s);
    if (!s)
        return SB_ENOMEM;
    s->c = hmac_new();
    if (!s->c || !EVP_MAC_init(s->c, key, keylen, NULL)) {
        EVP_MAC_CTX_free(s->c);
        sb_free(s);
        return SB_EIO;
    }
    *out = s;
    return 0;
}

void sb_webhook_signer_free(sb_webhook_signer *s)
{
    if (!s)
        return;
    EVP_MAC_CTX_free(s->c); /* these clear the key material they hold */
    EVP_MD_CTX_free(s->md);
    EVP_PKEY_free(s->ed);
    sb_free(s);
}

#define ED25519_KEY 32
#define ED25519_SIG 64

/* "v1a," + base64 of the Ed25519 signature of "id.timestamp.body". */
static int ed_sign(sb_webhook_signer *s, const char *id, int64_t timestamp, const void *body,
                   size_t len, char *out)
{
    char ts[SB_U64_DEC_MAX + 1];
    size_t tl = time_dec(timestamp, ts);
    size_t il = strlen(id), n = il + 1 + tl + 1 + len;
    char stack[2048];
    char *msg = n <= sizeof stack ? stack : sb_malloc(n);
    if (!msg)
        return SB_ENOMEM;
    memcpy(msg, id, il);
    msg[il] = '.';
    memcpy(msg + il + 1, ts, tl);
    msg[il + 1 + tl] = '.';
    if (len)
        memcpy(msg + il + 2 + tl, body, len);
    unsigned char sig[ED25519_SIG];
    size_t siglen = sizeof sig;
    int ok = EVP_DigestSignInit(s->md, NULL, NULL, NULL, s->ed) == 1 &&
             EVP_DigestSign(s->md, sig, &siglen, (const unsigned char *)msg, n) == 1 &&
             siglen == ED25519_SIG;
    if (msg != stack)
        sb_free(msg);
    if (!ok)
        return SB_EIO;
    memcpy(out, "v1a,", 4);
    EVP_EncodeBlock((unsigned char *)out + 4, sig, (int)siglen);
    return 0;
}

int sb_webhook_signer_sign(sb_webhook_signer *s, const char *id, int64_t timestamp,
                           const void *body, size_t len, char *out)
{
    if (s->ed)
        return ed_sign(s, id, timestamp, body, len, out);
    return mac_sign(s->c, NULL, 0, id, timestamp, body, len, out);
}

/* The 32 bytes of a "whsk_" secret (base64, exactly 32 bytes), or SB_EINVAL. */
static int ed_seed(const char *secret, unsigned char seed[ED25519_KEY])
{
    if (strncmp(secret, "whsk_", 5) != 0 || strlen(secret + 5) != 44)
        return SB_EINVAL;
    unsigned char tmp[33];
    int n = EVP_DecodeBlock(tmp, (const unsigned char *)secret + 5, 44);
    /* 44 characters decode to 33 bytes, the last one of the '=' pad */
    int rc = n == 33 && secret[48] == '=' && secret[47] != '=' ? 0 : SB_EINVAL;
    if (!rc)
        memcpy(seed, tmp, ED25519_KEY);
    OPENSSL_cleanse(tmp, sizeof tmp);
    return rc;
}

static EVP_PKEY *ed_key(const unsigned char seed[ED25519_KEY])
{
    return EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, seed, ED25519_KEY);
}

static int ed_public(EVP_PKEY *k, char *public_key)
{
    unsigned char pub[ED25519_KEY];
    size_t pl = sizeof pub;
    if (EVP_PKEY_get_raw_public_key(k, pub, &pl) != 1 || pl != ED25519_KEY)
        return SB_EIO;
    memcpy(public_key, "whpk_", 5);
    EVP_EncodeBlock((unsigned char *)public_key + 5, pub, (int)pl);
    return 0;
}

int sb_webhook_keypair_new(char *secret, char *public_key)
{
    unsigned char seed[ED25519_KEY];
    int rc = sb_random(seed, sizeof seed);
    EVP_PKEY *k = rc ? NULL : ed_key(seed);
    rc = rc ? rc : !k ? SB_EIO : ed_public(k, public_key);
    if (!rc) {
        memcpy(secret, "whsk_", 5);
        EVP_EncodeBlock((unsigned char *)secret + 5, seed, (int)sizeof seed);
    }
    EVP_PKEY_free(k);
    OPENSSL_cleanse(seed, sizeof seed);
    return rc;
}

int sb_webhook_public_key(const char *secret, char *public_key)
{
    unsigned char seed[ED25519_KEY];
    int rc = ed_seed(secret, seed);
    EVP_PKEY *k = rc ? NULL : ed_key(seed);
    OPENSSL_cleanse(seed, sizeof seed);
    rc = rc ? rc : !k ? SB_EIO : ed_public(k, public_key);
    EVP_PKEY_free(k);
    return rc;
}

int sb_webhook_signer_from_secret(const char *secret, sb_webhook_signer **out)
{
    *out = NULL;
    if (strncmp(secret, "whsk_", 5) != 0) {
        unsigned char key[SB_WEBHOOK_KEY_MAX];
        int n = sb_webhook_secret_decode(secret, key); /* "whsec_" optional, as ever */
        int rc = n < 0 ? n : sb_webhook_signer_new(key, (size_t)n, out);
        OPENSSL_cleanse(key, sizeof key);
        return rc;
    }
    unsigned char seed[ED25519_KEY];
    int rc = ed_seed(secret, seed);
    if (rc)
        return rc;
    sb_webhook_signer *s = sb_calloc(1, sizeof *s);
    if (!s) {
        OPENSSL_cleanse(seed, sizeof seed);
        return SB_ENOMEM;
    }
    s->ed = ed_key(seed);
    OPENSSL_cleanse(seed, sizeof seed);
    s->md = EVP_MD_CTX_new();
    if (!s->ed || !s->md) {
        sb_webhook_signer_free(s);
        return SB_EIO;
    }
    *out = s;
    return 0;
}

/* ---- endpoint URLs -------------------------------------------------------------------- */

bool sb_webhook_url_ok(const char *url, bool allow_http, char *why, size_t whylen)
{
    bool ok = false;
    char *scheme = NULL, *host = NULL, *user = NULL, *pass = NULL, *frag = NULL;
    size_t n = strlen(url);
    if (n == 0 || n > 2048) {
        snprintf(why, whylen, "url must be 1 to 2048 bytes");
        return false;
    }
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)url[i] <= 0x20 || (unsigned char)url[i] >= 0x7f) {
            snprintf(why, whylen, "url must not contain spaces, control or non-ASCII characters");
            return false;
        }
    /* Written out in full: curl would also take "http:/host" or a bare host name. */
    if (strncasecmp(url, "https://", 8) != 0 && strncasecmp(url, "http://", 7) != 0) {
        snprintf(why, whylen, "url must start with https:// or http://");
        return false;
    }
    CURLU *u = curl_url();
    if (!u) {
        snprintf(why, whylen, "out of memory");
        return false;
    }
    if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK || !host || !*host) {
        snprintf(why, whylen, "url must be an absolute http(s) URL with a host");
        goto out;
    }
    if (strcmp(scheme, "https") != 0 && !(allow_http && strcmp(scheme, "http") == 0)) {
        snprintf(why, whylen,
                 allow_http ? "url must use https or http"
                            : "url must use https (plain http needs webhooks.allow_http)");
        goto out;
    }
    if (curl_url_get(u, CURLUPART_USER, &user, 0) == CURLUE_OK ||
        curl_url_get(u, CURLUPART_PASSWORD, &pass, 0) == CURLUE_OK) {
        snprintf(why, whylen, "url must not carry credentials (user:password@)");
        goto out;
    }
    if (curl_url_get(u, CURLUPART_FRAGMENT, &frag, 0) == CURLUE_OK) {
        snprintf(why, whylen, "url must not have a fragment");
        goto out;
    }
    ok = true;
out:
    curl_free(scheme);
    curl_free(host);
    curl_free(user);
    curl_free(pass);
    curl_free(frag);
    curl_url_cleanup(u);
    return ok;
}
