// Per-credential rate limits (API.md "Conventions"): GCRA with a burst, shared by every loop,
// 429 with Retry-After past it, and RateLimit-Policy / RateLimit on every authenticated
// response. A key's own rate_limit overrides the configured default.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { apiClient } from './lib/api.mjs';
import { startServer } from './lib/server.mjs';

const ADMIN = 'rl-admin-key-0123456789abcdefghijklmnopqrstuv';

describe('rate limits', () => {
  let srv;
  let api;
  before(async () => {
    srv = await startServer({
      workers: 2,
      plain: true,
      env: { SWITCHBOARD_ADMIN_KEY: ADMIN },
      args: ['--ratelimit.requests-per-second', '2', '--ratelimit.burst', '3'],
    });
    api = apiClient(srv, { key: ADMIN });
  });
  after(async () => {
    await srv?.stop();
  });

  it('allows the burst, then answers 429 with Retry-After and the headers', async () => {
    // Fresh credential: a key made with a generous limit of its own cannot be used here, so
    // the admin key's default policy (2/s, burst 3) is what the first requests meet.
    const seen = [];
    for (let i = 0; i < 4; i++) seen.push(await api('GET', '/v1/rooms'));
    assert.deepEqual(seen.map((r) => r.status), [200, 200, 200, 429]);
    for (const r of seen) {
      assert.equal(r.headers['ratelimit-policy'], '"default";q=3;w=2');
      assert.match(r.headers.ratelimit, /^"default";r=\d+;t=\d+$/);
    }
    assert.deepEqual(seen.slice(0, 3).map((r) => r.headers.ratelimit.match(/r=(\d+)/)[1]), ['2', '1', '0']);
    const denied = seen[3];
    assert.equal(denied.headers['retry-after'], '1');
    assert.equal(denied.headers['content-type'], 'application/problem+json');
    assert.equal(denied.json().status, 429);
    // One request's worth refills after 1/rate = 500 ms.
    await new Promise((res) => setTimeout(res, 600));
    assert.equal((await api('GET', '/v1/rooms')).status, 200);
    assert.equal((await api('GET', '/v1/rooms')).status, 429);
  });

  it("a key's own rate_limit wins, and keys do not share a budget", async () => {
    await new Promise((res) => setTimeout(res, 1600)); // the admin key refills its burst
    const made = await api('POST', '/v1/keys', {
      json: { name: 'slow', scopes: ['rooms:read'], rate_limit: { requests_per_second: 1, burst: 1 } },
    });
    assert.equal(made.status, 201);
    const slow = api.with(made.json().secret);
    const a = await slow('GET', '/v1/rooms');
    const b = await slow('GET', '/v1/rooms');
    assert.equal(a.status, 200);
    assert.equal(a.headers['ratelimit-policy'], '"default";q=1;w=1');
    assert.equal(b.status, 429);
    // The admin key still has budget left (2 used of 3 after refill: the POST and nothing else).
    assert.equal((await api('GET', '/v1/rooms')).status, 200);
  });

  it('the limit holds across worker loops and connections', async () => {
    const made = await api('POST', '/v1/keys', {
      json: { name: 'spread', scopes: ['rooms:read'], rate_limit: { requests_per_second: 0.5, burst: 5 } },
    });
    assert.equal(made.status, 201);
    const key = made.json().secret;
    // 20 requests at once on separate connections, spread over both loops by the kernel.
    const results = await Promise.all(
      Array.from({ length: 20 }, () =>
        fetch(`${srv.plainUrl}/v1/rooms`, { headers: { authorization: `Bearer ${key}`, connection: 'close' } }),
      ),
    );
    const ok = results.filter((r) => r.status === 200).length;
    const limited = results.filter((r) => r.status === 429).length;
    assert.equal(ok, 5, 'exactly the burst is allowed, whatever loop served each request');
    assert.equal(limited, 15);
  });
});
