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
// Prints one JSON line: {sent, delivered, attempts, elapsed_ms, cpu_user_ms, cpu_system_ms}.
import crypto from 'node:crypto';
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
  },
});
const N = Number(a.events);
const R = Number(a.rooms);
const C = Number(a.concurrency);
const schedule = a.schedule.split(',').map(Number);
const url = new URL(a.url);
const key = Buffer.from(a.secret.replace(/^whsec_/, ''), 'base64');

const rid = () => 'evt_p' + crypto.randomBytes(10).toString('hex').slice(0, 19);
const created = new Date().toISOString();
const t0 = Date.now();
const cpu0 = process.cpuUsage();

// the batch: room i % R; per-room FIFO queues
const queues = new Map();
for (let i = 0; i < N; i++) {
  const room = `bench-room-${i % R}`;
  const ev = { id: rid(), type: 'room.updated', created_at: created, project_id: a.project, data: { room: { name: room, metadata: `m${i}` } } };
  if (!queues.has(room)) queues.set(room, []);
  queues.get(room).push({ ev, body: JSON.stringify(ev), attempts: 0 });
}
const ready = [...queues.keys()]; // rooms whose head may be sent now
const pool = new Pool(url.origin, { connections: C, pipelining: 1, keepAliveTimeout: 30000 });
let inflight = 0;
let delivered = 0;
let attempts = 0;
let timers = 0;

function sign(id, ts, body) {
  const mac = crypto.createHmac('sha256', key).update(`${id}.${ts}.`).update(body).digest('base64');
  return `v1,${mac}`;
}

async function send(room, item) {
  const ts = Math.floor(Date.now() / 1000);
  attempts++;
  let ok = false;
  try {
    const res = await pool.request({
      method: 'POST',
      path: url.pathname,
      headers: {
        'content-type': 'application/json',
        'webhook-id': item.ev.id,
        'webhook-timestamp': String(ts),
        'webhook-signature': sign(item.ev.id, ts, item.body),
      },
      body: item.body,
      headersTimeout: 10000,
      bodyTimeout: 10000,
    });
    await res.body.dump();
    ok = res.statusCode >= 200 && res.statusCode < 300;
  } catch {
    ok = false;
  }
  inflight--;
  const q = queues.get(room);
  if (ok) {
    delivered++;
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

let done;
const finished = new Promise((r) => {
  done = r;
});
function pump() {
  while (inflight < C && ready.length) {
    const room = ready.shift();
    inflight++;
    send(room, queues.get(room)[0]);
  }
  if (inflight === 0 && ready.length === 0 && timers === 0) done();
}
pump();
await finished;
const cpu = process.cpuUsage(cpu0);
await pool.close();
console.log(JSON.stringify({ sent: N, delivered, attempts, elapsed_ms: Date.now() - t0, cpu_user_ms: cpu.user / 1000, cpu_system_ms: cpu.system / 1000 }));
