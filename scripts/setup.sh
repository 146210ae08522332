#!/usr/bin/env bash
# Set up a working copy of the worker.
#
#   scripts/setup.sh                                  # .venv + the worker + dev tools (PyPI only)
#   scripts/setup.sh --with-comfyui                   # + ComfyUI at the pin, torch, its requirements
#   scripts/setup.sh --with-comfyui --custom-nodes    # + the packs of comfyui/custom_nodes.json
#
# Environment:
#   PYTHON           the interpreter for the venv (default: the newest python3.1x >= 3.11 on PATH)
#   VENV             the venv folder (default: .venv)
#   COMFYUI_PATH     use this ComfyUI checkout instead of installing the pin into comfyui/ComfyUI
#   TORCH_INDEX_URL  where torch comes from (default: PyTorch's CUDA 12.8 wheels when nvidia-smi
#                    works, its CPU wheels otherwise; PyPI when that index cannot be reached)
#   TORCH_PACKAGES   the torch packages to install (default: the image's, see below)
#
# Without --with-comfyui it needs nothing but PyPI: that is what CI runs. Safe to run again:
# an existing venv, checkout, torch and packs at their commits are kept.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

VENV=${VENV:-.venv}
# The versions the Dockerfile installs (CUDA 12.8 builds contemporary with ComfyUI 0.3.64),
# so a developer's engine and the image's agree. On PyTorch's CPU index these are +cpu builds.
TORCH_PACKAGES=${TORCH_PACKAGES:-"torch==2.8.0 torchvision==0.23.0 torchaudio==2.8.0"}
CUDA_INDEX=https://download.pytorch.org/whl/cu128
CPU_INDEX=https://download.pytorch.org/whl/cpu

with_comfyui=false
custom_nodes=false

say() { printf '==> %s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}
usage() { sed -n '2,17s/^# \{0,1\}//p' "$0"; }

while (($#)); do
    case $1 in
        --with-comfyui) with_comfyui=true ;;
        --custom-nodes) custom_nodes=true ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            usage >&2
            die "unknown argument: $1"
            ;;
    esac
    shift
done
if $custom_nodes && ! $with_comfyui; then
    die "--custom-nodes installs into ComfyUI: add --with-comfyui"
fi

find_python() {
    local candidate
    if [[ -n ${PYTHON:-} ]]; then
        echo "$PYTHON"
        return
    fi
    for candidate in python3.13 python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return
        fi
    done
    die "no Python 3.11 or newer found: install one, or set PYTHON=/path/to/python3.11"
}

# -- the worker --------------------------------------------------------------------------
python=$(find_python)
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "$python is $("$python" -V 2>&1); the worker needs Python 3.11 or newer"
if [[ ! -x $VENV/bin/python ]]; then
    say "Creating $VENV with $("$python" -V 2>&1)"
    "$python" -m venv "$VENV"
fi
pip=("$VENV/bin/python" -m pip)
say "Installing the worker and its dev tools into $VENV"
"${pip[@]}" install --upgrade pip
"${pip[@]}" install -e '.[dev]'

if ! $with_comfyui; then
    say "Done. Run the tests: scripts/test"
    say "For the real engine: scripts/setup.sh --with-comfyui (or set COMFYUI_PATH)"
    exit 0
fi

# -- ComfyUI: the checkout COMFYUI_PATH names, or the pin installed into comfyui/ComfyUI ----------
pin_value() { sed -n "s/^$1=//p" comfyui/pin.env; }
COMFYUI_REPO=$(pin_value COMFYUI_REPO)
COMFYUI_COMMIT=$(pin_value COMFYUI_COMMIT)
COMFYUI_VERSION=$(pin_value COMFYUI_VERSION)
[[ $COMFYUI_COMMIT =~ ^[0-9a-f]{40}$ ]] || die "comfyui/pin.env has no COMFYUI_COMMIT"

if [[ -n ${COMFYUI_PATH:-} ]]; then
    comfyui=$(cd "$COMFYUI_PATH" 2>/dev/null && pwd) || die "COMFYUI_PATH=$COMFYUI_PATH does not exist"
    [[ -f $comfyui/execution.py && -d $comfyui/comfy ]] ||
        die "COMFYUI_PATH=$COMFYUI_PATH is not a ComfyUI checkout (no execution.py, comfy/)"
    say "Using the ComfyUI checkout COMFYUI_PATH names: $comfyui (the pin is not installed)"
    if head=$(git -C "$comfyui" rev-parse HEAD 2>/dev/null); then
        [[ $head == "$COMFYUI_COMMIT" ]] ||
            warn "$comfyui is at $head; the worker is tested with $COMFYUI_VERSION ($COMFYUI_COMMIT)"
    else
        warn "$comfyui is not a git checkout: cannot check it is ComfyUI $COMFYUI_VERSION"
    fi
else
    comfyui=$ROOT/comfyui/ComfyUI
    if [[ ! -d $comfyui/.git ]]; then
        [[ ! -e $comfyui ]] || die "$comfyui exists but is not a git checkout: move it away"
        say "Installing ComfyUI $COMFYUI_VERSION ($COMFYUI_COMMIT) into $comfyui"
        git init -q "$comfyui"
        git -C "$comfyui" remote add origin "$COMFYUI_REPO"
    fi
    if [[ $(git -C "$comfyui" rev-parse -q --verify HEAD || true) != "$COMFYUI_COMMIT" ]]; then
        [[ -z $(git -C "$comfyui" status --porcelain --untracked-files=no) ]] ||
            die "$comfyui has local changes; commit or discard them, then run again"
        # By commit id at depth 1: GitHub serves any reachable commit, no branch needed.
        git -C "$comfyui" fetch -q --depth 1 origin "$COMFYUI_COMMIT"
        git -C "$comfyui" -c advice.detachedHead=false checkout -q --detach FETCH_HEAD
    fi
    [[ $(git -C "$comfyui" rev-parse HEAD) == "$COMFYUI_COMMIT" ]] ||
        die "$comfyui is not at $COMFYUI_COMMIT after checkout"
    say "ComfyUI $COMFYUI_VERSION at $COMFYUI_COMMIT in $comfyui (git-ignored)"
fi

# -- torch ----------------------------------------------------------------------------------
reachable() {
    "$VENV/bin/python" - "$1" <<'EOF'
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=15).close()
except Exception:
    sys.exit(1)
EOF
}

if version=$("$VENV/bin/python" -c 'import torch; print(torch.__version__)' 2>/dev/null); then
    say "Keeping the torch already installed: $version"
else
    read -r -a torch_packages <<<"$TORCH_PACKAGES"
    if [[ -n ${TORCH_INDEX_URL:-} ]]; then
        index=$TORCH_INDEX_URL
    elif command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
        index=$CUDA_INDEX
    else
        index=$CPU_INDEX
    fi
    if [[ -z ${TORCH_INDEX_URL:-} ]] && ! reachable "$index/"; then
        warn "$index cannot be reached: installing torch from the default index instead"
        say "Installing ${torch_packages[*]}"
        "${pip[@]}" install "${torch_packages[@]}"
    else
        say "Installing ${torch_packages[*]} from $index"
        "${pip[@]}" install --index-url "$index" "${torch_packages[@]}"
    fi
fi

# ComfyUI's own list asks for torch, torchvision and torchaudio unpinned: left to pip, they
# could replace the build chosen above with another (a CUDA build on a CPU machine).
requirements=$(mktemp)
trap 'rm -f "$requirements"' EXIT
grep -vE '^[[:space:]]*(torch|torchvision|torchaudio)[[:space:]]*([<>=!~;[]|$)' \
    "$comfyui/requirements.txt" >"$requirements"
say "Installing ComfyUI's requirements (without torch, torchvision, torchaudio)"
"${pip[@]}" install -r "$requirements"

# -- custom nodes ------------------------------------------------------------------------------
if $custom_nodes; then
    say "Installing the custom nodes of comfyui/custom_nodes.json into $comfyui/custom_nodes"
    "$VENV/bin/python" scripts/install_custom_nodes.py --comfyui "$comfyui" --python "$VENV/bin/python"
fi

say "Done. ComfyUI: $comfyui"
if [[ -n ${COMFYUI_PATH:-} ]]; then
    say "Run every test, the real engine's included: COMFYUI_PATH=$comfyui scripts/test"
else
    say "Run every test, the real engine's included: scripts/test"
fi
