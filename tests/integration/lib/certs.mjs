// Test certificates made with the openssl CLI: a CA and a server certificate it signs
// (ECDSA P-256, SAN IP:127.0.0.1 and DNS:localhost).
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

import { run } from './server.mjs';

async function openssl(args, cwd) {
  const r = await run('openssl', args, { cwd });
  assert.equal(r.code, 0, `openssl ${args.join(' ')} failed:\n${r.stderr}`);
  return r;
}

/** Creates DIR/NAME-ca.pem, -ca.key, -server.pem, -server.key. Returns their paths. */
export async function makeCaAndServerCert(dir, name) {
  const caCnf = path.join(dir, `${name}-ca.cnf`);
  const leafCnf = path.join(dir, `${name}-leaf.cnf`);
  fs.writeFileSync(caCnf, `[req]
distinguished_name = dn
prompt = no
x509_extensions = v3_ca
[dn]
CN = Switchboard Test CA ${name}
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
`);
  fs.writeFileSync(leafCnf, `[v3_leaf]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
authorityKeyIdentifier = keyid
`);
  const p = (s) => path.join(dir, `${name}-${s}`);
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  await openssl(['req', '-x509', '-config', caCnf, ...ec, '-keyout', p('ca.key'), '-out', p('ca.pem'), '-days', '2']);
  await openssl(['req', '-new', ...ec, '-keyout', p('server.key'), '-out', p('server.csr'), '-subj', `/CN=switchboard-test-${name}`]);
  await openssl(['x509', '-req', '-in', p('server.csr'), '-CA', p('ca.pem'), '-CAkey', p('ca.key'),
    '-set_serial', `0x${crypto.randomBytes(8).toString('hex')}`, '-days', '2',
    '-extfile', leafCnf, '-extensions', 'v3_leaf', '-out', p('server.pem')]);
  return { ca: p('ca.pem'), caKey: p('ca.key'), cert: p('server.pem'), key: p('server.key'), name };
}

/** SHA-256 fingerprint of a PEM certificate, in node's X509Certificate.fingerprint256 format. */
export function fingerprint(pemPath) {
  return new crypto.X509Certificate(fs.readFileSync(pemPath)).fingerprint256;
}

/** Replaces `dst` atomically with the contents of `src` (or with `data`). */
export function replaceFile(dst, { src, data }) {
  const tmp = `${dst}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, data ?? fs.readFileSync(src), { mode: 0o600 });
  fs.renameSync(tmp, dst);
}
