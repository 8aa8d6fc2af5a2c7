// gRPC (docs/grpc.md) with the standard Node client, @grpc/grpc-js, loading the repository's
// proto/ files with @grpc/proto-loader, over TLS (ALPN h2) with the dev CA: every method of
// RoomService, TokenService and SessionService against what REST says, auth failures,
// NOT_FOUND / INVALID_ARGUMENT with details, deadlines, health, unknown methods, and an
// EventService/Subscribe stream that sees a WebSocket join and resumes from an event id.
import assert from 'node:assert/strict';
import http2 from 'node:http2';
import { after, before, describe, it } from 'node:test';

import WebSocket from 'ws';

import { readCa } from './lib/client.mjs';
import { clients, failure, status, subscribe, unary } from './lib/grpc.mjs';
import { startServer, waitFor } from './lib/server.mjs';

const ADMIN = 'grpc-itest-admin-key-0123456789abcdefghijklmn';
let n = 0;
const uniq = (p) => `${p}-${process.pid}-${Date.now().toString(36)}-${n++}`;

describe('gRPC', () => {
  let srv;
  let c;
  const call = (svc, method, req, opts = {}) => unary(c[svc], method, req, { key: ADMIN, ...opts });

  async function rest(method, path, json, key = ADMIN) {
    const h = { authorization: `Bearer ${key}` };
    if (json !== undefined) h['content-type'] = 'application/json';
    const res = await fetch(`${srv.plainUrl}${path}`, { method, headers: h, body: json === undefined ? undefined : JSON.stringify(json) });
    const text = await res.text();
    return { status: res.status, json: text ? JSON.parse(text) : null };
  }

  /** A participant over WebSocket (plain listener) with a token from TokenService. */
  async function join(room, identity, extra = {}) {
    const t = await call('TokenService', 'CreateToken', { room, identity, ...extra });
    const ws = new WebSocket(`ws://127.0.0.1:${srv.plainPort}/v1/rtc?access_token=${encodeURIComponent(t.token)}`);
    ws.msgs = [];
    ws.on('message', (d, bin) => {
      if (!bin) ws.msgs.push(JSON.parse(d.toString()));
    });
    ws.on('error', () => {});
    ws.closed = new Promise((r) => ws.on('close', (code) => r(code)));
    ws.waitType = async (type, ms = 5000) => {
      const end = Date.now() + ms;
      while (Date.now() < end) {
        const m = ws.msgs.find((x) => x.type === type);
        if (m) return m;
        await new Promise((r) => setTimeout(r, 20));
      }
      throw new Error(`no ${type} message; got ${JSON.stringify(ws.msgs)}`);
    };
    await ws.waitType('joined');
    return ws;
  }

  before(async () => {
    srv = await startServer({ plain: true, workers: 2, env: { SWITCHBOARD_ADMIN_KEY: ADMIN } });
    c = clients(srv);
  });
  after(async () => {
    c?.close();
    await srv?.cleanup();
  });

  it('RoomService: CreateRoom, GetRoom, ListRooms (paged), UpdateRoom, DeleteRoom mirror REST', async () => {
    const name = uniq('groom');
    const created = await call('RoomService', 'CreateRoom', { name, metadata: '{"a":1}', max_participants: 7 });
    assert.equal(created.name, name);
    assert.equal(created.metadata, '{"a":1}');
    assert.equal(created.max_participants, 7);
    assert.equal(created.empty_timeout_seconds, 300);
    assert.equal(created.auto_record, false);
    assert.equal(created.status, 'open');
    assert.equal(created.num_participants, 0);
    assert.equal(created.active_session_id, undefined, 'null in REST = absent');
    // the same object as REST
    const viaRest = await rest('GET', `/v1/rooms/${name}`);
    assert.equal(viaRest.status, 200);
    const got = await call('RoomService', 'GetRoom', { name });
    assert.deepEqual({ ...got, active_session_id: null }, viaRest.json);
    // an open room of that name: answered unchanged (REST 200)
    const again = await call('RoomService', 'CreateRoom', { name, metadata: 'other' });
    assert.equal(again.metadata, '{"a":1}');
    // a generated name
    const gen = await call('RoomService', 'CreateRoom', {});
    assert.match(gen.name, /^room_/);

    const more = [uniq('gl'), uniq('gl')];
    for (const m of more) await call('RoomService', 'CreateRoom', { name: m });
    const page1 = await call('RoomService', 'ListRooms', { limit: 2 });
    assert.equal(page1.data.length, 2);
    assert.ok(page1.next_cursor, 'more pages');
    const seen = new Set(page1.data.map((r) => r.name));
    let cursor = page1.next_cursor;
    while (cursor) {
      const p = await call('RoomService', 'ListRooms', { limit: 2, cursor });
      p.data.forEach((r) => seen.add(r.name));
      cursor = p.next_cursor;
    }
    for (const m of [name, gen.name, ...more]) assert.ok(seen.has(m), `${m} listed`);

    const upd = await call('RoomService', 'UpdateRoom', { name, metadata: 'new', empty_timeout_seconds: 60 });
    assert.equal(upd.metadata, 'new');
    assert.equal(upd.empty_timeout_seconds, 60);
    assert.equal(upd.max_participants, 7, 'unchanged');
    assert.equal((await rest('GET', `/v1/rooms/${name}`)).json.metadata, 'new');

    const del = await call('RoomService', 'DeleteRoom', { name });
    assert.deepEqual(del, {});
    const e = await failure(call('RoomService', 'GetRoom', { name }));
    assert.equal(e.code, status.NOT_FOUND);
    assert.equal((await rest('GET', `/v1/rooms/${name}`)).status, 404);
  });

  it('participants: ListParticipants, GetParticipant, UpdateParticipant, SendData, RemoveParticipant; TokenService; SessionService', async () => {
    const room = uniq('gpart');
    await call('RoomService', 'CreateRoom', { name: room });
    const tok = await call('TokenService', 'CreateToken', { room, identity: 'alice', name: 'Alice', ttl_seconds: 120, grants: { publish: false } });
    assert.equal(tok.token.split('.').length, 3, 'a JWT');
    assert.ok(Date.parse(tok.expires_at) > Date.now() + 100_000);
    const claims = JSON.parse(Buffer.from(tok.token.split('.')[1], 'base64url').toString());
    assert.equal(claims.sub, 'alice');
    assert.equal(claims.room, room);
    assert.equal(claims.grants.publish, false);

    const alice = await join(room, 'alice', { name: 'Alice', metadata: 'm0' });
    const bob = await join(room, 'bob');

    // a join is announced on the WebSocket before its store write commits: poll briefly
    let list;
    await waitFor(async () => {
      list = await call('RoomService', 'ListParticipants', { room });
      return (list.data ?? []).length === 2;
    }, { timeoutMs: 5000, what: 'both participants listed' });
    assert.deepEqual(list.data.map((p) => p.identity).sort(), ['alice', 'bob']);
    const p = await call('RoomService', 'GetParticipant', { room, identity: 'alice' });
    assert.equal(p.name, 'Alice');
    assert.equal(p.metadata, 'm0');
    assert.equal(p.grants.publish, true);
    assert.equal(p.grants.admin, false);
    assert.match(p.session_id, /^ses_/);
    assert.deepEqual(p, (await rest('GET', `/v1/rooms/${room}/participants/alice`)).json);

    const up = await call('RoomService', 'UpdateParticipant', { room, identity: 'alice', metadata: 'm1', grants: { publish_data: false } });
    assert.equal(up.metadata, 'm1');
    assert.equal(up.grants.publish_data, false);
    assert.equal(up.grants.subscribe, true, 'unchanged');

    const sent = await call('RoomService', 'SendData', { room, data: 'hello', topic: 't1', to: ['bob'] });
    assert.equal(sent.delivered, 1);
    const d = await bob.waitType('data');
    assert.equal(d.data, 'hello');
    assert.equal(d.topic, 't1');
    assert.ok(!alice.msgs.some((m) => m.type === 'data'), 'only to bob');

    const rm = await call('RoomService', 'RemoveParticipant', { room, identity: 'bob', ban_seconds: 30 });
    assert.deepEqual(rm, {});
    assert.equal(await bob.closed, 4003);
    const gone = await failure(call('RoomService', 'GetParticipant', { room, identity: 'bob' }));
    assert.equal(gone.code, status.NOT_FOUND);

    // sessions
    const sessions = await call('SessionService', 'ListSessions', { room });
    assert.equal(sessions.data.length, 1);
    const s = sessions.data[0];
    assert.equal(s.id, p.session_id);
    assert.equal(s.room, room);
    assert.equal(s.ended_at, undefined);
    const got = await call('SessionService', 'GetSession', { id: s.id });
    assert.equal(got.num_participants, 2);
    assert.deepEqual({ ...got, ended_at: null, end_reason: null }, (await rest('GET', `/v1/sessions/${s.id}`)).json);
    const sp = await call('SessionService', 'ListSessionParticipants', { id: s.id });
    assert.deepEqual(sp.data.map((x) => x.identity).sort(), ['alice', 'bob']);
    assert.equal(sp.data.find((x) => x.identity === 'bob').leave_reason, 'ejected');
    const ended = await call('SessionService', 'EndSession', { id: s.id });
    assert.equal(ended.end_reason, 'ended_by_api');
    assert.ok(ended.ended_at);
    await alice.closed;
    const nf = await failure(call('SessionService', 'GetSession', { id: 'ses_doesnotexist' }));
    assert.equal(nf.code, status.NOT_FOUND);
  });

  it('h2c (prior knowledge) on the plain listener; HTTP/1.1 is refused with 426', async () => {
    const p = (await import('./lib/grpc.mjs')).loadProtos();
    const insecure = new p.switchboard.v1.RoomService(`127.0.0.1:${srv.plainPort}`, (await import('./lib/grpc.mjs')).grpc.credentials.createInsecure());
    const name = uniq('h2c');
    const created = await unary(insecure, 'CreateRoom', { name }, { key: ADMIN });
    assert.equal(created.name, name);
    assert.equal((await unary(insecure, 'GetRoom', { name }, { key: ADMIN })).name, name);
    insecure.close();
    const res = await fetch(`${srv.plainUrl}/switchboard.v1.RoomService/GetRoom`, {
      method: 'POST',
      headers: { 'content-type': 'application/grpc', authorization: `Bearer ${ADMIN}` },
      body: Buffer.from([0, 0, 0, 0, 0]),
    });
    assert.equal(res.status, 426);
  });

  it('auth: no token → UNAUTHENTICATED, bad token → UNAUTHENTICATED, a key without the scope → PERMISSION_DENIED', async () => {
    const e1 = await failure(unary(c.RoomService, 'ListRooms', {}, { key: null }));
    assert.equal(e1.code, status.UNAUTHENTICATED);
    assert.match(e1.details, /Bearer/);
    const e2 = await failure(unary(c.RoomService, 'ListRooms', {}, { key: 'sk_nope_0123456789abcdefghijklmnopqrstuvwxyz' }));
    assert.equal(e2.code, status.UNAUTHENTICATED);
    const k = await rest('POST', '/v1/keys', { name: uniq('ro'), scopes: ['rooms:read'] });
    assert.equal(k.status, 201);
    const ro = k.json.secret;
    const ok = await unary(c.RoomService, 'ListRooms', { limit: 1 }, { key: ro });
    assert.ok(Array.isArray(ok.data ?? []));
    const e3 = await failure(unary(c.RoomService, 'CreateRoom', { name: uniq('x') }, { key: ro }));
    assert.equal(e3.code, status.PERMISSION_DENIED);
    const e4 = await failure(unary(c.TokenService, 'CreateToken', { room: 'r', identity: 'i' }, { key: ro }));
    assert.equal(e4.code, status.PERMISSION_DENIED);
  });

  it('errors: NOT_FOUND and INVALID_ARGUMENT with grpc-status-details-bin (problem type, request id)', async () => {
    const rid = uniq('rid');
    const e = await failure(call('RoomService', 'GetRoom', { name: 'no-such-room' }, { metadata: { 'x-request-id': rid } }));
    assert.equal(e.code, status.NOT_FOUND);
    assert.match(e.details, /no such open room/);
    const bin = e.metadata.get('grpc-status-details-bin')[0];
    assert.ok(Buffer.isBuffer(bin), 'details present');
    const text = bin.toString('latin1');
    assert.ok(text.includes('type.googleapis.com/google.rpc.ErrorInfo'));
    assert.ok(text.includes('urn:switchboard:problem:not-found'));
    assert.ok(text.includes(rid), 'request id in details');
    // the access log line of the call carries the gRPC status (HTTP says 200)
    const line = await srv.waitForLog((l) => l.msg === 'request' && l.request_id === rid);
    assert.equal(line.path, '/switchboard.v1.RoomService/GetRoom');
    assert.equal(line.status, 200);
    assert.equal(line.grpc_status, 5);

    const bad = await failure(call('RoomService', 'CreateRoom', { name: 'not a valid name!' }));
    assert.equal(bad.code, status.INVALID_ARGUMENT);
    const big = await failure(call('RoomService', 'CreateRoom', { name: uniq('r'), max_participants: 100001 }));
    assert.equal(big.code, status.INVALID_ARGUMENT);
    const noName = await failure(call('RoomService', 'GetRoom', {}));
    assert.equal(noName.code, status.INVALID_ARGUMENT);
    assert.match(noName.details, /name is required/);
    const noRoom = await failure(call('TokenService', 'CreateToken', { identity: 'x' }));
    assert.equal(noRoom.code, status.INVALID_ARGUMENT);
  });

  it('health: Check, Watch (status, then open until cancelled or the deadline), unknown service NOT_FOUND', async () => {
    assert.deepEqual(await unary(c.Health, 'Check', {}), { status: 'SERVING' });
    assert.deepEqual(await unary(c.Health, 'Check', { service: 'switchboard.v1.RoomService' }), { status: 'SERVING' });
    const e = await failure(unary(c.Health, 'Check', { service: 'nope.Service' }));
    assert.equal(e.code, status.NOT_FOUND);
    // no credential needed, as GET /readyz
    assert.deepEqual(await unary(c.Health, 'Check', {}, { key: null }), { status: 'SERVING' });

    const w = c.Health.Watch({});
    const first = await new Promise((resolve, reject) => {
      w.once('data', resolve);
      w.once('error', reject);
    });
    assert.deepEqual(first, { status: 'SERVING' });
    const cancelled = new Promise((resolve) => w.on('error', resolve));
    await new Promise((r) => setTimeout(r, 100));
    w.cancel();
    assert.equal((await cancelled).code, status.CANCELLED);

    const wd = c.Health.Watch({}, new (await import('./lib/grpc.mjs')).grpc.Metadata(), { deadline: Date.now() + 300 });
    const msgs = [];
    wd.on('data', (m) => msgs.push(m));
    wd.on('error', () => {}); // the status below carries it
    const st = await new Promise((resolve) => wd.on('status', resolve));
    assert.equal(st.code, status.DEADLINE_EXCEEDED);
    assert.deepEqual(msgs, [{ status: 'SERVING' }]);
  });

  it('unknown methods and services: UNIMPLEMENTED', async () => {
    const p = (await import('./lib/grpc.mjs')).grpc;
    const client = new p.Client(`127.0.0.1:${srv.port}`, p.credentials.createSsl((await import('node:fs')).readFileSync(srv.caPath)), {
      'grpc.ssl_target_name_override': 'localhost',
    });
    const err = await new Promise((resolve) => {
      client.makeUnaryRequest('/switchboard.v1.RoomService/NoSuchMethod', (x) => x, (x) => x, Buffer.alloc(0), (e) => resolve(e));
    });
    assert.equal(err.code, status.UNIMPLEMENTED);
    client.close();
  });

  /** A raw HTTP/2 gRPC call: {headers, trailers, body}. */
  function raw(path, msg, headers = {}) {
    return new Promise((resolve, reject) => {
      const s = http2.connect(srv.url, { ca: readCa(srv.caPath) });
      s.on('error', reject);
      const st = s.request({ ':method': 'POST', ':path': path, 'content-type': 'application/grpc', te: 'trailers', authorization: `Bearer ${ADMIN}`, ...headers });
      const out = { headers: null, trailers: null, chunks: [] };
      st.on('response', (h) => (out.headers = h));
      st.on('trailers', (t) => (out.trailers = t));
      st.on('data', (d) => out.chunks.push(d));
      st.on('end', () => {
        s.close();
        resolve({ ...out, body: Buffer.concat(out.chunks) });
      });
      st.on('error', reject);
      const prefix = Buffer.alloc(5);
      prefix.writeUInt32BE(msg.length, 1);
      st.end(Buffer.concat([prefix, msg]));
    });
  }

  it('wire: Trailers-Only errors, unknown service, compressed, oversized, malformed, missing and extra messages', async () => {
    const unk = await raw('/switchboard.v1.Nope/Nope', Buffer.alloc(0));
    assert.equal(unk.headers[':status'], 200);
    assert.equal(unk.headers['grpc-status'], '12', 'Trailers-Only UNIMPLEMENTED');
    assert.equal(unk.trailers, null);
    // GetRoom{name:"x y"}: a Trailers-Only NOT_FOUND (the room does not exist)
    const nf = await raw('/switchboard.v1.RoomService/GetRoom', Buffer.from([0x0a, 0x03, 0x78, 0x20, 0x79]));
    assert.equal(nf.headers['grpc-status'], '5');
    assert.equal(nf.body.length, 0);
    // malformed protobuf
    const bad = await raw('/switchboard.v1.RoomService/GetRoom', Buffer.from([0x0a, 0x09, 0x78]));
    assert.equal(bad.headers['grpc-status'], '3');
    // compressed flag
    const comp = await new Promise((resolve, reject) => {
      const s = http2.connect(srv.url, { ca: readCa(srv.caPath) });
      const st = s.request({ ':method': 'POST', ':path': '/switchboard.v1.RoomService/GetRoom', 'content-type': 'application/grpc', 'grpc-encoding': 'gzip', authorization: `Bearer ${ADMIN}` });
      st.on('response', (h) => {
        resolve(h);
        s.close();
      });
      st.on('error', reject);
      st.resume();
      st.end(Buffer.from([1, 0, 0, 0, 1, 0]));
    });
    assert.equal(comp['grpc-status'], '12');
    assert.equal(comp['grpc-accept-encoding'], 'identity');
    // no message, or a second one: a unary call takes exactly one
    const none = await raw('/switchboard.v1.RoomService/GetRoom', Buffer.alloc(0), {});
    assert.equal(none.headers['grpc-status'], '3', 'no message at all');
    const two = await new Promise((resolve, reject) => {
      const s = http2.connect(srv.url, { ca: readCa(srv.caPath) });
      const st = s.request({ ':method': 'POST', ':path': '/switchboard.v1.RoomService/ListRooms', 'content-type': 'application/grpc', authorization: `Bearer ${ADMIN}` });
      st.on('response', (h) => { resolve(h); s.close(); });
      st.on('error', reject);
      st.resume();
      st.end(Buffer.from([0, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
    });
    assert.equal(two['grpc-status'], '3');
    // a message above grpc.max_message_bytes (1 MiB by default) is refused from its prefix
    const huge = await new Promise((resolve, reject) => {
      const s = http2.connect(srv.url, { ca: readCa(srv.caPath) });
      const st = s.request({ ':method': 'POST', ':path': '/switchboard.v1.RoomService/GetRoom', 'content-type': 'application/grpc', authorization: `Bearer ${ADMIN}` });
      st.on('response', (h) => { resolve(h); s.close(); });
      st.on('error', reject);
      st.resume();
      st.end(Buffer.from([0, 0, 0x20, 0, 0, 0x0a, 0x01, 0x61]));
    });
    assert.equal(huge['grpc-status'], '8', 'RESOURCE_EXHAUSTED');
    // a successful call: head, one message, trailers grpc-status 0
    const created = await call('RoomService', 'CreateRoom', { name: uniq('wire') });
    const name = Buffer.from(created.name);
    const ok = await raw('/switchboard.v1.RoomService/GetRoom', Buffer.concat([Buffer.from([0x0a, name.length]), name]));
    assert.equal(ok.headers[':status'], 200);
    assert.equal(ok.headers['content-type'], 'application/grpc');
    assert.equal(ok.trailers['grpc-status'], '0');
    assert.equal(ok.body.readUInt32BE(1), ok.body.length - 5);
    // non-gRPC content type on a gRPC path: plain 415
    const s = http2.connect(srv.url, { ca: readCa(srv.caPath) });
    const h415 = await new Promise((resolve, reject) => {
      const st = s.request({ ':method': 'POST', ':path': '/switchboard.v1.RoomService/GetRoom', 'content-type': 'application/json' });
      st.on('response', resolve);
      st.on('error', reject);
      st.resume();
      st.end('{}');
    });
    s.close();
    assert.equal(h415[':status'], 415);
  });

  it('deadlines: grpc-timeout ends a Subscribe stream with DEADLINE_EXCEEDED from the server; 0 is already past', async () => {
    const t0 = Date.now();
    const r = await raw('/switchboard.v1.EventService/Subscribe', Buffer.alloc(0), { 'grpc-timeout': '300m' });
    const took = Date.now() - t0;
    assert.equal(r.headers[':status'], 200);
    assert.equal(r.trailers['grpc-status'], '4', 'the server sent DEADLINE_EXCEEDED');
    assert.ok(took >= 250 && took < 5000, `ended after ${took} ms`);
    const w = await raw('/grpc.health.v1.Health/Watch', Buffer.alloc(0), { 'grpc-timeout': '200m' });
    assert.equal(w.trailers['grpc-status'], '4', 'Watch ended by the server at its deadline');
    assert.deepEqual([...w.body], [0, 0, 0, 0, 2, 0x08, 0x01], 'one message: SERVING');
    const z = await raw('/switchboard.v1.RoomService/ListRooms', Buffer.alloc(0), { 'grpc-timeout': '0m' });
    assert.equal(z.headers['grpc-status'], '4');
    // the standard client's deadline on a stream
    const sub = subscribe(c.EventService, {}, { key: ADMIN, deadlineMs: 400 });
    const st = await sub.done;
    assert.equal(st.code, status.DEADLINE_EXCEEDED);
  });

  it('EventService/Subscribe sees a participant join made over WebSocket, and resumes from an event id', async () => {
    const room = uniq('gsub');
    const sub = subscribe(c.EventService, {}, { key: ADMIN });
    // the stream is live once it has answered: create the room after a first event arrives
    await call('RoomService', 'CreateRoom', { name: room });
    const created = await sub.wait((e) => e.type === 'room.created' && e.data.room?.name === room);
    assert.match(created.id, /^evt_/);
    assert.ok(created.project_id);
    assert.ok(Date.parse(created.created_at));
    const ws = await join(room, 'carol');
    const joined = await sub.wait((e) => e.type === 'participant.joined' && e.data.room === room);
    // data is the REST stream's object, whatever its shape: today {room, session_id, identity}
    assert.equal(joined.data.identity ?? joined.data.participant?.identity, 'carol');
    assert.match(joined.data.session_id, /^ses_/);
    ws.close();
    await sub.wait((e) => e.type === 'participant.left' && e.data.room === room);
    sub.call.cancel();

    // resume after room.created: the same events follow, in the same order, same ids
    const seen = sub.events.filter((e) => e.data.room === room || e.data.room?.name === room);
    const from = seen.findIndex((e) => e.id === created.id);
    const expect = seen.slice(from + 1).map((e) => e.id);
    const again = subscribe(c.EventService, { since: created.id }, { key: ADMIN });
    await again.wait((e) => e.id === expect[expect.length - 1]);
    const got = again.events.filter((e) => e.data.room === room || e.data.room?.name === room).map((e) => e.id);
    assert.deepEqual(got.slice(0, expect.length), expect);
    again.call.cancel();

    // the same stream over REST as NDJSON (what Subscribe reads), one envelope per line
    const ac = new AbortController();
    const res = await fetch(`${srv.plainUrl}/v1/events?since=${created.id}`, {
      headers: { authorization: `Bearer ${ADMIN}`, accept: 'application/x-ndjson' },
      signal: ac.signal,
    });
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type'), /^application\/x-ndjson/);
    const reader = res.body.getReader();
    let text = '';
    while (text.split('\n').filter((l) => l).length < expect.length) {
      const { value, done } = await reader.read();
      if (done) break;
      text += Buffer.from(value).toString();
    }
    ac.abort();
    const lines = text.split('\n').filter((l) => l).map((l) => JSON.parse(l));
    assert.deepEqual(lines.filter((e) => e.data.room === room || e.data.room?.name === room).map((e) => e.id).slice(0, expect.length), expect);

    const bad = subscribe(c.EventService, { since: 'evt_unknown' }, { key: ADMIN });
    const st = await bad.done;
    assert.equal(st.code, status.INVALID_ARGUMENT);
    const noauth = subscribe(c.EventService, {}, { key: null });
    assert.equal((await noauth.done).code, status.UNAUTHENTICATED);
  });

  it('Subscribe from an id 1.3 MB behind: paced by the client, every event in order, not reset', async () => {
    const room = uniq('gback');
    const sub = subscribe(c.EventService, {}, { key: ADMIN });
    await call('RoomService', 'CreateRoom', { name: room });
    const created = await sub.wait((e) => e.type === 'room.created' && e.data.room?.name === room);
    sub.call.cancel();
    const meta = 'y'.repeat(3000);
    for (let i = 0; i < 400; i++) assert.equal((await rest('PATCH', `/v1/rooms/${room}`, { metadata: `${i}:${meta}` })).status, 200);
    const again = subscribe(c.EventService, { since: created.id }, { key: ADMIN });
    again.call.pause?.();
    await new Promise((r) => setTimeout(r, 1000));
    again.call.resume?.();
    const mine = () => again.events.filter((e) => e.type === 'room.updated' && e.data.room?.name === room);
    await waitFor(() => mine().length >= 400, { what: '400 updates over gRPC', timeoutMs: 30000 });
    mine().slice(0, 400).forEach((e, i) => assert.ok(e.data.room.metadata.startsWith(`${i}:`), `update ${i} out of order`));
    again.call.cancel();
  });

  it('SIGTERM with open Subscribe and Watch streams and a pending deadline: they end, the server exits 0 clean', async () => {
    const own = await startServer({ workers: 1, env: { SWITCHBOARD_ADMIN_KEY: ADMIN } });
    const oc = clients(own);
    try {
      const sub = subscribe(oc.EventService, {}, { key: ADMIN });
      const sub2 = subscribe(oc.EventService, {}, { key: ADMIN, deadlineMs: 60000 });
      const watch = oc.Health.Watch({});
      watch.on('error', () => {});
      await new Promise((resolve) => watch.once('data', resolve));
      await unary(oc.RoomService, 'CreateRoom', { name: uniq('drain') }, { key: ADMIN });
      await sub.wait((e) => e.type === 'room.created');
      await sub2.wait((e) => e.type === 'room.created');
      const ended = Promise.all([sub.done, sub2.done, new Promise((r) => watch.on('status', r))]);
      const r = await own.stop();
      assert.equal(r.code, 0);
      const sts = await ended;
      for (const st of sts) assert.notEqual(st.code, status.OK, 'the streams did not end as if complete');
      // Subscribe streams say why they end: UNAVAILABLE (retry elsewhere or later), not INTERNAL.
      assert.equal(sts[0].code, status.UNAVAILABLE, JSON.stringify(sts[0]));
      assert.equal(sts[1].code, status.UNAVAILABLE, JSON.stringify(sts[1]));
    } finally {
      oc.close();
      if (own.running) await own.cleanup();
    }
  });
});
