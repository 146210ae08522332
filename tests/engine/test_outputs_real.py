"""A job's outputs stay in its own folder on the real engine, and no job reads another's.

The issue's case: ``filename_prefix: "../leak"`` wrote outside the job's folder, the file
stayed after the job, and a later job's ``LoadImage`` of ``leak_00001_.png [output]`` got
its pixels. Here a literal and a wired (PrimitiveString) prefix, and every name a loader
could use for another job's file: ``[output]``, ``[temp]``, an absolute path, ``..``.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from engine.runtime.comfy import ComfyRuntime
from engine.settings import Settings
from engine.worker import Worker
from tests import workflows
from tests.engine.support import ENGINE_MARKS

pytestmark = ENGINE_MARKS


@pytest.fixture
def worker(runtime: ComfyRuntime) -> Worker:
    settings = Settings(work_dir=runtime.directories.input.parent)
    return Worker(settings, runtime)


def _wired_prefix(prefix: str) -> dict[str, Any]:
    """EmptyImage -> SaveImage whose prefix comes from a PrimitiveString node."""
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 0x00FF00},
        },
        "2": {"class_type": "PrimitiveString", "inputs": {"value": prefix}},
        "3": {
            "class_type": "SaveImage",
            "inputs": {"images": ["1", 0], "filename_prefix": ["2", 0]},
        },
    }


def _files_outside_job_folders(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and not p.relative_to(root).parts[0].startswith("job-")
    )


def test_a_prefix_out_of_the_job_folder_is_refused_and_nothing_is_left(worker: Worker) -> None:
    output = worker.runtime.directories.output
    # Other engine tests run the runtime directly and leave files outside job folders in
    # the session's shared output folder: only what these two jobs add counts.
    before = set(_files_outside_job_folders(output))
    literal = workflows.invert("x.png", "../leak")
    body = worker.handle({"id": "leak-1", "input": {"workflow": literal}})
    assert body["code"] == "workflow_validation_failed", body
    assert "'../leak' climbs out of the job's output folder" in body["error"]

    body = worker.handle({"id": "leak-2", "input": {"workflow": _wired_prefix("../leak")}})
    assert body["code"] == "execution_failed", body
    assert "climbs out of the job's output folder" in body["error"]
    assert set(_files_outside_job_folders(output)) - before == set()
    assert not list(output.parent.rglob("leak*"))


def test_a_second_job_cannot_read_the_first_jobs_output(worker: Worker) -> None:
    """Job 1 saves under a wired prefix ``leak``: the file is in its own folder, delivered
    as ``leak_00001_.png`` and gone with the job. Job 2 names it ``[output]``: refused.
    A file in another job's folder (as while that job runs) is not found by its absolute
    path, by ``..`` from the input folder, or as ``[output]``/``[temp]``."""
    dirs = worker.runtime.directories
    first = worker.handle({"id": "first", "input": {"workflow": _wired_prefix("leak")}})
    assert first.get("errors") == [], first
    (item,) = first["images"]
    assert (item["filename"], item.get("subfolder", "")) == ("leak_00001_.png", "")
    assert not list(dirs.output.parent.rglob("leak_*"))

    body = worker.handle(
        {"id": "second", "input": {"workflow": workflows.invert("leak_00001_.png [output]")}}
    )
    assert body["code"] == "workflow_validation_failed", body
    assert "names a file of the worker's output folder" in body["error"]

    other = dirs.output / "job-other-0123abcd" / "secret.png"
    other.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), (200, 0, 0)).save(other)
    try:
        for name in (str(other), "../output/job-other-0123abcd/secret.png"):
            body = worker.handle({"id": "third", "input": {"workflow": workflows.invert(name)}})
            assert body.get("code") == "workflow_validation_failed", (name, body)
            assert "not found" in body["error"], body
        for suffix in ("[output]", "[temp]"):
            name = f"job-other-0123abcd/secret.png {suffix}"
            body = worker.handle({"id": "fourth", "input": {"workflow": workflows.invert(name)}})
            assert body.get("code") == "workflow_validation_failed", (name, body)
    finally:
        other.unlink()
        other.parent.rmdir()


def test_a_preview_lives_in_the_jobs_temp_folder(worker: Worker) -> None:
    """A preview's made-up prefix lands in the job's temp folder; the answer names no folder."""
    wf = _wired_prefix("unused")
    wf["3"] = {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}
    del wf["2"]
    body = worker.handle({"id": "preview", "input": {"workflow": wf}})
    assert body.get("errors") == [], body
    (item,) = body["images"]
    assert item.get("subfolder", "") == ""
    raw = base64.b64decode(item["data"].partition(",")[2])
    assert Image.open(io.BytesIO(raw)).size == (16, 16)
