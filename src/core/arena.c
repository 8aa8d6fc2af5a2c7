#include "core/arena.h"

#include <stdint.h>
#include <string.h>

#include "core/alloc.h"

struct sb_arena_block {
    sb_arena_block *next;
    size_t cap;
    _Alignas(16) char data[];
};

void sb_arena_init(sb_arena *a, void *first, size_t first_cap, size_t max)
{
    a->first = a->base = first;
    a->first_cap = a->cap = first_cap;
    a->used = 0;
    a->extra = NULL;
    a->total = first_cap;
    a->max = max;
}

void *sb_arena_alloc(sb_arena *a, size_t size)
{
    size_t off = (a->used + 15) & ~(size_t)15;
    if (a->base && off <= a->cap && size <= a->cap - off) {
        a->used = off + size;
        return a->base + off;
    }
    size_t cap = size > 8192 ? size : 8192;
    if (cap > a->max || a->total > a->max - cap)
        return NULL;
    sb_arena_block *b = sb_malloc(sizeof *b + cap);
    if (!b)
        return NULL;
    b->next = a->extra;
    b->cap = cap;
    a->extra = b;
    a->total += cap;
    a->base = b->data;
    a->cap = cap;
    a->used = size;
    return b->data;
}

char *sb_arena_strndup(sb_arena *a, const char *s, size_t n)
{
    char *d = sb_arena_alloc(a, n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

void sb_arena_reset(sb_arena *a)
{
    while (a->extra) {
        sb_arena_block *n = a->extra->next;
        sb_free(a->extra);
        a->extra = n;
    }
    a->base = a->first;
    a->cap = a->first_cap;
    a->used = 0;
    a->total = a->first_cap;
}
