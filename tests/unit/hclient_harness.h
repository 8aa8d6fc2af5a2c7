/* Shared by test_hclient.c (HTTP/1.1) and test_hclient_h2.c (h2c): what a request's done
 * callback saw, and a loopback listener on a free port. Include after <cmocka.h>. */
#ifndef SB_TEST_HCLIENT_HARNESS_H
#define SB_TEST_HCLIENT_HARNESS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <uv.h>

#include "net/hclient.h"

typedef struct outcome {
    int calls;
    int err;
    int status;
    uint64_t body_bytes;
    bool has_retry_after;
    char retry_after[64];
    char refused_ip[46];
    char refused_why[32];
    char error[200];
    uint64_t at; /* uv_now when done ran */
} outcome;

/* Copies what done reports into o (r->ud), at the loop time now. */
static inline void outcome_record(outcome *o, const sb_hclient_result *res, uint64_t now)
{
    o->calls++;
    o->err = res->err;
    o->status = res->status;
    o->body_bytes = res->body_bytes;
    o->has_retry_after = res->retry_after != NULL;
    if (res->retry_after) {
        assert_true(res->retry_after_len < sizeof(o->retry_after));
        memcpy(o->retry_after, res->retry_after, res->retry_after_len);
        o->retry_after[res->retry_after_len] = '\0';
    }
    snprintf(o->refused_ip, sizeof(o->refused_ip), "%s", res->refused_ip);
    snprintf(o->refused_why, sizeof(o->refused_why), "%s",
             res->refused_why ? res->refused_why : "");
    snprintf(o->error, sizeof(o->error), "%s", res->error);
    o->at = now;
}

/* Starts l listening on 127.0.0.1 at a free port; returns the port. */
static inline int listen_loopback(uv_loop_t *loop, uv_tcp_t *l, int backlog, uv_connection_cb cb)
{
    uv_tcp_init(loop, l);
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    assert_int_equal(uv_tcp_bind(l, (const struct sockaddr *)&a, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)l, backlog, cb), 0);
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    uv_tcp_getsockname(l, (struct sockaddr *)&ss, &len);
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

#endif
