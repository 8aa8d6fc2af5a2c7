/*
 * Server metrics in Prometheus text format (exposition format 0.0.4).
 *
 * Each event loop owns one sb_loop_stats and is its only writer, so the request path
 * updates plain counters with relaxed atomic stores: no locks, no shared cache lines. The
 * /metrics handler sums every loop's stats with relaxed loads; a scrape may see one loop a
 * few requests ahead of another, which Prometheus tolerates by design.
 */
#ifndef SB_CORE_METRICS_H
#define SB_CORE_METRICS_H

#include <stdatomic.h>
#include <stdint.h>

#include "core/buf.h"

#define SB_LATENCY_BUCKETS 16

typedef _Atomic uint64_t sb_counter;

typedef struct sb_loop_stats {
    sb_counter connections_active;
    sb_counter connections_total;
    sb_counter connections_rejected;                    /* over http.max_connections */
    sb_counter requests_by_class[6];                    /* index 1..5 = 1xx..5xx */
    sb_counter latency_buckets[SB_LATENCY_BUCKETS + 1]; /* cumulative on output; +Inf last */
    sb_counter latency_sum_ns;
    sb_counter tls_handshakes_ok;
    sb_counter tls_handshakes_failed;
    sb_counter tls_resumed;
    sb_counter bytes_in;
    sb_counter bytes_out;
    sb_counter protocol_errors; /* requests refused by the parser (4xx before routing) */
    sb_counter timeouts;
    sb_counter ws_active;          /* WebSockets open now */
    sb_counter ws_total;           /* upgrades accepted */
    sb_counter ws_messages_in;     /* complete messages received */
    sb_counter ws_messages_out;    /* messages queued by sb_ws_send */
    sb_counter ws_protocol_errors; /* closed by us with 1002, 1007 or 1009 */
    sb_counter ws_slow_closes;     /* closed with 4008: send queue full */
} __attribute__((aligned(64))) sb_loop_stats;

/* Single-writer increments: the owning loop is the only thread that calls these. */
static inline void sb_stat_add(sb_counter *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

static inline void sb_stat_sub(sb_counter *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) - n,
                          memory_order_relaxed);
}

/* Records one finished request: status and duration. */
void sb_stats_request(sb_loop_stats *s, int status, uint64_t duration_ns);

/* More metric families from outside the loops (the webhook dispatcher): fn appends its
 * Prometheus text to out; called from any loop thread (under a lock shared with add and
 * remove), so it must read shared state atomically. At most 8 sources; add returns 0 or
 * SB_EAGAIN; once remove returns, fn is not running and will not be called again. */
typedef int (*sb_metrics_source_fn)(sb_buf *out, void *ud);
int sb_metrics_add_source(sb_metrics_source_fn fn, void *ud);
void sb_metrics_remove_source(sb_metrics_source_fn fn, void *ud);

/* Appends the Prometheus text for the sum of n loops' stats. */
int sb_metrics_render(sb_buf *out, sb_loop_stats *const *loops, int n, uint64_t start_time_s);

#endif
