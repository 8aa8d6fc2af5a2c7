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
 * `from` is the sender's identity, or null when the server sent it (sb_live_send_data);
 * `topic` is null when none was given. `room` is the room object with num_participants
 * (the participants others can see: hidden ones are not counted) and active_session_id
 * filled in from the live room.
 * Hidden participants (grant `hidden`) are never announced and never listed to others; a
 * participant whose `hidden` grant changes appears to the others as participant_joined, or
 * disappears as participant_left with reason "hidden".
 * Binary frames are relayed to every other participant with the sender attributed by a
 * header (docs/protocol.md): 1 byte identity length N, N bytes identity, then the payload.
 * Participants without grant `subscribe` receive no data and no binary frames, but they do
 * receive presence (participant_*) and room_updated messages.
 *
 * Lifetime: a participant object from a successful sb_live_join stays valid until the
 * adapter calls sb_live_leave on it, which it must do exactly once per successful join,
 * after the connection is gone. When the server removes a participant itself (replaced,
 * ejected, token expired, room closed, registry freed) the participant is *detached* at
 * once: ops->close is called, it no longer counts, sees or receives anything in the room,
 * participant_left goes to the others and the participant_left hook fires with the
 * server's reason right then (so a replaced identity's left comes before its new join, and
 * every left of a closed room before session_ended). Its later sb_live_leave only frees it,
 * whatever reason the adapter passes, and touches neither the room nor the registry.
 *
 * Re-entrancy: ops->send, ops->close and the hooks are called while rooms are being
 * walked; they must not call back into sb_live_* (the adapter calls sb_live_leave later,
 * from its own close callback).
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

/* What happened, for persistence and events; every callback is optional. Strings and the
 * room and participant pointers are valid only during the call. */
typedef struct sb_live_hooks {
    void *ud;
    /* The room went from empty to occupied: a session starts. Fill session_id
     * (SB_ID_MAX bytes) with the new session's id; left empty, the domain makes one
     * ("ses_…"). */
    void (*session_started)(void *ud, const sb_live_room *room, char *session_id);
    /* The session ends: reason "empty" (the room has been empty for its empty_timeout),
     * "room_closed" (sb_live_close_room) or "shutdown" (sb_live_rooms_free). The live room
     * is freed right after. */
    void (*session_ended)(void *ud, const sb_live_room *room, const char *reason);
    void (*participant_joined)(void *ud, const sb_live_room *room, const sb_live_participant *p);
    /* reason: "left" (or what the adapter passed to sb_live_leave: "too_slow", "error"),
     * or the server's: "ejected", "replaced", "room_closed", "token_expired". Called from
     * sb_live_leave, or at once when the server detaches p (see Lifetime above). */
    void (*participant_left)(void *ud, const sb_live_room *room, const sb_live_participant *p,
                             const char *reason);
} sb_live_hooks;

typedef struct sb_live_rooms sb_live_rooms;

/* Creates an empty registry for one loop. */
int sb_live_rooms_new(sb_live_rooms **out, const sb_live_hooks *hooks);
/* Closes every room (participants get 4004 via ops->close and are detached; hooks fire as
 * for sb_live_close_room, session_ended with reason "shutdown") and frees the registry.
 * sb_live_leave on those participants afterwards only frees them. */
void sb_live_rooms_free(sb_live_rooms *rs);

/* Room settings the control plane knows (from the rooms table). */
typedef struct sb_live_room_settings {
    uint32_t max_participants; /* 0 = unlimited */
    uint32_t empty_timeout_seconds;
    json_t *room_json; /* the room object as the API shows it; borrowed, copied;
                        * NULL in sb_live_update_room keeps the current one */
} sb_live_room_settings;

/*
 * Joins claims->identity to claims->room (project claims->project_id), creating the live
 * room on first join. A participant already connected with the same identity is closed
 * with 4010 ("replaced") first. If the room is full (not counting a replaced connection),
 * returns SB_EAGAIN and *close_code = 4009 without joining. On success sends `joined` to
 * the new participant and `participant_joined` to the others (unless hidden), and returns
 * 0 with *out set. now_ms is the wall clock for joined_at. The room's settings are taken
 * from `settings` when this join makes it live; afterwards sb_live_update_room changes them.
 * On an error nothing is sent, no participant is replaced and no hook but session_started
 * has been called (an allocation failure after that leaves an empty room whose session
 * sb_live_tick ends as "empty").
 */
int sb_live_join(sb_live_rooms *rs, const sb_rtc_claims *claims,
                 const sb_live_room_settings *settings, void *conn, const sb_live_conn_ops *ops,
                 int64_t now_ms, sb_live_participant **out, int *close_code);

/* The participant's connection is gone (after any close). Announces participant_left
 * (unless hidden) with reason (NULL: "left") and frees p; for a detached participant it
 * only frees p. When the room becomes empty its empty timer starts at the next
 * sb_live_tick (so a session ends between empty_timeout and empty_timeout plus one tick
 * after the last leave); a join before the timer runs out keeps the session. */
void sb_live_leave(sb_live_rooms *rs, sb_live_participant *p, const char *reason);

/*
 * A text frame from a participant: {"type":"data","data":STRING,"topic"?:STRING,
 * "to"?:[identities]}. Needs grant publish_data. Delivers `data {from, topic, data}` to
 * the targets (everyone else when `to` is absent; unknown identities are skipped).
 * Returns the number delivered, or a negative error: SB_EINVAL for a malformed message
 * (unknown members, `data` over 65536 or `topic` over 128 bytes included), SB_EACCES when
 * the grant is missing (the adapter answers with an error frame), SB_ENOENT when p is
 * detached (its close is under way). Targets need grant subscribe; the sender itself and
 * repeated identities in `to` are skipped.
 */
int sb_live_on_text(sb_live_rooms *rs, sb_live_participant *p, const char *msg, size_t len);

/* A fresh token for the same participant: its expiry becomes exp (Unix seconds). The
 * caller has verified the token and that it names the same project, room and identity.
 * SB_ENOENT when p is detached. */
int sb_live_refresh(sb_live_rooms *rs, sb_live_participant *p, int64_t exp);

/* A binary frame: relayed to every other participant that may subscribe, framed as above.
 * Needs grant publish. Returns the number delivered, SB_EACCES, or SB_ENOENT when p is
 * detached. */
int sb_live_on_binary(sb_live_rooms *rs, sb_live_participant *p, const void *data, size_t len);

/* Control-plane effects, applied at once to live connections. All return SB_ENOENT when
 * the room or participant is not live here, and change nothing when they fail.
 * Updating a participant sends participant_updated to it and (unless hidden) to the
 * others; metadata over 4096 bytes is SB_EINVAL, "" clears it (shown as null). */
int sb_live_eject(sb_live_rooms *rs, const char *project_id, const char *room,
                  const char *identity);
int sb_live_update_participant(sb_live_rooms *rs, const char *project_id, const char *room,
                               const char *identity, const char *metadata /* NULL: keep */,
                               const unsigned *grants /* NULL: keep */);
int sb_live_close_room(sb_live_rooms *rs, const char *project_id, const char *room);
int sb_live_update_room(sb_live_rooms *rs, const char *project_id, const char *room,
                        const sb_live_room_settings *settings);
/* Server → participants data message (POST /v1/rooms/{name}/messages): from is null (the
 * server), topic may be NULL, to/nto as in sb_live_on_text (to NULL: everyone). Returns the
 * number delivered, or SB_EINVAL (data over 65536, topic over 128 bytes) or SB_ENOENT. */
int sb_live_send_data(sb_live_rooms *rs, const char *project_id, const char *room, const char *data,
                      size_t len, const char *topic, const char *const *to, size_t nto);

/* Ends sessions of rooms empty for longer than their empty_timeout (session_ended hook,
 * then the live room is freed), and detaches participants whose token expired (exp <=
 * now, close 4001, reason "token_expired"). Call about once a second. */
void sb_live_tick(sb_live_rooms *rs, int64_t now_ms);

/* Accessors. */
const char *sb_live_room_project(const sb_live_room *r);
const char *sb_live_room_name(const sb_live_room *r);
const char *sb_live_room_session(const sb_live_room *r);
size_t sb_live_room_count(const sb_live_room *r); /* connected participants, hidden included */
/* A participant's claims as the room keeps them: the token's claims, with the metadata on
 * the heap sized to fit instead of a 4 KiB buffer (an idle participant should cost little). */
typedef struct sb_live_claims {
    char project_id[SB_ID_MAX];
    char room[129];
    char identity[129];
    char jti[SB_ID_MAX];
    char name[257];
    const char *metadata; /* never NULL ("" when none); owned by the participant */
    unsigned grants;
    int64_t exp;
} sb_live_claims;
const sb_live_claims *sb_live_participant_claims(const sb_live_participant *p);
int64_t sb_live_participant_joined_at(const sb_live_participant *p);
/* The participant object of API.md: {identity, name, metadata, grants, joined_at,
 * session_id}; name and metadata are null when empty. NULL when memory ran out. */
json_t *sb_live_participant_json(const sb_live_participant *p);
/* Live participants of a room (visible ones only unless include_hidden) as a JSON array in
 * join order, or NULL when the room is not live here (or memory ran out). */
json_t *sb_live_list(sb_live_rooms *rs, const char *project_id, const char *room,
                     bool include_hidden);

#endif
