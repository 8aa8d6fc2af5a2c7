#!/usr/bin/env bash
# bench/grpc.bench.sh BIN — gRPC unary switchboard.v1.RoomService/GetRoom with a bearer key
# over TLS (ALPN h2), driven by h2load: Switchboard side by side with an @grpc/grpc-js server
# doing the same work from memory (bench/peers/grpc-js), in one run.
#
# Both servers run one process/worker pinned to the same core; h2load runs pinned to another
# and sends the same length-prefixed request (content-type application/grpc, te: trailers,
# authorization) to both. Runs alternate (sb, peer, peer, sb, ...) with a warm-up before each;
# the best of two runs (or the median of three or more) is compared. Before measuring, both
# answers are checked with @grpc/grpc-js itself: the same Room message, and UNAUTHENTICATED
# without a key. Latency percentiles come from h2load's per-request log (--log-file).
# Exit status: 0 when the benchmark ran (goal met or not), non-zero when it could not run.
#
# Knobs (environment): BENCH_DURATION, BENCH_WARMUP, BENCH_RUNS, BENCH_SERVER_CPU,
# BENCH_CLIENT_CPU, BENCH_RESULTS_DIR, BENCH_SUMMARY as for the other benches, and
# BENCH_GRPC_CLIENTS (h2load -c, default 16) and BENCH_GRPC_STREAMS (h2load -m, default 4).
# shellcheck disable=SC2317 # trap handlers are reached through trap
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

BENCH_NAME=grpc.bench
# shellcheck source=bench/lib.sh
. "$here/lib.sh"

GOAL=6.0 # sb/grpc-js requests/s, and sb p99 < grpc-js p99
CLIENTS=${BENCH_GRPC_CLIENTS:-16}
STREAMS=${BENCH_GRPC_STREAMS:-4}
ROOM=bench-room
METADATA='{"title":"Weekly planning","owner":"user_7Hq2Lx","region":"eu-west-1","tags":["planning","team-a"]}'
METHOD=/switchboard.v1.RoomService/GetRoom

need_tools h2load taskset curl openssl awk node npm cmp sort
bin=${1:-}
if [ -z "$bin" ] || [ ! -x "$bin" ] || [ -d "$bin" ]; then
    die "Switchboard binary '${bin:-<none>}' not found or not executable (usage: $0 BIN)"
fi
case "$bin" in /*) ;; *) bin=$PWD/$bin ;; esac

peer_dir=$here/peers/grpc-js
stamp=$peer_dir/node_modules/.sb-lock-stamp
if [ ! -f "$stamp" ] || ! cmp -s "$peer_dir/package-lock.json" "$stamp"; then
    say "grpc.bench: npm ci in bench/peers/grpc-js"
    (cd "$peer_dir" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci in $peer_dir failed"
    cp "$peer_dir/package-lock.json" "$stamp"
fi

bench_pinning
pinning=${pinning/wrk/h2load}
bench_tmpdir grpc

api_key=$(openssl rand -base64 64 | tr -dc 'A-Za-z0-9' | head -c 43)
[ ${#api_key} -eq 43 ] || die "could not make a random API key"
sb_data=$tmp/sb-data
cert=$sb_data/tls/server.pem
key=$sb_data/tls/server.key
cacert=$sb_data/tls/ca.pem
mkdir -p "$sb_data"
sb_port=$(pick_port)
g_port=$(pick_port)

# the request: GetRoomRequest{name: ROOM} (field 1, length-delimited) behind the 5-byte prefix
node -e '
    const name = Buffer.from(process.argv[1]);
    const msg = Buffer.concat([Buffer.from([0x0a, name.length]), name]);
    const pre = Buffer.alloc(5); pre.writeUInt32BE(msg.length, 1);
    require("fs").writeFileSync(process.argv[2], Buffer.concat([pre, msg]));
' "$ROOM" "$tmp/getroom.bin"

g_pid=""
start_peer() {
    "${pin_server[@]}" env PEER_HOST=127.0.0.1 PEER_PORT="$g_port" PEER_CERT="$cert" PEER_KEY="$key" \
        PEER_LOG="$tmp/grpc-js-access.log" PEER_API_KEY="$api_key" PEER_ROOM_FILE="$tmp/room.json" \
        PEER_PROTO_DIR="$root/proto" node "$peer_dir/server.mjs" >"$tmp/peer.out" 2>&1 &
    g_pid=$!
    pids+=("$g_pid")
    local i=0
    until grep -q listening "$tmp/peer.out" 2>/dev/null; do
        kill -0 "$g_pid" 2>/dev/null || { say "grpc.bench: the grpc-js peer exited:"; cat "$tmp/peer.out"; return 1; }
        i=$((i + 1))
        [ "$i" -lt 300 ] || { say "grpc.bench: the grpc-js peer did not start"; return 1; }
        sleep 0.1
    done
}
check() { # PORT [KEY]
    node "$peer_dir/check.mjs" "$1" "$cacert" "$root/proto" "$ROOM" "${2:-}"
}

# one warm-up + one measured h2load run; leaves "rps p50 p99 requests failed server_cpu% ..."
measure_h2() { # NAME PORT OUT PID
    local name=$1 port=$2 out=$3 pid=$4 t0 t1 s0 s1 rps total ok p50 p99
    local args=(-t1 -c"$CLIENTS" -m"$STREAMS" -H 'content-type: application/grpc' -H 'te: trailers'
        -H "authorization: Bearer $api_key" -d "$tmp/getroom.bin" "https://127.0.0.1:$port$METHOD")
    if [ "$WARMUP" -gt 0 ]; then
        run_bg "$out.warmup" "${pin_client[@]}" h2load -D"$WARMUP" "${args[@]}" ||
            { say "grpc.bench: h2load warm-up failed against $name:"; tail -20 "$out.warmup"; return 1; }
    fi
    t0=$(cpu_ticks "$pid")
    s0=$(core_snapshot)
    run_bg "$out" "${pin_client[@]}" h2load -D"$DURATION" --log-file="$out.log" "${args[@]}" ||
        { say "grpc.bench: h2load failed against $name:"; tail -20 "$out"; return 1; }
    t1=$(cpu_ticks "$pid")
    s1=$(core_snapshot)
    rps=$(awk '/^finished in/ { v = $4; sub(/,$/, "", v); print v }' "$out")
    total=$(awk '/^requests:/ { print $2 }' "$out")
    ok=$(awk '/^requests:/ { print $8 }' "$out")
    if [ -z "$rps" ] || [ -z "$ok" ]; then
        say "grpc.bench: cannot read h2load's output against $name:"
        cat "$out"
        return 1
    fi
    read -r p50 p99 < <(awk -F'\t' '{ print $3 / 1000 }' "$out.log" | sort -g |
        awk '{ v[NR] = $1 }
             END {
                 if (NR == 0) { print "0 0"; exit }
                 a = int(NR * 0.50 + 0.5); if (a < 1) a = 1
                 b = int(NR * 0.99 + 0.5); if (b < 1) b = 1
                 printf "%.3f %.3f\n", v[a], v[b]
             }')
    run_result="$rps $p50 $p99 $total $((total - ok)) 0 $(awk -v a="$t0" -v b="$t1" -v hz="$clk_tck" -v d="$DURATION" \
        'BEGIN { printf "%.0f", (b - a) / hz / d * 100 }') $(core_usage "$s0" "$s1")"
}

bench_versions
sb_ver=$("$bin" --version 2>/dev/null | head -n 1 || echo unknown)
grpcjs_ver=$(node -p 'require(process.argv[1]).version' "$peer_dir/node_modules/@grpc/grpc-js/package.json" 2>/dev/null || echo unknown)
h2load_ver=$(h2load --version 2>/dev/null | head -n 1)
node_ver=$(node --version)

say "gRPC unary $METHOD with a bearer key over TLS (h2) — Switchboard vs @grpc/grpc-js, side by side"
say "  switchboard: $sb_ver (${bin}, commit $git_rev)"
say "  grpc-js:     $grpcjs_ver (node $node_ver)    load: $h2load_ver    $ossl_ver"
say "  load:        h2load -t1 -c$CLIENTS -m$STREAMS -D${DURATION}s, ${WARMUP}s warm-up before each run; $RUNS run(s) each, alternating; $policy compared"
say "  pinning:     $pinning; one worker/process each"
say "  work:        switchboard: gRPC adapter → the REST route GET /v1/rooms/{name} (bearer check via the per-loop"
say "               credential cache, room from its per-loop response cache or SQLite) → JSON → protobuf"
say "               grpc-js: bearer check (SHA-256 → Map), room from a Map, protobuf"
say "  logging:     both write one JSON access-log line per call to a file, buffered"
say ""

declare -A R
SWITCHBOARD_ADMIN_KEY=$api_key sb_start "$cacert" "https://127.0.0.1:$sb_port/healthz" \
    --dev --workers 1 --data-dir "$sb_data" --listen "127.0.0.1:$sb_port" --log.file "$tmp/sb-access.log" \
    --ratelimit.requests-per-second 1000000 --ratelimit.burst 1000000 || exit 1
payload=$(ROOM=$ROOM METADATA=$METADATA node -e 'process.stdout.write(JSON.stringify({name: process.env.ROOM, metadata: process.env.METADATA}))')
code=$(curl -sS --max-time 5 --cacert "$cacert" -H "Authorization: Bearer $api_key" -H 'Content-Type: application/json' \
    -d "$payload" -o "$tmp/room.json" -w '%{http_code}' "https://127.0.0.1:$sb_port/v1/rooms" || echo 000)
[ "$code" = 201 ] || { say "grpc.bench: creating the room answered $code"; cat "$tmp/room.json"; exit 1; }
start_peer || exit 1

sb_answer=$(check "$sb_port" "$api_key")
peer_answer=$(check "$g_port" "$api_key")
case "$sb_answer" in ERROR*|"") say "grpc.bench: switchboard's GetRoom failed: $sb_answer"; exit 1 ;; esac
[ "$sb_answer" = "$peer_answer" ] || { say "grpc.bench: the answers differ:"; say "  switchboard: $sb_answer"; say "  grpc-js:     $peer_answer"; exit 1; }
for p in "$sb_port" "$g_port"; do
    noauth=$(check "$p")
    [ "$noauth" = "ERROR 16" ] || { say "grpc.bench: port $p answered '$noauth' without a key (expected UNAUTHENTICATED)"; exit 1; }
done
say "  checked: both answer the same Room ($(printf '%s' "$sb_answer" | wc -c) B as JSON) and UNAUTHENTICATED without a key"

for n in $(seq 1 "$RUNS"); do
    order=(sb grpcjs)
    [ $((n % 2)) -eq 0 ] && order=(grpcjs sb)
    for s in "${order[@]}"; do
        if [ "$s" = sb ]; then measure_h2 switchboard "$sb_port" "$tmp/h2-sb-$n.txt" "$sb_pid" || exit 1
        else measure_h2 grpc-js "$g_port" "$tmp/h2-grpcjs-$n.txt" "$g_pid" || exit 1; fi
        R[$s.runs]+="$run_result"$'\n'
        print_run "$n" "$([ "$s" = sb ] && echo switchboard || echo grpc-js)" "$run_result"
    done
done
for s in sb grpcjs; do
    pid=$([ "$s" = sb ] && echo "$sb_pid" || echo "$g_pid")
    R[$s.rss]=$(status_kb "$pid" VmRSS)
    R[$s.hwm]=$(status_kb "$pid" VmHWM)
done
stop_sb
stop_pid "$g_pid" 15
forget_pid "$g_pid"
[ "$stop_rc" = 0 ] || say "grpc.bench: warning: the grpc-js peer exited with status $stop_rc on SIGTERM"

for s in sb grpcjs; do
    R[$s.sel]=$(printf '%s' "${R[$s.runs]}" | select_run)
    read -r rps p50 p99 _ failed _ <<<"${R[$s.sel]}"
    R[$s.rps]=$rps R[$s.p50]=$p50 R[$s.p99]=$p99 R[$s.failed]=$failed
done
ratio=$(awk -v a="${R[sb.rps]}" -v b="${R[grpcjs.rps]}" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }')
why=()
awk -v r="$ratio" -v g="$GOAL" 'BEGIN { exit !(r >= g) }' || why+=("ratio $ratio < $GOAL")
awk -v a="${R[sb.p99]}" -v b="${R[grpcjs.p99]}" 'BEGIN { exit !(a < b) }' ||
    why+=("sb p99 $(fmt_ms "${R[sb.p99]}") >= grpc-js p99 $(fmt_ms "${R[grpcjs.p99]}")")
[ "${R[sb.failed]}" = 0 ] || why+=("switchboard had failed requests")
goal=$([ ${#why[@]} -eq 0 ] && echo "goal met" || echo "goal missed")

say "  --- $policy ---"
row() { printf '  %-22s %14s %14s\n' "$@"; }
row "" switchboard grpc-js
row "requests/s" "${R[sb.rps]}" "${R[grpcjs.rps]}"
row "ratio sb/grpc-js" "$ratio" ""
row "latency p50" "$(fmt_ms "${R[sb.p50]}")" "$(fmt_ms "${R[grpcjs.p50]}")"
row "latency p99" "$(fmt_ms "${R[sb.p99]}")" "$(fmt_ms "${R[grpcjs.p99]}")"
row "RSS after (kB)" "${R[sb.rss]}" "${R[grpcjs.rss]}"
row "peak RSS VmHWM (kB)" "${R[sb.hwm]}" "${R[grpcjs.hwm]}"
row "failed requests" "${R[sb.failed]}" "${R[grpcjs.failed]}"
say "  goal sb/grpc-js >= $GOAL and lower p99: $goal${why[*]:+ (${why[*]})}"

ts=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$RESULTS_DIR"
json=$RESULTS_DIR/grpc-$ts.json
{
    printf '{"bench":"grpc","timestamp":"%s","switchboard":{"version":%s,"commit":%s},"grpc_js":%s,"node":%s,"h2load":%s,\n' \
        "$ts" "$(json_str "$sb_ver")" "$(json_str "$git_rev")" "$(json_str "$grpcjs_ver")" "$(json_str "$node_ver")" "$(json_str "$h2load_ver")"
    printf ' "params":{"method":"%s","clients":%s,"streams":%s,"duration_s":%s,"warmup_s":%s,"runs":%s,"selection":%s,"pinning":%s},\n' \
        "$METHOD" "$CLIENTS" "$STREAMS" "$DURATION" "$WARMUP" "$RUNS" "$(json_str "$policy")" "$(json_str "$pinning")"
    for s in sb grpcjs; do
        printf ' "%s":{"runs":[%s],"selected":%s,"rss_kb":%s,"hwm_kb":%s},\n' "$s" \
            "$(printf '%s' "${R[$s.runs]}" | awk 'NF' | run_json | paste -sd, -)" "$(printf '%s\n' "${R[$s.sel]}" | run_json)" "${R[$s.rss]}" "${R[$s.hwm]}"
    done
    printf ' "ratio":%s,"goal":%s}\n' "$ratio" "$(json_str "$goal${why[*]:+: ${why[*]}}")"
} >"$json"
say "results: ${json#"$PWD"/}"

if [ -n "$SUMMARY" ]; then
    # shellcheck disable=SC2129 # three kinds of line, as the other benches write them
    printf 'row\tgrpc\tGetRoom vs grpc-js\t%.2f\t%.2f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "${R[sb.rps]}" "${R[grpcjs.rps]}" "$ratio" \
        "$(fmt_ms "${R[sb.p50]}")" "$(fmt_ms "${R[sb.p99]}")" "$(fmt_ms "${R[grpcjs.p50]}")" "$(fmt_ms "${R[grpcjs.p99]}")" \
        "${R[sb.rss]} kB" "${R[grpcjs.rss]} kB" "$goal" >>"$SUMMARY"
    printf 'note\tgrpc: unary GetRoom with a bearer key over TLS h2, h2load -t1 -c%s -m%s, %ss runs (%s), %s; @grpc/grpc-js %s on node %s (one process)\n' \
        "$CLIENTS" "$STREAMS" "$DURATION" "$policy" "$pinning" "$grpcjs_ver" "$node_ver" >>"$SUMMARY"
    printf 'goal\tgrpc: sb/grpc-js >= %s and sb p99 < grpc-js p99\n' "$GOAL" >>"$SUMMARY"
fi
exit 0
