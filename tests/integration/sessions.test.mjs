// Sessions, live participants, server messages and project signing keys over the REST API.
//
// Session history is seeded: the suite starts a node, creates projects, keys and rooms
// through the API, stops it, writes session and participant rows straight into
// DATA_DIR/switchboard.db with the sqlite3 CLI, and starts the node again on the same data
// directory. Live participants are real: they join over WebSocket (/v1/rtc), because the
// participants API reads the rooms' live state, not those rows.
import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import WebSocket from 'ws';

import { run, startServer, tempDir, waitFor } from './lib/server.mjs';

const ADMIN = 'sessions-itest-admin-key-0123456789abcdefghij';
const env = { SWITCHBOARD_ADMIN_KEY: ADMIN };
const DEFAULT_GRANTS = { publish: true, subscribe: true, publish_data: true, admin: false, hidden: false, record: false };
const RFC3339 = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;

let srv;
let dataDir;
let keyB; // admin key of a second project
let keyReadOnly; // rooms:read only, default project
const T = Date.now() - 60_000;
const iso = (ms) => new Date(ms).toISOString();

async function api(method, urlPath, { key = ADMIN, body, rawBody, headers = {} } = {}) {
  const h = { ...headers };
  if (key) h.authorization = `Bearer ${key}`;
  let payload = rawBody;
  if (body !== undefined) {
    payload = JSON.stringify(body);
    h['content-type'] = 'application/json';
  }
  const res = await fetch(`${srv.plainUrl}${urlPath}`, { method, headers: h, body: payload });
  const text = await res.text();
  let json = null;
  if (text && /json/.test(res.headers.get('content-type') ?? '')) json = JSON.parse(text);
  return { status: res.status, headers: res.headers, text, json };
}

function assertProblem(r, status) {
  assert.equal(r.status, status, `expected ${status}, got ${r.status}: ${r.text}`);
  assert.match(r.headers.get('content-type'), /^application\/problem\+json/);
  assert.equal(r.json.status, status);
  assert.equal(r.json.request_id, r.headers.get('x-request-id'));
  if (status === 401) assert.match(r.headers.get('www-authenticate') ?? '', /^Bearer/);
}

async function sqlite(sql) {
  const r = await run('sqlite3', ['-bail', path.join(dataDir, 'switchboard.db')], { input: sql });
  assert.equal(r.code, 0, `sqlite3 failed: ${r.stderr}`);
  return r.stdout;
}

// Follows next_cursor from `first` to the end; returns every page's data concatenated.
async function allPages(first, key = ADMIN) {
  const out = [];
  let url = first;
  for (let i = 0; i < 100; i++) {
    const r = await api('GET', url, { key });
    assert.equal(r.status, 200, r.text);
    out.push(...r.json.data);
    if (r.json.next_cursor === null) return out;
    assert.equal(typeof r.json.next_cursor, 'string');
    url = `${first}${first.includes('?') ? '&' : '?'}cursor=${encodeURIComponent(r.json.next_cursor)}`;
  }
  assert.fail('pagination did not end');
}

// A participant of room `room` joined with a token minted by `key`; resolves once `joined`.
async function join(room, identity, { key = ADMIN, ...extra } = {}) {
  const t = await api('POST', '/v1/tokens', { key, body: { room, identity, ...extra } });
  assert.equal(t.status, 201, t.text);
  const ws = new WebSocket(`ws://127.0.0.1:${srv.plainPort}/v1/rtc?access_token=${encodeURIComponent(t.json.token)}`);
  ws.on('error', () => {});
  ws.closed = new Promise((resolve) => ws.on('close', (code) => resolve(code)));
  const joined = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${identity} did not join`)), 5000);
    ws.on('message', (d, bin) => {
      const m = bin ? null : JSON.parse(d.toString());
      if (m?.type === 'joined') {
        clearTimeout(timer);
        resolve(m);
      }
    });
  });
  ws.joined = joined;
  return ws;
}

before(async () => {
  dataDir = await tempDir('itest-switchboard-sessions-');
  srv = await startServer({ plain: true, dataDir, env });

  let r = await api('POST', '/v1/projects', { body: { name: 'tenant b' } });
  assert.equal(r.status, 201, r.text);
  keyB = r.json.admin_key;
  r = await api('POST', '/v1/keys', { body: { name: 'reader', scopes: ['rooms:read'] } });
  assert.equal(r.status, 201, r.text);
  keyReadOnly = r.json.secret;
  for (const name of ['alpha', 'beta', 'gamma']) {
    r = await api('POST', '/v1/rooms', { body: { name } });
    assert.equal(r.status, 201, r.text);
  }
  r = await api('POST', '/v1/rooms', { key: keyB, body: { name: 'alpha' } });
  assert.equal(r.status, 201, r.text);
  await srv.stop();

  const room = (project, name) =>
    `(SELECT id FROM rooms WHERE project_id = ${project} AND name = '${name}' AND status = 'open')`;
  const dflt = "'prj_default'";
  const other = "(SELECT project_id FROM api_keys WHERE name = 'project admin')";
  await sqlite(`
    BEGIN;
    INSERT INTO sessions (id, project_id, room_id, room_name, started_at, ended_at, end_reason) VALUES
      ('ses_a1', ${dflt}, ${room(dflt, 'alpha')}, 'alpha', ${T - 3000}, ${T - 2000}, 'empty_timeout'),
      ('ses_a2', ${dflt}, ${room(dflt, 'alpha')}, 'alpha', ${T - 1000}, NULL, NULL),
      ('ses_b1', ${dflt}, ${room(dflt, 'beta')}, 'beta', ${T - 1500}, NULL, NULL);
    INSERT INTO sessions (id, project_id, room_id, room_name, started_at)
      SELECT 'ses_x1', ${other}, ${room(other, 'alpha')}, 'alpha', ${T - 1200};
    INSERT INTO session_participants (session_id, identity, name, metadata, joined_at, left_at, leave_reason) VALUES
      ('ses_a1', 'zed', NULL, NULL, ${T - 2900}, ${T - 2100}, 'disconnected'),
      ('ses_a2', 'alice', 'Alice', '{"role":"host"}', ${T - 900}, NULL, NULL),
      ('ses_a2', 'bob', NULL, NULL, ${T - 800}, ${T - 700}, 'disconnected'),
      ('ses_a2', 'bob', 'Bob', NULL, ${T - 600}, NULL, NULL),
      ('ses_a2', 'carol', NULL, 'c', ${T - 500}, NULL, NULL),
      ('ses_b1', 'dave', NULL, NULL, ${T - 1400}, NULL, NULL),
      ('ses_b1', 'erin', NULL, NULL, ${T - 1300}, ${T - 1250}, 'disconnected'),
      ('ses_x1', 'eve', NULL, NULL, ${T - 1100}, NULL, NULL);
    COMMIT;`);
  const n = await sqlite("SELECT count(*) FROM sessions WHERE id = 'ses_x1';");
  assert.equal(n.trim(), '1', 'the second project and its room were found');

  srv = await startServer({ plain: true, dataDir, env });
});

after(async () => {
  try {
    await srv?.cleanup();
  } finally {
    if (dataDir && !process.env.SB_ITEST_KEEP) await rm(dataDir, { recursive: true, force: true });
  }
});

describe('authentication and scopes', () => {
  const routes = [
    ['GET', '/v1/sessions'],
    ['GET', '/v1/sessions/ses_a2'],
    ['GET', '/v1/sessions/ses_a2/participants'],
    ['POST', '/v1/sessions/ses_a2/end'],
    ['GET', '/v1/rooms/alpha/participants'],
    ['GET', '/v1/rooms/alpha/participants/alice'],
    ['PATCH', '/v1/rooms/alpha/participants/alice', {}],
    ['DELETE', '/v1/rooms/alpha/participants/alice'],
    ['POST', '/v1/rooms/alpha/messages', { data: 'x' }],
    ['POST', '/v1/signing-keys', {}],
    ['GET', '/v1/signing-keys'],
    ['DELETE', '/v1/signing-keys/sk_nope'],
  ];

  it('401 with WWW-Authenticate without a credential or with a wrong one', async () => {
    for (const [method, p, body] of routes) {
      assertProblem(await api(method, p, { key: null, body }), 401);
      assertProblem(await api(method, p, { key: 'sbk_key_aaaaaaaaaaaaaaaaaaaa_wrong', body }), 401);
    }
  });

  it('403 when the credential lacks the scope', async () => {
    for (const [method, p, body] of routes) {
      if (method === 'GET' && p.startsWith('/v1/rooms/')) continue; // rooms:read is held
      const r = await api(method, p, { key: keyReadOnly, body });
      assertProblem(r, 403);
      assert.match(r.json.detail, /(sessions:read|rooms:write|keys:read|keys:write)/);
    }
    const r = await api('GET', '/v1/rooms/alpha/participants', { key: keyReadOnly });
    assert.equal(r.status, 200, r.text);
  });
});

describe('GET /v1/sessions', () => {
  it('lists the project\'s sessions newest first', async () => {
    const r = await api('GET', '/v1/sessions');
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.next_cursor, null);
    assert.deepEqual(r.json.data.map((s) => s.id), ['ses_a2', 'ses_b1', 'ses_a1']);
    const [a2, , a1] = r.json.data;
    assert.deepEqual(a2, {
      id: 'ses_a2', room: 'alpha', started_at: iso(T - 1000), ended_at: null, end_reason: null,
      num_participants: 3, // alice, bob (twice), carol
    });
    assert.deepEqual(a1, {
      id: 'ses_a1', room: 'alpha', started_at: iso(T - 3000), ended_at: iso(T - 2000),
      end_reason: 'empty_timeout', num_participants: 1,
    });
  });

  it('filters by room name', async () => {
    let r = await api('GET', '/v1/sessions?room=alpha');
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.json.data.map((s) => s.id), ['ses_a2', 'ses_a1']);
    r = await api('GET', '/v1/sessions?room=gamma');
    assert.deepEqual(r.json, { data: [], next_cursor: null });
    r = await api('GET', '/v1/sessions?room=nowhere');
    assert.deepEqual(r.json, { data: [], next_cursor: null });
  });

  it('400 for a room name no room can have, a bad limit or a foreign cursor', async () => {
    assertProblem(await api('GET', '/v1/sessions?room=bad%20name'), 400);
    assertProblem(await api('GET', '/v1/sessions?room='), 400);
    assertProblem(await api('GET', '/v1/sessions?limit=0'), 400);
    assertProblem(await api('GET', '/v1/sessions?limit=201'), 400);
    assertProblem(await api('GET', '/v1/sessions?cursor=!!!'), 400);
  });

  it('pages with limit and next_cursor', async () => {
    const first = await api('GET', '/v1/sessions?limit=1');
    assert.equal(first.json.data.length, 1);
    assert.equal(typeof first.json.next_cursor, 'string');
    const all = await allPages('/v1/sessions?limit=1');
    assert.deepEqual(all.map((s) => s.id), ['ses_a2', 'ses_b1', 'ses_a1']);
    const two = await allPages('/v1/sessions?room=alpha&limit=1');
    assert.deepEqual(two.map((s) => s.id), ['ses_a2', 'ses_a1']);
  });
});

describe('GET /v1/sessions/{id} and its participants', () => {
  it('returns one session', async () => {
    const r = await api('GET', '/v1/sessions/ses_b1');
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.id, 'ses_b1');
    assert.equal(r.json.room, 'beta');
    assert.equal(r.json.num_participants, 2);
  });

  it('404 for an unknown session', async () => {
    assertProblem(await api('GET', '/v1/sessions/ses_unknown'), 404);
    assertProblem(await api('GET', '/v1/sessions/ses_unknown/participants'), 404);
    assertProblem(await api('GET', `/v1/sessions/${'x'.repeat(300)}`), 404);
  });

  it('lists the participant history in join order', async () => {
    const r = await api('GET', '/v1/sessions/ses_a2/participants');
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.next_cursor, null);
    assert.deepEqual(r.json.data, [
      { identity: 'alice', name: 'Alice', metadata: '{"role":"host"}', joined_at: iso(T - 900), left_at: null, leave_reason: null },
      { identity: 'bob', name: null, metadata: null, joined_at: iso(T - 800), left_at: iso(T - 700), leave_reason: 'disconnected' },
      { identity: 'bob', name: 'Bob', metadata: null, joined_at: iso(T - 600), left_at: null, leave_reason: null },
      { identity: 'carol', name: null, metadata: 'c', joined_at: iso(T - 500), left_at: null, leave_reason: null },
    ]);
    const paged = await allPages('/v1/sessions/ses_a2/participants?limit=1');
    assert.deepEqual(paged, r.json.data);
    assertProblem(await api('GET', '/v1/sessions/ses_a2/participants?cursor=!!'), 400);
  });
});

describe('live participants', () => {
  const live = {};
  before(async () => {
    let r = await api('POST', '/v1/rooms', { body: { name: 'delta' } });
    assert.equal(r.status, 201, r.text);
    r = await api('POST', '/v1/rooms', { key: keyB, body: { name: 'delta' } });
    assert.equal(r.status, 201, r.text);
    live.alice = await join('delta', 'alice', { name: 'Alice', metadata: '{"role":"host"}' });
    live.bob = await join('delta', 'bob', { name: 'Bob' });
    live.carol = await join('delta', 'carol', { metadata: 'c', grants: { publish: false } });
    live.eve = await join('delta', 'eve', { key: keyB });
    await waitFor(async () => (await api('GET', '/v1/rooms/delta')).json.num_participants === 3);
  });
  after(() => {
    for (const ws of Object.values(live)) ws.terminate();
  });

  it('lists the present participants in join order with their grants, at once', async () => {
    const r = await api('GET', '/v1/rooms/delta/participants');
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.next_cursor, null);
    const room = await api('GET', '/v1/rooms/delta');
    const ses = room.json.active_session_id;
    assert.match(ses, /^ses_/);
    const rows = r.json.data.map(({ joined_at, ...rest }) => {
      assert.match(joined_at, RFC3339);
      return rest;
    });
    assert.deepEqual(rows, [
      { identity: 'alice', name: 'Alice', metadata: '{"role":"host"}', grants: DEFAULT_GRANTS, session_id: ses },
      { identity: 'bob', name: 'Bob', metadata: null, grants: DEFAULT_GRANTS, session_id: ses },
      { identity: 'carol', name: null, metadata: 'c', grants: { ...DEFAULT_GRANTS, publish: false }, session_id: ses },
    ]);
    const paged = await allPages('/v1/rooms/delta/participants?limit=2');
    assert.deepEqual(paged, r.json.data);
    const one = await allPages('/v1/rooms/delta/participants?limit=1');
    assert.deepEqual(one, r.json.data);

    // A join shows in the list as soon as the joiner has its `joined`, not a write later.
    const dan = await join('delta', 'dan');
    const after = await api('GET', '/v1/rooms/delta/participants');
    assert.deepEqual(after.json.data.map((p) => p.identity), ['alice', 'bob', 'carol', 'dan']);
    dan.close();
    assert.equal(await dan.closed, 1005);
    await waitFor(async () => (await api('GET', '/v1/rooms/delta/participants')).json.data.length === 3);
  });

  it('an open room without participants has none; 404 when the room is not open', async () => {
    const r = await api('GET', '/v1/rooms/gamma/participants');
    assert.deepEqual(r.json, { data: [], next_cursor: null });
    assertProblem(await api('GET', '/v1/rooms/nowhere/participants'), 404);
    assertProblem(await api('GET', '/v1/rooms/bad%20name/participants'), 404);
    assertProblem(await api('GET', '/v1/rooms/delta/participants?limit=0'), 400);
  });

  it('GET one participant, 404 when absent', async () => {
    const r = await api('GET', '/v1/rooms/delta/participants/bob');
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.name, 'Bob');
    assert.equal(r.json.joined_at, live.bob.joined.participant.joined_at);
    assert.deepEqual(r.json.grants, DEFAULT_GRANTS);
    assertProblem(await api('GET', '/v1/rooms/delta/participants/dave'), 404);
    assertProblem(await api('GET', '/v1/rooms/delta/participants/eve'), 404); // another project's
    assertProblem(await api('GET', '/v1/rooms/nowhere/participants/alice'), 404);
    assertProblem(await api('GET', '/v1/rooms/delta/participants/bad%20id'), 404);
  });

  it('PATCH validates the body before looking for the participant', async () => {
    for (const body of [{ nope: 1 }, { metadata: 5 }, { metadata: 'x'.repeat(4097) }, { grants: 'all' },
      { grants: { admin: 'yes' } }, { grants: { superuser: true } }]) {
      assertProblem(await api('PATCH', '/v1/rooms/delta/participants/alice', { body }), 400);
      assertProblem(await api('PATCH', '/v1/rooms/nowhere/participants/nobody', { body }), 400);
    }
    assertProblem(await api('PATCH', '/v1/rooms/delta/participants/alice', { rawBody: '{bad', headers: { 'content-type': 'application/json' } }), 400);
    assertProblem(await api('PATCH', '/v1/rooms/delta/participants/nobody', { body: { metadata: 'x' } }), 404);
    assertProblem(await api('PATCH', '/v1/rooms/nowhere/participants/alice', { body: {} }), 404);
  });

  it('PATCH updates a present participant', async () => {
    const r = await api('PATCH', '/v1/rooms/delta/participants/alice', { body: { metadata: 'new', grants: { admin: true } } });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.metadata, 'new');
    assert.deepEqual(r.json.grants, { ...DEFAULT_GRANTS, admin: true });
    const g = await api('GET', '/v1/rooms/delta/participants/alice');
    assert.equal(g.json.metadata, 'new');
    assert.deepEqual(g.json.grants, { ...DEFAULT_GRANTS, admin: true });
    const cleared = await api('PATCH', '/v1/rooms/delta/participants/alice', { body: { metadata: null } });
    assert.equal(cleared.json.metadata, null);
  });

  it('DELETE validates ban_seconds, 404 when absent, ejects when present', async () => {
    for (const q of ['-1', 'abc', '604801', '', '1e3', '99999999999999999999']) {
      assertProblem(await api('DELETE', `/v1/rooms/delta/participants/carol?ban_seconds=${q}`), 400);
    }
    assert.equal((await api('GET', '/v1/rooms/delta')).json.num_participants, 3);
    assertProblem(await api('DELETE', '/v1/rooms/delta/participants/nobody?ban_seconds=604800'), 404);
    assertProblem(await api('DELETE', '/v1/rooms/nowhere/participants/carol'), 404);
    const ses = (await api('GET', '/v1/rooms/delta')).json.active_session_id;
    const r = await api('DELETE', '/v1/rooms/delta/participants/carol?ban_seconds=60');
    assert.equal(r.status, 204, r.text);
    assert.equal(await live.carol.closed, 4003);
    assertProblem(await api('GET', '/v1/rooms/delta/participants/carol'), 404);
    assert.equal((await api('GET', '/v1/rooms/delta')).json.num_participants, 2, 'room read not stale');
    assertProblem(await api('DELETE', '/v1/rooms/delta/participants/carol'), 404);
    const h = await api('GET', `/v1/sessions/${ses}/participants`);
    const carol = h.json.data.find((p) => p.identity === 'carol');
    assert.equal(carol.leave_reason, 'ejected');
    assert.match(carol.left_at, RFC3339);
  });

  it('a room of the same name in another project has its own participants', async () => {
    const r = await api('GET', '/v1/rooms/delta/participants', { key: keyB });
    assert.deepEqual(r.json.data.map((p) => p.identity), ['eve']);
    assertProblem(await api('GET', '/v1/rooms/delta/participants/alice', { key: keyB }), 404);
    assertProblem(await api('PATCH', '/v1/rooms/delta/participants/alice', { key: keyB, body: { metadata: 'pwned' } }), 404);
    assertProblem(await api('DELETE', '/v1/rooms/delta/participants/alice', { key: keyB }), 404);
    assert.equal((await api('GET', '/v1/rooms/delta/participants/alice')).json.metadata, null, 'untouched');
  });
});

describe('POST /v1/rooms/{name}/messages', () => {
  it('202 {delivered: 0} for an open room', async () => {
    for (const body of [{ data: 'hello' }, { data: '', topic: 'chat', to: ['alice', 'bob'] },
      { data: 'x'.repeat(64 * 1024), topic: 't'.repeat(128), to: [] }]) {
      const r = await api('POST', '/v1/rooms/alpha/messages', { body });
      assert.equal(r.status, 202, r.text);
      assert.deepEqual(r.json, { delivered: 0 });
    }
  });

  it('400 for bad fields, checked before the room', async () => {
    const bad = [{}, { data: 5 }, { data: 'x'.repeat(64 * 1024 + 1) }, { data: 'x', topic: 't'.repeat(129) },
      { data: 'x', topic: 1 }, { data: 'x', to: 'alice' }, { data: 'x', to: [1] }, { data: 'x', to: ['bad id'] },
      { data: 'x', to: Array.from({ length: 1001 }, (_, i) => `p${i}`) }, { data: 'x', extra: true }];
    for (const body of bad) {
      assertProblem(await api('POST', '/v1/rooms/alpha/messages', { body }), 400);
      assertProblem(await api('POST', '/v1/rooms/nowhere/messages', { body }), 400);
    }
    const ok = await api('POST', '/v1/rooms/alpha/messages', { body: { data: 'x', to: Array.from({ length: 1000 }, (_, i) => `p${i}`) } });
    assert.equal(ok.status, 202, ok.text);
  });

  it('404 when the room is not open', async () => {
    assertProblem(await api('POST', '/v1/rooms/nowhere/messages', { body: { data: 'x' } }), 404);
    assertProblem(await api('POST', '/v1/rooms/bad%20name/messages', { body: { data: 'x' } }), 404);
  });
});

describe('POST /v1/sessions/{id}/end', () => {
  it('ends an active session and its open participant rows, once', async () => {
    const before = await api('GET', '/v1/rooms/beta');
    assert.equal(before.json.active_session_id, 'ses_b1');
    assert.equal(before.json.num_participants, 1);
    const r = await api('POST', '/v1/sessions/ses_b1/end');
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.id, 'ses_b1');
    assert.equal(r.json.end_reason, 'ended_by_api');
    assert.match(r.json.ended_at, RFC3339);
    const h = await api('GET', '/v1/sessions/ses_b1/participants');
    const dave = h.json.data.find((p) => p.identity === 'dave');
    const erin = h.json.data.find((p) => p.identity === 'erin');
    assert.equal(dave.left_at, r.json.ended_at);
    assert.equal(dave.leave_reason, 'session_ended');
    assert.equal(erin.left_at, iso(T - 1250), 'rows already closed stay as they were');
    assert.equal(erin.leave_reason, 'disconnected');
    assert.deepEqual((await api('GET', '/v1/rooms/beta/participants')).json.data, []);
    const afterEnd = await api('GET', '/v1/rooms/beta');
    assert.equal(afterEnd.json.active_session_id, null, 'room read not stale');
    assert.equal(afterEnd.json.num_participants, 0);

    assertProblem(await api('POST', '/v1/sessions/ses_b1/end'), 409);
    assertProblem(await api('POST', '/v1/sessions/ses_a1/end'), 409);
    assertProblem(await api('POST', '/v1/sessions/ses_unknown/end'), 404);
    assertProblem(await api('POST', `/v1/sessions/${'x'.repeat(100)}/end`), 404);
  });

  it('is in the audit log', async () => {
    const a = await api('GET', '/v1/audit?limit=200');
    const actions = a.json.data.map((e) => `${e.action} ${e.target_id}`);
    assert.ok(actions.includes('session.end ses_b1'), actions.join('\n'));
    assert.ok(actions.includes('participant.eject delta/carol'), actions.join('\n'));
    assert.ok(actions.includes('participant.update delta/alice'), actions.join('\n'));
  });
});

describe('signing keys', () => {
  let kid;
  let secret;

  it('POST creates an HS256 key and shows its secret once', async () => {
    const r = await api('POST', '/v1/signing-keys', { body: {} });
    assert.equal(r.status, 201, r.text);
    assert.equal(r.headers.get('cache-control'), 'no-store');
    assert.deepEqual(Object.keys(r.json).sort(), ['alg', 'created_at', 'kid', 'secret']);
    assert.match(r.json.kid, /^sk_[0-9a-hjkmnp-tv-z]{20}$/);
    assert.equal(r.json.alg, 'HS256');
    assert.match(r.json.created_at, RFC3339);
    assert.match(r.json.secret, /^[A-Za-z0-9_-]{43}$/);
    assert.equal(Buffer.from(r.json.secret, 'base64url').length, 32);
    ({ kid, secret } = r.json);
    const empty = await api('POST', '/v1/signing-keys', { rawBody: '' });
    assert.equal(empty.status, 201, empty.text);
    const named = await api('POST', '/v1/signing-keys', { body: { name: 'backend' } });
    assert.equal(named.status, 201, named.text);
    assert.notEqual(named.json.secret, secret);
  });

  it('POST refuses unknown or mistyped fields', async () => {
    assertProblem(await api('POST', '/v1/signing-keys', { body: { alg: 'none' } }), 400);
    assertProblem(await api('POST', '/v1/signing-keys', { body: { name: 7 } }), 400);
    assertProblem(await api('POST', '/v1/signing-keys', { rawBody: '[]', headers: { 'content-type': 'application/json' } }), 400);
  });

  it('GET lists keys, never their secrets, and pages', async () => {
    const r = await api('GET', '/v1/signing-keys');
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.data.length, 3);
    assert.ok(!r.text.includes(secret), 'the secret is never listed');
    for (const k of r.json.data) {
      assert.deepEqual(Object.keys(k).sort(), ['alg', 'created_at', 'kid', 'retired_at']);
      assert.equal(k.retired_at, null);
    }
    assert.ok(r.json.data.some((k) => k.kid === kid));
    const jwks = await (await fetch(`${srv.plainUrl}/.well-known/jwks.json`)).json();
    for (const k of jwks.keys) {
      assert.ok(!r.json.data.some((d) => d.kid === k.kid), 'the server\'s own key is not a project key');
      assertProblem(await api('DELETE', `/v1/signing-keys/${k.kid}`), 404);
    }
    const paged = await allPages('/v1/signing-keys?limit=1');
    assert.deepEqual(paged, r.json.data);
  });

  it('DELETE retires a key once', async () => {
    assertProblem(await api('DELETE', '/v1/signing-keys/sk_unknown'), 404);
    assertProblem(await api('DELETE', `/v1/signing-keys/${'k'.repeat(100)}`), 404);
    assert.equal((await api('DELETE', `/v1/signing-keys/${kid}`)).status, 204);
    assertProblem(await api('DELETE', `/v1/signing-keys/${kid}`), 404);
    const r = await api('GET', '/v1/signing-keys');
    const k = r.json.data.find((d) => d.kid === kid);
    assert.match(k.retired_at, RFC3339);
    const a = await api('GET', '/v1/audit?limit=200');
    const actions = a.json.data.map((e) => `${e.action} ${e.target_id}`);
    assert.ok(actions.includes(`signing_key.create ${kid}`), actions.join('\n'));
    assert.ok(actions.includes(`signing_key.retire ${kid}`), actions.join('\n'));
  });

  it('POST with an Idempotency-Key replays the first answer instead of making a second key', async () => {
    const headers = { 'idempotency-key': 'sk-replay-1' };
    const a = await api('POST', '/v1/signing-keys', { body: {}, headers });
    const b = await api('POST', '/v1/signing-keys', { body: {}, headers });
    assert.equal(a.status, 201, a.text);
    assert.equal(b.status, 201, b.text);
    assert.equal(b.json.kid, a.json.kid);
    const list = await api('GET', '/v1/signing-keys?limit=200');
    assert.equal(list.json.data.filter((k) => k.kid === a.json.kid).length, 1);
    assert.equal((await api('DELETE', `/v1/signing-keys/${a.json.kid}`)).status, 204);
  });
});

describe('project isolation', () => {
  it('another project sees only its own sessions', async () => {
    let r = await api('GET', '/v1/sessions', { key: keyB });
    assert.equal(r.status, 200, r.text);
    const ids = r.json.data.map((s) => s.id);
    assert.ok(ids.includes('ses_x1'), ids.join());
    assert.ok(!ids.some((id) => ['ses_a1', 'ses_a2', 'ses_b1'].includes(id)), ids.join());
    assert.deepEqual(r.json.data.map((s) => s.room).sort(), ['alpha', 'delta']);
    r = await api('GET', '/v1/sessions?room=alpha', { key: keyB });
    assert.deepEqual(r.json.data.map((s) => s.id), ['ses_x1']);
    assertProblem(await api('GET', '/v1/sessions/ses_a2', { key: keyB }), 404);
    assertProblem(await api('GET', '/v1/sessions/ses_a2/participants', { key: keyB }), 404);
    assertProblem(await api('POST', '/v1/sessions/ses_a2/end', { key: keyB }), 404);
    assert.equal((await api('GET', '/v1/sessions/ses_a2')).json.ended_at, null, 'still active');
    assertProblem(await api('GET', '/v1/sessions/ses_x1'), 404);
    const own = await api('GET', '/v1/sessions/ses_x1/participants', { key: keyB });
    assert.deepEqual(own.json.data.map((p) => p.identity), ['eve']);
  });

  it('another project cannot reach this project\'s rooms', async () => {
    assertProblem(await api('GET', '/v1/rooms/beta/participants', { key: keyB }), 404);
    assertProblem(await api('POST', '/v1/rooms/beta/messages', { key: keyB, body: { data: 'x' } }), 404);
  });

  it('another project sees only its own signing keys', async () => {
    const mine = await api('GET', '/v1/signing-keys');
    assert.ok(mine.json.data.length > 0);
    let r = await api('GET', '/v1/signing-keys', { key: keyB });
    assert.deepEqual(r.json, { data: [], next_cursor: null });
    const active = mine.json.data.find((k) => k.retired_at === null);
    assertProblem(await api('DELETE', `/v1/signing-keys/${active.kid}`, { key: keyB }), 404);
    r = await api('POST', '/v1/signing-keys', { key: keyB, body: {} });
    assert.equal(r.status, 201, r.text);
    const theirs = await api('GET', '/v1/signing-keys', { key: keyB });
    assert.deepEqual(theirs.json.data.map((k) => k.kid), [r.json.kid]);
    assert.ok(!(await api('GET', '/v1/signing-keys')).json.data.some((k) => k.kid === r.json.kid));
    assertProblem(await api('DELETE', `/v1/signing-keys/${r.json.kid}`), 404);
  });
});
