// docs/openapi.yaml against the contract (API.md): validated as OpenAPI 3.1 by
// @apidevtools/swagger-parser, then checked for what a schema validator cannot see: every
// contract operation present with its scope, the security model, the problem+json error
// shape, Idempotency-Key on every POST, list envelopes, and examples that match their
// schemas (Ajv, JSON Schema 2020-12). Needs no server: `npm ci && node --test openapi.test.mjs`.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { before, describe, it } from 'node:test';

import SwaggerParser from '@apidevtools/swagger-parser';
import Ajv2020Module from 'ajv/dist/2020.js';
import addFormatsModule from 'ajv-formats';
import YAML from 'yaml';

const Ajv2020 = Ajv2020Module.default ?? Ajv2020Module;
const addFormats = addFormatsModule.default ?? addFormatsModule;

const SPEC = fileURLToPath(new URL('../../docs/openapi.yaml', import.meta.url));

// API.md "Resources", one operation a line: method, path, then the scope, or `public`
// (no credential), `client` (OAuth client authentication) or `participant` (participant
// token); `list` marks the paginated lists. Plus the project signing keys.
const CONTRACT = `
POST   /v1/projects                                         projects:write
POST   /v1/keys                                             keys:write
GET    /v1/keys                                             keys:read        list
GET    /v1/keys/{id}                                        keys:read
DELETE /v1/keys/{id}                                        keys:write
POST   /v1/signing-keys                                     keys:write
GET    /v1/signing-keys                                     keys:read        list
DELETE /v1/signing-keys/{kid}                               keys:write
POST   /v1/rooms                                            rooms:write
GET    /v1/rooms                                            rooms:read       list
GET    /v1/rooms/{name}                                     rooms:read
PATCH  /v1/rooms/{name}                                     rooms:write
DELETE /v1/rooms/{name}                                     rooms:write
GET    /v1/rooms/{name}/participants                        rooms:read       list
GET    /v1/rooms/{name}/participants/{identity}             rooms:read
PATCH  /v1/rooms/{name}/participants/{identity}             rooms:write
DELETE /v1/rooms/{name}/participants/{identity}             rooms:write
POST   /v1/rooms/{name}/messages                            rooms:write
POST   /v1/tokens                                           tokens:write
DELETE /v1/tokens/{jti}                                     tokens:write
GET    /v1/sessions                                         sessions:read    list
GET    /v1/sessions/{id}                                    sessions:read
GET    /v1/sessions/{id}/participants                       sessions:read    list
POST   /v1/sessions/{id}/end                                rooms:write
POST   /v1/recordings                                       recordings:write
POST   /v1/recordings/{id}/stop                             recordings:write
GET    /v1/recordings                                       recordings:read  list
GET    /v1/recordings/{id}                                  recordings:read
GET    /v1/recordings/{id}/content                          recordings:read
DELETE /v1/recordings/{id}                                  recordings:write
POST   /v1/webhooks                                         webhooks:write
GET    /v1/webhooks                                         webhooks:read    list
GET    /v1/webhooks/{id}                                    webhooks:read
PATCH  /v1/webhooks/{id}                                    webhooks:write
DELETE /v1/webhooks/{id}                                    webhooks:write
POST   /v1/webhooks/{id}/rotate-secret                      webhooks:write
POST   /v1/webhooks/{id}/test                               webhooks:write
GET    /v1/webhooks/{id}/deliveries                         webhooks:read    list
POST   /v1/webhooks/{id}/deliveries/{delivery_id}/retry     webhooks:write
POST   /v1/webhooks/{id}/deliveries/retry                   webhooks:write
GET    /v1/events                                           events:read
POST   /oauth/token                                         client
POST   /oauth/introspect                                    client
POST   /oauth/revoke                                        client
POST   /v1/oauth-clients                                    keys:write
GET    /v1/oauth-clients                                    keys:read        list
DELETE /v1/oauth-clients/{client_id}                        keys:write
GET    /.well-known/jwks.json                               public
GET    /.well-known/oauth-authorization-server              public
GET    /v1/audit                                            keys:read        list
GET    /healthz                                             public
GET    /readyz                                              public
GET    /metrics                                             public
GET    /v1/rtc                                              participant
`
  .trim()
  .split('\n')
  .map((line) => {
    const [method, path, auth, flag] = line.trim().split(/\s+/);
    return { method: method.toLowerCase(), path, auth, list: flag === 'list', key: `${method} ${path}` };
  });

const SCOPES = [
  'rooms:read', 'rooms:write', 'tokens:write', 'sessions:read', 'recordings:read', 'recordings:write',
  'webhooks:read', 'webhooks:write', 'events:read', 'keys:read', 'keys:write', 'projects:write',
];

const METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'];
const PROBLEM_REF = '#/components/schemas/Problem';
const OAUTH_ERROR_REF = '#/components/schemas/OAuthError';

// JSON pointer helpers over the raw (not dereferenced) document, so that $refs stay visible.
const esc = (s) => String(s).replace(/~/g, '~0').replace(/\//g, '~1');
const ptr = (...parts) => '#/' + parts.map(esc).join('/');

function resolve(doc, node) {
  const seen = new Set();
  while (node && typeof node === 'object' && typeof node.$ref === 'string') {
    assert.ok(node.$ref.startsWith('#/'), `only local $refs are used: ${node.$ref}`);
    assert.ok(!seen.has(node.$ref), `$ref cycle at ${node.$ref}`);
    seen.add(node.$ref);
    node = node.$ref
      .slice(2)
      .split('/')
      .map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'))
      .reduce((o, k) => (o == null ? undefined : o[k]), doc);
    assert.ok(node !== undefined, `dangling $ref ${[...seen].pop()}`);
  }
  return node;
}

describe('docs/openapi.yaml', () => {
  let doc; // raw YAML, $refs intact
  let ops; // [{ key, path, method, op, pathItem }]

  before(() => {
    doc = YAML.parse(fs.readFileSync(SPEC, 'utf8'));
    ops = [];
    for (const [path, pathItem] of Object.entries(doc.paths ?? {})) {
      for (const method of METHODS) {
        if (pathItem[method]) ops.push({ key: `${method.toUpperCase()} ${path}`, path, method, op: pathItem[method], pathItem });
      }
    }
  });

  const contractOf = (o) => CONTRACT.find((c) => c.key === o.key);
  const paramsOf = (o) => [...(o.pathItem.parameters ?? []), ...(o.op.parameters ?? [])].map((p) => resolve(doc, p));

  it('is a valid OpenAPI 3.1 document (swagger-parser validate)', async () => {
    assert.match(doc.openapi, /^3\.1\.\d+$/);
    const api = await SwaggerParser.validate(SPEC);
    assert.equal(api.info.title, 'Switchboard API');
  });

  it('has every operation of the contract, and no other', () => {
    const have = new Set(ops.map((o) => o.key));
    const want = new Set(CONTRACT.map((c) => c.key));
    const missing = [...want].filter((k) => !have.has(k));
    const extra = [...have].filter((k) => !want.has(k));
    assert.deepEqual(missing, [], `operations missing from docs/openapi.yaml: ${missing.join(', ')}`);
    assert.deepEqual(extra, [], `operations not in the contract list: ${extra.join(', ')}`);
    assert.equal(ops.length, CONTRACT.length);
    assert.equal(Object.keys(doc.paths).length, new Set(CONTRACT.map((c) => c.path)).size);
  });

  it('gives every operation a unique operationId, a summary and declared tags', () => {
    const declared = new Set((doc.tags ?? []).map((t) => t.name));
    const ids = new Map();
    for (const o of ops) {
      assert.match(o.op.operationId ?? '', /^[a-z][A-Za-z0-9]+$/, `${o.key}: operationId`);
      assert.ok(!ids.has(o.op.operationId), `${o.key}: operationId ${o.op.operationId} also used by ${ids.get(o.op.operationId)}`);
      ids.set(o.op.operationId, o.key);
      assert.ok(o.op.summary?.length > 0, `${o.key}: summary`);
      assert.ok(Array.isArray(o.op.tags) && o.op.tags.length > 0, `${o.key}: tags`);
      for (const t of o.op.tags) assert.ok(declared.has(t), `${o.key}: tag ${t} is declared at the top level`);
    }
  });

  it('states the security of every operation as the contract does', () => {
    const schemes = doc.components?.securitySchemes ?? {};
    assert.equal(schemes.bearer?.type, 'http');
    assert.equal(schemes.bearer?.scheme, 'bearer');
    assert.equal(doc.security, undefined, 'no global default: each operation says what it needs');
    for (const o of ops) {
      const c = contractOf(o);
      const sec = o.op.security;
      assert.ok(Array.isArray(sec), `${o.key}: security is stated`);
      for (const req of sec) for (const name of Object.keys(req)) assert.ok(schemes[name], `${o.key}: security scheme ${name} is defined`);
      if (c.auth === 'public') {
        assert.deepEqual(sec, [], `${o.key}: public`);
        assert.equal(o.op['x-required-scope'], undefined, `${o.key}: no scope`);
      } else if (c.auth === 'client') {
        assert.ok(sec.length > 0, `${o.key}: client authentication`);
        for (const req of sec) {
          assert.equal(Object.keys(req).length, 1, `${o.key}: one scheme per alternative`);
          assert.match(Object.keys(req)[0], /^oauthClient/, `${o.key}: OAuth client authentication`);
        }
        assert.ok(sec.some((r) => schemes[Object.keys(r)[0]].type === 'mutualTLS'), `${o.key}: tls_client_auth`);
        assert.ok(sec.some((r) => schemes[Object.keys(r)[0]].scheme === 'basic'), `${o.key}: client_secret_basic`);
      } else if (c.auth === 'participant') {
        assert.ok(sec.length > 0);
        for (const req of sec) assert.match(Object.keys(req)[0], /^participantToken/, `${o.key}: participant token`);
      } else {
        assert.ok(SCOPES.includes(c.auth), `contract scope ${c.auth} is one of API.md's`);
        assert.deepEqual(sec, [{ bearer: [c.auth] }], `${o.key}: security [{bearer: [${c.auth}]}]`);
        assert.equal(o.op['x-required-scope'], c.auth, `${o.key}: x-required-scope`);
      }
    }
  });

  it('documents 401 on every secured operation, with a challenge; 403 and 429 on bearer ones', () => {
    for (const o of ops) {
      const c = contractOf(o);
      if (c.auth === 'public') continue;
      const r401 = resolve(doc, o.op.responses?.['401']);
      assert.ok(r401, `${o.key}: 401`);
      const challenge = resolve(doc, r401.headers?.['WWW-Authenticate']);
      assert.ok(challenge, `${o.key}: 401 has WWW-Authenticate`);
      if (c.auth === 'client') continue;
      assert.match(String(challenge.example), /^Bearer\b/, `${o.key}: Bearer challenge`);
      if (c.auth === 'participant') continue;
      assert.ok(o.op.responses['403'], `${o.key}: 403`);
      const r429 = resolve(doc, o.op.responses['429']);
      assert.ok(r429, `${o.key}: 429`);
      for (const h of ['Retry-After', 'RateLimit-Policy', 'RateLimit']) assert.ok(r429.headers?.[h], `${o.key}: 429 has ${h}`);
    }
  });

  it('documents 400/413/415 for JSON bodies, 404 for path parameters, 409/422 for POSTs', () => {
    for (const o of ops) {
      if (o.path.startsWith('/oauth/')) continue;
      const has = (s) => o.op.responses[s] !== undefined;
      if (resolve(doc, o.op.requestBody)?.content?.['application/json']) {
        for (const s of ['400', '413', '415']) assert.ok(has(s), `${o.key}: ${s} for a JSON body`);
      }
      // A revocation takes any token id: tokens are not stored, so none is "unknown".
      if (o.path.includes('{') && o.key !== 'DELETE /v1/tokens/{jti}') assert.ok(has('404'), `${o.key}: 404 for an unknown ${o.path.match(/\{([^}]+)\}/)[1]}`);
      if (o.method === 'post') for (const s of ['409', '422']) assert.ok(has(s), `${o.key}: ${s} for Idempotency-Key`);
    }
  });

  it('takes Idempotency-Key on every POST', () => {
    for (const o of ops.filter((x) => x.method === 'post')) {
      const p = paramsOf(o).find((x) => x.in === 'header' && x.name === 'Idempotency-Key');
      assert.ok(p, `${o.key}: Idempotency-Key header parameter`);
      assert.equal(p.required ?? false, false, `${o.key}: Idempotency-Key is optional`);
      assert.equal(p.schema?.maxLength, 255);
    }
    for (const o of ops.filter((x) => x.method !== 'post')) {
      assert.ok(!paramsOf(o).some((x) => x.name === 'Idempotency-Key'), `${o.key}: Idempotency-Key only on POST`);
    }
  });

  it('takes X-Request-Id on every operation and returns it on every response', () => {
    for (const o of ops) {
      assert.ok(paramsOf(o).some((x) => x.in === 'header' && x.name === 'X-Request-Id'), `${o.key}: X-Request-Id parameter`);
      for (const [status, r] of Object.entries(o.op.responses)) {
        assert.ok(resolve(doc, r).headers?.['X-Request-Id'], `${o.key} ${status}: X-Request-Id header`);
      }
    }
  });

  it('declares every path template parameter, and only those', () => {
    for (const o of ops) {
      const inPath = [...o.path.matchAll(/\{([^}]+)\}/g)].map((m) => m[1]).sort();
      const declared = paramsOf(o).filter((p) => p.in === 'path');
      assert.deepEqual(declared.map((p) => p.name).sort(), inPath, `${o.key}: path parameters`);
      for (const p of declared) assert.equal(p.required, true, `${o.key}: ${p.name} is required`);
    }
  });

  it('answers every error with an RFC 9457 problem (RFC 6749 errors on /oauth)', () => {
    const checkError = (where, r, oauth) => {
      const content = r.content ?? {};
      if (oauth) {
        assert.deepEqual(Object.keys(content), ['application/json'], `${where}: OAuth error is application/json`);
        assert.equal(content['application/json'].schema?.$ref, OAUTH_ERROR_REF, `${where}: references OAuthError`);
      } else {
        assert.deepEqual(Object.keys(content), ['application/problem+json'], `${where}: application/problem+json only`);
        assert.equal(content['application/problem+json'].schema?.$ref, PROBLEM_REF, `${where}: references Problem`);
      }
    };
    for (const o of ops) {
      const oauth = o.path.startsWith('/oauth/');
      for (const [status, r] of Object.entries(o.op.responses)) {
        if (/^[45]/.test(status)) checkError(`${o.key} ${status}`, resolve(doc, r), oauth);
      }
    }
    // And wherever problem+json appears (component responses included), it is the Problem schema.
    (function walk(node, where) {
      if (!node || typeof node !== 'object') return;
      if (node['application/problem+json']) {
        assert.equal(node['application/problem+json'].schema?.$ref, PROBLEM_REF, `${where}: problem+json references Problem`);
      }
      for (const [k, v] of Object.entries(node)) walk(v, `${where}/${k}`);
    })(doc, '#');
    const problem = doc.components.schemas.Problem;
    assert.deepEqual([...problem.required].sort(), ['detail', 'request_id', 'status', 'title', 'type']);
    assert.equal(problem.properties.type.pattern, '^urn:switchboard:problem:[a-z0-9-]+$');
  });

  it('defines the shared components the API relies on', () => {
    const c = doc.components;
    for (const s of [
      'Room', 'Participant', 'Grants', 'Session', 'Recording', 'WebhookEndpoint', 'Delivery', 'Event', 'ApiKey',
      'ApiKeyCreated', 'Project', 'ProjectCreated', 'TokenResponse', 'AuditEntry', 'Problem', 'SigningKey',
      'SigningKeyCreated', 'OAuthError', 'NextCursor',
    ]) {
      assert.ok(c.schemas[s], `schema ${s}`);
    }
    for (const r of ['BadRequest', 'Unauthorized', 'Forbidden', 'NotFound', 'Conflict', 'ContentTooLarge',
      'UnprocessableContent', 'TooManyRequests', 'ServiceUnavailable']) {
      assert.ok(c.responses[r], `response ${r}`);
    }
    assert.deepEqual(c.parameters.limit.schema, { type: 'integer', minimum: 1, maximum: 200, default: 50 });
    assert.equal(c.parameters.cursor.in, 'query');
    assert.equal(c.parameters['Idempotency-Key'].in, 'header');
    assert.deepEqual(c.schemas.Scope.enum, SCOPES, 'Scope lists API.md\'s scopes (src/auth/scopes.c order)');
    const grants = c.schemas.Grants.properties;
    assert.deepEqual(
      Object.fromEntries(Object.entries(grants).map(([k, v]) => [k, v.default])),
      { publish: true, subscribe: true, publish_data: true, admin: false, hidden: false, record: false },
    );
    const ttl = c.schemas.TokenRequest.properties.ttl_seconds;
    assert.deepEqual([ttl.minimum, ttl.maximum, ttl.default], [1, 86400, 600]);
    assert.equal(c.schemas.RoomName.pattern, '^[A-Za-z0-9_-]{1,128}$');
    assert.equal(c.schemas.Identity.pattern, '^[A-Za-z0-9_.:@-]{1,128}$');
  });

  it('pages every list with limit and cursor into {data, next_cursor}', () => {
    for (const o of ops) {
      const c = contractOf(o);
      const names = paramsOf(o).map((p) => p.name);
      assert.equal(names.includes('limit') && names.includes('cursor'), c.list, `${o.key}: limit and cursor iff a list`);
      if (!c.list) continue;
      const schema = resolve(doc, o.op.responses['200'].content['application/json'].schema);
      assert.deepEqual([...schema.required].sort(), ['data', 'next_cursor'], `${o.key}: envelope`);
      assert.equal(schema.properties.data.type, 'array', `${o.key}: data is an array`);
      assert.equal(schema.properties.next_cursor.$ref, '#/components/schemas/NextCursor', `${o.key}: next_cursor`);
    }
    assert.deepEqual(doc.components.schemas.NextCursor.type, ['string', 'null']);
  });

  it('has examples for every request body and every 2xx response body', () => {
    const hasExample = (m) => m.example !== undefined || (m.examples && Object.keys(m.examples).length > 0);
    for (const o of ops) {
      for (const [type, m] of Object.entries(resolve(doc, o.op.requestBody)?.content ?? {})) {
        assert.ok(hasExample(m), `${o.key}: request ${type} example`);
      }
      for (const [status, r] of Object.entries(o.op.responses)) {
        if (!/^2/.test(status)) continue;
        for (const [type, m] of Object.entries(resolve(doc, r).content ?? {})) {
          assert.ok(hasExample(m), `${o.key} ${status}: ${type} example`);
        }
      }
    }
  });

  it('has examples that validate against their schemas (JSON Schema 2020-12)', () => {
    const ajv = new Ajv2020({ strict: false, allErrors: true, validateSchema: false });
    addFormats(ajv);
    ajv.addSchema(doc, 'urn:switchboard:openapi');
    const at = (p) => 'urn:switchboard:openapi#' + p.slice(1).split('/').map(encodeURIComponent).join('/');
    const check = (schemaPtr, value, where) => {
      const validate = ajv.compile({ $ref: at(schemaPtr) });
      assert.ok(validate(value), `${where} does not match ${schemaPtr}: ${ajv.errorsText(validate.errors)}`);
    };
    let checked = 0;
    const isSchemaCtx = (path) => path.includes('schemas') || path.at(-1) === 'schema' || ['properties', 'items', 'anyOf', 'allOf', 'oneOf'].includes(path.at(-2));
    (function walk(node, path) {
      if (!node || typeof node !== 'object') return;
      if (Array.isArray(node)) return node.forEach((v, i) => walk(v, [...path, String(i)]));
      const here = ptr(...path);
      // Media type, parameter and header objects: `example` / `examples` beside `schema`.
      if (node.schema && !isSchemaCtx(path)) {
        if (node.example !== undefined) {
          check(ptr(...path, 'schema'), node.example, `${here}/example`);
          checked++;
        }
        if (node.examples && !Array.isArray(node.examples)) {
          for (const [name, ex] of Object.entries(node.examples)) {
            check(ptr(...path, 'schema'), resolve(doc, ex).value, `${here}/examples/${name}`);
            checked++;
          }
        }
      }
      // Schema objects: the JSON Schema `examples` array.
      if (isSchemaCtx(path) && Array.isArray(node.examples) && (node.type || node.properties || node.$ref || node.anyOf)) {
        node.examples.forEach((ex, i) => check(here, ex, `${here}/examples/${i}`));
        checked += node.examples.length;
      }
      for (const [k, v] of Object.entries(node)) {
        if (k === 'example' || k === 'examples') continue;
        walk(v, [...path, k]);
      }
    })(doc, []);
    assert.ok(checked > 100, `examples checked: ${checked}`);
  });
});
