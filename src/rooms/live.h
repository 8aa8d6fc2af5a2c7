/*
 * Live rooms: who is connected to which room right now, on one event loop.
 *
 * This is the domain of the real-time path, written once and free of I/O: connections are
 * reached only through sb_live_conn_ops (the WebSocket adapter implements it; unit tests
 * use fakes), and everything that must be persisted or announced (session start and end,
 * joins and leaves, ejections) is reported through sb_live_hooks, which the control plane
 * turns into store jobs and events. One sb_live_rooms belongs to one loop and is used only
 * on that loop's thread: a room lives on its home loop and all of its participants'
 * connections are served there, so fan-out is a loop-local walk with no locks.
 *
 * Messages to participants are JSON text frames (API.md "Participants' real-time
 * connection"):
 *   joined {room, session_id, participant, participants[]}      to the joiner
 *   participant_joined {participant}                             to the others
 *   participant_left {identity, reason}                          to the others
 *   participant_updated {participant}                            to everyone
 *   data {from, topic, data}                                     to the targets
 *   room_updated {room}                                          to everyone
 * Hidden participants (grant `hidden`) are never announced and never listed to others.
 * Binary frames are relayed to every other participant with the sender attributed by a
 * header (docs/protocol.md): 1 byte identity length N, N bytes identity, then the payload.
 *
 * Close codes: 4001 token expired, 4003 ejected, 4004 room closed, 4008 too slow,
 * 4009 room full, 4010 identity joined elsewhere (the newer connection wins).
 */
#ifndef SB_ROOMS_LIVE_H
#define SB_ROOMS_LIVE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "api/rtc_token.h"

#define SB_LIVE_OP_TEXT   1
#define SB_LIVE_OP_BINARY 2

#define SB_CLOSE_TOKEN_EXPIRED 4001
#define SB_CLOSE_EJECTED       4003
#define SB_CLOSE_ROOM_CLOSED   4004
#define SB_CLOSE_TOO_SLOW      4008
#define SB_CLOSE_ROOM_FULL     4009
#define SB_CLOSE_REPLACED      4010

/* A participant's connection, as the room sees it. */
typedef struct sb_live_conn_ops {
    /* Queues a frame; returns 0, or a negative error when the connection is closing or its
     * bounded send queue is full (the adapter then closes it with 4008 itself). */
    int (*send)(void *conn, int opcode, const void *data, size_t len);
    /* Starts a close with code and reason; the adapter later calls sb_live_leave. */
    void (*close)(void *conn, uint16_t code, const char *reason);
} sb_live_conn_ops;

typedef struct sb_live_room sb_live_room;
typedef struct sb_live_participant sb_live_participant;

/* What happened, for persistence and events; every callback is optional. Strings are valid
 * only during the call. */
typedef struct sb_live_hooks {
    void *ud;
    /* The room went from empty to occupied: a session starts. Fill session_id
     * (SB_ID_MAX bytes) with the new session's id. */
    void (*session_started)(void *ud, const sb_live_room *room, char *session_id);
    /* The room has been empty for its empty_timeout, or was closed: the session ends. */
    void (*session_ended)(void *ud, const sb_live_room *room, const char *reason);
    void (*participant_joined)(void *ud, const sb_live_room *room, const sb_live_participant *p);
    /* reason: "left", "ejected", "replaced", "room_closed", "too_slow", "token_expired" */
    void (*participant_left)(void *ud, const sb_live_room *room, const sb_live_participant *p,
                             const char *reason);
} sb_live_hooks;

typedef struct sb_live_rooms sb_live_rooms;

/* Creates an empty registry for one loop. */
int sb_live_rooms_new(sb_live_rooms **out, const sb_live_hooks *hooks);
/* Closes every room (participants get 4004 via ops->close) and frees the registry. */
void sb_live_rooms_free(sb_live_rooms *rs);

/* Room settings the control plane knows (from the rooms table). */
typedef struct sb_live_room_settings {
    uint32_t max_participants; /* 0 = unlimited */
    uint32_t empty_timeout_seconds;
    json_t *room_json; /* the room object as the API shows it; borrowed, copied */
} sb_live_room_settings;

/*
 * Joins claims->identity to claims->room (project claims->project_id), creating the live
 * room on first join. A participant already connected with the same identity is closed
 * with 4010 ("replaced") first. If the room is full (not counting a replaced connection),
 * returns SB_EAGAIN and *close_code = 4009 without joining. On success sends `joined` to
 * the new participant and `participant_joined` to the others (unless hidden), and returns
 * 0 with *out set. now_ms is the wall clock for joined_at.
 */
int sb_live_join(sb_live_rooms *rs, const sb_rtc_claims *claims,
                 const sb_live_room_settings *settings, void *conn, const sb_live_conn_ops *ops,
                 int64_t now_ms, sb_live_participant **out, int *close_code);

/* The participant's connection is gone (after any close). Announces participant_left
 * (unless hidden) and frees p. When the room becomes empty its empty timer starts: call
 * sb_live_tick to end sessions whose timer ran out. */
void sb_live_leave(sb_live_rooms *rs, sb_live_participant *p, const char *reason);

/*
 * A text frame from a participant: {"type":"data","data":STRING,"topic"?:STRING,
 * "to"?:[identities]}. Needs grant publish_data. Delivers `data {from, topic, data}` to
 * the targets (everyone else when `to` is absent; unknown identities are skipped).
 * Returns the number delivered, or a negative error: SB_EINVAL for a malformed message,
 * SB_EACCES when the grant is missing (the adapter answers with an error frame).
 */
int sb_live_on_text(sb_live_rooms *rs, sb_live_participant *p, const char *msg, size_t len);

/* A binary frame: relayed to every other participant that may subscribe, framed as above.
 * Needs grant publish. Returns the number delivered or SB_EACCES. */
int sb_live_on_binary(sb_live_rooms *rs, sb_live_participant *p, const void *data, size_t len);

/* Control-plane effects, applied at once to live connections. All return SB_ENOENT when
 * the room or participant is not live here. */
int sb_live_eject(sb_live_rooms *rs, const char *project_id, const char *room,
                  const char *identity);
int sb_live_update_participant(sb_live_rooms *rs, const char *project_id, const char *room,
                               const char *identity, const char *metadata /* NULL: keep */,
                               const unsigned *grants /* NULL: keep */);
int sb_live_close_room(sb_live_rooms *rs, const char *project_id, const char *room);
int sb_live_update_room(sb_live_rooms *rs, const char *project_id, const char *room,
                        const sb_live_room_settings *settings);
/* Server → participants data message (POST /v1/rooms/{name}/messages): from is "" (the
 * server). Returns the number delivered. */
int sb_live_send_data(sb_live_rooms *rs, const char *project_id, const char *room,
                      const char *data, size_t len, const char *topic, const char *const *to,
                      size_t nto);

/* Ends sessions of rooms empty for longer than their empty_timeout (session_ended hook,
 * then the live room is freed), and closes participants whose token expired (4001).
 * Call about once a second. */
void sb_live_tick(sb_live_rooms *rs, int64_t now_ms);

/* Accessors. */
const char *sb_live_room_project(const sb_live_room *r);
const char *sb_live_room_name(const sb_live_room *r);
const char *sb_live_room_session(const sb_live_room *r);
size_t sb_live_room_count(const sb_live_room *r); /* connected participants, hidden included */
const sb_rtc_claims *sb_live_participant_claims(const sb_live_participant *p);
int64_t sb_live_participant_joined_at(const sb_live_participant *p);
/* The participant object of API.md: {identity, name, metadata, grants, joined_at,
 * session_id}. */
json_t *sb_live_participant_json(const sb_live_participant *p);
/* Live participants of a room (visible ones only unless include_hidden) as a JSON array,
 * or NULL when the room is not live here. */
json_t *sb_live_list(sb_live_rooms *rs, const char *project_id, const char *room,
                     bool include_hidden);

#endif
