// Load generator of bench/fanout.bench.sh (node + ws, from bench/peers/ws-relay/node_modules).
//
//   node fanout-client.mjs mint --api URL --admin-key KEY --room R --idle-room R2 --subs S --pubs P --idle N --out FILE
//       mints participant tokens on Switchboard (POST /v1/tokens): sub-i (hidden, subscribe,
//       no publish_data), pub-i (hidden, publish_data, no subscribe), idle-i (hidden).
//   node fanout-client.mjs run --url ws://HOST:PORT/v1/rtc --tokens FILE --server-pid PID
//       [--subs S] [--pubs P] [--duration 10] [--warmup 2] [--window 16] [--rate 0] [--size 64]
//       S subscribers and P publishers join; each publisher sends SIZE-byte data payloads that end
//       in "|pub|seq|send time in µs" (process.hrtime), either at a fixed total --rate (msgs/s) or
//       as fast as possible with at most --window messages per publisher not yet delivered to every
//       subscriber. Subscribers count deliveries and put now − send time into a histogram. Prints
//       one JSON line: deliveries/s (counted at the subscribers, in the measured window only),
//       p50/p99, messages sent, the server's RSS.
//   node fanout-client.mjs idle --url … --tokens FILE --server-pid PID [--idle 2000]
//       the server's RSS before and after N idle joined participants; prints one JSON line.
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, 'peers/ws-relay/package.json'));
const WebSocket = require('ws');

const mode = process.argv[2];
const opt = {};
for (let i = 3; i < process.argv.length; i += 2) opt[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
const num = (k, d) => (opt[k] === undefined ? d : Number(opt[k]));

const t0 = process.hrtime();
/** µs since start, from process.hrtime */
function nowUs() {
  const t = process.hrtime(t0);
  return t[0] * 1e6 + Math.floor(t[1] / 1000);
}
function rssKb(pid) {
  try {
    const s = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    return { rss: Number(/VmRSS:\s+(\d+)/.exec(s)[1]), hwm: Number(/VmHWM:\s+(\d+)/.exec(s)[1]) };
  } catch {
    return { rss: 0, hwm: 0 };
  }
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
function fail(msg) {
  console.error(`fanout-client: ${msg}`);
  process.exit(1);
}

async function mint() {
  const h = { authorization: `Bearer ${opt['admin-key']}`, 'content-type': 'application/json' };
  const one = async (room, identity, grants) => {
    const r = await fetch(`${opt.api}/v1/tokens`, { method: 'POST', headers: h, body: JSON.stringify({ room, identity, ttl_seconds: 3600, grants }) });
    const text = await r.text();
    if (r.status !== 201) fail(`POST /v1/tokens → ${r.status}: ${text}`);
    return JSON.parse(text).token;
  };
  const out = { sub: [], pub: [], idle: [] };
  const jobs = [];
  const base = { publish: false, admin: false, hidden: true, record: false };
  for (let i = 0; i < num('subs', 1000); i++) jobs.push(async () => { out.sub[i] = await one(opt.room, `sub-${i}`, { ...base, subscribe: true, publish_data: false }); });
  for (let i = 0; i < num('pubs', 4); i++) jobs.push(async () => { out.pub[i] = await one(opt.room, `pub-${i}`, { ...base, subscribe: false, publish_data: true }); });
  for (let i = 0; i < num('idle', 2000); i++) jobs.push(async () => { out.idle[i] = await one(opt['idle-room'], `idle-${i}`, { ...base, subscribe: true, publish_data: true }); });
  await pool(jobs, 32);
  fs.writeFileSync(opt.out, JSON.stringify(out));
}

async function pool(jobs, n) {
  let i = 0;
  await Promise.all(Array.from({ length: n }, async () => { while (i < jobs.length) await jobs[i++](); }));
}

/** Opens one participant connection; resolves with the ws once `joined` arrived. */
function join(url, token, onData) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${url}?access_token=${token}`, { perMessageDeflate: false, skipUTF8Validation: true });
    const t = setTimeout(() => reject(new Error('join timed out')), 15000);
    ws.on('error', (e) => { clearTimeout(t); reject(e); });
    ws.on('close', (code) => { if (!ws.joined) { clearTimeout(t); reject(new Error(`closed ${code} before joined`)); } else if (!ws.closing) ws.lostCode = code; });
    ws.on('message', (data, isBinary) => {
      if (ws.joined) { onData?.(data, isBinary); return; }
      const m = JSON.parse(data.toString());
      if (m.type === 'joined') { ws.joined = true; clearTimeout(t); resolve(ws); }
    });
  });
}
async function joinAll(url, tokens, onData) {
  const out = new Array(tokens.length);
  await pool(tokens.map((tok, i) => async () => { out[i] = await join(url, tok, onData); }), 64);
  return out;
}
async function closeAll(conns) {
  await Promise.all(conns.map((ws) => new Promise((r) => {
    if (ws.readyState === WebSocket.CLOSED) return r();
    ws.closing = true;
    ws.on('close', r);
    ws.close();
    setTimeout(() => { ws.terminate(); r(); }, 3000).unref();
  })));
}

// Histogram of latencies: 1 µs buckets below 10 ms, then 100 µs up to 10 s.
const H_FINE = 10000;
const H_SIZE = H_FINE + 100000;
function hIndex(us) {
  if (us < 0) us = 0;
  if (us < H_FINE) return us;
  const i = H_FINE + Math.floor((us - H_FINE) / 100);
  return i < H_SIZE ? i : H_SIZE - 1;
}
function hValue(i) { return i < H_FINE ? i : H_FINE + (i - H_FINE) * 100; }
function hPct(h, total, p) {
  const want = Math.ceil(total * p);
  let acc = 0;
  for (let i = 0; i < H_SIZE; i++) { acc += h[i]; if (acc >= want) return hValue(i); }
  return hValue(H_SIZE - 1);
}

async function run() {
  const S = num('subs', 1000);
  const P = num('pubs', 4);
  const DURATION = num('duration', 10);
  const WARMUP = num('warmup', 2);
  const WINDOW = num('window', 16);
  const RATE = num('rate', 0);
  const SIZE = num('size', 64);
  const tokens = JSON.parse(fs.readFileSync(opt.tokens, 'utf8'));
  if (tokens.sub.length < S || tokens.pub.length < P) fail('not enough tokens');

  const RING = 1 << 16;
  const MASK = RING - 1;
  const pubs = Array.from({ length: P }, () => ({ next: 0, low: 0, counts: new Int32Array(RING), sentAt: new Float64Array(RING), ws: null }));
  const hist = new Uint32Array(H_SIZE);
  let measuring = false;
  let delivered = 0; // in the measured window, at the subscribers
  let deliveredAll = 0;
  let sentMeasured = 0;
  let lost = 0;
  let badFormat = 0;
  let checked = 0;
  const checkSample = [];

  const pad = 'x'.repeat(SIZE);
  const send = (pi) => {
    const p = pubs[pi];
    const seq = p.next++;
    const ts = nowUs();
    const tail = `|${pi}|${seq}|${ts}`;
    const data = pad.slice(0, SIZE - tail.length) + tail;
    p.counts[seq & MASK] = 0;
    p.sentAt[seq & MASK] = ts;
    if (measuring) sentMeasured++;
    p.ws.send(`{"type":"data","data":"${data}"}`);
  };
  const advance = (p) => {
    while (p.low < p.next && p.counts[p.low & MASK] >= S) p.low++;
  };
  const pump = (pi) => {
    const p = pubs[pi];
    while (p.next - p.low < WINDOW) send(pi);
  };

  // A delivery: the text frame ends in `|pub|seq|ts"}`; parse backwards, no JSON.parse per message.
  const onData = (buf, isBinary) => {
    const now = nowUs();
    const n = buf.length;
    if (isBinary || n < 8 || buf[n - 1] !== 0x7d || buf[n - 2] !== 0x22) { badFormat++; return; }
    let i = n - 3;
    let ts = 0;
    let mul = 1;
    for (; buf[i] !== 0x7c; i--) { ts += (buf[i] - 48) * mul; mul *= 10; }
    i--;
    let seq = 0;
    mul = 1;
    for (; buf[i] !== 0x7c; i--) { seq += (buf[i] - 48) * mul; mul *= 10; }
    i--;
    let pi = 0;
    mul = 1;
    for (; buf[i] !== 0x7c; i--) { pi += (buf[i] - 48) * mul; mul *= 10; }
    if (checked < 16) { checked++; checkSample.push(buf.toString()); }
    deliveredAll++;
    if (measuring) {
      delivered++;
      hist[hIndex(now - ts)]++;
    }
    const p = pubs[pi];
    if (p && seq >= p.low && seq < p.next) {
      if (++p.counts[seq & MASK] >= S && seq === p.low) {
        advance(p);
        if (!RATE) pump(pi);
      }
    }
  };

  const subs = await joinAll(opt.url, tokens.sub.slice(0, S), onData);
  const pubConns = await joinAll(opt.url, tokens.pub.slice(0, P), () => {});
  pubConns.forEach((ws, i) => { pubs[i].ws = ws; });
  await sleep(200);

  // a message that no subscriber completes within 2 s is given up (counted as lost)
  const stall = setInterval(() => {
    const now = nowUs();
    pubs.forEach((p, pi) => {
      let moved = false;
      while (p.low < p.next && now - p.sentAt[p.low & MASK] > 2e6) { lost++; p.low++; advance(p); moved = true; }
      if (moved && !RATE) pump(pi);
    });
  }, 250);

  let rateTimer = null;
  if (RATE) {
    const perPub = RATE / P;
    const start = nowUs();
    const sentBy = new Float64Array(P);
    rateTimer = setInterval(() => {
      const due = ((nowUs() - start) / 1e6) * perPub;
      for (let pi = 0; pi < P; pi++) while (sentBy[pi] < due) { send(pi); sentBy[pi]++; }
    }, 1);
  } else {
    for (let pi = 0; pi < P; pi++) pump(pi);
  }

  await sleep(WARMUP * 1000);
  const c0 = process.cpuUsage();
  const m0 = nowUs();
  measuring = true;
  await sleep(DURATION * 1000);
  measuring = false;
  const secs = (nowUs() - m0) / 1e6;
  const cpu = process.cpuUsage(c0);
  const mem = rssKb(opt['server-pid']);
  clearInterval(stall);
  if (rateTimer) clearInterval(rateTimer);
  const dropped = subs.filter((ws) => ws.readyState !== WebSocket.OPEN).length + pubConns.filter((ws) => ws.readyState !== WebSocket.OPEN).length;

  // check a few deliveries in full: exactly {"type":"data","from":"pub-N","topic":null,"data":<the payload>}
  let formatOk = checkSample.length > 0;
  for (const s of checkSample) {
    const m = JSON.parse(s);
    const keys = Object.keys(m).join(',');
    if (keys !== 'type,from,topic,data' || m.type !== 'data' || !/^pub-\d+$/.test(m.from) || m.topic !== null ||
        m.data.length !== SIZE || !m.data.endsWith(`|${m.from.slice(4)}|${m.data.split('|')[2]}|${m.data.split('|')[3]}`)) formatOk = false;
  }
  await closeAll([...pubConns, ...subs]);
  console.log(JSON.stringify({
    deliveries_per_sec: delivered / secs,
    deliveries: delivered,
    messages_sent: sentMeasured,
    expected_deliveries: sentMeasured * S,
    seconds: secs,
    p50_us: hPct(hist, delivered, 0.5),
    p99_us: hPct(hist, delivered, 0.99),
    max_us: hPct(hist, delivered, 1),
    lost_messages: lost,
    bad_frames: badFormat,
    dropped_connections: dropped,
    format_ok: formatOk,
    sample: checkSample[0] ?? null,
    client_cpu_pct: ((cpu.user + cpu.system) / 1e6 / secs) * 100,
    server_rss_kb: mem.rss,
    server_hwm_kb: mem.hwm,
    subs: S,
    pubs: P,
    mode: RATE ? `rate ${RATE}/s` : `window ${WINDOW}`,
  }));
  setTimeout(() => process.exit(0), 100).unref();
}

async function idle() {
  const N = num('idle', 2000);
  const tokens = JSON.parse(fs.readFileSync(opt.tokens, 'utf8'));
  if (tokens.idle.length < N) fail('not enough tokens');
  const pid = opt['server-pid'];
  await sleep(500);
  const before = rssKb(pid);
  const conns = await joinAll(opt.url, tokens.idle.slice(0, N));
  await sleep(1500);
  const after = rssKb(pid);
  const open = conns.filter((ws) => ws.readyState === WebSocket.OPEN).length;
  await closeAll(conns);
  console.log(JSON.stringify({ idle: N, open, rss_before_kb: before.rss, rss_after_kb: after.rss, bytes_per_conn: ((after.rss - before.rss) * 1024) / N }));
  setTimeout(() => process.exit(0), 100).unref();
}

const modes = { mint, run, idle };
if (!modes[mode]) fail(`usage: fanout-client.mjs mint|run|idle --opt value …`);
modes[mode]().catch((e) => fail(e.stack ?? String(e)));
