// Webhooks over HTTPS: the receiver's certificate is verified (webhooks.ca_file), HTTP/2 is
// used when the receiver offers it (ALPN), and deliveries share one connection (multiplexed).
// A receiver whose certificate does not chain to the configured CAs gets nothing.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http2 from 'node:http2';
import https from 'node:https';
import { after, before, describe, it } from 'node:test';
import { Webhook } from 'standardwebhooks';

import { apiClient } from './lib/api.mjs';
import { makeCaAndServerCert } from './lib/certs.mjs';
import { startServer, tempDir } from './lib/server.mjs';
import { createWebhook, deliveries, makeRooms, waitFor } from './lib/webhooks.mjs';

/** An HTTPS receiver offering h2 and http/1.1; verifies every delivery. */
async function h2Receiver(cert, key) {
  const r = { deliveries: [], sessions: 0, secret: null, bad: [] };
  const server = http2.createSecureServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key), allowHTTP1: true });
  server.on('session', () => r.sessions++);
  server.on('request', (req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      const headers = { 'webhook-id': req.headers['webhook-id'], 'webhook-timestamp': req.headers['webhook-timestamp'], 'webhook-signature': req.headers['webhook-signature'] };
      try {
        new Webhook(r.secret).verify(body, headers);
      } catch (e) {
        r.bad.push(e.message);
      }
      r.deliveries.push({ id: headers['webhook-id'], version: req.httpVersion, event: JSON.parse(body) });
      res.writeHead(204);
      res.end();
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  r.url = `https://127.0.0.1:${server.address().port}/hook`;
  r.close = () => new Promise((resolve) => {
    server.close(() => resolve());
    for (const s of r.openSessions ?? []) s.destroy();
  });
  r.openSessions = new Set();
  server.on('session', (s) => {
    r.openSessions.add(s);
    s.on('close', () => r.openSessions.delete(s));
  });
  return r;
}

/** A cleartext HTTP/2 receiver (prior knowledge only: node's http2.createServer); verifies
 * every delivery. respond(d) may return {status, headers, delayMs}. */
async function h2cReceiver(respond) {
  const r = { deliveries: [], sessions: 0, secret: null, bad: [] };
  const server = http2.createServer();
  server.on('session', () => r.sessions++);
  server.on('stream', (stream, headers) => {
    const chunks = [];
    stream.on('data', (c) => chunks.push(c));
    stream.on('end', async () => {
      const body = Buffer.concat(chunks).toString('utf8');
      const h = { 'webhook-id': headers['webhook-id'], 'webhook-timestamp': headers['webhook-timestamp'], 'webhook-signature': headers['webhook-signature'] };
      try {
        new Webhook(r.secret).verify(body, h);
      } catch (e) {
        r.bad.push(e.message);
      }
      const d = { id: h['webhook-id'], event: JSON.parse(body), status: 0, neverIndexed: headers[http2.sensitiveHeaders] ?? [] };
      r.deliveries.push(d);
      const out = respond ? respond(d) : { status: 204 };
      if (out.delayMs) await new Promise((res) => setTimeout(res, out.delayMs));
      d.status = out.status;
      if (!stream.destroyed) stream.respond({ ':status': out.status, ...(out.headers ?? {}) }, { endStream: true });
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  r.url = `http://127.0.0.1:${server.address().port}/hook`;
  const sessions = new Set();
  server.on('session', (s) => {
    sessions.add(s);
    s.on('close', () => sessions.delete(s));
  });
  r.close = () => new Promise((resolve) => {
    server.close(() => resolve());
    for (const s of sessions) s.destroy();
  });
  return r;
}

describe('webhooks over HTTPS and HTTP/2', () => {
  let srv;
  let api;
  let good;
  let rogue;
  let dir;
  let trusted;

  before(async () => {
    dir = await tempDir('itest-wh-h2-');
    trusted = await makeCaAndServerCert(dir, 'trusted');
    const other = await makeCaAndServerCert(dir, 'other');
    good = await h2Receiver(trusted.cert, trusted.key);
    rogue = await h2Receiver(other.cert, other.key);
    srv = await startServer({
      plain: true,
      args: ['--webhooks.ca-file', trusted.ca, '--webhooks.retry-schedule', '0,100ms'],
    });
    api = apiClient(srv, { key: srv.adminKey });
  });

  after(async () => {
    await good?.close();
    await rogue?.close();
    await srv?.stop();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('delivers over HTTP/2, many events on one connection, verified certificate', async () => {
    const w = await createWebhook(api, { url: good.url, events: ['room.created'] });
    good.secret = w.secret;
    await makeRooms(api, `h2-${process.pid}`, 20);
    await waitFor(() => good.deliveries.length >= 20, { timeoutMs: 10000, what: '20 deliveries over h2' });
    assert.deepEqual(good.bad, []);
    assert.ok(good.deliveries.every((d) => d.version === '2.0'), `HTTP versions: ${[...new Set(good.deliveries.map((d) => d.version))]}`);
    assert.equal(good.sessions, 1, 'one connection carried every delivery');
    await api('DELETE', `/v1/webhooks/${w.id}`);
  });

  it('h2c: an http:// endpoint with h2c gets HTTP/2 with prior knowledge, one connection, retries and Retry-After', async () => {
    const tries = new Map();
    const r = await h2cReceiver((d) => {
      const i = (tries.get(d.id) ?? 0) + 1;
      tries.set(d.id, i);
      // each room's first event: a 503 with Retry-After: 0 first, then 200
      if (d.event.type === 'room.created' && i === 1 && d.event.data.room.name.endsWith('-0')) return { status: 503, headers: { 'retry-after': '0' } };
      return { status: 200 };
    });
    try {
      const w = await createWebhook(api, { url: r.url, events: ['room.created', 'room.updated'], h2c: true });
      assert.equal(w.h2c, true);
      r.secret = w.secret;
      const rooms = await makeRooms(api, `h2c-${process.pid}`, 10);
      for (const room of rooms) assert.equal((await api('PATCH', `/v1/rooms/${room}`, { json: { metadata: 'x' } })).status, 200);
      let log;
      await waitFor(async () => (log = await deliveries(api, w.id)).filter((x) => x.status === 'delivered').length === 20, { timeoutMs: 10000, what: '20 delivered over h2c' });
      assert.deepEqual(r.bad, []);
      assert.equal(r.sessions, 1, 'one h2c connection carried every delivery');
      // the per-request values are sent never-indexed (RFC 7541 §6.2.3): no HPACK table churn,
      // and the signature never sits in a shared compression table
      for (const d of r.deliveries) {
        for (const name of ['webhook-id', 'webhook-timestamp', 'webhook-signature']) {
          assert.ok(d.neverIndexed.includes(name), `${name} never indexed (got ${d.neverIndexed})`);
        }
      }
      const retried = log.filter((x) => x.attempts === 2);
      assert.equal(retried.length, 1);
      assert.equal(retried[0].attempt_log.find((a) => a.status === 503).outcome, 'retry');
      // per room: the created event was delivered before the updated one was first tried
      for (const room of rooms) {
        const mine = r.deliveries.filter((d) => d.event.data.room.name === room);
        const okCreated = mine.findIndex((d) => d.event.type === 'room.created' && d.status === 200);
        const firstUpdated = mine.findIndex((d) => d.event.type === 'room.updated');
        assert.ok(okCreated >= 0 && firstUpdated > okCreated, `${room} in order`);
      }
      // switched off again: the same endpoint is sent HTTP/1.1, which this receiver refuses
      assert.equal((await api('PATCH', `/v1/webhooks/${w.id}`, { json: { h2c: false } })).json().h2c, false);
      const before = r.deliveries.length;
      const [late] = await makeRooms(api, `h2c-off-${process.pid}`, 1);
      let dead;
      await waitFor(async () => (dead = (await deliveries(api, w.id, 'status=dead')).find((x) => x.room === late)), { timeoutMs: 10000, what: 'the HTTP/1.1 attempts fail' });
      assert.ok(dead.attempt_log.every((a) => a.outcome !== 'delivered' && a.error), JSON.stringify(dead.attempt_log));
      assert.equal(r.deliveries.length, before, 'nothing reached the h2c-only receiver');
      await api('DELETE', `/v1/webhooks/${w.id}`);
    } finally {
      await r.close();
    }
  });

  it('refuses a receiver that offers only TLS 1.1 or older (TLS 1.2 and 1.3 only)', async () => {
    let reached = 0;
    let handshakeErrors = 0;
    const old = https.createServer({
      cert: fs.readFileSync(trusted.cert),
      key: fs.readFileSync(trusted.key),
      minVersion: 'TLSv1',
      maxVersion: 'TLSv1.1',
      ciphers: 'DEFAULT@SECLEVEL=0',
    }, (req, res) => {
      reached++;
      res.writeHead(204);
      res.end();
    });
    old.on('tlsClientError', () => handshakeErrors++);
    await new Promise((resolve) => old.listen(0, '127.0.0.1', resolve));
    try {
      const w = await createWebhook(api, { url: `https://127.0.0.1:${old.address().port}/hook`, events: ['room.created'] });
      await makeRooms(api, `tls11-${process.pid}`, 1);
      let log;
      await waitFor(async () => {
        log = await deliveries(api, w.id);
        return log.length === 1 && log[0].status === 'dead';
      }, { timeoutMs: 10000, what: 'a dead delivery' });
      assert.equal(reached, 0, 'no request reached the TLS 1.1 receiver');
      assert.ok(handshakeErrors >= 1, 'the handshakes failed');
      assert.equal(log[0].attempt_log[0].status, null);
      assert.match(log[0].attempt_log[0].error, /SSL|TLS|protocol|version/i);
      await api('DELETE', `/v1/webhooks/${w.id}`);
    } finally {
      await new Promise((resolve) => old.close(resolve));
    }
  });

  it('refuses a receiver whose certificate does not chain to webhooks.ca_file', async () => {
    const w = await createWebhook(api, { url: rogue.url, events: ['room.created'] });
    rogue.secret = w.secret;
    await makeRooms(api, `h2-rogue-${process.pid}`, 1);
    let log;
    await waitFor(async () => {
      log = await deliveries(api, w.id);
      return log.length === 1 && log[0].status === 'dead';
    }, { timeoutMs: 10000, what: 'a dead delivery' });
    assert.equal(rogue.deliveries.length, 0);
    assert.equal(log[0].attempt_log[0].status, null);
    assert.match(log[0].attempt_log[0].error, /certificate|SSL|issuer/i);
  });
});
