// Webhooks over HTTPS: the receiver's certificate is verified (webhooks.ca_file), HTTP/2 is
// used when the receiver offers it (ALPN), and deliveries share one connection (multiplexed).
// A receiver whose certificate does not chain to the configured CAs gets nothing.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http2 from 'node:http2';
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

describe('webhooks over HTTPS and HTTP/2', () => {
  let srv;
  let api;
  let good;
  let rogue;
  let dir;

  before(async () => {
    dir = await tempDir('itest-wh-h2-');
    const trusted = await makeCaAndServerCert(dir, 'trusted');
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
