// Helpers for the OAuth 2.0 suites: registering clients, raw token-endpoint calls, a fetch
// that trusts the dev CA (and can present a client certificate) for openid-client and jose,
// client certificates made with openssl, and the server's own signing key read from the
// database (sqlite3 CLI) so that tests can forge tokens that differ in one thing only.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';

import { readCa, request } from './client.mjs';
import { run } from './server.mjs';

/** POST /v1/oauth-clients; returns the 201 body ({client_id, client_secret?, …}). */
export async function makeClient(api, body) {
  const r = await api('POST', '/v1/oauth-clients', {
    json: { name: 'svc', token_endpoint_auth_method: 'client_secret_basic', ...body },
  });
  assert.equal(r.status, 201, r.text);
  return r.json();
}

export function basic(id, secret) {
  // RFC 6749 section 2.3.1: each part form-urlencoded before base64.
  const enc = (s) => encodeURIComponent(s).replace(/%20/g, '+');
  return `Basic ${Buffer.from(`${enc(id)}:${enc(secret)}`).toString('base64')}`;
}

/**
 * POST to an /oauth endpoint. form: object (URL-encoded) or a raw string; auth: an
 * Authorization value; tls: extra TLS options (cert, key). Returns client.mjs's response.
 */
export async function oauthPost(srv, p, { form = {}, auth, headers = {}, tls = {}, contentType } = {}) {
  const body = typeof form === 'string' ? form : new URLSearchParams(form).toString();
  const h = { 'content-type': contentType ?? 'application/x-www-form-urlencoded', ...headers };
  if (auth) h.authorization = auth;
  return request(srv, p, { method: 'POST', headers: h, body, timeoutMs: 10000, ...tls });
}

/** Client credentials with client_secret_basic; returns the access token string. */
export async function getToken(srv, client, { scope, tls } = {}) {
  const form = { grant_type: 'client_credentials' };
  if (scope) form.scope = scope;
  const r = await oauthPost(srv, '/oauth/token', { form, auth: basic(client.client_id, client.client_secret), tls });
  assert.equal(r.status, 200, r.text);
  return r.json().access_token;
}

/** A fetch (for openid-client's and jose's customFetch) over node:https trusting `ca`. */
export function caFetch(caPath, extra = {}) {
  const ca = readCa(caPath);
  return (url, options = {}) => new Promise((resolve, reject) => {
    const u = new URL(url);
    const headers = Object.fromEntries(new Headers(options.headers ?? {}));
    let body = options.body;
    if (body instanceof URLSearchParams) body = body.toString();
    const req = https.request({
      host: u.hostname, port: u.port, path: u.pathname + u.search, method: options.method ?? 'GET',
      headers, ca, agent: false, ...extra,
    }, (res) => {
      const parts = [];
      res.on('data', (d) => parts.push(d));
      res.on('end', () => {
        const h = new Headers();
        for (const [k, v] of Object.entries(res.headers)) h.set(k, Array.isArray(v) ? v.join(', ') : v);
        const b = Buffer.concat(parts);
        resolve(new Response(res.statusCode === 204 ? null : b, { status: res.statusCode, headers: h }));
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

export function decodeJwt(t) {
  const [h, p] = t.split('.');
  return { header: JSON.parse(Buffer.from(h, 'base64url')), payload: JSON.parse(Buffer.from(p, 'base64url')) };
}

/** The server's current ES256 signing key (newest, not retired), from the database. */
export async function serverKey(dataDir) {
  const db = path.join(dataDir, 'switchboard.db');
  const r = await run('sqlite3', [db, "SELECT kid || '|' || hex(material) FROM signing_keys WHERE project_id IS NULL AND retired_at IS NULL ORDER BY created_at DESC LIMIT 1"]);
  assert.equal(r.code, 0, r.stderr);
  const [kid, hex] = r.stdout.trim().split('|');
  return { kid, key: crypto.createPrivateKey(Buffer.from(hex, 'hex').toString('utf8')) };
}

const b64 = (o) => Buffer.from(typeof o === 'string' ? o : JSON.stringify(o)).toString('base64url');

/** Signs header/payload exactly as given with an ES256 key (JOSE r||s signature). */
export function signEs256(header, payload, key) {
  const input = `${b64(header)}.${b64(payload)}`;
  const sig = crypto.sign('sha256', Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' });
  return `${input}.${sig.toString('base64url')}`;
}

export function signHs256(header, payload, secret) {
  const input = `${b64(header)}.${b64(payload)}`;
  const sig = crypto.createHmac('sha256', secret).update(input).digest();
  return `${input}.${sig.toString('base64url')}`;
}

async function openssl(args, cwd) {
  const r = await run('openssl', args, { cwd });
  assert.equal(r.code, 0, `openssl ${args.join(' ')} failed:\n${r.stderr}`);
  return r;
}

/** A client certificate DIR/NAME.pem (+ .key) signed by the CA {ca, caKey}. */
export async function makeClientCert(dir, ca, name) {
  const ext = path.join(dir, `${name}.ext`);
  fs.writeFileSync(ext, `[v3]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
`);
  const p = (s) => path.join(dir, `${name}.${s}`);
  await openssl(['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', p('key'), '-out', p('csr'), '-subj', `/CN=${name}`]);
  await openssl(['x509', '-req', '-in', p('csr'), '-CA', ca.ca, '-CAkey', ca.caKey,
    '-set_serial', `0x${crypto.randomBytes(8).toString('hex')}`, '-days', '2',
    '-extfile', ext, '-extensions', 'v3', '-out', p('pem')]);
  const der = new crypto.X509Certificate(fs.readFileSync(p('pem'))).raw;
  const sha = crypto.createHash('sha256').update(der).digest();
  return { cert: p('pem'), key: p('key'), hex: sha.toString('hex'), x5t: sha.toString('base64url') };
}
