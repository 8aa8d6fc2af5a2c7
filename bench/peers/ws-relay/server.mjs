// Benchmark peer for bench/fanout.bench.sh: the work of one Switchboard room, in node + ws.
//
// GET /v1/rtc?access_token=<participant token> (or Authorization: Bearer) upgrades to a
// WebSocket. The token is one Switchboard minted (POST /v1/tokens): a JWT verified here with
// node:crypto against Switchboard's own JWKS (PEER_JWKS, a file), with the same checks
// Switchboard makes (kid, alg, signature, aud "switchboard:rtc", iss, nbf/exp with 10 s leeway,
// lifetime <= 24 h, room and identity claims, grants). Both servers therefore see byte-identical
// tokens and do one signature check per join; neither verifies anything per message.
//
// The room is a Map identity → connection. A text message {"type":"data","data":…,"topic"?}
// from a member with grant publish_data is serialized once as
// {"type":"data","from":<identity>,"topic":<topic or null>,"data":…} and the same bytes are
// sent to every other member with grant subscribe (as Switchboard: serialize once, copy to each).
// A second connection with the same identity replaces the first (4010); a member whose send
// buffer passes PEER_MAX_SEND_QUEUE (1 MiB, Switchboard's ws.max_send_queue) is closed with 4008.
// Presence (participant_joined/left) is not sent for hidden participants, which is all the bench
// uses, so the peer does not implement it; `joined` is sent (the client waits for it).
//
// Environment: PEER_HOST, PEER_PORT, PEER_JWKS (file), PEER_ISSUER, PEER_ROOMS (comma-separated
// room names that exist), PEER_MAX_SEND_QUEUE.
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';

import { WebSocketServer } from 'ws';

const HOST = process.env.PEER_HOST ?? '127.0.0.1';
const PORT = Number(process.env.PEER_PORT ?? 0);
const ISSUER = process.env.PEER_ISSUER ?? '';
const ROOMS = new Set((process.env.PEER_ROOMS ?? '').split(',').filter(Boolean));
const MAX_SEND_QUEUE = Number(process.env.PEER_MAX_SEND_QUEUE ?? 1024 * 1024);
const LEEWAY_S = 10;
const MAX_LIFETIME_S = 86400;
const GRANTS = ['publish', 'subscribe', 'publish_data', 'admin', 'hidden', 'record'];
const DEFAULT_GRANTS = { publish: true, subscribe: true, publish_data: true, admin: false, hidden: false, record: false };
const NAME_RE = /^[A-Za-z0-9_-]{1,128}$/;
const IDENTITY_RE = /^[A-Za-z0-9_.:@-]{1,128}$/;

// kid → { alg, key }
const keys = new Map();
for (const jwk of JSON.parse(fs.readFileSync(process.env.PEER_JWKS, 'utf8')).keys) {
  if (jwk.kty === 'oct') keys.set(jwk.kid, { alg: 'HS256', key: Buffer.from(jwk.k, 'base64url') });
  else keys.set(jwk.kid, { alg: jwk.alg ?? (jwk.kty === 'OKP' ? 'EdDSA' : 'ES256'), key: crypto.createPublicKey({ key: jwk, format: 'jwk' }) });
}

function b64json(s) {
  return JSON.parse(Buffer.from(s, 'base64url').toString('utf8'));
}

/** The claims of a valid participant token, or null. */
function verify(token) {
  if (!token || token.length > 8192) return null;
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  let header;
  let claims;
  try {
    header = b64json(parts[0]);
    claims = b64json(parts[1]);
  } catch {
    return null;
  }
  const k = typeof header.kid === 'string' ? keys.get(header.kid) : undefined;
  if (!k || header.alg !== k.alg) return null;
  const signed = Buffer.from(`${parts[0]}.${parts[1]}`);
  const sig = Buffer.from(parts[2], 'base64url');
  let ok;
  if (k.alg === 'HS256') {
    const mac = crypto.createHmac('sha256', k.key).update(signed).digest();
    ok = mac.length === sig.length && crypto.timingSafeEqual(mac, sig);
  } else if (k.alg === 'ES256') {
    ok = crypto.verify('sha256', signed, { key: k.key, dsaEncoding: 'ieee-p1363' }, sig);
  } else {
    ok = crypto.verify(null, signed, k.key, sig);
  }
  if (!ok) return null;
  const now = Math.floor(Date.now() / 1000);
  if (claims.aud !== 'switchboard:rtc' && !(Array.isArray(claims.aud) && claims.aud.includes('switchboard:rtc'))) return null;
  if (ISSUER && claims.iss !== ISSUER) return null;
  if (!Number.isInteger(claims.exp) || now >= claims.exp + LEEWAY_S) return null;
  if (Number.isInteger(claims.nbf) && now + LEEWAY_S < claims.nbf) return null;
  if (Number.isInteger(claims.iat) && claims.exp - claims.iat > MAX_LIFETIME_S) return null;
  if (typeof claims.room !== 'string' || !NAME_RE.test(claims.room)) return null;
  if (typeof claims.sub !== 'string' || !IDENTITY_RE.test(claims.sub)) return null;
  const g = { ...DEFAULT_GRANTS };
  if (claims.grants && typeof claims.grants === 'object') for (const n of GRANTS) if (typeof claims.grants[n] === 'boolean') g[n] = claims.grants[n];
  return { identity: claims.sub, room: claims.room, name: claims.name ?? null, grants: g, exp: claims.exp };
}

const rooms = new Map(); // room name → Map identity → ws

function relay(ws, text) {
  let m;
  try {
    m = JSON.parse(text);
  } catch {
    ws.send('{"type":"error","code":"invalid_message","message":"not JSON"}');
    return;
  }
  if (m === null || typeof m !== 'object' || m.type !== 'data' || typeof m.data !== 'string' || m.data.length > 65536 ||
      (m.topic !== undefined && m.topic !== null && typeof m.topic !== 'string')) {
    ws.send('{"type":"error","code":"invalid_message","message":"expected a data message"}');
    return;
  }
  if (!ws.p.grants.publish_data) {
    ws.send('{"type":"error","code":"forbidden","message":"no publish_data grant"}');
    return;
  }
  const out = Buffer.from(JSON.stringify({ type: 'data', from: ws.p.identity, topic: m.topic ?? null, data: m.data }));
  const members = rooms.get(ws.p.room);
  for (const other of members.values()) {
    if (other === ws || !other.p.grants.subscribe) continue;
    if (other.bufferedAmount > MAX_SEND_QUEUE) {
      other.close(4008, 'too slow');
      continue;
    }
    other.send(out, { binary: false });
  }
}

const server = http.createServer((req, res) => {
  if (req.url === '/healthz') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end('{"status":"ok"}');
    return;
  }
  res.writeHead(404);
  res.end();
});
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: 1024 * 1024 });

server.on('upgrade', (req, socket, head) => {
  const u = new URL(req.url, 'http://x');
  let token = u.searchParams.get('access_token');
  const authz = req.headers.authorization;
  if (!token && authz && /^bearer /i.test(authz)) token = authz.slice(7).trim();
  if (u.pathname !== '/v1/rtc' || !token) {
    socket.end('HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
    return;
  }
  const p = verify(token);
  if (p && !ROOMS.has(p.room)) {
    socket.end('HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => {
    if (!p) {
      ws.close(4001, 'bad token');
      return;
    }
    ws.p = p;
    let members = rooms.get(p.room);
    if (!members) rooms.set(p.room, (members = new Map()));
    const old = members.get(p.identity);
    if (old) {
      old.replaced = true;
      old.close(4010, 'replaced');
    }
    members.set(p.identity, ws);
    ws.on('message', (data, isBinary) => {
      if (!isBinary) relay(ws, data.toString());
    });
    ws.on('close', () => {
      if (members.get(p.identity) === ws) members.delete(p.identity);
    });
    ws.on('error', () => {});
    ws.send(JSON.stringify({
      type: 'joined',
      room: { name: p.room },
      session_id: 'ses_peer',
      participant: { identity: p.identity, name: p.name, grants: p.grants },
      participants: [],
    }));
  });
});

server.listen(PORT, HOST, () => {
  console.log(`ws-relay listening on ws://${HOST}:${server.address().port}/v1/rtc`);
});
process.on('SIGTERM', () => {
  for (const ws of wss.clients) ws.close(1001, 'shutting down');
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
});
