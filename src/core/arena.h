/*
 * Per-request arena: many small allocations, one reset at the end of the request.
 *
 * The first block is provided by the owner (usually inline in a pooled request object), so
 * a request that stays within it never touches the heap. Further blocks come from sb_malloc
 * and are released by sb_arena_reset. `max` bounds the total so that no peer input can make
 * an arena grow without end; sb_arena_alloc returns NULL past it or when memory runs out.
 */
#ifndef SB_CORE_ARENA_H
#define SB_CORE_ARENA_H

#include <stddef.h>

typedef struct sb_arena_block sb_arena_block;

typedef struct sb_arena {
    char *base; /* current block */
    size_t used, cap;
    char *first; /* caller-provided first block */
    size_t first_cap;
    sb_arena_block *extra; /* heap blocks, newest first */
    size_t total, max;
} sb_arena;

void sb_arena_init(sb_arena *a, void *first, size_t first_cap, size_t max);
void *sb_arena_alloc(sb_arena *a, size_t size); /* 16-byte aligned */
char *sb_arena_strndup(sb_arena *a, const char *s, size_t n);
void sb_arena_reset(sb_arena *a); /* frees heap blocks, keeps the first */

#endif
