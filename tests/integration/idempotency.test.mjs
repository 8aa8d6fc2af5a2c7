// Idempotency-Key on POST (API.md "Conventions"): the same key with the same body replays the
// first response (status and body); the same key with another body → 422; the same key while
// the first request is still running → 409; keys are per credential.
//
// Tests that fail only because the header is not implemented yet are marked TODO; remove the
// marker when it lands.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { apiClient, walkPages } from './lib/api.mjs';
import { assertProblem } from './lib/client.mjs';
import { startServer } from './lib/server.mjs';

const NOT_YET = { todo: 'Idempotency-Key not implemented yet' };

let n = 0;
const ikey = () => `idem-${process.pid}-${Date.now().toString(36)}-${n++}`;

describe('Idempotency-Key', () => {
  let srv;
  let admin;

  before(async () => {
    srv = await startServer({ plain: true, workers: 2 });
    admin = apiClient(srv, { key: srv.adminKey });
  });
  after(async () => {
    await srv?.cleanup();
  });

  /** A fresh project (so that its rooms can be counted exactly); returns its admin client. */
  async function project() {
    const r = await admin('POST', '/v1/projects', { json: { name: `idem ${n++}` } });
    assert.equal(r.status, 201, r.text);
    return admin.with(r.json().admin_key);
  }

  async function roomNames(c) {
    return (await walkPages(c, '/v1/rooms', { limit: 200 })).items.map((r) => r.name);
  }

  const post = (c, path, body, key, extra = {}) =>
    c('POST', path, { body: typeof body === 'string' ? body : JSON.stringify(body), headers: { 'idempotency-key': key }, ...extra });

  it('without the header, two identical POSTs are two requests (two generated rooms)', async () => {
    const c = await project();
    const a = await c('POST', '/v1/rooms', { json: { metadata: 'twice' } });
    const b = await c('POST', '/v1/rooms', { json: { metadata: 'twice' } });
    assert.equal(a.status, 201);
    assert.equal(b.status, 201);
    assert.notEqual(a.json().name, b.json().name);
    assert.equal((await roomNames(c)).length, 2);
  });

  it('different keys with the same body are different requests', async () => {
    const c = await project();
    const a = await post(c, '/v1/rooms', { metadata: 'k' }, ikey());
    const b = await post(c, '/v1/rooms', { metadata: 'k' }, ikey());
    assert.equal(a.status, 201, a.text);
    assert.equal(b.status, 201, b.text);
    assert.notEqual(a.json().name, b.json().name);
    assert.equal((await roomNames(c)).length, 2);
  });

  it('same key + same body replays the first response (status and body); nothing is created twice', NOT_YET, async () => {
    const c = await project();
    const key = ikey();
    const body = JSON.stringify({ metadata: 'once' }); // no name: a second run would make another room
    const first = await post(c, '/v1/rooms', body, key);
    assert.equal(first.status, 201, first.text);
    for (let i = 0; i < 3; i++) {
      const again = await post(c, '/v1/rooms', body, key);
      assert.equal(again.status, 201, `replay ${i}: status of the first response`);
      assert.deepEqual(again.json(), first.json(), `replay ${i}: body of the first response`);
      assert.match(again.headers['content-type'] ?? '', /^application\/json\b/);
    }
    assert.deepEqual(await roomNames(c), [first.json().name], 'one room');
  });

  it('the replayed status is the first one: 201 for a named room (not the 200 of "already exists")', NOT_YET, async () => {
    const c = await project();
    const key = ikey();
    const body = { name: 'named', metadata: 'v1' };
    const first = await post(c, '/v1/rooms', body, key);
    assert.equal(first.status, 201);
    // The room changes after the first response; a replay still answers what was answered then.
    assert.equal((await c('PATCH', '/v1/rooms/named', { json: { metadata: 'v2' } })).status, 200);
    const again = await post(c, '/v1/rooms', body, key);
    assert.equal(again.status, 201, again.text);
    assert.deepEqual(again.json(), first.json());
    // Without the key the same body is the ordinary create-or-get: 200 with today's room.
    const plain = await c('POST', '/v1/rooms', { json: body });
    assert.equal(plain.status, 200);
    assert.equal(plain.json().metadata, 'v2');
  });

  it('same key + other body → 422 problem+json, and nothing is done', NOT_YET, async () => {
    const c = await project();
    const key = ikey();
    const first = await post(c, '/v1/rooms', { name: 'first' }, key);
    assert.equal(first.status, 201);
    for (const other of [{ name: 'second' }, { name: 'first', metadata: 'x' }, {}]) {
      const id = `idem-422-${n++}`;
      const r = await post(c, '/v1/rooms', other, key, { requestId: id });
      const p = assertProblem(r, 422);
      assert.equal(p.request_id, id);
    }
    assert.deepEqual(await roomNames(c), ['first']);
    // The original body still replays.
    const again = await post(c, '/v1/rooms', { name: 'first' }, key);
    assert.equal(again.status, 201);
    assert.deepEqual(again.json(), first.json());
  });

  it('keys are per credential: another credential may use the same key for its own request', NOT_YET, async () => {
    const c = await project();
    const other = (await c('POST', '/v1/keys', { json: { name: 'second', scopes: ['rooms:write', 'rooms:read'] } })).json();
    const c2 = c.with(other.secret);
    const key = ikey();
    const a = await post(c, '/v1/rooms', { metadata: 'by first' }, key);
    assert.equal(a.status, 201, a.text);
    // Same key, another credential, another body: not a 422, and not a replay.
    const b = await post(c2, '/v1/rooms', { metadata: 'by second' }, key);
    assert.equal(b.status, 201, b.text);
    assert.notEqual(b.json().name, a.json().name);
    assert.equal(b.json().metadata, 'by second');
    // Same key, a third credential, the first one's body: its own new room, not a replay.
    const c3 = c.with((await c('POST', '/v1/keys', { json: { name: 'third', scopes: ['rooms:write'] } })).json().secret);
    const d = await post(c3, '/v1/rooms', { metadata: 'by first' }, key);
    assert.equal(d.status, 201);
    assert.notEqual(d.json().name, a.json().name, 'no replay of another credential\'s response');
    // And each credential replays its own.
    const a2 = await post(c, '/v1/rooms', { metadata: 'by first' }, key);
    assert.deepEqual(a2.json(), a.json());
    const b3 = await post(c2, '/v1/rooms', { metadata: 'by second' }, key);
    assert.deepEqual(b3.json(), b.json());
    assert.equal((await roomNames(c)).length, 3);
  });

  it('concurrent requests with the same key and body: one room; each answer is the replay or 409', NOT_YET, async () => {
    const c = await project();
    for (let round = 0; round < 3; round++) {
      const key = ikey();
      const body = JSON.stringify({ metadata: `race ${round}` });
      const rs = await Promise.all(Array.from({ length: 6 }, () => post(c, '/v1/rooms', body, key)));
      const ok = rs.filter((r) => r.status === 201);
      assert.ok(ok.length >= 1, `statuses ${rs.map((r) => r.status)}`);
      for (const r of rs) {
        if (r.status === 409) assertProblem(r, 409);
        else assert.equal(r.status, 201, r.text);
      }
      assert.equal(new Set(ok.map((r) => r.text)).size, 1, 'every 201 is the same response');
    }
    assert.equal((await roomNames(c)).length, 3, 'one room per key');
  });

  it('POST /v1/tokens with the same key replays the same token', NOT_YET, async () => {
    const key = ikey();
    const body = { room: 'idem-room', identity: 'alice' };
    const a = await post(admin, '/v1/tokens', body, key);
    assert.equal(a.status, 201, a.text);
    const b = await post(admin, '/v1/tokens', body, key);
    assert.equal(b.status, 201);
    assert.deepEqual(b.json(), a.json());
    assertProblem(await post(admin, '/v1/tokens', { ...body, identity: 'bob' }, key), 422);
  });
});
