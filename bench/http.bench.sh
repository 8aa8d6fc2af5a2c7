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

DURATION=${BENCH_DURATION:-10}
WARMUP=${BENCH_WARMUP:-2}
CONNS=${BENCH_CONNECTIONS:-64}
RUNS=${BENCH_RUNS:-2}
MODES=${BENCH_MODES:-tls plain}
SERVER_CPU=${BENCH_SERVER_CPU:-0}
CLIENT_CPU=${BENCH_CLIENT_CPU:-1}
NGINX_ONLY=${BENCH_NGINX_ONLY:-0}
RESULTS_DIR=${BENCH_RESULTS_DIR:-$root/bench/results}
SUMMARY=${BENCH_SUMMARY:-}

say() { printf '%s\n' "$*"; }
die() { printf 'http.bench: %s\n' "$*" >&2; exit 2; }

for v in DURATION WARMUP CONNS RUNS SERVER_CPU CLIENT_CPU; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "BENCH_${v} must be a non-negative integer (got '${!v}')"
done
{ [ "$RUNS" -ge 1 ] && [ "$DURATION" -ge 1 ] && [ "$CONNS" -ge 1 ]; } || die "runs, duration and connections must be >= 1"
for m in $MODES; do
    case "$m" in tls | plain) ;; *) die "unknown mode '$m' in BENCH_MODES (tls, plain)" ;; esac
done

# ---- tools ------------------------------------------------------------------------------
PATH=$PATH:/usr/sbin:/sbin
for t in wrk nginx taskset curl openssl awk; do
    command -v "$t" >/dev/null || die "'$t' not found (make bench installs wrk and nginx-light via scripts/install-deps.sh)"
done

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

ncpu=$(nproc 2>/dev/null || echo 1)
pin_server=(taskset -c "$SERVER_CPU")
pin_client=(taskset -c "$CLIENT_CPU")
pinning="server on CPU $SERVER_CPU, wrk on CPU $CLIENT_CPU"
if [ "$ncpu" -lt 2 ] || [ "$SERVER_CPU" -ge "$ncpu" ] || [ "$CLIENT_CPU" -ge "$ncpu" ] || [ "$SERVER_CPU" = "$CLIENT_CPU" ]; then
    say "http.bench: warning: $ncpu CPU(s) here; cannot pin server and client to separate cores, not pinning."
    pin_server=()
    pin_client=()
    pinning="not pinned ($ncpu CPUs)"
fi

# ---- temp dir, processes, cleanup (also on Ctrl-C) ------------------------------------------
tmp=$(mktemp -d "${TMPDIR:-/tmp}/sb-bench-http.XXXXXX")
pids=()

stop_rc=""
stop_pid() { # PID [seconds]: SIGTERM, wait, SIGKILL if still there; sets stop_rc to the exit
    # status, or "killed". Not to be called in $(...): only this shell can wait for its children.
    local pid=$1 limit=${2:-10} i=0
    stop_rc=0
    if kill -TERM "$pid" 2>/dev/null; then
        while [ "$i" -lt $((limit * 10)) ]; do
            # exited and not yet reaped shows as a zombie (state Z), which still answers kill -0
            case "$(awk '{ sub(/^.*\) /, ""); print $1 }' "/proc/$pid/stat" 2>/dev/null)" in
            "" | Z) break ;;
            esac
            sleep 0.1
            i=$((i + 1))
        done
        if [ "$i" -ge $((limit * 10)) ]; then
            kill -KILL "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
            stop_rc=killed
            return 0
        fi
    fi
    wait "$pid" 2>/dev/null || stop_rc=$?
}

forget_pid() {
    local p keep=()
    for p in "${pids[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    pids=("${keep[@]+"${keep[@]}"}")
}

cleanup() {
    local p
    for p in "${pids[@]+"${pids[@]}"}"; do stop_pid "$p" 5; done
    pids=()
    rm -rf "$tmp"
}
on_signal() {
    trap - EXIT INT TERM
    printf '\nhttp.bench: interrupted, stopping servers and removing %s\n' "$tmp" >&2
    cleanup
    kill -"$1" $$
}
trap cleanup EXIT
trap 'on_signal INT' INT
trap 'on_signal TERM' TERM

# ---- helpers ----------------------------------------------------------------------------------
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
used_ports=" "
pick_port() {
    local p n=0
    while :; do
        p=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
        if [[ $used_ports != *" $p "* ]] && port_free "$p"; then
            used_ports+="$p "
            echo "$p"
            return
        fi
        n=$((n + 1))
        [ "$n" -lt 200 ] || die "no free loopback port found"
    done
}

# utime+stime in clock ticks of a process (all its threads)
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
clk_tck=$(getconf CLK_TCK 2>/dev/null || echo 100)

status_kb() { # PID FIELD → kB value from /proc/PID/status (0 if gone)
    awk -v f="$2:" '$1 == f { print $2; found = 1 } END { if (!found) print 0 }' "/proc/$1/status" 2>/dev/null || echo 0
}

children_of() { # direct children of PID, space-separated
    local f line a out=""
    if [ -r "/proc/$1/task/$1/children" ]; then
        cat "/proc/$1/task/$1/children"
        return 0
    fi
    for f in /proc/[0-9]*/stat; do
        line=$(cat "$f" 2>/dev/null) || continue
        read -r -a a <<<"${line##*) }"
        [ "${a[1]:-}" != "$1" ] || out+="${f//[!0-9]/} "
    done
    echo "$out"
}

wait_ready() { # NAME PID URL [curl args...]: until URL answers 200, or the process dies, or 30 s
    local name=$1 pid=$2 url=$3 i=0
    shift 3
    while :; do
        if ! kill -0 "$pid" 2>/dev/null; then
            say "http.bench: $name exited during startup"
            return 1
        fi
        if curl -fsS -o /dev/null --max-time 2 "$@" "$url" 2>/dev/null; then
            return 0
        fi
        i=$((i + 1))
        [ "$i" -lt 300 ] || { say "http.bench: $name did not answer $url within 30 s"; return 1; }
        sleep 0.1
    done
}

# parse wrk output → "rps p50_ms p99_ms requests non2xx sockerr"
parse_wrk() {
    awk '
    function ms(v,   n, u) {
        n = v; sub(/[a-z]+$/, "", n); u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") return n / 1000
        if (u == "ms") return n
        if (u == "s") return n * 1000
        if (u == "m") return n * 60000
        if (u == "h") return n * 3600000
        return -1
    }
    /^Requests\/sec:/ { rps = $2 }
    /^ +50% / { p50 = ms($2) }
    /^ +99% / { p99 = ms($2) }
    / requests in / { reqs = $1 }
    /Non-2xx or 3xx responses:/ { non2xx = $NF }
    /Socket errors:/ { gsub(/,/, ""); err = $4 + $6 + $8 + $10 }
    END {
        if (rps == "" || p50 == "" || p99 == "") { print "FAIL"; exit }
        printf "%s %.3f %.3f %d %d %d\n", rps, p50, p99, reqs, non2xx + 0, err + 0
    }' "$1"
}

fmt_ms() { awk -v v="$1" 'BEGIN { if (v < 1) printf "%.0fus", v * 1000; else printf "%.2fms", v }'; }

json_str() { # minimal JSON string escaping for the few free-text fields we write
    local s=$1
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//$'\n'/ }
    s=${s//$'\t'/ }
    printf '"%s"' "$s"
}

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

write_nginx_conf() {
    local d=$tmp/nginx
    cat >"$d/nginx.conf" <<EOF
# Generated by bench/http.bench.sh; a peer for Switchboard's GET /healthz.
daemon off;
master_process on;
worker_processes 1;
pid $d/nginx.pid;
error_log $d/error.log warn;
worker_rlimit_nofile 4096;

events {
    worker_connections 2048;
    accept_mutex off;
}

http {
    default_type application/json;
    server_tokens off;
    # Switchboard never closes a keep-alive connection by request count; nginx's default is
    # every 1000 requests, which would put a TLS handshake into the measurement.
    keepalive_requests 100000;
    keepalive_timeout 75s;

    # Same policy as Switchboard: one JSON line per request, buffered.
    log_format sbjson escape=json '{"time":"\$time_iso8601","level":"info","msg":"request",'
        '"method":"\$request_method","path":"\$uri","status":\$status,"bytes":\$bytes_sent,'
        '"duration_ms":\$request_time,"request_id":"\$request_id","remote":"\$remote_addr",'
        '"proto":"\$server_protocol"}';
    access_log $ng_log sbjson buffer=64k flush=1s;

    client_body_temp_path $d/tmp/body;
    proxy_temp_path $d/tmp/proxy;
    fastcgi_temp_path $d/tmp/fastcgi;
    uwsgi_temp_path $d/tmp/uwsgi;
    scgi_temp_path $d/tmp/scgi;

    # TLS: Mozilla intermediate, as Switchboard (src/net/tls.c).
    ssl_certificate $cert;
    ssl_certificate_key $key;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305;
    ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256;
    ssl_ecdh_curve X25519:prime256v1:secp384r1;
    ssl_prefer_server_ciphers off;
    ssl_session_tickets on;
    ssl_session_cache off;

    server {
        listen 127.0.0.1:$ng_tls_port ssl;
        listen 127.0.0.1:$ng_plain_port;
        location = /healthz {
            # Switchboard sends X-Request-Id on every response; so does the peer.
            add_header X-Request-Id \$request_id always;
            return 200 '{"status":"ok"}';
        }
    }
}
EOF
}

sb_pid=""
ng_pid=""
ng_worker=""

start_sb() {
    : >"$tmp/sb.out"
    "${pin_server[@]}" "$bin" --dev --listen "127.0.0.1:$sb_tls_port" --plain-listen "127.0.0.1:$sb_plain_port" \
        --data-dir "$sb_data" --workers 1 --log.file "$sb_log" >"$tmp/sb.out" 2>"$tmp/sb.err" &
    sb_pid=$!
    pids+=("$sb_pid")
    local i=0
    # the dev CA appears once the certificate is generated
    while [ ! -s "$cacert" ] && kill -0 "$sb_pid" 2>/dev/null && [ "$i" -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
    if ! wait_ready switchboard "$sb_pid" "https://127.0.0.1:$sb_tls_port/healthz" --cacert "$cacert" ||
        ! wait_ready switchboard "$sb_pid" "http://127.0.0.1:$sb_plain_port/healthz"; then
        say "--- switchboard stdout:"; cat "$tmp/sb.out"
        say "--- switchboard stderr (last 20 lines):"; tail -n 20 "$tmp/sb.err"
        return 1
    fi
    grep -q 'URL: *https://' "$tmp/sb.out" || say "http.bench: note: switchboard did not print 'URL: https://...' on stdout"
}

start_nginx() {
    write_nginx_conf
    "${pin_server[@]}" nginx -p "$tmp/nginx" -e "$tmp/nginx/error.log" -c "$tmp/nginx/nginx.conf" \
        >"$tmp/nginx/stdout" 2>&1 &
    ng_pid=$!
    pids+=("$ng_pid")
    if ! wait_ready nginx "$ng_pid" "https://127.0.0.1:$ng_tls_port/healthz" --cacert "$cacert" ||
        ! wait_ready nginx "$ng_pid" "http://127.0.0.1:$ng_plain_port/healthz"; then
        say "--- nginx output:"; cat "$tmp/nginx/stdout" "$tmp/nginx/error.log" 2>/dev/null | tail -n 20
        return 1
    fi
    ng_worker=$(children_of "$ng_pid")
    ng_worker=${ng_worker%% *}
    [ -n "$ng_worker" ] || { say "http.bench: cannot find nginx's worker process"; return 1; }
}

stop_sb() {
    [ -n "$sb_pid" ] || return 0
    stop_pid "$sb_pid" 15
    forget_pid "$sb_pid"
    sb_pid=""
    [ "$stop_rc" = 0 ] || say "http.bench: warning: switchboard exited with status $stop_rc on SIGTERM (expected 0)"
}
stop_nginx() {
    [ -n "$ng_pid" ] || return 0
    stop_pid "$ng_pid" 15
    forget_pid "$ng_pid"
    ng_pid=""
    ng_worker=""
}

url_of() { # SERVER MODE
    local port
    case "$1/$2" in
    sb/tls) port=$sb_tls_port ;; sb/plain) port=$sb_plain_port ;;
    nginx/tls) port=$ng_tls_port ;; nginx/plain) port=$ng_plain_port ;;
    esac
    if [ "$2" = tls ]; then echo "https://127.0.0.1:$port/healthz"; else echo "http://127.0.0.1:$port/healthz"; fi
}

# /proc/stat lines of the server's and the client's cores (or all CPUs when not pinned)
core_snapshot() {
    if [ ${#pin_server[@]} -gt 0 ]; then
        awk -v a="cpu$SERVER_CPU" -v b="cpu$CLIENT_CPU" '$1 == a { s = $0 } $1 == b { c = $0 } END { print s; print c }' /proc/stat
    else
        awk '$1 == "cpu" { print; print }' /proc/stat
    fi
}
# from two snapshots: "server_core_busy% client_core_busy% steal%" (busy includes softirq:
# loopback TCP work is charged there, not to either process)
core_usage() {
    printf '%s\n%s\n' "$1" "$2" | awk '
    { line[NR] = $0 }
    END {
        for (k = 1; k <= 2; k++) {
            split(line[k], a, " "); split(line[k + 2], b, " ")
            tot = 0
            for (i = 2; i <= 9; i++) tot += b[i] - a[i]
            idle = (b[5] - a[5]) + (b[6] - a[6])
            st = b[9] - a[9]
            busy[k] = tot > 0 ? (tot - idle - st) / tot * 100 : 0
            steal[k] = tot > 0 ? st / tot * 100 : 0
        }
        printf "%.0f %.0f %.0f", busy[1], busy[2], (steal[1] > steal[2] ? steal[1] : steal[2])
    }'
}

# Runs a command in the background and waits for it: a trapped signal interrupts `wait` at
# once, whereas a foreground wrk would catch Ctrl-C itself, exit 0, and bash would then skip
# the INT trap. Output goes to OUT (not through a redirection of run_bg itself, which would
# also swallow what the trap prints).
run_bg() { # OUT COMMAND...
    local p rc=0 out=$1
    shift
    "$@" >"$out" 2>&1 &
    p=$!
    pids+=("$p")
    wait "$p" || rc=$?
    forget_pid "$p"
    return "$rc"
}

# one warm-up + one measured run; leaves in $run_result:
#   "rps p50_ms p99_ms requests non2xx sockerr server_proc_cpu% server_core_busy% client_core_busy% steal%"
run_once() { # SERVER MODE RUN# PID
    local srv=$1 mode=$2 n=$3 pid=$4 url out t0 t1 s0 s1 parsed
    url=$(url_of "$srv" "$mode")
    out=$tmp/wrk-$mode-$srv-$n.txt
    if [ "$WARMUP" -gt 0 ]; then
        run_bg "$out.warmup" "${pin_client[@]}" wrk -t1 -c"$CONNS" -d"${WARMUP}s" "$url" ||
            { say "http.bench: wrk warm-up failed against $srv ($url):"; cat "$out.warmup"; return 1; }
    fi
    t0=$(cpu_ticks "$pid")
    s0=$(core_snapshot)
    run_bg "$out" "${pin_client[@]}" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$url" ||
        { say "http.bench: wrk failed against $srv ($url):"; cat "$out"; return 1; }
    t1=$(cpu_ticks "$pid")
    s1=$(core_snapshot)
    parsed=$(parse_wrk "$out")
    if [ "$parsed" = FAIL ]; then
        say "http.bench: could not read wrk's output against $srv ($url):"
        cat "$out"
        return 1
    fi
    run_result="$parsed $(awk -v a="$t0" -v b="$t1" -v hz="$clk_tck" -v d="$DURATION" \
        'BEGIN { printf "%.0f", (b - a) / hz / d * 100 }') $(core_usage "$s0" "$s1")"
}

# pick one run of several "rps ..." lines: best (max rps) for < 3 runs, else median by rps
select_run() {
    sort -g -k1,1 | awk -v runs="$RUNS" '{ l[NR] = $0 } END { if (runs < 3) print l[NR]; else print l[int((NR + 1) / 2)] }'
}
policy=$([ "$RUNS" -lt 3 ] && echo "best of $RUNS" || echo "median of $RUNS")
[ "$RUNS" -eq 1 ] && policy="single run"

# ---- versions ------------------------------------------------------------------------------
nginx_ver=$(nginx -v 2>&1 | sed 's/^nginx version: //')
wrk_ver=$( (wrk -v 2>&1 || true) | awk "NR == 1 { print \$2 }")
ossl_ver=$(openssl version 2>/dev/null)
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
        sizes=$(curl -s -o /dev/null --cacert "$cacert" -w '%{http_code} %{size_header} %{size_download} %{content_type}' "$url")
        R[$mode.$s.resp]=$sizes
        neg=""
        if [ "$mode" = tls ]; then
            hostport=${url#https://}
            hostport=${hostport%%/*}
            neg=$( (openssl s_client -connect "$hostport" -CAfile "$cacert" </dev/null 2>/dev/null || true) |
                awk '/^New, / && !done { sub(/^New, /, ""); sub(/, Cipher is /, " "); print; done = 1 }')
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
            read -r rps p50 p99 _ non2xx serr scpu sbusy cbusy steal <<<"$run_result"
            printf '  run %d %-11s %10.2f req/s  p50 %8s  p99 %8s  server %3s%% CPU; cores busy: server %3s%%, wrk %3s%%; steal %s%%%s\n' \
                "$n" "$([ "$s" = sb ] && echo switchboard || echo nginx)" "$rps" "$(fmt_ms "$p50")" "$(fmt_ms "$p99")" \
                "$scpu" "$sbusy" "$cbusy" "$steal" "$([ "$non2xx" != 0 ] || [ "$serr" != 0 ] && echo "  ERRORS: $non2xx non-2xx, $serr socket")"
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
        summary_rows+=("$(printf 'http\t%s\t%.2f\t%.2f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s' "$label" "$sb_rps" "$ng_rps" "$ratio" \
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
        summary_rows+=("$(printf 'http\t%s\t-\t%.2f\t-\t-\t-\t%s\t%s\t-\t%s\t%s' "$label" "$ng_rps" \
            "$(fmt_ms "$ng_p50")" "$(fmt_ms "$ng_p99")" "${R[$mode.nginx.rss]} kB" "not evaluated")")
    fi
    say ""
done

# ---- machine-readable result ---------------------------------------------------------------
mkdir -p "$RESULTS_DIR"
json=$RESULTS_DIR/http-$ts.json
run_json() { # a $run_result line
    awk '{ printf "{\"requests_per_sec\":%s,\"p50_ms\":%s,\"p99_ms\":%s,\"requests\":%s,\"non_2xx\":%s,\"socket_errors\":%s,\"server_process_cpu_pct\":%s,\"server_core_busy_pct\":%s,\"client_core_busy_pct\":%s,\"steal_pct\":%s}\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 }'
}
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
fi
exit 0
