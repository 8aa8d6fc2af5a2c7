/*
 * The Switchboard server: listeners, one event loop per worker thread, signals.
 *
 *   sb_server *s;
 *   sb_server_new(&s, &cfg, err, sizeof err);   // validates, loads TLS material, binds
 *   sb_server_run(s);                           // blocks until SIGTERM/SIGINT drained
 *   sb_server_free(s);
 *
 * The server keeps a pointer to cfg: the caller must keep it alive and unchanged until
 * sb_server_free. On SIGHUP the server calls the reload callback (if set) for a freshly
 * loaded config, applies what can change live (TLS certificate and key, timeouts, log
 * level, access logs) and logs each other key that changed as needing a restart; a
 * configuration or certificate that fails to load leaves the running one in place.
 */
#ifndef SWITCHBOARD_SERVER_H
#define SWITCHBOARD_SERVER_H

#include <stddef.h>

#include "switchboard/common.h"
#include "switchboard/config.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sb_server sb_server;

/* Loads a fresh config into *fresh (which the server frees with sb_config_free). Returns 0
 * or an error with err filled. */
typedef int (*sb_server_reload_fn)(sb_config *fresh, char *err, size_t errlen, void *ud);

SB_EXPORT int sb_server_new(sb_server **out, const sb_config *cfg, char *err, size_t errlen);
/* For --check-config: validates what sb_server_new would load (listener addresses, TLS
 * certificate and key) without binding or writing anything. */
SB_EXPORT int sb_server_check(const sb_config *cfg, char *err, size_t errlen);

SB_EXPORT void sb_server_set_reload(sb_server *s, sb_server_reload_fn fn, void *ud);

/* Number of bound listeners, and the base URL of the i-th ("https://127.0.0.1:8443"), with
 * the actual port when 0 was asked for. */
SB_EXPORT int sb_server_listener_count(const sb_server *s);
SB_EXPORT const char *sb_server_listener_url(const sb_server *s, int i);

/* With --dev and no configured certificate: the development CA's path; otherwise NULL. */
SB_EXPORT const char *sb_server_dev_ca_path(const sb_server *s);

/* The bootstrap admin API key when this start generated it (first start without
 * SWITCHBOARD_ADMIN_KEY): shown once, never stored in clear. Otherwise NULL. */
SB_EXPORT const char *sb_server_generated_admin_key(const sb_server *s);

/* Starts the worker loops and runs until a SIGTERM or SIGINT has drained every connection
 * (bounded by shutdown.drain_timeout). Returns 0, or a negative error if it could not start. */
SB_EXPORT int sb_server_run(sb_server *s);

SB_EXPORT void sb_server_free(sb_server *s);

#ifdef __cplusplus
}
#endif

#endif
