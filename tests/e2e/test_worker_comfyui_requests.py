"""Requests and settings written for runpod-workers/worker-comfyui, sent to this worker as
their users send them: over the runpod SDK's local API server, and (for what that server
refuses before any handler runs, an ``input`` that is a string) in the SDK's test_input
mode, both real subprocesses of ``handler.py`` with ComfyUI replaced by the fake runtime."""

from __future__ import annotations

import base64
import copy
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests import workflows
from tests.e2e.conftest import REPO, WorkerServer, worker_env
from tests.e2e.test_api_server import data_uri, png_bytes

# The example request of worker-comfyui's README ("API Specification" > "Input", main
# branch), as printed there: one CLIPTextEncode linked to a node it leaves out, and an
# image whose base64 is cut short ("iVBOR...").
README_REQUEST: dict[str, Any] = {
    "input": {
        "workflow": {
            "6": {
                "inputs": {"text": "a ball on the table", "clip": ["30", 1]},
                "class_type": "CLIPTextEncode",
                "_meta": {"title": "CLIP Text Encode (Positive Prompt)"},
            }
        },
        "images": [{"name": "input_image_1.png", "image": "data:image/png;base64,iVBOR..."}],
    }
}


def with_titles(workflow: dict[str, Any]) -> dict[str, Any]:
    """``workflow`` as ComfyUI's Export (API) writes it: every node with a ``_meta`` title."""
    titled = copy.deepcopy(workflow)
    for node in titled.values():
        node["_meta"] = {"title": node["class_type"]}
    return titled


def readme_request_with_a_real_image() -> dict[str, Any]:
    """Their README's request with a whole PNG and a graph that saves something."""
    request = copy.deepcopy(README_REQUEST["input"])
    request["images"][0]["image"] = data_uri(png_bytes())
    request["workflow"] = with_titles(workflows.invert("input_image_1.png"))
    return request


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., WorkerServer]) -> WorkerServer:
    return start_worker()


def test_their_readme_example_fails_on_its_cut_image_as_theirs_does(
    worker: WorkerServer,
) -> None:
    """As printed, the example's image is not base64: both workers fail the job with
    "Failed to upload one or more input images"; this one says which image and why."""
    body = worker.runsync(README_REQUEST["input"])
    assert body["status"] == "FAILED"
    assert body["error"].startswith("Failed to upload one or more input images: ")
    assert "input_image_1.png: not valid base64" in body["error"]


def test_their_readme_example_with_a_real_image_runs(worker: WorkerServer) -> None:
    """The example's shape (titled nodes, a data URI image) with a whole PNG and a graph
    that saves something: it completes, returning the image as a data URI."""
    body = worker.runsync(readme_request_with_a_real_image())
    assert body["status"] == "COMPLETED", body
    (item,) = body["output"]["images"]
    assert item["type"] == "base64" and item["data"].startswith("data:image/png;base64,")


def test_their_callers_decode_bare_base64_with_output_base64_bare(
    start_worker: Callable[..., WorkerServer],
) -> None:
    """A worker-comfyui caller's own decoding (``base64.b64decode(item["data"])``) works
    unchanged on a worker started with OUTPUT_BASE64=bare."""
    bare = start_worker(OUTPUT_BASE64="bare")
    body = bare.runsync(readme_request_with_a_real_image())
    assert body["status"] == "COMPLETED", body
    (item,) = body["output"]["images"]
    png = base64.b64decode(item["data"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and item["mime_type"] == "image/png"


@pytest.mark.parametrize(
    ("name", "request_"),
    [
        ("images: null", {"workflow": workflows.batch(1), "images": None}),
        (
            "a /prompt body",
            {"workflow": {"prompt": with_titles(workflows.batch(1)), "client_id": "their-id"}},
        ),
        (
            "a /prompt body with extra_data",
            {
                "workflow": {
                    "prompt": workflows.batch(1),
                    "client_id": "c",
                    "extra_data": {"extra_pnginfo": {"workflow": {"nodes": []}}},
                },
                "images": None,
            },
        ),
    ],
)
def test_shapes_worker_comfyui_accepts(
    worker: WorkerServer, name: str, request_: dict[str, Any]
) -> None:
    body = worker.runsync(request_)
    assert body["status"] == "COMPLETED", (name, body)
    assert len(body["output"]["images"]) == 1


def test_input_as_a_json_string_and_their_variables(tmp_path: Path) -> None:
    """worker-comfyui's validate_input parses a string ``input`` as JSON; its variables
    start this worker too: REFRESH_WORKER is honoured (the SDK turns the answer's
    ``refresh_worker`` into ``stopPod``), the rest each get one line saying what instead."""
    job = {"input": json.dumps({"workflow": workflows.batch(1), "images": None})}
    proc = subprocess.run(
        [sys.executable, "handler.py", "--test_input", json.dumps(job)],
        cwd=REPO,
        env=worker_env(
            tmp_path / "work",
            {
                "REFRESH_WORKER": "true",
                "SERVE_API_LOCALLY": "true",
                "NETWORK_VOLUME_DEBUG": "true",
                "COMFY_API_AVAILABLE_INTERVAL_MS": "50",
                "COMFY_API_AVAILABLE_MAX_RETRIES": "500",
            },
        ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    assert "'stopPod': True" in log  # the SDK's "Job result" line: RunPod replaces the worker
    (serve,) = [line for line in log.splitlines() if "SERVE_API_LOCALLY" in line]
    assert "--rp_serve_api" in serve
    assert (
        sum("NETWORK_VOLUME_DEBUG is set but has no effect" in ln for ln in log.splitlines()) == 1
    )
    assert "COMFY_API_AVAILABLE_INTERVAL_MS, COMFY_API_AVAILABLE_MAX_RETRIES are set" in log
