// WebSocket (RFC 6455) against the test endpoint /debug/ws-echo (--debug.ws-echo), over TLS with
// the dev CA and over the plain listener: the `ws` client for what a real client does, frames
// built by hand over a raw socket for what it never would (unmasked, bad UTF-8, oversized
// control frames, a peer that never answers pings or never reads).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';

import { assertProblem, exchange, request } from './lib/client.mjs';
import { parseMetrics, sleep, startServer, waitFor } from './lib/server.mjs';
import {
  OP,
  RawWs,
  closePayload,
  closedWithin,
  frame,
  nextMessage,
  parseFrames,
  upgradeRequest,
  wsClient,
} from './lib/ws.mjs';

const MiB = 1024 * 1024;

async function metrics(srv) {
  return parseMetrics((await request(srv, '/metrics', { plain: !srv.url })).text);
}

function rssKiB(pid, field = 'VmRSS') {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m[1]);
}

for (const mode of ['tls', 'plain']) {
  const plain = mode === 'plain';

  describe(`WebSocket echo over ${mode}`, () => {
    let srv;
    before(async () => {
      srv = await startServer({ plain: true, args: ['--debug.ws-echo'] });
    });
    after(async () => {
      await srv?.cleanup();
    });

    it('echoes text as text and binary as binary, and closes cleanly', async () => {
      const ws = await wsClient(srv, { plain });
      ws.send('héllo wörld');
      let m = await nextMessage(ws);
      assert.equal(m.isBinary, false);
      assert.equal(m.data.toString('utf8'), 'héllo wörld');
      const bin = Buffer.from([0, 1, 2, 0xff, 0xfe]);
      ws.send(bin);
      m = await nextMessage(ws);
      assert.equal(m.isBinary, true);
      assert.deepEqual(m.data, bin);
      ws.send('');
      m = await nextMessage(ws);
      assert.equal(m.data.length, 0);
      ws.close(1000, 'done');
      const c = await closedWithin(ws);
      assert.equal(c.code, 1000);
    });

    it('many messages in one burst come back in order', async () => {
      const ws = await wsClient(srv, { plain });
      const got = [];
      const all = new Promise((resolve) => {
        ws.on('message', (d) => {
          got.push(d.toString());
          if (got.length === 500) resolve();
        });
      });
      for (let i = 0; i < 500; i++) ws.send(`m${i}`);
      await all;
      assert.deepEqual(got, Array.from({ length: 500 }, (_, i) => `m${i}`));
      ws.close();
      await closedWithin(ws);
    });

    it('a message of exactly ws.max_message_bytes passes; one byte more is closed with 1009', async () => {
      const ws = await wsClient(srv, { plain });
      const big = Buffer.alloc(MiB, 0x61);
      ws.send(big);
      const m = await nextMessage(ws, 15000);
      assert.equal(m.data.length, MiB);
      assert.ok(m.data.equals(big));
      ws.send(Buffer.alloc(MiB + 1, 0x62));
      const c = await closedWithin(ws, 15000);
      assert.equal(c.code, 1009);
    });

    it('reassembles a fragmented message (a UTF-8 character split across fragments)', async () => {
      const ws = await wsClient(srv, { plain });
      const text = Buffer.from('fragmented: café ☕ done');
      const cut1 = text.indexOf(0xc3) + 1; // inside é
      const cut2 = text.indexOf(0xe2) + 2; // inside ☕
      ws.send(text.subarray(0, cut1), { fin: false, binary: false });
      ws.send(text.subarray(cut1, cut2), { fin: false, binary: false });
      ws.send(text.subarray(cut2), { fin: true, binary: false });
      const m = await nextMessage(ws);
      assert.equal(m.isBinary, false);
      assert.equal(m.data.toString('utf8'), 'fragmented: café ☕ done');
      ws.close();
      await closedWithin(ws);
    });

    it('?close=CODE makes the server close with that code right after the handshake', async () => {
      for (const code of [1000, 1008, 4003, 4999]) {
        const ws = await wsClient(srv, { plain, path: `/debug/ws-echo?close=${code}` });
        const c = await closedWithin(ws);
        assert.equal(c.code, code);
        assert.equal(c.reason, 'closed as requested by ?close');
      }
      const r = await request(srv, '/debug/ws-echo?close=1005', { plain });
      assertProblem(r, 400);
    });

    it('answers pings with the same payload, and ends on the peer\'s Close by echoing its code', async () => {
      const ws = await RawWs.open(srv, { plain });
      await ws.send(frame(OP.PING, 'are you there'));
      const pong = await ws.next();
      assert.equal(pong.opcode, OP.PONG);
      assert.equal(pong.payload.toString(), 'are you there');
      await ws.send(frame(OP.CLOSE, closePayload(4321, 'bye')));
      const c = await ws.next();
      assert.equal(c.opcode, OP.CLOSE);
      assert.equal(c.code, 4321);
      assert.ok(await ws.waitClosed(3000), 'server closes TCP after the closing handshake');
    });

    it('interleaves control frames inside a fragmented message', async () => {
      const ws = await RawWs.open(srv, { plain });
      await ws.send(Buffer.concat([
        frame(OP.BINARY, 'abc', { fin: false }),
        frame(OP.PING, 'p1'),
        frame(OP.CONT, 'def', { fin: false }),
        frame(OP.PONG, 'unsolicited'),
        frame(OP.CONT, 'ghi'),
      ]));
      const pong = await ws.next();
      assert.equal(pong.opcode, OP.PONG);
      assert.equal(pong.payload.toString(), 'p1');
      const m = await ws.next();
      assert.equal(m.opcode, OP.BINARY);
      assert.equal(m.payload.toString(), 'abcdefghi');
      ws.destroy();
    });

    it('bytes sent with the upgrade request belong to the WebSocket', async () => {
      const ws = await RawWs.open(srv, { plain, after: frame(OP.TEXT, 'early bird') });
      const m = await ws.next();
      assert.equal(m.opcode, OP.TEXT);
      assert.equal(m.payload.toString(), 'early bird');
      ws.destroy();
    });

    const failures = [
      ['an unmasked frame', () => frame(OP.TEXT, 'hi', { mask: false }), 1002],
      ['invalid UTF-8 in a text message', () => frame(OP.TEXT, Buffer.from([0x68, 0xc0, 0xaf])), 1007],
      ['a surrogate (CESU-8) in a text message', () => frame(OP.TEXT, Buffer.from([0xed, 0xa0, 0x80])), 1007],
      ['invalid UTF-8 across fragments', () => Buffer.concat([
        frame(OP.TEXT, Buffer.from([0x61, 0xe2]), { fin: false }),
        frame(OP.CONT, Buffer.from([0x82, 0x28])),
      ]), 1007],
      ['a text message ending inside a character', () => frame(OP.TEXT, Buffer.from([0x61, 0xe2, 0x82])), 1007],
      ['a ping over 125 bytes', () => frame(OP.PING, Buffer.alloc(126, 1)), 1002],
      ['a fragmented ping', () => frame(OP.PING, 'x', { fin: false }), 1002],
      ['a reserved bit', () => frame(OP.TEXT, 'x', { rsv: 4 }), 1002],
      ['an unknown opcode', () => frame(0x3, 'x'), 1002],
      ['a continuation with no message', () => frame(OP.CONT, 'x'), 1002],
      ['a Close with a 1-byte payload', () => frame(OP.CLOSE, Buffer.from([3])), 1002],
      ['a Close with code 1005', () => frame(OP.CLOSE, closePayload(1005)), 1002],
      ['a Close whose reason is not UTF-8', () => frame(OP.CLOSE, Buffer.from([3, 0xe8, 0xff])), 1007],
      ['fragments adding up to more than ws.max_message_bytes', () => Buffer.concat([
        frame(OP.BINARY, Buffer.alloc(MiB - 10), { fin: false }),
        frame(OP.CONT, Buffer.alloc(11)),
      ]), 1009],
    ];
    for (const [what, make, code] of failures) {
      it(`closes with ${code} on ${what}`, async () => {
        const ws = await RawWs.open(srv, { plain });
        await ws.send(make()).catch(() => {});
        const c = await ws.untilClose();
        assert.equal(c.code, code, `close code for ${what} (reason "${c.reason}")`);
        assert.equal(ws.skipped.length, 0, 'no message echoed before the Close');
        assert.ok(await ws.waitClosed(3000), 'TCP closed after the failure');
      });
    }

    it('refuses bad upgrade requests with 400 or 426 (problem+json)', async () => {
      const cases = [
        [upgradeRequest('/debug/ws-echo', { version: '8' }).text, 426],
        [upgradeRequest('/debug/ws-echo', { version: '13, 8' }).text, 426],
        [upgradeRequest('/debug/ws-echo', { version: null }).text, 400],
        [upgradeRequest('/debug/ws-echo', { key: null }).text, 400],
        [upgradeRequest('/debug/ws-echo', { key: 'c2hvcnQ=' }).text, 400],
        [upgradeRequest('/debug/ws-echo', { key: 'dGhlIHNhbXBsZSBub25jZR==' }).text, 400],
        ['GET /debug/ws-echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n', 400],
        ['GET /debug/ws-echo HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n' +
          'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nConnection: close\r\n\r\n', 400],
        ['GET /debug/ws-echo HTTP/1.1\r\nHost: t\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n' +
          'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n', 400],
      ];
      for (const [req, status] of cases) {
        const r = await exchange(srv, req, { plain, timeoutMs: 300 });
        assert.equal(r.responses.length >= 1, true, `an answer to ${JSON.stringify(req)}`);
        const resp = r.responses[0];
        const asReq = { status: resp.status, headers: resp.headers, text: resp.body.toString(), json: () => JSON.parse(resp.body) };
        assertProblem(asReq, status);
        if (status === 426) assert.equal(resp.headers['sec-websocket-version'], '13');
      }
      // The route is GET only.
      const r = await request(srv, '/debug/ws-echo', { method: 'POST', plain });
      assert.equal(r.status, 405);
      // The ws client sees the refusal too.
      await assert.rejects(wsClient(srv, { plain, protocolVersion: 8 }), /426/);
    });

    it('the handshake accepts a keep-alive, Upgrade Connection list and mixed-case tokens', async () => {
      const { text } = upgradeRequest('/debug/ws-echo');
      const req = text.replace('Upgrade: websocket', 'Upgrade: WebSocket').replace('Connection: Upgrade', 'Connection: keep-alive, upgrade');
      const r = await exchange(srv, req, { plain, timeoutMs: 500 });
      assert.equal(r.responses[0]?.status, 101);
      assert.equal(r.responses[0].headers.upgrade, 'websocket');
      assert.match(r.responses[0].headers['x-request-id'] ?? '', /./);
    });
  });
}

describe('WebSocket keep-alive', () => {
  let srv;
  before(async () => {
    srv = await startServer({
      plain: true,
      args: ['--debug.ws-echo', '--ws.ping-interval', '1s', '--ws.pong-timeout', '1s'],
    });
  });
  after(async () => {
    await srv?.cleanup();
  });

  it('pings a quiet connection; a client that answers stays open', async () => {
    const ws = await wsClient(srv);
    let pings = 0;
    ws.on('ping', () => pings++);
    await sleep(3500);
    assert.ok(pings >= 2, `pings received: ${pings}`);
    assert.equal(ws.readyState, ws.OPEN);
    ws.send('still here');
    assert.equal((await nextMessage(ws)).data.toString(), 'still here');
    ws.close();
    await closedWithin(ws);
  });

  it('drops a client that never answers the ping once ws.pong_timeout passes', async () => {
    const ws = await RawWs.open(srv, { plain: true });
    const t0 = Date.now();
    const ping = await ws.next({ timeoutMs: 3000 });
    assert.equal(ping.opcode, OP.PING);
    const tPing = Date.now() - t0;
    assert.ok(tPing >= 800 && tPing < 3000, `ping after ${tPing} ms`);
    assert.ok(await ws.waitClosed(4000), 'connection dropped');
    const tClose = Date.now() - t0;
    assert.ok(tClose - tPing >= 800 && tClose - tPing < 3000, `dropped ${tClose - tPing} ms after the ping`);
    const m = await metrics(srv);
    assert.ok(m.get('switchboard_timeouts_total') >= 1);
  });
});

for (const mode of ['plain', 'tls']) {
  describe(`WebSocket slow consumer over ${mode}`, () => {
    let srv;
    before(async () => {
      // A small ASan quarantine so that RSS says what the server holds, not what it freed.
      const asan = `${process.env.ASAN_OPTIONS ?? 'detect_leaks=1:abort_on_error=0:exitcode=86'}:quarantine_size_mb=4`;
      srv = await startServer({ plain: true, args: ['--debug.ws-echo'], env: { ASAN_OPTIONS: asan } });
    });
    after(async () => {
      await srv?.cleanup();
    });

    it('a client that sends but never reads is closed with 4008, and server memory stays bounded', async () => {
      const ws = await RawWs.open(srv, { plain: mode === 'plain' });
      ws.socket.pause(); // never read
      await sleep(200);
      const rss0 = rssKiB(srv.pid);
      const msg = frame(OP.BINARY, Buffer.alloc(64 * 1024, 0x5a));
      // Send until the server gives up on us, then 8 MiB more: it must keep reading (and
      // dropping) rather than buffer. At most 64 MiB.
      const t0 = Date.now();
      let sent = 0;
      let closedAt = 0;
      let writeError = null;
      let n = 0;
      while (!writeError && sent < 64 * MiB && (!closedAt || sent < closedAt + 8 * MiB)) {
        const ok = ws.socket.write(msg, (e) => {
          if (e) writeError = e;
        });
        sent += msg.length;
        if (!ok) {
          await new Promise((r) => {
            ws.socket.once('drain', r);
            ws.socket.once('close', r);
          });
        }
        if (!closedAt && ++n % 16 === 0 &&
            (await metrics(srv)).get('switchboard_websocket_slow_closes_total') >= 1) {
          closedAt = sent;
        }
      }
      assert.equal(writeError, null, 'the server kept reading while its output waited');
      assert.ok(closedAt > 0, `closed with 4008 after ${sent / MiB} MiB`);
      const hwm = rssKiB(srv.pid, 'VmHWM');
      const grown = (hwm - rss0) / 1024;
      process.stderr.write(`# slow consumer (${mode}): 4008 after ${closedAt / MiB} MiB, ${sent / MiB} MiB sent in ` +
        `${Date.now() - t0} ms, server peak RSS +${grown.toFixed(1)} MiB\n`);
      assert.ok(grown < 32, `server RSS grew by ${grown.toFixed(1)} MiB for ${sent / MiB} MiB sent`);

      // Reading now: what was written, then the Close frame, then the end.
      ws.socket.resume();
      const c = await ws.untilClose({ timeoutMs: 10000 });
      assert.equal(c.code, 4008);
      assert.equal(c.reason, 'too slow');
      const echoed = ws.skipped.reduce((n, f) => n + f.payload.length, 0);
      assert.ok(echoed < sent, `some output was dropped (${echoed} of ${sent} echoed)`);
      assert.ok(echoed <= sent, 'never more than was sent');
      await ws.send(frame(OP.CLOSE, closePayload(4008))).catch(() => {});
      assert.ok(await ws.waitClosed(6000), 'TCP closed');
      await waitFor(async () => (await metrics(srv)).get('switchboard_websockets_active') === 0,
        { timeoutMs: 3000, what: 'no WebSocket left' });
    });
  });
}

describe('WebSocket scale and shutdown', () => {
  let srv;
  before(async () => {
    srv = await startServer({ plain: true, args: ['--debug.ws-echo'] });
  });
  after(async () => {
    await srv?.cleanup();
  });

  it('1,000 concurrent idle WebSockets open, stay open and are counted', async () => {
    const N = 1000;
    const { text } = upgradeRequest('/debug/ws-echo');
    const rss0 = rssKiB(srv.pid);
    const socks = [];
    try {
      const opened = [];
      for (let i = 0; i < N; i++) {
        opened.push(new Promise((resolve, reject) => {
          const s = net.connect({ host: '127.0.0.1', port: srv.plainPort }, () => s.write(text));
          socks.push(s);
          let buf = '';
          s.setEncoding('latin1');
          const onData = (d) => {
            buf += d;
            if (buf.includes('\r\n\r\n')) {
              s.off('data', onData);
              if (buf.startsWith('HTTP/1.1 101 ')) resolve();
              else reject(new Error(`connection ${i}: ${buf.slice(0, 80)}`));
            }
          };
          s.on('data', onData);
          s.once('error', reject);
        }));
        if (i % 100 === 99) await Promise.all(opened.slice(i - 99));
      }
      await Promise.all(opened);
      await waitFor(async () => (await metrics(srv)).get('switchboard_websockets_active') === N,
        { timeoutMs: 5000, what: `${N} open WebSockets` });
      await sleep(1500); // idle buffers are released after a second
      const per = ((rssKiB(srv.pid) - rss0) * 1024) / N;
      process.stderr.write(`# ${N} idle WebSockets (plain, sanitized build): ~${Math.round(per)} bytes each by RSS\n`);
      // Still alive: the last one echoes.
      const last = socks[N - 1];
      const got = new Promise((resolve) => last.once('data', (d) => resolve(Buffer.from(d, 'latin1'))));
      last.write(frame(OP.TEXT, 'last'));
      const echo = parseFrames(await got).frames[0];
      assert.equal(echo.payload.toString(), 'last');
    } finally {
      for (const s of socks) s.destroy();
    }
    await waitFor(async () => (await metrics(srv)).get('switchboard_websockets_active') === 0,
      { timeoutMs: 5000, what: 'every WebSocket closed' });
  });

  it('SIGTERM closes open WebSockets with 1001 "going away" and exits 0', async () => {
    const a = await wsClient(srv);
    const b = await wsClient(srv, { plain: true });
    const raw = await RawWs.open(srv, { plain: true });
    srv.signal('SIGTERM');
    const [ca, cb] = await Promise.all([closedWithin(a, 5000), closedWithin(b, 5000)]);
    assert.equal(ca.code, 1001);
    assert.equal(cb.code, 1001);
    const c = await raw.untilClose();
    assert.equal(c.code, 1001);
    assert.equal(c.reason, 'going away');
    await raw.send(frame(OP.CLOSE, closePayload(1001))).catch(() => {});
    const r = await srv.stop({ timeoutMs: 10000 });
    assert.ok(r.elapsedMs < 8000, `drained in ${r.elapsedMs} ms`);
  });
});

describe('WebSocket endpoint is off by default', () => {
  it('/debug/ws-echo is 404 without --debug.ws-echo', async () => {
    const srv = await startServer({ plain: true });
    try {
      const r = await request(srv, '/debug/ws-echo', { plain: true });
      assert.equal(r.status, 404);
    } finally {
      await srv.cleanup();
    }
  });
});
