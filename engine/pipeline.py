"""How jobs share one worker: a few in flight at once, one engine, runs in arrival order.

RunPod hands a worker up to ``MAX_CONCURRENT_JOBS`` jobs at once (the runpod SDK's
``concurrency_modifier``); the SDK's local API server hands it every request as it comes.
:class:`JobPipeline` admits at most that many, in the order they arrived (the others
wait, each only while its deadline holds), and gives each one a *lane*: a long-lived
thread of its own for its phases. ComfyUI runs one prompt at a time, so a job takes the
*engine's turn* for its run alone, and the turns go in the order the jobs were admitted;
a job that fails before its run gives its place up. One job's downloads, input checks,
output reading, conversion and delivery thus overlap another's run, and the engine never
waits on them.

With one job at a time the only lane is the runtime's own thread (ComfyUI's engine
thread): a job runs there whole, as it did before jobs overlapped, with no hand-over.
With more, a job admitted while no other is in flight may run there too
(:meth:`JobPipeline.try_admit`'s ``alone_on_engine``): its run then needs no hand-over to
the engine thread and back, and it still holds a lane of its own, where the end of its
job goes (the wait for its answer to be sent, the removal of its files). The worker asks
for it only when what follows the run is bounded local work: a job that arrives meanwhile
runs after it, as it would anyway, and waits at most for that work.

ComfyUI's interrupt is global: :meth:`JobPipeline.interrupt` interrupts for a job only
while that job holds the engine, so a cancel or a limit that reaches a job in any other
phase never stops another job's run.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from engine.deadline import Deadline, JobThread


@dataclass(eq=False)
class Ticket:
    """One admitted job's place: its number in arrival order, its lane, and the thread
    its phases run on (its lane, or the engine thread for a job admitted alone)."""

    number: int
    lane: JobThread
    runs_on: JobThread


class JobPipeline:
    """Admission of jobs, their lanes, and the engine's turn (thread-safe)."""

    def __init__(self, size: int, engine_thread: JobThread) -> None:
        if size < 1:
            raise ValueError(f"a worker holds at least one job at a time, got {size}")
        self.size = size
        self._engine_thread = engine_thread
        self._changed = threading.Condition()
        # One job at a time: the engine thread itself (no hand-over for the run).
        self._lanes: list[JobThread] = (
            [engine_thread]
            if size == 1
            else [JobThread(f"job-lane-{n}") for n in range(size, 0, -1)]
        )
        self._arrivals: deque[object] = deque()  # jobs waiting to be admitted, in order
        self._next_number = 0
        self._runs: deque[Ticket] = deque()  # admitted jobs that have not run yet, in order
        self._engine: Ticket | None = None  # the job whose run holds the engine
        self._stopped = False

    @property
    def in_flight(self) -> int:
        """Jobs admitted and not finished."""
        with self._changed:
            return self._busy_lanes()

    @property
    def waiting(self) -> int:
        """Jobs waiting to be admitted."""
        with self._changed:
            return len(self._arrivals)

    def admit(
        self,
        deadline: Deadline,
        on_wait: Callable[[int], None] | None = None,
        *,
        alone_on_engine: bool = False,
    ) -> Ticket | None:
        """Wait for a free lane, in arrival order, and take it.

        ``on_wait`` is told, once, how many jobs are in flight when the job has to wait.
        None when the job must stop first (its limit passed, it was cancelled) or the
        pipeline was stopped (:meth:`stop`). ``alone_on_engine``: as for :meth:`try_admit`.
        """
        arrival = object()
        with deadline.on_cancel(self._wake), self._changed:
            self._arrivals.append(arrival)
            told = on_wait is None
            try:
                while self._arrivals[0] is not arrival or not self._lanes:
                    if self._stopped or deadline.expired():
                        return None
                    if not told and on_wait is not None:
                        on_wait(self._busy_lanes())
                        told = True
                    self._changed.wait(deadline.remaining())
                if self._stopped or deadline.expired():
                    return None
                return self._take_lane(alone_on_engine)
            finally:
                self._arrivals.remove(arrival)
                self._changed.notify_all()  # the next in line may go now

    def try_admit(self, *, alone_on_engine: bool = False) -> Ticket | None:
        """A place at once, when no job waits for one and a lane is free; None when the
        job would have to wait (then :meth:`admit`, which waits in arrival order).

        ``alone_on_engine``: if no other job is in flight, the job runs on the engine
        thread (``Ticket.runs_on``), keeping its lane for the end of its job.
        """
        with self._changed:
            if self._stopped or self._arrivals or not self._lanes:
                return None
            return self._take_lane(alone_on_engine)

    def _take_lane(self, alone_on_engine: bool) -> Ticket:
        alone = alone_on_engine and self._busy_lanes() == 0
        lane = self._lanes.pop()
        ticket = Ticket(self._next_number, lane, self._engine_thread if alone else lane)
        self._next_number += 1
        self._runs.append(ticket)
        return ticket

    def would_wait(self, ticket: Ticket) -> bool:
        """Whether :meth:`take_engine` would wait now: another job's run holds the engine,
        or a job admitted before this one has yet to run."""
        with self._changed:
            return self._engine is not None or (bool(self._runs) and self._runs[0] is not ticket)

    def take_engine(self, ticket: Ticket, deadline: Deadline) -> bool:
        """Wait until every job admitted before this one has run or left, and the engine
        is free; take it (True). False when the job must stop first, or the pipeline
        was stopped."""
        with deadline.on_cancel(self._wake), self._changed:
            while self._engine is not None or not self._runs or self._runs[0] is not ticket:
                if self._stopped or deadline.expired() or ticket not in self._runs:
                    return False
                self._changed.wait(deadline.remaining())
            if self._stopped or deadline.expired():
                return False
            self._runs.popleft()
            self._engine = ticket
            return True

    def give_engine_back(self, ticket: Ticket) -> None:
        """End the job's run: the next job in order may take the engine."""
        with self._changed:
            if self._engine is ticket:
                self._engine = None
                self._changed.notify_all()

    def interrupt(self, ticket: Ticket, interrupt: Callable[[], None]) -> bool:
        """Call ``interrupt`` (ComfyUI's, global) only if ``ticket`` holds the engine.

        Called under the lock, so the turn cannot pass to the next job in between: an
        interrupt meant for one job never lands in another's run (and a flag left set
        after a run ended is cleared when the next prompt starts, by ComfyUI itself).
        """
        with self._changed:
            if self._engine is not ticket:
                return False
            interrupt()
            return True

    def finish(self, ticket: Ticket, when_idle: Callable[[], None]) -> None:
        """The job ended (however): free its place and lane.

        ``when_idle`` runs when no other job is in flight, under the lock, so no job is
        admitted while it runs: the moment for cleaning up what jobs share (ComfyUI's
        temp folder). With one job at a time that is after every job.
        """
        with self._changed:
            if ticket in self._runs:
                self._runs.remove(ticket)
            if self._engine is ticket:
                self._engine = None
            self._lanes.append(ticket.lane)
            try:
                if self._busy_lanes() == 0:
                    when_idle()
            finally:
                self._changed.notify_all()

    def wait_idle(self, timeout_s: float | None) -> bool:
        """Wait until no job is in flight (True), or ``timeout_s`` passed (False)."""
        with self._changed:
            return self._changed.wait_for(lambda: self._busy_lanes() == 0, timeout_s)

    def stop(self) -> None:
        """Refuse every job from now on; those waiting stop waiting (a stuck worker)."""
        with self._changed:
            self._stopped = True
            self._changed.notify_all()

    def _busy_lanes(self) -> int:
        """Jobs in flight: each admitted one holds a lane until it finishes (under the lock)."""
        return self.size - len(self._lanes)

    def _wake(self) -> None:
        with self._changed:
            self._changed.notify_all()
