/*
 * WebSocket (RFC 6455), server side, over any connection the transport carries (TLS or plain).
 *
 * A route handler turns an HTTP/1.1 upgrade request into a WebSocket with sb_ws_accept; from
 * then on the connection speaks WebSocket and the handler hears about it through three
 * callbacks. Frames are parsed and built with wslay's frame layer; reassembly, limits,
 * UTF-8 validation, the closing handshake and keep-alive are done here.
 *
 * Threading: an sb_ws belongs to the loop that accepted it. Every function here must be
 * called on that loop's thread.
 *
 * Lifetime and ownership:
 *   - sb_ws_accept creates the sb_ws and calls on_open before it returns 0.
 *   - on_message is called once per complete message (fragments reassembled), never for
 *     control frames. `data` is valid only during the call; a text message is valid UTF-8
 *     but not NUL-terminated.
 *   - on_close is called exactly once, when the WebSocket is over: the closing handshake
 *     finished, the peer failed the protocol, a timeout passed, or the TCP connection
 *     ended. After it returns the transport frees the sb_ws: the handler must drop every
 *     pointer it keeps to it inside on_close. `code` is the peer's close code when the
 *     peer closed first (1005 if its Close frame had none), the code the server sent when
 *     the server closed first (sb_ws_close, a protocol error: 1002/1007/1009, 1001 on
 *     shutdown, 4008 for a slow reader), or 1006 when the connection ended without a
 *     closing handshake (including a peer that stopped answering pings). `reason` is
 *     UTF-8, at most 123 bytes, and also NUL-terminated.
 *   - sb_ws_send, sb_ws_close and sb_ws_queued never call any of the callbacks, so they are
 *     safe from inside any callback, including for another sb_ws.
 *
 * Output batching: sb_ws_send only appends the frame to the connection's pending output.
 * Pending output is handed to the transport (TLS-encrypted as one piece) and written with as
 * few syscalls as possible: at the end of the connection's own read callback, or, for frames
 * queued from anywhere else (another connection's callback, a timer, a store completion),
 * once per loop iteration from the loop's uv_prepare handle, i.e. right before the loop
 * waits for I/O. So frames queued to a connection during one loop iteration go out in one
 * write.
 *
 * Bounds: a received message larger than ws.max_message_bytes is refused with close 1009
 * as soon as its frame headers say so (fragments are never buffered past the limit). Output
 * queued toward a connection (not yet accepted by the kernel) is bounded by
 * ws.max_send_queue: a send that would go past it closes the connection with 4008
 * ("too slow"), dropping the frames that were not yet handed to the transport; a message
 * into an empty queue is always accepted, so one message larger than the limit still goes
 * out. The transport keeps reading from a WebSocket whose output is backed up (the send
 * queue bound, not input backpressure, protects memory), so a peer that only sends is
 * served while its output waits.
 *
 * Keep-alive: when nothing has been received for ws.ping_interval the server sends a Ping;
 * if nothing at all (a Pong or any other frame) arrives within ws.pong_timeout after it, the
 * connection is dropped (on_close with 1006). After the server sends a Close frame it waits
 * SB_WS_CLOSE_TIMEOUT_MS for the peer's, then drops the connection.
 */
#ifndef SB_NET_WEBSOCKET_H
#define SB_NET_WEBSOCKET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "core/str.h"
#include "net/request.h"

#define SB_WS_TEXT   1
#define SB_WS_BINARY 2

/* Close codes (RFC 6455 §7.4.1 and the API's 4xxx codes). */
#define SB_WS_CLOSE_NORMAL       1000
#define SB_WS_CLOSE_GOING_AWAY   1001
#define SB_WS_CLOSE_PROTOCOL     1002
#define SB_WS_CLOSE_UNSUPPORTED  1003
#define SB_WS_CLOSE_NO_STATUS    1005 /* reported only, never sent */
#define SB_WS_CLOSE_ABNORMAL     1006 /* reported only, never sent */
#define SB_WS_CLOSE_INVALID_DATA 1007
#define SB_WS_CLOSE_POLICY       1008
#define SB_WS_CLOSE_TOO_BIG      1009
#define SB_WS_CLOSE_INTERNAL     1011
#define SB_WS_CLOSE_TOO_SLOW     4008

#define SB_WS_CLOSE_TIMEOUT_MS 5000       /* peer's Close after ours */
#define SB_WS_MAX_REASON       123        /* bytes of a close reason */
#define SB_WS_MAX_SEND         (8u << 20) /* largest message sb_ws_send takes */

typedef struct sb_ws sb_ws;

typedef struct sb_ws_handler {
    void (*on_open)(sb_ws *ws, void *ud);
    /* opcode: SB_WS_TEXT or SB_WS_BINARY. */
    void (*on_message)(sb_ws *ws, void *ud, int opcode, const void *data, size_t len);
    void (*on_close)(sb_ws *ws, void *ud, uint16_t code, sb_str reason);
    /* Optional: what was queued has been written out (sb_ws_queued is under half of
     * ws.max_send_queue again); a sender pacing a long backlog continues from here. */
    void (*on_writable)(sb_ws *ws, void *ud);
} sb_ws_handler;

/*
 * Answers req, an HTTP/1.1 GET carrying `Upgrade: websocket`, `Connection: upgrade`,
 * `Sec-WebSocket-Version: 13` and a Sec-WebSocket-Key of 16 base64-encoded bytes, with 101
 * Switching Protocols (plus any response headers the handler added to req, such as
 * Sec-WebSocket-Protocol), switches the connection to WebSocket, sets *out, calls
 * h->on_open and returns 0. Bytes the client sent after the request head are WebSocket
 * input. `h` must outlive the WebSocket (a static table in practice); `ud` is passed to
 * every callback.
 *
 * On failure req has been answered and must not be used again; no callback is called:
 * SB_EPROTO after 400 (not a valid upgrade request, or a body), or 426 with
 * `Sec-WebSocket-Version: 13` (another version); SB_ECANCELED after 503 (the server is
 * draining) or when the client is already gone; SB_ENOTSUP after 400 on a protocol other
 * than HTTP/1.1; SB_ENOMEM after 500; SB_EIO when the 101 could not be queued (the
 * connection is closed).
 */
int sb_ws_accept(sb_req *req, const sb_ws_handler *h, void *ud, sb_ws **out);

/*
 * Queues one message (not fragmented). `data` is copied. Text must be valid UTF-8 (not
 * checked). Returns 0; SB_EINVAL for another opcode; SB_EMSGSIZE past SB_WS_MAX_SEND
 * (nothing queued, the connection stays open); SB_EAGAIN if the send queue would pass
 * ws.max_send_queue, in which case the connection is now closing with 4008; SB_ECANCELED
 * once the WebSocket is closing; SB_ENOMEM.
 */
int sb_ws_send(sb_ws *ws, int opcode, const void *data, size_t len);

/*
 * Starts the closing handshake: queues a Close frame with `code` and `reason` (NULL or
 * UTF-8, at most SB_WS_MAX_REASON bytes), delivers no further messages, waits up to
 * SB_WS_CLOSE_TIMEOUT_MS for the peer's Close and then closes the TCP connection; on_close
 * follows, later, from the loop. Returns 0; SB_EINVAL for a code that may not be sent
 * (valid: 1000-1003, 1007-1014, 3000-4999) or a bad reason; SB_ECANCELED if already
 * closing (nothing changes).
 */
int sb_ws_close(sb_ws *ws, uint16_t code, const char *reason);

/*
 * Hands the WebSocket and its connection to loop `to` (see sb_conn_move): done(ws, ud, 0)
 * runs on `to` once it is served there, before any of its input is read; from then on every
 * call on ws belongs to `to`. On failure the connection is closed and done(NULL, ud, rc)
 * runs (on either loop); the handler's on_close runs too, so a handler set for the transit
 * must not own anything. With `to` the current loop, done runs before this returns. Returns
 * SB_ECANCELED (closing, or already moving) or SB_ENOMEM without calling done. Between the
 * call and done, ws must not be used.
 */
typedef struct sb_loop sb_loop;
int sb_ws_move(sb_ws *ws, sb_loop *to, void (*done)(sb_ws *ws, void *ud, int rc), void *ud);

/* Replaces the handler and its user data (from the loop that serves ws). */
void sb_ws_set_handler(sb_ws *ws, const sb_ws_handler *h, void *ud);

/* The loop that serves ws (NULL under the test transport or while moving). */
sb_loop *sb_ws_loop(const sb_ws *ws);

/* ws.max_send_queue as this WebSocket applies it. */
size_t sb_ws_send_capacity(const sb_ws *ws);

/* Bytes queued toward the peer and not yet accepted by the kernel. */
size_t sb_ws_queued(const sb_ws *ws);

/* The client's address. */
const struct sockaddr_in6 *sb_ws_peer(const sb_ws *ws);

/* ---- pure helpers, exposed for tests ------------------------------------------------------ */

#define SB_UTF8_ACCEPT 0u
#define SB_UTF8_REJECT 0xffffffffu

/*
 * Incremental UTF-8 validation (RFC 3629: shortest form only, no surrogates, at most
 * U+10FFFF). Start with SB_UTF8_ACCEPT and feed the bytes in any number of pieces; the
 * result is SB_UTF8_ACCEPT at a character boundary, SB_UTF8_REJECT once the input is
 * invalid (it stays so), anything else in the middle of a character. A complete message
 * is valid iff the final state is SB_UTF8_ACCEPT.
 */
uint32_t sb_utf8_validate(uint32_t state, const void *data, size_t len);

/*
 * Sec-WebSocket-Accept for a Sec-WebSocket-Key: base64(SHA-1(key + the RFC's GUID)), 28
 * characters and a NUL into out. Returns SB_EINVAL unless key is the canonical base64 of 16
 * bytes (24 characters ending in "==").
 */
int sb_ws_accept_key(sb_str key, char out[29]);

/* Whether `code` may be sent in a Close frame (1000-1003, 1007-1014, 3000-4999). */
bool sb_ws_close_code_valid(unsigned code);

/*
 * The WebSocket engine without a connection, for unit tests and the fuzz target: a fake
 * transport that feeds client bytes and takes the server's. The engine parses the input,
 * calls the handler, and appends the frames it sends (Pongs, Close, sb_ws_send's) to its
 * pending output, which sb__ws_test_take moves into `out` (frames are not masked).
 */
typedef struct sb__ws_test_limits {
    size_t max_message;
    size_t max_send_queue;
} sb__ws_test_limits;

sb_ws *sb__ws_test_new(const sb_ws_handler *h, void *ud, sb__ws_test_limits lim);
/* Feeds client bytes; returns false once the engine wants the TCP connection closed. */
bool sb__ws_test_feed(sb_ws *ws, const void *data, size_t len);
int sb__ws_test_take(sb_ws *ws, sb_buf *out);
/* Ends the WebSocket as the transport would on a TCP close (on_close if not yet), frees it. */
void sb__ws_test_free(sb_ws *ws);

#endif
