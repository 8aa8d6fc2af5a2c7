#!/usr/bin/env bash
# bench/h2.bench.sh BIN — REST over HTTP/2: h2load against GET /v1/rooms/{name} with an API key
# (auth, a store read, JSON) on Switchboard, side by side with nginx serving the same room JSON
# from `return 200` over h2, on TLS (ALPN h2) and plain h2c (prior knowledge).
#
# Both servers run one worker pinned to the same core; h2load runs one thread pinned to another.
# Runs alternate (sb, nginx, sb, nginx, ...) with a warm-up before each; the best of two runs
# (or the median of three or more) is compared. Latency percentiles come from h2load's
# per-request log (--log-file), which h2load's summary does not print. Exit status: 0 when the
# benchmark ran (whether or not the goal was met), non-zero when it could not run.
#
# Knobs (environment), besides those of bench/lib.sh (BENCH_DURATION, BENCH_WARMUP, BENCH_RUNS,
# BENCH_SERVER_CPU, BENCH_CLIENT_CPU, BENCH_RESULTS_DIR, BENCH_SUMMARY):
#   BENCH_H2_CONNS=16      h2load connections (-c)
#   BENCH_H2_STREAMS=10    concurrent streams per connection (-m)
#   BENCH_H2_MODES="tls plain"
# shellcheck disable=SC2317 # trap handlers are reached through trap
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
BENCH_NAME=h2.bench
# shellcheck source=bench/lib.sh
. "$here/lib.sh"

H2_CONNS=${BENCH_H2_CONNS:-16}
H2_STREAMS=${BENCH_H2_STREAMS:-10}
MODES=${BENCH_H2_MODES:-tls plain}
for v in H2_CONNS H2_STREAMS; do
    if ! [[ ${!v} =~ ^[0-9]+$ ]] || [ "${!v}" -lt 1 ]; then die "BENCH_${v} must be a positive integer"; fi
done
for m in $MODES; do
    case "$m" in tls | plain) ;; *) die "unknown mode '$m' in BENCH_H2_MODES (tls, plain)" ;; esac
done

need_tools h2load nginx taskset curl openssl awk sort
nginx -V 2>&1 | grep -q -- --with-http_v2_module || die "this nginx has no http_v2 module"

bin=${1:-}
if [ -z "$bin" ] || [ ! -x "$bin" ] || [ -d "$bin" ]; then
    die "Switchboard binary '${bin:-<none>}' not found or not executable (usage: $0 BIN)"
fi
case "$bin" in /*) ;; *) bin=$PWD/$bin ;; esac

bench_pinning
pinning=${pinning/wrk/h2load}
bench_tmpdir h2

api_key=$(openssl rand -base64 64 | tr -dc 'A-Za-z0-9' | head -c 43)
[ ${#api_key} -eq 43 ] || die "could not make a random API key"
auth=(-H "Authorization: Bearer $api_key")
ROOM=bench-h2-room
path=/v1/rooms/$ROOM

sb_data=$tmp/sb-data
cert=$sb_data/tls/server.pem
key=$sb_data/tls/server.key
cacert=$sb_data/tls/ca.pem
mkdir -p "$sb_data" "$tmp/nginx"
sb_tls_port=$(pick_port)
sb_plain_port=$(pick_port)
ng_tls_port=$(pick_port)
ng_plain_port=$(pick_port)
sb_log=$tmp/sb-access.log
ng_log=$tmp/nginx/access.log

url_of() { # SERVER MODE
    case "$1/$2" in
    sb/tls) echo "https://127.0.0.1:$sb_tls_port$path" ;;
    sb/plain) echo "http://127.0.0.1:$sb_plain_port$path" ;;
    nginx/tls) echo "https://127.0.0.1:$ng_tls_port$path" ;;
    nginx/plain) echo "http://127.0.0.1:$ng_plain_port$path" ;;
    esac
}
name_of() { [ "$1" = sb ] && echo switchboard || echo nginx; }

start_nginx() { # the room JSON Switchboard answered, served as-is over h2
    local body
    body=$(sed "s/'/\\\\'/g" "$tmp/room.json")
    nginx_write_conf "$tmp/nginx" "$cert" "$key" "$ng_log" "h2.bench.sh; a peer for Switchboard's GET $path over HTTP/2." "$(
        cat <<EOF
    server {
        listen 127.0.0.1:$ng_tls_port ssl http2;
        listen 127.0.0.1:$ng_plain_port http2;
        http2_max_concurrent_streams 100;
        location = $path {
            add_header X-Request-Id \$request_id always;
            return 200 '$body';
        }
        location = /healthz {
            return 200 '{"status":"ok"}';
        }
    }
EOF
    )"
    nginx_start "$tmp/nginx" "$cacert" "https://127.0.0.1:$ng_tls_port/healthz"
}

# h2load per-request log → "p50_ms p99_ms"
percentiles() {
    awk -F'\t' '{ print $3 }' "$1" | sort -n | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "FAIL"; exit }
        i50 = int(NR * 0.50); if (i50 < 1) i50 = 1
        i99 = int(NR * 0.99); if (i99 < 1) i99 = 1
        printf "%.3f %.3f\n", v[i50] / 1000, v[i99] / 1000 }'
}

# one warm-up + one measured run; leaves "rps p50 p99 requests non2xx failed cpu% sbusy cbusy steal"
run_once() { # SERVER MODE RUN# PID
    local s=$1 mode=$2 n=$3 pid=$4 url out t0 t1 s0 s1 rps reqs non2xx failed pct
    url=$(url_of "$s" "$mode")
    out=$tmp/h2load-$mode-$s-$n
    local args=(-t1 -c"$H2_CONNS" -m"$H2_STREAMS" "${auth[@]}") # http:// URLs: h2c, prior knowledge
    if [ "$WARMUP" -gt 0 ]; then
        run_bg "$out.warmup" "${pin_client[@]}" h2load "${args[@]}" -D "$WARMUP" "$url" ||
            { say "h2.bench: h2load warm-up failed against $s ($url):"; tail -5 "$out.warmup"; return 1; }
    fi
    t0=$(cpu_ticks "$pid")
    s0=$(core_snapshot)
    run_bg "$out.txt" "${pin_client[@]}" h2load "${args[@]}" -D "$DURATION" --log-file "$out.log" "$url" ||
        { say "h2.bench: h2load failed against $s ($url):"; tail -5 "$out.txt"; return 1; }
    t1=$(cpu_ticks "$pid")
    s1=$(core_snapshot)
    grep -q "Application protocol: h2" "$out.txt" || { say "h2.bench: $s did not speak h2:"; cat "$out.txt"; return 1; }
    rps=$(awk '/^finished in/ { gsub(/,/, ""); print $4 }' "$out.txt")
    # "requests: T total, S started, D done, OK succeeded, F failed, E errored, X timeout"
    read -r reqs failed <<<"$(awk '/^requests:/ { print $6, $10 + $12 + $14 }' "$out.txt")"
    # "status codes: A 2xx, B 3xx, C 4xx, D 5xx"
    non2xx=$(awk '/^status codes:/ { print $5 + $7 + $9 }' "$out.txt")
    pct=$(percentiles "$out.log")
    if [ -z "$rps" ] || [ "$pct" = FAIL ]; then
        say "h2.bench: could not read h2load's output:"
        cat "$out.txt"
        return 1
    fi
    run_result="$rps $pct $reqs ${non2xx:-0} ${failed:-0} $(awk -v a="$t0" -v b="$t1" -v hz="$clk_tck" -v d="$DURATION" \
        'BEGIN { printf "%.0f", (b - a) / hz / d * 100 }') $(core_usage "$s0" "$s1")"
}

bench_versions
h2load_ver=$(h2load --version 2>&1 | awk 'NR == 1 { print $2 }')
sb_ver=$("$bin" --version 2>/dev/null | head -n 1 || echo unknown)

say "REST over HTTP/2: GET $path with an API key — Switchboard vs nginx (return 200 of the same JSON)"
say "  switchboard: $sb_ver ($bin, commit $git_rev)"
say "  nginx:       $nginx_ver    h2load: $h2load_ver    $ossl_ver"
say "  load:        h2load -t1 -c$H2_CONNS -m$H2_STREAMS -D ${DURATION}s, ${WARMUP}s warm-up before each run; $RUNS run(s) per server per mode, alternating; $policy compared"
say "  pinning:     $pinning; one worker each (switchboard --workers 1, nginx worker_processes 1)"
say "  logging:     both write one JSON access-log line per request to a file, buffered"
say ""

ts=$(date -u +%Y%m%dT%H%M%SZ)
declare -A R
summary_rows=()

SWITCHBOARD_ADMIN_KEY=$api_key sb_start "$cacert" "https://127.0.0.1:$sb_tls_port/healthz" \
    --dev --workers 1 --data-dir "$sb_data" --listen "127.0.0.1:$sb_tls_port" --plain-listen "127.0.0.1:$sb_plain_port" \
    --log.file "$sb_log" --ratelimit.requests-per-second 1000000 --ratelimit.burst 1000000 || exit 1
code=$(curl -sS --max-time 5 --cacert "$cacert" "${auth[@]}" -H 'Content-Type: application/json' \
    -d "{\"name\":\"$ROOM\",\"metadata\":\"h2 bench\"}" -o "$tmp/create.body" -w '%{http_code}' \
    "https://127.0.0.1:$sb_tls_port/v1/rooms" || echo 000)
[ "$code" = 201 ] || { say "h2.bench: creating the room answered $code:"; cat "$tmp/create.body"; exit 1; }
curl -sS --cacert "$cacert" "${auth[@]}" -o "$tmp/room.json" "$(url_of sb tls)"
start_nginx || exit 1

for s in sb nginx; do
    for mode in $MODES; do
        url=$(url_of "$s" "$mode")
        flags=(--http2)
        [ "$mode" = tls ] || flags=(--http2-prior-knowledge)
        R[$mode.$s.resp]=$(curl -s "${flags[@]}" -o "$tmp/check-$s-$mode" --cacert "$cacert" "${auth[@]}" \
            -w '%{http_code} %{http_version} %{size_header} %{size_download}' "$url")
        read -r c v hb bb <<<"${R[$mode.$s.resp]}"
        if [ "$c" != 200 ] || [ "$v" != 2 ]; then die "$(name_of "$s") $mode: answered $c over HTTP/$v"; fi
        cmp -s "$tmp/check-$s-$mode" "$tmp/room.json" || die "$(name_of "$s") $mode: body differs from the room JSON"
        printf '  %-11s %-5s 200 over HTTP/2, %s B headers + %s B body\n' "$(name_of "$s")" "$mode" "$hb" "$bb"
    done
done
say ""

for mode in $MODES; do
    label=$([ "$mode" = tls ] && echo "TLS h2" || echo "h2c")
    say "== $label: GET $path =="
    for n in $(seq 1 "$RUNS"); do
        for s in sb nginx; do
            pid=$([ "$s" = sb ] && echo "$sb_pid" || echo "$ng_worker")
            run_once "$s" "$mode" "$n" "$pid" || exit 1
            R[$mode.$s.runs]+="$run_result"$'\n'
            read -r rps p50 p99 _ non2xx failed scpu sbusy cbusy steal <<<"$run_result"
            printf '  run %d %-11s %10.2f req/s  p50 %8s  p99 %8s  server %3s%% CPU; cores busy: server %3s%%, h2load %3s%%; steal %s%%%s\n' \
                "$n" "$(name_of "$s")" "$rps" "$(fmt_ms "$p50")" "$(fmt_ms "$p99")" "$scpu" "$sbusy" "$cbusy" "$steal" \
                "$([ "$non2xx" != 0 ] || [ "$failed" != 0 ] && echo "  ERRORS: $non2xx non-2xx, $failed failed")"
        done
    done
    for s in sb nginx; do
        pid=$([ "$s" = sb ] && echo "$sb_pid" || echo "$ng_worker")
        R[$mode.$s.rss]=$(status_kb "$pid" VmRSS)
        R[$mode.$s.hwm]=$(status_kb "$pid" VmHWM)
        R[$mode.$s.sel]=$(printf '%s' "${R[$mode.$s.runs]}" | select_run)
    done
    read -r sb_rps sb_p50 sb_p99 _ sb_non2xx sb_failed _ <<<"${R[$mode.sb.sel]}"
    read -r ng_rps ng_p50 ng_p99 _ ng_non2xx ng_failed _ <<<"${R[$mode.nginx.sel]}"
    ratio=$(awk -v a="$sb_rps" -v b="$ng_rps" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }')
    say "  --- $policy ---"
    printf '  %-22s %14s %14s\n' "" switchboard nginx
    printf '  %-22s %14.2f %14.2f\n' "requests/s" "$sb_rps" "$ng_rps"
    printf '  %-22s %14s\n' "ratio sb/nginx" "$ratio"
    printf '  %-22s %14s %14s\n' "latency p50" "$(fmt_ms "$sb_p50")" "$(fmt_ms "$ng_p50")"
    printf '  %-22s %14s %14s\n' "latency p99" "$(fmt_ms "$sb_p99")" "$(fmt_ms "$ng_p99")"
    printf '  %-22s %14s %14s\n' "RSS now (kB)" "${R[$mode.sb.rss]}" "${R[$mode.nginx.rss]}"
    printf '  %-22s %14s %14s\n' "peak RSS VmHWM (kB)" "${R[$mode.sb.hwm]}" "${R[$mode.nginx.hwm]}"
    printf '  %-22s %14s %14s\n' "errors (non-2xx/fail)" "$sb_non2xx/$sb_failed" "$ng_non2xx/$ng_failed"
    goal="goal missed"
    why=()
    awk -v r="$ratio" 'BEGIN { exit !(r >= 1.0) }' || why+=("ratio $ratio < 1.0")
    [ "$sb_non2xx" = 0 ] && [ "$sb_failed" = 0 ] || why+=("switchboard had errors")
    [ ${#why[@]} -ne 0 ] || goal="goal met"
    R[$mode.ratio]=$ratio
    R[$mode.goal]="$goal${why:+ ($(IFS=';'; echo "${why[*]}"))}"
    say "  goal (ratio >= 1.0, no errors): ${R[$mode.goal]}"
    say ""
    summary_rows+=("$(printf 'h2\tREST %s vs nginx\t%.2f\t%.2f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s' "$label" "$sb_rps" "$ng_rps" "$ratio" \
        "$(fmt_ms "$sb_p50")" "$(fmt_ms "$sb_p99")" "$(fmt_ms "$ng_p50")" "$(fmt_ms "$ng_p99")" \
        "${R[$mode.sb.rss]} kB" "${R[$mode.nginx.rss]} kB" "$goal")")
done
R[sb.loglines]=$(wc -l <"$sb_log" 2>/dev/null || echo 0)
stop_sb
stop_nginx

mkdir -p "$RESULTS_DIR"
json=$RESULTS_DIR/h2-$ts.json
{
    printf '{\n  "bench": "h2",\n  "timestamp": "%s",\n' "$ts"
    printf '  "switchboard": {"version": %s, "commit": %s},\n' "$(json_str "$sb_ver")" "$(json_str "$git_rev")"
    printf '  "nginx": %s, "h2load": %s, "openssl": %s,\n' "$(json_str "$nginx_ver")" "$(json_str "$h2load_ver")" "$(json_str "$ossl_ver")"
    printf '  "params": {"path": %s, "connections": %s, "streams": %s, "duration_s": %s, "warmup_s": %s, "runs": %s, "selection": %s, "pinning": %s},\n' \
        "$(json_str "$path")" "$H2_CONNS" "$H2_STREAMS" "$DURATION" "$WARMUP" "$RUNS" "$(json_str "$policy")" "$(json_str "$pinning")"
    printf '  "modes": {'
    first=1
    for mode in $MODES; do
        [ "$first" = 1 ] || printf ','
        first=0
        printf '\n    "%s": {' "$mode"
        for s in sb nginx; do
            read -r rps p50 p99 reqs non2xx failed scpu _ <<<"${R[$mode.$s.sel]}"
            printf '"%s": {"requests_per_sec": %s, "p50_ms": %s, "p99_ms": %s, "requests": %s, "non_2xx": %s, "failed": %s, "server_cpu_pct": %s, "rss_kb": %s, "hwm_kb": %s}, ' \
                "$(name_of "$s")" "$rps" "$p50" "$p99" "$reqs" "$non2xx" "$failed" "$scpu" "${R[$mode.$s.rss]}" "${R[$mode.$s.hwm]}"
        done
        printf '"ratio": %s, "goal": %s}' "${R[$mode.ratio]}" "$(json_str "${R[$mode.goal]}")"
    done
    printf '\n  }\n}\n'
} >"$json"
say "results: ${json#"$PWD"/}"

if [ -n "$SUMMARY" ]; then
    for row in "${summary_rows[@]}"; do printf 'row\t%s\n' "$row" >>"$SUMMARY"; done
    printf 'note\th2: h2load -t1 -c%s -m%s, %ss runs (%s), %s; GET %s with an API key vs nginx return 200 of the same JSON; p50/p99 from h2load --log-file\n' \
        "$H2_CONNS" "$H2_STREAMS" "$DURATION" "$policy" "$pinning" "$path" >>"$SUMMARY"
    printf 'goal\th2: sb/nginx >= 1.0\n' >>"$SUMMARY"
fi
exit 0
