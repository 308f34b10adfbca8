#!/usr/bin/env bash
# Installs Qlik's official client, @qlik/api (pinned in tests/contract/package.json and its
# lock file), into tests/contract/node_modules for the contract test (tests/contract.rs).
# Does nothing when the pinned version is already there. Needs node >= 20 and npm.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="$repo_root/tests/contract"
pinned="2.19.0"

for tool in node npm; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "setup-node: '$tool' not found; the contract test needs Node.js >= 20 with npm" >&2
        echo "    (Debian: apt-get install -y nodejs npm)" >&2
        exit 1
    fi
done
major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$major" -lt 20 ]; then
    echo "setup-node: Node.js $(node --version) is too old; @qlik/api $pinned needs >= 20" >&2
    exit 1
fi

installed() {
    node -p 'require(process.argv[1]).version' "$dir/node_modules/@qlik/api/package.json" 2>/dev/null
}

if [ "$(installed || true)" = "$pinned" ]; then
    exit 0
fi

cd "$dir"
if [ -f package-lock.json ]; then
    npm ci --silent --no-audit --no-fund
else
    npm install --silent --no-audit --no-fund
fi
if [ "$(installed || true)" != "$pinned" ]; then
    echo "setup-node: @qlik/api $pinned is not in $dir/node_modules after the install" >&2
    exit 1
fi
echo "setup-node: @qlik/api $pinned installed in $dir/node_modules"
