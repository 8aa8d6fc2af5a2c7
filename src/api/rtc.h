/*
 * The participants' real-time endpoint, GET /v1/rtc (API.md "Participants' real-time
 * connection"), and the control plane's effects on live rooms.
 *
 * Threads: every loop owns one sb_live_rooms registry. A room lives on its HOME loop,
 * hash(project_id "/" room) % nloops. A participant's connection is accepted by any loop;
 * once the token is verified and the 101 written, the connection itself (socket, TLS
 * session, buffers) is handed to the home loop (sb_ws_move), so every frame in and out of a
 * room is handled by one thread with no message between loops: fan-out is a loop-local walk
 * and each connection's writes are batched once per loop iteration. Control-plane effects
 * (eject, close, update, send, list) are posted to the home loop (sb_rtc_run). Store writes
 * for sessions and participants are fire-and-forget jobs whose completions come back to the
 * home loop.
 */
#ifndef SB_API_RTC_H
#define SB_API_RTC_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "api/app.h"

typedef struct sb_rtc sb_rtc;

/* Created and freed by sb_app (after the store opens; before it closes). Freeing runs the
 * remaining hooks synchronously (session_ended "shutdown"). */
int sb_rtc_new(sb_rtc **out, sb_app *app, sb_server *server, int nloops);
void sb_rtc_free(sb_rtc *rtc);
int sb_api_rtc_register(sb_app *app, sb_router *r);

enum {
    SB_RTC_EJECT = 1, /* identity, ban_seconds */
    SB_RTC_CLOSE,     /* the room */
    SB_RTC_UPDATE,    /* identity, metadata/set_metadata, grants_on/grants_off */
    SB_RTC_SEND,      /* data, topic, to/nto; result = delivered */
    SB_RTC_LIST,      /* json = visible participants */
    SB_RTC_ROOM,      /* room_json (borrowed): new settings; room_updated to everyone */
};

/* A control-plane effect on a live room, run on the room's home loop; done(c) then runs on
 * the request's loop (possibly before sb_rtc_run returns). result is the sb_live_* result
 * (SB_ENOENT: not live). Strings are borrowed until done; the struct lives in the request's
 * arena. json (LIST, UPDATE: the participant) is owned by the caller in done. */
typedef struct sb_rtc_call {
    int kind;
    char project_id[SB_ID_MAX];
    char room[129];
    char identity[129];
    int64_t ban_seconds;
    const char *metadata; /* NULL with set_metadata: clear */
    bool set_metadata;
    unsigned grants_on, grants_off;
    const char *data;
    size_t data_len;
    const char *topic;
    const char **to;
    size_t nto;
    const json_t *room_json;
    int result;
    json_t *json;
    void (*done)(struct sb_rtc_call *c);
    void *arg;
    /* internal */
    sb_rtc *rtc;
    void *origin;
} sb_rtc_call;

void sb_rtc_run(sb_app *app, sb_req *req, sb_rtc_call *c);

/* Closes (4001) every live participant that joined with token `jti` of the project, on
 * every loop (posted; returns before they are closed). The revocation itself is
 * sb_app_revoke_token's: joins are refused from then on. */
void sb_rtc_kick_token(sb_app *app, const char *project_id, const char *jti);

/* The open room `name` as the API shows it (rest_rooms.c); *out NULL if none. */
int sb_room_read_open(sqlite3 *db, const char *project, const char *name, size_t nlen,
                      json_t **out);

#endif
