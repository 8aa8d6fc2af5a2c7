/*
 * libFuzzer target for the webhook policy parsers: the retry schedule (and each duration in
 * it), Retry-After, endpoint URLs and the SSRF address classifier.
 *
 * Input: one selector byte, then the text. Beyond "never crash", it holds the code to what
 * webhook_policy.h promises: a parsed schedule has 1..max entries, each within
 * [0, SB_WEBHOOK_DELAY_MAX], and formatting them back as "<n>ms" parses to the same list; a
 * parsed Retry-After is within [0, SB_WEBHOOK_DELAY_MAX]; the next delay never exceeds the
 * maximum and is -1 exactly when the schedule is exhausted; the classifier answers for any
 * 4 or 16 address bytes, and IPv4-mapped addresses get the same answer as the IPv4 address.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "events/webhook_policy.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            abort();                                                                               \
    } while (0)

static void schedule(const char *s)
{
    int64_t v[SB_WEBHOOK_SCHEDULE_MAX], w[SB_WEBHOOK_SCHEDULE_MAX];
    char why[128], back[SB_WEBHOOK_SCHEDULE_MAX * 24];
    int n = sb_webhook_schedule_parse(s, v, SB_WEBHOOK_SCHEDULE_MAX, why, sizeof why);
    if (n < 0)
        return;
    CHECK(n >= 1 && n <= SB_WEBHOOK_SCHEDULE_MAX);
    size_t o = 0;
    for (int i = 0; i < n; i++) {
        CHECK(v[i] >= 0 && v[i] <= SB_WEBHOOK_DELAY_MAX);
        o += (size_t)snprintf(back + o, sizeof back - o, "%s%lldms", i ? "," : "", (long long)v[i]);
    }
    CHECK(sb_webhook_schedule_parse(back, w, SB_WEBHOOK_SCHEDULE_MAX, why, sizeof why) == n);
    CHECK(memcmp(v, w, (size_t)n * sizeof *v) == 0);
    for (int a = 0; a <= n; a++) {
        int64_t d =
            sb_webhook_next_delay(v, n, a, (int64_t)(v[0] % 100000) - 1, (uint32_t)v[n - 1]);
        CHECK(d <= SB_WEBHOOK_DELAY_MAX);
        CHECK((d == -1) == (a < 1 || a >= n));
    }
}

static void classify(const uint8_t *d, size_t n)
{
    if (n >= 16) {
        struct sockaddr_in6 a6 = {.sin6_family = AF_INET6};
        memcpy(&a6.sin6_addr, d, 16);
        (void)sb_webhook_addr_refused((struct sockaddr *)&a6);
    }
    if (n >= 4) {
        struct sockaddr_in a4 = {.sin_family = AF_INET};
        memcpy(&a4.sin_addr, d, 4);
        const char *w4 = sb_webhook_addr_refused((struct sockaddr *)&a4);
        struct sockaddr_in6 m = {.sin6_family = AF_INET6};
        m.sin6_addr.s6_addr[10] = m.sin6_addr.s6_addr[11] = 0xff;
        memcpy(m.sin6_addr.s6_addr + 12, d, 4);
        const char *wm = sb_webhook_addr_refused((struct sockaddr *)&m);
        CHECK((w4 == NULL) == (wm == NULL));
        CHECK(!w4 || strcmp(w4, wm) == 0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 4096)
        return 0;
    uint8_t sel = data[0];
    const char *txt = (const char *)data + 1;
    size_t n = size - 1;
    char *s = malloc(n + 1);
    if (!s)
        return 0;
    memcpy(s, txt, n);
    s[n] = '\0';
    switch (sel % 4) {
    case 0:
        schedule(s);
        break;
    case 1: {
        int64_t d;
        if (sb_webhook_retry_after_parse(txt, n, 1700000000000LL, &d) == 0)
            CHECK(d >= 0 && d <= SB_WEBHOOK_DELAY_MAX);
        break;
    }
    case 2: {
        char why[160];
        if (sb_webhook_url_ok(s, sel & 4, why, sizeof why)) {
            CHECK(strlen(s) <= 2048);
            CHECK(strncmp(s, "https://", 8) == 0 ||
                  ((sel & 4) && strncasecmp(s, "http://", 7) == 0) ||
                  strncasecmp(s, "https://", 8) == 0);
        }
        break;
    }
    default:
        classify(data + 1, n);
        break;
    }
    free(s);
    return 0;
}
