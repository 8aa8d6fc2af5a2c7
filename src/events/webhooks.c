#include "events/webhooks.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "api/app.h"
#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/str.h"
#include "events/outbox.h"
#include "events/webhook_policy.h"
#include "net/hclient.h"
#include "store/store.h"
#include "switchboard/error.h"

#define RELOAD_EVERY_MS    5000 /* endpoints re-read at least this often */
#define MAX_ENDPOINTS      4096 /* enabled endpoints the dispatcher tracks */
#define BUSY_BUCKETS       4096
#define ERROR_MAX          240
#define LATENCY_BUCKETS    12
#define EASY_POOL          128   /* idle curl easy handles kept */
#define RETENTION_BATCH    500   /* deliveries looked at per retention job */
#define RETENTION_EVERY_MS 60000 /* at most this long between passes */
#define HEADERS            6     /* request headers of an attempt */
#define SOCKS_MAX          65536 /* sockets (by fd) whose poll handle is kept between transfers */
#define ROOM_BUCKETS       256   /* per endpoint: rooms with stream items */
#define STREAM_WINDOW_MAX  4096  /* stream items (unwritten) per endpoint */
#define STREAM_READ_MAX    256   /* outbox rows read per query */
#define TYPE_MAX           64
#define ATTEMPT_POOL       256  /* freed attempts kept */
#define H2C_FLUSH_EVERY    8    /* h2c requests written together while a batch is started */
#define FLUSH_BATCH        1024 /* finished attempts that start a write at once */
#define FLUSH_DELAY_MS     5    /* else the longest a finished attempt waits for its write */

static const uint64_t lat_bound_ms[LATENCY_BUCKETS] = {1,   5,   10,   25,   50,    100,
                                                       250, 500, 1000, 2500, 10000, 30000};
static const char *const lat_le[LATENCY_BUCKETS] = {
    "0.001", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "10", "30"};

enum outcome { OUT_DELIVERED, OUT_RETRY, OUT_DEAD, OUT_GONE, OUT_COUNT };
static const char *const outcome_name[OUT_COUNT] = {"delivered", "retry", "dead", "gone"};

typedef struct endpoint endpoint;
typedef struct attempt attempt;
typedef struct roomq roomq;

/* What only a running request needs (~3.5 KB: the header lines, sb_hclient's request, curl's
 * error buffer), taken from a pool when it starts and given back when it ends, so that the
 * attempts waiting in a stream window or for their write stay small (~1 KB). */
typedef struct reqpart {
    struct reqpart *next; /* the free pool */
    /* The request headers: curl_slist nodes and lines owned by the attempt (the struct is
     * public and curl only reads the list), so a request allocates nothing for them. */
    struct curl_slist headers[HEADERS];
    char h_id[SB_ID_MAX + 16];
    char h_ts[48];
    char h_sig[2 * SB_WEBHOOK_SIG_MAX + 32];
    char errbuf[CURL_ERROR_SIZE];
    /* plain http:// targets go through sb_hclient, not curl: the same header lines, CRLF */
    sb_hclient_req hreq;
    char hlines[sizeof(char[SB_ID_MAX + 16]) + 48 + 2 * SB_WEBHOOK_SIG_MAX + 32 + 128];
} reqpart;

/* The stream's per-room state for one endpoint: exists while the room has stream items not
 * yet written. At most one is started (head); later ones wait in seq order. Once the head
 * has to be retried, the room is "spilled": its later events go to the table as blocked
 * pending rows (parks), and the table's per-room chain takes over. */
struct roomq {
    roomq *hnext;
    roomq *rnext; /* ready list: head free and something waiting */
    bool in_ready;
    bool spilled;
    attempt *head;
    attempt *wait_head, *wait_tail;
    int items; /* stream items of the room not yet written */
    char name[];
};

struct endpoint {
    endpoint *next;
    char id[SB_ID_MAX];
    char project[SB_ID_MAX];
    char *url;
    int64_t updated_at;
    sb_webhook_signer *signer;     /* the secret, keyed once */
    sb_webhook_signer *old_signer; /* the previous secret during a rotation's overlap, or NULL */
    int64_t old_until;
    bool live;          /* enabled and present at the last reload */
    bool gone;          /* answered 410: not live until its row changes */
    bool seen;          /* mark for the reload sweep */
    int refs;           /* attempts that point here */
    int inflight;       /* HTTP requests running */
    int busy;           /* attempts not yet written (in flight or awaiting the flush) */
    int failures;       /* consecutive */
    int64_t open_until; /* breaker: 0 closed; > now open; <= now half-open */
    bool probing;
    /* The due scan's resume point: the (next_at, rowid) of the last delivery it started.
     * Every delivery before it is busy or was not due/unblocked at that scan; only a commit
     * (an attempt batch, parks included, or an API change) can make one due, and each
     * clears it (wm_clear). Without it, every refill stepped over all busy deliveries
     * again (in flight + awaiting their write, ~50 rows per 2 new ones in the bench). */
    bool wm;
    int64_t wm_next_at, wm_rowid;

    int64_t rowid;
    bool h2c;     /* http:// receiver spoken to in HTTP/2 with prior knowledge */
    char **types; /* event filter (NULL = every type) */
    int ntypes;
    /* The stream: events past the cursor are read from the outbox and sent without a row;
     * a row is written once an attempt has finished (delivered, or failed: the retry path
     * takes over) or when the event must wait behind a room whose chain is in the table.
     * cursor_seq (written with the rows) = the seq below which every event has its row or
     * needed none, so a restart resends only what was not yet written. */
    int64_t read_seq;         /* last event seq read */
    int64_t cursor_db;        /* cursor_seq as last loaded or written */
    attempt *s_head, *s_tail; /* stream items in seq order, until written */
    int s_items;
    bool s_caught_up;  /* the last read found the end of the outbox */
    bool mark;         /* flush(): counted */
    int64_t s_read_at; /* when it was read last */
    roomq *rooms[ROOM_BUCKETS];
    roomq *ready;
};

struct attempt {
    attempt *hnext; /* busy set chain */
    attempt *qnext; /* results queue; the free pool */
    sb_webhooks *w;
    endpoint *ep;
    CURL *easy;
    char *body;
    size_t body_len;
    size_t resp_bytes;
    char delivery_id[SB_ID_MAX];
    char event_id[SB_ID_MAX];
    char room[SB_WEBHOOKS_ROOM_MAX + 1]; /* "" when the event has none */
    char type[TYPE_MAX];
    /* stream items (no row yet) */
    bool stream;
    bool park;     /* to be written as a blocked pending row, not sent */
    bool flushing; /* in the running flush job */
    int64_t seq;
    attempt *snext, *sprev; /* endpoint's stream list */
    attempt *wnext;         /* room's waiting list */
    roomq *rq;
    int64_t rowid;  /* of the delivery row */
    int attempt_no; /* total, 1-based */
    int round_no;   /* within the schedule round, 1-based */
    int64_t at_ms;
    uint64_t t0_ns;
    int64_t retry_after_ms;
    /* result */
    int status;
    int64_t duration_ms;
    enum outcome outcome;
    int64_t next_at;
    /* Up to here attempt_new zeroes; the buffers below are written before they are read
     * (the two messages get their NUL there). */
    char refused[ERROR_MAX];
    char error[ERROR_MAX];
    reqpart *rp; /* while its request is being built or runs */
};

typedef struct posted {
    struct posted *next;
    void (*fn)(void *);
    void *arg;
} posted;

/* One per socket curl opened, kept from its first transfer until curl closes it (the close
 * callback): curl says CURL_POLL_REMOVE after every transfer on a kept-alive connection and
 * asks again for the next one, and a fresh uv_poll_t per request cost uv_poll_init (ioctl,
 * two epoll_ctl) plus an epoll_ctl DEL/ADD/MOD each time (measured: ~12% of the CPU per
 * delivery). Between transfers the poll stays started ("idle"); if the idle socket wakes
 * (the receiver closed it), it is stopped until curl uses or closes it. */
typedef struct sockctx {
    uv_poll_t poll;
    curl_socket_t fd;
    int events; /* the uv_poll events started: an unchanged set costs no epoll_ctl */
    bool idle;  /* curl does not watch it now (between transfers) */
    bool kept;  /* in w->socks: closed by close_socket, not on CURL_POLL_REMOVE */
    sb_webhooks *w;
} sockctx;

struct sb_webhooks {
    sb_app *app;
    sb_store *store;
    sqlite3 *db; /* reader */
    const sb_config *cfg;
    int64_t schedule[SB_WEBHOOK_SCHEDULE_MAX];
    int nschedule;
    bool allow_private;
    uint64_t rng;

    pthread_t thread;
    bool thread_started;
    uv_loop_t loop;
    uv_async_t async;
    uv_timer_t curl_timer;
    uv_timer_t due_timer;
    uv_timer_t flush_timer;
    uv_idle_t idle;
    bool idle_on;
    CURLM *multi;
    sb_hclient *hc;  /* http:// targets (libcurl costs ~20 us of CPU per request, this ~6) */
    sockctx **socks; /* by fd, < nsocks */
    size_t nsocks;

    pthread_mutex_t mq_lock; /* posted completions */
    posted *mq_head, *mq_tail;
    atomic_bool stop_requested;
    atomic_bool wake_requested;
    _Atomic uint64_t changed_gen;
    uint64_t loaded_gen;
    int64_t loaded_at;
    /* sb_event_emitted_total at the last commit that woke the dispatcher (writer thread
     * only), and that wake's note for pump(): the events of that commit are readable now.
     * (Not the total pump saw: an event is counted when it is emitted, before its commit,
     * so a read racing the commit could miss it and no later wake would come.) */
    uint64_t hook_total;
    atomic_bool news;
    bool flush_running;
    bool retention_running;
    int64_t retention_at;     /* next retention pass */
    int64_t retention_cursor; /* rowid where the next pass starts */
    int jobs;                 /* store jobs whose completion has not run */
    bool stopping, closing;

    endpoint *endpoints;
    int nendpoints;
    CURL *easy_pool[EASY_POOL]; /* finished handles kept for reuse (curl_easy_reset) */
    attempt *pool;              /* freed attempts kept for reuse */
    int npool;
    reqpart *rpool; /* and request parts */
    int nrpool;
    int64_t created_ms; /* created_text's cache */
    bool created_ok;
    char created_txt[32];
    int neasy;
    attempt *busy[BUSY_BUCKETS];
    int nbusy;
    attempt *results_head, *results_tail;
    int nresults;

    /* metrics (read by any loop thread) */
    sb_counter outcomes[OUT_COUNT];
    sb_counter refused_total;
    sb_counter lat_buckets[LATENCY_BUCKETS + 1];
    sb_counter lat_sum_us;
    sb_counter in_flight;
    sb_counter breakers_open;
};

static void pump(sb_webhooks *w);
static void pump_soon(sb_webhooks *w);
static void free_types(char **types, int n);
static bool parse_types(const char *json, char ***out, int *n);
static void drop_waiting(sb_webhooks *w, endpoint *ep);
static void wm_clear(sb_webhooks *w);
static void maybe_finish_stop(sb_webhooks *w);

static uint32_t rnd32(sb_webhooks *w)
{
    uint64_t x = w->rng; /* xorshift64* */
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    w->rng = x;
    return (uint32_t)((x * 0x2545F4914F6CDD1Dull) >> 32);
}

bool sb_webhooks_private_allowed(const sb_config *cfg)
{
    return cfg->webhooks_allow_private_targets || cfg->dev;
}

/* ---- the busy set: deliveries in flight or awaiting their write ----------------------- */

/* FNV-1a of a string: the busy set (by delivery id) and the rooms (by name) hash with it. */
static uint32_t str_hash(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

static unsigned busy_slot(const char *id)
{
    return str_hash(id) % BUSY_BUCKETS;
}

static bool busy_has(sb_webhooks *w, const char *id)
{
    for (attempt *a = w->busy[busy_slot(id)]; a; a = a->hnext)
        if (strcmp(a->delivery_id, id) == 0)
            return true;
    return false;
}

static void busy_add(sb_webhooks *w, attempt *a)
{
    unsigned s = busy_slot(a->delivery_id);
    a->hnext = w->busy[s];
    w->busy[s] = a;
    w->nbusy++;
}

static void busy_remove(sb_webhooks *w, attempt *a)
{
    for (attempt **p = &w->busy[busy_slot(a->delivery_id)]; *p; p = &(*p)->hnext)
        if (*p == a) {
            *p = a->hnext;
            w->nbusy--;
            return;
        }
}

/* ---- the stream's bookkeeping: rooms and the per-endpoint list of unwritten items -------- */

static unsigned room_slot(const char *name)
{
    return str_hash(name) % ROOM_BUCKETS;
}

static roomq *room_find(endpoint *ep, const char *name)
{
    for (roomq *r = ep->rooms[room_slot(name)]; r; r = r->hnext)
        if (strcmp(r->name, name) == 0)
            return r;
    return NULL;
}

static roomq *room_add(endpoint *ep, const char *name)
{
    size_t len = strlen(name);
    roomq *r = sb_calloc(1, sizeof *r + len + 1);
    if (!r)
        return NULL;
    memcpy(r->name, name, len + 1);
    unsigned s = room_slot(name);
    r->hnext = ep->rooms[s];
    ep->rooms[s] = r;
    return r;
}

static void room_remove(endpoint *ep, roomq *r)
{
    for (roomq **p = &ep->rooms[room_slot(r->name)]; *p; p = &(*p)->hnext)
        if (*p == r) {
            *p = r->hnext;
            break;
        }
    if (r->in_ready)
        for (roomq **p = &ep->ready; *p; p = &(*p)->rnext)
            if (*p == r) {
                *p = r->rnext;
                break;
            }
    sb_free(r);
}

static void room_ready(endpoint *ep, roomq *r)
{
    if (r->in_ready || r->head || !r->wait_head)
        return;
    r->in_ready = true;
    r->rnext = ep->ready;
    ep->ready = r;
}

/* A stream item leaves the endpoint's books: it was written, or it is dropped (never
 * written: the cursor stayed below it, so the outbox has it for the next read). */
static void stream_forget(endpoint *ep, attempt *a)
{
    if (a->sprev)
        a->sprev->snext = a->snext;
    else
        ep->s_head = a->snext;
    if (a->snext)
        a->snext->sprev = a->sprev;
    else
        ep->s_tail = a->sprev;
    a->snext = a->sprev = NULL;
    ep->s_items--;
    roomq *r = a->rq;
    a->rq = NULL;
    if (r) {
        if (r->head == a)
            r->head = NULL;
        if (--r->items == 0)
            room_remove(ep, r);
    }
}

/* The cursor once the running flush commits: below every item not in it. */
static int64_t stream_cursor(const endpoint *ep)
{
    int64_t c = ep->read_seq;
    for (const attempt *a = ep->s_head; a; a = a->snext)
        if (!a->flushing && a->seq - 1 < c)
            c = a->seq - 1;
    return c;
}

/* ---- completions of store jobs, posted from the writer thread -------------------------- */

static void post_done(void *target, void (*fn)(void *), void *arg)
{
    sb_webhooks *w = target;
    posted *p = NULL;
    for (int i = 0; i < 100 && !(p = sb_malloc(sizeof *p)); i++)
        uv_sleep(10);
    if (!p) {
        sb_log(SB_LOG_ERROR, "webhooks: out of memory posting a completion", NULL);
        abort();
    }
    *p = (posted){NULL, fn, arg};
    pthread_mutex_lock(&w->mq_lock);
    if (w->mq_tail)
        w->mq_tail->next = p;
    else
        w->mq_head = p;
    w->mq_tail = p;
    pthread_mutex_unlock(&w->mq_lock);
    uv_async_send(&w->async);
}

/* Steps a bound statement that returns no rows (or whose rows are not read) and resets it. */
static int step_done(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return sb_store_errno(rc);
}

static bool submit(sb_webhooks *w, sb_store_job_fn job, sb_store_done_fn done, void *arg)
{
    int rc = sb_store_submit(w->store, job, done, arg, post_done, w);
    if (rc != 0)
        return false;
    w->jobs++;
    return true;
}

/* Runs on the writer thread after every commit: quick, no store calls. */
static void commit_hook(void *ud)
{
    sb_webhooks *w = ud;
    uint64_t total = sb_event_emitted_total();
    if (total != w->hook_total) {
        w->hook_total = total;
        atomic_store(&w->news, true);
        atomic_store(&w->wake_requested, true);
        uv_async_send(&w->async);
    }
}

void sb_webhooks_changed(sb_webhooks *w)
{
    if (!w)
        return;
    atomic_fetch_add(&w->changed_gen, 1);
    atomic_store(&w->wake_requested, true);
    uv_async_send(&w->async);
}

/* ---- endpoints ------------------------------------------------------------------------ */

/* A signer for a sealed secret (a webhooks row's secret column): v1 or v1a by its prefix. */
static int open_signer(sb_webhooks *w, const void *sealed, int len, sb_webhook_signer **out)
{
    *out = NULL;
    sb_buf b;
    sb_buf_init(&b, 4096);
    int rc = sealed && len > 0 ? sb__app_open(w->app, sealed, (size_t)len, &b) : SB_EINVAL;
    rc = rc ? rc : sb_buf_append(&b, "", 1);
    rc = rc ? rc : sb_webhook_signer_from_secret(b.base, out);
    if (b.base)
        OPENSSL_cleanse(b.base, b.cap);
    sb_buf_free(&b);
    return rc;
}

static endpoint *find_endpoint(sb_webhooks *w, const char *id)
{
    for (endpoint *e = w->endpoints; e; e = e->next)
        if (strcmp(e->id, id) == 0)
            return e;
    return NULL;
}

static void free_endpoint(sb_webhooks *w, endpoint *e)
{
    for (endpoint **p = &w->endpoints; *p; p = &(*p)->next)
        if (*p == e) {
            *p = e->next;
            break;
        }
    if (e->open_until)
        sb_stat_sub(&w->breakers_open, 1);
    w->nendpoints--;
    sb_webhook_signer_free(e->signer);
    sb_webhook_signer_free(e->old_signer);
    free_types(e->types, e->ntypes);
    for (int i = 0; i < ROOM_BUCKETS; i++)
        for (roomq *r = e->rooms[i], *next; r; r = next) {
            next = r->hnext;
            sb_free(r);
        }
    sb_free(e->url);
    sb_free(e);
}

static void free_types(char **types, int n)
{
    for (int i = 0; i < n; i++)
        sb_free(types[i]);
    sb_free(types);
}

/* The endpoint's `events` (a JSON array of types; [] = all) as a list; false without memory
 * or on a malformed value (it is validated when written). */
static bool parse_types(const char *json, char ***out, int *n)
{
    *out = NULL;
    *n = 0;
    json_t *arr = json ? json_loads(json, 0, NULL) : NULL;
    if (!json_is_array(arr)) {
        json_decref(arr);
        return false;
    }
    size_t len = json_array_size(arr);
    bool ok = true;
    if (len > 0) {
        *out = sb_calloc(len, sizeof **out);
        ok = *out != NULL;
        for (size_t i = 0; ok && i < len; i++) {
            const char *t = json_string_value(json_array_get(arr, i));
            (*out)[i] = t ? sb_strdup(t) : NULL;
            ok = (*out)[i] != NULL;
            *n = (int)i + 1;
        }
    }
    json_decref(arr);
    if (!ok) {
        free_types(*out, *n);
        *out = NULL;
        *n = 0;
    }
    return ok;
}

static bool type_wanted(const endpoint *e, const char *type)
{
    if (strcmp(type, "webhook.test") == 0) /* only ever sent through POST .../test */
        return false;
    if (e->ntypes == 0)
        return true;
    for (int i = 0; i < e->ntypes; i++)
        if (strcmp(e->types[i], type) == 0)
            return true;
    return false;
}

/* Whether endpoint id still has its row: 1, 0, or a negative SB_E*. */
static int webhook_exists(sqlite3 *db, const char *id)
{
    sqlite3_stmt *st = sb_store_stmt(db, "SELECT 1 FROM webhooks WHERE id = ?1");
    if (!st)
        return SB_EIO;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    int s = sqlite3_step(st);
    sqlite3_reset(st);
    return s == SQLITE_ROW ? 1 : s == SQLITE_DONE ? 0 : sb_store_errno(s);
}

static void reload_endpoints(sb_webhooks *w, int64_t now)
{
    sqlite3_stmt *st = sb_store_stmt(
        w->db, "SELECT id, project_id, url, secret, old_secret, old_secret_until, updated_at, "
               "rowid, events, cursor_seq, h2c FROM webhooks WHERE enabled = 1 ORDER BY id LIMIT "
               "?1");
    if (!st) {
        sb_log(SB_LOG_ERROR, "webhooks: cannot read endpoints", "reason", sqlite3_errmsg(w->db),
               NULL);
        return;
    }
    uint64_t gen = atomic_load(&w->changed_gen);
    for (endpoint *e = w->endpoints; e; e = e->next)
        e->seen = false;
    sqlite3_bind_int(st, 1, MAX_ENDPOINTS);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *id = (const char *)sqlite3_column_text(st, 0);
        endpoint *e = find_endpoint(w, id);
        int64_t upd = sqlite3_column_int64(st, 6);
        if (e && (e->live || e->gone) && e->updated_at == upd) {
            e->seen = true;
            continue;
        }
        bool fresh = !e;
        if (fresh) {
            e = sb_calloc(1, sizeof *e);
            if (!e)
                break;
            snprintf(e->id, sizeof e->id, "%s", id);
            snprintf(e->project, sizeof e->project, "%s", sqlite3_column_text(st, 1));
        }
        char *url = sb_strdup((const char *)sqlite3_column_text(st, 2));
        sb_webhook_signer *sg = NULL, *osg = NULL;
        int kl = open_signer(w, sqlite3_column_blob(st, 3), sqlite3_column_bytes(st, 3), &sg);
        int okl =
            sqlite3_column_type(st, 4) == SQLITE_NULL
                ? 0
                : open_signer(w, sqlite3_column_blob(st, 4), sqlite3_column_bytes(st, 4), &osg);
        char **types = NULL;
        int ntypes = 0;
        bool types_ok = parse_types((const char *)sqlite3_column_text(st, 8), &types, &ntypes);
        if (!url || kl < 0 || okl < 0 || !types_ok) {
            sb_log(SB_LOG_ERROR, "webhooks: cannot load an endpoint", "webhook_id", id, NULL);
            sb_free(url);
            free_types(types, ntypes);
            sb_webhook_signer_free(sg);
            sb_webhook_signer_free(osg);
            if (fresh)
                sb_free(e);
            else
                e->seen = false;
            continue;
        }
        sb_free(e->url);
        e->url = url;
        sb_webhook_signer_free(e->signer);
        sb_webhook_signer_free(e->old_signer);
        e->signer = sg;
        e->old_signer = osg;
        e->old_until = osg ? sqlite3_column_int64(st, 5) : 0;
        e->updated_at = upd;
        free_types(e->types, e->ntypes);
        e->types = types;
        e->ntypes = ntypes;
        e->rowid = sqlite3_column_int64(st, 7);
        e->h2c = sqlite3_column_int(st, 10) != 0;
        int64_t cursor = sqlite3_column_int64(st, 9);
        if (fresh || cursor > e->read_seq) /* new, or re-enabled: the API moved its cursor */
            e->read_seq = cursor;
        if (fresh || cursor > e->cursor_db)
            e->cursor_db = cursor;
        e->s_caught_up = false;
        e->live = e->seen = true;
        e->gone = false;
        if (fresh) {
            e->next = w->endpoints;
            w->endpoints = e;
            w->nendpoints++;
        }
    }
    sqlite3_reset(st);
    for (endpoint *e = w->endpoints, *next; e; e = next) {
        next = e->next;
        if (!e->seen) {
            e->live = false;
            /* Waiting stream items of a disabled endpoint wait for it to be enabled again;
             * a deleted one's are dropped (nothing would ever send them). */
            if (webhook_exists(w->db, e->id) == 0)
                drop_waiting(w, e);
            if (e->refs == 0)
                free_endpoint(w, e);
        }
    }
    w->loaded_gen = gen;
    w->loaded_at = now;
}

/* ---- per-room order: unblocking a room's next delivery ---------------------------------- */

/* Runs sql, an UPDATE of webhook_deliveries, with ?1 = webhook_id and (unless NULL) ?2 = room. */
static int unblock(sqlite3 *db, const char *sql, const char *webhook_id, const char *room)
{
    sqlite3_stmt *st = sb_store_stmt(db, sql);
    if (!st)
        return SB_EIO;
    sqlite3_bind_text(st, 1, webhook_id, -1, SQLITE_STATIC);
    if (room)
        sqlite3_bind_text(st, 2, room, -1, SQLITE_STATIC);
    return step_done(st);
}

bool sb_webhooks_delivery_seq(const char *id, int64_t *seq)
{
    if (strncmp(id, "dlv_", 4) != 0 || strlen(id) != 24)
        return false;
    int64_t v = 0;
    for (int i = 4; i < 24; i++) {
        int d = sb_hex_value((unsigned char)id[i]);
        if (d < 0 || (id[i] >= 'A' && id[i] <= 'F'))
            return false;
        if (i >= 12)
            v = v * 16 + d;
    }
    *seq = v;
    return true;
}

int sb_webhooks_unblock_room(sqlite3 *db, const char *webhook_id, const char *room)
{
    return unblock(
        db,
        "UPDATE webhook_deliveries SET blocked = 0 WHERE rowid = (SELECT p.rowid FROM "
        "webhook_deliveries p WHERE p.webhook_id = ?1 AND p.state = 'pending' AND p.room_name "
        "= ?2 ORDER BY p.event_seq LIMIT 1) AND blocked = 1 AND NOT EXISTS (SELECT 1 FROM "
        "webhook_deliveries q WHERE q.webhook_id = ?1 AND q.state = 'pending' AND q.blocked = "
        "0 AND q.room_name = ?2)",
        webhook_id, room);
}

/* After the room's unblocked delivery stopped being pending (at most one is unblocked per
 * room, so none is now): unblocks the next one. */
static int unblock_next(sqlite3 *db, const char *webhook_id, const char *room)
{
    return unblock(
        db,
        "UPDATE webhook_deliveries SET blocked = 0 WHERE rowid = (SELECT p.rowid FROM "
        "webhook_deliveries p WHERE p.webhook_id = ?1 AND p.state = 'pending' AND p.room_name "
        "= ?2 ORDER BY p.event_seq LIMIT 1) AND blocked = 1",
        webhook_id, room);
}

int sb_webhooks_unblock_all(sqlite3 *db, const char *webhook_id)
{
    return unblock(
        db,
        "UPDATE webhook_deliveries SET blocked = 0 WHERE webhook_id = ?1 AND state = "
        "'pending' AND blocked = 1 AND event_seq = (SELECT MIN(p.event_seq) FROM "
        "webhook_deliveries p WHERE p.webhook_id = ?1 AND p.state = 'pending' AND p.room_name "
        "= webhook_deliveries.room_name) AND NOT EXISTS (SELECT 1 FROM webhook_deliveries q "
        "WHERE q.webhook_id = ?1 AND q.state = 'pending' AND q.blocked = 0 AND q.room_name = "
        "webhook_deliveries.room_name)",
        webhook_id, NULL);
}

/* ---- results: one job writes a batch of finished attempts ------------------------------ */

typedef struct cursor_move {
    char id[SB_ID_MAX];
    int64_t seq;
} cursor_move;

typedef struct flush_job {
    sb_webhooks *w;
    attempt *head;
    int n;
    int ncursors;
    cursor_move cursors[]; /* endpoints whose stream items are in this job */
} flush_job;

/* The delivery state an attempt's outcome leaves (410 makes it dead too). */
static const char *const state_of[OUT_COUNT] = {"delivered", "pending", "dead", "dead"};

/* A failed attempt's entry in webhook_attempts (the successful one is its delivery row). */
static int log_attempt(sqlite3 *db, const attempt *a)
{
    sqlite3_stmt *st = sb_store_stmt(
        db, "INSERT OR REPLACE INTO webhook_attempts (delivery_id, attempt, at, status, "
            "duration_ms, outcome, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)");
    if (!st)
        return SB_EIO;
    sqlite3_bind_text(st, 1, a->delivery_id, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 2, a->attempt_no);
    sqlite3_bind_int64(st, 3, a->at_ms);
    if (a->status > 0)
        sqlite3_bind_int(st, 4, a->status);
    sqlite3_bind_int64(st, 5, a->duration_ms);
    sqlite3_bind_text(st, 6, outcome_name[a->outcome], -1, SQLITE_STATIC);
    if (a->error[0])
        sqlite3_bind_text(st, 7, a->error, -1, SQLITE_STATIC);
    return step_done(st);
}

static int write_attempt(sqlite3 *db, attempt *a)
{
    /* By rowid (the id confirms it is still the same row): the delivery first, and its
     * attempt only if it is still there (the endpoint may have been deleted meanwhile). */
    sqlite3_stmt *st = sb_store_stmt(
        db, "UPDATE webhook_deliveries SET attempts = MAX(attempts, ?2), round_attempts = ?3, "
            "state = ?4, next_at = ?5, last_status = ?6, last_error = ?7, updated_at = ?8, "
            "last_attempt_at = ?10, last_duration_ms = ?11 WHERE rowid = ?9 AND id = ?1 AND "
            "state = 'pending'");
    if (!st)
        return SB_EIO;
    sqlite3_bind_text(st, 1, a->delivery_id, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 2, a->attempt_no);
    sqlite3_bind_int(st, 3, a->round_no);
    sqlite3_bind_text(st, 4, state_of[a->outcome], -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, a->outcome == OUT_RETRY ? a->next_at : a->at_ms);
    if (a->status > 0)
        sqlite3_bind_int(st, 6, a->status);
    if (a->error[0])
        sqlite3_bind_text(st, 7, a->error, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 8, sb_time_ms());
    sqlite3_bind_int64(st, 9, a->rowid);
    sqlite3_bind_int64(st, 10, a->at_ms);
    sqlite3_bind_int64(st, 11, a->duration_ms);
    int rc = step_done(st);
    if (rc || sqlite3_changes(db) == 0)
        return rc;
    if (a->outcome == OUT_DELIVERED) /* the row's last_* columns are its log entry */
        return a->room[0] ? unblock_next(db, a->ep->id, a->room) : 0;
    rc = log_attempt(db, a);
    if (!rc && a->outcome != OUT_RETRY && a->room[0])
        rc = unblock_next(db, a->ep->id, a->room);
    return rc;
}

/* A stream item's first row: the finished attempt (its outcome and last_* columns, and its
 * webhook_attempts entry unless delivered), or a park (pending, blocked behind the room's
 * chain in the table). The caller checked that the endpoint still exists. */
static int write_stream(sqlite3 *db, attempt *a)
{
    if (!a->park && a->outcome == OUT_DELIVERED) { /* the delivered log (migration 8) */
        sqlite3_stmt *st =
            sb_store_stmt(db, "INSERT OR IGNORE INTO webhook_delivered (webhook_id, event_seq, at, "
                              "duration_ms, status) VALUES (?1, ?2, ?3, ?4, ?5)");
        if (!st)
            return SB_EIO;
        sqlite3_bind_text(st, 1, a->ep->id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, a->seq);
        sqlite3_bind_int64(st, 3, a->at_ms);
        sqlite3_bind_int64(st, 4, a->duration_ms);
        sqlite3_bind_int(st, 5, a->status);
        return step_done(st);
    }
    sqlite3_stmt *st = sb_store_stmt(
        db, "INSERT OR IGNORE INTO webhook_deliveries (id, webhook_id, project_id, event_seq, "
            "event_id, event_type, room_name, state, attempts, round_attempts, blocked, next_at, "
            "last_attempt_at, last_duration_ms, last_status, last_error, created_at, updated_at) "
            "VALUES (?1, ?2, ?16, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, "
            "?15)");
    if (!st)
        return SB_EIO;
    sqlite3_bind_text(st, 1, a->delivery_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, a->ep->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 16, a->ep->project, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, a->seq);
    sqlite3_bind_text(st, 4, a->event_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, a->type, -1, SQLITE_STATIC);
    if (a->room[0])
        sqlite3_bind_text(st, 6, a->room, -1, SQLITE_STATIC);
    int64_t now = sb_time_ms();
    if (a->park) {
        sqlite3_bind_text(st, 7, "pending", -1, SQLITE_STATIC);
        sqlite3_bind_int(st, 8, 0);
        sqlite3_bind_int(st, 9, 1);
        sqlite3_bind_int64(st, 10, now);
    } else {
        sqlite3_bind_text(st, 7, state_of[a->outcome], -1, SQLITE_STATIC);
        sqlite3_bind_int(st, 8, 1);
        sqlite3_bind_int(st, 9, 0);
        sqlite3_bind_int64(st, 10, a->outcome == OUT_RETRY ? a->next_at : a->at_ms);
        sqlite3_bind_int64(st, 11, a->at_ms);
        sqlite3_bind_int64(st, 12, a->duration_ms);
        if (a->status > 0)
            sqlite3_bind_int(st, 13, a->status);
        if (a->error[0])
            sqlite3_bind_text(st, 14, a->error, -1, SQLITE_STATIC);
    }
    sqlite3_bind_int64(st, 15, now);
    int rc = step_done(st);
    if (rc || sqlite3_changes(db) == 0)
        return rc;
    if (a->park) /* its room's chain may have emptied since it was read: then it is the head */
        return sb_webhooks_unblock_room(db, a->ep->id, a->room);
    return log_attempt(db, a); /* failed (delivered ones went to the log); attempt_no is 1 */
}

/* 410 Gone: the endpoint is disabled, once, with its event and an audit row. */
static int disable_endpoint(sqlite3 *db, const endpoint *ep)
{
    sqlite3_stmt *st = sb_store_stmt(db, "UPDATE webhooks SET enabled = 0, disabled_reason = "
                                         "'gone', updated_at = MAX(?2, updated_at + 1) WHERE "
                                         "id = ?1 AND enabled = 1");
    if (!st)
        return SB_EIO;
    sqlite3_bind_text(st, 1, ep->id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, sb_time_ms());
    int rc = step_done(st);
    if (rc || sqlite3_changes(db) == 0)
        return rc;
    json_t *obj = NULL;
    rc = sb_webhooks_endpoint_read(db, ep->id, ep->project, &obj);
    json_t *data = rc ? NULL : json_pack("{s:o}", "endpoint", obj);
    rc = rc      ? rc
         : !data ? SB_ENOMEM
                 : sb_event_emit(db, ep->project, "webhook.endpoint.disabled", NULL, data, NULL);
    sb_auth system = {.scopes = 0};
    snprintf(system.project_id, sizeof system.project_id, "%s", ep->project);
    snprintf(system.credential_id, sizeof system.credential_id, "system");
    rc = rc ? rc
            : sb_app_audit(db, &system, "webhook-delivery", "webhook.disable", "webhook", ep->id);
    return rc;
}

static int flush_run(sqlite3 *db, void *arg)
{
    flush_job *j = arg;
    const endpoint *checked = NULL; /* exists (one lookup per run of the same endpoint) */
    for (attempt *a = j->head; a; a = a->qnext) {
        if (a->stream && a->ep != checked) {
            int e = webhook_exists(db, a->ep->id);
            if (e < 0)
                return e;
            if (e == 0) /* deleted with its deliveries: nothing to record */
                continue;
            checked = a->ep;
        }
        int rc = a->stream ? write_stream(db, a) : write_attempt(db, a);
        if (!rc && !a->park && a->outcome == OUT_GONE)
            rc = disable_endpoint(db, a->ep);
        if (rc)
            return rc;
    }
    for (int i = 0; i < j->ncursors; i++) {
        sqlite3_stmt *st = sb_store_stmt(
            db, "UPDATE webhooks SET cursor_seq = ?2 WHERE id = ?1 AND cursor_seq < ?2");
        if (!st)
            return SB_EIO;
        sqlite3_bind_text(st, 1, j->cursors[i].id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, j->cursors[i].seq);
        int rc = step_done(st);
        if (rc)
            return rc;
    }
    return 0;
}

static void flush(sb_webhooks *w);
static void flush_soon(sb_webhooks *w);

/* Attempts come from a small free pool (a stream delivery takes one per event; zeroing a
 * fresh one by calloc showed in the profile). */
static attempt *attempt_new(sb_webhooks *w)
{
    attempt *a = w->pool;
    if (a) {
        w->pool = a->qnext;
        w->npool--;
    } else if (!(a = sb_malloc(sizeof *a))) {
        return NULL;
    }
    memset(a, 0, offsetof(attempt, refused));
    a->refused[0] = a->error[0] = '\0';
    a->rp = NULL;
    a->w = w;
    return a;
}

static reqpart *reqpart_get(sb_webhooks *w)
{
    reqpart *p = w->rpool;
    if (p) {
        w->rpool = p->next;
        w->nrpool--;
    } else if (!(p = sb_malloc(sizeof *p))) {
        return NULL;
    }
    p->errbuf[0] = '\0';
    return p;
}

/* Gives a's request part back (none is a no-op). */
static void reqpart_put(sb_webhooks *w, attempt *a)
{
    reqpart *p = a->rp;
    a->rp = NULL;
    if (!p)
        return;
    if (w->nrpool < ATTEMPT_POOL && !w->stopping) {
        p->next = w->rpool;
        w->rpool = p;
        w->nrpool++;
        return;
    }
    sb_free(p);
}

static void attempt_free(attempt *a)
{
    sb_webhooks *w = a->w;
    reqpart_put(w, a);
    sb_free(a->body);
    if (w->npool < ATTEMPT_POOL && !w->stopping) {
        a->qnext = w->pool;
        w->pool = a;
        w->npool++;
        return;
    }
    sb_free(a);
}

static void flush_done(void *arg, int rc)
{
    flush_job *j = arg;
    sb_webhooks *w = j->w;
    w->jobs--;
    w->flush_running = false;
    wm_clear(w);
    if (rc < 0) {
        /* Not written: the deliveries are still pending on disk and will be sent again. */
        sb_log(SB_LOG_ERROR, "webhooks: cannot record attempts", "reason", sb_strerror(rc), NULL);
    }
    for (int i = 0; i < j->ncursors && rc >= 0; i++) {
        endpoint *ep = find_endpoint(w, j->cursors[i].id);
        if (ep && j->cursors[i].seq > ep->cursor_db)
            ep->cursor_db = j->cursors[i].seq;
    }
    bool gone = false;
    for (attempt *a = j->head, *next; a; a = next) {
        next = a->qnext;
        if (a->stream) {
            a->flushing = false;
            stream_forget(a->ep, a);
            /* Not written: the stream reads the outbox again from the written cursor (what
             * was sent is sent again: at least once). */
            if (rc < 0 && a->seq <= a->ep->read_seq)
                a->ep->read_seq = a->ep->cursor_db;
        }
        busy_remove(w, a);
        a->ep->busy--;
        a->ep->refs--;
        if (a->outcome == OUT_GONE)
            gone = true;
        if (!a->ep->live && a->ep->refs == 0)
            free_endpoint(w, a->ep);
        attempt_free(a);
    }
    sb_free(j);
    if (gone)
        atomic_fetch_add(&w->changed_gen, 1);
    if (w->results_head)
        flush_soon(w);
    if (w->stopping) {
        maybe_finish_stop(w);
        return;
    }
    pump_soon(w);
}

static void on_flush_timer(uv_timer_t *t)
{
    flush(t->data);
}

/* Results are written in batches: one commit (and its WAL fsync) per FLUSH_BATCH finished
 * attempts, or after FLUSH_DELAY_MS, instead of one per few (measured: the commit was ~5 us
 * of CPU per delivery with the small batches of writing as soon as the last write ended).
 * At ~130k deliveries/s the delay is what starts a write (~650 results each); with a batch of
 * 256 it was one write per ~2 ms: h2c, 9 runs each, alternating builds: median 131.6k/s at
 * 6.5 us per delivery against 127.6k/s at 6.9 us, slowest run 113k against 91k. */
static void flush_soon(sb_webhooks *w)
{
    if (!w->results_head)
        return;
    if (w->nresults >= FLUSH_BATCH || w->stopping) {
        uv_timer_stop(&w->flush_timer);
        flush(w);
    } else if (!uv_is_active((uv_handle_t *)&w->flush_timer)) {
        uv_timer_start(&w->flush_timer, on_flush_timer, FLUSH_DELAY_MS, 0);
    }
}

static void flush(sb_webhooks *w)
{
    if (w->flush_running || !w->results_head)
        return;
    int neps = 0;
    for (attempt *a = w->results_head; a; a = a->qnext)
        if (a->stream) {
            a->flushing = true;
            if (!a->ep->mark) { /* counted once */
                a->ep->mark = true;
                neps++;
            }
        }
    flush_job *j = sb_malloc(sizeof *j + (size_t)neps * sizeof j->cursors[0]);
    if (j)
        j->ncursors = 0;
    for (attempt *a = w->results_head; a; a = a->qnext) {
        endpoint *ep = a->ep;
        if (!a->stream || !ep->mark)
            continue;
        ep->mark = false;
        int64_t c = stream_cursor(ep);
        if (j && c > ep->cursor_db) {
            snprintf(j->cursors[j->ncursors].id, SB_ID_MAX, "%s", ep->id);
            j->cursors[j->ncursors++].seq = c;
        }
    }
    if (!j) {
        for (attempt *a = w->results_head; a; a = a->qnext)
            a->flushing = false;
        return; /* the next completion tries again */
    }
    j->w = w;
    j->head = w->results_head;
    j->n = w->nresults;
    if (!submit(w, flush_run, flush_done, j)) {
        for (attempt *a = w->results_head; a; a = a->qnext)
            a->flushing = false;
        sb_free(j);
        return;
    }
    w->results_head = w->results_tail = NULL;
    w->nresults = 0;
    w->flush_running = true;
}

/* ---- curl glue -------------------------------------------------------------------------- */

static void on_sock_closed(uv_handle_t *h)
{
    sb_free(h->data);
}

static void check_done(sb_webhooks *w);

static void on_poll(uv_poll_t *h, int status, int events)
{
    sockctx *c = h->data;
    int flags = 0, running;
    if (c->idle) {
        /* an idle keep-alive connection woke (closed or data): curl checks it when it reuses
         * it; until then, no wake-ups */
        uv_poll_stop(&c->poll);
        c->events = 0;
        return;
    }
    if (status < 0)
        flags = CURL_CSELECT_ERR;
    else {
        if (events & UV_READABLE)
            flags |= CURL_CSELECT_IN;
        if (events & UV_WRITABLE)
            flags |= CURL_CSELECT_OUT;
    }
    curl_multi_socket_action(c->w->multi, c->fd, flags, &running);
    check_done(c->w);
}

static int socket_cb(CURL *easy, curl_socket_t s, int action, void *userp, void *socketp)
{
    (void)easy;
    sb_webhooks *w = userp;
    sockctx *c = socketp;
    if (action == CURL_POLL_REMOVE) {
        if (c) {
            curl_multi_assign(w->multi, s, NULL);
            if (c->kept) {
                c->idle = true; /* still started: the next transfer costs no syscall */
            } else {
                uv_poll_stop(&c->poll);
                uv_close((uv_handle_t *)&c->poll, on_sock_closed);
            }
        }
        return 0;
    }
    if (!c && s >= 0 && (size_t)s < w->nsocks && w->socks[s]) {
        c = w->socks[s];
        c->idle = false;
        curl_multi_assign(w->multi, s, c);
    }
    if (!c) {
        c = sb_calloc(1, sizeof *c);
        if (!c)
            return -1;
        c->fd = s;
        c->w = w;
        if (uv_poll_init_socket(&w->loop, &c->poll, s) != 0) {
            sb_free(c);
            return -1;
        }
        c->poll.data = c;
        curl_multi_assign(w->multi, s, c);
    }
    int ev = 0;
    if (action & CURL_POLL_IN)
        ev |= UV_READABLE;
    if (action & CURL_POLL_OUT)
        ev |= UV_WRITABLE;
    if (ev != c->events) {
        c->events = ev;
        uv_poll_start(&c->poll, ev, on_poll);
    }
    return 0;
}

static void on_curl_timer(uv_timer_t *t)
{
    sb_webhooks *w = t->data;
    int running;
    curl_multi_socket_action(w->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(w);
}

static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    sb_webhooks *w = userp;
    if (timeout_ms < 0)
        uv_timer_stop(&w->curl_timer);
    else
        uv_timer_start(&w->curl_timer, on_curl_timer, (uint64_t)timeout_ms, 0);
    return 0;
}

/* Sockets curl opens for requests (not its resolver's) get a kept poll handle, closed by
 * close_socket; without room for one, the socket is polled per transfer as before. */
static void keep_socket(sb_webhooks *w, curl_socket_t s)
{
    if (s < 0 || s >= SOCKS_MAX)
        return;
    if ((size_t)s >= w->nsocks) {
        size_t n = w->nsocks ? w->nsocks : 64;
        while (n <= (size_t)s)
            n *= 2;
        sockctx **t = sb_realloc(w->socks, n * sizeof *t);
        if (!t)
            return;
        memset(t + w->nsocks, 0, (n - w->nsocks) * sizeof *t);
        w->socks = t;
        w->nsocks = n;
    }
    if (w->socks[s]) { /* closed without close_socket: its fd number came back */
        uv_poll_stop(&w->socks[s]->poll);
        uv_close((uv_handle_t *)&w->socks[s]->poll, on_sock_closed);
        w->socks[s] = NULL;
    }
    sockctx *c = sb_calloc(1, sizeof *c);
    if (!c)
        return;
    c->fd = s;
    c->w = w;
    c->kept = c->idle = true;
    if (uv_poll_init_socket(&w->loop, &c->poll, s) != 0) {
        sb_free(c);
        return;
    }
    c->poll.data = c;
    w->socks[s] = c;
}

/* The SSRF guard: every address curl is about to connect to, after DNS. */
static curl_socket_t open_socket(void *clientp, curlsocktype purpose, struct curl_sockaddr *addr)
{
    attempt *a = clientp;
    (void)purpose;
    if (!a->w->allow_private) {
        const char *why = sb_webhook_addr_refused(&addr->addr);
        if (why) {
            char ip[INET6_ADDRSTRLEN] = "?";
            if (addr->family == AF_INET)
                inet_ntop(AF_INET, &((struct sockaddr_in *)&addr->addr)->sin_addr, ip, sizeof ip);
            else if (addr->family == AF_INET6)
                inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&addr->addr)->sin6_addr, ip,
                          sizeof ip);
            if (!a->refused[0])
                snprintf(a->refused, sizeof a->refused,
                         "refused target: %s is a %s address (webhooks.allow_private_targets is "
                         "off)",
                         ip, why);
            return CURL_SOCKET_BAD;
        }
    }
    curl_socket_t s = socket(addr->family, addr->socktype | SOCK_CLOEXEC, addr->protocol);
    keep_socket(a->w, s);
    return s;
}

/* curl closes a socket: its kept poll handle goes first (uv_close takes the fd out of epoll,
 * which needs it still open). */
static int close_socket(void *clientp, curl_socket_t s)
{
    sb_webhooks *w = clientp;
    if (s >= 0 && (size_t)s < w->nsocks && w->socks[s]) {
        sockctx *c = w->socks[s];
        w->socks[s] = NULL;
        uv_poll_stop(&c->poll);
        uv_close((uv_handle_t *)&c->poll, on_sock_closed);
    }
    return close(s);
}

static size_t on_header(char *buf, size_t size, size_t n, void *ud)
{
    attempt *a = ud;
    size_t len = size * n;
    static const char name[] = "retry-after:";
    if (len > sizeof name - 1 && strncasecmp(buf, name, sizeof name - 1) == 0) {
        int64_t d;
        if (sb_webhook_retry_after_parse(buf + sizeof name - 1, len - (sizeof name - 1),
                                         sb_time_ms(), &d) == 0)
            a->retry_after_ms = d;
    }
    return len;
}

/* The response body is read and dropped as it comes (nothing is kept, so a long one costs
 * no memory; webhooks.timeout bounds how long a receiver can keep sending). */
static size_t on_body(char *buf, size_t size, size_t n, void *ud)
{
    (void)buf;
    attempt *a = ud;
    a->resp_bytes += size * n;
    return size * n;
}

/* ---- attempts --------------------------------------------------------------------------- */

static void breaker_update(sb_webhooks *w, endpoint *ep, bool ok, int64_t now)
{
    bool was_open = ep->open_until != 0;
    if (ok) {
        ep->failures = 0;
        ep->open_until = 0;
    } else {
        ep->failures++;
        if (ep->probing || ep->failures >= w->cfg->webhooks_breaker_threshold)
            ep->open_until = now + w->cfg->webhooks_breaker_cooldown_ms;
    }
    ep->probing = false;
    bool is_open = ep->open_until != 0;
    if (is_open && !was_open)
        sb_stat_add(&w->breakers_open, 1);
    else if (!is_open && was_open)
        sb_stat_sub(&w->breakers_open, 1);
}

static void record_latency(sb_webhooks *w, int64_t ms)
{
    int i = 0;
    while (i < LATENCY_BUCKETS && (uint64_t)ms > lat_bound_ms[i])
        i++;
    sb_stat_add(&w->lat_buckets[i], 1);
}

/* A handle with the options every request shares; a pooled one keeps them (no
 * curl_easy_reset: start_attempt sets every option that differs per request). */
static CURL *easy_get(sb_webhooks *w)
{
    if (w->neasy > 0)
        return w->easy_pool[--w->neasy];
    CURL *e = curl_easy_init();
    if (!e)
        return NULL;
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_PROXY, ""); /* never through an environment proxy */
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)w->cfg->webhooks_timeout_ms);
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
    /* TLS 1.2 or 1.3 only, whatever an OpenSSL configuration (SECLEVEL 0) would allow */
    curl_easy_setopt(e, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
    if (w->cfg->webhooks_ca_file && *w->cfg->webhooks_ca_file)
        curl_easy_setopt(e, CURLOPT_CAINFO, w->cfg->webhooks_ca_file);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, open_socket);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, close_socket);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, w);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    return e;
}

static void easy_put(sb_webhooks *w, CURL *e)
{
    if (!e)
        return;
    if (w->neasy < EASY_POOL && !w->stopping) {
        /* pooled: nothing may point into the attempt, which is freed soon */
        curl_easy_setopt(e, CURLOPT_ERRORBUFFER, NULL);
        curl_easy_setopt(e, CURLOPT_PRIVATE, NULL);
        w->easy_pool[w->neasy++] = e;
    } else {
        curl_easy_cleanup(e);
    }
}

/* 408, 425, 429 and 5xx are worth another attempt; other statuses will not change. */
static bool retryable_status(long status)
{
    return status == 408 || status == 425 || status == 429 || status >= 500;
}

static void push_result(sb_webhooks *w, attempt *a)
{
    if (w->results_tail)
        w->results_tail->qnext = a;
    else
        w->results_head = a;
    w->results_tail = a;
    a->qnext = NULL;
    w->nresults++;
}

/* Frees the endpoint's waiting stream items (not started, not written; gone, deleted or
 * stopping): the outbox keeps their events, and the cursor never moved past them. */
static void drop_waiting(sb_webhooks *w, endpoint *ep)
{
    ep->ready = NULL;
    for (int i = 0; i < ROOM_BUCKETS; i++)
        for (roomq *r = ep->rooms[i], *rn; r; r = rn) {
            rn = r->hnext;
            attempt *p = r->wait_head;
            r->wait_head = r->wait_tail = NULL;
            r->in_ready = false;
            while (p) {
                attempt *next = p->wnext;
                busy_remove(w, p);
                ep->refs--;
                ep->busy--;
                stream_forget(ep, p); /* frees r with its last item */
                attempt_free(p);
                p = next;
            }
        }
}

/* A finished request: `status` when the exchange completed (transport NULL), else transport
 * says why it failed (a->refused, when set, says it better). */
static void conclude(sb_webhooks *w, attempt *a, int status, const char *transport)
{
    int64_t now = sb_time_ms();
    uint64_t took_ns = sb_now_ns() - a->t0_ns;
    a->duration_ms = (int64_t)(took_ns / 1000000u);
    sb_stat_add(&w->lat_sum_us, took_ns / 1000u);
    record_latency(w, a->duration_ms);
    sb_free(a->body);
    a->body = NULL;
    a->ep->inflight--;
    sb_stat_sub(&w->in_flight, 1);

    bool answered = transport == NULL;
    a->status = answered ? status : 0;
    bool ok = answered && status >= 200 && status < 300;
    if (ok) {
        a->outcome = OUT_DELIVERED;
    } else if (answered && status == 410) {
        a->outcome = OUT_GONE;
        snprintf(a->error, sizeof a->error, "HTTP 410 Gone: the endpoint is disabled");
    } else if (answered && !retryable_status(status)) {
        /* The receiver refuses this request for good (400, 401, 404, a redirect...). */
        a->outcome = OUT_DEAD;
        snprintf(a->error, sizeof a->error, "HTTP %d (not retried)", status);
        a->next_at = now;
    } else {
        if (a->refused[0]) {
            snprintf(a->error, sizeof a->error, "%s", a->refused);
            sb_stat_add(&w->refused_total, 1);
        } else if (!answered) {
            snprintf(a->error, sizeof a->error, "%.200s", transport);
        } else {
            snprintf(a->error, sizeof a->error, "HTTP %d", status);
        }
        int64_t d = sb_webhook_next_delay(w->schedule, w->nschedule, a->round_no, a->retry_after_ms,
                                          rnd32(w));
        a->outcome = d < 0 ? OUT_DEAD : OUT_RETRY;
        a->next_at = now + (d < 0 ? 0 : d);
    }
    if (a->outcome != OUT_GONE) {
        breaker_update(w, a->ep, ok, now);
    } else {
        a->ep->probing = false;
        a->ep->live = false; /* no new attempt until the endpoint changes (re-enabled) */
        a->ep->gone = true;
    }
    sb_stat_add(&w->outcomes[a->outcome], 1);
    if (a->outcome != OUT_DELIVERED)
        sb_log(SB_LOG_INFO, "webhook attempt failed", "webhook_id", a->ep->id, "delivery_id",
               a->delivery_id, "event_id", a->event_id, "outcome", outcome_name[a->outcome],
               "error", a->error, NULL);
    push_result(w, a);
    roomq *r = a->stream ? a->rq : NULL;
    if (r && r->head == a) {
        r->head = NULL;
        if (a->outcome == OUT_RETRY) {
            /* The room's chain moves to the table: its waiting events are written right
             * after this one, blocked behind it, and so is whatever it reads next. */
            r->spilled = true;
            while (r->wait_head) {
                attempt *p = r->wait_head;
                r->wait_head = p->wnext;
                p->wnext = NULL;
                p->park = true;
                push_result(w, p);
            }
            r->wait_tail = NULL;
        } else if (a->outcome == OUT_GONE) {
            drop_waiting(w, a->ep);
        } else {
            room_ready(a->ep, r); /* delivered or dead: the next one may go */
        }
    }
    flush_soon(w);
    pump_soon(w);
}

static void finish(sb_webhooks *w, attempt *a, CURLcode cc)
{
    long status = 0;
    curl_easy_getinfo(a->easy, CURLINFO_RESPONSE_CODE, &status);
    curl_multi_remove_handle(w->multi, a->easy);
    easy_put(w, a->easy);
    a->easy = NULL;
    char why[ERROR_MAX];
    if (cc == CURLE_OPERATION_TIMEDOUT)
        snprintf(why, sizeof why, "timed out after %lld ms (webhooks.timeout)",
                 (long long)w->cfg->webhooks_timeout_ms);
    else if (cc != CURLE_OK)
        snprintf(why, sizeof why, "%.200s",
                 a->rp && a->rp->errbuf[0] ? a->rp->errbuf : curl_easy_strerror(cc));
    reqpart_put(w, a);
    conclude(w, a, (int)status, cc == CURLE_OK ? NULL : why);
}

/* An attempt dropped at shutdown without a result: its delivery stays as it was on disk
 * (pending, or past the written cursor), so it is sent again at the next start. */
static void abandon(sb_webhooks *w, attempt *a)
{
    busy_remove(w, a);
    a->ep->inflight--;
    a->ep->busy--;
    a->ep->refs--;
    sb_stat_sub(&w->in_flight, 1);
    if (a->stream)
        stream_forget(a->ep, a);
    attempt_free(a);
}

static void on_hc_done(sb_hclient_req *r, const sb_hclient_result *res)
{
    attempt *a = r->ud;
    sb_webhooks *w = a->w;
    reqpart_put(w, a); /* r is in it: done may give it back (res is not in it) */
    if (res->err == SB_ECANCELED && w->stopping) {
        abandon(w, a);
        return;
    }
    if (res->retry_after) {
        int64_t d;
        if (sb_webhook_retry_after_parse(res->retry_after, res->retry_after_len, sb_time_ms(),
                                         &d) == 0)
            a->retry_after_ms = d;
    }
    if (res->err == SB_EACCES)
        snprintf(a->refused, sizeof a->refused,
                 "refused target: %s is a %s address (webhooks.allow_private_targets is off)",
                 res->refused_ip, res->refused_why ? res->refused_why : "refused");
    char why[ERROR_MAX];
    if (res->err == SB_ETIMEDOUT)
        snprintf(why, sizeof why, "timed out after %lld ms (webhooks.timeout)",
                 (long long)w->cfg->webhooks_timeout_ms);
    else if (res->err)
        snprintf(why, sizeof why, "%.200s", res->error[0] ? res->error : sb_strerror(res->err));
    conclude(w, a, res->status, res->err ? why : NULL);
}

/* The SSRF guard of sb_hclient: every address before it is connected to. */
static const char *hc_addr_check(const struct sockaddr *sa, void *ud)
{
    (void)ud;
    return sb_webhook_addr_refused(sa);
}

static void check_done(sb_webhooks *w)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(w->multi, &left))) {
        if (m->msg != CURLMSG_DONE)
            continue;
        attempt *a = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&a);
        if (a)
            finish(w, a, m->data.result);
    }
}

static char hdr_content_type[] = "Content-Type: application/json";
static char hdr_user_agent[] = "User-Agent: Switchboard-Webhooks/" SB_VERSION;
static char hdr_no_expect[] = "Expect:";

/* The due scan's columns: the delivery and its event (LEFT JOIN: none when it left the
 * outbox). One statement per due delivery, not a scan plus a lookup. */
#define DUE_COLS                                                                                   \
    "SELECT d.id, d.rowid, d.attempts, d.round_attempts, d.room_name, d.next_at, d.event_id, "     \
    "e.type, e.created_at, e.data, e.rowid IS NULL FROM webhook_deliveries d LEFT JOIN events e "  \
    "ON e.project_id = d.project_id AND e.seq = d.event_seq WHERE d.webhook_id = ?1 AND "          \
    "d.state = 'pending' AND d.blocked = 0 AND "
enum {
    DUE_ID,
    DUE_ROWID,
    DUE_ATTEMPTS,
    DUE_ROUND,
    DUE_ROOM,
    DUE_NEXT_AT,
    DUE_EVENT_ID,
    DUE_TYPE,
    DUE_CREATED,
    DUE_DATA,
    DUE_ORPHAN
};

/* ---- text without printf (per delivery, snprintf was ~0.8 us of ~11) -------------------- */

/* Appends s to [*p, end) and keeps a NUL; false when it does not fit (nothing written). */
static bool put(char **p, const char *end, const char *s, size_t n)
{
    if ((size_t)(end - *p) <= n)
        return false;
    memcpy(*p, s, n);
    *p += n;
    **p = '\0';
    return true;
}

static bool puts0(char **p, const char *end, const char *s)
{
    return put(p, end, s, strlen(s));
}

/* Copies a NUL-terminated string into a fixed array, cut to fit. */
static void copy_to(char *dst, size_t cap, const char *src)
{
    size_t n = strnlen(src, cap - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

static void hex_fixed(char *out, uint64_t v, int digits)
{
    static const char hx[] = "0123456789abcdef";
    for (int i = digits - 1; i >= 0; i--, v >>= 4)
        out[i] = hx[v & 15];
}

/* sb_time_rfc3339 of the last created_at asked: events of a burst share it. */
static const char *created_text(sb_webhooks *w, int64_t ms)
{
    if (!w->created_ok || ms != w->created_ms) {
        sb_time_rfc3339(ms, w->created_txt);
        w->created_ms = ms;
        w->created_ok = true;
    }
    return w->created_txt;
}

/* Sends a (ids, room and counters set): the envelope of sb_event_envelope written around
 * the stored data text, its signatures, and the transfer. On an error a is untouched
 * (the caller frees it). */
static int launch(sb_webhooks *w, endpoint *ep, attempt *a, const char *type, int64_t created_ms,
                  const void *data, size_t data_len)
{
    sb_buf b;
    sb_buf_init(&b, SB_WEBHOOKS_MAX_BODY);
    /* one allocation: the fixed text is 59 bytes, the time 24, the NUL 1; escapes grow it */
    size_t id_len = strlen(a->event_id), type_len = strlen(type), prj_len = strlen(ep->project);
    size_t guess = 59 + 24 + 1 + id_len + type_len + prj_len + data_len;
    int rc = guess <= SB_WEBHOOKS_MAX_BODY ? sb_buf_reserve(&b, guess) : 0;
    rc = rc ? rc : sb_buf_append_str(&b, "{\"id\":\"");
    rc = rc ? rc : sb_buf_append_json_str(&b, a->event_id, id_len);
    rc = rc ? rc : sb_buf_append_str(&b, "\",\"type\":\"");
    rc = rc ? rc : sb_buf_append_json_str(&b, type, type_len);
    rc = rc ? rc : sb_buf_append_str(&b, "\",\"created_at\":\"");
    rc = rc ? rc : sb_buf_append_str(&b, created_text(w, created_ms));
    rc = rc ? rc : sb_buf_append_str(&b, "\",\"project_id\":\"");
    rc = rc ? rc : sb_buf_append_json_str(&b, ep->project, prj_len);
    rc = rc ? rc : sb_buf_append_str(&b, "\",\"data\":");
    rc = rc ? rc : sb_buf_append(&b, data, data_len);
    rc = rc ? rc : sb_buf_append(&b, "}", 2); /* with the NUL */
    if (rc) {
        sb_buf_free(&b);
        return rc;
    }
    a->body = b.base;
    a->body_len = b.len - 1;
    a->at_ms = sb_time_ms();
    a->t0_ns = sb_now_ns();
    int64_t ts = a->at_ms / 1000;
    char sig[2 * SB_WEBHOOK_SIG_MAX + 2];
    rc = sb_webhook_signer_sign(ep->signer, a->event_id, ts, a->body, a->body_len, sig);
    if (!rc && ep->old_signer && a->at_ms < ep->old_until) {
        size_t l = strlen(sig);
        sig[l] = ' ';
        rc = sb_webhook_signer_sign(ep->old_signer, a->event_id, ts, a->body, a->body_len,
                                    sig + l + 1);
    }
    reqpart *rp = rc ? NULL : (a->rp = reqpart_get(w));
    if (!rc && !rp)
        rc = SB_ENOMEM;
    if (rc) {
        OPENSSL_cleanse(sig, sizeof sig);
        goto fail;
    }
    char tsr[SB_U64_DEC_MAX];
    sb_u64_dec((uint64_t)(ts < 0 ? 0 : ts), tsr);
    char *q = rp->h_id;
    bool fit = puts0(&q, rp->h_id + sizeof rp->h_id, "webhook-id: ") &&
               puts0(&q, rp->h_id + sizeof rp->h_id, a->event_id);
    q = rp->h_ts;
    fit = fit && puts0(&q, rp->h_ts + sizeof rp->h_ts, "webhook-timestamp: ") &&
          puts0(&q, rp->h_ts + sizeof rp->h_ts, tsr);
    q = rp->h_sig;
    fit = fit && puts0(&q, rp->h_sig + sizeof rp->h_sig, "webhook-signature: ") &&
          puts0(&q, rp->h_sig + sizeof rp->h_sig, sig);
    OPENSSL_cleanse(sig, sizeof sig);
    if (!fit) {
        rc = SB_EINVAL;
        goto fail;
    }
    if (strncasecmp(ep->url, "http://", 7) == 0 && w->hc) {
        const char *const lines[5] = {hdr_content_type, hdr_user_agent, rp->h_id, rp->h_ts,
                                      rp->h_sig};
        char *hp = rp->hlines, *he = rp->hlines + sizeof rp->hlines;
        for (int i = 0; i < 5 && fit; i++)
            fit = puts0(&hp, he, lines[i]) && put(&hp, he, "\r\n", 2);
        int n = (int)(hp - rp->hlines);
        if (!fit) {
            rc = SB_EINVAL;
            goto fail;
        }
        ep->inflight++;
        sb_stat_add(&w->in_flight, 1);
        if (ep->open_until)
            ep->probing = true;
        rc = sb_hclient_post_ex(w->hc, &rp->hreq, ep->url, rp->hlines, (size_t)n, a->body,
                                a->body_len, (uint64_t)w->cfg->webhooks_timeout_ms,
                                ep->h2c ? SB_HCLIENT_H2C | SB_HCLIENT_H2_NO_INDEX : 0u, on_hc_done,
                                a);
        if (rc) {
            /* Treated as a failed attempt so that the delivery moves on. */
            reqpart_put(w, a);
            char why[ERROR_MAX];
            snprintf(why, sizeof why, "cannot start the request: %s", sb_strerror(rc));
            conclude(w, a, 0, why);
        }
        return 0;
    }
    char *lines[HEADERS] = {hdr_content_type, hdr_user_agent, rp->h_id,
                            rp->h_ts,         rp->h_sig,      hdr_no_expect};
    for (int i = 0; i < HEADERS; i++)
        rp->headers[i] =
            (struct curl_slist){lines[i], i + 1 < HEADERS ? &rp->headers[i + 1] : NULL};
    rc = SB_ENOMEM;
    CURL *e = a->easy = easy_get(w);
    if (!e)
        goto fail;
    /* the options that differ per request (easy_get set the others once per handle) */
    curl_easy_setopt(e, CURLOPT_URL, ep->url);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, a->body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)a->body_len);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, rp->headers);
    /* Over TLS, wait for a connection that may turn out to multiplex (h2) rather than open
     * another; plain http:// is HTTP/1.1 here, where waiting would serialize requests. */
    curl_easy_setopt(e, CURLOPT_PIPEWAIT, strncasecmp(ep->url, "https:", 6) == 0 ? 1L : 0L);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, a);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, a);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, a);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, rp->errbuf);
    curl_easy_setopt(e, CURLOPT_PRIVATE, a);
    ep->inflight++;
    sb_stat_add(&w->in_flight, 1);
    if (ep->open_until)
        ep->probing = true;
    if (curl_multi_add_handle(w->multi, e) != CURLM_OK) {
        /* Treated as a failed attempt so that the delivery moves on. */
        snprintf(rp->errbuf, sizeof rp->errbuf, "cannot start the request");
        finish(w, a, CURLE_FAILED_INIT);
    }
    return 0;
fail:
    easy_put(w, a->easy);
    a->easy = NULL;
    reqpart_put(w, a);
    sb_free(a->body);
    a->body = NULL;
    return rc;
}

/* Builds and starts one attempt from a due-scan row (DUE_COLS). */
static int start_attempt(sb_webhooks *w, endpoint *ep, sqlite3_stmt *st, int64_t rowid)
{
    attempt *a = attempt_new(w);
    if (!a)
        return SB_ENOMEM;
    a->ep = ep;
    a->retry_after_ms = -1;
    a->rowid = rowid;
    snprintf(a->delivery_id, sizeof a->delivery_id, "%s", sqlite3_column_text(st, DUE_ID));
    a->attempt_no = sqlite3_column_int(st, DUE_ATTEMPTS) + 1;
    a->round_no = sqlite3_column_int(st, DUE_ROUND) + 1;
    snprintf(a->event_id, sizeof a->event_id, "%s", sqlite3_column_text(st, DUE_EVENT_ID));
    if (sqlite3_column_type(st, DUE_ROOM) != SQLITE_NULL)
        snprintf(a->room, sizeof a->room, "%s", sqlite3_column_text(st, DUE_ROOM));
    busy_add(w, a);
    ep->refs++;
    ep->busy++;
    int rc = launch(w, ep, a, (const char *)sqlite3_column_text(st, DUE_TYPE),
                    sqlite3_column_int64(st, DUE_CREATED), sqlite3_column_text(st, DUE_DATA),
                    (size_t)sqlite3_column_bytes(st, DUE_DATA));
    if (rc) {
        busy_remove(w, a);
        ep->refs--;
        ep->busy--;
        attempt_free(a);
    }
    return rc;
}

/* A due delivery whose event is no longer in the outbox (removed by hand or by a future
 * retention job): it cannot be sent, so it is dead at once rather than blocking its room
 * and the endpoint's queue. st is the due-scan row (DUE_COLS). */
static int orphan(sb_webhooks *w, endpoint *ep, sqlite3_stmt *st)
{
    attempt *a = attempt_new(w);
    if (!a)
        return SB_ENOMEM;
    a->ep = ep;
    snprintf(a->delivery_id, sizeof a->delivery_id, "%s", sqlite3_column_text(st, 0));
    a->rowid = sqlite3_column_int64(st, 1);
    a->attempt_no = sqlite3_column_int(st, 2) + 1;
    a->round_no = sqlite3_column_int(st, 3) + 1;
    if (sqlite3_column_type(st, 4) != SQLITE_NULL)
        snprintf(a->room, sizeof a->room, "%s", sqlite3_column_text(st, 4));
    a->at_ms = a->next_at = sb_time_ms();
    a->outcome = OUT_DEAD;
    snprintf(a->error, sizeof a->error, "the event is no longer in the outbox");
    busy_add(w, a);
    ep->refs++;
    ep->busy++;
    sb_stat_add(&w->outcomes[OUT_DEAD], 1);
    if (w->results_tail)
        w->results_tail->qnext = a;
    else
        w->results_head = a;
    w->results_tail = a;
    w->nresults++;
    flush(w);
    return 0;
}

/* ---- the pump ----------------------------------------------------------------------------- */

/* Starts the due deliveries st yields (columns of DUE_COLS), skipping busy ones, until
 * *slots are used; moves the endpoint's mark. Returns how many started, -1 on an error. */
static int start_due(sb_webhooks *w, endpoint *ep, sqlite3_stmt *st, int slots)
{
    int started = 0;
    while (started < slots && sqlite3_step(st) == SQLITE_ROW) {
        if (busy_has(w, (const char *)sqlite3_column_text(st, DUE_ID)))
            continue;
        int64_t rowid = sqlite3_column_int64(st, DUE_ROWID);
        int rc = sqlite3_column_int(st, DUE_ORPHAN) ? orphan(w, ep, st)
                                                    : start_attempt(w, ep, st, rowid);
        if (rc != 0) {
            sqlite3_reset(st);
            return -1;
        }
        started++;
        ep->wm = true;
        ep->wm_next_at = sqlite3_column_int64(st, DUE_NEXT_AT);
        ep->wm_rowid = rowid;
    }
    sqlite3_reset(st);
    return started;
}

/* ---- the stream: events past the cursor, sent before they have a row ---------------------- */

static attempt *stream_item(sb_webhooks *w, endpoint *ep, int64_t seq, const char *event_id,
                            const char *type, const char *room)
{
    attempt *a = attempt_new(w);
    if (!a)
        return NULL;
    a->ep = ep;
    a->retry_after_ms = -1;
    a->stream = true;
    a->seq = seq;
    a->attempt_no = a->round_no = 1;
    /* the id SB__DELIVERY_ID gives the same (endpoint, event) in SQL */
    memcpy(a->delivery_id, "dlv_", 4);
    hex_fixed(a->delivery_id + 4, (uint64_t)ep->rowid & 0xffffffffu, 8);
    hex_fixed(a->delivery_id + 12, (uint64_t)seq & 0xffffffffffffu, 12);
    a->delivery_id[24] = '\0';
    copy_to(a->event_id, sizeof a->event_id, event_id);
    copy_to(a->type, sizeof a->type, type);
    if (room)
        copy_to(a->room, sizeof a->room, room);
    a->sprev = ep->s_tail;
    if (ep->s_tail)
        ep->s_tail->snext = a;
    else
        ep->s_head = a;
    ep->s_tail = a;
    ep->s_items++;
    busy_add(w, a);
    ep->refs++;
    ep->busy++;
    return a;
}

/* Undoes stream_item for an item that was neither started nor queued. */
static void stream_unmake(sb_webhooks *w, endpoint *ep, attempt *a)
{
    busy_remove(w, a);
    ep->refs--;
    ep->busy--;
    stream_forget(ep, a);
    attempt_free(a);
}

/* Starts the waiting heads of rooms whose previous event is delivered or dead; their event
 * is read again (a waiting item keeps no body). Returns how many started. */
static int start_ready(sb_webhooks *w, endpoint *ep, int slots)
{
    int started = 0;
    while (started < slots && ep->ready) {
        roomq *r = ep->ready;
        ep->ready = r->rnext;
        r->in_ready = false;
        if (r->head || !r->wait_head)
            continue;
        attempt *a = r->wait_head;
        r->wait_head = a->wnext;
        if (!r->wait_head)
            r->wait_tail = NULL;
        a->wnext = NULL;
        r->head = a;
        sqlite3_stmt *st = sb_store_stmt(
            w->db, "SELECT type, created_at, data FROM events WHERE project_id = ?1 AND seq = ?2");
        int rc = st ? 0 : SB_EIO;
        if (st) {
            sqlite3_bind_text(st, 1, ep->project, -1, SQLITE_STATIC);
            sqlite3_bind_int64(st, 2, a->seq);
            int s = sqlite3_step(st);
            if (s == SQLITE_ROW) {
                rc = launch(w, ep, a, (const char *)sqlite3_column_text(st, 0),
                            sqlite3_column_int64(st, 1), sqlite3_column_text(st, 2),
                            (size_t)sqlite3_column_bytes(st, 2));
            } else if (s == SQLITE_DONE) { /* left the outbox: cannot be sent */
                a->at_ms = a->next_at = sb_time_ms();
                a->outcome = OUT_DEAD;
                snprintf(a->error, sizeof a->error, "the event is no longer in the outbox");
                sb_stat_add(&w->outcomes[OUT_DEAD], 1);
                r->head = NULL;
                push_result(w, a);
                room_ready(ep, r);
                sqlite3_reset(st);
                flush(w);
                continue;
            } else {
                rc = sb_store_errno(s);
            }
            sqlite3_reset(st);
        }
        if (rc) { /* back at the front; tried again at the next pump */
            r->head = NULL;
            a->wnext = r->wait_head;
            r->wait_head = a;
            if (!r->wait_tail)
                r->wait_tail = a;
            room_ready(ep, r);
            break;
        }
        started++;
    }
    return started;
}

/* Events read and not yet written an endpoint may hold: 128 per request it may have in
 * flight (the writes are batched and fsynced, and the window must cover that), at most
 * STREAM_WINDOW_MAX. */
static int stream_window(int limit)
{
    return 128 * limit < STREAM_WINDOW_MAX ? 128 * limit : STREAM_WINDOW_MAX;
}

/* Reads the outbox past ep->read_seq and starts up to `slots` new events; events of a room
 * whose previous one is still running wait in memory, those of a room with a chain in the
 * table are parked behind it. Returns how many started. */
static int read_stream(sb_webhooks *w, endpoint *ep, int slots, int limit, int64_t now)
{
    int window = stream_window(limit);
    if (ep->s_items >= window)
        return 0;
    /* Per row: whether it has its record already, in webhook_deliveries or the delivered log
     * (only events up to the endpoint's highest entry in each can), and whether its room has a
     * pending chain in the table (only when the endpoint has a pending row at all: asked of the
     * pending-only index, which is empty while nothing fails). The bounds are uncorrelated
     * subqueries, evaluated once per statement, in the same snapshot as the rows. */
    sqlite3_stmt *st = sb_store_stmt(
        w->db, "SELECT e.seq, e.id, e.type, e.room_name, e.created_at, e.data, CASE WHEN e.seq <= "
               "(SELECT event_seq FROM webhook_deliveries WHERE webhook_id = ?1 ORDER BY "
               "event_seq DESC LIMIT 1) AND EXISTS (SELECT 1 FROM webhook_deliveries d WHERE "
               "d.webhook_id = ?1 AND d.event_seq = e.seq) THEN 1 WHEN e.seq <= (SELECT event_seq "
               "FROM webhook_delivered WHERE webhook_id = ?1 ORDER BY event_seq DESC LIMIT 1) "
               "THEN EXISTS (SELECT 1 FROM webhook_delivered l WHERE l.webhook_id = ?1 AND "
               "l.event_seq = e.seq) ELSE 0 END, CASE WHEN e.room_name IS "
               "NOT NULL AND (SELECT EXISTS (SELECT 1 FROM webhook_deliveries INDEXED BY "
               "webhook_deliveries_room WHERE webhook_id = ?1 AND state = 'pending')) THEN "
               "EXISTS (SELECT 1 FROM webhook_deliveries p WHERE p.webhook_id = ?1 AND p.state = "
               "'pending' AND p.room_name = e.room_name) ELSE 0 END FROM "
               "events e WHERE e.project_id = ?2 AND e.seq > ?3 ORDER BY e.seq LIMIT ?4");
    if (!st) {
        sb_log(SB_LOG_ERROR, "webhooks: cannot read the outbox", "reason", sqlite3_errmsg(w->db),
               NULL);
        return 0;
    }
    int want = window - ep->s_items < STREAM_READ_MAX ? window - ep->s_items : STREAM_READ_MAX;
    sqlite3_bind_text(st, 1, ep->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, ep->project, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, ep->read_seq);
    sqlite3_bind_int(st, 4, want);
    ep->s_read_at = now;
    int started = 0, rows = 0, s = SQLITE_ROW;
    bool parked = false;
    while (started < slots && ep->s_items < window && w->nbusy < SB_WEBHOOKS_MAX_BUSY &&
           (s = sqlite3_step(st)) == SQLITE_ROW) {
        rows++;
        int64_t seq = sqlite3_column_int64(st, 0);
        const char *type = (const char *)sqlite3_column_text(st, 2);
        const char *room = (const char *)sqlite3_column_text(st, 3);
        if (sqlite3_column_int(st, 6) || !type || !type_wanted(ep, type)) {
            ep->read_seq = seq;
            continue;
        }
        roomq *r = room ? room_find(ep, room) : NULL;
        if (room && !r) {
            r = room_add(ep, room);
            if (!r)
                break;
            r->spilled = sqlite3_column_int(st, 7);
        }
        attempt *a = stream_item(w, ep, seq, (const char *)sqlite3_column_text(st, 1), type, room);
        if (!a) {
            if (r && r->items == 0)
                room_remove(ep, r);
            break;
        }
        ep->read_seq = seq;
        if (r) {
            a->rq = r;
            r->items++;
            if (r->spilled) {
                a->park = true;
                push_result(w, a);
                parked = true;
                continue;
            }
            if (r->head) {
                if (r->wait_tail)
                    r->wait_tail->wnext = a;
                else
                    r->wait_head = a;
                r->wait_tail = a;
                continue;
            }
            r->head = a;
        }
        if (launch(w, ep, a, type, sqlite3_column_int64(st, 4), sqlite3_column_text(st, 5),
                   (size_t)sqlite3_column_bytes(st, 5)) != 0) {
            stream_unmake(w, ep, a);
            ep->read_seq = seq - 1;
            break;
        }
        /* h2c: the receiver starts on these while the next ones are built (one write per
         * loop turn made both sides wait for each other: measured ~60% CPU at 32 in flight) */
        if (++started % H2C_FLUSH_EVERY == 0 && ep->h2c && w->hc)
            sb_hclient_flush(w->hc);
    }
    ep->s_caught_up = s == SQLITE_DONE && rows < want;
    sqlite3_reset(st);
    if (parked)
        flush(w);
    return started;
}

/* Starts what endpoint ep may start now; returns when its next delivery is due (ms, or
 * INT64_MAX when nothing is pending). */
static int64_t pump_endpoint(sb_webhooks *w, endpoint *ep, int64_t now)
{
    if (ep->open_until > now)
        return ep->open_until;
    int limit = ep->open_until ? 1 : w->cfg->webhooks_max_in_flight_per_endpoint;
    int slots = limit - ep->inflight;
    if (slots > SB_WEBHOOKS_MAX_BUSY - w->nbusy)
        slots = SB_WEBHOOKS_MAX_BUSY - w->nbusy;
    /* Refill in batches: one query per few finished requests, not one per request. The
     * finishing requests pump again. */
    int refill = limit / 4 > 1 ? limit / 4 : 1;
    if (ep->inflight > 0 && slots < refill)
        return INT64_MAX;
    if (slots > 0) {
        /* Due deliveries in (next_at, rowid) order, from the index alone; the ones already
         * in flight or awaiting their write are skipped before their event is read. From
         * the mark: the rest of its next_at, then the later ones (two index seeks; a row
         * value (next_at, rowid) > (a, b) would scan all of next_at = a); then, if that
         * did not fill the slots, from the start once. */
        for (int pass = ep->wm ? 0 : 2; pass < 3 && slots > 0; pass++) {
            static const char *const sql[3] = {
                DUE_COLS "d.next_at = ?4 AND d.rowid > ?5 AND ?4 <= ?2 ORDER BY d.rowid LIMIT ?3",
                DUE_COLS "d.next_at > ?4 AND d.next_at <= ?2 ORDER BY d.next_at, d.rowid LIMIT ?3",
                DUE_COLS "d.next_at <= ?2 ORDER BY d.next_at, d.rowid LIMIT ?3"};
            int64_t mark_at = ep->wm_next_at, mark_rowid = ep->wm_rowid;
            sqlite3_stmt *st = sb_store_stmt(w->db, sql[pass]);
            if (!st) {
                sb_log(SB_LOG_ERROR, "webhooks: cannot read deliveries", "reason",
                       sqlite3_errmsg(w->db), NULL);
                return now + SB_WEBHOOKS_BACKSTOP_MS;
            }
            sqlite3_bind_text(st, 1, ep->id, -1, SQLITE_STATIC);
            sqlite3_bind_int64(st, 2, now);
            sqlite3_bind_int(st, 3, slots + ep->busy);
            if (pass < 2) {
                sqlite3_bind_int64(st, 4, mark_at);
                sqlite3_bind_int64(st, 5, mark_rowid);
            }
            int n = start_due(w, ep, st, slots);
            if (n < 0)
                break;
            slots -= n;
        }
        if (slots > 0)
            slots -= start_ready(w, ep, slots);
        bool more = false;
        if (slots > 0 && !ep->s_caught_up) {
            int64_t from = ep->read_seq;
            int n = read_stream(w, ep, slots, limit, now);
            slots -= n;
            /* not at the end, and not stopped by a full window or an error */
            more = !ep->s_caught_up && (n > 0 || ep->read_seq != from) &&
                   ep->s_items < stream_window(limit);
        }
        if (slots == 0 || more)
            return now; /* maybe more right away */
    }
    int64_t next = INT64_MAX;
    sqlite3_stmt *st = sb_store_stmt(w->db, "SELECT MIN(next_at) FROM webhook_deliveries WHERE "
                                            "webhook_id = ?1 AND state = 'pending' AND "
                                            "blocked = 0 AND next_at > ?2");
    if (st) {
        sqlite3_bind_text(st, 1, ep->id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, now);
        if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL)
            next = sqlite3_column_int64(st, 0);
        sqlite3_reset(st);
    }
    return next;
}

/* ---- retention: finished deliveries older than webhooks.retention -------------------------- */

typedef struct retention_job {
    sb_webhooks *w;
    int64_t cutoff, cursor;
    int64_t events_cutoff; /* events.retention */
} retention_job;

/* One group's oldest rows: sel (?1 the group's key, ?2 a limit) lists (seq, time) in seq
 * order; those before the first whose time is not before cutoff or whose seq is past bound
 * are deleted by del (?1 the key, ?2 the last such seq). At most RETENTION_BATCH; a full batch
 * sets *more. */
static int prune_oldest(sqlite3 *db, const char *sel_sql, const char *del_sql, const char *key,
                        int64_t cutoff, int64_t bound, bool *more)
{
    sqlite3_stmt *sel = sb_store_stmt(db, sel_sql);
    if (!sel)
        return SB_EIO;
    sqlite3_bind_text(sel, 1, key, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int(sel, 2, RETENTION_BATCH);
    int64_t last_old = -1;
    int n = 0, t;
    while ((t = sqlite3_step(sel)) == SQLITE_ROW && sqlite3_column_int64(sel, 1) < cutoff &&
           sqlite3_column_int64(sel, 0) <= bound) {
        last_old = sqlite3_column_int64(sel, 0);
        n++;
    }
    sqlite3_reset(sel);
    if (t != SQLITE_ROW && t != SQLITE_DONE)
        return sb_store_errno(t);
    if (n == RETENTION_BATCH)
        *more = true;
    if (last_old < 0)
        return 0;
    sqlite3_stmt *del = sb_store_stmt(db, del_sql);
    if (!del)
        return SB_EIO;
    sqlite3_bind_text(del, 1, key, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(del, 2, last_old);
    return step_done(del);
}

/* prune_oldest for every key that keys_sql lists; bound_sql (?1 the key) gives the highest seq
 * each may delete; without bound_sql, or when it gives NULL, there is no such limit. */
static int prune_each(sqlite3 *db, const char *keys_sql, const char *bound_sql, const char *sel_sql,
                      const char *del_sql, int64_t cutoff, bool *more)
{
    sqlite3_stmt *keys = sb_store_stmt(db, keys_sql);
    if (!keys)
        return SB_EIO;
    int rc = 0, s = SQLITE_DONE;
    while (!rc && (s = sqlite3_step(keys)) == SQLITE_ROW) {
        const char *key = (const char *)sqlite3_column_text(keys, 0);
        int64_t bound = INT64_MAX;
        if (bound_sql) {
            sqlite3_stmt *bq = sb_store_stmt(db, bound_sql);
            if (!bq) {
                rc = SB_EIO;
                break;
            }
            sqlite3_bind_text(bq, 1, key, -1, SQLITE_TRANSIENT);
            int t = sqlite3_step(bq);
            if (t == SQLITE_ROW && sqlite3_column_type(bq, 0) != SQLITE_NULL)
                bound = sqlite3_column_int64(bq, 0);
            sqlite3_reset(bq);
            if (t != SQLITE_ROW) {
                rc = sb_store_errno(t);
                break;
            }
        }
        rc = prune_oldest(db, sel_sql, del_sql, key, cutoff, bound, more);
    }
    sqlite3_reset(keys);
    if (!rc && s != SQLITE_ROW && s != SQLITE_DONE)
        rc = sb_store_errno(s);
    return rc;
}

/* The delivered log's part of a retention pass: per endpoint, its oldest entries (in event
 * order, which is sending order) up to the first one not older than the cutoff. */
static int retention_log(sqlite3 *db, int64_t cutoff, bool *more)
{
    return prune_each(db, "SELECT id FROM webhooks", NULL,
                      "SELECT event_seq, at FROM webhook_delivered WHERE webhook_id = ?1 ORDER BY "
                      "event_seq LIMIT ?2",
                      "DELETE FROM webhook_delivered WHERE webhook_id = ?1 AND event_seq <= ?2",
                      cutoff, more);
}

/*
 * The outbox's part of a retention pass (events.retention): per project, the oldest events,
 * created before the cutoff, that no webhook still needs: at or below every enabled
 * endpoint's cursor (written: delivered, or recorded as a delivery row) and below every
 * pending delivery's event (a retry reads its event again), stopping at the first young or
 * needed one. A disabled endpoint does not hold events: re-enabling it starts from the
 * newest. Dead deliveries do not either: replaying one whose event has gone marks it dead
 * again, saying so.
 */
static int retention_outbox(sqlite3 *db, int64_t cutoff, bool *more)
{
    return prune_each(
        db, "SELECT project_id FROM event_counters",
        "SELECT MIN(b) FROM (SELECT CASE WHEN enabled = 1 THEN cursor_seq END AS b FROM webhooks "
        "WHERE project_id = ?1 UNION ALL SELECT (SELECT MIN(d.event_seq) - 1 FROM "
        "webhook_deliveries d WHERE d.webhook_id = w.id AND d.state = 'pending') FROM webhooks w "
        "WHERE w.project_id = ?1)",
        "SELECT seq, created_at FROM events WHERE project_id = ?1 ORDER BY seq LIMIT ?2",
        "DELETE FROM events WHERE project_id = ?1 AND seq <= ?2", cutoff, more);
}

/* Walks the deliveries in rowid (creation) order from the cursor, at most RETENTION_BATCH
 * rows per job, deleting finished ones last changed before the cutoff with their attempts;
 * pending ones are kept and stepped over. Returns 1 while there may be more to look at. */
static int retention_run(sqlite3 *db, void *arg)
{
    retention_job *j = arg;
    /* Rows are created in rowid order, so the walk stops at the first one created after the
     * cutoff (a created_at filter in the WHERE clause made every pass scan all the younger
     * rows, the whole table when none is old, on the writer thread). */
    sqlite3_stmt *st = sb_store_stmt(
        db, "SELECT rowid, id, state <> 'pending' AND updated_at < ?2, created_at < ?2 FROM "
            "webhook_deliveries WHERE rowid > ?1 ORDER BY rowid LIMIT ?3");
    sqlite3_stmt *da = sb_store_stmt(db, "DELETE FROM webhook_attempts WHERE delivery_id = ?1");
    sqlite3_stmt *dd = sb_store_stmt(db, "DELETE FROM webhook_deliveries WHERE rowid = ?1");
    if (!st || !da || !dd)
        return SB_EIO;
    sqlite3_bind_int64(st, 1, j->cursor);
    sqlite3_bind_int64(st, 2, j->cutoff);
    sqlite3_bind_int(st, 3, RETENTION_BATCH);
    struct {
        int64_t rowid;
        char id[SB_ID_MAX];
        bool drop;
    } rows[RETENTION_BATCH];
    int n = 0, rc;
    bool young = false;
    while (n < RETENTION_BATCH && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (!sqlite3_column_int(st, 3)) {
            young = true; /* this one and every later one: the pass is over */
            break;
        }
        rows[n].rowid = sqlite3_column_int64(st, 0);
        snprintf(rows[n].id, SB_ID_MAX, "%s", sqlite3_column_text(st, 1));
        rows[n].drop = sqlite3_column_int(st, 2);
        n++;
    }
    sqlite3_reset(st);
    rc = 0;
    for (int i = 0; i < n && !rc; i++) {
        j->cursor = rows[i].rowid;
        if (!rows[i].drop)
            continue;
        sqlite3_bind_text(da, 1, rows[i].id, -1, SQLITE_STATIC);
        rc = step_done(da);
        if (rc)
            break;
        sqlite3_bind_int64(dd, 1, rows[i].rowid);
        rc = step_done(dd);
    }
    bool more = n == RETENTION_BATCH && !young;
    rc = rc ? rc : retention_log(db, j->cutoff, &more);
    rc = rc ? rc : retention_outbox(db, j->events_cutoff, &more);
    return rc ? rc : more;
}

static void retention_done(void *arg, int rc)
{
    retention_job *j = arg;
    sb_webhooks *w = j->w;
    w->jobs--;
    w->retention_running = false;
    if (rc < 0)
        sb_log(SB_LOG_ERROR, "webhooks: retention pass failed", "reason", sb_strerror(rc), NULL);
    /* A full batch: go on soon; else start from the oldest again at the next pass. */
    w->retention_cursor = rc == 1 ? j->cursor : 0;
    if (rc == 1)
        w->retention_at = 0;
    sb_free(j);
    if (w->stopping)
        maybe_finish_stop(w);
}

static void retention(sb_webhooks *w, int64_t now)
{
    if (w->retention_running || now < w->retention_at || w->stopping)
        return;
    int64_t every = w->cfg->webhooks_retention_ms / 2;
    if (w->cfg->events_retention_ms / 2 < every)
        every = w->cfg->events_retention_ms / 2;
    w->retention_at = now + (every < RETENTION_EVERY_MS ? every : RETENTION_EVERY_MS);
    retention_job *j = sb_malloc(sizeof *j);
    if (!j)
        return;
    *j = (retention_job){w, now - w->cfg->webhooks_retention_ms, w->retention_cursor,
                         now - w->cfg->events_retention_ms};
    if (!submit(w, retention_run, retention_done, j)) {
        sb_free(j);
        return;
    }
    w->retention_running = true;
}

static void wm_clear(sb_webhooks *w)
{
    for (endpoint *e = w->endpoints; e; e = e->next)
        e->wm = false;
}

static void on_due(uv_timer_t *t)
{
    pump(t->data);
}

static void pump(sb_webhooks *w)
{
    if (w->stopping)
        return;
    int64_t now = sb_time_ms();
    if (w->loaded_gen != atomic_load(&w->changed_gen) || now - w->loaded_at >= RELOAD_EVERY_MS)
        reload_endpoints(w, now);
    bool news = atomic_exchange(&w->news, false);
    for (endpoint *ep = w->endpoints; ep; ep = ep->next)
        if (news || now - ep->s_read_at >= SB_WEBHOOKS_BACKSTOP_MS) /* or another process's */
            ep->s_caught_up = false;
    flush_soon(w); /* results a full write queue (or no memory) left behind */
    retention(w, now);
    int64_t next = now + SB_WEBHOOKS_BACKSTOP_MS;
    for (endpoint *ep = w->endpoints; ep; ep = ep->next) {
        if (!ep->live)
            continue;
        int64_t n = pump_endpoint(w, ep, now);
        if (n < next)
            next = n;
    }
    int64_t delay = next - sb_time_ms();
    if (delay <= 0) {
        pump_soon(w);
        return;
    }
    uv_timer_start(&w->due_timer, on_due, (uint64_t)delay, 0);
}

static void on_idle(uv_idle_t *h)
{
    sb_webhooks *w = h->data;
    uv_idle_stop(h);
    w->idle_on = false;
    pump(w);
}

/* Pumps once this loop iteration's callbacks are done (coalesces many completions). */
static void pump_soon(sb_webhooks *w)
{
    if (w->idle_on || w->stopping)
        return;
    w->idle_on = true;
    uv_idle_start(&w->idle, on_idle);
}

/* ---- the thread ------------------------------------------------------------------------- */

static void close_cb(uv_handle_t *h)
{
    (void)h;
}

static void maybe_finish_stop(sb_webhooks *w)
{
    if (w->closing || w->jobs > 0 || w->results_head)
        return;
    if (w->flush_running)
        return;
    w->closing = true;
    while (w->neasy > 0)
        curl_easy_cleanup(w->easy_pool[--w->neasy]);
    /* closes cached connections: sockets leave through socket_cb and close_socket */
    curl_multi_cleanup(w->multi);
    w->multi = NULL;
    /* none is left unless curl closed one without close_socket: then only its handle goes */
    for (size_t i = 0; i < w->nsocks; i++)
        if (w->socks[i]) {
            uv_poll_stop(&w->socks[i]->poll);
            uv_close((uv_handle_t *)&w->socks[i]->poll, on_sock_closed);
        }
    sb_free(w->socks);
    w->socks = NULL;
    w->nsocks = 0;
    uv_close((uv_handle_t *)&w->async, close_cb);
    uv_close((uv_handle_t *)&w->curl_timer, close_cb);
    uv_close((uv_handle_t *)&w->due_timer, close_cb);
    uv_close((uv_handle_t *)&w->flush_timer, close_cb);
    uv_close((uv_handle_t *)&w->idle, close_cb);
}

static void begin_stop(sb_webhooks *w)
{
    w->stopping = true;
    uv_idle_stop(&w->idle);
    w->idle_on = false;
    uv_timer_stop(&w->due_timer);
    /* Abandon running requests: their deliveries stay pending on disk, and the stream's
     * events past the written cursor are read again at the next start. */
    for (endpoint *ep = w->endpoints; ep; ep = ep->next)
        drop_waiting(w, ep);
    for (unsigned i = 0; i < BUSY_BUCKETS; i++) {
        for (attempt *a = w->busy[i], *next; a; a = next) {
            next = a->hnext;
            if (!a->easy)
                continue;
            curl_multi_remove_handle(w->multi, a->easy);
            curl_easy_cleanup(a->easy);
            a->easy = NULL;
            abandon(w, a);
        }
    }
    /* http:// requests: cancelled, each abandoned from its done callback */
    if (w->hc) {
        sb_hclient_close(w->hc, NULL, NULL);
        w->hc = NULL;
    }
    flush(w);
    maybe_finish_stop(w);
}

static void on_async(uv_async_t *h)
{
    sb_webhooks *w = h->data;
    pthread_mutex_lock(&w->mq_lock);
    posted *p = w->mq_head;
    w->mq_head = w->mq_tail = NULL;
    pthread_mutex_unlock(&w->mq_lock);
    while (p) {
        posted *next = p->next;
        p->fn(p->arg);
        sb_free(p);
        p = next;
    }
    if (w->closing)
        return;
    if (atomic_load(&w->stop_requested) && !w->stopping) {
        begin_stop(w);
        return;
    }
    if (atomic_exchange(&w->wake_requested, false)) {
        wm_clear(w);
        pump_soon(w);
    }
}

static void *thread_main(void *arg)
{
    sb_webhooks *w = arg;
    pump_soon(w);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    return NULL;
}

/* ---- metrics ---------------------------------------------------------------------------- */

static uint64_t ld(sb_counter *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

static int render_metrics(sb_buf *o, void *ud)
{
    sb_webhooks *w = ud;
    int rc = sb_buf_append_str(o, "# HELP switchboard_webhook_deliveries_total Webhook delivery "
                                  "attempts by outcome (delivered, retry, dead, gone).\n"
                                  "# TYPE switchboard_webhook_deliveries_total counter\n");
    for (int i = 0; i < OUT_COUNT && !rc; i++)
        rc = sb_buf_appendf(o, "switchboard_webhook_deliveries_total{outcome=\"%s\"} %llu\n",
                            outcome_name[i], (unsigned long long)ld(&w->outcomes[i]));
    rc = rc ? rc
            : sb_buf_appendf(o,
                             "# HELP switchboard_webhook_refused_total Attempts refused by the "
                             "SSRF guard.\n# TYPE switchboard_webhook_refused_total counter\n"
                             "switchboard_webhook_refused_total %llu\n"
                             "# HELP switchboard_webhook_in_flight Webhook requests running.\n"
                             "# TYPE switchboard_webhook_in_flight gauge\n"
                             "switchboard_webhook_in_flight %llu\n"
                             "# HELP switchboard_webhook_breakers_open Endpoints whose circuit "
                             "is open.\n# TYPE switchboard_webhook_breakers_open gauge\n"
                             "switchboard_webhook_breakers_open %llu\n"
                             "# HELP switchboard_webhook_attempt_duration_seconds Time from "
                             "sending a webhook to its answer or failure.\n"
                             "# TYPE switchboard_webhook_attempt_duration_seconds histogram\n",
                             (unsigned long long)ld(&w->refused_total),
                             (unsigned long long)ld(&w->in_flight),
                             (unsigned long long)ld(&w->breakers_open));
    uint64_t cum = 0;
    for (int i = 0; i < LATENCY_BUCKETS && !rc; i++) {
        cum += ld(&w->lat_buckets[i]);
        rc = sb_buf_appendf(o,
                            "switchboard_webhook_attempt_duration_seconds_bucket{le=\"%s\"} %llu\n",
                            lat_le[i], (unsigned long long)cum);
    }
    cum += ld(&w->lat_buckets[LATENCY_BUCKETS]);
    rc = rc ? rc
            : sb_buf_appendf(o,
                             "switchboard_webhook_attempt_duration_seconds_bucket{le=\"+Inf\"} "
                             "%llu\nswitchboard_webhook_attempt_duration_seconds_sum %.6f\n"
                             "switchboard_webhook_attempt_duration_seconds_count %llu\n",
                             (unsigned long long)cum, (double)ld(&w->lat_sum_us) / 1e6,
                             (unsigned long long)cum);
    return rc;
}

/* ---- the endpoint object (API and events) ---------------------------------------------------- */

static json_t *text_or_null(sqlite3_stmt *st, int col)
{
    return sqlite3_column_type(st, col) == SQLITE_NULL
               ? json_null()
               : json_string((const char *)sqlite3_column_text(st, col));
}

json_t *sb_webhooks_endpoint_json(sqlite3_stmt *st)
{
    json_t *events = json_loads((const char *)sqlite3_column_text(st, 2), 0, NULL);
    int enabled = sqlite3_column_int(st, 4);
    return json_pack("{s:s,s:s,s:o,s:o,s:b,s:s,s:o,s:b,s:s,s:o,s:o,s:o}", "id",
                     sqlite3_column_text(st, 0), "url", sqlite3_column_text(st, 1), "events",
                     events ? events : json_array(), "description", text_or_null(st, 3), "enabled",
                     enabled, "status", enabled ? "enabled" : "disabled", "disabled_reason",
                     text_or_null(st, 5), "h2c", sqlite3_column_int(st, 8), "signature_scheme",
                     sqlite3_column_text(st, 9), "public_key", text_or_null(st, 10), "created_at",
                     sb_app_time_or_null(st, 6), "updated_at", sb_app_time_or_null(st, 7));
}

int sb_webhooks_endpoint_read(sqlite3 *db, const char *id, const char *project_id, json_t **out)
{
    sqlite3_stmt *st = sb_store_stmt(db, "SELECT " SB_WEBHOOKS_ENDPOINT_COLS
                                         " FROM webhooks WHERE id = ?1 AND project_id = ?2");
    if (!st)
        return SB_EIO;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, project_id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    *out = rc == SQLITE_ROW ? sb_webhooks_endpoint_json(st) : NULL;
    sqlite3_reset(st);
    if (rc == SQLITE_DONE)
        return SB_ENOENT;
    return rc == SQLITE_ROW && *out ? 0 : SB_EIO;
}

/* ---- start and stop ------------------------------------------------------------------------ */

int sb_webhooks_enqueue_event(sqlite3 *db, const char *webhook_id, const char *project_id,
                              const char *event_id, char *delivery_id)
{
    sqlite3_stmt *st = sb_store_stmt(
        db,
        "INSERT INTO webhook_deliveries (id, webhook_id, project_id, event_seq, event_id, "
        "event_type, room_name, state, attempts, round_attempts, next_at, created_at, "
        "updated_at) SELECT " SB__DELIVERY_ID("(SELECT rowid FROM webhooks WHERE id = ?1)",
                                              "seq") ", ?1, project_id, seq, id, type, "
                                                     "room_name, 'pending', 0, 0, ?4, ?4, ?4 FROM "
                                                     "events WHERE id = ?3 AND project_id = ?2 "
                                                     "RETURNING id");
    if (!st)
        return SB_EIO;
    sqlite3_bind_text(st, 1, webhook_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, project_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, event_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, sb_time_ms());
    int s = sqlite3_step(st);
    if (s == SQLITE_ROW) {
        snprintf(delivery_id, SB_ID_MAX, "%s", sqlite3_column_text(st, 0));
        s = sqlite3_step(st);
    } else if (s == SQLITE_DONE) {
        s = SQLITE_NOTFOUND;
    }
    sqlite3_reset(st);
    return s == SQLITE_NOTFOUND ? SB_ENOENT : sb_store_errno(s);
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;
static void curl_init(void)
{
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

int sb_webhooks_start(sb_webhooks **out, sb_app *app, sb_store *store, sqlite3 *reader,
                      const sb_config *cfg)
{
    char why[128];
    pthread_once(&curl_once, curl_init);
    if (curl_init_rc != CURLE_OK)
        return SB_EIO;
    sb_webhooks *w = sb_calloc(1, sizeof *w);
    if (!w)
        return SB_ENOMEM;
    w->app = app;
    w->store = store;
    w->db = reader;
    w->cfg = cfg;
    w->allow_private = sb_webhooks_private_allowed(cfg);
    w->nschedule = sb_webhook_schedule_parse(cfg->webhooks_retry_schedule, w->schedule,
                                             SB_WEBHOOK_SCHEDULE_MAX, why, sizeof why);
    if (w->nschedule < 1 || sb_random(&w->rng, sizeof w->rng) != 0) {
        sb_free(w);
        return SB_EINVAL;
    }
    w->rng |= 1;
    w->news = true; /* read every stream at start */
    pthread_mutex_init(&w->mq_lock, NULL);
    int rc = SB_EIO;
    if (uv_loop_init(&w->loop) != 0)
        goto fail_mutex;
    w->multi = curl_multi_init();
    if (!w->multi)
        goto fail_loop;
    curl_multi_setopt(w->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(w->multi, CURLMOPT_SOCKETDATA, w);
    curl_multi_setopt(w->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(w->multi, CURLMOPT_TIMERDATA, w);
    curl_multi_setopt(w->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
    curl_multi_setopt(w->multi, CURLMOPT_MAXCONNECTS, 1024L);
    sb_hclient_config hcc = {
        .idle_timeout_ms = 60000,
        .max_idle_per_origin = (int)cfg->webhooks_max_in_flight_per_endpoint,
        .addr_check = w->allow_private ? NULL : hc_addr_check,
    };
    if (sb_hclient_new(&w->hc, &w->loop, &hcc) != 0)
        goto fail_multi;
    uv_async_init(&w->loop, &w->async, on_async);
    uv_timer_init(&w->loop, &w->curl_timer);
    uv_timer_init(&w->loop, &w->due_timer);
    uv_timer_init(&w->loop, &w->flush_timer);
    uv_idle_init(&w->loop, &w->idle);
    w->async.data = w->curl_timer.data = w->due_timer.data = w->idle.data = w;
    w->flush_timer.data = w;
    if (sb_store_add_commit_hook(store, commit_hook, w) != 0)
        goto fail_handles;
    if (pthread_create(&w->thread, NULL, thread_main, w) != 0) {
        sb_store_remove_commit_hook(store, commit_hook, w);
        goto fail_handles;
    }
    w->thread_started = true;
    sb_metrics_add_source(render_metrics, w);
    *out = w;
    return 0;

fail_handles:
    sb_hclient_close(w->hc, NULL, NULL);
    curl_multi_cleanup(w->multi);
    uv_close((uv_handle_t *)&w->async, NULL);
    uv_close((uv_handle_t *)&w->curl_timer, NULL);
    uv_close((uv_handle_t *)&w->due_timer, NULL);
    uv_close((uv_handle_t *)&w->flush_timer, NULL);
    uv_close((uv_handle_t *)&w->idle, NULL);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    goto fail_loop;
fail_multi:
    curl_multi_cleanup(w->multi);
fail_loop:
    uv_loop_close(&w->loop);
fail_mutex:
    pthread_mutex_destroy(&w->mq_lock);
    sb_free(w);
    return rc;
}

void sb_webhooks_stop(sb_webhooks *w)
{
    if (!w)
        return;
    sb_metrics_remove_source(render_metrics, w);
    sb_store_remove_commit_hook(w->store, commit_hook, w);
    atomic_store(&w->stop_requested, true);
    uv_async_send(&w->async);
    pthread_join(w->thread, NULL);
    uv_loop_close(&w->loop);
    while (w->endpoints)
        free_endpoint(w, w->endpoints);
    while (w->pool) {
        attempt *a = w->pool;
        w->pool = a->qnext;
        sb_free(a);
    }
    while (w->rpool) {
        reqpart *p = w->rpool;
        w->rpool = p->next;
        sb_free(p);
    }
    pthread_mutex_destroy(&w->mq_lock);
    sb_free(w);
}
