"""The watchdog of a worker's jobs: each on its lane, answered by its deadline whatever it does.

:class:`JobWatch` holds what the jobs in flight share besides the engine: the
:class:`~engine.pipeline.JobPipeline` (their places, lanes and the engine's turn), the
deadline of each (:class:`~engine.deadline.JobDeadlines`, what a cancel flips), the
answered jobs whose files are still to go (:class:`~engine.answered.AnsweredJobs`), and
the stuck state of a worker whose job would not stop. ``engine.worker`` gives it each job
as it arrived (:class:`Arrival`) with the function that runs the job's flow
(``Worker.run``), and makes the answer of what comes back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, wait
from typing import Any, Protocol, TypeVar

from engine import logs
from engine.answered import AnsweredJobs, run_cleanups
from engine.deadline import Deadline, JobDeadlines
from engine.errors import WorkerStuckError
from engine.pipeline import JobPipeline, Ticket
from engine.runtime import ProgressEvent, Runtime
from engine.settings import Settings
from engine.stats import Phase

# The worker's logger, not this module's: the watchdog's lines (a job stopped, the
# worker out of service, a job waiting for a place) are the worker's account of the
# job, and operators and tests (caplog on "engine.worker") find them under that name.
log = logging.getLogger("engine.worker")

T = TypeVar("T")

JobRun = Callable[
    [
        str,
        Any,
        Callable[[ProgressEvent], None],
        Deadline,
        Phase,
        Ticket,
        list[Callable[[], None]] | None,
    ],
    dict[str, Any],
]
"""The job's flow on its lane (``Worker.run``): job id, input, progress, deadline, phase,
ticket and the cleanups it leaves to the watch; the job's result."""


class Host(Protocol):
    """What the watch reads of its worker, at each use, not once: the worker's settings
    (``job_stop_grace_s``) and runtime (its interrupt, ``after_job``) may be replaced."""

    @property
    def settings(self) -> Settings: ...

    @property
    def runtime(self) -> Runtime: ...


@dataclasses.dataclass
class Arrival:
    """One job as it arrived: what its watchdog and its answer need."""

    job_id: str
    job_input: Any
    job_secrets: list[str]
    """The request's own secrets (its Comfy.org key): redacted from every log line."""
    secrets: list[str]
    """Those and the worker's: redacted from the response."""
    deadline: Deadline
    progress: Callable[[ProgressEvent], None]
    alone_on_engine: bool
    """Whether the job, admitted while no other is in flight, runs on the engine thread
    (engine/pipeline.py): only when what follows its run is bounded local work."""
    started: float = dataclasses.field(default_factory=time.perf_counter)


def _bound(job_id: str, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` with this thread's log lines bound to the job (a loop's executor)."""
    with logs.bind_job(job_id):
        return fn(*args)


class JobWatch:
    """Runs a worker's jobs on their lanes under their deadlines (thread-safe)."""

    def __init__(self, worker: Host) -> None:
        self._worker = worker
        settings, runtime = worker.settings, worker.runtime
        # Up to MAX_CONCURRENT_JOBS jobs in flight, each on a lane of its own; their runs
        # take ComfyUI one at a time, in arrival order (engine/pipeline.py). A cancelled
        # job's lane finishes (promptly, interrupted) before the lane takes another job.
        self.pipeline = JobPipeline(settings.max_concurrent_jobs, runtime.job_thread)
        # Set when a job's thread would not stop after its deadline: every later job gets
        # this error (and RunPod a request for a fresh worker) instead of waiting on it.
        self.stuck: WorkerStuckError | None = None
        # The deadline of every job in handle(), waiting or running: what cancel() flips.
        self.deadlines = JobDeadlines()
        # Answered jobs whose files are still to go (handle()'s clean_up_after).
        self.tails = AnsweredJobs()

    def close(self, timeout_s: float) -> bool:
        """Let the answered jobs' files go now (``Worker.close``); whether all went."""
        return self.tails.close(timeout_s)

    def cancel(self, job_id: str | None = None) -> bool:
        """Flip job ``job_id``'s deadline (every job's when None) to cancelled
        (``Worker.cancel``); False when no such job is here."""
        reached = self.deadlines.cancel(job_id)
        if reached:
            log.warning("job %s cancelled", job_id or "(every job)")
        return reached > 0

    def run_within(
        self, arrival: Arrival, run: JobRun, clean_up_after: threading.Event | None = None
    ) -> dict[str, Any]:
        """Run the job on its lane and answer by its deadline, whatever it does.

        The lane is what makes the deadline hold: a job stuck anywhere (a child process
        that never execs, an upload that never ends, a node deaf to interrupts) cannot
        hold the answer back. Past the deadline ComfyUI is interrupted and the job gets
        ``job_stop_grace_s`` to unwind; a job that does not is abandoned, and this worker
        takes no further job and asks RunPod for a fresh one (:meth:`_overdue`).
        """
        ticket = self._admit(arrival.deadline, arrival.alone_on_engine)
        outcome, phase = self._start(arrival, run, ticket, clean_up_after)
        # wait_for(), then result(): a JobTimeoutError is also a TimeoutError, the very
        # class Future.result() raises when it gives up, so the two must not share an except.
        if arrival.deadline.wait_for(outcome):
            return outcome.result()
        return self._overdue(arrival, ticket, outcome, phase)

    async def run_within_async(
        self,
        arrival: Arrival,
        run: JobRun,
        clean_up_after: threading.Event | None,
        failed: Callable[[Arrival, Exception], object],
    ) -> dict[str, Any]:
        """:meth:`run_within` with the loop waiting (``Worker.handle_async``).

        The job runs on its lane as with :meth:`run_within`, under the same watchdog;
        what differs is who waits for it: the loop itself, not a thread of the loop's
        executor that waits for the lane (two thread hand-overs fewer per job: 64x64 jobs
        through the SDK's local API server, four alternated runs, 0.99x-1.05x per pair,
        docs/benchmarks.md). A wait for a place, and the grace after a limit, still block
        a thread: the loop's executor's, where they are rare. ``failed`` logs the end of
        a job whose caller stopped waiting (its answer is dropped).
        """
        deadline = arrival.deadline
        self.refuse_if_stuck()
        alone_on_engine = arrival.alone_on_engine
        ticket = None
        if not deadline.expired():
            ticket = self.pipeline.try_admit(alone_on_engine=alone_on_engine)
        if ticket is None:  # the job waits for a place: on a thread, the loop serves on
            ticket = await asyncio.to_thread(
                _bound, arrival.job_id, self._admit, deadline, alone_on_engine
            )
        with logs.bind_job(arrival.job_id):
            outcome, phase = self._start(arrival, run, ticket, clean_up_after)
        try:
            finished = await deadline.wait_for_async(outcome)
        except asyncio.CancelledError:
            # Nobody waits for the answer any more; the watchdog still does its part (the
            # job's end logged, the worker out of service if the job does not stop).
            deadline.cancel()
            loop = asyncio.get_running_loop()
            loop.run_in_executor(
                None, self._watch_unanswered, arrival, ticket, outcome, phase, failed
            )
            raise
        if finished:
            return outcome.result()
        return await asyncio.to_thread(
            _bound, arrival.job_id, self._overdue, arrival, ticket, outcome, phase
        )

    def _watch_unanswered(
        self,
        arrival: Arrival,
        ticket: Ticket,
        outcome: Future[dict[str, Any]],
        phase: Phase,
        failed: Callable[[Arrival, Exception], object],
    ) -> None:
        """The watchdog of a job whose caller was cancelled: as :meth:`run_within`
        would go on after the cancel, with the answer logged and dropped."""
        with logs.job_context(arrival.job_id, arrival.job_secrets):
            try:
                if outcome.done():
                    outcome.result()
                else:
                    self._overdue(arrival, ticket, outcome, phase)
            except Exception as exc:
                failed(arrival, exc)

    def _admit(self, deadline: Deadline, alone_on_engine: bool) -> Ticket:
        """A place among the jobs in flight, in arrival order; a cancel or the limit ends
        the wait with the job's own error."""
        self.refuse_if_stuck()
        ticket = self.pipeline.admit(deadline, _log_wait, alone_on_engine=alone_on_engine)
        if ticket is None:
            self.refuse_if_stuck()
            raise deadline.exceeded("while the job waited for the previous one to finish")
        return ticket

    def _start(
        self,
        arrival: Arrival,
        run: JobRun,
        ticket: Ticket,
        clean_up_after: threading.Event | None,
    ) -> tuple[Future[dict[str, Any]], Phase]:
        """Hand the job to its lane (or the engine thread: ``Ticket.runs_on``); its answer
        comes in the future, its phase is shown in the :class:`Phase` (the watchdog's log
        line and error)."""
        job_id, job_input, progress = arrival.job_id, arrival.job_input, arrival.progress
        deadline = arrival.deadline
        phase = Phase("start")
        # The job's answer: set on its lane once its files are removed and its place is
        # free, or, with ``clean_up_after``, as soon as it is known (the removal follows).
        outcome: Future[dict[str, Any]] = Future()

        def job() -> None:
            cleanups: list[Callable[[], None]] | None = None if clean_up_after is None else []
            answer: Callable[[], None] | None = None
            held: list[Callable[[], None]] | None = None  # the cleanups that wait for the answer
            try:
                # The lane's lines are this job's; what waits for the engine thread on
                # the lane (a pack imported there on first use) waits within its deadline.
                with logs.bind_job(job_id), deadline.bound():
                    try:
                        result = run(job_id, job_input, progress, deadline, phase, ticket, cleanups)
                        answer = functools.partial(outcome.set_result, result)
                    except BaseException as exc:  # the watchdog below hands it on
                        answer = functools.partial(outcome.set_exception, exc)
                    if clean_up_after is not None and cleanups is not None:
                        self.tails.begin()  # before the answer: close() waits for it
                        held = cleanups
                        answer()
                        answer = None
            finally:
                if held is not None and ticket.runs_on is not ticket.lane:
                    # A job alone, on the engine thread: the wait for its answer to be
                    # sent and the removal of its files go to its own lane, so the
                    # engine is free for the next run as soon as the answer is out.
                    try:
                        ticket.lane.submit(functools.partial(end, answer, held))
                    except RuntimeError:
                        # The lane's thread starts on first use, and no thread starts once
                        # the interpreter is exiting: a local test's one job, answered
                        # just before. Its end runs here, so Worker.close (at exit)
                        # still sees its files go.
                        end(answer, held)
                else:
                    end(answer, held)

        def end(answer: Callable[[], None] | None, held: list[Callable[[], None]] | None) -> None:
            """The job's end: its files removed once its answer is sent (``held``), then
            its place freed; ``answer`` is called last unless it is already out."""
            with logs.bind_job(job_id):
                try:
                    if held is not None and clean_up_after is not None:
                        try:
                            self.tails.hold(clean_up_after)
                            run_cleanups(held)
                        finally:
                            self.tails.end()
                finally:
                    try:
                        self.pipeline.finish(ticket, self._worker.runtime.after_job)
                    except Exception as exc:
                        if answer is None:  # the answer is out: only the log can say
                            log.exception("cleaning up after a finished job failed")
                        else:
                            answer = functools.partial(outcome.set_exception, exc)
                    if answer is not None:
                        answer()

        ticket.runs_on.submit(job)
        return outcome, phase

    def _overdue(
        self,
        arrival: Arrival,
        ticket: Ticket,
        outcome: Future[dict[str, Any]],
        phase: Phase,
    ) -> dict[str, Any]:
        """The job's limit passed or it was cancelled before it answered: interrupt it,
        give it ``job_stop_grace_s`` to answer, else declare the worker stuck."""
        job_id, deadline = arrival.job_id, arrival.deadline
        settings = self._worker.settings
        if deadline.cancelled:
            log.warning("job cancelled while %s; stopping it", phase.name)
        else:
            log.warning(
                "job passed its %g s limit while %s; interrupting it", deadline.limit_s, phase.name
            )
        # Only while this job's run holds ComfyUI: its interrupt is global.
        self.pipeline.interrupt(ticket, self._worker.runtime.interrupt)
        if wait([outcome], timeout=settings.job_stop_grace_s).done:
            # Whatever the job makes of the interrupt (most often a JobTimeoutError that
            # names the node) is its answer.
            return outcome.result()
        stuck = deadline.exceeded(f"while {phase.name}")
        why = "was cancelled" if deadline.cancelled else "passed its time limit"
        self.stuck = WorkerStuckError(
            f"This worker is out of service: job {job_id} {why} while "
            f"{phase.name} and did not stop within {settings.job_stop_grace_s:g} s",
            ["RunPod replaces this worker; send the job again and a fresh worker takes it"],
        )
        self.pipeline.stop()  # the jobs waiting for a place or a turn stop waiting
        log.error(
            "job did not stop %g s after its %s (while %s): this worker takes no more "
            "jobs and asks RunPod for a fresh one",
            settings.job_stop_grace_s,
            "cancel" if deadline.cancelled else "limit",
            phase.name,
        )
        raise WorkerStuckError(
            stuck.message,
            [
                *stuck.details,
                f"The job did not stop within {settings.job_stop_grace_s:g} s of the limit "
                "(JOB_STOP_GRACE_S), so RunPod is asked to replace this worker",
            ],
        )

    def refuse_if_stuck(self) -> None:
        """Raise the stuck worker's error once a job would not stop (see :meth:`run_within`)."""
        if self.stuck is not None:
            # A new exception each time: one raised again would grow its traceback per job.
            raise WorkerStuckError(self.stuck.message, self.stuck.details)


def _log_wait(in_flight: int) -> None:
    log.info("job waits for a place: %d job(s) in flight (MAX_CONCURRENT_JOBS)", in_flight)
