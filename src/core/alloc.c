#include "core/alloc.h"

#include <stdlib.h>
#include <string.h>

static void *libc_malloc(size_t size, void *ud)
{
    (void)ud;
    return malloc(size);
}

static void *libc_realloc(void *ptr, size_t size, void *ud)
{
    (void)ud;
    return realloc(ptr, size);
}

static void libc_free(void *ptr, void *ud)
{
    (void)ud;
    free(ptr);
}

static const sb_allocator libc_allocator = {libc_malloc, libc_realloc, libc_free, NULL};
static sb_allocator current = {libc_malloc, libc_realloc, libc_free, NULL};

void sb_alloc_set(const sb_allocator *a)
{
    current = a ? *a : libc_allocator;
}

void *sb_malloc(size_t size)
{
    return current.malloc(size ? size : 1, current.ud);
}

void *sb_calloc(size_t n, size_t size)
{
    if (size && n > (size_t)-1 / size)
        return NULL;
    void *p = sb_malloc(n * size);
    if (p)
        memset(p, 0, n * size);
    return p;
}

void *sb_realloc(void *ptr, size_t size)
{
    return current.realloc(ptr, size ? size : 1, current.ud);
}

void sb_free(void *ptr)
{
    if (ptr)
        current.free(ptr, current.ud);
}

char *sb_strndup(const char *s, size_t n)
{
    char *d = sb_malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

char *sb_strdup(const char *s)
{
    return sb_strndup(s, strlen(s));
}
