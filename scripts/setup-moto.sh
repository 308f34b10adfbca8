#!/usr/bin/env bash
# Creates (idempotently) the Python venv that runs the moto test server used by the
# integration tests (tests/common/moto.rs). Packages are pinned in scripts/moto-requirements.txt.
#
#   scripts/setup-moto.sh            # venv at <repo>/.venv-moto
#   QLIK_ROTATOR_MOTO_VENV=/x/venv scripts/setup-moto.sh
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$script_dir/.." && pwd)"
# shellcheck source=scripts/lib/venv.sh
. "$script_dir/lib/venv.sh"
venv="${QLIK_ROTATOR_MOTO_VENV:-$repo_root/.venv-moto}"
moto_version="5.2.5"

moto_ready() {
    [ "$(venv_dist_version "$venv" moto || true)" = "$moto_version" ] \
        && "$venv/bin/python" -c 'import flask, flask_cors, moto.server, py_partiql_parser, docker' >/dev/null 2>&1
}

pinned_venv setup-moto "$venv" "moto $moto_version" moto_ready -r "$script_dir/moto-requirements.txt"
echo "setup-moto: ready ($venv)"
