/* WebSocket: the handshake key, UTF-8 validation, and the frame engine driven through the test
 * transport (client bytes in, server frames out, no sockets). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "net/websocket.h"
#include "switchboard/error.h"

/* ---- Sec-WebSocket-Accept ------------------------------------------------------------------ */

static void test_accept_key(void **state)
{
    (void)state;
    char out[29];
    /* RFC 6455 §1.3: "the value ... s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" */
    assert_int_equal(sb_ws_accept_key(SB_STR_LIT("dGhlIHNhbXBsZSBub25jZQ=="), out), 0);
    assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    /* bytes 1..16 */
    assert_int_equal(sb_ws_accept_key(SB_STR_LIT("AQIDBAUGBwgJCgsMDQ4PEA=="), out), 0);

    static const char *const bad[] = {
        "",
        "dGhlIHNhbXBsZSBub25jZQ=",   /* 23 characters */
        "dGhlIHNhbXBsZSBub25jZQ===", /* 25 */
        "dGhlIHNhbXBsZSBub25jZQAA",  /* no padding: 18 bytes */
        "dGhlIHNhbXBsZSBub25jZR==",  /* non-canonical: low bits set in the last character */
        "AQIDBAUGBwgJCgsMDQ4PEC==",
        "dGhlIHNhbXBsZSBub25j*Q==", /* not base64 */
        "dGhlIHNhbXBsZSBub25jZ Q=", /* space */
        "dGhlIHNhbXBsZSBub25jZQ=A",
        "c2FtcGxlIG5vbmNl", /* 12 bytes */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (sb_ws_accept_key(sb_str_from(bad[i]), out) != SB_EINVAL)
            fail_msg("key \"%s\" accepted", bad[i]);
    }
}

static void test_close_codes(void **state)
{
    (void)state;
    static const unsigned ok[] = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010,
                                  1011, 1012, 1013, 1014, 3000, 4008, 4999};
    static const unsigned no[] = {0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        assert_true(sb_ws_close_code_valid(ok[i]));
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++)
        assert_false(sb_ws_close_code_valid(no[i]));
}

/* ---- UTF-8 --------------------------------------------------------------------------------- */

static uint32_t utf8_whole(const char *s, size_t n)
{
    return sb_utf8_validate(SB_UTF8_ACCEPT, s, n);
}

/* The verdict must not depend on how the bytes are split. */
static void check_all_splits(const char *s, size_t n, uint32_t want_final)
{
    assert_int_equal(utf8_whole(s, n) == SB_UTF8_ACCEPT, want_final == SB_UTF8_ACCEPT);
    for (size_t cut = 0; cut <= n; cut++) {
        uint32_t st = sb_utf8_validate(SB_UTF8_ACCEPT, s, cut);
        st = sb_utf8_validate(st, s + cut, n - cut);
        if ((st == SB_UTF8_ACCEPT) != (want_final == SB_UTF8_ACCEPT) ||
            (want_final == SB_UTF8_REJECT && st != SB_UTF8_REJECT))
            fail_msg("split at %zu of %zu gives %#x", cut, n, st);
    }
    uint32_t st = SB_UTF8_ACCEPT;
    for (size_t i = 0; i < n; i++)
        st = sb_utf8_validate(st, s + i, 1);
    assert_int_equal(st == SB_UTF8_ACCEPT, want_final == SB_UTF8_ACCEPT);
}

#define VALID(lit)     check_all_splits(lit, sizeof lit - 1, SB_UTF8_ACCEPT)
#define INVALID(lit)   check_all_splits(lit, sizeof lit - 1, SB_UTF8_REJECT)
#define TRUNCATED(lit) check_all_splits(lit, sizeof lit - 1, 1u) /* mid-character: neither */

static void test_utf8(void **state)
{
    (void)state;
    VALID("");
    VALID("plain ASCII, longer than eight bytes to take the fast path");
    VALID("\x7f");
    VALID("\xc2\x80");                                     /* U+0080 */
    VALID("\xdf\xbf");                                     /* U+07FF */
    VALID("\xe0\xa0\x80");                                 /* U+0800 */
    VALID("\xed\x9f\xbf");                                 /* U+D7FF, below the surrogates */
    VALID("\xee\x80\x80");                                 /* U+E000, above them */
    VALID("\xef\xbf\xbf");                                 /* U+FFFF */
    VALID("\xf0\x90\x80\x80");                             /* U+10000 */
    VALID("\xf4\x8f\xbf\xbf");                             /* U+10FFFF */
    VALID("\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5"); /* κόσμε (Autobahn 6.2) */
    VALID("abcdefg\xf0\x9f\x98\x80hijklmnop");             /* emoji straddling the fast path */
    VALID("\x00\x00\x00\x00\x00\x00\x00\x00\x00");         /* NUL is a character */

    INVALID("\x80"); /* lone continuation */
    INVALID("\xbf");
    INVALID("\xc0\x80");     /* overlong NUL */
    INVALID("\xc1\xbf");     /* overlong */
    INVALID("\xe0\x80\x80"); /* overlong 3-byte */
    INVALID("\xe0\x9f\xbf");
    INVALID("\xf0\x80\x80\x80"); /* overlong 4-byte */
    INVALID("\xf0\x8f\xbf\xbf");
    INVALID("\xed\xa0\x80");             /* U+D800 */
    INVALID("\xed\xbf\xbf");             /* U+DFFF */
    INVALID("\xed\xa0\x80\xed\xb0\x80"); /* a surrogate pair in CESU-8 */
    INVALID("\xf4\x90\x80\x80");         /* U+110000 */
    INVALID("\xf5\x80\x80\x80");
    INVALID("\xf8\x88\x80\x80\x80"); /* 5-byte form */
    INVALID("\xfe");
    INVALID("\xff");
    INVALID("\xc2\x41"); /* continuation missing */
    INVALID("\xe1\x80\x41");
    INVALID("\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80"
            "edited");               /* Autobahn 6.4 */
    INVALID("0123456789abcdef\x80"); /* after the fast path */

    TRUNCATED("\xc2");
    TRUNCATED("\xe1\x80");
    TRUNCATED("\xf0\x90\x80");
    TRUNCATED("ok so far \xf4");

    /* Rejection is sticky. */
    uint32_t st = utf8_whole("\xff", 1);
    assert_int_equal(st, SB_UTF8_REJECT);
    assert_int_equal(sb_utf8_validate(st, "abc", 3), SB_UTF8_REJECT);
}

/* Every code point from U+0000 to U+10FFFF encodes to something the validator accepts, and
 * every surrogate is refused. */
static void test_utf8_every_code_point(void **state)
{
    (void)state;
    for (uint32_t cp = 0; cp <= 0x10ffff; cp++) {
        char b[4];
        size_t n;
        if (cp < 0x80) {
            b[0] = (char)cp;
            n = 1;
        } else if (cp < 0x800) {
            b[0] = (char)(0xc0 | cp >> 6);
            b[1] = (char)(0x80 | (cp & 0x3f));
            n = 2;
        } else if (cp < 0x10000) {
            b[0] = (char)(0xe0 | cp >> 12);
            b[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
            b[2] = (char)(0x80 | (cp & 0x3f));
            n = 3;
        } else {
            b[0] = (char)(0xf0 | cp >> 18);
            b[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
            b[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
            b[3] = (char)(0x80 | (cp & 0x3f));
            n = 4;
        }
        bool surrogate = cp >= 0xd800 && cp <= 0xdfff;
        uint32_t st = sb_utf8_validate(SB_UTF8_ACCEPT, b, n);
        if ((st == SB_UTF8_ACCEPT) == surrogate)
            fail_msg("U+%04X: state %#x", cp, st);
    }
}

/* ---- the engine ---------------------------------------------------------------------------- */

typedef struct rec {
    int messages;
    int opcode[16];
    size_t len[16];
    char data[16][2048];
    int closes;
    uint16_t code;
    char reason[128];
    /* reactions */
    bool echo;
    int close_on_message; /* sb_ws_close with this code from on_message */
} rec;

static void r_open(sb_ws *ws, void *ud)
{
    (void)ws, (void)ud;
}

static void r_message(sb_ws *ws, void *ud, int opcode, const void *data, size_t len)
{
    rec *r = ud;
    int i = r->messages++;
    if (i < 16) {
        r->opcode[i] = opcode;
        r->len[i] = len;
        memcpy(r->data[i], data, len < sizeof r->data[i] ? len : sizeof r->data[i]);
    }
    if (r->echo)
        assert_int_equal(sb_ws_send(ws, opcode, data, len), 0);
    if (r->close_on_message)
        assert_int_equal(sb_ws_close(ws, (uint16_t)r->close_on_message, "done"), 0);
}

static void r_close(sb_ws *ws, void *ud, uint16_t code, sb_str reason)
{
    (void)ws;
    rec *r = ud;
    r->closes++;
    r->code = code;
    assert_true(reason.len < sizeof r->reason);
    memcpy(r->reason, reason.base, reason.len);
    r->reason[reason.len] = '\0';
    assert_int_equal(reason.base[reason.len], '\0');
}

static const sb_ws_handler handler = {
    .on_open = r_open, .on_message = r_message, .on_close = r_close};

/* A masked client frame. */
static size_t cframe(uint8_t *out, int fin, int rsv, int opcode, const void *payload, size_t n,
                     bool mask)
{
    static const uint8_t key[4] = {0x37, 0xfa, 0x21, 0x3d};
    size_t o = 0;
    out[o++] = (uint8_t)((fin ? 0x80 : 0) | (rsv & 7) << 4 | (opcode & 0xf));
    uint8_t m = mask ? 0x80 : 0;
    if (n < 126) {
        out[o++] = (uint8_t)(m | n);
    } else if (n < 65536) {
        out[o++] = m | 126;
        out[o++] = (uint8_t)(n >> 8);
        out[o++] = (uint8_t)n;
    } else {
        out[o++] = m | 127;
        for (int i = 7; i >= 0; i--)
            out[o++] = (uint8_t)((uint64_t)n >> (8 * i));
    }
    if (mask) {
        memcpy(out + o, key, 4);
        o += 4;
    }
    const uint8_t *p = payload;
    for (size_t i = 0; i < n; i++)
        out[o + i] = mask ? p[i] ^ key[i % 4] : p[i];
    return o + n;
}

/* One server frame parsed from b at *off. */
typedef struct sframe {
    int fin, opcode;
    size_t len;
    const uint8_t *payload;
} sframe;

static bool next_sframe(const sb_buf *b, size_t *off, sframe *f)
{
    const uint8_t *p = (const uint8_t *)b->base + *off;
    size_t avail = b->len - *off;
    if (avail < 2)
        return false;
    assert_int_equal(p[0] & 0x70, 0); /* no reserved bits */
    assert_int_equal(p[1] & 0x80, 0); /* never masked */
    size_t len = p[1] & 0x7f, h = 2;
    if (len == 126) {
        len = (size_t)p[2] << 8 | p[3];
        h = 4;
    } else if (len == 127) {
        len = 0;
        for (int i = 2; i < 10; i++)
            len = len << 8 | p[i];
        h = 10;
    }
    assert_true(avail >= h + len);
    f->fin = p[0] >> 7;
    f->opcode = p[0] & 0xf;
    f->len = len;
    f->payload = p + h;
    *off += h + len;
    return true;
}

typedef struct fixture {
    rec r;
    sb_ws *ws;
    sb_buf out;
    size_t off; /* next unread server frame in out */
} fixture;

static fixture *fx_new(size_t max_message, size_t max_queue)
{
    fixture *fx = calloc(1, sizeof *fx);
    assert_non_null(fx);
    fx->ws = sb__ws_test_new(&handler, &fx->r, (sb__ws_test_limits){max_message, max_queue});
    assert_non_null(fx->ws);
    sb_buf_init(&fx->out, 0);
    return fx;
}

static void fx_free(fixture *fx)
{
    if (fx->ws)
        sb__ws_test_free(fx->ws);
    sb_buf_free(&fx->out);
    free(fx);
}

/* Feeds bytes (optionally one at a time); returns whether the engine stays open. */
static bool fx_feed(fixture *fx, const void *data, size_t n, bool bytewise)
{
    bool open = true;
    if (!bytewise) {
        open = sb__ws_test_feed(fx->ws, data, n);
    } else {
        for (size_t i = 0; i < n; i++)
            open = sb__ws_test_feed(fx->ws, (const char *)data + i, 1);
    }
    assert_int_equal(sb__ws_test_take(fx->ws, &fx->out), 0);
    return open;
}

static sframe fx_next(fixture *fx)
{
    sframe f;
    if (!next_sframe(&fx->out, &fx->off, &f))
        fail_msg("no server frame");
    return f;
}

static void expect_close_frame(fixture *fx, uint16_t code)
{
    sframe f = fx_next(fx);
    assert_int_equal(f.opcode, 0x8);
    assert_true(f.fin);
    if (code == 0) {
        assert_int_equal(f.len, 0);
        return;
    }
    assert_true(f.len >= 2);
    assert_int_equal(f.payload[0] << 8 | f.payload[1], code);
    assert_int_equal(sb_utf8_validate(SB_UTF8_ACCEPT, f.payload + 2, f.len - 2), SB_UTF8_ACCEPT);
}

static void expect_no_more(fixture *fx)
{
    assert_int_equal(fx->off, fx->out.len);
}

/* Echo of text and binary, whole and byte by byte. */
static void test_echo(void **state)
{
    (void)state;
    for (int bytewise = 0; bytewise < 2; bytewise++) {
        fixture *fx = fx_new(1 << 20, 1 << 20);
        fx->r.echo = true;
        uint8_t in[512];
        size_t n = cframe(in, 1, 0, 0x1, "hello", 5, true);
        n += cframe(in + n, 1, 0, 0x2, "\x00\x01\x02", 3, true);
        n += cframe(in + n, 1, 0, 0x1, "", 0, true);
        assert_true(fx_feed(fx, in, n, bytewise));
        assert_int_equal(fx->r.messages, 3);
        assert_int_equal(fx->r.opcode[0], SB_WS_TEXT);
        assert_int_equal(fx->r.len[0], 5);
        assert_memory_equal(fx->r.data[0], "hello", 5);
        assert_int_equal(fx->r.opcode[1], SB_WS_BINARY);
        assert_memory_equal(fx->r.data[1], "\x00\x01\x02", 3);
        assert_int_equal(fx->r.len[2], 0);
        sframe f = fx_next(fx);
        assert_int_equal(f.opcode, 0x1);
        assert_int_equal(f.len, 5);
        assert_memory_equal(f.payload, "hello", 5);
        f = fx_next(fx);
        assert_int_equal(f.opcode, 0x2);
        assert_int_equal(f.len, 3);
        f = fx_next(fx);
        assert_int_equal(f.opcode, 0x1);
        assert_int_equal(f.len, 0);
        expect_no_more(fx);
        assert_int_equal(fx->r.closes, 0);
        fx_free(fx);
    }
}

/* Fragments are reassembled, a UTF-8 character may straddle them, and control frames may come
 * between them (the Pong goes out before the reassembled message is seen). */
static void test_fragments(void **state)
{
    (void)state;
    for (int bytewise = 0; bytewise < 2; bytewise++) {
        fixture *fx = fx_new(1 << 20, 1 << 20);
        uint8_t in[1024];
        size_t n = cframe(in, 0, 0, 0x1, "caf\xc3", 4, true);
        n += cframe(in + n, 1, 0, 0x9, "ping!", 5, true);
        n += cframe(in + n, 0, 0, 0x0, "\xa9 ", 2, true);
        n += cframe(in + n, 0, 0, 0x0, "", 0, true);
        n += cframe(in + n, 1, 0, 0x0, "au lait", 7, true);
        assert_true(fx_feed(fx, in, n, bytewise));
        assert_int_equal(fx->r.messages, 1);
        assert_int_equal(fx->r.opcode[0], SB_WS_TEXT);
        assert_int_equal(fx->r.len[0], 13);
        assert_memory_equal(fx->r.data[0], "caf\xc3\xa9 au lait", 13);
        sframe f = fx_next(fx);
        assert_int_equal(f.opcode, 0xa);
        assert_int_equal(f.len, 5);
        assert_memory_equal(f.payload, "ping!", 5);
        expect_no_more(fx);
        fx_free(fx);
    }
}

/* A large message: several wslay reads, 16- and 64-bit lengths. */
static void test_large(void **state)
{
    (void)state;
    size_t sizes[] = {125, 126, 65535, 65536, 300000};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        size_t sz = sizes[k];
        fixture *fx = fx_new(sz, 1 << 20);
        fx->r.echo = true;
        uint8_t *payload = malloc(sz), *in = malloc(sz + 14);
        for (size_t i = 0; i < sz; i++)
            payload[i] = (uint8_t)(i * 7);
        size_t n = cframe(in, 1, 0, 0x2, payload, sz, true);
        assert_true(fx_feed(fx, in, n, false));
        assert_int_equal(fx->r.messages, 1);
        assert_int_equal(fx->r.len[0], sz);
        sframe f = fx_next(fx);
        assert_int_equal(f.len, sz);
        assert_memory_equal(f.payload, payload, sz);
        free(payload);
        free(in);
        fx_free(fx);
    }
}

/* Sends bad client bytes; expects a Close with `code`, on_close(code) once, and no message. */
static void expect_failure(const void *in, size_t n, uint16_t code, size_t max_message)
{
    for (int bytewise = 0; bytewise < 2; bytewise++) {
        fixture *fx = fx_new(max_message, 1 << 20);
        assert_false(fx_feed(fx, in, n, bytewise));
        assert_int_equal(fx->r.messages, 0);
        assert_int_equal(fx->r.closes, 1);
        assert_int_equal(fx->r.code, code);
        expect_close_frame(fx, code);
        expect_no_more(fx);
        /* Nothing more is read. */
        uint8_t more[16];
        size_t m = cframe(more, 1, 0, 0x1, "x", 1, true);
        assert_false(fx_feed(fx, more, m, false));
        assert_int_equal(fx->r.messages, 0);
        expect_no_more(fx);
        assert_int_equal(sb_ws_send(fx->ws, SB_WS_TEXT, "x", 1), SB_ECANCELED);
        sb__ws_test_free(fx->ws);
        fx->ws = NULL;
        assert_int_equal(fx->r.closes, 1);
        fx_free(fx);
    }
}

static void test_protocol_errors(void **state)
{
    (void)state;
    uint8_t in[1024], big[200];
    size_t n;
    memset(big, 'a', sizeof big);

    n = cframe(in, 1, 0, 0x1, "hi", 2, false); /* unmasked */
    expect_failure(in, n, 1002, 1 << 20);
    n = cframe(in, 1, 4, 0x1, "hi", 2, true); /* RSV1 */
    expect_failure(in, n, 1002, 1 << 20);
    n = cframe(in, 1, 1, 0x2, "hi", 2, true); /* RSV3 */
    expect_failure(in, n, 1002, 1 << 20);
    n = cframe(in, 1, 0, 0x3, "hi", 2, true); /* reserved data opcode */
    expect_failure(in, n, 1002, 1 << 20);
    n = cframe(in, 1, 0, 0xb, "", 0, true); /* reserved control opcode */
    expect_failure(in, n, 1002, 1 << 20);
    n = cframe(in, 1, 0, 0x9, big, 126, true); /* ping over 125 bytes */
    expect_failure(in, n, 1002, 1 << 20);
    n = cframe(in, 1, 0, 0x8, big, 126, true); /* close over 125 bytes */
    expect_failure(in, n, 1002, 1 << 20);
    n = cframe(in, 0, 0, 0x9, "a", 1, true); /* fragmented ping */
    expect_failure(in, n, 1002, 1 << 20);
    n = cframe(in, 1, 0, 0x0, "a", 1, true); /* continuation without a message */
    expect_failure(in, n, 1002, 1 << 20);
    n = cframe(in, 0, 0, 0x1, "a", 1, true);
    n += cframe(in + n, 1, 0, 0x2, "b", 1, true); /* new message inside a fragmented one */
    expect_failure(in, n, 1002, 1 << 20);
    /* A 16-bit length that fits in 7 bits (non-minimal encoding). */
    n = 0;
    in[n++] = 0x82;
    in[n++] = 0x80 | 126;
    in[n++] = 0;
    in[n++] = 5;
    memcpy(in + n, "\0\0\0\0hello", 9);
    n += 9;
    expect_failure(in, n, 1002, 1 << 20);
    /* A 64-bit length with the top bit set. */
    n = 0;
    in[n++] = 0x82;
    in[n++] = 0x80 | 127;
    memset(in + n, 0xff, 8);
    n += 8;
    memset(in + n, 0, 5);
    n += 5;
    expect_failure(in, n, 1002, 1 << 20);

    /* Close frames: a 1-byte payload, codes that may not be sent, a reason that is not UTF-8. */
    n = cframe(in, 1, 0, 0x8, "\x03", 1, true);
    expect_failure(in, n, 1002, 1 << 20);
    n = cframe(in, 1, 0, 0x8, "\x03\xed", 2, true); /* 1005 */
    expect_failure(in, n, 1002, 1 << 20);
    n = cframe(in, 1, 0, 0x8, "\x03\xee", 2, true); /* 1006 */
    expect_failure(in, n, 1002, 1 << 20);
    n = cframe(in, 1, 0, 0x8, "\x03\xe7", 2, true); /* 999 */
    expect_failure(in, n, 1002, 1 << 20);
    n = cframe(in, 1, 0, 0x8, "\x13\x88", 2, true); /* 5000 */
    expect_failure(in, n, 1002, 1 << 20);
    n = cframe(in, 1, 0, 0x8, "\x03\xe8\xff", 3, true);
    expect_failure(in, n, 1007, 1 << 20);
}

static void test_invalid_utf8(void **state)
{
    (void)state;
    uint8_t in[1024];
    size_t n;
    n = cframe(in, 1, 0, 0x1, "\xc0\xaf", 2, true);
    expect_failure(in, n, 1007, 1 << 20);
    n = cframe(in, 1, 0, 0x1, "\xed\xa0\x80", 3, true);
    expect_failure(in, n, 1007, 1 << 20);
    /* A message that ends inside a character. */
    n = cframe(in, 1, 0, 0x1, "ab\xe2\x82", 4, true);
    expect_failure(in, n, 1007, 1 << 20);
    /* Across fragments: valid start, then a bad continuation in the next fragment. */
    n = cframe(in, 0, 0, 0x1, "ab\xe2", 3, true);
    n += cframe(in + n, 1, 0, 0x0, "\x28\xa1", 2, true);
    expect_failure(in, n, 1007, 1 << 20);
    /* Fail fast: the invalid first fragment is refused before the message is complete. */
    fixture *fx = fx_new(1 << 20, 1 << 20);
    n = cframe(in, 0, 0, 0x1, "\xff", 1, true);
    assert_false(fx_feed(fx, in, n, false));
    assert_int_equal(fx->r.code, 1007);
    fx_free(fx);
    /* Binary messages are not UTF-8 checked. */
    fx = fx_new(1 << 20, 1 << 20);
    n = cframe(in, 1, 0, 0x2, "\xff\xfe", 2, true);
    assert_true(fx_feed(fx, in, n, false));
    assert_int_equal(fx->r.messages, 1);
    fx_free(fx);
}

/* Exactly at ws.max_message_bytes passes; one byte more is 1009, decided from the frame headers
 * before the payload arrives. */
static void test_message_limit(void **state)
{
    (void)state;
    enum { LIMIT = 1000 };
    static uint8_t payload[LIMIT + 1], in[LIMIT + 64];
    memset(payload, 'x', sizeof payload);
    size_t n;

    fixture *fx = fx_new(LIMIT, 1 << 20);
    n = cframe(in, 1, 0, 0x1, payload, LIMIT, true);
    assert_true(fx_feed(fx, in, n, false));
    assert_int_equal(fx->r.messages, 1);
    assert_int_equal(fx->r.len[0], LIMIT);
    fx_free(fx);

    n = cframe(in, 1, 0, 0x1, payload, LIMIT + 1, true);
    expect_failure(in, n, 1009, LIMIT);

    /* Fragmented: 600 + 400 passes, 600 + 401 fails at the second header plus one byte. */
    fx = fx_new(LIMIT, 1 << 20);
    n = cframe(in, 0, 0, 0x2, payload, 600, true);
    n += cframe(in + n, 1, 0, 0x0, payload, 400, true);
    assert_true(fx_feed(fx, in, n, false));
    assert_int_equal(fx->r.messages, 1);
    assert_int_equal(fx->r.len[0], LIMIT);
    fx_free(fx);

    fx = fx_new(LIMIT, 1 << 20);
    n = cframe(in, 0, 0, 0x2, payload, 600, true);
    size_t hdr = n;
    n += cframe(in + n, 1, 0, 0x0, payload, 401, true);
    (void)n;
    /* The second header (2 + 2-byte length + mask) alone waits for payload; its first byte
     * decides. */
    assert_true(fx_feed(fx, in, hdr + 8, false));
    assert_false(fx_feed(fx, in + hdr + 8, 1, false));
    assert_int_equal(fx->r.code, 1009);
    assert_int_equal(fx->r.messages, 0);
    fx_free(fx);

    /* A huge declared length is refused without waiting for (or buffering) any of it. */
    fx = fx_new(LIMIT, 1 << 20);
    n = 0;
    in[n++] = 0x82;
    in[n++] = 0x80 | 127;
    memcpy(in + n, "\x00\x00\x00\x01\x00\x00\x00\x00", 8); /* 4 GiB */
    n += 8;
    memcpy(in + n, "\x01\x02\x03\x04z", 5);
    n += 5;
    assert_false(fx_feed(fx, in, n, false));
    assert_int_equal(fx->r.code, 1009);
    fx_free(fx);
}

static void test_peer_close(void **state)
{
    (void)state;
    uint8_t in[256];
    size_t n;

    /* Code and reason: echoed code, reported with the reason. */
    fixture *fx = fx_new(1 << 20, 1 << 20);
    n = cframe(in, 1, 0, 0x8,
               "\x03\xe8"
               "bye now",
               9, true);
    assert_false(fx_feed(fx, in, n, true));
    assert_int_equal(fx->r.closes, 1);
    assert_int_equal(fx->r.code, 1000);
    assert_string_equal(fx->r.reason, "bye now");
    expect_close_frame(fx, 1000);
    expect_no_more(fx);
    assert_int_equal(sb_ws_send(fx->ws, SB_WS_TEXT, "late", 4), SB_ECANCELED);
    assert_int_equal(sb_ws_close(fx->ws, 1000, NULL), SB_ECANCELED);
    fx_free(fx);
    /* on_close was not called again by the free */

    /* No code: an empty Close back, reported as 1005. */
    fx = fx_new(1 << 20, 1 << 20);
    n = cframe(in, 1, 0, 0x8, "", 0, true);
    assert_false(fx_feed(fx, in, n, false));
    assert_int_equal(fx->r.code, 1005);
    expect_close_frame(fx, 0);
    fx_free(fx);

    /* An application code passes through. */
    fx = fx_new(1 << 20, 1 << 20);
    n = cframe(in, 1, 0, 0x8, "\x0f\xa0", 2, true); /* 4000 */
    assert_false(fx_feed(fx, in, n, false));
    assert_int_equal(fx->r.code, 4000);
    expect_close_frame(fx, 4000);
    fx_free(fx);

    /* TCP ends without a Close: 1006, exactly once. */
    fx = fx_new(1 << 20, 1 << 20);
    sb__ws_test_free(fx->ws);
    fx->ws = NULL;
    assert_int_equal(fx->r.closes, 1);
    assert_int_equal(fx->r.code, 1006);
    fx_free(fx);
}

static void test_server_close(void **state)
{
    (void)state;
    uint8_t in[256];
    size_t n;
    fixture *fx = fx_new(1 << 20, 1 << 20);
    assert_int_equal(sb_ws_close(fx->ws, 1004, NULL), SB_EINVAL);
    assert_int_equal(sb_ws_close(fx->ws, 1005, NULL), SB_EINVAL);
    char longr[200];
    memset(longr, 'r', sizeof longr);
    longr[124] = '\0';
    assert_int_equal(sb_ws_close(fx->ws, 1000, longr), SB_EINVAL); /* 124 bytes */
    assert_int_equal(sb_ws_close(fx->ws, 1000, "\xff"), SB_EINVAL);
    longr[123] = '\0';
    assert_int_equal(sb_ws_close(fx->ws, 4003, longr), 0); /* 123 bytes */
    assert_int_equal(sb_ws_close(fx->ws, 1000, NULL), SB_ECANCELED);
    assert_int_equal(sb_ws_send(fx->ws, SB_WS_TEXT, "x", 1), SB_ECANCELED);
    assert_int_equal(fx->r.closes, 0); /* not before the handshake ends */

    /* Messages that cross our Close are not delivered; Pings are not answered. */
    n = cframe(in, 1, 0, 0x1, "crossing", 8, true);
    n += cframe(in + n, 1, 0, 0x9, "p", 1, true);
    assert_true(fx_feed(fx, in, n, false));
    assert_int_equal(fx->r.messages, 0);
    sframe f = fx_next(fx);
    assert_int_equal(f.opcode, 0x8);
    assert_int_equal(f.len, 125);
    assert_int_equal(f.payload[0] << 8 | f.payload[1], 4003);
    expect_no_more(fx);
    /* The peer's answer ends it, reporting our code and reason. */
    n = cframe(in, 1, 0, 0x8, "\x0f\xa3", 2, true);
    assert_false(fx_feed(fx, in, n, false));
    expect_no_more(fx);
    assert_int_equal(fx->r.closes, 1);
    assert_int_equal(fx->r.code, 4003);
    assert_int_equal(strlen(fx->r.reason), 123);
    fx_free(fx);

    /* From inside on_message. */
    fx = fx_new(1 << 20, 1 << 20);
    fx->r.close_on_message = 4001;
    n = cframe(in, 1, 0, 0x1, "one", 3, true);
    n += cframe(in + n, 1, 0, 0x1, "two", 3, true);
    assert_true(fx_feed(fx, in, n, false));
    assert_int_equal(fx->r.messages, 1);
    expect_close_frame(fx, 4001);
    fx_free(fx);
}

/* The send queue: a message into an empty queue always fits; past ws.max_send_queue the queued
 * frames are dropped and the connection closes with 4008. */
static void test_send_queue(void **state)
{
    (void)state;
    static char big[SB_WS_MAX_SEND + 1];
    fixture *fx = fx_new(1 << 20, 100);
    assert_int_equal(sb_ws_send(fx->ws, 7, "x", 1), SB_EINVAL);
    assert_int_equal(sb_ws_send(fx->ws, SB_WS_BINARY, big, sizeof big), SB_EMSGSIZE);
    assert_int_equal(sb_ws_send(fx->ws, SB_WS_BINARY, big, 300), 0); /* empty queue */
    assert_int_equal(sb_ws_queued(fx->ws), 304);
    assert_int_equal(sb_ws_send(fx->ws, SB_WS_BINARY, big, 1), SB_EAGAIN);
    assert_int_equal(sb_ws_send(fx->ws, SB_WS_BINARY, big, 1), SB_ECANCELED);
    assert_int_equal(fx->r.closes, 0);
    assert_int_equal(sb__ws_test_take(fx->ws, &fx->out), 0);
    expect_close_frame(fx, 4008); /* the 300 bytes were dropped */
    expect_no_more(fx);
    fx_free(fx);
}

/* Pings from a peer that does not read also count against the queue. */
static void test_pong_queue(void **state)
{
    (void)state;
    fixture *fx = fx_new(1 << 20, 4096);
    uint8_t in[200];
    char p[125];
    memset(p, 'p', sizeof p);
    size_t n = cframe(in, 1, 0, 0x9, p, sizeof p, true);
    for (int i = 0; i < 1000; i++) {
        assert_true(sb__ws_test_feed(fx->ws, in, n)); /* closing, waiting for the peer */
        assert_true(sb_ws_queued(fx->ws) <= 4096);
    }
    assert_int_equal(sb_ws_send(fx->ws, SB_WS_TEXT, "x", 1), SB_ECANCELED);
    assert_int_equal(sb__ws_test_take(fx->ws, &fx->out), 0);
    expect_close_frame(fx, 4008); /* the Pongs queued before were dropped with it */
    expect_no_more(fx);
    fx_free(fx);
}

/* ---- out of memory ------------------------------------------------------------------------- */

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

static void oom_message(sb_ws *ws, void *ud, int opcode, const void *data, size_t len)
{
    rec *r = ud;
    r->messages++;
    int rc = sb_ws_send(ws, opcode, data, len);
    assert_true(rc == 0 || rc == SB_ENOMEM);
}

static const sb_ws_handler oom_handler = {
    .on_open = r_open, .on_message = oom_message, .on_close = r_close};

/* Failing each allocation in turn: the engine refuses cleanly (NULL, SB_ENOMEM, or close 1011)
 * and leaks nothing (LeakSanitizer checks at exit). */
static void test_out_of_memory(void **state)
{
    (void)state;
    static uint8_t in[8192];
    static char payload[3000];
    memset(payload, 'q', sizeof payload);
    size_t n = cframe(in, 1, 0, 0x1, "hello", 5, true);
    n += cframe(in + n, 0, 0, 0x2, payload, sizeof payload, true);
    n += cframe(in + n, 1, 0, 0x9, "p", 1, true);
    n += cframe(in + n, 1, 0, 0x0, payload, sizeof payload, true);
    bool completed = false;
    for (int k = 1; k < 64 && !completed; k++) {
        rec r;
        memset(&r, 0, sizeof r);
        sb_buf out;
        sb_buf_init(&out, 0);
        sb_alloc_set(&failing);
        fail_at = k;
        alloc_count = 0;
        sb_ws *ws = sb__ws_test_new(&oom_handler, &r, (sb__ws_test_limits){1 << 20, 1 << 20});
        if (ws) {
            bool open = sb__ws_test_feed(ws, in, n);
            int rc = sb__ws_test_take(ws, &out);
            completed = open && r.messages == 2 && alloc_count < k;
            if (!open)
                assert_int_equal(r.code, 1011);
            (void)rc;
            sb__ws_test_free(ws);
            assert_int_equal(r.closes, 1);
        }
        fail_at = 0;
        sb_alloc_set(NULL);
        sb_buf_free(&out);
    }
    assert_true(completed);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accept_key),    cmocka_unit_test(test_close_codes),
        cmocka_unit_test(test_utf8),          cmocka_unit_test(test_utf8_every_code_point),
        cmocka_unit_test(test_echo),          cmocka_unit_test(test_fragments),
        cmocka_unit_test(test_large),         cmocka_unit_test(test_protocol_errors),
        cmocka_unit_test(test_invalid_utf8),  cmocka_unit_test(test_message_limit),
        cmocka_unit_test(test_peer_close),    cmocka_unit_test(test_server_close),
        cmocka_unit_test(test_send_queue),    cmocka_unit_test(test_pong_queue),
        cmocka_unit_test(test_out_of_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
