/*
 * Live rooms (see live.h for the contract).
 *
 * Layout: the registry indexes rooms by (project, room) in a chained hash table; a room
 * keeps its attached participants in a list (join order, for fan-out) and in a hash table
 * by identity (for replacement, ejection and `to`). Participants also sit in one min-heap
 * per registry ordered by token expiry, so sb_live_tick finds the expired ones without a
 * walk, and empty rooms sit in a list so the tick walks only those. Joins, leaves and
 * targeted sends are O(1) (expiry: O(log n)); only broadcasts walk the room.
 *
 * Messages are serialized once into a buffer and the same bytes go to every target; the
 * adapter copies them. Nothing here keeps memory per message: the buffers are freed before
 * returning. Tables and the heap grow with participants and rooms only; a participant is
 * its claims (about 600 bytes; metadata on the heap, sized to fit) plus a few pointers.
 *
 * Grant `subscribe` gates payloads (data and binary), not presence: a participant that only
 * publishes, such as a bot or a sensor, still needs to know who is in the room to address
 * `to`, and whether someone is seen at all is what `hidden` decides.
 */
#include "rooms/live.h"

#include <stddef.h>
#include <string.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/ids.h"
#include "core/json.h"
#include "core/log.h"
#include "switchboard/error.h"

#define DATA_MAX     65536 /* as POST /v1/rooms/{name}/messages */
#define TOPIC_MAX    128
#define METADATA_MAX 4096

#define container_of(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

/* ---- Chained hash table with intrusive nodes ----------------------------------------- */

typedef struct hnode {
    struct hnode *next;
    uint64_t h;
} hnode;

typedef struct htab {
    hnode **b;
    size_t nb; /* 0 or a power of two */
    size_t n;
} htab;

/* Makes room for one more entry. Fails only while the table has no buckets at all: when a
 * later growth fails the chains just get a little longer, so inserting never fails after
 * this. */
static int htab_reserve(htab *t)
{
    if (t->nb && t->n < t->nb)
        return 0;
    size_t nb = t->nb ? t->nb * 2 : 8;
    hnode **b = sb_calloc(nb, sizeof *b);
    if (!b)
        return t->nb ? 0 : SB_ENOMEM;
    for (size_t i = 0; i < t->nb; i++) {
        hnode *e = t->b[i];
        while (e) {
            hnode *next = e->next;
            e->next = b[e->h & (nb - 1)];
            b[e->h & (nb - 1)] = e;
            e = next;
        }
    }
    sb_free(t->b);
    t->b = b;
    t->nb = nb;
    return 0;
}

static void htab_insert(htab *t, hnode *e)
{
    hnode **head = &t->b[e->h & (t->nb - 1)];
    e->next = *head;
    *head = e;
    t->n++;
}

static void htab_remove(htab *t, hnode *e)
{
    hnode **pp = &t->b[e->h & (t->nb - 1)];
    while (*pp != e)
        pp = &(*pp)->next;
    *pp = e->next;
    t->n--;
}

static hnode *htab_chain(const htab *t, uint64_t h)
{
    return t->nb ? t->b[h & (t->nb - 1)] : NULL;
}

/* SipHash-2-4 with a per-registry random key: identities and room names come from tokens,
 * and a project must not be able to pick names that collide into one chain and slow down
 * every room on the loop. */
static uint64_t rotl(uint64_t x, int b)
{
    return (x << b) | (x >> (64 - b));
}

static void sipround(uint64_t v[4])
{
    v[0] += v[1];
    v[1] = rotl(v[1], 13) ^ v[0];
    v[0] = rotl(v[0], 32);
    v[2] += v[3];
    v[3] = rotl(v[3], 16) ^ v[2];
    v[0] += v[3];
    v[3] = rotl(v[3], 21) ^ v[0];
    v[2] += v[1];
    v[1] = rotl(v[1], 17) ^ v[2];
    v[2] = rotl(v[2], 32);
}

static uint64_t siphash(const uint64_t k[2], const unsigned char *m, size_t len)
{
    uint64_t v[4] = {0x736f6d6570736575ULL ^ k[0], 0x646f72616e646f6dULL ^ k[1],
                     0x6c7967656e657261ULL ^ k[0], 0x7465646279746573ULL ^ k[1]};
    size_t end = len - len % 8;
    for (size_t i = 0; i < end; i += 8) {
        uint64_t w = 0;
        for (int j = 7; j >= 0; j--)
            w = w << 8 | m[i + (size_t)j];
        v[3] ^= w;
        sipround(v);
        sipround(v);
        v[0] ^= w;
    }
    uint64_t w = (uint64_t)len << 56;
    for (size_t i = 0; i < len % 8; i++)
        w |= (uint64_t)m[end + i] << (8 * i);
    v[3] ^= w;
    sipround(v);
    sipround(v);
    v[0] ^= w;
    v[2] ^= 0xff;
    for (int i = 0; i < 4; i++)
        sipround(v);
    return v[0] ^ v[1] ^ v[2] ^ v[3];
}

/* ---- Objects ------------------------------------------------------------------------- */

struct sb_live_participant {
    hnode node;                       /* in room->by_identity while attached */
    sb_live_participant *prev, *next; /* room list, join order */
    sb_live_room *room;               /* NULL once detached or left */
    void *conn;
    const sb_live_conn_ops *ops;
    size_t heap_i; /* position in rs->expiry while attached */
    uint64_t mark; /* the last targeted send that reached it (duplicates in `to`) */
    int64_t joined_at;
    char session_id[SB_ID_MAX]; /* kept here so the object reads the same once detached */
    sb_live_claims claims;
    char *metadata; /* claims.metadata when not empty; freed with the participant */
};

struct sb_live_room {
    hnode node; /* in rs->rooms */
    sb_live_room *empty_prev, *empty_next;
    bool on_empty;       /* in rs->empty: no participant, session still running */
    int64_t empty_since; /* ms; -1 until the first tick that sees the room empty */
    htab by_identity;
    sb_live_participant *head, *tail;
    size_t count;   /* attached participants */
    size_t visible; /* of which not hidden */
    uint32_t max_participants;
    uint32_t empty_timeout_seconds;
    json_t *room_json;
    char project_id[SB_ID_MAX];
    char name[129];
    char session_id[SB_ID_MAX];
};

struct sb_live_rooms {
    sb_live_hooks hooks;
    uint64_t key[2];
    htab rooms;
    sb_live_room *empty;
    sb_live_participant **expiry; /* min-heap on claims.exp */
    size_t nexpiry, capexpiry;
    uint64_t mark;
};

static bool is_visible(const sb_live_participant *p)
{
    return !(p->claims.grants & SB_GRANT_HIDDEN);
}

static void copy_str(char *dst, size_t size, const char *src)
{
    size_t n = strnlen(src, size - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

static uint64_t room_hash(const sb_live_rooms *rs, const char *project, const char *room)
{
    unsigned char k[SB_ID_MAX + 129];
    size_t a = strnlen(project, SB_ID_MAX - 1), b = strnlen(room, 128);
    memcpy(k, project, a);
    k[a] = '\0';
    memcpy(k + a + 1, room, b);
    return siphash(rs->key, k, a + 1 + b);
}

static uint64_t identity_hash(const sb_live_rooms *rs, const char *identity)
{
    return siphash(rs->key, (const unsigned char *)identity, strlen(identity));
}

static sb_live_room *room_find(sb_live_rooms *rs, const char *project, const char *room)
{
    if (!project || !room)
        return NULL;
    uint64_t h = room_hash(rs, project, room);
    for (hnode *e = htab_chain(&rs->rooms, h); e; e = e->next) {
        sb_live_room *r = container_of(e, sb_live_room, node);
        if (e->h == h && strcmp(r->name, room) == 0 && strcmp(r->project_id, project) == 0)
            return r;
    }
    return NULL;
}

static sb_live_participant *participant_find(sb_live_rooms *rs, sb_live_room *r,
                                             const char *identity)
{
    uint64_t h = identity_hash(rs, identity);
    for (hnode *e = htab_chain(&r->by_identity, h); e; e = e->next) {
        sb_live_participant *p = container_of(e, sb_live_participant, node);
        if (e->h == h && strcmp(p->claims.identity, identity) == 0)
            return p;
    }
    return NULL;
}

/* ---- Expiry heap --------------------------------------------------------------------- */

static void heap_set(sb_live_rooms *rs, size_t i, sb_live_participant *p)
{
    rs->expiry[i] = p;
    p->heap_i = i;
}

static void heap_up(sb_live_rooms *rs, size_t i)
{
    sb_live_participant *p = rs->expiry[i];
    while (i > 0 && rs->expiry[(i - 1) / 2]->claims.exp > p->claims.exp) {
        heap_set(rs, i, rs->expiry[(i - 1) / 2]);
        i = (i - 1) / 2;
    }
    heap_set(rs, i, p);
}

static void heap_down(sb_live_rooms *rs, size_t i)
{
    sb_live_participant *p = rs->expiry[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= rs->nexpiry)
            break;
        if (c + 1 < rs->nexpiry && rs->expiry[c + 1]->claims.exp < rs->expiry[c]->claims.exp)
            c++;
        if (rs->expiry[c]->claims.exp >= p->claims.exp)
            break;
        heap_set(rs, i, rs->expiry[c]);
        i = c;
    }
    heap_set(rs, i, p);
}

static int heap_reserve(sb_live_rooms *rs)
{
    if (rs->nexpiry < rs->capexpiry)
        return 0;
    size_t cap = rs->capexpiry ? rs->capexpiry * 2 : 64;
    sb_live_participant **e = sb_realloc(rs->expiry, cap * sizeof *e);
    if (!e)
        return SB_ENOMEM;
    rs->expiry = e;
    rs->capexpiry = cap;
    return 0;
}

static void heap_push(sb_live_rooms *rs, sb_live_participant *p)
{
    heap_set(rs, rs->nexpiry++, p);
    heap_up(rs, p->heap_i);
}

static void heap_remove(sb_live_rooms *rs, sb_live_participant *p)
{
    size_t i = p->heap_i;
    sb_live_participant *last = rs->expiry[--rs->nexpiry];
    if (i == rs->nexpiry)
        return;
    heap_set(rs, i, last);
    heap_up(rs, i);
    heap_down(rs, last->heap_i);
}

/* ---- Messages ------------------------------------------------------------------------ */

/* A message being built; the first error sticks so builders read as straight lines. The
 * buffer has no maximum of its own: every input is bounded (identity, name, metadata,
 * topic, data), and `joined` grows with the room, which max_participants bounds. */
typedef struct msg {
    sb_buf b;
    int err;
} msg;

static void msg_init(msg *m)
{
    sb_buf_init(&m->b, 0);
    m->err = 0;
}

static void msg_free(msg *m)
{
    sb_buf_free(&m->b);
}

static void put(msg *m, const char *s)
{
    if (!m->err)
        m->err = sb_buf_append_str(&m->b, s);
}

static void put_strn(msg *m, const char *s, size_t len)
{
    put(m, "\"");
    if (!m->err)
        m->err = sb_buf_append_json_str(&m->b, s, len);
    put(m, "\"");
}

static void put_str(msg *m, const char *s)
{
    put_strn(m, s, strlen(s));
}

/* Empty strings are what the claims hold for "none": the API shows null. */
static void put_str_or_null(msg *m, const char *s)
{
    if (s && *s)
        put_str(m, s);
    else
        put(m, "null");
}

static void put_bool(msg *m, const char *name, bool v, bool last)
{
    put_str(m, name);
    put(m, v ? ":true" : ":false");
    put(m, last ? "}" : ",");
}

static void put_participant(msg *m, const sb_live_participant *p)
{
    char ts[32];
    unsigned g = p->claims.grants;
    sb_time_rfc3339(p->joined_at, ts);
    put(m, "{\"identity\":");
    put_str(m, p->claims.identity);
    put(m, ",\"name\":");
    put_str_or_null(m, p->claims.name);
    put(m, ",\"metadata\":");
    put_str_or_null(m, p->claims.metadata);
    put(m, ",\"grants\":{");
    put_bool(m, "publish", g & SB_GRANT_PUBLISH, false);
    put_bool(m, "subscribe", g & SB_GRANT_SUBSCRIBE, false);
    put_bool(m, "publish_data", g & SB_GRANT_PUBLISH_DATA, false);
    put_bool(m, "admin", g & SB_GRANT_ADMIN, false);
    put_bool(m, "hidden", g & SB_GRANT_HIDDEN, false);
    put_bool(m, "record", g & SB_GRANT_RECORD, true);
    put(m, ",\"joined_at\":");
    put_str(m, ts);
    put(m, ",\"session_id\":");
    put_str(m, p->session_id);
    put(m, "}");
}

/* The stored room object with the live fields filled in (it is our own copy). */
static void put_room(msg *m, sb_live_room *r, size_t visible)
{
    if (m->err)
        return;
    if (json_object_set_new(r->room_json, "num_participants", json_integer((json_int_t)visible)) ||
        json_object_set_new(r->room_json, "active_session_id", json_string(r->session_id))) {
        m->err = SB_ENOMEM;
        return;
    }
    m->err = sb_json_dump(r->room_json, &m->b);
}

static void build_left(msg *m, const sb_live_participant *p, const char *reason)
{
    put(m, "{\"type\":\"participant_left\",\"identity\":");
    put_str(m, p->claims.identity);
    put(m, ",\"reason\":");
    put_str(m, reason);
    put(m, "}");
}

static void build_with_participant(msg *m, const char *type, const sb_live_participant *p)
{
    put(m, "{\"type\":");
    put_str(m, type);
    put(m, ",\"participant\":");
    put_participant(m, p);
    put(m, "}");
}

static void build_data(msg *m, const char *from, const char *topic, size_t topic_len,
                       const char *data, size_t len)
{
    put(m, "{\"type\":\"data\",\"from\":");
    if (from)
        put_str(m, from);
    else
        put(m, "null");
    put(m, ",\"topic\":");
    if (topic)
        put_strn(m, topic, topic_len);
    else
        put(m, "null");
    put(m, ",\"data\":");
    put_strn(m, data, len);
    put(m, "}");
}

static bool send_one(sb_live_participant *q, int opcode, const sb_buf *b)
{
    return q->ops->send(q->conn, opcode, b->base, b->len) == 0;
}

/* Sends b to every attached participant but `except` that holds all the `need` grants.
 * A failed send is the adapter's to handle (it closes with 4008 and calls sb_live_leave
 * later), so it only goes uncounted here. */
static int fan_out(sb_live_room *r, int opcode, const sb_buf *b, const sb_live_participant *except,
                   unsigned need)
{
    int n = 0;
    for (sb_live_participant *q = r->head; q; q = q->next)
        if (q != except && (q->claims.grants & need) == need && send_one(q, opcode, b))
            n++;
    return n;
}

/* One target of a `to` list: unknown identities, the sender, repeats and participants
 * without subscribe are skipped. */
static int send_to(sb_live_rooms *rs, sb_live_room *r, const sb_live_participant *from,
                   const char *identity, const sb_buf *b)
{
    sb_live_participant *q = participant_find(rs, r, identity);
    if (!q || q == from || q->mark == rs->mark || !(q->claims.grants & SB_GRANT_SUBSCRIBE))
        return 0;
    q->mark = rs->mark;
    return send_one(q, SB_LIVE_OP_TEXT, b) ? 1 : 0;
}

/* ---- Membership ---------------------------------------------------------------------- */

static void empty_add(sb_live_rooms *rs, sb_live_room *r)
{
    if (r->count || r->on_empty)
        return;
    r->on_empty = true;
    r->empty_since = -1;
    r->empty_prev = NULL;
    r->empty_next = rs->empty;
    if (rs->empty)
        rs->empty->empty_prev = r;
    rs->empty = r;
}

static void empty_remove(sb_live_rooms *rs, sb_live_room *r)
{
    if (!r->on_empty)
        return;
    if (r->empty_prev)
        r->empty_prev->empty_next = r->empty_next;
    else
        rs->empty = r->empty_next;
    if (r->empty_next)
        r->empty_next->empty_prev = r->empty_prev;
    r->on_empty = false;
}

static void attach(sb_live_rooms *rs, sb_live_room *r, sb_live_participant *p)
{
    p->room = r;
    p->next = NULL;
    p->prev = r->tail;
    if (r->tail)
        r->tail->next = p;
    else
        r->head = p;
    r->tail = p;
    htab_insert(&r->by_identity, &p->node);
    heap_push(rs, p);
    r->count++;
    if (is_visible(p))
        r->visible++;
    empty_remove(rs, r);
}

/* Takes p out of its room; from here on it sees, counts and receives nothing there. */
static sb_live_room *unlink_participant(sb_live_rooms *rs, sb_live_participant *p)
{
    sb_live_room *r = p->room;
    if (p->prev)
        p->prev->next = p->next;
    else
        r->head = p->next;
    if (p->next)
        p->next->prev = p->prev;
    else
        r->tail = p->prev;
    p->prev = p->next = NULL;
    htab_remove(&r->by_identity, &p->node);
    heap_remove(rs, p);
    r->count--;
    if (is_visible(p))
        r->visible--;
    p->room = NULL;
    return r;
}

/* prebuilt: the message already serialized (a join builds it before committing), or NULL. */
static void announce_left(sb_live_room *r, const sb_live_participant *p, const char *reason,
                          const sb_buf *prebuilt)
{
    if (!is_visible(p) || !r->head)
        return;
    if (prebuilt) {
        fan_out(r, SB_LIVE_OP_TEXT, prebuilt, NULL, 0);
        return;
    }
    msg m;
    msg_init(&m);
    build_left(&m, p, reason);
    if (m.err)
        sb_log(SB_LOG_WARN, "live: participant_left not sent", "room", r->name, "identity",
               p->claims.identity, "error", sb_strerror(m.err), NULL);
    else
        fan_out(r, SB_LIVE_OP_TEXT, &m.b, NULL, 0);
    msg_free(&m);
}

/* p leaves r: the others hear of it, the hook reports it, and an emptied room starts its
 * empty timer. announce is false when the whole room is going away. */
static void depart(sb_live_rooms *rs, sb_live_participant *p, const char *reason, bool announce,
                   const sb_buf *prebuilt)
{
    sb_live_room *r = unlink_participant(rs, p);
    if (announce)
        announce_left(r, p, reason, prebuilt);
    if (rs->hooks.participant_left)
        rs->hooks.participant_left(rs->hooks.ud, r, p, reason);
    if (announce)
        empty_add(rs, r);
}

/* The server removes p: its connection starts closing and it is detached at once (see
 * "Lifetime" in live.h); sb_live_leave will only free it. */
static void detach(sb_live_rooms *rs, sb_live_participant *p, const char *reason, uint16_t code,
                   const char *text, bool announce, const sb_buf *prebuilt)
{
    p->ops->close(p->conn, code, text);
    depart(rs, p, reason, announce, prebuilt);
}

static void room_free(sb_live_room *r)
{
    json_decref(r->room_json);
    sb_free(r->by_identity.b);
    sb_free(r);
}

/* Closes everyone still in r, ends its session and frees it. */
static void room_end(sb_live_rooms *rs, sb_live_room *r, const char *session_reason)
{
    htab_remove(&rs->rooms, &r->node);
    empty_remove(rs, r);
    while (r->head)
        detach(rs, r->head, "room_closed", SB_CLOSE_ROOM_CLOSED, "room closed", false, NULL);
    if (rs->hooks.session_ended)
        rs->hooks.session_ended(rs->hooks.ud, r, session_reason);
    room_free(r);
}

/* ---- Registry ------------------------------------------------------------------------ */

int sb_live_rooms_new(sb_live_rooms **out, const sb_live_hooks *hooks)
{
    int rc;
    sb_live_rooms *rs;
    if (!out)
        return SB_EINVAL;
    *out = NULL;
    rs = sb_calloc(1, sizeof *rs);
    if (!rs)
        return SB_ENOMEM;
    if (hooks)
        rs->hooks = *hooks;
    rc = sb_random(rs->key, sizeof rs->key);
    if (rc)
        goto fail_rs;
    *out = rs;
    return 0;

fail_rs:
    sb_free(rs);
    return rc;
}

void sb_live_rooms_free(sb_live_rooms *rs)
{
    if (!rs)
        return;
    for (size_t i = 0; i < rs->rooms.nb; i++)
        while (rs->rooms.b[i])
            room_end(rs, container_of(rs->rooms.b[i], sb_live_room, node), "shutdown");
    sb_free(rs->rooms.b);
    sb_free(rs->expiry);
    sb_free(rs);
}

static int room_new(sb_live_rooms *rs, const sb_rtc_claims *c, const sb_live_room_settings *s,
                    sb_live_room **out)
{
    sb_live_room *r = sb_calloc(1, sizeof *r);
    if (!r)
        return SB_ENOMEM;
    copy_str(r->project_id, sizeof r->project_id, c->project_id);
    copy_str(r->name, sizeof r->name, c->room);
    r->node.h = room_hash(rs, r->project_id, r->name);
    r->max_participants = s->max_participants;
    r->empty_timeout_seconds = s->empty_timeout_seconds;
    r->room_json = json_is_object(s->room_json) ? json_deep_copy(s->room_json)
                                                : json_pack("{s:s}", "name", r->name);
    if (!r->room_json) {
        sb_free(r);
        return SB_ENOMEM;
    }
    *out = r;
    return 0;
}

/* Every string of the claims is terminated inside its array, and there is an identity. */
static bool claims_ok(const sb_rtc_claims *c)
{
    return c->identity[0] && memchr(c->identity, 0, sizeof c->identity) &&
           memchr(c->project_id, 0, sizeof c->project_id) && memchr(c->room, 0, sizeof c->room) &&
           memchr(c->name, 0, sizeof c->name) && memchr(c->metadata, 0, sizeof c->metadata);
}

static int session_start(sb_live_rooms *rs, sb_live_room *r)
{
    char id[SB_ID_MAX] = {0};
    if (rs->hooks.session_started)
        rs->hooks.session_started(rs->hooks.ud, r, id);
    id[SB_ID_MAX - 1] = '\0';
    if (!id[0]) {
        int rc = sb_id_new("ses", id);
        if (rc)
            return rc;
    }
    memcpy(r->session_id, id, sizeof id);
    return 0;
}

static int set_claims(sb_live_participant *p, const sb_rtc_claims *c)
{
    sb_live_claims *l = &p->claims;
    memcpy(l->project_id, c->project_id, sizeof l->project_id);
    memcpy(l->room, c->room, sizeof l->room);
    memcpy(l->identity, c->identity, sizeof l->identity);
    memcpy(l->jti, c->jti, sizeof l->jti);
    memcpy(l->name, c->name, sizeof l->name);
    l->grants = c->grants;
    l->exp = c->exp;
    l->metadata = "";
    if (c->metadata[0]) {
        if (!(p->metadata = sb_strdup(c->metadata)))
            return SB_ENOMEM;
        l->metadata = p->metadata;
    }
    return 0;
}

static void participant_free(sb_live_participant *p)
{
    if (!p)
        return;
    sb_free(p->metadata);
    sb_free(p);
}

int sb_live_join(sb_live_rooms *rs, const sb_rtc_claims *claims,
                 const sb_live_room_settings *settings, void *conn, const sb_live_conn_ops *ops,
                 int64_t now_ms, sb_live_participant **out, int *close_code)
{
    int rc;
    sb_live_room *r;
    sb_live_participant *p = NULL, *old;
    bool created = false;
    msg joined, hello, gone;
    if (close_code)
        *close_code = 0;
    if (out)
        *out = NULL;
    if (!rs || !claims || !settings || !ops || !ops->send || !ops->close || !out ||
        !claims_ok(claims))
        return SB_EINVAL;
    msg_init(&joined);
    msg_init(&hello);
    msg_init(&gone);

    r = room_find(rs, claims->project_id, claims->room);
    if (!r) {
        rc = room_new(rs, claims, settings, &r);
        if (rc)
            goto fail;
        created = true;
    }
    /* The connection this one replaces does not count against the limit. */
    old = participant_find(rs, r, claims->identity);
    if (r->max_participants && r->count - (old ? 1 : 0) >= r->max_participants) {
        if (close_code)
            *close_code = SB_CLOSE_ROOM_FULL;
        rc = SB_EAGAIN;
        goto fail;
    }

    p = sb_calloc(1, sizeof *p);
    if (!p) {
        rc = SB_ENOMEM;
        goto fail;
    }
    if (set_claims(p, claims) != 0) {
        rc = SB_ENOMEM;
        goto fail;
    }
    p->conn = conn;
    p->ops = ops;
    p->joined_at = now_ms;
    p->node.h = identity_hash(rs, claims->identity);
    rc = heap_reserve(rs);
    if (rc)
        goto fail;
    rc = htab_reserve(&r->by_identity);
    if (rc)
        goto fail;
    if (created) {
        rc = htab_reserve(&rs->rooms);
        if (rc)
            goto fail;
        rc = session_start(rs, r);
        if (rc)
            goto fail;
        /* Registered with a running session: from here a failure leaves an empty room
         * that the tick ends, so the session_started hook always gets its session_ended. */
        htab_insert(&rs->rooms, &r->node);
        created = false;
    }
    memcpy(p->session_id, r->session_id, sizeof p->session_id);

    /* Everything is serialized before anything changes, so an error leaves no trace. */
    size_t visible = r->visible - (old && is_visible(old)) + is_visible(p);
    put(&joined, "{\"type\":\"joined\",\"room\":");
    put_room(&joined, r, visible);
    put(&joined, ",\"session_id\":");
    put_str(&joined, r->session_id);
    put(&joined, ",\"participant\":");
    put_participant(&joined, p);
    put(&joined, ",\"participants\":[");
    bool first = true;
    for (sb_live_participant *q = r->head; q; q = q->next) {
        if (q == old || !is_visible(q))
            continue;
        if (!first)
            put(&joined, ",");
        first = false;
        put_participant(&joined, q);
    }
    put(&joined, "]}");
    if (is_visible(p))
        build_with_participant(&hello, "participant_joined", p);
    if (old)
        build_left(&gone, old, "replaced");
    rc = joined.err ? joined.err : hello.err ? hello.err : gone.err;
    if (rc)
        goto fail;

    if (old)
        detach(rs, old, "replaced", SB_CLOSE_REPLACED, "identity joined elsewhere", true, &gone.b);
    attach(rs, r, p);
    send_one(p, SB_LIVE_OP_TEXT, &joined.b);
    if (is_visible(p))
        fan_out(r, SB_LIVE_OP_TEXT, &hello.b, p, 0);
    if (rs->hooks.participant_joined)
        rs->hooks.participant_joined(rs->hooks.ud, r, p);
    msg_free(&gone);
    msg_free(&hello);
    msg_free(&joined);
    *out = p;
    return 0;

fail:
    msg_free(&gone);
    msg_free(&hello);
    msg_free(&joined);
    participant_free(p);
    if (created)
        room_free(r);
    else if (r)
        empty_add(rs, r);
    return rc;
}

void sb_live_leave(sb_live_rooms *rs, sb_live_participant *p, const char *reason)
{
    if (!p)
        return;
    if (p->room)
        depart(rs, p, reason ? reason : "left", true, NULL);
    participant_free(p);
}

/* ---- Messages from participants and the server --------------------------------------- */

int sb_live_refresh(sb_live_rooms *rs, sb_live_participant *p, int64_t exp)
{
    if (!rs || !p)
        return SB_EINVAL;
    if (!p->room)
        return SB_ENOENT;
    int64_t old = p->claims.exp;
    p->claims.exp = exp;
    if (exp < old)
        heap_up(rs, p->heap_i);
    else
        heap_down(rs, p->heap_i);
    return 0;
}

int sb_live_on_text(sb_live_rooms *rs, sb_live_participant *p, const char *msgtext, size_t len)
{
    static const char *const members[] = {"type", "data", "topic", "to", NULL};
    int rc;
    char why[128];
    const char *type = NULL, *data = NULL, *topic = NULL;
    size_t dlen = 0, tlen = 0;
    json_t *j, *to;
    json_error_t e;
    msg m;
    if (!rs || !p || (!msgtext && len))
        return SB_EINVAL;
    if (!p->room)
        return SB_ENOENT;
    if (!(p->claims.grants & SB_GRANT_PUBLISH_DATA))
        return SB_EACCES;
    j = json_loadb(msgtext ? msgtext : "", len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &e);
    if (!j)
        return SB_EINVAL;
    msg_init(&m);
    rc = SB_EINVAL;
    if (!json_is_object(j) || sb_json_only(j, members, why, sizeof why) ||
        sb_json_get_string(j, "type", &type, NULL, 16, why, sizeof why) || !type ||
        strcmp(type, "data") != 0 ||
        sb_json_get_string(j, "data", &data, &dlen, DATA_MAX, why, sizeof why) || !data ||
        sb_json_get_string(j, "topic", &topic, &tlen, TOPIC_MAX, why, sizeof why))
        goto out;
    to = json_object_get(j, "to");
    if (json_is_null(to))
        to = NULL;
    if (to) {
        size_t i;
        json_t *v;
        if (!json_is_array(to))
            goto out;
        json_array_foreach(to, i, v) if (!json_is_string(v)) goto out;
    }

    build_data(&m, p->claims.identity, topic, tlen, data, dlen);
    rc = m.err;
    if (rc)
        goto out;
    if (!to) {
        rc = fan_out(p->room, SB_LIVE_OP_TEXT, &m.b, p, SB_GRANT_SUBSCRIBE);
    } else {
        size_t i;
        json_t *v;
        rs->mark++;
        rc = 0;
        json_array_foreach(to, i, v) rc += send_to(rs, p->room, p, json_string_value(v), &m.b);
    }

out:
    msg_free(&m);
    json_decref(j);
    return rc;
}

int sb_live_on_binary(sb_live_rooms *rs, sb_live_participant *p, const void *data, size_t len)
{
    int rc;
    sb_buf b;
    if (!rs || !p || (!data && len))
        return SB_EINVAL;
    if (!p->room)
        return SB_ENOENT;
    if (!(p->claims.grants & SB_GRANT_PUBLISH))
        return SB_EACCES;
    /* Identities are at most 128 bytes, so the length always fits the header byte. */
    unsigned char n = (unsigned char)strnlen(p->claims.identity, 128);
    sb_buf_init(&b, 0);
    rc = sb_buf_reserve(&b, 1 + (size_t)n + len);
    if (rc)
        goto out;
    sb_buf_append(&b, &n, 1);
    sb_buf_append(&b, p->claims.identity, n);
    sb_buf_append(&b, data, len);
    rc = fan_out(p->room, SB_LIVE_OP_BINARY, &b, p, SB_GRANT_SUBSCRIBE);
out:
    sb_buf_free(&b);
    return rc;
}

int sb_live_send_data(sb_live_rooms *rs, const char *project_id, const char *room, const char *data,
                      size_t len, const char *topic, const char *const *to, size_t nto)
{
    int rc;
    msg m;
    if (!rs || (!data && len) || len > DATA_MAX || (topic && strlen(topic) > TOPIC_MAX) ||
        (!to && nto))
        return SB_EINVAL;
    sb_live_room *r = room_find(rs, project_id, room);
    if (!r)
        return SB_ENOENT;
    msg_init(&m);
    build_data(&m, NULL, topic, topic ? strlen(topic) : 0, data ? data : "", len);
    rc = m.err;
    if (rc)
        goto out;
    if (!to) {
        rc = fan_out(r, SB_LIVE_OP_TEXT, &m.b, NULL, SB_GRANT_SUBSCRIBE);
    } else {
        rs->mark++;
        rc = 0;
        for (size_t i = 0; i < nto; i++)
            if (to[i])
                rc += send_to(rs, r, NULL, to[i], &m.b);
    }
out:
    msg_free(&m);
    return rc;
}

/* ---- Control-plane effects ----------------------------------------------------------- */

static sb_live_participant *find_attached(sb_live_rooms *rs, const char *project_id,
                                          const char *room, const char *identity)
{
    if (!rs || !identity)
        return NULL;
    sb_live_room *r = room_find(rs, project_id, room);
    return r ? participant_find(rs, r, identity) : NULL;
}

int sb_live_eject(sb_live_rooms *rs, const char *project_id, const char *room, const char *identity)
{
    sb_live_participant *p = find_attached(rs, project_id, room, identity);
    if (!p)
        return SB_ENOENT;
    detach(rs, p, "ejected", SB_CLOSE_EJECTED, "ejected", true, NULL);
    return 0;
}

int sb_live_update_participant(sb_live_rooms *rs, const char *project_id, const char *room,
                               const char *identity, const char *metadata, const unsigned *grants)
{
    int rc;
    msg self, others;
    sb_live_participant *p = find_attached(rs, project_id, room, identity);
    if (!p)
        return SB_ENOENT;
    if (metadata && strnlen(metadata, METADATA_MAX + 1) > METADATA_MAX)
        return SB_EINVAL;
    /* Applied first so that the messages show the new state; undone if they cannot be
     * built. Grants take effect for the very next frame. */
    char *old_heap = p->metadata, *new_heap = NULL;
    const char *old_metadata = p->claims.metadata;
    unsigned old_grants = p->claims.grants;
    bool was_visible = is_visible(p);
    if (metadata && *metadata && !(new_heap = sb_strdup(metadata)))
        return SB_ENOMEM;
    if (metadata) {
        p->metadata = new_heap;
        p->claims.metadata = new_heap ? new_heap : "";
    }
    if (grants)
        p->claims.grants = *grants;
    bool now_visible = is_visible(p);

    msg_init(&self);
    msg_init(&others);
    build_with_participant(&self, "participant_updated", p);
    if (was_visible && !now_visible)
        build_left(&others, p, "hidden");
    else if (!was_visible && now_visible)
        build_with_participant(&others, "participant_joined", p);
    rc = self.err ? self.err : others.err;
    if (rc) {
        p->metadata = old_heap;
        p->claims.metadata = old_metadata;
        p->claims.grants = old_grants;
        sb_free(new_heap);
        goto out;
    }
    if (metadata)
        sb_free(old_heap);

    sb_live_room *r = p->room;
    if (was_visible && !now_visible)
        r->visible--;
    else if (!was_visible && now_visible)
        r->visible++;
    send_one(p, SB_LIVE_OP_TEXT, &self.b);
    if (was_visible && now_visible)
        fan_out(r, SB_LIVE_OP_TEXT, &self.b, p, 0);
    else if (was_visible != now_visible)
        fan_out(r, SB_LIVE_OP_TEXT, &others.b, p, 0);
out:
    msg_free(&others);
    msg_free(&self);
    return rc;
}

int sb_live_close_room(sb_live_rooms *rs, const char *project_id, const char *room)
{
    sb_live_room *r = rs ? room_find(rs, project_id, room) : NULL;
    if (!r)
        return SB_ENOENT;
    room_end(rs, r, "room_closed");
    return 0;
}

int sb_live_update_room(sb_live_rooms *rs, const char *project_id, const char *room,
                        const sb_live_room_settings *settings)
{
    int rc;
    msg m;
    json_t *fresh = NULL;
    if (!rs || !settings || (settings->room_json && !json_is_object(settings->room_json)))
        return SB_EINVAL;
    sb_live_room *r = room_find(rs, project_id, room);
    if (!r)
        return SB_ENOENT;
    json_t *prev = r->room_json;
    if (settings->room_json) {
        fresh = json_deep_copy(settings->room_json);
        if (!fresh)
            return SB_ENOMEM;
        r->room_json = fresh;
    }
    msg_init(&m);
    put(&m, "{\"type\":\"room_updated\",\"room\":");
    put_room(&m, r, r->visible);
    put(&m, "}");
    rc = m.err;
    if (rc) {
        if (fresh) {
            r->room_json = prev;
            json_decref(fresh);
        }
        goto out;
    }
    if (fresh)
        json_decref(prev);
    r->max_participants = settings->max_participants;
    r->empty_timeout_seconds = settings->empty_timeout_seconds;
    fan_out(r, SB_LIVE_OP_TEXT, &m.b, NULL, 0);
out:
    msg_free(&m);
    return rc;
}

void sb_live_tick(sb_live_rooms *rs, int64_t now_ms)
{
    if (!rs)
        return;
    /* exp is in whole seconds and a token is good while now < exp. */
    while (rs->nexpiry && rs->expiry[0]->claims.exp <= now_ms / 1000)
        detach(rs, rs->expiry[0], "token_expired", SB_CLOSE_TOKEN_EXPIRED, "token expired", true,
               NULL);
    /* sb_live_leave has no clock, so the empty timer starts at the first tick that sees the
     * room empty: the session ends late by at most one tick, never early. */
    sb_live_room *next;
    for (sb_live_room *r = rs->empty; r; r = next) {
        next = r->empty_next;
        if (r->empty_since < 0)
            r->empty_since = now_ms;
        if (now_ms - r->empty_since >= (int64_t)r->empty_timeout_seconds * 1000)
            room_end(rs, r, "empty");
    }
}

/* ---- Accessors ----------------------------------------------------------------------- */

const char *sb_live_room_project(const sb_live_room *r)
{
    return r->project_id;
}

const char *sb_live_room_name(const sb_live_room *r)
{
    return r->name;
}

const char *sb_live_room_session(const sb_live_room *r)
{
    return r->session_id;
}

size_t sb_live_room_count(const sb_live_room *r)
{
    return r->count;
}

const sb_live_claims *sb_live_participant_claims(const sb_live_participant *p)
{
    return &p->claims;
}

int64_t sb_live_participant_joined_at(const sb_live_participant *p)
{
    return p->joined_at;
}

json_t *sb_live_participant_json(const sb_live_participant *p)
{
    char ts[32];
    json_t *grants = sb_rtc_grants_json(p->claims.grants);
    if (!grants)
        return NULL;
    sb_time_rfc3339(p->joined_at, ts);
    json_t *j = json_pack("{s:s,s:s?,s:s?,s:O,s:s,s:s}", "identity", p->claims.identity, "name",
                          p->claims.name[0] ? p->claims.name : NULL, "metadata",
                          p->claims.metadata[0] ? p->claims.metadata : NULL, "grants", grants,
                          "joined_at", ts, "session_id", p->session_id);
    json_decref(grants);
    return j;
}

json_t *sb_live_list(sb_live_rooms *rs, const char *project_id, const char *room,
                     bool include_hidden)
{
    sb_live_room *r = rs ? room_find(rs, project_id, room) : NULL;
    if (!r)
        return NULL;
    json_t *a = json_array();
    if (!a)
        return NULL;
    for (sb_live_participant *q = r->head; q; q = q->next) {
        if (!include_hidden && !is_visible(q))
            continue;
        if (json_array_append_new(a, sb_live_participant_json(q))) {
            json_decref(a);
            return NULL;
        }
    }
    return a;
}
