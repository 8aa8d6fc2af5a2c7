// The system endpoints, request ids, problem documents and the access log, through real
// clients: curl, node:https, fetch, and raw sockets.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';

import { assertProblem, connect, exchange, GENERATED_ID, request } from './lib/client.mjs';
import { makeCaAndServerCert } from './lib/certs.mjs';
import { parseMetrics, run, startServer, tempDir, waitFor } from './lib/server.mjs';

describe('system endpoints', () => {
  let srv;
  before(async () => {
    srv = await startServer({ plain: true, workers: 1 });
  });
  after(async () => {
    await srv?.cleanup();
  });

  it('prints its URLs on stdout and creates the dev CA files', async () => {
    assert.match(srv.stdoutText(), new RegExp(`URL:\\s+${srv.url.replace(/[.]/g, '\\.')}\\b`));
    assert.match(srv.stdoutText(), new RegExp(`URL:\\s+${srv.plainUrl.replace(/[.]/g, '\\.')}\\b`));
    for (const f of ['ca.pem', 'ca.key', 'server.pem', 'server.key']) {
      assert.ok(fs.existsSync(`${srv.dataDir}/tls/${f}`), `${f} exists`);
    }
    const keyMode = fs.statSync(`${srv.dataDir}/tls/server.key`).mode & 0o777;
    assert.equal(keyMode & 0o077, 0, `server.key is not readable by others (mode ${keyMode.toString(8)})`);
  });

  it('GET /healthz with curl --cacert', async () => {
    const r = await run('curl', ['-sS', '-i', '--http1.1', '--cacert', srv.caPath, `${srv.url}/healthz`]);
    assert.equal(r.code, 0, r.stderr);
    const [head, body] = r.stdout.split('\r\n\r\n');
    assert.match(head, /^HTTP\/1\.1 200 OK\r\n/);
    assert.match(head, /\r\ncontent-type: application\/json\b/i);
    assert.match(head, /\r\nx-request-id: [0-9a-f]{28}\r?$/im);
    assert.equal(body, '{"status":"ok"}');
  });

  it('curl refuses the server when trusting another CA (the certificate is really checked)', async () => {
    const dir = await tempDir('itest-switchboard-otherca-');
    try {
      const other = await makeCaAndServerCert(dir, 'other');
      const r = await run('curl', ['-sS', '-o', '/dev/null', '--cacert', other.ca, `${srv.url}/healthz`]);
      assert.equal(r.code, 60, `curl exit ${r.code}: ${r.stderr}`); // peer certificate cannot be authenticated
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('curl sends and gets back X-Request-Id', async () => {
    const r = await run('curl', ['-sS', '-D', '-', '-o', '/dev/null', '--http1.1', '--cacert', srv.caPath,
      '-H', 'X-Request-Id: curl-req.1:2~3_4', `${srv.url}/readyz`]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^HTTP\/1\.1 200/);
    assert.match(r.stdout, /\r\nx-request-id: curl-req\.1:2~3_4\r\n/i);
  });

  it('GET /healthz and /readyz with node:https', async () => {
    const h = await request(srv, '/healthz');
    assert.equal(h.status, 200);
    assert.match(h.headers['content-type'], /^application\/json/);
    assert.deepEqual(h.json(), { status: 'ok' });
    assert.equal(h.headers['content-length'], String(h.body.length));
    assert.ok(h.headers.date, 'Date header');
    assert.ok(!Number.isNaN(Date.parse(h.headers.date)), 'Date parses');
    const r = await request(srv, '/readyz');
    assert.equal(r.status, 200);
    assert.deepEqual(r.json(), { status: 'ready' });
  });

  it('fetch over the plain listener', async () => {
    const res = await fetch(`${srv.plainUrl}/healthz`);
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { status: 'ok' });
    assert.match(res.headers.get('x-request-id'), GENERATED_ID);
  });

  it('fetch over TLS (child node trusting the dev CA via NODE_EXTRA_CA_CERTS)', async () => {
    const code = `
      const r = await fetch(${JSON.stringify(`${srv.url}/healthz`)}, { headers: { 'x-request-id': 'from-fetch' } });
      console.log(JSON.stringify({ status: r.status, rid: r.headers.get('x-request-id'), body: await r.json() }));`;
    const r = await run(process.execPath, ['--input-type=module', '-e', code],
      { env: { ...process.env, NODE_EXTRA_CA_CERTS: srv.caPath } });
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), { status: 200, rid: 'from-fetch', body: { status: 'ok' } });
  });

  it('GET /metrics is Prometheus text with the documented series, and counts requests', async () => {
    const a = await request(srv, '/metrics');
    assert.equal(a.status, 200);
    assert.match(a.headers['content-type'], /^text\/plain/);
    const m1 = parseMetrics(a.text);
    for (const name of [
      'switchboard_connections_active',
      'switchboard_http_requests_total{code="2xx"}',
      'switchboard_http_requests_total{code="4xx"}',
      'switchboard_http_request_duration_seconds_bucket{le="+Inf"}',
      'switchboard_http_request_duration_seconds_count',
      'switchboard_http_request_duration_seconds_sum',
      'switchboard_tls_handshakes_total{result="ok"}',
      'switchboard_tls_handshakes_total{result="failed"}',
    ]) {
      assert.ok(m1.has(name), `metric ${name} present:\n${a.text}`);
      assert.ok(Number.isFinite(m1.get(name)), `${name} is a number`);
    }
    assert.match(a.text, /^# TYPE switchboard_http_requests_total counter$/m);
    assert.match(a.text, /^# TYPE switchboard_http_request_duration_seconds histogram$/m);
    assert.ok(m1.get('switchboard_connections_active') >= 1, 'this connection is active');
    assert.ok(m1.get('switchboard_tls_handshakes_total{result="ok"}') >= 1);

    // Histogram buckets are cumulative, +Inf equals _count.
    const buckets = [...m1.entries()].filter(([k]) => k.startsWith('switchboard_http_request_duration_seconds_bucket'));
    assert.ok(buckets.length >= 2);
    for (let i = 1; i < buckets.length; i++) assert.ok(buckets[i][1] >= buckets[i - 1][1], 'cumulative buckets');
    assert.equal(m1.get('switchboard_http_request_duration_seconds_bucket{le="+Inf"}'),
      m1.get('switchboard_http_request_duration_seconds_count'));

    await request(srv, '/healthz');
    await request(srv, '/no-such-thing');
    const m2 = parseMetrics((await request(srv, '/metrics')).text);
    const d = (k) => m2.get(k) - m1.get(k);
    assert.ok(d('switchboard_http_requests_total{code="2xx"}') >= 2, '2xx counted (previous /metrics + /healthz)');
    assert.ok(d('switchboard_http_requests_total{code="4xx"}') >= 1, '404 counted');
    assert.ok(d('switchboard_http_request_duration_seconds_count') >= 3);
    assert.ok(d('switchboard_tls_handshakes_total{result="ok"}') >= 3, 'one handshake per agent:false request');
  });

  it('unknown path → 404 problem+json with request_id = X-Request-Id', async () => {
    const r = await request(srv, '/no/such/path');
    const p = assertProblem(r, 404);
    assert.equal(p.title, 'Not Found');
    assert.match(r.headers['x-request-id'], GENERATED_ID);
    const exact = Object.keys(p).sort();
    for (const k of ['detail', 'request_id', 'status', 'title', 'type']) assert.ok(exact.includes(k), k);
  });

  it('known path, wrong method → 405 with Allow', async () => {
    for (const [method, p] of [['POST', '/healthz'], ['DELETE', '/metrics'], ['PUT', '/readyz']]) {
      const r = await request(srv, p, { method });
      const prob = assertProblem(r, 405);
      assert.equal(prob.title, 'Method Not Allowed');
      assert.ok(r.headers.allow, `${method} ${p}: Allow present`);
      assert.match(r.headers.allow, /\bGET\b/);
      assert.doesNotMatch(r.headers.allow, new RegExp(`\\b${method}\\b`));
    }
  });

  it('HEAD is GET without a body (checked on the wire)', async () => {
    const get = await request(srv, '/healthz');
    const c = await connect(srv);
    try {
      // HEAD then GET in one write: if HEAD carried a body the second parse would break.
      await c.write('HEAD /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\n\r\n');
      const h = await c.readResponse({ head: true });
      assert.equal(h.status, 200);
      assert.equal(h.headers['content-type'], get.headers['content-type']);
      assert.equal(h.headers['content-length'], get.headers['content-length']);
      const g = await c.readResponse();
      assert.equal(g.status, 200, `response after HEAD parses as the GET's: ${g.text}`);
      assert.equal(g.text, '{"status":"ok"}');
      assert.equal(c.pending().length, 0, 'nothing extra on the wire');
    } finally {
      c.destroy();
    }
    // HEAD of an error: the problem's headers, no body.
    const e = await exchange(srv, 'HEAD /nope HTTP/1.1\r\nHost: t\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n', { heads: [true] });
    assert.deepEqual(e.responses.map((x) => x.status), [404, 200]);
    assert.match(e.responses[0].headers['content-type'], /problem\+json/);
    assert.equal(e.responses[0].body.length, 0);
    assert.equal(e.rest.length, 0);
    const viaHttps = await request(srv, '/readyz', { method: 'HEAD' });
    assert.equal(viaHttps.status, 200);
    assert.equal(viaHttps.body.length, 0);
  });

  it('X-Request-Id: valid ids are echoed, invalid ones replaced by a generated 28-hex id', async () => {
    const valid = ['a', 'abc-DEF_1.2:3~', 'x'.repeat(64), '0123456789abcdef'];
    for (const id of valid) {
      const r = await request(srv, '/healthz', { headers: { 'X-Request-Id': id } });
      assert.equal(r.headers['x-request-id'], id, `echoed ${id}`);
    }
    const invalid = ['x'.repeat(65), 'has space', 'semi;colon', 'quote"', 'slash/', 'ünï'];
    for (const id of invalid) {
      const r = await exchange(srv, `GET /nope HTTP/1.1\r\nHost: t\r\nX-Request-Id: ${id}\r\nConnection: close\r\n\r\n`);
      assert.equal(r.responses.length, 1, `one response for ${id}`);
      const resp = r.responses[0];
      assert.match(resp.headers['x-request-id'], GENERATED_ID, `replaced ${JSON.stringify(id)}`);
      assert.equal(resp.json().request_id, resp.headers['x-request-id']);
    }
    const empty = await exchange(srv, 'GET /healthz HTTP/1.1\r\nHost: t\r\nX-Request-Id:\r\nConnection: close\r\n\r\n');
    assert.match(empty.responses[0].headers['x-request-id'], GENERATED_ID, 'empty id replaced');
    // Echoed ids reach the problem document too.
    const e = await request(srv, '/nope', { headers: { 'X-Request-Id': 'mine-42' } });
    assert.equal(assertProblem(e, 404).request_id, 'mine-42');
  });

  it('generated request ids are unique', async () => {
    const ids = new Set();
    const c = await connect(srv);
    try {
      let reqs = '';
      for (let i = 0; i < 50; i++) reqs += 'GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n';
      await c.write(reqs);
      for (let i = 0; i < 50; i++) ids.add((await c.readResponse()).headers['x-request-id']);
    } finally {
      c.destroy();
    }
    for (let i = 0; i < 10; i++) ids.add((await request(srv, '/healthz')).headers['x-request-id']);
    assert.equal(ids.size, 60);
    for (const id of ids) assert.match(id, GENERATED_ID);
  });

  it('access log: one JSON line per request, path without the query string', async () => {
    const secret = 'sekr1t-token-value';
    const r = await request(srv, `/healthz?access_token=${secret}&x=1`, { headers: { 'X-Request-Id': 'log-check-1' } });
    assert.equal(r.status, 200);
    const line = await srv.waitForLog((l) => l.request_id === 'log-check-1', { timeoutMs: 3000 });
    assert.equal(line.method, 'GET');
    assert.equal(line.path, '/healthz');
    assert.equal(line.status, 200);
    assert.equal(typeof line.bytes, 'number');
    assert.ok(line.bytes > 0);
    assert.equal(typeof line.duration_ms, 'number');
    assert.ok(line.duration_ms >= 0);
    assert.ok(!srv.stderrText().includes(secret), 'the query string never reaches the log');

    const p = await request(srv, '/nope?q=2', { headers: { 'X-Request-Id': 'log-check-2' } });
    assert.equal(p.status, 404);
    const l2 = await srv.waitForLog((l) => l.request_id === 'log-check-2', { timeoutMs: 3000 });
    assert.equal(l2.status, 404);
    assert.equal(l2.path, '/nope');
    assert.equal(srv.logs().filter((l) => l.request_id === 'log-check-1').length, 1, 'exactly one line per request');
  });

  it('access log bytes = the bytes of the response on the wire', async () => {
    const c = await connect(srv, { plain: true });
    try {
      await c.write('GET /healthz HTTP/1.1\r\nHost: t\r\nX-Request-Id: bytes-check\r\nConnection: close\r\n\r\n');
      await c.readResponse();
      assert.ok(await c.waitClose(2000));
      const line = await srv.waitForLog((l) => l.request_id === 'bytes-check', { timeoutMs: 3000 });
      assert.equal(line.bytes, c.received);
      assert.ok(line.duration_ms < 1000, `duration_ms ${line.duration_ms} is in milliseconds`);
    } finally {
      c.destroy();
    }
  });

  it('switchboard_connections_active follows open connections', async () => {
    const active = async () => parseMetrics((await request(srv, '/metrics')).text).get('switchboard_connections_active');
    const base = await active();
    const conns = await Promise.all(Array.from({ length: 5 }, () => connect(srv)));
    assert.ok(await active() >= base + 5, 'five more while open');
    for (const c of conns) c.destroy();
    await waitFor(async () => (await active()) <= base, { timeoutMs: 3000, what: 'the gauge to drop back' });
  });

  it('concurrent clients on several loops', async () => {
    const results = await Promise.all(Array.from({ length: 64 }, (_, i) =>
      request(srv, '/healthz', { headers: { 'X-Request-Id': `conc-${i}` } })));
    results.forEach((r, i) => {
      assert.equal(r.status, 200);
      assert.equal(r.headers['x-request-id'], `conc-${i}`);
    });
  });

  it('log lines are valid JSON with level/msg, even for odd paths', async () => {
    for (const target of ['/x%22y%5C', "/a'b", '/%00', '/\u00e9t\u00e9'.normalize(), '/a\\b']) {
      await exchange(srv, Buffer.from(`GET ${target} HTTP/1.1\r\nHost: t\r\nX-Request-Id: odd-path\r\nConnection: close\r\n\r\n`, 'utf8'));
    }
    await srv.waitForLog((l) => l.request_id === 'odd-path', { timeoutMs: 3000 });
    await waitFor(() => srv.logs().length > 0);
    for (const l of srv.stderrLines()) {
      assert.doesNotThrow(() => JSON.parse(l), `stderr line is JSON: ${l}`);
    }
    assert.ok(srv.logs().every((l) => typeof l.msg === 'string'), 'every line has msg');
  });
});

describe('startup', () => {
  it('the port accepts connections as soon as the "listening" line is logged', async () => {
    // Supervisors and scripts wait for that line (or the URL on stdout) and connect at once.
    let refused = 0;
    const rounds = 15;
    for (let i = 0; i < rounds; i++) {
      const srv = await startServer({ workers: 2, waitAccept: false });
      try {
        for (const port of [srv.port]) {
          const ok = await new Promise((res) => {
            const s = net.connect({ host: '127.0.0.1', port });
            s.once('connect', () => {
              s.destroy();
              res(true);
            });
            s.once('error', () => res(false));
          });
          if (!ok) refused++;
        }
      } finally {
        await srv.cleanup();
      }
    }
    assert.equal(refused, 0, `${refused} of ${rounds} connections made right after "listening" were refused`);
  });
});
