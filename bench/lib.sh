# bench/lib.sh — shell helpers shared by bench/*.bench.sh; sourced, not run.
#
# Before sourcing, a bench sets BENCH_NAME (the prefix of its messages, e.g. "http.bench") and
# `root` (the repository). Sourcing reads and checks the common knobs (see bench/README.md):
# DURATION WARMUP CONNS RUNS SERVER_CPU CLIENT_CPU RESULTS_DIR SUMMARY, and sets `policy`.
# Then, in order: need_tools, bench_pinning, bench_tmpdir (temp dir + cleanup traps), and the
# helpers below. Servers are started pinned with "${pin_server[@]}", wrk with "${pin_client[@]}".
# shellcheck shell=bash
# shellcheck disable=SC2317,SC2034,SC2154 # trap handlers; variables shared with the sourcing bench

DURATION=${BENCH_DURATION:-10}
WARMUP=${BENCH_WARMUP:-2}
CONNS=${BENCH_CONNECTIONS:-64}
RUNS=${BENCH_RUNS:-2}
SERVER_CPU=${BENCH_SERVER_CPU:-0}
CLIENT_CPU=${BENCH_CLIENT_CPU:-1}
RESULTS_DIR=${BENCH_RESULTS_DIR:-$root/bench/results}
SUMMARY=${BENCH_SUMMARY:-}

say() { printf '%s\n' "$*"; }
die() { printf '%s: %s\n' "$BENCH_NAME" "$*" >&2; exit 2; }

for v in DURATION WARMUP CONNS RUNS SERVER_CPU CLIENT_CPU; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "BENCH_${v} must be a non-negative integer (got '${!v}')"
done
{ [ "$RUNS" -ge 1 ] && [ "$DURATION" -ge 1 ] && [ "$CONNS" -ge 1 ]; } || die "runs, duration and connections must be >= 1"

# pick one run of several "rps ..." lines: best (max rps) for < 3 runs, else median by rps
select_run() {
    sort -g -k1,1 | awk -v runs="$RUNS" '{ l[NR] = $0 } END { if (runs < 3) print l[NR]; else print l[int((NR + 1) / 2)] }'
}
policy=$([ "$RUNS" -lt 3 ] && echo "best of $RUNS" || echo "median of $RUNS")
[ "$RUNS" -eq 1 ] && policy="single run"

# ---- tools ------------------------------------------------------------------------------
PATH=$PATH:/usr/sbin:/sbin
need_tools() { # TOOL...
    local t
    for t in "$@"; do
        command -v "$t" >/dev/null || die "'$t' not found (make bench installs the bench tools via scripts/install-deps.sh build bench)"
    done
}

# ---- pinning ----------------------------------------------------------------------------------
bench_pinning() { # sets ncpu, pin_server, pin_client, pinning
    ncpu=$(nproc 2>/dev/null || echo 1)
    pin_server=(taskset -c "$SERVER_CPU")
    pin_client=(taskset -c "$CLIENT_CPU")
    pinning="server on CPU $SERVER_CPU, wrk on CPU $CLIENT_CPU"
    if [ "$ncpu" -lt 2 ] || [ "$SERVER_CPU" -ge "$ncpu" ] || [ "$CLIENT_CPU" -ge "$ncpu" ] || [ "$SERVER_CPU" = "$CLIENT_CPU" ]; then
        say "$BENCH_NAME: warning: $ncpu CPU(s) here; cannot pin server and client to separate cores, not pinning."
        pin_server=()
        pin_client=()
        pinning="not pinned ($ncpu CPUs)"
    fi
}

# ---- temp dir, processes, cleanup (also on Ctrl-C) ------------------------------------------
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
    printf '\n%s: interrupted, stopping servers and removing %s\n' "$BENCH_NAME" "$tmp" >&2
    cleanup
    kill -"$1" $$
}

bench_tmpdir() { # SUFFIX: creates $tmp and installs the cleanup traps
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/sb-bench-$1.XXXXXX")
    trap cleanup EXIT
    trap 'on_signal INT' INT
    trap 'on_signal TERM' TERM
}

# ---- helpers ----------------------------------------------------------------------------------
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
used_ports=" "
# Ports are picked below the kernel's ephemeral range: a port there can be the local end of
# another process's connection (or its TIME_WAIT), which port_free cannot see and bind then
# refuses (measured: EADDRINUSE for the webhooks receivers with ~3000 TIME_WAIT sockets around).
eph_lo=$(awk '{ print $1 }' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
[[ $eph_lo =~ ^[0-9]+$ ]] && [ "$eph_lo" -gt 12000 ] || eph_lo=32768
pick_port() {
    local p n=0
    while :; do
        p=$((10000 + (RANDOM * 32768 + RANDOM) % (eph_lo - 10000)))
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
            say "$BENCH_NAME: $name exited during startup"
            return 1
        fi
        if curl -fsS -o /dev/null --max-time 2 "$@" "$url" 2>/dev/null; then
            return 0
        fi
        i=$((i + 1))
        [ "$i" -lt 300 ] || { say "$BENCH_NAME: $name did not answer $url within 30 s"; return 1; }
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

# one warm-up + one measured run of wrk against URL; leaves in $run_result:
#   "rps p50_ms p99_ms requests non2xx sockerr server_proc_cpu% server_core_busy% client_core_busy% steal%"
measure() { # SERVER URL OUT PID [extra wrk args...]
    local srv=$1 url=$2 out=$3 pid=$4 t0 t1 s0 s1 parsed
    shift 4
    if [ "$WARMUP" -gt 0 ]; then
        run_bg "$out.warmup" "${pin_client[@]}" wrk -t1 -c"$CONNS" -d"${WARMUP}s" "$@" "$url" ||
            { say "$BENCH_NAME: wrk warm-up failed against $srv ($url):"; cat "$out.warmup"; return 1; }
    fi
    t0=$(cpu_ticks "$pid")
    s0=$(core_snapshot)
    run_bg "$out" "${pin_client[@]}" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$@" "$url" ||
        { say "$BENCH_NAME: wrk failed against $srv ($url):"; cat "$out"; return 1; }
    t1=$(cpu_ticks "$pid")
    s1=$(core_snapshot)
    parsed=$(parse_wrk "$out")
    if [ "$parsed" = FAIL ]; then
        say "$BENCH_NAME: could not read wrk's output against $srv ($url):"
        cat "$out"
        return 1
    fi
    run_result="$parsed $(awk -v a="$t0" -v b="$t1" -v hz="$clk_tck" -v d="$DURATION" \
        'BEGIN { printf "%.0f", (b - a) / hz / d * 100 }') $(core_usage "$s0" "$s1")"
}

print_run() { # N NAME RUN_RESULT: one line per measured run
    local rps p50 p99 non2xx serr scpu sbusy cbusy steal
    read -r rps p50 p99 _ non2xx serr scpu sbusy cbusy steal <<<"$3"
    printf '  run %d %-11s %10.2f req/s  p50 %8s  p99 %8s  server %3s%% CPU; cores busy: server %3s%%, wrk %3s%%; steal %s%%%s\n' \
        "$1" "$2" "$rps" "$(fmt_ms "$p50")" "$(fmt_ms "$p99")" \
        "$scpu" "$sbusy" "$cbusy" "$steal" "$([ "$non2xx" != 0 ] || [ "$serr" != 0 ] && echo "  ERRORS: $non2xx non-2xx, $serr socket")"
}

run_json() { # $run_result lines on stdin → one JSON object each
    awk '{ printf "{\"requests_per_sec\":%s,\"p50_ms\":%s,\"p99_ms\":%s,\"requests\":%s,\"non_2xx\":%s,\"socket_errors\":%s,\"server_process_cpu_pct\":%s,\"server_core_busy_pct\":%s,\"client_core_busy_pct\":%s,\"steal_pct\":%s}\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 }'
}

# negotiated "PROTOCOL CIPHER" of an https URL, as openssl s_client reports it
tls_negotiated() { # URL CACERT
    local hostport=${1#https://}
    hostport=${hostport%%/*}
    (openssl s_client -connect "$hostport" -CAfile "$2" </dev/null 2>/dev/null || true) |
        awk '/^New, / && !done { sub(/^New, /, ""); sub(/, Cipher is /, " "); print; done = 1 }'
}

# ---- versions ------------------------------------------------------------------------------
bench_versions() { # sets nginx_ver wrk_ver ossl_ver git_rev
    nginx_ver=$(nginx -v 2>&1 | sed 's/^nginx version: //')
    wrk_ver=$( (wrk -v 2>&1 || true) | awk "NR == 1 { print \$2 }")
    ossl_ver=$(openssl version 2>/dev/null)
    git_rev=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
    git -C "$root" diff --quiet HEAD 2>/dev/null || git_rev+="+dirty"
}

# ---- Switchboard ---------------------------------------------------------------------------
sb_pid=""

# sb_start CACERT "READY_URL..." ARG...: starts "$bin" ARG... pinned, waits for its dev CA and
# for every READY_URL to answer 200. Environment assignments before the call reach the server.
sb_start() {
    local cacert=$1 urls=$2 u i=0
    shift 2
    : >"$tmp/sb.out"
    "${pin_server[@]}" "$bin" "$@" >"$tmp/sb.out" 2>"$tmp/sb.err" &
    sb_pid=$!
    pids+=("$sb_pid")
    # the dev CA appears once the certificate is generated
    while [ ! -s "$cacert" ] && kill -0 "$sb_pid" 2>/dev/null && [ "$i" -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
    for u in $urls; do
        if ! wait_ready switchboard "$sb_pid" "$u" --cacert "$cacert"; then
            say "--- switchboard stdout:"; cat "$tmp/sb.out"
            say "--- switchboard stderr (last 20 lines):"; tail -n 20 "$tmp/sb.err"
            return 1
        fi
    done
    grep -q 'URL: *https://' "$tmp/sb.out" || say "$BENCH_NAME: note: switchboard did not print 'URL: https://...' on stdout"
}

stop_sb() {
    [ -n "$sb_pid" ] || return 0
    stop_pid "$sb_pid" 15
    forget_pid "$sb_pid"
    sb_pid=""
    [ "$stop_rc" = 0 ] || say "$BENCH_NAME: warning: switchboard exited with status $stop_rc on SIGTERM (expected 0)"
}

# ---- nginx ---------------------------------------------------------------------------------
ng_pid=""
ng_worker=""

# nginx_write_conf DIR CERT KEY ACCESS_LOG COMMENT SERVER_BLOCK: DIR/nginx.conf, one worker,
# Switchboard's access-log policy and TLS policy; SERVER_BLOCK is the text of the server { }.
nginx_write_conf() {
    local d=$1 cert=$2 key=$3 log=$4 comment=$5 server_block=$6
    mkdir -p "$d/tmp"
    cat >"$d/nginx.conf" <<EOF
# Generated by bench/$comment
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
    access_log $log sbjson buffer=64k flush=1s;

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

$server_block
}
EOF
}

# nginx_start DIR CACERT READY_URL...: nginx -c DIR/nginx.conf pinned; sets ng_pid, ng_worker
nginx_start() {
    local d=$1 cacert=$2 u
    shift 2
    "${pin_server[@]}" nginx -p "$d" -e "$d/error.log" -c "$d/nginx.conf" >"$d/stdout" 2>&1 &
    ng_pid=$!
    pids+=("$ng_pid")
    for u in "$@"; do
        if ! wait_ready nginx "$ng_pid" "$u" --cacert "$cacert"; then
            say "--- nginx output:"; cat "$d/stdout" "$d/error.log" 2>/dev/null | tail -n 20
            return 1
        fi
    done
    ng_worker=$(children_of "$ng_pid")
    ng_worker=${ng_worker%% *}
    [ -n "$ng_worker" ] || { say "$BENCH_NAME: cannot find nginx's worker process"; return 1; }
}

stop_nginx() {
    [ -n "$ng_pid" ] || return 0
    stop_pid "$ng_pid" 15
    forget_pid "$ng_pid"
    ng_pid=""
    ng_worker=""
}
