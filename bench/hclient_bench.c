/*
 * CPU cost per request of sb_hclient (src/net/hclient.c) on kept-alive connections.
 *
 * Not part of the build; compiled from the few sources it needs (bench/hclient.bench.sh does
 * this and starts nginx):
 *
 *   cc -O2 -std=c17 -D_GNU_SOURCE -Iinclude -Isrc bench/hclient_bench.c src/net/hclient.c \
 *      src/net/http1_response.c src/net/http1_chars.c src/core/alloc.c \
 *      $(pkg-config --cflags --libs libuv libnghttp2) -o /tmp/hclient_bench
 *   taskset -c 0 /tmp/hclient_bench http://127.0.0.1:PORT/hook [requests] [in_flight] [raw|h2c]
 *
 * POSTs `requests` (50000) webhook-shaped requests (four extra header lines, a 256-byte JSON
 * body) keeping `in_flight` (32) outstanding, each new one posted from the previous one's
 * done callback as the webhook dispatcher does. The first 10% are a warm-up (connections
 * opened); getrusage then measures the rest. Prints user and system CPU microseconds per
 * request, requests/s, and any failure.
 *
 * With "raw" it measures the floor instead: the same requests from a minimal epoll client (one
 * writev and one read per request, responses only checked for "HTTP/1.1 2" and the blank line,
 * so only bodyless 2xx answers such as nginx's 204 work). The machine is shared, so compare the
 * two within one run, not across runs.
 *
 * With "h2c" the same requests go with SB_HCLIENT_H2C (HTTP/2 prior knowledge: one connection,
 * in_flight streams on it) to a server speaking h2c on that port.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include "net/hclient.h"

#define MAX_IN_FLIGHT 1024

static sb_hclient *client;
static const char *url;
static long total, posted, completed, failed, warmup;
static struct rusage ru0;
static struct timespec t0;
static char body[256];
static char extra[512];
static size_t extra_len;
static sb_hclient_req reqs[MAX_IN_FLIGHT];
static unsigned post_flags;

static void on_done(sb_hclient_req *r, const sb_hclient_result *res);

static void post_one(sb_hclient_req *r)
{
    int rc = sb_hclient_post_ex(client, r, url, extra, extra_len, body, sizeof(body), 5000,
                                post_flags, on_done, NULL);
    if (rc < 0) {
        fprintf(stderr, "post: %d\n", rc);
        exit(1);
    }
    posted++;
}

static void on_done(sb_hclient_req *r, const sb_hclient_result *res)
{
    completed++;
    if (res->err || res->status < 200 || res->status > 299) {
        if (failed++ < 5)
            fprintf(stderr, "request failed: err %d status %d: %s\n", res->err, res->status,
                    res->error);
    }
    if (completed == warmup) {
        getrusage(RUSAGE_SELF, &ru0);
        clock_gettime(CLOCK_MONOTONIC, &t0);
    }
    if (posted < total)
        post_one(r);
    else if (completed == total)
        sb_hclient_close(client, NULL, NULL);
}

/* The floor: what any HTTP/1.1 client pays in the kernel for the same traffic. */
static long raw_run(const char *host, int port, long in_flight)
{
    int ep = epoll_create1(0);
    char head[256];
    int hn = snprintf(head, sizeof(head),
                      "POST /hook HTTP/1.1\r\nHost: %s:%d\r\nContent-Length: %zu\r\n", host, port,
                      sizeof(body));
    struct iovec iov[4] = {
        {head, (size_t)hn}, {extra, extra_len}, {"\r\n", 2}, {body, sizeof(body)}};
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, host, &a.sin_addr);
    for (long i = 0; i < in_flight; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
        if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0)
            return -1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
        if (writev(fd, iov, 4) < 0)
            return -1;
        posted++;
    }
    char buf[16384];
    struct epoll_event evs[64];
    while (completed < total) {
        int n = epoll_wait(ep, evs, 64, 5000);
        if (n <= 0)
            return -1;
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            ssize_t r = read(fd, buf, sizeof(buf));
            if (r < 12 || memcmp(buf, "HTTP/1.1 2", 10) != 0 ||
                memcmp(buf + r - 4, "\r\n\r\n", 4) != 0)
                failed++;
            if (++completed == warmup) {
                getrusage(RUSAGE_SELF, &ru0);
                clock_gettime(CLOCK_MONOTONIC, &t0);
            }
            if (posted < total) {
                if (writev(fd, iov, 4) < 0)
                    return -1;
                posted++;
            }
        }
    }
    return 0;
}

static double us(struct timeval a, struct timeval b)
{
    return (double)(b.tv_sec - a.tv_sec) * 1e6 + (double)(b.tv_usec - a.tv_usec);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s URL [requests] [in_flight]\n", argv[0]);
        return 2;
    }
    url = argv[1];
    total = argc > 2 ? atol(argv[2]) : 50000;
    long in_flight = argc > 3 ? atol(argv[3]) : 32;
    if (total < 10 || in_flight < 1 || in_flight > MAX_IN_FLIGHT || in_flight > total / 10) {
        fprintf(stderr, "need requests >= 10 * in_flight, in_flight <= %d\n", MAX_IN_FLIGHT);
        return 2;
    }
    warmup = total / 10;
    memset(body, 'x', sizeof(body));
    memcpy(body, "{\"type\":\"room.message\",\"data\":\"", 32);
    body[sizeof(body) - 2] = '"';
    body[sizeof(body) - 1] = '}';
    extra_len = (size_t)snprintf(
        extra, sizeof(extra),
        "Content-Type: application/json\r\nwebhook-id: msg_2Qh0Vx8fXw3kq9yNn4Yb7T1cZ5\r\n"
        "webhook-timestamp: 1764240000\r\n"
        "webhook-signature: v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=\r\n");

    bool raw = argc > 4 && strcmp(argv[4], "raw") == 0;
    if (argc > 4 && strcmp(argv[4], "h2c") == 0)
        post_flags = SB_HCLIENT_H2C;
    uv_loop_t loop;
    uv_loop_init(&loop);
    if (raw) {
        char host[64];
        int port;
        if (sscanf(url, "http://%63[0-9.]:%d", host, &port) != 2 ||
            raw_run(host, port, in_flight)) {
            fprintf(stderr, "raw mode needs http://IPv4:port and a server answering 2xx\n");
            return 1;
        }
    } else {
        sb_hclient_config cfg = {0, 30000, (int)in_flight, NULL, NULL};
        if (sb_hclient_new(&client, &loop, &cfg) < 0)
            return 1;
        for (long i = 0; i < in_flight; i++)
            post_one(&reqs[i]);
        uv_run(&loop, UV_RUN_DEFAULT);
    }

    struct rusage ru1;
    struct timespec t1;
    getrusage(RUSAGE_SELF, &ru1);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long n = total - warmup;
    double user = us(ru0.ru_utime, ru1.ru_utime) / (double)n;
    double sys = us(ru0.ru_stime, ru1.ru_stime) / (double)n;
    double wall = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    const char *who = raw ? "raw epoll" : post_flags ? "hclient h2c" : "hclient";
    printf("%s: %ld requests measured (%ld warm-up), %ld in flight, %ld failed\n", who, n, warmup,
           in_flight, failed);
    printf("%s: cpu per request: user %.2f us + sys %.2f us = %.2f us; %.0f requests/s\n", who,
           user, sys, user + sys, (double)n / wall);
    uv_loop_close(&loop);
    return failed ? 1 : 0;
}
