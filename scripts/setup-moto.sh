#!/usr/bin/env bash
# Creates (idempotently) the Python venv that runs the moto test server used by the
# integration tests (tests/common/moto.rs). Packages are pinned in scripts/moto-requirements.txt.
#
#   scripts/setup-moto.sh            # venv at <repo>/.venv-moto
#   QLIK_ROTATOR_MOTO_VENV=/x/venv scripts/setup-moto.sh
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$script_dir/.." && pwd)"
venv="${QLIK_ROTATOR_MOTO_VENV:-$repo_root/.venv-moto}"
requirements="$script_dir/moto-requirements.txt"
moto_version="5.2.5"
python="${PYTHON:-python3}"

if ! command -v "$python" >/dev/null 2>&1; then
    echo "setup-moto: $python not found; install Python 3 (Debian: apt-get install python3 python3-venv)" >&2
    exit 1
fi

installed_version() {
    [ -x "$venv/bin/python" ] || return 1
    "$venv/bin/python" - <<'PY' 2>/dev/null
from importlib.metadata import version
print(version("moto"))
PY
}

if [ "$(installed_version || true)" = "$moto_version" ] \
    && "$venv/bin/python" -c 'import flask, flask_cors, moto.server, py_partiql_parser, docker' >/dev/null 2>&1; then
    echo "setup-moto: moto $moto_version already installed in $venv"
    exit 0
fi

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
    rm -rf "$venv"
    if ! "$python" -m venv "$venv"; then
        rm -rf "$venv"
        echo "setup-moto: '$python -m venv' failed. On Debian/Ubuntu install the venv module first:" >&2
        echo "    apt-get install -y python3-venv" >&2
        exit 1
    fi
fi

echo "setup-moto: installing pinned moto $moto_version into $venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"

if [ "$(installed_version || true)" != "$moto_version" ]; then
    echo "setup-moto: moto $moto_version is not importable from $venv after install" >&2
    exit 1
fi
echo "setup-moto: ready ($venv)"
