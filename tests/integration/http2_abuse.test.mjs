// HTTP/2 abuse, with frames built by hand (lib/h2raw.mjs): rapid reset (CVE-2023-44487),
// CONTINUATION floods (CVE-2024-27316 class), oversized header lists, too many concurrent
// streams, a client that never opens its flow-control window, idle connections. Each one
// must be refused cleanly, with bounded memory, while a connection opened before keeps
// working.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { E, F, frame, literal, parseFrames, RawH2, requestBlock, rstStream, settings, T } from './lib/h2raw.mjs';
import { h2connect, h2req } from './lib/h2.mjs';
import { parseMetrics, sleep, startServer } from './lib/server.mjs';

const ADMIN = 'http2-abuse-admin-key-0123456789abcdefghijklmn';
const MAX_STREAMS = 10;

function rssKiB(pid) {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m[1]);
}

async function metric(srv, name) {
  const m = parseMetrics(await (await fetch(`${srv.plainUrl}/metrics`)).text());
  let sum = 0;
  for (const [k, v] of m) if (k === name || k.startsWith(`${name}{`)) sum += v;
  return sum;
}

describe('HTTP/2 abuse', () => {
  let srv;
  let bystander; // a node http2 connection opened before every attack
  before(async () => {
    srv = await startServer({
      plain: true,
      workers: 1,
      env: { SWITCHBOARD_ADMIN_KEY: ADMIN },
      args: ['--http2.max-concurrent-streams', String(MAX_STREAMS), '--http.body-timeout', '1s'],
    });
    bystander = await h2connect(srv);
    bystander.on('error', () => {});
    assert.equal((await h2req(bystander, 'GET', '/healthz', { key: ADMIN })).status, 200);
  });
  after(async () => {
    bystander?.close();
    await srv?.cleanup();
  });

  async function bystanderServes() {
    const r = await h2req(bystander, 'GET', '/v1/rooms?limit=1', { key: ADMIN });
    assert.equal(r.status, 200, `the connection opened before still serves: ${r.text}`);
    assert.ok(!bystander.destroyed && !bystander.closed);
  }

  it('rapid reset: HEADERS + RST_STREAM in a loop → GOAWAY ENHANCE_YOUR_CALM, closed', async () => {
    const before = await metric(srv, 'switchboard_http_protocol_errors_total');
    const c = await RawH2.open(srv);
    const chunks = [];
    for (let i = 0; i < 2000; i++) {
      const id = 2 * i + 1;
      chunks.push(frame(T.HEADERS, F.END_HEADERS | F.END_STREAM, id, requestBlock({ path: '/healthz' })), rstStream(id));
    }
    await c.sendAll([Buffer.concat(chunks)]);
    const ga = await c.waitFrame((f) => f.type === T.GOAWAY, 'GOAWAY');
    assert.equal(ga.code, E.ENHANCE_YOUR_CALM);
    assert.ok(ga.lastStream < 2 * 2000 - 1, `stopped before the end of the loop (last stream ${ga.lastStream})`);
    await c.waitClosed();
    await srv.waitForLog((l) => /rapid reset/.test(l.msg ?? ''));
    assert.ok((await metric(srv, 'switchboard_http_protocol_errors_total')) > before, 'counted as a protocol error');
    await bystanderServes();
  });

  for (const [what, cont] of [
    ['4 KB header fields', frame(T.CONTINUATION, 0, 1, literal('x-flood', 'a'.repeat(4000)))],
    ['empty frames', frame(T.CONTINUATION, 0, 1)],
  ]) {
    it(`CONTINUATION flood (${what}): HEADERS without END_HEADERS, then thousands of CONTINUATION → GOAWAY, closed, memory bounded`, async () => {
      const rss0 = rssKiB(srv.pid);
      const c = await RawH2.open(srv);
      const first = frame(T.HEADERS, F.END_STREAM, 1, requestBlock());
      const batch = Buffer.concat(Array(100).fill(cont));
      const chunks = [first, ...Array(cont.length > 100 ? 200 : 2000).fill(batch)]; // ~80 MB or 1.8 MB of frames
      await c.sendAll(chunks);
      const ga = await c.waitFrame((f) => f.type === T.GOAWAY, 'GOAWAY');
      assert.equal(ga.code, E.ENHANCE_YOUR_CALM);
      await c.waitClosed();
      assert.equal(c.frames.filter((f) => f.stream === 1 && f.type === T.HEADERS).length, 0, 'the request was never served');
      const grew = rssKiB(srv.pid) - rss0;
      assert.ok(grew < 48 * 1024, `server RSS grew by ${grew} KiB`); // ASan's quarantine adds noise
      await bystanderServes();
    });
  }

  it('oversized header list: over http2.max_header_list_size → 431 on that stream, connection kept; far over → GOAWAY', async () => {
    const c = await RawH2.open(srv);
    // 40 KB of fields (limit 32 KiB), split over HEADERS + CONTINUATION as a client must.
    const block = requestBlock({ extra: Array.from({ length: 10 }, (_, i) => [`x-big-${i}`, 'b'.repeat(4000)]) });
    const parts = [];
    for (let o = 0; o < block.length; o += 16384) parts.push(block.subarray(o, o + 16384));
    const frames = parts.map((p, i) => frame(i === 0 ? T.HEADERS : T.CONTINUATION,
      (i === 0 ? F.END_STREAM : 0) | (i === parts.length - 1 ? F.END_HEADERS : 0), 1, p));
    c.send(Buffer.concat(frames));
    await c.waitFrame((f) => f.stream === 1 && f.type === T.DATA && (f.flags & F.END_STREAM), '431 body');
    const body = Buffer.concat(c.frames.filter((f) => f.stream === 1 && f.type === T.DATA).map((f) => f.payload)).toString();
    assert.equal(JSON.parse(body).status, 431);
    assert.equal(JSON.parse(body).type, 'urn:switchboard:problem:headers-too-large');
    // The same connection serves the next request.
    c.send(frame(T.HEADERS, F.END_HEADERS | F.END_STREAM, 3, requestBlock({ path: '/healthz' })));
    await c.waitFrame((f) => f.stream === 3 && f.type === T.DATA, 'response on stream 3');
    assert.equal(c.closed, false);

    // 200 KB: far past what SETTINGS announced.
    const huge = requestBlock({ extra: Array.from({ length: 50 }, (_, i) => [`x-huge-${i}`, 'h'.repeat(4000)]) });
    const hp = [];
    for (let o = 0; o < huge.length; o += 16384) hp.push(huge.subarray(o, o + 16384));
    await c.sendAll(hp.map((p, i) => frame(i === 0 ? T.HEADERS : T.CONTINUATION,
      (i === 0 ? F.END_STREAM : 0) | (i === hp.length - 1 ? F.END_HEADERS : 0), 5, p)));
    const ga = await c.waitFrame((f) => f.type === T.GOAWAY, 'GOAWAY');
    assert.equal(ga.code, E.ENHANCE_YOUR_CALM);
    await c.waitClosed();
    await bystanderServes();
  });

  it(`too many concurrent streams: stream ${MAX_STREAMS + 1} gets RST_STREAM REFUSED_STREAM; the open ones still complete`, async () => {
    const c = await RawH2.open(srv);
    const settingsFrame = c.frames.find((f) => f.type === T.SETTINGS && !(f.flags & F.ACK));
    let announced = null;
    for (let o = 0; o + 6 <= settingsFrame.payload.length; o += 6) {
      if (settingsFrame.payload.readUInt16BE(o) === 3) announced = settingsFrame.payload.readUInt32BE(o + 2);
    }
    assert.equal(announced, MAX_STREAMS, 'SETTINGS_MAX_CONCURRENT_STREAMS');
    await c.waitFrame((f) => f.type === T.SETTINGS && (f.flags & F.ACK), 'SETTINGS ACK');
    const hdrs = requestBlock({ method: 'POST', path: '/v1/rooms', extra: [['authorization', `Bearer ${ADMIN}`], ['content-type', 'application/json']] });
    const open = [];
    for (let i = 0; i < MAX_STREAMS + 5; i++) open.push(frame(T.HEADERS, F.END_HEADERS, 2 * i + 1, hdrs));
    c.send(Buffer.concat(open));
    const refused = await c.waitFrame((f) => f.type === T.RST_STREAM && f.stream === 2 * MAX_STREAMS + 1, 'RST_STREAM');
    assert.equal(refused.code, E.REFUSED_STREAM);
    await c.waitUntil(() => c.frames.filter((f) => f.type === T.RST_STREAM).length >= 5, 'five refusals', 5000);
    await sleep(100); // and no more than five
    const refusedIds = c.frames.filter((f) => f.type === T.RST_STREAM).map((f) => f.stream);
    assert.deepEqual(refusedIds, Array.from({ length: 5 }, (_, i) => 2 * (MAX_STREAMS + i) + 1));
    // Finish the first stream's body: it is served.
    const name = `refused-${process.pid}-${Date.now()}`;
    c.send(frame(T.DATA, F.END_STREAM, 1, Buffer.from(JSON.stringify({ name }))));
    await c.waitFrame((f) => f.stream === 1 && f.type === T.DATA && (f.flags & F.END_STREAM), 'response on stream 1');
    const body = Buffer.concat(c.frames.filter((f) => f.stream === 1 && f.type === T.DATA).map((f) => f.payload)).toString();
    assert.equal(JSON.parse(body).name, name);
    assert.equal(c.closed, false);
    c.destroy();
    await bystanderServes();
  });

  it('a client that never opens its flow-control window: responses wait, the rest are refused, memory bounded', async () => {
    const rss0 = rssKiB(srv.pid);
    const c = await RawH2.open(srv, { handshake: false });
    c.send(Buffer.concat([Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'), settings({ 4: 0 })]));
    const reqs = [];
    for (let i = 0; i < 500; i++) reqs.push(frame(T.HEADERS, F.END_HEADERS | F.END_STREAM, 2 * i + 1, requestBlock({ path: '/healthz' })));
    await c.sendAll([Buffer.concat(reqs)]);
    await c.waitUntil(() => c.frames.filter((f) => f.type === T.RST_STREAM).length >= 500 - MAX_STREAMS, 'refusals', 5000);
    await c.waitUntil(() => c.frames.filter((f) => f.type === T.HEADERS).length >= MAX_STREAMS, 'the heads', 5000);
    await sleep(100);
    assert.equal(c.frames.filter((f) => f.type === T.DATA).length, 0, 'no DATA past a zero window');
    assert.equal(c.frames.filter((f) => f.type === T.HEADERS).length, MAX_STREAMS, 'the open streams got their heads');
    assert.ok(rssKiB(srv.pid) - rss0 < 48 * 1024);
    // Opening the window lets the waiting responses finish.
    const wu = Buffer.alloc(4);
    wu.writeUInt32BE(1 << 20);
    for (let i = 0; i < MAX_STREAMS; i++) c.send(frame(T.WINDOW_UPDATE, 0, 2 * i + 1, wu));
    await c.waitUntil(() => c.frames.filter((f) => f.type === T.DATA && (f.flags & F.END_STREAM)).length === MAX_STREAMS, 'the bodies', 5000);
    c.destroy();
    await bystanderServes();
  });

  it('PING and SETTINGS floods from a client that never reads: bounded, then closed or stalled; others unaffected', async () => {
    const rss0 = rssKiB(srv.pid);
    const c = await RawH2.open(srv);
    c.sock.pause(); // never read: the server's PING ACKs pile up on its side
    const ping = frame(T.PING, 0, 0, Buffer.alloc(8, 1));
    const settingsFrame = settings({ 4: 65535 });
    const batch = Buffer.concat(Array.from({ length: 8000 }, (_, i) => (i % 2 ? ping : settingsFrame)));
    // Write until the server stops taking bytes (it stops reading once its own output passes
    // the high mark: the ACKs we do not read) or has taken 256 MB (then it must have
    // detected the flood: nghttp2 counts more than 1000 queued ACKs as one).
    let stalled = false;
    let written = 0;
    while (!c.closed && written < 256 * 1024 * 1024) {
      written += batch.length;
      if (!c.sock.write(batch)) {
        const drained = await Promise.race([new Promise((r) => c.sock.once('drain', () => r(true))), sleep(500).then(() => false)]);
        if (!drained) {
          stalled = true;
          break;
        }
      }
    }
    const grew = rssKiB(srv.pid) - rss0;
    if (process.env.SB_ITEST_VERBOSE) console.log('flood: grew', grew, 'KiB; stalled', stalled, 'written', written);
    assert.ok(grew < 48 * 1024, `server RSS grew by ${grew} KiB`);
    c.sock.resume(); // now read: what the server queued, and how it ended
    if (!stalled) {
      const ga = await c.waitFrame((f) => f.type === T.GOAWAY, 'GOAWAY', 20000);
      assert.equal(ga.code, E.ENHANCE_YOUR_CALM);
      await c.waitClosed(10000);
    }
    c.destroy();
    await bystanderServes();
  });

  it('garbage after the preface and a bad preface over TLS are closed (GOAWAY PROTOCOL_ERROR or close)', async () => {
    const c = await RawH2.open(srv);
    c.send(Buffer.from('this is not a frame at all, just text\r\n\r\n'));
    await c.waitClosed();
    const t = await RawH2.open(srv, { tls: true, handshake: false });
    t.send(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
    await t.waitClosed();
    await bystanderServes();
  });

  it('a body that stops arriving gets 408 on its stream (connection kept); a header block that stops gets GOAWAY', async () => {
    const c = await RawH2.open(srv);
    c.send(frame(T.HEADERS, F.END_HEADERS, 1, requestBlock({ method: 'POST', path: '/v1/rooms', extra: [['content-type', 'application/json']] })));
    c.send(frame(T.DATA, 0, 1, Buffer.from('{"na')));
    await c.waitFrame((f) => f.stream === 1 && f.type === T.DATA && (f.flags & F.END_STREAM), '408 body', 5000);
    const body = Buffer.concat(c.frames.filter((f) => f.stream === 1 && f.type === T.DATA).map((f) => f.payload)).toString();
    assert.equal(JSON.parse(body).status, 408);
    c.send(frame(T.HEADERS, F.END_HEADERS | F.END_STREAM, 3, requestBlock({ path: '/healthz' })));
    await c.waitFrame((f) => f.stream === 3 && f.type === T.DATA, 'the connection still serves');
    // Now a header block that never ends.
    c.send(frame(T.HEADERS, F.END_STREAM, 5, requestBlock({ path: '/healthz' })));
    const ga = await c.waitFrame((f) => f.type === T.GOAWAY, 'GOAWAY', 5000);
    assert.equal(ga.code, E.NO_ERROR);
    await c.waitClosed();
    await bystanderServes();
  });

});

describe('HTTP/2 idle', () => {
  it('an idle connection gets GOAWAY NO_ERROR after http.idle_timeout, one without its preface SETTINGS after http.header_timeout', async () => {
    const srv = await startServer({ plain: true, workers: 1, args: ['--http.idle-timeout', '500ms', '--http.header-timeout', '400ms'] });
    try {
      const c = await RawH2.open(srv);
      c.send(frame(T.HEADERS, F.END_HEADERS | F.END_STREAM, 1, requestBlock({ path: '/healthz' })));
      await c.waitFrame((f) => f.stream === 1 && f.type === T.DATA, 'response');
      const ga = await c.waitFrame((f) => f.type === T.GOAWAY, 'GOAWAY', 5000);
      assert.equal(ga.code, E.NO_ERROR);
      assert.equal(ga.lastStream, 1);
      await c.waitClosed();
      // A client that sends the preface but never its SETTINGS: the header timeout.
      const t0 = Date.now();
      const p = await RawH2.open(srv, { handshake: false });
      p.autoAck = false; // (a SETTINGS ACK would itself be a protocol error before our SETTINGS)
      p.send(Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'));
      const gp = await p.waitFrame((f) => f.type === T.GOAWAY, 'GOAWAY', 5000);
      assert.equal(gp.code, E.NO_ERROR);
      await p.waitClosed();
      assert.ok(Date.now() - t0 < 2000, `closed after ${Date.now() - t0} ms`);
    } finally {
      await srv.cleanup();
    }
  });
});

// Keep the parser honest: it must split a buffer into exactly the frames that were built.
describe('h2raw', () => {
  it('round-trips frames', () => {
    const b = Buffer.concat([frame(T.PING, 0, 0, Buffer.alloc(8)), rstStream(3, E.CANCEL), frame(T.DATA, 1, 5, Buffer.from('x'))]);
    const { frames, rest } = parseFrames(b);
    assert.deepEqual(frames.map((f) => [f.type, f.stream]), [[T.PING, 0], [T.RST_STREAM, 3], [T.DATA, 5]]);
    assert.equal(frames[1].code, E.CANCEL);
    assert.equal(rest.length, 0);
  });
});
