#include "switchboard/config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <yaml.h>

#include "config/config_table.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "guard/ipallow.h"
#include "events/webhook_policy.h" /* webhooks.retry_schedule */
#include "switchboard/error.h"

#define KIB     (INT64_C(1) << 10)
#define MIB     (INT64_C(1) << 20)
#define GIB     (INT64_C(1) << 30)
#define SEC     INT64_C(1000)
#define MINUTE  (60 * SEC)
#define HOUR    (60 * MINUTE)
#define STR_(x) #x
#define XSTR(x) STR_(x)

#define CONFIG_FILE_MAX (1 << 20) /* a config file is a few KiB; refuse to parse a huge one */
#define LISTEN_TEXT_MAX 4096      /* a YAML listener sequence joined with commas */

#define F(T, field) SB__CFG_FIELD(sb_config, T, field)

/* The one table. Groups are contiguous: --help and the docs print them in this order. */
static const sb__config_key keys[] = {
    {.name = "dev",
     .type = SB__CFG_BOOL,
     .def = "false",
     .offset = F(bool, dev),
     .help = "Development node: without tls.cert, generate a local CA and certificate in "
             "data_dir."},
    {.name = "data_dir",
     .type = SB__CFG_STRING,
     .def = "./var",
     .offset = F(char *, data_dir),
     .min = 1,
     .max = 4096,
     .arg = "PATH",
     .help = "State directory (database, generated certificates); created if missing."},
    {.name = "workers",
     .type = SB__CFG_INT,
     .def = "0",
     .offset = F(int, workers),
     .min = 0,
     .max = 64,
     .help = "Event loops (threads); 0 means one per CPU core."},
    {.name = "listen",
     .type = SB__CFG_LISTEN,
     .def = "127.0.0.1:8443",
     .offset = F(char *, listen),
     .help = "TLS listeners: comma-separated HOST:PORT or [V6]:PORT (a list in YAML)."},
    {.name = "plain_listen",
     .type = SB__CFG_LISTEN,
     .def = "",
     .offset = F(char *, plain_listen),
     .help = "Cleartext HTTP listeners, same syntax; empty means none."},

    {.name = "tls.cert",
     .type = SB__CFG_STRING,
     .def = "",
     .offset = F(char *, tls_cert),
     .max = 4096,
     .arg = "PATH",
     .help = "PEM certificate chain. Empty with --dev: generated under data_dir/tls."},
    {.name = "tls.key",
     .type = SB__CFG_STRING,
     .def = "",
     .offset = F(char *, tls_key),
     .max = 4096,
     .arg = "PATH",
     .help = "PEM private key of tls.cert."},
    {.name = "tls.session_tickets",
     .type = SB__CFG_BOOL,
     .def = "true",
     .offset = F(bool, tls_session_tickets),
     .flags = SB__CFG_RELOADABLE,
     .help = "Issue TLS session tickets so that clients can resume sessions."},
    {.name = "tls.handshake_timeout",
     .type = SB__CFG_DURATION,
     .def = "10s",
     .offset = F(int64_t, tls_handshake_timeout_ms),
     .min = 100,
     .max = HOUR,
     .flags = SB__CFG_RELOADABLE,
     .help = "Time allowed for the TLS handshake."},
    {.name = "tls.client_ca",
     .type = SB__CFG_STRING,
     .def = "",
     .offset = F(char *, tls_client_ca),
     .max = 4096,
     .arg = "PATH",
     .help = "PEM file of the CAs that client certificates must chain to (mutual TLS)."},
    {.name = "tls.client_auth",
     .type = SB__CFG_STRING,
     .def = "none",
     .offset = F(char *, tls_client_auth),
     .min = 1,
     .max = 16,
     .arg = "MODE",
     .help = "Client certificates: none, optional (asked for, verified if sent) or require."},

    {.name = "http.max_request_line",
     .type = SB__CFG_SIZE,
     .def = "8KiB",
     .offset = F(size_t, http_max_request_line),
     .min = 256,
     .max = MIB,
     .help = "Longest request line (method, target, version); 414 beyond."},
    {.name = "http.max_header_bytes",
     .type = SB__CFG_SIZE,
     .def = "32KiB",
     .offset = F(size_t, http_max_header_bytes),
     .min = KIB,
     .max = MIB,
     .help = "Total size of the request header fields; 431 beyond."},
    {.name = "http.max_headers",
     .type = SB__CFG_COUNT,
     .def = "100",
     .offset = F(size_t, http_max_headers),
     .min = 1,
     .max = 128,
     .help = "Number of request header fields; 431 beyond."},
    {.name = "http.max_body_bytes",
     .type = SB__CFG_SIZE,
     .def = "1MiB",
     .offset = F(size_t, http_max_body_bytes),
     .min = 0,
     .max = GIB,
     .help = "Largest request body; 413 beyond."},
    {.name = "http.header_timeout",
     .type = SB__CFG_DURATION,
     .def = "10s",
     .offset = F(int64_t, http_header_timeout_ms),
     .min = 100,
     .max = HOUR,
     .flags = SB__CFG_RELOADABLE,
     .help = "Time to receive a complete request head."},
    {.name = "http.body_timeout",
     .type = SB__CFG_DURATION,
     .def = "30s",
     .offset = F(int64_t, http_body_timeout_ms),
     .min = 100,
     .max = HOUR,
     .flags = SB__CFG_RELOADABLE,
     .help = "Time to receive a request body."},
    {.name = "http.idle_timeout",
     .type = SB__CFG_DURATION,
     .def = "60s",
     .offset = F(int64_t, http_idle_timeout_ms),
     .min = 100,
     .max = HOUR,
     .flags = SB__CFG_RELOADABLE,
     .help = "Idle time after which a keep-alive connection is closed."},
    {.name = "http.write_timeout",
     .type = SB__CFG_DURATION,
     .def = "30s",
     .offset = F(int64_t, http_write_timeout_ms),
     .min = 100,
     .max = HOUR,
     .flags = SB__CFG_RELOADABLE,
     .help = "Time a response write may stall before the connection is closed (slow readers)."},
    {.name = "http.max_connections",
     .type = SB__CFG_INT,
     .def = "8192",
     .offset = F(int, http_max_connections),
     .min = 1,
     .max = 65536,
     .help = "Concurrent connections per event loop; further ones are refused."},
    {.name = "http.max_pipelined",
     .type = SB__CFG_INT,
     .def = "32",
     .offset = F(int, http_max_pipelined),
     .min = 1,
     .max = 1024,
     .help = "Queued (pipelined) responses per connection."},

    {.name = "grpc.max_message_bytes",
     .type = SB__CFG_SIZE,
     .def = "1MiB",
     .offset = F(size_t, grpc_max_message_bytes),
     .min = 1024,
     .max = 64 * MIB,
     .help = "Largest gRPC request message; RESOURCE_EXHAUSTED beyond (the request body is "
             "also bounded by http.max_body_bytes)."},

    {.name = "http2.max_concurrent_streams",
     .type = SB__CFG_COUNT,
     .def = "100",
     .offset = F(size_t, http2_max_concurrent_streams),
     .min = 1,
     .max = 10000,
     .help = "HTTP/2 streams a client may have open on one connection (SETTINGS); further "
             "ones are refused with REFUSED_STREAM."},
    {.name = "http2.max_header_list_size",
     .type = SB__CFG_SIZE,
     .def = "32KiB",
     .offset = F(size_t, http2_max_header_list_size),
     .min = KIB,
     .max = MIB,
     .help = "Decoded size of an HTTP/2 request's header list (RFC 9113 §6.5.2): 431 beyond; "
             "a header block four times larger (CONTINUATION flood) closes the connection."},
    {.name = "http2.initial_window_size",
     .type = SB__CFG_SIZE,
     .def = "64KiB",
     .offset = F(size_t, http2_initial_window_size),
     .min = KIB,
     .max = 16 * MIB,
     .help = "HTTP/2 flow-control window of each stream for request bodies: what a stream "
             "waiting for http2.connection_window_size may send meanwhile."},
    {.name = "http2.connection_window_size",
     .type = SB__CFG_SIZE,
     .def = "4MiB",
     .offset = F(size_t, http2_connection_window_size),
     .min = 64 * KIB,
     .max = GIB,
     .help = "Request-body bytes an HTTP/2 connection buffers across its streams: each body "
             "reserves its Content-Length (else http.max_body_bytes); further streams wait "
             "(flow control) until earlier bodies are released. At least http.max_body_bytes."},
    {.name = "http2.max_resets_per_second",
     .type = SB__CFG_INT,
     .def = "100",
     .offset = F(int, http2_max_resets_per_second),
     .min = 1,
     .max = 100000,
     .help = "Streams an HTTP/2 client may cancel (RST_STREAM) per second; beyond, GOAWAY "
             "ENHANCE_YOUR_CALM closes the connection (rapid reset, CVE-2023-44487)."},

    {.name = "ws.max_message_bytes",
     .type = SB__CFG_SIZE,
     .def = "1MiB",
     .offset = F(size_t, ws_max_message_bytes),
     .min = 125,
     .max = 8 * MIB,
     .help = "Largest WebSocket message received, after reassembling fragments; close 1009 "
             "beyond."},
    {.name = "ws.max_send_queue",
     .type = SB__CFG_SIZE,
     .def = "1MiB",
     .offset = F(size_t, ws_max_send_queue),
     .min = 4 * KIB,
     .max = 64 * MIB,
     .help = "WebSocket output waiting for one slow reader; past it the connection is closed "
             "with 4008."},
    {.name = "ws.ping_interval",
     .type = SB__CFG_DURATION,
     .def = "20s",
     .offset = F(int64_t, ws_ping_interval_ms),
     .min = 100,
     .max = HOUR,
     .flags = SB__CFG_RELOADABLE,
     .help = "Quiet time on a WebSocket after which the server sends a Ping."},
    {.name = "ws.pong_timeout",
     .type = SB__CFG_DURATION,
     .def = "10s",
     .offset = F(int64_t, ws_pong_timeout_ms),
     .min = 100,
     .max = HOUR,
     .flags = SB__CFG_RELOADABLE,
     .help = "Time after a Ping within which the peer must send something, or it is dropped."},

    {.name = "shutdown.drain_timeout",
     .type = SB__CFG_DURATION,
     .def = "10s",
     .offset = F(int64_t, shutdown_drain_timeout_ms),
     .min = 0,
     .max = HOUR,
     .flags = SB__CFG_RELOADABLE,
     .help = "On SIGTERM, time in-flight requests get to finish before connections close."},

    {.name = "log.level",
     .type = SB__CFG_LOG_LEVEL,
     .def = "info",
     .offset = F(sb_log_level, log_level),
     .flags = SB__CFG_RELOADABLE,
     .help = "Least severe level written: debug, info, warn or error."},
    {.name = "log.access",
     .type = SB__CFG_BOOL,
     .def = "true",
     .offset = F(bool, log_access),
     .flags = SB__CFG_RELOADABLE,
     .help = "Write one JSON line per request."},
    {.name = "log.file",
     .type = SB__CFG_STRING,
     .def = "",
     .offset = F(char *, log_file),
     .max = 4096,
     .arg = "PATH",
     .help = "Log file; empty means standard error."},
    {.name = "metrics.enabled",
     .type = SB__CFG_BOOL,
     .def = "true",
     .offset = F(bool, metrics_enabled),
     .flags = SB__CFG_RELOADABLE,
     .help = "Serve Prometheus metrics at /metrics."},

    {.name = "ratelimit.enabled",
     .type = SB__CFG_BOOL,
     .def = "true",
     .offset = F(bool, ratelimit_enabled),
     .help = "Limit requests per credential (429 with Retry-After; RateLimit headers)."},
    {.name = "ratelimit.requests_per_second",
     .type = SB__CFG_INT,
     .def = "1000",
     .offset = F(int, ratelimit_rps),
     .min = 1,
     .max = 1000000,
     .help = "Default sustained rate per credential (a key's rate_limit overrides it)."},
    {.name = "ratelimit.burst",
     .type = SB__CFG_INT,
     .def = "2000",
     .offset = F(int, ratelimit_burst),
     .min = 1,
     .max = 1000000,
     .help = "Default burst per credential: requests allowed at once before the rate applies."},

    {.name = "oauth.issuer",
     .type = SB__CFG_STRING,
     .def = "",
     .offset = F(char *, oauth_issuer),
     .max = 1024,
     .arg = "URL",
     .help = "OAuth issuer (RFC 8414) and token iss; empty means the first listener's URL."},
    {.name = "oauth.access_token_ttl",
     .type = SB__CFG_DURATION,
     .def = "10m",
     .offset = F(int64_t, oauth_access_token_ttl_ms),
     .min = 1000,
     .max = HOUR,
     .help = "Lifetime of OAuth access tokens (RFC 9068 JWTs)."},
    {.name = "oauth.signing_key_rotation",
     .type = SB__CFG_DURATION,
     .def = "720h",
     .offset = F(int64_t, oauth_key_rotation_ms),
     .min = 0,
     .max = 8760LL * HOUR,
     .help = "At start, a server signing key older than this is replaced; 0 never rotates."},
    {.name = "oauth.signing_alg",
     .type = SB__CFG_STRING,
     .def = "ES256",
     .offset = F(char *, oauth_signing_alg),
     .min = 1,
     .max = 8,
     .arg = "ALG",
     .help = "Algorithm of the server signing key (access and participant tokens): ES256 or "
             "EdDSA; a change rotates the key at the next start."},
    {.name = "oauth.requests_per_second",
     .type = SB__CFG_INT,
     .def = "10",
     .offset = F(int, oauth_rps),
     .min = 1,
     .max = 1000000,
     .help = "Rate of /oauth/* requests per client address (brute-force guard)."},
    {.name = "oauth.burst",
     .type = SB__CFG_INT,
     .def = "20",
     .offset = F(int, oauth_burst),
     .min = 1,
     .max = 1000000,
     .help = "Burst of /oauth/* requests per client address."},

    {.name = "security.allowed_ips",
     .type = SB__CFG_STRING,
     .def = "",
     .offset = F(char *, security_allowed_ips),
     .max = 16384,
     .arg = "CIDRS",
     .help = "Comma-separated addresses/CIDRs allowed to call the API and /oauth; empty = any."},
    {.name = "http.trusted_proxies",
     .type = SB__CFG_STRING,
     .def = "",
     .offset = F(char *, http_trusted_proxies),
     .max = 16384,
     .arg = "CIDRS",
     .help = "Comma-separated proxy CIDRs whose X-Forwarded-For names the client; empty = none."},
    /* ---- webhooks (events/webhooks.c) ---- */
    {.name = "webhooks.retry_schedule",
     .type = SB__CFG_STRING,
     .def = "0,5s,5m,30m,2h,5h,10h,10h",
     .offset = F(char *, webhooks_retry_schedule),
     .min = 1,
     .max = 512,
     .arg = "LIST",
     .help = "Delay before each delivery attempt, comma-separated durations (ms, s, m, h); after "
             "the last failed attempt a delivery is dead."},
    {.name = "webhooks.timeout",
     .type = SB__CFG_DURATION,
     .def = "10s",
     .offset = F(int64_t, webhooks_timeout_ms),
     .min = 50,
     .max = 5 * MINUTE,
     .help = "Time one delivery attempt may take, connecting included; then it is retried."},
    {.name = "webhooks.allow_private_targets",
     .type = SB__CFG_BOOL,
     .def = "false",
     .offset = F(bool, webhooks_allow_private_targets),
     .help = "Deliver to loopback, private, link-local and metadata addresses (SSRF guard off); "
             "--dev turns it on."},
    {.name = "webhooks.allow_http",
     .type = SB__CFG_BOOL,
     .def = "false",
     .offset = F(bool, webhooks_allow_http),
     .help = "Accept plain http:// endpoint URLs (always accepted when private targets are)."},
    {.name = "webhooks.max_in_flight_per_endpoint",
     .type = SB__CFG_INT,
     .def = "32",
     .offset = F(int, webhooks_max_in_flight_per_endpoint),
     .min = 1,
     .max = 1024,
     .help = "Concurrent delivery attempts toward one endpoint."},
    {.name = "webhooks.rotation_overlap",
     .type = SB__CFG_DURATION,
     .def = "24h",
     .offset = F(int64_t, webhooks_rotation_overlap_ms),
     .min = 0,
     .max = 30 * 24 * HOUR,
     .help = "After a secret rotation, time during which deliveries carry both signatures."},
    {.name = "webhooks.breaker_threshold",
     .type = SB__CFG_INT,
     .def = "10",
     .offset = F(int, webhooks_breaker_threshold),
     .min = 1,
     .max = 100000,
     .help = "Consecutive failed attempts after which an endpoint's circuit opens."},
    {.name = "webhooks.breaker_cooldown",
     .type = SB__CFG_DURATION,
     .def = "30s",
     .offset = F(int64_t, webhooks_breaker_cooldown_ms),
     .min = 10,
     .max = HOUR,
     .help = "Time an open circuit waits before one probe attempt (half-open)."},
    {.name = "webhooks.ca_file",
     .type = SB__CFG_STRING,
     .def = "",
     .offset = F(char *, webhooks_ca_file),
     .max = 4096,
     .arg = "PATH",
     .help = "PEM bundle of the CAs that receivers' certificates must chain to; empty means the "
             "system store."},
    {.name = "webhooks.retention",
     .type = SB__CFG_DURATION,
     .def = "720h",
     .offset = F(int64_t, webhooks_retention_ms),
     .min = SEC,
     .max = 8760 * HOUR,
     .help = "How long delivered and dead deliveries (and their attempts) are kept; pending "
             "ones are never removed."},
    {.name = "events.retention",
     .type = SB__CFG_DURATION,
     .def = "720h",
     .offset = F(int64_t, events_retention_ms),
     .min = SEC,
     .max = 87600 * HOUR,
     .help = "How long events stay in the outbox (for webhooks, replays and resuming the event "
             "stream); an event an enabled webhook has not sent yet, or a pending delivery "
             "still needs, is kept. Deliveries made at their first attempt show their event's "
             "id and type from here: keep it at least webhooks.retention."},
    /* ---- end webhooks ---- */

    {.name = "debug.ws_echo",
     .type = SB__CFG_BOOL,
     .def = "false",
     .offset = F(bool, debug_ws_echo),
     .help = "Serve /debug/ws-echo and /debug/stream (tests only)."},
};

/* Read by other modules straight from the environment; not keys. */
static const char *const env_allow[] = {"SWITCHBOARD_ADMIN_KEY", NULL};

const sb__config_table sb__config_keys = {keys, sizeof keys / sizeof keys[0], env_allow};

/* ---- messages ---------------------------------------------------------------------------- */

__attribute__((format(printf, 3, 4))) static int errf(char *err, size_t errlen, const char *fmt,
                                                      ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return SB_ECONFIG;
}

static int oom(char *err, size_t errlen)
{
    if (err && errlen)
        snprintf(err, errlen, "out of memory");
    return SB_ENOMEM;
}

/* A value as it may appear in a message: quoted, escaped and cut short. Never called for a
 * secret key: those messages say "value" instead. */
static const char *quote(const char *v, char *out, size_t outlen)
{
    static const char hex[] = "0123456789abcdef";
    const size_t shown = 48;
    size_t o = 0, i = 0;
    out[o++] = '"';
    for (; v[i] && i < shown && o + 8 < outlen; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c < 0x20 || c == 0x7f) {
            out[o++] = '\\';
            out[o++] = 'x';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        } else {
            out[o++] = (char)c;
        }
    }
    if (v[i] && o + 5 < outlen) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o++] = '"';
    out[o] = '\0';
    return out;
}

/* ---- table lookups ----------------------------------------------------------------------- */

static const sb__config_key *find_key(const sb__config_table *t, const char *name)
{
    for (size_t i = 0; i < t->nkeys; i++)
        if (strcmp(t->keys[i].name, name) == 0)
            return &t->keys[i];
    return NULL;
}

/* Whether `prefix` names a section, i.e. some key starts with "prefix.". */
static bool is_section(const sb__config_table *t, const char *prefix)
{
    size_t n = strlen(prefix);
    for (size_t i = 0; i < t->nkeys; i++)
        if (strncmp(t->keys[i].name, prefix, n) == 0 && t->keys[i].name[n] == '.')
            return true;
    return false;
}

void sb__config_env_name(const char *key, char *out, size_t outlen)
{
    size_t o = 0, plen = strlen(SB__CFG_ENV_PREFIX);
    if (!outlen)
        return;
    for (size_t i = 0; i < plen && o + 1 < outlen; i++)
        out[o++] = SB__CFG_ENV_PREFIX[i];
    for (; *key && o + 1 < outlen; key++)
        out[o++] = *key == '.' ? '_' : (char)toupper((unsigned char)*key);
    out[o] = '\0';
}

static void flag_name(const char *key, char *out, size_t outlen)
{
    size_t o = 0;
    if (outlen < 3)
        return;
    out[o++] = '-';
    out[o++] = '-';
    for (; *key && o + 1 < outlen; key++)
        out[o++] = *key == '_' ? '-' : *key;
    out[o] = '\0';
}

static size_t edit_distance(const char *a, const char *b)
{
    enum { N = 64 };
    size_t la = strlen(a), lb = strlen(b), row[N + 1];
    if (la > N || lb > N)
        return SIZE_MAX;
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best)
                best = up + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

typedef enum suggest_as { AS_FLAG, AS_ENV, AS_YAML } suggest_as;

/*
 * The name closest to a misspelt one, written into out as the user would write it: a flag,
 * an environment variable, or a YAML key or section. False when nothing is close enough.
 */
static bool suggest(const sb__config_table *t, const char *name, suggest_as as, char *out,
                    size_t outlen)
{
    size_t best_d = SIZE_MAX, len = strlen(name);
    const char *best = NULL;
    size_t best_len = 0;
    for (size_t i = 0; i < t->nkeys; i++) {
        char cand[SB__CFG_NAME_MAX + 16];
        const char *key = t->keys[i].name, *dot = strchr(key, '.');
        if (as == AS_ENV)
            sb__config_env_name(key, cand, sizeof cand);
        else
            snprintf(cand, sizeof cand, "%s", key);
        for (int section = 0; section < (as == AS_YAML && dot ? 2 : 1); section++) {
            size_t clen = section ? (size_t)(dot - key) : strlen(cand);
            cand[clen] = '\0';
            size_t d = edit_distance(name, cand);
            if (d < best_d) {
                best_d = d;
                best = key;
                best_len = clen;
            }
        }
    }
    if (!best || (best_d > 2 && best_d * 4 > len))
        return false;
    if (as == AS_ENV) {
        sb__config_env_name(best, out, outlen);
    } else {
        char key[SB__CFG_NAME_MAX];
        snprintf(key, sizeof key, "%.*s", (int)best_len, best);
        if (as == AS_FLAG)
            flag_name(key, out, outlen);
        else
            snprintf(out, outlen, "%s", key);
    }
    return true;
}

/* ---- value syntax ------------------------------------------------------------------------ */

/* Copies s without surrounding whitespace. False if it does not fit (no number is that long). */
static bool trimmed(const char *s, char *out, size_t outlen)
{
    while (isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1]))
        n--;
    if (n >= outlen)
        return false;
    memcpy(out, s, n);
    out[n] = '\0';
    return true;
}

static bool parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = {"true", "yes", "on", "1"};
    static const char *const no[] = {"false", "no", "off", "0"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return true;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return true;
        }
    }
    return false;
}

enum { PARSE_OK = 0, PARSE_SYNTAX = -1, PARSE_RANGE = -2 };

/* Leading decimal digits of *p into *out, advancing *p. */
static int parse_digits(const char **p, uint64_t *out)
{
    const char *s = *p;
    uint64_t v = 0;
    if (!isdigit((unsigned char)*s))
        return PARSE_SYNTAX;
    for (; isdigit((unsigned char)*s); s++) {
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10)
            return PARSE_RANGE;
        v = v * 10 + d;
    }
    *p = s;
    *out = v;
    return PARSE_OK;
}

static int parse_int(const char *s, int64_t *out)
{
    bool neg = false;
    uint64_t v;
    if (*s == '-' || *s == '+')
        neg = *s++ == '-';
    int r = parse_digits(&s, &v);
    if (r)
        return r;
    if (*s)
        return PARSE_SYNTAX;
    if (v > (uint64_t)INT64_MAX)
        return PARSE_RANGE;
    *out = neg ? -(int64_t)v : (int64_t)v;
    return PARSE_OK;
}

typedef struct unit {
    const char *name;
    int64_t mult;
} unit;

static const unit duration_units[] = {{"", 1}, {"ms", 1}, {"s", SEC}, {"m", MINUTE}, {"h", HOUR}};
static const unit size_units[] = {{"", 1},    {"b", 1},     {"k", KIB}, {"kib", KIB},
                                  {"m", MIB}, {"mib", MIB}, {"g", GIB}, {"gib", GIB}};

/* An unsigned integer, optional spaces, then one of `units` (compared case-insensitively
 * when `nocase`). */
static int parse_unit_value(const char *s, const unit *units, size_t nunits, bool nocase,
                            int64_t *out)
{
    uint64_t v;
    int r = parse_digits(&s, &v);
    if (r)
        return r;
    while (*s == ' ')
        s++;
    for (size_t i = 0; i < nunits; i++) {
        if ((nocase ? strcasecmp(s, units[i].name) : strcmp(s, units[i].name)) == 0) {
            uint64_t m = (uint64_t)units[i].mult;
            if (v > (uint64_t)INT64_MAX / m)
                return PARSE_RANGE;
            *out = (int64_t)(v * m);
            return PARSE_OK;
        }
    }
    return PARSE_SYNTAX;
}

static bool parse_log_level(const char *s, sb_log_level *out)
{
    static const char *const names[] = {"debug", "info", "warn", "error"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(s, names[i]) == 0) {
            *out = (sb_log_level)i;
            return true;
        }
    }
    if (strcasecmp(s, "warning") == 0) {
        *out = SB_LOG_WARN;
        return true;
    }
    return false;
}

/* Human form of a number of the key's type, as --help and range errors show it. */
static const char *format_number(const sb__config_key *k, int64_t v, char *out, size_t outlen)
{
    static const unit dur[] = {{"h", HOUR}, {"m", MINUTE}, {"s", SEC}, {"ms", 1}};
    static const unit size[] = {{"GiB", GIB}, {"MiB", MIB}, {"KiB", KIB}, {"B", 1}};
    const unit *u = k->type == SB__CFG_DURATION ? dur : k->type == SB__CFG_SIZE ? size : NULL;
    if (!u || v == 0) {
        snprintf(out, outlen, "%" PRId64, v);
        return out;
    }
    for (size_t i = 0; i < 4; i++) {
        if (v % u[i].mult == 0) {
            snprintf(out, outlen, "%" PRId64 "%s", v / u[i].mult, u[i].name);
            break;
        }
    }
    return out;
}

static const char *type_syntax(sb__config_type type)
{
    switch (type) {
    case SB__CFG_BOOL:
        return "a boolean (true/false, yes/no, on/off, 1/0)";
    case SB__CFG_INT:
    case SB__CFG_COUNT:
        return "an integer";
    case SB__CFG_DURATION:
        return "a duration (an integer with unit ms, s, m or h, e.g. 250ms, 10s)";
    case SB__CFG_SIZE:
        return "a size (an integer with unit B, KiB, MiB or GiB, e.g. 64KiB)";
    case SB__CFG_LOG_LEVEL:
        return "a log level (debug, info, warn or error)";
    case SB__CFG_STRING:
    case SB__CFG_LISTEN:
        break;
    }
    return "a string";
}

static void *field(void *base, const sb__config_key *k)
{
    return (char *)base + k->offset;
}

static const void *cfield(const void *base, const sb__config_key *k)
{
    return (const char *)base + k->offset;
}

static int set_string(const sb__config_key *k, void *base, const char *value, const char *shown,
                      const char *where, char *err, size_t errlen)
{
    size_t len = strlen(value);
    if (k->max > 0 && len > (uint64_t)k->max)
        return errf(err, errlen, "%s: %s is too long (at most %" PRId64 " bytes)", where, shown,
                    k->max);
    if (len == 0 && k->min > 0)
        return errf(err, errlen, "%s: must not be empty", where);
    if (len < (uint64_t)(k->min > 0 ? k->min : 0))
        return errf(err, errlen, "%s: %s is too short (at least %" PRId64 " bytes)", where, shown,
                    k->min);
    if (k->type == SB__CFG_LISTEN) {
        struct sockaddr_storage ss[SB_CONFIG_MAX_LISTEN];
        char why[256];
        if (sb_config_parse_listen(value, ss, SB_CONFIG_MAX_LISTEN, why, sizeof why) < 0) {
            if (k->flags & SB__CFG_SECRET)
                return errf(err, errlen, "%s: value is not a valid listener list", where);
            return errf(err, errlen, "%s: %s", where, why);
        }
    }
    char *copy = sb_strdup(value);
    if (!copy)
        return oom(err, errlen);
    char **slot = field(base, k);
    sb_free(*slot);
    *slot = copy;
    return 0;
}

int sb__config_set(const sb__config_table *t, void *base, const char *name, const char *value,
                   const char *where, char *err, size_t errlen)
{
    const sb__config_key *k = find_key(t, name);
    char q[128], text[64], lo[32], hi[32];
    if (!k)
        return errf(err, errlen, "%s: unknown key", where);
    const char *shown = (k->flags & SB__CFG_SECRET) ? "value" : quote(value, q, sizeof q);
    if (k->type == SB__CFG_STRING || k->type == SB__CFG_LISTEN)
        return set_string(k, base, value, shown, where, err, errlen);

    bool b = false;
    sb_log_level level = SB_LOG_INFO;
    int64_t v = 0;
    int r = PARSE_SYNTAX;
    if (trimmed(value, text, sizeof text)) {
        switch (k->type) {
        case SB__CFG_BOOL:
            r = parse_bool(text, &b) ? PARSE_OK : PARSE_SYNTAX;
            break;
        case SB__CFG_LOG_LEVEL:
            r = parse_log_level(text, &level) ? PARSE_OK : PARSE_SYNTAX;
            break;
        case SB__CFG_INT:
        case SB__CFG_COUNT:
            r = parse_int(text, &v);
            break;
        case SB__CFG_DURATION:
            r = parse_unit_value(text, duration_units, 5, false, &v);
            break;
        case SB__CFG_SIZE:
            r = parse_unit_value(text, size_units, 8, true, &v);
            break;
        case SB__CFG_STRING:
        case SB__CFG_LISTEN:
            break;
        }
    }
    if (r == PARSE_SYNTAX)
        return errf(err, errlen, "%s: %s is not %s", where, shown, type_syntax(k->type));
    bool numeric = k->type == SB__CFG_INT || k->type == SB__CFG_COUNT ||
                   k->type == SB__CFG_DURATION || k->type == SB__CFG_SIZE;
    if (numeric && (r == PARSE_RANGE || v < k->min || v > k->max))
        return errf(err, errlen, "%s: %s is out of range (%s..%s)", where, shown,
                    format_number(k, k->min, lo, sizeof lo),
                    format_number(k, k->max, hi, sizeof hi));

    void *p = field(base, k);
    switch (k->type) {
    case SB__CFG_BOOL:
        *(bool *)p = b;
        break;
    case SB__CFG_LOG_LEVEL:
        *(sb_log_level *)p = level;
        break;
    case SB__CFG_INT:
        *(int *)p = (int)v;
        break;
    case SB__CFG_DURATION:
        *(int64_t *)p = v;
        break;
    case SB__CFG_SIZE:
    case SB__CFG_COUNT:
        *(size_t *)p = (size_t)v;
        break;
    case SB__CFG_STRING:
    case SB__CFG_LISTEN:
        break;
    }
    return 0;
}

/* ---- sources ----------------------------------------------------------------------------- */

static int load_defaults(const sb__config_table *t, void *base, char *err, size_t errlen)
{
    for (size_t i = 0; i < t->nkeys; i++) {
        char where[SB__CFG_NAME_MAX + 32];
        snprintf(where, sizeof where, "default of %s", t->keys[i].name);
        int r = sb__config_set(t, base, t->keys[i].name, t->keys[i].def, where, err, errlen);
        if (r)
            return r;
    }
    return 0;
}

typedef struct yaml_ctx {
    const sb__config_table *t;
    void *base;
    const char *path;
    yaml_parser_t parser;
    char **seen; /* dotted paths met so far, to refuse duplicate keys */
    size_t nseen, capseen;
    char *err;
    size_t errlen;
} yaml_ctx;

static int y_next(yaml_ctx *c, yaml_event_t *ev)
{
    if (yaml_parser_parse(&c->parser, ev))
        return 0;
    if (c->parser.error == YAML_MEMORY_ERROR)
        return oom(c->err, c->errlen);
    const char *problem = c->parser.problem ? c->parser.problem : "malformed input";
    const char *context = c->parser.context;
    return errf(c->err, c->errlen, "%s:%zu:%zu: YAML syntax error: %s%s%s%s", c->path,
                c->parser.problem_mark.line + 1, c->parser.problem_mark.column + 1, problem,
                context ? " (" : "", context ? context : "", context ? ")" : "");
}

static int y_mark_seen(yaml_ctx *c, const char *path, size_t line)
{
    for (size_t i = 0; i < c->nseen; i++)
        if (strcmp(c->seen[i], path) == 0)
            return errf(c->err, c->errlen, "%s:%zu: %s: duplicate key", c->path, line, path);
    if (c->nseen == c->capseen) {
        size_t cap = c->capseen ? c->capseen * 2 : 16;
        char **p = sb_realloc(c->seen, cap * sizeof *p);
        if (!p)
            return oom(c->err, c->errlen);
        c->seen = p;
        c->capseen = cap;
    }
    c->seen[c->nseen] = sb_strdup(path);
    if (!c->seen[c->nseen])
        return oom(c->err, c->errlen);
    c->nseen++;
    return 0;
}

static bool y_is_null(const yaml_event_t *ev)
{
    const char *v = (const char *)ev->data.scalar.value;
    if (ev->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    return !*v || strcmp(v, "~") == 0 || strcmp(v, "null") == 0 || strcmp(v, "Null") == 0 ||
           strcmp(v, "NULL") == 0;
}

static int y_set(yaml_ctx *c, const char *path, size_t line, const char *value)
{
    char where[SB__CFG_NAME_MAX + 4096];
    snprintf(where, sizeof where, "%s:%zu: %s", c->path, line, path);
    return sb__config_set(c->t, c->base, path, value, where, c->err, c->errlen);
}

/* A YAML sequence for a listener key, joined with commas. */
static int y_sequence(yaml_ctx *c, const char *path, size_t line)
{
    sb_buf joined;
    yaml_event_t ev;
    int r;
    sb_buf_init(&joined, LISTEN_TEXT_MAX);
    for (;;) {
        r = y_next(c, &ev);
        if (r)
            goto fail;
        if (ev.type == YAML_SEQUENCE_END_EVENT) {
            yaml_event_delete(&ev);
            break;
        }
        if (ev.type != YAML_SCALAR_EVENT) {
            r = errf(c->err, c->errlen, "%s:%zu: %s: list items must be single values", c->path,
                     ev.start_mark.line + 1, path);
            goto fail_event;
        }
        if (joined.len)
            r = sb_buf_append(&joined, ",", 1);
        if (!r)
            r = sb_buf_append(&joined, ev.data.scalar.value, ev.data.scalar.length);
        if (r == SB_EMSGSIZE)
            r = errf(c->err, c->errlen, "%s:%zu: %s: list too long", c->path, line, path);
        else if (r)
            r = oom(c->err, c->errlen);
        if (r)
            goto fail_event;
        yaml_event_delete(&ev);
    }
    r = sb_buf_append(&joined, "", 1);
    if (r) {
        r = r == SB_ENOMEM
                ? oom(c->err, c->errlen)
                : errf(c->err, c->errlen, "%s:%zu: %s: list too long", c->path, line, path);
        goto fail;
    }
    r = y_set(c, path, line, joined.base);
    sb_buf_free(&joined);
    return r;

fail_event:
    yaml_event_delete(&ev);
fail:
    sb_buf_free(&joined);
    return r;
}

static int y_unknown(yaml_ctx *c, const char *path, size_t line)
{
    char alt[SB__CFG_NAME_MAX];
    bool s = suggest(c->t, path, AS_YAML, alt, sizeof alt);
    return errf(c->err, c->errlen, "%s:%zu: %s: unknown key%s%s%s", c->path, line, path,
                s ? " (did you mean " : "", s ? alt : "", s ? "?)" : "");
}

/* The pairs of a mapping whose dotted path is `prefix` ("" at the top), up to its end. */
static int y_mapping(yaml_ctx *c, const char *prefix)
{
    for (;;) {
        yaml_event_t ev;
        char path[SB__CFG_NAME_MAX];
        int r = y_next(c, &ev);
        if (r)
            return r;
        if (ev.type == YAML_MAPPING_END_EVENT) {
            yaml_event_delete(&ev);
            return 0;
        }
        size_t line = ev.start_mark.line + 1;
        if (ev.type != YAML_SCALAR_EVENT) {
            yaml_event_delete(&ev);
            return errf(c->err, c->errlen, "%s:%zu: mapping keys must be plain names", c->path,
                        line);
        }
        const char *name = (const char *)ev.data.scalar.value;
        int n = snprintf(path, sizeof path, "%s%s%s", prefix, *prefix ? "." : "", name);
        bool ok =
            *name && n >= 0 && (size_t)n < sizeof path && strlen(name) == ev.data.scalar.length;
        yaml_event_delete(&ev);
        if (!ok)
            return errf(c->err, c->errlen, "%s:%zu: %s: unknown key", c->path, line, path);

        const sb__config_key *k = find_key(c->t, path);
        bool section = !k && is_section(c->t, path);
        if (!k && !section)
            return y_unknown(c, path, line);
        r = y_mark_seen(c, path, line);
        if (r)
            return r;

        r = y_next(c, &ev);
        if (r)
            return r;
        line = ev.start_mark.line + 1;
        switch (ev.type) {
        case YAML_SCALAR_EVENT:
            if (section)
                r = errf(c->err, c->errlen,
                         "%s:%zu: %s: is a section; expected a mapping of its "
                         "keys",
                         c->path, line, path);
            else
                r = y_set(c, path, line, y_is_null(&ev) ? "" : (const char *)ev.data.scalar.value);
            yaml_event_delete(&ev);
            break;
        case YAML_MAPPING_START_EVENT:
            yaml_event_delete(&ev);
            if (k)
                r = errf(c->err, c->errlen, "%s:%zu: %s: expected a single value, not a mapping",
                         c->path, line, path);
            else
                r = y_mapping(c, path);
            break;
        case YAML_SEQUENCE_START_EVENT:
            yaml_event_delete(&ev);
            if (section || k->type != SB__CFG_LISTEN)
                r = errf(c->err, c->errlen,
                         "%s:%zu: %s: expected a single value, not a list (only listener keys "
                         "take lists)",
                         c->path, line, path);
            else
                r = y_sequence(c, path, line);
            break;
        case YAML_ALIAS_EVENT:
            yaml_event_delete(&ev);
            r = errf(c->err, c->errlen, "%s:%zu: %s: YAML aliases are not supported", c->path, line,
                     path);
            break;
        default:
            yaml_event_delete(&ev);
            r = errf(c->err, c->errlen, "%s:%zu: %s: unexpected YAML event", c->path, line, path);
            break;
        }
        if (r)
            return r;
    }
}

/* Stream start, at most one document whose root is a mapping (or empty), stream end. */
static int y_stream(yaml_ctx *c)
{
    yaml_event_t ev;
    int r;
    bool had_document = false;
    for (;;) {
        r = y_next(c, &ev);
        if (r)
            return r;
        yaml_event_type_t type = ev.type;
        size_t line = ev.start_mark.line + 1;
        bool empty_root = type == YAML_SCALAR_EVENT && y_is_null(&ev);
        yaml_event_delete(&ev);
        switch (type) {
        case YAML_STREAM_START_EVENT:
        case YAML_DOCUMENT_END_EVENT:
            break;
        case YAML_STREAM_END_EVENT:
            return 0;
        case YAML_DOCUMENT_START_EVENT:
            if (had_document)
                return errf(c->err, c->errlen, "%s:%zu: only one YAML document is allowed", c->path,
                            line);
            had_document = true;
            break;
        case YAML_MAPPING_START_EVENT:
            r = y_mapping(c, "");
            if (r)
                return r;
            break;
        default:
            if (!empty_root)
                return errf(c->err, c->errlen,
                            "%s:%zu: the top level must be a mapping of config keys", c->path,
                            line);
            break;
        }
    }
}

/* The whole file, so that it can be parsed twice. */
static int read_file(const char *path, sb_buf *out, char *err, size_t errlen)
{
    char chunk[4096];
    int r = 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return errf(err, errlen, "%s: cannot open config file: %s", path, strerror(errno));
    for (;;) {
        size_t n = fread(chunk, 1, sizeof chunk, f);
        if (n == 0)
            break;
        r = sb_buf_append(out, chunk, n);
        if (r == SB_EMSGSIZE) {
            r = errf(err, errlen, "%s: config file larger than %d bytes", path, CONFIG_FILE_MAX);
            break;
        }
        if (r) {
            r = oom(err, errlen);
            break;
        }
    }
    if (!r && ferror(f))
        r = errf(err, errlen, "%s: cannot read config file: %s", path, strerror(errno));
    fclose(f);
    return r;
}

static int y_check_syntax(yaml_ctx *c)
{
    for (;;) {
        yaml_event_t ev;
        int r = y_next(c, &ev);
        if (r)
            return r;
        bool end = ev.type == YAML_STREAM_END_EVENT;
        yaml_event_delete(&ev);
        if (end)
            return 0;
    }
}

/*
 * Two passes over the text: the first only parses, so that a syntax error is reported as
 * such even where an earlier value would already be wrong; the second applies the keys.
 */
static int load_yaml(const sb__config_table *t, void *base, const char *path, char *err,
                     size_t errlen)
{
    yaml_ctx c = {.t = t, .base = base, .path = path, .err = err, .errlen = errlen};
    sb_buf text;
    int r;
    sb_buf_init(&text, CONFIG_FILE_MAX);
    r = read_file(path, &text, err, errlen);
    if (r)
        goto fail_text;

    for (int pass = 0; pass < 2 && !r; pass++) {
        if (!yaml_parser_initialize(&c.parser)) {
            r = oom(err, errlen);
            break;
        }
        yaml_parser_set_input_string(&c.parser, (const unsigned char *)(text.base ? text.base : ""),
                                     text.len);
        r = pass == 0 ? y_check_syntax(&c) : y_stream(&c);
        yaml_parser_delete(&c.parser);
    }

    for (size_t i = 0; i < c.nseen; i++)
        sb_free(c.seen[i]);
    sb_free(c.seen);
fail_text:
    sb_buf_free(&text);
    return r;
}

static int load_env(const sb__config_table *t, void *base, char **envp, char *err, size_t errlen)
{
    const size_t plen = strlen(SB__CFG_ENV_PREFIX);
    for (char **e = envp; e && *e; e++) {
        char name[SB__CFG_NAME_MAX + 16], envname[SB__CFG_NAME_MAX + 16];
        const char *eq = strchr(*e, '=');
        if (strncmp(*e, SB__CFG_ENV_PREFIX, plen) != 0 || !eq)
            continue;
        size_t nlen = (size_t)(eq - *e);
        const sb__config_key *k = NULL;
        bool allowed = false;
        if (nlen < sizeof name) {
            memcpy(name, *e, nlen);
            name[nlen] = '\0';
            for (size_t i = 0; i < t->nkeys && !k; i++) {
                sb__config_env_name(t->keys[i].name, envname, sizeof envname);
                if (strcmp(envname, name) == 0)
                    k = &t->keys[i];
            }
            for (const char *const *a = t->env_allow; a && *a && !k; a++)
                allowed = allowed || strcmp(*a, name) == 0;
        } else {
            snprintf(name, sizeof name, "%.*s...", (int)(sizeof name - 4), *e);
        }
        if (allowed)
            continue;
        if (!k) {
            bool s = suggest(t, name, AS_ENV, envname, sizeof envname);
            return errf(err, errlen,
                        "%s: unknown environment variable: no config key has this name%s%s%s", name,
                        s ? " (did you mean " : "", s ? envname : "", s ? "?)" : "");
        }
        int r = sb__config_set(t, base, k->name, eq + 1, name, err, errlen);
        if (r)
            return r;
    }
    return 0;
}

/* A flag name as given ("--http.max-body-bytes" from "--http.max-body-bytes=1"), for messages. */
static void flag_shown(const char *arg, size_t nlen, char *out, size_t outlen)
{
    snprintf(out, outlen, "%.*s", (int)(nlen > 200 ? 200 : nlen), arg);
}

static bool is_action(const char *norm, sb_config_action *act)
{
    if (strcmp(norm, "help") == 0)
        *act = SB_CONFIG_HELP;
    else if (strcmp(norm, "version") == 0)
        *act = SB_CONFIG_VERSION;
    else if (strcmp(norm, "check_config") == 0)
        *act = SB_CONFIG_CHECK;
    else if (strcmp(norm, "print_config_docs") == 0)
        *act = SB_CONFIG_PRINT_DOCS;
    else
        return false;
    return true;
}

static void note_action(sb_config_action *action, sb_config_action act)
{
    /* The first of help, version and docs wins; --check-config only replaces running. */
    if (*action == SB_CONFIG_RUN || (*action == SB_CONFIG_CHECK && act != SB_CONFIG_CHECK))
        *action = act;
}

/*
 * Walks argv twice: first (apply false) for the actions, --config and the validity of every
 * flag, before any other source is read; then (apply true) to set key values on top of the
 * file and environment. The first pass goes on after an error so that --help still wins.
 */
static int walk_argv(const sb__config_table *t, void *base, int argc, char **argv, bool apply,
                     char **config_file, sb_config_action *action, char *err, size_t errlen)
{
    int first = 0;
    char *const err0 = err;
    const size_t errlen0 = errlen;
    const char *bare_bool = NULL; /* the previous argument, if a bool flag without a value */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *prev_bool = bare_bool;
        char norm[SB__CFG_NAME_MAX], shown[256], q[128];
        sb_config_action act;
        int r = 0;
        bare_bool = NULL;
        if (first) {
            /* Keep the first message; later ones only matter for finding --help. */
            err = NULL;
            errlen = 0;
        }

        if (strcmp(a, "-h") == 0 || strcmp(a, "-V") == 0) {
            if (!apply)
                note_action(action, a[1] == 'h' ? SB_CONFIG_HELP : SB_CONFIG_VERSION);
            continue;
        }
        if (strncmp(a, "--", 2) != 0 || a[2] == '\0') {
            bool b;
            if (prev_bool && parse_bool(a, &b))
                r = errf(err, errlen, "unexpected argument %s (write %s=%s)", quote(a, q, sizeof q),
                         prev_bool, a);
            else
                r = errf(err, errlen, "unexpected argument %s (flags start with --; see --help)",
                         quote(a, q, sizeof q));
            goto next;
        }
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        flag_shown(a, nlen + 2, shown, sizeof shown);
        if (nlen >= sizeof norm) {
            r = errf(err, errlen, "%s: unknown flag (see --help)", shown);
            goto next;
        }
        for (size_t j = 0; j < nlen; j++)
            norm[j] = name[j] == '-' ? '_' : name[j];
        norm[nlen] = '\0';

        if (is_action(norm, &act)) {
            if (eq)
                r = errf(err, errlen, "%s: takes no value", shown);
            else if (!apply)
                note_action(action, act);
            goto next;
        }

        const sb__config_key *k = find_key(t, norm);
        bool is_config = strcmp(norm, "config") == 0;
        if (!k && !is_config) {
            char sflag[SB__CFG_NAME_MAX + 2];
            bool s = suggest(t, norm, AS_FLAG, sflag, sizeof sflag);
            r = errf(err, errlen, "%s: unknown flag%s%s%s", shown, s ? " (did you mean " : "",
                     s ? sflag : "", s ? "?)" : " (see --help)");
            goto next;
        }
        const char *value;
        if (eq)
            value = eq + 1;
        else if (k && k->type == SB__CFG_BOOL) {
            value = "true";
            bare_bool = a;
        } else if (i + 1 < argc && strncmp(argv[i + 1], "--", 2) != 0)
            value = argv[++i];
        else
            value = NULL;
        if (!value || (is_config && !*value)) {
            r = errf(err, errlen, "%s: missing value", shown);
            goto next;
        }

        if (is_config && !apply) {
            char *copy = sb_strdup(value);
            if (!copy)
                return oom(err0, errlen0);
            sb_free(*config_file);
            *config_file = copy;
        } else if (k && apply) {
            r = sb__config_set(t, base, k->name, value, shown, err, errlen);
            if (r)
                return r;
        }
    next:
        if (r && !first)
            first = r;
        if (r && apply)
            return r;
    }
    return first;
}

int sb__config_load_table(const sb__config_table *t, void *base, char **config_file, int argc,
                          char **argv, char **envp, sb_config_action *action, char *err,
                          size_t errlen)
{
    sb_config_action local;
    int r;
    if (!action)
        action = &local;
    *action = SB_CONFIG_RUN;
    if (err && errlen)
        err[0] = '\0';

    r = load_defaults(t, base, err, errlen);
    if (r)
        return r;
    r = walk_argv(t, base, argc, argv, false, config_file, action, err, errlen);
    if (*action == SB_CONFIG_HELP || *action == SB_CONFIG_VERSION ||
        *action == SB_CONFIG_PRINT_DOCS) {
        if (r != SB_ENOMEM) {
            if (err && errlen)
                err[0] = '\0';
            r = 0;
        }
        return r;
    }
    if (r)
        return r;
    if (*config_file) {
        r = load_yaml(t, base, *config_file, err, errlen);
        if (r)
            return r;
    }
    r = load_env(t, base, envp, err, errlen);
    if (r)
        return r;
    return walk_argv(t, base, argc, argv, true, config_file, action, err, errlen);
}

void sb__config_free_table(const sb__config_table *t, void *base)
{
    for (size_t i = 0; i < t->nkeys; i++) {
        if (t->keys[i].type == SB__CFG_STRING || t->keys[i].type == SB__CFG_LISTEN) {
            char **slot = field(base, &t->keys[i]);
            sb_free(*slot);
            *slot = NULL;
        }
    }
}

/* ---- listeners --------------------------------------------------------------------------- */

static int listen_one(const char *s, size_t len, struct sockaddr_storage *out, char *err,
                      size_t errlen)
{
    char entry[128], q[128];
    const char *host, *port;
    if (len >= sizeof entry)
        return errf(err, errlen, "listener address too long");
    memcpy(entry, s, len);
    entry[len] = '\0';
    quote(entry, q, sizeof q);

    char *colon;
    if (entry[0] == '[') {
        char *close = strchr(entry, ']');
        if (!close || close[1] != ':')
            return errf(err, errlen, "%s: expected [IPv6]:PORT", q);
        *close = '\0';
        host = entry + 1;
        port = close + 2;
    } else {
        colon = strrchr(entry, ':');
        if (!colon)
            return errf(err, errlen, "%s: expected HOST:PORT (the port is required)", q);
        if (memchr(entry, ':', (size_t)(colon - entry)))
            return errf(err, errlen, "%s: IPv6 addresses must be in brackets: [ADDR]:PORT", q);
        *colon = '\0';
        host = entry;
        port = colon + 1;
    }

    uint64_t pn = 0;
    const char *p = port;
    if (parse_digits(&p, &pn) != PARSE_OK || *p || pn > 65535)
        return errf(err, errlen,
                    "%s: port must be a number from 0 to 65535 (0: the kernel picks one)", q);

    memset(out, 0, sizeof *out);
    if (entry[0] == '[') {
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)out;
        if (inet_pton(AF_INET6, host, &a6->sin6_addr) != 1)
            return errf(err, errlen, "%s: not a numeric IPv6 address", q);
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)pn);
    } else {
        struct sockaddr_in *a4 = (struct sockaddr_in *)out;
        if (strcmp(host, "localhost") == 0)
            a4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        else if (inet_pton(AF_INET, host, &a4->sin_addr) != 1)
            return errf(err, errlen, "%s: host must be a numeric IPv4 address, [IPv6] or localhost",
                        q);
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)pn);
    }
    return 0;
}

int sb_config_parse_listen(const char *list, struct sockaddr_storage *out, int max, char *err,
                           size_t errlen)
{
    const char *p = list ? list : "";
    int n = 0;
    while (isspace((unsigned char)*p))
        p++;
    if (!*p)
        return 0;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        while (len && isspace((unsigned char)*p)) {
            p++;
            len--;
        }
        while (len && isspace((unsigned char)p[len - 1]))
            len--;
        if (!len)
            return errf(err, errlen, "empty entry in listener list");
        if (n >= max)
            return errf(err, errlen, "more than %d listeners", max < 0 ? 0 : max);
        struct sockaddr_storage ss;
        int r = listen_one(p, len, &ss, err, errlen);
        if (r)
            return r;
        if (out)
            out[n] = ss;
        n++;
        if (!comma)
            return n;
        p = comma + 1;
    }
}

/* ---- sb_config --------------------------------------------------------------------------- */

static const char *format_addr(const struct sockaddr_storage *ss, char *out, size_t outlen)
{
    char host[INET6_ADDRSTRLEN];
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &a6->sin6_addr, host, sizeof host);
        snprintf(out, outlen, "[%s]:%u", host, ntohs(a6->sin6_port));
    } else {
        const struct sockaddr_in *a4 = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &a4->sin_addr, host, sizeof host);
        snprintf(out, outlen, "%s:%u", host, ntohs(a4->sin_port));
    }
    return out;
}

static bool same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return false;
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
        return x->sin6_port == y->sin6_port &&
               memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
    }
    const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
    return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
}

static int port_of(const struct sockaddr_storage *a)
{
    return a->ss_family == AF_INET6 ? ntohs(((const struct sockaddr_in6 *)a)->sin6_port)
                                    : ntohs(((const struct sockaddr_in *)a)->sin_port);
}

/* Rules that span keys; each key's own syntax and range were checked as it was set. */
static int validate(const sb_config *cfg, char *err, size_t errlen)
{
    struct sockaddr_storage addrs[2 * SB_CONFIG_MAX_LISTEN];
    char why[256], shown[INET6_ADDRSTRLEN + 16];
    int ntls = sb_config_parse_listen(cfg->listen, addrs, SB_CONFIG_MAX_LISTEN, why, sizeof why);
    if (ntls < 0)
        return errf(err, errlen, "listen: %s", why);
    int nplain = sb_config_parse_listen(cfg->plain_listen, addrs + ntls, SB_CONFIG_MAX_LISTEN, why,
                                        sizeof why);
    if (nplain < 0)
        return errf(err, errlen, "plain_listen: %s", why);
    if (ntls + nplain == 0)
        return errf(err, errlen, "no listeners: set listen or plain_listen");
    for (int i = 1; i < ntls + nplain; i++)
        for (int j = 0; j < i; j++)
            if (same_addr(&addrs[i], &addrs[j]) && port_of(&addrs[i]) != 0)
                return errf(err, errlen, "%s: %s is listed twice%s",
                            i < ntls ? "listen" : "plain_listen",
                            format_addr(&addrs[i], shown, sizeof shown),
                            i >= ntls && j < ntls ? " (also in listen)" : "");

    bool cert = cfg->tls_cert && *cfg->tls_cert, key = cfg->tls_key && *cfg->tls_key;
    if (cert != key)
        return errf(err, errlen, "tls.cert and tls.key must be given together (%s is empty)",
                    cert ? "tls.key" : "tls.cert");
    if (!cfg->dev && !cert && ntls > 0)
        return errf(err, errlen, "tls.cert and tls.key are required unless --dev");

    const char *alg = cfg->oauth_signing_alg ? cfg->oauth_signing_alg : "ES256";
    if (strcmp(alg, "ES256") != 0 && strcmp(alg, "EdDSA") != 0)
        return errf(err, errlen, "oauth.signing_alg must be ES256 or EdDSA");
    const char *ca = cfg->tls_client_auth ? cfg->tls_client_auth : "none";
    if (strcmp(ca, "none") != 0 && strcmp(ca, "optional") != 0 && strcmp(ca, "require") != 0)
        return errf(err, errlen, "tls.client_auth must be none, optional or require");
    if (strcmp(ca, "none") != 0 && !(cfg->tls_client_ca && *cfg->tls_client_ca))
        return errf(err, errlen, "tls.client_auth %s needs tls.client_ca", ca);
    const char *lists[2][2] = {{"security.allowed_ips", cfg->security_allowed_ips},
                               {"http.trusted_proxies", cfg->http_trusted_proxies}};
    for (int i = 0; i < 2; i++) {
        sb_ipallow *a = NULL;
        int rc = sb_ipallow_from_list(lists[i][1], &a, why, sizeof why);
        sb_ipallow_free(a);
        if (rc == SB_ENOMEM) {
            snprintf(err, errlen, "out of memory");
            return rc;
        }
        if (rc)
            return errf(err, errlen, "%s: %s", lists[i][0], why);
    }
    /* webhooks */
    int64_t sched[SB_WEBHOOK_SCHEDULE_MAX];
    if (sb_webhook_schedule_parse(cfg->webhooks_retry_schedule, sched, SB_WEBHOOK_SCHEDULE_MAX, why,
                                  sizeof why) < 0)
        return errf(err, errlen, "webhooks.retry_schedule: %s", why);
    return 0;
}

int sb_config_load(sb_config *cfg, int argc, char **argv, char **envp, sb_config_action *action,
                   char *err, size_t errlen)
{
    sb_config_action local;
    if (!action)
        action = &local;
    memset(cfg, 0, sizeof *cfg);
    int r = sb__config_load_table(&sb__config_keys, cfg, &cfg->config_file, argc, argv, envp,
                                  action, err, errlen);
    if (r == 0 && (*action == SB_CONFIG_RUN || *action == SB_CONFIG_CHECK))
        r = validate(cfg, err, errlen);
    return r;
}

void sb_config_free(sb_config *cfg)
{
    if (!cfg)
        return;
    sb__config_free_table(&sb__config_keys, cfg);
    sb_free(cfg->config_file);
    cfg->config_file = NULL;
}

static bool same_value(const sb__config_key *k, const void *a, const void *b)
{
    const void *x = cfield(a, k), *y = cfield(b, k);
    switch (k->type) {
    case SB__CFG_BOOL:
        return *(const bool *)x == *(const bool *)y;
    case SB__CFG_INT:
        return *(const int *)x == *(const int *)y;
    case SB__CFG_DURATION:
        return *(const int64_t *)x == *(const int64_t *)y;
    case SB__CFG_SIZE:
    case SB__CFG_COUNT:
        return *(const size_t *)x == *(const size_t *)y;
    case SB__CFG_LOG_LEVEL:
        return *(const sb_log_level *)x == *(const sb_log_level *)y;
    case SB__CFG_STRING:
    case SB__CFG_LISTEN:
        break;
    }
    const char *s = *(char *const *)x, *u = *(char *const *)y;
    return strcmp(s ? s : "", u ? u : "") == 0;
}

int sb_config_diff_static(const sb_config *running, const sb_config *fresh,
                          void (*cb)(const char *key, void *ud), void *ud)
{
    const sb__config_table *t = &sb__config_keys;
    int n = 0;
    for (size_t i = 0; i < t->nkeys; i++) {
        const sb__config_key *k = &t->keys[i];
        if ((k->flags & SB__CFG_RELOADABLE) || same_value(k, running, fresh))
            continue;
        n++;
        if (cb)
            cb(k->name, ud);
    }
    return n;
}

/* ---- help and docs ----------------------------------------------------------------------- */

static const char *type_name(sb__config_type type)
{
    switch (type) {
    case SB__CFG_BOOL:
        return "bool";
    case SB__CFG_INT:
    case SB__CFG_COUNT:
        return "integer";
    case SB__CFG_STRING:
        return "string";
    case SB__CFG_LISTEN:
        return "listeners";
    case SB__CFG_DURATION:
        return "duration";
    case SB__CFG_SIZE:
        return "size";
    case SB__CFG_LOG_LEVEL:
        return "log level";
    }
    return "?";
}

static const char *arg_name(const sb__config_key *k)
{
    if (k->arg)
        return k->arg;
    switch (k->type) {
    case SB__CFG_BOOL:
        return "BOOL";
    case SB__CFG_INT:
    case SB__CFG_COUNT:
        return "N";
    case SB__CFG_STRING:
        return "STRING";
    case SB__CFG_LISTEN:
        return "ADDRS";
    case SB__CFG_DURATION:
        return "DURATION";
    case SB__CFG_SIZE:
        return "SIZE";
    case SB__CFG_LOG_LEVEL:
        return "LEVEL";
    }
    return "VALUE";
}

static bool has_range(const sb__config_key *k)
{
    return (k->type == SB__CFG_INT || k->type == SB__CFG_COUNT || k->type == SB__CFG_DURATION ||
            k->type == SB__CFG_SIZE) &&
           k->min < k->max;
}

/* The section of a key: the part before the first '.', or "general" for top-level keys. */
static size_t section_of(const char *name, const char **sec)
{
    const char *dot = strchr(name, '.');
    if (!dot) {
        *sec = "general";
        return strlen(*sec);
    }
    *sec = name;
    return (size_t)(dot - name);
}

static bool new_section(const sb__config_table *t, size_t i)
{
    const char *a, *b;
    if (i == 0)
        return true;
    size_t la = section_of(t->keys[i - 1].name, &a), lb = section_of(t->keys[i].name, &b);
    return la != lb || memcmp(a, b, la) != 0;
}

void sb__config_print_help_table(const sb__config_table *t, FILE *f)
{
    fputs("Usage: switchboard [--config FILE] [--KEY VALUE | --KEY=VALUE]...\n"
          "\n"
          "Options:\n"
          "  -h, --help             print this help and exit\n"
          "  -V, --version          print the version and exit\n"
          "      --config FILE      read configuration keys from a YAML file\n"
          "      --check-config     load and validate the configuration, then exit\n"
          "      --print-config-docs\n"
          "                         print the configuration reference (Markdown) and exit\n"
          "\n"
          "Configuration keys. Flags override environment variables, which override the\n"
          "config file, which overrides the defaults. The key a.b_c is the flag --a.b-c and\n"
          "the environment variable " SB__CFG_ENV_PREFIX "A_B_C; booleans may be given bare.\n"
          "Values: booleans true/false, yes/no, on/off, 1/0; durations 250ms, 10s, 5m, 1h\n"
          "(bare number = ms); sizes 512, 64KiB, 1MiB, 1GiB (or k, m, g); listeners\n"
          "HOST:PORT or [V6]:PORT, comma-separated. (reloadable) keys change on SIGHUP.\n",
          f);
    for (size_t i = 0; i < t->nkeys; i++) {
        const sb__config_key *k = &t->keys[i];
        char flag[SB__CFG_NAME_MAX + 2], env[SB__CFG_NAME_MAX + 16], lo[32], hi[32];
        if (new_section(t, i)) {
            const char *sec;
            size_t len = section_of(k->name, &sec);
            fprintf(f, "\n%.*s:\n", (int)len, sec);
        }
        flag_name(k->name, flag, sizeof flag);
        sb__config_env_name(k->name, env, sizeof env);
        if (k->type == SB__CFG_BOOL)
            fprintf(f, "  %s[=BOOL]\n", flag);
        else
            fprintf(f, "  %s %s\n", flag, arg_name(k));
        fprintf(f, "      %s\n      ", k->help);
        if (k->flags & SB__CFG_SECRET)
            fputs("secret", f);
        else if (*k->def)
            fprintf(f, "default %s", k->def);
        else
            fputs("default empty", f);
        if (has_range(k))
            fprintf(f, ", range %s..%s", format_number(k, k->min, lo, sizeof lo),
                    format_number(k, k->max, hi, sizeof hi));
        fprintf(f, ", env %s%s\n", env, (k->flags & SB__CFG_RELOADABLE) ? " (reloadable)" : "");
    }
}

/* Writes s for a Markdown table cell. */
static void md_cell(FILE *f, const char *s)
{
    for (; *s; s++) {
        if (*s == '|')
            fputc('\\', f);
        fputc(*s, f);
    }
}

void sb__config_print_docs_table(const sb__config_table *t, FILE *f)
{
    fputs("# Configuration reference\n"
          "\n"
          "<!-- Generated from the key table in src/config/config.c; do not edit. Regenerate "
          "with\n"
          "     `build/switchboard --print-config-docs > docs/config.md`. -->\n"
          "\n"
          "Switchboard reads its configuration from four sources, lowest to highest "
          "precedence:\n"
          "built-in defaults, the YAML file given with `--config FILE`, environment variables,\n"
          "then command-line flags. Flags win over the environment, the environment over the\n"
          "file.\n"
          "\n"
          "- **File**: nested mappings form dotted keys, so `http: {max_body_bytes: 1MiB}` sets\n"
          "  `http.max_body_bytes` (the dotted key may also be written as is). Values are\n"
          "  scalars; `listen` and `plain_listen` may also be sequences of addresses. Duplicate\n"
          "  keys are errors.\n"
          "- **Environment**: `" SB__CFG_ENV_PREFIX "` + the key upper-cased with `.` written "
          "`_`,\n"
          "  e.g. `" SB__CFG_ENV_PREFIX "HTTP_MAX_BODY_BYTES`.\n"
          "- **Flags**: `--` + the key, `_` optionally written `-`, value as the next argument "
          "or\n"
          "  after `=`: `--http.max-body-bytes 2MiB`, `--http.max-body-bytes=2MiB`. Booleans "
          "may\n"
          "  be bare (`--dev`) or explicit (`--dev=false`).\n"
          "\n"
          "Unknown keys, flags and `" SB__CFG_ENV_PREFIX "*` environment variables are errors, "
          "so that\na typo cannot go unnoticed.",
          f);
    for (const char *const *a = t->env_allow; a && *a; a++)
        fprintf(f, "%s`%s`",
                a == t->env_allow ? "\nExceptions (read by other parts of Switchboard): " : ", ",
                *a);
    fputs(t->env_allow && *t->env_allow ? "." : "", f);
    fputs("\n"
          "\n"
          "`--check-config` loads and validates the configuration, then exits. Keys marked\n"
          "reloadable take effect on SIGHUP; the others need a restart.\n"
          "\n"
          "Value syntax:\n"
          "\n"
          "- **bool**: `true`/`false`, `yes`/`no`, `on`/`off`, `1`/`0`.\n"
          "- **duration**: an integer with unit `ms`, `s`, `m` or `h` (`250ms`, `10s`); a bare\n"
          "  integer is milliseconds.\n"
          "- **size**: an integer with optional unit `B`, `KiB`, `MiB`, `GiB` (or `k`, `m`, "
          "`g`,\n"
          "  binary).\n"
          "- **listeners**: comma-separated `HOST:PORT` or `[V6]:PORT`, numeric hosts or\n"
          "  `localhost`, port 1 to 65535; at most " XSTR(
              SB_CONFIG_MAX_LISTEN) ".\n"
                                    "- **log level**: `debug`, `info`, `warn` or `error`.\n"
                                    "\n"
                                    "| key | type | default | environment | reloadable | "
                                    "description |\n"
                                    "|---|---|---|---|---|---|\n",
          f);
    for (size_t i = 0; i < t->nkeys; i++) {
        const sb__config_key *k = &t->keys[i];
        char env[SB__CFG_NAME_MAX + 16], lo[32], hi[32];
        sb__config_env_name(k->name, env, sizeof env);
        fprintf(f, "| `%s` | %s | ", k->name, type_name(k->type));
        if (k->flags & SB__CFG_SECRET)
            fputs("*(secret)*", f);
        else if (*k->def) {
            fputc('`', f);
            md_cell(f, k->def);
            fputc('`', f);
        } else
            fputs("*(empty)*", f);
        fprintf(f, " | `%s` | %s | ", env, (k->flags & SB__CFG_RELOADABLE) ? "yes" : "no");
        md_cell(f, k->help);
        if (has_range(k))
            fprintf(f, " Range %s to %s.", format_number(k, k->min, lo, sizeof lo),
                    format_number(k, k->max, hi, sizeof hi));
        fputs(" |\n", f);
    }
}

void sb_config_print_help(FILE *f)
{
    sb__config_print_help_table(&sb__config_keys, f);
}

void sb_config_print_docs(FILE *f)
{
    sb__config_print_docs_table(&sb__config_keys, f);
}
