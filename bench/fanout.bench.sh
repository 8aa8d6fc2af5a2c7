#!/usr/bin/env bash
# bench/fanout.bench.sh BIN — room fan-out over WebSocket: S subscribers and P publishers in one
# room; every data message a publisher sends is relayed to every subscriber. Switchboard side by
# side with bench/peers/ws-relay (node + ws doing the same room work), in one run, plain ws:// on
# both (Switchboard's --plain-listen) so that TLS does not dominate. Also the server's memory per
# idle joined connection. See bench/README.md.
#
# Servers pinned to BENCH_SERVER_CPU (Switchboard --workers 1; the relay is one node process),
# the load generator (bench/fanout-client.mjs, one node process) to BENCH_CLIENT_CPU. Runs
# alternate sb/ws, ws/sb, …; best of 2 (median of 3+) by deliveries/s. Deliveries are counted
# at the subscribers. Exit status: 0 when it ran (goals met or not), non-zero when it could not.
#
# Knobs: BENCH_DURATION, BENCH_WARMUP, BENCH_RUNS, BENCH_SERVER_CPU, BENCH_CLIENT_CPU,
# BENCH_RESULTS_DIR, BENCH_SUMMARY as for the others, and BENCH_FANOUT_SUBS (1000),
# BENCH_FANOUT_PUBS (4), BENCH_FANOUT_WINDOW (16 messages per publisher not yet delivered to all),
# BENCH_FANOUT_RATE (0 = as fast as the window allows; else total messages/s), BENCH_FANOUT_IDLE (2000).
# shellcheck disable=SC2317 # trap handlers are reached through trap
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

BENCH_NAME=fanout.bench
# shellcheck source=bench/lib.sh
. "$here/lib.sh"

SUBS=${BENCH_FANOUT_SUBS:-1000}
PUBS=${BENCH_FANOUT_PUBS:-4}
WINDOW=${BENCH_FANOUT_WINDOW:-16}
RATE=${BENCH_FANOUT_RATE:-0}
IDLE=${BENCH_FANOUT_IDLE:-2000}
GOAL_RATIO=8        # sb/ws deliveries/s
GOAL_IDLE_BYTES=8192 # per idle connection, without TLS
for v in SUBS PUBS WINDOW RATE IDLE; do [[ ${!v} =~ ^[0-9]+$ ]] || die "BENCH_FANOUT_$v must be a non-negative integer"; done
[ $((SUBS + PUBS)) -le 9000 ] && [ "$IDLE" -le 9000 ] || die "at most 9000 connections (20,000 open files per process)"

need_tools node npm taskset curl awk cmp
bin=${1:-}
if [ -z "$bin" ] || [ ! -x "$bin" ] || [ -d "$bin" ]; then
    die "Switchboard binary '${bin:-<none>}' not found or not executable (usage: $0 BIN)"
fi
case "$bin" in /*) ;; *) bin=$PWD/$bin ;; esac

peer_dir=$here/peers/ws-relay
stamp=$peer_dir/node_modules/.sb-lock-stamp
if [ ! -f "$stamp" ] || ! cmp -s "$peer_dir/package-lock.json" "$stamp"; then
    say "fanout.bench: npm ci in bench/peers/ws-relay"
    (cd "$peer_dir" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci in $peer_dir failed"
    cp "$peer_dir/package-lock.json" "$stamp"
fi
# both servers and the client inherit this; 20,000 is the per-process ceiling here
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

bench_pinning
pinning=${pinning/wrk/load generator}
bench_tmpdir fanout

api_key=$(openssl rand -base64 64 | tr -dc 'A-Za-z0-9' | head -c 43)
[ ${#api_key} -eq 43 ] || die "could not make a random API key"
sb_data=$tmp/sb-data
mkdir -p "$sb_data"
sb_port=$(pick_port)
sb_plain=$(pick_port)
ws_port=$(pick_port)
client=$here/fanout-client.mjs

bench_versions
sb_ver=$("$bin" --version 2>/dev/null | head -n 1 || echo unknown)
ws_ver=$(node -p 'require(process.argv[1]).version' "$peer_dir/node_modules/ws/package.json" 2>/dev/null || echo unknown)
node_ver=$(node --version)
mode_txt=$([ "$RATE" -gt 0 ] && echo "fixed total rate $RATE msgs/s" || echo "as fast as possible, window $WINDOW per publisher")

say "WebSocket room fan-out, plain ws:// — Switchboard vs ws-relay (node $node_ver, ws $ws_ver), side by side"
say "  switchboard: $sb_ver (${bin}, commit $git_rev), --workers 1, --plain-listen"
say "  load:        $SUBS subscribers + $PUBS publishers in one room, 64-byte payloads, $mode_txt;"
say "               ${WARMUP}s warm-up + ${DURATION}s measured per run; $RUNS run(s) per server, alternating; $policy by deliveries/s"
say "  pinning:     $pinning"
say "  tokens:      the same Switchboard-minted ES256 participant JWTs for both; the relay verifies them with node:crypto"
say "               against Switchboard's JWKS (one signature check per join on both); participants are hidden (no presence)"
say ""

SWITCHBOARD_ADMIN_KEY=$api_key sb_start "$sb_data/tls/ca.pem" "https://127.0.0.1:$sb_port/healthz" \
    --dev --workers 1 --data-dir "$sb_data" --listen "127.0.0.1:$sb_port" --plain-listen "127.0.0.1:$sb_plain" \
    --log.file "$tmp/sb-access.log" --ratelimit.requests-per-second 1000000 --ratelimit.burst 1000000 || exit 1
api=http://127.0.0.1:$sb_plain
for r in fanout fanout-idle; do
    code=$(curl -sS --max-time 5 -H "Authorization: Bearer $api_key" -H 'Content-Type: application/json' \
        -d "{\"name\":\"$r\",\"max_participants\":10000}" -o "$tmp/room.json" -w '%{http_code}' "$api/v1/rooms" || echo 000)
    [ "$code" = 201 ] || { say "fanout.bench: creating room $r answered $code"; cat "$tmp/room.json"; exit 1; }
done
curl -fsS --max-time 5 "$api/.well-known/jwks.json" -o "$tmp/jwks.json" || { say "fanout.bench: no JWKS"; exit 1; }
node "$client" mint --api "$api" --admin-key "$api_key" --room fanout --idle-room fanout-idle \
    --subs "$SUBS" --pubs "$PUBS" --idle "$IDLE" --out "$tmp/tokens.json" || { say "fanout.bench: minting tokens failed"; exit 1; }
issuer=$(node -e 'const t = JSON.parse(require("fs").readFileSync(process.argv[1])).sub[0]; console.log(JSON.parse(Buffer.from(t.split(".")[1], "base64url")).iss)' "$tmp/tokens.json")

"${pin_server[@]}" env PEER_HOST=127.0.0.1 PEER_PORT="$ws_port" PEER_JWKS="$tmp/jwks.json" PEER_ISSUER="$issuer" \
    PEER_ROOMS=fanout,fanout-idle node "$peer_dir/server.mjs" >"$tmp/ws.out" 2>&1 &
ws_pid=$!
pids+=("$ws_pid")
wait_ready ws-relay "$ws_pid" "http://127.0.0.1:$ws_port/healthz" || { tail -n 20 "$tmp/ws.out"; exit 1; }

url_of() { case "$1" in sb) echo "ws://127.0.0.1:$sb_plain/v1/rtc" ;; ws) echo "ws://127.0.0.1:$ws_port/v1/rtc" ;; esac; }
pid_of() { case "$1" in sb) echo "$sb_pid" ;; ws) echo "$ws_pid" ;; esac; }
name_of() { case "$1" in sb) echo switchboard ;; ws) echo ws-relay ;; esac; }
jget() { node -e 'const o = JSON.parse(process.argv[1]); const v = o[process.argv[2]]; console.log(typeof v === "number" ? +v.toFixed(2) : v)' "$1" "$2"; }
declare -A R

# a bad token must be refused by both (close 4001 or 401)
for s in sb ws; do
    r=$(cd "$peer_dir" && node -e '
        const W = require("ws"); const w = new W(process.argv[1] + "?access_token=" + process.argv[2]);
        w.on("close", (c) => { console.log("close " + c); process.exit(0); });
        w.on("unexpected-response", (q, res) => { console.log("http " + res.statusCode); process.exit(0); });
        w.on("error", () => {}); setTimeout(() => { console.log("timeout"); process.exit(0); }, 3000);' \
        "$(url_of "$s")" "$(node -p 'JSON.parse(require("fs").readFileSync(process.argv[1])).sub[0].slice(0, -4) + "AAAA"' "$tmp/tokens.json")")
    case "$r" in "close 4001" | "http 401") ;; *) say "fanout.bench: $(name_of "$s") accepted a forged token ($r)"; exit 1 ;; esac
done
say "  checked: both refuse a token with a wrong signature"

say "== idle memory: RSS delta of the server with $IDLE idle joined participants, / $IDLE =="
for s in sb ws; do
    run_bg "$tmp/idle-$s.txt" "${pin_client[@]}" node "$client" idle --url "$(url_of "$s")" --tokens "$tmp/tokens.json" \
        --server-pid "$(pid_of "$s")" --idle "$IDLE" || { say "fanout.bench: idle run failed against $(name_of "$s"):"; cat "$tmp/idle-$s.txt"; exit 1; }
    R[$s.idle]=$(tail -n 1 "$tmp/idle-$s.txt")
    R[$s.idle_b]=$(jget "${R[$s.idle]}" bytes_per_conn)
    printf '  %-11s %s open, RSS %s kB → %s kB: %.0f B per connection\n' "$(name_of "$s")" "$(jget "${R[$s.idle]}" open)" \
        "$(jget "${R[$s.idle]}" rss_before_kb)" "$(jget "${R[$s.idle]}" rss_after_kb)" "${R[$s.idle_b]}"
done

say "== fan-out: $SUBS subscribers, $PUBS publishers, one room =="
servers=(sb ws)
for n in $(seq 1 "$RUNS"); do
    k=$(((n - 1) % 2))
    for s in "${servers[@]:k}" "${servers[@]:0:k}"; do
        s0=$(core_snapshot)
        run_bg "$tmp/run-$s-$n.txt" "${pin_client[@]}" node "$client" run --url "$(url_of "$s")" --tokens "$tmp/tokens.json" \
            --server-pid "$(pid_of "$s")" --subs "$SUBS" --pubs "$PUBS" --window "$WINDOW" --rate "$RATE" \
            --duration "$DURATION" --warmup "$WARMUP" || { say "fanout.bench: run failed against $(name_of "$s"):"; cat "$tmp/run-$s-$n.txt"; exit 1; }
        s1=$(core_snapshot)
        j=$(tail -n 1 "$tmp/run-$s-$n.txt")
        read -r sbusy cbusy steal <<<"$(core_usage "$s0" "$s1")"
        j=$(node -e 'const o = JSON.parse(process.argv[1]); o.server_core_busy_pct = +process.argv[2]; o.client_core_busy_pct = +process.argv[3]; o.steal_pct = +process.argv[4]; console.log(JSON.stringify(o))' "$j" "$sbusy" "$cbusy" "$steal")
        R[$s.runs]+="$j"$'\n'
        node -e 'const o = JSON.parse(process.argv[1]);
            const f = (us) => us < 1000 ? us + "us" : (us / 1000).toFixed(2) + "ms";
            console.log(`  run ${process.argv[2]} ${process.argv[3].padEnd(11)} ${o.deliveries_per_sec.toFixed(0).padStart(9)} deliveries/s (${o.messages_sent} msgs sent, ${(o.deliveries / Math.max(1, o.expected_deliveries) * 100).toFixed(1)}% of sent×subs)  p50 ${f(o.p50_us)}  p99 ${f(o.p99_us)}  RSS ${o.server_rss_kb} kB; cores busy: server ${o.server_core_busy_pct}%, client ${o.client_core_busy_pct}%; steal ${o.steal_pct}%` +
              (o.format_ok ? "" : "  BAD FORMAT") + (o.lost_messages || o.dropped_connections || o.bad_frames ? `  LOST ${o.lost_messages} msgs, ${o.dropped_connections} conns dropped, ${o.bad_frames} bad frames` : ""))' \
            "$j" "$n" "$(name_of "$s")"
    done
done
stop_sb
stop_pid "$ws_pid" 10
forget_pid "$ws_pid"

# selection, ratio, goals (node does the JSON)
sel=$(SB_RUNS=${R[sb.runs]} WS_RUNS=${R[ws.runs]} RUNS=$RUNS GOAL_RATIO=$GOAL_RATIO GOAL_IDLE=$GOAL_IDLE_BYTES \
    SB_IDLE=${R[sb.idle]} WS_IDLE=${R[ws.idle]} node -e '
    const e = process.env;
    const pick = (txt) => { const r = txt.trim().split("\n").map((l) => JSON.parse(l)).sort((a, b) => a.deliveries_per_sec - b.deliveries_per_sec);
        return +e.RUNS < 3 ? r[r.length - 1] : r[Math.floor((r.length - 1) / 2)]; };
    const sb = pick(e.SB_RUNS), ws = pick(e.WS_RUNS), si = JSON.parse(e.SB_IDLE), wi = JSON.parse(e.WS_IDLE);
    const clean = (o) => o.format_ok && !o.lost_messages && !o.dropped_connections && !o.bad_frames;
    const ratio = ws.deliveries_per_sec > 0 ? sb.deliveries_per_sec / ws.deliveries_per_sec : 0;
    const why = [];
    if (ratio < +e.GOAL_RATIO) why.push(`ratio ${ratio.toFixed(2)} < ${e.GOAL_RATIO}`);
    if (!(sb.p99_us < ws.p99_us)) why.push(`sb p99 ${sb.p99_us}us >= ws p99 ${ws.p99_us}us`);
    if (!clean(sb)) why.push("switchboard lost messages or sent bad frames");
    const iwhy = si.bytes_per_conn < +e.GOAL_IDLE ? [] : [`${Math.round(si.bytes_per_conn)} B >= ${e.GOAL_IDLE} B`];
    if (si.open !== si.idle) iwhy.push(`only ${si.open} of ${si.idle} stayed open`);
    console.log(JSON.stringify({ sb, ws, ratio, goal: why.length ? "goal missed" : "goal met", why: why.join(", "),
        idle_goal: iwhy.length ? "goal missed" : "goal met", idle_why: iwhy.join(", "), sb_idle: si, ws_idle: wi }));')
g() { node -e 'const o = JSON.parse(process.argv[1]); const v = process.argv[2].split(".").reduce((a, k) => a[k], o); console.log(typeof v === "number" ? (Number.isInteger(v) ? v : v.toFixed(2)) : v)' "$sel" "$1"; }
us() { awk -v v="$1" 'BEGIN { if (v < 1000) printf "%dus", v; else printf "%.2fms", v / 1000 }'; }
say "  --- $policy ---"
row() { printf '  %-26s %14s %14s\n' "$@"; }
row "" switchboard ws-relay
row "deliveries/s" "$(g sb.deliveries_per_sec)" "$(g ws.deliveries_per_sec)"
row "ratio sb/ws" "$(g ratio)" ""
row "latency p50" "$(us "$(g sb.p50_us)")" "$(us "$(g ws.p50_us)")"
row "latency p99" "$(us "$(g sb.p99_us)")" "$(us "$(g ws.p99_us)")"
row "messages sent (measured)" "$(g sb.messages_sent)" "$(g ws.messages_sent)"
row "RSS after run (kB)" "$(g sb.server_rss_kb)" "$(g ws.server_rss_kb)"
row "cores busy srv/client %" "$(g sb.server_core_busy_pct)/$(g sb.client_core_busy_pct)" "$(g ws.server_core_busy_pct)/$(g ws.client_core_busy_pct)"
row "idle B/connection" "$(g sb_idle.bytes_per_conn)" "$(g ws_idle.bytes_per_conn)"
say "  (deliveries are counted at the subscribers; latency is receive time − the publisher's hrtime stamp in the"
say "   payload, same process. If the client core is ~100% busy, the load generator was the limit.)"
goal=$(g goal) why=$(g why) igoal=$(g idle_goal) iwhy=$(g idle_why)
say "  goal sb/ws >= $GOAL_RATIO and sb p99 < ws p99: $goal${why:+ ($why)}"
say "  goal idle memory < $GOAL_IDLE_BYTES B per connection (no TLS): $igoal${iwhy:+ ($iwhy)}"
say ""

mkdir -p "$RESULTS_DIR"
ts=$(date -u +%Y%m%dT%H%M%SZ)
json=$RESULTS_DIR/fanout-$ts.json
SEL=$sel SB_RUNS=${R[sb.runs]} WS_RUNS=${R[ws.runs]} node -e '
    const e = process.env, s = JSON.parse(e.SEL), runs = (t) => t.trim().split("\n").map((l) => JSON.parse(l));
    const a = process.argv.slice(1);
    console.log(JSON.stringify({ bench: "fanout", timestamp: a[0],
        switchboard: { version: a[1], binary: a[2], commit: a[3] }, ws: a[4], node: a[5],
        params: { subscribers: +a[6], publishers: +a[7], payload_bytes: 64, mode: a[8], duration_s: +a[9], warmup_s: +a[10], runs: +a[11], selection: a[12], pinning: a[13], transport: "plain ws://", idle_connections: +a[14] },
        goals: { fanout: "sb/ws deliveries/s >= 8 and sb p99 < ws p99", idle: "sb idle memory < 8192 B per connection" },
        servers: { switchboard: { runs: runs(e.SB_RUNS), selected: s.sb, idle: s.sb_idle }, "ws-relay": { runs: runs(e.WS_RUNS), selected: s.ws, idle: s.ws_idle } },
        comparisons: { "sb/ws": { ratio: s.ratio, goal: s.goal + (s.why ? ": " + s.why : "") }, idle: { goal: s.idle_goal + (s.idle_why ? ": " + s.idle_why : "") } } }, null, 2));' \
    "$ts" "$sb_ver" "$bin" "$git_rev" "$ws_ver" "$node_ver" "$SUBS" "$PUBS" "$mode_txt" "$DURATION" "$WARMUP" "$RUNS" "$policy" "$pinning" "$IDLE" >"$json"
say "results: ${json#"$PWD"/}"

if [ -n "$SUMMARY" ]; then
    printf 'row\tfanout\tws deliveries/s vs ws-relay\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s kB\t%s kB\t%s\n' \
        "$(g sb.deliveries_per_sec)" "$(g ws.deliveries_per_sec)" "$(g ratio)" "$(us "$(g sb.p50_us)")" "$(us "$(g sb.p99_us)")" \
        "$(us "$(g ws.p50_us)")" "$(us "$(g ws.p99_us)")" "$(g sb.server_rss_kb)" "$(g ws.server_rss_kb)" "$goal" >>"$SUMMARY"
    printf 'row\tfanout\tidle B/conn vs ws-relay\t%s\t%s\t-\t-\t-\t-\t-\t%s kB\t%s kB\t%s\n' \
        "$(g sb_idle.bytes_per_conn)" "$(g ws_idle.bytes_per_conn)" "$(g sb_idle.rss_after_kb)" "$(g ws_idle.rss_after_kb)" "$igoal" >>"$SUMMARY"
    printf 'note\tfanout: %s subs + %s pubs in one room, 64 B payloads, %s, plain ws://, %ss runs (%s), %s; ws-relay = node %s + ws %s; "req/s" columns are deliveries/s (counted at subscribers), idle row is bytes per idle joined connection (%s)\n' \
        "$SUBS" "$PUBS" "$mode_txt" "$DURATION" "$policy" "$pinning" "$node_ver" "$ws_ver" "$IDLE" >>"$SUMMARY"
    printf 'goal\tfanout: sb/ws deliveries/s >= %s and sb p99 < ws p99; sb idle memory < %s B per connection\n' "$GOAL_RATIO" "$GOAL_IDLE_BYTES" >>"$SUMMARY"
fi
exit 0
