// SIGHUP (certificate reload) and SIGTERM (drain) against a running server.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { fingerprint, makeCaAndServerCert, replaceFile } from './lib/certs.mjs';
import { assertProblem, connect, exchange } from './lib/client.mjs';
import { run, sleep, startServer, tempDir, waitFor } from './lib/server.mjs';

function peerFingerprint(conn) {
  return conn.socket.getPeerX509Certificate().fingerprint256;
}

async function get(conn, p = '/healthz') {
  await conn.write(`GET ${p} HTTP/1.1\r\nHost: t\r\n\r\n`);
  return conn.readResponse();
}

describe('SIGHUP reloads the certificate', () => {
  let srv;
  let dir;
  let a;
  let b;
  let live;
  let keep; // a keep-alive connection opened before any reload
  before(async () => {
    dir = await tempDir('itest-switchboard-certs-');
    [a, b] = await Promise.all([makeCaAndServerCert(dir, 'a'), makeCaAndServerCert(dir, 'b')]);
    live = { cert: path.join(dir, 'live.pem'), key: path.join(dir, 'live.key') };
    replaceFile(live.cert, { src: a.cert });
    replaceFile(live.key, { src: a.key });
    // Not --dev: the configured certificate is the only one.
    srv = await startServer({ dev: false, workers: 2, args: ['--tls.cert', live.cert, '--tls.key', live.key] });
  });
  after(async () => {
    keep?.destroy();
    await srv?.cleanup();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('serves the configured certificate', async () => {
    keep = await connect(srv, { ca: fs.readFileSync(a.ca) });
    assert.equal(peerFingerprint(keep), fingerprint(a.cert));
    assert.equal((await get(keep)).status, 200);
  });

  it('after SIGHUP new connections get the new certificate; the open connection keeps working', async () => {
    replaceFile(live.key, { src: b.key });
    replaceFile(live.cert, { src: b.cert });
    const from = srv.stderrLines().length;
    srv.signal('SIGHUP');
    await srv.waitForLog((l) => /TLS certificate reloaded/.test(l.msg), { from, timeoutMs: 5000 });
    await srv.waitForLog((l) => l.msg === 'reload complete', { from, timeoutMs: 5000 });
    assert.ok(!srv.logs().slice(0).some((l) => /TLS reload failed/.test(l.msg)), 'no reload failure');

    // Every loop must have switched: several connections, all with the new certificate.
    for (let i = 0; i < 6; i++) {
      const c = await waitFor(async () => {
        const x = await connect(srv, { ca: fs.readFileSync(b.ca) });
        return x;
      }, { timeoutMs: 2000, what: 'a connection trusting only the new CA' });
      try {
        assert.equal(peerFingerprint(c), fingerprint(b.cert), `connection ${i} sees the new certificate`);
        assert.equal((await get(c)).status, 200);
      } finally {
        c.destroy();
      }
    }
    await assert.rejects(connect(srv, { ca: fs.readFileSync(a.ca) }), /certificate|verify|issuer/i,
      'a client trusting only the old CA is refused');

    // The connection opened before the reload is still served, on its old session.
    for (let i = 0; i < 3; i++) {
      const r = await get(keep);
      assert.equal(r.status, 200, 'the open keep-alive connection keeps working');
    }
    assert.equal(srv.running, true);
  });

  const broken = [
    ['a key file that is not PEM', () => replaceFile(live.key, { data: 'this is not a key\n' })],
    ['a key that does not match the certificate', () => replaceFile(live.key, { src: a.key })],
    ['a certificate file that is truncated', () => {
      replaceFile(live.key, { src: b.key });
      replaceFile(live.cert, { data: fs.readFileSync(b.cert, 'utf8').slice(0, 200) });
    }],
    ['a missing certificate file', () => {
      fs.rmSync(live.cert);
    }],
  ];
  for (const [name, breakIt] of broken) {
    it(`SIGHUP with ${name}: keeps serving the current certificate and logs the error`, async () => {
      breakIt();
      const from = srv.stderrLines().length;
      srv.signal('SIGHUP');
      const line = await srv.waitForLog(/TLS reload failed/, { from, timeoutMs: 5000 });
      const parsed = JSON.parse(line);
      assert.equal(parsed.level, 'error');
      assert.ok(parsed.reason, 'the log line says why');
      assert.doesNotMatch(line, /BEGIN (EC )?PRIVATE KEY/, 'never logs key material');
      await srv.waitForLog((l) => l.msg === 'reload complete', { from, timeoutMs: 5000 });
      for (let i = 0; i < 4; i++) {
        const c = await connect(srv, { ca: fs.readFileSync(b.ca) });
        try {
          assert.equal(peerFingerprint(c), fingerprint(b.cert), 'still the last good certificate');
          assert.equal((await get(c)).status, 200);
        } finally {
          c.destroy();
        }
      }
      assert.equal((await get(keep)).status, 200, 'the old connection still works');
      // Restore the good pair for the next case.
      replaceFile(live.cert, { src: b.cert });
      replaceFile(live.key, { src: b.key });
    });
  }

  it('a fixed pair is picked up on the next SIGHUP', async () => {
    replaceFile(live.key, { src: a.key });
    replaceFile(live.cert, { src: a.cert });
    const from = srv.stderrLines().length;
    srv.signal('SIGHUP');
    await srv.waitForLog((l) => /TLS certificate reloaded/.test(l.msg), { from, timeoutMs: 5000 });
    const c = await waitFor(() => connect(srv, { ca: fs.readFileSync(a.ca) }), { timeoutMs: 2000 });
    try {
      assert.equal(peerFingerprint(c), fingerprint(a.cert));
    } finally {
      c.destroy();
    }
  });

  it('TLS sessions resume across a SIGHUP (ticket keys survive the reload)', async () => {
    const sess = path.join(dir, 'sess.pem');
    const sc = (args) => run('openssl', ['s_client', '-connect', `127.0.0.1:${srv.port}`, '-CAfile', a.ca,
      '-verify_return_error', '-ign_eof', ...args], { input: 'GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n' })
      .then((r) => r.stdout + r.stderr);
    const first = await sc(['-tls1_3', '-sess_out', sess]);
    assert.match(first, /HTTP\/1\.1 200 OK/, first);
    const from = srv.stderrLines().length;
    srv.signal('SIGHUP');
    await srv.waitForLog((l) => l.msg === 'reload complete', { from, timeoutMs: 5000 });
    await sleep(100); // the loops apply the reload asynchronously
    for (let i = 0; i < 3; i++) {
      const again = await sc(['-tls1_3', '-sess_in', sess]);
      assert.match(again, /Reused, TLSv1\.3/, again);
      assert.match(again, /HTTP\/1\.1 200 OK/);
    }
  });

  it('a burst of SIGHUPs under traffic: every request succeeds', async () => {
    let stop = false;
    let ok = 0;
    const failures = [];
    const client = async () => {
      while (!stop) {
        try {
          const c = await connect(srv, { ca: fs.readFileSync(a.ca) });
          try {
            if ((await get(c)).status === 200) ok++;
            else failures.push('status');
          } finally {
            c.destroy();
          }
        } catch (e) {
          failures.push(e.code ?? e.message);
        }
      }
    };
    const clients = Array.from({ length: 8 }, client);
    for (let i = 0; i < 15; i++) {
      srv.signal('SIGHUP');
      await sleep(40);
    }
    stop = true;
    await Promise.all(clients);
    assert.deepEqual(failures, []);
    assert.ok(ok > 20, `${ok} requests served`);
    assert.equal(srv.running, true);
  });

  it('the server exits 0 on SIGTERM after all of that', async () => {
    keep.destroy();
    const r = await srv.stop();
    assert.equal(r.code, 0);
  });
});

describe('SIGTERM drains', () => {
  it('in-flight request finishes (503 from /readyz while draining), idle connections close, new ones are refused, exit 0', async () => {
    const srv = await startServer({
      workers: 1,
      args: ['--shutdown.drain-timeout', '4s', '--http.body-timeout', '20s', '--http.header-timeout', '20s'],
    });
    const inflight = await connect(srv);
    const idle = await connect(srv);
    try {
      assert.equal((await get(idle)).status, 200);
      // /readyz with a body: half of it now, half after SIGTERM.
      await inflight.write('GET /readyz HTTP/1.1\r\nHost: t\r\nX-Request-Id: in-flight\r\nContent-Length: 10\r\n\r\nhello');
      await sleep(150);
      const t0 = Date.now();
      srv.signal('SIGTERM');
      await srv.waitForLog((l) => /shutting down/.test(l.msg), { timeoutMs: 3000 });

      assert.ok(await idle.waitClose(1500), 'the idle keep-alive connection is closed at once');
      assert.equal(idle.pending().length, 0, 'without a response');

      // The listener is closed: new connections are refused.
      await waitFor(() => new Promise((res) => {
        const s = net.connect({ host: '127.0.0.1', port: srv.port });
        s.once('connect', () => {
          s.destroy();
          res(false);
        });
        s.once('error', (e) => res(e.code === 'ECONNREFUSED'));
      }), { timeoutMs: 1500, what: 'ECONNREFUSED on the listening port' });

      assert.equal(srv.running, true, 'still running while a request is in flight');
      await sleep(300);
      assert.equal(srv.running, true, 'still running while a request is in flight');
      await inflight.write('world');
      const r = await inflight.readResponse({ timeoutMs: 3000 });
      const p = assertProblem(r, 503);
      assert.equal(p.request_id, 'in-flight');
      assert.match(r.headers.connection ?? '', /^close$/i, 'Connection: close while draining');
      assert.ok(await inflight.waitClose(2000), 'closed after the response');

      const exit = await srv.waitExit(4000);
      assert.ok(exit, 'exited');
      assert.ok(Date.now() - t0 < 3500, `exited once the in-flight request was done, before the drain timeout (${Date.now() - t0} ms)`);
      const st = await srv.stop(); // exit code 0 and no sanitizer reports
      assert.equal(st.code, 0);
      await srv.waitForLog((l) => l.msg === 'stopped', { timeoutMs: 100 });
    } finally {
      inflight.destroy();
      idle.destroy();
      await srv.cleanup();
    }
  });

  it('a request that never completes is cut off at shutdown.drain_timeout and the exit code is still 0', async () => {
    const srv = await startServer({
      workers: 2,
      args: ['--shutdown.drain-timeout', '1s', '--http.body-timeout', '20s', '--http.header-timeout', '20s'],
    });
    const stuck = [];
    try {
      for (let i = 0; i < 4; i++) {
        const c = await connect(srv);
        await c.write('POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\npartial');
        stuck.push(c);
      }
      await sleep(100);
      const t0 = Date.now();
      srv.signal('SIGTERM');
      const exit = await srv.waitExit(5000);
      const took = Date.now() - t0;
      assert.ok(exit, 'exited');
      assert.ok(took >= 850, `waited for the drain timeout (${took} ms)`);
      assert.ok(took < 3000, `but not much longer (${took} ms)`);
      for (const c of stuck) assert.ok(await c.waitClose(1000), 'the stuck connection was closed');
      await srv.waitForLog(/drain timeout/, { timeoutMs: 100 });
      const st = await srv.stop();
      assert.equal(st.code, 0);
    } finally {
      for (const c of stuck) c.destroy();
      await srv.cleanup();
    }
  });

  it('an idle server exits 0 promptly on SIGTERM, and on SIGINT', async () => {
    for (const sig of ['SIGTERM', 'SIGINT']) {
      const srv = await startServer({ workers: 2, plain: true });
      const r = await exchange(srv, 'GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n');
      assert.equal(r.responses[0].status, 200);
      const st = await srv.stop({ signal: sig, timeoutMs: 5000 });
      assert.equal(st.code, 0);
      assert.ok(st.elapsedMs < 2000, `${sig}: exited in ${st.elapsedMs} ms`);
      await srv.cleanup();
    }
  });
});
