# syntax=docker/dockerfile:1.7
#
# RunPod serverless worker: ComfyUI at the pin in comfyui/pin.env, driven in-process.
#
#   docker buildx build --platform linux/amd64 \
#     --build-arg MODEL_SETS=sdxl,reactor \
#     --secret id=hf_token,env=HF_TOKEN \
#     -t <registry>/comfy-inprocess-worker:0.1.0 --push .
#
# MODEL_SETS: none (default; models come from the network volume), all, or a comma list
# of the sets in comfyui/models.json (sdxl, wan22, wan22_14b, pulid, reactor).
# docs/deployment.md explains every argument and the RunPod template.
#
# Stages, slowest-changing first, so that editing engine/ or handler.py rebuilds two
# small COPY layers and nothing else:
#   base     the runtime OS (CUDA 12.8 + cuDNN, Ubuntu 24.04's Python 3.12)
#   builder  venv: exactly comfyui/image.lock -> ComfyUI at its commit -> custom nodes
#   models   the chosen model sets, downloaded and sha256-verified
#   final    base + venv + ComfyUI + models + the worker's deps + the worker's code
#
# No secret reaches a layer: the HF token is a BuildKit secret mounted for one RUN.

ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# ---------------------------------------------------------------------------- base
FROM ${CUDA_IMAGE} AS base

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Unpinned on purpose (DL3008): Ubuntu's archive drops superseded versions, so exact pins
# break the next rebuild; the base tag fixes the release and security fixes are wanted.
# libgl1 + libglib2.0-0: opencv-python (VideoHelperSuite, KJNodes, ReActor) links them.
# No system ffmpeg: the worker and VideoHelperSuite use imageio-ffmpeg's static binary.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates libgl1 libglib2.0-0 python3.12 python3.12-venv \
    && rm -rf /var/lib/apt/lists/*

# ---------------------------------------------------------------------------- builder
FROM base AS builder
# Every stage says its SHELL: pipefail makes a failing left side of a pipe fail the step.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH}

# Compilers only here: insightface 0.7.3 (ReActor, PuLID) ships no cp312 wheel.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential git python3.12-dev \
    && rm -rf /var/lib/apt/lists/*

# The whole Python environment from one lock: every distribution pinned with its hashes,
# installed without a resolver (--no-deps), so this image holds exactly what the suite
# was run against (scripts/setup.sh --image-env builds the same venv anywhere). The lock
# says why each chosen version is what it is; scripts/lock_image.py makes it, and CI
# fails when it is stale against ComfyUI's, the packs' and the worker's requirements.
COPY comfyui/image.lock /opt/build/image.lock
# The download cache is a BuildKit cache mount: kept between builds, in no layer (so
# DL3042's --no-cache-dir would only slow rebuilds).
# hadolint ignore=DL3042
RUN --mount=type=cache,target=/var/cache/pip \
    python3.12 -m venv /opt/venv \
    && PIP_CACHE_DIR=/var/cache/pip \
        pip install --no-input --require-hashes --no-deps -r /opt/build/image.lock \
    && pip check

# ComfyUI at exactly the pinned commit: fetched by id (depth 1), then checked. Its
# requirements are in the lock already.
COPY comfyui/pin.env /opt/build/pin.env
# hadolint ignore=SC1091
RUN . /opt/build/pin.env \
    && git init -q /comfyui \
    && git -C /comfyui remote add origin "${COMFYUI_REPO}" \
    && git -C /comfyui fetch -q --depth 1 origin "${COMFYUI_COMMIT}" \
    && git -C /comfyui -c advice.detachedHead=false checkout -q --detach FETCH_HEAD \
    && test "$(git -C /comfyui rev-parse HEAD)" = "${COMFYUI_COMMIT}"

# Custom nodes at their commits; their requirements are in the lock too.
COPY comfyui/custom_nodes.json /opt/build/custom_nodes.json
COPY scripts/install_custom_nodes.py /opt/build/install_custom_nodes.py
RUN python /opt/build/install_custom_nodes.py \
        --comfyui /comfyui --manifest /opt/build/custom_nodes.json --no-requirements

# ---------------------------------------------------------------------------- models
FROM base AS models
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ARG MODEL_SETS=none
# Entries without a sha256 in the manifest are refused unless this is true (their size
# is still checked); the build then prints the hash it measured.
ARG ALLOW_UNVERIFIED_MODELS=false
COPY comfyui/models.json /opt/build/models.json
COPY scripts/download_models.py /opt/build/download_models.py
# The token is read from the secret file for this one process: never an ARG or ENV,
# so it is in no layer and no `docker history`. Public files need no token.
RUN --mount=type=secret,id=hf_token \
    mkdir -p /models \
    && unverified="" \
    && if [ "${ALLOW_UNVERIFIED_MODELS}" = "true" ]; then unverified=--allow-unverified; fi \
    && HF_TOKEN="$(cat /run/secrets/hf_token 2>/dev/null || true)" \
        python3.12 /opt/build/download_models.py \
            --manifest /opt/build/models.json --dest /models --jobs 6 \
            --set "${MODEL_SETS}" ${unverified:+"${unverified}"} \
    && rm -f /models/.model-hashes.json

# ---------------------------------------------------------------------------- final
FROM base AS final

# COMFYUI_PATH: the checkout the runtime imports. Model folders: the runtime always loads
# /app/comfyui/extra_model_paths.yaml (copied below), which searches /comfyui/models/<kind>
# first, then the network volume's /runpod-volume/models/<kind>; EXTRA_MODEL_PATHS stays
# free for a deployment's own extra yaml. HF_HOME: where PuLID's EVA-CLIP lands.
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH} \
    COMFYUI_PATH=/comfyui \
    WORKER_DIR=/tmp/comfy-worker \
    HF_HOME=/opt/huggingface \
    HF_HUB_DISABLE_TELEMETRY=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /comfyui /comfyui
COPY --from=models /models /comfyui/models

# PuLID loads EVA02-CLIP-L-14-336 through huggingface_hub, not from a ComfyUI models
# folder, so it is fetched into HF_HOME here (856 MB; otherwise every cold worker
# downloads it on its first PuLID job) and checked against its published sha256.
ARG MODEL_SETS=none
RUN case ",${MODEL_SETS}," in \
        *,all,*|*,pulid,*) \
            eva="$(python -c 'from huggingface_hub import hf_hub_download as get; print(get("QuanSun/EVA-CLIP", "EVA02_CLIP_L_336_psz14_s6B.pt"))')" \
            && echo "84c3a17a228c567a155259b2245b0b59072bf7da510260a0a02ec54de6d50b05  ${eva}" \
                | sha256sum --check --strict - ;; \
        *) echo "PuLID not baked in: EVA-CLIP is fetched on first use" ;; \
    esac

# Made once here, not at every container start: the bytecode of ComfyUI and the packs
# (the base sets PYTHONDONTWRITEBYTECODE=1, so a start compiles them and keeps nothing;
# site-packages keep pip's .pyc, anything without one is compiled), and the two files a
# first start writes under an empty HOME (matplotlib's font cache, Ultralytics' settings).
# YOLO_OFFLINE / YOLO_AUTOINSTALL: ultralytics skips its DNS probe at import and never
# pip-installs at run time. docs/benchmarks.md, "Image boot", has the figures.
ENV MPLCONFIGDIR=/opt/cache/matplotlib \
    YOLO_CONFIG_DIR=/opt/cache/ultralytics \
    YOLO_OFFLINE=true \
    YOLO_AUTOINSTALL=false
COPY scripts/prepare_image.py /opt/build/prepare_image.py
RUN python /opt/build/prepare_image.py --comfyui /comfyui --venv /opt/venv --cache-dir /opt/cache

# Last: the code. handler.py runs from /app, so `import engine` needs no install step.
WORKDIR /app
COPY comfyui/ /app/comfyui/
COPY engine/ /app/engine/
COPY handler.py /app/handler.py
# The worker's own bytecode, as prepare_image.py made ComfyUI's (unchecked-hash: nothing
# in /app changes after the build), and ComfyUI's node index: the worker boots once here,
# so that every container imports ComfyUI's own node files only when a job first names
# one of their types (engine/runtime/lazy_nodes.py; docs/benchmarks.md, "Cold start").
RUN python /opt/build/prepare_image.py --comfyui /comfyui --app /app --node-index

# Runs as root on purpose: RunPod mounts /runpod-volume root-owned, and the worker
# writes its job folders under WORKER_DIR.
CMD ["python", "-u", "/app/handler.py"]
