#!/usr/bin/env bash
# bench/run.sh BIN — runs every bench/*.bench.sh in order against the Switchboard binary BIN,
# then prints one summary table. `make bench` calls it as `bash bench/run.sh build/switchboard`.
#
# Exit status: non-zero only when a benchmark could not run. A missed goal is reported in the
# table ("goal missed"), not through the exit status.
# shellcheck disable=SC2317 # trap handlers are reached through trap
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin=${1:-}
if [ -z "$bin" ]; then
    echo "usage: $0 BIN   (e.g. bash bench/run.sh build/switchboard)" >&2
    exit 2
fi

summary=$(mktemp "${TMPDIR:-/tmp}/sb-bench-summary.XXXXXX")
trap 'rm -f "$summary"' EXIT
# Benches run in the foreground, so Ctrl-C reaches them too (a background job of a script
# would start with SIGINT ignored); each stops its own servers and removes its temp dir, and
# this trap runs once it has.
on_signal() {
    trap - INT TERM EXIT
    rm -f "$summary"
    kill -"$1" $$
}
trap 'on_signal INT' INT
trap 'on_signal TERM' TERM

shopt -s nullglob
benches=("$here"/*.bench.sh)
# fanout runs after the others (it holds thousands of connections; keep it away from the HTTP runs)
ordered=()
for b in "${benches[@]}"; do [ "$(basename "$b")" = fanout.bench.sh ] || ordered+=("$b"); done
for b in "${benches[@]}"; do [ "$(basename "$b")" != fanout.bench.sh ] || ordered+=("$b"); done
benches=("${ordered[@]+"${ordered[@]}"}")
if [ ${#benches[@]} -eq 0 ]; then
    echo "bench/run.sh: no bench/*.bench.sh found" >&2
    exit 2
fi

failed=()
start=$(date +%s)
for b in "${benches[@]}"; do
    name=$(basename "$b" .bench.sh)
    echo "################ $name ($(basename "$b"))"
    BENCH_SUMMARY=$summary bash "$b" "$bin"
    rc=$?
    # died of SIGINT/SIGTERM (Ctrl-C): stop here, no summary
    if [ "$rc" -eq 130 ] || [ "$rc" -eq 143 ]; then
        echo "bench/run.sh: interrupted" >&2
        exit "$rc"
    fi
    if [ "$rc" -ne 0 ]; then
        echo "bench/run.sh: $name could not run (exit status $rc)" >&2
        failed+=("$name")
        printf 'row\t%s\t(could not run, exit %s)\t-\t-\t-\t-\t-\t-\t-\t-\t-\tnot run\n' "$name" "$rc" >>"$summary"
    fi
    echo
done
elapsed=$(($(date +%s) - start))

echo "================================ summary ================================"
{
    printf 'bench\tcase\tsb req/s\tpeer req/s\tsb/peer\tsb p50\tsb p99\tpeer p50\tpeer p99\tsb RSS\tpeer RSS\tgoal\n'
    awk -F'\t' '$1 == "row" { sub(/^row\t/, ""); print }' "$summary"
} | awk -F'\t' '
    { for (i = 1; i <= NF; i++) { cell[NR, i] = $i; if (length($i) > w[i]) w[i] = length($i) } n = NR; if (NF > nf) nf = NF }
    END {
        for (r = 1; r <= n; r++) {
            line = ""
            for (i = 1; i <= nf; i++) {
                fmt = (i <= 2 || i == nf) ? "%-" w[i] "s" : "%" w[i] "s"
                line = line (i > 1 ? "  " : "") sprintf(fmt, cell[r, i])
            }
            sub(/ +$/, "", line)
            print line
            if (r == 1) { gsub(/./, "-", line); print line }
        }
    }'
awk -F'\t' '$1 == "note" { print "note: " $2 }' "$summary"
awk -F'\t' '$1 == "goal" { print "goal per case, " $2 }' "$summary"
echo "Compare only within this run; the machine is shared and noisy, so absolute numbers from"
echo "different runs are not comparable."
echo "total time: ${elapsed}s"

if [ ${#failed[@]} -gt 0 ]; then
    echo "could not run: ${failed[*]}"
    exit 1
fi
exit 0
