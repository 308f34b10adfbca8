#!/usr/bin/env bash
# Lists the longest functions (signature to closing brace, in lines) in the Rust sources.
#   scripts/long-fns.sh                 # top 10 over src/ and crates/qlik-sim/src
#   scripts/long-fns.sh -n 20 tests     # top 20 over other directories
#   scripts/long-fns.sh --max 80        # exit 1 if any function is longer than 80 lines
# It relies on rustfmt's layout: a function ends at the first line that is its own
# indentation followed by `}`. Declarations without a body (`fn f();`) are skipped.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
top=10 max=""
dirs=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        -n) top="$2"; shift 2 ;;
        --max) max="$2"; shift 2 ;;
        *) dirs+=("$1"); shift ;;
    esac
done
[[ ${#dirs[@]} -eq 0 ]] && dirs=(src crates/qlik-sim/src)
list=$(find "${dirs[@]}" -name '*.rs' -print0 | sort -z | xargs -0 awk '
    FNR == 1 { depth = 0 }
    function report() { printf "%d %s:%d %s\n", FNR - start + 1, FILENAME, start, name }
    {
        if (open && $0 == indent "}") { report(); open = 0 }
        if (!open && match($0, /^ *((pub(\([a-z]+\))? )?((const|async|unsafe|extern "C") )*)fn [A-Za-z_0-9]+/)) {
            sig = substr($0, RSTART, RLENGTH)
            indent = substr($0, 1, match($0, /[^ ]/) - 1)
            name = sig; sub(/.*fn /, "", name)
            start = FNR
            # one-line bodies and declarations
            if ($0 ~ /\{.*\}$/ || $0 ~ /;$/) { if ($0 ~ /\}$/) report(); next }
            open = 1
        }
    }' | sort -rn)
echo "$list" | head -n "$top"
if [[ -n "$max" ]]; then
    over=$(echo "$list" | awk -v m="$max" '$1 > m' | wc -l)
    echo "functions over $max lines: $over"
    [[ "$over" -eq 0 ]]
fi
