/*
 * TLS server contexts (OpenSSL 3) and the BIO that joins an SSL object to a connection.
 *
 * Policy is Mozilla "intermediate": TLS 1.2 and 1.3 only; for 1.2, ECDHE/DHE with AES-GCM or
 * ChaCha20-Poly1305; groups X25519, P-256, P-384; no compression, no renegotiation. The
 * server-side session cache is off (it takes a lock per handshake); resumption uses session
 * tickets, whose keys are carried over when a context is rebuilt on reload so that clients
 * resume across certificate rotation.
 */
#ifndef SB_NET_TLS_H
#define SB_NET_TLS_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>

/* Builds a server context from PEM files. `previous` (may be NULL) donates its ticket keys.
 * Returns NULL with a reason in err (file, and OpenSSL's reason; never key material). */
SSL_CTX *sb_tls_ctx_new(const char *cert_file, const char *key_file, bool session_tickets,
                        SSL_CTX *previous, char *err, size_t errlen);

/*
 * Mutual TLS (tls.client_ca, tls.client_auth): mode "none" leaves ctx as it is; "optional"
 * asks for a client certificate and, if one is sent, requires it to chain to a CA in
 * ca_file; "require" also fails the handshake without one. The verified certificate's
 * SHA-256 is then on the connection (sb_conn.client_cert_sha256). Sets the session id
 * context, so that resumed sessions keep their client certificate. Returns 0, or -1 with a
 * reason in err.
 */
int sb_tls_ctx_set_client_auth(SSL_CTX *ctx, const char *mode, const char *ca_file, char *err,
                               size_t errlen);

/* The BIO method whose data pointer is an sb_conn: reads from conn->tls_in, writes to
 * conn->out. Created once; freed at exit by sb_tls_cleanup. */
BIO_METHOD *sb_tls_conn_bio_method(void);
void sb_tls_cleanup(void);

#endif
