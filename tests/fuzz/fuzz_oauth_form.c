/*
 * libFuzzer target for the token endpoint's parsers: the form body and Basic credentials.
 *
 * Input: one selector byte (even: form, odd: "Basic " + the rest as a header value). Beyond
 * "never crash", it holds the code to what oauth.h promises: every parameter has a
 * non-empty NUL-terminated name and value inside the scratch buffer, names are unique, and
 * Basic gives a non-empty id and both parts inside scratch and without NUL bytes.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "auth/oauth.h"
#include "switchboard/error.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            abort();                                                                               \
    } while (0)

static bool inside(const char *p, size_t n, const char *buf, size_t cap)
{
    return p >= buf && p + n < buf + cap; /* the NUL after it too */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 8192)
        return 0;
    const char *in = (const char *)data + 1;
    size_t len = size - 1;
    size_t cap = len + 2 * SB_OAUTH_MAX_PARAMS + 8;
    char *scratch = malloc(cap);
    if (!scratch)
        return 0;
    if (data[0] % 2 == 0) {
        sb_oauth_param p[SB_OAUTH_MAX_PARAMS];
        int n = sb_oauth_form_parse(in, len, scratch, cap, p);
        CHECK(n <= SB_OAUTH_MAX_PARAMS);
        for (int i = 0; i < n; i++) {
            CHECK(p[i].name.len > 0 && p[i].value.len > 0);
            CHECK(inside(p[i].name.base, p[i].name.len, scratch, cap));
            CHECK(inside(p[i].value.base, p[i].value.len, scratch, cap));
            CHECK(p[i].name.base[p[i].name.len] == '\0' && p[i].value.base[p[i].value.len] == '\0');
            CHECK(!memchr(p[i].name.base, '\0', p[i].name.len));
            for (int j = 0; j < i; j++)
                CHECK(!(p[j].name.len == p[i].name.len &&
                        memcmp(p[j].name.base, p[i].name.base, p[i].name.len) == 0));
        }
    } else {
        char *hdr = malloc(len + 6);
        if (hdr) {
            memcpy(hdr, "Basic ", 6);
            memcpy(hdr + 6, in, len);
            sb_str id, secret;
            size_t hcap = len + 8;
            char *s2 = realloc(scratch, hcap);
            if (s2) {
                scratch = s2;
                int rc = sb_oauth_basic_decode((sb_str){hdr, len + 6}, scratch, hcap, &id, &secret);
                if (rc == 0) {
                    CHECK(id.len > 0);
                    CHECK(inside(id.base, id.len, scratch, hcap));
                    CHECK(inside(secret.base, secret.len, scratch, hcap));
                    CHECK(!memchr(id.base, '\0', id.len) && !memchr(secret.base, '\0', secret.len));
                }
            }
            free(hdr);
        }
    }
    free(scratch);
    return 0;
}
