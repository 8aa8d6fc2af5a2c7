/* The throughput receiver of bench/webhooks.bench.sh: one thread, epoll, HTTP/1.1 keep-alive.
 * It verifies EVERY delivery's Standard Webhooks v1 signature (OpenSSL HMAC-SHA256 over
 * "id.timestamp.body", compared with each "v1,<base64>" of webhook-signature), counts distinct
 * webhook-ids, and records per delivery the time from the envelope's created_at to its arrival.
 * It answers 204 (400 when a signature does not verify or created_at is missing).
 *
 * Why a C receiver: the node receiver (bench/webhook-receiver.mjs) costs ~40 us of CPU per
 * delivery, so on its one core it tops out near 20-25k deliveries/s, below what a fast sender
 * can do: it would bound both senders and hide any ratio above ~1.3. This one costs a few us.
 * The node receiver still runs the correctness pass (every signature also checked with the npm
 * standardwebhooks library, every body parsed as JSON).
 *
 *   POST /hook        a delivery
 *   PUT  /config      {"secret":"whsec_..."}: the secret to verify with; resets the counters
 *   GET  /stats       {count, distinct, bad, first_ms, last_ms, min_created_ms, p50_ms, p99_ms,
 * max_ms} GET  /healthz
 *
 * It also speaks HTTP/2 with prior knowledge (h2c, RFC 9113 §3.3): a connection that starts
 * with the 24-byte preface "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" is handed to an nghttp2 server
 * session; each request is rebuilt as the HTTP/1.1 path sees it (header lines, body) and goes
 * through the same handlers, so the checks, counters and /stats are shared. The answers of
 * all streams completed by one read leave in one write.
 *
 * Bench tool only (not part of the server): requests come from the two senders under test and
 * the bench script; a request it cannot parse closes its connection.
 *
 * Usage: webhook_receiver PORT
 * Build: cc -O2 -o webhook_receiver bench/webhook_receiver.c -lcrypto -lnghttp2
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CONN_BUF   (256 * 1024) /* one request (headers + body) must fit */
#define MAX_EVENTS 256
#define MAX_CONNS  4096

typedef struct conn {
    int fd;
    nghttp2_session *h2; /* h2c once the preface was seen */
    size_t len;
    char buf[CONN_BUF];
} conn;

static unsigned char key[256];
static int keylen = -1;

/* stats */
static uint64_t count, bad;
static int64_t first_ms, last_ms, min_created;
static int64_t *lat;
static size_t nlat, caplat;
static char **ids; /* open addressing set of webhook-ids */
static size_t idcap, nids;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void reset(void)
{
    count = bad = 0;
    first_ms = last_ms = 0;
    min_created = INT64_MAX;
    nlat = 0;
    for (size_t i = 0; i < idcap; i++) {
        free(ids[i]);
        ids[i] = NULL;
    }
    nids = 0;
}

static uint64_t hash(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static void id_add(const char *s, size_t n);

static void id_grow(void)
{
    size_t oldcap = idcap;
    char **old = ids;
    idcap = idcap ? idcap * 2 : 65536;
    ids = calloc(idcap, sizeof *ids);
    if (!ids)
        abort();
    nids = 0;
    for (size_t i = 0; i < oldcap; i++)
        if (old[i]) {
            id_add(old[i], strlen(old[i]));
            free(old[i]);
        }
    free(old);
}

static void id_add(const char *s, size_t n)
{
    if ((nids + 1) * 2 > idcap)
        id_grow();
    size_t i = hash(s, n) & (idcap - 1);
    while (ids[i]) {
        if (strlen(ids[i]) == n && memcmp(ids[i], s, n) == 0)
            return;
        i = (i + 1) & (idcap - 1);
    }
    ids[i] = strndup(s, n);
    if (!ids[i])
        abort();
    nids++;
}

static void lat_add(int64_t v)
{
    if (nlat == caplat) {
        caplat = caplat ? caplat * 2 : 65536;
        lat = realloc(lat, caplat * sizeof *lat);
        if (!lat)
            abort();
    }
    lat[nlat++] = v;
}

static int cmp64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* "2026-11-27T10:05:33.123Z" (fraction optional) → ms since the epoch, -1 if malformed */
static int64_t parse_rfc3339(const char *s, size_t n)
{
    struct tm tm = {0};
    if (n < 20 || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':')
        return -1;
    tm.tm_year = atoi(s) - 1900;
    tm.tm_mon = atoi(s + 5) - 1;
    tm.tm_mday = atoi(s + 8);
    tm.tm_hour = atoi(s + 11);
    tm.tm_min = atoi(s + 14);
    tm.tm_sec = atoi(s + 17);
    int64_t ms = 0;
    size_t i = 19;
    if (s[i] == '.') {
        int digits = 0;
        for (i++; i < n && s[i] >= '0' && s[i] <= '9'; i++, digits++)
            if (digits < 3)
                ms = ms * 10 + (s[i] - '0');
        for (; digits < 3; digits++)
            ms *= 10;
    }
    if (i >= n || s[i] != 'Z')
        return -1;
    return (int64_t)timegm(&tm) * 1000 + ms;
}

static const char *find(const char *h, size_t hn, const char *needle)
{
    return memmem(h, hn, needle, strlen(needle));
}

static bool verify(const char *id, size_t idn, const char *ts, size_t tsn, const char *sig,
                   size_t sign, const char *body, size_t bn)
{
    if (keylen < 0 || idn == 0 || tsn == 0 || idn > 200 || tsn > 30)
        return false;
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    /* id "." ts "." body, without a copy: three updates on one context */
    static EVP_MAC *m;
    static EVP_MAC_CTX *mc;
    if (!m) {
        m = EVP_MAC_fetch(NULL, "HMAC", NULL);
        if (!m)
            abort();
    }
    if (!mc) {
        OSSL_PARAM p[] = {OSSL_PARAM_construct_utf8_string("digest", "SHA256", 0),
                          OSSL_PARAM_construct_end()};
        mc = EVP_MAC_CTX_new(m);
        if (!mc || !EVP_MAC_CTX_set_params(mc, p))
            abort();
    }
    size_t outl = 0;
    if (!EVP_MAC_init(mc, key, (size_t)keylen, NULL) ||
        !EVP_MAC_update(mc, (const unsigned char *)id, idn) ||
        !EVP_MAC_update(mc, (const unsigned char *)".", 1) ||
        !EVP_MAC_update(mc, (const unsigned char *)ts, tsn) ||
        !EVP_MAC_update(mc, (const unsigned char *)".", 1) ||
        !EVP_MAC_update(mc, (const unsigned char *)body, bn) ||
        !EVP_MAC_final(mc, mac, &outl, sizeof mac))
        return false;
    maclen = (unsigned int)outl;
    char want[64];
    int wl = EVP_EncodeBlock((unsigned char *)want, mac, (int)maclen);
    /* space-separated "v1,<b64>" entries */
    size_t i = 0;
    while (i < sign) {
        size_t j = i;
        while (j < sign && sig[j] != ' ')
            j++;
        if (j - i == (size_t)wl + 3 && memcmp(sig + i, "v1,", 3) == 0 &&
            memcmp(sig + i + 3, want, (size_t)wl) == 0)
            return true;
        i = j + 1;
    }
    return false;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1; /* the bench's answers are tiny: a full socket buffer means a dead peer */
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Where answer() goes for an h2c stream (fd < 0): the handlers are shared with HTTP/1.1. */
typedef struct h2answer {
    int status;
    const char *ctype;
    char body[1024];
    size_t bn;
} h2answer;
static h2answer *capture;

static int answer(int fd, int status, const char *ctype, const char *body, size_t bn)
{
    if (fd < 0) {
        capture->status = status;
        capture->ctype = ctype;
        capture->bn = bn < sizeof capture->body ? bn : sizeof capture->body;
        memcpy(capture->body, body, capture->bn);
        return 0;
    }
    char h[256];
    const char *reason = status == 200 ? "OK" : status == 204 ? "No Content" : "Bad Request";
    int hl;
    if (status == 204)
        hl = snprintf(h, sizeof h, "HTTP/1.1 204 No Content\r\n\r\n");
    else
        hl = snprintf(h, sizeof h,
                      "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n\r\n", status,
                      reason, ctype, bn);
    if (write_all(fd, h, (size_t)hl))
        return -1;
    return bn ? write_all(fd, body, bn) : 0;
}

static int stats(int fd)
{
    static char out[1024];
    int64_t p50 = 0, p99 = 0, max = 0;
    if (nlat) {
        qsort(lat, nlat, sizeof *lat, cmp64);
        size_t i50 = (size_t)(0.5 * (double)nlat), i99 = (size_t)(0.99 * (double)nlat);
        p50 = lat[i50 < nlat ? i50 : nlat - 1];
        p99 = lat[i99 < nlat ? i99 : nlat - 1];
        max = lat[nlat - 1];
    }
    int n =
        snprintf(out, sizeof out,
                 "{\"count\":%llu,\"distinct\":%zu,\"bad\":%llu,\"first_ms\":%lld,\"last_ms\":%lld,"
                 "\"min_created_ms\":%lld,\"p50_ms\":%lld,\"p99_ms\":%lld,\"max_ms\":%lld,"
                 "\"lib_checked\":0}",
                 (unsigned long long)count, nids, (unsigned long long)bad, (long long)first_ms,
                 (long long)last_ms, (long long)(min_created == INT64_MAX ? 0 : min_created),
                 (long long)p50, (long long)p99, (long long)max);
    return answer(fd, 200, "application/json", out, (size_t)n);
}

static int configure(int fd, const char *body, size_t bn)
{
    const char *s = find(body, bn, "whsec_");
    if (!s)
        return answer(fd, 400, "application/json", "{}", 2);
    s += 6;
    size_t n = 0;
    while (s + n < body + bn && s[n] != '"')
        n++;
    unsigned char tmp[sizeof key + 4];
    if (n == 0 || n % 4 || n / 4 * 3 > sizeof tmp)
        return answer(fd, 400, "application/json", "{}", 2);
    int l = EVP_DecodeBlock(tmp, (const unsigned char *)s, (int)n);
    if (l < 0)
        return answer(fd, 400, "application/json", "{}", 2);
    l -= (n >= 1 && s[n - 1] == '=') + (n >= 2 && s[n - 2] == '=');
    memcpy(key, tmp, (size_t)l);
    keylen = l;
    reset();
    return answer(fd, 200, "application/json", "{}", 2);
}

static int hook(int fd, const char *hdr, size_t hn, const char *body, size_t bn)
{
    int64_t now = now_ms();
    const char *v[3] = {NULL, NULL, NULL};
    size_t vn[3] = {0, 0, 0};
    static const char *const names[3] = {"webhook-id:", "webhook-timestamp:", "webhook-signature:"};
    for (const char *p = hdr; p < hdr + hn;) {
        const char *eol = memmem(p, (size_t)(hdr + hn - p), "\r\n", 2);
        if (!eol)
            eol = hdr + hn;
        for (int k = 0; k < 3; k++) {
            size_t l = strlen(names[k]);
            if ((size_t)(eol - p) > l && strncasecmp(p, names[k], l) == 0) {
                const char *a = p + l;
                while (a < eol && *a == ' ')
                    a++;
                v[k] = a;
                vn[k] = (size_t)(eol - a);
            }
        }
        p = eol + 2;
    }
    bool ok = v[0] && v[1] && v[2] && verify(v[0], vn[0], v[1], vn[1], v[2], vn[2], body, bn);
    int64_t created = -1;
    if (ok) {
        const char *c = find(body, bn, "\"created_at\":\"");
        if (c) {
            c += 14;
            created = parse_rfc3339(c, (size_t)(body + bn - c));
        }
        ok = created >= 0 && bn >= 2 && body[0] == '{' && body[bn - 1] == '}';
    }
    if (!ok) {
        bad++;
        return answer(fd, 400, "text/plain", "", 0);
    }
    count++;
    id_add(v[0], vn[0]);
    lat_add(now - created);
    if (!first_ms)
        first_ms = now;
    last_ms = now;
    if (created < min_created)
        min_created = created;
    return answer(fd, 204, NULL, NULL, 0);
}

/* Handles every complete request in c->buf; -1 closes the connection. */
static int serve(conn *c)
{
    size_t off = 0;
    for (;;) {
        char *start = c->buf + off;
        size_t avail = c->len - off;
        char *end = memmem(start, avail, "\r\n\r\n", 4);
        if (!end)
            break;
        size_t hlen = (size_t)(end - start) + 4;
        size_t clen = 0;
        const char *cl = NULL;
        for (char *p = start; p < end;) {
            char *eol = memmem(p, (size_t)(end - p) + 2, "\r\n", 2);
            if (!eol)
                break;
            if (eol - p > 15 && strncasecmp(p, "content-length:", 15) == 0)
                cl = p + 15;
            p = eol + 2;
        }
        if (cl)
            clen = strtoul(cl, NULL, 10);
        if (hlen + clen > CONN_BUF)
            return -1;
        if (avail < hlen + clen)
            break;
        char *body = start + hlen;
        int rc;
        if (strncmp(start, "POST /hook ", 11) == 0)
            rc = hook(c->fd, start, hlen, body, clen);
        else if (strncmp(start, "PUT /config ", 12) == 0)
            rc = configure(c->fd, body, clen);
        else if (strncmp(start, "GET /stats ", 11) == 0)
            rc = stats(c->fd);
        else if (strncmp(start, "GET /healthz ", 13) == 0)
            rc = answer(c->fd, 200, "text/plain", "ok", 2);
        else
            rc = answer(c->fd, 400, "text/plain", "", 0);
        if (rc)
            return -1;
        off += hlen + clen;
    }
    if (off) {
        memmove(c->buf, c->buf + off, c->len - off);
        c->len -= off;
    }
    return 0;
}

/* ---- h2c ---- */

static const char PREFACE[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

typedef struct h2stream {
    char method[8];
    char path[64];
    size_t hn;
    char hdr[4096]; /* "name: value\r\n" lines, as hook() reads them */
    char *body;
    size_t bn, bcap;
    size_t sent;
    h2answer ans;
} h2stream;

static int h2_begin(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    (void)ud;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    h2stream *st = calloc(1, sizeof *st);
    if (!st)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    nghttp2_session_set_stream_user_data(s, f->hd.stream_id, st);
    return 0;
}

static int h2_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nl,
                     const uint8_t *value, size_t vl, uint8_t flags, void *ud)
{
    (void)flags;
    (void)ud;
    h2stream *st = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
    if (!st)
        return 0;
    if (nl == 7 && memcmp(name, ":method", 7) == 0)
        snprintf(st->method, sizeof st->method, "%.*s", (int)vl, (const char *)value);
    else if (nl == 5 && memcmp(name, ":path", 5) == 0)
        snprintf(st->path, sizeof st->path, "%.*s", (int)vl, (const char *)value);
    else if (name[0] != ':' && st->hn + nl + vl + 4 <= sizeof st->hdr) {
        memcpy(st->hdr + st->hn, name, nl);
        st->hn += nl;
        memcpy(st->hdr + st->hn, ": ", 2);
        st->hn += 2;
        memcpy(st->hdr + st->hn, value, vl);
        st->hn += vl;
        memcpy(st->hdr + st->hn, "\r\n", 2);
        st->hn += 2;
    }
    return 0;
}

static int h2_data(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data, size_t len,
                   void *ud)
{
    (void)flags;
    (void)ud;
    h2stream *st = nghttp2_session_get_stream_user_data(s, id);
    if (!st)
        return 0;
    if (st->bn + len > CONN_BUF)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    if (st->bn + len > st->bcap) {
        size_t cap = st->bcap ? st->bcap : 1024;
        while (cap < st->bn + len)
            cap *= 2;
        char *p = realloc(st->body, cap);
        if (!p)
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        st->body = p;
        st->bcap = cap;
    }
    memcpy(st->body + st->bn, data, len);
    st->bn += len;
    return 0;
}

static ssize_t h2_read_answer(nghttp2_session *s, int32_t id, uint8_t *buf, size_t len,
                              uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    (void)s;
    (void)id;
    (void)ud;
    h2stream *st = src->ptr;
    size_t n = st->ans.bn - st->sent;
    if (n > len)
        n = len;
    memcpy(buf, st->ans.body + st->sent, n);
    st->sent += n;
    if (st->sent == st->ans.bn)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

/* A complete request on stream st: the HTTP/1.1 handlers, answer captured. */
static int h2_request(nghttp2_session *s, int32_t id, h2stream *st)
{
    capture = &st->ans;
    const char *body = st->body ? st->body : "";
    if (strcmp(st->method, "POST") == 0 && strcmp(st->path, "/hook") == 0)
        hook(-1, st->hdr, st->hn, body, st->bn);
    else if (strcmp(st->method, "PUT") == 0 && strcmp(st->path, "/config") == 0)
        configure(-1, body, st->bn);
    else if (strcmp(st->method, "GET") == 0 && strcmp(st->path, "/stats") == 0)
        stats(-1);
    else if (strcmp(st->method, "GET") == 0 && strcmp(st->path, "/healthz") == 0)
        answer(-1, 200, "text/plain", "ok", 2);
    else
        answer(-1, 400, "text/plain", "", 0);
    capture = NULL;
    char status[4], clen[24];
    snprintf(status, sizeof status, "%d", st->ans.status);
    int cl = snprintf(clen, sizeof clen, "%zu", st->ans.bn);
    nghttp2_nv nv[3] = {
        {(uint8_t *)":status", (uint8_t *)status, 7, 3, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)"content-length", (uint8_t *)clen, 14, (size_t)cl, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)"content-type", (uint8_t *)(st->ans.ctype ? st->ans.ctype : ""), 12,
         st->ans.ctype ? strlen(st->ans.ctype) : 0, NGHTTP2_NV_FLAG_NONE},
    };
    if (st->ans.status == 204)
        return nghttp2_submit_response(s, id, nv, 1, NULL);
    nghttp2_data_provider dp = {.source.ptr = st, .read_callback = h2_read_answer};
    return nghttp2_submit_response(s, id, nv, st->ans.ctype ? 3 : 2, st->ans.bn ? &dp : NULL);
}

static int h2_frame(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    (void)ud;
    if ((f->hd.type == NGHTTP2_HEADERS || f->hd.type == NGHTTP2_DATA) &&
        (f->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        h2stream *st = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
        if (st && h2_request(s, f->hd.stream_id, st) != 0)
            return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    return 0;
}

static int h2_close(nghttp2_session *s, int32_t id, uint32_t code, void *ud)
{
    (void)code;
    (void)ud;
    h2stream *st = nghttp2_session_get_stream_user_data(s, id);
    if (st) {
        nghttp2_session_set_stream_user_data(s, id, NULL);
        free(st->body);
        free(st);
    }
    return 0;
}

static nghttp2_session_callbacks *h2cb;

static int h2_start(conn *c)
{
    if (!h2cb) {
        if (nghttp2_session_callbacks_new(&h2cb) != 0)
            return -1;
        nghttp2_session_callbacks_set_on_begin_headers_callback(h2cb, h2_begin);
        nghttp2_session_callbacks_set_on_header_callback(h2cb, h2_header);
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(h2cb, h2_data);
        nghttp2_session_callbacks_set_on_frame_recv_callback(h2cb, h2_frame);
        nghttp2_session_callbacks_set_on_stream_close_callback(h2cb, h2_close);
    }
    if (nghttp2_session_server_new(&c->h2, h2cb, c) != 0)
        return -1;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 1024},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20},
    };
    if (nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, iv, 2) != 0 ||
        nghttp2_session_set_local_window_size(c->h2, NGHTTP2_FLAG_NONE, 0, 1 << 24) != 0)
        return -1;
    return 0;
}

/* Feeds c->buf to the session, then writes everything it has to send in one write. */
static int h2_serve(conn *c)
{
    ssize_t rv = nghttp2_session_mem_recv(c->h2, (const uint8_t *)c->buf, c->len);
    c->len = 0;
    if (rv < 0)
        return -1;
    static char out[CONN_BUF];
    size_t on = 0;
    for (;;) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(c->h2, &data);
        if (n < 0)
            return -1;
        if (n == 0)
            break;
        if (on + (size_t)n > sizeof out) {
            if (write_all(c->fd, out, on))
                return -1;
            on = 0;
        }
        if ((size_t)n > sizeof out) {
            if (write_all(c->fd, (const char *)data, (size_t)n))
                return -1;
            continue;
        }
        memcpy(out + on, data, (size_t)n);
        on += (size_t)n;
    }
    if (on && write_all(c->fd, out, on))
        return -1;
    return nghttp2_session_want_read(c->h2) || nghttp2_session_want_write(c->h2) ? 0 : -1;
}

/* HTTP/1.1, or h2c when the connection starts with the preface. */
static int serve_any(conn *c)
{
    if (!c->h2) {
        size_t n = c->len < sizeof PREFACE - 1 ? c->len : sizeof PREFACE - 1;
        if (memcmp(c->buf, PREFACE, n) != 0)
            return serve(c);
        if (n < sizeof PREFACE - 1)
            return 0; /* could still be the preface: wait for more */
        if (h2_start(c))
            return -1;
    }
    return h2_serve(c);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s PORT\n", argv[0]);
        return 2;
    }
    reset();
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (ls < 0 || bind(ls, (struct sockaddr *)&sa, sizeof sa) || listen(ls, 1024)) {
        perror("listen");
        return 1;
    }
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    struct epoll_event evs[MAX_EVENTS];
    int nconns = 0;
    for (;;) {
        int n = epoll_wait(ep, evs, MAX_EVENTS, -1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            perror("epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            conn *c = evs[i].data.ptr;
            if (!c) {
                int fd;
                while ((fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    conn *nc = nconns < MAX_CONNS ? malloc(sizeof *nc) : NULL;
                    if (!nc) {
                        close(fd);
                        continue;
                    }
                    nconns++;
                    nc->fd = fd;
                    nc->h2 = NULL;
                    nc->len = 0;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct epoll_event ce = {.events = EPOLLIN, .data.ptr = nc};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ce);
                }
                continue;
            }
            bool dead = false;
            for (;;) {
                size_t room = CONN_BUF - c->len;
                ssize_t r = read(c->fd, c->buf + c->len, room);
                if (r > 0) {
                    c->len += (size_t)r;
                    if (serve_any(c)) {
                        dead = true;
                        break;
                    }
                    if (c->len == CONN_BUF) {
                        dead = true;
                        break;
                    }
                    if ((size_t)r < room)
                        break; /* level-triggered: the rest, if any, wakes us again */
                    continue;
                }
                if (r < 0 && errno == EINTR)
                    continue;
                if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                    break;
                dead = true; /* EOF or error */
                break;
            }
            if (dead) {
                if (c->h2)
                    nghttp2_session_del(c->h2);
                close(c->fd);
                free(c);
                nconns--;
            }
        }
    }
}
