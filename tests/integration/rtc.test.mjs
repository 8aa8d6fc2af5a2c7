// The participants' real-time endpoint GET /v1/rtc (API.md "Participants' real-time
// connection"): joins, presence, data, grants, ejection with bans, room close, room full,
// replaced identities, bad tokens, and the session history and events the joins leave behind.
// Two worker loops, so that a room's home loop and a participant's connection loop differ
// for some of the rooms (each room name hashes to one home loop; connections land on either).
// Error frames: a participant's `data` without grant publish_data is not delivered and the
// server answers {type:"error", code:"forbidden", message} on the same connection (it stays
// open); a malformed message gets {type:"error", code:"invalid_message"}.
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import WebSocket from 'ws';

import { rm } from 'node:fs/promises';

import { run, sleep, startServer, tempDir, waitFor } from './lib/server.mjs';

const ADMIN = 'rtc-itest-admin-key-0123456789abcdefghijklmn';
const env = { SWITCHBOARD_ADMIN_KEY: ADMIN };

let srv;
let dataDir;

async function api(method, urlPath, body) {
  const h = { authorization: `Bearer ${ADMIN}` };
  if (body !== undefined) h['content-type'] = 'application/json';
  const res = await fetch(`${srv.plainUrl}${urlPath}`, {
    method,
    headers: h,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, text, json: text && /json/.test(res.headers.get('content-type') ?? '') ? JSON.parse(text) : null };
}

async function room(name, extra = {}) {
  const r = await api('POST', '/v1/rooms', { name, ...extra });
  assert.ok(r.status === 201 || r.status === 200, r.text);
  return r.json;
}

async function token(roomName, identity, extra = {}) {
  const r = await api('POST', '/v1/tokens', { room: roomName, identity, ...extra });
  assert.equal(r.status, 201, r.text);
  return r.json.token;
}

/** A participant: a `ws` client with a queue of parsed JSON messages. */
function connect(tok, { query = true } = {}) {
  const url = `ws://127.0.0.1:${srv.plainPort}/v1/rtc${query ? `?access_token=${encodeURIComponent(tok)}` : ''}`;
  const ws = new WebSocket(url, query ? {} : { headers: { authorization: `Bearer ${tok}` } });
  ws.queue = [];
  ws.waiters = [];
  ws.on('message', (data, isBinary) => {
    const m = isBinary ? { binary: data } : JSON.parse(data.toString());
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

async function join(roomName, identity, extra = {}) {
  const ws = connect(await token(roomName, identity, extra));
  const j = await ws.type('joined');
  return { ws, joined: j };
}

async function closeCode(ws, timeoutMs = 5000) {
  let t;
  const r = await Promise.race([ws.closed, new Promise((res) => { t = setTimeout(() => res(null), timeoutMs); })]);
  clearTimeout(t);
  assert.ok(r, 'connection not closed in time');
  return r.code;
}

describe('GET /v1/rtc', () => {
  before(async () => {
    dataDir = await tempDir();
    srv = await startServer({ plain: true, workers: 2, env, dataDir });
  });
  after(async () => {
    await srv?.cleanup();
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  });

  it('join → joined with participants; the second join announced to the first; leave announced', async () => {
    for (const name of ['r-a', 'r-b', 'r-c', 'r-d']) {
      await room(name);
      const a = await join(name, 'alice', { name: 'Alice' });
      assert.equal(a.joined.room.name, name);
      assert.match(a.joined.session_id, /^ses_/);
      assert.equal(a.joined.participant.identity, 'alice');
      assert.deepEqual(a.joined.participants, []); // the others already there
      const b = await join(name, 'bob');
      assert.deepEqual(b.joined.participants.map((p) => p.identity), ['alice']);
      assert.equal(b.joined.participants[0].name, 'Alice');
      assert.equal(b.joined.session_id, a.joined.session_id);
      const pj = await a.ws.type('participant_joined');
      assert.equal(pj.participant.identity, 'bob');
      b.ws.close();
      const pl = await a.ws.type('participant_left');
      assert.deepEqual(pl, { type: 'participant_left', identity: 'bob', reason: 'left' });
      a.ws.close();
      await a.ws.closed;
    }
  });

  it('the token may come in Authorization; a bad token closes with 4001; no upgrade → 426; no room → 404', async () => {
    await room('r-auth');
    const ws = connect(await token('r-auth', 'hdr'), { query: false });
    await ws.type('joined');
    ws.close();
    assert.equal(await closeCode(connect('garbage')), 4001);
    const noTok = connect('');
    const st = await new Promise((resolve) => noTok.once('unexpected-response', (req, res) => resolve(res.statusCode)));
    assert.equal(st, 401);
    const r = await fetch(`${srv.plainUrl}/v1/rtc?access_token=x`);
    assert.equal(r.status, 426);
    const gone = connect(await token('r-nowhere', 'x'));
    const err = await new Promise((resolve) => gone.once('unexpected-response', (req, res) => resolve(res.statusCode)));
    assert.equal(err, 404);
  });

  it('data: broadcast and targeted; publish_data false → error frame, nothing delivered', async () => {
    for (const name of ['d-a', 'd-b', 'd-c']) {
      await room(name);
      const a = await join(name, 'a');
      const b = await join(name, 'b');
      const c = await join(name, 'c', { grants: { publish_data: false } });
      a.ws.send(JSON.stringify({ type: 'data', data: 'hi all', topic: 't' }));
      for (const x of [b, c]) assert.deepEqual(await x.ws.type('data'), { type: 'data', from: 'a', topic: 't', data: 'hi all' });
      a.ws.send(JSON.stringify({ type: 'data', data: 'just c', to: ['c'] }));
      assert.deepEqual(await c.ws.type('data'), { type: 'data', from: 'a', topic: null, data: 'just c' });
      c.ws.send(JSON.stringify({ type: 'data', data: 'nope' }));
      const e = await c.ws.type('error');
      assert.equal(e.code, 'forbidden');
      a.ws.send('{"type":"bogus"}');
      assert.equal((await a.ws.type('error')).code, 'invalid_message');
      // b only ever got the broadcast
      await sleep(100);
      assert.equal(b.ws.queue.filter((m) => m.type === 'data').length, 0);
      // server → participants
      const r = await api('POST', `/v1/rooms/${name}/messages`, { data: 'from server', to: ['b'] });
      assert.equal(r.status, 202, r.text);
      assert.equal(r.json.delivered, 1);
      assert.deepEqual(await b.ws.type('data'), { type: 'data', from: null, topic: null, data: 'from server' });
      for (const x of [a, b, c]) x.ws.close();
    }
  });

  it('binary frames are relayed with the sender attributed; without publish they are refused', async () => {
    for (const name of ['b-a', 'b-b']) {
      await room(name);
      const a = await join(name, 'ann');
      const b = await join(name, 'ben', { grants: { publish: false } });
      a.ws.send(Buffer.from([1, 2, 3]));
      const m = await b.ws.next((x) => x.binary);
      assert.deepEqual([...m.binary], [3, ...Buffer.from('ann'), 1, 2, 3]);
      b.ws.send(Buffer.from([9]));
      assert.equal((await b.ws.type('error')).code, 'forbidden');
      a.ws.close();
      b.ws.close();
    }
  });

  it('a token that expires while connected closes with 4001', async () => {
    await room('x-a');
    const a = await join('x-a', 'short', { ttl_seconds: 2 });
    assert.equal(await closeCode(a.ws, 6000), 4001);
  });

  it('eject with ban → 4003 and the rejoin is refused with 4003', async () => {
    for (const name of ['e-a', 'e-b', 'e-c']) {
      await room(name);
      const a = await join(name, 'a');
      const v = await join(name, 'victim');
      await a.ws.type('participant_joined');
      const r = await api('DELETE', `/v1/rooms/${name}/participants/victim?ban_seconds=60`);
      assert.equal(r.status, 204, r.text);
      assert.equal(await closeCode(v.ws), 4003);
      assert.deepEqual(await a.ws.type('participant_left'), { type: 'participant_left', identity: 'victim', reason: 'ejected' });
      const again = connect(await token(name, 'victim'));
      assert.equal(await closeCode(again), 4003);
      a.ws.close();
    }
  });

  it('PATCH a participant changes it live', async () => {
    await room('u-a');
    const a = await join('u-a', 'a');
    const r = await api('PATCH', '/v1/rooms/u-a/participants/a', { metadata: 'm1', grants: { publish_data: false } });
    assert.equal(r.status, 200, r.text);
    const u = await a.ws.type('participant_updated');
    assert.equal(u.participant.metadata, 'm1');
    assert.equal(u.participant.grants.publish_data, false);
    assert.equal(r.json.metadata, 'm1');
    assert.equal(r.json.grants.publish_data, false);
    a.ws.close();
  });

  it('room close → 4004; max_participants → 4009; duplicate identity → old gets 4010', async () => {
    for (const name of ['c-a', 'c-b']) {
      await room(name);
      const a = await join(name, 'a');
      const r = await api('DELETE', `/v1/rooms/${name}`);
      assert.equal(r.status, 204);
      assert.equal(await closeCode(a.ws), 4004);
    }
    for (const name of ['f-a', 'f-b']) {
      await room(name, { max_participants: 1 });
      const a = await join(name, 'a');
      const b = connect(await token(name, 'b'));
      assert.equal(await closeCode(b), 4009);
      const a2 = await join(name, 'a');
      assert.equal(await closeCode(a.ws), 4010);
      a2.ws.close();
    }
  });

  it('PATCH the room → room_updated and new limits; POST /v1/sessions/{id}/end → 4004, a rejoin starts a new session', async () => {
    for (const name of ['p-a', 'p-b']) {
      await room(name);
      const a = await join(name, 'a');
      const r = await api('PATCH', `/v1/rooms/${name}`, { metadata: 'new', max_participants: 1 });
      assert.equal(r.status, 200, r.text);
      const u = await a.ws.type('room_updated');
      assert.equal(u.room.metadata, 'new');
      assert.equal(u.room.max_participants, 1);
      assert.equal(u.room.num_participants, 1);
      assert.equal(await closeCode(connect(await token(name, 'b'))), 4009);
      const e = await api('POST', `/v1/sessions/${a.joined.session_id}/end`);
      assert.equal(e.status, 200, e.text);
      assert.equal(await closeCode(a.ws), 4004);
      const again = await join(name, 'a');
      assert.notEqual(again.joined.session_id, a.joined.session_id);
      again.ws.close();
    }
  });

  it('GET /v1/sessions shows the session and its participants; events are recorded', async () => {
    await room('h-a', { empty_timeout_seconds: 1 });
    const a = await join('h-a', 'a');
    const b = await join('h-a', 'b');
    const sid = a.joined.session_id;
    b.ws.close();
    a.ws.close();
    await a.ws.closed;
    const s = await waitFor(async () => {
      const r = await api('GET', `/v1/sessions/${sid}`);
      return r.status === 200 && r.json.ended_at ? r.json : null;
    }, { timeoutMs: 8000, what: 'session ended' });
    assert.equal(s.id, sid);
    const p = await api('GET', `/v1/sessions/${sid}/participants`);
    assert.equal(p.status, 200, p.text);
    assert.deepEqual(p.json.data.map((x) => x.identity).sort(), ['a', 'b']);
    for (const x of p.json.data) assert.ok(x.left_at, JSON.stringify(x));
    const list = await api('GET', '/v1/sessions?room=h-a');
    assert.ok(list.json.data.some((x) => x.id === sid));
  });

  it('SIGTERM with participants connected: they get 1001, exit 0; the events table has every kind', async () => {
    const open = [];
    for (const name of ['s-a', 's-b', 's-c']) {
      await room(name);
      open.push((await join(name, 'stay')).ws);
    }
    await srv.stop();
    for (const ws of open) assert.equal(await closeCode(ws), 1001);
    const out = await run('sqlite3', [path.join(dataDir, 'switchboard.db')], {
      input: "SELECT type, count(*) FROM events WHERE type LIKE 'participant.%' OR type LIKE 'session.%' GROUP BY type ORDER BY type;",
    });
    const counts = Object.fromEntries(out.stdout.trim().split('\n').map((l) => l.split('|')).map(([k, v]) => [k, Number(v)]));
    for (const t of ['participant.joined', 'participant.left', 'participant.ejected', 'session.started', 'session.ended'])
      assert.ok(counts[t] > 0, `${t}: ${out.stdout}`);
    // every session was ended (the last ones by the shutdown) and every participant left
    const open2 = await run('sqlite3', [path.join(dataDir, 'switchboard.db')], {
      input: 'SELECT (SELECT count(*) FROM sessions WHERE ended_at IS NULL), (SELECT count(*) FROM session_participants WHERE left_at IS NULL);',
    });
    assert.equal(open2.stdout.trim(), '0|0');
  });
});
