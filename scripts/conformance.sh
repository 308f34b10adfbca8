#!/usr/bin/env bash
# Conformance against a live Qlik Cloud tenant (README: "Conformance against a live tenant").
#
#   QLIK_TENANT_URL=https://acme.eu.qlikcloud.com QLIK_API_KEY=… \
#   QLIK_CONFORMANCE_SPACE_ID=<throwaway space id> scripts/conformance.sh [--report FILE]
#
# Creates throwaway data connections (dummy credentials) in that space and one in the caller's
# personal space, rotates them with the real qlik-rotator binary (plan, then rotate), records
# every fact the simulator assumes, and writes a JSON report (default conformance-report.json)
# with each observed value beside the simulator's. Everything it created is deleted on exit,
# also after a failure or Ctrl-C. Without the three variables it says it was skipped, exit 0.
#
# The binary is $QLIK_ROTATOR_BIN, else `qlik-rotator` on PATH, else target/release (built).
# Exit: 0 the suite ran; 1 a step or the cleanup failed (see the report); 64 bad usage.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
report="conformance-report.json"
while [ $# -gt 0 ]; do
  case "$1" in
    --report)
      [ $# -ge 2 ] && [ -n "$2" ] || { echo "error: --report needs a file name" >&2; exit 64; }
      report="$2"; shift 2 ;;
    --report=*) report="${1#--report=}"; shift ;;
    -h|--help) sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument ${1//[^[:print:]]/?} (usage: scripts/conformance.sh [--report FILE])" >&2; exit 64 ;;
  esac
done

missing=()
for v in QLIK_TENANT_URL QLIK_API_KEY QLIK_CONFORMANCE_SPACE_ID; do
  [ -n "${!v:-}" ] || missing+=("$v")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "conformance: skipped: ${missing[*]} not set (it needs QLIK_TENANT_URL, QLIK_API_KEY and QLIK_CONFORMANCE_SPACE_ID; see README, Conformance against a live tenant)"
  exit 0
fi
case "$QLIK_TENANT_URL" in
  https://*|http://127.0.0.1:*|http://localhost:*|http://\[::1\]:*) ;;
  *) echo "error: QLIK_TENANT_URL must be https:// (plain http only on loopback)" >&2; exit 64 ;;
esac
case "$QLIK_CONFORMANCE_SPACE_ID" in
  *[!A-Za-z0-9_-]*) echo "error: QLIK_CONFORMANCE_SPACE_ID must be a space id (letters, digits, - and _)" >&2; exit 64 ;;
esac
report_dir="$(dirname -- "$report")"
[ -d "$report_dir" ] || { echo "error: the directory of --report does not exist" >&2; exit 64; }
report="$(cd "$report_dir" && pwd)/$(basename -- "$report")"

bash "$root/scripts/setup-node.sh" || { echo "error: cannot install @qlik/api (scripts/setup-node.sh)" >&2; exit 1; }
bin="${QLIK_ROTATOR_BIN:-}"
if [ -z "$bin" ]; then
  if command -v qlik-rotator >/dev/null 2>&1; then
    bin="$(command -v qlik-rotator)"
  else
    (cd "$root" && cargo build --release --locked --quiet) || { echo "error: cannot build qlik-rotator" >&2; exit 1; }
    bin="$root/target/release/qlik-rotator"
  fi
fi
[ -x "$bin" ] || { echo "error: $bin is not an executable qlik-rotator" >&2; exit 64; }

work="$(mktemp -d "${TMPDIR:-/tmp}/qlik-rotator-conformance.XXXXXX")"
chmod 700 "$work"
ledger="$work/created.jsonl"
prefix="qlik-rotator-conformance-$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')"
child=""
status=0

cleanup() {
  trap '' INT TERM            # a second Ctrl-C must not stop the cleanup
  trap - EXIT
  if [ -n "$child" ] && kill -0 "$child" 2>/dev/null; then
    kill -TERM "$child" 2>/dev/null
    wait "$child" 2>/dev/null
  fi
  node "$root/scripts/conformance/cleanup.mjs" --ledger "$ledger" --prefix "$prefix" || status=1
  rm -rf -- "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'status=130; exit 130' INT
trap 'status=143; exit 143' TERM

echo "conformance: run $prefix against ${QLIK_TENANT_URL//[^[:print:]]/?} (space $QLIK_CONFORMANCE_SPACE_ID)"
node "$root/scripts/conformance/driver.mjs" --report "$report" --ledger "$ledger" --work "$work" \
  --prefix "$prefix" --bin "$bin" &
child=$!
wait "$child"
status=$?
child=""
