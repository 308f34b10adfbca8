#!/usr/bin/env bash
# The rotation benchmark (benches/rotation.rs), built and run in release mode. It prints a
# report with PASS/MISS per target and never fails on a missed target. Arguments are passed on:
#   scripts/bench.sh                              # every section (several minutes)
#   scripts/bench.sh --only budget                # one section: budget | latency | calls | rss
#   scripts/bench.sh --baseline-sample 1000       # the full sequential baseline (~5 min more)
#   scripts/bench.sh --connections 2500 --only budget
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec cargo bench --locked --bench rotation -- "$@"
