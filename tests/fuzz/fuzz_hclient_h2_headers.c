/*
 * libFuzzer target for sb__hclient_h2_headers, which splits the caller's "Name: value\r\n"
 * lines into HTTP/2 fields for h2c requests.
 *
 * Checks that every field it hands out is a non-empty token name that is not a
 * connection-specific or client-written field, with a value holding no CR, LF, NUL or other
 * control byte but HTAB and no surrounding whitespace, lying inside the input; and that the
 * fields, put back as lines, account for the whole input (nothing skipped or invented).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "net/hclient.h"
#include "switchboard/error.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            abort();                                                                               \
    } while (0)

typedef struct walk {
    const char *in;
    size_t len;
    size_t fields;
    size_t bytes; /* name + value bytes seen */
} walk;

static int on_field(const char *name, size_t nlen, const char *value, size_t vlen, void *ud)
{
    walk *w = ud;
    CHECK(nlen > 0);
    CHECK(name >= w->in && name + nlen <= w->in + w->len);
    CHECK(value >= w->in && value + vlen <= w->in + w->len);
    for (size_t i = 0; i < nlen; i++) {
        unsigned char ch = (unsigned char)name[i];
        CHECK(ch > 0x20 && ch < 0x7f && ch != ':' && ch != '\r' && ch != '\n');
    }
    for (size_t i = 0; i < vlen; i++) {
        unsigned char ch = (unsigned char)value[i];
        CHECK(ch >= 0x20 || ch == '\t');
        CHECK(ch != 0x7f);
    }
    if (vlen) {
        CHECK(value[0] != ' ' && value[0] != '\t');
        CHECK(value[vlen - 1] != ' ' && value[vlen - 1] != '\t');
    }
    static const char *const banned[] = {"host", "content-length", "connection",
                                         "transfer-encoding", "te"};
    for (size_t b = 0; b < sizeof(banned) / sizeof(banned[0]); b++)
        CHECK(!(nlen == strlen(banned[b]) && strncasecmp(name, banned[b], nlen) == 0));
    w->fields++;
    w->bytes += nlen + vlen;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *in = malloc(size ? size : 1);
    CHECK(in != NULL);
    memcpy(in, data, size);
    walk w = {in, size, 0, 0};
    int rc = sb__hclient_h2_headers(in, size, on_field, &w);
    CHECK(rc == 0 || rc == SB_EINVAL);
    if (rc == SB_EINVAL) {
        CHECK(w.fields == 0); /* checked in full before anything is handed out */
    } else {
        size_t lines = 0;
        for (size_t i = 0; i < size; i++)
            lines += in[i] == '\n';
        CHECK(w.fields == lines);
        /* Each line is name ":" OWS value OWS CRLF. */
        CHECK(w.bytes + 3 * w.fields <= size);
        CHECK(size == 0 || (in[size - 2] == '\r' && in[size - 1] == '\n'));
    }
    free(in);
    return 0;
}
