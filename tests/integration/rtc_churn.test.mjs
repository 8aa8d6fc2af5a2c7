// GET /v1/rtc under churn with two worker loops: participants of several rooms join, flood
// data and binary frames across loops, leave abruptly (TCP reset) or normally, and the
// server is stopped with SIGTERM in the middle of the traffic. It must exit 0 with no
// sanitizer report (frames and leaves still queued between loops when they stop are freed),
// and leave no session or participant row open.
import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { after, describe, it } from 'node:test';

import WebSocket from 'ws';

import { run, sleep, startServer, tempDir } from './lib/server.mjs';

const ADMIN = 'rtc-churn-itest-admin-key-0123456789abcdefghij';

describe('GET /v1/rtc churn', () => {
  let srv;
  let dataDir;
  after(async () => {
    await srv?.cleanup();
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  });

  it('floods, abrupt leaves and SIGTERM mid-traffic: exit 0, everything recorded as ended', async () => {
    dataDir = await tempDir();
    srv = await startServer({ plain: true, workers: 2, env: { SWITCHBOARD_ADMIN_KEY: ADMIN }, dataDir });
    const h = { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' };
    const post = async (p, body) => (await fetch(srv.plainUrl + p, { method: 'POST', headers: h, body: JSON.stringify(body) })).json();
    const all = [];
    for (let r = 0; r < 6; r++) {
      const name = `churn-${r}`;
      await post('/v1/rooms', { name, empty_timeout_seconds: 1 });
      for (let i = 0; i < 5; i++) {
        const { token } = await post('/v1/tokens', { room: name, identity: `p${i}` });
        const ws = new WebSocket(`ws://127.0.0.1:${srv.plainPort}/v1/rtc?access_token=${token}`);
        ws.on('error', () => {});
        ws.closed = new Promise((res) => ws.on('close', (code) => res(code)));
        await new Promise((res) => ws.once('message', res));
        all.push(ws);
      }
    }
    let sent = 0;
    const flood = setInterval(() => {
      for (const ws of all) {
        if (ws.readyState !== WebSocket.OPEN) continue;
        ws.send(JSON.stringify({ type: 'data', data: 'x'.repeat(200) }));
        ws.send(Buffer.alloc(512, 7));
        sent++;
      }
    }, 2);
    await sleep(300);
    // abrupt leaves and normal leaves while the flood goes on
    for (let i = 0; i < all.length; i += 3) all[i].terminate();
    for (let i = 1; i < all.length; i += 3) all[i].close();
    await sleep(200);
    const r = await srv.stop({ timeoutMs: 15000 });
    clearInterval(flood);
    assert.ok(sent > 100, `sent ${sent}`);
    assert.ok(r.elapsedMs < 15000);
    const out = await run('sqlite3', [path.join(dataDir, 'switchboard.db')], {
      input: 'SELECT (SELECT count(*) FROM sessions), (SELECT count(*) FROM sessions WHERE ended_at IS NULL), (SELECT count(*) FROM session_participants WHERE left_at IS NULL);',
    });
    const [sessions, openSessions, openRows] = out.stdout.trim().split('|').map(Number);
    assert.ok(sessions >= 6, out.stdout);
    assert.equal(openSessions, 0);
    assert.equal(openRows, 0);
  });
});
