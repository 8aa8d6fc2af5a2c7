/*
 * libFuzzer target for the WebSocket frame engine: arbitrary bytes as the client side of a
 * WebSocket stream, fed through the engine's test transport (no sockets, no loop). The handler
 * echoes every message, and a message that starts with 'C' makes it start the closing
 * handshake, so both close paths run.
 *
 * Beyond "never crash, never leak" it checks what a client would rely on: messages are within
 * the limit and text is valid UTF-8; on_close comes exactly once and nothing after it; the
 * server's bytes are well-formed unmasked frames with at most one Close, which comes last; and
 * the outcome does not depend on how the input was split into reads (the first byte picks the
 * split), because a frame parser whose answer changes with packet boundaries is a bug.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "net/websocket.h"

#define MAX_MESSAGE 1024

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            abort();                                                                               \
    } while (0)

typedef struct run {
    uint64_t digest; /* of every message, in order */
    int messages;
    int closes;
    int events_after_close;
    uint16_t code;
    bool open;
    sb_buf out;
} run;

static uint64_t mix(uint64_t h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 0x100000001b3u;
    return h;
}

static void on_open(sb_ws *ws, void *ud)
{
    (void)ws, (void)ud;
}

static void on_message(sb_ws *ws, void *ud, int opcode, const void *data, size_t len)
{
    run *r = ud;
    if (r->closes)
        r->events_after_close++;
    CHECK(opcode == SB_WS_TEXT || opcode == SB_WS_BINARY);
    CHECK(len <= MAX_MESSAGE);
    if (opcode == SB_WS_TEXT)
        CHECK(sb_utf8_validate(SB_UTF8_ACCEPT, data, len) == SB_UTF8_ACCEPT);
    r->messages++;
    r->digest = mix(r->digest, &opcode, sizeof opcode);
    r->digest = mix(r->digest, &len, sizeof len);
    r->digest = mix(r->digest, data, len);
    if (len && ((const char *)data)[0] == 'C') {
        CHECK(sb_ws_close(ws, 4000, "asked to") == 0);
        CHECK(sb_ws_send(ws, opcode, data, len) < 0);
        return;
    }
    CHECK(sb_ws_send(ws, opcode, data, len) == 0);
}

static void on_close(sb_ws *ws, void *ud, uint16_t code, sb_str reason)
{
    (void)ws;
    run *r = ud;
    r->closes++;
    r->code = code;
    CHECK(reason.len <= SB_WS_MAX_REASON && reason.base[reason.len] == '\0');
    CHECK(sb_utf8_validate(SB_UTF8_ACCEPT, reason.base, reason.len) == SB_UTF8_ACCEPT);
}

static const sb_ws_handler handler = {
    .on_open = on_open, .on_message = on_message, .on_close = on_close};

/* The server's output: whole frames, unmasked, no reserved bits, known opcodes, control
 * frames within 125 bytes, a valid Close (if any) last. */
static void check_output(const sb_buf *b)
{
    const uint8_t *p = (const uint8_t *)b->base;
    size_t off = 0;
    bool closed = false;
    while (off < b->len) {
        CHECK(!closed);
        CHECK(b->len - off >= 2);
        uint8_t op = p[off] & 0x0f;
        CHECK((p[off] & 0x80) && !(p[off] & 0x70));
        CHECK(!(p[off + 1] & 0x80));
        uint64_t len = p[off + 1] & 0x7f;
        size_t h = 2;
        if (len == 126) {
            CHECK(b->len - off >= 4);
            len = (uint64_t)p[off + 2] << 8 | p[off + 3];
            CHECK(len >= 126);
            h = 4;
        } else if (len == 127) {
            CHECK(b->len - off >= 10);
            len = 0;
            for (int i = 2; i < 10; i++)
                len = len << 8 | p[off + (size_t)i];
            CHECK(len >= 65536);
            h = 10;
        }
        CHECK(len <= b->len - off - h);
        const uint8_t *pl = p + off + h;
        CHECK(op == 0x1 || op == 0x2 || op == 0x8 || op == 0xa);
        if (op >= 0x8)
            CHECK(len <= 125);
        if (op == 0x1)
            CHECK(sb_utf8_validate(SB_UTF8_ACCEPT, pl, (size_t)len) == SB_UTF8_ACCEPT);
        if (op == 0x8) {
            CHECK(len != 1);
            if (len >= 2) {
                CHECK(sb_ws_close_code_valid((unsigned)(pl[0] << 8 | pl[1])));
                CHECK(sb_utf8_validate(SB_UTF8_ACCEPT, pl + 2, (size_t)len - 2) == SB_UTF8_ACCEPT);
            }
            closed = true;
        }
        off += h + (size_t)len;
    }
}

static void feed_all(run *r, const uint8_t *data, size_t size, uint8_t seed)
{
    memset(r, 0, sizeof *r);
    r->digest = 0xcbf29ce484222325u;
    sb_buf_init(&r->out, 0);
    sb_ws *ws = sb__ws_test_new(&handler, r, (sb__ws_test_limits){MAX_MESSAGE, 1u << 20});
    CHECK(ws != NULL);
    size_t off = 0;
    unsigned s = seed;
    r->open = true;
    while (off < size) {
        size_t n = size - off;
        if (seed) { /* pieces of 1..seed%32+1 bytes, varied by a small LCG */
            s = s * 1103515245u + 12345u;
            size_t piece = 1 + (s >> 16) % ((unsigned)seed % 32 + 1);
            if (piece < n)
                n = piece;
        }
        r->open = sb__ws_test_feed(ws, data + off, n);
        off += n;
        if (!r->open)
            break;
    }
    CHECK(sb__ws_test_take(ws, &r->out) == 0);
    CHECK(r->open == (r->closes == 0));
    sb__ws_test_free(ws);
    CHECK(r->closes == 1);
    CHECK(r->events_after_close == 0);
    check_output(&r->out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    run *whole = malloc(sizeof *whole), *split = malloc(sizeof *split);
    CHECK(whole && split);
    feed_all(whole, data + 1, size - 1, 0);
    feed_all(split, data + 1, size - 1, data[0] | 1);
    CHECK(whole->messages == split->messages);
    CHECK(whole->digest == split->digest);
    CHECK(whole->code == split->code);
    CHECK(whole->out.len == split->out.len);
    CHECK(whole->out.len == 0 || memcmp(whole->out.base, split->out.base, whole->out.len) == 0);
    sb_buf_free(&whole->out);
    sb_buf_free(&split->out);
    free(whole);
    free(split);
    return 0;
}
