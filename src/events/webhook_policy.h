/*
 * Webhook delivery policy: the pure parts, kept apart from the dispatcher so that unit tests
 * and fuzz targets reach them without a network or a database.
 *
 *   - the retry schedule (webhooks.retry_schedule) and the delay before the next attempt;
 *   - Retry-After (RFC 9110 section 10.2.3: delay-seconds or an HTTP-date);
 *   - the SSRF address classifier applied to every address a delivery connects to;
 *   - Standard Webhooks v1 secrets ("whsec_" + base64) and signatures
 *     ("v1," + base64(HMAC-SHA256(key, id "." timestamp "." body))).
 */
#ifndef SB_EVENTS_WEBHOOK_POLICY_H
#define SB_EVENTS_WEBHOOK_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct sockaddr;

#define SB_WEBHOOK_SCHEDULE_MAX   32               /* attempts a schedule may list */
#define SB_WEBHOOK_DELAY_MAX      (7 * 86400000LL) /* longest single delay: 7 days */
#define SB_WEBHOOK_SECRET_MAX     80               /* "whsec_" + base64 of up to 48 bytes + NUL */
#define SB_WEBHOOK_KEY_MAX        48               /* decoded secret bytes */
#define SB_WEBHOOK_SIG_MAX        96 /* "v1a," + 88 base64 chars + NUL ("v1," + 44 for HMAC) */
#define SB_WEBHOOK_PUBLIC_KEY_MAX 56 /* "whpk_" + 44 base64 chars + NUL */

/*
 * Parses one duration: an unsigned integer followed by ms, s, m, h or d, or a bare integer
 * (milliseconds; "0" is the usual first entry). At most SB_WEBHOOK_DELAY_MAX. Surrounding
 * blanks are not accepted here. Returns 0 and sets *ms, or SB_EINVAL.
 */
int sb_webhook_duration_parse(const char *s, size_t n, int64_t *ms);

/*
 * Parses a comma-separated schedule ("0,5s,5m,30m,2h"; blanks around entries allowed) into
 * out[0..max). Entry i is the delay before attempt i+1, counted from the previous attempt's
 * end (entry 0 from the event). Returns the number of entries (>= 1), or SB_EINVAL with a
 * sentence in why.
 */
int sb_webhook_schedule_parse(const char *s, int64_t *out, int max, char *why, size_t whylen);

/*
 * Parses a Retry-After value (n bytes, not NUL-terminated, at most 128 are looked at):
 * delay-seconds, or an HTTP-date (IMF-fixdate, RFC 850 or asctime) taken relative to now_ms.
 * A date in the past is a delay of 0. Clamped to SB_WEBHOOK_DELAY_MAX. Returns 0 and sets
 * *delay_ms, or SB_EINVAL.
 */
int sb_webhook_retry_after_parse(const char *v, size_t n, int64_t now_ms, int64_t *delay_ms);

/*
 * The delay before the next attempt after `attempts` attempts have failed (attempts >= 1):
 * schedule[attempts] with jitter (a factor in [0.8, 1.2) from `rnd`), raised to retry_after_ms
 * when the receiver asked for more (< 0: it did not). Returns -1 when the schedule is
 * exhausted: the delivery is dead.
 */
int64_t sb_webhook_next_delay(const int64_t *schedule, int n, int attempts, int64_t retry_after_ms,
                              uint32_t rnd);

/*
 * Why an address must not be connected to, or NULL when it may: "loopback", "private"
 * (RFC 1918, ULA fc00::/7), "link-local", "shared (CGNAT)", "unspecified", "multicast",
 * "broadcast", "reserved", "metadata" (169.254.169.254, fd00:ec2::254). IPv4-mapped,
 * IPv4-compatible and NAT64 (64:ff9b::/96) IPv6 addresses are judged by the IPv4 address
 * they carry. Unknown families are refused ("unsupported address family").
 */
const char *sb_webhook_addr_refused(const struct sockaddr *sa);

/* A new secret: "whsec_" + base64 of 32 random bytes. out has SB_WEBHOOK_SECRET_MAX bytes. */
int sb_webhook_secret_new(char *out);

/* Decodes "whsec_<base64>" (the prefix is optional) into key; returns its length (>= 1) or
 * SB_EINVAL. */
int sb_webhook_secret_decode(const char *secret, unsigned char key[SB_WEBHOOK_KEY_MAX]);

/* Writes "v1,<base64 HMAC-SHA256>" of "id.timestamp.body" under key into out
 * (SB_WEBHOOK_SIG_MAX bytes). Returns 0 or SB_EIO. */
int sb_webhook_sign(const unsigned char *key, size_t keylen, const char *id, int64_t timestamp,
                    const void *body, size_t len, char *out);

/* A new Ed25519 key pair for v1a signatures (Standard Webhooks): secret "whsk_" + base64 of the
 * 32-byte private key (SB_WEBHOOK_SECRET_MAX bytes), public_key "whpk_" + base64 of the 32-byte
 * public key (SB_WEBHOOK_PUBLIC_KEY_MAX bytes). 0, or SB_EIO. */
int sb_webhook_keypair_new(char *secret, char *public_key);

/* The "whpk_" public key of a "whsk_" secret into out (SB_WEBHOOK_PUBLIC_KEY_MAX bytes). 0, or
 * SB_EINVAL when secret is not one. */
int sb_webhook_public_key(const char *secret, char *public_key);

/* sb_webhook_sign with a key set once: the signer keeps HMAC-SHA256's precomputed pads, so a
 * signature skips the key schedule (two SHA-256 blocks and a context reset). One signer per
 * key, used by one thread at a time. new: 0, SB_EINVAL (key length), SB_ENOMEM or SB_EIO. */
typedef struct sb_webhook_signer sb_webhook_signer;
int sb_webhook_signer_new(const unsigned char *key, size_t keylen, sb_webhook_signer **out);
void sb_webhook_signer_free(sb_webhook_signer *s); /* NULL: no-op */
int sb_webhook_signer_sign(sb_webhook_signer *s, const char *id, int64_t timestamp,
                           const void *body, size_t len, char *out);

/* A signer for a stored secret. "whsec_…" (the prefix optional) signs v1 (HMAC-SHA256);
 * "whsk_…" signs v1a: "v1a," and the base64 of the Ed25519 signature (RFC 8032, pure) of
 * "id.timestamp.body". 0, SB_EINVAL (neither), SB_ENOMEM or SB_EIO. */
int sb_webhook_signer_from_secret(const char *secret, sb_webhook_signer **out);

/*
 * Checks an endpoint URL at create/update time: absolute https:// (or http:// when
 * allow_http), a host, no userinfo, no fragment, at most 2048 bytes. Returns true, or false
 * with a sentence in why.
 */
bool sb_webhook_url_ok(const char *url, bool allow_http, char *why, size_t whylen);

#endif
