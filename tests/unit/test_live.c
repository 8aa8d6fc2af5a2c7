/* Live rooms: joins, presence, data and binary relay, grants, replacement, limits, control
 * plane effects, sessions and token expiry, driven through fake connections and hooks. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "rooms/live.h"
#include "switchboard/error.h"

/* ---- A fake connection: records frames (or only counts them) and closes -------------- */

typedef struct frame {
    int opcode;
    unsigned char *data;
    size_t len;
    struct frame *next;
} frame;

typedef struct fconn {
    frame *head, *tail;
    size_t nframes;
    bool count_only;      /* keep no copies: for rooms of 1,000 */
    const void *last_ptr; /* the sender's buffer, to see that one serialization went out */
    size_t last_len;
    int closes;
    uint16_t close_code;
    char close_reason[64];
} fconn;

static int f_send(void *conn, int opcode, const void *data, size_t len)
{
    fconn *c = conn;
    c->nframes++;
    c->last_ptr = data;
    c->last_len = len;
    if (c->count_only)
        return 0;
    frame *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->opcode = opcode;
    f->len = len;
    f->data = malloc(len + 1);
    assert_non_null(f->data);
    memcpy(f->data, data, len);
    f->data[len] = 0;
    if (c->tail)
        c->tail->next = f;
    else
        c->head = f;
    c->tail = f;
    return 0;
}

static void f_close(void *conn, uint16_t code, const char *reason)
{
    fconn *c = conn;
    c->closes++;
    c->close_code = code;
    snprintf(c->close_reason, sizeof c->close_reason, "%s", reason);
}

static const sb_live_conn_ops fops = {.send = f_send, .close = f_close};

static void fconn_clear(fconn *c)
{
    frame *f = c->head;
    while (f) {
        frame *next = f->next;
        free(f->data);
        free(f);
        f = next;
    }
    c->head = c->tail = NULL;
    c->nframes = 0;
    c->last_ptr = NULL;
}

static frame *frame_at(const fconn *c, size_t i)
{
    frame *f = c->head;
    while (f && i--)
        f = f->next;
    assert_non_null(f);
    return f;
}

/* The i-th frame as JSON (a text frame with a type), owned by the caller. */
static json_t *json_at(const fconn *c, size_t i)
{
    frame *f = frame_at(c, i);
    assert_int_equal(f->opcode, SB_LIVE_OP_TEXT);
    json_error_t e;
    json_t *j = json_loadb((const char *)f->data, f->len, JSON_REJECT_DUPLICATES, &e);
    assert_non_null(j);
    assert_true(json_is_string(json_object_get(j, "type")));
    return j;
}

static const char *type_at(const fconn *c, size_t i)
{
    static char type[64];
    json_t *j = json_at(c, i);
    snprintf(type, sizeof type, "%s", json_string_value(json_object_get(j, "type")));
    json_decref(j);
    return type;
}

/* ---- A hooks recorder ----------------------------------------------------------------- */

#define MAX_EVENTS 64

typedef struct rec {
    char ev[MAX_EVENTS][200];
    size_t n; /* all events, also those past MAX_EVENTS */
    int sessions;
} rec;

static void rec_add(rec *r, const char *a, const char *b, const char *c)
{
    if (r->n < MAX_EVENTS)
        snprintf(r->ev[r->n], sizeof r->ev[r->n], "%s %s%s%s", a, b, c ? " " : "", c ? c : "");
    r->n++;
}

static void h_started(void *ud, const sb_live_room *room, char *session_id)
{
    rec *r = ud;
    snprintf(session_id, 48, "ses_test%d", ++r->sessions);
    rec_add(r, "started", sb_live_room_name(room), NULL);
}

static void h_ended(void *ud, const sb_live_room *room, const char *reason)
{
    rec_add(ud, "ended", sb_live_room_name(room), reason);
}

static void h_joined(void *ud, const sb_live_room *room, const sb_live_participant *p)
{
    (void)room;
    rec_add(ud, "joined", sb_live_participant_claims(p)->identity, NULL);
}

static void h_left(void *ud, const sb_live_room *room, const sb_live_participant *p,
                   const char *reason)
{
    (void)room;
    rec_add(ud, "left", sb_live_participant_claims(p)->identity, reason);
}

/* ---- Fixture: one registry, members with their fake connections ----------------------- */

#define MAX_MEMBERS 1100
#define T0          1700000000000LL /* ms */
#define EXP_FAR     (T0 / 1000 + 86400)

typedef struct member {
    fconn c;
    sb_live_participant *p;
    bool in; /* joined and not yet left */
} member;

typedef struct fx {
    sb_live_rooms *rs;
    rec rec;
    sb_live_room_settings settings;
    member *m;
    size_t nm;
} fx;

static int setup(void **state)
{
    fx *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->m = calloc(MAX_MEMBERS, sizeof *f->m);
    assert_non_null(f->m);
    sb_live_hooks h = {.ud = &f->rec,
                       .session_started = h_started,
                       .session_ended = h_ended,
                       .participant_joined = h_joined,
                       .participant_left = h_left};
    assert_int_equal(sb_live_rooms_new(&f->rs, &h), 0);
    f->settings.room_json = json_pack(
        "{s:s,s:n,s:i,s:i,s:b,s:s,s:s,s:i,s:n}", "name", "standup", "metadata", "max_participants",
        0, "empty_timeout_seconds", 10, "auto_record", 0, "status", "open", "created_at",
        "2026-11-27T07:30:02.004Z", "num_participants", 0, "active_session_id");
    assert_non_null(f->settings.room_json);
    f->settings.empty_timeout_seconds = 10;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    for (size_t i = 0; i < f->nm; i++)
        if (f->m[i].in)
            sb_live_leave(f->rs, f->m[i].p, NULL);
    sb_live_rooms_free(f->rs);
    for (size_t i = 0; i < f->nm; i++)
        fconn_clear(&f->m[i].c);
    json_decref(f->settings.room_json);
    free(f->m);
    free(f);
    return 0;
}

static sb_rtc_claims claims_for(const char *room, const char *identity, unsigned grants,
                                int64_t exp)
{
    sb_rtc_claims c;
    memset(&c, 0, sizeof c);
    snprintf(c.project_id, sizeof c.project_id, "prj_test");
    snprintf(c.room, sizeof c.room, "%s", room);
    snprintf(c.identity, sizeof c.identity, "%s", identity);
    c.grants = grants;
    c.exp = exp;
    return c;
}

/* Joins identity to room with a new fake connection; returns the member index, the
 * result in *rc and the close code in *close_code (both optional: then it must succeed). */
static size_t join_full(fx *f, const char *room, const char *identity, unsigned grants, int64_t exp,
                        int *rc, int *close_code)
{
    assert_true(f->nm < MAX_MEMBERS);
    size_t i = f->nm++;
    member *m = &f->m[i];
    sb_rtc_claims c = claims_for(room, identity, grants, exp);
    int cc = -1;
    int r = sb_live_join(f->rs, &c, &f->settings, &m->c, &fops, T0 + (int64_t)i, &m->p, &cc);
    if (rc)
        *rc = r;
    else
        assert_int_equal(r, 0);
    if (close_code)
        *close_code = cc;
    m->in = r == 0;
    if (r == 0)
        assert_non_null(m->p);
    else
        assert_null(m->p);
    return i;
}

static size_t join(fx *f, const char *identity, unsigned grants)
{
    return join_full(f, "standup", identity, grants, EXP_FAR, NULL, NULL);
}

static void leave(fx *f, size_t i, const char *reason)
{
    assert_true(f->m[i].in);
    sb_live_leave(f->rs, f->m[i].p, reason);
    f->m[i].in = false;
}

static void clear_all(fx *f)
{
    for (size_t i = 0; i < f->nm; i++)
        fconn_clear(&f->m[i].c);
    f->rec.n = 0;
}

static void assert_event(const fx *f, size_t i, const char *ev)
{
    assert_true(i < f->rec.n);
    assert_string_equal(f->rec.ev[i], ev);
}

static const char *str_member(const json_t *o, const char *name)
{
    const json_t *v = json_object_get(o, name);
    assert_true(json_is_string(v));
    return json_string_value(v);
}

/* ---- Tests ---------------------------------------------------------------------------- */

static void test_join_and_presence(void **state)
{
    fx *f = *state;
    size_t a = join(f, "alice", SB_GRANTS_DEFAULT);
    assert_int_equal(f->m[a].c.nframes, 1);
    json_t *j = json_at(&f->m[a].c, 0);
    assert_string_equal(str_member(j, "type"), "joined");
    assert_string_equal(str_member(j, "session_id"), "ses_test1");
    json_t *room = json_object_get(j, "room");
    assert_string_equal(str_member(room, "name"), "standup");
    assert_string_equal(str_member(room, "status"), "open");
    assert_int_equal(json_integer_value(json_object_get(room, "num_participants")), 1);
    assert_string_equal(str_member(room, "active_session_id"), "ses_test1");
    /* The hand-written participant object is the API's participant object. */
    json_t *self = sb_live_participant_json(f->m[a].p);
    assert_true(json_equal(json_object_get(j, "participant"), self));
    assert_true(json_is_null(json_object_get(self, "name")));
    assert_true(json_is_null(json_object_get(self, "metadata")));
    assert_string_equal(str_member(self, "session_id"), "ses_test1");
    assert_true(json_is_true(json_object_get(json_object_get(self, "grants"), "publish")));
    assert_true(json_is_false(json_object_get(json_object_get(self, "grants"), "admin")));
    json_decref(self);
    assert_int_equal(json_array_size(json_object_get(j, "participants")), 0);
    json_decref(j);
    assert_int_equal(f->rec.n, 2);
    assert_event(f, 0, "started standup");
    assert_event(f, 1, "joined alice");

    /* bob, with a name and metadata, sees alice; alice hears of bob. */
    sb_rtc_claims c = claims_for("standup", "bob", SB_GRANTS_DEFAULT, EXP_FAR);
    snprintf(c.name, sizeof c.name, "Bob \"B\"");
    snprintf(c.metadata, sizeof c.metadata, "{\"team\":\"platform\"}");
    size_t b = f->nm++;
    int cc;
    assert_int_equal(
        sb_live_join(f->rs, &c, &f->settings, &f->m[b].c, &fops, T0 + 5, &f->m[b].p, &cc), 0);
    f->m[b].in = true;
    assert_int_equal(cc, 0);
    j = json_at(&f->m[b].c, 0);
    assert_string_equal(str_member(j, "type"), "joined");
    assert_string_equal(str_member(j, "session_id"), "ses_test1");
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(j, "room"), "num_participants")), 2);
    json_t *others = json_object_get(j, "participants");
    assert_int_equal(json_array_size(others), 1);
    json_t *alice = sb_live_participant_json(f->m[a].p);
    assert_true(json_equal(json_array_get(others, 0), alice));
    json_decref(alice);
    json_t *bob = sb_live_participant_json(f->m[b].p);
    assert_string_equal(str_member(bob, "name"), "Bob \"B\"");
    assert_string_equal(str_member(bob, "metadata"), "{\"team\":\"platform\"}");
    assert_true(json_equal(json_object_get(j, "participant"), bob));
    json_decref(j);

    assert_int_equal(f->m[a].c.nframes, 2);
    j = json_at(&f->m[a].c, 1);
    assert_string_equal(str_member(j, "type"), "participant_joined");
    assert_true(json_equal(json_object_get(j, "participant"), bob));
    json_decref(j);
    json_decref(bob);
    assert_event(f, 2, "joined bob");
    assert_int_equal(sb_live_participant_joined_at(f->m[b].p), T0 + 5);

    /* bob leaves: alice hears it with the reason; the hook has it. */
    leave(f, b, NULL);
    assert_int_equal(f->m[a].c.nframes, 3);
    j = json_at(&f->m[a].c, 2);
    assert_string_equal(str_member(j, "type"), "participant_left");
    assert_string_equal(str_member(j, "identity"), "bob");
    assert_string_equal(str_member(j, "reason"), "left");
    json_decref(j);
    assert_event(f, 3, "left bob left");

    /* The adapter's reason passes through. */
    size_t b2 = join(f, "bob", SB_GRANTS_DEFAULT);
    leave(f, b2, "too_slow");
    j = json_at(&f->m[a].c, 4);
    assert_string_equal(str_member(j, "reason"), "too_slow");
    json_decref(j);
    assert_event(f, 5, "left bob too_slow");

    json_t *list = sb_live_list(f->rs, "prj_test", "standup", false);
    assert_int_equal(json_array_size(list), 1);
    json_decref(list);
    assert_null(sb_live_list(f->rs, "prj_other", "standup", false));
    assert_null(sb_live_list(f->rs, "prj_test", "other", false));
}

static void test_rooms_are_per_project(void **state)
{
    fx *f = *state;
    size_t a = join(f, "alice", SB_GRANTS_DEFAULT);
    size_t i = f->nm++;
    sb_rtc_claims c = claims_for("standup", "bob", SB_GRANTS_DEFAULT, EXP_FAR);
    snprintf(c.project_id, sizeof c.project_id, "prj_other");
    assert_int_equal(sb_live_join(f->rs, &c, &f->settings, &f->m[i].c, &fops, T0, &f->m[i].p, NULL),
                     0);
    f->m[i].in = true;
    /* Same room name, other tenant: a room of its own, a session of its own. */
    assert_int_equal(f->m[a].c.nframes, 1);
    json_t *j = json_at(&f->m[i].c, 0);
    assert_string_equal(str_member(j, "session_id"), "ses_test2");
    assert_int_equal(json_array_size(json_object_get(j, "participants")), 0);
    json_decref(j);
}

static void test_hidden_participant(void **state)
{
    fx *f = *state;
    size_t a = join(f, "alice", SB_GRANTS_DEFAULT);
    size_t r = join(f, "recorder", SB_GRANT_SUBSCRIBE | SB_GRANT_HIDDEN | SB_GRANT_RECORD);
    /* Not announced; it still sees alice. */
    assert_int_equal(f->m[a].c.nframes, 1);
    json_t *j = json_at(&f->m[r].c, 0);
    assert_int_equal(json_array_size(json_object_get(j, "participants")), 1);
    json_decref(j);

    /* Not listed to a later joiner, not counted in the room it sees. */
    size_t b = join(f, "bob", SB_GRANTS_DEFAULT);
    j = json_at(&f->m[b].c, 0);
    json_t *others = json_object_get(j, "participants");
    assert_int_equal(json_array_size(others), 1);
    assert_string_equal(str_member(json_array_get(others, 0), "identity"), "alice");
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(j, "room"), "num_participants")), 2);
    json_decref(j);
    /* The recorder hears about bob. */
    assert_string_equal(type_at(&f->m[r].c, 1), "participant_joined");

    /* It still receives data, since it subscribes. */
    const char *msg = "{\"type\":\"data\",\"data\":\"x\"}";
    assert_int_equal(sb_live_on_text(f->rs, f->m[a].p, msg, strlen(msg)), 2);

    json_t *list = sb_live_list(f->rs, "prj_test", "standup", false);
    assert_int_equal(json_array_size(list), 2);
    json_decref(list);
    list = sb_live_list(f->rs, "prj_test", "standup", true);
    assert_int_equal(json_array_size(list), 3);
    json_decref(list);

    /* Its leaving is not announced either, though the hook reports it. */
    size_t na = f->m[a].c.nframes, nb = f->m[b].c.nframes;
    leave(f, r, NULL);
    assert_int_equal(f->m[a].c.nframes, na);
    assert_int_equal(f->m[b].c.nframes, nb);
    assert_string_equal(f->rec.ev[f->rec.n - 1], "left recorder left");
}

static void test_data_broadcast_and_targeted(void **state)
{
    fx *f = *state;
    size_t a = join(f, "alice", SB_GRANTS_DEFAULT);
    size_t b = join(f, "bob", SB_GRANTS_DEFAULT);
    size_t c = join(f, "carol", SB_GRANTS_DEFAULT);
    clear_all(f);

    const char *msg = "{\"type\":\"data\",\"data\":\"hi \\\"there\\\"\",\"topic\":\"chat\"}";
    assert_int_equal(sb_live_on_text(f->rs, f->m[a].p, msg, strlen(msg)), 2);
    assert_int_equal(f->m[a].c.nframes, 0);
    for (size_t i = b; i <= c; i++) {
        assert_int_equal(f->m[i].c.nframes, 1);
        frame *fr = frame_at(&f->m[i].c, 0);
        assert_string_equal((const char *)fr->data,
                            "{\"type\":\"data\",\"from\":\"alice\",\"topic\":\"chat\","
                            "\"data\":\"hi \\\"there\\\"\"}");
    }
    /* One serialization for all targets. */
    assert_ptr_equal(f->m[b].c.last_ptr, f->m[c].c.last_ptr);
    clear_all(f);

    /* Targeted: unknown identities, repeats and the sender are skipped. */
    msg = "{\"type\":\"data\",\"data\":\"psst\",\"to\":[\"carol\",\"nobody\",\"carol\",\"alice\"]}";
    assert_int_equal(sb_live_on_text(f->rs, f->m[a].p, msg, strlen(msg)), 1);
    assert_int_equal(f->m[a].c.nframes, 0);
    assert_int_equal(f->m[b].c.nframes, 0);
    assert_int_equal(f->m[c].c.nframes, 1);
    json_t *j = json_at(&f->m[c].c, 0);
    assert_string_equal(str_member(j, "from"), "alice");
    assert_true(json_is_null(json_object_get(j, "topic")));
    assert_string_equal(str_member(j, "data"), "psst");
    json_decref(j);
    clear_all(f);

    /* An empty `to` reaches nobody; a null `to` is absent. */
    msg = "{\"type\":\"data\",\"data\":\"x\",\"to\":[]}";
    assert_int_equal(sb_live_on_text(f->rs, f->m[a].p, msg, strlen(msg)), 0);
    msg = "{\"type\":\"data\",\"data\":\"x\",\"to\":null,\"topic\":null}";
    assert_int_equal(sb_live_on_text(f->rs, f->m[a].p, msg, strlen(msg)), 2);
    clear_all(f);

    /* Malformed messages: nothing sent. */
    static const char *const bad[] = {
        "",
        "not json",
        "[1]",
        "{\"type\":\"data\"}",
        "{\"data\":\"x\"}",
        "{\"type\":\"chat\",\"data\":\"x\"}",
        "{\"type\":\"data\",\"data\":1}",
        "{\"type\":\"data\",\"data\":\"x\",\"extra\":1}",
        "{\"type\":\"data\",\"data\":\"x\",\"to\":\"bob\"}",
        "{\"type\":\"data\",\"data\":\"x\",\"to\":[\"bob\",2]}",
        "{\"type\":\"data\",\"data\":\"x\",\"topic\":5}",
        "{\"type\":\"data\",\"data\":\"x\",\"data\":\"y\"}",
        "{\"type\":\"data\",\"data\":\"a\\u0000b\"}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_int_equal(sb_live_on_text(f->rs, f->m[a].p, bad[i], strlen(bad[i])), SB_EINVAL);
    /* Over the size limits. */
    size_t big = 65537 + 64;
    char *m = malloc(big);
    assert_non_null(m);
    int n = snprintf(m, big, "{\"type\":\"data\",\"data\":\"");
    memset(m + n, 'x', 65537);
    memcpy(m + n + 65537, "\"}", 2);
    assert_int_equal(sb_live_on_text(f->rs, f->m[a].p, m, (size_t)n + 65537 + 2), SB_EINVAL);
    memcpy(m + n + 65536, "\"}", 2);
    assert_int_equal(sb_live_on_text(f->rs, f->m[a].p, m, (size_t)n + 65536 + 2), 2);
    free(m);
    fconn_clear(&f->m[b].c);
    fconn_clear(&f->m[c].c);
    for (size_t i = 0; i < f->nm; i++)
        assert_int_equal(f->m[i].c.nframes, 0);

    /* From the server: from is null. */
    assert_int_equal(sb_live_send_data(f->rs, "prj_test", "standup", "ping", 4, "sys", NULL, 0), 3);
    j = json_at(&f->m[a].c, 0);
    assert_true(json_is_null(json_object_get(j, "from")));
    assert_string_equal(str_member(j, "topic"), "sys");
    assert_string_equal(str_member(j, "data"), "ping");
    json_decref(j);
    const char *to[] = {"bob", "ghost", "bob"};
    assert_int_equal(sb_live_send_data(f->rs, "prj_test", "standup", "b", 1, NULL, to, 3), 1);
    assert_int_equal(f->m[b].c.nframes, 2);
    assert_int_equal(f->m[c].c.nframes, 1);
    assert_int_equal(sb_live_send_data(f->rs, "prj_test", "nowhere", "b", 1, NULL, NULL, 0),
                     SB_ENOENT);
    assert_int_equal(sb_live_send_data(f->rs, "prj_test", "standup", "b", 65537, NULL, NULL, 0),
                     SB_EINVAL);
}

static void test_grants_enforced(void **state)
{
    fx *f = *state;
    size_t a = join(f, "alice", SB_GRANT_SUBSCRIBE);                     /* listener */
    size_t b = join(f, "bob", SB_GRANT_PUBLISH | SB_GRANT_PUBLISH_DATA); /* no subscribe */
    size_t c = join(f, "carol", SB_GRANTS_DEFAULT);
    clear_all(f);

    const char *msg = "{\"type\":\"data\",\"data\":\"x\"}";
    assert_int_equal(sb_live_on_text(f->rs, f->m[a].p, msg, strlen(msg)), SB_EACCES);
    assert_int_equal(sb_live_on_binary(f->rs, f->m[a].p, "x", 1), SB_EACCES);
    for (size_t i = 0; i < f->nm; i++)
        assert_int_equal(f->m[i].c.nframes, 0);

    /* bob may publish but does not subscribe: carol and alice receive, bob receives no data
     * from carol. */
    assert_int_equal(sb_live_on_text(f->rs, f->m[b].p, msg, strlen(msg)), 2);
    assert_int_equal(sb_live_on_binary(f->rs, f->m[b].p, "x", 1), 2);
    assert_int_equal(sb_live_on_text(f->rs, f->m[c].p, msg, strlen(msg)), 1);
    assert_int_equal(sb_live_on_binary(f->rs, f->m[c].p, "x", 1), 1);
    const char *to_bob = "{\"type\":\"data\",\"data\":\"x\",\"to\":[\"bob\"]}";
    assert_int_equal(sb_live_on_text(f->rs, f->m[c].p, to_bob, strlen(to_bob)), 0);
    assert_int_equal(sb_live_send_data(f->rs, "prj_test", "standup", "s", 1, NULL, NULL, 0), 2);
    assert_int_equal(f->m[b].c.nframes, 0);

    /* ...but presence still reaches bob. */
    join(f, "dave", SB_GRANTS_DEFAULT);
    assert_int_equal(f->m[b].c.nframes, 1);
    assert_string_equal(type_at(&f->m[b].c, 0), "participant_joined");
}

static void test_binary_framing(void **state)
{
    fx *f = *state;
    size_t a = join(f, "alice", SB_GRANTS_DEFAULT);
    size_t b = join(f, "bob", SB_GRANTS_DEFAULT);
    size_t c = join(f, "carol", SB_GRANTS_DEFAULT);
    clear_all(f);
    const unsigned char payload[] = {0x00, 0x01, 0x02, 0xff};
    assert_int_equal(sb_live_on_binary(f->rs, f->m[a].p, payload, sizeof payload), 2);
    const unsigned char want[] = {5, 'a', 'l', 'i', 'c', 'e', 0x00, 0x01, 0x02, 0xff};
    for (size_t i = b; i <= c; i++) {
        assert_int_equal(f->m[i].c.nframes, 1);
        frame *fr = frame_at(&f->m[i].c, 0);
        assert_int_equal(fr->opcode, SB_LIVE_OP_BINARY);
        assert_int_equal(fr->len, sizeof want);
        assert_memory_equal(fr->data, want, sizeof want);
    }
    assert_ptr_equal(f->m[b].c.last_ptr, f->m[c].c.last_ptr);
    assert_int_equal(f->m[a].c.nframes, 0);

    /* An empty payload is just the header; a 128-byte identity still fits the length byte. */
    char id[129];
    memset(id, 'z', 128);
    id[128] = 0;
    size_t z = join(f, id, SB_GRANTS_DEFAULT);
    clear_all(f);
    assert_int_equal(sb_live_on_binary(f->rs, f->m[z].p, NULL, 0), 3);
    frame *fr = frame_at(&f->m[a].c, 0);
    assert_int_equal(fr->len, 129);
    assert_int_equal(fr->data[0], 128);
    assert_memory_equal(fr->data + 1, id, 128);
}

static void test_duplicate_identity(void **state)
{
    fx *f = *state;
    size_t a1 = join(f, "alice", SB_GRANTS_DEFAULT);
    size_t b = join(f, "bob", SB_GRANTS_DEFAULT);
    clear_all(f);

    size_t a2 = join(f, "alice", SB_GRANTS_DEFAULT);
    assert_int_equal(f->m[a1].c.closes, 1);
    assert_int_equal(f->m[a1].c.close_code, SB_CLOSE_REPLACED);
    assert_string_equal(f->m[a1].c.close_reason, "identity joined elsewhere");
    assert_int_equal(f->m[a1].c.nframes, 0);
    /* bob sees the old connection go, then the new one come. */
    assert_int_equal(f->m[b].c.nframes, 2);
    json_t *j = json_at(&f->m[b].c, 0);
    assert_string_equal(str_member(j, "type"), "participant_left");
    assert_string_equal(str_member(j, "identity"), "alice");
    assert_string_equal(str_member(j, "reason"), "replaced");
    json_decref(j);
    assert_string_equal(type_at(&f->m[b].c, 1), "participant_joined");
    /* The new connection sees bob only, in the same session. */
    j = json_at(&f->m[a2].c, 0);
    assert_string_equal(str_member(j, "session_id"), "ses_test1");
    json_t *others = json_object_get(j, "participants");
    assert_int_equal(json_array_size(others), 1);
    assert_string_equal(str_member(json_array_get(others, 0), "identity"), "bob");
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(j, "room"), "num_participants")), 2);
    json_decref(j);
    assert_int_equal(f->rec.n, 2);
    assert_event(f, 0, "left alice replaced");
    assert_event(f, 1, "joined alice");

    /* The old one is detached: its frames go nowhere. */
    const char *msg = "{\"type\":\"data\",\"data\":\"x\"}";
    assert_int_equal(sb_live_on_text(f->rs, f->m[a1].p, msg, strlen(msg)), SB_ENOENT);
    assert_int_equal(sb_live_on_binary(f->rs, f->m[a1].p, "x", 1), SB_ENOENT);
    /* Its leave, when the adapter gets to it, is harmless. */
    clear_all(f);
    leave(f, a1, NULL);
    assert_int_equal(f->m[b].c.nframes, 0);
    assert_int_equal(f->m[a2].c.nframes, 0);
    assert_int_equal(f->rec.n, 0);
    json_t *list = sb_live_list(f->rs, "prj_test", "standup", true);
    assert_int_equal(json_array_size(list), 2);
    json_decref(list);
    /* The new alice is the one data reaches. */
    assert_int_equal(sb_live_on_text(f->rs, f->m[b].p, msg, strlen(msg)), 1);
    assert_int_equal(f->m[a2].c.nframes, 1);
}

static void test_room_full(void **state)
{
    fx *f = *state;
    f->settings.max_participants = 2;
    size_t a = join(f, "alice", SB_GRANTS_DEFAULT);
    size_t b = join(f, "bob", SB_GRANTS_DEFAULT);
    clear_all(f);
    int rc, cc;
    size_t c = join_full(f, "standup", "carol", SB_GRANTS_DEFAULT, EXP_FAR, &rc, &cc);
    assert_int_equal(rc, SB_EAGAIN);
    assert_int_equal(cc, SB_CLOSE_ROOM_FULL);
    assert_int_equal(f->m[a].c.nframes, 0);
    assert_int_equal(f->m[b].c.nframes, 0);
    assert_int_equal(f->m[c].c.nframes, 0);
    assert_int_equal(f->m[c].c.closes, 0);
    assert_int_equal(f->rec.n, 0);

    /* A hidden participant counts too. */
    rc = 0;
    join_full(f, "standup", "rec", SB_GRANT_HIDDEN, EXP_FAR, &rc, &cc);
    assert_int_equal(rc, SB_EAGAIN);

    /* A replaced identity does not count: alice may reconnect into a full room. */
    size_t a2 = join_full(f, "standup", "alice", SB_GRANTS_DEFAULT, EXP_FAR, &rc, &cc);
    assert_int_equal(rc, 0);
    assert_int_equal(cc, 0);
    assert_int_equal(f->m[a].c.close_code, SB_CLOSE_REPLACED);
    /* Once someone leaves there is room again; the detached one no longer counts. */
    leave(f, b, NULL);
    leave(f, a, NULL);
    join_full(f, "standup", "carol", SB_GRANTS_DEFAULT, EXP_FAR, &rc, &cc);
    assert_int_equal(rc, 0);
    (void)a2;
}

static void test_eject(void **state)
{
    fx *f = *state;
    size_t a = join(f, "alice", SB_GRANTS_DEFAULT);
    size_t b = join(f, "bob", SB_GRANTS_DEFAULT);
    clear_all(f);
    assert_int_equal(sb_live_eject(f->rs, "prj_test", "standup", "bob"), 0);
    assert_int_equal(f->m[b].c.closes, 1);
    assert_int_equal(f->m[b].c.close_code, SB_CLOSE_EJECTED);
    assert_int_equal(f->m[a].c.nframes, 1);
    json_t *j = json_at(&f->m[a].c, 0);
    assert_string_equal(str_member(j, "type"), "participant_left");
    assert_string_equal(str_member(j, "identity"), "bob");
    assert_string_equal(str_member(j, "reason"), "ejected");
    json_decref(j);
    assert_int_equal(f->rec.n, 1);
    assert_event(f, 0, "left bob ejected");

    assert_int_equal(sb_live_eject(f->rs, "prj_test", "standup", "bob"), SB_ENOENT);
    assert_int_equal(sb_live_eject(f->rs, "prj_test", "nowhere", "alice"), SB_ENOENT);
    assert_int_equal(sb_live_eject(f->rs, "prj_other", "standup", "alice"), SB_ENOENT);
    /* bob's leave after the ejection reports nothing more. */
    leave(f, b, "left");
    assert_int_equal(f->m[a].c.nframes, 1);
    assert_int_equal(f->rec.n, 1);
}

static void test_update_participant(void **state)
{
    fx *f = *state;
    size_t a = join(f, "alice", SB_GRANTS_DEFAULT);
    size_t b = join(f, "bob", SB_GRANTS_DEFAULT);
    clear_all(f);

    assert_int_equal(
        sb_live_update_participant(f->rs, "prj_test", "standup", "alice", "{\"hand\":1}", NULL), 0);
    for (size_t i = a; i <= b; i++) {
        assert_int_equal(f->m[i].c.nframes, 1);
        json_t *j = json_at(&f->m[i].c, 0);
        assert_string_equal(str_member(j, "type"), "participant_updated");
        json_t *p = json_object_get(j, "participant");
        assert_string_equal(str_member(p, "identity"), "alice");
        assert_string_equal(str_member(p, "metadata"), "{\"hand\":1}");
        json_decref(j);
    }
    assert_string_equal(sb_live_participant_claims(f->m[a].p)->metadata, "{\"hand\":1}");
    clear_all(f);

    /* Grants take effect at once. */
    unsigned g = SB_GRANT_SUBSCRIBE | SB_GRANT_PUBLISH;
    assert_int_equal(sb_live_update_participant(f->rs, "prj_test", "standup", "alice", NULL, &g),
                     0);
    json_t *j = json_at(&f->m[b].c, 0);
    json_t *grants = json_object_get(json_object_get(j, "participant"), "grants");
    assert_true(json_is_false(json_object_get(grants, "publish_data")));
    /* metadata was kept */
    assert_string_equal(str_member(json_object_get(j, "participant"), "metadata"), "{\"hand\":1}");
    json_decref(j);
    clear_all(f);
    const char *msg = "{\"type\":\"data\",\"data\":\"x\"}";
    assert_int_equal(sb_live_on_text(f->rs, f->m[a].p, msg, strlen(msg)), SB_EACCES);
    assert_int_equal(f->m[b].c.nframes, 0);
    assert_int_equal(sb_live_on_binary(f->rs, f->m[a].p, "x", 1), 1);
    clear_all(f);

    /* Refusals change nothing and send nothing. */
    assert_int_equal(sb_live_update_participant(f->rs, "prj_test", "standup", "nobody", "x", NULL),
                     SB_ENOENT);
    char *big = malloc(4098);
    assert_non_null(big);
    memset(big, 'm', 4097);
    big[4097] = 0;
    assert_int_equal(sb_live_update_participant(f->rs, "prj_test", "standup", "alice", big, NULL),
                     SB_EINVAL);
    free(big);
    assert_int_equal(f->m[a].c.nframes + f->m[b].c.nframes, 0);
    assert_string_equal(sb_live_participant_claims(f->m[a].p)->metadata, "{\"hand\":1}");

    /* "" clears the metadata. */
    assert_int_equal(sb_live_update_participant(f->rs, "prj_test", "standup", "alice", "", NULL),
                     0);
    j = json_at(&f->m[b].c, 0);
    assert_true(json_is_null(json_object_get(json_object_get(j, "participant"), "metadata")));
    json_decref(j);
    clear_all(f);

    /* Hiding bob: alice sees him leave, he gets his update. Unhiding: he comes back. */
    g = SB_GRANTS_DEFAULT | SB_GRANT_HIDDEN;
    assert_int_equal(sb_live_update_participant(f->rs, "prj_test", "standup", "bob", NULL, &g), 0);
    j = json_at(&f->m[a].c, 0);
    assert_string_equal(str_member(j, "type"), "participant_left");
    assert_string_equal(str_member(j, "reason"), "hidden");
    json_decref(j);
    assert_string_equal(type_at(&f->m[b].c, 0), "participant_updated");
    json_t *list = sb_live_list(f->rs, "prj_test", "standup", false);
    assert_int_equal(json_array_size(list), 1);
    json_decref(list);
    /* Updates to a hidden participant reach only it. */
    assert_int_equal(sb_live_update_participant(f->rs, "prj_test", "standup", "bob", "m", NULL), 0);
    assert_int_equal(f->m[a].c.nframes, 1);
    assert_int_equal(f->m[b].c.nframes, 2);
    g = SB_GRANTS_DEFAULT;
    assert_int_equal(sb_live_update_participant(f->rs, "prj_test", "standup", "bob", NULL, &g), 0);
    assert_int_equal(f->m[a].c.nframes, 2);
    assert_string_equal(type_at(&f->m[a].c, 1), "participant_joined");
    /* The visible count followed: a new joiner sees 3. */
    size_t c = join(f, "carol", SB_GRANTS_DEFAULT);
    j = json_at(&f->m[c].c, 0);
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(j, "room"), "num_participants")), 3);
    json_decref(j);
}

static void test_update_room(void **state)
{
    fx *f = *state;
    size_t a = join(f, "alice", SB_GRANTS_DEFAULT);
    size_t b = join(f, "bob", SB_GRANTS_DEFAULT);
    clear_all(f);
    sb_live_room_settings s = {.max_participants = 1, .empty_timeout_seconds = 10};
    s.room_json =
        json_pack("{s:s,s:s,s:i}", "name", "standup", "metadata", "new", "max_participants", 1);
    assert_int_equal(sb_live_update_room(f->rs, "prj_test", "standup", &s), 0);
    json_decref(s.room_json);
    for (size_t i = a; i <= b; i++) {
        json_t *j = json_at(&f->m[i].c, 0);
        assert_string_equal(str_member(j, "type"), "room_updated");
        json_t *room = json_object_get(j, "room");
        assert_string_equal(str_member(room, "metadata"), "new");
        assert_int_equal(json_integer_value(json_object_get(room, "num_participants")), 2);
        assert_string_equal(str_member(room, "active_session_id"), "ses_test1");
        json_decref(j);
    }
    /* Lowering the limit ejects nobody but refuses joins. */
    assert_int_equal(f->m[a].c.closes + f->m[b].c.closes, 0);
    int rc, cc;
    join_full(f, "standup", "carol", SB_GRANTS_DEFAULT, EXP_FAR, &rc, &cc);
    assert_int_equal(rc, SB_EAGAIN);
    assert_int_equal(cc, SB_CLOSE_ROOM_FULL);
    /* NULL room_json keeps the object. */
    s.room_json = NULL;
    s.max_participants = 0;
    assert_int_equal(sb_live_update_room(f->rs, "prj_test", "standup", &s), 0);
    json_t *j = json_at(&f->m[a].c, 1);
    assert_string_equal(str_member(json_object_get(j, "room"), "metadata"), "new");
    json_decref(j);
    assert_int_equal(sb_live_update_room(f->rs, "prj_test", "nowhere", &s), SB_ENOENT);
}

static void test_close_room(void **state)
{
    fx *f = *state;
    size_t a = join(f, "alice", SB_GRANTS_DEFAULT);
    size_t b = join(f, "bob", SB_GRANTS_DEFAULT);
    size_t r = join(f, "rec", SB_GRANT_HIDDEN | SB_GRANT_SUBSCRIBE);
    size_t o = join_full(f, "other", "olga", SB_GRANTS_DEFAULT, EXP_FAR, NULL, NULL);
    clear_all(f);
    assert_int_equal(sb_live_close_room(f->rs, "prj_test", "standup"), 0);
    for (size_t i = a; i <= r; i++) {
        assert_int_equal(f->m[i].c.closes, 1);
        assert_int_equal(f->m[i].c.close_code, SB_CLOSE_ROOM_CLOSED);
        assert_string_equal(f->m[i].c.close_reason, "room closed");
        /* Nobody is told about the others going: they all go. */
        assert_int_equal(f->m[i].c.nframes, 0);
    }
    assert_int_equal(f->rec.n, 4);
    assert_event(f, 0, "left alice room_closed");
    assert_event(f, 1, "left bob room_closed");
    assert_event(f, 2, "left rec room_closed");
    assert_event(f, 3, "ended standup room_closed");
    /* The other room is untouched. */
    assert_int_equal(f->m[o].c.closes, 0);
    assert_int_equal(sb_live_close_room(f->rs, "prj_test", "standup"), SB_ENOENT);
    assert_null(sb_live_list(f->rs, "prj_test", "standup", true));
    assert_int_equal(sb_live_eject(f->rs, "prj_test", "standup", "alice"), SB_ENOENT);

    /* The adapter's leaves come after the room is gone: harmless. */
    clear_all(f);
    leave(f, b, NULL);
    leave(f, a, "left");
    leave(f, r, NULL);
    assert_int_equal(f->rec.n, 0);

    /* Reopening makes a new live room and session. */
    size_t a2 = join(f, "alice", SB_GRANTS_DEFAULT);
    json_t *j = json_at(&f->m[a2].c, 0);
    assert_string_equal(str_member(j, "session_id"), "ses_test3");
    json_decref(j);
}

static void test_empty_timeout(void **state)
{
    fx *f = *state;
    size_t a = join(f, "alice", SB_GRANTS_DEFAULT);
    leave(f, a, NULL);
    clear_all(f);
    int64_t t = T0 + 60000;
    sb_live_tick(f->rs, t); /* the timer starts here */
    sb_live_tick(f->rs, t + 9999);
    assert_int_equal(f->rec.n, 0);

    /* A join before the timeout keeps the session. */
    size_t a2 = join(f, "alice", SB_GRANTS_DEFAULT);
    json_t *j = json_at(&f->m[a2].c, 0);
    assert_string_equal(str_member(j, "session_id"), "ses_test1");
    json_decref(j);
    assert_int_equal(f->rec.n, 1);
    assert_event(f, 0, "joined alice");
    /* The timer does not run while someone is in. */
    sb_live_tick(f->rs, t + 100000);
    assert_int_equal(f->rec.n, 1);

    leave(f, a2, NULL);
    clear_all(f);
    t += 200000;
    sb_live_tick(f->rs, t);
    sb_live_tick(f->rs, t + 9999);
    assert_int_equal(f->rec.n, 0);
    sb_live_tick(f->rs, t + 10000);
    assert_int_equal(f->rec.n, 1);
    assert_event(f, 0, "ended standup empty");
    assert_null(sb_live_list(f->rs, "prj_test", "standup", true));
    sb_live_tick(f->rs, t + 20000);
    assert_int_equal(f->rec.n, 1);

    /* Afterwards a join starts a new session. */
    size_t a3 = join(f, "alice", SB_GRANTS_DEFAULT);
    j = json_at(&f->m[a3].c, 0);
    assert_string_equal(str_member(j, "session_id"), "ses_test2");
    json_decref(j);
    assert_event(f, 1, "started standup");

    /* An empty timeout of 0 ends the session at the next tick. */
    f->settings.empty_timeout_seconds = 0;
    size_t z = join_full(f, "zero", "zed", SB_GRANTS_DEFAULT, EXP_FAR, NULL, NULL);
    leave(f, z, NULL);
    clear_all(f);
    sb_live_tick(f->rs, t + 30000);
    assert_int_equal(f->rec.n, 1);
    assert_event(f, 0, "ended zero empty");
}

static void test_token_expiry(void **state)
{
    fx *f = *state;
    int64_t now_s = T0 / 1000;
    size_t a = join_full(f, "standup", "alice", SB_GRANTS_DEFAULT, now_s + 100, NULL, NULL);
    size_t b = join_full(f, "standup", "bob", SB_GRANTS_DEFAULT, now_s + 200, NULL, NULL);
    size_t c = join_full(f, "standup", "carol", SB_GRANTS_DEFAULT, now_s + 50, NULL, NULL);
    clear_all(f);

    sb_live_tick(f->rs, (now_s + 50) * 1000 - 1);
    assert_int_equal(f->m[c].c.closes, 0);
    sb_live_tick(f->rs, (now_s + 50) * 1000);
    assert_int_equal(f->m[c].c.closes, 1);
    assert_int_equal(f->m[c].c.close_code, SB_CLOSE_TOKEN_EXPIRED);
    assert_string_equal(f->m[c].c.close_reason, "token expired");
    assert_int_equal(f->m[a].c.closes + f->m[b].c.closes, 0);
    json_t *j = json_at(&f->m[a].c, 0);
    assert_string_equal(str_member(j, "type"), "participant_left");
    assert_string_equal(str_member(j, "identity"), "carol");
    assert_string_equal(str_member(j, "reason"), "token_expired");
    json_decref(j);
    assert_event(f, 0, "left carol token_expired");

    /* Both others at once, in expiry order. */
    sb_live_tick(f->rs, (now_s + 500) * 1000);
    assert_int_equal(f->m[a].c.close_code, SB_CLOSE_TOKEN_EXPIRED);
    assert_int_equal(f->m[b].c.close_code, SB_CLOSE_TOKEN_EXPIRED);
    assert_event(f, 1, "left alice token_expired");
    assert_event(f, 2, "left bob token_expired");
    /* The room is empty now; its timer started at this tick. */
    sb_live_tick(f->rs, (now_s + 510) * 1000);
    assert_event(f, 3, "ended standup empty");
    leave(f, a, NULL);
    leave(f, b, NULL);
    leave(f, c, NULL);
    assert_int_equal(f->rec.n, 4);
}

static void test_thousand_participants(void **state)
{
    fx *f = *state;
    char id[32];
    for (size_t i = 0; i < 1000; i++) {
        f->m[i].c.count_only = true;
        snprintf(id, sizeof id, "user-%zu", i);
        join(f, id, SB_GRANTS_DEFAULT);
    }
    assert_int_equal(f->rec.n, 1001);
    /* Each earlier participant heard of every later one. */
    assert_int_equal(f->m[0].c.nframes, 1000);
    assert_int_equal(f->m[999].c.nframes, 1);
    for (size_t i = 0; i < 1000; i++)
        f->m[i].c.nframes = 0;

    const char *msg = "{\"type\":\"data\",\"data\":\"hello everyone\",\"topic\":\"t\"}";
    assert_int_equal(sb_live_on_text(f->rs, f->m[0].p, msg, strlen(msg)), 999);
    assert_int_equal(f->m[0].c.nframes, 0);
    const void *ptr = f->m[1].c.last_ptr;
    size_t len = f->m[1].c.last_len;
    for (size_t i = 1; i < 1000; i++) {
        assert_int_equal(f->m[i].c.nframes, 1);
        /* The same buffer: serialized once for all 999. */
        assert_ptr_equal(f->m[i].c.last_ptr, ptr);
        assert_int_equal(f->m[i].c.last_len, len);
    }
    assert_int_equal(sb_live_on_binary(f->rs, f->m[500].p, "abc", 3), 999);

    /* Targeted and replacement stay cheap in a big room. */
    const char *to = "{\"type\":\"data\",\"data\":\"x\",\"to\":[\"user-999\",\"user-1\"]}";
    assert_int_equal(sb_live_on_text(f->rs, f->m[0].p, to, strlen(to)), 2);
    f->m[1000].c.count_only = true;
    join(f, "user-7", SB_GRANTS_DEFAULT);
    assert_int_equal(f->m[7].c.close_code, SB_CLOSE_REPLACED);
    json_t *list = sb_live_list(f->rs, "prj_test", "standup", false);
    assert_int_equal(json_array_size(list), 1000);
    json_decref(list);

    /* Leaving in an order unlike the join order. */
    for (size_t i = 0; i < 1001; i += 2)
        leave(f, i, NULL);
    for (size_t i = 1; i < 1001; i += 2)
        leave(f, i, NULL);
}

static void test_rooms_free_detaches(void **state)
{
    fx *f = *state;
    size_t a = join(f, "alice", SB_GRANTS_DEFAULT);
    size_t b = join(f, "bob", SB_GRANTS_DEFAULT);
    clear_all(f);
    sb_live_rooms_free(f->rs);
    f->rs = NULL;
    assert_int_equal(f->m[a].c.close_code, SB_CLOSE_ROOM_CLOSED);
    assert_int_equal(f->m[b].c.close_code, SB_CLOSE_ROOM_CLOSED);
    assert_event(f, 2, "ended standup shutdown");
    /* Leaves after the registry is gone only free the participants. */
    leave(f, a, NULL);
    leave(f, b, NULL);
}

static void test_bad_arguments(void **state)
{
    fx *f = *state;
    sb_live_participant *p = (sb_live_participant *)1;
    fconn c = {0};
    int cc = -1;
    sb_rtc_claims cl = claims_for("standup", "", SB_GRANTS_DEFAULT, EXP_FAR);
    assert_int_equal(sb_live_join(f->rs, &cl, &f->settings, &c, &fops, T0, &p, &cc), SB_EINVAL);
    assert_int_equal(cc, 0);
    cl = claims_for("standup", "alice", SB_GRANTS_DEFAULT, EXP_FAR);
    memset(cl.identity, 'a', sizeof cl.identity); /* not terminated */
    assert_int_equal(sb_live_join(f->rs, &cl, &f->settings, &c, &fops, T0, &p, &cc), SB_EINVAL);
    assert_int_equal(c.nframes, 0);
    assert_int_equal(f->rec.n, 0);
    assert_int_equal(sb_live_rooms_new(NULL, NULL), SB_EINVAL);
    sb_live_leave(f->rs, NULL, NULL);
}

/* ---- Allocation failures: every failing join leaves no trace ------------------------- */

static int fail_at, alloc_count;

static void *failing_malloc(size_t n, void *ud)
{
    (void)ud;
    if (fail_at && ++alloc_count == fail_at)
        return NULL;
    return malloc(n);
}

static void *failing_realloc(void *p, size_t n, void *ud)
{
    (void)ud;
    if (fail_at && ++alloc_count == fail_at)
        return NULL;
    return realloc(p, n);
}

static void plain_free(void *p, void *ud)
{
    (void)ud;
    free(p);
}

static const sb_allocator failing = {failing_malloc, failing_realloc, plain_free, NULL};

static void test_join_alloc_failures(void **state)
{
    (void)state;
    bool succeeded = false;
    for (int n = 1; n < 100 && !succeeded; n++) {
        fx *f;
        void *s;
        setup(&s);
        f = s;
        size_t a = join(f, "alice", SB_GRANTS_DEFAULT);
        for (size_t i = 0; i < 8; i++) {
            char id[16];
            snprintf(id, sizeof id, "u%zu", i);
            join(f, id, SB_GRANTS_DEFAULT);
        }
        clear_all(f);
        fail_at = n;
        alloc_count = 0;
        sb_alloc_set(&failing);
        int rc;
        /* A replacing join: on failure the old alice must be untouched. */
        join_full(f, "standup", "alice", SB_GRANTS_DEFAULT, EXP_FAR, &rc, NULL);
        sb_alloc_set(NULL);
        fail_at = 0;
        if (rc == 0) {
            /* Past the commit point nothing allocates: the others heard both messages. */
            succeeded = true;
            assert_int_equal(f->m[a].c.close_code, SB_CLOSE_REPLACED);
            for (size_t i = a + 1; i < a + 9; i++)
                assert_int_equal(f->m[i].c.nframes, 2);
        } else {
            assert_int_equal(rc, SB_ENOMEM);
            assert_int_equal(f->m[a].c.closes, 0);
            for (size_t i = 0; i < f->nm; i++)
                assert_int_equal(f->m[i].c.nframes, 0);
            assert_int_equal(f->rec.n, 0);
        }
        teardown(&s);
    }
    assert_true(succeeded);

    /* A first join: a failure after session_started leaves an empty room whose session
     * the tick ends. */
    succeeded = false;
    for (int n = 1; n < 100 && !succeeded; n++) {
        void *s;
        setup(&s);
        fx *f = s;
        fail_at = n;
        alloc_count = 0;
        sb_alloc_set(&failing);
        int rc;
        join_full(f, "standup", "alice", SB_GRANTS_DEFAULT, EXP_FAR, &rc, NULL);
        sb_alloc_set(NULL);
        fail_at = 0;
        if (rc == 0) {
            succeeded = true;
        } else {
            assert_int_equal(rc, SB_ENOMEM);
            size_t started = f->rec.n;
            sb_live_tick(f->rs, T0 + 20000);
            sb_live_tick(f->rs, T0 + 40000);
            if (started) {
                assert_event(f, 0, "started standup");
                assert_int_equal(f->rec.n, 2);
                assert_event(f, 1, "ended standup empty");
            } else {
                assert_int_equal(f->rec.n, 0);
            }
        }
        teardown(&s);
    }
    assert_true(succeeded);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_join_and_presence, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rooms_are_per_project, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hidden_participant, setup, teardown),
        cmocka_unit_test_setup_teardown(test_data_broadcast_and_targeted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_grants_enforced, setup, teardown),
        cmocka_unit_test_setup_teardown(test_binary_framing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_duplicate_identity, setup, teardown),
        cmocka_unit_test_setup_teardown(test_room_full, setup, teardown),
        cmocka_unit_test_setup_teardown(test_eject, setup, teardown),
        cmocka_unit_test_setup_teardown(test_update_participant, setup, teardown),
        cmocka_unit_test_setup_teardown(test_update_room, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_room, setup, teardown),
        cmocka_unit_test_setup_teardown(test_empty_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_token_expiry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_thousand_participants, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rooms_free_detaches, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_arguments, setup, teardown),
        cmocka_unit_test(test_join_alloc_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
