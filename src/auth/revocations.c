#include "auth/revocations.h"

#include <openssl/evp.h>
#include <pthread.h>
#include <string.h>

#include "core/alloc.h"
#include "switchboard/error.h"

typedef struct entry {
    uint64_t k0, k1; /* digest of "project_id\0jti"; k0 == 0 && k1 == 0: empty slot */
    int64_t until_ms;
} entry;

struct sb_revocations {
    pthread_rwlock_t lock;
    entry *slots;
    size_t cap; /* power of two, or 0 */
    size_t used;
};

int sb_revocations_new(sb_revocations **out)
{
    sb_revocations *r = sb_calloc(1, sizeof *r);
    if (!r)
        return SB_ENOMEM;
    pthread_rwlock_init(&r->lock, NULL);
    *out = r;
    return 0;
}

void sb_revocations_free(sb_revocations *r)
{
    if (!r)
        return;
    pthread_rwlock_destroy(&r->lock);
    sb_free(r->slots);
    sb_free(r);
}

static void digest(const char *project_id, const char *jti, uint64_t *k0, uint64_t *k1)
{
    unsigned char md[32];
    unsigned int n = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    bool ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1 &&
              EVP_DigestUpdate(ctx, project_id, strlen(project_id) + 1) == 1 &&
              EVP_DigestUpdate(ctx, jti, strlen(jti)) == 1 && EVP_DigestFinal_ex(ctx, md, &n) == 1;
    EVP_MD_CTX_free(ctx);
    if (!ok) { /* cannot happen with the default provider; keep the key well-defined */
        memset(md, 0, sizeof md);
        md[0] = 1;
    }
    memcpy(k0, md, 8);
    memcpy(k1, md + 8, 8);
    if (*k0 == 0 && *k1 == 0)
        *k1 = 1;
}

static entry *find(entry *slots, size_t cap, uint64_t k0, uint64_t k1)
{
    size_t i = (size_t)k0 & (cap - 1);
    for (;;) {
        entry *e = &slots[i];
        if ((e->k0 == k0 && e->k1 == k1) || (e->k0 == 0 && e->k1 == 0))
            return e;
        i = (i + 1) & (cap - 1);
    }
}

/* Rebuilds into `cap` slots, dropping expired entries. */
static int rebuild(sb_revocations *r, size_t cap, int64_t now_ms)
{
    entry *slots = sb_calloc(cap, sizeof *slots);
    if (!slots)
        return SB_ENOMEM;
    size_t used = 0;
    for (size_t i = 0; i < r->cap; i++) {
        entry *e = &r->slots[i];
        if ((e->k0 || e->k1) && e->until_ms > now_ms) {
            *find(slots, cap, e->k0, e->k1) = *e;
            used++;
        }
    }
    sb_free(r->slots);
    r->slots = slots;
    r->cap = cap;
    r->used = used;
    return 0;
}

int sb_revocations_add(sb_revocations *r, const char *project_id, const char *jti, int64_t until_ms,
                       int64_t now_ms)
{
    if (!jti[0])
        return 0;
    uint64_t k0, k1;
    digest(project_id, jti, &k0, &k1);
    int rc = 0;
    pthread_rwlock_wrlock(&r->lock);
    /* Keep the load under 1/2; expired entries go first, then the table grows. */
    if ((r->used + 1) * 2 > r->cap) {
        size_t cap = r->cap ? r->cap : 64;
        rc = rebuild(r, cap, now_ms);
        while (rc == 0 && (r->used + 1) * 2 > r->cap) {
            if (r->used >= SB_REVOCATIONS_MAX) {
                rc = SB_EAGAIN;
                break;
            }
            rc = rebuild(r, r->cap * 2, now_ms);
        }
    }
    if (rc == 0) {
        entry *e = find(r->slots, r->cap, k0, k1);
        if (e->k0 == 0 && e->k1 == 0) {
            e->k0 = k0;
            e->k1 = k1;
            e->until_ms = until_ms;
            r->used++;
        } else if (e->until_ms < until_ms) {
            e->until_ms = until_ms;
        }
    }
    pthread_rwlock_unlock(&r->lock);
    return rc;
}

bool sb_revocations_has(sb_revocations *r, const char *project_id, const char *jti, int64_t now_ms)
{
    if (!jti[0])
        return false;
    pthread_rwlock_rdlock(&r->lock);
    bool empty = r->used == 0;
    pthread_rwlock_unlock(&r->lock);
    if (empty)
        return false; /* the usual case: no hashing at all */
    uint64_t k0, k1;
    digest(project_id, jti, &k0, &k1);
    pthread_rwlock_rdlock(&r->lock);
    bool hit = false;
    if (r->cap) {
        entry *e = find(r->slots, r->cap, k0, k1);
        hit = (e->k0 || e->k1) && e->until_ms > now_ms;
    }
    pthread_rwlock_unlock(&r->lock);
    return hit;
}

size_t sb_revocations_count(sb_revocations *r, int64_t now_ms)
{
    size_t n = 0;
    pthread_rwlock_rdlock(&r->lock);
    for (size_t i = 0; i < r->cap; i++)
        if ((r->slots[i].k0 || r->slots[i].k1) && r->slots[i].until_ms > now_ms)
            n++;
    pthread_rwlock_unlock(&r->lock);
    return n;
}
