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
# shellcheck source=scripts/lib/venv.sh
. "$script_dir/lib/venv.sh"
venv="${QLIK_ROTATOR_DEPLOY_VENV:-$repo_root/.venv-deploy}"
requirements="$script_dir/deploy-tools-requirements.txt"
cfn_lint_version="$(sed -n 's/^cfn-lint==//p' "$requirements")"

cfn_lint_ready() {
    [ -x "$venv/bin/cfn-lint" ] \
        && [ "$("$venv/bin/cfn-lint" --version 2>/dev/null | awk '{print $2}')" = "$cfn_lint_version" ]
}

pinned_venv setup-deploy-tools "$venv" "cfn-lint $cfn_lint_version" cfn_lint_ready -r "$requirements"
echo "setup-deploy-tools: ready ($venv)"
