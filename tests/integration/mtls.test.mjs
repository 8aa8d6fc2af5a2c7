// Mutual TLS (RFC 8705) with certificates this test makes: tls_client_auth clients,
// certificate-bound access tokens (cnf.x5t#S256) refused over another certificate or none,
// API keys bound to a certificate, tls.client_auth optional and require, driven by curl,
// openssl s_client and node.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { apiClient } from './lib/api.mjs';
import { makeCaAndServerCert, replaceFile } from './lib/certs.mjs';
import { request } from './lib/client.mjs';
import { basic, decodeJwt, makeClient, makeClientCert, oauthPost } from './lib/oauth.mjs';
import { run, startServer, tempDir } from './lib/server.mjs';

const ADMIN = 'mtls-admin-key-0123456789abcdefghijklmnopq';

async function curl(srv, p, { cert, args = [] } = {}) {
  const a = ['-sS', '--cacert', srv.caPath, '-o', '-', '-w', '\n%{http_code}', ...args];
  if (cert) a.push('--cert', cert.cert, '--key', cert.key);
  const r = await run('curl', [...a, `${srv.url}${p}`]);
  const nl = r.stdout.lastIndexOf('\n');
  return { code: r.code, status: Number(r.stdout.slice(nl + 1)), body: r.stdout.slice(0, nl), stderr: r.stderr };
}

describe('mutual TLS, optional client certificates', () => {
  let srv;
  let api;
  let dir;
  let a;
  let b;
  let stranger;
  const tls = (c) => (c ? { cert: fs.readFileSync(c.cert), key: fs.readFileSync(c.key) } : {});

  before(async () => {
    dir = await tempDir('itest-mtls-');
    const ca = await makeCaAndServerCert(dir, 'clients');
    const other = await makeCaAndServerCert(dir, 'other');
    a = await makeClientCert(dir, ca, 'alice');
    b = await makeClientCert(dir, ca, 'bob');
    stranger = await makeClientCert(dir, other, 'mallory');
    srv = await startServer({
      workers: 2,
      env: { SWITCHBOARD_ADMIN_KEY: ADMIN },
      args: ['--tls.client-ca', ca.ca, '--tls.client-auth', 'optional', '--oauth.burst', '1000'],
    });
    api = apiClient(srv, { https: true, key: ADMIN });
  });
  after(async () => {
    await srv?.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('tls_client_auth: the certificate authenticates the client and binds its token', async () => {
    const c = await makeClient(api, {
      scopes: ['rooms:read'], token_endpoint_auth_method: 'tls_client_auth',
      tls_client_certificate_sha256: a.hex.toUpperCase().match(/../g).join(':'), // openssl's form
    });
    assert.equal(c.client_secret, undefined);
    assert.equal(c.tls_client_certificate_sha256, a.hex);
    // curl presents alice's certificate.
    const r = await curl(srv, '/oauth/token', {
      cert: a, args: ['-d', `grant_type=client_credentials&client_id=${c.client_id}`],
    });
    assert.equal(r.status, 200, r.body + r.stderr);
    const tok = JSON.parse(r.body).access_token;
    assert.deepEqual(decodeJwt(tok).payload.cnf, { 'x5t#S256': a.x5t });

    // Over alice's certificate: accepted. Over bob's, or none: refused (RFC 8705 section 3).
    const withA = await curl(srv, '/v1/rooms', { cert: a, args: ['-H', `Authorization: Bearer ${tok}`] });
    assert.equal(withA.status, 200, withA.body);
    const withB = await curl(srv, '/v1/rooms', { cert: b, args: ['-H', `Authorization: Bearer ${tok}`] });
    assert.equal(withB.status, 401, withB.body);
    assert.match(JSON.parse(withB.body).detail, /client certificate/);
    const without = await curl(srv, '/v1/rooms', { args: ['-H', `Authorization: Bearer ${tok}`] });
    assert.equal(without.status, 401);
    // The same with node's TLS stack, and again after the token sits in the loops' caches.
    for (let i = 0; i < 4; i++) {
      assert.equal((await request(srv, '/v1/rooms', { headers: { authorization: `Bearer ${tok}` }, ...tls(a) })).status, 200);
      assert.equal((await request(srv, '/v1/rooms', { headers: { authorization: `Bearer ${tok}` }, ...tls(b) })).status, 401);
      assert.equal((await request(srv, '/v1/rooms', { headers: { authorization: `Bearer ${tok}` } })).status, 401);
    }

    // Bob's certificate does not authenticate alice's client; neither does no certificate.
    for (const cert of [b, null]) {
      const x = await oauthPost(srv, '/oauth/token', {
        form: { grant_type: 'client_credentials', client_id: c.client_id }, tls: tls(cert),
      });
      assert.equal(x.status, 400, x.text);
      assert.equal(x.json().error, 'invalid_client');
    }
    // Introspection shows the binding.
    const rs = await makeClient(api, { scopes: ['rooms:read'], grant_types: [] });
    const i = await oauthPost(srv, '/oauth/introspect', { form: { token: tok }, auth: basic(rs.client_id, rs.client_secret) });
    assert.deepEqual(i.json().cnf, { 'x5t#S256': a.x5t });
  });

  it('a secret client that also presents a certificate gets a bound token', async () => {
    const c = await makeClient(api, { scopes: ['rooms:read'] });
    const r = await oauthPost(srv, '/oauth/token', {
      form: { grant_type: 'client_credentials' }, auth: basic(c.client_id, c.client_secret), tls: tls(b),
    });
    assert.equal(r.status, 200, r.text);
    const tok = r.json().access_token;
    assert.equal(decodeJwt(tok).payload.cnf['x5t#S256'], b.x5t);
    assert.equal((await request(srv, '/v1/rooms', { headers: { authorization: `Bearer ${tok}` }, ...tls(b) })).status, 200);
    assert.equal((await request(srv, '/v1/rooms', { headers: { authorization: `Bearer ${tok}` }, ...tls(a) })).status, 401);
    // Without a certificate the token is a plain bearer token.
    const plain = await getPlain(c);
    assert.equal(decodeJwt(plain).payload.cnf, undefined);
    assert.equal((await request(srv, '/v1/rooms', { headers: { authorization: `Bearer ${plain}` }, ...tls(a) })).status, 200);
  });

  async function getPlain(c) {
    const r = await oauthPost(srv, '/oauth/token', { form: { grant_type: 'client_credentials' }, auth: basic(c.client_id, c.client_secret) });
    return r.json().access_token;
  }

  it('an API key bound to a certificate works only over it', async () => {
    const made = await api('POST', '/v1/keys', { json: { name: 'bound', scopes: ['rooms:read'], tls_client_certificate_sha256: a.hex } });
    assert.equal(made.status, 201, made.text);
    assert.equal(made.json().tls_client_certificate_sha256, a.hex);
    const auth = { authorization: `Bearer ${made.json().secret}` };
    assert.equal((await request(srv, '/v1/rooms', { headers: auth, ...tls(a) })).status, 200);
    assert.equal((await request(srv, '/v1/rooms', { headers: auth, ...tls(b) })).status, 401);
    assert.equal((await request(srv, '/v1/rooms', { headers: auth })).status, 401);
    const bad = await api('POST', '/v1/keys', { json: { name: 'x', scopes: ['rooms:read'], tls_client_certificate_sha256: 'zz' } });
    assert.equal(bad.status, 400);
  });

  it('a resumed TLS session keeps its client certificate, and with it the binding', async () => {
    const made = await api('POST', '/v1/keys', { json: { name: 'resume', scopes: ['rooms:read'], tls_client_certificate_sha256: a.hex } });
    const req = `GET /v1/rooms HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${made.json().secret}\r\nConnection: close\r\n\r\n`;
    const sess = path.join(dir, 'alice.sess');
    const base = ['s_client', '-connect', `127.0.0.1:${srv.port}`, '-CAfile', srv.caPath, '-ign_eof'];
    const first = await run('openssl', [...base, '-cert', a.cert, '-key', a.key, '-sess_out', sess], { input: req });
    assert.match(first.stdout, /^New, TLSv1\.3/m);
    assert.match(first.stdout, /HTTP\/1\.1 200/);
    // Resumed without presenting the certificate again: the session carries it.
    const resumed = await run('openssl', [...base, '-sess_in', sess], { input: req });
    assert.match(resumed.stdout, /^Reused, TLSv1\.3/m);
    assert.match(resumed.stdout, /HTTP\/1\.1 200/);
    // A fresh session without it is refused.
    const fresh = await run('openssl', base, { input: req });
    assert.match(fresh.stdout, /HTTP\/1\.1 401/);
  });

  it('a certificate from another CA fails the handshake (openssl s_client); none is fine', async () => {
    const base = ['s_client', '-connect', `127.0.0.1:${srv.port}`, '-CAfile', srv.caPath, '-brief'];
    const bad = await run('openssl', [...base, '-cert', stranger.cert, '-key', stranger.key],
      { input: 'GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' });
    assert.doesNotMatch(bad.stdout, /HTTP\/1\.1 200/);
    assert.match(bad.stderr + bad.stdout, /alert|error|unknown ca|certificate/i);
    const good = await run('openssl', [...base, '-cert', a.cert, '-key', a.key, '-ign_eof'],
      { input: 'GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' });
    assert.match(good.stdout, /HTTP\/1\.1 200/, good.stderr);
    const none = await run('openssl', [...base, '-ign_eof'],
      { input: 'GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' });
    assert.match(none.stdout, /HTTP\/1\.1 200/, none.stderr);
    const certReq = await curl(srv, '/healthz', { cert: stranger });
    assert.notEqual(certReq.code, 0, 'curl with an unknown CA certificate fails');
  });
});

describe('mutual TLS, required', () => {
  it('refuses a handshake without a client certificate, and checks tls.client_auth values', async () => {
    const dir = await tempDir('itest-mtls-req-');
    try {
      const ca = await makeCaAndServerCert(dir, 'clients');
      const a = await makeClientCert(dir, ca, 'alice');
      const srv = await startServer({ args: ['--tls.client-ca', ca.ca, '--tls.client-auth', 'require'] });
      try {
        const none = await curl(srv, '/healthz');
        assert.notEqual(none.code, 0, 'no certificate: handshake refused');
        const withA = await curl(srv, '/healthz', { cert: a });
        assert.equal(withA.status, 200, withA.stderr);
      } finally {
        await srv.stop();
      }
      const bin = (await import('./lib/server.mjs')).binPath();
      const check = await run(bin, ['--dev', '--data-dir', path.join(dir, 'd'), '--tls.client-auth', 'sometimes', '--check-config']);
      assert.notEqual(check.code, 0);
      assert.match(check.stderr + check.stdout, /tls.client_auth/);
      const noCa = await run(bin, ['--dev', '--data-dir', path.join(dir, 'd'), '--tls.client-auth', 'require', '--check-config']);
      assert.notEqual(noCa.code, 0);
      assert.match(noCa.stderr + noCa.stdout, /client_ca/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('mutual TLS, SIGHUP', () => {
  it('re-reads tls.client_ca: certificates of the new CA work, the old ones stop', async () => {
    const dir = await tempDir('itest-mtls-hup-');
    try {
      const ca1 = await makeCaAndServerCert(dir, 'one');
      const ca2 = await makeCaAndServerCert(dir, 'two');
      const a = await makeClientCert(dir, ca1, 'alice');
      const b = await makeClientCert(dir, ca2, 'bob');
      const caFile = path.join(dir, 'client-ca.pem');
      fs.copyFileSync(ca1.ca, caFile);
      const srv = await startServer({ args: ['--tls.client-ca', caFile, '--tls.client-auth', 'require'] });
      try {
        assert.equal((await curl(srv, '/healthz', { cert: a })).status, 200);
        assert.notEqual((await curl(srv, '/healthz', { cert: b })).code, 0);
        const sess = path.join(dir, 'a.sess');
        const base = ['s_client', '-connect', `127.0.0.1:${srv.port}`, '-CAfile', srv.caPath, '-ign_eof'];
        const input = 'GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n';
        const first = await run('openssl', [...base, '-cert', a.cert, '-key', a.key, '-sess_out', sess], { input });
        assert.match(first.stdout, /HTTP\/1\.1 200/);
        const again = await run('openssl', [...base, '-sess_in', sess], { input });
        assert.match(again.stdout, /^Reused,/m, 'resumes before the reload');
        replaceFile(caFile, { src: ca2.ca });
        const from = srv.logs().length;
        srv.signal('SIGHUP');
        await srv.waitForLog((l) => l.msg === 'reload complete', { from });
        assert.equal((await curl(srv, '/healthz', { cert: b })).status, 200);
        assert.notEqual((await curl(srv, '/healthz', { cert: a })).code, 0);
        // A session made under the old CA is not resumed: a full handshake checks again.
        const after = await run('openssl', [...base, '-sess_in', sess], { input });
        assert.doesNotMatch(after.stdout, /^Reused,/m);
        assert.doesNotMatch(after.stdout, /HTTP\/1\.1 200/);
      } finally {
        await srv.stop();
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
