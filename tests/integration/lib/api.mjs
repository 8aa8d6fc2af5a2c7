// A small JSON client for the control-plane API (/v1): built-in fetch over the plain listener,
// or node:https trusting the dev CA over the TLS listener. Both resolve the same shape as
// client.mjs's request(): {status, headers (lower-case names), body, text, json()}, so that
// assertProblem() works on either.
import { request } from './client.mjs';

function normalise(status, headers, body) {
  return {
    status,
    headers,
    body,
    text: body.toString('utf8'),
    json() {
      return JSON.parse(this.text);
    },
  };
}

/**
 * Returns `call(method, path, opts)`; opts:
 *   key: the bearer credential (default: the client's `key`); null sends no Authorization;
 *   auth: a raw Authorization header value (wins over key);
 *   json: a value sent as an application/json body;
 *   body: raw body bytes/string (content type from headers, default application/json);
 *   requestId: sent as X-Request-Id; headers: more request headers.
 * `call.https` says which transport it uses; `call.with(key)` is the same client with another key.
 */
export function apiClient(srv, { https = false, key = null } = {}) {
  if (https && !srv.url) throw new Error('server has no TLS listener');
  if (!https && !srv.plainUrl) throw new Error('server has no plain listener');
  const call = async (method, path, opts = {}) => {
    const headers = { ...(opts.headers ?? {}) };
    const lower = new Set(Object.keys(headers).map((k) => k.toLowerCase()));
    const k = opts.key === undefined ? key : opts.key;
    if (opts.auth !== undefined) headers.authorization = opts.auth;
    else if (k) headers.authorization = `Bearer ${k}`;
    if (opts.requestId) headers['x-request-id'] = opts.requestId;
    let body;
    if (opts.json !== undefined) body = JSON.stringify(opts.json);
    else if (opts.body !== undefined) body = opts.body;
    if (body !== undefined && !lower.has('content-type')) headers['content-type'] = 'application/json';
    if (https) {
      const r = await request(srv, path, { method, headers, body, timeoutMs: 10000 });
      return normalise(r.status, r.headers, r.body);
    }
    const res = await fetch(srv.plainUrl + path, {
      method,
      headers,
      body,
      signal: AbortSignal.timeout(10000),
    });
    const b = Buffer.from(await res.arrayBuffer());
    return normalise(res.status, Object.fromEntries(res.headers), b);
  };
  call.https = https;
  call.with = (otherKey) => apiClient(srv, { https, key: otherKey });
  return call;
}

/** Follows next_cursor from `path` (which may have a query) until it is null; returns
 * {items, pages} where pages are the raw page objects. Fails on a non-200 page. */
export async function walkPages(call, path, { limit, key, maxPages = 1000 } = {}) {
  const items = [];
  const pages = [];
  let cursor = null;
  for (let i = 0; i < maxPages; i++) {
    const q = new URLSearchParams();
    if (limit !== undefined) q.set('limit', String(limit));
    if (cursor !== null) q.set('cursor', cursor);
    const sep = path.includes('?') ? '&' : '?';
    const qs = q.toString();
    const r = await call('GET', qs ? `${path}${sep}${qs}` : path, key === undefined ? {} : { key });
    if (r.status !== 200) throw new Error(`GET ${path} page ${i}: ${r.status} ${r.text}`);
    const page = r.json();
    pages.push(page);
    items.push(...page.data);
    if (page.next_cursor === null) return { items, pages };
    if (typeof page.next_cursor !== 'string') throw new Error(`next_cursor is ${JSON.stringify(page.next_cursor)}`);
    cursor = page.next_cursor;
  }
  throw new Error(`more than ${maxPages} pages from ${path}`);
}
