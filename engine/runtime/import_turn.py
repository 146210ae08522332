"""Where a node file deferred at boot is imported on first use: the engine thread, between runs.

A job names a deferred pack's node type first on its own lane (the UI-format
conversion, the file-input checks, validation), while another job may be running on
the engine thread. Imported there, the pack would run its module code beside that run
(a fix of the boot's reapplied to ``folder_paths`` under it, two threads importing the
same libraries at once), on a thread with no event loop of ComfyUI's, and on whichever
lane came first. :class:`ImportTurn` hands the import to the engine thread instead, where
runs take turns: it starts once the run before it ends, no run starts until it is done,
and every deferred import happens on one thread, with ComfyUI's server loop as the
thread's current event loop, as node init runs on it at boot (a pack that keeps
``asyncio.get_event_loop()`` at import holds the loop that keeps running). Thread-local
state a pack sets at import lives on the engine thread, where its nodes run (an eager
pack's lives on the main thread, which runs no node: no worse).

The lane waits for it within its job's deadline (:meth:`engine.deadline.Deadline.bound`):
a job whose time runs out while the engine is still busy fails with its timeout, and the
import still happens once the engine is free. A lookup made during a run (a node that
looks another pack's node type up, as Inspire Pack does) is on the engine thread
already and imports there at once.

Not possible on any thread but the main one, so not here: a pack whose import sets a
signal handler. The boot imports packs on the main thread; the recorder
(:mod:`engine.runtime.pack_evidence`) sees such a handler and the pack loads at boot.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import Callable
from concurrent.futures import Future

from engine.deadline import Deadline, JobThread

log = logging.getLogger(__name__)


class ImportTurn:
    """Runs deferred imports on ``engine`` (the runtime's engine thread), with ``loop``
    (the headless server's, node init's loop) as its current event loop meanwhile."""

    def __init__(self, engine: JobThread, loop: asyncio.AbstractEventLoop) -> None:
        self._engine = engine
        self._loop = loop

    def __call__(self, load: Callable[[], None]) -> None:
        """``load()`` on the engine thread; from another thread, wait for it there."""
        if self._engine.is_current():
            self._here(load)
            return
        waiting: Future[None] = self._engine.submit(lambda: self._here(load))
        deadline = Deadline.current()
        if not waiting.done():
            log.info("waiting for the engine thread to import a node pack on its first use")
        if deadline is not None and not deadline.wait_for(waiting):
            # The job stops here; the import still runs when the engine is free.
            raise deadline.exceeded("while a node pack it uses was imported on first use")
        waiting.result()

    def _here(self, load: Callable[[], None]) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            load()  # inside a run: its loop is the running one, as any node sees it
            return
        previous = _current_loop()
        asyncio.set_event_loop(self._loop)
        try:
            load()
        finally:
            asyncio.set_event_loop(previous)


def _current_loop() -> asyncio.AbstractEventLoop | None:
    """This thread's current event loop, or None; never makes one."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return asyncio.get_event_loop_policy().get_event_loop()
        except RuntimeError:
            return None
