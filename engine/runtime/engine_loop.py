"""The engine thread's asyncio event loop, kept for the worker's life.

ComfyUI's ``PromptExecutor.execute`` would make a loop per job with ``asyncio.run``, which
refuses to run where a loop already runs (the runpod SDK calls a synchronous handler from
inside its own). :class:`ComfyRuntime <engine.runtime.comfy.ComfyRuntime>` keeps one loop
on its engine thread instead, made by the first job (0.15 ms a job saved), and cleans it
as ``asyncio.run`` would: leftover tasks cancelled after each job, the loop closed and
made again after a job that broke it.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)


class EngineLoop:
    """One event loop, the current loop of the thread that uses it (the engine thread)."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None

    def get(self) -> asyncio.AbstractEventLoop:
        """The loop, made (and set as this thread's current loop) when there is none."""
        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
        return self._loop

    def close(self, loop: asyncio.AbstractEventLoop) -> None:
        """Close ``loop`` as asyncio.run closes its own; never raises (a failure path).
        The next :meth:`get` makes a fresh one, as asyncio.run would give the next job."""
        try:
            cancel_leftover_tasks(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        except Exception:
            log.warning("the engine's event loop did not close cleanly", exc_info=True)
        finally:
            asyncio.set_event_loop(None)
            loop.close()
            self._loop = None


def cancel_leftover_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what a job left running on ``loop``, as asyncio.run does when it returns:
    nothing of one job runs on into the next."""
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    if not pending:
        return
    for task in pending:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
