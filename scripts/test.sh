#!/usr/bin/env bash
# The project's test command (README "Quick start"; CI runs exactly this).
# On a fresh machine it first installs what the tests need, each step idempotent:
#   - promtool (Debian package `prometheus`) and Python's venv module (`python3-venv`), via
#     apt-get when missing (as root, or through `sudo -n`); a clear message when it cannot;
#   - the pinned moto test server (scripts/setup-moto.sh), OpenBao (scripts/setup-bao.sh) and
#     cfn-lint, which checks the CloudFormation templates in deploy/aws (scripts/setup-deploy-tools.sh).
# Then it runs every test suite, not stopping at the first failing one (--no-fail-fast): unit
# tests, snapshot tests, and integration tests against the Qlik simulator and a real moto server,
# for both workspace packages; then checks that the product compiles without the simulator.
# Ends with the summary line "<N> passed, <M> failed" and the result of that check. Extra
# arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# --- system packages -----------------------------------------------------------------------
moto_venv="${QLIK_ROTATOR_MOTO_VENV:-$PWD/.venv-moto}"
missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
if [ ! -x "$moto_venv/bin/python" ]; then
    command -v python3 >/dev/null 2>&1 || missing+=(python3)
    python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
fi
if [ "${#missing[@]}" -gt 0 ]; then
    as_root=()
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            as_root=(sudo -n)
        else
            as_root=(cannot)
        fi
    fi
    if ! command -v apt-get >/dev/null 2>&1 || [ "${as_root[*]:-}" = cannot ]; then
        echo "test.sh: missing Debian package(s): ${missing[*]} (promtool comes with 'prometheus')." >&2
        echo "test.sh: cannot install them here (needs apt-get as root or passwordless sudo); install them, e.g.:" >&2
        echo "    sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
        exit 1
    fi
    echo "test.sh: installing ${missing[*]} with apt-get"
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if ! command -v promtool >/dev/null 2>&1; then
        echo "test.sh: 'prometheus' was installed but promtool is not on PATH" >&2
        exit 1
    fi
fi

# --- test servers --------------------------------------------------------------------------
bash scripts/setup-moto.sh
bash scripts/setup-bao.sh
bash scripts/setup-node.sh
bash scripts/setup-deploy-tools.sh

# --- every suite ---------------------------------------------------------------------------
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
# The workspace's default members: the product and the simulator (crates/qlik-sim).
cargo test --locked --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
# The product without the simulator (the container image's build) must still compile.
nosim=ok
cargo check --locked --quiet -p qlik-rotator --no-default-features --all-targets || { nosim=FAILED; status=1; }
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
echo "build without the simulator (--no-default-features): $nosim"
exit "$status"
