/*
 * Internals of the config module: the key table and the table-driven loader.
 *
 * sb_config_load is a thin wrapper: it runs sb__config_load_table over sb__config_keys with
 * an sb_config as the target, then checks the rules that span several keys. The loader knows
 * nothing about sb_config itself, so unit tests can drive it with a table and struct of their
 * own (for example to check that a `secret` key's value never appears in an error message).
 */
#ifndef SB_CONFIG_CONFIG_TABLE_H
#define SB_CONFIG_CONFIG_TABLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "switchboard/config.h"

/* The C type each kind of key is stored in, checked at compile time by SB__CFG_FIELD. */
typedef enum sb__config_type {
    SB__CFG_BOOL,      /* bool */
    SB__CFG_INT,       /* int, within [min, max] */
    SB__CFG_STRING,    /* char *, owned; min/max bound the length when max > 0 */
    SB__CFG_LISTEN,    /* char *, a listener list that sb_config_parse_listen accepts */
    SB__CFG_DURATION,  /* int64_t milliseconds, within [min, max] */
    SB__CFG_SIZE,      /* size_t bytes, within [min, max] */
    SB__CFG_COUNT,     /* size_t, a plain number within [min, max] */
    SB__CFG_LOG_LEVEL, /* sb_log_level */
} sb__config_type;

#define SB__CFG_RELOADABLE 0x1u /* takes effect on SIGHUP without a restart */
#define SB__CFG_SECRET     0x2u /* the value is never written into messages or docs */

typedef struct sb__config_key {
    const char *name; /* dotted, lower case: "http.max_body_bytes" */
    sb__config_type type;
    const char *def; /* default, as text; parsed exactly like user input */
    size_t offset;   /* of the field in the target struct */
    int64_t min, max;
    unsigned flags;   /* SB__CFG_* */
    const char *arg;  /* placeholder in --help ("PATH"); NULL: by type */
    const char *help; /* one line */
} sb__config_key;

typedef struct sb__config_table {
    const sb__config_key *keys;
    size_t nkeys;
    /* SWITCHBOARD_* environment variables that are not keys but are read elsewhere; any
     * other unknown SWITCHBOARD_* variable is an error. NULL-terminated, may be NULL. */
    const char *const *env_allow;
} sb__config_table;

/* offsetof(S, field), failing to compile unless the field has type T. */
#define SB__CFG_FIELD(S, T, field)                                                                 \
    (offsetof(S, field) + 0 * sizeof(_Generic(((S *)0)->field, T : 1)))

/* Switchboard's keys. */
extern const sb__config_table sb__config_keys;

/* The environment variable prefix and the length of the longest names the loader handles. */
#define SB__CFG_ENV_PREFIX "SWITCHBOARD_"
#define SB__CFG_NAME_MAX   96

/*
 * Loads `base` (a struct laid out as the table says; zero it first) from the table's
 * defaults, the YAML file named by --config, the environment and argv, in that order of
 * precedence. *config_file receives a copy of the --config argument (or stays NULL). For
 * --help, --version and --print-config-docs only the defaults are loaded and argv errors
 * are ignored. Returns 0, SB_ECONFIG or SB_ENOMEM with one line in err. The caller frees
 * with sb__config_free_table (and *config_file with sb_free) in all cases.
 */
int sb__config_load_table(const sb__config_table *t, void *base, char **config_file, int argc,
                          char **argv, char **envp, sb_config_action *action, char *err,
                          size_t errlen);

void sb__config_free_table(const sb__config_table *t, void *base);

/* Parses `value` for the key named `name` and stores it. `where` prefixes the error
 * message ("config.yaml:3: http.max_body_bytes", "--workers"). */
int sb__config_set(const sb__config_table *t, void *base, const char *name, const char *value,
                   const char *where, char *err, size_t errlen);

/* Writes the environment variable name of `key` into out ("SWITCHBOARD_HTTP_MAX_BODY_BYTES"). */
void sb__config_env_name(const char *key, char *out, size_t outlen);

void sb__config_print_help_table(const sb__config_table *t, FILE *f);
void sb__config_print_docs_table(const sb__config_table *t, FILE *f);

#endif
