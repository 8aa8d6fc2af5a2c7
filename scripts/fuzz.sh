#!/usr/bin/env bash
# Runs every libFuzzer target in BUILD_DIR for SECONDS each over its committed corpus
# (tests/fuzz/corpus/<target without fuzz_>). New inputs go to a scratch directory, so the
# committed corpus only changes by hand. A crash fails the run and leaves the input in
# BUILD_DIR/fuzz-artifacts/.
set -euo pipefail
build=${1:?build dir}
secs=${2:-20}
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$build/fuzz-artifacts"
status=0
passed=0
failed=0
for bin in "$build"/fuzz_*; do
    [ -x "$bin" ] || continue
    name=$(basename "$bin")
    corpus="$root/tests/fuzz/corpus/${name#fuzz_}"
    scratch="$build/fuzz-work/${name#fuzz_}"
    mkdir -p "$scratch"
    dict=()
    [ -f "$root/tests/fuzz/${name#fuzz_}.dict" ] && dict=(-dict="$root/tests/fuzz/${name#fuzz_}.dict")
    echo "fuzz: $name for ${secs}s"
    if ! "$bin" "${dict[@]}" -max_total_time="$secs" -print_final_stats=1 \
        -artifact_prefix="$build/fuzz-artifacts/" "$scratch" "$corpus" >"$build/fuzz-$name.log" 2>&1; then
        echo "fuzz: $name FAILED; see $build/fuzz-$name.log"
        tail -40 "$build/fuzz-$name.log"
        status=1
        failed=$((failed + 1))
    else
        passed=$((passed + 1))
        grep -E 'stat::number_of_executed_units|stat::peak_rss_mb' "$build/fuzz-$name.log" | sed 's/^/  /'
    fi
done
echo "fuzz: $passed passed, $failed failed"
exit $status
