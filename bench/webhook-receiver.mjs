// The correctness receiver of bench/webhooks.bench.sh, shared by Switchboard and the peer: a
// node http server that verifies EVERY delivery's Standard Webhooks v1 signature (node:crypto
// HMAC, the spec's algorithm; the first lib_limit of each run, 200 unless configured, are also
// checked with the npm `standardwebhooks` library from bench/peers/webhook-undici, so the two
// agree), parses every body as JSON, and answers 204, or 400 when a check fails. It records,
// per delivery, the time from the event's created_at (in the envelope) to its arrival.
// It costs ~40 us of CPU per delivery, so the throughput runs use bench/webhook_receiver.c.
//
//   POST /hook            a delivery
//   PUT  /config          {secret, lib_limit?}: the secret to verify with; resets the counters
//   GET  /stats           {count, distinct, bad, first_ms, last_ms, min_created_ms, p50_ms, p99_ms, max_ms}
//   GET  /healthz
//
// Usage: node webhook-receiver.mjs PORT PEER_DIR
import crypto from 'node:crypto';
import http from 'node:http';
import { createRequire } from 'node:module';
import path from 'node:path';

const port = Number(process.argv[2]);
const require = createRequire(path.join(process.argv[3], 'package.json'));
const { Webhook } = require('standardwebhooks');

let key = null;
let lib = null;
let libLimit = 200;
let st;
function reset() {
  st = { count: 0, bad: 0, ids: new Set(), lat: [], first: 0, last: 0, minCreated: Infinity, libChecked: 0 };
}
reset();

function verify(id, ts, sigs, body) {
  const want = crypto.createHmac('sha256', key).update(`${id}.${ts}.`).update(body).digest();
  for (const s of sigs.split(' ')) {
    const [v, b64] = s.split(',');
    if (v !== 'v1' || !b64) continue;
    const got = Buffer.from(b64, 'base64');
    if (got.length === want.length && crypto.timingSafeEqual(got, want)) return true;
  }
  return false;
}

const server = http.createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/healthz') return res.end('ok');
  if (req.method === 'GET' && req.url === '/stats') {
    const l = st.lat.sort((x, y) => x - y);
    const q = (p) => (l.length ? l[Math.min(l.length - 1, Math.floor(p * l.length))] : 0);
    res.setHeader('content-type', 'application/json');
    return res.end(JSON.stringify({ count: st.count, distinct: st.ids.size, bad: st.bad, first_ms: st.first, last_ms: st.last,
      min_created_ms: Number.isFinite(st.minCreated) ? st.minCreated : 0, p50_ms: q(0.5), p99_ms: q(0.99), max_ms: l.at(-1) ?? 0,
      lib_checked: st.libChecked }));
  }
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const body = Buffer.concat(chunks);
    if (req.method === 'PUT' && req.url === '/config') {
      const cfg = JSON.parse(body);
      const secret = cfg.secret;
      libLimit = Number.isInteger(cfg.lib_limit) ? cfg.lib_limit : 200;
      key = Buffer.from(secret.replace(/^whsec_/, ''), 'base64');
      lib = new Webhook(secret);
      reset();
      return res.end('{}');
    }
    const now = Date.now();
    const id = req.headers['webhook-id'];
    const ts = req.headers['webhook-timestamp'];
    const sig = req.headers['webhook-signature'] ?? '';
    let ok = key && id && ts && verify(id, ts, sig, body);
    let ev = null;
    if (ok) {
      try {
        ev = JSON.parse(body);
      } catch {
        ok = false;
      }
    }
    if (ok && st.libChecked < libLimit) {
      try {
        lib.verify(body.toString('utf8'), { 'webhook-id': id, 'webhook-timestamp': ts, 'webhook-signature': sig });
        st.libChecked++;
      } catch {
        ok = false;
      }
    }
    if (!ok) {
      st.bad++;
      res.statusCode = 400;
      return res.end();
    }
    const created = Date.parse(ev.created_at);
    st.count++;
    st.ids.add(id);
    st.lat.push(now - created);
    if (!st.first) st.first = now;
    st.last = now;
    if (created < st.minCreated) st.minCreated = created;
    res.statusCode = 204;
    res.end();
  });
});
server.keepAliveTimeout = 60000;
server.listen(port, '127.0.0.1');
