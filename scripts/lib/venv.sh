# shellcheck shell=bash
# Sourced by scripts/setup-moto.sh, setup-bao.sh and setup-deploy-tools.sh: creates (idempotently)
# a Python venv holding pinned packages, with a clear message when Python or its venv module
# (Debian: python3-venv) is missing. Honours PYTHON (the interpreter that makes the venv;
# default python3).

# The version of the Python distribution $2 installed in the venv $1 (fails when there is none).
venv_dist_version() {
    [ -x "$1/bin/python" ] || return 1
    "$1/bin/python" - "$2" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
print(version(sys.argv[1]))
PY
}

# pinned_venv TAG VENV WHAT CHECK PIP_ARGS...
#   TAG       prefix of every message (the calling script's name, e.g. setup-moto);
#   VENV      the venv directory;
#   WHAT      what gets installed, for the messages (e.g. "moto 5.2.5");
#   CHECK     a command that succeeds when WHAT is installed and usable in VENV;
#   PIP_ARGS  what `pip install` gets (e.g. -r requirements.txt, or name==version).
# Returns 0 at once when CHECK already succeeds; otherwise (re)creates VENV when it has no working
# pip, installs, and fails unless CHECK succeeds afterwards.
pinned_venv() {
    local tag="$1" venv="$2" what="$3" check="$4"
    shift 4
    local python="${PYTHON:-python3}"
    # Without trailing slashes, `rm -rf` of a venv that is a symbolic link removes the link only.
    venv="${venv%"${venv##*[!/]}"}"
    if $check; then
        echo "$tag: $what already installed in $venv"
        return 0
    fi
    if ! command -v "$python" >/dev/null 2>&1; then
        echo "$tag: $python not found; install Python 3 (Debian: apt-get install python3 python3-venv)" >&2
        return 1
    fi
    if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
        rm -rf "$venv"
        if ! "$python" -m venv "$venv"; then
            rm -rf "$venv"
            echo "$tag: '$python -m venv' failed. On Debian/Ubuntu install the venv module first:" >&2
            echo "    apt-get install -y python3-venv" >&2
            return 1
        fi
    fi
    echo "$tag: installing pinned $what into $venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$@"
    if ! $check; then
        echo "$tag: $what is not usable from $venv after install ($check failed)" >&2
        return 1
    fi
}
