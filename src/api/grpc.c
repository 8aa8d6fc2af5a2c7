#include "api/grpc.h"

#include <ctype.h>
#include <stddef.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>

#include "api/pbjson.h"
#include "core/alloc.h"
#include "core/log.h"
#include "google/protobuf/any.pb-c.h"
#include "google/protobuf/empty.pb-c.h"
#include "google/rpc/status.pb-c.h"
#include "grpc/health/v1/health.pb-c.h"
#include "net/grpc_frame.h"
#include "net/loop.h"
#include "switchboard/error.h"
#include "switchboard/v1/events.pb-c.h"
#include "switchboard/v1/rooms.pb-c.h"
#include "switchboard/v1/sessions.pb-c.h"
#include "switchboard/v1/tokens.pb-c.h"
#include "switchboard/v1/webhooks.pb-c.h"

#define GF_BODY   0x1u /* the fields not in the path or query are the JSON body */
#define GF_STREAM 0x2u /* server streaming: the REST route streams NDJSON */
#define GF_HEALTH 0x4u /* grpc.health.v1: readiness from GET /readyz */
#define GF_WATCH  0x8u /* Health/Watch: the status, then the stream stays open */

#define CALL_ARENA_FIRST 3072
#define MAX_PATH         2048

/* One method: the REST route it is. `tmpl` names request fields in {}; `query` lists the
 * fields sent as query parameters (space-separated). */
typedef struct gmethod {
    const char *path;
    const ProtobufCMessageDescriptor *in, *out;
    const char *verb, *tmpl, *query;
    unsigned flags;
} gmethod;

#define V1(svc, name, in, out, verb, tmpl, query, flags)                                           \
    {                                                                                              \
        "/switchboard.v1." svc "/" name, &switchboard__v1__##in##__descriptor, &out, verb, tmpl,   \
            query, flags                                                                           \
    }
#define MSG(name) switchboard__v1__##name##__descriptor
#define EMPTY     google__protobuf__empty__descriptor

static const gmethod methods[] = {
    V1("RoomService", "CreateRoom", create_room_request, MSG(room), "POST", "/v1/rooms", "",
       GF_BODY),
    V1("RoomService", "GetRoom", get_room_request, MSG(room), "GET", "/v1/rooms/{name}", "", 0),
    V1("RoomService", "ListRooms", list_rooms_request, MSG(list_rooms_response), "GET", "/v1/rooms",
       "limit cursor", 0),
    V1("RoomService", "UpdateRoom", update_room_request, MSG(room), "PATCH", "/v1/rooms/{name}", "",
       GF_BODY),
    V1("RoomService", "DeleteRoom", delete_room_request, EMPTY, "DELETE", "/v1/rooms/{name}", "",
       0),
    V1("RoomService", "ListParticipants", list_participants_request,
       MSG(list_participants_response), "GET", "/v1/rooms/{room}/participants", "limit cursor", 0),
    V1("RoomService", "GetParticipant", get_participant_request, MSG(participant), "GET",
       "/v1/rooms/{room}/participants/{identity}", "", 0),
    V1("RoomService", "UpdateParticipant", update_participant_request, MSG(participant), "PATCH",
       "/v1/rooms/{room}/participants/{identity}", "", GF_BODY),
    V1("RoomService", "RemoveParticipant", remove_participant_request, EMPTY, "DELETE",
       "/v1/rooms/{room}/participants/{identity}", "ban_seconds", 0),
    V1("RoomService", "SendData", send_data_request, MSG(send_data_response), "POST",
       "/v1/rooms/{room}/messages", "", GF_BODY),
    V1("TokenService", "CreateToken", create_token_request, MSG(create_token_response), "POST",
       "/v1/tokens", "", GF_BODY),
    V1("SessionService", "ListSessions", list_sessions_request, MSG(list_sessions_response), "GET",
       "/v1/sessions", "room limit cursor", 0),
    V1("SessionService", "GetSession", get_session_request, MSG(session), "GET",
       "/v1/sessions/{id}", "", 0),
    V1("SessionService", "ListSessionParticipants", list_session_participants_request,
       MSG(list_session_participants_response), "GET", "/v1/sessions/{id}/participants",
       "limit cursor", 0),
    V1("SessionService", "EndSession", end_session_request, MSG(session), "POST",
       "/v1/sessions/{id}/end", "", GF_BODY),
    V1("WebhookService", "CreateWebhook", create_webhook_request, MSG(webhook_endpoint), "POST",
       "/v1/webhooks", "", GF_BODY),
    V1("WebhookService", "ListWebhooks", list_webhooks_request, MSG(list_webhooks_response), "GET",
       "/v1/webhooks", "limit cursor", 0),
    V1("WebhookService", "GetWebhook", get_webhook_request, MSG(webhook_endpoint), "GET",
       "/v1/webhooks/{id}", "", 0),
    V1("WebhookService", "UpdateWebhook", update_webhook_request, MSG(webhook_endpoint), "PATCH",
       "/v1/webhooks/{id}", "", GF_BODY),
    V1("WebhookService", "DeleteWebhook", delete_webhook_request, EMPTY, "DELETE",
       "/v1/webhooks/{id}", "", 0),
    V1("WebhookService", "RotateWebhookSecret", rotate_webhook_secret_request,
       MSG(webhook_endpoint), "POST", "/v1/webhooks/{id}/rotate-secret", "", GF_BODY),
    V1("WebhookService", "TestWebhook", test_webhook_request, MSG(delivery), "POST",
       "/v1/webhooks/{id}/test", "", GF_BODY),
    V1("WebhookService", "ListWebhookDeliveries", list_webhook_deliveries_request,
       MSG(list_webhook_deliveries_response), "GET", "/v1/webhooks/{id}/deliveries",
       "limit cursor status", 0),
    V1("WebhookService", "RetryWebhookDelivery", retry_webhook_delivery_request, MSG(delivery),
       "POST", "/v1/webhooks/{id}/deliveries/{delivery_id}/retry", "", GF_BODY),
    V1("WebhookService", "RetryWebhookDeliveries", retry_webhook_deliveries_request,
       MSG(retry_webhook_deliveries_response), "POST", "/v1/webhooks/{id}/deliveries/retry", "",
       GF_BODY),
    V1("EventService", "Subscribe", subscribe_request, MSG(event), "GET", "/v1/events", "since",
       GF_STREAM),
    {"/grpc.health.v1.Health/Check", &grpc__health__v1__health_check_request__descriptor,
     &grpc__health__v1__health_check_response__descriptor, "GET", "/readyz", "", GF_HEALTH},
    {"/grpc.health.v1.Health/Watch", &grpc__health__v1__health_check_request__descriptor,
     &grpc__health__v1__health_check_response__descriptor, "GET", "/readyz", "",
     GF_HEALTH | GF_WATCH},
};

static const char *const services[] = {
    "switchboard.v1.RoomService",    "switchboard.v1.TokenService", "switchboard.v1.SessionService",
    "switchboard.v1.WebhookService", "switchboard.v1.EventService", "grpc.health.v1.Health",
};

#define NMETHODS (sizeof methods / sizeof methods[0])

typedef struct grpc_ctx grpc_ctx;

/* A route's ud: the method and the shared state. */
typedef struct groute {
    const gmethod *m;
    const grpc_ctx *g;
} groute;

/*
 * Per loop: REST answers already converted, keyed by their exact bytes. The REST side
 * answers hot reads from its own per-loop cache (GetRoom), so the same JSON comes back
 * again and again; converting it is a pure function of (message type, bytes), so an entry
 * can never be stale. Direct-mapped, small bodies only, fixed memory per loop.
 */
#define RCACHE_SLOTS   16
#define RCACHE_MAX_IN  1024
#define RCACHE_MAX_OUT 1024

typedef struct rentry {
    const ProtobufCMessageDescriptor *d;
    uint64_t hash;
    uint16_t in_len, out_len;
    char in[RCACHE_MAX_IN];
    uint8_t out[RCACHE_MAX_OUT]; /* prefix + message */
} rentry;

typedef struct rcache {
    rentry e[RCACHE_SLOTS];
} rcache;

struct grpc_ctx {
    size_t max_message;
    int nloops;
    rcache *caches; /* one per loop, touched only by that loop */
    groute routes[NMETHODS];
};

/* Picks the slot only (a hit is confirmed by comparing the bytes): FNV-1a over the length,
 * the first 48 bytes (a room's or a session's name and id) and the last 16. */
static uint64_t slot_hash(const void *p, size_t n)
{
    const unsigned char *b = p;
    uint64_t h = (1469598103934665603ull ^ n) * 1099511628211ull;
    size_t head = n < 48 ? n : 48;
    for (size_t i = 0; i < head; i++)
        h = (h ^ b[i]) * 1099511628211ull;
    for (size_t i = n > 64 ? n - 16 : head; i < n; i++)
        h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

/* One call: the synthetic REST request and the gRPC request it answers. Freed when the
 * REST side is finished and the deadline timer (if any) is closed. */
typedef struct gcall {
    sb_req req; /* the REST request; req.transport points back here */
    sb_req *outer;
    const gmethod *m;
    const grpc_ctx *g;
    int refs;
    bool inner_done;
    bool inner_streaming; /* the REST handler began its stream */
    bool outer_streaming; /* the gRPC response head is sent: errors go in trailers */
    bool timer_on;
    bool watching; /* Health/Watch: the open stream holds a reference */
    uv_timer_t timer;
    void (*abort_fn)(sb_req *req, void *ud);
    void *abort_ud;
    void (*writable_fn)(sb_req *req, void *ud); /* the inner handler's pacing callback */
    void *writable_ud;
    char arena_first[CALL_ARENA_FIRST];
} gcall;

static void call_unref(gcall *c)
{
    if (--c->refs > 0)
        return;
    sb_arena_reset(&c->req.arena);
    sb_free(c);
}

static void timer_closed(uv_handle_t *h)
{
    call_unref(h->data);
}

static void timer_stop(gcall *c)
{
    if (!c->timer_on)
        return;
    c->timer_on = false;
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, timer_closed);
}

/* The REST side is over: nothing more comes from its handler. */
static void inner_finish(gcall *c)
{
    if (c->inner_done)
        return;
    c->inner_done = true;
    if (!c->outer) /* a Watch stream keeps its deadline */
        timer_stop(c);
    call_unref(c);
}

/* Health/Watch ended by the client, a failed write or the server draining. */
static void watch_abort(sb_req *outer, void *ud)
{
    (void)outer;
    gcall *c = ud;
    c->outer = NULL;
    c->watching = false;
    timer_stop(c);
    call_unref(c);
}

/* ---- answering the gRPC request -------------------------------------------------------- */

static void copy_headers(gcall *c, sb_req *o)
{
    for (int i = 0; i < c->req.num_resp_headers; i++) {
        const sb_http_header *h = &c->req.resp_headers[i];
        char name[64];
        if (h->name.len >= sizeof name)
            continue;
        for (size_t k = 0; k < h->name.len; k++)
            name[k] = (char)tolower((unsigned char)h->name.base[k]);
        name[h->name.len] = 0;
        if (strcmp(name, "content-type") == 0 || strcmp(name, "content-length") == 0)
            continue;
        sb_resp_header(o, name, h->value);
    }
}

/* grpc-status-details-bin: google.rpc.Status{code, message, [ErrorInfo]}, base64. */
static void add_details(sb_req *o, sb_grpc_status st, const char *msg, const char *slug,
                        const char *type, const char *request_id)
{
    Google__Rpc__ErrorInfo info = GOOGLE__RPC__ERROR_INFO__INIT;
    Google__Rpc__ErrorInfo__MetadataEntry e1 = GOOGLE__RPC__ERROR_INFO__METADATA_ENTRY__INIT;
    Google__Rpc__ErrorInfo__MetadataEntry e2 = GOOGLE__RPC__ERROR_INFO__METADATA_ENTRY__INIT;
    Google__Rpc__ErrorInfo__MetadataEntry *meta[2] = {&e1, &e2};
    info.reason = (char *)slug;
    info.domain = "switchboard";
    e1.key = "type";
    e1.value = (char *)type;
    e2.key = "request_id";
    e2.value = (char *)request_id;
    info.n_metadata = 2;
    info.metadata = meta;
    uint8_t ibuf[1024], sbuf[2048];
    size_t ilen = google__rpc__error_info__get_packed_size(&info);
    if (ilen > sizeof ibuf)
        return;
    google__rpc__error_info__pack(&info, ibuf);
    Google__Protobuf__Any any = GOOGLE__PROTOBUF__ANY__INIT;
    Google__Protobuf__Any *anys[1] = {&any};
    any.type_url = "type.googleapis.com/google.rpc.ErrorInfo";
    any.value = (ProtobufCBinaryData){ilen, ibuf};
    Google__Rpc__Status s = GOOGLE__RPC__STATUS__INIT;
    s.code = (int32_t)st;
    s.message = (char *)msg;
    s.n_details = 1;
    s.details = anys;
    size_t slen = google__rpc__status__get_packed_size(&s);
    if (slen > sizeof sbuf)
        return;
    google__rpc__status__pack(&s, sbuf);
    char b64[2048 * 4 / 3 + 8];
    int n = EVP_EncodeBlock((unsigned char *)b64, sbuf, (int)slen);
    while (n > 0 && b64[n - 1] == '=')
        n--; /* gRPC sends -bin values unpadded */
    sb_resp_header(o, "grpc-status-details-bin", (sb_str){b64, (size_t)n});
}

/* Ends the call with a non-OK status: Trailers-Only before the head, else in trailers. */
static void reply_status(gcall *c, sb_grpc_status st, const char *msg, const char *slug,
                         const char *type, const char *request_id)
{
    sb_req *o = c->outer;
    c->outer = NULL;
    char code[12];
    int cl = snprintf(code, sizeof code, "%d", (int)st);
    char mstack[512];
    sb_buf mb = {mstack, 0, sizeof mstack, sizeof mstack};
    if (sb_grpc_percent_encode(&mb, msg, strlen(msg)) != 0)
        mb.len = 0;
    if (c->outer_streaming) {
        sb_http_header tr[2] = {{SB_STR_LIT("grpc-status"), {code, (size_t)cl}},
                                {SB_STR_LIT("grpc-message"), {mb.base, mb.len}}};
        sb_resp_stream_end_trailers(o, tr, 2);
        return;
    }
    sb_resp_header(o, "grpc-status", (sb_str){code, (size_t)cl});
    sb_resp_header(o, "grpc-message", (sb_str){mb.base, mb.len});
    if (slug)
        add_details(o, st, msg, slug, type ? type : "", request_id ? request_id : "");
    sb_resp_send(o, 200, "application/grpc", NULL, 0);
}

static void reply_error(gcall *c, sb_grpc_status st, const char *msg)
{
    reply_status(c, st, msg, NULL, NULL, NULL);
}

/* Packs m with its 5-byte prefix into a new buffer. */
static uint8_t *frame(const ProtobufCMessage *m, size_t *len)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *b = sb_malloc(SB_GRPC_PREFIX_LEN + n);
    if (!b)
        return NULL;
    sb_grpc_msg_prefix(b, n);
    protobuf_c_message_pack(m, b + SB_GRPC_PREFIX_LEN);
    *len = SB_GRPC_PREFIX_LEN + n;
    return b;
}

static void reply_framed(gcall *c, const uint8_t *b, size_t len)
{
    sb_req *o = c->outer;
    c->outer = NULL;
    copy_headers(c, o);
    if (sb_resp_stream_begin(o, 200, "application/grpc", 0, NULL) == 0 &&
        sb_resp_stream_write(o, b, len) == 0) {
        static const sb_http_header ok[] = {{SB_STR_LIT("grpc-status"), SB_STR_LIT("0")}};
        sb_resp_stream_end_trailers(o, ok, 1);
    }
}

static void reply_message(gcall *c, const ProtobufCMessage *m)
{
    size_t len;
    uint8_t *b = frame(m, &len);
    if (!b) {
        reply_error(c, SB_GRPC_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    reply_framed(c, b, len);
    sb_free(b);
}

/* A problem+json answer → status, message and details. */
static void reply_problem(gcall *c, int status, const void *body, size_t len)
{
    json_t *j = json_loadb(body, len, 0, NULL);
    const char *type = json_string_value(json_object_get(j, "type"));
    const char *detail = json_string_value(json_object_get(j, "detail"));
    const char *rid = json_string_value(json_object_get(j, "request_id"));
    const char *slug = NULL;
    static const char urn[] = "urn:switchboard:problem:";
    if (type && strncmp(type, urn, sizeof urn - 1) == 0)
        slug = type + sizeof urn - 1;
    sb_grpc_status st = sb_grpc_status_from_http(status);
    /* 409 says "conflict"; the slug says which kind gRPC has a name for. */
    static const struct {
        const char *slug;
        sb_grpc_status st;
    } by_slug[] = {
        {"already-exists", SB_GRPC_ALREADY_EXISTS},
        {"conflict", SB_GRPC_FAILED_PRECONDITION}, /* e.g. the session has already ended */
        {"not-dead", SB_GRPC_FAILED_PRECONDITION}, /* a delivery that is not a dead letter */
        {"limit-reached", SB_GRPC_RESOURCE_EXHAUSTED},
    };
    for (size_t i = 0; slug && i < sizeof by_slug / sizeof by_slug[0]; i++)
        if (strcmp(slug, by_slug[i].slug) == 0)
            st = by_slug[i].st;
    if (st == SB_GRPC_OK) /* 1xx/3xx: nothing a gRPC client can use */
        st = SB_GRPC_UNKNOWN;
    copy_headers(c, c->outer);
    reply_status(c, st, detail ? detail : sb_http_reason(status), slug ? slug : "error",
                 type ? type : "", rid ? rid : "");
    json_decref(j);
}

/* ---- the REST side's adapter ops ----------------------------------------------------- */

static void answer(gcall *c, int status, const void *body, size_t len)
{
    const gmethod *m = c->m;
    if (m->flags & GF_HEALTH) {
        Grpc__Health__V1__HealthCheckResponse r = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
        r.status = status == 200
                       ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
                       : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
        c->req.num_resp_headers = 0;
        if (!(m->flags & GF_WATCH)) {
            reply_message(c, &r.base);
            return;
        }
        /* Watch: the status now; the server has no status changes to announce but going
         * away (draining ends the stream), so the stream then stays open. */
        uint8_t b[16];
        size_t n = protobuf_c_message_pack(&r.base, b + SB_GRPC_PREFIX_LEN);
        sb_grpc_msg_prefix(b, n);
        sb_req *o = c->outer;
        if (sb_resp_stream_begin(o, 200, "application/grpc", 0, NULL) != 0) {
            c->outer = NULL;
            return;
        }
        c->outer_streaming = true;
        c->watching = true;
        c->refs++;
        sb_req_on_abort(o, watch_abort, c);
        sb_resp_stream_write(o, b, SB_GRPC_PREFIX_LEN + n); /* a failure ran watch_abort */
        return;
    }
    if (status < 200 || status >= 300) {
        reply_problem(c, status, body, len);
        return;
    }
    rentry *e = NULL;
    if (len > 0 && len <= RCACHE_MAX_IN && c->req.loop->index < c->g->nloops) {
        uint64_t h = slot_hash(body, len);
        e = &c->g->caches[c->req.loop->index].e[h % RCACHE_SLOTS];
        if (e->d == m->out && e->hash == h && e->in_len == len && memcmp(e->in, body, len) == 0) {
            reply_framed(c, e->out, e->out_len);
            return;
        }
        e->d = NULL; /* refilled below if the answer converts and fits */
        e->hash = h;
    }
    json_t *j = len ? json_loadb(body, len, 0, NULL) : json_object();
    ProtobufCMessage *msg = NULL;
    char why[160];
    int rc = j ? sb_pbjson_to_message(m->out, j, &msg, why, sizeof why) : SB_EINVAL;
    json_decref(j);
    if (!rc && e &&
        SB_GRPC_PREFIX_LEN + protobuf_c_message_get_packed_size(msg) <= RCACHE_MAX_OUT) {
        size_t n = protobuf_c_message_pack(msg, e->out + SB_GRPC_PREFIX_LEN);
        sb_grpc_msg_prefix(e->out, n);
        e->out_len = (uint16_t)(SB_GRPC_PREFIX_LEN + n);
        memcpy(e->in, body, len);
        e->in_len = (uint16_t)len;
        e->d = m->out;
        protobuf_c_message_free_unpacked(msg, &sb_pb_allocator);
        reply_framed(c, e->out, e->out_len);
        return;
    }
    if (rc) {
        sb_log(SB_LOG_ERROR, "grpc: cannot convert the REST answer", "method", m->path, "reason",
               rc == SB_ENOMEM ? "out of memory" : why, "request_id", c->req.request_id, NULL);
        reply_error(c, rc == SB_ENOMEM ? SB_GRPC_RESOURCE_EXHAUSTED : SB_GRPC_INTERNAL,
                    "the answer could not be converted");
        return;
    }
    reply_message(c, msg);
    protobuf_c_message_free_unpacked(msg, &sb_pb_allocator);
}

static void inner_send(sb_req *req, int status, sb_str ctype, const void *body, size_t len)
{
    (void)ctype;
    gcall *c = req->transport;
    req->responded = true;
    if (c->outer)
        answer(c, status, body, len);
    inner_finish(c);
}

static void outer_abort(sb_req *outer, void *ud)
{
    (void)outer;
    gcall *c = ud;
    c->outer = NULL;
    if (c->inner_streaming && !c->inner_done && c->abort_fn)
        c->abort_fn(&c->req, c->abort_ud);
    inner_finish(c);
}

/* Pacing passes through: the inner handler (the event stream) waits on the outer stream. */
static void outer_writable(sb_req *outer, void *ud)
{
    (void)outer;
    gcall *c = ud;
    if (c->writable_fn && c->inner_streaming && !c->inner_done)
        c->writable_fn(&c->req, c->writable_ud);
}

static size_t inner_stream_queued(sb_req *req)
{
    gcall *c = req->transport;
    return c->outer ? sb_resp_stream_queued(c->outer) : 0;
}

static void inner_on_writable(sb_req *req, void (*fn)(sb_req *req, void *ud), void *ud)
{
    gcall *c = req->transport;
    c->writable_fn = fn;
    c->writable_ud = ud;
}

static int inner_stream_begin(sb_req *req, int status, sb_str ctype, int64_t hb_ms, sb_str hb)
{
    (void)status, (void)ctype, (void)hb_ms, (void)hb; /* HTTP/2 PINGs keep gRPC alive */
    gcall *c = req->transport;
    req->responded = true;
    sb_req *o = c->outer;
    if (!o) {
        inner_finish(c);
        return SB_ECANCELED;
    }
    copy_headers(c, c->outer);
    int rc = sb_resp_stream_begin(o, 200, "application/grpc", 0, NULL);
    if (rc) {
        c->outer = NULL;
        inner_finish(c);
        return rc == SB_ENOTSUP ? SB_EIO : rc;
    }
    c->outer_streaming = true;
    c->inner_streaming = true;
    sb_req_on_abort(o, outer_abort, c);
    sb_req_on_writable(o, outer_writable, c);
    return 0;
}

static int inner_stream_write(sb_req *req, const void *data, size_t len)
{
    gcall *c = req->transport;
    if (!c->outer)
        return SB_ECANCELED;
    json_t *j = json_loadb(data, len, JSON_DISABLE_EOF_CHECK, NULL);
    ProtobufCMessage *msg = NULL;
    char why[160];
    int rc = j ? sb_pbjson_to_message(c->m->out, j, &msg, why, sizeof why) : SB_EINVAL;
    json_decref(j);
    uint8_t *b = NULL;
    size_t blen = 0;
    if (!rc) {
        b = frame(msg, &blen);
        rc = b ? 0 : SB_ENOMEM;
    }
    if (msg)
        protobuf_c_message_free_unpacked(msg, &sb_pb_allocator);
    if (rc) {
        /* An event it cannot send: end the stream rather than skip it (resumable). */
        reply_error(c, SB_GRPC_INTERNAL, "an event could not be converted");
        if (c->abort_fn)
            c->abort_fn(&c->req, c->abort_ud);
        inner_finish(c);
        return SB_ECANCELED;
    }
    /* On failure outer_abort has run (and may have freed c): touch nothing. */
    rc = sb_resp_stream_write(c->outer, b, blen);
    sb_free(b);
    return rc;
}

static void inner_stream_end(sb_req *req)
{
    gcall *c = req->transport;
    if (c->outer) {
        sb_req *o = c->outer;
        c->outer = NULL;
        static const sb_http_header ok[] = {{SB_STR_LIT("grpc-status"), SB_STR_LIT("0")}};
        sb_resp_stream_end_trailers(o, ok, 1);
    }
    inner_finish(c);
}

static void inner_on_abort(sb_req *req, void (*fn)(sb_req *req, void *ud), void *ud)
{
    gcall *c = req->transport;
    c->abort_fn = fn;
    c->abort_ud = ud;
}

static const sb_req_ops inner_ops = {
    .proto = "gRPC",
    .send = inner_send,
    .stream_begin = inner_stream_begin,
    .stream_write = inner_stream_write,
    .stream_end = inner_stream_end,
    .on_abort = inner_on_abort,
    .stream_queued = inner_stream_queued,
    .on_writable = inner_on_writable,
};

/* ---- the gRPC request ---------------------------------------------------------------- */

static void on_deadline(uv_timer_t *t)
{
    gcall *c = t->data;
    c->refs++; /* the streaming abort below may finish the call */
    if (c->outer)
        reply_error(c, SB_GRPC_DEADLINE_EXCEEDED, "deadline exceeded");
    if (c->watching) {
        c->watching = false;
        call_unref(c);
    }
    if (c->inner_streaming && !c->inner_done) {
        if (c->abort_fn)
            c->abort_fn(&c->req, c->abort_ud);
        inner_finish(c);
    }
    timer_stop(c);
    call_unref(c);
}

static bool is_grpc(const sb_req *req)
{
    const sb_http_header *ct = sb_req_header(req, "content-type");
    return ct && ct->value.len >= 16 && strncasecmp(ct->value.base, "application/grpc", 16) == 0 &&
           (ct->value.len == 16 || ct->value.base[16] == '+' || ct->value.base[16] == ';');
}

/* A gRPC error before any call state exists. */
static void early_status(sb_req *req, sb_grpc_status st, const char *msg)
{
    char code[12];
    int cl = snprintf(code, sizeof code, "%d", (int)st);
    char mstack[256];
    sb_buf mb = {mstack, 0, sizeof mstack, sizeof mstack};
    if (sb_grpc_percent_encode(&mb, msg, strlen(msg)) != 0)
        mb.len = 0;
    sb_resp_header(req, "grpc-status", (sb_str){code, (size_t)cl});
    sb_resp_header(req, "grpc-message", (sb_str){mb.base, mb.len});
    sb_resp_send(req, 200, "application/grpc", NULL, 0);
}

static bool unreserved(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '-' || ch == '.' || ch == '_' || ch == '~';
}

static int append_escaped(sb_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        int rc = unreserved((char)ch)
                     ? sb_buf_append(b, &s[i], 1)
                     : sb_buf_append(b, (char[3]){'%', hex[ch >> 4], hex[ch & 15]}, 3);
        if (rc)
            return rc;
    }
    return 0;
}

/* A path or query field's value as text, read from the message (strings and integers);
 * false when it is not set or empty. */
static bool field_text(const ProtobufCMessage *msg, const char *name, char *num, size_t numlen,
                       const char **s, size_t *n)
{
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field_by_name(msg->descriptor, name);
    if (!f || f->label == PROTOBUF_C_LABEL_REPEATED)
        return false;
    const char *p = (const char *)msg;
    if (f->type == PROTOBUF_C_TYPE_STRING) {
        const char *v = *(char *const *)(p + f->offset);
        if (!v || !*v)
            return false;
        *s = v;
        *n = strlen(v);
        return true;
    }
    if (f->label == PROTOBUF_C_LABEL_OPTIONAL &&
        !*(const protobuf_c_boolean *)(p + f->quantifier_offset))
        return false;
    long long v;
    switch (f->type) {
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        v = *(const uint32_t *)(p + f->offset);
        break;
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        v = *(const int32_t *)(p + f->offset);
        break;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        v = *(const int64_t *)(p + f->offset);
        break;
    default:
        return false;
    }
    *n = (size_t)snprintf(num, numlen, "%lld", v);
    *s = num;
    return true;
}

/* Builds the REST request's method, path and query from the message's fields, and the body
 * (methods with one) from its JSON without those fields. Answers INVALID_ARGUMENT and
 * returns false. */
static bool build(gcall *c, const ProtobufCMessage *in, json_t *j)
{
    const gmethod *m = c->m;
    sb_req *r = &c->req;
    char pbuf[MAX_PATH], qbuf[MAX_PATH], num[24], field[64];
    sb_buf p = {pbuf, 0, sizeof pbuf, sizeof pbuf}, q = {qbuf, 0, sizeof qbuf, sizeof qbuf};
    for (const char *t = m->tmpl; *t;) {
        const char *open = strchr(t, '{');
        if (!open) {
            sb_buf_append_str(&p, t);
            break;
        }
        sb_buf_append(&p, t, (size_t)(open - t));
        const char *close = strchr(open, '}');
        size_t fl = (size_t)(close - open - 1);
        memcpy(field, open + 1, fl);
        field[fl] = 0;
        const char *s;
        size_t n;
        if (!field_text(in, field, num, sizeof num, &s, &n)) {
            char why[128];
            snprintf(why, sizeof why, "%s is required", field);
            reply_error(c, SB_GRPC_INVALID_ARGUMENT, why);
            return false;
        }
        if (append_escaped(&p, s, n) != 0) {
            reply_error(c, SB_GRPC_INVALID_ARGUMENT, "a path field is too long");
            return false;
        }
        if (j)
            json_object_del(j, field);
        t = close + 1;
    }
    for (const char *t = m->query; *t;) {
        while (*t == ' ')
            t++;
        size_t fl = strcspn(t, " ");
        if (!fl)
            break;
        memcpy(field, t, fl);
        field[fl] = 0;
        t += fl;
        const char *s;
        size_t n;
        if (field_text(in, field, num, sizeof num, &s, &n)) {
            int rc = q.len ? sb_buf_append(&q, "&", 1) : 0;
            rc = rc ? rc : sb_buf_append_str(&q, field);
            rc = rc ? rc : sb_buf_append(&q, "=", 1);
            rc = rc ? rc : append_escaped(&q, s, n);
            if (rc) {
                reply_error(c, SB_GRPC_INVALID_ARGUMENT, "a query field is too long");
                return false;
            }
        }
        if (j)
            json_object_del(j, field);
    }
    r->method = sb_str_from(m->verb);
    r->path = (sb_str){sb_arena_strndup(&r->arena, p.base, p.len), p.len};
    r->query = (sb_str){sb_arena_strndup(&r->arena, q.base, q.len), q.len};
    if (m->flags & GF_BODY) {
        char *body = json_dumps(j, JSON_COMPACT);
        size_t bl = body ? strlen(body) : 0;
        r->body = (sb_str){body ? sb_arena_strndup(&r->arena, body, bl) : NULL, bl};
        free(body);
        if (!r->body.base) {
            reply_error(c, SB_GRPC_RESOURCE_EXHAUSTED, "out of memory");
            return false;
        }
    }
    if (!r->path.base || !r->query.base) {
        reply_error(c, SB_GRPC_RESOURCE_EXHAUSTED, "out of memory");
        return false;
    }
    return true;
}

static bool skip_header(sb_str name)
{
    return (name.len && name.base[0] == ':') || sb_str_case_eq(name, "content-type") ||
           sb_str_case_eq(name, "content-length") || sb_str_case_eq(name, "te") ||
           sb_str_case_eq(name, "accept") || sb_str_case_eq(name, "upgrade") ||
           sb_str_case_eq(name, "connection") ||
           (name.len >= 5 && strncasecmp(name.base, "grpc-", 5) == 0);
}

/* The caller's metadata become the REST request's headers, copied: a unary REST handler may
 * outlive the gRPC request (deadline). */
static bool copy_request_headers(gcall *c)
{
    sb_req *o = c->outer, *r = &c->req;
    sb_http_header *h = sb_arena_alloc(&r->arena, (o->num_headers + 2) * sizeof *h);
    if (!h)
        return false;
    size_t n = 0;
    for (size_t i = 0; i < o->num_headers; i++) {
        const sb_http_header *s = &o->headers[i];
        if (skip_header(s->name))
            continue;
        h[n].name = (sb_str){sb_arena_strndup(&r->arena, s->name.base, s->name.len), s->name.len};
        h[n].value =
            (sb_str){sb_arena_strndup(&r->arena, s->value.base, s->value.len), s->value.len};
        if (!h[n].name.base || !h[n].value.base)
            return false;
        n++;
    }
    h[n++] = (sb_http_header){SB_STR_LIT("content-type"), SB_STR_LIT("application/json")};
    h[n++] = (sb_http_header){SB_STR_LIT("accept"), (c->m->flags & GF_STREAM)
                                                        ? SB_STR_LIT("application/x-ndjson")
                                                        : SB_STR_LIT("application/json")};
    r->headers = h;
    r->num_headers = n;
    r->authority = o->authority.len
                       ? (sb_str){sb_arena_strndup(&r->arena, o->authority.base, o->authority.len),
                                  o->authority.len}
                       : SB_STR_NULL;
    return true;
}

static bool health_service_known(const ProtobufCMessage *msg)
{
    const Grpc__Health__V1__HealthCheckRequest *h = (const void *)msg;
    if (!h->service || !h->service[0])
        return true;
    for (size_t i = 0; i < sizeof services / sizeof services[0]; i++)
        if (strcmp(h->service, services[i]) == 0)
            return true;
    return false;
}

static void grpc_handle(sb_req *req, void *ud)
{
    const groute *gr = ud;
    const gmethod *m = gr->m;
    const grpc_ctx *g = gr->g;
    if (!is_grpc(req)) {
        sb_resp_header(req, "Accept", SB_STR_LIT("application/grpc"));
        sb_resp_problem(req, 415, "unsupported-media-type", "gRPC methods take application/grpc");
        return;
    }
    if (!req->ops->stream_end_trailers) { /* HTTP/1.1: no trailers, so no grpc-status */
        sb_resp_problem(req, 426, "upgrade-required", "gRPC needs HTTP/2");
        return;
    }
    sb_grpc_msg msg;
    int rc = sb_grpc_msg_parse(req->body.base, req->body.len, g->max_message, &msg);
    if (rc == SB_EMSGSIZE) {
        early_status(req, SB_GRPC_RESOURCE_EXHAUSTED,
                     "the request message is larger than "
                     "grpc.max_message_bytes");
        return;
    }
    if (rc || msg.used != req->body.len) {
        early_status(req, SB_GRPC_INVALID_ARGUMENT, "a unary call takes exactly one message");
        return;
    }
    if (msg.compressed) {
        sb_resp_header(req, "grpc-accept-encoding", SB_STR_LIT("identity"));
        early_status(req, SB_GRPC_UNIMPLEMENTED, "compressed messages are not supported");
        return;
    }
    int64_t timeout_ms = -1;
    const sb_http_header *to = sb_req_header(req, "grpc-timeout");
    if (to && sb_grpc_timeout_parse(to->value, &timeout_ms) != 0)
        timeout_ms = -1; /* malformed: no deadline, as other servers do */
    if (timeout_ms == 0) {
        early_status(req, SB_GRPC_DEADLINE_EXCEEDED, "deadline exceeded");
        return;
    }
    ProtobufCMessage *in = protobuf_c_message_unpack(m->in, &sb_pb_allocator, msg.data.len,
                                                     (const uint8_t *)msg.data.base);
    if (!in) {
        early_status(req, SB_GRPC_INVALID_ARGUMENT, "the request message is malformed");
        return;
    }
    if ((m->flags & GF_HEALTH) && !health_service_known(in)) {
        protobuf_c_message_free_unpacked(in, &sb_pb_allocator);
        early_status(req, SB_GRPC_NOT_FOUND, "unknown service");
        return;
    }
    json_t *j = NULL; /* the body's fields: only for methods with a body */
    rc = (m->flags & GF_BODY) ? sb_pbjson_from_message(in, &j) : 0;
    gcall *c = rc ? NULL : sb_malloc(sizeof *c);
    if (!c) {
        protobuf_c_message_free_unpacked(in, &sb_pb_allocator);
        json_decref(j);
        early_status(req,
                     rc && rc != SB_ENOMEM ? SB_GRPC_INVALID_ARGUMENT : SB_GRPC_RESOURCE_EXHAUSTED,
                     rc && rc != SB_ENOMEM ? "the request message has no JSON form (invalid UTF-8?)"
                                           : "out of memory");
        return;
    }
    /* Everything but the arena's first block, which the arena does not need zeroed. */
    memset(c, 0, offsetof(gcall, arena_first));
    c->outer = req;
    c->m = m;
    c->g = g;
    c->refs = 1;
    sb_req *r = &c->req;
    sb_arena_init(&r->arena, c->arena_first, sizeof c->arena_first, 2 * g->max_message + 65536);
    r->ops = &inner_ops;
    r->transport = c;
    r->loop = req->loop;
    r->peer = req->peer;
    r->start_ns = req->start_ns;
    memcpy(r->request_id, req->request_id, req->request_id_len);
    r->request_id_len = req->request_id_len;
    bool ok = build(c, in, j);
    protobuf_c_message_free_unpacked(in, &sb_pb_allocator);
    json_decref(j);
    if (!ok) {
        call_unref(c);
        return;
    }
    if (!copy_request_headers(c)) {
        reply_error(c, SB_GRPC_RESOURCE_EXHAUSTED, "out of memory");
        call_unref(c);
        return;
    }
    c->refs++; /* held across dispatch: the handler may finish the call inside it */
    if (timeout_ms > 0 && uv_timer_init(&req->loop->uv, &c->timer) == 0) {
        c->timer.data = c;
        c->timer_on = true;
        c->refs++;
        uv_timer_start(&c->timer, on_deadline, (uint64_t)timeout_ms, 0);
    }
    sb_router_dispatch(req->loop->router, r);
    call_unref(c);
}

static void grpc_fallback(sb_req *req, void *ud)
{
    (void)ud;
    if (is_grpc(req)) {
        early_status(req, SB_GRPC_UNIMPLEMENTED, "unknown service or method");
        return;
    }
    sb_resp_problem(req, 404, "not-found", "no such resource");
}

int sb__grpc_install(sb_router *r, size_t max_message, int nloops, void **state)
{
    nloops = nloops > 0 ? nloops : 1;
    /* One block: the context, then a cache per loop. Untouched pages of a large calloc stay
     * unmapped, so a loop pays only for the cache it uses. */
    grpc_ctx *g = sb_calloc(1, sizeof *g + (size_t)nloops * sizeof(rcache));
    *state = g;
    if (!g)
        return SB_ENOMEM;
    g->max_message = max_message;
    g->nloops = nloops;
    g->caches = (rcache *)(g + 1);
    int rc = 0;
    for (size_t i = 0; i < NMETHODS && !rc; i++) {
        g->routes[i] = (groute){&methods[i], g};
        rc = sb_router_add(r, "POST", methods[i].path, grpc_handle, &g->routes[i]);
    }
    if (!rc)
        sb_router_set_fallback(r, grpc_fallback, g);
    return rc;
}

int sb_api_grpc_register(sb_app *app, sb_router *r)
{
    void *state = NULL;
    int rc = sb__grpc_install(r, sb_app_config(app)->grpc_max_message_bytes, sb__app_nloops(app),
                              &state);
    if (state && !sb__app_own(app, state))
        return SB_ENOMEM;
    return rc;
}
