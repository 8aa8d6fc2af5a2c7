#include "auth/jti_set.h"

#include <pthread.h>
#include <string.h>

#include "core/alloc.h"
#include "core/sha256.h"
#include "switchboard/error.h"

/* Open addressing with linear probing, at most 3/4 full; when full of entries, a rebuild
 * drops the expired ones. Removal happens only in rebuilds, so probes never meet tombstones. */
typedef struct slot {
    unsigned char h[16]; /* SHA-256 of the jti, truncated */
    int64_t exp;         /* 0 = free */
} slot;

struct sb_jti_set {
    pthread_mutex_t lock;
    size_t cap, nslots, count;
    slot *slots;
};

static void hash_of(const char *jti, unsigned char h[16])
{
    unsigned char d[32] = {0};
    (void)sb_sha256(jti, strlen(jti), d); /* on a failure (none seen) every jti shares a slot */
    memcpy(h, d, 16);
}

static slot *probe(slot *slots, size_t n, const unsigned char h[16])
{
    uint64_t v;
    memcpy(&v, h, sizeof v);
    size_t i = (size_t)(v % n);
    while (slots[i].exp != 0 && memcmp(slots[i].h, h, 16) != 0)
        i = (i + 1) % n;
    return &slots[i];
}

int sb_jti_set_new(size_t capacity, sb_jti_set **out)
{
    *out = NULL;
    if (capacity < 1 || capacity > ((size_t)1 << 24))
        return SB_ERANGE;
    sb_jti_set *s = sb_calloc(1, sizeof *s);
    if (!s)
        return SB_ENOMEM;
    s->cap = capacity;
    s->nslots = capacity * 4 / 3 + 2;
    s->slots = sb_calloc(s->nslots, sizeof *s->slots);
    if (!s->slots) {
        sb_free(s);
        return SB_ENOMEM;
    }
    pthread_mutex_init(&s->lock, NULL);
    *out = s;
    return 0;
}

void sb_jti_set_free(sb_jti_set *s)
{
    if (!s)
        return;
    pthread_mutex_destroy(&s->lock);
    sb_free(s->slots);
    sb_free(s);
}

static void sweep(sb_jti_set *s, int64_t now)
{
    slot *fresh = sb_calloc(s->nslots, sizeof *fresh);
    if (!fresh)
        return; /* keep the old table: still correct, only full */
    size_t n = 0;
    for (size_t i = 0; i < s->nslots; i++)
        if (s->slots[i].exp > now) {
            *probe(fresh, s->nslots, s->slots[i].h) = s->slots[i];
            n++;
        }
    sb_free(s->slots);
    s->slots = fresh;
    s->count = n;
}

int sb_jti_set_add(sb_jti_set *s, const char *jti, int64_t exp, int64_t now)
{
    if (exp <= now)
        return 0;
    unsigned char h[16];
    hash_of(jti, h);
    int rc = 0;
    pthread_mutex_lock(&s->lock);
    slot *e = probe(s->slots, s->nslots, h);
    if (e->exp != 0) {
        if (exp > e->exp)
            e->exp = exp;
        goto out;
    }
    if (s->count >= s->cap) {
        sweep(s, now);
        if (s->count >= s->cap) {
            rc = SB_EAGAIN;
            goto out;
        }
        e = probe(s->slots, s->nslots, h);
    }
    memcpy(e->h, h, 16);
    e->exp = exp;
    s->count++;
out:
    pthread_mutex_unlock(&s->lock);
    return rc;
}

bool sb_jti_set_contains(sb_jti_set *s, const char *jti)
{
    unsigned char h[16];
    hash_of(jti, h);
    pthread_mutex_lock(&s->lock);
    bool r = probe(s->slots, s->nslots, h)->exp != 0;
    pthread_mutex_unlock(&s->lock);
    return r;
}

size_t sb_jti_set_size(sb_jti_set *s)
{
    pthread_mutex_lock(&s->lock);
    size_t n = s->count;
    pthread_mutex_unlock(&s->lock);
    return n;
}
