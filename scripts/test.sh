#!/usr/bin/env bash
# The project's test command (README "Quick start"; CI runs exactly this).
# Installs the pinned moto test server on first use, then runs every test: unit tests,
# snapshot tests, and integration tests against the Qlik simulator and a real moto server.
# Ends with one summary line: "<N> passed, <M> failed".
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup-moto.sh
bash scripts/setup-node.sh
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --locked "$@" 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
