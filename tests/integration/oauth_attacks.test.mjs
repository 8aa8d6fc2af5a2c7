// RFC 8725 section 3 against the API's bearer check: every token here is refused, most of
// them signed correctly with the server's real key (read from the database) so that each
// differs from a valid token in one respect only. A control token built the same way is
// accepted, so the forgeries fail for the reason under test and not for a mistake in the test.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import zlib from 'node:zlib';
import { after, before, describe, it } from 'node:test';

import { apiClient } from './lib/api.mjs';
import { request } from './lib/client.mjs';
import { decodeJwt, getToken, makeClient, serverKey, signEs256, signHs256 } from './lib/oauth.mjs';
import { startServer } from './lib/server.mjs';
import { closedWithin, wsClient } from './lib/ws.mjs';

const ADMIN = 'attack-admin-key-0123456789abcdefghijklmno';

describe('RFC 8725 attacks on access tokens', () => {
  let srv;
  let api;
  let client;
  let key;
  let good;
  const now = () => Math.floor(Date.now() / 1000);
  const claims = (over = {}) => ({
    iss: srv.url, aud: srv.url, sub: client.client_id, client_id: client.client_id,
    scope: 'rooms:read', jti: `at_${crypto.randomBytes(8).toString('hex')}`, project_id: 'prj_default',
    iat: now(), exp: now() + 300, ...over,
  });
  const header = (over = {}) => ({ alg: 'ES256', typ: 'at+jwt', kid: key.kid, ...over });
  const refused = async (tok, what) => {
    const r = await api('GET', '/v1/rooms', { key: tok });
    assert.equal(r.status, 401, `${what}: ${r.status} ${r.text}`);
    assert.match(r.headers['www-authenticate'], /^Bearer /, what);
    return r.json().detail;
  };

  before(async () => {
    srv = await startServer({ env: { SWITCHBOARD_ADMIN_KEY: ADMIN }, args: ['--oauth.burst', '1000'] });
    api = apiClient(srv, { https: true, key: ADMIN });
    client = await makeClient(api, { scopes: ['rooms:read'] });
    key = await serverKey(srv.dataDir);
    good = await getToken(srv, client);
  });
  after(async () => {
    await srv?.stop();
  });

  it('accepts the control: a token forged with the real key and correct claims', async () => {
    assert.equal(decodeJwt(good).header.kid, key.kid, 'the test read the key that signs');
    assert.equal((await api('GET', '/v1/rooms', { key: signEs256(header(), claims(), key.key) })).status, 200);
  });

  it('refuses alg none in every spelling, and an empty signature', async () => {
    for (const alg of ['none', 'None', 'NONE', 'nOnE']) {
      const [h, p] = [header({ alg }), claims()].map((o) => Buffer.from(JSON.stringify(o)).toString('base64url'));
      assert.match(await refused(`${h}.${p}.`, alg), /alg_none/);
    }
    const [h, p] = good.split('.');
    await refused(`${h}.${p}.`, 'stripped signature');
  });

  it('refuses algorithm confusion: HS256 keyed with the public key (PEM, DER, JWK x)', async () => {
    const jwks = (await request(srv, '/.well-known/jwks.json')).json();
    const jwk = jwks.keys.find((k) => k.kid === key.kid);
    const pub = crypto.createPublicKey({ key: jwk, format: 'jwk' });
    const secrets = [pub.export({ type: 'spki', format: 'pem' }), pub.export({ type: 'spki', format: 'der' }),
      Buffer.from(jwk.x, 'base64url'), JSON.stringify(jwk)];
    for (const s of secrets) assert.match(await refused(signHs256(header({ alg: 'HS256' }), claims(), s), 'HS256'), /alg_mismatch/);
    // EdDSA / RS256 claimed for an ES256 key.
    for (const alg of ['EdDSA', 'RS256', 'ES384', 'PS256']) {
      await refused(signEs256(header({ alg }), claims(), key.key), alg);
    }
  });

  it("refuses a project's HS256 signing secret even with a valid at+jwt", async () => {
    const sk = await api('POST', '/v1/signing-keys', { json: { name: 'backend' } });
    assert.equal(sk.status, 201, sk.text);
    const { kid, secret } = sk.json();
    const t = signHs256({ alg: 'HS256', typ: 'at+jwt', kid }, claims(), Buffer.from(secret, 'base64url'));
    assert.match(await refused(t, 'project key'), /unknown_kid/);
  });

  it('refuses explicit typing across token kinds (section 3.11)', async () => {
    // A participant token (typ JWT, aud switchboard:rtc), signed by this very server.
    const pt = await api('POST', '/v1/tokens', { json: { room: 'r1', identity: 'alice' } });
    assert.equal(pt.status, 201, pt.text);
    assert.match(await refused(pt.json().token, 'participant token'), /wrong_type/);
    // typ JWT, no typ, and a made-up typ on otherwise perfect access-token claims.
    assert.match(await refused(signEs256(header({ typ: 'JWT' }), claims(), key.key), 'typ JWT'), /wrong_type/);
    const { typ, ...noTyp } = header();
    assert.equal(typ, 'at+jwt');
    await refused(signEs256(noTyp, claims(), key.key), 'no typ');
    // application/at+jwt is the same type (RFC 7515 section 4.1.9): accepted.
    assert.equal((await api('GET', '/v1/rooms', { key: signEs256(header({ typ: 'application/at+jwt' }), claims(), key.key) })).status, 200);
    // And the other way: an access token is no participant token.
    await api('POST', '/v1/rooms', { json: { name: 'r1' } });
    const ws = await wsClient(srv, { path: `/v1/rtc?access_token=${good}` });
    assert.equal((await closedWithin(ws)).code, 4001);
  });

  it('refuses the wrong audience, issuer, and missing or mistyped claims', async () => {
    assert.match(await refused(signEs256(header(), claims({ aud: 'switchboard:rtc' }), key.key), 'aud'), /wrong_audience/);
    await refused(signEs256(header(), claims({ aud: ['other'] }), key.key), 'aud array');
    assert.match(await refused(signEs256(header(), claims({ iss: 'https://evil.example' }), key.key), 'iss'), /wrong_issuer/);
    for (const drop of ['exp', 'client_id', 'sub', 'jti', 'scope', 'project_id', 'iat']) {
      const c = claims();
      delete c[drop];
      await refused(signEs256(header(), c, key.key), `without ${drop}`);
    }
    await refused(signEs256(header(), claims({ exp: String(now() + 300) }), key.key), 'exp string');
    await refused(signEs256(header(), claims({ sub: 'cli_someoneelse000000000' }), key.key), 'sub != client_id');
    await refused(signEs256(header(), claims({ scope: 'rooms:read root' }), key.key), 'unknown scope');
    await refused(signEs256(header(), claims({ client_id: 'cli_nosuch00000000000000', sub: 'cli_nosuch00000000000000' }), key.key), 'unknown client');
    await refused(signEs256(header(), claims({ project_id: 'prj_other' }), key.key), 'other project');
  });

  it('refuses expired, not yet valid, issued in the future, and too long-lived tokens', async () => {
    assert.match(await refused(signEs256(header(), claims({ iat: now() - 700, exp: now() - 60 }), key.key), 'expired'), /expired/);
    assert.match(await refused(signEs256(header(), claims({ nbf: now() + 120 }), key.key), 'nbf'), /not_yet_valid/);
    assert.match(await refused(signEs256(header(), claims({ iat: now() + 120, exp: now() + 400 }), key.key), 'iat'), /issued_in_future/);
    assert.match(await refused(signEs256(header(), claims({ exp: now() + 86400 }), key.key), 'lifetime'), /lifetime/);
  });

  it('refuses unknown kid, tampered signature or payload, crit, and ignores jku/x5u/jwk', async () => {
    assert.match(await refused(signEs256(header({ kid: 'sk_nosuchkey' }), claims(), key.key), 'kid'), /unknown_kid/);
    const { kid, ...noKid } = header();
    assert.ok(kid);
    await refused(signEs256(noKid, claims(), key.key), 'no kid');
    const [h, p, s] = good.split('.');
    const sig = Buffer.from(s, 'base64url');
    sig[10] ^= 1;
    assert.match(await refused(`${h}.${p}.${sig.toString('base64url')}`, 'bit flip'), /bad_signature/);
    const payload = { ...decodeJwt(good).payload, scope: 'rooms:read rooms:write' };
    await refused(`${h}.${Buffer.from(JSON.stringify(payload)).toString('base64url')}.${s}`, 'payload changed');
    // DER-encoded ECDSA signature instead of JOSE r||s.
    const input = `${h}.${p}`;
    const der = crypto.sign('sha256', Buffer.from(input), key.key);
    await refused(`${input}.${der.toString('base64url')}`, 'DER signature');
    assert.match(await refused(signEs256(header({ crit: ['exp'] }), claims(), key.key), 'crit'), /crit/);
    // Header-supplied keys: an attacker's key, named by jku / x5u / embedded jwk, signs.
    const evil = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const evilJwk = evil.publicKey.export({ format: 'jwk' });
    for (const extra of [{ jku: 'https://evil.example/jwks.json' }, { x5u: 'https://evil.example/c.pem' },
      { jwk: evilJwk }, { jwk: evilJwk, kid: undefined }]) {
      const hd = header(extra);
      if ('kid' in extra) delete hd.kid;
      await refused(signEs256(hd, claims(), evil.privateKey), `header ${Object.keys(extra)}`);
    }
    // With the real key and an injected jku, the jku is ignored, not followed: still valid.
    assert.equal((await api('GET', '/v1/rooms', { key: signEs256(header({ jku: 'https://127.0.0.1:9/jwks' }), claims(), key.key) })).status, 200);
  });

  it('refuses nested, compressed, JWE-shaped and oversized tokens', async () => {
    const nested = signEs256(header({ cty: 'JWT' }), good, key.key);
    await refused(nested, 'nested');
    const deflated = zlib.deflateRawSync(Buffer.from(JSON.stringify(claims()))).toString('latin1');
    await refused(signEs256(header({ zip: 'DEF' }), deflated, key.key), 'zip DEF');
    await refused(`${good}.AAAA.BBBB`, 'five segments (JWE)');
    await refused(signEs256(header(), claims({ pad: 'x'.repeat(9000) }), key.key), 'oversized');
    await refused(signEs256(header(), [claims()], key.key), 'array payload');
    await refused(`${good.split('.')[0]}.${Buffer.from('{"exp":1,"exp":2}').toString('base64url')}.${good.split('.')[2]}`, 'duplicate members');
  });
});
