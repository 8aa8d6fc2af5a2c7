// Limits (414, 431, 413) and timeouts (408, idle, handshake), with small configured values
// so that every boundary is cheap to reach.
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';

import { assertProblem, connect, exchange } from './lib/client.mjs';
import { parseMetrics, startServer } from './lib/server.mjs';

const MAX_LINE = 1024;
const MAX_HEADER_BYTES = 4096;
const MAX_HEADERS = 20;
const MAX_BODY = 1024;
const TIMEOUT_MS = 1000;
// The server checks deadlines on a 200 ms tick; allow for that plus scheduling noise.
const LATE_MS = TIMEOUT_MS + 1500;
const EARLY_MS = TIMEOUT_MS - 150;

const ARGS = [
  '--http.max-request-line', '1KiB',
  '--http.max-header-bytes', '4KiB',
  '--http.max-headers', String(MAX_HEADERS),
  '--http.max-body-bytes', '1KiB',
  '--http.header-timeout', '1s',
  '--http.body-timeout', '1s',
  '--http.idle-timeout', '1s',
  '--tls.handshake-timeout', '1s',
];

function refusedAndClosed(r, status, what) {
  assert.ok(r.responses.length >= 1, `${what}: a response (got ${JSON.stringify(r.data.toString('latin1').slice(0, 200))}, closed ${r.closeReason})`);
  const resp = r.responses[0];
  assertProblem(resp, status);
  assert.match(resp.headers.connection ?? '', /^close$/i, `${what}: Connection: close`);
  assert.equal(r.responses.length, 1, `${what}: nothing answered after the refusal`);
  assert.ok(r.closed, `${what}: connection closed`);
  return resp;
}

async function metrics(srv) {
  const r = await exchange(srv, 'GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n');
  assert.equal(r.responses[0].status, 200);
  return parseMetrics(r.responses[0].text);
}

describe('limits', () => {
  let srv;
  before(async () => {
    srv = await startServer({ workers: 1, args: ARGS });
  });
  after(async () => {
    await srv?.cleanup();
  });

  it(`request line of exactly ${MAX_LINE} bytes is served, one more byte → 414`, async () => {
    const line = (n) => {
      const pre = 'GET /';
      const post = ' HTTP/1.1';
      return pre + 'a'.repeat(n - pre.length - post.length) + post;
    };
    assert.equal(line(MAX_LINE).length, MAX_LINE);
    const ok = await exchange(srv, `${line(MAX_LINE)}\r\nHost: t\r\nConnection: close\r\n\r\n`);
    assert.equal(ok.responses[0]?.status, 404, `at the limit: ${ok.responses[0]?.status}`);
    const r = await exchange(srv, `${line(MAX_LINE + 1)}\r\nHost: t\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\n\r\n`);
    refusedAndClosed(r, 414, 'one byte over');
  });

  it('414 without waiting for the end of an endless request line', async () => {
    const c = await connect(srv);
    try {
      const t0 = Date.now();
      c.write('GET /' + 'b'.repeat(4 * MAX_LINE)).catch(() => {});
      const r = await c.readResponse({ timeoutMs: 3000 });
      assertProblem(r, 414);
      assert.ok(Date.now() - t0 < EARLY_MS, 'answered before any timeout could fire');
      assert.ok(await c.waitClose(3000));
    } finally {
      c.destroy();
    }
  });

  it('431: one header larger than http.max_header_bytes', async () => {
    const r = await exchange(srv, `GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: ${'v'.repeat(MAX_HEADER_BYTES)}\r\n\r\n${'GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n'}`);
    refusedAndClosed(r, 431, 'one big header');
  });

  it('431: many headers that add up to more than http.max_header_bytes', async () => {
    let h = '';
    for (let i = 0; i < MAX_HEADERS - 2; i++) h += `X-H${i}: ${'v'.repeat(300)}\r\n`; // ~5.6 KiB in 19 fields
    const r = await exchange(srv, `GET /healthz HTTP/1.1\r\nHost: t\r\n${h}\r\n`);
    refusedAndClosed(r, 431, 'sum of headers');
  });

  it('a header section under http.max_header_bytes is served', async () => {
    let h = '';
    for (let i = 0; i < 10; i++) h += `X-H${i}: ${'v'.repeat(300)}\r\n`; // ~3.1 KiB
    const r = await exchange(srv, `GET /healthz HTTP/1.1\r\nHost: t\r\n${h}Connection: close\r\n\r\n`);
    assert.equal(r.responses[0]?.status, 200);
  });

  it('431 without waiting for the end of an endless header section', async () => {
    const c = await connect(srv);
    try {
      const t0 = Date.now();
      c.write(`GET /healthz HTTP/1.1\r\nHost: t\r\nX-Endless: ${'z'.repeat(3 * MAX_HEADER_BYTES)}`).catch(() => {});
      const r = await c.readResponse({ timeoutMs: 3000 });
      assertProblem(r, 431);
      assert.ok(Date.now() - t0 < EARLY_MS, 'answered before any timeout could fire');
    } finally {
      c.destroy();
    }
  });

  it(`${MAX_HEADERS} header fields are served, ${MAX_HEADERS + 1} → 431`, async () => {
    const fields = (n) => {
      let h = 'Host: t\r\nConnection: close\r\n';
      for (let i = 2; i < n; i++) h += `X-F${i}: ${i}\r\n`;
      return h;
    };
    const ok = await exchange(srv, `GET /healthz HTTP/1.1\r\n${fields(MAX_HEADERS)}\r\n`);
    assert.equal(ok.responses[0]?.status, 200, `${MAX_HEADERS} fields: ${ok.responses[0]?.status}`);
    const r = await exchange(srv, `GET /healthz HTTP/1.1\r\n${fields(MAX_HEADERS + 1)}\r\n`);
    refusedAndClosed(r, 431, 'one field too many');
  });

  it(`Content-Length ${MAX_BODY} is read, ${MAX_BODY + 1} → 413 without reading the body`, async () => {
    const ok = await exchange(srv,
      `POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: ${MAX_BODY}\r\n\r\n${'x'.repeat(MAX_BODY)}` +
      'GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n');
    assert.deepEqual(ok.responses.map((x) => x.status), [405, 200], 'body at the limit is accepted and framed');

    // 413 comes at once, from the header section alone.
    const c = await connect(srv);
    try {
      await c.write(`POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: ${MAX_BODY + 1}\r\n\r\n`);
      const r = await c.readResponse({ timeoutMs: EARLY_MS });
      assertProblem(r, 413);
      assert.match(r.headers.connection ?? '', /^close$/i);
    } finally {
      c.destroy();
    }
    const huge = await exchange(srv, 'POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000000000\r\n\r\n');
    refusedAndClosed(huge, 413, 'huge Content-Length');
  });

  it('413 instead of 100 Continue when the announced body is too large', async () => {
    const r = await exchange(srv, 'POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n');
    assert.ok(r.responses.length >= 1, 'a response');
    assert.notEqual(r.responses[0].status, 100, 'no 100 Continue for a body that will be refused');
    refusedAndClosed(r, 413, 'Expect with a large body');
  });

  it('413 answers with the X-Request-Id the client sent (the header section was valid)', async () => {
    const big = await exchange(srv, 'POST /healthz HTTP/1.1\r\nHost: t\r\nX-Request-Id: upload-413\r\nContent-Length: 5000\r\n\r\n');
    const resp = refusedAndClosed(big, 413, 'large body');
    assert.equal(resp.headers['x-request-id'], 'upload-413', 'X-Request-Id echoed on 413');
    assert.equal(resp.json().request_id, 'upload-413');
  });

  it('413 reaches a client that keeps sending a large body (lingering close, no reset)', async () => {
    for (let round = 0; round < 3; round++) {
      const c = await connect(srv);
      try {
        const body = Buffer.alloc(2 * 1024 * 1024, 0x61);
        // Do not wait for the write: the server stops reading the body.
        c.write(Buffer.concat([Buffer.from(`POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: ${body.length}\r\n\r\n`), body])).catch(() => {});
        const r = await c.readResponse({ timeoutMs: 5000 });
        assertProblem(r, 413);
        assert.match(r.headers.connection ?? '', /^close$/i);
        // The server closes once it has seen our end (or after its linger period).
        c.socket.end();
        assert.ok(await c.waitClose(4000), 'closed after the 413');
      } finally {
        c.destroy();
      }
    }
  });

  it(`chunked body of ${MAX_BODY} bytes is read, ${MAX_BODY + 1} → 413`, async () => {
    const chunk = 'x'.repeat(MAX_BODY);
    const ok = await exchange(srv,
      `POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n${MAX_BODY.toString(16)}\r\n${chunk}\r\n0\r\n\r\n` +
      'GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n');
    assert.deepEqual(ok.responses.map((x) => x.status), [405, 200]);
    const over = await exchange(srv,
      `POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n${MAX_BODY.toString(16)}\r\n${chunk}\r\n1\r\ny\r\n0\r\n\r\n` +
      'GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n');
    refusedAndClosed(over, 413, 'chunked one byte over');
    // Many small chunks.
    let many = '';
    for (let i = 0; i < MAX_BODY / 8 + 1; i++) many += '8\r\nabcdefgh\r\n';
    const small = await exchange(srv, `POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n${many}0\r\n\r\n`);
    refusedAndClosed(small, 413, 'many small chunks');
  });

  it('chunk framing does not count against the body limit', async () => {
    // 1024 payload bytes in 1-byte chunks: 6 KiB of framing.
    let body = '';
    for (let i = 0; i < MAX_BODY; i++) body += '1\r\nq\r\n';
    const r = await exchange(srv,
      `POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n${body}0\r\n\r\n` +
      'GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n');
    assert.deepEqual(r.responses.map((x) => x.status), [405, 200]);
  });
});

describe('timeouts', () => {
  let srv;
  before(async () => {
    srv = await startServer({ workers: 1, args: ARGS });
  });
  after(async () => {
    await srv?.cleanup();
  });

  it('408 for a slowloris head (one byte every 200 ms) after http.header_timeout', async () => {
    const c = await connect(srv);
    try {
      const t0 = Date.now();
      const dripping = c.writeSlowly(`GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: ${'s'.repeat(100)}\r\n\r\n`, { chunk: 1, delayMs: 200 });
      const r = await c.readResponse({ timeoutMs: LATE_MS + 1000 });
      const took = Date.now() - t0;
      assertProblem(r, 408);
      assert.match(r.headers.connection ?? '', /^close$/i);
      assert.ok(took >= EARLY_MS, `not before the timeout (${took} ms)`);
      assert.ok(took <= LATE_MS, `soon after the timeout (${took} ms)`);
      assert.ok(await c.waitClose(2000), 'closed after 408');
      await dripping;
    } finally {
      c.destroy();
    }
  });

  it('408 when the body stops arriving (Content-Length)', async () => {
    const c = await connect(srv);
    try {
      await c.write('POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc');
      const t0 = Date.now();
      const r = await c.readResponse({ timeoutMs: LATE_MS + 1000 });
      const took = Date.now() - t0;
      assertProblem(r, 408);
      assert.match(r.json().detail, /body/i, 'the detail names the body timeout');
      assert.ok(took >= EARLY_MS && took <= LATE_MS, `after about http.body_timeout (${took} ms)`);
      assert.ok(await c.waitClose(2000));
    } finally {
      c.destroy();
    }
  });

  it('a body-408 carries the X-Request-Id the client sent', async () => {
    const c = await connect(srv);
    try {
      await c.write('POST /healthz HTTP/1.1\r\nHost: t\r\nX-Request-Id: slow-upload-1\r\nContent-Length: 10\r\n\r\nabc');
      const r = await c.readResponse({ timeoutMs: LATE_MS + 1000 });
      assertProblem(r, 408);
      assert.equal(r.headers['x-request-id'], 'slow-upload-1');
    } finally {
      c.destroy();
    }
  });

  it('pipelined requests from a slow reader are all answered (no timeout while the server holds back)', async () => {
    // 2000 requests in one write (~70 KB), ~7 MB of responses. The client reads nothing for
    // longer than http.header_timeout; the server stops reading while its output is queued,
    // but every request was sent completely, so every one must be answered, in order.
    const c = await connect(srv);
    try {
      const n = 2000;
      c.socket.pause();
      c.write('GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n'.repeat(n)).catch(() => {});
      await new Promise((res) => setTimeout(res, 2.5 * TIMEOUT_MS));
      c.socket.resume();
      for (let i = 0; i < n; i++) {
        const r = await c.readResponse({ timeoutMs: 5000 }).catch((e) => {
          throw new Error(`response ${i} of ${n}: ${e.message.slice(0, 400)}`);
        });
        assert.equal(r.status, 200, `response ${i}: ${r.status} ${r.text.slice(0, 200)}`);
      }
    } finally {
      c.destroy();
    }
  });

  it('408 when a chunked body stops arriving', async () => {
    const c = await connect(srv);
    try {
      await c.write('POST /healthz HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab');
      const t0 = Date.now();
      const r = await c.readResponse({ timeoutMs: LATE_MS + 1000 });
      const took = Date.now() - t0;
      assertProblem(r, 408);
      assert.ok(took >= EARLY_MS && took <= LATE_MS, `after about http.body_timeout (${took} ms)`);
    } finally {
      c.destroy();
    }
  });

  it('a connection that never sends a request is closed silently', async () => {
    const c = await connect(srv);
    try {
      const t0 = Date.now();
      assert.ok(await c.waitClose(LATE_MS + 500), 'closed');
      const took = Date.now() - t0;
      assert.ok(took >= EARLY_MS, `not before the header timeout (${took} ms)`);
      assert.equal(c.received, 0, `no response bytes: ${c.data.toString('latin1')}`);
      assert.notEqual(c.closeReason, 'reset');
    } finally {
      c.destroy();
    }
  });

  it('an idle keep-alive connection is closed silently after http.idle_timeout', async () => {
    const c = await connect(srv);
    try {
      await c.write('GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n');
      assert.equal((await c.readResponse()).status, 200);
      const t0 = Date.now();
      assert.ok(await c.waitClose(LATE_MS + 500), 'closed');
      const took = Date.now() - t0;
      assert.ok(took >= EARLY_MS && took <= LATE_MS, `after about http.idle_timeout (${took} ms)`);
      assert.equal(c.pending().length, 0, `nothing sent after the response: ${c.pending().toString('latin1')}`);
    } finally {
      c.destroy();
    }
  });

  it('requests keep a connection alive past http.idle_timeout (the timer restarts)', async () => {
    const c = await connect(srv);
    try {
      const t0 = Date.now();
      let i = 0;
      while (Date.now() - t0 < 2.5 * TIMEOUT_MS) {
        await c.write(`GET /healthz HTTP/1.1\r\nHost: t\r\nX-Request-Id: alive-${i}\r\n\r\n`);
        const r = await c.readResponse();
        assert.equal(r.status, 200);
        assert.equal(r.headers['x-request-id'], `alive-${i}`);
        i++;
        await new Promise((res) => setTimeout(res, TIMEOUT_MS / 2));
      }
      assert.equal(c.isClosed, false, 'still open');
    } finally {
      c.destroy();
    }
  });

  it('a TCP connection that never starts the TLS handshake is closed after tls.handshake_timeout', async () => {
    const s = net.connect({ host: '127.0.0.1', port: srv.port });
    await new Promise((res, rej) => {
      s.once('connect', res);
      s.once('error', rej);
    });
    const t0 = Date.now();
    const closed = await new Promise((res) => {
      const timer = setTimeout(() => res(false), LATE_MS + 1000);
      s.on('data', () => {});
      s.once('close', () => {
        clearTimeout(timer);
        res(true);
      });
      s.on('error', () => {});
    });
    s.destroy();
    const took = Date.now() - t0;
    assert.ok(closed, 'closed');
    assert.ok(took >= EARLY_MS && took <= LATE_MS, `after about tls.handshake_timeout (${took} ms)`);
  });

  it('timeouts are counted in switchboard_timeouts_total', async () => {
    const m0 = await metrics(srv);
    const k = 'switchboard_timeouts_total';
    assert.ok(m0.has(k), `${k} present`);
    // Two at once: a stalled head and a stalled body.
    const a = await connect(srv);
    const b = await connect(srv);
    try {
      await a.write('GET /healthz HTTP/1.1\r\nHost: t\r\n');
      await b.write('POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nab');
      const [ra, rb] = await Promise.all([a.readResponse({ timeoutMs: LATE_MS + 1000 }), b.readResponse({ timeoutMs: LATE_MS + 1000 })]);
      assert.equal(ra.status, 408);
      assert.equal(rb.status, 408);
    } finally {
      a.destroy();
      b.destroy();
    }
    const m1 = await metrics(srv);
    assert.ok(m1.get(k) - m0.get(k) >= 2, `${k} grew by ${m1.get(k) - m0.get(k)}`);
    assert.ok(m1.get('switchboard_http_requests_total{code="4xx"}') - m0.get('switchboard_http_requests_total{code="4xx"}') >= 2,
      'the 408s are counted as 4xx responses');
  });
});

describe('connection limit', () => {
  let srv;
  before(async () => {
    srv = await startServer({ workers: 1, args: ['--http.max-connections', '2', '--http.idle-timeout', '5s'] });
  });
  after(async () => {
    await srv?.cleanup();
  });

  it('connections beyond http.max_connections are refused and counted', async () => {
    const a = await connect(srv);
    const b = await connect(srv);
    try {
      for (const c of [a, b]) {
        await c.write('GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n');
        assert.equal((await c.readResponse()).status, 200);
      }
      await assert.rejects(connect(srv, { timeoutMs: 3000 }), 'a third TLS connection fails');
    } finally {
      a.destroy();
      b.destroy();
    }
    // Slots free up once the others are gone.
    const m = await (async () => {
      for (let i = 0; i < 40; i++) {
        try {
          const r = await exchange(srv, 'GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n');
          if (r.responses[0]?.status === 200) return parseMetrics(r.responses[0].text);
        } catch {
          /* still full */
        }
        await new Promise((res) => setTimeout(res, 50));
      }
      return null;
    })();
    assert.ok(m, 'served again after the connections closed');
    assert.ok(m.get('switchboard_connections_rejected_total') >= 1, 'rejection counted');
  });
});
