"""Answered jobs whose files are still to go: held until the caller has sent the answer on.

``Worker.handle`` with ``clean_up_after`` publishes a job's answer first and removes the
job's files after it, once the caller sets the event (``handler.py`` sets it when the
runpod SDK has written the response), so the removal does not compete with sending it.
:class:`AnsweredJobs` holds those jobs; its :meth:`AnsweredJobs.close` lets them all go at
once, for a process about to exit.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)

CLEANUP_HOLD_S = 5.0
"""How long a job's files wait, after its answer, for the caller's signal: only a caller
that never gives it waits this long, and its files still go."""


class AnsweredJobs:
    """The jobs answered whose files are still to go (``Worker.handle``'s
    ``clean_up_after``): each waits for its caller's event, or for :meth:`close`."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._holds: set[threading.Event] = set()
        self._pending = 0
        self._closing = False

    def begin(self) -> None:
        """A job's answer is about to go out; its files go after it."""
        with self._changed:
            self._pending += 1

    def hold(self, clean_up_after: threading.Event) -> None:
        """Wait until the caller has sent the answer on (or :meth:`close`, or
        ``CLEANUP_HOLD_S`` at most)."""
        with self._changed:
            if self._closing:
                return
            self._holds.add(clean_up_after)
        try:
            clean_up_after.wait(CLEANUP_HOLD_S)
        finally:
            with self._changed:
                self._holds.discard(clean_up_after)

    def end(self) -> None:
        """The job's files are gone."""
        with self._changed:
            self._pending -= 1
            self._changed.notify_all()

    def close(self, timeout_s: float) -> bool:
        """Release every hold now and from now on; wait up to ``timeout_s`` until the
        files of every answered job are gone (whether they are)."""
        with self._changed:
            self._closing = True
            for hold in self._holds:
                hold.set()
            return self._changed.wait_for(lambda: self._pending == 0, timeout_s)


def run_cleanups(cleanups: Sequence[Callable[[], None]]) -> None:
    """Run each of a finished job's cleanups; one that fails is logged, the rest still run."""
    for cleanup in cleanups:
        try:
            cleanup()
        except Exception:  # the answer is out: nothing to fail, but someone should know
            log.exception("removing a finished job's files failed")
