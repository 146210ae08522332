"""Command-line client: run a workflow on a RunPod endpoint or a local worker, save the outputs.

    comfy-worker-client workflow_api.json --image photo.png --endpoint abc123xyz
    python -m engine.client workflow_api.json --url http://127.0.0.1:8000 --sync

It sends ``{"input": {"workflow": ..., "images": [...]}}`` with ``POST /run`` and polls
``/status/<id>`` (``--sync``: ``POST /runsync``), then writes every item of
``output.images`` into a folder: base64 data URIs decoded, S3 URLs downloaded.

Only httpx and the standard library: the client runs on a laptop that has none of
the worker's dependencies (torch, ComfyUI, boto3, pydantic).

Modules: ``cli`` (arguments -> ClientConfig), ``request`` (the job's body), ``api``
(RunPod's HTTP API), ``wait`` (polling, progress), ``save`` (outputs to files),
``run`` (``execute`` and ``main``), ``errors``, ``text`` (terminal output).
"""

from __future__ import annotations

from engine.client.api import RunPodApi
from engine.client.cli import (
    RUNPOD_API,
    ClientConfig,
    ImageSpec,
    parse_args,
    parse_frames_to_video,
    parse_image_arg,
)
from engine.client.errors import (
    ApiError,
    ClientError,
    ExitCode,
    JobFailedError,
    NoAnswerError,
    SaveError,
    UsageError,
    UserInterrupt,
    WaitTimeoutError,
)
from engine.client.request import build_request, encode_image, load_workflow
from engine.client.run import execute, main
from engine.client.save import (
    SavedFile,
    download_client,
    human_size,
    open_unique,
    safe_filename,
    save_item,
    save_outputs,
)
from engine.client.wait import Progress, describe_failure, followup_hint, wait_for_job

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
    "SavedFile",
    "UsageError",
    "UserInterrupt",
    "WaitTimeoutError",
    "build_request",
    "describe_failure",
    "download_client",
    "encode_image",
    "execute",
    "followup_hint",
    "human_size",
    "load_workflow",
    "main",
    "open_unique",
    "parse_args",
    "parse_frames_to_video",
    "parse_image_arg",
    "safe_filename",
    "save_item",
    "save_outputs",
    "wait_for_job",
]
