"""A job's phases and the response's ``output.stats``: seconds per phase and per node.

:class:`Phase` is shared between the job's thread and the worker's watchdog: it says
where the job is (for the deadline's error) and times each phase as it ends.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from engine.deadline import Deadline
from engine.runtime import RunResult
from engine.runtime.shapes import sort_node_ids

log = logging.getLogger(__name__)

# The slowest nodes named in a job's summary line; the response has every one.
_LOGGED_NODES = 5


class Phase:
    """Where a job is, shared between its thread and the watchdog waiting for it.

    It also times the phases: ``seconds`` holds each finished phase's duration.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.seconds: dict[str, float] = {}
        self._since = time.perf_counter()

    def enter(self, name: str, deadline: Deadline | None) -> None:
        """Start phase ``name``, unless the deadline passed during the one before."""
        if deadline is not None:
            deadline.check(name)
        now = time.perf_counter()
        self.seconds[self.name] = self.seconds.get(self.name, 0.0) + now - self._since
        self.name, self._since = name, now
        log.debug("job phase: %s", name)


def job_stats(total_s: float, phases: dict[str, float], result: RunResult) -> dict[str, Any]:
    """The response's ``stats``: seconds per phase and per node that ran, to the ms.

    ``models_s`` is the model files named by URL (downloads, or finding them cached);
    ``wait_s`` the time the job, ready to run, waited while another job's run held
    ComfyUI. ``outputs_s`` covers reading the files and any conversion; parsing the request and
    cleaning up count only in ``total_s``. Validation and execution are the runtime's own
    measures; a runtime that gives none has its whole run counted as execution.
    """
    run_s = phases.get("running the workflow", 0.0)
    validate_s = result.timings.get("validate_s", 0.0)
    execute_s = result.timings.get("execute_s", run_s - validate_s)
    seconds = {
        "total_s": total_s,
        "inputs_s": phases.get("downloading inputs", 0.0),
        "models_s": phases.get("downloading models", 0.0),
        "wait_s": phases.get("waiting for the engine", 0.0),
        "validate_s": validate_s,
        "execute_s": execute_s,
        "outputs_s": phases.get("reading outputs", 0.0) + phases.get("converting outputs", 0.0),
        "deliver_s": phases.get("delivering outputs", 0.0),
    }
    stats: dict[str, Any] = {name: _ms(value) for name, value in seconds.items()}
    stats["nodes"] = {
        node_id: _ms(result.node_seconds[node_id])
        for node_id in sort_node_ids(list(result.node_seconds))
    }
    return stats


def _ms(seconds: float) -> float:
    return round(max(seconds, 0.0), 3)


def describe_stats(stats: dict[str, Any]) -> str:
    """The stats for the summary line: every phase, the slowest few nodes."""
    phases = ", ".join(
        f"{name.removesuffix('_s')} {value:.3f} s"
        for name, value in stats.items()
        if name not in {"total_s", "nodes"}
    )
    nodes: dict[str, float] = stats["nodes"]
    slowest = sorted(nodes.items(), key=lambda item: -item[1])[:_LOGGED_NODES]
    ran = ", ".join(f"{node_id} {value:.3f} s" for node_id, value in slowest)
    return f"{phases}; {len(nodes)} node(s) ran" + (f", slowest: {ran}" if ran else "")
