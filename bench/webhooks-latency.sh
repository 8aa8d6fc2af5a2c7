#!/usr/bin/env bash
# bench/webhooks-latency.sh BIN — event → 2xx latency of webhook delivery at a steady rate, the
# whole production path: a node client creates rooms over the REST API at BENCH_LATENCY_RATES
# (comma-separated, per second; "1000,5000") for BENCH_LATENCY_SECONDS (10) each, every
# room.created event is committed to the outbox and delivered, signed, to
# bench/webhook_receiver.c (C, verifies every signature), which reports p50/p99/max of
# arrival − the envelope's created_at (millisecond clocks). Modes: BENCH_WEBHOOK_MODES
# ("h1 h2c"). Switchboard alone: the webhooks bench (webhooks.bench.sh) is the side-by-side
# comparison; here the point is what one event waits at a rate the sender keeps up with.
# Not part of `make bench` (no peer, no goal).
# shellcheck disable=SC2317 # trap handlers are reached through trap
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
BENCH_NAME=webhooks-latency
# shellcheck source=bench/lib.sh
. "$here/lib.sh"

RATES=${BENCH_LATENCY_RATES:-1000,5000}
SECS=${BENCH_LATENCY_SECONDS:-10}
MODES=${BENCH_WEBHOOK_MODES:-h1 h2c}
[[ $SECS =~ ^[0-9]+$ ]] && [ "$SECS" -ge 1 ] || die "BENCH_LATENCY_SECONDS must be a positive integer"
[[ $RATES =~ ^[0-9]+(,[0-9]+)*$ ]] || die "BENCH_LATENCY_RATES must be comma-separated integers"

need_tools node taskset curl cc openssl
bin=${1:-}
if [ -z "$bin" ] || [ ! -x "$bin" ] || [ -d "$bin" ]; then
    die "Switchboard binary '${bin:-<none>}' not found or not executable (usage: $0 BIN)"
fi
case "$bin" in /*) ;; *) bin=$PWD/$bin ;; esac

bench_pinning
pinning=${pinning/wrk/receiver and client}
bench_tmpdir webhooks-latency
cc -O2 -Wall -Wextra -o "$tmp/webhook_receiver" "$here/webhook_receiver.c" -lcrypto -lnghttp2 ||
    die "could not build bench/webhook_receiver.c"

api_key=$(openssl rand -hex 24)
sb_data=$tmp/sb-data
mkdir -p "$sb_data"
sb_port=$(pick_port)
sb_plain=$(pick_port)
rcv_port=$(pick_port)
rcv=http://127.0.0.1:$rcv_port
api=http://127.0.0.1:$sb_plain

"${pin_client[@]}" "$tmp/webhook_receiver" "$rcv_port" >"$tmp/rcv.out" 2>&1 &
rcv_pid=$!
pids+=("$rcv_pid")
wait_ready receiver "$rcv_pid" "$rcv/healthz" || { tail -n 20 "$tmp/rcv.out"; exit 1; }
SWITCHBOARD_ADMIN_KEY=$api_key sb_start "$sb_data/tls/ca.pem" "https://127.0.0.1:$sb_port/healthz" \
    --dev --workers 1 --data-dir "$sb_data" --listen "127.0.0.1:$sb_port" --plain-listen "127.0.0.1:$sb_plain" \
    --log.file "$tmp/sb.log" --ratelimit.requests-per-second 1000000 --ratelimit.burst 1000000 || exit 1

say "Webhook delivery latency at a steady rate: REST room creation → outbox → signed delivery → 2xx"
say "  switchboard: $("$bin" --version 2>/dev/null | head -n 1) ($bin), --workers 1; client: node, 16 kept-alive connections"
say "  receiver:    bench/webhook_receiver.c, verifies every signature; latency = arrival − created_at (ms clocks)"
say "  pinning:     $pinning"
for mode in $MODES; do
    h2c=$([ "$mode" = h2c ] && echo true || echo false)
    for rate in ${RATES//,/ }; do
        w=$(curl -fsS --max-time 5 -H "Authorization: Bearer $api_key" -H 'Content-Type: application/json' \
            -d "{\"url\":\"$rcv/hook\",\"events\":[\"room.created\"],\"h2c\":$h2c}" "$api/v1/webhooks") ||
            die "creating the webhook failed"
        secret=$(node -p 'JSON.parse(process.argv[1]).secret' "$w")
        wid=$(node -p 'JSON.parse(process.argv[1]).id' "$w")
        curl -fsS --max-time 5 -X PUT -d "{\"secret\":\"$secret\",\"lib_limit\":0}" "$rcv/config" >/dev/null
        n=$((rate * SECS))
        "${pin_client[@]}" node -e '
            const [rate, secs, key, port, tag] = [+process.argv[1], +process.argv[2], process.argv[3], +process.argv[4], process.argv[5]];
            const http = require("http");
            const agent = new http.Agent({ keepAlive: true, maxSockets: 16 });
            const total = rate * secs, t0 = Date.now();
            let sent = 0, done = 0, failed = 0;
            const one = (i) => {
              const body = JSON.stringify({ name: `${tag}-${i}` });
              const r = http.request({ host: "127.0.0.1", port, path: "/v1/rooms", method: "POST", agent,
                headers: { authorization: `Bearer ${key}`, "content-type": "application/json", "content-length": Buffer.byteLength(body) } },
                (res) => { if (res.statusCode !== 201) failed++; res.resume(); res.on("end", () => done++); });
              r.on("error", () => { failed++; done++; });
              r.end(body);
            };
            const tick = setInterval(() => {
              const due = Math.min(total, Math.floor(((Date.now() - t0) * rate) / 1000));
              while (sent < due) one(sent++);
              if (sent >= total) clearInterval(tick);
            }, 1);
            const wait = setInterval(() => { if (done >= total) { clearInterval(wait); agent.destroy(); if (failed) { console.error(`${failed} requests failed`); process.exit(1); } } }, 20);
        ' "$rate" "$SECS" "$api_key" "$sb_plain" "lat-$mode-$rate" || die "the client failed"
        i=0
        while [ "$i" -lt 100 ]; do
            d=$(curl -fsS --max-time 5 "$rcv/stats" | sed -n 's/.*"distinct":\([0-9]*\).*/\1/p')
            [ "${d:-0}" -ge "$n" ] && break
            sleep 0.1
            i=$((i + 1))
        done
        s=$(curl -fsS --max-time 5 "$rcv/stats")
        node -e 'const s = JSON.parse(process.argv[1]);
            console.log(`  ${process.argv[2].padEnd(3)} ${String(process.argv[3]).padStart(6)}/s  ${s.distinct} delivered (${s.bad} bad signatures)  p50 ${s.p50_ms} ms  p99 ${s.p99_ms} ms  max ${s.max_ms} ms`)' \
            "$s" "$mode" "$rate"
        curl -fsS --max-time 5 -X DELETE -H "Authorization: Bearer $api_key" "$api/v1/webhooks/$wid" -o /dev/null
    done
done
stop_sb
stop_pid "$rcv_pid" 5
forget_pid "$rcv_pid"
exit 0
