// HTTP/1.1 framing and strictness, byte-exact over raw sockets (TLS and cleartext).
//
// Every refused request is followed, in the same write, by a valid pipelined GET: the
// server must answer the refusal only, say Connection: close, and close. A server that
// answered the smuggled GET would have parsed the framing differently from what we sent.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { assertProblem, connect, exchange } from './lib/client.mjs';
import { parseMetrics, sleep, startServer } from './lib/server.mjs';

const GET = 'GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n';

// [name, bytes, status]
const REFUSED = [
  // Request smuggling vectors.
  ['Content-Length with Transfer-Encoding',
    'POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n', 400],
  ['Transfer-Encoding before Content-Length',
    'POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n', 400],
  ['duplicate Content-Length (equal values)',
    'POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello', 400],
  ['duplicate Content-Length (different values)',
    'POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 0\r\n\r\nhello', 400],
  ['Content-Length "+5"', 'POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: +5\r\n\r\nhello', 400],
  ['Content-Length "1,1"', 'POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 1,1\r\n\r\nx', 400],
  ['Content-Length "-1"', 'POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n', 400],
  ['Content-Length "0x5"', 'POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 0x5\r\n\r\nhello', 400],
  ['Content-Length "5 5"', 'POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 5 5\r\n\r\nhello', 400],
  ['Content-Length empty', 'POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length:\r\n\r\n', 400],
  ['Content-Length overflowing 64 bits',
    'POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 18446744073709551617\r\n\r\n', 400],
  ['Transfer-Encoding "xchunked"',
    'POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n', 400],
  ['Transfer-Encoding "chunked, chunked"',
    'POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n', 400],
  ['two Transfer-Encoding fields',
    'POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n', 400],
  ['Transfer-Encoding "chunked" with a vertical tab',
    'POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n', 400],
  ['Transfer-Encoding in HTTP/1.0',
    'POST /healthz HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n', 400],
  // Message syntax.
  ['bare LF line endings', 'GET /healthz HTTP/1.1\nHost: t\n\n', 400],
  ['bare LF after one header', 'GET /healthz HTTP/1.1\r\nHost: t\nX-A: b\r\n\r\n', 400],
  ['bare CR in a header value', 'GET /healthz HTTP/1.1\r\nHost: t\r\nX-A: a\rb\r\n\r\n', 400],
  ['obs-fold (continuation line)', 'GET /healthz HTTP/1.1\r\nHost: t\r\nX-Folded: a\r\n  b\r\n\r\n', 400],
  ['obs-fold with a tab', 'GET /healthz HTTP/1.1\r\nHost: t\r\nX-Folded: a\r\n\tb\r\n\r\n', 400],
  ['space before the colon', 'GET /healthz HTTP/1.1\r\nHost : t\r\n\r\n', 400],
  ['tab before the colon', 'GET /healthz HTTP/1.1\r\nHost: t\r\nX-A\t: b\r\n\r\n', 400],
  ['space before colon of Content-Length',
    'POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length : 5\r\n\r\nhello', 400],
  ['missing Host in HTTP/1.1', 'GET /healthz HTTP/1.1\r\nX-A: b\r\n\r\n', 400],
  ['two Host fields', 'GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n', 400],
  ['invalid character in a field name', 'GET /healthz HTTP/1.1\r\nHost: t\r\nX(A): b\r\n\r\n', 400],
  ['empty field name', 'GET /healthz HTTP/1.1\r\nHost: t\r\n: b\r\n\r\n', 400],
  ['NUL in a field value', 'GET /healthz HTTP/1.1\r\nHost: t\r\nX-A: a\x00b\r\n\r\n', 400],
  ['control character in the target', 'GET /heal\x01thz HTTP/1.1\r\nHost: t\r\n\r\n', 400],
  ['space inside the target', 'GET /heal thz HTTP/1.1\r\nHost: t\r\n\r\n', 400],
  ['invalid character in the method', 'GE(T /healthz HTTP/1.1\r\nHost: t\r\n\r\n', 400],
  ['two spaces after the method', 'GET  /healthz HTTP/1.1\r\nHost: t\r\n\r\n', 400],
  ['lower-case protocol name', 'GET /healthz http/1.1\r\nHost: t\r\n\r\n', 400],
  ['garbage request line', 'HELLO\r\n\r\n', 400],
  ['malformed chunk size',
    'POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n', 400],
  ['chunk data longer than its size',
    'POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n', 400],
  ['chunk size with a bare LF',
    'POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n', 400],
  ['chunk size overflowing 64 bits',
    'POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\nx\r\n0\r\n\r\n', 400],
  // Unsupported, not malformed.
  ['Transfer-Encoding "gzip, chunked"',
    'POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n', 501],
  ['HTTP/2.0 in the request line', 'GET /healthz HTTP/2.0\r\nHost: t\r\n\r\n', 505],
  ['HTTP/3.0 in the request line', 'GET /healthz HTTP/3.0\r\nHost: t\r\n\r\n', 505],
];

function checkRefused(r, status, name) {
  assert.ok(r.responses.length >= 1, `${name}: got a response (closed: ${r.closeReason}; bytes: ${JSON.stringify(r.data.toString('latin1').slice(0, 300))})`);
  const resp = r.responses[0];
  assert.equal(resp.status, status, `${name}: status ${resp.status}, body ${resp.text}`);
  assertProblem(resp, status);
  assert.match(resp.headers.connection ?? '', /^close$/i, `${name}: Connection: close`);
  assert.equal(r.responses.length, 1, `${name}: the pipelined request after it was not answered: ${r.responses.map((x) => x.status)}`);
  assert.ok(r.closed, `${name}: the server closed the connection`);
  assert.notEqual(r.closeReason, 'reset', `${name}: closed without a reset`);
  assert.equal(r.rest.length, 0, `${name}: no trailing bytes`);
}

for (const transport of ['tls', 'plain']) {
  describe(`HTTP/1.1 over ${transport}`, () => {
    let srv;
    const plain = transport === 'plain';
    before(async () => {
      srv = await startServer({ plain: true, workers: 1, args: ['--http.body-timeout', '5s', '--http.header-timeout', '5s'] });
    });
    after(async () => {
      await srv?.cleanup();
    });

    describe('refused requests: exact status, Connection: close, closed', () => {
      for (const [name, bytes, status] of REFUSED) {
        it(`${status} ${name}`, async () => {
          const r = await exchange(srv, bytes + GET, { plain, timeoutMs: 3000 });
          checkRefused(r, status, name);
        });
      }
    });

    it('refusals are counted in switchboard_http_protocol_errors_total', async () => {
      const before = parseMetrics((await exchange(srv, 'GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n', { plain })).responses[0].text);
      await exchange(srv, 'GET / HTTP/1.1\nHost: t\n\n', { plain });
      await exchange(srv, 'GET / HTTP/2.0\r\nHost: t\r\n\r\n', { plain });
      const afterM = parseMetrics((await exchange(srv, 'GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n', { plain })).responses[0].text);
      const k = 'switchboard_http_protocol_errors_total';
      assert.ok(afterM.has(k), `${k} present`);
      assert.equal(afterM.get(k) - before.get(k), 2);
    });

    it('a request split into single bytes is parsed the same', async () => {
      const c = await connect(srv, { plain });
      try {
        await c.writeSlowly('GET /healthz HTTP/1.1\r\nHost: t\r\nX-Request-Id: split-1\r\n\r\n', { chunk: 1, delayMs: 2 });
        const r = await c.readResponse();
        assert.equal(r.status, 200);
        assert.equal(r.headers['x-request-id'], 'split-1');
      } finally {
        c.destroy();
      }
    });

    it('valid variants are accepted', async () => {
      const ok = [
        ['HTTP/1.0 without Host', 'GET /healthz HTTP/1.0\r\n\r\n'],
        ['empty lines before the request line', '\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\n\r\n'],
        ['absolute-form target', `GET https://127.0.0.1/healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`],
        ['OWS around a field value', 'GET /healthz HTTP/1.1\r\nHost:t\r\nX-A: \t b \t\r\n\r\n'],
        ['case-insensitive field names', 'GET /healthz HTTP/1.1\r\nhOsT: t\r\n\r\n'],
        ['Content-Length: 0 on GET', 'GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n'],
        ['Transfer-Encoding "Chunked" (case-insensitive)',
          'GET /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding:  Chunked \r\n\r\n0\r\n\r\n'],
        ['query string', 'GET /healthz?a=1&b=%20 HTTP/1.1\r\nHost: t\r\n\r\n'],
      ];
      for (const [name, bytes] of ok) {
        const r = await exchange(srv, bytes + (bytes.includes('HTTP/1.0') ? '' : 'GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n'), { plain });
        assert.ok(r.responses.length >= 1, `${name}: a response`);
        assert.equal(r.responses[0].status, 200, `${name}: ${r.responses[0].status} ${r.responses[0].text}`);
        assert.equal(r.responses[0].text, '{"status":"ok"}', name);
        if (!bytes.includes('HTTP/1.0')) {
          assert.equal(r.responses.length, 2, `${name}: the pipelined request was answered too`);
          assert.equal(r.responses[1].text, '{"status":"ready"}', name);
        }
      }
    });

    it('keep-alive: several requests on one connection', async () => {
      const c = await connect(srv, { plain });
      try {
        for (let i = 0; i < 5; i++) {
          await c.write(`GET /healthz HTTP/1.1\r\nHost: t\r\nX-Request-Id: ka-${i}\r\n\r\n`);
          const r = await c.readResponse();
          assert.equal(r.status, 200);
          assert.equal(r.headers['x-request-id'], `ka-${i}`);
          assert.equal(r.headers.connection, undefined, 'no Connection: close on a keep-alive response');
        }
        assert.equal(c.isClosed, false);
        // Connection: close on the last request: answered with Connection: close, then closed.
        await c.write('GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n');
        const last = await c.readResponse();
        assert.equal(last.status, 200);
        assert.match(last.headers.connection, /close/i);
        assert.ok(await c.waitClose(2000), 'closed after Connection: close');
      } finally {
        c.destroy();
      }
    });

    it('HTTP/1.0: closes by default, keeps alive on request', async () => {
      const r = await exchange(srv, 'GET /healthz HTTP/1.0\r\n\r\n', { plain });
      assert.equal(r.responses.length, 1);
      assert.equal(r.responses[0].status, 200);
      assert.ok(r.closed, 'HTTP/1.0 without keep-alive is closed');
      const c = await connect(srv, { plain });
      try {
        await c.write('GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n');
        const a = await c.readResponse();
        assert.equal(a.status, 200);
        assert.match(a.headers.connection ?? '', /keep-alive/i);
        await c.write('GET /readyz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n');
        assert.equal((await c.readResponse()).status, 200);
      } finally {
        c.destroy();
      }
    });

    it('pipelining: three requests in one write are answered in order', async () => {
      const c = await connect(srv, { plain });
      try {
        await c.write(
          'GET /healthz HTTP/1.1\r\nHost: t\r\nX-Request-Id: p1\r\n\r\n' +
          'GET /nope HTTP/1.1\r\nHost: t\r\nX-Request-Id: p2\r\n\r\n' +
          'GET /readyz HTTP/1.1\r\nHost: t\r\nX-Request-Id: p3\r\n\r\n');
        const a = await c.readResponse();
        const b = await c.readResponse();
        const d = await c.readResponse();
        assert.deepEqual([a.status, b.status, d.status], [200, 404, 200]);
        assert.deepEqual([a.headers['x-request-id'], b.headers['x-request-id'], d.headers['x-request-id']], ['p1', 'p2', 'p3']);
        assert.equal(a.text, '{"status":"ok"}');
        assert.equal(d.text, '{"status":"ready"}');
        assert.equal(b.json().request_id, 'p2');
        // Still usable afterwards.
        await c.write('GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n');
        assert.equal((await c.readResponse()).status, 200);
      } finally {
        c.destroy();
      }
    });

    it('pipelining: many requests, responses in order', async () => {
      const c = await connect(srv, { plain });
      try {
        const n = 40;
        let all = '';
        for (let i = 0; i < n; i++) all += `GET /${i % 2 ? 'healthz' : 'readyz'} HTTP/1.1\r\nHost: t\r\nX-Request-Id: m${i}\r\n\r\n`;
        await c.write(all);
        for (let i = 0; i < n; i++) {
          const r = await c.readResponse();
          assert.equal(r.status, 200);
          assert.equal(r.headers['x-request-id'], `m${i}`);
        }
      } finally {
        c.destroy();
      }
    });

    it('Content-Length body is framed exactly (405 for POST, then the pipelined GET)', async () => {
      // The body looks like a request: it must be consumed as a body, not parsed.
      const body = 'GET /nope HTTP/1.1\r\nHost: t\r\n\r\n';
      const r = await exchange(srv,
        `POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: ${body.length}\r\n\r\n${body}` +
        'GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n', { plain });
      assert.deepEqual(r.responses.map((x) => x.status), [405, 200]);
      assert.match(r.responses[0].headers.allow, /GET/);
    });

    it('Content-Length body sent in pieces', async () => {
      const r = await exchange(srv, [
        'POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n', 'hel', 'lo', 'world',
        'GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n'], { plain, gapMs: 30 });
      assert.deepEqual(r.responses.map((x) => x.status), [405, 200]);
    });

    it('chunked request body is decoded (405 for POST, then the pipelined GET)', async () => {
      const r = await exchange(srv,
        'POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n' +
        '5\r\nhello\r\n6;ext=1;q="x"\r\n world\r\nA\r\n0123456789\r\n0\r\nX-Trailer: yes\r\n\r\n' +
        'GET /healthz HTTP/1.1\r\nHost: t\r\nX-Request-Id: after-chunked\r\nConnection: close\r\n\r\n', { plain });
      assert.deepEqual(r.responses.map((x) => x.status), [405, 200]);
      assert.equal(r.responses[1].headers['x-request-id'], 'after-chunked');
    });

    it('chunked body that contains a request line is not parsed as one', async () => {
      const inner = 'GET /nope HTTP/1.1\r\nHost: t\r\n\r\n';
      const r = await exchange(srv,
        `POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n${inner.length.toString(16)}\r\n${inner}\r\n0\r\n\r\n` +
        'GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n', { plain });
      assert.deepEqual(r.responses.map((x) => x.status), [405, 200]);
      assert.equal(r.responses[1].text, '{"status":"ready"}');
    });

    it('chunked body arriving a few bytes at a time', async () => {
      const c = await connect(srv, { plain });
      try {
        await c.write('POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n');
        await c.writeSlowly('4\r\nwiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\n\r\n', { chunk: 3, delayMs: 5 });
        const r = await c.readResponse();
        assert.equal(r.status, 405);
        await c.write('GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n');
        assert.equal((await c.readResponse()).status, 200);
      } finally {
        c.destroy();
      }
    });

    it('Expect: 100-continue gets 100 Continue before the body is sent', async () => {
      const c = await connect(srv, { plain });
      try {
        await c.write('POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n');
        const cont = await c.readResponse({ timeoutMs: 2000 });
        assert.equal(cont.status, 100);
        assert.equal(cont.reason, 'Continue');
        await c.write('hello' + 'GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n');
        const r = await c.readResponse();
        assert.equal(r.status, 405, 'the body was read and the request answered');
        const g = await c.readResponse();
        assert.equal(g.status, 200, 'the body was framed exactly');
      } finally {
        c.destroy();
      }
    });

    it('Expect: 100-continue with a chunked body', async () => {
      const c = await connect(srv, { plain });
      try {
        await c.write('POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n');
        const cont = await c.readResponse({ timeoutMs: 2000 });
        assert.equal(cont.status, 100);
        await c.write('3\r\nabc\r\n0\r\n\r\n');
        assert.equal((await c.readResponse()).status, 405);
      } finally {
        c.destroy();
      }
    });

    it('no 100 Continue without Expect', async () => {
      const c = await connect(srv, { plain });
      try {
        await c.write('POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\n');
        await sleep(250);
        assert.equal(c.pending().length, 0, `nothing sent before the body: ${c.pending().toString('latin1')}`);
        await c.write('hello');
        assert.equal((await c.readResponse()).status, 405);
      } finally {
        c.destroy();
      }
    });

    it('a 1 MB body arriving in 64 KiB pieces (the input buffer grows under the parsed request)', async () => {
      const c = await connect(srv, { plain });
      try {
        const n = 1000000;
        await c.write(`POST /healthz HTTP/1.1\r\nHost: t\r\nX-Request-Id: big-body\r\nContent-Length: ${n}\r\n\r\n`);
        const piece = Buffer.alloc(65536, 0x62);
        for (let sent = 0; sent < n; sent += piece.length) {
          await c.write(piece.subarray(0, Math.min(piece.length, n - sent)));
          await sleep(1);
        }
        await c.write('GET /healthz HTTP/1.1\r\nHost: t\r\nX-Request-Id: after-big\r\n\r\n');
        const a = await c.readResponse();
        const b = await c.readResponse();
        assert.equal(a.status, 405);
        assert.equal(a.headers['x-request-id'], 'big-body', 'header fields still valid after the buffer moved');
        assert.equal(b.status, 200);
        assert.equal(b.headers['x-request-id'], 'after-big');
        // The same with a chunked body of 200 × 4 KiB.
        let body = '';
        for (let i = 0; i < 200; i++) body += `1000\r\n${'c'.repeat(4096)}\r\n`;
        const bb = Buffer.from(`POST /healthz HTTP/1.1\r\nHost: t\r\nX-Request-Id: big-chunked\r\nTransfer-Encoding: chunked\r\n\r\n${body}0\r\n\r\n`);
        for (let i = 0; i < bb.length; i += 10000) {
          await c.write(bb.subarray(i, i + 10000));
          await sleep(1);
        }
        await c.write('GET /readyz HTTP/1.1\r\nHost: t\r\nX-Request-Id: after-chunked\r\n\r\n');
        const d = await c.readResponse();
        const e = await c.readResponse();
        assert.deepEqual([d.status, d.headers['x-request-id'], e.status, e.headers['x-request-id']],
          [405, 'big-chunked', 200, 'after-chunked']);
      } finally {
        c.destroy();
      }
    });

    it('a keep-alive connection idle for over a second (buffers released) serves again', async () => {
      const c = await connect(srv, { plain });
      try {
        assert.equal((await (async () => {
          await c.write('GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n');
          return c.readResponse();
        })()).status, 200);
        await sleep(1700);
        await c.write('GET /healthz HTTP/1.1\r\nHost: t\r\nX-Request-Id: after-idle\r\n\r\nGET /readyz HTTP/1.1\r\nHost: t\r\n\r\n');
        const a = await c.readResponse();
        const b = await c.readResponse();
        assert.deepEqual([a.status, a.headers['x-request-id'], b.status], [200, 'after-idle', 200]);
      } finally {
        c.destroy();
      }
    });

    it('no 100 Continue for HTTP/1.0', async () => {
      const c = await connect(srv, { plain });
      try {
        await c.write('POST /healthz HTTP/1.0\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n');
        await sleep(250);
        assert.equal(c.pending().length, 0, `nothing before the body: ${c.pending().toString('latin1')}`);
        await c.write('hello');
        assert.equal((await c.readResponse()).status, 405);
      } finally {
        c.destroy();
      }
    });

    it('a client that closes mid-request does not disturb the server', async () => {
      for (const partial of ['GET /healthz HTT', 'POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc',
        'POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab']) {
        const c = await connect(srv, { plain });
        await c.write(partial);
        c.destroy();
      }
      const r = await exchange(srv, 'GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n', { plain });
      assert.equal(r.responses[0].status, 200);
    });

    it('half-close after a complete request still gets the response', async () => {
      const c = await connect(srv, { plain });
      try {
        await c.write('GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n');
        c.socket.end();
        const r = await c.readResponse();
        assert.equal(r.status, 200);
        assert.ok(await c.waitClose(2000));
      } finally {
        c.destroy();
      }
    });
  });
}

describe('http.max_pipelined bounds the queue, not the answers', () => {
  let srv;
  before(async () => {
    srv = await startServer({ plain: true, workers: 1, args: ['--http.max-pipelined', '2'] });
  });
  after(async () => {
    await srv?.cleanup();
  });

  for (const plain of [false, true]) {
    it(`${plain ? 'plain' : 'TLS'}: 25 requests in one write, no more input afterwards, all answered in order`, async () => {
      const c = await connect(srv, { plain });
      try {
        let all = '';
        for (let i = 0; i < 25; i++) all += `GET /${i % 3 ? 'healthz' : 'metrics'} HTTP/1.1\r\nHost: t\r\nX-Request-Id: q${i}\r\n\r\n`;
        await c.write(all);
        for (let i = 0; i < 25; i++) {
          const r = await c.readResponse({ timeoutMs: 3000 });
          assert.equal(r.status, 200);
          assert.equal(r.headers['x-request-id'], `q${i}`);
        }
        await c.write('GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n');
        assert.equal((await c.readResponse()).status, 200);
        assert.ok(await c.waitClose(2000));
      } finally {
        c.destroy();
      }
    });
  }
});
