"""ComfyUI's callbacks during a job: node times, progress reports, the deadline's interrupt.

Helpers for :mod:`engine.runtime.comfy`, which makes one :class:`EngineEvents` per
worker and points ComfyUI's two hooks at it: the server's event listener
(``executing``, ``execution_success``... as ComfyUI's server would send them over its
WebSocket) and the global progress-bar hook (one call per sampler step). Both run on
the engine thread. Imports nothing of ComfyUI: it reaches the booted modules through
the :class:`~engine.runtime.comfy_boot.Comfy` handle it is given.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.errors import JobInterruptedError, JobTimeoutError, WorkerError
from engine.runtime import JobSpec, ProgressEvent
from engine.runtime.comfy_boot import Comfy

log = logging.getLogger(__name__)

# Events after which no node runs: the last node's time ends there.
_RUN_ENDED = frozenset({"execution_success", "execution_error", "execution_interrupted"})
# After an interrupt, a node that never checks the flag (a long VAE decode) runs
# on; say so in the log every this many seconds while the job waits for it.
_STUCK_WARNING_S = 30.0


@dataclass
class JobState:
    """What the engine thread's callbacks need to know about the running job."""

    job: JobSpec
    prompt: dict[str, Any]
    deadline_hit: threading.Event
    progress_failed: bool = False
    node_seconds: dict[str, float] = field(default_factory=dict)
    running: tuple[str, float] | None = None
    """The node that last started (its display id) and when, by ``perf_counter``."""

    def node_started(self, node_id: str | None) -> None:
        """A node's ``executing`` event, or the run's end (``None``): the node before it ended.

        ComfyUI sends no "node finished" event; a node runs until the next one starts.
        A node that waited on async or lazy inputs starts again later: its spans add up.
        """
        now = time.perf_counter()
        if self.running is not None:
            previous, since = self.running
            self.node_seconds[previous] = self.node_seconds.get(previous, 0.0) + now - since
        self.running = None if node_id is None else (node_id, now)


class EngineEvents:
    """ComfyUI's hooks for the job that runs now (:attr:`current`), on the engine thread."""

    def __init__(self, comfy: Callable[[], Comfy | None]) -> None:
        self._comfy = comfy
        """The booted engine, ``None`` before boot (the step hook is installed during it)."""
        self.current: JobState | None = None

    def interrupt(self) -> None:
        """Stop the running job at the next step or node (ComfyUI's interrupt)."""
        comfy = self._comfy()
        if comfy is not None:
            comfy.model_management.interrupt_current_processing(True)

    def on_event(self, event: str, data: Any) -> None:
        """ComfyUI's server listener: what its WebSocket would send, here in-process."""
        state = self.current
        if state is None or not isinstance(data, dict):
            return
        if event in _RUN_ENDED:
            state.node_started(None)
            return
        if event != "executing":
            return
        # Nodes a node expanded into (a subgraph, a loop) report the expanding node as
        # their display node: the user's id, so their time counts there.
        node_id = data.get("display_node") or data.get("node")
        state.node_started(None if node_id is None else str(node_id))
        if node_id is None:
            return
        if deadline_passed(state):
            # The job start clears ComfyUI's interrupt flag; a deadline that passed
            # during validation is re-asserted here, before the next node runs.
            self.interrupt()
        _emit(state, ProgressEvent(node_id=str(node_id), class_type=_class_of(state, node_id)))

    def on_step(
        self,
        value: int,
        total: int,
        preview: Any,
        prompt_id: str | None = None,
        node_id: str | None = None,
    ) -> None:
        """ComfyUI's global progress-bar hook: one call per sampler step."""
        del preview, prompt_id
        comfy, state = self._comfy(), self.current
        if comfy is None:
            return
        if state is not None and deadline_passed(state):
            self.interrupt()
        # Raising here stops a long node between two steps rather than after it;
        # ComfyUI's server installs the same check in its hook (a 40-step node: 9 ran).
        comfy.model_management.throw_exception_if_processing_interrupted()
        if state is None:
            return
        context = comfy.executing_context.get_executing_context()
        if node_id is None and context is not None:
            node_id = context.node_id
        if node_id is None:
            node_id = comfy.server.last_node_id
        _emit(
            state,
            ProgressEvent(
                node_id=None if node_id is None else str(node_id),
                class_type=_class_of(state, node_id),
                value=int(value),
                total=int(total),
            ),
        )

    def on_deadline(self, state: JobState) -> None:
        """The job's limit passed while another thread waited for it: interrupt ComfyUI."""
        if self.current is not state:
            return  # the job ended as the timer fired
        state.deadline_hit.set()
        log.warning(
            "job %s passed its %g s limit (JOB_TIMEOUT_S); interrupting ComfyUI",
            state.job.prompt_id,
            state.job.deadline.limit_s or 0.0,
        )
        self.interrupt()
        self._schedule_stuck_warning(state, time.monotonic())

    def _schedule_stuck_warning(self, state: JobState, since: float) -> None:
        timer = threading.Timer(_STUCK_WARNING_S, self._warn_if_stuck, args=(state, since))
        timer.daemon = True
        timer.start()

    def _warn_if_stuck(self, state: JobState, since: float) -> None:
        if self.current is not state:
            return
        comfy = self._comfy()
        log.warning(
            "job %s still running %.0f s after its interrupt: node %s does not check for "
            "interrupts, so the job ends when that node does",
            state.job.prompt_id,
            time.monotonic() - since,
            comfy.server.last_node_id if comfy else "?",
        )
        self._schedule_stuck_warning(state, since)


def deadline_passed(state: JobState) -> bool:
    """Whether the job must stop: its deadline passed (by its timer or by the deadline
    itself) or it was cancelled (``Deadline.expired`` covers both).

    Checked at every node and sampler step, so a late timer thread (a busy machine)
    cannot let a job run on past its deadline, and a cancel that came before the run
    (ComfyUI clears its interrupt flag when a prompt starts) still stops it.
    """
    if not state.deadline_hit.is_set() and state.job.deadline.expired():
        state.deadline_hit.set()
    return state.deadline_hit.is_set()


# What ComfyUI reports as the exception type of a node stopped by the job's deadline.
_DEADLINE_ERRORS = frozenset(
    f"{cls.__module__}.{cls.__qualname__}" for cls in (JobInterruptedError, JobTimeoutError)
)


def raise_failure(
    state: JobState, failure: WorkerError, messages: list[tuple[str, Mapping[str, Any]]]
) -> None:
    """Raise how the run failed: past its deadline if that interrupted it, else ``failure``
    (a node's error is logged with its traceback first)."""
    job = state.job
    event, data = _last_failure(messages)
    node = data.get("node_id")
    if event == "execution_interrupted" and deadline_passed(state):
        where = f"at node {node} ({data.get('node_type')})" if node else "while it ran"
        raise job.deadline.exceeded(where, node_id=str(node) if node else None) from failure
    if event == "execution_error" and str(data.get("exception_type")) in _DEADLINE_ERRORS:
        # A node stopped by the job's own limit or cancel (SaveImage's wait for a PNG
        # encoder process): the job's error, not a node's failure.
        where = f"at node {node} ({data.get('node_type')}) while writing output PNGs"
        raise job.deadline.exceeded(where, node_id=str(node) if node else None) from failure
    if event == "execution_error":
        log.error(
            "job %s: node %s (%s) raised %s: %s\n%s",
            job.prompt_id,
            node,
            data.get("node_type"),
            data.get("exception_type"),
            str(data.get("exception_message", "")).strip(),
            "".join(data.get("traceback") or []),
        )
    raise failure


def _emit(state: JobState, event: ProgressEvent) -> None:
    try:
        state.job.on_progress(event)
    except Exception:
        # A progress report that fails (RunPod's API unreachable) must not fail
        # the job; say it once per job.
        if not state.progress_failed:
            state.progress_failed = True
            log.warning("job %s: progress callback failed", state.job.prompt_id, exc_info=True)


def _last_failure(
    messages: list[tuple[str, Mapping[str, Any]]],
) -> tuple[str, Mapping[str, Any]]:
    for event, data in reversed(messages):
        if event in {"execution_error", "execution_interrupted"}:
            return event, data
    return "", {}


def _class_of(state: JobState, node_id: object) -> str | None:
    node = state.prompt.get(str(node_id)) if node_id is not None else None
    return node.get("class_type") if isinstance(node, dict) else None
