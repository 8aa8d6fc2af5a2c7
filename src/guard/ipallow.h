/*
 * IP allowlists: CIDR prefixes for IPv4 and IPv6, and the client address behind trusted
 * proxies (X-Forwarded-For).
 *
 * Entries. An entry is an address ("192.168.1.7", "::1": a single host) or an address and
 * a prefix length ("10.0.0.0/8", "2001:db8::/32"). Parsing is strict, because an allowlist
 * that quietly means something else than its author wrote is a hole:
 *   - IPv4 is exactly four decimal octets 0..255 without leading zeros ("10.1", "010.0.0.1"
 *     and "1.2.3.4.5" are refused; inet_aton's shorthand and octal are not accepted);
 *   - IPv6 is RFC 4291 text: up to eight groups of 1..4 hex digits, at most one "::", an
 *     optional dotted IPv4 tail; no zone ("fe80::1%eth0"), no brackets;
 *   - the prefix length is decimal without leading zeros, 0..32 for IPv4 and 0..128 for
 *     IPv6;
 *   - bits set past the prefix are refused: "10.0.0.1/8" is usually a typo, for
 *     "10.0.0.0/8" or for "10.0.0.1/32", and silently picking one would widen or narrow
 *     the list behind its author's back; the error message names both;
 *   - no surrounding whitespace, no empty entry, and at most SB_IPALLOW_MAX_ENTRIES.
 *
 * IPv4 inside IPv6. Every address is compared in its 128-bit form, an IPv4 address a.b.c.d
 * being the IPv4-mapped ::ffff:a.b.c.d (RFC 4291 section 2.5.5.2). So an IPv4 entry matches
 * a peer that arrives on a dual-stack socket as ::ffff:a.b.c.d, an entry written as
 * "::ffff:10.0.0.0/104" matches the IPv4 peer 10.1.2.3, "::/0" matches every IPv4 and IPv6
 * address, and "0.0.0.0/0" matches every IPv4 address and no other IPv6 address. No other
 * embedding (IPv4-compatible ::a.b.c.d, NAT64 64:ff9b::/96, 6to4) is treated as IPv4.
 *
 * Ownership and threads. An sb_ipallow is immutable once sb_ipallow_new returns; no
 * function here has I/O, locks or global state. Any number of threads may match against one
 * allowlist at once; the owner frees it with sb_ipallow_free when no reader is left (each
 * event loop may simply own its own copy).
 *
 * Errors are SB_E* codes (switchboard/error.h). Where a function takes `err`, a failure also
 * writes a one-line, NUL-terminated, printable-ASCII message there (truncated to errcap;
 * err may be NULL when errcap is 0), quoting at most the first 64 bytes of the bad entry.
 */
#ifndef SB_GUARD_IPALLOW_H
#define SB_GUARD_IPALLOW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* Most entries in one allowlist. */
#define SB_IPALLOW_MAX_ENTRIES 256

/* Most X-Forwarded-For elements that sb_ipallow_client_addr walks through. */
#define SB_IPALLOW_MAX_HOPS 64

/* Room for any error message, NUL included. */
#define SB_IPALLOW_ERR_MAX 192

/* Room for sb_ipallow_format_entry's output, NUL included. */
#define SB_CIDR_STR_MAX 64

/* One parsed entry. */
typedef struct sb_cidr {
    uint8_t addr[16]; /* 128-bit form (IPv4 as ::ffff:a.b.c.d); bits past `prefix` are 0 */
    uint8_t prefix;   /* over the 128-bit form: an IPv4 /n is stored as /(96 + n) */
    uint8_t family;   /* AF_INET or AF_INET6: how it was written, for messages */
} sb_cidr;

typedef struct sb_ipallow sb_ipallow;

/* Parses one entry s[0..len) (need not be NUL-terminated) into *out. Returns 0 or SB_EINVAL
 * with a message in err. */
int sb_ipallow_parse_entry(const char *s, size_t len, sb_cidr *out, char *err, size_t errcap);

/* Writes `c` in canonical text ("10.0.0.0/8", "2001:db8::/32"; single hosts with their /32
 * or /128) into out; SB_CIDR_STR_MAX bytes always suffice. Returns 0 or SB_EMSGSIZE. */
int sb_ipallow_format_entry(const sb_cidr *c, char *out, size_t cap);

/* Builds an allowlist from n NUL-terminated entries (n ≤ SB_IPALLOW_MAX_ENTRIES; n = 0 gives
 * an empty list, see sb_ipallow_match). Returns 0, SB_EINVAL (a bad entry, named with its
 * position in err), SB_EMSGSIZE (too many) or SB_ENOMEM. On success the caller owns *out;
 * on failure *out is NULL. The strings are not referenced afterwards. */
int sb_ipallow_new(const char *const *entries, size_t n, sb_ipallow **out, char *err,
                   size_t errcap);

/* The same from already-parsed entries (for callers that parse with lengths, e.g. JSON
 * strings). Returns 0, SB_EINVAL (a prefix longer than 128, or bits set past it),
 * SB_EMSGSIZE or SB_ENOMEM. */
int sb_ipallow_new_cidrs(const sb_cidr *cidrs, size_t n, sb_ipallow **out);

/* The same from a comma-separated list ("10.0.0.0/8, ::1"; spaces around entries and empty
 * entries are ignored), as configuration gives it. An empty list gives *out = NULL (no
 * restriction) and 0. Errors as sb_ipallow_new. */
int sb_ipallow_from_list(const char *list, sb_ipallow **out, char *err, size_t errcap);

/* Frees the allowlist. NULL is fine. */
void sb_ipallow_free(sb_ipallow *a);

/* Entries in the allowlist. */
size_t sb_ipallow_count(const sb_ipallow *a);

/* Whether `sa` (an AF_INET sockaddr_in or AF_INET6 sockaddr_in6; the port is ignored) is
 * allowed. An empty allowlist, or a NULL one, means "no restriction" and matches everything,
 * including NULL and non-IP addresses; a non-empty one matches only IPv4 and IPv6 addresses
 * inside one of its prefixes. */
bool sb_ipallow_match(const sb_ipallow *a, const struct sockaddr *sa);

/* Whether `sa` is inside one of the prefixes. Unlike sb_ipallow_match, an empty or NULL
 * list contains nothing: this is the test for "is a trusted proxy". */
bool sb_ipallow_contains(const sb_ipallow *a, const struct sockaddr *sa);

/*
 * The address of the client, given the TCP peer and the request's X-Forwarded-For value
 * (xff[0..len), may be NULL with len 0; several X-Forwarded-For fields must be joined with
 * "," in the order received, as RFC 9110 section 5.3 allows).
 *
 *   - If the peer is not in trusted_proxies (sb_ipallow_contains: NULL or empty trusts
 *     nobody), X-Forwarded-For is never read: *out = peer, return 0. A client cannot talk
 *     its way past an allowlist by sending the header itself.
 *   - Otherwise the list is walked from the right (the hop nearest to us), skipping
 *     addresses in trusted_proxies; the first address not in it is the client: *out is that
 *     address, return 1. If every listed address is a trusted proxy, the leftmost is the
 *     client (return 1). If the header is absent or has no elements, *out = peer, return 0.
 *   - Elements are separated by "," with optional spaces and tabs around them; empty
 *     elements are skipped (RFC 9110 section 5.6.1). Accepted: "1.2.3.4", "1.2.3.4:port",
 *     "2001:db8::1", "[2001:db8::1]" and "[2001:db8::1]:port" (some proxies append the
 *     port). An element that the walk reaches and cannot parse makes the whole header
 *     untrustworthy: *out = peer and SB_EPROTO is returned, so the caller can log it and
 *     must treat the request as coming from the peer. So does a walk past
 *     SB_IPALLOW_MAX_HOPS trusted addresses, which bounds the work a header can cause.
 *     Elements left of the client address were written by the client and are never
 *     examined.
 *
 * *out is a sockaddr_in or sockaddr_in6 (port 0 for an address taken from the header; an
 * IPv4-mapped IPv6 address there is returned as AF_INET). The peer must be an AF_INET
 * sockaddr_in or AF_INET6 sockaddr_in6, copied unchanged when it is the answer; otherwise
 * SB_EINVAL and *out is zeroed.
 */
int sb_ipallow_client_addr(const struct sockaddr *peer, const char *xff, size_t len,
                           const sb_ipallow *trusted_proxies, struct sockaddr_storage *out);

#endif
