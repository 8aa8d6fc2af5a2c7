#include "auth/oauth.h"

#include <string.h>

#include "auth/jose.h"
#include "core/str.h"
#include "switchboard/error.h"

/* Form-urldecodes in[0..len) to out (NUL-terminated); returns the length or SB_EINVAL. */
static int form_decode(const char *in, size_t len, char *out)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        if (c == '\0')
            return SB_EINVAL;
        if (c == '+') {
            out[n++] = ' ';
        } else if (c == '%') {
            if (i + 2 >= len)
                return SB_EINVAL;
            int hi = sb_hex_value((unsigned char)in[i + 1]),
                lo = sb_hex_value((unsigned char)in[i + 2]);
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
                return SB_EINVAL;
            out[n++] = (char)(hi << 4 | lo);
            i += 2;
        } else {
            out[n++] = (char)c;
        }
    }
    out[n] = '\0';
    return (int)n;
}

int sb_oauth_form_parse(const char *body, size_t len, char *scratch, size_t cap,
                        sb_oauth_param out[SB_OAUTH_MAX_PARAMS])
{
    if (cap < len + 2 * SB_OAUTH_MAX_PARAMS || len > (size_t)1 << 30)
        return SB_EMSGSIZE;
    int n = 0;
    size_t used = 0;
    const char *p = body, *end = body + len;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *pe = amp ? amp : end;
        if (pe > p) {
            const char *eq = memchr(p, '=', (size_t)(pe - p));
            const char *ne = eq ? eq : pe;
            const char *v = eq ? eq + 1 : pe;
            if (ne == p)
                return SB_EINVAL;
            char *name = scratch + used;
            int nl = form_decode(p, (size_t)(ne - p), name);
            if (nl < 0)
                return nl;
            char *value = name + nl + 1;
            int vl = form_decode(v, (size_t)(pe - v), value);
            if (vl < 0)
                return vl;
            if (nl == 0)
                return SB_EINVAL;
            if (vl > 0) {
                for (int i = 0; i < n; i++)
                    if (out[i].name.len == (size_t)nl && memcmp(out[i].name.base, name, nl) == 0)
                        return SB_EEXIST;
                if (n == SB_OAUTH_MAX_PARAMS)
                    return SB_EMSGSIZE;
                out[n].name = (sb_str){name, (size_t)nl};
                out[n].value = (sb_str){value, (size_t)vl};
                n++;
                used += (size_t)nl + (size_t)vl + 2;
            }
        }
        p = amp ? amp + 1 : end;
    }
    return n;
}

const sb_str *sb_oauth_form_get(const sb_oauth_param *params, int n, const char *name)
{
    size_t l = strlen(name);
    for (int i = 0; i < n; i++)
        if (params[i].name.len == l && memcmp(params[i].name.base, name, l) == 0)
            return &params[i].value;
    return NULL;
}

int sb_oauth_basic_decode(sb_str header, char *scratch, size_t cap, sb_str *id, sb_str *secret)
{
    const char *v = header.base;
    size_t len = header.len;
    if (len < 6 || !sb_str_case_eq((sb_str){v, 6}, "basic "))
        return SB_ENOENT;
    v += 6;
    len -= 6;
    while (len && *v == ' ') {
        v++;
        len--;
    }
    while (len && v[len - 1] == ' ')
        len--;
    if (cap < len + 2)
        return SB_EMSGSIZE;
    /* The raw credentials go to the top of scratch, the decoded parts to the bottom: each
     * decoded part is never longer than its source, so they cannot overlap harmfully. */
    unsigned char *raw = (unsigned char *)scratch + (cap - len);
    size_t rl;
    int rc = sb_jose_b64_decode(v, len, raw, len, &rl);
    if (rc)
        return rc;
    const unsigned char *colon = memchr(raw, ':', rl);
    if (!colon || colon == raw || memchr(raw, '\0', rl))
        return SB_EINVAL;
    size_t il = (size_t)(colon - raw);
    int a = form_decode((const char *)raw, il, scratch);
    if (a <= 0)
        return SB_EINVAL;
    char *s = scratch + a + 1;
    int b = form_decode((const char *)colon + 1, rl - il - 1, s);
    if (b < 0)
        return SB_EINVAL;
    *id = (sb_str){scratch, (size_t)a};
    *secret = (sb_str){s, (size_t)b};
    return 0;
}
