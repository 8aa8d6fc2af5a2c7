// Byte-exact HTTP/1.1 clients for the tests: a raw connection (TLS with the dev CA, or plain
// TCP) that writes exactly the bytes given and parses what comes back, plus thin helpers
// over node:https and node:http.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import tls from 'node:tls';

const caCache = new Map();
export function readCa(p) {
  if (!caCache.has(p)) caCache.set(p, fs.readFileSync(p));
  return caCache.get(p);
}

/**
 * Parses one HTTP/1.x response at buf[off..]. Returns {resp, next} or null if incomplete.
 * `head` says the request was HEAD (no body whatever the headers say); `eof` that no more
 * bytes will come (a body without length then runs to the end).
 */
export function parseResponse(buf, off = 0, { head = false, eof = false } = {}) {
  const end = buf.indexOf('\r\n\r\n', off, 'latin1');
  if (end < 0) {
    if (eof && off < buf.length) throw new Error(`truncated response head: ${JSON.stringify(buf.subarray(off).toString('latin1'))}`);
    return null;
  }
  const headText = buf.subarray(off, end).toString('latin1');
  const lines = headText.split('\r\n');
  const m = /^HTTP\/(\d)\.(\d) (\d{3}) ?(.*)$/.exec(lines[0]);
  if (!m) throw new Error(`bad status line: ${JSON.stringify(lines[0])}`);
  const status = Number(m[3]);
  const rawHeaders = [];
  const headers = {};
  for (const l of lines.slice(1)) {
    const i = l.indexOf(':');
    if (i <= 0) throw new Error(`bad header line: ${JSON.stringify(l)}`);
    const name = l.slice(0, i);
    const value = l.slice(i + 1).trim();
    rawHeaders.push([name, value]);
    const k = name.toLowerCase();
    headers[k] = k in headers ? `${headers[k]}, ${value}` : value;
  }
  let bodyStart = end + 4;
  let body;
  let next;
  const noBody = head || (status >= 100 && status < 200) || status === 204 || status === 304;
  if (noBody) {
    body = Buffer.alloc(0);
    next = bodyStart;
  } else if (headers['transfer-encoding']) {
    // Chunked (the server does not send it today; decode anyway).
    const parts = [];
    let p = bodyStart;
    for (;;) {
      const le = buf.indexOf('\r\n', p, 'latin1');
      if (le < 0) return null;
      const size = parseInt(buf.subarray(p, le).toString('latin1'), 16);
      if (Number.isNaN(size)) throw new Error('bad chunk size in response');
      p = le + 2;
      if (size === 0) {
        const te = buf.indexOf('\r\n\r\n', p - 2, 'latin1');
        if (te < 0) return null;
        next = te + 4;
        break;
      }
      if (buf.length < p + size + 2) return null;
      parts.push(buf.subarray(p, p + size));
      p += size + 2;
    }
    body = Buffer.concat(parts);
  } else if (headers['content-length'] !== undefined) {
    const n = Number(headers['content-length']);
    if (!Number.isInteger(n) || n < 0) throw new Error(`bad content-length ${headers['content-length']}`);
    if (buf.length < bodyStart + n) return null;
    body = buf.subarray(bodyStart, bodyStart + n);
    next = bodyStart + n;
  } else {
    if (!eof) return null;
    body = buf.subarray(bodyStart);
    next = buf.length;
  }
  const resp = {
    version: `${m[1]}.${m[2]}`,
    status,
    reason: m[4],
    headers,
    rawHeaders,
    body: Buffer.from(body),
    get text() {
      return this.body.toString('utf8');
    },
    json() {
      return JSON.parse(this.body.toString('utf8'));
    },
  };
  return { resp, next };
}

/** Parses every complete response in buf; `heads` lists which requests were HEAD. */
export function parseAll(buf, { eof = true, heads = [] } = {}) {
  const out = [];
  let off = 0;
  let final = 0; // index of non-1xx responses, to map HEAD flags
  while (off < buf.length) {
    const r = parseResponse(buf, off, { head: !!heads[final], eof });
    if (!r) break;
    out.push(r.resp);
    if (r.resp.status >= 200) final++;
    off = r.next;
  }
  return { responses: out, rest: buf.subarray(off) };
}

/**
 * A raw client connection. Collects every byte the server sends; `closed` resolves when the
 * socket is closed (by the server, a reset, or us), with how: 'end' (orderly FIN / TLS
 * close_notify), 'reset' (ECONNRESET), or 'error: …'.
 */
export class RawConn {
  constructor(socket, { secure }) {
    this.socket = socket;
    this.secure = secure;
    this._data = Buffer.alloc(0);
    this._chunks = [];
    this.cursor = 0; // bytes of `data` already returned by readResponse
    this.received = 0; // bytes received in total
    this.closeReason = null;
    this.ended = false;
    this.error = null;
    this._waiters = new Set();
    socket.on('data', (d) => {
      this._chunks.push(d);
      this.received += d.length;
      this._wake();
    });
    socket.on('end', () => {
      this.ended = true;
      this.closeReason ??= 'end';
      this._wake();
    });
    socket.on('error', (e) => {
      this.error = e;
      this.closeReason ??= e.code === 'ECONNRESET' ? 'reset' : `error: ${e.code ?? e.message}`;
      this._wake();
    });
    this.closed = new Promise((resolve) => {
      socket.on('close', () => {
        this.isClosed = true;
        this.closeReason ??= 'closed';
        this._wake();
        resolve(this.closeReason);
      });
    });
    this.isClosed = false;
  }

  /** Bytes received and not yet consumed by readResponse (everything, before the first). */
  get data() {
    if (this._chunks.length) {
      this._data = Buffer.concat([this._data, ...this._chunks]);
      this._chunks = [];
    }
    return this._data;
  }

  _wake() {
    for (const w of this._waiters) w();
  }

  /** Resolves when `pred()` is true, or rejects after timeoutMs. */
  _until(pred, timeoutMs, what) {
    return new Promise((resolve, reject) => {
      const check = () => {
        let v;
        try {
          v = pred();
        } catch (e) {
          cleanup();
          reject(e);
          return;
        }
        if (v) {
          cleanup();
          resolve(v);
        }
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}; received so far: ` +
          JSON.stringify(this.data.subarray(this.cursor).toString('latin1').slice(0, 2000)) +
          ` (closed: ${this.isClosed ? this.closeReason : 'no'})`));
      }, timeoutMs);
      const cleanup = () => {
        clearTimeout(timer);
        this._waiters.delete(check);
      };
      this._waiters.add(check);
      check();
    });
  }

  write(data) {
    return new Promise((resolve, reject) => {
      this.socket.write(typeof data === 'string' ? Buffer.from(data, 'latin1') : data, (err) => {
        if (err) reject(err);
        else resolve();
      });
    });
  }

  /** Writes `data` in pieces of `chunk` bytes, `delayMs` apart; stops early if the socket closes. */
  async writeSlowly(data, { chunk = 1, delayMs = 200 } = {}) {
    const b = typeof data === 'string' ? Buffer.from(data, 'latin1') : data;
    for (let i = 0; i < b.length; i += chunk) {
      if (this.isClosed || this.ended) return false;
      try {
        await this.write(b.subarray(i, i + chunk));
      } catch {
        return false;
      }
      if (i + chunk < b.length) await new Promise((r) => setTimeout(r, delayMs));
    }
    return true;
  }

  /** Waits for and returns the next complete response after the cursor. */
  async readResponse({ timeoutMs = 5000, head = false } = {}) {
    let result;
    await this._until(() => {
      result = parseResponse(this.data, this.cursor, { head, eof: this.isClosed || this.ended });
      if (!result && (this.isClosed || this.ended)) {
        throw new Error(`connection closed (${this.closeReason}) before a complete response; got ` +
          JSON.stringify(this.data.subarray(this.cursor).toString('latin1').slice(0, 2000)));
      }
      return !!result;
    }, timeoutMs, 'a response');
    // Drop what was consumed, so that long pipelines do not make every parse copy it all.
    this._data = this.data.subarray(result.next);
    this.cursor = 0;
    return result.resp;
  }

  /** Bytes received after the last parsed response. */
  pending() {
    return this.data.subarray(this.cursor);
  }

  /** Waits until the connection is closed; returns true if it was within timeoutMs. */
  async waitClose(timeoutMs = 3000) {
    try {
      await this._until(() => this.isClosed || this.ended, timeoutMs, 'the connection to close');
      return true;
    } catch {
      return false;
    }
  }

  /** Waits until closed (or timeout), then parses everything received after the cursor. */
  async readAll({ timeoutMs = 3000, heads = [] } = {}) {
    const closed = await this.waitClose(timeoutMs);
    const { responses, rest } = parseAll(this.data.subarray(this.cursor), { eof: closed, heads });
    return { responses, rest, closed, closeReason: this.closeReason, data: this.data };
  }

  destroy() {
    this.socket.destroy();
  }
}

/**
 * Opens a raw connection to `server` (from startServer). opts.plain = true uses the cleartext
 * listener; otherwise TLS, verifying the certificate with the server's dev CA (or opts.ca).
 * Other opts go to tls.connect (ALPNProtocols, minVersion, maxVersion, session, …).
 */
export async function connect(server, { plain = false, timeoutMs = 5000, ...opts } = {}) {
  const port = plain ? server.plainPort : server.port;
  assert.ok(port, plain ? 'server has no plain listener' : 'server has no TLS listener');
  return new Promise((resolve, reject) => {
    let socket;
    const timer = setTimeout(() => {
      socket?.destroy();
      reject(new Error(`connect to port ${port} timed out`));
    }, timeoutMs);
    const fail = (e) => {
      clearTimeout(timer);
      reject(e);
    };
    if (plain) {
      socket = net.connect({ host: '127.0.0.1', port }, () => {
        clearTimeout(timer);
        socket.off('error', fail);
        resolve(new RawConn(socket, { secure: false }));
      });
    } else {
      const ca = opts.ca ?? (server.caPath ? readCa(server.caPath) : undefined);
      socket = tls.connect({ host: '127.0.0.1', port, ca, ...opts }, () => {
        clearTimeout(timer);
        socket.off('error', fail);
        resolve(new RawConn(socket, { secure: true }));
      });
    }
    socket.setNoDelay(true);
    socket.once('error', fail);
  });
}

/**
 * One exchange: connect, write `data` (a string/Buffer written at once, or an array of pieces
 * written one after another, `gapMs` apart), wait until the server closes or `timeoutMs`
 * passes, and parse what came back. Returns {responses, rest, closed, closeReason, data}.
 */
export async function exchange(server, data, { plain = false, timeoutMs = 3000, gapMs = 0, heads = [], ...opts } = {}) {
  const c = await connect(server, { plain, ...opts });
  try {
    const pieces = Array.isArray(data) ? data : [data];
    for (const p of pieces) {
      if (c.isClosed) break;
      await c.write(p).catch(() => {});
      if (gapMs) await new Promise((r) => setTimeout(r, gapMs));
    }
    return await c.readAll({ timeoutMs, heads });
  } finally {
    c.destroy();
  }
}

/** A request through node:https (TLS, dev CA) or node:http (plain). Resolves {status, headers, body, text, json()}. */
export function request(server, urlPath, { method = 'GET', headers = {}, body, plain = false, timeoutMs = 5000, ...opts } = {}) {
  const mod = plain ? http : https;
  const port = plain ? server.plainPort : server.port;
  const o = { host: '127.0.0.1', port, path: urlPath, method, headers, agent: false, timeout: timeoutMs };
  if (!plain) o.ca = opts.ca ?? readCa(server.caPath);
  Object.assign(o, opts);
  return new Promise((resolve, reject) => {
    const req = mod.request(o, (res) => {
      const parts = [];
      res.on('data', (d) => parts.push(d));
      res.on('end', () => {
        const b = Buffer.concat(parts);
        resolve({
          status: res.statusCode,
          headers: res.headers,
          body: b,
          text: b.toString('utf8'),
          json: () => JSON.parse(b.toString('utf8')),
          socket: res.socket,
        });
      });
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error('request timed out')));
    req.on('error', reject);
    req.end(body);
  });
}

/** Asserts that `r` is an RFC 9457 problem with `status` whose request_id equals the header. */
export function assertProblem(r, status) {
  const h = r.headers;
  assert.equal(r.status, status, `status ${r.status}, body ${r.text}`);
  assert.match(h['content-type'] ?? '', /^application\/problem\+json\b/, 'problem content type');
  let p;
  assert.doesNotThrow(() => {
    p = r.json();
  }, `problem body is JSON: ${r.text}`);
  assert.equal(typeof p.type, 'string', 'type');
  assert.ok(p.type.length > 0, 'type non-empty');
  assert.equal(typeof p.title, 'string', 'title');
  assert.ok(p.title.length > 0, 'title non-empty');
  assert.equal(p.status, status, 'status member');
  assert.equal(typeof p.detail, 'string', 'detail');
  assert.equal(typeof p.request_id, 'string', 'request_id');
  assert.ok(h['x-request-id'], 'X-Request-Id header');
  assert.equal(p.request_id, h['x-request-id'], 'request_id equals X-Request-Id');
  return p;
}

export const GENERATED_ID = /^[0-9a-f]{28}$/;
