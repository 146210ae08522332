"""PNG encoder helpers that die never fail a job, on the real engine.

The issue's case: after the helper processes of ``engine.runtime.fast_save`` died, the
next batch job failed with ``BrokenPipeError``. Here they are killed for real between
two batch jobs: the second job is answered whole, byte for byte what the first one got
(same pixels, same embedded workflow), and the next batch runs on fresh helpers.
"""

from __future__ import annotations

import contextlib
import os
import signal
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
from tests.unit.test_fast_save import GatedPool

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


def test_killed_encoder_helpers_do_not_fail_the_next_batch_job(worker: Worker) -> None:
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


def test_during_a_run_the_engine_does_not_wait_for_the_png_encodes(
    runtime: ComfyRuntime, monkeypatch: pytest.MonkeyPatch, prefix: str
) -> None:
    """ComfyUI's own SaveImage, one image: the run returns while its encode is still held;
    the file's name is taken, and the file is a whole PNG once the pending files are
    waited for (what the worker does after giving the engine back)."""
    pool = GatedPool()
    monkeypatch.setattr(fast_save, "_shared_pool", lambda: pool)
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
