// bench/grpc.bench.sh's correctness check: one GetRoom call with @grpc/grpc-js against
// 127.0.0.1:PORT (TLS, trusting CA), printing the Room as JSON, or "ERROR <code>".
//   node check.mjs PORT CA PROTO_DIR ROOM [KEY]
import { readFileSync } from 'node:fs';

import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';

const [port, ca, protoDir, room, key] = process.argv.slice(2);
const def = protoLoader.loadSync(['switchboard/v1/rooms.proto'], { includeDirs: [protoDir], keepCase: true, longs: Number, enums: String, defaults: false });
const pkg = grpc.loadPackageDefinition(def);
const client = new pkg.switchboard.v1.RoomService(`127.0.0.1:${port}`, grpc.credentials.createSsl(readFileSync(ca)), {
    'grpc.ssl_target_name_override': 'localhost',
    'grpc.default_authority': 'localhost',
});
const md = new grpc.Metadata();
if (key) md.set('authorization', `Bearer ${key}`);
client.GetRoom({ name: room }, md, { deadline: Date.now() + 5000 }, (err, res) => {
    if (err) console.log(`ERROR ${err.code}`);
    else console.log(JSON.stringify(res, Object.keys(res).sort()));
    client.close();
});
