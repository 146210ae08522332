"""One clock for a whole job: inputs, the run, outputs and delivery share ``JOB_TIMEOUT_S``.

The worker starts a :class:`Deadline` when a job arrives and hands it to every phase:
the runtime arms ComfyUI's interrupt with what is left of it, the worker checks it
between phases, and the worker's watchdog (``engine.worker``) stops waiting for the job
when it passes, whatever the job is doing. Every timeout the user sees is built here,
so each names the limit, the phase and what to change.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from engine.errors import JobTimeoutError


@dataclass(frozen=True)
class Deadline:
    """When a job must be done by; ``limit_s`` None means no limit."""

    limit_s: float | None
    started: float = field(default_factory=time.monotonic)

    @classmethod
    def start(cls, limit_s: float | None) -> Deadline:
        """A deadline ``limit_s`` seconds from now (None or 0: none)."""
        return cls(limit_s or None)

    def remaining(self) -> float | None:
        """Seconds left (never negative), or None without a limit."""
        if self.limit_s is None:
            return None
        return max(0.0, self.started + self.limit_s - time.monotonic())

    def expired(self) -> bool:
        """Whether the limit has passed."""
        remaining = self.remaining()
        return remaining is not None and remaining <= 0.0

    def check(self, phase: str) -> None:
        """Raise the job's timeout if the limit passed before ``phase`` could start."""
        if self.expired():
            raise self.exceeded(f"before {phase}")

    def exceeded(self, where: str, *, node_id: str | None = None) -> JobTimeoutError:
        """The error a job gets when it passes the limit ``where`` (e.g. 'at node 5 (VAEDecode)')."""
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
