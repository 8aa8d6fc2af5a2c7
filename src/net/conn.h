/*
 * A client connection: the transport under every protocol adapter.
 *
 * It owns the socket, the optional TLS session, the input buffer of plaintext not yet
 * consumed, the output buffers of wire bytes, and the deadline. The protocol adapter
 * (HTTP/1.1, HTTP/2, WebSocket) reads conn->in, consumes what it used, writes responses with
 * sb_conn_write_begin/sb_conn_write_end, and asks for a close. Flushing is the transport's:
 * after the adapter returns from on_data the output is written with as few syscalls as the
 * kernel allows (uv_try_write first, a uv_write for the rest).
 *
 * Bounds: conn->in holds at most http.max_header_bytes + http.max_body_bytes + one read;
 * while more than SB_CONN_OUT_HIGH bytes wait to be written, the connection stops reading,
 * so a peer that sends without reading cannot grow our memory (unless the adapter bounds
 * its output itself: sb_proto.bounds_output); and a write that makes no progress for
 * http.write_timeout closes the connection.
 */
#ifndef SB_NET_CONN_H
#define SB_NET_CONN_H

#include <netinet/in.h>
#include <openssl/ssl.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "core/buf.h"
#include "net/http1_parser.h"
#include "net/loop.h"

#define SB_CONN_OUT_HIGH (256 * 1024)
#define SB_CONN_OUT_MAX  (16 * 1024 * 1024)

typedef struct sb_conn sb_conn;
typedef struct sb_req sb_req;

typedef enum sb_deadline_kind {
    SB_DL_NONE = 0,
    SB_DL_HANDSHAKE,
    SB_DL_HEADER,
    SB_DL_BODY,
    SB_DL_IDLE,
    SB_DL_WRITE,
    SB_DL_DRAIN,
    SB_DL_PING,  /* WebSocket: time to send a keep-alive Ping (not counted as a timeout) */
    SB_DL_PONG,  /* WebSocket: the peer has not answered the Ping */
    SB_DL_CLOSE, /* closing handshake; unlike the others it fires while output waits */
} sb_deadline_kind;

/* A protocol adapter on a connection. */
typedef struct sb_proto {
    const char *name;
    void (*on_data)(sb_conn *c); /* new bytes in c->in (or EOF: c->eof) */
    void (*on_timeout)(sb_conn *c, sb_deadline_kind kind);
    void (*on_writable)(sb_conn *c); /* output drained below the high mark */
    void (*on_drain)(sb_conn *c);    /* server shutting down: finish and close */
    void (*on_close)(sb_conn *c);    /* release adapter state; no I/O */
    /* Optional: called by every sweep (a few times a second) when no deadline fired, so an
     * adapter can drop the buffers of a connection that has gone quiet. */
    void (*on_sweep)(sb_conn *c, uint64_t now_ms);
    /* The adapter bounds its own queued output (WebSocket: ws.max_send_queue), so the
     * transport keeps reading while output waits instead of pausing at SB_CONN_OUT_HIGH. */
    bool bounds_output;
} sb_proto;

/* HTTP/1.1 adapter state, kept inline: it is what nearly every connection uses. */
typedef struct sb_h1_state {
    int state;
    size_t prev_len;  /* parser resume hint for the current request */
    size_t head_len;  /* header section length once parsed */
    size_t body_have; /* chunked: decoded payload bytes so far */
    sb_http1_chunked chunked;
    struct sb_h1_req *req; /* current request, from the loop's pool */
    bool sent_continue;
    bool close_after; /* no more requests on this connection */
    bool h2_checked;  /* plain connection: its first bytes were checked for the h2c preface */
} sb_h1_state;

struct sb_conn {
    uv_tcp_t tcp; /* first member: the handle's address is the connection's */
    sb_loop *loop;
    sb_conn *prev, *next;

    SSL *ssl;
    const char *tls_in; /* ciphertext not yet consumed by OpenSSL (during a read) */
    size_t tls_in_len;

    sb_buf in;   /* plaintext received, not yet consumed by the adapter */
    sb_buf out;  /* wire bytes queued */
    sb_buf wout; /* wire bytes handed to uv_write */
    uv_write_t wreq;

    uint64_t deadline_ms; /* loop time; 0 = none */
    sb_deadline_kind deadline_kind;
    uint64_t last_write_progress_ms;

    const sb_proto *proto;
    sb_h1_state h1;
    void *proto_data; /* state of an adapter other than HTTP/1.1 (a WebSocket) */

    struct sockaddr_in6 peer;

    bool handshaking;
    bool reading;
    bool writing;
    bool eof;     /* peer finished sending */
    bool closing; /* close requested: no more input processed */
    bool close_after_write;
    bool in_callback; /* inside on_data: flush happens on the way out */
};

/* Accepts a pending connection on listener l. */
void sb_conn_accept(sb_listener *l);

/* Where to append plaintext output; must be followed by sb_conn_write_end before
 * returning to the loop. */
sb_buf *sb_conn_write_begin(sb_conn *c);
int sb_conn_write_end(sb_conn *c);

/* Queues `len` bytes of plaintext output (encrypted now on TLS). 0, SB_EMSGSIZE past
 * SB_CONN_OUT_MAX, SB_ENOMEM or SB_EIO. Not flushed: see sb_conn_flush. */
int sb_conn_write(sb_conn *c, const void *data, size_t len);

/* Writes queued output now (called automatically after on_data). */
void sb_conn_flush(sb_conn *c);

/* Closes after the queued output is written (TLS: with close_notify). */
void sb_conn_close_after_write(sb_conn *c);

/* Closes now, discarding queued output. */
void sb_conn_abort(sb_conn *c);

void sb_conn_set_deadline(sb_conn *c, sb_deadline_kind kind, int64_t timeout_ms);

/* Pauses or resumes reading from the socket (the adapter's backpressure). */
void sb_conn_pause_reading(sb_conn *c, bool pause);

/* Loop-wide: checks every connection's deadline (called from the loop tick). */
void sb_conn_sweep(sb_loop *loop);

/* Loop-wide: starts draining every connection. */
void sb_conn_drain_all(sb_loop *loop);
void sb_conn_abort_all(sb_loop *loop);

/* Size of the stored peer address for sb_req. */
bool sb_conn_is_tls(const sb_conn *c);

#endif
