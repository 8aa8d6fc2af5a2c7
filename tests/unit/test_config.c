#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "config/config_table.h"
#include "core/alloc.h"
#include "switchboard/config.h"
#include "switchboard/error.h"

#define ERRLEN 512

/* ---- helpers ----------------------------------------------------------------------------- */

static int count_args(char **argv)
{
    int n = 0;
    while (argv[n])
        n++;
    return n;
}

/* Loads with argv = {"switchboard", ...} and the given environment (NULL = empty). */
#define LOAD(cfg, env, act, err, ...)                                                              \
    load_argv((cfg), (env), (act), (err), (char *[]){"switchboard", __VA_ARGS__, NULL})

static int load_argv(sb_config *cfg, char **env, sb_config_action *act, char *err, char **argv)
{
    return sb_config_load(cfg, count_args(argv), argv, env, act, err, ERRLEN);
}

/* Writes a temporary YAML file; the caller unlinks it and frees the path. */
static char *write_temp(const char *text)
{
    char *path = strdup("/tmp/sb-config-test-XXXXXX");
    assert_non_null(path);
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    size_t len = strlen(text);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    close(fd);
    return path;
}

static void remove_temp(char *path)
{
    unlink(path);
    free(path);
}

/* Loads a YAML file with --dev (so that validation passes) and returns the load result. */
static int load_yaml_text(sb_config *cfg, const char *text, char *err, char **path_out)
{
    char *path = write_temp(text);
    sb_config_action act;
    int r = LOAD(cfg, NULL, &act, err, "--dev", "--config", path);
    if (path_out)
        *path_out = path;
    else
        remove_temp(path);
    return r;
}

static void assert_contains(const char *haystack, const char *needle)
{
    if (!strstr(haystack, needle))
        fail_msg("expected \"%s\" in \"%s\"", needle, haystack);
}

static void assert_lacks(const char *haystack, const char *needle)
{
    if (strstr(haystack, needle))
        fail_msg("did not expect \"%s\" in \"%s\"", needle, haystack);
}

/* Sets one flag (with --dev) and expects success. */
static sb_config load_flag_ok(const char *flag)
{
    sb_config cfg;
    sb_config_action act;
    char err[ERRLEN];
    int r = LOAD(&cfg, NULL, &act, err, "--dev", (char *)flag);
    if (r != 0)
        fail_msg("%s: expected success, got %d: %s", flag, r, err);
    return cfg;
}

/* Sets one flag (with --dev) and expects SB_ECONFIG with `msg` in the message. */
static void load_flag_bad(const char *flag, const char *msg)
{
    sb_config cfg;
    sb_config_action act;
    char err[ERRLEN];
    int r = LOAD(&cfg, NULL, &act, err, "--dev", (char *)flag);
    if (r != SB_ECONFIG)
        fail_msg("%s: expected SB_ECONFIG, got %d", flag, r);
    assert_contains(err, msg);
    sb_config_free(&cfg);
}

static char *capture(void (*print)(FILE *))
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    print(f);
    fclose(f);
    return text;
}

/* ---- defaults and precedence ------------------------------------------------------------- */

static void test_defaults(void **state)
{
    (void)state;
    sb_config cfg = load_flag_ok("--dev");
    assert_true(cfg.dev);
    assert_string_equal(cfg.data_dir, "./var");
    assert_null(cfg.config_file);
    assert_int_equal(cfg.workers, 0);
    assert_string_equal(cfg.listen, "127.0.0.1:8443");
    assert_string_equal(cfg.plain_listen, "");
    assert_string_equal(cfg.tls_cert, "");
    assert_string_equal(cfg.tls_key, "");
    assert_true(cfg.tls_session_tickets);
    assert_int_equal(cfg.tls_handshake_timeout_ms, 10000);
    assert_int_equal(cfg.http_max_request_line, 8192);
    assert_int_equal(cfg.http_max_header_bytes, 32768);
    assert_int_equal(cfg.http_max_headers, 100);
    assert_int_equal(cfg.http_max_body_bytes, 1048576);
    assert_int_equal(cfg.http_header_timeout_ms, 10000);
    assert_int_equal(cfg.http_body_timeout_ms, 30000);
    assert_int_equal(cfg.http_idle_timeout_ms, 60000);
    assert_int_equal(cfg.http_write_timeout_ms, 30000);
    assert_int_equal(cfg.http_max_connections, 8192);
    assert_int_equal(cfg.http_max_pipelined, 32);
    assert_int_equal(cfg.shutdown_drain_timeout_ms, 10000);
    assert_int_equal(cfg.log_level, SB_LOG_INFO);
    assert_true(cfg.log_access);
    assert_string_equal(cfg.log_file, "");
    assert_true(cfg.metrics_enabled);
    sb_config_free(&cfg);
    sb_config_free(&cfg); /* idempotent */
}

static void test_defaults_need_cert_or_dev(void **state)
{
    (void)state;
    sb_config cfg;
    sb_config_action act;
    char err[ERRLEN];
    assert_int_equal(sb_config_load(&cfg, 0, NULL, NULL, &act, err, ERRLEN), SB_ECONFIG);
    assert_string_equal(err, "tls.cert and tls.key are required unless --dev");
    sb_config_free(&cfg);
}

static const char yaml_full[] = "# a comment\n"
                                "dev: true\n"
                                "data_dir: /tmp/sbdata\n"
                                "workers: 4\n"
                                "listen:\n"
                                "  - 127.0.0.1:9443\n"
                                "  - \"[::1]:9443\"\n"
                                "plain_listen: localhost:8080\n"
                                "tls:\n"
                                "  session_tickets: off\n"
                                "  handshake_timeout: 2s\n"
                                "http:\n"
                                "  max_body_bytes: 2MiB\n"
                                "  idle_timeout: 90s\n"
                                "  max_headers: 50\n"
                                "log: {level: debug, access: no}\n"
                                "log.file: ~\n"
                                "metrics.enabled: false\n"
                                "shutdown:\n"
                                "  drain_timeout: 0\n";

static void test_yaml_file(void **state)
{
    (void)state;
    sb_config cfg;
    char err[ERRLEN], *path;
    sb_config_action act;
    path = write_temp(yaml_full);
    int r = LOAD(&cfg, NULL, &act, err, "--config", path);
    if (r)
        fail_msg("%s", err);
    assert_int_equal(act, SB_CONFIG_RUN);
    assert_string_equal(cfg.config_file, path);
    assert_true(cfg.dev);
    assert_string_equal(cfg.data_dir, "/tmp/sbdata");
    assert_int_equal(cfg.workers, 4);
    assert_string_equal(cfg.listen, "127.0.0.1:9443,[::1]:9443");
    assert_string_equal(cfg.plain_listen, "localhost:8080");
    assert_false(cfg.tls_session_tickets);
    assert_int_equal(cfg.tls_handshake_timeout_ms, 2000);
    assert_int_equal(cfg.http_max_body_bytes, 2 * 1048576);
    assert_int_equal(cfg.http_idle_timeout_ms, 90000);
    assert_int_equal(cfg.http_max_headers, 50);
    assert_int_equal(cfg.log_level, SB_LOG_DEBUG);
    assert_false(cfg.log_access);
    assert_string_equal(cfg.log_file, "");
    assert_false(cfg.metrics_enabled);
    assert_int_equal(cfg.shutdown_drain_timeout_ms, 0);
    /* untouched keys keep their defaults */
    assert_int_equal(cfg.http_max_pipelined, 32);
    sb_config_free(&cfg);
    remove_temp(path);
}

static void test_yaml_empty_files(void **state)
{
    (void)state;
    static const char *const texts[] = {"", "# nothing\n", "---\n", "---\n...\n", "~\n"};
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        sb_config cfg;
        char err[ERRLEN];
        if (load_yaml_text(&cfg, texts[i], err, NULL))
            fail_msg("\"%s\": %s", texts[i], err);
        assert_int_equal(cfg.workers, 0);
        sb_config_free(&cfg);
    }
}

static void test_env_overrides_file(void **state)
{
    (void)state;
    sb_config cfg;
    char err[ERRLEN], *path;
    sb_config_action act;
    char *env[] = {"PATH=/usr/bin", "SWITCHBOARD_WORKERS=8", "SWITCHBOARD_LOG_LEVEL=warn",
                   "SWITCHBOARD_ADMIN_KEY=not-a-config-key-but-allowed", NULL};
    path = write_temp("workers: 4\nlog: {level: debug}\nhttp: {max_headers: 7}\n");
    int r = LOAD(&cfg, env, &act, err, "--dev", "--config", path);
    if (r)
        fail_msg("%s", err);
    assert_int_equal(cfg.workers, 8);
    assert_int_equal(cfg.log_level, SB_LOG_WARN);
    assert_int_equal(cfg.http_max_headers, 7);
    sb_config_free(&cfg);
    remove_temp(path);
}

static void test_flags_override_env(void **state)
{
    (void)state;
    sb_config cfg;
    char err[ERRLEN], *path;
    sb_config_action act;
    char *env[] = {"SWITCHBOARD_WORKERS=8", "SWITCHBOARD_HTTP_MAX_BODY_BYTES=5MiB",
                   "SWITCHBOARD_DEV=false", NULL};
    path = write_temp("workers: 4\ndata_dir: /from/file\n");
    int r = LOAD(&cfg, env, &act, err, "--workers", "2", "--dev", "--config", path,
                 "--http.max_body_bytes=3MiB", "--data-dir", "/from/flag");
    if (r)
        fail_msg("%s", err);
    assert_int_equal(cfg.workers, 2);
    assert_true(cfg.dev);
    assert_int_equal(cfg.http_max_body_bytes, 3 * 1048576);
    assert_string_equal(cfg.data_dir, "/from/flag");
    sb_config_free(&cfg);
    remove_temp(path);
}

static void test_flag_spellings(void **state)
{
    (void)state;
    sb_config cfg;
    char err[ERRLEN];
    sb_config_action act;
    int r = LOAD(&cfg, NULL, &act, err, "--dev", "--http.max-body-bytes", "4MiB",
                 "--http.max_request_line=1KiB", "--data_dir=/a", "--log.access=false",
                 "--tls.session-tickets", "--plain-listen=127.0.0.1:8080", "--workers", "-0",
                 "--http.max-pipelined", "+7");
    if (r)
        fail_msg("%s", err);
    assert_int_equal(cfg.http_max_body_bytes, 4 * 1048576);
    assert_int_equal(cfg.http_max_request_line, 1024);
    assert_string_equal(cfg.data_dir, "/a");
    assert_false(cfg.log_access);
    assert_true(cfg.tls_session_tickets);
    assert_string_equal(cfg.plain_listen, "127.0.0.1:8080");
    assert_int_equal(cfg.workers, 0);
    assert_int_equal(cfg.http_max_pipelined, 7);
    sb_config_free(&cfg);

    /* later flags win over earlier ones; --dev=false undoes --dev */
    r = LOAD(&cfg, NULL, &act, err, "--dev", "--workers=3", "--workers=5", "--dev=false");
    assert_int_equal(r, SB_ECONFIG);
    assert_false(cfg.dev);
    assert_int_equal(cfg.workers, 5);
    assert_string_equal(err, "tls.cert and tls.key are required unless --dev");
    sb_config_free(&cfg);
}

/* ---- value syntax ------------------------------------------------------------------------ */

static void test_durations(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        int64_t ms;
    } good[] = {{"250ms", 250}, {"10s", 10000}, {"5m", 300000}, {"1h", 3600000}, {"1500", 1500},
                {" 2s ", 2000}, {"3 s", 3000},  {"100ms", 100}, {"0h", -1},      {"60m", 3600000}};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        char flag[64];
        snprintf(flag, sizeof flag, "--http.idle-timeout=%s", good[i].text);
        if (good[i].ms < 0) {
            load_flag_bad(flag, "is out of range (100ms..1h)");
            continue;
        }
        sb_config cfg = load_flag_ok(flag);
        assert_int_equal(cfg.http_idle_timeout_ms, good[i].ms);
        sb_config_free(&cfg);
    }
    load_flag_bad("--http.idle-timeout=10x",
                  "--http.idle-timeout: \"10x\" is not a duration (an integer with unit ms, s, m "
                  "or h, e.g. 250ms, 10s)");
    load_flag_bad("--http.idle-timeout=s", "\"s\" is not a duration");
    load_flag_bad("--http.idle-timeout=", "\"\" is not a duration");
    load_flag_bad("--http.idle-timeout=-5s", "\"-5s\" is not a duration");
    load_flag_bad("--http.idle-timeout=1.5s", "\"1.5s\" is not a duration");
    load_flag_bad("--http.idle-timeout=10S", "\"10S\" is not a duration");
    load_flag_bad("--http.idle-timeout=2h", "--http.idle-timeout: \"2h\" is out of range "
                                            "(100ms..1h)");
    load_flag_bad("--http.idle-timeout=50ms", "\"50ms\" is out of range (100ms..1h)");
    load_flag_bad("--http.idle-timeout=99999999999999999999h", "is out of range");
    load_flag_bad("--http.idle-timeout=9999999999999999h", "is out of range");

    /* drain timeout may be 0 */
    sb_config cfg = load_flag_ok("--shutdown.drain-timeout=0");
    assert_int_equal(cfg.shutdown_drain_timeout_ms, 0);
    sb_config_free(&cfg);
}

static void test_sizes(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        size_t bytes;
    } good[] = {{"1MiB", 1048576},  {"1m", 1048576}, {"1M", 1048576},   {"64k", 65536},
                {"64KiB", 65536},   {"512", 512},    {"512B", 512},     {"1GiB", 1073741824},
                {"1g", 1073741824}, {"0", 0},        {"2 mib", 2097152}};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        char flag[64];
        snprintf(flag, sizeof flag, "--http.max-body-bytes=%s", good[i].text);
        sb_config cfg = load_flag_ok(flag);
        assert_int_equal(cfg.http_max_body_bytes, good[i].bytes);
        sb_config_free(&cfg);
    }
    load_flag_bad("--http.max-body-bytes=12XB",
                  "--http.max-body-bytes: \"12XB\" is not a size (an integer with unit B, KiB, "
                  "MiB or GiB, e.g. 64KiB)");
    load_flag_bad("--http.max-body-bytes=1MB", "\"1MB\" is not a size");
    load_flag_bad("--http.max-body-bytes=1.5MiB", "\"1.5MiB\" is not a size");
    load_flag_bad("--http.max-body-bytes=MiB", "\"MiB\" is not a size");
    load_flag_bad("--http.max-body-bytes=-1", "\"-1\" is not a size");
    load_flag_bad("--http.max-body-bytes=2GiB", "\"2GiB\" is out of range (0..1GiB)");
    load_flag_bad("--http.max-request-line=255", "\"255\" is out of range (256B..1MiB)");
    load_flag_bad("--http.max-header-bytes=1023", "\"1023\" is out of range (1KiB..1MiB)");
    load_flag_bad("--http.max-body-bytes=99999999999999999999", "is out of range");
}

static void test_bools(void **state)
{
    (void)state;
    static const char *const yes[] = {"true", "yes", "on", "1", "TRUE", "Yes"};
    static const char *const no[] = {"false", "no", "off", "0", "False", "OFF"};
    for (size_t i = 0; i < 6; i++) {
        char flag[64];
        snprintf(flag, sizeof flag, "--metrics.enabled=%s", no[i]);
        sb_config cfg = load_flag_ok(flag);
        assert_false(cfg.metrics_enabled);
        sb_config_free(&cfg);
        snprintf(flag, sizeof flag, "--metrics.enabled=%s", yes[i]);
        cfg = load_flag_ok(flag);
        assert_true(cfg.metrics_enabled);
        sb_config_free(&cfg);
    }
    load_flag_bad("--metrics.enabled=maybe",
                  "--metrics.enabled: \"maybe\" is not a boolean (true/false, yes/no, on/off, "
                  "1/0)");
    load_flag_bad("--metrics.enabled=", "\"\" is not a boolean");
    load_flag_bad("--metrics.enabled=2", "\"2\" is not a boolean");

    sb_config cfg;
    sb_config_action act;
    char err[ERRLEN];
    char *env[] = {"SWITCHBOARD_LOG_ACCESS=nope", NULL};
    assert_int_equal(LOAD(&cfg, env, &act, err, "--dev"), SB_ECONFIG);
    assert_string_equal(err, "SWITCHBOARD_LOG_ACCESS: \"nope\" is not a boolean (true/false, "
                             "yes/no, on/off, 1/0)");
    sb_config_free(&cfg);

    /* a bare bool flag does not take the next argument */
    assert_int_equal(LOAD(&cfg, NULL, &act, err, "--dev", "false"), SB_ECONFIG);
    assert_string_equal(err, "unexpected argument \"false\" (write --dev=false)");
    sb_config_free(&cfg);
}

static void test_ints_and_levels(void **state)
{
    (void)state;
    load_flag_bad("--workers=65", "--workers: \"65\" is out of range (0..64)");
    load_flag_bad("--workers=-1", "\"-1\" is out of range (0..64)");
    load_flag_bad("--workers=abc", "--workers: \"abc\" is not an integer");
    load_flag_bad("--workers=4x", "\"4x\" is not an integer");
    load_flag_bad("--workers=0x10", "\"0x10\" is not an integer");
    load_flag_bad("--http.max-connections=0", "\"0\" is out of range (1..65536)");
    load_flag_bad("--http.max-connections=65537", "out of range");
    load_flag_bad("--http.max-pipelined=1025", "\"1025\" is out of range (1..1024)");
    load_flag_bad("--http.max-headers=129", "\"129\" is out of range (1..128)");
    load_flag_bad("--http.max-headers=1k", "\"1k\" is not an integer");
    load_flag_bad("--workers=99999999999999999999999", "is out of range");

    static const struct {
        const char *text;
        sb_log_level level;
    } levels[] = {{"debug", SB_LOG_DEBUG},
                  {"info", SB_LOG_INFO},
                  {"warn", SB_LOG_WARN},
                  {"warning", SB_LOG_WARN},
                  {"ERROR", SB_LOG_ERROR}};
    for (size_t i = 0; i < sizeof levels / sizeof levels[0]; i++) {
        char flag[64];
        snprintf(flag, sizeof flag, "--log.level=%s", levels[i].text);
        sb_config cfg = load_flag_ok(flag);
        assert_int_equal(cfg.log_level, levels[i].level);
        sb_config_free(&cfg);
    }
    load_flag_bad("--log.level=verbose",
                  "--log.level: \"verbose\" is not a log level (debug, info, warn or error)");
}

static void test_value_escaping(void **state)
{
    (void)state;
    sb_config cfg;
    sb_config_action act;
    char err[ERRLEN];
    char *env[] = {"SWITCHBOARD_WORKERS=1\n\"2", NULL};
    assert_int_equal(LOAD(&cfg, env, &act, err, "--dev"), SB_ECONFIG);
    assert_string_equal(err, "SWITCHBOARD_WORKERS: \"1\\x0a\\\"2\" is not an integer");
    sb_config_free(&cfg);

    char long_value[300];
    memset(long_value, 'a', sizeof long_value - 1);
    long_value[sizeof long_value - 1] = '\0';
    char flag[320];
    snprintf(flag, sizeof flag, "--listen=%s", long_value);
    load_flag_bad(flag, "--listen: ");
}

/* ---- unknown keys ------------------------------------------------------------------------ */

static void test_unknown_flag(void **state)
{
    (void)state;
    sb_config cfg;
    sb_config_action act;
    char err[ERRLEN];
    assert_int_equal(LOAD(&cfg, NULL, &act, err, "--dev", "--workrs", "3"), SB_ECONFIG);
    assert_string_equal(err, "--workrs: unknown flag (did you mean --workers?)");
    sb_config_free(&cfg);

    assert_int_equal(LOAD(&cfg, NULL, &act, err, "--dev", "--http.max-bdy-bytes=1"), SB_ECONFIG);
    assert_string_equal(err,
                        "--http.max-bdy-bytes: unknown flag (did you mean --http.max-body-bytes?)");
    sb_config_free(&cfg);

    assert_int_equal(LOAD(&cfg, NULL, &act, err, "--dev", "--frobnicate"), SB_ECONFIG);
    assert_string_equal(err, "--frobnicate: unknown flag (see --help)");
    sb_config_free(&cfg);

    assert_int_equal(LOAD(&cfg, NULL, &act, err, "--dev", "-x"), SB_ECONFIG);
    assert_contains(err, "unexpected argument \"-x\"");
    sb_config_free(&cfg);

    assert_int_equal(LOAD(&cfg, NULL, &act, err, "--dev", "serve"), SB_ECONFIG);
    assert_string_equal(err, "unexpected argument \"serve\" (flags start with --; see --help)");
    sb_config_free(&cfg);

    assert_int_equal(LOAD(&cfg, NULL, &act, err, "--dev", "--"), SB_ECONFIG);
    sb_config_free(&cfg);

    assert_int_equal(LOAD(&cfg, NULL, &act, err, "--dev", "--workers"), SB_ECONFIG);
    assert_string_equal(err, "--workers: missing value");
    sb_config_free(&cfg);

    assert_int_equal(LOAD(&cfg, NULL, &act, err, "--listen", "--dev"), SB_ECONFIG);
    assert_string_equal(err, "--listen: missing value");
    sb_config_free(&cfg);

    assert_int_equal(LOAD(&cfg, NULL, &act, err, "--dev", "--config"), SB_ECONFIG);
    assert_string_equal(err, "--config: missing value");
    sb_config_free(&cfg);

    assert_int_equal(LOAD(&cfg, NULL, &act, err, "--dev", "--config="), SB_ECONFIG);
    assert_string_equal(err, "--config: missing value");
    sb_config_free(&cfg);

    assert_int_equal(LOAD(&cfg, NULL, &act, err, "--dev", "--check-config=yes"), SB_ECONFIG);
    assert_string_equal(err, "--check-config: takes no value");
    sb_config_free(&cfg);
}

static void test_unknown_env(void **state)
{
    (void)state;
    sb_config cfg;
    sb_config_action act;
    char err[ERRLEN];
    char *typo[] = {"HOME=/root", "SWITCHBOARD_HTTP_IDLE_TIMEOT=5s", NULL};
    assert_int_equal(LOAD(&cfg, typo, &act, err, "--dev"), SB_ECONFIG);
    assert_string_equal(err, "SWITCHBOARD_HTTP_IDLE_TIMEOT: unknown environment variable: no "
                             "config key has this name (did you mean "
                             "SWITCHBOARD_HTTP_IDLE_TIMEOUT?)");
    sb_config_free(&cfg);

    char *unrelated[] = {"SWITCHBOARD_COLOUR=blue", NULL};
    assert_int_equal(LOAD(&cfg, unrelated, &act, err, "--dev"), SB_ECONFIG);
    assert_string_equal(err, "SWITCHBOARD_COLOUR: unknown environment variable: no config key "
                             "has this name");
    sb_config_free(&cfg);

    /* allowed non-key variables, other prefixes and malformed entries are ignored */
    char *fine[] = {"SWITCHBOARD_ADMIN_KEY=0123456789abcdef0123456789abcdef",
                    "switchboard_workers=99",
                    "SWITCHBOARDWORKERS=99",
                    "SWITCHBOARD_WORKERS",
                    "SWITCHBOARD_HTTP_IDLE_TIMEOUT=2s",
                    NULL};
    if (LOAD(&cfg, fine, &act, err, "--dev"))
        fail_msg("%s", err);
    assert_int_equal(cfg.workers, 0);
    assert_int_equal(cfg.http_idle_timeout_ms, 2000);
    sb_config_free(&cfg);

    char *range[] = {"SWITCHBOARD_HTTP_IDLE_TIMEOUT=5h", NULL};
    assert_int_equal(LOAD(&cfg, range, &act, err, "--dev"), SB_ECONFIG);
    assert_string_equal(err, "SWITCHBOARD_HTTP_IDLE_TIMEOUT: \"5h\" is out of range (100ms..1h)");
    sb_config_free(&cfg);
}

static void expect_yaml_error(const char *text, const char *msg_after_path)
{
    sb_config cfg;
    char err[ERRLEN], *path, want[ERRLEN];
    int r = load_yaml_text(&cfg, text, err, &path);
    if (r != SB_ECONFIG)
        fail_msg("\"%s\": expected SB_ECONFIG, got %d", text, r);
    snprintf(want, sizeof want, "%s%s", path, msg_after_path);
    if (strcmp(err, want) != 0)
        fail_msg("\"%s\":\n  got  %s\n  want %s", text, err, want);
    sb_config_free(&cfg);
    remove_temp(path);
}

static void test_yaml_unknown_key(void **state)
{
    (void)state;
    expect_yaml_error("workers: 1\nhttp:\n  max_bdy_bytes: 1\n",
                      ":3: http.max_bdy_bytes: unknown key (did you mean http.max_body_bytes?)");
    expect_yaml_error("htp:\n  max_body_bytes: 1\n", ":1: htp: unknown key (did you mean http?)"
                                                     "");
    expect_yaml_error("colour: blue\n", ":1: colour: unknown key");
    expect_yaml_error("http:\n  max_body_bytes:\n    inner: 1\n",
                      ":3: http.max_body_bytes: expected a single value, not a mapping");
    expect_yaml_error("http: 5\n", ":1: http: is a section; expected a mapping of its keys");
}

static void test_yaml_values(void **state)
{
    (void)state;
    expect_yaml_error("http:\n  max_body_bytes: 12XB\n",
                      ":2: http.max_body_bytes: \"12XB\" is not a size (an integer with unit B, "
                      "KiB, MiB or GiB, e.g. 64KiB)");
    expect_yaml_error("\n\nworkers: 100\n", ":3: workers: \"100\" is out of range (0..64)");
    expect_yaml_error("workers:\n", ":1: workers: \"\" is not an integer");
    expect_yaml_error("workers: [1, 2]\n", ":1: workers: expected a single value, not a list "
                                           "(only listener keys take lists)");
    expect_yaml_error("listen:\n  - 127.0.0.1:1\n  - {a: 1}\n",
                      ":3: listen: list items must be single values");
    expect_yaml_error("listen:\n  - 127.0.0.1\n",
                      ":2: listen: \"127.0.0.1\": expected HOST:PORT (the port is required)");
    expect_yaml_error("workers: &n 1\nhttp: {max_pipelined: *n}\n",
                      ":2: http.max_pipelined: YAML aliases are not supported");

    sb_config cfg;
    char err[ERRLEN];
    if (load_yaml_text(&cfg, "plain_listen: []\nlog.file: \"null\"\ndata_dir: '~'\n", err, NULL))
        fail_msg("%s", err);
    assert_string_equal(cfg.plain_listen, "");
    assert_string_equal(cfg.log_file, "null");
    assert_string_equal(cfg.data_dir, "~");
    sb_config_free(&cfg);
}

static void test_yaml_duplicates(void **state)
{
    (void)state;
    expect_yaml_error("workers: 1\nworkers: 2\n", ":2: workers: duplicate key");
    expect_yaml_error("http: {max_headers: 1}\nhttp.max_headers: 2\n",
                      ":2: http.max_headers: duplicate key");
    expect_yaml_error("http.max_headers: 2\nhttp:\n  max_headers: 1\n",
                      ":3: http.max_headers: duplicate key");
    expect_yaml_error("http:\n  max_headers: 1\nhttp:\n  max_body_bytes: 2\n",
                      ":3: http: duplicate key");
}

static void test_yaml_syntax(void **state)
{
    (void)state;
    /* the syntax error wins even though an earlier value is also wrong */
    expect_yaml_error("workers: 100\nlisten: a: b\n",
                      ":2:10: YAML syntax error: mapping values are not allowed in this context");
    expect_yaml_error("workers: 2\nhttp:\n  max_headers: [1\n",
                      ":4:1: YAML syntax error: did not find expected ',' or ']' (while parsing "
                      "a flow sequence)");
    /* libyaml's wording varies between versions; the position does not */
    sb_config cfg;
    char err[ERRLEN];
    assert_int_equal(load_yaml_text(&cfg, "workers: 1\n\t bad: 2\n", err, NULL), SB_ECONFIG);
    assert_contains(err, ":2:1: YAML syntax error: ");
    sb_config_free(&cfg);
    expect_yaml_error("- a\n- b\n", ":1: the top level must be a mapping of config keys");
    expect_yaml_error("just text\n", ":1: the top level must be a mapping of config keys");
    expect_yaml_error("workers: 1\n---\nworkers: 2\n", ":2: only one YAML document is allowed");
    expect_yaml_error("? [a]\n: 1\n", ":1: mapping keys must be plain names");
}

static void test_config_file_errors(void **state)
{
    (void)state;
    sb_config cfg;
    sb_config_action act;
    char err[ERRLEN];
    assert_int_equal(LOAD(&cfg, NULL, &act, err, "--dev", "--config", "/nonexistent/sb.yaml"),
                     SB_ECONFIG);
    assert_string_equal(err, "/nonexistent/sb.yaml: cannot open config file: No such file or "
                             "directory");
    sb_config_free(&cfg);

    assert_int_equal(LOAD(&cfg, NULL, &act, err, "--dev", "--config=/tmp"), SB_ECONFIG);
    assert_string_equal(err, "/tmp: cannot read config file: Is a directory");
    sb_config_free(&cfg);

    size_t big = (1 << 20) + 10;
    char *text = malloc(big + 1);
    assert_non_null(text);
    memset(text, '#', big);
    text[big] = '\0';
    char *path;
    assert_int_equal(load_yaml_text(&cfg, text, err, &path), SB_ECONFIG);
    assert_contains(err, ": config file larger than 1048576 bytes");
    sb_config_free(&cfg);
    remove_temp(path);
    free(text);
}

/* ---- validation -------------------------------------------------------------------------- */

static void test_validation(void **state)
{
    (void)state;
    sb_config cfg;
    sb_config_action act;
    char err[ERRLEN];

    assert_int_equal(LOAD(&cfg, NULL, &act, err, "--tls.cert", "/c.pem"), SB_ECONFIG);
    assert_string_equal(err, "tls.cert and tls.key must be given together (tls.key is empty)");
    sb_config_free(&cfg);

    assert_int_equal(LOAD(&cfg, NULL, &act, err, "--dev", "--tls.key=/k.pem"), SB_ECONFIG);
    assert_string_equal(err, "tls.cert and tls.key must be given together (tls.cert is empty)");
    sb_config_free(&cfg);

    if (LOAD(&cfg, NULL, &act, err, "--tls.cert", "/c.pem", "--tls.key", "/k.pem"))
        fail_msg("%s", err);
    sb_config_free(&cfg);

    /* cleartext only needs no certificate */
    if (LOAD(&cfg, NULL, &act, err, "--listen=", "--plain-listen", "127.0.0.1:8080"))
        fail_msg("%s", err);
    sb_config_free(&cfg);

    assert_int_equal(LOAD(&cfg, NULL, &act, err, "--dev", "--listen="), SB_ECONFIG);
    assert_string_equal(err, "no listeners: set listen or plain_listen");
    sb_config_free(&cfg);

    assert_int_equal(LOAD(&cfg, NULL, &act, err, "--dev", "--listen=[::1]:1,[::1]:1"), SB_ECONFIG);
    assert_string_equal(err, "listen: [::1]:1 is listed twice");
    sb_config_free(&cfg);

    assert_int_equal(LOAD(&cfg, NULL, &act, err, "--dev", "--plain-listen=localhost:8443"),
                     SB_ECONFIG);
    assert_string_equal(err, "plain_listen: 127.0.0.1:8443 is listed twice (also in listen)");
    sb_config_free(&cfg);

    assert_int_equal(LOAD(&cfg, NULL, &act, err, "--dev", "--data-dir="), SB_ECONFIG);
    assert_string_equal(err, "--data-dir: must not be empty");
    sb_config_free(&cfg);

    assert_int_equal(LOAD(&cfg, NULL, &act, err, "--dev", "--listen", "127.0.0.1"), SB_ECONFIG);
    assert_string_equal(err, "--listen: \"127.0.0.1\": expected HOST:PORT (the port is required)");
    sb_config_free(&cfg);
}

/* ---- actions ----------------------------------------------------------------------------- */

static void test_actions(void **state)
{
    (void)state;
    static const struct {
        const char *arg;
        sb_config_action action;
    } cases[] = {{"--help", SB_CONFIG_HELP},
                 {"-h", SB_CONFIG_HELP},
                 {"--version", SB_CONFIG_VERSION},
                 {"-V", SB_CONFIG_VERSION},
                 {"--print-config-docs", SB_CONFIG_PRINT_DOCS},
                 {"--print_config_docs", SB_CONFIG_PRINT_DOCS}};
    /* help, version and docs work whatever else is wrong */
    char *bad_env[] = {"SWITCHBOARD_NOPE=1", NULL};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        sb_config cfg;
        sb_config_action act = SB_CONFIG_RUN;
        char err[ERRLEN];
        int r = LOAD(&cfg, bad_env, &act, err, "--bogus", "--workers=1000", (char *)cases[i].arg,
                     "--config", "/nonexistent.yaml");
        if (r)
            fail_msg("%s: %s", cases[i].arg, err);
        assert_int_equal(act, cases[i].action);
        assert_string_equal(err, "");
        assert_int_equal(cfg.workers, 0);
        sb_config_free(&cfg);
    }

    sb_config cfg;
    sb_config_action act;
    char err[ERRLEN];
    assert_int_equal(LOAD(&cfg, NULL, &act, err, "--check-config", "--dev"), 0);
    assert_int_equal(act, SB_CONFIG_CHECK);
    sb_config_free(&cfg);

    assert_int_equal(LOAD(&cfg, NULL, &act, err, "--check-config"), SB_ECONFIG);
    assert_string_equal(err, "tls.cert and tls.key are required unless --dev");
    sb_config_free(&cfg);

    assert_int_equal(LOAD(&cfg, NULL, &act, err, "--check-config", "--help"), 0);
    assert_int_equal(act, SB_CONFIG_HELP);
    sb_config_free(&cfg);

    assert_int_equal(LOAD(&cfg, NULL, &act, err, "--version", "--help"), 0);
    assert_int_equal(act, SB_CONFIG_VERSION);
    sb_config_free(&cfg);

    assert_int_equal(LOAD(&cfg, NULL, &act, err, "--dev"), 0);
    assert_int_equal(act, SB_CONFIG_RUN);
    sb_config_free(&cfg);

    /* action and err may be left out */
    char *argv[] = {"switchboard", "--dev", NULL};
    assert_int_equal(sb_config_load(&cfg, 2, argv, NULL, NULL, NULL, 0), 0);
    sb_config_free(&cfg);
}

static void test_help(void **state)
{
    (void)state;
    char *text = capture(sb_config_print_help);
    assert_contains(text, "Usage: switchboard");
    assert_contains(text, "-h, --help");
    assert_contains(text, "-V, --version");
    assert_contains(text, "--config FILE");
    assert_contains(text, "--check-config");
    assert_contains(text, "--print-config-docs");
    assert_contains(text, "\n  --dev[=BOOL]\n");
    assert_contains(text, "\n  --data-dir PATH\n");
    assert_contains(text, "\n  --http.max-body-bytes SIZE\n      Largest request body; 413 "
                          "beyond.\n      default 1MiB, range 0..1GiB, env "
                          "SWITCHBOARD_HTTP_MAX_BODY_BYTES\n");
    assert_contains(text, "env SWITCHBOARD_HTTP_IDLE_TIMEOUT (reloadable)\n");
    assert_contains(text, "\nhttp:\n");
    assert_contains(text, "\ngeneral:\n");
    /* every key appears */
    for (size_t i = 0; i < sb__config_keys.nkeys; i++) {
        char env[128];
        sb__config_env_name(sb__config_keys.keys[i].name, env, sizeof env);
        assert_contains(text, env);
    }
    free(text);
}

/* ---- diff_static ------------------------------------------------------------------------- */

typedef struct diff_seen {
    char keys[8][64];
    int n;
} diff_seen;

static void on_diff(const char *key, void *ud)
{
    diff_seen *s = ud;
    assert_true(s->n < 8);
    snprintf(s->keys[s->n++], sizeof s->keys[0], "%s", key);
}

static void test_diff_static(void **state)
{
    (void)state;
    sb_config a, b;
    sb_config_action act;
    char err[ERRLEN];
    diff_seen seen = {0};
    assert_int_equal(LOAD(&a, NULL, &act, err, "--dev"), 0);
    assert_int_equal(LOAD(&b, NULL, &act, err, "--dev"), 0);
    assert_int_equal(sb_config_diff_static(&a, &b, on_diff, &seen), 0);
    assert_int_equal(seen.n, 0);
    sb_config_free(&b);

    assert_int_equal(LOAD(&b, NULL, &act, err, "--dev", "--workers=3", "--http.idle-timeout=5s",
                          "--log.level=debug", "--listen=127.0.0.1:9999", "--metrics.enabled=no",
                          "--http.max-body-bytes=2MiB", "--tls.session-tickets=off"),
                     0);
    assert_int_equal(sb_config_diff_static(&a, &b, on_diff, &seen), 3);
    assert_int_equal(seen.n, 3);
    assert_string_equal(seen.keys[0], "workers");
    assert_string_equal(seen.keys[1], "listen");
    assert_string_equal(seen.keys[2], "http.max_body_bytes");
    assert_int_equal(sb_config_diff_static(&a, &b, NULL, NULL), 3);
    sb_config_free(&a);
    sb_config_free(&b);
}

/* ---- parse_listen ------------------------------------------------------------------------ */

static void test_parse_listen_good(void **state)
{
    (void)state;
    struct sockaddr_storage ss[SB_CONFIG_MAX_LISTEN];
    char err[ERRLEN];
    assert_int_equal(sb_config_parse_listen("127.0.0.1:80", ss, 8, err, ERRLEN), 1);
    const struct sockaddr_in *a4 = (const struct sockaddr_in *)&ss[0];
    assert_int_equal(a4->sin_family, AF_INET);
    assert_int_equal(ntohs(a4->sin_port), 80);
    assert_int_equal(ntohl(a4->sin_addr.s_addr), 0x7f000001);

    assert_int_equal(sb_config_parse_listen(" localhost:8080 , [::1]:65535,0.0.0.0:1,[::]:443", ss,
                                            8, err, ERRLEN),
                     4);
    a4 = (const struct sockaddr_in *)&ss[0];
    assert_int_equal(ntohl(a4->sin_addr.s_addr), INADDR_LOOPBACK);
    assert_int_equal(ntohs(a4->sin_port), 8080);
    const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)&ss[1];
    assert_int_equal(a6->sin6_family, AF_INET6);
    assert_int_equal(ntohs(a6->sin6_port), 65535);
    assert_true(IN6_IS_ADDR_LOOPBACK(&a6->sin6_addr));
    a4 = (const struct sockaddr_in *)&ss[2];
    assert_int_equal(a4->sin_addr.s_addr, htonl(INADDR_ANY));
    a6 = (const struct sockaddr_in6 *)&ss[3];
    assert_true(IN6_IS_ADDR_UNSPECIFIED(&a6->sin6_addr));

    assert_int_equal(sb_config_parse_listen("", ss, 8, err, ERRLEN), 0);
    assert_int_equal(sb_config_parse_listen("  ", ss, 8, err, ERRLEN), 0);
    assert_int_equal(sb_config_parse_listen(NULL, ss, 8, err, ERRLEN), 0);
    assert_int_equal(sb_config_parse_listen("127.0.0.1:1,127.0.0.1:2", ss, 2, err, ERRLEN), 2);
}

static void test_parse_listen_bad(void **state)
{
    (void)state;
    static const struct {
        const char *list;
        const char *msg;
    } bad[] = {
        {"127.0.0.1", "\"127.0.0.1\": expected HOST:PORT (the port is required)"},
        {"127.0.0.1:65536", "\"127.0.0.1:65536\": port must be a number from 0 to 65535"},
        {"127.0.0.1:", "\"127.0.0.1:\": port must be a number from 0 to 65535"},
        {"127.0.0.1:http", "\"127.0.0.1:http\": port must be a number from 0 to 65535"},
        {"127.0.0.1:+80", "port must be a number from 0 to 65535"},
        {"127.0.0.1:99999999999999999999999", "port must be a number from 0 to 65535"},
        {"::1:80", "\"::1:80\": IPv6 addresses must be in brackets: [ADDR]:PORT"},
        {"[::1]80", "\"[::1]80\": expected [IPv6]:PORT"},
        {"[::1", "\"[::1\": expected [IPv6]:PORT"},
        {"[127.0.0.1]:80", "\"[127.0.0.1]:80\": not a numeric IPv6 address"},
        {"[fe80::1%eth0]:80", "not a numeric IPv6 address"},
        {"example.com:80",
         "\"example.com:80\": host must be a numeric IPv4 address, [IPv6] or localhost"},
        {"1.2.3:80", "host must be a numeric IPv4 address"},
        {":80", "host must be a numeric IPv4 address"},
        {"127.0.0.1:80,,127.0.0.1:81", "empty entry in listener list"},
        {"127.0.0.1:80,", "empty entry in listener list"},
        {",127.0.0.1:80", "empty entry in listener list"},
        {"1.1.1.1:1,1.1.1.1:2,1.1.1.1:3", "more than 2 listeners"},
    };
    struct sockaddr_storage ss[SB_CONFIG_MAX_LISTEN];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char err[ERRLEN] = "";
        int r = sb_config_parse_listen(bad[i].list, ss, 2, err, ERRLEN);
        if (r != SB_ECONFIG)
            fail_msg("\"%s\": expected SB_ECONFIG, got %d", bad[i].list, r);
        assert_contains(err, bad[i].msg);
    }
    /* err may be absent */
    assert_int_equal(sb_config_parse_listen("nope", ss, 2, NULL, 0), SB_ECONFIG);
}

/* ---- the table itself -------------------------------------------------------------------- */

static void test_table(void **state)
{
    (void)state;
    const sb__config_table *t = &sb__config_keys;
    assert_int_equal(t->nkeys, 59);
    for (size_t i = 0; i < t->nkeys; i++) {
        const sb__config_key *k = &t->keys[i];
        assert_non_null(k->help);
        assert_non_null(k->def);
        assert_int_equal(k->flags & SB__CFG_SECRET, 0);
        for (size_t j = 0; j < i; j++)
            assert_string_not_equal(k->name, t->keys[j].name);
    }
    char env[128];
    sb__config_env_name("http.max_body_bytes", env, sizeof env);
    assert_string_equal(env, "SWITCHBOARD_HTTP_MAX_BODY_BYTES");
    sb__config_env_name("http.max_body_bytes", env, 16);
    assert_string_equal(env, "SWITCHBOARD_HTT");
}

/* ---- secrets, with a table of our own ---------------------------------------------------- */

typedef struct fake_config {
    char *token;
    int64_t timeout_ms;
    char *name;
    char *hooks;
} fake_config;

static const sb__config_key fake_keys[] = {
    {.name = "auth.token",
     .type = SB__CFG_STRING,
     .def = "default-s3cret-value",
     .offset = SB__CFG_FIELD(fake_config, char *, token),
     .min = 8,
     .max = 32,
     .flags = SB__CFG_SECRET,
     .help = "A secret token."},
    {.name = "auth.timeout",
     .type = SB__CFG_DURATION,
     .def = "1s",
     .offset = SB__CFG_FIELD(fake_config, int64_t, timeout_ms),
     .min = 1000,
     .max = 60000,
     .flags = SB__CFG_SECRET | SB__CFG_RELOADABLE,
     .help = "A secret number."},
    {.name = "name",
     .type = SB__CFG_STRING,
     .def = "x",
     .offset = SB__CFG_FIELD(fake_config, char *, name),
     .max = 8,
     .help = "Not secret."},
    {.name = "hooks",
     .type = SB__CFG_LISTEN,
     .def = "",
     .offset = SB__CFG_FIELD(fake_config, char *, hooks),
     .flags = SB__CFG_SECRET,
     .help = "Secret listeners."},
};

static const char *const fake_allow[] = {"SWITCHBOARD_OTHER", NULL};
static const sb__config_table fake_table = {fake_keys, 4, fake_allow};

static int fake_load(fake_config *fc, char **env, char *err, char **argv)
{
    char *config_file = NULL;
    sb_config_action act;
    memset(fc, 0, sizeof *fc);
    int r = sb__config_load_table(&fake_table, fc, &config_file, count_args(argv), argv, env, &act,
                                  err, ERRLEN);
    sb_free(config_file);
    return r;
}

#define FAKE_LOAD(fc, env, err, ...)                                                               \
    fake_load((fc), (env), (err), (char *[]){"fake", __VA_ARGS__, NULL})

static void test_secret_not_echoed(void **state)
{
    (void)state;
    fake_config fc;
    char err[ERRLEN];

    assert_int_equal(FAKE_LOAD(&fc, NULL, err, "--auth.timeout=hunter2"), SB_ECONFIG);
    assert_string_equal(err, "--auth.timeout: value is not a duration (an integer with unit ms, "
                             "s, m or h, e.g. 250ms, 10s)");
    sb__config_free_table(&fake_table, &fc);

    assert_int_equal(FAKE_LOAD(&fc, NULL, err, "--auth.timeout", "123456789s"), SB_ECONFIG);
    assert_string_equal(err, "--auth.timeout: value is out of range (1s..1m)");
    sb__config_free_table(&fake_table, &fc);

    char *env[] = {"SWITCHBOARD_AUTH_TOKEN=hunter2", NULL};
    assert_int_equal(FAKE_LOAD(&fc, env, err, "--name=a"), SB_ECONFIG);
    assert_string_equal(err, "SWITCHBOARD_AUTH_TOKEN: value is too short (at least 8 bytes)");
    sb__config_free_table(&fake_table, &fc);

    char *env2[] = {"SWITCHBOARD_HOOKS=hunter2:99", NULL};
    assert_int_equal(FAKE_LOAD(&fc, env2, err, "--name=a"), SB_ECONFIG);
    assert_string_equal(err, "SWITCHBOARD_HOOKS: value is not a valid listener list");
    sb__config_free_table(&fake_table, &fc);

    char *path = write_temp("auth:\n  token: hunter2-hunter2-hunter2-hunter2-hunter2\n");
    assert_int_equal(FAKE_LOAD(&fc, NULL, err, "--config", path), SB_ECONFIG);
    assert_lacks(err, "hunter2");
    assert_contains(err, ":2: auth.token: value is too long (at most 32 bytes)");
    sb__config_free_table(&fake_table, &fc);
    remove_temp(path);

    /* a key that is not secret does show its value */
    assert_int_equal(FAKE_LOAD(&fc, NULL, err, "--name=hunter2-long"), SB_ECONFIG);
    assert_string_equal(err, "--name: \"hunter2-long\" is too long (at most 8 bytes)");
    sb__config_free_table(&fake_table, &fc);

    /* good values load; the allow list is per table */
    char *env3[] = {"SWITCHBOARD_AUTH_TOKEN=correct-horse", "SWITCHBOARD_OTHER=1", NULL};
    if (FAKE_LOAD(&fc, env3, err, "--auth.timeout=2s"))
        fail_msg("%s", err);
    assert_string_equal(fc.token, "correct-horse");
    assert_int_equal(fc.timeout_ms, 2000);
    sb__config_free_table(&fake_table, &fc);

    char *env4[] = {"SWITCHBOARD_ADMIN_KEY=x", NULL};
    assert_int_equal(FAKE_LOAD(&fc, env4, err, "--name=a"), SB_ECONFIG);
    assert_contains(err, "SWITCHBOARD_ADMIN_KEY: unknown environment variable");
    sb__config_free_table(&fake_table, &fc);

    /* nor do help and docs show a secret default */
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    sb__config_print_help_table(&fake_table, f);
    sb__config_print_docs_table(&fake_table, f);
    fclose(f);
    assert_lacks(text, "s3cret");
    assert_contains(text, "--auth.token STRING\n      A secret token.\n      secret, env "
                          "SWITCHBOARD_AUTH_TOKEN\n");
    assert_contains(text, "| `auth.token` | string | *(secret)* | `SWITCHBOARD_AUTH_TOKEN` | no |");
    assert_contains(text, "Exceptions (read by other parts of Switchboard): `SWITCHBOARD_OTHER`.");
    free(text);
}

/* ---- allocation failures ----------------------------------------------------------------- */

typedef struct fail_alloc {
    long countdown; /* allocations left before failing; <0 never fails */
    long calls;
} fail_alloc;

static void *fa_malloc(size_t size, void *ud)
{
    fail_alloc *fa = ud;
    fa->calls++;
    if (fa->countdown == 0)
        return NULL;
    if (fa->countdown > 0)
        fa->countdown--;
    return malloc(size);
}

static void *fa_realloc(void *p, size_t size, void *ud)
{
    fail_alloc *fa = ud;
    fa->calls++;
    if (fa->countdown == 0)
        return NULL;
    if (fa->countdown > 0)
        fa->countdown--;
    return realloc(p, size);
}

static void fa_free(void *p, void *ud)
{
    (void)ud;
    free(p);
}

static void test_alloc_failures(void **state)
{
    (void)state;
    char *path = write_temp(yaml_full);
    char *env[] = {"SWITCHBOARD_WORKERS=2", "SWITCHBOARD_LOG_FILE=/tmp/x.log", NULL};
    fail_alloc fa = {.countdown = -1};
    sb_allocator a = {fa_malloc, fa_realloc, fa_free, &fa};
    sb_alloc_set(&a);

    sb_config cfg;
    sb_config_action act;
    char err[ERRLEN];
    int r = LOAD(&cfg, env, &act, err, "--config", path, "--tls.key=/k", "--tls.cert=/c");
    assert_int_equal(r, 0);
    sb_config_free(&cfg);
    long total = fa.calls;
    assert_true(total > 20);

    for (long n = 0; n < total; n++) {
        fa.countdown = n;
        r = LOAD(&cfg, env, &act, err, "--config", path, "--tls.key=/k", "--tls.cert=/c");
        if (r != SB_ENOMEM)
            fail_msg("failing allocation %ld of %ld: got %d (%s)", n, total, r, err);
        assert_string_equal(err, "out of memory");
        sb_config_free(&cfg);
    }
    sb_alloc_set(NULL);
    remove_temp(path);
}

/* ---- docs/config.md ---------------------------------------------------------------------- */

static char *source_dir(void)
{
    const char *env = getenv("SB_SOURCE_DIR");
    if (env && *env)
        return strdup(env);
    const char *file = __FILE__, *suffix = "tests/unit/test_config.c";
    size_t len = strlen(file), slen = strlen(suffix);
    if (len < slen || strcmp(file + len - slen, suffix) != 0)
        return NULL;
    if (len == slen)
        return strdup(".");
    return strndup(file, len - slen - 1);
}

static char *read_all(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    assert_non_null(out);
    char chunk[4096];
    for (;;) {
        size_t n = fread(chunk, 1, sizeof chunk, f);
        if (n == 0)
            break;
        fwrite(chunk, 1, n, out);
    }
    fclose(out);
    fclose(f);
    return text;
}

static void test_docs_up_to_date(void **state)
{
    (void)state;
    char *dir = source_dir();
    if (!dir)
        fail_msg("cannot find the source directory; set SB_SOURCE_DIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/docs/config.md", dir);
    char *committed = read_all(path);
    char *generated = capture(sb_config_print_docs);
    if (!committed || strcmp(committed, generated) != 0)
        fail_msg("%s is %s; regenerate it with: build/switchboard --print-config-docs > "
                 "docs/config.md",
                 path, committed ? "out of date" : "missing");
    assert_contains(generated, "| key | type | default | environment | reloadable | description |");
    assert_contains(generated, "| `http.max_body_bytes` | size | `1MiB` | "
                               "`SWITCHBOARD_HTTP_MAX_BODY_BYTES` | no | Largest request body; "
                               "413 beyond. Range 0 to 1GiB. |");
    assert_contains(generated, "Flags win over the environment, the environment over the");
    free(committed);
    free(generated);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_defaults_need_cert_or_dev),
        cmocka_unit_test(test_yaml_file),
        cmocka_unit_test(test_yaml_empty_files),
        cmocka_unit_test(test_env_overrides_file),
        cmocka_unit_test(test_flags_override_env),
        cmocka_unit_test(test_flag_spellings),
        cmocka_unit_test(test_durations),
        cmocka_unit_test(test_sizes),
        cmocka_unit_test(test_bools),
        cmocka_unit_test(test_ints_and_levels),
        cmocka_unit_test(test_value_escaping),
        cmocka_unit_test(test_unknown_flag),
        cmocka_unit_test(test_unknown_env),
        cmocka_unit_test(test_yaml_unknown_key),
        cmocka_unit_test(test_yaml_values),
        cmocka_unit_test(test_yaml_duplicates),
        cmocka_unit_test(test_yaml_syntax),
        cmocka_unit_test(test_config_file_errors),
        cmocka_unit_test(test_validation),
        cmocka_unit_test(test_actions),
        cmocka_unit_test(test_help),
        cmocka_unit_test(test_diff_static),
        cmocka_unit_test(test_parse_listen_good),
        cmocka_unit_test(test_parse_listen_bad),
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_secret_not_echoed),
        cmocka_unit_test(test_alloc_failures),
        cmocka_unit_test(test_docs_up_to_date),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
