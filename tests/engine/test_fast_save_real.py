"""SaveImage's PNG writers on the real engine.

``PNG_ENCODER=fast`` (the default): ComfyUI's own SaveImage, its files written by
``engine.png_writer``, hold the pixels and metadata of the files ComfyUI writes itself
(``PNG_ENCODER=pillow``). ``pillow``: the issue's case, after the helper processes of
``engine.runtime.fast_save`` died, the next batch job failed with ``BrokenPipeError``.
Here they are killed for real between two batch jobs: the second job is answered whole,
byte for byte what the first one got (same pixels, same embedded workflow), and the next
batch runs on fresh helpers. And with either writer, the engine does not wait for a run's
encodes.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from engine.runtime import JobSpec, fast_save
from engine.runtime.comfy import ComfyRuntime
from engine.runtime.pending_files import PendingFiles
from engine.settings import Settings
from engine.worker import Worker
from tests import workflows
from tests.engine.support import ENGINE_MARKS
from tests.unit.test_fast_save import GatedPool, encoder, unread_bytes
from tests.unit.test_pipeline import wait_until

pytestmark = ENGINE_MARKS


@pytest.fixture
def worker(runtime: ComfyRuntime) -> Worker:
    return Worker(Settings(work_dir=runtime.directories.input.parent), runtime)


def helper_pids() -> list[int]:
    pool = fast_save._pool
    assert pool is not None, "the batch was not encoded by helper processes"
    return [encoder.process.pid for encoder in pool._idle]


def answer(worker: Worker, job_id: str) -> list[tuple[str, Any]]:
    body = worker.handle({"id": job_id, "input": {"workflow": workflows.batch(4, size=96)}})
    assert body.get("errors") == [], body
    return [(item["filename"], item["data"]) for item in body["images"]]


@pytest.fixture
def pillow() -> Iterator[None]:
    with encoder("pillow"):
        yield


def test_killed_encoder_helpers_do_not_fail_the_next_batch_job(
    worker: Worker, pillow: None
) -> None:
    first = answer(worker, "png-1")
    assert len(first) == 4
    killed = helper_pids()
    assert killed
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    for pid in killed:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)

    assert answer(worker, "png-2") == first
    assert answer(worker, "png-3") == first
    alive = helper_pids()
    assert alive and not set(alive) & set(killed)


def test_a_frozen_encoder_helper_costs_only_the_cancelled_job(worker: Worker, pillow: None) -> None:
    """Helpers stopped (SIGSTOP) between two batch jobs: the second job's encode sits in a
    frozen helper's pipe (the cue) and the job is cancelled. It answers as cancelled (not
    ``worker_stuck``), the frozen helpers are ended, and the next job is answered whole on
    fresh helpers, byte for byte what the first got."""
    first = answer(worker, "png-1")
    pool = fast_save._pool
    assert pool is not None
    frozen = list(pool._idle)
    for helper in frozen:
        os.kill(helper.process.pid, signal.SIGSTOP)
    answers: list[dict[str, Any]] = []
    job = {"id": "png-frozen", "input": {"workflow": workflows.batch(4, size=96)}}
    thread = threading.Thread(target=lambda: answers.append(worker.handle(job)))
    try:
        thread.start()
        wait_until(lambda: any(unread_bytes(helper) > 0 for helper in frozen))
        worker.cancel("png-frozen")
        thread.join(60)
    finally:
        for helper in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(helper.process.pid, signal.SIGCONT)
    (body,) = answers
    assert body["code"] == "execution_interrupted", body
    assert all(helper.process.poll() is not None for helper in frozen)
    assert answer(worker, "png-3") == first
    alive = helper_pids()
    assert alive and not set(alive) & {helper.process.pid for helper in frozen}


@pytest.mark.parametrize("name", ["fast", "pillow"])
def test_during_a_run_the_engine_does_not_wait_for_the_png_encodes(
    runtime: ComfyRuntime, monkeypatch: pytest.MonkeyPatch, prefix: str, name: str
) -> None:
    """ComfyUI's own SaveImage, one image: the run returns while its encode is still held;
    the file's name is taken, and the file is a whole PNG once the pending files are
    waited for (what the worker does after giving the engine back)."""
    if name == "fast":
        pool = GatedPool(fast_save._write_fast)
        monkeypatch.setattr(fast_save, "_shared_fast", lambda: pool)
    else:
        pool = GatedPool()
        monkeypatch.setattr(fast_save, "_shared_pool", lambda: pool)
    monkeypatch.setattr(fast_save, "_fast", name == "fast")
    workflow = workflows.batch(1, size=48)
    workflow["2"]["inputs"]["filename_prefix"] = f"{prefix}/handoff"
    pending = PendingFiles()
    result = runtime.run(JobSpec(prompt_id="handoff", workflow=workflow, pending_files=pending))
    (item,) = result.outputs["2"]["images"]
    path = runtime.directories.output / item["subfolder"] / item["filename"]
    try:
        assert pool.submitted == 1 and len(pending) == 1
        assert path.stat().st_size == 0  # the run is over; its PNG is not written yet
        pool.gate.set()
        assert pending.wait() == []
        with Image.open(path) as image:
            assert image.size == (48, 48)
    finally:
        pool.gate.set()
        path.unlink(missing_ok=True)


def _example_b64() -> str:
    example = Path(__file__).resolve().parents[2] / "examples" / "example.png"
    return base64.b64encode(example.read_bytes()).decode()


def _files(body: dict[str, Any]) -> list[bytes]:
    assert body.get("errors") == [], body
    return [base64.b64decode(item["data"].partition(",")[2]) for item in body["images"]]


def _decoded(files: list[bytes]) -> list[tuple[str, tuple[int, int], bytes, dict[str, str]]]:
    decoded = []
    for data in files:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            decoded.append((image.mode, image.size, image.tobytes(), dict(image.text)))
    return decoded


def test_fast_files_hold_the_pixels_and_metadata_of_comfyuis_own(worker: Worker) -> None:
    """A photo through ComfyUI's SaveImage, a batch of 3 and one alone, with the prompt
    embedded: the fast writer's files decode to what ComfyUI's own files decode to."""
    for count in (3, 1):
        workflow: dict[str, Any] = {
            "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
            "2": {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": count}},
            "3": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
            "4": {
                "class_type": "SaveImage",
                "inputs": {"images": ["3", 0], "filename_prefix": "p"},
            },
        }
        job = {"workflow": workflow, "images": [{"name": "example.png", "image": _example_b64()}]}
        with encoder("pillow"):
            comfyuis = _files(worker.handle({"id": f"png-pillow-{count}", "input": job}))
        fast = _files(worker.handle({"id": f"png-fast-{count}", "input": job}))
        assert len(fast) == count
        assert not set(fast) & set(comfyuis), "the fast writer wrote these, not Pillow"
        assert _decoded(fast) == _decoded(comfyuis)
        assert all("prompt" in text for *_, text in _decoded(fast))
