// Webhooks: endpoints (/v1/webhooks), signed delivery from the outbox, retries (500s, a
// timeout, 429 with Retry-After), 410 disabling, secret rotation, ordering per room, dead
// letters and their replay, the deliveries log. Every delivery is verified by the receiver
// with the npm `standardwebhooks` library (lib/webhooks.mjs).
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Webhook } from 'standardwebhooks';

import { apiClient } from './lib/api.mjs';
import { readFileSync } from 'node:fs';
import path from 'node:path';

import { parseMetrics, run, runBin, startServer, tempDir } from './lib/server.mjs';
import { createWebhook, deliveries, makeRooms, sleep, startReceiver, verifyV1a, waitFor } from './lib/webhooks.mjs';

let n = 0;
const uniq = (p) => `${p}-${process.pid}-${Date.now().toString(36)}-${n++}`;

describe('webhooks', () => {
  let srv;
  let api;
  const receivers = [];
  const receiver = async (opts) => {
    const r = await startReceiver(opts);
    receivers.push(r);
    return r;
  };

  before(async () => {
    srv = await startServer({
      plain: true,
      args: [
        '--webhooks.retry-schedule', '0,200ms,400ms',
        '--webhooks.timeout', '400ms',
        '--webhooks.rotation-overlap', '2s',
        '--webhooks.breaker-threshold', '1000',
      ],
    });
    api = apiClient(srv, { key: srv.adminKey });
  });

  after(async () => {
    for (const r of receivers) await r.close();
    await srv?.stop();
  });

  it('creates, reads, lists, updates and deletes endpoints; the secret is shown once; audited', async () => {
    const w = await createWebhook(api, { url: 'https://example.com/hook', events: ['room.created'], description: 'd1' });
    assert.match(w.id, /^wh_/);
    assert.deepEqual(w.events, ['room.created']);
    assert.equal(w.enabled, true);
    assert.equal(w.h2c, false);
    const got = await api('GET', `/v1/webhooks/${w.id}`);
    assert.equal(got.status, 200);
    assert.equal(got.json().secret, undefined, 'the secret is shown only once');
    assert.equal(got.json().url, 'https://example.com/hook');
    const list = await api('GET', '/v1/webhooks?limit=200');
    assert.ok(list.json().data.some((x) => x.id === w.id));
    assert.ok(list.json().data.every((x) => x.secret === undefined));
    const p = await api('PATCH', `/v1/webhooks/${w.id}`, { json: { events: [], description: null, enabled: false } });
    assert.equal(p.status, 200, p.text);
    assert.deepEqual(p.json().events, []);
    assert.equal(p.json().description, null);
    assert.equal(p.json().enabled, false);
    assert.equal(p.json().status, 'disabled');
    assert.equal(p.json().disabled_reason, 'manual');
    assert.equal(p.json().h2c, false, 'unchanged when absent');
    const h = await api('PATCH', `/v1/webhooks/${w.id}`, { json: { h2c: true } });
    assert.equal(h.status, 200, h.text);
    assert.equal(h.json().h2c, true);
    assert.equal((await api('GET', `/v1/webhooks/${w.id}`)).json().h2c, true);
    assert.equal((await api('PATCH', `/v1/webhooks/${w.id}`, { json: { h2c: 'yes' } })).status, 400);
    const rot = await api('POST', `/v1/webhooks/${w.id}/rotate-secret`);
    assert.equal(rot.status, 200, rot.text);
    assert.match(rot.json().secret, /^whsec_/);
    assert.notEqual(rot.json().secret, w.secret);
    assert.ok(rot.json().previous_secret_expires_at);
    assert.equal((await api('DELETE', `/v1/webhooks/${w.id}`)).status, 204);
    assert.equal((await api('GET', `/v1/webhooks/${w.id}`)).status, 404);
    assert.equal((await api('DELETE', `/v1/webhooks/${w.id}`)).status, 404);
    const audit = (await api('GET', '/v1/audit?limit=200')).json().data.filter((a) => a.target_id === w.id);
    assert.deepEqual(audit.map((a) => a.action), ['webhook.create', 'webhook.update', 'webhook.update', 'webhook.rotate_secret', 'webhook.delete']);
  });

  it('validates bodies and URLs', async () => {
    for (const [body, re] of [
      [{}, /url is required/],
      [{ url: 'ftp://example.com/' }, /https:\/\/ or http:\/\//],
      [{ url: 'https://user:pw@example.com/' }, /credentials/],
      [{ url: 'not a url' }, /url/],
      [{ url: 'https://example.com/', events: ['nope'] }, /events\[0\]/],
      [{ url: 'https://example.com/', extra: 1 }, /extra/],
      [{ url: 'https://example.com/', h2c: 'yes' }, /h2c/],
      [{ url: 'https://example.com/', signature_scheme: 1 }, /signature_scheme/],
      [{ url: 'https://example.com/', signature_scheme: 'v1a'.repeat(10) }, /signature_scheme/],
      [{ url: 'https://example.com/', signature_scheme: 'V1A' }, /signature_scheme/],
    ]) {
      const r = await api('POST', '/v1/webhooks', { json: body });
      assert.equal(r.status, 400, `${JSON.stringify(body)}: ${r.text}`);
      assert.match(r.json().detail, re);
    }
  });

  it('isolates projects and checks scopes', async () => {
    const w = await createWebhook(api, { url: 'https://example.com/a' });
    const p = await api('POST', '/v1/projects', { json: { name: uniq('other') } });
    assert.equal(p.status, 201);
    const other = api.with(p.json().admin_key);
    for (const [m, path] of [['GET', ''], ['PATCH', ''], ['DELETE', ''], ['POST', '/rotate-secret'], ['POST', '/test'], ['GET', '/deliveries'], ['POST', '/deliveries/retry'], ['POST', '/deliveries/dlv_x/retry']]) {
      const r = await other(m, `/v1/webhooks/${w.id}${path}`, m === 'PATCH' ? { json: { enabled: true } } : {});
      assert.equal(r.status, 404, `${m} ${path}: ${r.status} ${r.text}`);
    }
    assert.equal((await other('GET', '/v1/webhooks')).json().data.length, 0);
    const k = await api('POST', '/v1/keys', { json: { name: 'ro', scopes: ['webhooks:read'] } });
    const ro = api.with(k.json().secret);
    assert.equal((await ro('GET', `/v1/webhooks/${w.id}`)).status, 200);
    assert.equal((await ro('POST', '/v1/webhooks', { json: { url: 'https://example.com/' } })).status, 403);
    assert.equal((await ro('DELETE', `/v1/webhooks/${w.id}`)).status, 403);
    assert.equal((await api('DELETE', `/v1/webhooks/${w.id}`)).status, 204);
  });

  it('delivers signed events with Standard Webhooks headers; a test event goes to its endpoint only', async () => {
    const a = await receiver();
    const b = await receiver();
    const wa = await createWebhook(api, { url: a.url });
    const wb = await createWebhook(api, { url: b.url, events: ['room.created'] });
    a.secrets = [wa.secret];
    b.secrets = [wb.secret];
    const [room] = await makeRooms(api, uniq('sig'), 1);
    const t = await api('POST', `/v1/webhooks/${wa.id}/test`);
    assert.equal(t.status, 202, t.text);
    assert.equal(t.json().status, 'pending');
    assert.equal(t.json().event_type, 'webhook.test');
    const testId = t.json().event_id;
    await waitFor(() => a.ids().includes(testId) && a.deliveries.some((d) => d.event.data?.room?.name === room) && b.deliveries.length >= 1,
      { timeoutMs: 10000, what: 'deliveries' });
    const d = a.deliveries.find((x) => x.event.data?.room?.name === room);
    assert.equal(d.event.type, 'room.created');
    assert.equal(d.id, d.event.id, 'webhook-id is the event id');
    assert.equal(d.method, 'POST');
    assert.match(d.contentType, /^application\/json/);
    assert.ok(Math.abs(d.timestamp - Date.now() / 1000) < 30);
    assert.match(d.signature, /^v1,[A-Za-z0-9+/]{43}=$/);
    const tv = a.deliveries.find((x) => x.id === testId);
    assert.equal(tv.event.type, 'webhook.test');
    assert.equal(tv.event.data.endpoint_id, wa.id);
    await sleep(300);
    assert.ok(!b.ids().includes(testId), 'the test event is delivered to its endpoint only');
    assert.ok(b.deliveries.every((x) => x.event.type === 'room.created'), 'the filter holds');
    assert.deepEqual(a.badSignatures, []);
    assert.deepEqual(b.badSignatures, []);
    for (const w of [wa, wb]) await api('DELETE', `/v1/webhooks/${w.id}`);
  });

  it('retries after 500s, a timeout, and a 429 with Retry-After; the deliveries log shows every attempt', async () => {
    const seen = new Map();
    const r = await receiver({
      respond: (d) => {
        const k = d.event.data.room.name;
        const i = (seen.get(k) ?? 0) + 1;
        seen.set(k, i);
        if (k.includes('e500') && i <= 2) return { status: 500 };
        if (k.includes('tmo') && i === 1) return { status: 200, delayMs: 900 };
        if (k.includes('r429') && i === 1) return { status: 429, headers: { 'retry-after': '1' } };
        if (k.includes('e404')) return { status: 404 };
        return { status: 200 };
      },
    });
    const w = await createWebhook(api, { url: r.url, events: ['room.created'] });
    r.secrets = [w.secret];
    const base = uniq('retry');
    const names = [`${base}-e500`, `${base}-tmo`, `${base}-r429`];
    for (const name of [...names, `${base}-e404`]) assert.equal((await api('POST', '/v1/rooms', { json: { name } })).status, 201);
    await waitFor(() => names.every((nm) => r.ok().some((d) => d.event.data.room.name === nm)), { timeoutMs: 15000, what: 'all three delivered' });
    const byRoom = (nm) => r.deliveries.filter((d) => d.event.data.room.name === nm);
    // 500, 500, 200 with the same webhook-id
    assert.deepEqual(byRoom(names[0]).map((d) => d.status), [500, 500, 200]);
    assert.equal(new Set(byRoom(names[0]).map((d) => d.id)).size, 1);
    // 429 + Retry-After: 1 → the retry waits about a second, not the schedule's 200 ms
    const r429 = byRoom(names[2]);
    assert.deepEqual(r429.map((d) => d.status), [429, 200]);
    assert.ok(r429[1].receivedAt - r429[0].receivedAt >= 900, `Retry-After honoured: ${r429[1].receivedAt - r429[0].receivedAt} ms`);
    // the log
    let log;
    await waitFor(async () => {
      log = await deliveries(api, w.id);
      return log.filter((x) => x.status === 'delivered').length === 3;
    }, { timeoutMs: 5000, what: 'log says delivered' });
    const e500 = log.find((x) => byRoom(names[0])[0].id === x.event_id);
    assert.equal(e500.attempts, 3);
    assert.deepEqual(e500.attempt_log.map((a) => a.status), [500, 500, 200]);
    assert.deepEqual(e500.attempt_log.map((a) => a.outcome), ['retry', 'retry', 'delivered']);
    assert.equal(e500.attempt_log[0].error, 'HTTP 500');
    for (const a of e500.attempt_log) {
      assert.ok(Date.parse(a.at) > 0);
      assert.equal(typeof a.duration_ms, 'number');
    }
    const tmo = log.find((x) => byRoom(names[1])[0].id === x.event_id);
    assert.equal(tmo.attempt_log[0].status, null);
    assert.match(tmo.attempt_log[0].error, /timed out/);
    assert.equal(tmo.attempt_log.at(-1).outcome, 'delivered');
    // a 404 is not retried: dead after one attempt
    const e404 = log.find((x) => x.room === `${base}-e404`);
    assert.equal(e404.status, 'dead');
    assert.equal(e404.attempts, 1);
    assert.equal(e404.attempt_log[0].error, 'HTTP 404 (not retried)');
    assert.equal(byRoom(`${base}-e404`).length, 1);
    const t429 = log.find((x) => r429[0].id === x.event_id);
    assert.deepEqual(t429.attempt_log.map((a) => a.status), [429, 200]);
    assert.deepEqual(r.badSignatures, []);
    await api('DELETE', `/v1/webhooks/${w.id}`);
  });

  it('keeps events of a room in order under retries', async () => {
    const fails = new Map();
    const r = await receiver({
      respond: (d) => {
        // the first attempt of every room's first event fails, and every third attempt after
        const k = d.id;
        const i = (fails.get(k) ?? 0) + 1;
        fails.set(k, i);
        if (d.event.type === 'room.created' && i === 1) return { status: 503 };
        if (Math.random() < 0.2 && i === 1) return { status: 500 };
        return { status: 200 };
      },
    });
    const w = await createWebhook(api, { url: r.url, events: ['room.created', 'room.updated'] });
    r.secrets = [w.secret];
    const rooms = await makeRooms(api, uniq('ord'), 4);
    for (let k = 0; k < 4; k++) {
      for (const room of rooms) {
        assert.equal((await api('PATCH', `/v1/rooms/${room}`, { json: { metadata: `m${k}` } })).status, 200);
      }
    }
    await waitFor(() => r.ok().length >= 20, { timeoutMs: 15000, what: '20 deliveries' });
    let log; // in event order, once every answer is recorded (writes are batched)
    await waitFor(async () => (log = await deliveries(api, w.id)).filter((x) => x.status === 'delivered').length === 20, { what: '20 recorded' });
    assert.equal(log.length, 20);
    for (const room of rooms) {
      const want = log.filter((x) => x.room === room).map((x) => x.event_id);
      const got = r.ok().filter((d) => d.event.data.room.name === room).map((d) => d.id);
      assert.deepEqual(got, want, `room ${room} in order`);
      // and no event of the room was even attempted before the earlier one was delivered
      const firstTry = new Map();
      r.deliveries.filter((d) => d.event.data.room.name === room).forEach((d, i) => firstTry.has(d.id) || firstTry.set(d.id, i));
      const okAt = new Map();
      r.deliveries.filter((d) => d.event.data.room.name === room).forEach((d, i) => d.status === 200 && okAt.set(d.id, i));
      for (let i = 1; i < want.length; i++) assert.ok(firstTry.get(want[i]) > okAt.get(want[i - 1]), `${room}: event ${i} tried after ${i - 1} delivered`);
    }
    assert.ok(r.deliveries.some((d) => d.status === 503), 'there were retries');
    assert.deepEqual(r.badSignatures, []);
    await api('DELETE', `/v1/webhooks/${w.id}`);
  });

  it('keeps a burst of a room in order while its first event is slow, then failed or delivered', async () => {
    // A room's later events arrive while its first is still in flight: they wait behind it.
    // Room "fail": the first answer is a slow 503, so the waiting events move behind its retry
    // (the chain in the table). Room "ok": a slow 200, so they follow it straight away.
    const tries = new Map();
    let failRoom = '';
    const r = await receiver({
      respond: (d) => {
        const i = (tries.get(d.id) ?? 0) + 1;
        tries.set(d.id, i);
        if (d.event.type !== 'room.created' || i > 1) return { status: 200 };
        return { status: d.event.data.room.name === failRoom ? 503 : 200, delayMs: 250 };
      },
    });
    const w = await createWebhook(api, { url: r.url, events: ['room.created', 'room.updated'] });
    r.secrets = [w.secret];
    const [fail, ok] = [uniq('burst-fail'), uniq('burst-ok')];
    failRoom = fail;
    for (const room of [fail, ok]) {
      assert.equal((await api('POST', '/v1/rooms', { json: { name: room } })).status, 201);
      for (let k = 0; k < 6; k++) assert.equal((await api('PATCH', `/v1/rooms/${room}`, { json: { metadata: `b${k}` } })).status, 200);
    }
    await waitFor(() => r.ok().length >= 14, { what: '14 deliveries' });
    let log; // in event order, once every answer is recorded (writes are batched)
    await waitFor(async () => (log = await deliveries(api, w.id)).filter((x) => x.status === 'delivered').length === 14, { what: '14 recorded' });
    assert.equal(log.length, 14);
    assert.ok(log.every((x) => x.status === 'delivered'), JSON.stringify(log.map((x) => x.status)));
    for (const room of [fail, ok]) {
      const want = log.filter((x) => x.room === room).map((x) => x.event_id);
      assert.equal(want.length, 7);
      const mine = r.deliveries.filter((d) => d.event.data.room.name === room);
      assert.deepEqual(r.ok().filter((d) => d.event.data.room.name === room).map((d) => d.id), want, `${room} in order`);
      const firstTry = new Map();
      mine.forEach((d, i) => firstTry.has(d.id) || firstTry.set(d.id, i));
      const okAt = new Map();
      mine.forEach((d, i) => d.status === 200 && okAt.set(d.id, i));
      for (let i = 1; i < want.length; i++) assert.ok(firstTry.get(want[i]) > okAt.get(want[i - 1]), `${room}: event ${i} tried after ${i - 1} delivered`);
    }
    assert.equal(r.deliveries.filter((d) => d.status === 503).length, 1);
    assert.deepEqual(r.badSignatures, []);
    await api('DELETE', `/v1/webhooks/${w.id}`);
  });

  it('410 disables the endpoint and emits webhook.endpoint.disabled', async () => {
    const gone = await receiver({ respond: () => ({ status: 410 }) });
    const watch = await receiver();
    const wg = await createWebhook(api, { url: gone.url, events: ['room.created'] });
    const ww = await createWebhook(api, { url: watch.url, events: ['webhook.endpoint.disabled'] });
    gone.secrets = [wg.secret];
    watch.secrets = [ww.secret];
    await makeRooms(api, uniq('gone'), 2);
    await waitFor(() => watch.deliveries.length >= 1, { timeoutMs: 10000, what: 'the disabled event' });
    const ev = watch.deliveries[0].event;
    assert.equal(ev.type, 'webhook.endpoint.disabled');
    assert.equal(ev.data.endpoint.id, wg.id);
    assert.equal(ev.data.endpoint.url, gone.url);
    assert.equal(ev.data.endpoint.status, 'disabled');
    assert.equal(ev.data.endpoint.secret, undefined);
    const g = (await api('GET', `/v1/webhooks/${wg.id}`)).json();
    assert.equal(g.enabled, false);
    assert.equal(g.status, 'disabled');
    assert.equal(g.disabled_reason, 'gone');
    // both rooms' events may have been in flight together; nothing new is sent after that
    await sleep(300);
    const sent = gone.deliveries.length;
    assert.ok(sent >= 1 && sent <= 2);
    await makeRooms(api, uniq('gone-after'), 2);
    await sleep(500);
    assert.equal(gone.deliveries.length, sent, 'nothing more is sent to a disabled endpoint');
    assert.equal(watch.deliveries.length, 1, 'disabled once');
    const log = await deliveries(api, wg.id);
    const first = log.find((x) => x.event_id === gone.deliveries[0].id);
    assert.equal(first.status, 'dead');
    assert.equal(first.attempt_log[0].outcome, 'gone');
    assert.equal((await api('POST', `/v1/webhooks/${wg.id}/test`)).status, 409);
    const audit = (await api('GET', '/v1/audit?limit=200')).json().data.filter((a) => a.target_id === wg.id);
    assert.ok(audit.some((a) => a.action === 'webhook.disable' && a.credential_id === 'system'));
    for (const w of [wg, ww]) await api('DELETE', `/v1/webhooks/${w.id}`);
  });

  it('rotation: both signatures verify during the overlap, only the new one after', async () => {
    const r = await receiver();
    const w = await createWebhook(api, { url: r.url, events: ['room.created'] });
    r.secrets = [w.secret];
    await makeRooms(api, uniq('rot0'), 1);
    await waitFor(() => r.deliveries.length === 1, { timeoutMs: 5000, what: 'first delivery' });
    assert.equal(r.deliveries[0].sigCount, 1);
    const rot = await api('POST', `/v1/webhooks/${w.id}/rotate-secret`);
    assert.equal(rot.status, 200);
    const fresh = rot.json().secret;
    r.secrets = [w.secret, fresh]; // each must verify the same delivery
    await makeRooms(api, uniq('rot1'), 1);
    await waitFor(() => r.deliveries.length === 2, { timeoutMs: 5000, what: 'delivery during the overlap' });
    assert.equal(r.deliveries[1].status, 204, JSON.stringify(r.badSignatures));
    assert.equal(r.deliveries[1].sigCount, 2);
    const until = Date.parse(rot.json().previous_secret_expires_at);
    await sleep(Math.max(0, until - Date.now()) + 200);
    r.secrets = [fresh];
    await makeRooms(api, uniq('rot2'), 1);
    await waitFor(() => r.deliveries.length === 3, { timeoutMs: 5000, what: 'delivery after the overlap' });
    const last = r.deliveries[2];
    assert.equal(last.status, 204);
    assert.equal(last.sigCount, 1);
    assert.deepEqual(r.badSignatures, []);
    // the old secret alone no longer verifies it
    const headers = { 'webhook-id': last.id, 'webhook-timestamp': String(last.timestamp), 'webhook-signature': last.signature };
    assert.throws(() => new Webhook(w.secret).verify(JSON.stringify(last.event), headers));
    await api('DELETE', `/v1/webhooks/${w.id}`);
  });

  it('v1a: Ed25519 signatures verify with the public key; rotation sends both; no signing key is shown', async () => {
    // validation: the scheme is v1 or v1a, chosen at creation
    const r = await receiver();
    const bad = await api('POST', '/v1/webhooks', { json: { url: r.url, signature_scheme: 'v2' } });
    assert.equal(bad.status, 400);
    assert.match(bad.json().detail, /signature_scheme/);
    const res = await api('POST', '/v1/webhooks', { json: { url: r.url, events: ['room.created'], signature_scheme: 'v1a' } });
    assert.equal(res.status, 201);
    const w = res.json();
    assert.equal(w.signature_scheme, 'v1a');
    assert.match(w.public_key, /^whpk_[A-Za-z0-9+/]{43}=$/);
    assert.equal(w.secret, undefined, 'a v1a endpoint shows no secret');
    assert.ok(!JSON.stringify(w).includes('whsk_'));
    const got = (await api('GET', `/v1/webhooks/${w.id}`)).json();
    assert.equal(got.public_key, w.public_key);
    assert.equal(got.signature_scheme, 'v1a');
    assert.ok((await api('GET', '/v1/webhooks?limit=100')).json().data.some((x) => x.id === w.id && x.public_key === w.public_key));
    const fixed = await api('PATCH', `/v1/webhooks/${w.id}`, { json: { signature_scheme: 'v1' } });
    assert.equal(fixed.status, 400);
    assert.match(fixed.json().detail, /cannot be changed/);
    // a v1 endpoint: a secret, no public key
    const v1 = await createWebhook(api, { url: r.url, events: ['room.closed'] });
    assert.equal(v1.signature_scheme, 'v1');
    assert.equal(v1.public_key, null);
    await api('DELETE', `/v1/webhooks/${v1.id}`);

    r.secrets = [w.public_key];
    await makeRooms(api, uniq('v1a0'), 1);
    await waitFor(() => r.deliveries.length === 1, { timeoutMs: 5000, what: 'first v1a delivery' });
    assert.equal(r.deliveries[0].status, 204, JSON.stringify(r.badSignatures));
    assert.match(r.deliveries[0].signature, /^v1a,[A-Za-z0-9+/]{86}==$/);
    // it is not an HMAC signature under anything the API showed
    const d0 = r.deliveries[0];
    const h0 = { 'webhook-id': d0.id, 'webhook-timestamp': String(d0.timestamp), 'webhook-signature': d0.signature };
    assert.throws(() => new Webhook(v1.secret).verify(JSON.stringify(d0.event), h0));

    const rot = await api('POST', `/v1/webhooks/${w.id}/rotate-secret`);
    assert.equal(rot.status, 200);
    const fresh = rot.json();
    assert.equal(fresh.secret, undefined);
    assert.match(fresh.public_key, /^whpk_/);
    assert.notEqual(fresh.public_key, w.public_key);
    r.secrets = [w.public_key, fresh.public_key]; // each must verify the same delivery
    await makeRooms(api, uniq('v1a1'), 1);
    await waitFor(() => r.deliveries.length === 2, { timeoutMs: 5000, what: 'v1a delivery during the overlap' });
    assert.equal(r.deliveries[1].status, 204, JSON.stringify(r.badSignatures));
    assert.equal(r.deliveries[1].sigCount, 2);
    const until = Date.parse(fresh.previous_secret_expires_at);
    await sleep(Math.max(0, until - Date.now()) + 200);
    r.secrets = [fresh.public_key];
    await makeRooms(api, uniq('v1a2'), 1);
    await waitFor(() => r.deliveries.length === 3, { timeoutMs: 5000, what: 'v1a delivery after the overlap' });
    const last = r.deliveries[2];
    assert.equal(last.status, 204);
    assert.equal(last.sigCount, 1);
    assert.deepEqual(r.badSignatures, []);
    // the old public key no longer verifies it
    const hl = { 'webhook-id': last.id, 'webhook-timestamp': String(last.timestamp), 'webhook-signature': last.signature };
    assert.throws(() => verifyV1a(w.public_key, JSON.stringify(last.event), hl));
    await api('DELETE', `/v1/webhooks/${w.id}`);
  });

  it('dead letters are listed and replayed one by one and in bulk', async () => {
    let healthy = false;
    const r = await receiver({ respond: () => ({ status: healthy ? 200 : 500 }) });
    const w = await createWebhook(api, { url: r.url, events: ['room.created'] });
    r.secrets = [w.secret];
    await makeRooms(api, uniq('dead'), 4);
    let dead;
    await waitFor(async () => {
      dead = await deliveries(api, w.id, 'status=dead');
      return dead.length === 4;
    }, { timeoutMs: 10000, what: 'four dead letters' });
    for (const d of dead) {
      assert.equal(d.attempts, 3);
      assert.deepEqual(d.attempt_log.map((a) => a.outcome), ['retry', 'retry', 'dead']);
      assert.equal(d.last_response_status, 500);
      assert.equal(d.next_attempt_at, null);
    }
    assert.equal(r.deliveries.length, 12);
    healthy = true;
    const one = await api('POST', `/v1/webhooks/${w.id}/deliveries/${dead[0].id}/retry`);
    assert.equal(one.status, 202, one.text);
    assert.equal(one.json().status, 'pending');
    assert.equal(one.json().id, dead[0].id);
    await waitFor(() => r.ok().length === 1, { timeoutMs: 5000, what: 'replayed one' });
    assert.equal(r.ok()[0].id, dead[0].event_id);
    assert.equal((await api('POST', `/v1/webhooks/${w.id}/deliveries/${dead[0].id}/retry`)).status, 409, 'not dead any more');
    assert.equal((await api('POST', `/v1/webhooks/${w.id}/deliveries/dlv_nope/retry`)).status, 404);
    // ids are looked up through (endpoint, event seq): a well-formed id of no delivery and a
    // real one under another endpoint answer 404
    assert.equal((await api('POST', `/v1/webhooks/${w.id}/deliveries/${dead[1].id.slice(0, 12)}ffffffffffff/retry`)).status, 404);
    const stranger = await createWebhook(api, { url: r.url, events: ['room.created'] });
    assert.equal((await api('POST', `/v1/webhooks/${stranger.id}/deliveries/${dead[1].id}/retry`)).status, 404);
    await api('DELETE', `/v1/webhooks/${stranger.id}`);
    const bulk = await api('POST', `/v1/webhooks/${w.id}/deliveries/retry`, { json: { state: 'dead' } });
    assert.equal(bulk.status, 202, bulk.text);
    assert.equal(bulk.json().replayed, 3);
    await waitFor(() => r.ok().length === 4, { timeoutMs: 5000, what: 'replayed in bulk' });
    assert.deepEqual(new Set(r.ok().map((d) => d.id)), new Set(dead.map((d) => d.event_id)));
    await waitFor(async () => (await deliveries(api, w.id, 'status=delivered')).length === 4, { timeoutMs: 5000, what: 'all delivered' });
    const log = await deliveries(api, w.id);
    assert.equal(log[0].attempt_log.length, 4);
    assert.equal(log[0].attempt_log[3].outcome, 'delivered');
    assert.equal((await api('GET', `/v1/webhooks/${w.id}/deliveries?status=bogus`)).status, 400);
    assert.deepEqual(r.badSignatures, []);
    await api('DELETE', `/v1/webhooks/${w.id}`);
  });

  it('a delivery whose event left the outbox is dead at once and does not block its room', async () => {
    let fail = true;
    const r = await receiver({ respond: () => ({ status: fail ? 503 : 200 }) });
    const w = await createWebhook(api, { url: r.url, events: ['room.created', 'room.updated'] });
    r.secrets = [w.secret];
    const [room] = await makeRooms(api, uniq('orphan'), 1);
    await waitFor(() => r.deliveries.length >= 1, { timeoutMs: 5000, what: 'the first attempt' });
    assert.equal((await api('PATCH', `/v1/rooms/${room}`, { json: { metadata: 'after' } })).status, 200);
    const first = r.deliveries[0].id;
    // remove the event behind the first delivery (as a retention job would)
    const q = await run('sqlite3', [path.join(srv.dataDir, 'switchboard.db'), '.timeout 5000', `DELETE FROM events WHERE id = '${first}'`]);
    assert.equal(q.code, 0, q.stderr);
    fail = false;
    let log;
    await waitFor(async () => {
      log = await deliveries(api, w.id);
      return log.length === 2 && log[0].status === 'dead' && log[1].status === 'delivered';
    }, { timeoutMs: 10000, what: 'dead orphan, then the room moves on' });
    assert.equal(log[0].last_error, 'the event is no longer in the outbox');
    assert.equal(r.ok().length, 1);
    assert.equal(r.ok()[0].event.type, 'room.updated');
    await api('DELETE', `/v1/webhooks/${w.id}`);
  });

  it('checks webhooks.retry_schedule when the config is loaded (flag and environment)', async () => {
    const dir = await tempDir();
    const bad = await runBin(['--dev', '--data-dir', dir, '--webhooks.retry-schedule', '0,5x', '--check-config']);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /webhooks\.retry_schedule: entry 2 is not a duration/);
    const env = await runBin(['--dev', '--data-dir', dir, '--check-config'], { env: { SWITCHBOARD_WEBHOOKS_RETRY_SCHEDULE: '0,200ms,1s' } });
    assert.equal(env.code, 0, env.stderr);
  });

  it('reuses one kept-alive connection; recovers when the receiver drops idle ones or closes each', async () => {
    const count = (r) => {
      r.connections = 0;
      r.server.on('connection', () => r.connections++);
      return r;
    };
    const keep = count(await receiver()); // keep-alive 30 s: one connection for everything
    const idle = count(await receiver()); // closes its idle connections after each delivery
    const each = count(await receiver({ respond: () => ({ status: 204, headers: { connection: 'close' } }) }));
    const hooks = [];
    for (const r of [keep, idle, each]) {
      const w = await createWebhook(api, { url: r.url, events: ['room.created'] });
      r.secrets = [w.secret];
      hooks.push(w);
    }
    const names = [];
    for (let i = 0; i < 4; i++) {
      names.push(...(await makeRooms(api, uniq('conn'), 1)));
      const want = names.length;
      await waitFor(() => [keep, idle, each].every((r) => r.ok().length >= want), { timeoutMs: 10000, what: `delivery ${want}` });
      await sleep(50); // the answer is out
      idle.server.closeIdleConnections(); // Switchboard's kept socket wakes (EOF) while idle
      await sleep(50);
    }
    for (const r of [keep, idle, each]) {
      assert.deepEqual(r.ok().map((d) => d.event.data.room.name), names, 'each delivered once, in order');
      assert.deepEqual(r.badSignatures, []);
    }
    // an idle kept socket that woke (closed by the receiver) must not keep waking the loop
    const cpu = () => {
      const f = readFileSync(`/proc/${srv.pid}/stat`, 'utf8').replace(/^.*\) /, '').split(' ');
      return Number(f[11]) + Number(f[12]);
    };
    idle.server.closeIdleConnections();
    keep.server.closeIdleConnections();
    await sleep(50);
    const c0 = cpu();
    await sleep(500);
    assert.ok(cpu() - c0 < 20, `the server used ${cpu() - c0} ticks in 500 ms with nothing to do`);
    assert.equal(keep.connections, 1, 'keep-alive: one connection for four deliveries');
    assert.equal(idle.connections, 4, 'a new connection after each idle close');
    assert.equal(each.connections, 4, 'a new connection after each Connection: close');
    for (const w of hooks) {
      const log = await deliveries(api, w.id);
      assert.equal(log.length, 4);
      assert.ok(log.every((d) => d.status === 'delivered' && d.attempts === 1), JSON.stringify(log));
      // delivered at the first attempt: the delivered log, listed with its event and attempt
      assert.ok(log.every((d) => d.event_id.startsWith('evt_') && d.event_type === 'room.created' && d.room), JSON.stringify(log[0]));
      assert.deepEqual(log[0].attempt_log.map((a) => [a.attempt, a.outcome, a.status]), [[1, 'delivered', 204]]);
      assert.equal((await api('POST', `/v1/webhooks/${w.id}/deliveries/${log[0].id}/retry`)).status, 409, 'only dead deliveries are replayed');
    }
    for (const w of hooks) await api('DELETE', `/v1/webhooks/${w.id}`);
    // their delivered log went with them
    const ids = hooks.map((w) => `'${w.id}'`).join(',');
    const q = await run('sqlite3', [path.join(srv.dataDir, 'switchboard.db'), '.timeout 5000', `SELECT COUNT(*) FROM webhook_delivered WHERE webhook_id IN (${ids})`]);
    assert.equal(q.code, 0, q.stderr);
    assert.equal(q.stdout.trim(), '0');
  });

  it('exposes delivery metrics', async () => {
    const res = await fetch(`${srv.plainUrl}/metrics`);
    const m = parseMetrics(await res.text());
    assert.ok(m.get('switchboard_webhook_deliveries_total{outcome="delivered"}') > 0);
    assert.ok(m.get('switchboard_webhook_deliveries_total{outcome="retry"}') > 0);
    assert.ok(m.get('switchboard_webhook_deliveries_total{outcome="dead"}') > 0);
    assert.ok(m.get('switchboard_webhook_deliveries_total{outcome="gone"}') >= 1);
    assert.ok(m.get('switchboard_webhook_attempt_duration_seconds_count') > 0);
    assert.ok(m.has('switchboard_webhook_in_flight'));
  });
});
