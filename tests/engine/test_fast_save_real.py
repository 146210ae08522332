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

from engine.runtime import fast_save
from engine.runtime.comfy import ComfyRuntime
from engine.settings import Settings
from engine.worker import Worker
from tests import workflows
from tests.engine.support import ENGINE_MARKS

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
