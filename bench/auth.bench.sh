#!/usr/bin/env bash
# bench/auth.bench.sh BIN — the cost of OAuth access tokens against API keys: the same
# authenticated read, GET /v1/rooms/{name} over HTTPS keep-alive, once with
# `Authorization: Bearer <API key>` and once with `Authorization: Bearer <ES256 access token>`
# (RFC 9068 JWT from POST /oauth/token), against one Switchboard process, runs alternating.
#
# An access token's ES256 signature is checked once per loop; after that the per-loop
# verified-token cache answers (keyed by the token's SHA-256, as API keys are), so the two
# should be within a few percent. Goal: token req/s >= 0.95 × key req/s. Before measuring,
# both credentials are checked (200 with the room; the token has typ at+jwt and is ES256; a
# tampered token gets 401). Exit status: 0 when the benchmark ran (goal met or not).
#
# Knobs (environment): BENCH_DURATION, BENCH_WARMUP, BENCH_CONNECTIONS, BENCH_RUNS,
# BENCH_SERVER_CPU, BENCH_CLIENT_CPU, BENCH_RESULTS_DIR, BENCH_SUMMARY, as for http.bench.sh.
# shellcheck disable=SC2317 # trap handlers are reached through trap
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

BENCH_NAME=auth.bench
# shellcheck source=bench/lib.sh
. "$here/lib.sh"

GOAL=0.95 # token req/s ÷ key req/s
ROOM=bench-room

need_tools wrk taskset curl openssl awk node

bin=${1:-}
if [ -z "$bin" ] || [ ! -x "$bin" ] || [ -d "$bin" ]; then
    die "Switchboard binary '${bin:-<none>}' not found or not executable (usage: $0 BIN)"
fi
case "$bin" in /*) ;; *) bin=$PWD/$bin ;; esac

bench_pinning
bench_tmpdir auth

api_key=$(openssl rand -base64 64 | tr -dc 'A-Za-z0-9' | head -c 43)
[ ${#api_key} -eq 43 ] || die "could not make a random API key"
sb_data=$tmp/sb-data
cacert=$sb_data/tls/ca.pem
mkdir -p "$sb_data" "$tmp/check"
sb_port=$(pick_port)
base=https://127.0.0.1:$sb_port
url=$base/v1/rooms/$ROOM
sb_log=$tmp/sb-access.log

bench_versions
sb_ver=$("$bin" --version 2>/dev/null | head -n 1 || echo unknown)

SWITCHBOARD_ADMIN_KEY=$api_key sb_start "$cacert" "$base/healthz" \
    --dev --workers 1 --data-dir "$sb_data" --listen "127.0.0.1:$sb_port" --log.file "$sb_log" \
    --ratelimit.requests-per-second 1000000 --ratelimit.burst 1000000 --oauth.access-token-ttl 1h || exit 1

post() { # PATH JSON → body on stdout; fails unless 201
    local code
    code=$(curl -sS --max-time 5 --cacert "$cacert" -H "Authorization: Bearer $api_key" \
        -H 'Content-Type: application/json' -d "$2" -o "$tmp/check/post.body" -w '%{http_code}' "$base$1" || echo 000)
    [ "$code" = 201 ] || { say "auth.bench: POST $1 answered $code:"; cat "$tmp/check/post.body"; say ""; return 1; }
    cat "$tmp/check/post.body"
}
post /v1/rooms "{\"name\":\"$ROOM\"}" >/dev/null || exit 1
client=$(post /v1/oauth-clients '{"name":"bench","scopes":["rooms:read"],"token_endpoint_auth_method":"client_secret_basic"}') || exit 1
cid=$(node -p 'JSON.parse(process.argv[1]).client_id' "$client")
csec=$(node -p 'JSON.parse(process.argv[1]).client_secret' "$client")
tokresp=$(curl -sS --max-time 5 --cacert "$cacert" -u "$cid:$csec" -d grant_type=client_credentials "$base/oauth/token")
token=$(node -p 'JSON.parse(process.argv[1]).access_token' "$tokresp")
hdr=$(node -p 'JSON.stringify(JSON.parse(Buffer.from(process.argv[1].split(".")[0], "base64url")))' "$token")
case "$hdr" in *'"alg":"ES256"'*'"typ":"at+jwt"'*) ;; *) die "unexpected access token header: $hdr" ;; esac

check() { # NAME CREDENTIAL EXPECTED
    local code
    code=$(curl -sS --max-time 5 --cacert "$cacert" -H "Authorization: Bearer $2" -o "$tmp/check/$1.body" -w '%{http_code}' "$url" || echo 000)
    [ "$code" = "$3" ] || { say "auth.bench: $1 answered $code (expected $3):"; cat "$tmp/check/$1.body"; say ""; return 1; }
}
check key "$api_key" 200 || exit 1
check token "$token" 200 || exit 1
cmp -s "$tmp/check/key.body" "$tmp/check/token.body" || die "the two credentials got different bodies"
check tampered "${token%?}$([ "${token: -1}" = A ] && echo B || echo A)" 401 || exit 1

say "HTTPS keep-alive GET /v1/rooms/$ROOM — API key vs ES256 access token, one Switchboard, side by side"
say "  switchboard: $sb_ver (${bin}, commit $git_rev)    wrk: $wrk_ver    $ossl_ver"
say "  token:       $(printf '%s' "$token" | wc -c) bytes, $hdr; key: 43 chars (+ 'Bearer ')"
say "  load:        wrk -t1 -c$CONNS -d${DURATION}s --latency, ${WARMUP}s warm-up before each run; $RUNS run(s) each, alternating; $policy"
say "  pinning:     $pinning; --workers 1"
say ""

declare -A R
kinds=(key token)
cred_of() { case "$1" in key) echo "$api_key" ;; token) echo "$token" ;; esac; }
for n in $(seq 1 "$RUNS"); do
    k=$(((n - 1) % 2))
    for s in "${kinds[@]:k}" "${kinds[@]:0:k}"; do
        measure "$s" "$url" "$tmp/wrk-$s-$n.txt" "$sb_pid" -H "Authorization: Bearer $(cred_of "$s")" || exit 1
        R[$s.runs]+="$run_result"$'\n'
        print_run "$n" "$s" "$run_result"
    done
done
R[rss]=$(status_kb "$sb_pid" VmRSS)
stop_sb

for s in "${kinds[@]}"; do
    R[$s.sel]=$(printf '%s' "${R[$s.runs]}" | select_run)
    read -r rps p50 p99 _ non2xx serr _ <<<"${R[$s.sel]}"
    R[$s.rps]=$rps R[$s.p50]=$p50 R[$s.p99]=$p99
    R[$s.clean]=$([ "$non2xx" = 0 ] && [ "$serr" = 0 ] && echo 1 || echo 0)
done
ratio=$(awk -v a="${R[token.rps]}" -v b="${R[key.rps]}" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }')
goal="goal met"
awk -v r="$ratio" -v g="$GOAL" 'BEGIN { exit !(r >= g) }' || goal="goal missed (ratio $ratio < $GOAL)"
{ [ "${R[key.clean]}" = 1 ] && [ "${R[token.clean]}" = 1 ]; } || goal="goal missed (errors)"

say "  --- $policy ---"
printf '  %-14s %14s %14s\n' "" "API key" "access token"
printf '  %-14s %14s %14s\n' "requests/s" "${R[key.rps]}" "${R[token.rps]}"
printf '  %-14s %14s %14s\n' "latency p50" "$(fmt_ms "${R[key.p50]}")" "$(fmt_ms "${R[token.p50]}")"
printf '  %-14s %14s %14s\n' "latency p99" "$(fmt_ms "${R[key.p99]}")" "$(fmt_ms "${R[token.p99]}")"
say "  token/key: $ratio — goal >= $GOAL: $goal"
say ""

mkdir -p "$RESULTS_DIR"
ts=$(date -u +%Y%m%dT%H%M%SZ)
{
    printf '{"bench":"auth","timestamp":"%s","switchboard":%s,"commit":%s,"params":{"connections":%s,"duration_s":%s,"runs":%s,"selection":%s,"pinning":%s},' \
        "$ts" "$(json_str "$sb_ver")" "$(json_str "$git_rev")" "$CONNS" "$DURATION" "$RUNS" "$(json_str "$policy")" "$(json_str "$pinning")"
    printf '"key":%s,"token":%s,"ratio":%s,"goal":%s}\n' "$(printf '%s\n' "${R[key.sel]}" | run_json)" \
        "$(printf '%s\n' "${R[token.sel]}" | run_json)" "$ratio" "$(json_str "$goal")"
} >"$RESULTS_DIR/auth-$ts.json"
say "results: ${RESULTS_DIR#"$PWD"/}/auth-$ts.json"

if [ -n "$SUMMARY" ]; then
    printf 'row\tauth\ttoken vs API key\t%.2f\t%.2f\t%s\t%s\t%s\t%s\t%s\t%s kB\t-\t%s\n' "${R[token.rps]}" "${R[key.rps]}" "$ratio" \
        "$(fmt_ms "${R[token.p50]}")" "$(fmt_ms "${R[token.p99]}")" "$(fmt_ms "${R[key.p50]}")" "$(fmt_ms "${R[key.p99]}")" \
        "${R[rss]}" "$goal" >>"$SUMMARY"
    printf 'note\tauth: GET /v1/rooms/%s over TLS with an ES256 access token ("sb") vs an API key ("peer"), one server, wrk -t1 -c%s, %ss runs (%s), %s\n' \
        "$ROOM" "$CONNS" "$DURATION" "$policy" "$pinning" >>"$SUMMARY"
    printf 'goal\tauth: token req/s >= %s x key req/s\n' "$GOAL" >>"$SUMMARY"
fi
exit 0
