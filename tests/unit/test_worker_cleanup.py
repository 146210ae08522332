"""A job's files after its answer: with ``clean_up_after`` (what ``handler.py`` passes),
they are removed once the caller says the answer has gone on, and the job keeps its
place until then; without it, before ``handle`` returns.

Every step is driven by events; the bounds on the waits only keep a broken worker from
hanging the suite.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import engine.answered
from engine.settings import Settings
from engine.worker import Worker
from tests import workflows
from tests.fake_runtime import FakeRuntime
from tests.unit.test_worker import png_b64

_HANG_S = 10.0


def make_worker(settings: Settings, jobs: int = 2) -> Worker:
    worker = Worker(dataclasses.replace(settings, max_concurrent_jobs=jobs), FakeRuntime(settings))
    worker.boot()
    return worker


def job(job_id: str, red: int = 10) -> dict[str, Any]:
    return {
        "id": job_id,
        "input": {
            "workflow": workflows.invert("x.png"),
            "images": [{"name": "x.png", "image": png_b64((red, 20, 30))}],
        },
    }


def files_of(worker: Worker) -> list[Path]:
    return sorted(p for p in Path(worker.settings.work_dir).rglob("*") if p.is_file())


def test_the_files_go_once_the_caller_has_sent_the_answer(settings: Settings) -> None:
    worker = make_worker(settings)
    sent = threading.Event()
    body = worker.handle(job("a"), clean_up_after=sent)
    assert body["errors"] == [] and len(body["images"]) == 1, body
    left = {p.suffix for p in files_of(worker)}
    assert left == {".png"} and len(files_of(worker)) == 2  # its input and its output
    assert worker._pipeline.in_flight == 1  # its place is held until they go
    sent.set()
    assert worker._pipeline.wait_idle(_HANG_S)
    assert files_of(worker) == []


def test_a_failed_jobs_files_wait_for_the_answer_too(settings: Settings) -> None:
    worker = make_worker(settings)
    failing = job("a")
    failing["input"]["workflow"] = workflows.raises("node failed")
    failing["input"]["workflow"]["9"] = {
        "class_type": "LoadImage",
        "inputs": {"image": "x.png"},
    }
    sent = threading.Event()
    body = worker.handle(failing, clean_up_after=sent)
    assert "node failed" in body["error"], body
    assert files_of(worker) != []
    sent.set()
    assert worker._pipeline.wait_idle(_HANG_S)
    assert files_of(worker) == []


def test_without_the_event_the_files_are_gone_when_handle_returns(settings: Settings) -> None:
    worker = make_worker(settings)
    body = worker.handle(job("a"))
    assert body["errors"] == [], body
    assert files_of(worker) == []
    assert worker._pipeline.in_flight == 0


def test_close_removes_the_files_the_callers_never_released(settings: Settings) -> None:
    """The process is about to exit (handler.py's atexit): answered jobs' files go now,
    not at the next boot's sweep."""
    worker = make_worker(settings)
    for red, job_id in enumerate(("a", "b")):
        worker.handle(job(job_id, red), clean_up_after=threading.Event())
    assert len(files_of(worker)) == 4
    assert worker.close(_HANG_S)
    assert files_of(worker) == []
    # A job answered after close() does not wait for its caller.
    worker.handle(job("c"), clean_up_after=threading.Event())
    assert worker._pipeline.wait_idle(_HANG_S)
    assert files_of(worker) == []


def test_a_caller_that_never_sends_the_answer_on_still_loses_the_files(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine.answered, "CLEANUP_HOLD_S", 0.0)
    worker = make_worker(settings)
    worker.handle(job("a"), clean_up_after=threading.Event())
    assert worker._pipeline.wait_idle(_HANG_S)
    assert files_of(worker) == []


def test_a_cleanup_that_fails_is_logged_and_frees_the_place(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    worker = make_worker(settings, jobs=1)

    def broken(*args: Any) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(worker._files, "remove", broken)
    sent = threading.Event()
    sent.set()
    assert worker.handle(job("a"), clean_up_after=sent)["errors"] == []
    assert worker._pipeline.wait_idle(_HANG_S)
    assert "removing a finished job's files failed" in caplog.text
    monkeypatch.undo()
    assert worker.handle(job("b"))["errors"] == []  # the place is free: the next job runs


def test_close_does_not_wait_for_a_job_still_running(settings: Settings) -> None:
    """At exit only the answered jobs' files are waited for: a run still going is not."""
    worker = make_worker(settings)
    runtime = worker.runtime
    assert isinstance(runtime, FakeRuntime)
    answers: list[dict[str, Any]] = []
    running = threading.Thread(
        target=lambda: answers.append(
            worker.handle(
                {"id": "r", "input": {"workflow": workflows.hangs()}},
                clean_up_after=threading.Event(),
            )
        ),
        daemon=True,
    )
    running.start()
    try:
        assert runtime.hanging.wait(_HANG_S)
        assert worker.close(timeout_s=0.0)  # nothing answered is left: no wait
    finally:
        runtime.release.set()
    running.join(_HANG_S)
    assert not running.is_alive() and len(answers) == 1
    assert worker._pipeline.wait_idle(_HANG_S)
    assert files_of(worker) == []  # answered after close(): its files went at once


class _SeesFiles(FakeRuntime):
    """Notes, at the start of each run, every file under the worker's folder."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.seen: dict[str, list[Path]] = {}

    def run(self, job: Any) -> Any:
        root = self._dirs.input.parent
        self.seen[job.prompt_id] = sorted(p for p in root.rglob("*") if p.is_file())
        return super().run(job)


def test_with_one_job_at_a_time_a_run_shares_the_worker_with_no_other_jobs_files(
    settings: Settings,
) -> None:
    """MAX_CONCURRENT_JOBS=1: the next job is admitted, and its inputs stored, only once
    the last one's files are gone; a pack node that lists folders sees no other job's."""
    settings = dataclasses.replace(settings, max_concurrent_jobs=1)
    runtime = _SeesFiles(settings)
    worker = Worker(settings, runtime)
    worker.boot()
    sent = threading.Event()
    assert worker.handle(job("a", red=10), clean_up_after=sent)["errors"] == []
    second: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: second.update(worker.handle(job("b", red=99))))
    thread.start()
    try:
        assert worker_waits(worker), "job b was admitted while job a's files were still there"
        assert len(files_of(worker)) == 2  # a's input and output; nothing of b's yet
    finally:
        sent.set()
        thread.join(_HANG_S)
    assert second["errors"] == [] and len(second["images"]) == 1, second
    _, b_run = runtime.seen.values()
    assert [p.suffix for p in b_run] == [".png"] and "input" in b_run[0].parts  # b's own input


def worker_waits(worker: Worker) -> bool:
    """Whether a job is waiting for admission within the hang bound (polled: admission
    has no event of its own)."""
    for _ in range(int(_HANG_S / 0.01)):
        if worker._pipeline.waiting == 1:
            return True
        time.sleep(0.01)
    return False
