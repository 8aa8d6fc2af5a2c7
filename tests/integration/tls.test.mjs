// TLS policy with real clients: openssl s_client, curl, node:tls.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { connect, exchange } from './lib/client.mjs';
import { parseMetrics, run, startServer, tempDir } from './lib/server.mjs';

const REQ = 'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n';

/** openssl s_client against the server; sends REQ and waits for the server to close. */
function sClient(srv, args, { input = REQ } = {}) {
  return run('openssl', ['s_client', '-connect', `127.0.0.1:${srv.port}`, '-CAfile', srv.caPath,
    '-verify_return_error', '-ign_eof', ...args], { input, timeoutMs: 10000 })
    .then((r) => ({ ...r, out: r.stdout + r.stderr }));
}

async function metrics(srv) {
  const r = await exchange(srv, 'GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n');
  return parseMetrics(r.responses[0].text);
}

describe('TLS', () => {
  let srv;
  let tmp;
  before(async () => {
    // Two loops: session resumption must work whichever loop takes the connection.
    srv = await startServer({ workers: 2 });
    tmp = await tempDir('itest-switchboard-tls-');
  });
  after(async () => {
    await srv?.cleanup();
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  for (const [flag, name] of [['-tls1', 'TLS 1.0'], ['-tls1_1', 'TLS 1.1']]) {
    it(`${name} is refused by the server (protocol_version alert)`, async () => {
      const m0 = await metrics(srv);
      // SECLEVEL=0 lets our client offer the old protocol, so the refusal is the server's.
      const r = await sClient(srv, [flag, '-cipher', 'DEFAULT@SECLEVEL=0']);
      assert.notEqual(r.code, 0, r.out);
      assert.match(r.out, /alert protocol version|SSL alert number 70/, r.out);
      assert.doesNotMatch(r.out, /HTTP\/1\.1 200/);
      const m1 = await metrics(srv);
      assert.ok(m1.get('switchboard_tls_handshakes_total{result="failed"}') > m0.get('switchboard_tls_handshakes_total{result="failed"}'),
        'failed handshake counted');
    });
  }

  for (const [flag, proto] of [['-tls1_2', 'TLSv1.2'], ['-tls1_3', 'TLSv1.3']]) {
    it(`${proto} is accepted, certificate verifies against the dev CA, request answered`, async () => {
      const r = await sClient(srv, [flag, '-brief']);
      assert.equal(r.code, 0, r.out);
      assert.match(r.out, new RegExp(`Protocol version: ${proto.replace('.', '\\.')}`));
      assert.match(r.out, /Verification: OK/);
      assert.match(r.out, /HTTP\/1\.1 200 OK/);
      assert.match(r.out, /\{"status":"ok"\}/);
    });
  }

  it('TLS 1.2 with a CBC/RSA-kx suite outside the policy is refused', async () => {
    const r = await sClient(srv, ['-tls1_2', '-cipher', 'AES128-SHA:AES256-SHA256:ECDHE-ECDSA-AES128-SHA']);
    assert.notEqual(r.code, 0, r.out);
    assert.match(r.out, /alert handshake failure|SSL alert number 40|no shared cipher/, r.out);
  });

  it('ALPN: http/1.1 alone selects http/1.1; h2 is preferred when offered', async () => {
    const r = await sClient(srv, ['-alpn', 'http/1.1']);
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /ALPN protocol: http\/1\.1/);
    const both = await sClient(srv, ['-alpn', 'http/1.1,h2']);
    assert.match(both.out, /ALPN protocol: h2/, 'server preference: h2 even when listed second');
  });

  it('a client offering only protocols we do not speak is refused with no_application_protocol', async () => {
    const r = await sClient(srv, ['-alpn', 'spdy/3,h2c']);
    assert.notEqual(r.code, 0, r.out);
    assert.match(r.out, /no application protocol|SSL alert number 120/, r.out);
    assert.doesNotMatch(r.out, /HTTP\/1\.1 200/);
  });

  it('no ALPN at all still works', async () => {
    const r = await sClient(srv, []);
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /No ALPN negotiated/);
    assert.match(r.out, /HTTP\/1\.1 200 OK/);
  });

  it('node:tls agrees: ALPN, protocol bounds', async () => {
    const c = await connect(srv, { ALPNProtocols: ['h2', 'http/1.1'] });
    assert.equal(c.socket.alpnProtocol, 'h2');
    assert.equal(c.socket.getProtocol(), 'TLSv1.3');
    c.destroy();
    const c11 = await connect(srv, { ALPNProtocols: ['http/1.1'] });
    assert.equal(c11.socket.alpnProtocol, 'http/1.1');
    c11.destroy();
    const c12 = await connect(srv, { maxVersion: 'TLSv1.2' });
    assert.equal(c12.socket.getProtocol(), 'TLSv1.2');
    c12.destroy();
    await assert.rejects(connect(srv, { ALPNProtocols: ['spdy/3'] }), /no application protocol|ERR_SSL_TLSV1_ALERT_NO_APPLICATION_PROTOCOL/i);
    await assert.rejects(connect(srv, { minVersion: 'TLSv1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT@SECLEVEL=0' }),
      /protocol version|ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION/i);
  });

  for (const [flag, proto] of [['-tls1_3', 'TLSv1.3'], ['-tls1_2', 'TLSv1.2']]) {
    it(`session resumption with a ticket (${proto})`, async () => {
      const sess = path.join(tmp, `sess-${proto}.pem`);
      const m0 = await metrics(srv);
      const first = await sClient(srv, [flag, '-sess_out', sess]);
      assert.equal(first.code, 0, first.out);
      assert.match(first.out, new RegExp(`New, ${proto.replace('.', '\\.')}`));
      assert.match(first.out, /TLS session ticket:/, 'a ticket was issued');
      assert.match(first.out, /HTTP\/1\.1 200 OK/);
      let reused = 0;
      for (let i = 0; i < 4; i++) { // with two loops, connections land on either
        const again = await sClient(srv, [flag, '-sess_in', sess]);
        assert.equal(again.code, 0, again.out);
        assert.match(again.out, new RegExp(`Reused, ${proto.replace('.', '\\.')}`), `resumption ${i}:\n${again.out}`);
        assert.match(again.out, /HTTP\/1\.1 200 OK/, 'a resumed session serves requests');
        reused++;
      }
      const m1 = await metrics(srv);
      assert.ok(m1.get('switchboard_tls_resumed_total') - m0.get('switchboard_tls_resumed_total') >= reused,
        'resumptions counted in switchboard_tls_resumed_total');
    });
  }

  it('node:tls resumes with a session from an earlier connection', async () => {
    const c1 = await connect(srv, { maxVersion: 'TLSv1.3' });
    const session = await new Promise((resolve) => {
      c1.socket.once('session', resolve);
      c1.write('GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n').catch(() => {});
    });
    await c1.readResponse();
    c1.destroy();
    const c2 = await connect(srv, { session });
    try {
      assert.equal(c2.socket.isSessionReused(), true);
      await c2.write('GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n');
      assert.equal((await c2.readResponse()).status, 200);
    } finally {
      c2.destroy();
    }
  });

  it('curl --tlsv1.2 --tls-max 1.2 works, and so does TLS 1.3', async () => {
    const r = await run('curl', ['-sS', '-v', '--cacert', srv.caPath, '--tlsv1.2', '--tls-max', '1.2', `${srv.url}/healthz`]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, '{"status":"ok"}');
    assert.match(r.stderr, /SSL connection using TLSv1\.2/);
    assert.match(r.stderr, /ALPN: server accepted h2/);
    const r13 = await run('curl', ['-sS', '-v', '--cacert', srv.caPath, '--tlsv1.3', `${srv.url}/healthz`]);
    assert.equal(r13.code, 0, r13.stderr);
    assert.match(r13.stderr, /SSL connection using TLSv1\.3/);
    assert.equal(r13.stdout, '{"status":"ok"}');
  });

  it('the dev certificate is valid for the name localhost too (SNI)', async () => {
    const r = await run('curl', ['-sS', '--cacert', srv.caPath, '--resolve', `localhost:${srv.port}:127.0.0.1`,
      `https://localhost:${srv.port}/healthz`]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, '{"status":"ok"}');
  });

  it('curl --http2 gets HTTP/2, curl --http1.1 HTTP/1.1', async () => {
    const r = await run('curl', ['-sS', '-i', '--http2', '--cacert', srv.caPath, `${srv.url}/healthz`]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^HTTP\/2 200/);
    const r1 = await run('curl', ['-sS', '-i', '--http1.1', '--cacert', srv.caPath, `${srv.url}/healthz`]);
    assert.match(r1.stdout, /^HTTP\/1\.1 200/);
  });

  // s_client reads "R" (renegotiate) and "K" (key update) on a line of its own as commands
  // when it is not given -ign_eof; the sleeps keep its stdin open meanwhile.
  const scriptedSClient = (flag, command) => run('bash', ['-c',
    `(printf 'GET /healthz HTTP/1.1\\r\\nHost: t\\r\\n\\r\\n'; sleep 0.3; printf '${command}\\n'; sleep 0.3; ` +
    `printf 'GET /readyz HTTP/1.1\\r\\nHost: t\\r\\nConnection: close\\r\\n\\r\\n'; sleep 0.5) | ` +
    `openssl s_client -connect 127.0.0.1:${srv.port} -CAfile ${srv.caPath} ${flag} 2>&1`]);

  it('TLS 1.2 renegotiation requested by the client is refused', async () => {
    const r = await scriptedSClient('-tls1_2', 'R');
    assert.match(r.stdout, /RENEGOTIATING/, 'the client tried');
    assert.match(r.stdout, /no renegotiation/, r.stdout);
    assert.match(r.stdout, /\{"status":"ok"\}/, 'the request before it was served');
    assert.doesNotMatch(r.stdout, /\{"status":"ready"\}/);
    assert.equal((await exchange(srv, REQ)).responses[0].status, 200, 'server fine afterwards');
  });

  it('TLS 1.3 key update keeps the connection working', async () => {
    const r = await scriptedSClient('-tls1_3', 'K');
    assert.match(r.stdout, /KEYUPDATE/);
    assert.match(r.stdout, /\{"status":"ok"\}/);
    assert.match(r.stdout, /\{"status":"ready"\}/, `the request after the key update was served:\n${r.stdout}`);
  });

  it('garbage instead of a ClientHello is dropped without disturbing the server', async () => {
    const net = await import('node:net');
    const s = net.connect({ host: '127.0.0.1', port: srv.port });
    await new Promise((res, rej) => {
      s.once('connect', res);
      s.once('error', rej);
    });
    s.on('error', () => {});
    s.write('GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n');
    const closed = await new Promise((res) => {
      const t = setTimeout(() => res(false), 3000);
      s.once('close', () => {
        clearTimeout(t);
        res(true);
      });
    });
    s.destroy();
    assert.ok(closed, 'a plaintext request on the TLS port is closed');
    const r = await exchange(srv, REQ);
    assert.equal(r.responses[0].status, 200);
  });
});

describe('TLS without session tickets', () => {
  let srv;
  let tmp;
  before(async () => {
    srv = await startServer({ workers: 1, args: ['--tls.session-tickets=false'] });
    tmp = await tempDir('itest-switchboard-tls-');
  });
  after(async () => {
    await srv?.cleanup();
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  for (const [flag, proto] of [['-tls1_3', 'TLSv1.3'], ['-tls1_2', 'TLSv1.2']]) {
    it(`tls.session_tickets=false: no resumption (${proto})`, async () => {
      const sess = path.join(tmp, `sess-${proto}.pem`);
      const first = await sClient(srv, [flag, '-sess_out', sess]);
      assert.equal(first.code, 0, first.out);
      assert.match(first.out, /HTTP\/1\.1 200 OK/);
      assert.doesNotMatch(first.out, /TLS session ticket:/, 'no ticket issued');
      if (!fs.existsSync(sess)) return; // s_client got nothing it could resume with
      const again = await sClient(srv, [flag, '-sess_in', sess]);
      assert.match(again.out, /HTTP\/1\.1 200 OK/, again.out);
      assert.match(again.out, new RegExp(`New, ${proto.replace('.', '\\.')}`), again.out);
      assert.doesNotMatch(again.out, /Reused,/, again.out);
    });
  }
});
