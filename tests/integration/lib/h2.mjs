// node:http2 helpers: a session to a test server, and one request on it.
import http2 from 'node:http2';

import { readCa } from './client.mjs';

/** One request on an http2 session: {status, headers, text, json()}. */
export function h2req(session, method, path, { key = null, json, headers = {}, body } = {}) {
  return new Promise((resolve, reject) => {
    const h = { ':method': method, ':path': path, ...headers };
    if (key) h.authorization = `Bearer ${key}`;
    let payload = body;
    if (json !== undefined) {
      h['content-type'] = 'application/json';
      payload = JSON.stringify(json);
    }
    const st = session.request(h, { endStream: payload === undefined });
    let resHeaders;
    const chunks = [];
    st.on('response', (hs) => {
      resHeaders = hs;
    });
    st.on('data', (d) => chunks.push(d));
    st.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      resolve({
        status: resHeaders?.[':status'],
        headers: resHeaders,
        text,
        json: () => JSON.parse(text),
      });
    });
    st.on('error', reject);
    if (payload !== undefined) st.end(payload);
  });
}

export function h2connect(srv, { tls = true, settings } = {}) {
  const url = tls ? srv.url : srv.plainUrl;
  const session = http2.connect(url, { ca: tls ? readCa(srv.caPath) : undefined, settings });
  return new Promise((resolve, reject) => {
    session.once('connect', () => resolve(session));
    session.once('error', reject);
  });
}

