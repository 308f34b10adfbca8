#!/usr/bin/env bash
# The project's test command (README "Run the tests"; CI runs exactly this).
# Installs the pinned moto test server on first use, then runs every test: unit tests,
# snapshot tests, and integration tests against the Qlik simulator and a real moto server.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup-moto.sh
cargo test --locked "$@"
