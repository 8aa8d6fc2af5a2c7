// A raw HTTP/2 client for abuse tests: frames built by hand (RFC 9113 §4), header blocks as
// HPACK literals without indexing (RFC 7541 §6.2.2, no Huffman), and a parser that records
// every frame the server sends. Nothing here follows the protocol's rules unless asked to.
import net from 'node:net';
import tls from 'node:tls';

import { readCa } from './client.mjs';

export const T = { DATA: 0, HEADERS: 1, PRIORITY: 2, RST_STREAM: 3, SETTINGS: 4, PUSH_PROMISE: 5, PING: 6, GOAWAY: 7, WINDOW_UPDATE: 8, CONTINUATION: 9 };
export const F = { END_STREAM: 0x1, ACK: 0x1, END_HEADERS: 0x4, PADDED: 0x8 };
export const E = { NO_ERROR: 0, PROTOCOL_ERROR: 1, INTERNAL_ERROR: 2, FLOW_CONTROL_ERROR: 3, REFUSED_STREAM: 7, CANCEL: 8, COMPRESSION_ERROR: 9, ENHANCE_YOUR_CALM: 11 };
export const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');

export function frame(type, flags, streamId, payload = Buffer.alloc(0)) {
  const h = Buffer.alloc(9);
  h.writeUIntBE(payload.length, 0, 3);
  h[3] = type;
  h[4] = flags;
  h.writeUInt32BE(streamId & 0x7fffffff, 5);
  return Buffer.concat([h, payload]);
}

export function settings(entries = {}) {
  const b = Buffer.alloc(6 * Object.keys(entries).length);
  let o = 0;
  for (const [id, v] of Object.entries(entries)) {
    b.writeUInt16BE(Number(id), o);
    b.writeUInt32BE(v, o + 2);
    o += 6;
  }
  return frame(T.SETTINGS, 0, 0, b);
}

export function rstStream(streamId, code = E.CANCEL) {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(code);
  return frame(T.RST_STREAM, 0, streamId, b);
}

function hpackInt(value, prefixBits, firstByte = 0) {
  const max = (1 << prefixBits) - 1;
  if (value < max) return Buffer.from([firstByte | value]);
  const out = [firstByte | max];
  value -= max;
  while (value >= 128) {
    out.push((value % 128) + 128);
    value = Math.floor(value / 128);
  }
  out.push(value);
  return Buffer.from(out);
}

/** One header field as a literal without indexing with a new name. */
export function literal(name, value) {
  const n = Buffer.from(name);
  const v = Buffer.from(value);
  return Buffer.concat([Buffer.from([0]), hpackInt(n.length, 7), n, hpackInt(v.length, 7), v]);
}

/** A request's header block: pseudo-header fields first, then `extra` [[name, value]]. */
export function requestBlock({ method = 'GET', path = '/healthz', authority = 'test', scheme = 'http', extra = [] } = {}) {
  return Buffer.concat([
    literal(':method', method), literal(':scheme', scheme), literal(':path', path), literal(':authority', authority),
    ...extra.map(([n, v]) => literal(n, v)),
  ]);
}

export function parseFrames(buf) {
  const frames = [];
  let o = 0;
  while (buf.length - o >= 9) {
    const len = buf.readUIntBE(o, 3);
    if (buf.length - o < 9 + len) break;
    const f = { type: buf[o + 3], flags: buf[o + 4], stream: buf.readUInt32BE(o + 5) & 0x7fffffff, payload: buf.subarray(o + 9, o + 9 + len) };
    if (f.type === T.GOAWAY && len >= 8) {
      f.lastStream = f.payload.readUInt32BE(0) & 0x7fffffff;
      f.code = f.payload.readUInt32BE(4);
    } else if (f.type === T.RST_STREAM && len === 4) {
      f.code = f.payload.readUInt32BE(0);
    }
    frames.push(f);
    o += 9 + len;
  }
  return { frames, rest: buf.subarray(o) };
}

export class RawH2 {
  constructor(sock) {
    this.sock = sock;
    this.frames = [];
    this.buf = Buffer.alloc(0);
    this.closed = false;
    this.autoAck = true; // false: a client that ignores the server's SETTINGS
    this.waiters = new Set();
    sock.on('data', (d) => {
      this.buf = Buffer.concat([this.buf, d]);
      const { frames, rest } = parseFrames(this.buf);
      this.buf = rest;
      for (const f of frames) {
        this.frames.push(f);
        // A well-behaved peer in everything but what the test asks for: ACK SETTINGS.
        if (f.type === T.SETTINGS && !(f.flags & F.ACK) && this.autoAck) this.send(frame(T.SETTINGS, F.ACK, 0));
      }
      this.wake();
    });
    sock.on('error', () => {});
    sock.on('close', () => {
      this.closed = true;
      this.wake();
    });
  }

  static async open(srv, { tls: useTls = false, handshake = true } = {}) {
    const sock = await new Promise((resolve, reject) => {
      const s = useTls
        ? tls.connect({ host: '127.0.0.1', port: srv.port, ca: readCa(srv.caPath), servername: 'localhost', ALPNProtocols: ['h2'] }, () => resolve(s))
        : net.connect({ host: '127.0.0.1', port: srv.plainPort }, () => resolve(s));
      s.once('error', reject);
    });
    const c = new RawH2(sock);
    if (handshake) {
      c.send(Buffer.concat([PREFACE, settings()]));
      await c.waitFrame((f) => f.type === T.SETTINGS && !(f.flags & F.ACK), 'server SETTINGS');
    }
    return c;
  }

  wake() {
    for (const w of this.waiters) w();
  }

  send(buf) {
    if (this.sock.destroyed || this.sock.writableEnded) return false;
    return this.sock.write(buf);
  }

  /** Writes everything, waiting for 'drain' (or the close) between chunks. */
  async sendAll(chunks) {
    for (const c of chunks) {
      if (this.closed || this.sock.destroyed) return false;
      if (!this.sock.write(c)) {
        await new Promise((r) => {
          this.sock.once('drain', r);
          this.sock.once('close', r);
        });
      }
    }
    return true;
  }

  waitFrame(pred, what = 'frame', timeoutMs = 5000) {
    return this.waitUntil(() => this.frames.find(pred), what, timeoutMs);
  }

  waitClosed(timeoutMs = 5000) {
    return this.waitUntil(() => this.closed, 'the connection to close', timeoutMs);
  }

  waitUntil(cond, what, timeoutMs) {
    return new Promise((resolve, reject) => {
      const check = () => {
        const v = cond();
        if (v) {
          clearTimeout(timer);
          this.waiters.delete(check);
          resolve(v);
        }
      };
      const timer = setTimeout(() => {
        this.waiters.delete(check);
        reject(new Error(`timed out waiting for ${what}; frames: ${JSON.stringify(this.frames.map((f) => [f.type, f.flags, f.stream, f.code]))}`));
      }, timeoutMs);
      this.waiters.add(check);
      check();
    });
  }

  destroy() {
    this.sock.destroy();
  }
}
