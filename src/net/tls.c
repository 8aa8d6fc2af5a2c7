#include "net/tls.h"

#include <openssl/err.h>
#include <pthread.h>
#include <stdio.h>

#include "core/log.h"
#include "net/conn.h"
#include "switchboard/error.h"

static const char tls12_ciphers[] =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305";
static const char tls13_suites[] =
    "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";
static const char groups[] = "X25519:P-256:P-384";

static void ssl_reason(char *err, size_t errlen, const char *what, const char *file)
{
    unsigned long e = ERR_get_error();
    char reason[256] = "unknown reason";
    if (e)
        ERR_error_string_n(e, reason, sizeof reason);
    ERR_clear_error();
    snprintf(err, errlen, "%s %s: %s", what, file, reason);
}

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    (void)ssl;
    (void)arg;
    /* Server preference: HTTP/2 when the client offers it (RFC 7301 §3.2). */
    static const unsigned char ours[] = "\x02h2\x08http/1.1";
    unsigned char *sel;
    if (SSL_select_next_proto(&sel, outlen, ours, sizeof ours - 1, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_ALERT_FATAL; /* RFC 7301 §3.2: no_application_protocol */
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

SSL_CTX *sb_tls_ctx_new(const char *cert_file, const char *key_file, bool session_tickets,
                        SSL_CTX *previous, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        ssl_reason(err, errlen, "creating TLS context", "");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_clear_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (!SSL_CTX_set_cipher_list(ctx, tls12_ciphers) ||
        !SSL_CTX_set_ciphersuites(ctx, tls13_suites) || !SSL_CTX_set1_groups_list(ctx, groups)) {
        ssl_reason(err, errlen, "setting TLS policy", "");
        goto fail;
    }
    SSL_CTX_set_dh_auto(ctx, 1);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    if (session_tickets) {
        SSL_CTX_set_num_tickets(ctx, 1);
        unsigned char keys[80];
        if (previous && SSL_CTX_get_tlsext_ticket_keys(previous, keys, sizeof keys) == 1)
            SSL_CTX_set_tlsext_ticket_keys(ctx, keys, sizeof keys);
        OPENSSL_cleanse(keys, sizeof keys);
    } else {
        SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
        SSL_CTX_set_num_tickets(ctx, 0);
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
        ssl_reason(err, errlen, "loading certificate", cert_file);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1) {
        ssl_reason(err, errlen, "loading private key", key_file);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        ssl_reason(err, errlen, "private key does not match certificate", cert_file);
        goto fail;
    }
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

/* The BIO: ciphertext in comes from the slice the read callback is processing, ciphertext
 * out is appended to the connection's output buffer. No copies through memory BIOs. */

static int bio_write(BIO *b, const char *data, int len)
{
    sb_conn *c = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (len <= 0)
        return 0;
    if (sb_buf_append(&c->out, data, (size_t)len) != 0)
        return -1;
    return len;
}

static int bio_read(BIO *b, char *data, int len)
{
    sb_conn *c = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (c->tls_in_len == 0) {
        BIO_set_retry_read(b);
        return -1;
    }
    size_t n = (size_t)len < c->tls_in_len ? (size_t)len : c->tls_in_len;
    memcpy(data, c->tls_in, n);
    c->tls_in += n;
    c->tls_in_len -= n;
    return (int)n;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)b;
    (void)num;
    (void)ptr;
    switch (cmd) {
    case BIO_CTRL_FLUSH:
        return 1;
    default:
        return 0;
    }
}

static int bio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static BIO_METHOD *conn_method;
static pthread_once_t conn_method_once = PTHREAD_ONCE_INIT;

static void make_method(void)
{
    conn_method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "switchboard conn");
    if (!conn_method)
        return;
    BIO_meth_set_write(conn_method, bio_write);
    BIO_meth_set_read(conn_method, bio_read);
    BIO_meth_set_ctrl(conn_method, bio_ctrl);
    BIO_meth_set_create(conn_method, bio_create);
}

BIO_METHOD *sb_tls_conn_bio_method(void)
{
    pthread_once(&conn_method_once, make_method);
    return conn_method;
}

void sb_tls_cleanup(void)
{
    if (conn_method)
        BIO_meth_free(conn_method);
    conn_method = NULL;
}
