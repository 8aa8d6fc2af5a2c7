#include "net/request.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include "core/log.h"
#include "net/loop.h"
#include "switchboard/error.h"

const sb_http_header *sb_req_header(const sb_req *req, const char *name)
{
    for (size_t i = 0; i < req->num_headers; i++)
        if (sb_str_case_eq(req->headers[i].name, name))
            return &req->headers[i];
    return NULL;
}

int sb_resp_header(sb_req *req, const char *name, sb_str value)
{
    if (req->num_resp_headers >= SB_REQ_MAX_RESP_HEADERS)
        return SB_EMSGSIZE;
    size_t nlen = strlen(name);
    char *n = sb_arena_strndup(&req->arena, name, nlen);
    char *v = sb_arena_strndup(&req->arena, value.base ? value.base : "", value.len);
    if (!n || !v)
        return SB_ENOMEM;
    req->resp_headers[req->num_resp_headers++] = (sb_http_header){{n, nlen}, {v, value.len}};
    return 0;
}

void sb_resp_send(sb_req *req, int status, const char *content_type, const void *body, size_t len)
{
    req->status = status;
    req->resp_body_len = len;
    req->ops->send(req, status, sb_str_from(content_type), body, len);
}

int sb_resp_stream_begin(sb_req *req, int status, const char *content_type, int64_t heartbeat_ms,
                         const char *heartbeat)
{
    if (!req->ops->stream_begin)
        return SB_ENOTSUP;
    req->status = status;
    return req->ops->stream_begin(req, status, sb_str_from(content_type), heartbeat_ms,
                                  heartbeat ? sb_str_from(heartbeat) : SB_STR_NULL);
}

int sb_resp_stream_write(sb_req *req, const void *data, size_t len)
{
    return req->ops->stream_write ? req->ops->stream_write(req, data, len) : SB_ENOTSUP;
}

void sb_resp_stream_end(sb_req *req)
{
    if (req->ops->stream_end)
        req->ops->stream_end(req);
}

void sb_resp_stream_end_trailers(sb_req *req, const sb_http_header *trailers, size_t n)
{
    if (req->ops->stream_end_trailers)
        req->ops->stream_end_trailers(req, trailers, n);
    else
        sb_resp_stream_end(req);
}

void sb_req_on_abort(sb_req *req, void (*fn)(sb_req *req, void *ud), void *ud)
{
    if (req->ops->on_abort)
        req->ops->on_abort(req, fn, ud);
}

void sb_resp_json(sb_req *req, int status, const sb_buf *body)
{
    sb_resp_send(req, status, "application/json", body->base, body->len);
}

void sb_resp_problem(sb_req *req, int status, const char *slug, const char *detail)
{
    char stack[1024];
    sb_buf b = {stack, 0, sizeof stack, sizeof stack};
    const char *title = sb_http_reason(status);
    int rc = sb_buf_appendf(&b,
                            "{\"type\":\"urn:switchboard:problem:%s\",\"title\":\"%s\","
                            "\"status\":%d,\"detail\":\"",
                            slug, title, status);
    rc = rc ? rc : sb_buf_append_json_str(&b, detail, strlen(detail));
    rc = rc ? rc : sb_buf_append_str(&b, "\",\"request_id\":\"");
    rc = rc ? rc : sb_buf_append_json_str(&b, req->request_id, req->request_id_len);
    rc = rc ? rc : sb_buf_append_str(&b, "\"}");
    if (rc) {
        /* A detail too long for the stack buffer is cut, never dropped with the request id. */
        b.len = 0;
        size_t dl = strlen(detail);
        rc = sb_buf_appendf(&b,
                            "{\"type\":\"urn:switchboard:problem:%s\",\"title\":\"%s\","
                            "\"status\":%d,\"detail\":\"",
                            slug, title, status);
        rc = rc ? rc : sb_buf_append_json_str(&b, detail, dl > 256 ? 256 : dl);
        rc = rc ? rc : sb_buf_append_str(&b, "…\",\"request_id\":\"");
        rc = rc ? rc : sb_buf_append_json_str(&b, req->request_id, req->request_id_len);
        rc = rc ? rc : sb_buf_append_str(&b, "\"}");
    }
    sb_resp_send(req, status, "application/problem+json", b.base, b.len);
}

const char *sb_http_reason(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 101:
        return "Switching Protocols";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 301:
        return "Moved Permanently";
    case 304:
        return "Not Modified";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 406:
        return "Not Acceptable";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 410:
        return "Gone";
    case 411:
        return "Length Required";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 415:
        return "Unsupported Media Type";
    case 417:
        return "Expectation Failed";
    case 422:
        return "Unprocessable Content";
    case 426:
        return "Upgrade Required";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Unknown";
    }
}

void sb_req_peer_str(const struct sockaddr_in6 *peer, char *out, size_t outlen)
{
    if (peer->sin6_family == AF_INET) {
        const struct sockaddr_in *v4 = (const struct sockaddr_in *)peer;
        inet_ntop(AF_INET, &v4->sin_addr, out, (socklen_t)outlen);
    } else if (peer->sin6_family == AF_INET6) {
        inet_ntop(AF_INET6, &peer->sin6_addr, out, (socklen_t)outlen);
    } else if (outlen) {
        snprintf(out, outlen, "-");
    }
}

size_t sb_resp_stream_queued(sb_req *req)
{
    return req->ops->stream_queued ? req->ops->stream_queued(req) : 0;
}

void sb_req_on_writable(sb_req *req, void (*fn)(sb_req *req, void *ud), void *ud)
{
    if (req->ops->on_writable)
        req->ops->on_writable(req, fn, ud);
}

static bool valid_request_id(sb_str v)
{
    if (v.len == 0 || v.len > SB_REQUEST_ID_MAX)
        return false;
    for (size_t i = 0; i < v.len; i++) {
        unsigned char ch = (unsigned char)v.base[i];
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                  (ch >= '0' && ch <= '9') || ch == '-' || ch == '_' || ch == '.' || ch == ':' ||
                  ch == '~';
        if (!ok)
            return false;
    }
    return true;
}

void sb_req_set_request_id(sb_req *req, sb_str v)
{
    if (valid_request_id(v)) {
        memcpy(req->request_id, v.base, v.len);
        req->request_id_len = v.len;
        req->request_id[v.len] = '\0';
        return;
    }
    sb_loop_new_request_id(req->loop, req->request_id, &req->request_id_len);
}

void sb_req_log_access(sb_req *req, int status, size_t bytes, uint64_t dur_ns)
{
    sb_loop *loop = req->loop;
    if (!loop->live.log_access || !sb_log_enabled(SB_LOG_INFO))
        return;
    sb_buf *b = &loop->logbuf;
    size_t mark = b->len;
    char peer[INET6_ADDRSTRLEN];
    sb_req_peer_str(&req->peer, peer, sizeof peer);
    sb_str path = req->path;
    if (path.len > 512)
        path.len = 512;
    int rc = sb_log_line_begin(b, SB_LOG_INFO, "request");
    rc = rc ? rc : sb_buf_append_str(b, ",\"method\":\"");
    rc = rc ? rc : sb_buf_append_json_str(b, req->method.base, req->method.len);
    rc = rc ? rc : sb_buf_append_str(b, "\",\"path\":\"");
    rc = rc ? rc : sb_buf_append_json_str(b, path.base, path.len);
    rc = rc ? rc
            : sb_buf_appendf(b, "\",\"status\":%d,\"bytes\":%zu,\"duration_ms\":%.3f,", status,
                             bytes, (double)dur_ns / 1e6);
    rc = rc ? rc : sb_buf_append_str(b, "\"request_id\":\"");
    rc = rc ? rc : sb_buf_append_json_str(b, req->request_id, req->request_id_len);
    rc = rc ? rc : sb_buf_append_str(b, "\",\"remote\":\"");
    rc = rc ? rc : sb_buf_append_str(b, peer);
    rc = rc ? rc : sb_buf_append_str(b, "\",\"proto\":\"");
    rc = rc ? rc : sb_buf_append_str(b, req->ops->proto);
    rc = rc ? rc : sb_buf_append_str(b, "\"");
    /* A gRPC error answered Trailers-Only: its status is in the head (HTTP says 200). */
    for (int i = 0; !rc && i < req->num_resp_headers; i++) {
        const sb_http_header *h = &req->resp_headers[i];
        if (sb_str_case_eq(h->name, "grpc-status") && h->value.len > 0 && h->value.len < 4 &&
            strspn(h->value.base, "0123456789") >= h->value.len) {
            rc = sb_buf_append_str(b, ",\"grpc_status\":");
            rc = rc ? rc : sb_buf_append(b, h->value.base, h->value.len);
        }
    }
    rc = rc ? rc : sb_log_line_end(b);
    if (rc) {
        b->len = mark;
        return;
    }
    if (b->len >= 32768)
        sb_log_submit_buf(b);
}
