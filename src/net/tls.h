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

/* The BIO method whose data pointer is an sb_conn: reads from conn->tls_in, writes to
 * conn->out. Created once; freed at exit by sb_tls_cleanup. */
BIO_METHOD *sb_tls_conn_bio_method(void);
void sb_tls_cleanup(void);

#endif
