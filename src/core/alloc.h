/*
 * The one allocation hook. All heap memory in libswitchboard goes through sb_malloc,
 * sb_calloc, sb_realloc and sb_free so that tests can make the N-th allocation fail and
 * check that every caller turns that into SB_ENOMEM with nothing leaked.
 */
#ifndef SB_CORE_ALLOC_H
#define SB_CORE_ALLOC_H

#include <stddef.h>

typedef struct sb_allocator {
    void *(*malloc)(size_t size, void *ud);
    void *(*realloc)(void *ptr, size_t size, void *ud);
    void (*free)(void *ptr, void *ud);
    void *ud;
} sb_allocator;

/* Replaces the allocator (NULL restores the libc one). Not thread-safe: call it before any
 * thread of libswitchboard runs, as tests do. */
void sb_alloc_set(const sb_allocator *a);

void *sb_malloc(size_t size);
void *sb_calloc(size_t n, size_t size); /* overflow-checked; zeroed */
void *sb_realloc(void *ptr, size_t size);
void sb_free(void *ptr);
char *sb_strdup(const char *s);
char *sb_strndup(const char *s, size_t n);

#endif
