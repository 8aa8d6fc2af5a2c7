#include "core/sha256.h"

#include <openssl/evp.h>
#include <pthread.h>
#include <stdbool.h>

#include "switchboard/error.h"

static pthread_once_t once = PTHREAD_ONCE_INIT;
static EVP_MD *sha256;
static pthread_key_t ctx_key;
static bool key_ok;

static void ctx_free(void *c)
{
    EVP_MD_CTX_free(c);
}

static void init(void)
{
    sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    key_ok = pthread_key_create(&ctx_key, ctx_free) == 0;
}

/* This thread's context, made at its first digest and freed when the thread ends. */
static EVP_MD_CTX *thread_ctx(void)
{
    EVP_MD_CTX *c = pthread_getspecific(ctx_key);
    if (c)
        return c;
    c = EVP_MD_CTX_new();
    if (c && pthread_setspecific(ctx_key, c) != 0) {
        EVP_MD_CTX_free(c);
        return NULL;
    }
    return c;
}

int sb_sha256(const void *data, size_t len, unsigned char out[32])
{
    pthread_once(&once, init);
    if (!sha256 || !key_ok)
        return SB_ETLS;
    EVP_MD_CTX *c = thread_ctx();
    if (!c)
        return SB_ENOMEM;
    unsigned int n = 0;
    if (EVP_DigestInit_ex(c, sha256, NULL) != 1 || EVP_DigestUpdate(c, data, len) != 1 ||
        EVP_DigestFinal_ex(c, out, &n) != 1 || n != 32)
        return SB_ETLS;
    return 0;
}
