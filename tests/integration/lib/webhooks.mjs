// Webhook test support: a receiver (node http server) that verifies EVERY delivery with the
// npm `standardwebhooks` library, plus small API helpers for /v1/webhooks.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import http from 'node:http';
import { Webhook } from 'standardwebhooks';

import { sleep, waitFor } from './server.mjs';

/**
 * startReceiver({ secrets, respond, port }):
 *   secrets: () => array of whsec_ secrets (verified with standardwebhooks) or whpk_ Ed25519
 *     public keys (v1a, verified with node:crypto by verifyV1a) that must EACH verify the
 *     delivery (set later with r.secrets = [...]); a delivery that fails any is recorded in
 *     r.badSignatures and answered 400.
 *   respond(d, r): optional; returns {status, headers, delayMs} for delivery d (default 204).
 * Records r.deliveries on arrival: {id, timestamp, signature, sigCount, event (parsed body),
 * receivedAt, verified, status (0 until answered)}. r.ids() lists webhook-ids in arrival order; r.close() stops it.
 */
export async function startReceiver({ secrets = [], respond, port = 0, host = '127.0.0.1' } = {}) {
  const r = {
    secrets,
    deliveries: [],
    inflight: 0, // requests received and not yet answered
    maxInflight: 0,
    badSignatures: [],
    respond,
    ids() {
      return this.deliveries.map((d) => d.id);
    },
    ok() {
      return this.deliveries.filter((d) => d.status >= 200 && d.status < 300);
    },
  };
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', async () => {
      const body = Buffer.concat(chunks).toString('utf8');
      const headers = {
        'webhook-id': req.headers['webhook-id'],
        'webhook-timestamp': req.headers['webhook-timestamp'],
        'webhook-signature': req.headers['webhook-signature'],
      };
      const d = {
        id: headers['webhook-id'],
        timestamp: Number(headers['webhook-timestamp']),
        signature: headers['webhook-signature'] ?? '',
        sigCount: (headers['webhook-signature'] ?? '').split(' ').filter(Boolean).length,
        receivedAt: Date.now(),
        contentType: req.headers['content-type'],
        method: req.method,
        event: null,
        status: 0,
      };
      let verified = r.secrets.length > 0;
      for (const s of r.secrets) {
        try {
          if (s.startsWith('whpk_')) verifyV1a(s, body, headers);
          else new Webhook(s).verify(body, headers);
        } catch (e) {
          verified = false;
          r.badSignatures.push({ id: d.id, secret: s.slice(0, 10), error: e.message });
        }
      }
      try {
        d.event = JSON.parse(body);
      } catch {
        verified = false;
      }
      d.verified = verified;
      r.deliveries.push(d); // on arrival: a request in flight when the sender dies counts
      r.inflight++;
      if (r.inflight > r.maxInflight) r.maxInflight = r.inflight;
      res.on('close', () => r.inflight--);
      let out = { status: 204 };
      if (!verified) out = { status: 400 };
      else if (r.respond) out = (await r.respond(d, r)) ?? { status: 204 };
      if (out.delayMs) await sleep(out.delayMs);
      d.status = out.status;
      if (res.destroyed) return;
      res.writeHead(out.status, out.headers ?? {});
      res.end();
    });
  });
  server.keepAliveTimeout = 30000;
  await new Promise((resolve) => server.listen(port, host, resolve));
  r.server = server;
  r.port = server.address().port;
  r.url = `http://${host}:${r.port}/hook`;
  r.close = () =>
    new Promise((resolve) => {
      server.closeAllConnections?.();
      server.close(() => resolve());
    });
  return r;
}

/**
 * Standard Webhooks v1a: one of the space-separated "v1a,<base64>" signatures must be the
 * Ed25519 signature (RFC 8032) of "id.timestamp.body" under the whpk_ public key, and the
 * timestamp within 5 minutes (as standardwebhooks checks for v1). Throws otherwise.
 */
export function verifyV1a(publicKey, body, headers) {
  const raw = Buffer.from(publicKey.slice('whpk_'.length), 'base64');
  assert.equal(raw.length, 32, 'a whpk_ key is 32 bytes');
  const key = crypto.createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: raw.toString('base64url') }, format: 'jwk' });
  const ts = Number(headers['webhook-timestamp']);
  if (!(Math.abs(Date.now() / 1000 - ts) <= 300)) throw new Error('timestamp too old or new');
  const msg = Buffer.from(`${headers['webhook-id']}.${headers['webhook-timestamp']}.${body}`);
  const sigs = (headers['webhook-signature'] ?? '').split(' ').filter((x) => x.startsWith('v1a,'));
  if (!sigs.some((x) => crypto.verify(null, msg, key, Buffer.from(x.slice(4), 'base64')))) throw new Error('no v1a signature verifies');
}

/** POST /v1/webhooks; asserts 201 and returns the body (with its one-time secret). */
export async function createWebhook(call, body) {
  const r = await call('POST', '/v1/webhooks', { json: body });
  assert.equal(r.status, 201, r.text);
  const w = r.json();
  assert.match(w.secret, /^whsec_[A-Za-z0-9+/]{43}=$/);
  return w;
}

/** Every delivery of a webhook, across pages. */
export async function deliveries(call, id, query = '') {
  const out = [];
  let cursor = null;
  for (let i = 0; i < 100; i++) {
    const q = new URLSearchParams(query);
    q.set('limit', '200');
    if (cursor) q.set('cursor', cursor);
    const r = await call('GET', `/v1/webhooks/${id}/deliveries?${q}`);
    assert.equal(r.status, 200, r.text);
    const page = r.json();
    out.push(...page.data);
    if (!page.next_cursor) return out;
    cursor = page.next_cursor;
  }
  throw new Error('too many pages');
}

/** Creates n rooms named prefix-i (one room.created event each); returns the names. */
export async function makeRooms(call, prefix, n) {
  const names = [];
  for (let i = 0; i < n; i++) {
    const name = `${prefix}-${i}`;
    const r = await call('POST', '/v1/rooms', { json: { name } });
    assert.equal(r.status, 201, r.text);
    names.push(name);
  }
  return names;
}

export { sleep, waitFor };
