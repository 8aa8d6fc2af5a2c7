/*
 * Development certificates for `--dev`.
 *
 * sb_devcert_ensure makes sure DIR/tls/ca.pem, DIR/tls/ca.key, DIR/tls/server.pem and
 * DIR/tls/server.key exist: a development CA (ECDSA P-256, 10 years, basicConstraints CA,
 * keyUsage keyCertSign+cRLSign, subject "CN=Switchboard Development CA") and a server
 * certificate issued by it (ECDSA P-256, 825 days, SAN DNS:localhost, IP:127.0.0.1, IP:::1,
 * extendedKeyUsage serverAuth, keyUsage digitalSignature, random 159-bit serial). Existing
 * files are reused as they are, so clients keep trusting the same CA across restarts; a
 * server certificate that expires within 30 days, does not verify against the CA, or does not
 * match its key is re-issued. Keys are written 0600, directories 0700, atomically (temp file
 * + rename). Returns 0 or a negative SB_E* code with a reason in err.
 */
#ifndef SWITCHBOARD_DEVCERT_H
#define SWITCHBOARD_DEVCERT_H

#include <stddef.h>

#include "switchboard/common.h"

#ifdef __cplusplus
extern "C" {
#endif

SB_EXPORT int sb_devcert_ensure(const char *data_dir, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif
