#!/usr/bin/env bash
# bench/rest.bench.sh BIN — an authenticated REST read, GET /v1/rooms/{name} with
# `Authorization: Bearer <api key>` over HTTPS keep-alive: Switchboard side by side with a
# fastify server doing the same work (bench/peers/fastify) and with nginx answering a static 200
# with the same JSON body, in one run. See bench/README.md for what it measures and how to read
# it.
#
# The three servers run one worker/process each pinned to the same core; wrk runs pinned to
# another core and sends the same request (with the Authorization header) to all three. Runs
# alternate, rotating the order every round (sb fastify nginx, fastify nginx sb, ...), with a
# short warm-up before each; the best of two runs (or the median of three or more) per server is
# compared. Before measuring, every server's answer is checked (200, the room JSON, identical
# bodies; 401 without or with a wrong key for the two that authenticate); the bench fails if it
# is not right. Exit status: 0 when the benchmark ran (whether or not the goals were met),
# non-zero when it could not run.
#
# Knobs (environment): BENCH_DURATION, BENCH_WARMUP, BENCH_CONNECTIONS, BENCH_RUNS,
# BENCH_SERVER_CPU, BENCH_CLIENT_CPU, BENCH_RESULTS_DIR, BENCH_SUMMARY, as for http.bench.sh.
# shellcheck disable=SC2317 # trap handlers are reached through trap
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

BENCH_NAME=rest.bench
# shellcheck source=bench/lib.sh
. "$here/lib.sh" # common knobs, helpers, cleanup

GOAL_FASTIFY=2.5 # sb/fastify requests/s
GOAL_NGINX=1.0   # sb/nginx requests/s, and sb p99 <= nginx p99
ROOM=bench-room
# Room metadata: an opaque string to Switchboard; JSON-in-a-string as a client would store it.
# No '$' (nginx would read it as a variable in `return`).
METADATA='{"title":"Weekly planning","owner":"user_7Hq2Lx","region":"eu-west-1","tags":["planning","team-a"]}'

# ---- tools ------------------------------------------------------------------------------
need_tools wrk nginx taskset curl openssl awk node npm cmp
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 20 ] || die "node >= 20 is needed for the fastify peer (fastify 5); found $(node --version)"

# ---- the server under test ------------------------------------------------------------------
bin=${1:-}
if [ -z "$bin" ] || [ ! -x "$bin" ] || [ -d "$bin" ]; then
    die "Switchboard binary '${bin:-<none>}' not found or not executable (build it first: cmake --build build; usage: $0 BIN)"
fi
case "$bin" in /*) ;; *) bin=$PWD/$bin ;; esac

# ---- the fastify peer's packages, from its committed lockfile ---------------------------------
# scripts/install-deps.sh bench does the same; done here too so the script also runs on its own.
peer_dir=$here/peers/fastify
stamp=$peer_dir/node_modules/.sb-lock-stamp
if [ ! -f "$stamp" ] || ! cmp -s "$peer_dir/package-lock.json" "$stamp"; then
    say "rest.bench: npm ci in bench/peers/fastify"
    (cd "$peer_dir" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci in $peer_dir failed"
    cp "$peer_dir/package-lock.json" "$stamp"
fi

bench_pinning
bench_tmpdir rest

# ---- setup ----------------------------------------------------------------------------------
# the admin key: 43 random characters (as long as a base64url-encoded 32-byte secret)
api_key=$(openssl rand -base64 64 | tr -dc 'A-Za-z0-9' | head -c 43)
[ ${#api_key} -eq 43 ] || die "could not make a random API key"
auth=(-H "Authorization: Bearer $api_key")

sb_data=$tmp/sb-data
cert=$sb_data/tls/server.pem
key=$sb_data/tls/server.key
cacert=$sb_data/tls/ca.pem
mkdir -p "$sb_data" "$tmp/nginx" "$tmp/check"

sb_port=$(pick_port)
f_port=$(pick_port)
ng_port=$(pick_port)
sb_log=$tmp/sb-access.log
f_log=$tmp/fastify-access.log
ng_log=$tmp/nginx/access.log
path=/v1/rooms/$ROOM

url_of() { # SERVER
    case "$1" in
    sb) echo "https://127.0.0.1:$sb_port$path" ;;
    fastify) echo "https://127.0.0.1:$f_port$path" ;;
    nginx) echo "https://127.0.0.1:$ng_port$path" ;;
    esac
}
name_of() { case "$1" in sb) echo switchboard ;; *) echo "$1" ;; esac; }

f_pid=""
start_fastify() { # serves the room as Switchboard answered it ($tmp/room.json)
    "${pin_server[@]}" env PEER_HOST=127.0.0.1 PEER_PORT="$f_port" PEER_CERT="$cert" PEER_KEY="$key" \
        PEER_LOG="$f_log" PEER_API_KEY="$api_key" PEER_ROOM_FILE="$tmp/room.json" \
        node "$peer_dir/server.mjs" >"$tmp/fastify.out" 2>&1 &
    f_pid=$!
    pids+=("$f_pid")
    if ! wait_ready fastify "$f_pid" "$(url_of fastify)" --cacert "$cacert" "${auth[@]}"; then
        say "--- fastify output:"; tail -n 20 "$tmp/fastify.out"
        return 1
    fi
}
stop_fastify() {
    [ -n "$f_pid" ] || return 0
    stop_pid "$f_pid" 15
    forget_pid "$f_pid"
    f_pid=""
    [ "$stop_rc" = 0 ] || say "rest.bench: warning: the fastify peer exited with status $stop_rc on SIGTERM (expected 0)"
}

start_nginx() { # a static 200 with the room JSON Switchboard answered ($tmp/room.json)
    local body
    body=$(cat "$tmp/room.json")
    case "$body" in *'$'*) die "the room JSON contains '\$', which nginx's return would expand" ;; esac
    # nginx quoted strings: \\ → \ and \' → '; everything else as is
    body=${body//\\/\\\\}
    body=${body//\'/\\\'}
    nginx_write_conf "$tmp/nginx" "$cert" "$key" "$ng_log" "rest.bench.sh; a static peer for Switchboard's GET $path." "$(
        cat <<EOF
    server {
        listen 127.0.0.1:$ng_port ssl;
        location = $path {
            # Switchboard sends X-Request-Id on every response; so does the peer.
            add_header X-Request-Id \$request_id always;
            return 200 '$body';
        }
    }
EOF
    )"
    nginx_start "$tmp/nginx" "$cacert" "$(url_of nginx)"
}

# fetch SERVER NAME [curl args...]: GET the room; headers and body to $tmp/check/SERVER-NAME.*;
# prints the status code
fetch() {
    local s=$1 n=$2
    shift 2
    curl -sS --http1.1 --max-time 5 --cacert "$cacert" -D "$tmp/check/$s-$n.hdr" -o "$tmp/check/$s-$n.body" \
        -w '%{http_code}' "$@" "$(url_of "$s")" || echo 000
}

# check_room FILE: is FILE the room object of API.md for $ROOM with $METADATA, and nothing else?
check_room() {
    EXPECT_NAME=$ROOM EXPECT_META=$METADATA node -e '
        const fs = require("fs");
        const want = ["name", "metadata", "max_participants", "empty_timeout_seconds", "auto_record",
                      "status", "created_at", "num_participants", "active_session_id"];
        let r;
        try { r = JSON.parse(fs.readFileSync(process.argv[1], "utf8")); } catch (e) { console.log("not JSON: " + e.message); process.exit(1); }
        const keys = Object.keys(r);
        if (keys.join(",") !== want.join(",")) { console.log("fields " + keys.join(",") + ", expected " + want.join(",")); process.exit(1); }
        if (r.name !== process.env.EXPECT_NAME) { console.log("name " + r.name); process.exit(1); }
        if (r.metadata !== process.env.EXPECT_META) { console.log("metadata differs"); process.exit(1); }
        if (r.status !== "open") { console.log("status " + r.status); process.exit(1); }
        if (!/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/.test(r.created_at)) { console.log("created_at " + r.created_at); process.exit(1); }
    ' "$1"
}

# verify SERVER AUTHENTICATES: 200 + the room JSON (byte-identical to Switchboard's) + JSON
# content type + X-Request-Id; for servers that authenticate, 401 without a credential and with
# a wrong one. Fails the bench otherwise.
verify() {
    local s=$1 authn=$2 code why hdr=$tmp/check/$1-ok.hdr body=$tmp/check/$1-ok.body
    code=$(fetch "$s" ok "${auth[@]}")
    [ "$code" = 200 ] || { say "rest.bench: $(name_of "$s") answered $code, not 200:"; head -c 600 "$body" 2>/dev/null; say ""; return 1; }
    grep -qi '^content-type: *application/json' "$hdr" || { say "rest.bench: $(name_of "$s"): content type is not application/json:"; cat "$hdr"; return 1; }
    grep -qi '^x-request-id: *[^[:space:]]' "$hdr" || { say "rest.bench: $(name_of "$s"): no X-Request-Id:"; cat "$hdr"; return 1; }
    why=$(check_room "$body") || { say "rest.bench: $(name_of "$s"): not the room JSON ($why):"; head -c 600 "$body"; say ""; return 1; }
    if [ "$s" != sb ] && ! cmp -s "$body" "$tmp/room.json"; then
        say "rest.bench: $(name_of "$s")'s body differs from switchboard's:"
        say "  switchboard: $(cat "$tmp/room.json")"
        say "  $(name_of "$s"): $(cat "$body")"
        return 1
    fi
    if [ "$authn" = 1 ]; then
        code=$(fetch "$s" noauth)
        [ "$code" = 401 ] || { say "rest.bench: $(name_of "$s") answered $code without a credential (expected 401)"; return 1; }
        code=$(fetch "$s" badauth -H "Authorization: Bearer ${api_key%?}x")
        [ "$code" = 401 ] || { say "rest.bench: $(name_of "$s") answered $code to a wrong key (expected 401)"; return 1; }
    fi
}

# ---- versions ------------------------------------------------------------------------------
bench_versions
sb_ver=$("$bin" --version 2>/dev/null | head -n 1 || echo unknown)
fastify_ver=$(node -p 'require(process.argv[1]).version' "$peer_dir/node_modules/fastify/package.json" 2>/dev/null || echo unknown)
pino_ver=$(node -p 'require(process.argv[1]).version' "$peer_dir/node_modules/pino/package.json" 2>/dev/null || echo unknown)
node_ver=$(node --version)

say "HTTPS keep-alive GET $path with a bearer API key — Switchboard vs fastify vs nginx, side by side"
say "  switchboard: $sb_ver (${bin}, commit $git_rev)"
say "  fastify:     $fastify_ver (pino $pino_ver, node $node_ver)    nginx: $nginx_ver    wrk: $wrk_ver    $ossl_ver"
say "  load:        wrk -t1 -c$CONNS -d${DURATION}s --latency -H 'Authorization: Bearer <43 chars>', ${WARMUP}s warm-up before each run;"
say "               $RUNS run(s) per server, alternating, order rotated each round; $policy compared"
say "  pinning:     $pinning; one worker/process each (switchboard --workers 1, one node process, nginx worker_processes 1)"
say "  work:        switchboard: bearer check (SHA-256 → per-loop credential cache, scope), room read from SQLite, JSON"
say "               fastify:     bearer check (SHA-256 → in-memory Map, scope), room from an in-memory Map, JSON (response schema)"
say "               nginx:       none: a static 200 with the same JSON body (return 200 '...'), Authorization ignored"
say "  logging:     all three write one JSON access-log line per request to a file, buffered (switchboard --log.file;"
say "               fastify: pino, 64 KiB buffer, flushed every second; nginx access_log buffer=64k flush=1s)"
say "  TLS:         Mozilla intermediate, same cert/key, tickets on, for all three; nginx keepalive_requests 100000"
say ""

ts=$(date -u +%Y%m%dT%H%M%SZ)
declare -A R # R[server.key] = value, for the report and the JSON
servers=(sb fastify nginx)

say "== TLS: GET $path over HTTP/1.1 keep-alive, HTTPS, Authorization: Bearer =="
# Switchboard first: it makes the certificate, and the room the peers serve is its answer.
SWITCHBOARD_ADMIN_KEY=$api_key sb_start "$cacert" "https://127.0.0.1:$sb_port/healthz" \
    --dev --workers 1 --data-dir "$sb_data" --listen "127.0.0.1:$sb_port" --log.file "$sb_log" --ratelimit.requests-per-second 1000000 --ratelimit.burst 1000000 || exit 1
payload=$(ROOM=$ROOM METADATA=$METADATA node -e 'process.stdout.write(JSON.stringify({name: process.env.ROOM, metadata: process.env.METADATA}))')
code=$(curl -sS --max-time 5 --cacert "$cacert" "${auth[@]}" -H 'Content-Type: application/json' -d "$payload" \
    -o "$tmp/check/create.body" -w '%{http_code}' "https://127.0.0.1:$sb_port/v1/rooms" || echo 000)
if [ "$code" != 201 ]; then
    say "rest.bench: creating the room answered $code (expected 201):"
    cat "$tmp/check/create.body" 2>/dev/null
    say ""
    exit 1
fi
verify sb 1 || exit 1
cp "$tmp/check/sb-ok.body" "$tmp/room.json"
start_fastify || exit 1
start_nginx || exit 1
verify fastify 1 || exit 1
verify nginx 0 || exit 1

# what each server actually sends, and what gets negotiated
for s in "${servers[@]}"; do
    url=$(url_of "$s")
    R[$s.resp]=$(curl -s --http1.1 -o /dev/null --cacert "$cacert" "${auth[@]}" -w '%{http_code} %{size_header} %{size_download} %{content_type}' "$url")
    R[$s.neg]=$(tls_negotiated "$url" "$cacert")
    read -r code hb bb ct <<<"${R[$s.resp]}"
    printf '  %-11s %s, %s B headers + %s B body, %s, %s\n' "$(name_of "$s")" "$code" "$hb" "$bb" "$ct" "${R[$s.neg]}"
done
say "  checked: all three answer 200 with the same room JSON ($(wc -c <"$tmp/room.json") B) and an X-Request-Id;"
say "           switchboard and fastify answer 401 without a credential and with a wrong one"
if [ "${R[sb.neg]}" != "${R[fastify.neg]}" ] || [ "${R[sb.neg]}" != "${R[nginx.neg]}" ]; then
    say "  warning: the servers negotiated different TLS parameters with openssl s_client"
fi

pid_of() { case "$1" in sb) echo "$sb_pid" ;; fastify) echo "$f_pid" ;; nginx) echo "$ng_worker" ;; esac; }
for n in $(seq 1 "$RUNS"); do
    k=$(((n - 1) % 3))
    for s in "${servers[@]:k}" "${servers[@]:0:k}"; do
        measure "$s" "$(url_of "$s")" "$tmp/wrk-$s-$n.txt" "$(pid_of "$s")" "${auth[@]}" || exit 1
        R[$s.runs]+="$run_result"$'\n'
        print_run "$n" "$(name_of "$s")" "$run_result"
    done
done

# memory after the runs, before stopping
for s in "${servers[@]}"; do
    R[$s.rss]=$(status_kb "$(pid_of "$s")" VmRSS)
    R[$s.hwm]=$(status_kb "$(pid_of "$s")" VmHWM)
done
R[nginx.master_rss]=$(status_kb "$ng_pid" VmRSS)

stop_sb
stop_fastify
stop_nginx
R[sb.loglines]=$(grep -c '"msg":"request"' "$sb_log" 2>/dev/null || true)
R[fastify.loglines]=$(wc -l <"$f_log" 2>/dev/null || echo 0)
R[nginx.loglines]=$(wc -l <"$ng_log" 2>/dev/null || echo 0)

for s in "${servers[@]}"; do
    R[$s.sel]=$(printf '%s' "${R[$s.runs]}" | select_run)
    read -r rps p50 p99 _ non2xx serr _ sbusy cbusy _ <<<"${R[$s.sel]}"
    R[$s.rps]=$rps R[$s.p50]=$p50 R[$s.p99]=$p99 R[$s.err]=$non2xx/$serr R[$s.busy]=$sbusy/$cbusy
    R[$s.clean]=$([ "$non2xx" = 0 ] && [ "$serr" = 0 ] && echo 1 || echo 0)
done
ratio() { awk -v a="${R[sb.rps]}" -v b="${R[$1.rps]}" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }'; }
R[fastify.ratio]=$(ratio fastify)
R[nginx.ratio]=$(ratio nginx)

# goals
why=()
awk -v r="${R[fastify.ratio]}" -v g="$GOAL_FASTIFY" 'BEGIN { exit !(r >= g) }' || why+=("ratio ${R[fastify.ratio]} < $GOAL_FASTIFY")
[ "${R[sb.clean]}" = 1 ] || why+=("switchboard had errors")
R[fastify.goal]=$([ ${#why[@]} -eq 0 ] && echo "goal met" || echo "goal missed")
R[fastify.why]=$(IFS=';'; echo "${why[*]-}")
why=()
awk -v r="${R[nginx.ratio]}" -v g="$GOAL_NGINX" 'BEGIN { exit !(r >= g) }' || why+=("ratio ${R[nginx.ratio]} < $GOAL_NGINX")
awk -v a="${R[sb.p99]}" -v b="${R[nginx.p99]}" 'BEGIN { exit !(a <= b) }' ||
    why+=("sb p99 $(fmt_ms "${R[sb.p99]}") > nginx p99 $(fmt_ms "${R[nginx.p99]}")")
[ "${R[sb.clean]}" = 1 ] || why+=("switchboard had errors")
R[nginx.goal]=$([ ${#why[@]} -eq 0 ] && echo "goal met" || echo "goal missed")
R[nginx.why]=$(IFS=';'; echo "${why[*]-}")

say "  --- $policy ---"
row() { printf '  %-22s %14s %14s %14s\n' "$@"; }
row "" switchboard fastify nginx
row "requests/s" "${R[sb.rps]}" "${R[fastify.rps]}" "${R[nginx.rps]}"
row "ratio sb/peer" "" "${R[fastify.ratio]}" "${R[nginx.ratio]}"
row "latency p50" "$(fmt_ms "${R[sb.p50]}")" "$(fmt_ms "${R[fastify.p50]}")" "$(fmt_ms "${R[nginx.p50]}")"
row "latency p99" "$(fmt_ms "${R[sb.p99]}")" "$(fmt_ms "${R[fastify.p99]}")" "$(fmt_ms "${R[nginx.p99]}")"
row "RSS after (kB)" "${R[sb.rss]}" "${R[fastify.rss]}" "${R[nginx.rss]}"
row "peak RSS VmHWM (kB)" "${R[sb.hwm]}" "${R[fastify.hwm]}" "${R[nginx.hwm]}"
row "errors (non-2xx/sock)" "${R[sb.err]}" "${R[fastify.err]}" "${R[nginx.err]}"
row "cores busy srv/wrk %" "${R[sb.busy]}" "${R[fastify.busy]}" "${R[nginx.busy]}"
row "access-log lines" "${R[sb.loglines]}" "${R[fastify.loglines]}" "${R[nginx.loglines]}"
say "  (nginx RSS is its worker's; the master adds ${R[nginx.master_rss]} kB. Access-log lines count every"
say "   request served, warm-ups and checks included.)"
say "  goal sb/fastify >= $GOAL_FASTIFY: ${R[fastify.goal]}${R[fastify.why]:+ (${R[fastify.why]//;/, })}"
say "  goal sb/nginx >= $GOAL_NGINX and sb p99 <= nginx p99: ${R[nginx.goal]}${R[nginx.why]:+ (${R[nginx.why]//;/, })}"
say ""

# ---- machine-readable result ---------------------------------------------------------------
mkdir -p "$RESULTS_DIR"
json=$RESULTS_DIR/rest-$ts.json
{
    printf '{\n  "bench": "rest",\n  "timestamp": "%s",\n' "$ts"
    printf '  "switchboard": {"version": %s, "binary": %s, "commit": %s},\n' "$(json_str "$sb_ver")" "$(json_str "$bin")" "$(json_str "$git_rev")"
    printf '  "fastify": %s, "pino": %s, "node": %s, "nginx": %s, "wrk": %s, "openssl": %s,\n' "$(json_str "$fastify_ver")" \
        "$(json_str "$pino_ver")" "$(json_str "$node_ver")" "$(json_str "$nginx_ver")" "$(json_str "$wrk_ver")" "$(json_str "$ossl_ver")"
    printf '  "machine": {"cpus": %s, "kernel": %s},\n' "$ncpu" "$(json_str "$(uname -sr)")"
    printf '  "params": {"request": %s, "connections": %s, "duration_s": %s, "warmup_s": %s, "runs": %s, "selection": %s,\n' \
        "$(json_str "GET $path, Authorization: Bearer <43-char admin key>, HTTPS keep-alive")" "$CONNS" "$DURATION" "$WARMUP" "$RUNS" "$(json_str "$policy")"
    printf '    "order": "alternating, rotated each round", "pinning": %s,\n' "$(json_str "$pinning")"
    printf '    "access_log": "all three: one JSON line per request to a file, buffered (switchboard --log.file; fastify pino 64 KiB, 1 s flush; nginx buffer=64k flush=1s)",\n'
    printf '    "nginx": "static return 200 with the same body, Authorization ignored, keepalive_requests 100000"},\n'
    printf '  "goals": {"fastify": "sb/fastify >= %s (and no sb errors)", "nginx": "sb/nginx >= %s and sb p99 <= nginx p99 (and no sb errors)"},\n' \
        "$GOAL_FASTIFY" "$GOAL_NGINX"
    printf '  "servers": {'
    first=1
    for s in "${servers[@]}"; do
        [ "$first" = 1 ] || printf ','
        first=0
        read -r code hb bb ct <<<"${R[$s.resp]}"
        printf '\n    "%s": {\n' "$(name_of "$s")"
        printf '      "response": {"status": %s, "header_bytes": %s, "body_bytes": %s, "content_type": %s},\n' "$code" "$hb" "$bb" "$(json_str "$ct")"
        printf '      "tls": %s,\n' "$(json_str "${R[$s.neg]}")"
        printf '      "runs": ['
        printf '%s' "${R[$s.runs]}" | awk 'NF' | run_json | paste -sd, - | tr -d '\n'
        printf '],\n      "selected": %s,\n' "$(printf '%s\n' "${R[$s.sel]}" | run_json)"
        printf '      "rss_kb": %s, "hwm_kb": %s,' "${R[$s.rss]}" "${R[$s.hwm]}"
        [ "$s" != nginx ] || printf ' "master_rss_kb": %s,' "${R[nginx.master_rss]}"
        printf ' "access_log_lines": %s\n    }' "${R[$s.loglines]}"
    done
    printf '\n  },\n  "comparisons": {'
    first=1
    for s in fastify nginx; do
        [ "$first" = 1 ] || printf ','
        first=0
        printf '\n    "sb/%s": {"ratio": %s, "goal": %s}' "$s" "${R[$s.ratio]}" \
            "$(json_str "${R[$s.goal]}${R[$s.why]:+: ${R[$s.why]//;/, }}")"
    done
    printf '\n  }\n}\n'
} >"$json"
say "results: ${json#"$PWD"/}"

if [ -n "$SUMMARY" ]; then
    for s in fastify nginx; do
        printf 'row\trest\tTLS vs %s\t%.2f\t%.2f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$s" "${R[sb.rps]}" "${R[$s.rps]}" "${R[$s.ratio]}" \
            "$(fmt_ms "${R[sb.p50]}")" "$(fmt_ms "${R[sb.p99]}")" "$(fmt_ms "${R[$s.p50]}")" "$(fmt_ms "${R[$s.p99]}")" \
            "${R[sb.rss]} kB" "${R[$s.rss]} kB" "${R[$s.goal]}" >>"$SUMMARY"
    done
    printf 'note\trest: GET %s with a bearer key over TLS, wrk -t1 -c%s, %ss runs (%s), %s; fastify %s on node %s (one process); all three log one JSON line per request, buffered; nginx answers a static 200 with the same body\n' \
        "$path" "$CONNS" "$DURATION" "$policy" "$pinning" "$fastify_ver" "$node_ver" >>"$SUMMARY"
    printf 'goal\trest: sb/fastify >= %s; sb/nginx >= %s and sb p99 <= nginx p99\n' "$GOAL_FASTIFY" "$GOAL_NGINX" >>"$SUMMARY"
fi
exit 0
