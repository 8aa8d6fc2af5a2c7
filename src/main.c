/* The switchboard binary: configuration, the server, and nothing else. */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "switchboard/config.h"
#include "switchboard/error.h"
#include "switchboard/server.h"

#include "core/log.h"

extern char **environ;

typedef struct args {
    int argc;
    char **argv;
} args;

static int reload_config(sb_config *fresh, char *err, size_t errlen, void *ud)
{
    args *a = ud;
    sb_config_action action;
    return sb_config_load(fresh, a->argc, a->argv, environ, &action, err, errlen);
}

static void banner(const sb_config *cfg, sb_server *s)
{
    const char *ca = sb_server_dev_ca_path(s);
    printf("Switchboard %s%s\n", SB_VERSION, cfg->dev ? " development node" : "");
    for (int i = 0; i < sb_server_listener_count(s); i++)
        printf("  URL:     %s\n", sb_server_listener_url(s, i));
    const char *key = sb_server_generated_admin_key(s);
    if (key) {
        printf("  Admin key (shown once, stored hashed; keep it safe):\n    %s\n", key);
        if (ca)
            printf("  Try:     curl --cacert %s -H 'Authorization: Bearer %s' %s/v1/rooms\n", ca,
                   key, sb_server_listener_url(s, 0));
    }
    if (ca) {
        printf("  Dev CA:  %s\n", ca);
        printf("  Try:     curl --cacert %s %s/healthz\n", ca, sb_server_listener_url(s, 0));
    }
    fflush(stdout);
}

int main(int argc, char **argv)
{
    char err[512] = "";
    int rc;
    sb_config cfg;
    sb_config_action action = SB_CONFIG_RUN;
    signal(SIGPIPE, SIG_IGN);

    if (sb_config_load(&cfg, argc, argv, environ, &action, err, sizeof err) != 0) {
        fprintf(stderr, "switchboard: %s\n", err);
        sb_config_free(&cfg);
        return 2;
    }
    switch (action) {
    case SB_CONFIG_HELP:
        sb_config_print_help(stdout);
        sb_config_free(&cfg);
        return 0;
    case SB_CONFIG_VERSION:
        printf("switchboard %s\n", SB_VERSION);
        sb_config_free(&cfg);
        return 0;
    case SB_CONFIG_PRINT_DOCS:
        sb_config_print_docs(stdout);
        sb_config_free(&cfg);
        return 0;
    case SB_CONFIG_CHECK:
        rc = sb_server_check(&cfg, err, sizeof err);
        if (rc != 0)
            fprintf(stderr, "switchboard: %s\n", err);
        else
            printf("switchboard: configuration OK\n");
        sb_config_free(&cfg);
        return rc == 0 ? 0 : 1;
    case SB_CONFIG_RUN:
        break;
    }

    rc = sb_log_open(cfg.log_file, cfg.log_level);
    if (rc != 0) {
        fprintf(stderr, "switchboard: cannot open log.file %s: %s\n", cfg.log_file,
                sb_strerror(rc));
        sb_config_free(&cfg);
        return 1;
    }
    sb_server *s = NULL;
    if ((rc = sb_server_new(&s, &cfg, err, sizeof err)) != 0) {
        sb_log(SB_LOG_ERROR, "cannot start", "reason", err, NULL);
        fprintf(stderr, "switchboard: %s\n", err);
        sb_config_free(&cfg);
        return 1;
    }
    args a = {argc, argv};
    sb_server_set_reload(s, reload_config, &a);
    banner(&cfg, s);
    rc = sb_server_run(s);
    sb_server_free(s);
    sb_log_close(); /* drains access-log lines still queued for the writer thread */
    sb_config_free(&cfg);
    return rc == 0 ? 0 : 1;
}
