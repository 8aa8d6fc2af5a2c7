/*
 * libFuzzer target for sb_hclient's URL parser and request head builder.
 *
 * The head is built into a fixed buffer inside sb_hclient_req, so the URL bounds are what keeps
 * it from overflowing: this checks every accepted URL against them (the request struct is
 * heap-allocated at its exact size so that ASan sees a write past the head), and that nothing
 * a peer could use to split the request line or add a field gets through.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "net/hclient.h"
#include "switchboard/error.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            abort();                                                                               \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *url = malloc(size + 1);
    CHECK(url != NULL);
    memcpy(url, data, size);
    url[size] = '\0';
    sb__hclient_url u;
    int rc = sb__hclient_parse_url(url, &u);
    CHECK(rc == 0 || rc == SB_EINVAL);
    if (rc == 0) {
        CHECK(u.host_len > 0 && u.host_len <= SB_HCLIENT_HOST_MAX);
        CHECK(u.path_len <= SB_HCLIENT_PATH_MAX);
        CHECK(u.port > 0);
        CHECK(u.host >= u.authority && u.host + u.host_len <= u.authority + u.authority_len);
        for (size_t i = 0; i < u.authority_len; i++)
            CHECK((unsigned char)u.authority[i] > 0x20 && (unsigned char)u.authority[i] < 0x7f &&
                  u.authority[i] != '@' && u.authority[i] != '/');
        for (size_t i = 0; i < u.path_len; i++)
            CHECK((unsigned char)u.path[i] > 0x20 && (unsigned char)u.path[i] < 0x7f &&
                  u.path[i] != '#');
        CHECK(u.path_len == 0 || u.path[0] == '/' || u.path[0] == '?');
        sb_hclient_req *r = malloc(sizeof(*r));
        CHECK(r != NULL);
        r->extra_len = size & 1;
        sb__hclient_build_head(r, &u, SIZE_MAX);
        CHECK(r->head_len <= SB_HCLIENT_HEAD_MAX);
        CHECK(memcmp(r->head, "POST /", 6) == 0);
        /* Exactly the lines we wrote: request line, Host, Content-Length (+ blank line). */
        size_t lines = 0;
        for (size_t i = 0; i < r->head_len; i++)
            lines += r->head[i] == '\n';
        CHECK(lines == (r->extra_len ? 3u : 4u));
        free(r);
    }
    free(url);
    return 0;
}
