/*
 * Per-credential rate limiting with GCRA (the generic cell rate algorithm), and the
 * RateLimit header fields that describe it to clients.
 *
 * The algorithm. A policy allows `rate_per_second` requests per second on average and up to
 * `burst` at once. It is turned into two integers in nanoseconds:
 *
 *   T  emission interval  = 1e9 / rate, rounded down (a rate that is within 1e-3 ns of an
 *                           integer interval is snapped to it, so decimal rates such as 0.1
 *                           give 1e10 exactly)
 *   τ  tolerance          = T × (burst − 1)
 *
 * Each key has one stored value, its theoretical arrival time TAT (ns, same clock as
 * now_ns). A request at time t is allowed iff t ≥ max(TAT, t) − τ, and then
 * TAT := max(TAT, t) + T. A key that is not in the table behaves as TAT ≤ t ("full").
 * Everything is integer arithmetic, so a client that sends exactly at the configured rate
 * is never refused, however long it runs: rounding T down makes the limiter at most
 * 1 ns per interval more generous than configured and never stricter (round-to-nearest
 * could be up to 0.5 ns stricter, which with burst 1 refuses a perfectly paced client).
 *
 * The table. A fixed number of keys, chosen at creation; nothing is allocated after
 * sb_ratelimit_new. Keys are byte strings of 1..SB_RL_KEY_MAX bytes (a credential id, or
 * "ip:<address>" for anonymous callers). When the table is full and a new key arrives, the
 * entry with the smallest TAT is evicted. If that TAT is ≤ now the entry was already full
 * and equivalent to an absent key, so nothing is lost; only when every key in the table is
 * currently below full does eviction hand the least-drained key a fresh burst, and that key
 * is the one closest to full anyway. A key that is currently limited is therefore never
 * evicted while any fully refilled entry exists. Size the table above the number of keys
 * active within one refill period. Memory is about 100 bytes per key (6.3 MiB for 65,536).
 *
 * Threads. No locks and no I/O: an sb_ratelimit belongs to one event loop, and only that
 * loop's thread may call it. Each loop owns its own instance, so a credential whose
 * requests land on N loops is limited per loop (up to N × the policy in total) unless the
 * caller routes a key's checks to one loop or divides the policy by N.
 *
 * Errors are SB_E* codes (switchboard/error.h).
 */
#ifndef SB_GUARD_RATELIMIT_H
#define SB_GUARD_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Longest key, in bytes. */
#define SB_RL_KEY_MAX 64

/* Largest table; a capacity above this is refused (SB_ERANGE). */
#define SB_RL_CAPACITY_MAX (1u << 24)

/* Room that either header value from sb_ratelimit_format_headers needs, NUL included. */
#define SB_RL_HEADER_MAX 64

typedef struct sb_rl_policy {
    double rate_per_second; /* > 0, finite; at most 1e9 (T ≥ 1 ns) */
    uint32_t burst;         /* ≥ 1; T × burst must stay below 2^62 ns (about 146 years) */
} sb_rl_policy;

typedef struct sb_rl_result {
    bool allowed;
    uint32_t limit;         /* the policy's burst */
    uint32_t remaining;     /* further requests that would be allowed right now (after this one) */
    uint64_t reset_seconds; /* until the key is back to a full burst, rounded up */
    uint64_t retry_after_seconds; /* denied: until a request would be allowed, rounded up,
                                     ≥ 1; allowed: 0 */
    uint64_t reset_ns;            /* the same two, exact */
    uint64_t retry_after_ns;
} sb_rl_result;

typedef struct sb_ratelimit sb_ratelimit;

/* A table for up to `capacity` keys (1..SB_RL_CAPACITY_MAX), all memory allocated here.
 * `seed` keys the hash of key strings; pass random bytes (sb_random) so that nobody can
 * plan collisions, or a constant in tests. Returns 0, SB_ERANGE or SB_ENOMEM. The caller
 * owns *out and frees it with sb_ratelimit_free. */
int sb_ratelimit_new(size_t capacity, uint64_t seed, sb_ratelimit **out);

/* Frees the table. NULL is fine. */
void sb_ratelimit_free(sb_ratelimit *rl);

/* Keys currently held (≤ capacity). */
size_t sb_ratelimit_size(const sb_ratelimit *rl);

/* Checks (and, if allowed, counts) one request for `key` at `now_ns` (a monotonic clock,
 * e.g. sb_now_ns) under policy `p`, and fills *out. The key is copied; it need not be
 * NUL-terminated. The policy is not remembered, so a key's policy may change between calls
 * and the stored TAT carries over. Returns 0 with the verdict in out->allowed, or SB_EINVAL
 * (bad policy, empty or over-long key) with *out and the table unchanged. Never allocates. */
int sb_ratelimit_check(sb_ratelimit *rl, const char *key, size_t keylen, const sb_rl_policy *p,
                       uint64_t now_ns, sb_rl_result *out);

/* The window, in whole seconds (≥ 1), that RateLimit-Policy advertises for `p`: the time a
 * drained key takes to refill its full burst, T × burst, rounded up. Over that window the
 * policy admits `burst` requests on average; when T × burst is not a whole number of
 * seconds the advertisement is rounded in the client's disfavour. 0 for a bad policy. */
uint64_t sb_ratelimit_window_seconds(const sb_rl_policy *p);

/*
 * The same limiter as one table shared by any number of threads, without locks: each key
 * has a slot of two 64-bit atomics (the key's 64-bit keyed SipHash as its tag, and its TAT),
 * and a check is one compare-and-swap on the TAT (retried only when another thread moved it
 * in between), so concurrent requests of one key are counted exactly once each. Keys are
 * identified by the 64-bit tag alone: two keys whose tags collide would share a budget (with
 * a random seed that chance is about n²/2⁶⁵ for n live keys). A key lives in one of
 * 16 slots from its home; when all are taken, the one with the smallest TAT
 * is taken over, as sb_ratelimit evicts (a full bucket loses nothing). A request that races
 * with such a takeover may be counted against the newcomer: at most one request's worth.
 * Same verdicts, results and errors as sb_ratelimit_check, plus SB_EAGAIN in the unlikely
 * case that every slot of the window changed hands while it looked (the caller allows the
 * request). Never allocates after creation.
 */
typedef struct sb_ratelimit_shared sb_ratelimit_shared;
int sb_ratelimit_shared_new(size_t capacity, uint64_t seed, sb_ratelimit_shared **out);
void sb_ratelimit_shared_free(sb_ratelimit_shared *rl);
int sb_ratelimit_shared_check(sb_ratelimit_shared *rl, const char *key, size_t keylen,
                              const sb_rl_policy *p, uint64_t now_ns, sb_rl_result *out);

/* For tests: the stored TAT of `key`. Returns 0, or SB_ENOENT if the key is not held. */
int sb__ratelimit_tat(const sb_ratelimit *rl, const char *key, size_t keylen, uint64_t *tat_ns);

/*
 * Formats the two response header field values for a check result, following
 * draft-ietf-httpapi-ratelimit-headers-08 (October 2024; the syntax is unchanged through
 * -10): both fields are Structured Field Lists of one item, the policy name as an sf-string
 * ("default"), with Integer parameters:
 *
 *   RateLimit-Policy: "default";q=<burst>;w=<window seconds>
 *   RateLimit:        "default";r=<remaining>;t=<reset seconds>
 *
 * (Draft -07 used a token name and `l=` instead of `q=`; drafts up to -06 used separate
 * RateLimit-Limit/-Remaining/-Reset fields.) Only the values are written, not the names.
 * This is the one place that knows the syntax. A denied request also needs
 * `Retry-After: <retry_after_seconds>` (RFC 9110), which the caller adds.
 *
 * Both buffers get NUL-terminated strings; SB_RL_HEADER_MAX bytes each always suffice.
 * Returns 0, SB_EINVAL (bad policy) or SB_EMSGSIZE (a buffer too small; contents then
 * unspecified).
 */
int sb_ratelimit_format_headers(const sb_rl_result *r, const sb_rl_policy *p, char *policy,
                                size_t policy_cap, char *ratelimit, size_t ratelimit_cap);

#endif
