// events.retention: the outbox drops old events, but never one that an enabled webhook has not
// sent yet or that a pending delivery still needs; a disabled endpoint holds nothing. Every
// delivery is verified with the npm `standardwebhooks` library (lib/webhooks.mjs); the events
// table is read with the sqlite3 CLI; an expired event id no longer resumes the event stream.
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { apiClient } from './lib/api.mjs';
import { run, startServer } from './lib/server.mjs';
import { createWebhook, makeRooms, sleep, startReceiver, waitFor } from './lib/webhooks.mjs';

describe('events retention', () => {
  let srv;
  let api;
  let r;

  before(async () => {
    srv = await startServer({
      plain: true,
      // a pass every 500 ms (half the shorter retention); retries 1 s apart for a while
      args: ['--events.retention', '1s', '--webhooks.retention', '2s', '--webhooks.retry-schedule', '0,1s,1s,1s,1s,1s,1s,1s,1s,1s'],
    });
    api = apiClient(srv, { key: srv.adminKey });
  });

  after(async () => {
    await r?.close();
    await srv?.stop();
  });

  const present = async (ids) => {
    const list = ids.map((id) => `'${id}'`).join(',');
    const q = await run('sqlite3', [path.join(srv.dataDir, 'switchboard.db'), '.timeout 5000', `SELECT id FROM events WHERE id IN (${list}) ORDER BY seq`]);
    assert.equal(q.code, 0, q.stderr);
    return q.stdout.split('\n').filter(Boolean);
  };
  const resumes = async (id) => {
    const ac = new AbortController();
    const res = await fetch(`${srv.plainUrl}/v1/events?since=${encodeURIComponent(id)}`, {
      headers: { authorization: `Bearer ${srv.adminKey}`, accept: 'text/event-stream' },
      signal: ac.signal,
    });
    ac.abort();
    return res.status;
  };

  it('keeps what a webhook still needs, drops the rest once old', async () => {
    const tag = `ret-${process.pid}`;
    let holding = true;
    r = await startReceiver({
      respond: (d) => ({ status: holding && d.event.data.room.name === `${tag}-held-0` ? 500 : 204 }),
    });
    const w = await createWebhook(api, { url: r.url, events: ['room.created'] });
    r.secrets = [w.secret];
    // a disabled endpoint: its cursor must not hold anything
    const off = await createWebhook(api, { url: r.url, events: ['room.created'] });
    assert.equal((await api('PATCH', `/v1/webhooks/${off.id}`, { json: { enabled: false } })).status, 200);

    await makeRooms(api, `${tag}-old`, 3);
    await waitFor(() => r.ok().length === 3, { timeoutMs: 5000, what: 'the old events delivered' });
    const old = r.ok().map((d) => d.event.id);
    await makeRooms(api, `${tag}-held`, 1);
    await waitFor(() => r.deliveries.some((d) => d.event.data.room.name === `${tag}-held-0`), { timeoutMs: 5000, what: 'the held event tried' });
    const held = r.deliveries.find((d) => d.event.data.room.name === `${tag}-held-0`).event.id;
    await makeRooms(api, `${tag}-after`, 1);
    await waitFor(() => r.ok().some((d) => d.event.data.room.name === `${tag}-after-0`), { timeoutMs: 5000, what: 'a later event of another room delivered' });
    const later = r.ok().find((d) => d.event.data.room.name === `${tag}-after-0`).event.id;
    assert.equal(await resumes(old[0]), 200, 'a young event resumes the stream');

    // older than the retention, delivered: gone; the pending one and everything after it: kept
    await waitFor(async () => (await present(old)).length === 0, { timeoutMs: 6000, what: 'the old events removed' });
    await sleep(1500); // several more passes, all past the 1 s retention
    assert.deepEqual(await present([held, later]), [held, later]);
    assert.equal(await resumes(old[0]), 400, 'an expired event id does not resume the stream');
    assert.equal(await resumes(held), 200);

    // once delivered (its retry reads the event from the outbox), it goes too
    holding = false;
    await waitFor(() => r.ok().some((d) => d.event.id === held), { timeoutMs: 5000, what: 'the held event delivered' });
    await waitFor(async () => (await present([held, later])).length === 0, { timeoutMs: 6000, what: 'the rest removed' });
    // nothing lost: every event arrived, verified (the receiver answers 400 to a bad signature)
    assert.deepEqual(r.badSignatures, []);
    const got = new Set(r.ok().map((d) => d.event.id));
    for (const id of [...old, held, later]) assert.ok(got.has(id), `${id} delivered`);
    for (const x of [w, off]) await api('DELETE', `/v1/webhooks/${x.id}`);
  });

  it('keeps an event whose first attempt is still running (not written yet), then drops it', async () => {
    const tag = `slow-${process.pid}`;
    const slow = await startReceiver({ respond: () => ({ status: 204, delayMs: 2500 }) });
    try {
      const w = await createWebhook(api, { url: slow.url, events: ['room.created'] });
      slow.secrets = [w.secret];
      await makeRooms(api, tag, 1);
      await waitFor(() => slow.deliveries.length === 1, { timeoutMs: 5000, what: 'the slow attempt started' });
      const id = slow.deliveries[0].event.id;
      await sleep(1800); // past the retention, several passes, still unanswered
      assert.equal(slow.deliveries[0].status, 0, 'still in flight');
      assert.deepEqual(await present([id]), [id]);
      await waitFor(() => slow.ok().length === 1, { timeoutMs: 5000, what: 'the slow delivery answered' });
      await waitFor(async () => (await present([id])).length === 0, { timeoutMs: 6000, what: 'the event removed once written' });
      assert.deepEqual(slow.badSignatures, []);
      await api('DELETE', `/v1/webhooks/${w.id}`);
    } finally {
      await slow.close();
    }
  });
});
