#include "events/stream.h"

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "auth/scopes.h"
#include "core/alloc.h"
#include "core/log.h"
#include "events/outbox.h"
#include "net/loop.h"
#include "net/websocket.h"
#include "switchboard/error.h"

typedef struct sub sub;
typedef struct hub_slot hub_slot;

/* One subscriber: a position in one project's event sequence, and where to send. */
struct sub {
    sub *prev, *next;
    hub_slot *slot;
    sb_ws *ws;   /* WebSocket, or */
    sb_req *req; /* a streamed response: SSE, or NDJSON (one envelope per line; gRPC) */
    bool ndjson;
    int64_t last_seq;
    bool pumping; /* inside pump: a writable callback from a write must not re-enter */
    bool again;   /* ... it asks the running pump to read once more instead */
    char project[SB_ID_MAX];
};

/* Per loop. `loop`, `nsubs` and the dirty set are shared with the writer thread; `subs` is
 * the loop's own. */
struct hub_slot {
    _Atomic(sb_loop *) loop; /* set by the loop's thread on its first subscriber */
    atomic_int nsubs;
    atomic_flag lock; /* guards posted, all, n, dirty */
    bool posted;      /* a wake-up message is waiting on the loop */
    bool all;
    int n;
    char dirty[SB_EVENT_EMITTED_MAX][SB_ID_MAX];
    sub *subs;
    struct sb_events_hub *hub;
};

typedef struct sb_events_hub {
    sb_app *app;
    hub_slot slots[SB_STORE_MAX_READERS];
} sb_events_hub;

static void slot_lock(hub_slot *s)
{
    while (atomic_flag_test_and_set_explicit(&s->lock, memory_order_acquire))
        ;
}

static void slot_unlock(hub_slot *s)
{
    atomic_flag_clear_explicit(&s->lock, memory_order_release);
}

/* ---- reading and sending -------------------------------------------------------------- */

typedef struct item {
    int64_t seq;
    char *text; /* the WebSocket message or the SSE event block */
    size_t len;
} item;

static int format_item(sub *s, sqlite3_stmt *st, item *it)
{
    const char *id = (const char *)sqlite3_column_text(st, 1);
    const char *type = (const char *)sqlite3_column_text(st, 2);
    json_t *env = sb_event_envelope(id, type, sqlite3_column_int64(st, 3), s->project,
                                    (const char *)sqlite3_column_text(st, 4));
    char *json = env ? json_dumps(env, JSON_COMPACT) : NULL;
    json_decref(env);
    if (!json)
        return SB_ENOMEM;
    it->seq = sqlite3_column_int64(st, 0);
    if (s->ws || s->ndjson) {
        it->len = strlen(json);
        it->text = sb_strndup(json, it->len + (s->ndjson ? 1 : 0));
        if (it->text && s->ndjson)
            it->text[it->len++] = '\n';
    } else {
        sb_buf b;
        sb_buf_init(&b, SB_WS_MAX_SEND);
        int rc = sb_buf_appendf(&b, "id: %s\nevent: %s\ndata: %s\n\n", id, type, json);
        it->text = rc ? NULL : b.base;
        it->len = b.len;
        if (rc)
            sb_buf_free(&b);
    }
    free(json);
    return it->text ? 0 : SB_ENOMEM;
}

/* Reads one page of s's unseen events into items; returns how many, or a negative SB_E*.
 * The statement is reset before returning, so no read transaction outlives the call. */
static int read_page(sb_events_hub *h, sub *s, item *items)
{
    sqlite3 *db = sb_store_reader(sb__app_store(h->app), s->slot - h->slots);
    sqlite3_stmt *st = db ? sb_store_stmt(db, "SELECT seq, id, type, created_at, data FROM events "
                                              "WHERE project_id = ?1 AND seq > ?2 ORDER BY seq "
                                              "LIMIT ?3")
                          : NULL;
    if (!st)
        return SB_EIO;
    sqlite3_bind_text(st, 1, s->project, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, s->last_seq);
    sqlite3_bind_int(st, 3, SB_EVENTS_PAGE);
    int n = 0, rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int frc = format_item(s, st, &items[n]);
        if (frc) {
            rc = frc;
            break;
        }
        n++;
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        for (int i = 0; i < n; i++)
            sb_free(items[i].text);
        return rc < 0 ? rc : SB_EIO;
    }
    return n;
}

/* Whether s has enough output waiting: a long backlog (a resume from an old id) is sent as
 * the client reads it, continuing from the writable callback, instead of overflowing the
 * send bound and being closed again and again. */
static bool backed_up(const sub *s)
{
    if (s->ws)
        return sb_ws_queued(s->ws) > sb_ws_send_capacity(s->ws) / 4;
    return sb_resp_stream_queued(s->req) > SB_STREAM_MAX_QUEUED / 4;
}

/* Sends s the events it has not seen, as far as its client keeps up. Returns false if s is
 * gone (freed: an SSE stream that ended while writing) or stopped (a WebSocket now
 * closing). */
static bool pump_pages(sb_events_hub *h, sub *s);

static bool pump(sb_events_hub *h, sub *s)
{
    if (s->pumping) {
        s->again = true;
        return true;
    }
    s->pumping = true;
    bool alive;
    do {
        s->again = false;
        alive = pump_pages(h, s);
    } while (alive && s->again);
    if (alive)
        s->pumping = false;
    return alive;
}

static bool pump_pages(sb_events_hub *h, sub *s)
{
    item items[SB_EVENTS_PAGE];
    for (;;) {
        if (backed_up(s))
            return true; /* the writable callback continues */
        int n = read_page(h, s, items);
        if (n < 0) {
            sb_log(SB_LOG_ERROR, "events: cannot read the outbox", "reason", sb_strerror(n), NULL);
            return true; /* the next wake-up tries again */
        }
        int i = 0;
        bool alive = true;
        for (; i < n && alive && !backed_up(s); i++) {
            int rc = s->ws ? sb_ws_send(s->ws, SB_WS_TEXT, items[i].text, items[i].len)
                           : sb_resp_stream_write(s->req, items[i].text, items[i].len);
            if (rc == 0)
                s->last_seq = items[i].seq;
            else
                alive = false; /* a WebSocket closes (4008) / an SSE sub may be freed */
            sb_free(items[i].text);
        }
        for (; i < n; i++)
            sb_free(items[i].text);
        if (!alive)
            return false;
        if (n < SB_EVENTS_PAGE && i == n)
            return true;
    }
}

/* ---- wake-ups ------------------------------------------------------------------------- */

static bool slot_dirty(const hub_slot *sl, bool all, int n, char (*ids)[SB_ID_MAX],
                       const char *project)
{
    (void)sl;
    if (all)
        return true;
    for (int i = 0; i < n; i++)
        if (strcmp(ids[i], project) == 0)
            return true;
    return false;
}

/* On the loop: read for the subscribers of the projects that changed. */
static void on_wake(sb_loop *loop, void *arg)
{
    (void)loop;
    hub_slot *sl = arg;
    char ids[SB_EVENT_EMITTED_MAX][SB_ID_MAX];
    slot_lock(sl);
    bool all = sl->all;
    int n = sl->n;
    memcpy(ids, sl->dirty, (size_t)n * SB_ID_MAX);
    sl->posted = false;
    sl->all = false;
    sl->n = 0;
    slot_unlock(sl);
    for (sub *s = sl->subs, *next; s; s = next) {
        next = s->next; /* pump may free s, never another subscriber */
        if (slot_dirty(sl, all, n, ids, s->project))
            pump(sl->hub, s);
    }
}

/* On the writer thread, after a commit. */
static void commit_hook(void *ud)
{
    sb_events_hub *h = ud;
    char ids[SB_EVENT_EMITTED_MAX][SB_ID_MAX];
    int n = sb_event_take_emitted(ids, SB_EVENT_EMITTED_MAX);
    if (n == 0)
        return;
    for (int i = 0; i < SB_STORE_MAX_READERS; i++) {
        hub_slot *sl = &h->slots[i];
        sb_loop *loop = atomic_load(&sl->loop);
        if (!loop || atomic_load(&sl->nsubs) == 0)
            continue;
        slot_lock(sl);
        if (n == SB_EVENT_EMITTED_ALL) {
            sl->all = true;
        } else {
            for (int k = 0; k < n && !sl->all; k++) {
                int j = 0;
                while (j < sl->n && strcmp(sl->dirty[j], ids[k]) != 0)
                    j++;
                if (j < sl->n)
                    continue;
                if (sl->n == SB_EVENT_EMITTED_MAX)
                    sl->all = true;
                else
                    memcpy(sl->dirty[sl->n++], ids[k], SB_ID_MAX);
            }
        }
        bool post = !sl->posted;
        sl->posted = true;
        slot_unlock(sl);
        if (post && sb_loop_post(loop, on_wake, sl) != 0) {
            /* Out of memory: the set stays; the next commit posts again. */
            slot_lock(sl);
            sl->posted = false;
            slot_unlock(sl);
        }
    }
}

/* ---- subscribers ---------------------------------------------------------------------- */

static sub *sub_new(sb_events_hub *h, sb_loop *loop, const char *project)
{
    sub *s = sb_calloc(1, sizeof *s);
    if (!s)
        return NULL;
    hub_slot *sl = &h->slots[loop->index];
    s->slot = sl;
    snprintf(s->project, sizeof s->project, "%s", project);
    /* Counted before the caller reads its starting position: a commit the hook does not
     * post for (no subscribers yet) is then already visible to that read. */
    atomic_store(&sl->loop, loop);
    atomic_fetch_add(&sl->nsubs, 1);
    return s;
}

static void sub_link(sub *s)
{
    hub_slot *sl = s->slot;
    s->next = sl->subs;
    if (sl->subs)
        sl->subs->prev = s;
    sl->subs = s;
}

static void sub_free(sub *s, bool linked)
{
    hub_slot *sl = s->slot;
    if (linked) {
        if (s->prev)
            s->prev->next = s->next;
        else
            sl->subs = s->next;
        if (s->next)
            s->next->prev = s->prev;
    }
    atomic_fetch_sub(&sl->nsubs, 1);
    sb_free(s);
}

static void ws_on_open(sb_ws *ws, void *ud)
{
    (void)ws;
    (void)ud;
}

static void ws_on_message(sb_ws *ws, void *ud, int opcode, const void *data, size_t len)
{
    (void)ws, (void)ud, (void)opcode, (void)data, (void)len; /* the stream is one-way */
}

static void ws_on_close(sb_ws *ws, void *ud, uint16_t code, sb_str reason)
{
    (void)ws, (void)code, (void)reason;
    sub_free(ud, true);
}

static void ws_on_writable(sb_ws *ws, void *ud)
{
    sub *s = ud;
    (void)ws;
    pump(s->slot->hub, s);
}

static const sb_ws_handler ws_handler = {
    .on_open = ws_on_open,
    .on_message = ws_on_message,
    .on_close = ws_on_close,
    .on_writable = ws_on_writable,
};

static void sse_on_abort(sb_req *req, void *ud)
{
    (void)req;
    sub_free(ud, true);
}

static void sse_on_writable(sb_req *req, void *ud)
{
    sub *s = ud;
    (void)req;
    pump(s->slot->hub, s);
}

/* ---- GET /v1/events ------------------------------------------------------------------- */

static bool header_has(const sb_req *req, const char *name, const char *token)
{
    const sb_http_header *hd = sb_req_header(req, name);
    if (!hd)
        return false;
    size_t tl = strlen(token);
    for (size_t i = 0; i + tl <= hd->value.len; i++)
        if (sb_str_case_eq((sb_str){hd->value.base + i, tl}, token))
            return true;
    return false;
}

/* The starting position: after the event `since` names (which must be the caller's
 * project's), else the project's newest event. Answers 400/500 and returns false. */
static bool start_seq(sb_app *app, sb_req *req, const char *project, int64_t *seq)
{
    sb_str since = SB_STR_NULL;
    bool have = sb_req_query(req, "since", &since);
    if (!have) {
        const sb_http_header *hd = sb_req_header(req, "last-event-id");
        if (hd) {
            since = hd->value;
            have = true;
        }
    }
    sqlite3 *db = sb_app_reader(app, req);
    sqlite3_stmt *st;
    if (have) {
        st = sb_store_stmt(db, "SELECT seq FROM events WHERE id = ?1 AND project_id = ?2");
        if (!st)
            goto fail;
        sqlite3_bind_text(st, 1, since.base ? since.base : "", (int)since.len, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, project, -1, SQLITE_STATIC);
    } else {
        st = sb_store_stmt(db, "SELECT next_seq - 1 FROM event_counters WHERE project_id = ?1");
        if (!st)
            goto fail;
        sqlite3_bind_text(st, 1, project, -1, SQLITE_STATIC);
    }
    int rc = sqlite3_step(st);
    *seq = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    sqlite3_reset(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        goto fail;
    if (have && rc != SQLITE_ROW) {
        /* Unknown, expired, or another project's: all look the same. */
        sb_resp_problem(req, 400, "invalid-parameter",
                        "since (or Last-Event-ID) is not an event id of this project");
        return false;
    }
    return true;
fail:
    sb_app_internal_error(req, "reading the event position", SB_EIO);
    return false;
}

static void events_get(sb_req *req, void *ud)
{
    sb_events_hub *h = ud;
    sb_auth who;
    bool ws = header_has(req, "upgrade", "websocket");
    bool sse = !ws && header_has(req, "accept", "text/event-stream");
    bool ndjson = !ws && !sse && header_has(req, "accept", "application/x-ndjson");
    if (!sb_app_auth(h->app, req, SB_SCOPE_EVENTS_READ, &who))
        return;
    if (!ws && !sse && !ndjson) {
        sb_resp_problem(req, 406, "not-acceptable",
                        "use WebSocket, Accept: text/event-stream or Accept: application/x-ndjson");
        return;
    }
    sub *s = sub_new(h, req->loop, who.project_id);
    if (!s) {
        sb_resp_problem(req, 503, "overloaded", "out of memory; retry later");
        return;
    }
    if (!start_seq(h->app, req, who.project_id, &s->last_seq)) {
        sub_free(s, false);
        return;
    }
    if (ws) {
        if (sb_ws_accept(req, &ws_handler, s, &s->ws) != 0) {
            sub_free(s, false);
            return;
        }
    } else {
        sb_resp_header(req, "Cache-Control", SB_STR_LIT("no-store"));
        sb_resp_header(req, "X-Accel-Buffering", SB_STR_LIT("no"));
        sb_req_on_abort(req, sse_on_abort, s);
        sb_req_on_writable(req, sse_on_writable, s);
        s->ndjson = ndjson;
        int rc = ndjson ? sb_resp_stream_begin(req, 200, "application/x-ndjson",
                                               SB_EVENTS_HEARTBEAT_MS, "\n")
                        : sb_resp_stream_begin(req, 200, "text/event-stream",
                                               SB_EVENTS_HEARTBEAT_MS, ": keep-alive\n\n");
        if (rc != 0) {
            if (rc == SB_ENOTSUP) /* nothing was sent */
                sb_resp_problem(req, 406, "not-acceptable",
                                "this protocol cannot stream events: use WebSocket");
            sub_free(s, false);
            return;
        }
        s->req = req;
    }
    sub_link(s);
    pump(h, s); /* what came before (since=) or in between */
}

int sb_api_events_register(sb_app *app, sb_router *r)
{
    sb_events_hub *h = sb__app_own(app, sb_calloc(1, sizeof(sb_events_hub)));
    if (!h)
        return SB_ENOMEM;
    h->app = app;
    for (int i = 0; i < SB_STORE_MAX_READERS; i++) {
        atomic_flag_clear(&h->slots[i].lock);
        h->slots[i].hub = h;
    }
    sb_store_set_commit_hook(sb__app_store(app), commit_hook, h);
    return sb_router_add(r, "GET", "/v1/events", events_get, h);
}
