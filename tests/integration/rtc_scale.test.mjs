// GET /v1/rtc at scale and under pressure, with two worker loops, each test on its own server:
//   - 1,000 participants in one room: joins, a data broadcast reaching the 999 others exactly
//     once, a REST broadcast (POST /v1/rooms/{name}/messages → {delivered: 1000}), everyone
//     leaving and the room showing num_participants 0;
//   - a participant that stops reading while another floods 16 KiB binary frames: it is closed
//     (4008, docs/protocol.md "Limits"), the server's RSS stays bounded and a third participant
//     still gets every frame in order;
//   - GET /v1/events (WebSocket) sees session.started, participant.joined/left in order and a
//     reconnect with since=<last id> gets exactly the missed events.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';

import WebSocket from 'ws';

import { parseMetrics, sleep, startServer, waitFor } from './lib/server.mjs';

const ADMIN = 'rtc-scale-itest-admin-key-0123456789abcdefghij';
const BASE_ENV = { SWITCHBOARD_ADMIN_KEY: ADMIN, SWITCHBOARD_RATELIMIT_ENABLED: 'false' };

async function withServer(fn, { env = {} } = {}) {
  const srv = await startServer({ plain: true, workers: 2, env: { ...BASE_ENV, ...env } });
  try {
    await fn(srv);
  } finally {
    await srv.cleanup();
  }
}

async function api(srv, method, urlPath, body) {
  const h = { authorization: `Bearer ${ADMIN}` };
  if (body !== undefined) h['content-type'] = 'application/json';
  const res = await fetch(`${srv.plainUrl}${urlPath}`, {
    method,
    headers: h,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(30000),
  });
  const text = await res.text();
  return { status: res.status, text, json: text && /json/.test(res.headers.get('content-type') ?? '') ? JSON.parse(text) : null };
}

async function room(srv, name, extra = {}) {
  const r = await api(srv, 'POST', '/v1/rooms', { name, ...extra });
  assert.ok(r.status === 201 || r.status === 200, r.text);
  return r.json;
}

async function token(srv, roomName, identity, extra = {}) {
  const r = await api(srv, 'POST', '/v1/tokens', { room: roomName, identity, ...extra });
  assert.equal(r.status, 201, r.text);
  return r.json.token;
}

/** A participant. Text messages are parsed; unless `keep` is false, every one is queued.
 * `onMessage(m)` sees every message (binary ones as {binary}). */
function connect(srv, tok, { keep = true, keepBinary = true, onMessage } = {}) {
  const ws = new WebSocket(`ws://127.0.0.1:${srv.plainPort}/v1/rtc?access_token=${encodeURIComponent(tok)}`);
  ws.queue = [];
  ws.waiters = [];
  ws.counts = Object.create(null);
  ws.on('message', (data, isBinary) => {
    const m = isBinary ? { binary: data } : JSON.parse(data.toString());
    const type = isBinary ? 'binary' : m.type;
    ws.counts[type] = (ws.counts[type] ?? 0) + 1;
    onMessage?.(m);
    const w = ws.waiters.findIndex((x) => x.pred(m));
    if (w >= 0) {
      const [x] = ws.waiters.splice(w, 1);
      clearTimeout(x.t);
      x.resolve(m);
    } else if (keep && (keepBinary || !isBinary)) ws.queue.push(m);
  });
  ws.closed = new Promise((resolve) => ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() })));
  ws.on('error', () => {});
  ws.next = (pred = () => true, timeoutMs = 10000) => {
    const i = ws.queue.findIndex(pred);
    if (i >= 0) return Promise.resolve(ws.queue.splice(i, 1)[0]);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('timed out waiting for a message')), timeoutMs);
      ws.waiters.push({ pred, resolve, t });
    });
  };
  ws.type = (type, timeoutMs) => ws.next((m) => m.type === type, timeoutMs);
  return ws;
}

async function join(srv, roomName, identity, { grants, ...opts } = {}) {
  const ws = connect(srv, await token(srv, roomName, identity, grants ? { grants } : {}), opts);
  const joined = await ws.type('joined', 30000);
  return { ws, joined };
}

function rssBytes(pid) {
  const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m[1]) * 1024;
}

async function closedWithin(ws, timeoutMs) {
  let t;
  const r = await Promise.race([ws.closed, new Promise((res) => { t = setTimeout(() => res(null), timeoutMs); })]);
  clearTimeout(t);
  return r;
}

describe('GET /v1/rtc at scale', () => {
  it('1,000 participants in one room: joins, a data broadcast once to each of 999, a REST broadcast, everyone leaves', { timeout: 240000 }, async () => {
    await withServer(async (srv) => {
      const N = 1000;
      const BATCH = 100;
      const name = 'big';
      await room(srv, name, { max_participants: 0 });
      const ids = Array.from({ length: N }, (_, i) => `p${String(i).padStart(4, '0')}`);
      // Tokens first (so that the joins themselves come in tight batches).
      const toks = [];
      for (let i = 0; i < N; i += BATCH)
        toks.push(...await Promise.all(ids.slice(i, i + BATCH).map((id) => token(srv, name, id))));
      const t0 = Date.now();
      const clients = [];
      const received = new Map(); // identity → data messages seen
      for (let i = 0; i < N; i += BATCH) {
        const batch = ids.slice(i, i + BATCH).map((id, k) => {
          received.set(id, []);
          // Presence messages are only counted (about a million of them go around).
          const ws = connect(srv, toks[i + k], {
            keep: false,
            onMessage: (m) => {
              if (m.type === 'data') received.get(id).push(m);
              if (m.type === 'participant_joined') (ws.pj ??= new Set()).add(m.participant.identity);
              if (m.type === 'joined') ws.jp = new Set(m.participants.map((x) => x.identity));
            },
          });
          ws.identity = id;
          return ws;
        });
        const joined = await Promise.all(batch.map((ws) => ws.type('joined', 60000)));
        for (const [k, j] of joined.entries()) {
          assert.equal(j.participant.identity, batch[k].identity);
          // the ones of earlier batches for sure, some of its own batch maybe
          assert.ok(j.participants.length >= i && j.participants.length < i + BATCH, `${j.participants.length} others at ${i + k}`);
        }
        clients.push(...batch);
      }
      const tJoined = Date.now();
      // Every client saw itself joined; the last one saw the 999 others in its joined message.
      for (const ws of clients) assert.equal(ws.counts.joined, 1, ws.identity);
      const r0 = await api(srv, 'GET', `/v1/rooms/${name}`);
      assert.equal(r0.json.num_participants, N, r0.text);
      // Presence reaches everyone exactly once: each participant learns of the 999 others,
      // from its joined message (those there before it) or a participant_joined (later ones).
      const others = (ws) => (ws.pj?.size ?? 0) + ws.jp.size;
      await waitFor(() => clients.every((ws) => others(ws) === N - 1),
        { timeoutMs: 60000, intervalMs: 100, what: `every one to know 999 others (p0000: ${others(clients[0])})` });
      await sleep(300);
      for (const ws of clients) {
        assert.equal(ws.jp.size + (ws.counts.participant_joined ?? 0), N - 1, `${ws.identity}: a participant announced twice`);
        for (const x of ws.jp) assert.ok(!ws.pj?.has(x), `${ws.identity}: ${x} both in joined and participant_joined`);
        assert.ok(!ws.pj?.has(ws.identity) && !ws.jp.has(ws.identity), `${ws.identity} announced to itself`);
      }

      // A data message from one participant reaches the 999 others exactly once.
      const sender = clients[17];
      sender.send(JSON.stringify({ type: 'data', data: 'hello 999', topic: 'scale' }));
      await waitFor(() => clients.every((ws) => ws === sender || received.get(ws.identity).length >= 1),
        { timeoutMs: 60000, intervalMs: 50, what: 'the data message at all 999 others' });
      await sleep(500);
      for (const ws of clients) {
        const got = received.get(ws.identity);
        if (ws === sender) assert.equal(got.length, 0, 'the sender got its own message back');
        else {
          assert.equal(got.length, 1, `${ws.identity} got ${got.length} copies`);
          assert.deepEqual(got[0], { type: 'data', from: sender.identity, topic: 'scale', data: 'hello 999' });
        }
      }

      // Server → everyone: delivered counts every participant with subscribe (all 1,000).
      const r = await api(srv, 'POST', `/v1/rooms/${name}/messages`, { data: 'from server' });
      assert.equal(r.status, 202, r.text);
      assert.deepEqual(r.json, { delivered: N });
      await waitFor(() => clients.every((ws) => received.get(ws.identity).some((m) => m.from === null)),
        { timeoutMs: 60000, intervalMs: 50, what: 'the server message at all 1,000' });
      await sleep(300);
      for (const ws of clients) {
        const got = received.get(ws.identity).filter((m) => m.from === null);
        assert.deepEqual(got, [{ type: 'data', from: null, topic: null, data: 'from server' }], ws.identity);
      }

      // Everyone leaves (in batches too); the room ends up empty.
      for (let i = 0; i < N; i += BATCH) {
        const batch = clients.slice(i, i + BATCH);
        for (const ws of batch) ws.close();
        await Promise.all(batch.map((ws) => ws.closed));
      }
      await waitFor(async () => (await api(srv, 'GET', `/v1/rooms/${name}`)).json?.num_participants === 0,
        { timeoutMs: 60000, intervalMs: 200, what: 'num_participants 0' });
      const p = await api(srv, 'GET', `/v1/rooms/${name}/participants`);
      assert.equal(p.status, 200, p.text);
      assert.deepEqual(p.json.data, []);
      process.stderr.write(`# 1,000 joins in ${tJoined - t0} ms, whole test ${Date.now() - t0} ms\n`);
    });
  });

  it('a participant that stops reading is closed (4008); RSS stays bounded; the others get every frame in order', { timeout: 180000 }, async () => {
    // ASan keeps freed blocks in a quarantine (256 MiB by default) that counts in RSS; a small
    // one makes RSS track what the server actually holds.
    const asan = `${process.env.ASAN_OPTIONS ?? 'detect_leaks=1:abort_on_error=0:exitcode=86'}:quarantine_size_mb=8`;
    await withServer(async (srv) => {
      const name = 'slow';
      await room(srv, name);
      const watcherFrames = [];
      const slow = await join(srv, name, 'slow');
      const watcher = await join(srv, name, 'watcher', { keepBinary: false, onMessage: (m) => { if (m.binary) watcherFrames.push(m.binary); } });
      const flood = await join(srv, name, 'flooder', { grants: { publish: true, subscribe: true, publish_data: true } });
      await watcher.ws.type('participant_joined');
      await slow.ws.type('participant_joined');
      await slow.ws.type('participant_joined');
      // Stop reading: neither the socket nor ws's parser take anything more.
      slow.ws._socket.pause();
      await sleep(200);
      const baseline = rssBytes(srv.proc.pid);
      let peak = baseline;
      const sampler = setInterval(() => {
        try {
          peak = Math.max(peak, rssBytes(srv.proc.pid));
        } catch { /* exited */ }
      }, 50);

      // Flood 16 KiB frames, each with its sequence number in its first 4 bytes. The flooder
      // stays at most WINDOW frames (512 KiB, half of ws.max_send_queue) ahead of the watcher:
      // the watcher reads in this same process, and a flood faster than it can read would
      // (rightly) get the watcher closed as too slow as well. The paused one is sent everything
      // until the server gives up on it.
      const WINDOW = 32;
      // As soon as the server gives up on the slow one (its 4008 counter moves), it reads
      // again: well within SB_WS_CLOSE_TIMEOUT_MS (5 s) of the Close the server queued behind
      // what was already on its way, so that Close must reach it.
      let resumedAt = 0;
      let polling = true;
      const resumeP = (async () => {
        while (polling) {
          const r = await fetch(`${srv.plainUrl}/metrics`).then((x) => x.text()).catch(() => '');
          if (parseMetrics(r).get('switchboard_websocket_slow_closes_total') >= 1) {
            resumedAt = Date.now();
            slow.ws._socket.resume();
            return;
          }
          await sleep(20);
        }
      })();
      let leftAt = 0;
      const leftP = watcher.ws.next((m) => m.type === 'participant_left' && m.identity === 'slow', 60000).then((m) => {
        leftAt = Date.now();
        return m;
      });
      leftP.catch(() => {});
      const FRAME = 16 * 1024;
      const MAX_FRAMES = 12288; // 192 MiB at most
      const floodStart = Date.now();
      const DEADLINE = Date.now() + 6000;
      let sent = 0;
      while (sent < MAX_FRAMES && Date.now() < DEADLINE) {
        if (flood.ws.bufferedAmount > 256 * 1024 || sent - watcherFrames.length >= WINDOW) {
          await new Promise((r) => setImmediate(r));
          continue;
        }
        const b = Buffer.alloc(FRAME, sent & 0xff);
        b.writeUInt32BE(sent, 0);
        flood.ws.send(b);
        sent++;
        if (sent % 16 === 0) await new Promise((r) => setImmediate(r));
      }
      // The watcher keeps up: every frame, in order.
      await waitFor(() => watcherFrames.length >= sent,
        { timeoutMs: 60000, intervalMs: 50, what: `the watcher to get ${sent} frames (has ${watcherFrames.length})` });
      clearInterval(sampler);
      peak = Math.max(peak, rssBytes(srv.proc.pid));
      const prefix = Buffer.concat([Buffer.from([7]), Buffer.from('flooder')]);
      assert.equal(watcherFrames.length, sent);
      for (let i = 0; i < sent; i++) {
        const f = watcherFrames[i];
        assert.equal(f.length, prefix.length + FRAME, `frame ${i} length`);
        assert.ok(f.subarray(0, prefix.length).equals(prefix), `frame ${i} prefix`);
        assert.equal(f.readUInt32BE(prefix.length), i, `frame ${i} out of order`);
      }
      const floodedMiB = (sent * FRAME) / 2 ** 20;
      process.stderr.write(`# flooded ${sent} frames (${floodedMiB.toFixed(0)} MiB); RSS baseline ${(baseline / 2 ** 20).toFixed(1)} MiB, peak ${(peak / 2 ** 20).toFixed(1)} MiB\n`);
      // The flood must be well past what the kernel buffers for the paused socket (a few MiB)
      // plus the send queue (ws.max_send_queue, 1 MiB), or the slow one is never tested.
      assert.ok(floodedMiB >= 32, `only ${floodedMiB} MiB flooded`);
      // Bound: one slow reader may cost its send queue (1 MiB) plus the frame being assembled;
      // the flooder's and the watcher's in-flight frames, the loops' read buffers and the
      // allocator's slack (ASan's quarantine capped at 8 MiB) fit well in 64 MiB. A server
      // buffering for the slow reader without bound would hold every frame flooded after its
      // kernel buffers filled (tens of MiB more: the flood is at least 32 MiB and usually more).
      assert.ok(peak - baseline < 64 * 2 ** 20,
        `RSS grew by ${((peak - baseline) / 2 ** 20).toFixed(1)} MiB (baseline ${baseline}, peak ${peak})`);

      // The server dropped the slow one: the others are told, the REST view no longer has it.
      polling = false;
      await resumeP;
      assert.ok(resumedAt > 0, 'switchboard_websocket_slow_closes_total never moved');
      const left = await leftP;
      assert.equal(left.reason, 'too_slow');
      // (The REST view may lag the live room's announcement a little.)
      let seenIds;
      await waitFor(async () => {
        const parts = await api(srv, 'GET', `/v1/rooms/${name}/participants`);
        seenIds = parts.json?.data?.map((p) => p.identity).sort();
        return JSON.stringify(seenIds) === JSON.stringify(['flooder', 'watcher']);
      }, { timeoutMs: 15000, intervalMs: 100, what: 'the REST participants without slow' });
      // Reading again, the slow one gets what was already in the kernel buffers, then 4008.
      const c = await closedWithin(slow.ws, 30000);
      assert.ok(c, 'the slow connection was not closed');
      process.stderr.write(`# slow reader: 4008 counted ${resumedAt - floodStart} ms into the flood (resumed then), participant_left after ${leftAt - floodStart} ms; ${slow.ws.counts.binary ?? 0} frames, then closed with ${c.code} ${c.reason}\n`);
      assert.equal(c.code, 4008, `close code ${c.code} ${c.reason}`);
      // What it did get is the start of the flood, in order (later frames were dropped).
      const slowFrames = slow.ws.queue.filter((m) => m.binary).map((m) => m.binary.readUInt32BE(prefix.length));
      assert.ok(slowFrames.length > 0);
      assert.deepEqual(slowFrames, slowFrames.map((_, i) => i));

      assert.equal(flood.ws.readyState, WebSocket.OPEN);
      assert.equal(watcher.ws.readyState, WebSocket.OPEN);
      flood.ws.close();
      watcher.ws.close();
      await Promise.all([flood.ws.closed, watcher.ws.closed]);
    }, { env: { ASAN_OPTIONS: asan } });
  });

  it('GET /v1/events sees joins and leaves in order and resumes with since= without gap or duplicate', { timeout: 120000 }, async () => {
    await withServer(async (srv) => {
      const subscribe = async (since) => {
        const q = since ? `?since=${encodeURIComponent(since)}` : '';
        const ws = new WebSocket(`ws://127.0.0.1:${srv.plainPort}/v1/events${q}`, { headers: { authorization: `Bearer ${ADMIN}` } });
        ws.events = [];
        ws.closed = new Promise((resolve) => ws.on('close', (code) => resolve(code)));
        ws.on('message', (d, bin) => {
          assert.equal(bin, false);
          ws.events.push(JSON.parse(d.toString()));
        });
        await new Promise((resolve, reject) => {
          ws.once('open', resolve);
          ws.once('unexpected-response', (req, res) => reject(new Error(`upgrade answered ${res.statusCode}`)));
          ws.once('error', reject);
        });
        return ws;
      };
      const name = 'ev-room';
      const live = (evs) => evs.filter((e) => e.type.startsWith('participant.') || e.type.startsWith('session.'));
      const brief = (e) => (e.type.startsWith('participant.') ? `${e.type}(${e.data.identity})` : e.type);

      const sub = await subscribe();
      await room(srv, name);
      const a = await join(srv, name, 'A');
      const b = await join(srv, name, 'B');
      await a.ws.type('participant_joined');
      a.ws.close();
      await b.ws.next((m) => m.type === 'participant_left' && m.identity === 'A');
      await waitFor(() => live(sub.events).length >= 4, { timeoutMs: 15000, what: `4 events (have ${sub.events.map(brief)})` });
      await sleep(300);
      assert.deepEqual(sub.events.map(brief),
        ['room.created', 'session.started', 'participant.joined(A)', 'participant.joined(B)', 'participant.left(A)']);
      for (const e of live(sub.events)) {
        assert.equal(e.data.room ?? e.data.room_name ?? name, name);
        assert.match(e.id, /^evt_/);
      }
      const seen = new Set(sub.events.map((e) => e.id));
      assert.equal(seen.size, sub.events.length, 'duplicate ids');
      const lastId = sub.events.at(-1).id;
      sub.close();
      await sub.closed;

      // While nobody listens: C joins, B leaves.
      const c = await join(srv, name, 'C');
      b.ws.close();
      await c.ws.next((m) => m.type === 'participant_left' && m.identity === 'B');
      // Let the outbox have both rows before resuming (the resume must not depend on it, but
      // "exactly the missed events" is then a fixed list).
      await waitFor(async () => {
        const p = await api(srv, 'GET', `/v1/rooms/${name}/participants`);
        return p.json?.data?.length === 1;
      }, { timeoutMs: 10000, what: 'B gone' });

      const again = await subscribe(lastId);
      await waitFor(() => again.events.length >= 2, { timeoutMs: 15000, what: `2 resumed events (have ${again.events.map(brief)})` });
      await sleep(500);
      assert.deepEqual(again.events.map(brief), ['participant.joined(C)', 'participant.left(B)']);
      for (const e of again.events) assert.ok(!seen.has(e.id), `event ${e.id} delivered twice`);
      assert.equal(again.events[1].data.reason, 'left');
      // And it is live again afterwards.
      c.ws.close();
      await waitFor(() => again.events.some((e) => e.type === 'participant.left' && e.data.identity === 'C'),
        { timeoutMs: 15000, what: 'participant.left(C) live after the resume' });
      again.close();
      await again.closed;
    });
  });
});
