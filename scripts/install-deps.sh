#!/usr/bin/env bash
# Installs what Switchboard needs on a Debian machine. Idempotent: asks apt only when a
# package is missing. Groups: build (always), test, bench.
set -euo pipefail
cd "$(dirname "$0")/.."

build_pkgs=(build-essential cmake pkg-config libuv1-dev libssl-dev libyaml-dev libjansson-dev libsqlite3-dev
    libwslay-dev libnghttp2-dev protobuf-c-compiler libprotobuf-c-dev openssl curl ca-certificates
    libcurl4-openssl-dev) # libcurl4-openssl-dev: webhook delivery (curl multi)
test_pkgs=(libcmocka-dev clang libclang-rt-14-dev nodejs sqlite3 nghttp2-client)
bench_pkgs=(wrk nginx-light)

want=("${build_pkgs[@]}")
for g in "$@"; do
    case "$g" in
    build) ;;
    test) want+=("${test_pkgs[@]}") ;;
    bench) want+=("${test_pkgs[@]}" "${bench_pkgs[@]}") ;;
    *) echo "install-deps: unknown group '$g'" >&2; exit 2 ;;
    esac
done

missing=()
for p in "${want[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done

if [ ${#missing[@]} -gt 0 ]; then
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    echo "install-deps: installing ${missing[*]}"
    # nginx's maintainer scripts would start a system nginx on port 80; the benchmark starts
    # its own, so service starts are refused while packages install.
    created_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee /usr/sbin/policy-rc.d >/dev/null
        "${sudo[@]}" chmod +x /usr/sbin/policy-rc.d
        created_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
    [ "$created_policy" -eq 0 ] || "${sudo[@]}" rm -f /usr/sbin/policy-rc.d
fi

# npm packages for the integration tests and benchmark peers, from committed lockfiles.
for g in "$@"; do
    if [ "$g" = test ] || [ "$g" = bench ]; then
        dirs=(tests/integration)
        [ "$g" != bench ] || dirs+=(bench/peers/*/)
        for d in "${dirs[@]}"; do
            d=${d%/}
            if [ -f "$d/package-lock.json" ]; then
                stamp="$d/node_modules/.sb-lock-stamp"
                if [ ! -f "$stamp" ] || ! cmp -s "$d/package-lock.json" "$stamp"; then
                    (cd "$d" && npm ci --no-audit --no-fund --loglevel=error)
                    mkdir -p "$d/node_modules"
                    cp "$d/package-lock.json" "$stamp"
                fi
            fi
        done
    fi
done
