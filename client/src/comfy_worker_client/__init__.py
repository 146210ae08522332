"""Command-line client: run a workflow on a RunPod endpoint or a local worker, save the outputs.

    comfy-worker-client workflow_api.json --image photo.png --endpoint abc123xyz
    python -m comfy_worker_client test_input.json --url http://127.0.0.1:8000 --sync
    comfy-worker-client --job <id> --endpoint abc123xyz --json

It sends ``{"input": {"workflow": ..., "images": [...]}}`` (or a whole request file) with
``POST /run`` and polls ``/status/<id>`` (``--sync``: ``POST /runsync``), then writes every
item of ``output.images`` into a folder: base64 data URIs decoded, S3 URLs downloaded.

Only httpx and the standard library, nothing of the worker: the client is its own
distribution (``client/pyproject.toml``, ``pip install ./client``), for a laptop that has
none of the worker's dependencies (torch, ComfyUI, boto3, pydantic), or installed beside
the worker in one environment (``scripts/setup.sh`` does), where the two share no file.

Modules: ``cli`` (arguments -> ClientConfig), ``request`` (the job's body), ``api``
(RunPod's HTTP API), ``start`` (a local worker still booting), ``wait`` (polling,
progress), ``save`` (outputs to files), ``run`` (``execute`` and ``main``), ``errors``,
``text`` (terminal output).
"""

from __future__ import annotations

from comfy_worker_client.api import RunPodApi
from comfy_worker_client.cli import (
    RUNPOD_API,
    ClientConfig,
    ImageSpec,
    parse_args,
    parse_frames_to_video,
    parse_image_arg,
)
from comfy_worker_client.errors import (
    ApiError,
    ClientError,
    ExitCode,
    JobFailedError,
    NoAnswerError,
    SaveError,
    ServerDownError,
    UsageError,
    UserInterrupt,
    WaitTimeoutError,
)
from comfy_worker_client.request import build_request, encode_image, load_workflow, read_request
from comfy_worker_client.run import completed_summary, error_summary, execute, main
from comfy_worker_client.save import (
    SavedFile,
    SaveReport,
    download_client,
    human_size,
    open_unique,
    safe_filename,
    save_item,
    save_outputs,
)
from comfy_worker_client.start import when_up
from comfy_worker_client.wait import Progress, describe_failure, followup_hint, wait_for_job

__all__ = [
    "RUNPOD_API",
    "ApiError",
    "ClientConfig",
    "ClientError",
    "ExitCode",
    "ImageSpec",
    "JobFailedError",
    "NoAnswerError",
    "Progress",
    "RunPodApi",
    "SaveError",
    "SaveReport",
    "SavedFile",
    "ServerDownError",
    "UsageError",
    "UserInterrupt",
    "WaitTimeoutError",
    "build_request",
    "completed_summary",
    "describe_failure",
    "download_client",
    "encode_image",
    "error_summary",
    "execute",
    "followup_hint",
    "human_size",
    "load_workflow",
    "main",
    "open_unique",
    "parse_args",
    "parse_frames_to_video",
    "parse_image_arg",
    "read_request",
    "safe_filename",
    "save_item",
    "save_outputs",
    "wait_for_job",
    "when_up",
]
