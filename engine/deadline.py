"""One clock for a whole job, and its cancel switch: every phase stops for either.

The worker starts a :class:`Deadline` when a job arrives and hands it to every phase:
the runtime arms ComfyUI's interrupt with what is left of it and checks it at every
node and sampler step, the worker checks it between phases, and the worker's watchdog
(``engine.job_watch``) stops waiting for the job when it passes, whatever the job is doing.

A cancel (RunPod's ``/cancel``, or its stop signal when the endpoint's own execution
timeout passes) lands here too, with :meth:`Deadline.cancel`. It has to: ComfyUI
clears its interrupt flag when a prompt starts, so a cancel that arrived while inputs
were downloading used to be lost and the job ran to its end. Kept on the job's own
deadline, it is seen by every check that follows, in whatever phase; the worker finds a
job's deadline by its id in :class:`JobDeadlines`. Every timeout and cancel error the
user sees is built here, so each names the limit or the cancel, the phase, and what to
change.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from engine.errors import JobInterruptedError, JobTimeoutError

T = TypeVar("T")

log = logging.getLogger(__name__)

_BOUND: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar(
    "job_deadline", default=None
)
"""The deadline of the job the calling thread works for (:meth:`Deadline.bound`)."""


class _CancelSwitch:
    """A job's cancelled state and who to tell when it flips (thread-safe, flips once)."""

    def __init__(self) -> None:
        self.flag = threading.Event()
        self._lock = threading.Lock()
        self._listeners: dict[int, Callable[[], None]] = {}
        self._next = 0

    def flip(self) -> bool:
        """Cancel; False when it was cancelled already. Listeners run here, in order."""
        with self._lock:
            if self.flag.is_set():
                return False
            self.flag.set()
            listeners = list(self._listeners.values())
        for listener in listeners:
            try:
                listener()
            except Exception:  # one listener's failure must not keep the others from hearing
                log.exception("a cancel listener failed")
        return True

    def listen(self, listener: Callable[[], None]) -> int | None:
        """Register ``listener``; None (and nothing registered) when already cancelled."""
        with self._lock:
            if self.flag.is_set():
                return None
            self._next += 1
            self._listeners[self._next] = listener
            return self._next

    def forget(self, key: int) -> None:
        with self._lock:
            self._listeners.pop(key, None)


@dataclass(frozen=True)
class Deadline:
    """When a job must be done by (``limit_s`` None means no limit), and whether it was
    cancelled."""

    limit_s: float | None
    started: float = field(default_factory=time.monotonic)
    _switch: _CancelSwitch = field(
        default_factory=_CancelSwitch, init=False, repr=False, compare=False
    )

    @classmethod
    def start(cls, limit_s: float | None) -> Deadline:
        """A deadline ``limit_s`` seconds from now (None or 0: none)."""
        return cls(limit_s or None)

    def remaining(self) -> float | None:
        """Seconds left (never negative), or None without a limit."""
        if self.limit_s is None:
            return None
        return max(0.0, self.started + self.limit_s - time.monotonic())

    # -- cancel -------------------------------------------------------------------------

    def cancel(self) -> bool:
        """Cancel the job: every later check fails, every :meth:`on_cancel` listener runs
        now. Safe from any thread; False when it was cancelled already."""
        return self._switch.flip()

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._switch.flag.is_set()

    @contextlib.contextmanager
    def on_cancel(self, listener: Callable[[], None]) -> Iterator[None]:
        """Run ``listener`` if the job is cancelled while the block runs (at once if it
        already was); used to interrupt ComfyUI during the run."""
        key = self._switch.listen(listener)
        if key is None:
            listener()
        try:
            yield
        finally:
            if key is not None:
                self._switch.forget(key)

    # -- checks -------------------------------------------------------------------------

    def expired(self) -> bool:
        """Whether the job must stop: its limit passed, or it was cancelled."""
        if self.cancelled:
            return True
        remaining = self.remaining()
        return remaining is not None and remaining <= 0.0

    def check(self, phase: str) -> None:
        """Raise the job's timeout or cancel error if it must stop before ``phase`` starts."""
        if self.expired():
            raise self.exceeded(f"before {phase}")

    def exceeded(self, where: str, *, node_id: str | None = None) -> JobInterruptedError:
        """The error a job gets when it is stopped ``where`` (e.g. 'at node 5 (VAEDecode)').

        A :class:`~engine.errors.JobTimeoutError` naming the limit, or, when the job was
        cancelled, a :class:`~engine.errors.JobInterruptedError` saying so.
        """
        if self.cancelled:
            return JobInterruptedError(
                f"The job was cancelled and stopped {where}",
                [
                    "RunPod cancelled it (/cancel, or the endpoint's execution timeout): "
                    "nothing more runs for it and its files are removed; send it again to "
                    "run it"
                ],
                node_id=node_id,
            )
        limit = f"{self.limit_s or 0:g}"
        return JobTimeoutError(
            f"The job ran longer than its time limit of {limit} s and was stopped {where}",
            [
                f"The limit is JOB_TIMEOUT_S={limit}, for the whole job (inputs, run, outputs "
                "and delivery): raise it, or make the workflow lighter (fewer steps, smaller "
                "images, shorter videos)"
            ],
            node_id=node_id,
        )

    # -- whose thread -------------------------------------------------------------------

    @contextlib.contextmanager
    def bound(self) -> Iterator[None]:
        """Make this the deadline :meth:`current` answers on this thread for the block:
        code deep below the worker that must wait for another thread (a node pack
        imported on the engine thread, ``import_turn``) waits only while it holds."""
        token = _BOUND.set(self)
        try:
            yield
        finally:
            _BOUND.reset(token)

    @staticmethod
    def current() -> Deadline | None:
        """The deadline bound on this thread (:meth:`bound`), or None."""
        return _BOUND.get()

    # -- waiting ------------------------------------------------------------------------

    def wait_for(self, future: Future[T]) -> bool:
        """Wait until ``future`` is done (True), or until the job must stop: the limit
        passed or it was cancelled (False)."""
        wake = threading.Event()
        future.add_done_callback(lambda _: wake.set())
        with self.on_cancel(wake.set):
            wake.wait(self.remaining())
        return future.done()

    async def wait_for_async(self, future: Future[Any]) -> bool:
        """:meth:`wait_for` on an event loop: the loop waits, and no thread blocks for it.

        The future's thread wakes the loop directly (``call_soon_threadsafe``), one thread
        hand-over where a thread waiting in between would add two.
        """
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()

        def set_wake(*_: object) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(wake.set)

        future.add_done_callback(set_wake)
        with self.on_cancel(set_wake), contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), self.remaining())
        return future.done()

    def call(self, fn: Callable[[], T], where: str) -> T:
        """``fn()``'s result, or the cancel error the moment the job is cancelled.

        ``fn`` runs on a thread of its own so that a cancel need not wait for it: a
        download from a server that holds the connection open, say. A cancelled call is
        abandoned, not stopped; it ends on its own bounds (``INPUT_DOWNLOAD_TIMEOUT_S``,
        ``UPLOAD_TIMEOUT_S``) and its result is dropped, so ``fn`` must write nothing the
        job's cleanup would have to find. The time limit is left to ``fn``'s own bounds
        and to the worker's watchdog, as without a cancel.
        """
        self.check(where.removeprefix("while "))
        outcome: Future[T] = Future()

        def target() -> None:
            try:
                outcome.set_result(fn())
            except BaseException as exc:  # handed to the caller, or dropped once abandoned
                outcome.set_exception(exc)

        threading.Thread(target=target, name="job-call", daemon=True).start()
        wake = threading.Event()
        outcome.add_done_callback(lambda _: wake.set())
        with self.on_cancel(wake.set):
            wake.wait()
        if outcome.done():
            return outcome.result()
        raise self.exceeded(where)


class JobTurns:
    """One job at a time. A job waits for its turn only while its deadline holds: it
    stops waiting the moment the limit passes or it is cancelled, whatever the running
    job does.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._busy = False

    def take(self, deadline: Deadline) -> bool:
        """Wait for the turn and take it (True); False when the job must stop first."""

        def wake() -> None:
            with self._changed:
                self._changed.notify_all()

        with deadline.on_cancel(wake), self._changed:
            while self._busy:
                if deadline.expired():
                    return False
                self._changed.wait(deadline.remaining())
            self._busy = True
            return True

    def give_back(self) -> None:
        """End the turn; the next waiting job takes it."""
        with self._changed:
            self._busy = False
            self._changed.notify_all()


class JobThread:
    """One long-lived daemon thread that runs the calls it is given, one after another.

    The worker runs each job on it, so that its watchdog can answer by the deadline
    whatever the job does, without starting a thread per job (0.1-1 ms each on a busy
    machine, measured in docs/benchmarks.md). A call that never returns keeps the thread,
    and later calls would queue behind it: the worker takes no job after one that would
    not stop (``worker_stuck``), so none does. A daemon thread: a stuck call does not hold
    the process's exit.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._calls: queue.SimpleQueue[tuple[Callable[[], object], Future[object]]] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def is_current(self) -> bool:
        """Whether the caller is running on this thread (inside a call it was given)."""
        return self._thread is not None and threading.current_thread() is self._thread

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Queue ``fn``; its future gets its result or whatever it raised."""
        future: Future[T] = Future()
        with self._lock:
            if self._thread is None:  # started on first use: a worker that runs no job has none
                self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
                self._thread.start()
        self._calls.put((fn, future))  # type: ignore[arg-type]  # each future gets its fn's T
        return future

    def _serve(self) -> None:
        while True:
            fn, future = self._calls.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the waiting thread, which decides
                future.set_exception(exc)
            del fn, future  # nothing of a finished job lives on while the thread waits


class JobDeadlines:
    """The deadlines of the jobs a worker holds, by job id: what a cancel flips.

    A job id maps to a list: a local test may send the same id twice at once.
    """

    def __init__(self) -> None:
        self._by_id: dict[str, list[Deadline]] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def holding(self, job_id: str, deadline: Deadline) -> Iterator[None]:
        """Let :meth:`cancel` reach ``deadline`` as job ``job_id`` while the block runs."""
        with self._lock:
            self._by_id.setdefault(job_id, []).append(deadline)
        try:
            yield
        finally:
            with self._lock:
                others = [d for d in self._by_id.get(job_id, []) if d is not deadline]
                if others:
                    self._by_id[job_id] = others
                else:
                    self._by_id.pop(job_id, None)

    def cancel(self, job_id: str | None) -> int:
        """Cancel job ``job_id`` (every held job when None); how many deadlines it reached."""
        with self._lock:
            if job_id is None:
                deadlines = [d for held in self._by_id.values() for d in held]
            else:
                deadlines = list(self._by_id.get(job_id, ()))
        for deadline in deadlines:
            deadline.cancel()
        return len(deadlines)
