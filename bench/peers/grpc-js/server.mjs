// Benchmark peer for bench/grpc.bench.sh: switchboard.v1.RoomService/GetRoom in @grpc/grpc-js,
// loading the repository's own proto files, doing the work Switchboard does for that call
// with the data in memory instead of SQLite:
//
//   - TLS (ALPN h2) with the same certificate and key as Switchboard;
//   - `authorization: Bearer <key>` metadata checked as Switchboard checks it: SHA-256 of the
//     credential looked up in an in-memory Map (Switchboard: its per-loop credential cache),
//     then the scope; UNAUTHENTICATED / PERMISSION_DENIED otherwise;
//   - the room name checked against ^[A-Za-z0-9_-]{1,128}$ (INVALID_ARGUMENT), the room looked
//     up in a Map (NOT_FOUND) and answered as the same Room message;
//   - one JSON access-log line per call to a file, buffered (64 KiB, flushed every second),
//     as Switchboard's --log.file does.
//
// Single-threaded (one node process). Configured by environment (all required):
//   PEER_HOST, PEER_PORT, PEER_CERT, PEER_KEY, PEER_LOG, PEER_API_KEY,
//   PEER_ROOM_FILE (the room as Switchboard's REST answered it), PEER_PROTO_DIR.
// SIGTERM: stop, flush the log, exit 0.
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, openSync, readFileSync, writeSync } from 'node:fs';

import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';

function env(name) {
    const v = process.env[name];
    if (v === undefined || v === '') {
        console.error(`grpc-js peer: ${name} is not set`);
        process.exit(2);
    }
    return v;
}

const ROOMS_READ = 1; // scope bit, as src/auth/scopes.h
const sha = (s) => createHash('sha256').update(s).digest('hex');
const credentials = new Map([[sha(env('PEER_API_KEY')), { projectId: 'prj_default', scopes: 0xfff, expiresAt: 0 }]]);

const room = JSON.parse(readFileSync(env('PEER_ROOM_FILE'), 'utf8'));
for (const k of Object.keys(room)) if (room[k] === null) delete room[k]; // null in REST = absent
const rooms = new Map([[`prj_default/${room.name}`, room]]);
const NAME_RE = /^[A-Za-z0-9_-]{1,128}$/;

// ---- access log, buffered ----------------------------------------------------------------------
const logFd = openSync(env('PEER_LOG'), 'a');
let logBuf = '';
const flush = () => {
    if (logBuf) {
        writeSync(logFd, logBuf);
        logBuf = '';
    }
};
setInterval(flush, 1000).unref();
function access(call, code, t0) {
    logBuf += `{"time":"${new Date().toISOString()}","level":"info","msg":"request","method":"POST",` +
        `"path":"/switchboard.v1.RoomService/GetRoom","grpc_status":${code},` +
        `"duration_ms":${(Number(process.hrtime.bigint() - t0) / 1e6).toFixed(3)},` +
        `"request_id":"${randomBytes(8).toString('hex')}","remote":"${call.getPeer()}"}\n`;
    if (logBuf.length >= 65536) flush();
}

function auth(md) {
    const v = md.get('authorization')[0];
    if (typeof v !== 'string' || !/^bearer /i.test(v)) return null;
    const c = credentials.get(sha(v.slice(7).trimStart()));
    if (!c || (c.expiresAt && c.expiresAt < Date.now())) return null;
    return c;
}

function GetRoom(call, cb) {
    const t0 = process.hrtime.bigint();
    const done = (err, res) => {
        access(call, err ? err.code : 0, t0);
        cb(err, res);
    };
    const who = auth(call.metadata);
    if (!who) return done({ code: grpc.status.UNAUTHENTICATED, details: 'an Authorization: Bearer credential is required' });
    if (!(who.scopes & ROOMS_READ)) return done({ code: grpc.status.PERMISSION_DENIED, details: 'insufficient scope' });
    const name = call.request.name ?? '';
    if (!NAME_RE.test(name)) return done({ code: grpc.status.NOT_FOUND, details: 'no such open room in this project' });
    const r = rooms.get(`${who.projectId}/${name}`);
    if (!r) return done({ code: grpc.status.NOT_FOUND, details: 'no such open room in this project' });
    done(null, r);
}

const def = protoLoader.loadSync(['switchboard/v1/rooms.proto'], {
    includeDirs: [env('PEER_PROTO_DIR')],
    keepCase: true,
    longs: Number,
    enums: String,
    defaults: false,
});
const pkg = grpc.loadPackageDefinition(def);
const server = new grpc.Server();
const unimplemented = (call, cb) => cb({ code: grpc.status.UNIMPLEMENTED });
const impl = { GetRoom };
for (const m of Object.keys(pkg.switchboard.v1.RoomService.service)) impl[m] ??= unimplemented;
server.addService(pkg.switchboard.v1.RoomService.service, impl);
const creds = grpc.ServerCredentials.createSsl(null, [
    { cert_chain: readFileSync(env('PEER_CERT')), private_key: readFileSync(env('PEER_KEY')) },
]);
server.bindAsync(`${env('PEER_HOST')}:${env('PEER_PORT')}`, creds, (err) => {
    if (err) {
        console.error(`grpc-js peer: ${err.message}`);
        process.exit(1);
    }
    console.log('grpc-js peer: listening');
});
process.on('SIGTERM', () => {
    server.tryShutdown(() => {
        flush();
        closeSync(logFd);
        process.exit(0);
    });
    setTimeout(() => server.forceShutdown(), 2000).unref();
});
