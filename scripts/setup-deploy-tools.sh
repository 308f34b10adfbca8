#!/usr/bin/env bash
# Creates (idempotently) the Python venv holding the checkers tests/deploy.rs runs on deploy/
# (cfn-lint for the CloudFormation templates in deploy/aws). Packages are pinned in
# scripts/deploy-tools-requirements.txt.
#
#   scripts/setup-deploy-tools.sh            # venv at <repo>/.venv-deploy
#   QLIK_ROTATOR_DEPLOY_VENV=/x/venv scripts/setup-deploy-tools.sh
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$script_dir/.." && pwd)"
venv="${QLIK_ROTATOR_DEPLOY_VENV:-$repo_root/.venv-deploy}"
requirements="$script_dir/deploy-tools-requirements.txt"
cfn_lint_version="$(sed -n 's/^cfn-lint==//p' "$requirements")"
python="${PYTHON:-python3}"

installed_version() {
    [ -x "$venv/bin/cfn-lint" ] || return 1
    "$venv/bin/cfn-lint" --version 2>/dev/null | awk '{print $2}'
}

if [ "$(installed_version || true)" = "$cfn_lint_version" ]; then
    echo "setup-deploy-tools: cfn-lint $cfn_lint_version already installed in $venv"
    exit 0
fi

if ! command -v "$python" >/dev/null 2>&1; then
    echo "setup-deploy-tools: $python not found; install Python 3 (Debian: apt-get install python3 python3-venv)" >&2
    exit 1
fi
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
    rm -rf "$venv"
    if ! "$python" -m venv "$venv"; then
        rm -rf "$venv"
        echo "setup-deploy-tools: '$python -m venv' failed. On Debian/Ubuntu install the venv module first:" >&2
        echo "    apt-get install -y python3-venv" >&2
        exit 1
    fi
fi

echo "setup-deploy-tools: installing pinned cfn-lint $cfn_lint_version into $venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"

if [ "$(installed_version || true)" != "$cfn_lint_version" ]; then
    echo "setup-deploy-tools: cfn-lint $cfn_lint_version is not runnable from $venv after install" >&2
    exit 1
fi
echo "setup-deploy-tools: ready ($venv)"
