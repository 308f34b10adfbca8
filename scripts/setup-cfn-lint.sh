#!/usr/bin/env bash
# Creates (idempotently) a Python venv with a pinned cfn-lint, used by tests/deploy.rs to check
# the CloudFormation templates under deploy/aws.
#
#   scripts/setup-cfn-lint.sh            # venv at <repo>/.venv-cfn-lint
#   QLIK_ROTATOR_CFN_LINT_VENV=/x/venv scripts/setup-cfn-lint.sh
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$script_dir/.." && pwd)"
venv="${QLIK_ROTATOR_CFN_LINT_VENV:-$repo_root/.venv-cfn-lint}"
version="1.58.0"
python="${PYTHON:-python3}"

if [ -x "$venv/bin/cfn-lint" ] && [ "$("$venv/bin/cfn-lint" --version 2>/dev/null | awk '{print $2}')" = "$version" ]; then
    echo "setup-cfn-lint: cfn-lint $version already installed in $venv"
    exit 0
fi
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv" || {
        rm -rf "$venv"
        echo "setup-cfn-lint: '$python -m venv' failed (Debian: apt-get install -y python3-venv)" >&2
        exit 1
    }
fi
echo "setup-cfn-lint: installing cfn-lint $version into $venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "cfn-lint==$version"
"$venv/bin/cfn-lint" --version
