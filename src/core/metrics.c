#include "core/metrics.h"

#include <malloc.h>
#include <pthread.h>

#include "switchboard/error.h"

/* Upper bounds in nanoseconds of the latency histogram, from 50 µs to 10 s. */
static const uint64_t bucket_ns[SB_LATENCY_BUCKETS] = {
    50000,    100000,   250000,    500000,    1000000,   2500000,    5000000,    10000000,
    25000000, 50000000, 100000000, 250000000, 500000000, 1000000000, 2500000000, 10000000000,
};
static const char *bucket_le[SB_LATENCY_BUCKETS] = {
    "0.00005", "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01",
    "0.025",   "0.05",   "0.1",     "0.25",   "0.5",   "1",      "2.5",   "10",
};

void sb_stats_request(sb_loop_stats *s, int status, uint64_t duration_ns)
{
    int cls = status / 100;
    if (cls < 1 || cls > 5)
        cls = 5;
    sb_stat_add(&s->requests_by_class[cls], 1);
    int i = 0;
    while (i < SB_LATENCY_BUCKETS && duration_ns > bucket_ns[i])
        i++;
    sb_stat_add(&s->latency_buckets[i], 1);
    sb_stat_add(&s->latency_sum_ns, duration_ns);
}

static uint64_t sum(sb_loop_stats *const *loops, int n, size_t offset)
{
    uint64_t t = 0;
    for (int i = 0; i < n; i++)
        t += atomic_load_explicit((sb_counter *)((char *)loops[i] + offset), memory_order_relaxed);
    return t;
}

#define SUM(field) sum(loops, n, offsetof(sb_loop_stats, field))

static int metric(sb_buf *o, const char *name, const char *type, const char *help, uint64_t v)
{
    return sb_buf_appendf(o, "# HELP %s %s\n# TYPE %s %s\n%s %llu\n", name, help, name, type, name,
                          (unsigned long long)v);
}

/* ---- sources outside the loops ---- */
#define MAX_SOURCES 8
static pthread_mutex_t sources_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
    sb_metrics_source_fn fn;
    void *ud;
} sources[MAX_SOURCES];
static int nsources;

int sb_metrics_add_source(sb_metrics_source_fn fn, void *ud)
{
    int rc = SB_EAGAIN;
    pthread_mutex_lock(&sources_lock);
    if (nsources < MAX_SOURCES) {
        sources[nsources].fn = fn;
        sources[nsources++].ud = ud;
        rc = 0;
    }
    pthread_mutex_unlock(&sources_lock);
    return rc;
}

void sb_metrics_remove_source(sb_metrics_source_fn fn, void *ud)
{
    pthread_mutex_lock(&sources_lock);
    for (int i = 0; i < nsources; i++) {
        if (sources[i].fn == fn && sources[i].ud == ud) {
            for (int j = i + 1; j < nsources; j++)
                sources[j - 1] = sources[j];
            nsources--;
            break;
        }
    }
    pthread_mutex_unlock(&sources_lock);
}

static int render_sources(sb_buf *o)
{
    int rc = 0;
    pthread_mutex_lock(&sources_lock);
    for (int i = 0; i < nsources && rc == 0; i++)
        rc = sources[i].fn(o, sources[i].ud);
    pthread_mutex_unlock(&sources_lock);
    return rc;
}

int sb_metrics_render(sb_buf *o, sb_loop_stats *const *loops, int n, uint64_t start_time_s)
{
    int rc = 0;
    rc = rc ? rc
            : metric(o, "switchboard_connections_active", "gauge",
                     "Client connections currently open.", SUM(connections_active));
    rc = rc ? rc
            : metric(o, "switchboard_connections_total", "counter", "Client connections accepted.",
                     SUM(connections_total));
    rc = rc ? rc
            : metric(o, "switchboard_connections_rejected_total", "counter",
                     "Connections closed at accept because a loop was at http.max_connections.",
                     SUM(connections_rejected));
    rc = rc ? rc
            : sb_buf_append_str(o, "# HELP switchboard_http_requests_total HTTP requests "
                                   "answered, by status class.\n"
                                   "# TYPE switchboard_http_requests_total counter\n");
    for (int c = 1; c <= 5 && !rc; c++)
        rc = sb_buf_appendf(o, "switchboard_http_requests_total{code=\"%dxx\"} %llu\n", c,
                            (unsigned long long)SUM(requests_by_class[c]));
    rc = rc ? rc
            : sb_buf_append_str(o, "# HELP switchboard_http_request_duration_seconds Time from "
                                   "a complete request to its response being queued.\n"
                                   "# TYPE switchboard_http_request_duration_seconds histogram\n");
    uint64_t cum = 0;
    for (int i = 0; i < SB_LATENCY_BUCKETS && !rc; i++) {
        cum += SUM(latency_buckets[i]);
        rc = sb_buf_appendf(o, "switchboard_http_request_duration_seconds_bucket{le=\"%s\"} %llu\n",
                            bucket_le[i], (unsigned long long)cum);
    }
    cum += SUM(latency_buckets[SB_LATENCY_BUCKETS]);
    rc = rc ? rc
            : sb_buf_appendf(o,
                             "switchboard_http_request_duration_seconds_bucket{le=\"+Inf\"} %llu\n"
                             "switchboard_http_request_duration_seconds_sum %.9f\n"
                             "switchboard_http_request_duration_seconds_count %llu\n",
                             (unsigned long long)cum, (double)SUM(latency_sum_ns) / 1e9,
                             (unsigned long long)cum);
    rc = rc ? rc
            : sb_buf_appendf(o,
                             "# HELP switchboard_tls_handshakes_total TLS handshakes, by result.\n"
                             "# TYPE switchboard_tls_handshakes_total counter\n"
                             "switchboard_tls_handshakes_total{result=\"ok\"} %llu\n"
                             "switchboard_tls_handshakes_total{result=\"failed\"} %llu\n",
                             (unsigned long long)SUM(tls_handshakes_ok),
                             (unsigned long long)SUM(tls_handshakes_failed));
    rc = rc ? rc
            : metric(o, "switchboard_tls_resumed_total", "counter",
                     "TLS handshakes that resumed a session.", SUM(tls_resumed));
    rc = rc ? rc
            : metric(o, "switchboard_received_bytes_total", "counter",
                     "Bytes read from client connections (before TLS decryption).", SUM(bytes_in));
    rc = rc ? rc
            : metric(o, "switchboard_sent_bytes_total", "counter",
                     "Bytes written to client connections (after TLS encryption).", SUM(bytes_out));
    rc = rc ? rc
            : metric(o, "switchboard_http_protocol_errors_total", "counter",
                     "Requests refused as malformed or over a limit before routing.",
                     SUM(protocol_errors));
    rc = rc ? rc
            : metric(
                  o, "switchboard_timeouts_total", "counter",
                  "Connections closed by a handshake, header, body, idle, write, WebSocket Pong or "
                  "closing-handshake timeout.",
                  SUM(timeouts));
    rc = rc ? rc
            : metric(o, "switchboard_websockets_active", "gauge", "WebSocket connections open.",
                     SUM(ws_active));
    rc = rc ? rc
            : sb_buf_append_str(o, "# HELP switchboard_loop_websockets_active WebSocket "
                                   "connections served by each event loop (a participant's "
                                   "moves to its room's home loop).\n"
                                   "# TYPE switchboard_loop_websockets_active gauge\n");
    for (int i = 0; i < n && !rc; i++)
        rc = sb_buf_appendf(
            o, "switchboard_loop_websockets_active{loop=\"%d\"} %llu\n", i,
            (unsigned long long)atomic_load_explicit(&loops[i]->ws_active, memory_order_relaxed));
    rc = rc ? rc
            : metric(o, "switchboard_websockets_total", "counter", "WebSocket upgrades accepted.",
                     SUM(ws_total));
    rc = rc ? rc
            : metric(o, "switchboard_websocket_messages_received_total", "counter",
                     "Complete WebSocket messages received.", SUM(ws_messages_in));
    rc = rc ? rc
            : metric(o, "switchboard_websocket_messages_sent_total", "counter",
                     "WebSocket messages queued to clients.", SUM(ws_messages_out));
    rc = rc ? rc
            : metric(o, "switchboard_websocket_protocol_errors_total", "counter",
                     "WebSockets closed for a protocol error (1002, 1007, 1009).",
                     SUM(ws_protocol_errors));
    rc = rc ? rc
            : metric(o, "switchboard_websocket_slow_closes_total", "counter",
                     "WebSockets closed with 4008 because their send queue was full.",
                     SUM(ws_slow_closes));
    rc = rc ? rc
            : metric(o, "switchboard_start_time_seconds", "gauge",
                     "Unix time when the server started.", start_time_s);
    /* The allocator's own view: what is in use versus what it holds from the system (the
     * difference is fragmentation and free lists). A scrape walks the arenas once. */
    struct mallinfo2 mi = mallinfo2();
    rc = rc ? rc
            : metric(o, "switchboard_heap_in_use_bytes", "gauge",
                     "Heap bytes allocated and not freed (malloc).",
                     (uint64_t)(mi.uordblks + mi.hblkhd));
    rc = rc ? rc
            : metric(o, "switchboard_heap_held_bytes", "gauge",
                     "Heap bytes the allocator holds from the system (malloc arenas and mmaps).",
                     (uint64_t)(mi.arena + mi.hblkhd));
    rc = rc ? rc : render_sources(o);
    return rc;
}
