// OAuth 2.0 client credentials (RFC 6749 section 4.4) end to end: openid-client discovers the
// server from its RFC 8414 metadata and runs the grant; jose verifies the RFC 9068 access
// token against the JWKS; the token then calls the API. Then the letter of the RFCs: every
// section 5.2 error, the exact section 5.1 success, section 2.3.1 encoding, introspection
// (RFC 7662), revocation (RFC 7009) on every loop and across a restart, client deletion,
// project isolation, the audit log, Idempotency-Key left out of /oauth, and key rotation.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import * as jose from 'jose';
import * as oidc from 'openid-client';

import { apiClient } from './lib/api.mjs';
import { request } from './lib/client.mjs';
import { basic, caFetch, decodeJwt, getToken, makeClient, oauthPost } from './lib/oauth.mjs';
import { sleep, startServer } from './lib/server.mjs';

const ADMIN = 'oauth-admin-key-0123456789abcdefghijklmnop';

describe('OAuth 2.0 client credentials', () => {
  let srv;
  let api;
  before(async () => {
    srv = await startServer({
      workers: 2,
      env: { SWITCHBOARD_ADMIN_KEY: ADMIN },
      args: ['--oauth.requests-per-second', '1000', '--oauth.burst', '1000'],
    });
    api = apiClient(srv, { https: true, key: ADMIN });
  });
  after(async () => {
    await srv?.stop();
  });

  it('openid-client discovers the metadata, gets a token, and the token calls the API', async () => {
    const c = await makeClient(api, { scopes: ['rooms:read', 'rooms:write'] });
    assert.match(c.client_secret, /^sbcs_[A-Za-z0-9_-]{43}$/);
    const fetchCa = caFetch(srv.caPath);
    const config = await oidc.discovery(new URL(srv.url), c.client_id, undefined,
      oidc.ClientSecretBasic(c.client_secret), { [oidc.customFetch]: fetchCa, algorithm: 'oauth2' });
    const meta = config.serverMetadata();
    assert.equal(meta.issuer, srv.url);
    assert.equal(meta.token_endpoint, `${srv.url}/oauth/token`);
    assert.equal(meta.jwks_uri, `${srv.url}/.well-known/jwks.json`);
    assert.equal(meta.tls_client_certificate_bound_access_tokens, true);
    assert.deepEqual(meta.grant_types_supported, ['client_credentials']);
    assert.deepEqual(meta.token_endpoint_auth_methods_supported,
      ['client_secret_basic', 'client_secret_post', 'tls_client_auth']);
    config[oidc.customFetch] = fetchCa;
    const tokens = await oidc.clientCredentialsGrant(config, { scope: 'rooms:write' });
    assert.equal(tokens.token_type, 'bearer'); // openid-client lower-cases it
    assert.equal(tokens.scope, 'rooms:write');
    assert.ok(tokens.expires_in > 0 && tokens.expires_in <= 900);

    // jose verifies it against the published JWKS as an RFC 9068 access token.
    const jwks = (await request(srv, '/.well-known/jwks.json')).json();
    const { payload, protectedHeader } = await jose.jwtVerify(tokens.access_token, jose.createLocalJWKSet(jwks), {
      issuer: srv.url, audience: srv.url, typ: 'at+jwt', algorithms: ['ES256'],
    });
    assert.equal(protectedHeader.alg, 'ES256');
    assert.ok(jwks.keys.some((k) => k.kid === protectedHeader.kid));
    assert.equal(payload.sub, c.client_id);
    assert.equal(payload.client_id, c.client_id);
    assert.equal(payload.scope, 'rooms:write');
    assert.match(payload.jti, /^at_/);
    assert.equal(payload.exp - payload.iat, 600);
    assert.equal(payload.cnf, undefined, 'no certificate, no binding');

    const res = await oidc.fetchProtectedResource(config, tokens.access_token,
      new URL(`${srv.url}/v1/rooms`), 'POST', JSON.stringify({ name: 'oauth-room' }),
      new Headers({ 'content-type': 'application/json' }));
    assert.equal(res.status, 201);
    // Scopes are enforced: the token was narrowed to rooms:write.
    const read = await api('GET', '/v1/rooms/oauth-room', { key: tokens.access_token });
    assert.equal(read.status, 403);
    assert.match(read.json().detail, /rooms:read/);
  });

  it('answers the exact section 5.1 success, with client_secret_post too', async () => {
    const c = await makeClient(api, { scopes: ['rooms:read'], token_endpoint_auth_method: 'client_secret_post' });
    const r = await oauthPost(srv, '/oauth/token', {
      form: { grant_type: 'client_credentials', client_id: c.client_id, client_secret: c.client_secret },
    });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.headers['cache-control'], 'no-store');
    assert.equal(r.headers.pragma, 'no-cache');
    assert.match(r.headers['content-type'], /^application\/json/);
    const body = r.json();
    assert.deepEqual(Object.keys(body).sort(), ['access_token', 'expires_in', 'scope', 'token_type']);
    assert.equal(body.token_type, 'Bearer');
    assert.equal(body.expires_in, 600);
    assert.equal(body.scope, 'rooms:read');
    assert.equal(decodeJwt(body.access_token).header.typ, 'at+jwt');
    assert.match(decodeJwt(body.access_token).payload.client_id, /^cli_[0-9a-z]{20}$/);
    assert.equal((await api('GET', '/v1/rooms', { key: body.access_token })).status, 200);
  });

  it('decodes client_secret_basic as RFC 6749 section 2.3.1 asks (form-urlencoded parts)', async () => {
    const c = await makeClient(api, { scopes: ['rooms:read'] });
    // Encode characters that need no encoding: a server that skips the decoding fails.
    const id = c.client_id.replace('_', '%5F');
    const secret = c.client_secret.replace('_', '%5F');
    const auth = `Basic ${Buffer.from(`${id}:${secret}`).toString('base64')}`;
    const r = await oauthPost(srv, '/oauth/token', { form: { grant_type: 'client_credentials' }, auth });
    assert.equal(r.status, 200, r.text);
  });

  it('produces every RFC 6749 section 5.2 error', async () => {
    const c = await makeClient(api, { scopes: ['rooms:read'] });
    const auth = basic(c.client_id, c.client_secret);
    const cc = { grant_type: 'client_credentials' };
    const expectError = (r, status, error) => {
      assert.equal(r.status, status, r.text);
      assert.equal(r.json().error, error, r.text);
      assert.equal(typeof r.json().error_description, 'string');
      assert.equal(r.headers['cache-control'], 'no-store');
    };
    // invalid_request: missing grant_type, a repeated parameter, the wrong media type, two
    // authentication methods at once.
    expectError(await oauthPost(srv, '/oauth/token', { form: {}, auth }), 400, 'invalid_request');
    expectError(await oauthPost(srv, '/oauth/token', {
      form: 'grant_type=client_credentials&scope=rooms%3Aread&scope=rooms%3Aread', auth,
    }), 400, 'invalid_request');
    expectError(await oauthPost(srv, '/oauth/token', {
      form: JSON.stringify(cc), auth, contentType: 'application/json',
    }), 400, 'invalid_request');
    expectError(await oauthPost(srv, '/oauth/token', {
      form: { ...cc, client_secret: c.client_secret }, auth,
    }), 400, 'invalid_request');
    expectError(await oauthPost(srv, '/oauth/token', { form: { ...cc, pad: 'x'.repeat(20000) }, auth }), 400, 'invalid_request');
    expectError(await oauthPost(srv, '/oauth/token', { form: 'grant_type=client_credentials&scope=%zz', auth }), 400, 'invalid_request');
    // invalid_client: over Basic it is 401 with WWW-Authenticate: Basic.
    const bad = await oauthPost(srv, '/oauth/token', { form: cc, auth: basic(c.client_id, 'wrong') });
    expectError(bad, 401, 'invalid_client');
    assert.match(bad.headers['www-authenticate'], /^Basic realm="switchboard"$/);
    const none = await oauthPost(srv, '/oauth/token', { form: cc });
    expectError(none, 401, 'invalid_client');
    expectError(await oauthPost(srv, '/oauth/token', {
      form: { ...cc, client_id: 'cli_nosuchclient00000000', client_secret: 'x' },
    }), 400, 'invalid_client');
    // The registered method is the only one: a Basic client cannot use client_secret_post.
    expectError(await oauthPost(srv, '/oauth/token', {
      form: { ...cc, client_id: c.client_id, client_secret: c.client_secret },
    }), 400, 'invalid_client');
    // invalid_grant: no refresh token is ever issued, so none is valid.
    expectError(await oauthPost(srv, '/oauth/token', {
      form: { grant_type: 'refresh_token', refresh_token: 'abc' }, auth,
    }), 400, 'invalid_grant');
    // unsupported_grant_type.
    expectError(await oauthPost(srv, '/oauth/token', {
      form: { grant_type: 'password', username: 'u', password: 'p' }, auth,
    }), 400, 'unsupported_grant_type');
    // unauthorized_client: a client registered without the grant (introspection only).
    const rs = await makeClient(api, { scopes: ['rooms:read'], grant_types: [] });
    expectError(await oauthPost(srv, '/oauth/token', {
      form: cc, auth: basic(rs.client_id, rs.client_secret),
    }), 400, 'unauthorized_client');
    // invalid_scope: a scope the client lacks, and one that does not exist.
    expectError(await oauthPost(srv, '/oauth/token', { form: { ...cc, scope: 'rooms:write' }, auth }), 400, 'invalid_scope');
    expectError(await oauthPost(srv, '/oauth/token', { form: { ...cc, scope: 'rooms:read admin' }, auth }), 400, 'invalid_scope');
    // And GET is not the token endpoint.
    assert.equal((await request(srv, '/oauth/token')).status, 405);
  });

  it('introspects (RFC 7662): active with its claims, and inactive for anything else', async () => {
    const c = await makeClient(api, { scopes: ['rooms:read', 'sessions:read'] });
    const rs = await makeClient(api, { scopes: ['rooms:read'], grant_types: [] });
    const rsAuth = basic(rs.client_id, rs.client_secret);
    const tok = await getToken(srv, c, { scope: 'sessions:read' });
    const r = await oauthPost(srv, '/oauth/introspect', { form: { token: tok }, auth: rsAuth });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.headers['cache-control'], 'no-store');
    const j = r.json();
    assert.equal(j.active, true);
    assert.equal(j.client_id, c.client_id);
    assert.equal(j.scope, 'sessions:read');
    assert.equal(j.token_type, 'Bearer');
    assert.equal(j.iss, srv.url);
    assert.equal(j.aud, srv.url);
    assert.equal(j.project_id, 'prj_default');
    assert.ok(j.exp > j.iat);
    for (const t of ['garbage', `${tok}x`, ADMIN, tok.split('.').slice(0, 2).join('.') + '.']) {
      const x = await oauthPost(srv, '/oauth/introspect', { form: { token: t }, auth: rsAuth });
      assert.equal(x.status, 200);
      assert.deepEqual(x.json(), { active: false });
    }
    // Client authentication is required.
    const anon = await oauthPost(srv, '/oauth/introspect', { form: { token: tok } });
    assert.equal(anon.status, 401);
    assert.equal(anon.json().error, 'invalid_client');
    assert.equal((await oauthPost(srv, '/oauth/introspect', { form: {}, auth: rsAuth })).json().error, 'invalid_request');
  });

  it('isolates projects: clients, their tokens and introspection', async () => {
    const p = await api('POST', '/v1/projects', { json: { name: 'other' } });
    assert.equal(p.status, 201);
    const other = api.with(p.json().admin_key);
    const oc = await makeClient(other, { scopes: ['rooms:read'] });
    const mine = await makeClient(api, { scopes: ['rooms:read'] });
    const list = (await api('GET', '/v1/oauth-clients?limit=200')).json().data.map((x) => x.client_id);
    assert.ok(list.includes(mine.client_id));
    assert.ok(!list.includes(oc.client_id));
    assert.equal((await api('DELETE', `/v1/oauth-clients/${oc.client_id}`)).status, 404);
    const otok = await getToken(srv, oc);
    // The other project's token sees the other project's rooms only.
    await api('POST', '/v1/rooms', { json: { name: 'only-in-default' } });
    assert.equal((await api('GET', '/v1/rooms/only-in-default', { key: otok })).status, 404);
    // Another project's client learns nothing about it.
    const x = await oauthPost(srv, '/oauth/introspect', { form: { token: otok }, auth: basic(mine.client_id, mine.client_secret) });
    assert.deepEqual(x.json(), { active: false });
  });

  it('lists clients without secrets, refuses scope escalation, and audits', async () => {
    const made = await api('POST', '/v1/keys', { json: { name: 'limited', scopes: ['keys:write', 'keys:read', 'rooms:read'] } });
    const limited = api.with(made.json().secret);
    const esc = await limited('POST', '/v1/oauth-clients', { json: { name: 'x', scopes: ['rooms:write'], token_endpoint_auth_method: 'client_secret_post' } });
    assert.equal(esc.status, 403);
    const c = await makeClient(limited, { scopes: ['rooms:read'], allowed_ips: ['127.0.0.1'] });
    const got = (await api('GET', '/v1/oauth-clients?limit=200')).json().data.find((x) => x.client_id === c.client_id);
    assert.ok(got);
    assert.equal(got.client_secret, undefined);
    assert.deepEqual(got.allowed_ips, ['127.0.0.1']);
    assert.deepEqual(got.grant_types, ['client_credentials']);
    for (const bad of [
      { scopes: ['rooms:read'], token_endpoint_auth_method: 'private_key_jwt' },
      { scopes: ['rooms:read'], token_endpoint_auth_method: 'tls_client_auth' },
      { scopes: ['rooms:read'], tls_client_certificate_sha256: 'ab'.repeat(32) },
      { scopes: ['nope'] },
      { scopes: ['rooms:read'], allowed_ips: ['10.0.0.1/8'] },
      { scopes: ['rooms:read', 'projects:write'] },
      { scopes: ['rooms:read'], token_endpoint_auth_method: undefined },
    ]) {
      const r = await api('POST', '/v1/oauth-clients', {
        json: { name: 'bad', token_endpoint_auth_method: 'client_secret_basic', ...bad },
      });
      assert.equal(r.status, 400, JSON.stringify(bad));
    }
    assert.equal((await api('DELETE', `/v1/oauth-clients/${c.client_id}`)).status, 204);
    const audit = (await api('GET', '/v1/audit?limit=200')).json().data;
    const actions = audit.filter((a) => a.target_id === c.client_id).map((a) => a.action);
    assert.deepEqual(actions, ['oauth_client.create', 'oauth_client.delete']);
  });

  it('revokes (RFC 7009) at once on every loop; a deleted client takes its tokens along', async () => {
    const c = await makeClient(api, { scopes: ['rooms:read'] });
    const auth = basic(c.client_id, c.client_secret);
    const tok = await getToken(srv, c);
    // Warm the verified-token cache of both loops (new connection each time).
    for (let i = 0; i < 8; i++) assert.equal((await api('GET', '/v1/rooms', { key: tok })).status, 200);
    // Another client of the project cannot revoke it: 200 as for an unknown token, and
    // the token still works.
    const c2 = await makeClient(api, { scopes: ['rooms:read'] });
    const r2 = await oauthPost(srv, '/oauth/revoke', { form: { token: tok }, auth: basic(c2.client_id, c2.client_secret) });
    assert.equal(r2.status, 200);
    assert.equal((await api('GET', '/v1/rooms', { key: tok })).status, 200);
    const r = await oauthPost(srv, '/oauth/revoke', { form: { token: tok, token_type_hint: 'access_token' }, auth });
    assert.equal(r.status, 200);
    for (let i = 0; i < 8; i++) {
      const x = await api('GET', '/v1/rooms', { key: tok });
      assert.equal(x.status, 401);
      assert.match(x.json().detail, /revoked/);
    }
    const jti = decodeJwt(tok).payload.jti;
    const audit = (await api('GET', '/v1/audit?limit=200')).json().data.filter((a) => a.target_id === jti);
    assert.deepEqual(audit.map((a) => [a.action, a.credential_id, a.target_type]), [['oauth_token.revoke', c.client_id, 'oauth_token']]);
    // Revoking again changes nothing and is not audited twice.
    assert.equal((await oauthPost(srv, '/oauth/revoke', { form: { token: tok }, auth })).status, 200);
    // Unknown tokens revoke fine (section 2.2).
    assert.equal((await oauthPost(srv, '/oauth/revoke', { form: { token: 'nonsense' }, auth })).status, 200);
    const t2 = await getToken(srv, c);
    assert.equal((await api('GET', '/v1/rooms', { key: t2 })).status, 200);
    assert.equal((await api('DELETE', `/v1/oauth-clients/${c.client_id}`)).status, 204);
    const gone = await api('GET', '/v1/rooms', { key: t2 });
    assert.equal(gone.status, 401);
    assert.match(gone.headers['www-authenticate'], /^Bearer /);
    const tokAgain = await oauthPost(srv, '/oauth/token', { form: { grant_type: 'client_credentials' }, auth });
    assert.equal(tokAgain.json().error, 'invalid_client');
  });

  it('leaves /oauth out of Idempotency-Key: each token request gets a new token', async () => {
    const c = await makeClient(api, { scopes: ['rooms:read'] });
    const auth = basic(c.client_id, c.client_secret);
    const headers = { 'idempotency-key': 'same-key-1' };
    const a = await oauthPost(srv, '/oauth/token', { form: { grant_type: 'client_credentials' }, auth, headers });
    const b = await oauthPost(srv, '/oauth/token', { form: { grant_type: 'client_credentials' }, auth, headers });
    assert.equal(a.status, 200);
    assert.equal(b.status, 200);
    assert.notEqual(a.json().access_token, b.json().access_token);
    assert.equal(b.headers['idempotent-replayed'], undefined);
  });
});

describe('OAuth signing keys', () => {
  it('rotate: the old key stays in the JWKS and its tokens keep working; revocations survive a restart', async () => {
    const issuer = 'https://switchboard.test';
    const args = ['--oauth.issuer', issuer, '--oauth.signing-key-rotation', '2s'];
    const env = { SWITCHBOARD_ADMIN_KEY: ADMIN };
    let srv = await startServer({ env, args });
    const dataDir = srv.dataDir;
    srv.ownDataDir = false;
    let api = apiClient(srv, { https: true, key: ADMIN });
    const meta = (await request(srv, '/.well-known/oauth-authorization-server')).json();
    assert.equal(meta.issuer, issuer);
    assert.equal(meta.token_endpoint, `${issuer}/oauth/token`);
    const c = await makeClient(api, { scopes: ['rooms:read'] });
    const old = await getToken(srv, c);
    const revoked = await getToken(srv, c);
    assert.equal((await oauthPost(srv, '/oauth/revoke', { form: { token: revoked }, auth: basic(c.client_id, c.client_secret) })).status, 200);
    const jwks1 = (await request(srv, '/.well-known/jwks.json')).json();
    assert.equal(jwks1.keys.length, 1);
    await srv.stop();
    await sleep(2100);
    srv = await startServer({ env, args, dataDir });
    srv.ownDataDir = true;
    try {
      api = apiClient(srv, { https: true, key: ADMIN });
      const jwks2 = (await request(srv, '/.well-known/jwks.json')).json();
      assert.equal(jwks2.keys.length, 2);
      assert.ok(jwks2.keys.some((k) => k.kid === jwks1.keys[0].kid));
      const fresh = await getToken(srv, c);
      assert.notEqual(decodeJwt(fresh).header.kid, decodeJwt(old).header.kid);
      assert.equal(decodeJwt(fresh).header.kid, jwks2.keys.find((k) => k.kid !== jwks1.keys[0].kid).kid);
      assert.equal((await api('GET', '/v1/rooms', { key: old })).status, 200);
      assert.equal((await api('GET', '/v1/rooms', { key: fresh })).status, 200);
      assert.equal((await api('GET', '/v1/rooms', { key: revoked })).status, 401);
      await jose.jwtVerify(old, jose.createLocalJWKSet(jwks2), { issuer, audience: issuer, typ: 'at+jwt' });
    } finally {
      await srv.stop();
    }
  });

  it('signs with EdDSA when configured; switching back to ES256 rotates and keeps the old key verifying', async () => {
    const env = { SWITCHBOARD_ADMIN_KEY: ADMIN };
    let srv = await startServer({ env, args: ['--oauth.signing-alg', 'EdDSA'] });
    const dataDir = srv.dataDir;
    srv.ownDataDir = false;
    let api = apiClient(srv, { https: true, key: ADMIN });
    const c = await makeClient(api, { scopes: ['rooms:read'] });
    const ed = await getToken(srv, c);
    assert.equal(decodeJwt(ed).header.alg, 'EdDSA');
    const jwks1 = (await request(srv, '/.well-known/jwks.json')).json();
    assert.deepEqual(jwks1.keys.map((k) => [k.kty, k.crv, k.alg]), [['OKP', 'Ed25519', 'EdDSA']]);
    await jose.jwtVerify(ed, jose.createLocalJWKSet(jwks1), { issuer: srv.url, audience: srv.url, typ: 'at+jwt' });
    assert.equal((await api('GET', '/v1/rooms', { key: ed })).status, 200);
    // A participant token is signed by the same key.
    const pt = await api('POST', '/v1/tokens', { json: { room: 'r', identity: 'a' } });
    assert.equal(decodeJwt(pt.json().token).header.alg, 'EdDSA');
    await srv.stop();
    srv = await startServer({ env, dataDir, args: ['--oauth.issuer', srv.url] });
    srv.ownDataDir = true;
    try {
      api = apiClient(srv, { https: true, key: ADMIN });
      const jwks2 = (await request(srv, '/.well-known/jwks.json')).json();
      assert.deepEqual(jwks2.keys.map((k) => k.alg).sort(), ['ES256', 'EdDSA']);
      const es = await getToken(srv, c);
      assert.equal(decodeJwt(es).header.alg, 'ES256');
      assert.equal((await api('GET', '/v1/rooms', { key: ed })).status, 200, 'the EdDSA token still verifies');
      assert.equal((await api('GET', '/v1/rooms', { key: es })).status, 200);
    } finally {
      await srv.stop();
    }
  });
});
