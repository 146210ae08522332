"""Output files a run handed off to be written after its node returned; waited for later.

SaveImage's PNG encodes go to helper processes (``fast_save``). While a worker's job runs,
the node no longer waits for them: the engine goes on to the next node, or the next job's
run, and the job waits for its files after giving the engine back, before it reads its
outputs (:meth:`PendingFiles.wait`). Each file's name is taken on disk when it is handed
off (an empty file), so ComfyUI's ``_00001_`` counter, which lists the folder, never gives
the same name twice.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, wait
from pathlib import Path


class PendingFiles:
    """The files of one run still being written, and how each ended (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: list[tuple[Path, Future[None]]] = []

    def add(self, path: Path, written: Future[None]) -> None:
        """``written`` ends when ``path`` is written (or its writing failed)."""
        with self._lock:
            self._files.append((path, written))

    def __len__(self) -> int:
        with self._lock:
            return len(self._files)

    def wait(self) -> list[tuple[Path, BaseException]]:
        """Wait until every file handed off so far is written; the ones that failed, with
        why. A failed file is removed (what is there is not the image)."""
        with self._lock:
            files = list(self._files)
        wait([written for _, written in files])
        failed = []
        for path, written in files:
            error = written.exception()
            if error is not None:
                path.unlink(missing_ok=True)
                failed.append((path, error))
        return failed
