// Guards around the API and the authorization server: the per-address limit on /oauth at its
// exact boundary (burst, refill, no drift at the configured rate), tokens limited per client
// (all of a client's tokens share one budget), the global allowlist (security.allowed_ips),
// per-key and per-client allowlists, IPv4-mapped IPv6 entries and addresses, and
// X-Forwarded-For trusted only from http.trusted_proxies (a spoofed header changes nothing).
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { apiClient } from './lib/api.mjs';
import { request } from './lib/client.mjs';
import { basic, getToken, makeClient, oauthPost } from './lib/oauth.mjs';
import { sleep, startServer } from './lib/server.mjs';

const ADMIN = 'guard-admin-key-0123456789abcdefghijklmnop';
const env = { SWITCHBOARD_ADMIN_KEY: ADMIN };

describe('rate limit on /oauth per client address', () => {
  let srv;
  let api;
  let auth;
  before(async () => {
    srv = await startServer({ workers: 2, env, args: ['--oauth.requests-per-second', '2', '--oauth.burst', '3'] });
    api = apiClient(srv, { https: true, key: ADMIN });
    const c = await makeClient(api, { scopes: ['rooms:read'] });
    auth = basic(c.client_id, c.client_secret);
  });
  after(async () => {
    await srv?.stop();
  });

  it('allows exactly the burst, then 429 + Retry-After; one request refills after 1/rate', async () => {
    const post = () => oauthPost(srv, '/oauth/token', { form: { grant_type: 'client_credentials' }, auth });
    const seen = [];
    for (let i = 0; i < 4; i++) seen.push(await post());
    assert.deepEqual(seen.map((r) => r.status), [200, 200, 200, 429]);
    assert.equal(seen[0].headers['ratelimit-policy'], '"default";q=3;w=2');
    assert.deepEqual(seen.slice(0, 3).map((r) => r.headers.ratelimit.match(/r=(\d+)/)[1]), ['2', '1', '0']);
    assert.equal(seen[3].headers['retry-after'], '1');
    // Failed client authentication counts as well: guessing secrets is what this stops.
    const guess = await oauthPost(srv, '/oauth/token', { form: { grant_type: 'client_credentials' }, auth: basic('client_x', 'guess') });
    assert.equal(guess.status, 429);
    await sleep(560); // one interval (500 ms) and a little
    assert.equal((await post()).status, 200);
    assert.equal((await post()).status, 429);
    // Introspection and revocation share the budget.
    assert.equal((await oauthPost(srv, '/oauth/introspect', { form: { token: 'x' }, auth })).status, 429);
  });
});

describe('no drift at the configured rate', () => {
  it('a client paced at exactly the rate is never refused; faster is', async () => {
    // Burst 5 (a tolerance of 200 ms) absorbs the scheduling jitter of a loaded test machine;
    // the exact arithmetic over 100,000 intervals is in tests/unit/test_ratelimit_shared.c.
    const srv = await startServer({ env, args: ['--oauth.requests-per-second', '20', '--oauth.burst', '5'] });
    try {
      const api = apiClient(srv, { https: true, key: ADMIN });
      const c = await makeClient(api, { scopes: ['rooms:read'] });
      const auth = basic(c.client_id, c.client_secret);
      const form = { token: 'unknown' };
      await sleep(300); // full burst
      const t0 = Date.now();
      const statuses = [];
      for (let i = 0; i < 40; i++) {
        const wait = t0 + i * 50 - Date.now(); // an absolute schedule: no accumulated lag
        if (wait > 0) await sleep(wait);
        statuses.push((await oauthPost(srv, '/oauth/introspect', { form, auth })).status);
      }
      assert.deepEqual(statuses, new Array(40).fill(200));
      const burst = await Promise.all([...Array(10).keys()].map(() => oauthPost(srv, '/oauth/introspect', { form, auth })));
      assert.ok(burst.some((r) => r.status === 429), burst.map((r) => r.status).join(','));
    } finally {
      await srv.stop();
    }
  });
});

describe('per-credential limits with access tokens', () => {
  it('every token of one client shares the client budget; another client has its own', async () => {
    const srv = await startServer({
      workers: 2, env,
      args: ['--ratelimit.requests-per-second', '1', '--ratelimit.burst', '3', '--oauth.burst', '100'],
    });
    try {
      const api = apiClient(srv, { https: true, key: ADMIN });
      const c1 = await makeClient(api, { scopes: ['rooms:read'] });
      const c2 = await makeClient(api, { scopes: ['rooms:read'] });
      const [t1, t2, u] = [await getToken(srv, c1), await getToken(srv, c1), await getToken(srv, c2)];
      const got = [];
      for (const t of [t1, t1, t2, t2]) got.push(await api('GET', '/v1/rooms', { key: t }));
      assert.deepEqual(got.map((r) => r.status), [200, 200, 200, 429]);
      assert.equal(got[0].headers['ratelimit-policy'], '"default";q=3;w=3');
      assert.equal(got[3].headers['retry-after'], '1');
      assert.equal((await api('GET', '/v1/rooms', { key: u })).status, 200);
    } finally {
      await srv.stop();
    }
  });
});

describe('allowlists', () => {
  it('security.allowed_ips refuses other addresses; a spoofed X-Forwarded-For from an untrusted peer changes nothing', async () => {
    const srv = await startServer({ env, args: ['--security.allowed-ips', '10.0.0.0/8, 2001:db8::/32'] });
    try {
      const api = apiClient(srv, { https: true, key: ADMIN });
      const r = await api('GET', '/v1/rooms');
      assert.equal(r.status, 403);
      assert.equal(r.json().type, 'urn:switchboard:problem:address-not-allowed');
      const spoof = await api('GET', '/v1/rooms', { headers: { 'x-forwarded-for': '10.1.2.3' } });
      assert.equal(spoof.status, 403);
      const tok = await oauthPost(srv, '/oauth/token', { form: { grant_type: 'client_credentials' }, headers: { 'x-forwarded-for': '10.1.2.3' } });
      assert.equal(tok.status, 403);
      // Health and discovery stay reachable.
      assert.equal((await request(srv, '/healthz')).status, 200);
      assert.equal((await request(srv, '/.well-known/jwks.json')).status, 200);
    } finally {
      await srv.stop();
    }
  });

  it('X-Forwarded-For from a trusted proxy names the client, IPv4-mapped IPv6 included', async () => {
    const srv = await startServer({
      env,
      args: ['--security.allowed-ips', '10.0.0.0/8,::ffff:192.0.2.0/120', '--http.trusted-proxies', '127.0.0.1/32'],
    });
    try {
      const api = apiClient(srv, { https: true, key: ADMIN });
      const as = (xff) => api('GET', '/v1/rooms', { headers: xff === null ? {} : { 'x-forwarded-for': xff } });
      assert.equal((await as(null)).status, 403, 'the proxy itself is not allowed');
      assert.equal((await as('10.1.2.3')).status, 200);
      assert.equal((await as('::ffff:10.9.9.9')).status, 200, 'mapped address, IPv4 entry');
      assert.equal((await as('[::ffff:10.9.9.9]:4431')).status, 200);
      assert.equal((await as('192.0.2.7')).status, 200, 'IPv4 address, mapped entry');
      assert.equal((await as('192.0.3.7')).status, 403);
      assert.equal((await as('10.1.2.3, 203.0.113.9')).status, 403, 'the rightmost untrusted hop is the client');
      assert.equal((await as('203.0.113.9, 10.1.2.3')).status, 200, 'what the client wrote left of it is ignored');
      assert.equal((await as('10.1.2.3, 127.0.0.1')).status, 200, 'trusted hops are skipped');
      assert.equal((await as('nonsense')).status, 403, 'an unparsable header falls back to the peer');
      assert.equal((await api('GET', '/v1/rooms', { headers: { 'x-forwarded-for': ['10.1.2.3', '203.0.113.9'] } })).status, 403,
        'two header fields are one list');

      // Per-key and per-client lists apply to the same client address.
      const k = await api('POST', '/v1/keys', {
        json: { name: 'k', scopes: ['rooms:read'], allowed_ips: ['::ffff:10.1.0.0/112'] },
        headers: { 'x-forwarded-for': '10.1.2.3' },
      });
      assert.equal(k.status, 201, k.text);
      const key = api.with(k.json().secret);
      assert.equal((await key('GET', '/v1/rooms', { headers: { 'x-forwarded-for': '10.1.2.3' } })).status, 200);
      assert.equal((await key('GET', '/v1/rooms', { headers: { 'x-forwarded-for': '10.2.2.3' } })).status, 403);
      const c = await makeClient((m, p, o = {}) => api(m, p, { ...o, headers: { 'x-forwarded-for': '10.1.2.3' } }),
        { scopes: ['rooms:read'], allowed_ips: ['10.1.2.3'] });
      const form = { grant_type: 'client_credentials' };
      const auth = basic(c.client_id, c.client_secret);
      const ok = await oauthPost(srv, '/oauth/token', { form, auth, headers: { 'x-forwarded-for': '10.1.2.3' } });
      assert.equal(ok.status, 200, ok.text);
      const no = await oauthPost(srv, '/oauth/token', { form, auth, headers: { 'x-forwarded-for': '10.1.2.4' } });
      assert.equal(no.status, 401);
      assert.equal(no.json().error, 'invalid_client');
      // The client's allowlist follows its tokens.
      const tok = ok.json().access_token;
      assert.equal((await api('GET', '/v1/rooms', { key: tok, headers: { 'x-forwarded-for': '10.1.2.3' } })).status, 200);
      assert.equal((await api('GET', '/v1/rooms', { key: tok, headers: { 'x-forwarded-for': '10.1.2.4' } })).status, 403);
    } finally {
      await srv.stop();
    }
  });

  it('refuses a bad allowlist or proxy list at start', async () => {
    const { run, binPath } = await import('./lib/server.mjs');
    for (const [k, v] of [['--security.allowed-ips', '10.0.0.1/8'], ['--http.trusted-proxies', '300.1.1.1']]) {
      const r = await run(binPath(), ['--dev', '--data-dir', '/nonexistent-sb', k, v, '--check-config']);
      assert.notEqual(r.code, 0);
      assert.match(r.stderr + r.stdout, new RegExp(k.slice(2).replace('-', '_')));
    }
  });
});
