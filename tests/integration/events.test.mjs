// The live event stream, GET /v1/events: over WebSocket (the `ws` client) and Server-Sent
// Events (node:http/https, raw `id:`/`data:` lines). Rooms are changed through the REST API;
// each stream must see the outbox's events in order with stable ids, resume after a given id
// without gap or duplicate, stay inside its project, and end cleanly on SIGTERM.
import assert from 'node:assert/strict';
import http from 'node:http';
import http2 from 'node:http2';
import https from 'node:https';
import { after, before, describe, it } from 'node:test';

import { readCa } from './lib/client.mjs';
import { sleep, startServer, waitFor } from './lib/server.mjs';
import WebSocket from 'ws';

const ADMIN = 'events-itest-admin-key-0123456789abcdefghijkl';
let n = 0;
const uniq = (p) => `${p}-${process.pid}-${Date.now().toString(36)}-${n++}`;

async function api(srv, method, path, { key = ADMIN, json } = {}) {
  const headers = {};
  if (key) headers.authorization = `Bearer ${key}`;
  if (json !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(srv.plainUrl + path, { method, headers, body: json === undefined ? undefined : JSON.stringify(json) });
  const text = await res.text();
  return { status: res.status, headers: res.headers, text, json: text ? JSON.parse(text) : null };
}

/** Creates, updates and closes a room: three events. */
async function roomLife(srv, name, key = ADMIN) {
  assert.equal((await api(srv, 'POST', '/v1/rooms', { key, json: { name } })).status, 201);
  assert.equal((await api(srv, 'PATCH', `/v1/rooms/${name}`, { key, json: { metadata: 'm1' } })).status, 200);
  const d = await api(srv, 'DELETE', `/v1/rooms/${name}`, { key });
  assert.ok(d.status === 200 || d.status === 204, `DELETE: ${d.status} ${d.text}`);
}

/** A WebSocket subscriber collecting parsed envelopes. The listener is attached before the
 * handshake completes: the server sends missed events right behind its 101. */
async function wsSub(srv, { key = ADMIN, since, plain = true } = {}) {
  const q = since ? `?since=${encodeURIComponent(since)}` : '';
  const url = plain ? `ws://127.0.0.1:${srv.plainPort}/v1/events${q}` : `wss://127.0.0.1:${srv.port}/v1/events${q}`;
  const ws = new WebSocket(url, { headers: { authorization: `Bearer ${key}` }, ca: plain ? undefined : readCa(srv.caPath) });
  ws.events = [];
  ws.closed = new Promise((resolve) => ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() })));
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
}

/** An SSE subscriber over raw HTTP/1.1: {res, events, raw, close()}. */
function sseSub(srv, { key = ADMIN, since, lastEventId, tls = false, accept = 'text/event-stream' } = {}) {
  const q = since ? `?since=${encodeURIComponent(since)}` : '';
  const headers = { accept };
  if (key) headers.authorization = `Bearer ${key}`;
  if (lastEventId) headers['last-event-id'] = lastEventId;
  const url = new URL(`/v1/events${q}`, tls ? srv.url : srv.plainUrl);
  const mod = tls ? https : http;
  return new Promise((resolve, reject) => {
    const req = mod.request(url, { headers, ca: tls ? readCa(srv.caPath) : undefined, agent: false }, (res) => {
      const s = { res, events: [], comments: 0, raw: '', ended: false, req };
      s.endedP = new Promise((r) => {
        res.on('end', () => {
          s.ended = true;
          r();
        });
        res.on('error', () => r());
        res.on('close', () => r());
      });
      res.setEncoding('utf8');
      let buf = '';
      res.on('data', (d) => {
        s.raw += d;
        buf += d;
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const ev = {};
          for (const line of block.split('\n')) {
            if (line.startsWith(':')) s.comments++;
            else if (line.startsWith('id: ')) ev.id = line.slice(4);
            else if (line.startsWith('event: ')) ev.event = line.slice(7);
            else if (line.startsWith('data: ')) ev.data = JSON.parse(line.slice(6));
          }
          if (ev.id) s.events.push(ev);
        }
      });
      s.close = () => req.destroy();
      resolve(s);
    });
    req.on('error', reject);
    req.end();
  });
}

function roomEvents(envs, room) {
  return envs.filter((e) => JSON.stringify(e.data).includes(`"${room}"`));
}

describe('GET /v1/events', () => {
  let srv;
  before(async () => {
    srv = await startServer({ plain: true, workers: 2, env: { SWITCHBOARD_ADMIN_KEY: ADMIN } });
  });
  after(async () => {
    await srv?.cleanup();
  });

  it('WebSocket: sees room.created/updated/closed in order with the envelope; resumes with since= exactly', async () => {
    const ws = await wsSub(srv);
    const room = uniq('ws');
    await roomLife(srv, room);
    await waitFor(() => roomEvents(ws.events, room).length >= 3, { what: 'three events' });
    const first = roomEvents(ws.events, room);
    assert.deepEqual(first.map((e) => e.type), ['room.created', 'room.updated', 'room.closed']);
    for (const e of first) {
      assert.deepEqual(Object.keys(e).sort(), ['created_at', 'data', 'id', 'project_id', 'type']);
      assert.match(e.id, /^evt_/);
      assert.equal(e.project_id, 'prj_default');
      assert.match(e.created_at, /^\d{4}-\d\d-\d\dT/);
    }
    assert.equal(new Set(first.map((e) => e.id)).size, 3);
    const lastSeen = ws.events.at(-1).id;
    ws.close();
    await ws.closed;

    // Missed while away: another room's life, then resume.
    const room2 = uniq('ws2');
    await roomLife(srv, room2);
    const ws2 = await wsSub(srv, { since: lastSeen });
    await waitFor(() => roomEvents(ws2.events, room2).length >= 3, { what: `missed events ${JSON.stringify(ws2.events)}` });
    await sleep(200);
    assert.deepEqual(ws2.events.map((e) => e.type), ['room.created', 'room.updated', 'room.closed']);
    assert.ok(!ws2.events.some((e) => e.id === lastSeen), 'no duplicate of the last seen event');

    // The same history from an earlier id: stable ids, no gap.
    const ws3 = await wsSub(srv, { since: first[0].id });
    await waitFor(() => ws3.events.length >= 5, { what: 'replay' });
    await sleep(200);
    assert.deepEqual(ws3.events.map((e) => e.id), [first[1].id, first[2].id, ...ws2.events.map((e) => e.id)]);
    ws2.close();
    ws3.close();
    await Promise.all([ws2.closed, ws3.closed]);
  });

  it('SSE: 200 text/event-stream, chunked, no-store; id/event/data lines; Last-Event-ID resumes', async () => {
    const s = await sseSub(srv);
    assert.equal(s.res.statusCode, 200);
    assert.match(s.res.headers['content-type'], /^text\/event-stream/);
    assert.equal(s.res.headers['cache-control'], 'no-store');
    assert.equal(s.res.headers['transfer-encoding'], 'chunked');
    const room = uniq('sse');
    await roomLife(srv, room);
    await waitFor(() => s.events.length >= 3, { what: 'three SSE events' });
    assert.deepEqual(s.events.map((e) => e.event), ['room.created', 'room.updated', 'room.closed']);
    for (const e of s.events) {
      assert.equal(e.data.id, e.id);
      assert.equal(e.data.type, e.event);
    }
    const last = s.events[1].id; // pretend the client saw only two
    s.close();
    await s.endedP;

    const room2 = uniq('sse2');
    await roomLife(srv, room2);
    const r = await sseSub(srv, { lastEventId: last });
    await waitFor(() => r.events.length >= 4, { what: 'resumed SSE events' });
    await sleep(200);
    assert.deepEqual(r.events.map((e) => e.id).slice(0, 1), [s.events[2].id]);
    assert.deepEqual(r.events.map((e) => e.event), ['room.closed', 'room.created', 'room.updated', 'room.closed']);
    r.close();

    // The same over TLS, with since= winning over nothing else.
    const t = await sseSub(srv, { tls: true, since: last });
    await waitFor(() => t.events.length >= 4, { what: 'SSE over TLS' });
    assert.deepEqual(t.events.map((e) => e.id), r.events.map((e) => e.id));
    t.close();
  });

  it("another project's credential never sees these events, and cannot resume from their ids", async () => {
    const p = await api(srv, 'POST', '/v1/projects', { json: { name: uniq('other') } });
    assert.equal(p.status, 201, p.text);
    const otherKey = p.json.admin_key;
    const otherWs = await wsSub(srv, { key: otherKey });
    const otherSse = await sseSub(srv, { key: otherKey });
    const mine = await wsSub(srv);
    const room = uniq('iso');
    await roomLife(srv, room);
    await waitFor(() => roomEvents(mine.events, room).length >= 3, { what: 'own events' });
    await sleep(300);
    assert.equal(otherWs.events.length, 0);
    assert.equal(otherSse.events.length, 0);
    // Resuming from another project's id is refused like an unknown id.
    const r = await sseSub(srv, { key: otherKey, since: mine.events[0].id });
    assert.equal(r.res.statusCode, 400);
    // Its own events do reach it.
    const room2 = uniq('iso-other');
    await roomLife(srv, room2, otherKey);
    await waitFor(() => otherWs.events.length >= 3 && otherSse.events.length >= 3, { what: 'other project events' });
    assert.ok(otherWs.events.every((e) => e.project_id !== 'prj_default'));
    await sleep(200);
    assert.equal(roomEvents(mine.events, room2).length, 0);
    for (const w of [otherWs, mine]) w.close();
    otherSse.close();
  });

  it('missing scope → 403; no credential → 401; bad since → 400; neither WebSocket nor SSE → 406', async () => {
    const k = await api(srv, 'POST', '/v1/keys', { json: { name: 'ro', scopes: ['rooms:read'] } });
    assert.equal(k.status, 201, k.text);
    assert.equal((await sseSub(srv, { key: k.json.secret })).res.statusCode, 403);
    await assert.rejects(wsSub(srv, { key: k.json.secret }), /403/);
    assert.equal((await sseSub(srv, { key: null })).res.statusCode, 401);
    assert.equal((await sseSub(srv, { since: 'evt_doesnotexist' })).res.statusCode, 400);
    assert.equal((await sseSub(srv, { lastEventId: 'nope' })).res.statusCode, 400);
    await assert.rejects(wsSub(srv, { since: 'evt_doesnotexist' }), /400/);
    const plainGet = await api(srv, 'GET', '/v1/events');
    assert.equal(plainGet.status, 406);
    assert.match(plainGet.headers.get('content-type'), /problem\+json/);
    const ek = await api(srv, 'POST', '/v1/keys', { json: { name: 'ev', scopes: ['events:read'] } });
    const ok = await sseSub(srv, { key: ek.json.secret });
    assert.equal(ok.res.statusCode, 200);
    ok.close();
  });

  it('an SSE client that disconnects is noticed at once (its connection closes), not at the next write', async () => {
    const active = async () => {
      const t = await (await fetch(`${srv.plainUrl}/metrics`)).text();
      return Number(/^switchboard_connections_active\S* (\d+)/m.exec(t)[1]);
    };
    // Counted once the five streams have answered (they are open on the server then); other
    // connections (the fetch pool's keep-alive ones) may only close meanwhile, never open.
    const subs = await Promise.all(Array.from({ length: 5 }, () => sseSub(srv)));
    const opened = await active();
    for (const s of subs) s.close();
    await waitFor(async () => (await active()) <= opened - 5, { what: 'streams closed by the server' });
  });

  it('a burst of events arrives complete and in order on both transports', async () => {
    const ws = await wsSub(srv);
    const s = await sseSub(srv);
    const rooms = [];
    await Promise.all(Array.from({ length: 40 }, async (_, i) => {
      const name = uniq(`burst${i}`);
      rooms.push(name);
      assert.equal((await api(srv, 'POST', '/v1/rooms', { json: { name } })).status, 201);
    }));
    await waitFor(() => ws.events.length >= 40 && s.events.length >= 40, { what: 'burst' });
    assert.deepEqual(s.events.map((e) => e.id), ws.events.map((e) => e.id));
    assert.equal(new Set(ws.events.map((e) => e.id)).size, ws.events.length);
    ws.close();
    s.close();
  });
});

describe('GET /v1/events on shutdown', () => {
  it('SIGTERM ends open streams cleanly (WebSocket 1001, SSE body ended) and exits 0', async () => {
    const srv = await startServer({ plain: true, env: { SWITCHBOARD_ADMIN_KEY: ADMIN } });
    try {
      const ws = await wsSub(srv);
      const s = await sseSub(srv);
      const t = await sseSub(srv, { tls: true });
      await roomLife(srv, uniq('bye'));
      await waitFor(() => ws.events.length >= 3 && s.events.length >= 3 && t.events.length >= 3, { what: 'events' });
      const st = await srv.stop();
      assert.equal(st.code, 0);
      assert.equal((await ws.closed).code, 1001);
      await s.endedP;
      await t.endedP;
      assert.equal(s.ended, true, 'the chunked body was terminated');
      assert.equal(t.ended, true, 'the chunked body was terminated (TLS)');
    } finally {
      await srv.cleanup();
    }
  });
});

describe('a resume far behind is paced, not dropped', () => {
  // A small send bound (64 KiB) and ~1.3 MB of backlog (400 updates with 3 KB of metadata):
  // more than both the WebSocket bound and the 1 MiB SSE bound. Sent all at once it would
  // overflow them (4008 / a closed stream) on every reconnect; paced, it arrives whole and
  // in order even to a reader that stalls first.
  let srv;
  let firstId;
  const room = uniq('backlog');
  before(async () => {
    srv = await startServer({ plain: true, workers: 2, env: { SWITCHBOARD_ADMIN_KEY: ADMIN }, args: ['--ws.max-send-queue', '64KiB'] });
    const probe = await wsSub(srv);
    assert.equal((await api(srv, 'POST', '/v1/rooms', { json: { name: room } })).status, 201);
    await waitFor(() => probe.events.length >= 1, { what: 'room.created' });
    firstId = probe.events[0].id;
    probe.close();
    const meta = 'x'.repeat(3000);
    for (let i = 0; i < 400; i++) {
      const r = await api(srv, 'PATCH', `/v1/rooms/${room}`, { json: { metadata: `${i}:${meta}` } });
      assert.equal(r.status, 200, r.text);
    }
  });
  after(async () => {
    await srv?.cleanup();
  });

  const check = (envs) => {
    assert.equal(envs.length, 400);
    envs.forEach((e, i) => {
      assert.equal(e.type, 'room.updated');
      assert.ok(e.data.room.metadata.startsWith(`${i}:`), `event ${i} out of order`);
    });
  };

  it('WebSocket with since=: a reader that stalls for a second still gets all 400, in order', async () => {
    const ws = await wsSub(srv, { since: firstId });
    ws._socket.pause();
    await sleep(1000);
    ws._socket.resume();
    await waitFor(() => ws.events.length >= 400, { what: '400 events', timeoutMs: 20000 });
    check(ws.events.slice(0, 400));
    assert.equal(ws.readyState, WebSocket.OPEN);
    ws.close();
  });

  it('SSE over HTTP/2 (a stream of a multiplexed connection): the same, paced per stream', async () => {
    const session = http2.connect(srv.url, { ca: readCa(srv.caPath) });
    const req = session.request({ ':path': '/v1/events', accept: 'text/event-stream', authorization: `Bearer ${ADMIN}`, 'last-event-id': firstId });
    const events = [];
    let buf = '';
    let ended = false;
    req.setEncoding('utf8');
    req.on('data', (d) => {
      buf += d;
      let i;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        const line = block.split('\n').find((l) => l.startsWith('data: '));
        if (line) events.push(JSON.parse(line.slice(6)));
      }
    });
    req.on('close', () => { ended = true; });
    req.pause();
    await sleep(1000);
    req.resume();
    await waitFor(() => events.length >= 400, { what: '400 events over h2', timeoutMs: 20000 });
    check(events.slice(0, 400));
    assert.equal(ended, false, 'the stream was not reset');
    req.close();
    session.close();
  });

  it('SSE with Last-Event-ID: the same over 1 MiB, without the stream being cut', async () => {
    const s = await sseSub(srv, { lastEventId: firstId });
    s.res.pause();
    await sleep(1000);
    s.res.resume();
    await waitFor(() => s.events.length >= 400, { what: '400 events', timeoutMs: 20000 });
    check(s.events.slice(0, 400).map((e) => e.data));
    assert.equal(s.ended, false);
    s.close();
  });
});
