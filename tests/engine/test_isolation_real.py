"""Per-job input folders against real ComfyUI: its loaders accept the job's folder, its
cache still serves a repeat, and a file another job sent (or a killed job left) is not
found."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from engine.runtime.comfy import ComfyRuntime
from engine.settings import Settings
from engine.worker import Worker
from tests import workflows
from tests.engine.support import COMFYUI_PATH, ENGINE_MARKS

pytestmark = ENGINE_MARKS

SPARE = re.compile(r"job-spare-[0-9a-f]{8}")


def png_b64(color: tuple[int, int, int, int]) -> str:
    buf = io.BytesIO()
    Image.new("RGBA", (16, 16), color).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def pixel(item: dict[str, Any]) -> tuple[int, ...]:
    raw = base64.b64decode(item["data"].partition(",")[2])
    value: tuple[int, ...] = Image.open(io.BytesIO(raw)).convert("RGB").getpixel((0, 0))
    return value


@pytest.fixture
def worker(runtime: ComfyRuntime) -> Worker:
    settings = Settings(work_dir=runtime.directories.input.parent)
    return Worker(settings, runtime)


def test_loaders_read_the_jobs_own_folder_and_the_cache_still_serves_a_repeat(
    worker: Worker,
) -> None:
    """LoadImage and LoadImageMask validate and load ``job-in-<digest>/a.png``; a preview of
    the mask is returned; the same job again is served by ComfyUI's cache up to the
    outputs (same file, same folder name, same hash)."""
    wf = workflows.invert("masks/a.png", "iso")
    wf["4"] = {
        "class_type": "LoadImageMask",
        "inputs": {"image": "masks/a.png", "channel": "alpha"},
    }
    wf["5"] = {"class_type": "MaskToImage", "inputs": {"mask": ["4", 0]}}
    wf["6"] = {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}}
    job = {
        "input": {
            "workflow": wf,
            "images": [{"name": "masks/a.png", "image": png_b64((200, 100, 0, 255))}],
        }
    }
    first = worker.handle({"id": "iso-1", **job})
    assert first.get("errors") == [], first
    (saved,) = first["images"]  # previews stay out when something is saved
    assert max(abs(a - b) for a, b in zip(pixel(saved), (55, 155, 255), strict=True)) <= 1
    second = worker.handle({"id": "iso-2", **job})
    assert second.get("errors") == [], second
    assert list(second["stats"]["nodes"]) == ["3", "6"]  # outputs only: the rest cached
    input_dir = worker.runtime.directories.input
    # Gone, or kept empty for a next job (engine.job_files.SpareFolders; other tests'
    # workers share this input folder and may have left theirs).
    left = [p for p in input_dir.glob("job-*") if not SPARE.fullmatch(p.name) or any(p.iterdir())]
    assert left == []


def test_a_file_baked_into_comfyuis_own_input_folder_is_read_by_its_name(
    worker: Worker,
) -> None:
    """worker-comfyui's Dockerfiles bake static inputs with ``COPY input/ /comfyui/input/``:
    ComfyUI's own input folder (it ships ``example.png`` there). Boot links its entries
    into the worker's input folder, so a job that names one without sending it runs."""
    baked = (COMFYUI_PATH or Path("absent")) / "input" / "example.png"
    if not baked.is_file():
        pytest.skip(f"{baked} is not there (ComfyUI ships it)")
    answer = worker.handle(
        {"id": "baked-1", "input": {"workflow": workflows.invert("example.png")}}
    )
    assert answer.get("errors") == [], answer
    (saved,) = answer["images"]
    want = Image.open(baked).convert("RGB").getpixel((0, 0))
    got = pixel(saved)
    assert max(abs(a - (255 - b)) for a, b in zip(got, want, strict=True)) <= 1


def test_a_file_a_killed_job_left_is_swept_at_boot_and_never_loaded(
    worker: Worker, runtime: ComfyRuntime
) -> None:
    """The issue's case on the real engine: a killed job's input is left in the folder
    the worker gives inputs. A later job names it without sending it: it fails saying the
    file is not found, before and after the next boot's sweep; a baked file still loads."""
    input_dir = runtime.directories.input
    leftover = input_dir / "job-in-0123456789abcdef" / "killme.png"
    leftover.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), (255, 0, 0)).save(leftover)
    baked = input_dir / "baked-isolation.png"
    Image.new("RGB", (16, 16), (0, 0, 200)).save(baked)
    try:
        body = worker.handle({"id": "b", "input": {"workflow": workflows.invert("killme.png")}})
        assert body["code"] == "workflow_validation_failed", body
        assert "file 'killme.png' not found" in body["error"]
        worker.boot()  # the runtime is booted already: only the sweep runs
        assert not leftover.parent.exists()
        body = worker.handle({"id": "c", "input": {"workflow": workflows.invert("killme.png")}})
        assert body["code"] == "workflow_validation_failed", body
        body = worker.handle(
            {"id": "d", "input": {"workflow": workflows.invert("baked-isolation.png")}}
        )
        assert body.get("errors") == [], body
        assert (
            max(abs(a - b) for a, b in zip(pixel(body["images"][0]), (255, 255, 55), strict=True))
            <= 1
        )
    finally:
        baked.unlink(missing_ok=True)


def test_a_cancel_stops_the_real_engine_at_the_next_node(worker: Worker) -> None:
    """Cancelled from the first node's progress event (the cue): ComfyUI stops before the
    save, and the job says it was cancelled, not that it timed out."""
    seen: list[str] = []

    def on_progress(job: dict[str, Any], line: str) -> None:
        seen.append(line)
        if len(seen) == 1:
            worker.cancel("cancel-me")

    worker.progress = on_progress
    body = worker.handle({"id": "cancel-me", "input": {"workflow": workflows.batch(1)}})
    assert body["code"] == "execution_interrupted", body
    assert body["message"].startswith("The job was cancelled and stopped"), body
    assert not any("SaveImage" in line for line in seen), seen
    worker.progress = None
    after = worker.handle({"id": "after-cancel", "input": {"workflow": workflows.batch(1)}})
    assert after.get("errors") == [] and len(after["images"]) == 1, after
