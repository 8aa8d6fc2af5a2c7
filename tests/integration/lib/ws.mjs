// WebSocket helpers for the tests: frames built by hand (the `ws` package refuses to send the
// malformed ones the server must reject) over a raw connection from client.mjs, a parser for the
// server's frames, and a wrapper around the `ws` client that trusts the dev CA.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';

import WebSocket from 'ws';

import { connect, readCa } from './client.mjs';

export const OP = { CONT: 0, TEXT: 1, BINARY: 2, CLOSE: 8, PING: 9, PONG: 10 };

/** One client frame. Masked unless mask is false; `len` overrides the declared length. */
export function frame(opcode, payload = Buffer.alloc(0), { fin = true, rsv = 0, mask = true, len } = {}) {
  const p = Buffer.isBuffer(payload) ? payload : Buffer.from(payload);
  const n = len ?? p.length;
  const head = [(fin ? 0x80 : 0) | ((rsv & 7) << 4) | (opcode & 0xf)];
  const m = mask ? 0x80 : 0;
  if (n < 126) {
    head.push(m | n);
  } else if (n < 65536) {
    head.push(m | 126, n >> 8, n & 0xff);
  } else {
    head.push(m | 127);
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(BigInt(n));
    head.push(...b);
  }
  if (!mask) return Buffer.concat([Buffer.from(head), p]);
  const key = crypto.randomBytes(4);
  const body = Buffer.alloc(p.length);
  for (let i = 0; i < p.length; i++) body[i] = p[i] ^ key[i & 3];
  return Buffer.concat([Buffer.from(head), key, body]);
}

export function closePayload(code, reason = '') {
  const r = Buffer.from(reason);
  const b = Buffer.alloc(2 + r.length);
  b.writeUInt16BE(code);
  r.copy(b, 2);
  return b;
}

/** Parses the server's frames in buf; returns {frames, used}. Server frames are never masked. */
export function parseFrames(buf) {
  const frames = [];
  let off = 0;
  for (;;) {
    if (buf.length - off < 2) break;
    const b0 = buf[off];
    const b1 = buf[off + 1];
    let len = b1 & 0x7f;
    let h = 2;
    if (len === 126) {
      if (buf.length - off < 4) break;
      len = buf.readUInt16BE(off + 2);
      h = 4;
    } else if (len === 127) {
      if (buf.length - off < 10) break;
      len = Number(buf.readBigUInt64BE(off + 2));
      h = 10;
    }
    if (buf.length - off < h + len) break;
    const f = {
      fin: !!(b0 & 0x80),
      rsv: (b0 >> 4) & 7,
      opcode: b0 & 0xf,
      masked: !!(b1 & 0x80),
      payload: buf.subarray(off + h, off + h + len),
      size: h + len,
    };
    if (f.opcode === OP.CLOSE) {
      f.code = len >= 2 ? f.payload.readUInt16BE(0) : 1005;
      f.reason = len > 2 ? f.payload.subarray(2).toString('utf8') : '';
    }
    frames.push(f);
    off += h + len;
  }
  return { frames, used: off };
}

/** An upgrade request; key or version null leaves that field out. */
export function upgradeRequest(path = '/debug/ws-echo', { key, version = '13', extra = '', host = 'test' } = {}) {
  if (key === undefined) key = crypto.randomBytes(16).toString('base64');
  let r = `GET ${path} HTTP/1.1\r\nHost: ${host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n`;
  if (key !== null) r += `Sec-WebSocket-Key: ${key}\r\n`;
  if (version !== null) r += `Sec-WebSocket-Version: ${version}\r\n`;
  return { text: r + extra + '\r\n', key };
}

export function expectedAccept(key) {
  return crypto.createHash('sha1').update(key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64');
}

/** A raw WebSocket client: the handshake by hand, then frames by hand. */
export class RawWs {
  constructor(conn) {
    this.conn = conn;
    this.buf = Buffer.alloc(0);
  }

  /** Connects and upgrades; `after` is written in the same write as the request. */
  static async open(server, { plain = false, path, after } = {}) {
    const conn = await connect(server, { plain });
    const { text, key } = upgradeRequest(path);
    await conn.write(after ? Buffer.concat([Buffer.from(text, 'latin1'), after]) : text);
    const resp = await conn.readResponse();
    assert.equal(resp.status, 101, `upgrade answered ${resp.status}: ${resp.body}`);
    assert.equal(resp.headers['sec-websocket-accept'], expectedAccept(key));
    const ws = new RawWs(conn);
    ws.resp = resp;
    return ws;
  }

  send(buf) {
    return this.conn.write(buf);
  }

  get socket() {
    return this.conn.socket;
  }

  _take() {
    const d = this.conn.pending();
    if (d.length) {
      this.buf = Buffer.concat([this.buf, d]);
      this.conn._data = Buffer.alloc(0);
      this.conn.cursor = 0;
    }
  }

  /** Waits for the next server frame. */
  async next({ timeoutMs = 5000 } = {}) {
    let f;
    await this.conn._until(() => {
      this._take();
      const { frames } = parseFrames(this.buf);
      if (frames.length) {
        f = frames[0];
        this.buf = this.buf.subarray(f.size);
        return true;
      }
      if (this.conn.isClosed || this.conn.ended) {
        throw new Error(`connection closed (${this.conn.closeReason}) with ${this.buf.length} bytes of a partial frame`);
      }
      return false;
    }, timeoutMs, 'a WebSocket frame');
    return f;
  }

  /** Reads frames until a Close; returns it (skipping others, collected in .skipped). */
  async untilClose({ timeoutMs = 5000 } = {}) {
    const end = Date.now() + timeoutMs;
    this.skipped = [];
    for (;;) {
      const f = await this.next({ timeoutMs: Math.max(1, end - Date.now()) });
      if (f.opcode === OP.CLOSE) return f;
      this.skipped.push(f);
    }
  }

  /** True if the server closed the TCP connection within timeoutMs. */
  waitClosed(timeoutMs = 3000) {
    return this.conn.waitClose(timeoutMs);
  }

  destroy() {
    this.conn.destroy();
  }
}

/** A `ws` client to the server's echo endpoint over TLS (dev CA) or plain; resolves when open. */
export function wsClient(server, { plain = false, path = '/debug/ws-echo', ...opts } = {}) {
  const url = plain
    ? `ws://127.0.0.1:${server.plainPort}${path}`
    : `wss://127.0.0.1:${server.port}${path}`;
  const ws = new WebSocket(url, { ca: plain ? undefined : readCa(server.caPath), ...opts });
  ws.closed = new Promise((resolve) => {
    ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() }));
  });
  ws.on('error', (e) => {
    ws.lastError = e;
  });
  return new Promise((resolve, reject) => {
    ws.once('open', () => resolve(ws));
    ws.once('unexpected-response', (req, res) => reject(new Error(`upgrade answered ${res.statusCode}`)));
    ws.once('error', reject);
  });
}

/** Resolves with the next message: {data, isBinary}. */
export function nextMessage(ws, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('timed out waiting for a message')), timeoutMs);
    ws.once('message', (data, isBinary) => {
      clearTimeout(t);
      resolve({ data, isBinary });
    });
  });
}

/** Resolves with {code, reason} once the client sees the close, or rejects after timeoutMs. */
export async function closedWithin(ws, timeoutMs = 5000) {
  let t;
  const r = await Promise.race([
    ws.closed,
    new Promise((resolve) => {
      t = setTimeout(() => resolve(null), timeoutMs);
    }),
  ]);
  clearTimeout(t);
  if (!r) throw new Error(`WebSocket not closed within ${timeoutMs} ms`);
  return r;
}
