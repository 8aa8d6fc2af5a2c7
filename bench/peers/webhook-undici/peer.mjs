// Benchmark peer for bench/webhooks.bench.sh: what a small node service would do to deliver
// webhooks, done well. It reads the same kind of event batch Switchboard delivers (N envelopes
// {id, type, created_at, project_id, data}, spread over R rooms), stamps created_at when it
// starts (the events are "created" then), and POSTs each to the receiver with an undici Pool
// (keep-alive, C connections), signed like Standard Webhooks v1 (webhook-id, webhook-timestamp,
// webhook-signature "v1,<base64 HMAC-SHA256 of id.timestamp.body>", node:crypto). Like
// Switchboard it keeps the events of one room in order (the next is sent once the previous got
// its 2xx), sends at most C at once, and retries non-2xx answers and errors on a schedule.
// Unlike Switchboard it keeps everything in memory (no durable state, no attempt log).
//
// Usage: node peer.mjs --url URL --secret whsec_... --events N --rooms R --concurrency C
//        [--warmup W --config-url URL --config-body JSON]
// Prints one JSON line: {sent, delivered, attempts, elapsed_ms, cpu_user_ms, cpu_system_ms}.
import crypto from 'node:crypto';
import http2 from 'node:http2';
import { parseArgs } from 'node:util';
import { Pool } from 'undici';

const { values: a } = parseArgs({
  options: {
    url: { type: 'string' },
    secret: { type: 'string' },
    events: { type: 'string', default: '10000' },
    rooms: { type: 'string', default: '1000' },
    concurrency: { type: 'string', default: '32' },
    project: { type: 'string', default: 'prj_default' },
    schedule: { type: 'string', default: '0,5000,300000' },
    // warm-up: this many events are delivered first (same receiver, same code path), then
    // PUT config-body to config-url (the receiver resets its counters), then the timed batch:
    // a long-running sender is JIT-compiled and has its pool open; a fresh process is not.
    warmup: { type: 'string', default: '0' },
    // --h2c: HTTP/2 with prior knowledge over one node:http2 session (undici has no h2c),
    // for receivers that speak it, as Switchboard's endpoint flag h2c does
    h2c: { type: 'boolean', default: false },
    'config-url': { type: 'string' },
    'config-body': { type: 'string' },
  },
});
const N = Number(a.events);
const R = Number(a.rooms);
const C = Number(a.concurrency);
const schedule = a.schedule.split(',').map(Number);
const url = new URL(a.url);
const key = Buffer.from(a.secret.replace(/^whsec_/, ''), 'base64');

const rid = () => 'evt_p' + crypto.randomBytes(10).toString('hex').slice(0, 19);
const pool = a.h2c ? null : new Pool(url.origin, { connections: C, pipelining: 1, keepAliveTimeout: 30000 });
const session = a.h2c ? http2.connect(url.origin) : null;
session?.on('error', () => {});

/** One POST: resolves with the status code (rejects on a transport error). */
async function post(headers, body) {
  if (!session) {
    const res = await pool.request({ method: 'POST', path: url.pathname, headers, body, headersTimeout: 10000, bodyTimeout: 10000 });
    await res.body.dump();
    return res.statusCode;
  }
  return new Promise((resolve, reject) => {
    const req = session.request({ ':method': 'POST', ':path': url.pathname, ...headers });
    let status = 0;
    req.setTimeout(10000, () => req.close(http2.constants.NGHTTP2_CANCEL));
    req.on('response', (h) => {
      status = h[':status'];
    });
    req.on('data', () => {});
    req.on('end', () => resolve(status));
    req.on('error', reject);
    req.end(body);
  });
}

function sign(id, ts, body) {
  const mac = crypto.createHmac('sha256', key).update(`${id}.${ts}.`).update(body).digest('base64');
  return `v1,${mac}`;
}

/** Delivers a batch of n events (created now) and resolves once every one is delivered or dead. */
function run(n) {
  const created = new Date().toISOString();
  // the batch: room i % R; per-room FIFO queues
  const queues = new Map();
  for (let i = 0; i < n; i++) {
    const room = `bench-room-${i % R}`;
    const ev = { id: rid(), type: 'room.updated', created_at: created, project_id: a.project, data: { room: { name: room, metadata: `m${i}` } } };
    if (!queues.has(room)) queues.set(room, []);
    queues.get(room).push({ ev, body: JSON.stringify(ev), attempts: 0 });
  }
  const ready = [...queues.keys()]; // rooms whose head may be sent now
  const st = { delivered: 0, attempts: 0 };
  let inflight = 0;
  let timers = 0;
  let done;
  const finished = new Promise((r) => {
    done = r;
  });

  async function send(room, item) {
    const ts = Math.floor(Date.now() / 1000);
    st.attempts++;
    let ok = false;
    try {
      const status = await post(
        {
          'content-type': 'application/json',
          'webhook-id': item.ev.id,
          'webhook-timestamp': String(ts),
          'webhook-signature': sign(item.ev.id, ts, item.body),
        },
        item.body,
      );
      ok = status >= 200 && status < 300;
    } catch {
      ok = false;
    }
    inflight--;
    const q = queues.get(room);
    if (ok) {
      st.delivered++;
      q.shift();
      if (q.length) ready.push(room);
    } else if (++item.attempts < schedule.length) {
      timers++;
      setTimeout(() => {
        timers--;
        ready.push(room);
        pump();
      }, schedule[item.attempts]);
    } else {
      q.shift(); // dead
      if (q.length) ready.push(room);
    }
    pump();
  }

  function pump() {
    while (inflight < C && ready.length) {
      const room = ready.shift();
      inflight++;
      send(room, queues.get(room)[0]);
    }
    if (inflight === 0 && ready.length === 0 && timers === 0) done();
  }
  pump();
  return finished.then(() => st);
}

const W = Number(a.warmup);
if (W > 0) {
  await run(W);
  if (a['config-url']) {
    const r = await fetch(a['config-url'], { method: 'PUT', body: a['config-body'] ?? '{}' });
    if (!r.ok) throw new Error(`resetting the receiver answered ${r.status}`);
    await r.arrayBuffer();
  }
}
const t0 = Date.now();
const cpu0 = process.cpuUsage();
const st = await run(N);
const cpu = process.cpuUsage(cpu0);
const elapsed = Date.now() - t0;
await pool?.close();
session?.close();
console.log(JSON.stringify({ sent: N, delivered: st.delivered, attempts: st.attempts, elapsed_ms: elapsed, cpu_user_ms: cpu.user / 1000, cpu_system_ms: cpu.system / 1000 }));
