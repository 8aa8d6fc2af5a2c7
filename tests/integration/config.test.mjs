// Configuration from the outside: --help, --version, --check-config, and the precedence of
// YAML file < environment < flags, observed through behaviour (the 413 boundary).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { exchange } from './lib/client.mjs';
import { runBin, startServer, tempDir } from './lib/server.mjs';

// Every key of include/switchboard/config.h, as its flag.
const KEYS = [
  'dev', 'data_dir', 'workers', 'listen', 'plain_listen',
  'tls.cert', 'tls.key', 'tls.session_tickets', 'tls.handshake_timeout',
  'http.max_request_line', 'http.max_header_bytes', 'http.max_headers', 'http.max_body_bytes',
  'http.header_timeout', 'http.body_timeout', 'http.idle_timeout', 'http.write_timeout',
  'http.max_connections', 'http.max_pipelined',
  'shutdown.drain_timeout',
  'log.level', 'log.access', 'log.file', 'metrics.enabled',
];
const flagOf = (k) => `--${k.replace(/_/g, '-')}`;
const envOf = (k) => `SWITCHBOARD_${k.replace(/\./g, '_').toUpperCase()}`;
const esc = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

let dir;
before(async () => {
  dir = await tempDir('itest-switchboard-config-');
});
after(() => {
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

function writeYaml(name, text) {
  const p = path.join(dir, name);
  fs.writeFileSync(p, text);
  return p;
}

describe('command line', () => {
  for (const flag of ['--help', '-h']) {
    it(`${flag} exits 0 and lists every key with its flag and environment variable`, async () => {
      const r = await runBin([flag]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stderr, '');
      for (const k of KEYS) {
        assert.match(r.stdout, new RegExp(`${esc(flagOf(k))}\\b`), `help lists ${flagOf(k)}`);
        assert.match(r.stdout, new RegExp(`${esc(envOf(k))}\\b`), `help lists ${envOf(k)}`);
      }
      for (const f of ['--config', '--check-config', '--version', '--help']) assert.ok(r.stdout.includes(f), `help mentions ${f}`);
    });
  }

  it('--help wins over a bad flag', async () => {
    const r = await runBin(['--no-such-flag', '--help']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /--http\.max-body-bytes/);
  });

  for (const flag of ['--version', '-V']) {
    it(`${flag} prints "switchboard 0.1.0"`, async () => {
      const r = await runBin([flag]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, 'switchboard 0.1.0\n');
    });
  }

  it('--check-config exits 0 for a good configuration (flags, YAML, environment)', async () => {
    const yaml = writeYaml('good.yaml', [
      'dev: true',
      'listen: ["127.0.0.1:18443", "[::1]:18443"]',
      'http:',
      '  max_body_bytes: 2MiB',
      '  header_timeout: 5s',
      'shutdown.drain_timeout: 3s',
      'log: {level: debug, access: false}',
      '',
    ].join('\n'));
    const r = await runBin(['--check-config', '--config', yaml, '--http.max-headers', '50', '--http.idle-timeout=250ms',
      '--data-dir', path.join(dir, 'unused')], { env: { SWITCHBOARD_WORKERS: '2' } });
    assert.equal(r.code, 0, `stderr: ${r.stderr}`);
    assert.match(r.stdout, /OK/i);
  });

  it('--check-config accepts --listen 127.0.0.1:0 (a port picked by the kernel, as the tests use)', async () => {
    const r = await runBin(['--check-config', '--dev', '--listen', '127.0.0.1:0', '--plain-listen', '127.0.0.1:0']);
    assert.equal(r.code, 0, `port 0 refused: ${r.stderr}`);
  });

  const bad = [
    ['--http.max-headers 0 (below the range)', ['--http.max-headers', '0'], {}, /http[._-]max[._-]headers/],
    ['--http.max-headers 129 (above the range)', ['--http.max-headers', '129'], {}, /http[._-]max[._-]headers/],
    ['an unknown flag', ['--no-such-flag', '1'], {}, /no-such-flag/],
    ['a misspelt flag', ['--http.max-body-byte', '1'], {}, /max-body-byte/],
    ['a size that is not a size', ['--http.max-body-bytes', 'lots'], {}, /max[._-]body[._-]bytes/],
    ['a duration with an unknown unit', ['--http.header-timeout', '5parsecs'], {}, /header[._-]timeout/],
    ['a duration below its minimum', ['--http.header-timeout', '10ms'], {}, /header[._-]timeout/],
    ['a negative duration', ['--http.body-timeout', '-5s'], {}, /body[._-]timeout/],
    ['too many workers', ['--workers', '65'], {}, /workers/],
    ['a listener without a port', ['--listen', '127.0.0.1'], {}, /listen|port/i],
    ['a listener port out of range', ['--listen', '127.0.0.1:70000'], {}, /listen|port/i],
    ['a listener host that is a name', ['--listen', 'example.com:443'], {}, /listen|host/i],
    ['a bad log level', ['--log.level', 'loud'], {}, /log[._-]level/],
    ['a bad boolean', ['--metrics.enabled=maybe'], {}, /metrics[._-]enabled/],
    ['a flag without its value', ['--http.max-body-bytes'], {}, /max[._-]body[._-]bytes/],
    ['a stray argument', ['stray'], {}, /stray/],
    ['tls.cert without tls.key', ['--tls.cert', '/nonexistent/cert.pem'], {}, /tls[._-]key|tls[._-]cert/],
    ['a certificate file that does not exist', ['--tls.cert', '/nonexistent/cert.pem', '--tls.key', '/nonexistent/key.pem'], {}, /nonexistent/],
    ['a missing --config file', ['--config', '/nonexistent/switchboard.yaml'], {}, /nonexistent\/switchboard\.yaml/],
    ['a bad value in the environment', [], { SWITCHBOARD_HTTP_MAX_BODY_BYTES: 'abc' }, /SWITCHBOARD_HTTP_MAX_BODY_BYTES/],
    ['an unknown SWITCHBOARD_ variable', [], { SWITCHBOARD_HTTP_MAX_BODYBYTES: '1' }, /SWITCHBOARD_HTTP_MAX_BODYBYTES/],
  ];
  for (const [name, args, env, re] of bad) {
    it(`--check-config refuses ${name}`, async () => {
      const r = await runBin(['--check-config', '--dev', ...args], { env });
      assert.notEqual(r.code, 0, `accepted: ${r.stdout}`);
      assert.notEqual(r.code, null, 'exited normally');
      assert.match(r.stderr, re, `message names the problem: ${r.stderr}`);
      assert.doesNotMatch(r.stdout, /configuration OK/);
      assert.ok(r.stderr.trim().length < 1000, 'a short message, not a dump');
    });
  }

  const badYaml = [
    ['a YAML syntax error', 'http:\n  max_body_bytes: [1, 2\nlog:\n  level: info\n', /YAML|syntax/i],
    ['an unknown key in YAML', 'http:\n  max_bdy_bytes: 1KiB\n', /max_bdy_bytes/],
    ['a duplicate key in YAML', 'http:\n  max_body_bytes: 1KiB\n  max_body_bytes: 2KiB\n', /duplicate|max_body_bytes/],
    ['an out-of-range value in YAML', 'http:\n  max_headers: 1000\n', /max_headers/],
    ['a mapping where a value belongs', 'http:\n  max_headers:\n    a: 1\n', /max_headers/],
  ];
  for (const [name, text, re] of badYaml) {
    it(`--check-config refuses ${name}, naming the file`, async () => {
      const file = writeYaml(`bad-${name.replace(/\W+/g, '-')}.yaml`, text);
      const r = await runBin(['--check-config', '--dev', '--config', file]);
      assert.notEqual(r.code, 0, `accepted: ${r.stdout}`);
      assert.match(r.stderr, re, r.stderr);
      assert.ok(r.stderr.includes(path.basename(file)), `names the file: ${r.stderr}`);
      assert.match(r.stderr, /:\d+/, `gives a line number: ${r.stderr}`);
    });
  }

  it('a bad configuration also stops a normal start, before listening', async () => {
    const r = await runBin(['--dev', '--listen', '127.0.0.1:1', '--data-dir', path.join(dir, 'never'), '--http.max-headers', '0'],
      { timeoutMs: 10000 });
    assert.notEqual(r.code, 0);
    assert.notEqual(r.code, null, 'exited on its own');
    assert.match(r.stderr, /max[._-]headers/);
    assert.doesNotMatch(r.stderr, /"listening"/);
  });
});

async function bodyLimitIs(srv, n) {
  // n bytes: read and answered (405 for POST /healthz); n + 1: 413 from the header alone.
  const ok = await exchange(srv,
    `POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: ${n}\r\n\r\n${'b'.repeat(n)}` +
    'GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n');
  assert.deepEqual(ok.responses.map((x) => x.status), [405, 200], `a body of ${n} bytes is accepted`);
  const over = await exchange(srv, `POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: ${n + 1}\r\n\r\n`);
  assert.equal(over.responses[0]?.status, 413, `a body of ${n + 1} bytes is refused`);
}

describe('precedence: YAML < environment < flags (observed as the 413 boundary)', () => {
  let yaml;
  before(() => {
    yaml = writeYaml('limits.yaml', 'http:\n  max_body_bytes: 100\n');
  });
  const cases = [
    ['the YAML file alone', {}, [], 100],
    ['the environment over the YAML file', { SWITCHBOARD_HTTP_MAX_BODY_BYTES: '200' }, [], 200],
    ['a flag over the environment', { SWITCHBOARD_HTTP_MAX_BODY_BYTES: '200' }, ['--http.max-body-bytes', '300'], 300],
    ['a flag written with = and underscores', { SWITCHBOARD_HTTP_MAX_BODY_BYTES: '200' }, ['--http.max_body_bytes=301'], 301],
  ];
  for (const [name, env, args, limit] of cases) {
    it(`${name} → max_body_bytes = ${limit}`, async (t) => {
      const srv = await startServer({ workers: 1, env, args: ['--config', yaml, ...args] });
      t.after(() => srv.cleanup());
      await bodyLimitIs(srv, limit);
    });
  }

  it('size units: "1KiB" in YAML is 1024 bytes', async (t) => {
    const y = writeYaml('kib.yaml', 'http.max_body_bytes: 1KiB\n');
    const srv = await startServer({ workers: 1, args: ['--config', y] });
    t.after(() => srv.cleanup());
    await bodyLimitIs(srv, 1024);
  });
});

describe('SIGHUP re-reads the YAML file', () => {
  let srv;
  let yaml;
  before(async () => {
    yaml = writeYaml('live.yaml', 'metrics:\n  enabled: true\nhttp:\n  max_body_bytes: 100\n');
    srv = await startServer({ workers: 2, args: ['--config', yaml] });
  });
  after(async () => {
    await srv?.cleanup();
  });

  const metricsStatus = async () => (await exchange(srv, 'GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n')).responses[0].status;

  it('a reloadable key (metrics.enabled) takes effect on SIGHUP', async () => {
    assert.equal(await metricsStatus(), 200);
    fs.writeFileSync(yaml, 'metrics:\n  enabled: false\nhttp:\n  max_body_bytes: 100\n');
    const from = srv.stderrLines().length;
    srv.signal('SIGHUP');
    await srv.waitForLog((l) => l.msg === 'reload complete', { from });
    let st;
    for (let i = 0; i < 20 && st !== 404; i++) { // loops apply the reload asynchronously
      st = await metricsStatus();
      if (st !== 404) await new Promise((r) => setTimeout(r, 25));
    }
    assert.equal(st, 404, '/metrics is off after the reload');
  });

  it('a key that needs a restart is reported and keeps its running value', async () => {
    fs.writeFileSync(yaml, 'metrics:\n  enabled: false\nhttp:\n  max_body_bytes: 50\n');
    const from = srv.stderrLines().length;
    srv.signal('SIGHUP');
    const warn = await srv.waitForLog((l) => /restart/.test(l.msg), { from });
    assert.equal(warn.key, 'http.max_body_bytes');
    await srv.waitForLog((l) => l.msg === 'reload complete', { from });
    await bodyLimitIs(srv, 100);
  });

  it('a broken file on SIGHUP is logged and the running config stays', async () => {
    fs.writeFileSync(yaml, 'metrics:\n  enabled: [true\n');
    const from = srv.stderrLines().length;
    srv.signal('SIGHUP');
    const line = await srv.waitForLog((l) => /reload failed/.test(l.msg), { from });
    assert.equal(line.level, 'error');
    assert.match(line.reason ?? '', /live\.yaml/);
    assert.equal(await metricsStatus(), 404, 'still the last good config');
    assert.equal(srv.running, true);
  });
});
