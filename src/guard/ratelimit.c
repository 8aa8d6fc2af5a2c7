/*
 * GCRA rate limiter: a fixed-size hash table of keys (linear probing with backward-shift
 * deletion) plus a binary min-heap ordered by TAT, so that the entry to evict is always at
 * the heap's root. A check moves one entry's TAT forward, which is one sift-down.
 */
#include "guard/ratelimit.h"

#include <inttypes.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "switchboard/error.h"

#define NS_PER_S       1000000000ull
#define MAX_WINDOW_NS  (1ull << 62)
#define SNAP_TOLERANCE 1e-3 /* ns */

struct entry {
    uint64_t tat;
    uint32_t hash;
    uint32_t heap_pos;
    uint8_t keylen;
    char key[SB_RL_KEY_MAX];
};

struct sb_ratelimit {
    size_t cap;
    size_t count;
    uint32_t mask; /* index slots − 1 */
    uint64_t k0, k1;
    uint32_t *index; /* slot → entry number + 1; 0 is an empty slot */
    uint32_t *heap;  /* entry numbers, min-heap on tat */
    struct entry *ent;
};

/* ---- SipHash-2-4 (Aumasson and Bernstein), keyed so collisions cannot be planned ---- */

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                   \
    do {                                                                                           \
        v0 += v1;                                                                                  \
        v1 = ROTL(v1, 13);                                                                         \
        v1 ^= v0;                                                                                  \
        v0 = ROTL(v0, 32);                                                                         \
        v2 += v3;                                                                                  \
        v3 = ROTL(v3, 16);                                                                         \
        v3 ^= v2;                                                                                  \
        v0 += v3;                                                                                  \
        v3 = ROTL(v3, 21);                                                                         \
        v3 ^= v0;                                                                                  \
        v2 += v1;                                                                                  \
        v1 = ROTL(v1, 17);                                                                         \
        v1 ^= v2;                                                                                  \
        v2 = ROTL(v2, 32);                                                                         \
    } while (0)

static uint64_t siphash24(const void *in, size_t len, uint64_t k0, uint64_t k1)
{
    const unsigned char *p = in;
    uint64_t v0 = 0x736f6d6570736575ull ^ k0, v1 = 0x646f72616e646f6dull ^ k1;
    uint64_t v2 = 0x6c7967656e657261ull ^ k0, v3 = 0x7465646279746573ull ^ k1;
    uint64_t b = (uint64_t)len << 56;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t m = 0;
        for (int j = 0; j < 8; j++)
            m |= (uint64_t)p[i + (size_t)j] << (8 * j);
        v3 ^= m;
        SIPROUND;
        SIPROUND;
        v0 ^= m;
    }
    for (size_t j = 0; i + j < len; j++)
        b |= (uint64_t)p[i + j] << (8 * j);
    v3 ^= b;
    SIPROUND;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* ---- policy ---------------------------------------------------------------------- */

static int policy_params(const sb_rl_policy *p, uint64_t *T_out, uint64_t *tau_out)
{
    if (!p || p->burst < 1 || !isfinite(p->rate_per_second) || !(p->rate_per_second > 0))
        return SB_EINVAL;
    double q = 1e9 / p->rate_per_second;
    if (!(q < (double)MAX_WINDOW_NS))
        return SB_EINVAL;
    double fl = floor(q);
    uint64_t T = (uint64_t)fl;
    if (q - fl > 1.0 - SNAP_TOLERANCE)
        T++;
    if (T < 1 || T > MAX_WINDOW_NS / p->burst)
        return SB_EINVAL;
    *T_out = T;
    *tau_out = T * (p->burst - 1);
    return 0;
}

static uint64_t ceil_div(uint64_t a, uint64_t b)
{
    return a / b + (a % b != 0);
}

uint64_t sb_ratelimit_window_seconds(const sb_rl_policy *p)
{
    uint64_t T, tau;
    if (policy_params(p, &T, &tau) != 0)
        return 0;
    uint64_t w = ceil_div(tau + T, NS_PER_S);
    return w ? w : 1;
}

/* What both tables answer: ahead = how far the key was drained before this request, d =
 * how far it is drained after it (≥ 0: the stored TAT is never before now). */
static void result(sb_rl_result *out, const sb_rl_policy *p, uint64_t T, uint64_t tau, bool allowed,
                   uint64_t ahead, uint64_t d)
{
    out->allowed = allowed;
    out->limit = p->burst;
    out->remaining = d <= tau + T ? (uint32_t)((tau + T - d) / T) : 0;
    out->reset_ns = d;
    out->reset_seconds = ceil_div(d, NS_PER_S);
    out->retry_after_ns = allowed ? 0 : ahead - tau;
    out->retry_after_seconds = allowed ? 0 : ceil_div(ahead - tau, NS_PER_S);
}

/* ---- table ----------------------------------------------------------------------- */

int sb_ratelimit_new(size_t capacity, uint64_t seed, sb_ratelimit **out)
{
    *out = NULL;
    if (capacity < 1 || capacity > SB_RL_CAPACITY_MAX)
        return SB_ERANGE;
    size_t slots = 4;
    while (slots < capacity * 2)
        slots *= 2;

    sb_ratelimit *rl = sb_calloc(1, sizeof *rl);
    if (!rl)
        goto fail_rl;
    rl->index = sb_calloc(slots, sizeof *rl->index);
    if (!rl->index)
        goto fail_index;
    rl->heap = sb_calloc(capacity, sizeof *rl->heap);
    if (!rl->heap)
        goto fail_heap;
    rl->ent = sb_calloc(capacity, sizeof *rl->ent);
    if (!rl->ent)
        goto fail_ent;
    rl->cap = capacity;
    rl->mask = (uint32_t)(slots - 1);
    rl->k0 = splitmix64(&seed);
    rl->k1 = splitmix64(&seed);
    *out = rl;
    return 0;

fail_ent:
    sb_free(rl->heap);
fail_heap:
    sb_free(rl->index);
fail_index:
    sb_free(rl);
fail_rl:
    return SB_ENOMEM;
}

void sb_ratelimit_free(sb_ratelimit *rl)
{
    if (!rl)
        return;
    sb_free(rl->ent);
    sb_free(rl->heap);
    sb_free(rl->index);
    sb_free(rl);
}

size_t sb_ratelimit_size(const sb_ratelimit *rl)
{
    return rl->count;
}

static void heap_set(sb_ratelimit *rl, size_t pos, uint32_t e)
{
    rl->heap[pos] = e;
    rl->ent[e].heap_pos = (uint32_t)pos;
}

static void heap_fix(sb_ratelimit *rl, size_t pos)
{
    uint32_t e = rl->heap[pos];
    uint64_t tat = rl->ent[e].tat;
    while (pos > 0) {
        size_t parent = (pos - 1) / 2;
        if (rl->ent[rl->heap[parent]].tat <= tat)
            break;
        heap_set(rl, pos, rl->heap[parent]);
        pos = parent;
    }
    for (;;) {
        size_t c = 2 * pos + 1;
        if (c >= rl->count)
            break;
        if (c + 1 < rl->count && rl->ent[rl->heap[c + 1]].tat < rl->ent[rl->heap[c]].tat)
            c++;
        if (rl->ent[rl->heap[c]].tat >= tat)
            break;
        heap_set(rl, pos, rl->heap[c]);
        pos = c;
    }
    heap_set(rl, pos, e);
}

/* The slot holding the key, or the empty slot where it would go. */
static uint32_t find_slot(const sb_ratelimit *rl, const char *key, size_t keylen, uint32_t hash)
{
    uint32_t i = hash & rl->mask;
    for (;; i = (i + 1) & rl->mask) {
        uint32_t v = rl->index[i];
        if (v == 0)
            return i;
        const struct entry *e = &rl->ent[v - 1];
        if (e->hash == hash && e->keylen == keylen && memcmp(e->key, key, keylen) == 0)
            return i;
    }
}

static void index_remove(sb_ratelimit *rl, uint32_t slot)
{
    uint32_t hole = slot;
    rl->index[hole] = 0;
    for (uint32_t j = (hole + 1) & rl->mask; rl->index[j] != 0; j = (j + 1) & rl->mask) {
        uint32_t home = rl->ent[rl->index[j] - 1].hash & rl->mask;
        /* The entry at j may fill the hole unless its home lies cyclically in (hole, j]. */
        bool stays = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
        if (!stays) {
            rl->index[hole] = rl->index[j];
            rl->index[j] = 0;
            hole = j;
        }
    }
}

/* Adds a key that is not in the table, evicting the smallest TAT if full. */
static void insert(sb_ratelimit *rl, const char *key, size_t keylen, uint32_t hash, uint64_t tat)
{
    uint32_t e;
    size_t pos;
    if (rl->count == rl->cap) {
        e = rl->heap[0];
        struct entry *old = &rl->ent[e];
        index_remove(rl, find_slot(rl, old->key, old->keylen, old->hash));
        pos = 0;
    } else {
        e = (uint32_t)rl->count;
        pos = rl->count++;
    }
    struct entry *n = &rl->ent[e];
    n->tat = tat;
    n->hash = hash;
    n->keylen = (uint8_t)keylen;
    memcpy(n->key, key, keylen);
    rl->index[find_slot(rl, key, keylen, hash)] = e + 1;
    heap_set(rl, pos, e);
    heap_fix(rl, pos);
}

int sb_ratelimit_check(sb_ratelimit *rl, const char *key, size_t keylen, const sb_rl_policy *p,
                       uint64_t now_ns, sb_rl_result *out)
{
    uint64_t T, tau;
    if (!key || keylen < 1 || keylen > SB_RL_KEY_MAX)
        return SB_EINVAL;
    int rc = policy_params(p, &T, &tau);
    if (rc != 0)
        return rc;

    uint32_t hash = (uint32_t)siphash24(key, keylen, rl->k0, rl->k1);
    uint32_t slot = find_slot(rl, key, keylen, hash);
    struct entry *e = rl->index[slot] ? &rl->ent[rl->index[slot] - 1] : NULL;

    uint64_t tat = e && e->tat > now_ns ? e->tat : now_ns;
    uint64_t ahead = tat - now_ns; /* how far the key is drained, in ns */
    bool allowed = ahead <= tau;
    uint64_t stored;
    if (allowed) {
        stored = tat > UINT64_MAX - T ? UINT64_MAX : tat + T;
        if (e) {
            e->tat = stored;
            heap_fix(rl, e->heap_pos);
        } else {
            insert(rl, key, keylen, hash, stored);
        }
    } else {
        stored = tat;
    }

    result(out, p, T, tau, allowed, ahead, stored - now_ns);
    return 0;
}

/* ---- the lock-free table shared by threads ------------------------------------------ */

#define SHARED_WINDOW 16 /* slots probed from a key's home slot */

struct shared_slot {
    _Atomic uint64_t tag; /* 0 = free; else the key's 64-bit keyed hash (never 0) */
    _Atomic uint64_t tat;
};

struct sb_ratelimit_shared {
    uint64_t mask;
    uint64_t k0, k1;
    struct shared_slot *slots;
};

int sb_ratelimit_shared_new(size_t capacity, uint64_t seed, sb_ratelimit_shared **out)
{
    *out = NULL;
    if (capacity < 1 || capacity > SB_RL_CAPACITY_MAX)
        return SB_ERANGE;
    size_t n = SHARED_WINDOW;
    while (n < capacity * 2)
        n *= 2;
    sb_ratelimit_shared *rl = sb_calloc(1, sizeof *rl);
    struct shared_slot *slots = rl ? sb_calloc(n, sizeof *slots) : NULL;
    if (!slots) {
        sb_free(rl);
        return SB_ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        atomic_init(&slots[i].tag, 0);
        atomic_init(&slots[i].tat, 0);
    }
    rl->slots = slots;
    rl->mask = n - 1;
    rl->k0 = splitmix64(&seed);
    rl->k1 = splitmix64(&seed);
    *out = rl;
    return 0;
}

void sb_ratelimit_shared_free(sb_ratelimit_shared *rl)
{
    if (!rl)
        return;
    sb_free(rl->slots);
    sb_free(rl);
}

/* The key's slot: its own, a free one claimed now, or one taken over from another key. */
static struct shared_slot *shared_slot_of(sb_ratelimit_shared *rl, uint64_t tag, uint64_t now)
{
    uint64_t home = tag & rl->mask;
    for (uint64_t i = 0; i < SHARED_WINDOW; i++) {
        struct shared_slot *s = &rl->slots[(home + i) & rl->mask];
        uint64_t t = atomic_load_explicit(&s->tag, memory_order_acquire);
        if (t == tag)
            return s;
        if (t == 0) {
            if (atomic_compare_exchange_strong_explicit(&s->tag, &t, tag, memory_order_acq_rel,
                                                        memory_order_acquire) ||
                t == tag)
                return s; /* a fresh slot's tat is 0: a full bucket */
        }
    }
    /* The window is full: take over the slot furthest from being limited. A slot whose TAT
     * is ≤ now is a full bucket, the same as an absent key, so nothing is lost; only when
     * every slot is drained does a key get a fresh burst, as in sb_ratelimit. */
    struct shared_slot *victim = NULL;
    uint64_t vtag = 0, vtat = UINT64_MAX;
    for (uint64_t i = 0; i < SHARED_WINDOW; i++) {
        struct shared_slot *s = &rl->slots[(home + i) & rl->mask];
        uint64_t tat = atomic_load_explicit(&s->tat, memory_order_relaxed);
        if (tat < vtat) {
            vtat = tat;
            victim = s;
            vtag = atomic_load_explicit(&s->tag, memory_order_acquire);
        }
    }
    if (vtag == tag)
        return victim;
    if (atomic_compare_exchange_strong_explicit(&victim->tag, &vtag, tag, memory_order_acq_rel,
                                                memory_order_acquire)) {
        if (vtat > now) /* it was drained: the new key starts full, as an absent key does */
            atomic_store_explicit(&victim->tat, 0, memory_order_release);
        return victim;
    }
    return vtag == tag ? victim : NULL; /* lost the race to another newcomer */
}

int sb_ratelimit_shared_check(sb_ratelimit_shared *rl, const char *key, size_t keylen,
                              const sb_rl_policy *p, uint64_t now_ns, sb_rl_result *out)
{
    uint64_t T, tau;
    if (!key || keylen < 1 || keylen > SB_RL_KEY_MAX)
        return SB_EINVAL;
    int rc = policy_params(p, &T, &tau);
    if (rc != 0)
        return rc;
    uint64_t tag = siphash24(key, keylen, rl->k0, rl->k1);
    tag = tag ? tag : 1;
    struct shared_slot *s = shared_slot_of(rl, tag, now_ns);
    for (int i = 0; !s && i < 4; i++)
        s = shared_slot_of(rl, tag, now_ns);
    if (!s)
        return SB_EAGAIN; /* contention on every slot of the window: the caller allows */

    uint64_t seen = atomic_load_explicit(&s->tat, memory_order_acquire);
    uint64_t tat, ahead, stored;
    bool allowed;
    for (;;) {
        tat = seen > now_ns ? seen : now_ns;
        ahead = tat - now_ns;
        allowed = ahead <= tau;
        if (!allowed) {
            stored = tat;
            break;
        }
        stored = tat > UINT64_MAX - T ? UINT64_MAX : tat + T;
        /* One CAS on the 64-bit TAT: of two racing requests exactly one moves it; the other
         * retries against the new value, so no request is counted twice or lost. */
        if (atomic_compare_exchange_weak_explicit(&s->tat, &seen, stored, memory_order_acq_rel,
                                                  memory_order_acquire))
            break;
    }
    result(out, p, T, tau, allowed, ahead, stored - now_ns);
    return 0;
}

int sb__ratelimit_tat(const sb_ratelimit *rl, const char *key, size_t keylen, uint64_t *tat_ns)
{
    if (!key || keylen < 1 || keylen > SB_RL_KEY_MAX)
        return SB_EINVAL;
    uint32_t hash = (uint32_t)siphash24(key, keylen, rl->k0, rl->k1);
    uint32_t v = rl->index[find_slot(rl, key, keylen, hash)];
    if (v == 0)
        return SB_ENOENT;
    *tat_ns = rl->ent[v - 1].tat;
    return 0;
}

/* ---- RateLimit header fields (draft-ietf-httpapi-ratelimit-headers-08) ------------- */

int sb_ratelimit_format_headers(const sb_rl_result *r, const sb_rl_policy *p, char *policy,
                                size_t policy_cap, char *ratelimit, size_t ratelimit_cap)
{
    uint64_t w = sb_ratelimit_window_seconds(p);
    if (w == 0)
        return SB_EINVAL;
    int n = snprintf(policy, policy_cap, "\"default\";q=%" PRIu32 ";w=%" PRIu64, p->burst, w);
    if (n < 0 || (size_t)n >= policy_cap)
        return SB_EMSGSIZE;
    n = snprintf(ratelimit, ratelimit_cap, "\"default\";r=%" PRIu32 ";t=%" PRIu64, r->remaining,
                 r->reset_seconds);
    if (n < 0 || (size_t)n >= ratelimit_cap)
        return SB_EMSGSIZE;
    return 0;
}
