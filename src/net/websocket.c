#include "net/websocket.h"

#include <openssl/evp.h>
#include <wslay/wslay.h>

#include "core/alloc.h"
#include "net/conn.h"
#include "net/http1.h"
#include "net/server_internal.h"
#include "switchboard/error.h"

enum { WS_OPEN, WS_CLOSING, WS_CLOSED };

enum {
    OP_CONT = 0x0,
    OP_TEXT = 0x1,
    OP_BINARY = 0x2,
    OP_CLOSE = 0x8,
    OP_PING = 0x9,
    OP_PONG = 0xa,
};

#define MAX_FRAME_HEADER 14          /* what we send: 2 + 8, never masked */
#define MSG_KEEP_CAP     (64 * 1024) /* larger reassembly buffers are freed after each message */
#define IDLE_RELEASE_MS  1000

struct sb_ws {
    const sb_ws_handler *h;
    void *ud;
    sb_conn *conn; /* NULL under the test transport */
    sb_loop *loop; /* NULL under the test transport */
    sb_ws *pprev, *pnext;
    bool on_list; /* on loop->ws_pending */

    int state;
    bool notified;    /* on_close called */
    bool tcp_closing; /* the transport was told to close after writing */
    bool released;    /* idle buffers dropped */
    bool moving;      /* between loops (sb_ws_move): counted on neither */
    uint16_t close_code;
    uint8_t close_reason_len;
    char close_reason[SB_WS_MAX_REASON + 1];

    size_t max_message;
    size_t max_send_queue;
    uint64_t last_active_ms;

    /* wslay's frame context: its input buffer holds partial frames, its output state is idle
     * between sends. Created on demand and dropped when idle with nothing buffered. */
    wslay_frame_context_ptr fc;
    const uint8_t *in; /* bytes being fed, handed to wslay through fc_recv */
    size_t in_len, in_off;
    uint64_t rx_fed, rx_done; /* bytes given to wslay / bytes of complete frames */

    /* The frame being received. */
    bool in_frame;
    bool f_fin;
    bool direct; /* the whole message is in this frame's one chunk: no copy */
    uint8_t f_opcode;
    uint8_t f_hdr;
    uint64_t f_len, f_left;
    const uint8_t *direct_data;

    /* The message being reassembled. */
    bool msg_active;
    uint8_t msg_opcode;
    size_t msg_len;
    uint32_t utf8;
    sb_buf msg;

    uint8_t ctrl[125];
    uint8_t ctrl_len;

    sb_buf pend; /* whole frames not yet handed to the transport */
};

#define WS_STAT(ws, field, n)                                                                      \
    do {                                                                                           \
        if ((ws)->loop)                                                                            \
            sb_stat_add(&(ws)->loop->stats.field, (n));                                            \
    } while (0)

static void wake(sb_ws *ws);

/* ---- pure helpers ------------------------------------------------------------------------- */

#define UTF8_ST(need, lo, hi) ((uint32_t)(need) << 16 | (uint32_t)(lo) << 8 | (uint32_t)(hi))

uint32_t sb_utf8_validate(uint32_t state, const void *data, size_t len)
{
    const uint8_t *p = data, *end = p + len;
    if (state == SB_UTF8_REJECT)
        return state;
    while (p < end) {
        if (state == SB_UTF8_ACCEPT) {
            while (end - p >= 8) {
                uint64_t w;
                memcpy(&w, p, 8);
                if (w & UINT64_C(0x8080808080808080))
                    break;
                p += 8;
            }
            if (p == end)
                break;
            uint8_t b = *p++;
            if (b < 0x80)
                continue;
            if (b >= 0xc2 && b <= 0xdf)
                state = UTF8_ST(1, 0x80, 0xbf);
            else if (b == 0xe0)
                state = UTF8_ST(2, 0xa0, 0xbf); /* no overlong 3-byte forms */
            else if (b == 0xed)
                state = UTF8_ST(2, 0x80, 0x9f); /* no surrogates */
            else if (b >= 0xe1 && b <= 0xef)
                state = UTF8_ST(2, 0x80, 0xbf);
            else if (b == 0xf0)
                state = UTF8_ST(3, 0x90, 0xbf); /* no overlong 4-byte forms */
            else if (b >= 0xf1 && b <= 0xf3)
                state = UTF8_ST(3, 0x80, 0xbf);
            else if (b == 0xf4)
                state = UTF8_ST(3, 0x80, 0x8f); /* nothing past U+10FFFF */
            else
                return SB_UTF8_REJECT;
        } else {
            uint8_t b = *p++;
            uint32_t need = state >> 16, lo = (state >> 8) & 0xff, hi = state & 0xff;
            if (b < lo || b > hi)
                return SB_UTF8_REJECT;
            state = need == 1 ? SB_UTF8_ACCEPT : UTF8_ST(need - 1, 0x80, 0xbf);
        }
    }
    return state;
}

static int b64val(char ch)
{
    if (ch >= 'A' && ch <= 'Z')
        return ch - 'A';
    if (ch >= 'a' && ch <= 'z')
        return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9')
        return ch - '0' + 52;
    if (ch == '+')
        return 62;
    if (ch == '/')
        return 63;
    return -1;
}

int sb_ws_accept_key(sb_str key, char out[29])
{
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    /* 16 bytes are 22 characters, the last carrying 2 bits (its low 4 bits zero), then "==". */
    if (key.len != 24 || key.base[22] != '=' || key.base[23] != '=')
        return SB_EINVAL;
    for (size_t i = 0; i < 22; i++)
        if (b64val(key.base[i]) < 0)
            return SB_EINVAL;
    if (b64val(key.base[21]) & 0x0f)
        return SB_EINVAL;
    unsigned char in[24 + sizeof guid - 1];
    memcpy(in, key.base, 24);
    memcpy(in + 24, guid, sizeof guid - 1);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_Digest(in, sizeof in, md, &mdlen, EVP_sha1(), NULL) != 1 || mdlen != 20)
        return SB_EIO;
    EVP_EncodeBlock((unsigned char *)out, md, 20); /* 28 characters and a NUL */
    return 0;
}

bool sb_ws_close_code_valid(unsigned code)
{
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
           (code >= 3000 && code <= 4999);
}

/* ---- the engine: frames in, callbacks and frames out -------------------------------------- */

static ssize_t fc_recv(uint8_t *buf, size_t len, int flags, void *user_data)
{
    (void)flags;
    sb_ws *ws = user_data;
    size_t n = ws->in_len - ws->in_off;
    if (n == 0)
        return -1; /* wslay: WSLAY_ERR_WANT_READ */
    if (n > len)
        n = len;
    memcpy(buf, ws->in + ws->in_off, n);
    ws->in_off += n;
    ws->rx_fed += n;
    return (ssize_t)n;
}

/* Frames go out through encode(), never through wslay. */
static ssize_t fc_send(const uint8_t *data, size_t len, int flags, void *user_data)
{
    (void)data, (void)len, (void)flags, (void)user_data;
    return -1;
}

static int fc_genmask(uint8_t *buf, size_t len, void *user_data)
{
    (void)buf, (void)len, (void)user_data;
    return -1; /* a server never masks */
}

static int ensure_fc(sb_ws *ws)
{
    static const struct wslay_frame_callbacks cb = {fc_send, fc_recv, fc_genmask};
    if (ws->fc)
        return 0;
    if (wslay_frame_context_init(&ws->fc, &cb, ws) != 0) {
        ws->fc = NULL;
        return SB_ENOMEM;
    }
    return 0;
}

/* Appends one unfragmented, unmasked frame to the pending output. A server's frame header is
 * fixed by RFC 6455 §5.2 (FIN, opcode, 7/16/64-bit length, no mask), so it is written here
 * rather than through a wslay frame context: an idle connection then needs no context at
 * all, and sending to a thousand subscribers allocates nothing per subscriber. */
static int encode(sb_ws *ws, uint8_t opcode, const void *data, size_t len)
{
    int rc = sb_buf_reserve(&ws->pend, len + MAX_FRAME_HEADER);
    if (rc)
        return rc;
    uint8_t *p = (uint8_t *)ws->pend.base + ws->pend.len;
    size_t h;
    p[0] = (uint8_t)(0x80 | opcode);
    if (len < 126) {
        p[1] = (uint8_t)len;
        h = 2;
    } else if (len <= 0xffff) {
        p[1] = 126;
        p[2] = (uint8_t)(len >> 8);
        p[3] = (uint8_t)len;
        h = 4;
    } else {
        p[1] = 127;
        for (int i = 0; i < 8; i++)
            p[2 + i] = (uint8_t)((uint64_t)len >> (56 - 8 * i));
        h = 10;
    }
    if (len)
        memcpy(p + h, data, len);
    ws->pend.len += h + len;
    return 0;
}

static int encode_close(sb_ws *ws, uint16_t code, const char *reason, size_t rlen)
{
    uint8_t p[2 + SB_WS_MAX_REASON];
    if (code == 0)
        return encode(ws, OP_CLOSE, NULL, 0);
    p[0] = (uint8_t)(code >> 8);
    p[1] = (uint8_t)(code & 0xff);
    if (rlen)
        memcpy(p + 2, reason, rlen);
    return encode(ws, OP_CLOSE, p, 2 + rlen);
}

static void set_reason(sb_ws *ws, uint16_t code, const char *reason, size_t rlen)
{
    ws->close_code = code;
    if (rlen > SB_WS_MAX_REASON)
        rlen = SB_WS_MAX_REASON;
    if (rlen)
        memcpy(ws->close_reason, reason, rlen);
    ws->close_reason[rlen] = '\0';
    ws->close_reason_len = (uint8_t)rlen;
}

static void notify_close(sb_ws *ws)
{
    if (ws->notified)
        return;
    ws->notified = true;
    if (ws->h && ws->h->on_close)
        ws->h->on_close(ws, ws->ud, ws->close_code,
                        (sb_str){ws->close_reason, ws->close_reason_len});
}

/* Forgets the bytes of the message being reassembled (its framing state stays). */
static void discard_message(sb_ws *ws)
{
    ws->msg_len = 0;
    sb_buf_reset(&ws->msg);
    if (ws->msg.cap > MSG_KEEP_CAP)
        sb_buf_free(&ws->msg);
}

static void drop_message(sb_ws *ws)
{
    ws->msg_active = false;
    discard_message(ws);
}

/* Fails the WebSocket (RFC 6455 §7.1.7): a Close frame with `code` if we have not sent one,
 * then the TCP connection closes once it is written. Returns false for the callers' loops. */
static bool fail(sb_ws *ws, uint16_t code, const char *why)
{
    if (ws->state == WS_CLOSED)
        return false;
    if (ws->state == WS_OPEN) {
        size_t n = strlen(why);
        encode_close(ws, code, why, n); /* best effort: the TCP close follows anyway */
        set_reason(ws, code, why, n);
    }
    ws->state = WS_CLOSED;
    drop_message(ws);
    if (code == SB_WS_CLOSE_PROTOCOL || code == SB_WS_CLOSE_INVALID_DATA ||
        code == SB_WS_CLOSE_TOO_BIG)
        WS_STAT(ws, ws_protocol_errors, 1);
    notify_close(ws);
    wake(ws);
    return false;
}

static void start_close(sb_ws *ws, uint16_t code, const char *reason, size_t rlen)
{
    if (encode_close(ws, code, reason, rlen) != 0) {
        /* No memory for even a Close frame: drop the connection. */
        set_reason(ws, code, reason, rlen);
        ws->state = WS_CLOSED;
        sb_buf_reset(&ws->pend);
        notify_close(ws);
        wake(ws);
        return;
    }
    set_reason(ws, code, reason, rlen);
    ws->state = WS_CLOSING;
    discard_message(ws); /* the peer may still finish it; it is no longer delivered */
    wake(ws);
}

static size_t transport_queued(const sb_ws *ws)
{
    return ws->conn ? ws->conn->out.len + ws->conn->wout.len : 0;
}

size_t sb_ws_send_capacity(const sb_ws *ws)
{
    return ws->max_send_queue;
}

size_t sb_ws_queued(const sb_ws *ws)
{
    return ws->pend.len + transport_queued(ws);
}

/* Whether `n` more bytes fit the send queue; a message into an empty queue always does. */
static bool queue_fits(const sb_ws *ws, size_t n)
{
    size_t q = sb_ws_queued(ws);
    return q == 0 || (q <= ws->max_send_queue && n <= ws->max_send_queue - q);
}

/* The peer does not read fast enough: frames not yet handed to the transport are dropped
 * and the Close frame goes right after what is already on its way. */
static void overflow(sb_ws *ws)
{
    static const char why[] = "too slow";
    sb_buf_reset(&ws->pend);
    WS_STAT(ws, ws_slow_closes, 1);
    start_close(ws, SB_WS_CLOSE_TOO_SLOW, why, sizeof why - 1);
}

static bool frame_begin(sb_ws *ws, const struct wslay_frame_iocb *io)
{
    uint64_t len = io->payload_length;
    ws->in_frame = true;
    ws->f_opcode = io->opcode;
    ws->f_fin = io->fin;
    ws->f_len = ws->f_left = len;
    ws->f_hdr = (uint8_t)(2 + (len >= 65536 ? 8 : len >= 126 ? 2 : 0) + (io->mask ? 4 : 0));
    ws->direct = false;
    if (!io->mask)
        return fail(ws, SB_WS_CLOSE_PROTOCOL, "client frames must be masked");
    if (io->rsv)
        return fail(ws, SB_WS_CLOSE_PROTOCOL, "reserved bits set but no extension negotiated");
    switch (io->opcode) {
    case OP_CONT:
        if (!ws->msg_active)
            return fail(ws, SB_WS_CLOSE_PROTOCOL, "continuation frame outside a message");
        break;
    case OP_TEXT:
    case OP_BINARY:
        if (ws->msg_active)
            return fail(ws, SB_WS_CLOSE_PROTOCOL, "new message inside a fragmented one");
        ws->msg_active = true;
        ws->msg_opcode = io->opcode;
        ws->msg_len = 0;
        ws->utf8 = SB_UTF8_ACCEPT;
        break;
    case OP_CLOSE:
    case OP_PING:
    case OP_PONG:
        if (!io->fin || len > 125)
            return fail(ws, SB_WS_CLOSE_PROTOCOL, "control frame fragmented or over 125 bytes");
        ws->ctrl_len = 0;
        return true;
    default:
        return fail(ws, SB_WS_CLOSE_PROTOCOL, "unknown opcode");
    }
    if (len > ws->max_message - ws->msg_len)
        return fail(ws, SB_WS_CLOSE_TOO_BIG, "message larger than ws.max_message_bytes");
    ws->direct = ws->msg_len == 0 && io->fin && io->data_length == len;
    return true;
}

static bool frame_data(sb_ws *ws, const uint8_t *data, size_t n)
{
    if (ws->f_opcode >= OP_CLOSE) {
        memcpy(ws->ctrl + ws->ctrl_len, data, n); /* ≤ 125 in all: checked at frame_begin */
        ws->ctrl_len = (uint8_t)(ws->ctrl_len + n);
        return true;
    }
    if (ws->state != WS_OPEN)
        return true; /* closing: messages are no longer delivered */
    if (ws->msg_opcode == OP_TEXT) {
        ws->utf8 = sb_utf8_validate(ws->utf8, data, n);
        if (ws->utf8 == SB_UTF8_REJECT)
            return fail(ws, SB_WS_CLOSE_INVALID_DATA, "text message is not valid UTF-8");
    }
    if (ws->direct)
        ws->direct_data = data;
    else if (n && sb_buf_append(&ws->msg, data, n) != 0)
        return fail(ws, SB_WS_CLOSE_INTERNAL, "out of memory");
    ws->msg_len += n;
    return true;
}

static void on_peer_close(sb_ws *ws)
{
    uint16_t code = SB_WS_CLOSE_NO_STATUS;
    const char *reason = "";
    size_t rlen = 0;
    if (ws->ctrl_len == 1) {
        fail(ws, SB_WS_CLOSE_PROTOCOL, "close frame with a 1-byte payload");
        return;
    }
    if (ws->ctrl_len >= 2) {
        code = (uint16_t)(ws->ctrl[0] << 8 | ws->ctrl[1]);
        reason = (const char *)ws->ctrl + 2;
        rlen = ws->ctrl_len - 2u;
        if (!sb_ws_close_code_valid(code)) {
            fail(ws, SB_WS_CLOSE_PROTOCOL, "invalid close code");
            return;
        }
        if (sb_utf8_validate(SB_UTF8_ACCEPT, reason, rlen) != SB_UTF8_ACCEPT) {
            fail(ws, SB_WS_CLOSE_INVALID_DATA, "close reason is not valid UTF-8");
            return;
        }
    }
    if (ws->state == WS_OPEN) {
        /* The peer closes first: echo its code, then the server closes TCP (§7.1.1). */
        encode_close(ws, code == SB_WS_CLOSE_NO_STATUS ? 0 : code, NULL, 0);
        set_reason(ws, code, reason, rlen);
    }
    /* Closing: that was the answer to our Close; on_close reports the code we sent. */
    ws->state = WS_CLOSED;
    drop_message(ws);
    notify_close(ws);
    wake(ws);
}

static void frame_end(sb_ws *ws)
{
    switch (ws->f_opcode) {
    case OP_PING:
        if (ws->state != WS_OPEN)
            return;
        if (!queue_fits(ws, ws->ctrl_len + 2u))
            overflow(ws);
        else if (encode(ws, OP_PONG, ws->ctrl, ws->ctrl_len) != 0)
            fail(ws, SB_WS_CLOSE_INTERNAL, "out of memory");
        else
            wake(ws);
        return;
    case OP_PONG:
        return; /* any input proves the peer alive */
    case OP_CLOSE:
        on_peer_close(ws);
        return;
    default:
        break;
    }
    if (!ws->f_fin)
        return;
    if (ws->state != WS_OPEN) {
        drop_message(ws);
        return;
    }
    if (ws->msg_opcode == OP_TEXT && ws->utf8 != SB_UTF8_ACCEPT) {
        fail(ws, SB_WS_CLOSE_INVALID_DATA, "text message ends inside a UTF-8 sequence");
        return;
    }
    const void *data = ws->direct ? (const void *)ws->direct_data : ws->msg.base;
    size_t len = ws->msg_len;
    int opcode = ws->msg_opcode == OP_TEXT ? SB_WS_TEXT : SB_WS_BINARY;
    ws->msg_active = false;
    WS_STAT(ws, ws_messages_in, 1);
    if (ws->h && ws->h->on_message)
        ws->h->on_message(ws, ws->ud, opcode, len ? data : "", len);
    discard_message(ws);
}

/* Parses client bytes: every complete frame is acted on before this returns. */
static void feed(sb_ws *ws, const uint8_t *data, size_t len)
{
    if (ws->state == WS_CLOSED || len == 0)
        return;
    if (ensure_fc(ws) != 0) {
        fail(ws, SB_WS_CLOSE_INTERNAL, "out of memory");
        return;
    }
    ws->in = data;
    ws->in_len = len;
    ws->in_off = 0;
    while (ws->state != WS_CLOSED) {
        struct wslay_frame_iocb io;
        ssize_t r = wslay_frame_recv(ws->fc, &io);
        if (r == WSLAY_ERR_WANT_READ)
            break;
        if (r < 0) {
            fail(ws, SB_WS_CLOSE_PROTOCOL, "malformed frame header");
            break;
        }
        if (!ws->in_frame && !frame_begin(ws, &io))
            break;
        if (!frame_data(ws, io.data, io.data_length))
            break;
        ws->f_left -= io.data_length;
        if (ws->f_left == 0) {
            ws->in_frame = false;
            ws->rx_done += ws->f_hdr + ws->f_len;
            frame_end(ws);
        }
    }
    ws->in = NULL;
    ws->in_len = ws->in_off = 0;
    /* wslay holds no partial frame: its context (4 KiB of input buffer) goes until the next
     * bytes arrive, so that connections that mostly listen keep none. */
    if (ws->fc && !ws->in_frame && ws->rx_fed == ws->rx_done) {
        wslay_frame_context_free(ws->fc);
        ws->fc = NULL;
    }
}

static sb_ws *ws_new(const sb_ws_handler *h, void *ud, size_t max_message, size_t max_send_queue)
{
    sb_ws *ws = sb_calloc(1, sizeof *ws);
    if (!ws)
        return NULL;
    ws->h = h;
    ws->ud = ud;
    ws->state = WS_OPEN;
    ws->max_message = max_message;
    ws->max_send_queue = max_send_queue;
    sb_buf_init(&ws->msg, max_message);
    sb_buf_init(&ws->pend, max_send_queue + SB_WS_MAX_SEND + 4096);
    return ws;
}

static void ws_free(sb_ws *ws)
{
    if (ws->fc)
        wslay_frame_context_free(ws->fc);
    sb_buf_free(&ws->msg);
    sb_buf_free(&ws->pend);
    sb_free(ws);
}

/* ---- public API ---------------------------------------------------------------------------- */

int sb_ws_send(sb_ws *ws, int opcode, const void *data, size_t len)
{
    if (opcode != SB_WS_TEXT && opcode != SB_WS_BINARY)
        return SB_EINVAL;
    if (ws->state != WS_OPEN)
        return SB_ECANCELED;
    if (len > SB_WS_MAX_SEND)
        return SB_EMSGSIZE;
    if (!queue_fits(ws, len + MAX_FRAME_HEADER)) {
        overflow(ws);
        return SB_EAGAIN;
    }
    int rc = encode(ws, opcode == SB_WS_TEXT ? OP_TEXT : OP_BINARY, data, len);
    if (rc)
        return rc;
    WS_STAT(ws, ws_messages_out, 1);
    if (ws->loop)
        ws->last_active_ms = uv_now(&ws->loop->uv);
    ws->released = false;
    wake(ws);
    return 0;
}

int sb_ws_close(sb_ws *ws, uint16_t code, const char *reason)
{
    size_t rlen = reason ? strlen(reason) : 0;
    if (!sb_ws_close_code_valid(code) || rlen > SB_WS_MAX_REASON ||
        sb_utf8_validate(SB_UTF8_ACCEPT, reason ? reason : "", rlen) != SB_UTF8_ACCEPT)
        return SB_EINVAL;
    if (ws->state != WS_OPEN)
        return SB_ECANCELED;
    start_close(ws, code, reason, rlen);
    return 0;
}

const struct sockaddr_in6 *sb_ws_peer(const sb_ws *ws)
{
    return ws->conn ? &ws->conn->peer : NULL;
}

/* ---- the transport glue: a protocol adapter on an sb_conn ---------------------------------- */

static void ws_on_data(sb_conn *c);
static void ws_on_timeout(sb_conn *c, sb_deadline_kind kind);
static void ws_on_writable(sb_conn *c);
static void ws_on_drain(sb_conn *c);
static void ws_on_close(sb_conn *c);
static void ws_on_sweep(sb_conn *c, uint64_t now);

static const sb_proto ws_proto = {
    .name = "websocket",
    .on_data = ws_on_data,
    .on_timeout = ws_on_timeout,
    .on_writable = ws_on_writable,
    .on_drain = ws_on_drain,
    .on_close = ws_on_close,
    .on_sweep = ws_on_sweep,
    .bounds_output = true,
};

static void list_remove(sb_ws *ws)
{
    if (!ws->on_list)
        return;
    if (ws->pprev)
        ws->pprev->pnext = ws->pnext;
    else
        ws->loop->ws_pending = ws->pnext;
    if (ws->pnext)
        ws->pnext->pprev = ws->pprev;
    ws->pprev = ws->pnext = NULL;
    ws->on_list = false;
}

static void service(sb_ws *ws);

static void on_prepare(uv_prepare_t *p)
{
    sb_loop *loop = p->data;
    sb_ws *ws;
    while ((ws = loop->ws_pending) != NULL) {
        list_remove(ws);
        service(ws);
    }
    uv_prepare_stop(p);
}

/* Output or a state change to act on: done once per loop iteration, never from inside the
 * API call that caused it. */
static void wake(sb_ws *ws)
{
    if (!ws->loop || ws->on_list)
        return;
    sb_loop *loop = ws->loop;
    ws->pnext = loop->ws_pending;
    ws->pprev = NULL;
    if (loop->ws_pending)
        loop->ws_pending->pprev = ws;
    loop->ws_pending = ws;
    ws->on_list = true;
    if (!uv_is_closing((uv_handle_t *)&loop->ws_prepare))
        uv_prepare_start(&loop->ws_prepare, on_prepare);
}

/* Size of the frame we wrote at p (never masked). */
static size_t frame_size(const uint8_t *p)
{
    uint64_t len = p[1] & 0x7f;
    size_t hdr = 2;
    if (len == 126) {
        len = (uint64_t)p[2] << 8 | p[3];
        hdr = 4;
    } else if (len == 127) {
        len = 0;
        for (int i = 2; i < 10; i++)
            len = len << 8 | p[i];
        hdr = 10;
    }
    return hdr + (size_t)len;
}

/* Hands whole pending frames to the transport while its queue is under the high mark (all
 * of them with `all`). The rest stays droppable (see overflow). */
static int push(sb_ws *ws, bool all)
{
    sb_conn *c = ws->conn;
    size_t inflight = c->out.len + c->wout.len;
    size_t n = 0;
    while (n < ws->pend.len && (all || inflight + n < SB_CONN_OUT_HIGH))
        n += frame_size((const uint8_t *)ws->pend.base + n);
    if (n == 0)
        return 0;
    int rc = sb_conn_write(c, ws->pend.base, n);
    if (rc)
        return rc;
    sb_buf_consume(&ws->pend, n);
    return 0;
}

/* Brings the connection in line with the engine's state: deadlines, output, closing. May
 * close the connection and free ws (not while c->in_callback). */
static void settle(sb_ws *ws)
{
    sb_conn *c = ws->conn;
    if (c->closing)
        return;
    if (ws->state == WS_CLOSED) {
        if (!ws->tcp_closing) {
            ws->tcp_closing = true;
            if (push(ws, true) != 0) {
                sb_conn_abort(c);
                return;
            }
            /* Bounded even if the peer stops reading our last frames. */
            sb_conn_set_deadline(c, SB_DL_CLOSE, SB_WS_CLOSE_TIMEOUT_MS);
            sb_conn_close_after_write(c);
        }
        return;
    }
    if (ws->state == WS_CLOSING && c->deadline_kind != SB_DL_CLOSE)
        sb_conn_set_deadline(c, SB_DL_CLOSE, SB_WS_CLOSE_TIMEOUT_MS);
    for (;;) {
        if (push(ws, false) != 0) {
            sb_conn_abort(c);
            return;
        }
        if (c->in_callback) {
            /* The transport flushes on the way out; what is left waits for the next round. */
            if (ws->pend.len)
                wake(ws);
            return;
        }
        sb_conn_flush(c);
        if (c->proto != &ws_proto || c->writing || ws->pend.len == 0)
            return; /* closed (ws freed), or on_writable continues */
    }
}

/* Feeds what the transport received and notes an EOF. */
static void take_input(sb_ws *ws)
{
    sb_conn *c = ws->conn;
    if (c->in.len) {
        ws->last_active_ms = uv_now(&c->loop->uv);
        ws->released = false;
        feed(ws, (const uint8_t *)c->in.base, c->in.len);
        sb_buf_reset(&c->in);
        if (ws->state == WS_OPEN)
            sb_conn_set_deadline(c, SB_DL_PING, c->loop->live.ws_ping_interval_ms);
    }
    if (c->eof && ws->state != WS_CLOSED) {
        if (ws->state == WS_OPEN)
            set_reason(ws, SB_WS_CLOSE_ABNORMAL, NULL, 0);
        ws->state = WS_CLOSED;
        notify_close(ws);
    }
}

/* A handler pacing its output hears when the queue has room again; this also covers output
 * the kernel took at once, which no write completion would report. */
static void tell_writable(sb_ws *ws)
{
    sb_conn *c = ws->conn;
    if (!c->closing && ws->state == WS_OPEN && ws->h && ws->h->on_writable &&
        sb_ws_queued(ws) < ws->max_send_queue / 2)
        ws->h->on_writable(ws, ws->ud);
}

static void service(sb_ws *ws)
{
    sb_conn *c = ws->conn;
    if (c->closing)
        return;
    if (c->in.len || c->eof)
        take_input(ws); /* bytes that came with the upgrade request */
    settle(ws);
    if (!c->closing)
        tell_writable(ws);
}

static void ws_on_data(sb_conn *c)
{
    sb_ws *ws = c->proto_data;
    take_input(ws);
    settle(ws);
}

static void ws_on_writable(sb_conn *c)
{
    sb_ws *ws = c->proto_data;
    settle(ws);
    if (!c->closing)
        tell_writable(ws);
}

/* Ends the WebSocket now, without a closing handshake. */
static void drop(sb_ws *ws, uint16_t code)
{
    if (ws->state == WS_OPEN)
        set_reason(ws, code, NULL, 0);
    ws->state = WS_CLOSED;
    notify_close(ws);
    sb_conn_abort(ws->conn); /* frees ws */
}

static void ws_on_timeout(sb_conn *c, sb_deadline_kind kind)
{
    sb_ws *ws = c->proto_data;
    if (ws->state == WS_CLOSING && kind != SB_DL_CLOSE) {
        settle(ws); /* a keep-alive deadline from before the close started: arm the close's */
        return;
    }
    if (kind == SB_DL_PING && ws->state == WS_OPEN) {
        static const char ping[] = "sb";
        if (encode(ws, OP_PING, ping, sizeof ping - 1) != 0) {
            drop(ws, SB_WS_CLOSE_ABNORMAL);
            return;
        }
        sb_conn_set_deadline(c, SB_DL_PONG, c->loop->live.ws_pong_timeout_ms);
        settle(ws);
        return;
    }
    /* No answer to our Ping, or to our Close. */
    drop(ws, SB_WS_CLOSE_ABNORMAL);
}

static void ws_on_drain(sb_conn *c)
{
    static const char why[] = "going away";
    sb_ws *ws = c->proto_data;
    if (ws->state != WS_OPEN)
        return;
    start_close(ws, SB_WS_CLOSE_GOING_AWAY, why, sizeof why - 1);
    settle(ws);
}

static void ws_on_close(sb_conn *c)
{
    sb_ws *ws = c->proto_data;
    c->proto_data = NULL;
    list_remove(ws);
    if (ws->state == WS_OPEN)
        set_reason(ws, SB_WS_CLOSE_ABNORMAL, NULL, 0);
    ws->state = WS_CLOSED;
    notify_close(ws);
    if (!ws->moving)
        sb_stat_sub(&c->loop->stats.ws_active, 1);
    ws_free(ws);
}

/* A quiet WebSocket keeps only its sb_ws and the connection: no buffers, no wslay context. */
static void ws_on_sweep(sb_conn *c, uint64_t now)
{
    sb_ws *ws = c->proto_data;
    if (ws->released || now - ws->last_active_ms < IDLE_RELEASE_MS || c->writing || c->out.len ||
        c->in.len || ws->pend.len || c->closing)
        return;
    sb_buf_free(&c->in);
    sb_buf_free(&c->out);
    sb_buf_free(&c->wout);
    sb_buf_free(&ws->pend);
    if (!ws->msg_active)
        sb_buf_free(&ws->msg);
    if (c->ssl)
        SSL_free_buffers(c->ssl); /* fails harmlessly if a record is half-read */
    if (ws->fc && !ws->in_frame && ws->rx_fed == ws->rx_done) {
        wslay_frame_context_free(ws->fc);
        ws->fc = NULL;
    }
    ws->released = ws->fc == NULL && ws->msg.cap == 0;
}

/* ---- the upgrade --------------------------------------------------------------------------- */

/* Whether some `name` field lists `token` (comma-separated, case-insensitive). */
static bool has_token(const sb_req *req, const char *name, const char *token)
{
    for (size_t i = 0; i < req->num_headers; i++) {
        const sb_http_header *h = &req->headers[i];
        if (!sb_str_case_eq(h->name, name))
            continue;
        const char *p = h->value.base, *end = p + h->value.len;
        while (p < end) {
            const char *e = memchr(p, ',', (size_t)(end - p));
            if (!e)
                e = end;
            const char *b = p, *t = e;
            while (b < t && (*b == ' ' || *b == '\t'))
                b++;
            while (t > b && (t[-1] == ' ' || t[-1] == '\t'))
                t--;
            if (sb_str_case_eq((sb_str){b, (size_t)(t - b)}, token))
                return true;
            p = e + 1;
        }
    }
    return false;
}

/* The one `name` field; its count in *n. */
static const sb_http_header *only_header(const sb_req *req, const char *name, int *n)
{
    const sb_http_header *found = NULL;
    *n = 0;
    for (size_t i = 0; i < req->num_headers; i++) {
        if (sb_str_case_eq(req->headers[i].name, name)) {
            found = &req->headers[i];
            (*n)++;
        }
    }
    return *n == 1 ? found : NULL;
}

static int refuse(sb_req *req, int status, const char *detail, int rc)
{
    static const sb_str upgrade = SB_STR_LIT("websocket");
    static const sb_str version = SB_STR_LIT("13");
    if (status == 426) {
        sb_resp_header(req, "Upgrade", upgrade);
        sb_resp_header(req, "Sec-WebSocket-Version", version);
    }
    const char *slug = status == 426   ? "websocket-version"
                       : status == 503 ? "draining"
                       : status == 500 ? "internal"
                                       : "websocket-handshake";
    sb_resp_problem(req, status, slug, detail);
    return rc;
}

int sb_ws_accept(sb_req *req, const sb_ws_handler *h, void *ud, sb_ws **out)
{
    *out = NULL;
    sb_loop *loop = req->loop;
    int n;
    if (!sb_str_eq_lit(req->method, "GET"))
        return refuse(req, 400, "a WebSocket upgrade is a GET request", SB_EPROTO);
    if (!has_token(req, "Upgrade", "websocket") || !has_token(req, "Connection", "upgrade"))
        return refuse(req, 400,
                      "a WebSocket upgrade needs \"Upgrade: websocket\" and "
                      "\"Connection: Upgrade\"",
                      SB_EPROTO);
    const sb_http_header *ver = only_header(req, "Sec-WebSocket-Version", &n);
    if (n == 0)
        return refuse(req, 400, "Sec-WebSocket-Version is missing", SB_EPROTO);
    if (!ver || !sb_str_eq_lit(ver->value, "13"))
        return refuse(req, 426, "only WebSocket version 13 (RFC 6455) is served", SB_EPROTO);
    const sb_http_header *key = only_header(req, "Sec-WebSocket-Key", &n);
    char accept[29];
    if (!key || sb_ws_accept_key(key->value, accept) != 0)
        return refuse(req, 400, "Sec-WebSocket-Key must be one base64-encoded 16-byte value",
                      SB_EPROTO);
    if (req->body.len)
        return refuse(req, 400, "a WebSocket upgrade request has no body", SB_EPROTO);
    if (loop->draining)
        return refuse(req, 503, "the server is shutting down", SB_ECANCELED);

    const sb_config *cfg = sb__server_config(loop->server);
    sb_ws *ws = ws_new(h, ud, cfg->ws_max_message_bytes, cfg->ws_max_send_queue);
    if (!ws)
        return refuse(req, 500, "out of memory", SB_ENOMEM);
    int rc = sb_resp_header(req, "Upgrade", SB_STR_LIT("websocket"));
    rc = rc ? rc : sb_resp_header(req, "Connection", SB_STR_LIT("Upgrade"));
    rc = rc ? rc : sb_resp_header(req, "Sec-WebSocket-Accept", (sb_str){accept, 28});
    if (rc) {
        ws_free(ws);
        req->num_resp_headers = 0;
        return refuse(req, 500, "cannot build the handshake response", SB_ENOMEM);
    }
    sb_conn *c;
    rc = sb_h1_upgrade(req, &ws_proto, ws, &c);
    if (rc) {
        ws_free(ws);
        if (rc == SB_ENOTSUP)
            return refuse(req, 400, "WebSocket upgrades are served over HTTP/1.1 only", rc);
        if (rc == SB_ECANCELED)
            return refuse(req, 400, "the connection is gone", rc); /* releases req */
        return rc;                                                 /* req already released */
    }
    ws->conn = c;
    ws->loop = loop;
    ws->last_active_ms = uv_now(&loop->uv);
    sb_stat_add(&loop->stats.ws_active, 1);
    sb_stat_add(&loop->stats.ws_total, 1);
    sb_conn_set_deadline(c, SB_DL_PING, loop->live.ws_ping_interval_ms);
    *out = ws;
    wake(ws); /* writes the 101 (unless the read callback does) and reads what came with it */
    if (h->on_open)
        h->on_open(ws, ud);
    return 0;
}

/* ---- handing a WebSocket to another loop ---------------------------------------------------- */

typedef struct ws_move {
    sb_ws *ws;
    void (*done)(sb_ws *ws, void *ud, int rc);
    void *ud;
} ws_move;

static void ws_moved(sb_conn *c, void *arg, int rc)
{
    ws_move *mv = arg;
    void (*done)(sb_ws *, void *, int) = mv->done;
    void *ud = mv->ud;
    sb_ws *ws = mv->ws;
    sb_free(mv);
    if (rc) {
        done(NULL, ud, rc); /* ws went with the connection */
        return;
    }
    sb_loop *loop = c->loop;
    ws->moving = false;
    ws->loop = loop;
    ws->last_active_ms = uv_now(&loop->uv);
    sb_stat_add(&loop->stats.ws_active, 1);
    sb_conn_set_deadline(c, SB_DL_PING, loop->live.ws_ping_interval_ms);
    done(ws, ud, 0);
    wake(ws); /* input that came along, output queued meanwhile */
}

int sb_ws_move(sb_ws *ws, sb_loop *to, void (*done)(sb_ws *ws, void *ud, int rc), void *ud)
{
    if (!ws->conn || ws->state != WS_OPEN || ws->moving)
        return SB_ECANCELED;
    if (to == ws->loop) {
        done(ws, ud, 0);
        return 0;
    }
    ws_move *mv = sb_malloc(sizeof *mv);
    if (!mv)
        return SB_ENOMEM;
    *mv = (ws_move){ws, done, ud};
    list_remove(ws);
    int rc = sb_conn_move(ws->conn, to, ws_moved, mv);
    if (rc) {
        sb_free(mv);
        wake(ws);
        return rc;
    }
    sb_stat_sub(&ws->loop->stats.ws_active, 1);
    ws->moving = true;
    ws->loop = NULL; /* nothing is scheduled while in transit */
    return 0;
}

void sb_ws_set_handler(sb_ws *ws, const sb_ws_handler *h, void *ud)
{
    ws->h = h;
    ws->ud = ud;
}

sb_loop *sb_ws_loop(const sb_ws *ws)
{
    return ws->loop;
}

/* ---- the test transport -------------------------------------------------------------------- */

sb_ws *sb__ws_test_new(const sb_ws_handler *h, void *ud, sb__ws_test_limits lim)
{
    return ws_new(h, ud, lim.max_message, lim.max_send_queue);
}

bool sb__ws_test_feed(sb_ws *ws, const void *data, size_t len)
{
    feed(ws, data, len);
    return ws->state != WS_CLOSED;
}

int sb__ws_test_take(sb_ws *ws, sb_buf *out)
{
    int rc = sb_buf_append(out, ws->pend.base, ws->pend.len);
    if (!rc)
        sb_buf_reset(&ws->pend);
    return rc;
}

void sb__ws_test_free(sb_ws *ws)
{
    if (ws->state == WS_OPEN)
        set_reason(ws, SB_WS_CLOSE_ABNORMAL, NULL, 0);
    ws->state = WS_CLOSED;
    notify_close(ws);
    ws_free(ws);
}
