// HTTP/2 (RFC 9113) with real clients: curl --http2 over TLS (ALPN h2) and
// --http2-prior-knowledge over the plain listener (h2c), node's built-in http2 client with
// many concurrent streams on one connection, h2load, and Server-Sent Events over an h2 stream.
// The REST API must answer exactly as it does over HTTP/1.1.
import assert from 'node:assert/strict';
import http2 from 'node:http2';
import { after, before, describe, it } from 'node:test';

import { h2connect, h2req } from './lib/h2.mjs';
import { F, frame, RawH2, requestBlock, T } from './lib/h2raw.mjs';
import { parseMetrics, run, sleep, startServer, waitFor } from './lib/server.mjs';

const ADMIN = 'http2-itest-admin-key-0123456789abcdefghijklmn';
let n = 0;
const req = (s, method, path, opts = {}) => h2req(s, method, path, { key: ADMIN, ...opts });
const uniq = (p) => `${p}-${process.pid}-${Date.now().toString(36)}-${n++}`;

describe('HTTP/2', () => {
  let srv;
  before(async () => {
    srv = await startServer({ plain: true, workers: 1, env: { SWITCHBOARD_ADMIN_KEY: ADMIN }, args: ['--debug.ws-echo'] });
  });
  after(async () => {
    await srv?.cleanup();
  });

  const curl = (args) => run('curl', ['-sS', '-H', `Authorization: Bearer ${ADMIN}`, '-w', '\n%{http_code} %{http_version}', ...args]);
  const split = (r) => {
    const i = r.stdout.lastIndexOf('\n');
    const [code, ver] = r.stdout.slice(i + 1).split(' ');
    return { body: r.stdout.slice(0, i), code: Number(code), ver };
  };

  for (const mode of ['alpn', 'h2c']) {
    it(`curl ${mode === 'alpn' ? '--http2 over TLS (ALPN h2)' : '--http2-prior-knowledge (h2c)'}: create, get, list, 404, 401`, async () => {
      const base = mode === 'alpn' ? srv.url : srv.plainUrl;
      const flags = mode === 'alpn' ? ['--http2', '--cacert', srv.caPath] : ['--http2-prior-knowledge'];
      const room = uniq('h2room');
      const created = split(await curl([...flags, '-H', 'content-type: application/json', '-d',
        JSON.stringify({ name: room, metadata: 'over h2' }), `${base}/v1/rooms`]));
      assert.equal(created.ver, '2', 'HTTP/2 was used');
      assert.equal(created.code, 201, created.body);
      assert.equal(JSON.parse(created.body).name, room);

      const got = split(await curl([...flags, `${base}/v1/rooms/${room}`]));
      assert.equal(got.code, 200);
      assert.equal(JSON.parse(got.body).metadata, 'over h2');

      const list = split(await curl([...flags, `${base}/v1/rooms?limit=100`]));
      assert.equal(list.code, 200);
      assert.ok(JSON.parse(list.body).data.some((r) => r.name === room));

      const head = await run('curl', ['-sS', '-D', '-', '-o', '-', ...flags, '-H', `Authorization: Bearer ${ADMIN}`,
        `${base}/v1/rooms/${room}-missing`]);
      assert.match(head.stdout, /^HTTP\/2 404 \r\n/);
      assert.match(head.stdout, /\r\ncontent-type: application\/problem\+json\r\n/);
      assert.match(head.stdout, /\r\nx-request-id: [0-9a-f]{28}\r\n/);
      const problem = JSON.parse(head.stdout.slice(head.stdout.indexOf('\r\n\r\n') + 4));
      assert.equal(problem.status, 404);
      assert.equal(problem.type, 'urn:switchboard:problem:not-found');

      const unauth = await run('curl', ['-sS', '-w', '\n%{http_code} %{http_version}', ...flags, `${base}/v1/rooms`]);
      const u = split(unauth);
      assert.equal(u.code, 401);
      assert.equal(u.ver, '2');
      assert.equal(JSON.parse(u.body).type, 'urn:switchboard:problem:unauthorized');
    });
  }

  it('node http2: 200 concurrent streams on one connection, request ids, access log says HTTP/2', async () => {
    const s = await h2connect(srv);
    try {
      const room = uniq('conc');
      const c = await req(s, 'POST', '/v1/rooms', { json: { name: room } });
      assert.equal(c.status, 201, c.text);
      const rs = await Promise.all(Array.from({ length: 200 }, (_, i) =>
        req(s, 'GET', i % 2 ? `/v1/rooms/${room}` : '/healthz', { headers: { 'x-request-id': `h2-${i}` } })));
      for (const [i, r] of rs.entries()) {
        assert.equal(r.status, 200, r.text);
        assert.equal(r.headers['x-request-id'], `h2-${i}`);
        if (i % 2) assert.equal(r.json().name, room);
        else assert.deepEqual(r.json(), { status: 'ok' });
      }
      // A request body and a 404 with a problem document, on the same connection.
      const miss = await req(s, 'GET', '/v1/nope');
      assert.equal(miss.status, 404);
      assert.equal(miss.headers['content-type'], 'application/problem+json');
      const line = await srv.waitForLog((l) => l.msg === 'request' && l.request_id === 'h2-199');
      assert.equal(line.proto, 'HTTP/2');
      assert.equal(line.status, 200);
    } finally {
      s.close();
    }
  });

  it('h2c and h2 both serve; HTTP/1.1 on the plain listener still works next to h2c', async () => {
    const s = await h2connect(srv, { tls: false });
    try {
      const r = await req(s, 'GET', '/readyz');
      assert.equal(r.status, 200);
    } finally {
      s.close();
    }
    const res = await fetch(`${srv.plainUrl}/healthz`);
    assert.equal(res.status, 200);
  });

  it('request bodies: over http.max_body_bytes → 413; a missing path → 404; HEAD has no body', async () => {
    const s = await h2connect(srv);
    try {
      const big = await req(s, 'POST', '/v1/rooms', { body: Buffer.alloc(1024 * 1024 + 10, 0x61), headers: { 'content-type': 'application/json' } });
      assert.equal(big.status, 413);
      assert.equal(JSON.parse(big.text).type, 'urn:switchboard:problem:body-too-large');
      const bad = await req(s, 'POST', '/v1/rooms', { body: '{"name":', headers: { 'content-type': 'application/json' } });
      assert.equal(bad.status, 400);
      const head = await req(s, 'HEAD', '/healthz', { key: null });
      assert.equal(head.status, 200);
      assert.equal(head.text, '');
      assert.equal(head.headers['content-length'], '15');
      // The connection is fine after all that.
      assert.equal((await req(s, 'GET', '/healthz')).status, 200);
    } finally {
      s.close();
    }
  });

  it('eight 900 KB request bodies at once on one connection: the connection window (4 MiB) is given back as bodies are released', async () => {
    const s = await h2connect(srv);
    try {
      const body = Buffer.alloc(900 * 1024, 0x20); // JSON whitespace only: a 400 after reading it all
      const rs = await Promise.all(Array.from({ length: 8 }, () =>
        req(s, 'POST', '/v1/rooms', { body, headers: { 'content-type': 'application/json' } })));
      for (const r of rs) assert.equal(r.status, 400, r.text);
      assert.equal((await req(s, 'GET', '/healthz')).status, 200);
    } finally {
      s.close();
    }
  });

  it('h2load -n 2000 -c 4 -m 10: every response 2xx (h2c and TLS)', async () => {
    for (const url of [`${srv.plainUrl}/healthz`, `${srv.url}/readyz`]) {
      const r = await run('h2load', ['-n', '2000', '-c', '4', '-m', '10', '-H', `authorization: Bearer ${ADMIN}`, url], { timeoutMs: 30000 });
      assert.equal(r.code, 0, r.stderr + r.stdout);
      assert.match(r.stdout, /requests: 2000 total, 2000 started, 2000 done, 2000 succeeded, 0 failed, 0 errored/, r.stdout);
      assert.match(r.stdout, /status codes: 2000 2xx, 0 3xx, 0 4xx, 0 5xx/, r.stdout);
      assert.match(r.stdout, /Application protocol: h2(c)?\b/, r.stdout);
    }
    const m = parseMetrics(await (await fetch(`${srv.plainUrl}/metrics`)).text());
    assert.ok([...m.keys()].length > 0);
  });

  it('trailers: a streamed response ends with trailer fields; Trailers-Only is one HEADERS frame with END_STREAM', async () => {
    const s = await h2connect(srv);
    try {
      const st = s.request({ ':path': '/debug/stream?mode=trailers' });
      let body = '';
      let headers;
      st.setEncoding('utf8');
      st.on('response', (h) => {
        headers = h;
      });
      st.on('data', (d) => {
        body += d;
      });
      const trailers = await new Promise((resolve, reject) => {
        st.on('trailers', resolve);
        st.on('error', reject);
        st.on('end', () => resolve(null));
      });
      await new Promise((r) => (st.readableEnded ? r() : st.on('end', r)));
      assert.equal(headers[':status'], 200);
      assert.equal(body, 'ab');
      assert.equal(trailers?.['x-status'], '0');
      assert.equal(trailers?.['x-message'], 'done', 'trailer names are sent lower-case');
      const only = await req(s, 'GET', '/debug/stream?mode=only');
      assert.equal(only.status, 200);
      assert.equal(only.headers['x-status'], '5');
      assert.equal(only.headers['content-length'], undefined, 'no content-length on an empty response');
      assert.equal(only.text, '');
    } finally {
      s.close();
    }
    const c = await RawH2.open(srv);
    try {
      c.send(frame(T.HEADERS, F.END_HEADERS | F.END_STREAM, 1, requestBlock({ path: '/debug/stream?mode=only' })));
      c.send(frame(T.HEADERS, F.END_HEADERS | F.END_STREAM, 3, requestBlock({ path: '/debug/stream?mode=trailers' })));
      await c.waitFrame((f) => f.stream === 3 && f.type === T.HEADERS && (f.flags & F.END_STREAM), 'trailers on stream 3');
      const one = c.frames.filter((f) => f.stream === 1);
      assert.equal(one.length, 1, 'Trailers-Only: one frame');
      assert.equal(one[0].type, T.HEADERS);
      assert.equal(one[0].flags & (F.END_STREAM | F.END_HEADERS), F.END_STREAM | F.END_HEADERS);
      const three = c.frames.filter((f) => f.stream === 3).map((f) => [f.type, f.flags & F.END_STREAM]);
      assert.deepEqual(three[0], [T.HEADERS, 0]);
      assert.deepEqual(three.at(-1), [T.HEADERS, F.END_STREAM], 'the trailer section ends the stream');
      assert.ok(three.slice(1, -1).every(([t, es]) => t === T.DATA && es === 0), 'DATA between, none ending the stream');
    } finally {
      c.destroy();
    }
  });

  it('clients that reset streams while their handlers work, or leave with requests pending: the server carries on', async () => {
    const s = await h2connect(srv);
    s.on('error', () => {});
    const cancelled = [];
    for (let i = 0; i < 30; i++) {
      const st = s.request({ ':method': 'POST', ':path': '/v1/rooms', authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' });
      st.on('error', () => {});
      st.end(JSON.stringify({ name: uniq('rst') }));
      cancelled.push(new Promise((r) => st.on('close', r)));
      setImmediate(() => st.close(http2.constants.NGHTTP2_CANCEL));
    }
    await Promise.all(cancelled);
    assert.equal((await req(s, 'GET', '/healthz')).status, 200, 'same connection still serves');
    s.close();
    const gone = await h2connect(srv);
    gone.on('error', () => {});
    for (let i = 0; i < 30; i++) {
      const st = gone.request({ ':method': 'POST', ':path': '/v1/rooms', authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' });
      st.on('error', () => {});
      st.end(JSON.stringify({ name: uniq('gone') }));
    }
    setImmediate(() => gone.destroy());
    await sleep(300);
    const after = await h2connect(srv, { tls: false });
    try {
      assert.equal((await req(after, 'GET', '/v1/rooms?limit=1')).status, 200);
    } finally {
      after.close();
    }
  });

  it('SSE over h2: events arrive on the stream; cancelling the stream leaves the connection usable', async () => {
    const s = await h2connect(srv);
    try {
      const st = s.request({ ':path': '/v1/events', accept: 'text/event-stream', authorization: `Bearer ${ADMIN}` });
      let headers;
      let raw = '';
      st.setEncoding('utf8');
      st.on('response', (h) => {
        headers = h;
      });
      st.on('data', (d) => {
        raw += d;
      });
      await waitFor(() => headers, { what: 'SSE response head' });
      assert.equal(headers[':status'], 200);
      assert.match(headers['content-type'], /^text\/event-stream/);
      assert.equal(headers['transfer-encoding'], undefined);
      const room = uniq('sse');
      assert.equal((await req(s, 'POST', '/v1/rooms', { json: { name: room } })).status, 201);
      await waitFor(() => raw.includes(`"${room}"`), { what: 'the room.created event over h2' });
      assert.match(raw, /event: room\.created\n/);
      st.close(http2.constants.NGHTTP2_CANCEL);
      await sleep(50);
      assert.equal((await req(s, 'GET', '/healthz')).status, 200, 'connection still serves');
    } finally {
      s.close();
    }
  });
});

describe('HTTP/2 shares the request path of HTTP/1.1', () => {
  it('rate limits (429, Retry-After, RateLimit headers) and request metrics count h2 requests', async () => {
    const srv = await startServer({ plain: true, workers: 1, env: { SWITCHBOARD_ADMIN_KEY: ADMIN },
      args: ['--ratelimit.requests-per-second', '2', '--ratelimit.burst', '3'] });
    try {
      const metric = async (name) => parseMetrics(await (await fetch(`${srv.plainUrl}/metrics`)).text()).get(name) ?? 0;
      const ok0 = await metric('switchboard_http_requests_total{code="2xx"}');
      const s = await h2connect(srv);
      try {
        const seen = [];
        for (let i = 0; i < 4; i++) seen.push(await req(s, 'GET', '/v1/rooms'));
        assert.deepEqual(seen.map((r) => r.status), [200, 200, 200, 429]);
        assert.equal(seen[0].headers['ratelimit-policy'], '"default";q=3;w=2');
        assert.equal(seen[3].headers['retry-after'], '1');
        assert.equal(seen[3].headers['content-type'], 'application/problem+json');
        const bad = await req(s, 'GET', '/healthz', { headers: { 'x-request-id': 'not valid!' } });
        assert.match(bad.headers['x-request-id'], /^[0-9a-f]{28}$/, 'an invalid X-Request-Id is replaced');
      } finally {
        s.close();
      }
      assert.ok((await metric('switchboard_http_requests_total{code="2xx"}')) >= ok0 + 4);
      assert.ok((await metric('switchboard_http_requests_total{code="4xx"}')) >= 1);
    } finally {
      await srv.cleanup();
    }
  });
});

describe('HTTP/2 on shutdown', () => {
  it('SIGTERM: an open SSE stream over h2 ends cleanly, GOAWAY, exit 0', async () => {
    const srv = await startServer({ plain: true, workers: 1, env: { SWITCHBOARD_ADMIN_KEY: ADMIN } });
    try {
      const s = await h2connect(srv, { tls: false });
      let goaway = null;
      s.on('goaway', (code) => {
        goaway = code;
      });
      s.on('error', () => {});
      const st = s.request({ ':path': '/v1/events', accept: 'text/event-stream', authorization: `Bearer ${ADMIN}` });
      let status;
      st.on('response', (h) => {
        status = h[':status'];
      });
      st.resume();
      const ended = new Promise((r) => st.on('end', () => r('end')).on('close', () => r('close')));
      await waitFor(() => status, { what: 'SSE head' });
      assert.equal(status, 200);
      const t0 = Date.now();
      srv.signal('SIGTERM');
      assert.equal(await ended, 'end', 'the stream ended with END_STREAM, not a reset');
      await waitFor(() => goaway !== null, { what: 'GOAWAY' });
      assert.equal(goaway, http2.constants.NGHTTP2_NO_ERROR);
      const r = await srv.waitExit(10000);
      assert.deepEqual(r, { code: 0, signal: null });
      assert.ok(Date.now() - t0 < 5000);
      s.destroy();
    } finally {
      await srv.cleanup();
    }
  });
});
