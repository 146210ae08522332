"""Workflow values the worker refuses at the request, over real HTTP (the runpod SDK's
local API server, ComfyUI replaced by tests.fake_runtime), and the WEBSOCKET_* settings
of HTTP-based workers, which start the worker and fail no job."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import pytest

from tests import workflows
from tests.e2e.conftest import WorkerServer


def nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., WorkerServer]) -> WorkerServer:
    # A bad value in each WEBSOCKET_* variable: before, WEBSOCKET_RECONNECT_ATTEMPTS=abc
    # failed every job.
    return start_worker(
        WORKFLOW_MAX_STRING_BYTES="4096",
        WEBSOCKET_RECONNECT_ATTEMPTS="abc",
        WEBSOCKET_RECONNECT_DELAY_S="-1",
        WEBSOCKET_TRACE="maybe",
    )


def test_websocket_settings_warn_once_and_fail_no_job(worker: WorkerServer) -> None:
    body = worker.runsync({"workflow": workflows.batch(count=1, size=8)})
    assert body["status"] == "COMPLETED", body
    warnings = [line for line in worker.log().splitlines() if "WEBSOCKET_TRACE" in line]
    assert len(warnings) == 1 and "no effect" in warnings[0], warnings


def test_a_long_string_is_refused_at_the_request_naming_node_and_input(
    worker: WorkerServer,
) -> None:
    """Before: a 50 MB prompt became a 66 MB PNG and the error blamed the outputs."""
    workflow = workflows.batch(count=1, size=8)
    workflow["2"]["inputs"]["filename_prefix"] = "x" * 5000
    body = worker.runsync({"workflow": workflow})
    assert body["status"] == "FAILED"
    assert body["error"].startswith(
        "Workflow validation failed: Node 2 (SaveImage) input 'filename_prefix': the text is "
        "5,000 bytes, over the 4,096-byte limit (WORKFLOW_MAX_STRING_BYTES)"
    )


def test_a_value_nested_deep_gets_the_contract_error_not_a_traceback(
    worker: WorkerServer,
) -> None:
    """Before: an unhandled RecursionError from copy.deepcopy. The probe's 1000 levels
    where the SDK's JSON parser takes them (Python 3.12, the image's: 1200 passed, 2000
    did not); 900 on Python 3.11, whose parser stops at 990 levels (HTTP 400)."""
    workflow = workflows.batch(count=1, size=8)
    workflow["1"]["inputs"]["color"] = nested(1000 if sys.version_info >= (3, 12) else 900)
    body = worker.runsync({"workflow": workflow})
    assert body["status"] == "FAILED"
    assert body["error"].startswith(
        "Workflow validation failed: Node 1 (EmptyImage) input 'color': the value is nested "
        "more than 64 levels deep"
    )
    assert "RecursionError" not in worker.log()


def test_a_cycle_and_a_missing_link_are_named(worker: WorkerServer) -> None:
    workflow = workflows.batch(count=1, size=8)
    workflow["3"] = {"class_type": "ImageInvert", "inputs": {"image": ["4", 0]}}
    workflow["4"] = {"class_type": "ImageInvert", "inputs": {"image": ["3", 0]}}
    workflow["5"] = {"class_type": "SaveImage", "inputs": {"images": ["99", 0]}}
    body = worker.runsync({"workflow": workflow})
    assert body["status"] == "FAILED"
    assert "Node 5 (SaveImage) input 'images': links to node 99" in body["error"]
    assert "Nodes 3 (ImageInvert), 4 (ImageInvert) form a cycle" in body["error"]


def test_nodes_that_open_raw_paths_or_urls_are_refused_by_name(worker: WorkerServer) -> None:
    """Pack nodes that open any path or URL (another job's output folder, listed whole;
    cloud metadata through FFmpeg) or save into any folder: each named, in one answer."""
    workflow = workflows.batch(count=1, size=8)
    workflow["3"] = {
        "class_type": "VHS_LoadVideoPath",
        "inputs": {"video": "http://169.254.169.254/latest/meta-data/"},
    }
    workflow["4"] = {
        "class_type": "LoadImagesFromFolderKJ",
        "inputs": {"folder": ["9", 0], "include_subfolders": True},  # a wired value too
    }
    workflow["5"] = {
        "class_type": "SaveImageKJ",
        "inputs": {"images": ["1", 0], "output_folder": "/tmp", "filename_prefix": "x"},
    }
    workflow["6"] = {
        "class_type": "SaveStringKJ",
        "inputs": {"string": "ok", "output_folder": "output", "filename_prefix": "x"},
    }
    body = worker.runsync({"workflow": workflow})
    assert body["status"] == "FAILED", body
    error = body["error"]
    assert "Node 3 (VHS_LoadVideoPath) input 'video': this node opens any path or URL" in error
    assert "load it with VHS_LoadVideo" in error
    assert "Node 4 (LoadImagesFromFolderKJ) input 'folder'" in error
    assert "Node 5 (SaveImageKJ) input 'output_folder': '/tmp' would save outside" in error
    assert "Node 6" not in error  # its default folder goes through ComfyUI's own saving
