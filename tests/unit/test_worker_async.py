"""Worker.handle_async: the event loop waits for the job on its lane (handler.py's path).

The same answers as Worker.handle; what differs is who waits, so these tests hold on
what the loop must still do: serve other coroutines while a job waits for a place,
interrupt at the limit, and, when its own task is cancelled, stop the job, log its end
and put the worker out of service if the job will not stop. Every wait is on an event;
the bounds only keep a broken worker from hanging the suite.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from typing import Any

import pytest

from engine.settings import Settings
from engine.worker import Worker
from tests import workflows
from tests.fake_runtime import FakeRuntime
from tests.unit.test_worker import make_worker

_HANG_S = 10.0


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, _HANG_S * 3))


def test_answers_are_those_of_handle(settings: Settings) -> None:
    worker = make_worker(settings)
    jobs = [
        {"id": "ok", "input": {"workflow": workflows.batch(2)}},
        {"id": "bad", "input": {"workflow": {"1": {"class_type": "NoSuchNode", "inputs": {}}}}},
        {"id": "garbled", "input": "[1]"},
    ]
    for job in jobs:
        by_thread = worker.handle(job)
        by_loop = run(worker.handle_async(job))
        by_thread.pop("stats", None), by_loop.pop("stats", None)
        for item in (*by_thread.get("images", ()), *by_loop.get("images", ())):
            item.pop("data")  # the same bytes, but each run writes its own files
        assert by_loop == by_thread, job["id"]


def test_a_job_waiting_for_a_place_leaves_the_loop_free(settings: Settings) -> None:
    """One job at a time: B waits for A's place on a thread of the loop's, not on the loop,
    so a third coroutine runs meanwhile; B runs once A ends."""
    worker = make_worker(dataclasses.replace(settings, max_concurrent_jobs=1))
    runtime = worker.runtime
    assert isinstance(runtime, FakeRuntime)

    async def scenario() -> tuple[dict[str, Any], dict[str, Any], bool]:
        a = asyncio.create_task(
            worker.handle_async({"id": "a", "input": {"workflow": workflows.hangs()}})
        )
        assert await asyncio.to_thread(runtime.hanging.wait, _HANG_S)
        b = asyncio.create_task(
            worker.handle_async({"id": "b", "input": {"workflow": workflows.batch(1)}})
        )
        while worker._pipeline.waiting == 0:  # B asked for a place (admission has no event)
            await asyncio.sleep(0.005)
        served = await asyncio.wait_for(asyncio.sleep(0, result=True), _HANG_S)
        b_waited = not b.done()
        runtime.release.set()
        return await a, await b, served and b_waited

    first, second, loop_was_free = run(scenario())
    assert loop_was_free
    assert first["errors"] == [] and len(first["images"]) == 1, first
    assert second["errors"] == [] and len(second["images"]) == 1, second


def test_past_its_limit_a_job_is_interrupted_and_answered(tmp_path: Any) -> None:
    worker = make_worker(Settings(work_dir=tmp_path, job_timeout_s=0.3))
    body = run(worker.handle_async({"id": "slow", "input": {"workflow": workflows.sleeps(30)}}))
    assert body["code"] == "job_timeout" and "JOB_TIMEOUT_S=0.3" in body["error"], body
    after = run(worker.handle_async({"id": "next", "input": {"workflow": workflows.batch(1)}}))
    assert len(after["images"]) == 1


def test_a_cancelled_task_stops_its_job_and_the_end_is_logged(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    worker = make_worker(settings)
    runtime = worker.runtime
    assert isinstance(runtime, FakeRuntime)
    started = threading.Event()
    runtime_run = runtime.run

    def run_started(job: Any) -> Any:
        started.set()
        return runtime_run(job)

    runtime.run = run_started  # type: ignore[method-assign]

    async def scenario() -> None:
        task = asyncio.create_task(
            worker.handle_async({"id": "gone", "input": {"workflow": workflows.sleeps(30)}})
        )
        assert await asyncio.to_thread(started.wait, _HANG_S)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with caplog.at_level(logging.WARNING, logger="engine.worker"):
        run(scenario())
        assert worker._pipeline.wait_idle(_HANG_S)  # the job stopped and left its place
    lines = [r.getMessage() for r in caplog.records]
    # "job cancelled while running the workflow; stopping it" comes only when the watchdog
    # finds the job still running; the job may have stopped on its cancel first. Its end
    # is logged either way (asyncio.run waits for the executor that logs it).
    assert any(m.startswith("job failed in") and "cancelled" in m for m in lines), lines
    after = worker.handle({"id": "next", "input": {"workflow": workflows.batch(1)}})
    assert len(after["images"]) == 1


def test_a_cancelled_task_whose_job_will_not_stop_puts_the_worker_out_of_service(
    tmp_path: Any,
) -> None:
    worker = make_worker(Settings(work_dir=tmp_path, job_stop_grace_s=0.2))
    runtime = worker.runtime
    assert isinstance(runtime, FakeRuntime)

    async def scenario() -> None:
        task = asyncio.create_task(
            worker.handle_async({"id": "deaf", "input": {"workflow": workflows.hangs()}})
        )
        assert await asyncio.to_thread(runtime.hanging.wait, _HANG_S)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        run(scenario())
        later = out_of_service(worker)
        assert later["code"] == "worker_stuck" and later["refresh_worker"] is True, later
        assert "job deaf was cancelled while running the workflow" in later["message"]
    finally:
        runtime.release.set()  # let the abandoned lane end with the test


def out_of_service(worker: Worker) -> dict[str, Any]:
    """The answer to a next job once the watchdog has judged the cancelled one (its
    grace runs on a thread of its own: polled within the hang bound)."""
    for _ in range(int(_HANG_S / 0.02)):
        if worker._stuck is not None:
            break
        threading.Event().wait(0.02)
    return worker.handle({"id": "later", "input": {"workflow": workflows.batch(1)}})
