// A participant's connection moves to its room's home loop (DESIGN.md "Threads and
// ownership"), over plain WebSocket and over TLS; fresh tokens sent over the connection
// keep it past its first token's expiry; revoked token ids (DELETE /v1/tokens/{jti}) close
// the participants that joined with them and refuse new joins, also after a restart.
//
// Two worker loops: SO_REUSEPORT spreads the accepted connections over both, so with 24
// participants in one room the chance that all of them were accepted by the room's home
// loop anyway is 2^-24; the per-loop gauge then shows them all on one loop.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';

import WebSocket from 'ws';

import { sleep, startServer, tempDir, waitFor } from './lib/server.mjs';

const ADMIN = 'handoff-itest-admin-key-0123456789abcdefghijk';
const env = { SWITCHBOARD_ADMIN_KEY: ADMIN };

let srv;
let dataDir;

async function api(method, urlPath, body) {
  const h = { authorization: `Bearer ${ADMIN}` };
  if (body !== undefined) h['content-type'] = 'application/json';
  const res = await fetch(`${srv.plainUrl}${urlPath}`, { method, headers: h, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  return { status: res.status, text, json: text && /json/.test(res.headers.get('content-type') ?? '') ? JSON.parse(text) : null };
}

async function token(room, identity, extra = {}) {
  const r = await api('POST', '/v1/tokens', { room, identity, ...extra });
  assert.equal(r.status, 201, r.text);
  return r.json.token;
}

const jtiOf = (tok) => JSON.parse(Buffer.from(tok.split('.')[1], 'base64url').toString()).jti;

/** A participant: a `ws` client with a queue of parsed JSON messages. */
function connect(tok, { tls = false } = {}) {
  const url = tls
    ? `wss://localhost:${srv.port}/v1/rtc?access_token=${encodeURIComponent(tok)}`
    : `ws://127.0.0.1:${srv.plainPort}/v1/rtc?access_token=${encodeURIComponent(tok)}`;
  const ws = new WebSocket(url, tls ? { ca: readFileSync(srv.caPath) } : {});
  ws.queue = [];
  ws.waiters = [];
  ws.on('message', (data, isBinary) => {
    const m = isBinary ? { binary: Buffer.from(data) } : JSON.parse(data.toString());
    const w = ws.waiters.findIndex((x) => x.pred(m));
    if (w >= 0) {
      const [x] = ws.waiters.splice(w, 1);
      clearTimeout(x.t);
      x.resolve(m);
    } else ws.queue.push(m);
  });
  ws.closed = new Promise((resolve) => ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() })));
  ws.on('error', () => {});
  ws.next = (pred = () => true, timeoutMs = 5000) => {
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

async function join(room, identity, { tls = false, ...extra } = {}) {
  const tok = await token(room, identity, extra);
  const ws = connect(tok, { tls });
  ws.token = tok;
  ws.joinedMsg = await ws.type('joined');
  return ws;
}

async function loopGauges() {
  const text = await (await fetch(`${srv.plainUrl}/metrics`)).text();
  const out = {};
  for (const m of text.matchAll(/^switchboard_loop_websockets_active\{loop="(\d+)"\} (\d+)$/gm)) out[m[1]] = Number(m[2]);
  return out;
}

before(async () => {
  dataDir = await tempDir('itest-switchboard-handoff-');
  srv = await startServer({ plain: true, workers: 2, env, dataDir });
});

after(async () => {
  try {
    await srv?.cleanup();
  } finally {
    if (dataDir && !process.env.SB_ITEST_KEEP) await rm(dataDir, { recursive: true, force: true });
  }
});

describe('connections move to the room\'s home loop', () => {
  it('24 participants of one room, half over TLS, all end up served by one loop and talk', async () => {
    const r = await api('POST', '/v1/rooms', { name: 'handoff' });
    assert.equal(r.status, 201, r.text);
    const ps = [];
    for (let i = 0; i < 24; i++) ps.push(await join('handoff', `p${i}`, { tls: i % 2 === 1 }));
    const g = await loopGauges();
    assert.deepEqual(Object.keys(g).sort(), ['0', '1']);
    assert.deepEqual(Object.values(g).sort((a, b) => a - b), [0, 24], JSON.stringify(g));

    // Text and binary reach everyone, across TLS and plain connections.
    ps[0].send(JSON.stringify({ type: 'data', data: 'hello', topic: 't' }));
    for (const p of ps.slice(1)) {
      const m = await p.type('data');
      assert.deepEqual([m.from, m.data, m.topic], ['p0', 'hello', 't']);
    }
    ps[3].send(Buffer.from('bytes-from-3'));
    const b = await ps[10].next((m) => m.binary);
    assert.ok(b.binary.includes(Buffer.from('bytes-from-3')));
    const list = await api('GET', '/v1/rooms/handoff/participants?limit=200');
    assert.equal(list.json.data.length, 24);

    for (const p of ps) p.close(1000);
    for (const p of ps) assert.equal((await p.closed).code, 1000);
    await waitFor(async () => Object.values(await loopGauges()).every((v) => v === 0));
  });

  it('rooms spread over both loops; each room stays on its own', async () => {
    const names = Array.from({ length: 8 }, (_, i) => `spread${i}`);
    const ps = [];
    for (const n of names) {
      assert.equal((await api('POST', '/v1/rooms', { name: n })).status, 201);
      for (let i = 0; i < 3; i++) ps.push(await join(n, `u${i}`));
    }
    const g = await loopGauges();
    assert.equal(g['0'] + g['1'], 24);
    assert.ok(g['0'] % 3 === 0 && g['1'] % 3 === 0, `a room split across loops: ${JSON.stringify(g)}`);
    assert.ok(g['0'] > 0 && g['1'] > 0, `every room on one loop: ${JSON.stringify(g)}`);
    for (const p of ps) p.terminate();
  });
});

describe('fresh tokens', () => {
  it('a refresh_token message keeps a participant past its first token\'s expiry', async () => {
    await api('POST', '/v1/rooms', { name: 'refresh' });
    const kept = await join('refresh', 'kept', { ttl_seconds: 2 });
    const lapsed = await join('refresh', 'lapsed', { ttl_seconds: 2 });
    const fresh = await token('refresh', 'kept', { ttl_seconds: 120 });
    kept.send(JSON.stringify({ type: 'refresh_token', token: fresh }));
    const ok = await kept.type('token_refreshed');
    const exp = JSON.parse(Buffer.from(fresh.split('.')[1], 'base64url').toString()).exp;
    assert.equal(ok.expires_at, new Date(exp * 1000).toISOString());

    // Refused without closing: another identity's token, a garbage token.
    kept.send(JSON.stringify({ type: 'refresh_token', token: await token('refresh', 'someone-else') }));
    assert.equal((await kept.type('error')).code, 'invalid_token');
    kept.send(JSON.stringify({ type: 'refresh_token', token: 'not.a.token' }));
    assert.equal((await kept.type('error')).code, 'invalid_token');
    kept.send(JSON.stringify({ type: 'refresh_token' }));
    assert.equal((await kept.type('error')).code, 'invalid_token');

    const closed = await lapsed.closed;
    assert.equal(closed.code, 4001);
    await sleep(1500);
    assert.equal(kept.readyState, WebSocket.OPEN, 'the refreshed participant is still connected');
    kept.send(JSON.stringify({ type: 'data', data: 'still here' }));
    const probe = await join('refresh', 'probe');
    kept.send(JSON.stringify({ type: 'data', data: 'after' }));
    assert.equal((await probe.type('data')).data, 'after');
    kept.terminate();
    probe.terminate();
  });
});

describe('revoked tokens', () => {
  it('DELETE /v1/tokens/{jti} closes who joined with it (4001) and refuses it from then on', async () => {
    await api('POST', '/v1/rooms', { name: 'revoke' });
    const a = await join('revoke', 'a');
    const b = await join('revoke', 'b');
    const r = await api('DELETE', `/v1/tokens/${jtiOf(a.token)}`);
    assert.equal(r.status, 204, r.text);
    assert.equal((await a.closed).code, 4001);
    const left = await b.type('participant_left');
    assert.equal(left.identity, 'a');
    assert.equal(b.readyState, WebSocket.OPEN, 'another token is untouched');

    const again = connect(a.token);
    assert.equal((await again.closed).code, 4001);
    // A new token for the same identity still works.
    const a2 = await join('revoke', 'a');
    assert.equal(a2.joinedMsg.participant.identity, 'a');

    const audit = await api('GET', '/v1/audit?limit=200');
    assert.ok(audit.json.data.some((e) => e.action === 'token.revoke' && e.target_id === jtiOf(a.token)));
    for (const bad of [`/v1/tokens/${'x'.repeat(64)}`, '/v1/tokens/a%01b']) assert.equal((await api('DELETE', bad)).status, 400);
    const noauth = await fetch(`${srv.plainUrl}/v1/tokens/${jtiOf(a.token)}`, { method: 'DELETE' });
    assert.equal(noauth.status, 401);
    b.terminate();
    a2.terminate();

    // The revocation is stored: a restart still refuses the token.
    await srv.stop();
    srv = await startServer({ plain: true, workers: 2, env, dataDir });
    const after = connect(a.token);
    assert.equal((await after.closed).code, 4001);
    const fine = await join('revoke', 'c');
    fine.terminate();
  });
});

describe('events', () => {
  it('participant.joined carries the participant object (grants, name, joined_at)', async () => {
    await api('POST', '/v1/rooms', { name: 'evroom' });
    const ev = new WebSocket(`ws://127.0.0.1:${srv.plainPort}/v1/events`, { headers: { authorization: `Bearer ${ADMIN}` } });
    const got = [];
    ev.on('message', (d) => got.push(JSON.parse(d.toString())));
    await new Promise((resolve, reject) => { ev.once('open', resolve); ev.once('error', reject); });
    const p = await join('evroom', 'evie', { name: 'Evie', grants: { publish: false } });
    await waitFor(() => got.some((e) => e.type === 'participant.joined' && e.data.identity === 'evie'));
    const e = got.find((x) => x.type === 'participant.joined' && x.data.identity === 'evie');
    assert.equal(e.data.room, 'evroom');
    assert.equal(e.data.participant.identity, 'evie');
    assert.equal(e.data.participant.name, 'Evie');
    assert.equal(e.data.participant.grants.publish, false);
    assert.equal(e.data.participant.joined_at, p.joinedMsg.participant.joined_at);
    assert.equal(e.data.participant.session_id, e.data.session_id);
    p.terminate();
    ev.close();
  });
});

describe('moves in flight at shutdown', () => {
  it('SIGTERM while 300 participants (half TLS) are joining (moves in transit) exits 0 with nothing leaked', async () => {
    const dir = await tempDir('itest-switchboard-handoff-term-');
    const s = await startServer({ plain: true, workers: 2, env, dataDir: dir });
    try {
      const call = (method, p, body) => fetch(`${s.plainUrl}${p}`, {
        method, headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' }, body: JSON.stringify(body),
      }).then((r) => r.json());
      const rooms = ['t0', 't1', 't2', 't3'];
      for (const name of rooms) await call('POST', '/v1/rooms', { name });
      const toks = [];
      for (let i = 0; i < 300; i++) toks.push((await call('POST', '/v1/tokens', { room: rooms[i % 4], identity: `m${i}` })).token);
      let joined = 0;
      const ca = readFileSync(s.caPath);
      const conns = toks.map((t, i) => {
        // Half over TLS: a TLS session in transit between loops must be freed too.
        const ws = i % 2
          ? new WebSocket(`wss://localhost:${s.port}/v1/rtc?access_token=${encodeURIComponent(t)}`, { ca })
          : new WebSocket(`ws://127.0.0.1:${s.plainPort}/v1/rtc?access_token=${encodeURIComponent(t)}`);
        ws.on('error', () => {});
        ws.on('message', (d) => { if (JSON.parse(d.toString()).type === 'joined') joined++; });
        ws.closed = new Promise((resolve) => ws.on('close', (code) => resolve(code)));
        return ws;
      });
      // Some joined, the others upgrading or on their way to their room's loop.
      await waitFor(() => joined >= 60, { what: '60 joins', timeoutMs: 10000 });
      const r = await s.stop(); // asserts exit 0 and no sanitizer report (leaks included)
      assert.equal(r.code, 0);
      const codes = await Promise.all(conns.map((c) => c.closed));
      if (process.env.SB_DEBUG_CODES) console.log(JSON.stringify(codes.reduce((m, c) => ((m[c] = (m[c] ?? 0) + 1), m), {})));
      for (const code of codes) assert.ok([1001, 1006].includes(code), `close code ${code}`);
      assert.ok(codes.filter((c) => c === 1001).length >= 60, 'the joined ones were told the server is going away');
    } finally {
      await s.cleanup();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
