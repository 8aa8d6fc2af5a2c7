// gRPC clients for the tests: @grpc/grpc-js with @grpc/proto-loader loading the repository's
// own proto/ files (snake_case field names as in REST, enums as names, 64-bit as numbers),
// over TLS trusting the test server's dev CA.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';

const here = path.dirname(fileURLToPath(import.meta.url));
export const PROTO_DIR = path.resolve(here, '../../../proto');

export const FILES = [
  'switchboard/v1/rooms.proto',
  'switchboard/v1/tokens.proto',
  'switchboard/v1/sessions.proto',
  'switchboard/v1/webhooks.proto',
  'switchboard/v1/events.proto',
  'grpc/health/v1/health.proto',
];

let pkg;
export function loadProtos() {
  if (!pkg) {
    const def = protoLoader.loadSync(FILES, {
      includeDirs: [PROTO_DIR],
      keepCase: true,
      longs: Number,
      enums: String,
      defaults: false,
      oneofs: true,
    });
    pkg = grpc.loadPackageDefinition(def);
  }
  return pkg;
}

export { grpc };
export const status = grpc.status;

/** One client per service name: {RoomService, TokenService, ...} over the TLS listener. */
export function clients(srv) {
  const p = loadProtos();
  const creds = grpc.credentials.createSsl(fs.readFileSync(srv.caPath));
  const target = `127.0.0.1:${srv.port}`;
  const opts = { 'grpc.ssl_target_name_override': 'localhost', 'grpc.default_authority': 'localhost' };
  const v1 = p.switchboard.v1;
  const out = {
    RoomService: new v1.RoomService(target, creds, opts),
    TokenService: new v1.TokenService(target, creds, opts),
    SessionService: new v1.SessionService(target, creds, opts),
    WebhookService: new v1.WebhookService(target, creds, opts),
    EventService: new v1.EventService(target, creds, opts),
    Health: new p.grpc.health.v1.Health(target, creds, opts),
  };
  out.close = () => Object.values(out).forEach((c) => typeof c.close === 'function' && c.close());
  return out;
}

/** Metadata with the bearer credential (null: none) and extra entries. */
export function meta(key, extra = {}) {
  const m = new grpc.Metadata();
  if (key) m.set('authorization', `Bearer ${key}`);
  for (const [k, v] of Object.entries(extra)) m.set(k, v);
  return m;
}

/** A unary call as a promise: resolves the response; rejects with the ServiceError
 * ({code, details, metadata}). */
export function unary(client, method, req, { key = null, deadlineMs = 10000, metadata = {} } = {}) {
  return new Promise((resolve, reject) => {
    client[method](req, meta(key, metadata), { deadline: Date.now() + deadlineMs }, (err, res) => {
      if (err) reject(err);
      else resolve(res);
    });
  });
}

/** Awaits a unary call that must fail; returns the error. */
export async function failure(p) {
  try {
    const r = await p;
    throw Object.assign(new Error(`expected a gRPC error, got ${JSON.stringify(r)}`), { unexpected: true });
  } catch (e) {
    if (e.unexpected) throw e;
    return e;
  }
}

/** google.protobuf.Struct / Value (as proto-loader gives them) → plain JSON. */
export function fromStruct(s) {
  const out = {};
  for (const [k, v] of Object.entries(s?.fields ?? {})) out[k] = fromValue(v);
  return out;
}
export function fromValue(v) {
  // proto-loader serves google/protobuf/struct.proto from protobufjs's bundled copy, whose
  // field names are camelCase whatever keepCase says: accept both spellings.
  const kind = (v.kind ?? '').replace(/_([a-z])/g, (_, ch) => ch.toUpperCase());
  const val = (camel) => v[camel] ?? v[camel.replace(/[A-Z]/g, (ch) => `_${ch.toLowerCase()}`)];
  switch (kind) {
    case 'nullValue':
      return null;
    case 'numberValue':
    case 'stringValue':
    case 'boolValue':
      return val(kind);
    case 'structValue':
      return fromStruct(val(kind));
    case 'listValue':
      return (val(kind).values ?? []).map(fromValue);
    default:
      return undefined;
  }
}

/** An EventService/Subscribe stream collecting events (data converted to JSON). */
export function subscribe(client, req, { key, deadlineMs } = {}) {
  const opts = deadlineMs ? { deadline: Date.now() + deadlineMs } : {};
  const call = client.Subscribe(req, meta(key), opts);
  const s = { call, events: [], error: null, ended: false, waiters: [] };
  const poke = () => {
    s.waiters = s.waiters.filter((w) => {
      const i = s.events.findIndex(w.pred);
      if (i >= 0) {
        clearTimeout(w.t);
        w.resolve(s.events[i]);
        return false;
      }
      if (s.error || s.ended) {
        clearTimeout(w.t);
        w.reject(s.error ?? new Error('stream ended'));
        return false;
      }
      return true;
    });
  };
  call.on('data', (e) => {
    s.events.push({ ...e, data: fromStruct(e.data) });
    poke();
  });
  call.on('error', (e) => {
    s.error = e;
    poke();
  });
  call.on('end', () => {
    s.ended = true;
    poke();
  });
  s.done = new Promise((resolve) => {
    call.on('status', (st) => resolve(st));
  });
  s.wait = (pred, timeoutMs = 5000) =>
    new Promise((resolve, reject) => {
      const w = { pred, resolve, reject };
      w.t = setTimeout(() => {
        s.waiters = s.waiters.filter((x) => x !== w);
        reject(new Error(`timed out waiting for an event; got ${JSON.stringify(s.events.map((e) => e.type))}`));
      }, timeoutMs);
      s.waiters.push(w);
      poke();
    });
  return s;
}
