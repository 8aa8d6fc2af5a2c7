// Test harness: starts the real switchboard binary on loopback with a fresh data dir,
// waits until it accepts connections, and stops it with SIGTERM, failing the test if the
// exit code is not 0 or if the sanitizers (ASan, UBSan, LSan) reported anything.
//
// SB_BIN names the binary (ctest sets it to the sanitized build); without it the usual
// build directories of the repository are tried.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.resolve(here, '../../..');

export function binPath() {
  if (process.env.SB_BIN) return process.env.SB_BIN;
  for (const dir of ['build-test', 'build-t', 'build']) {
    const p = path.join(repoRoot, dir, 'switchboard');
    if (fs.existsSync(p)) return p;
  }
  throw new Error('SB_BIN is not set and no build/switchboard binary was found');
}

export const SANITIZER_PATTERNS = [
  /ERROR: AddressSanitizer/,
  /ERROR: LeakSanitizer/,
  /LeakSanitizer/,
  /runtime error:/,
  /UndefinedBehaviorSanitizer/,
  /ThreadSanitizer/,
];

export function sanitizerEnv(extra = {}) {
  // Keep whatever the caller set (make test sets its own), add sane defaults otherwise.
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (k.startsWith('SWITCHBOARD_')) continue; // tests control the server's config fully
    env[k] = v;
  }
  env.ASAN_OPTIONS ??= 'detect_leaks=1:abort_on_error=0:exitcode=86';
  env.UBSAN_OPTIONS ??= 'print_stacktrace=1:halt_on_error=1';
  env.LSAN_OPTIONS ??= 'exitcode=86';
  return { ...env, ...extra };
}

/** Throws (with the report) if `text` contains a sanitizer report. */
export function assertNoSanitizerReport(text, what = 'server stderr') {
  for (const re of SANITIZER_PATTERNS) {
    if (re.test(text)) {
      const at = text.search(re);
      const excerpt = text.slice(Math.max(0, at - 200), at + 6000);
      assert.fail(`${what} contains a sanitizer report (${re}):\n${excerpt}`);
    }
  }
}

const live = new Set();
process.on('exit', () => {
  for (const p of live) {
    try {
      p.kill('SIGKILL');
    } catch {
      /* already gone */
    }
  }
});

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `fn` (sync or async) until it returns a truthy value; returns that value. Errors thrown
 * by `fn` count as "not yet", except those with a truthy `fatal` property, which end the wait. */
export async function waitFor(fn, { timeoutMs = 15000, intervalMs = 25, what = 'condition' } = {}) {
  const end = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      if (e?.fatal) throw e;
      last = e;
    }
    if (Date.now() > end) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}` +
        (last instanceof Error ? `: ${last.message}` : ''));
    }
    await sleep(intervalMs);
  }
}

async function canConnect(port) {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

export class Server {
  constructor(proc, dataDir, ownDataDir) {
    this.proc = proc;
    this.pid = proc.pid;
    this.dataDir = dataDir;
    this.ownDataDir = ownDataDir;
    this._stdout = '';
    this._stderr = '';
    this.exit = null; // {code, signal} once the process and its pipes are closed
    this.stopped = false;
    this.closed = new Promise((resolve) => {
      proc.once('close', (code, signal) => {
        live.delete(proc);
        this.exit = { code, signal };
        resolve(this.exit);
      });
    });
    proc.stdout.setEncoding('utf8');
    proc.stderr.setEncoding('utf8');
    proc.stdout.on('data', (d) => {
      this._stdout += d;
    });
    this._stderrWatchers = new Set();
    proc.stderr.on('data', (d) => {
      this._stderr += d;
      if (process.env.SB_ITEST_VERBOSE) process.stderr.write(d);
      for (const w of this._stderrWatchers) w();
    });
    this.closed.then(() => {
      for (const w of this._stderrWatchers) w();
    });
  }

  stdoutText() {
    return this._stdout;
  }
  stderrText() {
    return this._stderr;
  }
  stderrLines() {
    return this._stderr.split('\n').filter((l) => l.length);
  }
  /** Parsed JSON log lines (lines that are not JSON are skipped). */
  logs() {
    const out = [];
    for (const l of this.stderrLines()) {
      if (!l.startsWith('{')) continue;
      try {
        out.push(JSON.parse(l));
      } catch {
        /* partial or not JSON */
      }
    }
    return out;
  }
  /** Waits for a log entry matching `pred` (a function over the parsed line, or a RegExp over
   * the raw line); returns it. Only entries after index `from` of logs() are considered. */
  async waitForLog(pred, { timeoutMs = 5000, from = 0 } = {}) {
    return waitFor(
      () => {
        if (pred instanceof RegExp) return this.stderrLines().slice(from).find((l) => pred.test(l));
        return this.logs().slice(from).find(pred);
      },
      { timeoutMs, what: `log line ${pred}\n--- stderr so far ---\n${this._stderr.slice(-4000)}` },
    );
  }

  get running() {
    return this.exit === null;
  }

  signal(sig) {
    this.proc.kill(sig);
  }

  /** Waits for the process to exit (pipes closed); returns {code, signal} or null on timeout. */
  async waitExit(timeoutMs = 10000) {
    let timer;
    const t = new Promise((r) => {
      timer = setTimeout(() => r(null), timeoutMs);
    });
    const r = await Promise.race([this.closed, t]);
    clearTimeout(timer);
    return r;
  }

  assertNoSanitizerReport() {
    assertNoSanitizerReport(this._stderr, `server stderr (pid ${this.pid})`);
  }

  /**
   * Sends `signal` (SIGTERM), waits for the exit, asserts exit code `expectCode` (0) and that
   * no sanitizer report was printed. Kills with SIGKILL if it does not exit within timeoutMs.
   * Returns {code, signal, elapsedMs}.
   */
  async stop({ signal = 'SIGTERM', timeoutMs = 10000, expectCode = 0 } = {}) {
    const t0 = Date.now();
    if (this.running) this.proc.kill(signal);
    const r = await this.waitExit(timeoutMs);
    this.stopped = true;
    if (!r) {
      this.proc.kill('SIGKILL');
      await this.closed;
      this.assertNoSanitizerReport();
      assert.fail(`server did not exit within ${timeoutMs} ms of ${signal}\n` +
        `--- stderr tail ---\n${this._stderr.slice(-4000)}`);
    }
    await this.cleanupDir();
    this.assertNoSanitizerReport();
    if (expectCode !== null) {
      assert.equal(r.signal, null, `server killed by ${r.signal}\n${this._stderr.slice(-4000)}`);
      assert.equal(r.code, expectCode,
        `server exit code ${r.code}, expected ${expectCode}\n--- stderr tail ---\n${this._stderr.slice(-4000)}`);
    }
    return { ...r, elapsedMs: Date.now() - t0 };
  }

  /** For after-hooks: stops the server if a test left it running (asserting as stop() does),
   * otherwise only checks the sanitizer output. */
  async cleanup() {
    if (this.running) {
      await this.stop();
    } else {
      await this.cleanupDir();
      this.assertNoSanitizerReport();
    }
  }

  async cleanupDir() {
    if (this.ownDataDir && !process.env.SB_ITEST_KEEP) {
      await rm(this.dataDir, { recursive: true, force: true }).catch(() => {});
    }
  }
}

export async function tempDir(prefix = 'itest-switchboard-') {
  return mkdtemp(path.join(os.tmpdir(), prefix));
}

/**
 * Starts a node. Options:
 *   dev (true): --dev; tls (true): --listen 127.0.0.1:0; plain (false): --plain-listen 127.0.0.1:0;
 *   workers (1; null = server default); args: more flags; env: extra environment;
 *   dataDir: reuse a directory (default: a fresh mkdtemp, removed on stop);
 *   waitAccept (true): after the "listening" lines, also wait until the ports accept.
 * Resolves once every listener accepts TCP connections. Returns a Server with
 *   url, plainUrl, port, plainPort, caPath, dataDir, proc, stderrLines(), logs(), stop().
 */
async function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

// Set once a server refused "--listen 127.0.0.1:0" (see config.test.mjs): later starts in this
// process pick free ports themselves so that the rest of the suite still runs.
let portZeroRefused = false;
const PORT_ZERO_REFUSED = /port must be a number from 1|port.*(0|zero).*(invalid|not allowed|out of range)/i;

/**
 * Starts a node. Options:
 *   dev (true): --dev; tls (true): --listen 127.0.0.1:0; plain (false): --plain-listen 127.0.0.1:0;
 *   workers (1; null = server default); args: more flags; env: extra environment;
 *   dataDir: reuse a directory (default: a fresh mkdtemp, removed on stop);
 *   waitAccept (true): after the "listening" lines, also wait until the ports accept.
 * Resolves once every listener accepts TCP connections. Returns a Server with
 *   url, plainUrl, port, plainPort, caPath, dataDir, proc, stderrLines(), logs(), stop(),
 *   adminKey (the bootstrap admin key: printed on stdout, or env.SWITCHBOARD_ADMIN_KEY) and
 *   printedAdminKey (only the printed one; null when the server printed none).
 */
export async function startServer(opts = {}) {
  for (let attempt = 0; ; attempt++) {
    try {
      return await startOnce(opts, portZeroRefused);
    } catch (e) {
      if (!portZeroRefused && PORT_ZERO_REFUSED.test(e.message)) {
        portZeroRefused = true;
        process.stderr.write('# WARNING: the server refuses --listen 127.0.0.1:0; picking free ports in the harness instead\n');
        continue;
      }
      if (portZeroRefused && attempt < 3 && /address already in use|EADDRINUSE/i.test(e.message)) continue;
      throw e;
    }
  }
}

async function startOnce({
  dev = true,
  tls = true,
  plain = false,
  workers = 1,
  args = [],
  env = {},
  dataDir,
  readyTimeoutMs = 20000,
  waitAccept = true,
} = {}, pickPorts = false) {
  const own = !dataDir;
  dataDir ??= await tempDir();
  const argv = [];
  const addr = async () => `127.0.0.1:${pickPorts ? await freePort() : 0}`;
  if (dev) argv.push('--dev');
  if (tls) argv.push('--listen', await addr());
  if (plain) argv.push('--plain-listen', await addr());
  argv.push('--data-dir', dataDir);
  if (workers !== null && workers !== undefined) argv.push('--workers', String(workers));
  argv.push(...args);

  const proc = spawn(binPath(), argv, { env: sanitizerEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(proc);
  const srv = new Server(proc, dataDir, own);
  srv.argv = argv;
  const want = (tls ? 1 : 0) + (plain ? 1 : 0);

  let urls;
  try {
    // Event-driven, not polled: the caller sees the server as soon as it says it listens.
    urls = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        srv._stderrWatchers.delete(check);
        reject(new Error(`timed out after ${readyTimeoutMs} ms waiting for the "listening" log lines`));
      }, readyTimeoutMs);
      const check = () => {
        const fromLogs = srv.logs().filter((l) => l.msg === 'listening' && l.url).map((l) => l.url);
        let err = null;
        if (fromLogs.length >= want) {
          clearTimeout(timer);
          srv._stderrWatchers.delete(check);
          resolve(fromLogs);
          return;
        }
        if (!srv.running) err = new Error(`server exited (${JSON.stringify(srv.exit)}) before listening`);
        if (err) {
          clearTimeout(timer);
          srv._stderrWatchers.delete(check);
          reject(err);
        }
      };
      srv._stderrWatchers.add(check);
      check();
    });
  } catch (e) {
    if (srv.running) proc.kill('SIGKILL');
    await srv.closed;
    if (own) await rm(dataDir, { recursive: true, force: true }).catch(() => {});
    throw new Error(`${e.message}\n--- argv ---\n${argv.join(' ')}\n--- stdout ---\n${srv.stdoutText()}` +
      `\n--- stderr ---\n${srv.stderrText()}`);
  }
  srv.urls = urls;
  srv.url = urls.find((u) => u.startsWith('https://')) ?? null;
  srv.plainUrl = urls.find((u) => u.startsWith('http://')) ?? null;
  srv.port = srv.url ? Number(new URL(srv.url).port) : null;
  srv.plainPort = srv.plainUrl ? Number(new URL(srv.plainUrl).port) : null;
  srv.caPath = dev ? path.join(dataDir, 'tls', 'ca.pem') : null;
  await parseBanner(srv, want, env);

  // The "listening" line may come before every loop thread has called listen(); wait until
  // the ports accept.
  for (const p of [srv.port, srv.plainPort]) {
    if (p === null || !waitAccept) continue;
    await waitFor(() => canConnect(p), { timeoutMs: 5000, what: `port ${p} to accept` });
  }
  return srv;
}

/**
 * Reads the start-up banner on stdout (written in one piece before the server runs): sets
 * `printedAdminKey` to the admin key the server generated and printed on a fresh data dir
 * (null when it printed none), and `adminKey` to that key or else the SWITCHBOARD_ADMIN_KEY
 * the test passed in `env` (null when neither).
 */
async function parseBanner(srv, urlLines, env) {
  try {
    await waitFor(() => (srv.stdoutText().match(/^\s*URL:/gm) ?? []).length >= urlLines,
      { timeoutMs: 3000, what: 'the banner on stdout' });
  } catch {
    /* a banner without URL lines: parse whatever came */
  }
  const m = /Admin key[^\n]*:\n\s*(\S+)/.exec(srv.stdoutText());
  srv.printedAdminKey = m ? m[1] : null;
  srv.adminKey = srv.printedAdminKey ?? env.SWITCHBOARD_ADMIN_KEY ?? null;
}

/** Runs a command to completion: {code, signal, stdout, stderr}. Never rejects on exit code. */
export function run(cmd, args, { input, timeoutMs = 15000, env, cwd } = {}) {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { env: env ?? process.env, cwd, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.setEncoding('utf8');
    p.stderr.setEncoding('utf8');
    p.stdout.on('data', (d) => {
      stdout += d;
    });
    p.stderr.on('data', (d) => {
      stderr += d;
    });
    const timer = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    p.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
    p.stdin.on('error', () => {});
    if (input !== undefined) p.stdin.end(input);
    else p.stdin.end();
  });
}

/** Runs the switchboard binary itself (for --help, --check-config, …) with a sanitizer check. */
export async function runBin(args, { env = {}, timeoutMs = 15000 } = {}) {
  const r = await run(binPath(), args, { env: sanitizerEnv(env), timeoutMs });
  assertNoSanitizerReport(r.stderr, `stderr of switchboard ${args.join(' ')}`);
  return r;
}

/** Parses Prometheus text into a Map of `name{labels}` → number. */
export function parseMetrics(text) {
  const m = new Map();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    m.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return m;
}
