// Checks bench/webhook_receiver.c's h2c path with a client nobody here wrote: node's http2
// (prior knowledge over plain TCP with http2.connect('http://...')). Sends N signed deliveries
// on one HTTP/2 session (all in flight at once), one with a wrong signature, then reads /stats
// over h2c and over HTTP/1.1 and checks the counters. Exits non-zero on any mismatch.
//
// Usage: node bench/webhook-h2c-check.mjs RECEIVER_BINARY [N]
//   (build: cc -O2 -o /tmp/webhook_receiver bench/webhook_receiver.c -lcrypto -lnghttp2)
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import http2 from 'node:http2';
import net from 'node:net';
import assert from 'node:assert/strict';

const bin = process.argv[2];
const n = Number(process.argv[3] ?? 500);
if (!bin) {
  console.error('usage: node webhook-h2c-check.mjs RECEIVER_BINARY [N]');
  process.exit(2);
}

const port = await new Promise((resolve) => {
  const s = net.createServer().listen(0, '127.0.0.1', () => {
    const p = s.address().port;
    s.close(() => resolve(p));
  });
});
const rcv = spawn(bin, [String(port)], { stdio: 'inherit' });
try {
  for (let i = 0; ; i++) {
    try {
      const r = await fetch(`http://127.0.0.1:${port}/healthz`);
      if (r.ok) break;
    } catch (e) {
      if (i > 100) throw e;
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  const key = crypto.randomBytes(24);
  const secret = 'whsec_' + key.toString('base64');
  const session = http2.connect(`http://127.0.0.1:${port}`);
  session.on('error', (e) => {
    throw e;
  });
  const request = (method, path, headers, body) =>
    new Promise((resolve, reject) => {
      const req = session.request({ ':method': method, ':path': path, ...headers });
      let status = 0;
      const chunks = [];
      req.on('response', (h) => (status = h[':status']));
      req.on('data', (c) => chunks.push(c));
      req.on('end', () => resolve({ status, body: Buffer.concat(chunks).toString() }));
      req.on('error', reject);
      req.end(body);
    });

  let r = await request('PUT', '/config', { 'content-type': 'application/json' }, JSON.stringify({ secret }));
  assert.equal(r.status, 200);

  const sign = (id, ts, body) =>
    'v1,' + crypto.createHmac('sha256', key).update(`${id}.${ts}.${body}`).digest('base64');
  const deliver = (i, good) => {
    const id = `msg_h2c_${i}`;
    const ts = String(Math.floor(Date.now() / 1000));
    const body = JSON.stringify({ type: 'room.message', created_at: new Date().toISOString(), data: { i } });
    const sig = good ? sign(id, ts, body) : sign(id, ts, body + 'x');
    return request('POST', '/hook', {
      'content-type': 'application/json',
      'webhook-id': id,
      'webhook-timestamp': ts,
      'webhook-signature': `v1,bm90IHRoaXMgb25l ${sig}`,
    }, body);
  };
  const results = await Promise.all(Array.from({ length: n }, (_, i) => deliver(i, true)));
  for (const x of results) assert.equal(x.status, 204);
  r = await deliver(n, false);
  assert.equal(r.status, 400);

  r = await request('GET', '/stats', {}, undefined);
  assert.equal(r.status, 200);
  const st = JSON.parse(r.body);
  assert.equal(st.count, n);
  assert.equal(st.distinct, n);
  assert.equal(st.bad, 1);
  session.close();

  // Same counters through the HTTP/1.1 path.
  const st1 = await (await fetch(`http://127.0.0.1:${port}/stats`)).json();
  assert.equal(st1.count, n);
  assert.equal(st1.bad, 1);
  console.log(`webhook-h2c-check: ok — ${n} signed deliveries over one node http2 (h2c) session ` +
    `answered 204 and verified, 1 bad signature answered 400; /stats over h2c and HTTP/1.1: ` +
    `count ${st.count}, distinct ${st.distinct}, bad ${st.bad}`);
} finally {
  rcv.kill();
}
