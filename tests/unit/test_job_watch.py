"""engine.job_watch on its own: the watchdog's judgement of an overdue job and what it
logs, the stuck state it refuses later jobs with, cancel, and close.

``Worker`` is left out: the job's flow is a stand-in that takes the engine's turn, says
which phase it is in, and holds until the engine is interrupted (or the test lets it go).
Every step is driven by events and by deadlines whose limit passes when the test says
(:class:`ManualDeadline`); the bounds on the waits only keep a broken watch from hanging
the suite.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from engine.deadline import Deadline
from engine.errors import JobInterruptedError, JobTimeoutError, WorkerStuckError
from engine.job_watch import Arrival, JobWatch
from engine.pipeline import Ticket
from engine.runtime import ProgressEvent
from engine.settings import Settings
from engine.stats import Phase
from tests.fake_runtime import FakeRuntime

_HANG_S = 30.0
_RUNNING = "running the workflow"


@dataclasses.dataclass(frozen=True)
class ManualDeadline(Deadline):
    """A deadline on the test's clock: its limit passes when the test calls
    :meth:`pass_limit`, and whoever waits on the deadline wakes then, as at a real limit
    (a real one wakes them by the timeout it gives their waits)."""

    _passed: threading.Event = dataclasses.field(
        default_factory=threading.Event, init=False, repr=False, compare=False
    )
    _waiting: list[Callable[[], None]] = dataclasses.field(
        default_factory=list, init=False, repr=False, compare=False
    )

    def remaining(self) -> float | None:
        # None until the limit passes: the waits have no timeout and wait to be woken.
        return 0.0 if self._passed.is_set() else None

    @contextlib.contextmanager
    def on_cancel(self, listener: Callable[[], None]) -> Iterator[None]:
        self._waiting.append(listener)
        try:
            with super().on_cancel(listener):
                yield
        finally:
            self._waiting.remove(listener)

    def pass_limit(self) -> None:
        self._passed.set()
        for wake in list(self._waiting):
            wake()


class Engine(FakeRuntime):
    """The fake runtime, counting ComfyUI interrupts; each one lets the held job go
    unless the job is deaf to them."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.interrupts = 0
        self.on_interrupt: Callable[[], None] | None = None

    def interrupt(self) -> None:
        super().interrupt()
        self.interrupts += 1
        if self.on_interrupt is not None:
            self.on_interrupt()


@dataclasses.dataclass
class Host:
    """What the watch reads of its worker."""

    settings: Settings
    runtime: Engine


class HeldJob:
    """A job's flow (``Worker.run``'s place): takes the engine's turn, enters ``phase``,
    then holds until the engine is interrupted (``deaf``: only until :attr:`release`).
    Stopped, it answers as a real job does: with its deadline's error."""

    def __init__(self, watch: JobWatch, engine: Engine, *, deaf: bool = False) -> None:
        self.watch = watch
        self.running = threading.Event()
        self.release = threading.Event()
        self.ran = False
        if not deaf:
            engine.on_interrupt = self.release.set

    def __call__(
        self,
        job_id: str,
        job_input: Any,
        progress: Callable[[ProgressEvent], None],
        deadline: Deadline,
        phase: Phase,
        ticket: Ticket,
        cleanups: list[Callable[[], None]] | None,
    ) -> dict[str, Any]:
        self.ran = True
        assert self.watch.pipeline.take_engine(ticket, deadline)
        try:
            phase.enter(_RUNNING, None)
            self.running.set()
            self.release.wait(_HANG_S)
        finally:
            self.watch.pipeline.give_engine_back(ticket)
        if deadline.expired():
            raise deadline.exceeded(f"while {phase.name}")
        return {"job": job_id}


def make_watch(tmp_path: Path, *, grace_s: float = _HANG_S) -> tuple[JobWatch, Engine]:
    settings = Settings(work_dir=tmp_path, job_stop_grace_s=grace_s, max_concurrent_jobs=2)
    engine = Engine(settings)
    engine.boot()  # its folders: after_job empties the temp one
    return JobWatch(Host(settings, engine)), engine


def arrival(job_id: str, deadline: Deadline) -> Arrival:
    return Arrival(job_id, {}, [], [], deadline, lambda _: None, alone_on_engine=False)


def run_held(
    pool: ThreadPoolExecutor, watch: JobWatch, job: HeldJob, came: Arrival
) -> Future[dict[str, Any]]:
    """``run_within`` on a thread, the job's deadline held where a cancel finds it (as
    ``Worker.handle`` holds it)."""

    def handle() -> dict[str, Any]:
        with watch.deadlines.holding(came.job_id, came.deadline):
            return watch.run_within(came, job)

    return pool.submit(handle)


def watchdog_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "engine.worker"]


@pytest.mark.parametrize(
    ("stop", "line", "error"),
    [
        ("cancel", f"job cancelled while {_RUNNING}; stopping it", JobInterruptedError),
        ("limit", f"job passed its 5 s limit while {_RUNNING}; interrupting it", JobTimeoutError),
    ],
    ids=["cancel", "limit"],
)
def test_an_overdue_job_holding_the_engine_is_interrupted_and_its_own_answer_returned(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    stop: str,
    line: str,
    error: type[Exception],
) -> None:
    """Cancelled, or past its limit, while its run holds the engine: the watchdog says
    which and where, interrupts ComfyUI once, and the job's own answer to the interrupt
    (its error, naming the phase) is what run_within gives; the worker is not stuck."""
    caplog.set_level(logging.INFO, logger="engine.worker")
    watch, engine = make_watch(tmp_path)
    job = HeldJob(watch, engine)
    deadline = ManualDeadline(limit_s=5.0)
    with ThreadPoolExecutor(1) as pool:
        answer = run_held(pool, watch, job, arrival("a", deadline))
        assert job.running.wait(_HANG_S)
        assert watchdog_lines(caplog) == []  # a job within its deadline is left alone
        if stop == "cancel":
            assert watch.cancel("a")
        else:
            deadline.pass_limit()
        with pytest.raises(error) as caught:
            answer.result(_HANG_S)
    assert type(caught.value) is error
    assert str(caught.value).endswith(f"stopped while {_RUNNING}")
    assert engine.interrupts == 1
    assert (logging.WARNING, line) in watchdog_lines(caplog)
    assert not any(level >= logging.ERROR for level, _ in watchdog_lines(caplog))
    assert watch.stuck is None
    watch.refuse_if_stuck()


def test_a_job_that_does_not_stop_within_the_grace_puts_the_watch_out_of_service(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A job deaf to the interrupt (grace 0: no wait at all): run_within gives up on it
    at once with the stuck error, logs that the worker takes no more jobs, stops the
    pipeline (no job is admitted any more), and refuses the next job before running it."""
    watch, engine = make_watch(tmp_path, grace_s=0.0)
    deaf = HeldJob(watch, engine, deaf=True)
    try:
        with ThreadPoolExecutor(1) as pool:
            answer = run_held(pool, watch, deaf, arrival("deaf", ManualDeadline(limit_s=5.0)))
            assert deaf.running.wait(_HANG_S)
            assert watch.cancel("deaf")
            with pytest.raises(WorkerStuckError) as caught:
                answer.result(_HANG_S)
        stuck = caught.value
        assert stuck.message == f"The job was cancelled and stopped while {_RUNNING}"
        assert any("(JOB_STOP_GRACE_S)" in detail for detail in stuck.details)
        assert engine.interrupts == 1  # it was asked to stop, and did not
        assert watch.stuck is not None
        assert watch.stuck.message == (
            f"This worker is out of service: job deaf was cancelled while {_RUNNING} "
            "and did not stop within 0 s"
        )
        assert (
            logging.ERROR,
            f"job did not stop 0 s after its cancel (while {_RUNNING}): this worker takes "
            "no more jobs and asks RunPod for a fresh one",
        ) in watchdog_lines(caplog)
        assert watch.pipeline.try_admit() is None  # the pipeline was stopped

        later = HeldJob(watch, engine)
        with pytest.raises(WorkerStuckError) as refused:
            watch.run_within(arrival("later", ManualDeadline(limit_s=5.0)), later)
        assert refused.value.message == watch.stuck.message
        assert not later.ran
    finally:
        deaf.release.set()  # let the abandoned lane end with the test


def test_refuse_if_stuck_raises_a_new_error_each_time(tmp_path: Path) -> None:
    """Nothing while the worker serves; once stuck, the stuck error's words in a new
    exception per call: one raised again would grow its traceback with every job."""
    watch, _ = make_watch(tmp_path)
    watch.refuse_if_stuck()
    watch.stuck = WorkerStuckError("out of service", ["send it again"])
    raised: list[WorkerStuckError] = []
    for _ in range(2):
        with pytest.raises(WorkerStuckError) as caught:
            watch.refuse_if_stuck()
        raised.append(caught.value)
    first, second = raised
    assert first is not second and watch.stuck not in raised
    assert (first.message, first.details) == (second.message, second.details)
    assert (first.message, first.details) == ("out of service", ["send it again"])


def test_cancel_reaches_the_named_job_or_every_job_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A cancel flips the deadlines held under its job id (the same id may be held twice
    by a local test), or every held one; it says whether it reached any, and logs only
    those that did."""
    watch, _ = make_watch(tmp_path)
    first, again, other = Deadline.start(None), Deadline.start(None), Deadline.start(None)
    with (
        watch.deadlines.holding("a", first),
        watch.deadlines.holding("a", again),
        watch.deadlines.holding("b", other),
    ):
        assert watch.cancel("nobody") is False
        assert watchdog_lines(caplog) == []
        assert watch.cancel("a") is True
        assert (first.cancelled, again.cancelled, other.cancelled) == (True, True, False)
        assert watchdog_lines(caplog) == [(logging.WARNING, "job a cancelled")]
        assert watch.cancel() is True
        assert other.cancelled
        assert watchdog_lines(caplog)[-1] == (logging.WARNING, "job (every job) cancelled")
    assert watch.cancel("a") is False and watch.cancel() is False  # none held any more


def test_close_says_whether_every_answered_jobs_files_went(tmp_path: Path) -> None:
    """close() waits only up to its timeout: False while an answered job's files are
    still being removed, True once they are."""
    watch, _ = make_watch(tmp_path)
    removing, removed = threading.Event(), threading.Event()
    gate = threading.Event()

    def slow_removal() -> None:
        removing.set()
        gate.wait(_HANG_S)
        removed.set()

    def job(*args: Any) -> dict[str, Any]:
        cleanups = args[-1]
        assert cleanups is not None
        cleanups.append(slow_removal)
        return {"job": "a"}

    sent = threading.Event()
    sent.set()  # the caller has sent the answer on: the files go at once
    deadline = Deadline.start(None)
    assert watch.run_within(arrival("a", deadline), job, clean_up_after=sent) == {"job": "a"}
    assert removing.wait(_HANG_S)
    assert watch.close(0.0) is False
    gate.set()
    assert watch.close(_HANG_S) is True
    assert removed.is_set()


def test_a_lone_jobs_end_runs_on_the_engine_thread_when_no_thread_can_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job alone runs on the engine thread and hands its end to its lane, whose thread
    starts on first use; at the interpreter's exit no thread starts (a local test's one
    job, answered just before). Its end then runs where the job ran, so close() (at exit)
    sees its files go."""
    watch, _ = make_watch(tmp_path)
    removed = threading.Event()

    def job(*args: Any) -> dict[str, Any]:
        ticket, cleanups = args[-2], args[-1]
        assert ticket.runs_on is not ticket.lane  # alone: on the engine thread

        def no_thread(fn: Callable[[], object]) -> Future[object]:
            raise RuntimeError("can't create new thread at interpreter shutdown")

        monkeypatch.setattr(ticket.lane, "submit", no_thread)
        cleanups.append(removed.set)
        return {"job": "a"}

    came = Arrival("a", {}, [], [], Deadline.start(None), lambda _: None, alone_on_engine=True)
    assert watch.run_within(came, job, clean_up_after=threading.Event()) == {"job": "a"}
    assert watch.close(_HANG_S) is True
    assert removed.is_set()
