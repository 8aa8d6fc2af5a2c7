#!/usr/bin/env bash
# `make run`: a development node on SQLite with a generated CA and certificate in ./var.
set -euo pipefail
bin=${1:-build/switchboard}
cd "$(dirname "$0")/.."
exec "$bin" --dev --listen "${SB_DEV_LISTEN:-127.0.0.1:8443}" --data-dir "${SB_DEV_DATA_DIR:-./var}"
