#!/usr/bin/env bash
# bench/http.bench.sh BIN — GET /healthz over HTTP/1.1 keep-alive, TLS and plain, Switchboard
# side by side with nginx in one run. See bench/README.md for what it measures and how to
# read it.
#
# Both servers run with one worker pinned to the same core; wrk runs pinned to another core.
# Runs alternate (sb, nginx, sb, nginx, ...) with a short warm-up before each; the best of two
# runs (or the median of three or more) per server per mode is compared. Exit status: 0 when
# the benchmark ran (whether or not the goal was met), non-zero when it could not run.
#
# Knobs (environment):
#   BENCH_DURATION=10     seconds per measured run
#   BENCH_WARMUP=2        seconds of warm-up (discarded) before each measured run
#   BENCH_CONNECTIONS=64  wrk connections (keep it modest: 64-256)
#   BENCH_RUNS=2          runs per server per mode: 2 → best of two, >= 3 → median
#   BENCH_MODES="tls plain"
#   BENCH_SERVER_CPU=0 BENCH_CLIENT_CPU=1
#   BENCH_NGINX_ONLY=1    development aid: measure nginx alone when BIN is not built yet
#   BENCH_RESULTS_DIR=bench/results   where the JSON result goes
#   BENCH_SUMMARY=FILE    set by bench/run.sh: summary rows are appended there
# shellcheck disable=SC2317 # trap handlers are reached through trap
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

MODES=${BENCH_MODES:-tls plain}
NGINX_ONLY=${BENCH_NGINX_ONLY:-0}
BENCH_NAME=http.bench
# shellcheck source=bench/lib.sh
. "$here/lib.sh" # common knobs, helpers, cleanup

for m in $MODES; do
    case "$m" in tls | plain) ;; *) die "unknown mode '$m' in BENCH_MODES (tls, plain)" ;; esac
done

# ---- tools ------------------------------------------------------------------------------
need_tools wrk nginx taskset curl openssl awk

# ---- the server under test ------------------------------------------------------------------
bin=${1:-}
have_sb=1
if [ -z "$bin" ] || [ ! -x "$bin" ] || [ -d "$bin" ]; then
    if [ "$NGINX_ONLY" = 1 ]; then
        say "http.bench: Switchboard binary '${bin:-<none>}' not found or not executable;"
        say "            BENCH_NGINX_ONLY=1: measuring nginx alone, no comparison, no goal."
        have_sb=0
    else
        die "Switchboard binary '${bin:-<none>}' not found or not executable (build it first: cmake --build build; usage: $0 BIN)"
    fi
else
    case "$bin" in /*) ;; *) bin=$PWD/$bin ;; esac
fi

bench_pinning
bench_tmpdir http

# ---- TLS material --------------------------------------------------------------------------------
sb_data=$tmp/sb-data
mkdir -p "$sb_data" "$tmp/nginx/tmp"
if [ "$have_sb" = 1 ]; then
    cert=$sb_data/tls/server.pem
    key=$sb_data/tls/server.key
    cacert=$sb_data/tls/ca.pem
else
    # nginx alone: a throwaway self-signed certificate stands in for the dev one.
    cert=$tmp/nginx/server.pem
    key=$tmp/nginx/server.key
    cacert=$cert
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
        -addext subjectAltName=IP:127.0.0.1 -days 1 -keyout "$key" -out "$cert" >/dev/null 2>&1 ||
        die "openssl could not make a test certificate"
fi

sb_tls_port=$(pick_port)
sb_plain_port=$(pick_port)
ng_tls_port=$(pick_port)
ng_plain_port=$(pick_port)

sb_log=$tmp/sb-access.log
ng_log=$tmp/nginx/access.log

start_sb() {
    sb_start "$cacert" "https://127.0.0.1:$sb_tls_port/healthz http://127.0.0.1:$sb_plain_port/healthz" \
        --dev --listen "127.0.0.1:$sb_tls_port" --plain-listen "127.0.0.1:$sb_plain_port" \
        --data-dir "$sb_data" --workers 1 --log.file "$sb_log"
}

start_nginx() {
    nginx_write_conf "$tmp/nginx" "$cert" "$key" "$ng_log" "http.bench.sh; a peer for Switchboard's GET /healthz." "$(
        cat <<EOF
    server {
        listen 127.0.0.1:$ng_tls_port ssl;
        listen 127.0.0.1:$ng_plain_port;
        location = /healthz {
            # Switchboard sends X-Request-Id on every response; so does the peer.
            add_header X-Request-Id \$request_id always;
            return 200 '{"status":"ok"}';
        }
    }
EOF
    )"
    nginx_start "$tmp/nginx" "$cacert" "https://127.0.0.1:$ng_tls_port/healthz" "http://127.0.0.1:$ng_plain_port/healthz"
}

url_of() { # SERVER MODE
    local port
    case "$1/$2" in
    sb/tls) port=$sb_tls_port ;; sb/plain) port=$sb_plain_port ;;
    nginx/tls) port=$ng_tls_port ;; nginx/plain) port=$ng_plain_port ;;
    esac
    if [ "$2" = tls ]; then echo "https://127.0.0.1:$port/healthz"; else echo "http://127.0.0.1:$port/healthz"; fi
}

# one warm-up + one measured run; leaves in $run_result (see measure in lib.sh)
run_once() { # SERVER MODE RUN# PID
    measure "$1" "$(url_of "$1" "$2")" "$tmp/wrk-$2-$1-$3.txt" "$4"
}

# ---- versions ------------------------------------------------------------------------------
bench_versions
sb_ver="none"
[ "$have_sb" = 1 ] && sb_ver=$("$bin" --version 2>/dev/null | head -n 1 || echo unknown)
git_rev=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$root" diff --quiet HEAD 2>/dev/null || git_rev+="+dirty"

say "HTTP/1.1 keep-alive GET /healthz — Switchboard vs nginx, side by side"
say "  switchboard: $sb_ver (${bin:-none}, commit $git_rev)"
say "  nginx:       $nginx_ver    wrk: $wrk_ver    $ossl_ver"
say "  load:        wrk -t1 -c$CONNS -d${DURATION}s --latency, ${WARMUP}s warm-up before each run; $RUNS run(s) per server per mode, alternating; $policy compared"
say "  pinning:     $pinning; one worker each (switchboard --workers 1, nginx worker_processes 1)"
say "  logging:     both write one JSON access-log line per request to a file, buffered"
say "               (switchboard --log.file, nginx access_log buffer=64k flush=1s)"
say "  nginx:       keepalive_requests 100000 (default 1000 would close keep-alive connections"
say "               and add handshakes); Mozilla intermediate TLS, same cert/key, tickets on"
say ""

ts=$(date -u +%Y%m%dT%H%M%SZ)
declare -A R # R[mode.key] = value, for the JSON
summary_rows=()

for mode in $MODES; do
    label=$([ "$mode" = tls ] && echo "TLS" || echo "plain")
    say "== $label: GET /healthz over HTTP/1.1 keep-alive$([ "$mode" = tls ] && echo ", HTTPS") =="
    : >"$sb_log"
    : >"$ng_log"
    servers=()
    if [ "$have_sb" = 1 ]; then
        start_sb || exit 1
        servers+=(sb)
    fi
    start_nginx || exit 1
    servers+=(nginx)

    # what each server actually sends and, for TLS, what gets negotiated
    for s in "${servers[@]}"; do
        url=$(url_of "$s" "$mode")
        sizes=$(curl -s --http1.1 -o /dev/null --cacert "$cacert" -w '%{http_code} %{size_header} %{size_download} %{content_type}' "$url")
        R[$mode.$s.resp]=$sizes
        neg=""
        if [ "$mode" = tls ]; then
            neg=$(tls_negotiated "$url" "$cacert")
            R[$mode.$s.neg]=$neg
        fi
        read -r code hb bb ct <<<"$sizes"
        printf '  %-11s %s, %s B headers + %s B body, %s%s\n' "$([ "$s" = sb ] && echo switchboard || echo nginx)" \
            "$code" "$hb" "$bb" "$ct" "${neg:+, $neg}"
    done

    if [ "$mode" = tls ] && [ "$have_sb" = 1 ] && [ "${R[tls.sb.neg]}" != "${R[tls.nginx.neg]}" ]; then
        say "  warning: the two servers negotiated different TLS parameters with openssl s_client"
    fi

    for n in $(seq 1 "$RUNS"); do
        for s in "${servers[@]}"; do
            pid=$([ "$s" = sb ] && echo "$sb_pid" || echo "$ng_worker")
            run_once "$s" "$mode" "$n" "$pid" || exit 1
            R[$mode.$s.runs]+="$run_result"$'\n'
            print_run "$n" "$([ "$s" = sb ] && echo switchboard || echo nginx)" "$run_result"
        done
    done

    # memory after the runs, before stopping
    for s in "${servers[@]}"; do
        pid=$([ "$s" = sb ] && echo "$sb_pid" || echo "$ng_worker")
        R[$mode.$s.rss]=$(status_kb "$pid" VmRSS)
        R[$mode.$s.hwm]=$(status_kb "$pid" VmHWM)
    done
    R[$mode.nginx.master_rss]=$(status_kb "$ng_pid" VmRSS)

    stop_sb
    stop_nginx
    R[$mode.sb.loglines]=$(wc -l <"$sb_log" 2>/dev/null || echo 0)
    R[$mode.nginx.loglines]=$(wc -l <"$ng_log" 2>/dev/null || echo 0)

    for s in "${servers[@]}"; do
        R[$mode.$s.sel]=$(printf '%s' "${R[$mode.$s.runs]}" | select_run)
    done
    read -r ng_rps ng_p50 ng_p99 _ ng_non2xx ng_serr _ ng_sbusy ng_cbusy _ <<<"${R[$mode.nginx.sel]}"

    say "  --- $policy ---"
    printf '  %-22s %14s %14s\n' "" switchboard nginx
    if [ "$have_sb" = 1 ]; then
        read -r sb_rps sb_p50 sb_p99 _ sb_non2xx sb_serr _ sb_sbusy sb_cbusy _ <<<"${R[$mode.sb.sel]}"
        ratio=$(awk -v a="$sb_rps" -v b="$ng_rps" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }')
        printf '  %-22s %14.2f %14.2f\n' "requests/s" "$sb_rps" "$ng_rps"
        printf '  %-22s %14s\n' "ratio sb/nginx" "$ratio"
        printf '  %-22s %14s %14s\n' "latency p50" "$(fmt_ms "$sb_p50")" "$(fmt_ms "$ng_p50")"
        printf '  %-22s %14s %14s\n' "latency p99" "$(fmt_ms "$sb_p99")" "$(fmt_ms "$ng_p99")"
        printf '  %-22s %14s %14s\n' "RSS after (kB)" "${R[$mode.sb.rss]}" "${R[$mode.nginx.rss]}"
        printf '  %-22s %14s %14s\n' "peak RSS VmHWM (kB)" "${R[$mode.sb.hwm]}" "${R[$mode.nginx.hwm]}"
        printf '  %-22s %14s %14s\n' "errors (non-2xx/sock)" "$sb_non2xx/$sb_serr" "$ng_non2xx/$ng_serr"
        printf '  %-22s %14s %14s\n' "cores busy srv/wrk %" "$sb_sbusy/$sb_cbusy" "$ng_sbusy/$ng_cbusy"
        printf '  %-22s %14s %14s\n' "access-log lines" "${R[$mode.sb.loglines]}" "${R[$mode.nginx.loglines]}"
        say "  (nginx RSS is its worker's; the master adds ${R[$mode.nginx.master_rss]} kB)"
        goal="goal missed"
        why=()
        awk -v r="$ratio" 'BEGIN { exit !(r >= 1.0) }' || why+=("ratio $ratio < 1.0")
        awk -v a="$sb_p99" -v b="$ng_p99" 'BEGIN { exit !(a <= b) }' || why+=("sb p99 $(fmt_ms "$sb_p99") > nginx p99 $(fmt_ms "$ng_p99")")
        [ "$sb_non2xx" = 0 ] && [ "$sb_serr" = 0 ] || why+=("switchboard had errors")
        [ ${#why[@]} -ne 0 ] || goal="goal met"
        R[$mode.ratio]=$ratio
        R[$mode.goal]=$goal
        R[$mode.why]=$(IFS=';'; echo "${why[*]-}")
        say "  goal (ratio >= 1.0 and sb p99 <= nginx p99): $goal${why:+ (${R[$mode.why]//;/, })}"
        summary_rows+=("$(printf 'http\t%s vs nginx\t%.2f\t%.2f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s' "$label" "$sb_rps" "$ng_rps" "$ratio" \
            "$(fmt_ms "$sb_p50")" "$(fmt_ms "$sb_p99")" "$(fmt_ms "$ng_p50")" "$(fmt_ms "$ng_p99")" \
            "${R[$mode.sb.rss]} kB" "${R[$mode.nginx.rss]} kB" "$goal")")
    else
        printf '  %-22s %14s %14.2f\n' "requests/s" "-" "$ng_rps"
        printf '  %-22s %14s %14s\n' "latency p50" "-" "$(fmt_ms "$ng_p50")"
        printf '  %-22s %14s %14s\n' "latency p99" "-" "$(fmt_ms "$ng_p99")"
        printf '  %-22s %14s %14s\n' "RSS after (kB)" "-" "${R[$mode.nginx.rss]}"
        printf '  %-22s %14s %14s\n' "peak RSS VmHWM (kB)" "-" "${R[$mode.nginx.hwm]}"
        printf '  %-22s %14s %14s\n' "errors (non-2xx/sock)" "-" "$ng_non2xx/$ng_serr"
        printf '  %-22s %14s %14s\n' "cores busy srv/wrk %" "-" "$ng_sbusy/$ng_cbusy"
        printf '  %-22s %14s %14s\n' "access-log lines" "-" "${R[$mode.nginx.loglines]}"
        R[$mode.ratio]=null
        R[$mode.goal]="not evaluated (no switchboard)"
        say "  goal: not evaluated (Switchboard not measured)"
        summary_rows+=("$(printf 'http\t%s vs nginx\t-\t%.2f\t-\t-\t-\t%s\t%s\t-\t%s\t%s' "$label" "$ng_rps" \
            "$(fmt_ms "$ng_p50")" "$(fmt_ms "$ng_p99")" "${R[$mode.nginx.rss]} kB" "not evaluated")")
    fi
    say ""
done

# ---- machine-readable result ---------------------------------------------------------------
mkdir -p "$RESULTS_DIR"
json=$RESULTS_DIR/http-$ts.json
{
    printf '{\n  "bench": "http",\n  "timestamp": "%s",\n' "$ts"
    printf '  "switchboard": {"version": %s, "binary": %s, "commit": %s},\n' "$(json_str "$sb_ver")" "$(json_str "${bin:-}")" "$(json_str "$git_rev")"
    printf '  "nginx": %s, "wrk": %s, "openssl": %s,\n' "$(json_str "$nginx_ver")" "$(json_str "$wrk_ver")" "$(json_str "$ossl_ver")"
    printf '  "machine": {"cpus": %s, "kernel": %s},\n' "$ncpu" "$(json_str "$(uname -sr)")"
    printf '  "params": {"connections": %s, "duration_s": %s, "warmup_s": %s, "runs": %s, "selection": %s, "pinning": %s,\n' \
        "$CONNS" "$DURATION" "$WARMUP" "$RUNS" "$(json_str "$policy")" "$(json_str "$pinning")"
    printf '    "access_log": "both: one JSON line per request to a file, buffered (switchboard --log.file; nginx buffer=64k flush=1s)",\n'
    printf '    "nginx_keepalive_requests": 100000},\n'
    printf '  "goal": "ratio sb/nginx >= 1.0 and sb p99 <= nginx p99 (and no sb errors)",\n'
    printf '  "modes": {'
    first=1
    for mode in $MODES; do
        [ "$first" = 1 ] || printf ','
        first=0
        printf '\n    "%s": {\n' "$mode"
        for s in sb nginx; do
            [ "$s" = nginx ] || [ "$have_sb" = 1 ] || { printf '      "sb": null,\n'; continue; }
            name=$([ "$s" = sb ] && echo switchboard || echo nginx)
            read -r code hb bb ct <<<"${R[$mode.$s.resp]}"
            printf '      "%s": {\n' "$name"
            printf '        "response": {"status": %s, "header_bytes": %s, "body_bytes": %s, "content_type": %s},\n' "$code" "$hb" "$bb" "$(json_str "$ct")"
            [ "$mode" != tls ] || printf '        "tls": %s,\n' "$(json_str "${R[$mode.$s.neg]}")"
            printf '        "runs": ['
            printf '%s' "${R[$mode.$s.runs]}" | awk 'NF' | run_json | paste -sd, - | tr -d '\n'
            printf '],\n        "selected": %s,\n' "$(printf '%s\n' "${R[$mode.$s.sel]}" | run_json)"
            printf '        "rss_kb": %s, "hwm_kb": %s,' "${R[$mode.$s.rss]}" "${R[$mode.$s.hwm]}"
            [ "$s" != nginx ] || printf ' "master_rss_kb": %s,' "${R[$mode.nginx.master_rss]}"
            printf ' "access_log_lines": %s\n      },\n' "${R[$mode.$s.loglines]}"
        done
        printf '      "ratio": %s,\n      "goal": %s\n    }' "${R[$mode.ratio]}" "$(json_str "${R[$mode.goal]}${R[$mode.why]:+: ${R[$mode.why]//;/, }}")"
    done
    printf '\n  }\n}\n'
} >"$json"
say "results: ${json#"$PWD"/}"

if [ -n "$SUMMARY" ]; then
    for row in "${summary_rows[@]}"; do printf 'row\t%s\n' "$row" >>"$SUMMARY"; done
    printf 'note\thttp: wrk -t1 -c%s, %ss runs (%s), %s; both servers log one JSON line per request to a file, buffered (nginx buffer=64k flush=1s); nginx keepalive_requests 100000\n' \
        "$CONNS" "$DURATION" "$policy" "$pinning" >>"$SUMMARY"
    printf 'goal\thttp: sb/nginx >= 1.0 and sb p99 <= nginx p99\n' >>"$SUMMARY"
fi
exit 0
