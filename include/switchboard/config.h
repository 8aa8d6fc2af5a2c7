/*
 * Switchboard configuration.
 *
 * One table of keys (name, type, default, environment name, live-reloadable, help) drives
 * parsing, `--help`, `--check-config` and docs/config.md. Sources, lowest to highest
 * precedence: built-in defaults, the YAML file given with `--config FILE` (nested mappings:
 * `http: {max_body_bytes: 1MiB}` is the key `http.max_body_bytes`), environment variables
 * (`SWITCHBOARD_` + the key upper-cased with '.' → '_', e.g. SWITCHBOARD_HTTP_MAX_BODY_BYTES),
 * then command-line flags (`--http.max-body-bytes VALUE` or `--http.max-body-bytes=VALUE`;
 * '_' may be written '-'; booleans may be given bare, `--dev`).
 *
 * Value syntax: booleans true/false/yes/no/on/off/1/0; durations as an integer with unit
 * ms, s, m or h ("10s", "250ms"; a bare integer is milliseconds); sizes as an integer with
 * optional unit B, KiB, MiB, GiB (or k, m, g, binary); addresses as HOST:PORT or [V6]:PORT.
 */
#ifndef SWITCHBOARD_CONFIG_H
#define SWITCHBOARD_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "switchboard/common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define SB_CONFIG_MAX_LISTEN 8

typedef enum sb_log_level {
    SB_LOG_DEBUG = 0,
    SB_LOG_INFO = 1,
    SB_LOG_WARN = 2,
    SB_LOG_ERROR = 3,
} sb_log_level;

typedef struct sb_config {
    /* process */
    bool dev;          /* dev: development node (generated CA/cert, relaxed defaults) */
    char *data_dir;    /* data_dir: state directory (created if missing) */
    char *config_file; /* --config path, NULL if none (not a key itself) */
    int workers;       /* workers: event loops; 0 = one per core */

    /* listeners: comma-separated HOST:PORT lists */
    char *listen;       /* listen: TLS listeners */
    char *plain_listen; /* plain_listen: cleartext HTTP listeners, empty = none */

    /* tls */
    char *tls_cert;                   /* tls.cert: PEM chain path; empty with --dev = generated */
    char *tls_key;                    /* tls.key: PEM private key path */
    bool tls_session_tickets;         /* tls.session_tickets */
    int64_t tls_handshake_timeout_ms; /* tls.handshake_timeout */
    char *tls_client_ca;              /* tls.client_ca: PEM CAs for client certificates */
    char *tls_client_auth;            /* tls.client_auth: none|optional|require */

    /* http */
    size_t http_max_request_line;   /* http.max_request_line */
    size_t http_max_header_bytes;   /* http.max_header_bytes */
    size_t http_max_headers;        /* http.max_headers */
    size_t http_max_body_bytes;     /* http.max_body_bytes */
    size_t grpc_max_message_bytes;  /* grpc.max_message_bytes */
    int64_t http_header_timeout_ms; /* http.header_timeout */
    int64_t http_body_timeout_ms;   /* http.body_timeout */
    int64_t http_idle_timeout_ms;   /* http.idle_timeout */
    int64_t http_write_timeout_ms;  /* http.write_timeout: slow readers */
    int http_max_connections;       /* http.max_connections: per loop */
    int http_max_pipelined;         /* http.max_pipelined: queued responses per connection */

    /* http2 */
    size_t http2_max_concurrent_streams; /* http2.max_concurrent_streams: per connection */
    size_t http2_max_header_list_size;   /* http2.max_header_list_size: decoded, per request */
    size_t http2_initial_window_size;    /* http2.initial_window_size: per stream */
    size_t http2_connection_window_size; /* http2.connection_window_size: request bodies */
    int http2_max_resets_per_second;     /* http2.max_resets_per_second: rapid reset bound */

    /* websocket */
    size_t ws_max_message_bytes; /* ws.max_message_bytes: received message, reassembled */
    size_t ws_max_send_queue;    /* ws.max_send_queue: output queued toward one connection */
    int64_t ws_ping_interval_ms; /* ws.ping_interval */
    int64_t ws_pong_timeout_ms;  /* ws.pong_timeout */

    /* shutdown */
    int64_t shutdown_drain_timeout_ms; /* shutdown.drain_timeout */

    /* logging and observability */
    sb_log_level log_level; /* log.level: debug|info|warn|error */
    bool log_access;        /* log.access: one JSON line per request */
    char *log_file;         /* log.file: path, empty = stderr */
    bool metrics_enabled;   /* metrics.enabled: serve /metrics */

    /* rate limits per credential */
    bool ratelimit_enabled; /* ratelimit.enabled */
    int ratelimit_rps;      /* ratelimit.requests_per_second */
    int ratelimit_burst;    /* ratelimit.burst */

    /* OAuth 2.0 authorization server */
    char *oauth_issuer;                /* oauth.issuer: empty = the first listener's URL */
    int64_t oauth_access_token_ttl_ms; /* oauth.access_token_ttl */
    int64_t oauth_key_rotation_ms;     /* oauth.signing_key_rotation: 0 = never */
    char *oauth_signing_alg;           /* oauth.signing_alg: ES256 | EdDSA */
    int oauth_rps;                     /* oauth.requests_per_second: per client address */
    int oauth_burst;                   /* oauth.burst */

    /* who may call */
    char *security_allowed_ips; /* security.allowed_ips: comma-separated CIDRs, empty = all */
    char *http_trusted_proxies; /* http.trusted_proxies: CIDRs whose X-Forwarded-For is read */

    /* webhooks (events/webhooks.c) */
    char *webhooks_retry_schedule;           /* webhooks.retry_schedule: "0,5s,5m,..." */
    int64_t webhooks_timeout_ms;             /* webhooks.timeout: one attempt, connect to 2xx */
    bool webhooks_allow_private_targets;     /* webhooks.allow_private_targets (--dev: true) */
    bool webhooks_allow_http;                /* webhooks.allow_http: plain http:// targets */
    int webhooks_max_in_flight_per_endpoint; /* webhooks.max_in_flight_per_endpoint */
    int64_t webhooks_rotation_overlap_ms;    /* webhooks.rotation_overlap */
    int webhooks_breaker_threshold;          /* webhooks.breaker_threshold */
    int64_t webhooks_breaker_cooldown_ms;    /* webhooks.breaker_cooldown */
    char *webhooks_ca_file;                  /* webhooks.ca_file: receivers' CAs; "" = system */
    int64_t webhooks_retention_ms;           /* webhooks.retention: finished deliveries kept */
    int64_t events_retention_ms;             /* events.retention: outbox events kept */

    /* test support */
    bool debug_ws_echo; /* debug.ws_echo: serve GET /debug/ws-echo */
} sb_config;

/* What the command line asked for besides running. */
typedef enum sb_config_action {
    SB_CONFIG_RUN = 0,
    SB_CONFIG_HELP,       /* --help / -h: usage printed to stdout */
    SB_CONFIG_VERSION,    /* --version / -V */
    SB_CONFIG_CHECK,      /* --check-config: config loaded and validated */
    SB_CONFIG_PRINT_DOCS, /* --print-config-docs: Markdown table of keys to stdout */
} sb_config_action;

/*
 * Loads defaults, then the file named by --config (if any), the environment (`envp`,
 * NULL-terminated "NAME=value" strings), then flags from argv[1..argc). On success returns 0
 * and fills *cfg and *action. On failure returns SB_ECONFIG (or SB_ENOMEM) and writes one
 * human-readable line into err (which names the key and the source: file:line, env var or
 * flag, and never echoes a secret value). The caller frees with sb_config_free in all cases.
 * Validation (ranges, addresses parse, cert and key given together, at least one listener)
 * happens here too.
 */
SB_EXPORT int sb_config_load(sb_config *cfg, int argc, char **argv, char **envp,
                             sb_config_action *action, char *err, size_t errlen);

SB_EXPORT void sb_config_free(sb_config *cfg);

/* Writes the usage text (flags and every key with default, env name, reloadable) to f. */
SB_EXPORT void sb_config_print_help(FILE *f);

/* Writes docs/config.md's content (a Markdown table generated from the key table) to f. */
SB_EXPORT void sb_config_print_docs(FILE *f);

/*
 * For SIGHUP: compares a freshly loaded config with the running one. Calls `cb` once for
 * each key whose value differs and is not live-reloadable (the caller logs that it needs a
 * restart). Returns the number of such keys.
 */
SB_EXPORT int sb_config_diff_static(const sb_config *running, const sb_config *fresh,
                                    void (*cb)(const char *key, void *ud), void *ud);

/* Splits a comma-separated listener list into at most `max` HOST:PORT entries and resolves
 * each into a sockaddr_storage (numeric hosts only, plus "localhost" → 127.0.0.1). Returns
 * the count or SB_ECONFIG with err filled. */
struct sockaddr_storage;
SB_EXPORT int sb_config_parse_listen(const char *list, struct sockaddr_storage *out, int max,
                                     char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif
