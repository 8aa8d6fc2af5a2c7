// Webhook durability: events are fanned out while the receiver is slow, the server is killed
// with SIGKILL in the middle of deliveries (requests in flight), the receiver goes down, the
// server restarts on the same data dir and retries against the dead receiver, then the
// receiver comes back: every event arrives, with the same webhook-id as its event id, none
// lost. Duplicates are allowed (at-least-once) and counted.
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';

import { apiClient } from './lib/api.mjs';
import { parseMetrics, startServer, tempDir } from './lib/server.mjs';
import { createWebhook, deliveries, sleep, startReceiver, waitFor } from './lib/webhooks.mjs';

const N = 300;

describe('webhooks survive kill -9', () => {
  const cleanup = [];
  after(async () => {
    for (const f of cleanup.reverse()) await f().catch(() => {});
  });

  it('delivers every event after SIGKILL mid-delivery and a receiver outage', async () => {
    const dataDir = await tempDir();
    const args = [
      '--webhooks.retry-schedule', `0${',300ms'.repeat(30)}`,
      '--webhooks.timeout', '3s',
      '--webhooks.breaker-threshold', '5',
      '--webhooks.breaker-cooldown', '300ms',
      '--webhooks.max-in-flight-per-endpoint', '16',
    ];
    const admin = 'crash-itest-admin-key-0123456789abcdefghijkl';
    const env = { SWITCHBOARD_ADMIN_KEY: admin };
    let srv = await startServer({ plain: true, dataDir, args, env });
    cleanup.push(() => srv.cleanup());
    let api = apiClient(srv, { key: admin });

    // A slow receiver: requests are still in flight when the server dies.
    let rcv = await startReceiver({ respond: () => ({ status: 200, delayMs: 150 }) });
    const port = rcv.port;
    const w = await createWebhook(api, { url: rcv.url, events: ['room.created'] });
    rcv.secrets = [w.secret];
    // A second endpoint whose receiver stays up: the dead one must cost it nothing.
    const healthy = await startReceiver();
    cleanup.push(() => healthy.close());
    const wh = await createWebhook(api, { url: healthy.url, events: ['room.created'] });
    healthy.secrets = [wh.secret];
    const received = []; // across receiver lives
    const names = [];
    for (let i = 0; i < N; i += 25) {
      const batch = [];
      for (let k = i; k < i + 25; k++) {
        const name = `crash-${process.pid}-${k}`;
        names.push(name);
        batch.push(api('POST', '/v1/rooms', { json: { name } }).then((r) => assert.equal(r.status, 201, r.text)));
      }
      await Promise.all(batch);
    }
    await waitFor(() => rcv.deliveries.filter((d) => d.status === 200).length >= 20,
      { timeoutMs: 10000, what: '20 deliveries before the kill' });
    await sleep(70); // half-way through the receiver's 150 ms: requests are in flight
    assert.ok(rcv.deliveries.length < N, 'the kill happens mid-delivery');
    srv.signal('SIGKILL');
    const inFlight = rcv.deliveries.filter((d) => d.status === 0).length;
    const ex = await srv.waitExit(5000);
    assert.equal(ex.signal, 'SIGKILL');
    received.push(...rcv.deliveries);
    // webhooks.max_in_flight_per_endpoint (16) held against the slow receiver
    assert.ok(rcv.maxInflight >= 2 && rcv.maxInflight <= 16, `max in flight ${rcv.maxInflight}`);
    await rcv.close(); // the receiver is down now
    const before = received.length;

    srv = await startServer({ plain: true, dataDir, args, env });
    cleanup.push(() => srv.cleanup());
    api = apiClient(srv, { key: admin });
    // What the killed server had recorded as delivered (nothing can be added while the
    // receiver is down): those must never be sent again; the rest may be, once.
    const recorded = (await deliveries(api, w.id, 'status=delivered')).length;
    const arrivedBefore = new Set(received.map((d) => d.id)).size;
    // The restarted server tries the dead receiver (connection refused) and keeps the events.
    await waitFor(async () => {
      const log = await deliveries(api, w.id, 'status=pending');
      return log.some((d) => d.attempt_log.some((a) => a.status === null && a.outcome === 'retry' && a.error));
    }, { timeoutMs: 10000, what: 'failed attempts against the dead receiver' });
    // The dead receiver's circuit is open; the healthy endpoint got every event meanwhile.
    await waitFor(async () => {
      const m = parseMetrics(await (await fetch(`${srv.plainUrl}/metrics`)).text());
      return m.get('switchboard_webhook_breakers_open') === 1;
    }, { timeoutMs: 10000, what: 'one open circuit breaker' });
    await waitFor(() => new Set(healthy.deliveries.filter((d) => d.verified).map((d) => d.id)).size === N,
      { timeoutMs: 15000, what: 'the healthy endpoint to get every event while the other is down' });
    assert.deepEqual(healthy.badSignatures, []);
    await sleep(300);

    rcv = await startReceiver({ port });
    rcv.secrets = [w.secret];
    cleanup.push(() => rcv.close());
    const arrived = (list) => list.filter((d) => d.verified);
    try {
      await waitFor(() => new Set(arrived([...received, ...rcv.deliveries]).map((d) => d.id)).size >= N,
        { timeoutMs: 30000, what: `${N} distinct events delivered` });
    } catch (e) {
      const log = await deliveries(api, w.id);
      const by = {};
      for (const d of log) by[d.state] = (by[d.state] ?? 0) + 1;
      console.log('# states', JSON.stringify(by), 'received now', rcv.deliveries.length, 'before', before,
        JSON.stringify(log.find((d) => d.state !== 'delivered')));
      console.log(srv.stderrText().slice(-3000));
      throw e;
    }
    received.push(...rcv.deliveries);

    const ok = arrived(received);
    const ids = new Set(ok.map((d) => d.id));
    const rooms = new Set(ok.map((d) => d.event.data.room.name));
    assert.equal(ids.size, N, 'every event arrived');
    assert.deepEqual([...rooms].sort(), [...names].sort(), 'every room.created, none lost');
    for (const d of ok) assert.equal(d.id, d.event.id, 'webhook-id is the event id');
    const log = await deliveries(api, w.id);
    assert.equal(log.length, N);
    assert.deepEqual(new Set(log.map((d) => d.event_id)), ids, 'the same ids as the outbox');
    await waitFor(async () => (await deliveries(api, w.id, 'status=delivered')).length === N,
      { timeoutMs: 5000, what: 'every delivery recorded as delivered' });
    // the probe went through: the circuit is closed again
    const m = parseMetrics(await (await fetch(`${srv.plainUrl}/metrics`)).text());
    assert.equal(m.get('switchboard_webhook_breakers_open'), 0);
    assert.deepEqual(rcv.badSignatures, []);
    const dup = ok.length - ids.size;
    console.log(`# crash test: ${N} events, ${ok.length} verified arrivals, ${dup} duplicates ` +
      `(${before} arrived before the kill, ${inFlight} of them in flight when it came, ${recorded} recorded as delivered)`);
    assert.ok(inFlight > 0 || dup > 0, 'the kill came while deliveries were unconfirmed');
    // unconfirmed at the kill: in flight, or answered and not yet written (writes are batched)
    const unconfirmed = arrivedBefore - recorded;
    assert.ok(unconfirmed >= inFlight, `${unconfirmed} unconfirmed, ${inFlight} in flight`);
    assert.ok(dup <= unconfirmed, `duplicates (${dup}) bounded by what was unconfirmed at the kill (${unconfirmed}: ${inFlight} in flight, the rest answered but not yet recorded)`);
    await srv.stop();
  });

  it('SIGTERM with requests in flight exits 0 at once; the unconfirmed deliveries are sent again after a restart', async () => {
    const dataDir = await tempDir();
    const admin = 'crash-itest-admin-key-0123456789abcdefghijkl';
    const env = { SWITCHBOARD_ADMIN_KEY: admin };
    const srv = await startServer({ plain: true, dataDir, env });
    cleanup.push(() => srv.cleanup());
    const api = apiClient(srv, { key: admin });
    let delayMs = 5000;
    const slow = await startReceiver({ respond: () => ({ status: 200, delayMs }) });
    cleanup.push(() => slow.close());
    const w = await createWebhook(api, { url: slow.url, events: ['room.created'] });
    slow.secrets = [w.secret];
    for (let i = 0; i < 5; i++) assert.equal((await api('POST', '/v1/rooms', { json: { name: `term-${process.pid}-${i}` } })).status, 201);
    await waitFor(() => slow.inflight === 5, { timeoutMs: 5000, what: 'five requests in flight' });
    const t0 = Date.now();
    const r = await srv.stop({ timeoutMs: 8000 }); // asserts exit 0 and no sanitizer report
    assert.ok(Date.now() - t0 < 4000, `stopped in ${Date.now() - t0} ms, not after the receiver's 5 s`);
    assert.equal(r.code, 0);
    const firstIds = slow.deliveries.map((d) => d.id).sort();
    assert.equal(new Set(firstIds).size, 5);
    // nothing was confirmed, so nothing is recorded as delivered and the cursor did not pass
    // them: restarted, the same five (same webhook-ids) are sent again, and then recorded
    delayMs = 0;
    const again = await startServer({ plain: true, dataDir, env });
    cleanup.push(() => again.cleanup());
    const api2 = apiClient(again, { key: admin });
    await waitFor(async () => (await deliveries(api2, w.id, 'status=delivered')).length === 5, { what: 'the five delivered after the restart' });
    const secondIds = slow.deliveries.slice(5).map((d) => d.id).sort();
    assert.deepEqual(secondIds, firstIds);
    assert.equal(slow.deliveries.length, 10);
    await again.stop();
  });

  it('webhooks.retention removes finished deliveries and their attempts, never pending ones', async () => {
    const srv = await startServer({ plain: true, args: ['--webhooks.retention', '1s', '--webhooks.retry-schedule', '0,100ms,1h'] });
    cleanup.push(() => srv.cleanup());
    const api = apiClient(srv, { key: srv.adminKey });
    const ok = await startReceiver();
    const failing = await startReceiver({ respond: () => ({ status: 503 }) });
    cleanup.push(() => ok.close());
    cleanup.push(() => failing.close());
    const wo = await createWebhook(api, { url: ok.url, events: ['room.created'] });
    const wf = await createWebhook(api, { url: failing.url, events: ['room.created'] });
    ok.secrets = [wo.secret];
    failing.secrets = [wf.secret];
    for (let i = 0; i < 3; i++) assert.equal((await api('POST', '/v1/rooms', { json: { name: `ret-${process.pid}-${i}` } })).status, 201);
    await waitFor(async () => (await deliveries(api, wo.id, 'status=delivered')).length === 3, { timeoutMs: 5000, what: 'three delivered' });
    await waitFor(() => failing.deliveries.length === 6, { timeoutMs: 5000, what: 'two failed attempts each' });
    // finished rows go within about a second; the pending ones (retry in 1 h) stay
    await waitFor(async () => (await deliveries(api, wo.id)).length === 0, { timeoutMs: 8000, what: 'delivered rows removed' });
    const pending = await deliveries(api, wf.id);
    assert.equal(pending.length, 3);
    assert.ok(pending.every((d) => d.status === 'pending' && d.attempt_log.length === 2));
    await srv.stop();
  });
});
