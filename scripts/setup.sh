#!/usr/bin/env bash
# Set up a working copy of the worker.
#
#   scripts/setup.sh                                  # .venv + the worker + dev tools (PyPI only)
#   scripts/setup.sh --with-comfyui                   # + ComfyUI at the pin, torch, its requirements
#   scripts/setup.sh --with-comfyui --custom-nodes    # + the packs of comfyui/custom_nodes.json
#   scripts/setup.sh --image-env                      # the Docker image's environment, see below
#
# --image-env builds what the image runs, on any x86_64 Linux machine: a Python 3.12 venv
# (.venv-image) holding exactly comfyui/image.lock (hash-checked, as the Dockerfile installs
# it), the worker and its test tools (constrained to the lock), ComfyUI at the pin and the
# packs of comfyui/custom_nodes.json at theirs, without their requirements (the lock has
# them). Then: VENV=.venv-image scripts/test runs every test in that environment.
#
# Environment:
#   PYTHON           the interpreter for the venv (default: the newest python3.1x >= 3.11 on PATH)
#   VENV             the venv folder (default: .venv)
#   COMFYUI_PATH     use this ComfyUI checkout instead of installing the pin into comfyui/ComfyUI
#   TORCH_INDEX_URL  where torch comes from (default: PyTorch's CUDA 12.8 wheels when nvidia-smi
#                    works, its CPU wheels otherwise; PyPI when that index cannot be reached)
#   TORCH_PACKAGES   the torch packages to install (default: the image's, see below)
# With --image-env:
#   IMAGE_VENV       the venv folder (default: .venv-image)
#   PYTHON312        the Python 3.12 interpreter (default: python3.12 on PATH)
#   CUSTOM_NODES_SRC a folder of pack checkouts (<name>/ per pack) to link instead of cloning
#                    each pack from upstream (for machines that cannot reach it)
#   IMAGE_ENV_TORCH  "cpu": the CPU build of the lock's torch, torchvision and torchaudio
#                    from PyTorch's CPU index instead of the CUDA build (the only swap)
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
image_env=false

say() { printf '==> %s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}
usage() { sed -n '2,33s/^# \{0,1\}//p' "$0"; }

while (($#)); do
    case $1 in
        --with-comfyui) with_comfyui=true ;;
        --custom-nodes) custom_nodes=true ;;
        --image-env) image_env=true ;;
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
if $image_env && { $with_comfyui || $custom_nodes; }; then
    die "--image-env installs ComfyUI and the packs itself: use it alone"
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

# -- ComfyUI: the checkout COMFYUI_PATH names, or the pin installed into comfyui/ComfyUI ----------
# Sets $comfyui to the checkout.
install_comfyui() {
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
}

# -- the image's environment (--image-env) -----------------------------------------------------
LOCK=comfyui/image.lock
# What IMAGE_ENV_TORCH=cpu replaces: the torch set and the CUDA libraries only it needs.
CUDA_ONLY='^(torch|torchvision|torchaudio|triton|nvidia-[a-z0-9-]+)=='

# The lock without the entries (a requirement line and its hash lines) whose name matches.
lock_without() { # PYTHON PATTERN
    "$1" -c '
import re, sys
skip = False
for line in open(sys.argv[1], encoding="utf-8"):
    if line[:1] not in " #\n":
        skip = re.match(sys.argv[2], line) is not None
    if not skip:
        sys.stdout.write(line)
' "$LOCK" "$2"
}

build_image_env() {
    local venv=${IMAGE_VENV:-.venv-image} python=${PYTHON312:-python3.12} lock=$LOCK work
    command -v "$python" >/dev/null || die "no $python: install Python 3.12, or set PYTHON312"
    "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' ||
        die "$python is $("$python" -V 2>&1); the image's environment is Python 3.12"
    [[ $(uname -m) == x86_64 ]] || warn "comfyui/image.lock is for x86_64; this is $(uname -m)"
    if [[ ! -x $venv/bin/python ]]; then
        say "Creating $venv with $("$python" -V 2>&1)"
        "$python" -m venv "$venv"
    fi
    local vpip=("$venv/bin/python" -m pip)
    work=$(mktemp -d)
    # shellcheck disable=SC2064  # expand now: $work is local to this function
    trap "rm -rf '$work'" EXIT
    if [[ ${IMAGE_ENV_TORCH:-} == cpu ]]; then
        lock=$work/image-cpu.lock
        lock_without "$python" "$CUDA_ONLY" >"$lock"
    fi
    say "Installing $LOCK into $venv (hash-checked, no resolver: exactly the image's versions)"
    "${vpip[@]}" install --no-input --require-hashes --no-deps -r "$lock"
    if [[ ${IMAGE_ENV_TORCH:-} == cpu ]]; then
        local versions
        versions=$(grep -E '^(torch|torchvision|torchaudio)==' "$LOCK" | sed 's/ .*//; s/$/+cpu/')
        say "Swapping in the CPU build of the lock's torch: $(echo "$versions" | tr '\n' ' ')"
        # shellcheck disable=SC2086  # one argument per requirement
        "${vpip[@]}" install --no-input --no-deps --index-url "$CPU_INDEX" $versions
    fi
    # The worker and its test tools on top. The lock, hashes stripped, is their constraint:
    # nothing the image holds may move to make room for a test tool.
    grep -E '^[A-Za-z0-9]' "$LOCK" | sed 's/ *\\$//' >"$work/constraints.txt"
    say "Installing the worker and the client (editable) and the test tools, constrained to the lock"
    "${vpip[@]}" install --no-input -c "$work/constraints.txt" -e '.[dev]' -e ./client
    "${vpip[@]}" check
}

if $image_env; then
    build_image_env
    install_comfyui
    say "The packs of comfyui/custom_nodes.json into $comfyui/custom_nodes (requirements: the lock)"
    from=()
    if [[ -n ${CUSTOM_NODES_SRC:-} ]]; then
        from=(--from "$CUSTOM_NODES_SRC")
    fi
    "${IMAGE_VENV:-.venv-image}/bin/python" scripts/install_custom_nodes.py \
        --comfyui "$comfyui" --no-requirements "${from[@]}"
    say "Done. The image's environment: ${IMAGE_VENV:-.venv-image}; ComfyUI: $comfyui"
    if [[ -n ${COMFYUI_PATH:-} ]]; then
        say "Run every test in it: VENV=${IMAGE_VENV:-.venv-image} COMFYUI_PATH=$comfyui scripts/test"
    else
        say "Run every test in it: VENV=${IMAGE_VENV:-.venv-image} scripts/test"
    fi
    exit 0
fi

# -- the worker --------------------------------------------------------------------------
python=$(find_python)
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "$python is $("$python" -V 2>&1); the worker needs Python 3.11 or newer"
if [[ ! -x $VENV/bin/python ]]; then
    say "Creating $VENV with $("$python" -V 2>&1)"
    "$python" -m venv "$VENV"
fi
pip=("$VENV/bin/python" -m pip)
say "Installing the worker, the client (client/, its own package) and the dev tools into $VENV"
"${pip[@]}" install --upgrade pip
"${pip[@]}" install -e '.[dev]' -e ./client

if ! $with_comfyui; then
    say "Done. Run the tests: scripts/test"
    say "For the real engine: scripts/setup.sh --with-comfyui (or set COMFYUI_PATH)"
    exit 0
fi

install_comfyui

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

# A ComfyUI the user already runs may hold packs whose requirements this venv lacks: say so
# here rather than leave it to a boot log full of their import tracebacks.
if [[ -n ${COMFYUI_PATH:-} ]] && ! $custom_nodes; then
    packs=()
    for folder in "$comfyui"/custom_nodes/*/; do
        name=$(basename "$folder")
        [[ -d $folder && $name != __pycache__ && $name != .* ]] && packs+=("$name")
    done
    if ((${#packs[@]})); then
        warn "$comfyui/custom_nodes holds ${#packs[@]} pack(s) (${packs[*]}); their requirements are not installed into $VENV: a pack that cannot import is named at boot (ComfyUI logs its traceback) and the worker runs without it. Install what they need into $VENV, or use scripts/setup.sh --image-env for the image's environment with its packs"
    fi
fi

say "Done. ComfyUI: $comfyui"
if [[ -n ${COMFYUI_PATH:-} ]]; then
    say "Run every test, the real engine's included: COMFYUI_PATH=$comfyui scripts/test"
else
    say "Run every test, the real engine's included: scripts/test"
fi
