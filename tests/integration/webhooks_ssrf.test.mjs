// The webhook SSRF guard: a server started without --dev (webhooks.allow_private_targets
// false) refuses to connect to loopback, private, link-local and metadata addresses, checked
// on the address it is about to connect to (so a host name resolving to 127.0.0.1 fails too).
// Each refusal is a recorded failed attempt with a clear error; the receiver (listening on
// 127.0.0.1) gets nothing.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { apiClient } from './lib/api.mjs';
import { parseMetrics, startServer } from './lib/server.mjs';
import { createWebhook, deliveries, makeRooms, startReceiver, waitFor } from './lib/webhooks.mjs';

describe('webhooks SSRF guard (no --dev)', () => {
  let srv;
  let api;
  let r;

  before(async () => {
    r = await startReceiver();
    srv = await startServer({
      dev: false,
      tls: false,
      plain: true,
      args: ['--listen=', '--webhooks.allow-http', '--webhooks.retry-schedule', '0,100ms', '--webhooks.timeout', '2s'],
    });
    api = apiClient(srv, { key: srv.adminKey });
  });

  after(async () => {
    await r?.close();
    await srv?.stop();
  });

  it('refuses every private, loopback, link-local and metadata target, also by host name', async () => {
    const targets = [
      [`http://127.0.0.1:${r.port}/hook`, /127\.0\.0\.1 is a loopback address/],
      ['http://10.1.2.3:81/hook', /10\.1\.2\.3 is a private address/],
      ['http://192.168.0.10/hook', /192\.168\.0\.10 is a private address/],
      ['http://169.254.169.254/latest/meta-data/', /169\.254\.169\.254 is a metadata address/],
      ['http://100.64.0.1/hook', /100\.64\.0\.1 is a shared \(CGNAT\) address/],
      [`http://[::1]:${r.port}/hook`, /::1 is a loopback address/],
      ['http://[fd00:ec2::254]/', /fd00:ec2::254 is a metadata address/],
      [`http://[::ffff:127.0.0.1]:${r.port}/hook`, /is a loopback address/],
      [`http://localhost:${r.port}/hook`, /(127\.0\.0\.1|::1) is a loopback address/],
      ['http://0.0.0.0/hook', /0\.0\.0\.0 is a unspecified address/],
    ];
    const hooks = [];
    for (const [url] of targets) hooks.push(await createWebhook(api, { url, events: ['room.created'] }));
    await makeRooms(api, `ssrf-${process.pid}`, 1);
    for (let i = 0; i < targets.length; i++) {
      let log;
      await waitFor(async () => {
        log = await deliveries(api, hooks[i].id);
        return log.length === 1 && log[0].status === 'dead';
      }, { timeoutMs: 10000, what: `dead delivery for ${targets[i][0]}` });
      assert.equal(log[0].attempt_log.length, 2, targets[i][0]);
      for (const a of log[0].attempt_log) {
        assert.equal(a.status, null);
        assert.match(a.error, /^refused target: /, targets[i][0]);
        assert.match(a.error, targets[i][1], targets[i][0]);
        assert.match(a.error, /webhooks\.allow_private_targets/);
      }
    }
    assert.equal(r.deliveries.length, 0, 'nothing reached the loopback receiver');
    const m = parseMetrics(await (await fetch(`${srv.plainUrl}/metrics`)).text());
    assert.ok(m.get('switchboard_webhook_refused_total') >= targets.length * 2);
  });

  it('refuses plain http:// without webhooks.allow_http, and credentials in the URL', async () => {
    const strict = await startServer({ dev: false, tls: false, plain: true, args: ['--listen='] });
    try {
      const sapi = apiClient(strict, { key: strict.adminKey });
      const h = await sapi('POST', '/v1/webhooks', { json: { url: 'http://example.com/hook' } });
      assert.equal(h.status, 400);
      assert.match(h.json().detail, /https.*allow_http/);
      const u = await sapi('POST', '/v1/webhooks', { json: { url: 'https://a:b@example.com/hook' } });
      assert.equal(u.status, 400);
      assert.equal((await sapi('POST', '/v1/webhooks', { json: { url: 'https://example.com/hook' } })).status, 201);
    } finally {
      await strict.stop();
    }
  });
});
