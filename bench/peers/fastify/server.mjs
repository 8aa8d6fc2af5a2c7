// Benchmark peer for bench/rest.bench.sh: GET /v1/rooms/{name} in fastify, doing the work
// Switchboard does for that request (src/api/app.c sb_app_auth, src/api/rest_rooms.c rooms_get),
// with the data in memory instead of SQLite:
//
//   - HTTPS with the same certificate, key and TLS policy as Switchboard (src/net/tls.c);
//   - `Authorization: Bearer <key>` checked the same way: "Bearer " (any case), leading spaces
//     skipped, SHA-256 of the credential looked up in an in-memory Map (Switchboard: its
//     per-loop credential cache), expiry checked, then the scope bitmask; 401 with
//     WWW-Authenticate / 403 as RFC 9457 problems otherwise;
//   - the room name checked against ^[A-Za-z0-9_-]{1,128}$, the room looked up in an in-memory
//     Map per project (Switchboard: a prepared SQLite read) and answered as the same JSON
//     object, serialized per request (fastify's response schema, i.e. fast-json-stringify);
//   - X-Request-Id on every response (the caller's, when valid, echoed);
//   - one JSON access-log line per request to a file, buffered (pino to a sonic-boom
//     destination with a 64 KiB buffer, flushed at least every second), as Switchboard's --log.file and the nginx peer do.
//
// Single-threaded (one node process). Configured by environment (all required):
//   PEER_HOST, PEER_PORT          where to listen
//   PEER_CERT, PEER_KEY           PEM files (Switchboard's dev certificate and key)
//   PEER_LOG                      access-log file
//   PEER_API_KEY                  the one valid bearer credential (all scopes)
//   PEER_ROOM_FILE                a room object as JSON (as Switchboard answered it)
// SIGTERM: stop listening, flush the log, exit 0.
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import Fastify from 'fastify';
import pino from 'pino';

function env(name) {
    const v = process.env[name];
    if (v === undefined || v === '') {
        console.error(`fastify peer: ${name} is not set`);
        process.exit(2);
    }
    return v;
}

// ---- TLS: Mozilla intermediate, as src/net/tls.c ---------------------------------------------
const TLS12_CIPHERS =
    'ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:' +
    'ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:' +
    'ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:' +
    'DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305';
const TLS13_SUITES = 'TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256';

// ---- scopes, as src/auth/scopes.h: one bit each, same order -------------------------------------------------
const SCOPE_NAMES = [
    'rooms:read', 'rooms:write', 'tokens:write', 'sessions:read', 'recordings:read',
    'recordings:write', 'webhooks:read', 'webhooks:write', 'events:read', 'keys:read',
    'keys:write', 'projects:write',
];
const SCOPE = Object.fromEntries(SCOPE_NAMES.map((s, i) => [s, 1 << i]));
const ALL_SCOPES = (1 << SCOPE_NAMES.length) - 1;

// ---- data, in memory ----------------------------------------------------------------------------
const PROJECT_ID = 'prj_default';
const MAX_BEARER = 4096;

/** SHA-256 of the credential → {projectId, credentialId, scopes, expiresAt (0 = never)} */
const credentials = new Map();
/** project id → (room name → room object) */
const rooms = new Map();

function sha256(s) {
    return createHash('sha256').update(s).digest('base64');
}

credentials.set(sha256(env('PEER_API_KEY')), {
    projectId: PROJECT_ID,
    credentialId: 'key_bootstrap',
    scopes: ALL_SCOPES,
    expiresAt: 0,
});
{
    const room = JSON.parse(readFileSync(env('PEER_ROOM_FILE'), 'utf8'));
    rooms.set(PROJECT_ID, new Map([[room.name, room]]));
}

// ---- request ids: 16 hex digits per process + a 12-digit hex counter, as Switchboard ------------
const ID_PREFIX = randomBytes(8).toString('hex');
let idSeq = 0;
const VALID_REQUEST_ID = /^[A-Za-z0-9\-_.:~]{1,128}$/;

function genReqId(raw) {
    const h = raw.headers['x-request-id'];
    if (typeof h === 'string' && VALID_REQUEST_ID.test(h)) return h;
    idSeq++;
    return ID_PREFIX + idSeq.toString(16).padStart(12, '0');
}

// ---- access log: one JSON line per request, buffered --------------------------------------------
const logDest = pino.destination({ dest: env('PEER_LOG'), minLength: 65536, maxWrite: 131072, sync: false });
setInterval(() => logDest.flush(), 1000).unref(); // at most 1 s behind, like nginx's flush=1s
const log = pino(
    {
        base: null,
        messageKey: 'msg',
        timestamp: () => `,"ts":"${new Date().toISOString()}"`,
        formatters: { level: (label) => ({ level: label }) },
    },
    logDest,
);

// ---- the app --------------------------------------------------------------------------------------
const app = Fastify({
    logger: false, // the access log is written by the onResponse hook below, one line a request
    genReqId,
    https: {
        cert: readFileSync(env('PEER_CERT')),
        key: readFileSync(env('PEER_KEY')),
        minVersion: 'TLSv1.2',
        maxVersion: 'TLSv1.3',
        ciphers: `${TLS12_CIPHERS}:${TLS13_SUITES}`,
        ecdhCurve: 'X25519:prime256v1:secp384r1',
        honorCipherOrder: false,
        ALPNProtocols: ['http/1.1'],
    },
    keepAliveTimeout: 75000,
});

const STATUS_TITLE = { 401: 'Unauthorized', 403: 'Forbidden', 404: 'Not Found', 500: 'Internal Server Error' };

function problem(reply, status, slug, detail) {
    reply
        .code(status)
        .type('application/problem+json')
        .send(
            JSON.stringify({
                type: `urn:switchboard:problem:${slug}`,
                title: STATUS_TITLE[status] ?? 'Error',
                status,
                detail,
                request_id: reply.request.id,
            }),
        );
}

function unauthorized(reply, detail) {
    reply.header('www-authenticate', 'Bearer realm="switchboard", error="invalid_token"');
    problem(reply, 401, 'unauthorized', detail);
}

/** The credential of the request if it has every scope in `need`; otherwise answers and
 *  returns null. */
function authenticate(req, reply, need) {
    const h = req.headers.authorization;
    if (h === undefined) {
        reply.header('www-authenticate', 'Bearer realm="switchboard"');
        problem(reply, 401, 'unauthorized', 'an Authorization: Bearer credential is required');
        return null;
    }
    if (h.length < 8 || h.slice(0, 7).toLowerCase() !== 'bearer ' || h.length - 7 > MAX_BEARER) {
        unauthorized(reply, 'the Authorization header must be: Bearer <credential>');
        return null;
    }
    let i = 7;
    while (i < h.length && h.charCodeAt(i) === 32) i++;
    const cred = credentials.get(sha256(h.slice(i)));
    if (cred === undefined || (cred.expiresAt !== 0 && cred.expiresAt <= Date.now())) {
        unauthorized(reply, 'the credential is not valid (unknown, revoked or expired)');
        return null;
    }
    if ((cred.scopes & need) !== need) {
        const want = SCOPE_NAMES.filter((s) => need & ~cred.scopes & SCOPE[s]).join(' ');
        problem(reply, 403, 'insufficient-scope', `the credential lacks the scope: ${want}`);
        return null;
    }
    return cred;
}

const ROOM_NAME = /^[A-Za-z0-9_-]{1,128}$/;

// The room object of API.md, in Switchboard's field order.
const roomSchema = {
    type: 'object',
    properties: {
        name: { type: 'string' },
        metadata: { type: ['string', 'null'] },
        max_participants: { type: 'integer' },
        empty_timeout_seconds: { type: 'integer' },
        auto_record: { type: 'boolean' },
        status: { type: 'string' },
        created_at: { type: 'string' },
        num_participants: { type: 'integer' },
        active_session_id: { type: ['string', 'null'] },
    },
    required: [
        'name', 'metadata', 'max_participants', 'empty_timeout_seconds', 'auto_record', 'status',
        'created_at', 'num_participants', 'active_session_id',
    ],
};

app.get('/v1/rooms/:name', { schema: { response: { 200: roomSchema } } }, (req, reply) => {
    reply.header('x-request-id', req.id);
    const cred = authenticate(req, reply, SCOPE['rooms:read']);
    if (cred === null) return;
    const name = req.params.name;
    const room = ROOM_NAME.test(name) ? rooms.get(cred.projectId)?.get(name) : undefined;
    if (room === undefined || room.status !== 'open') {
        problem(reply, 404, 'not-found', 'no such open room in this project');
        return;
    }
    reply.send(room);
});

app.setNotFoundHandler((req, reply) => {
    reply.header('x-request-id', req.id);
    problem(reply, 404, 'not-found', 'no such resource');
});
app.setErrorHandler((err, req, reply) => {
    reply.header('x-request-id', req.id);
    const status = err.statusCode >= 400 && err.statusCode < 500 ? err.statusCode : 500;
    problem(reply, status, status === 500 ? 'internal' : 'invalid-request', status === 500 ? 'an internal error occurred' : err.message);
});

app.addHook('onResponse', (req, reply, done) => {
    const url = req.url;
    const q = url.indexOf('?');
    log.info(
        {
            method: req.method,
            path: q < 0 ? url : url.slice(0, q),
            status: reply.statusCode,
            bytes: Number(reply.getHeader('content-length') ?? 0),
            duration_ms: Math.round(reply.elapsedTime * 1000) / 1000,
            request_id: req.id,
            remote: req.ip,
            proto: `HTTP/${req.raw.httpVersion}`,
        },
        'request',
    );
    done();
});

let stopping = false;
async function stop() {
    if (stopping) return;
    stopping = true;
    const force = setTimeout(() => {
        logDest.flushSync();
        process.exit(0);
    }, 5000);
    force.unref();
    try {
        await app.close();
    } finally {
        logDest.flushSync();
        process.exit(0);
    }
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);

try {
    await app.listen({ host: env('PEER_HOST'), port: Number(env('PEER_PORT')) });
    console.log(`fastify peer ${app.version} (node ${process.version}) listening on https://${env('PEER_HOST')}:${env('PEER_PORT')}`);
} catch (err) {
    console.error(`fastify peer: ${err.message}`);
    process.exit(1);
}
