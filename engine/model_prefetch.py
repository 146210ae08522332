"""Model files of a job that waits for the engine, read ahead into the OS page cache.

While another job's run holds the engine, a job that is ready waits for its turn. Its
run will then read its model files (a checkpoint of several GB on a network volume, at
100-400 MB/s) with the GPU idle. An in-process worker knows those files before the
run: :class:`Prefetcher` reads them meanwhile, on one background thread, in large
chunks whose bytes are dropped, so the run finds them in the page cache. It stops at
the next chunk when the job takes its turn, ends or is cancelled.

Best-effort: a file that cannot be read is skipped (logged at DEBUG); nothing here
fails or delays a job. Bounds: ``MODEL_PREFETCH_MAX_GB`` per job (``0``: never), and
never more than half of what the kernel says is available (``MemAvailable``), so the
page cache is never asked for what the machine cannot hold. Only files under ComfyUI's
registered model folders are read (links resolved first).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from engine import logs
from engine.runtime import ModelFolder
from engine.workflow_needs import EngineView, model_needs

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024 * 1024
"""One read. Between two reads the reading thread takes the GIL back, and each time it
does, the running job's Python (a model being loaded) waits for it: with 8 MiB reads a
run that loaded a checkpoint while 2.1 GB was read ahead ran at 0.86x of its speed
alone (its time alone over its time with them), with 64 MiB at 0.96x
(``scripts/bench_prefetch.py --a-loads --a-cached``). A stop does not
wait for the read under way (at most 64 MiB more of the file goes on being read)."""

_PAGE_BYTES = 4096
_SAMPLES = 16
_MEMINFO = Path("/proc/meminfo")


class ModelView(EngineView, Protocol):
    """What the engine knows of model files, as this module needs it (a ``Runtime``)."""

    def model_folders(self) -> list[ModelFolder]:
        """Every model folder ComfyUI knows."""
        ...


class FileReader(Protocol):
    """The file system, as read ahead: sizes, and files read through with the bytes dropped."""

    def size(self, path: Path) -> int:
        """The file's size in bytes; raises ``OSError``."""
        ...

    def chunks(self, path: Path) -> Generator[int, None, None]:
        """Read ``path`` from its start, one chunk per step, yielding the bytes each read;
        closing the generator stops the reading. Raises ``OSError``."""
        ...


class DiskReader:
    """:class:`FileReader` on the real file system: ``os.sendfile`` into ``/dev/null``.

    The kernel reads the file into the page cache and hands the pages to ``/dev/null``:
    no copy into the process (a 1 GiB file: 0.03 s of CPU), the GIL released meanwhile.
    Where that fails (``sendfile`` into ``/dev/null`` refused), ``os.readv`` into one
    reused buffer, made then.

    ``posix_fadvise(WILLNEED)`` was tried first and measured ineffective on a cloud VM's
    disk (the kernel may ignore it); a plain read fills the page cache everywhere. The
    read releases the GIL, so the engine thread runs on meanwhile.

    A file already in the page cache is not copied again: where the kernel has
    ``RWF_NOWAIT`` (Linux), pages spread over the file are read with it first, which
    answers at once from the cache or refuses (``EAGAIN``); when every one answers, the
    file is taken as cached and not read. The usual case, a model every job names, then
    costs a few small reads, not a copy of the file. Otherwise the file is read whole,
    front to back, so the kernel's own read-ahead keeps ahead of each read (skipping the
    chunks found cached one by one broke that, and read a cold file slower).
    """

    def __init__(
        self, chunk_bytes: int = CHUNK_BYTES, *, skip_cached: bool = True, copy: bool = False
    ) -> None:
        self._chunk_bytes = chunk_bytes
        self._buffer: bytearray | None = None  # readv's, made on first use: one thread reads
        self._null: int | None = None
        self._sendfile = not copy and hasattr(os, "sendfile")
        self._page = bytearray(_PAGE_BYTES)
        self._nowait: int | None = getattr(os, "RWF_NOWAIT", None) if skip_cached else None

    def size(self, path: Path) -> int:
        return path.stat().st_size

    def chunks(self, path: Path) -> Generator[int, None, None]:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            size = os.fstat(fd).st_size
            if self._cached(fd, size):
                yield size
                return
            while count := self._read(fd):
                yield count
        finally:
            os.close(fd)

    def _read(self, fd: int) -> int:
        """Read the next chunk, from the file's position on; the bytes read (0 at the end)."""
        if self._sendfile:
            try:
                if self._null is None:
                    self._null = os.open(os.devnull, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
                return os.sendfile(self._null, fd, None, self._chunk_bytes)
            except OSError as exc:
                # Refused on this kernel or file system: copy from here on, once said.
                log.debug(
                    "prefetch: sendfile into %s refused (%s); reading instead", os.devnull, exc
                )
                self._sendfile = False
        if self._buffer is None:
            self._buffer = bytearray(self._chunk_bytes)
        return os.readv(fd, [self._buffer])

    def _cached(self, fd: int, size: int) -> bool:
        """Whether ``_SAMPLES`` pages spread over the file are all in the page cache."""
        if self._nowait is None or size == 0:
            return False
        try:
            for at in sorted({size * n // _SAMPLES for n in range(_SAMPLES)} | {size - 1}):
                if not os.preadv(fd, [self._page], at - at % _PAGE_BYTES, self._nowait):
                    return False
        except BlockingIOError:  # not cached
            return False
        except OSError:  # a file system without it: read every file
            self._nowait = None
            return False
        return True


def read_meminfo() -> str:
    """The text of ``/proc/meminfo`` (empty where there is none)."""
    try:
        return _MEMINFO.read_text(encoding="ascii", errors="replace")
    except OSError:
        return ""


def mem_available(meminfo: str) -> int | None:
    """``MemAvailable`` in bytes, from the text of ``/proc/meminfo``; None if absent."""
    for line in meminfo.splitlines():
        name, _, rest = line.partition(":")
        if name.strip() == "MemAvailable":
            parts = rest.split()
            if parts and parts[0].isdigit():
                unit = parts[1].lower() if len(parts) > 1 else "b"
                return int(parts[0]) * (1024 if unit == "kb" else 1)
    return None


def files_to_read(workflow: Mapping[str, Any], engine: ModelView) -> list[Path]:
    """The model files ``workflow``'s loaders name that exist, each once, as real paths.

    Which input names a model file and where it is found is what
    :func:`engine.workflow_needs.model_needs` says (the engine's own folders and
    lists). A file whose real path (links resolved) is outside every registered model
    folder is left out: read ahead only what ComfyUI itself would load from there.
    """
    roots = [Path(os.path.realpath(p)) for f in engine.model_folders() for p in f.paths]
    chosen: list[Path] = []
    for need in model_needs(workflow, engine):
        if need.found is None:
            continue
        real = Path(os.path.realpath(need.found))
        if real in chosen:
            continue
        if not any(real.is_relative_to(root) for root in roots):
            log.debug("prefetch: %s leads outside the model folders; not read", need.found)
            continue
        chosen.append(real)
    return chosen


@dataclass(eq=False)
class Prefetch:
    """One job's read-ahead: the files it read, and how it ended."""

    job_id: str
    files: Callable[[], list[Path]] = field(repr=False)
    """Chosen on the prefetch thread, so the job's lane does not wait for the file checks."""
    stopped: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    read: list[Path] = field(default_factory=list)
    """Files read whole."""
    bytes_read: int = 0
    """Bytes read, or found cached (:class:`DiskReader`)."""
    seconds: float = 0.0
    """How long the read-ahead took, to its end or its stop."""
    skipped: list[Path] = field(default_factory=list)
    """Files left out: over the bound, or not readable."""

    def stop(self) -> None:
        """Stop reading at the next chunk (the job took its turn, or ended)."""
        self.stopped.set()


class Prefetcher:
    """Reads waiting jobs' model files ahead, one job after the other, on one daemon
    thread started on first use. Thread-safe."""

    def __init__(
        self,
        max_bytes: int,
        engine: ModelView,
        reader: FileReader | None = None,
        meminfo: Callable[[], str] = read_meminfo,
    ) -> None:
        self.max_bytes = max_bytes
        self._engine = engine
        self._reader: FileReader = reader or DiskReader()
        self._meminfo = meminfo
        self._queue: deque[Prefetch] = deque()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def during(self, job_id: str, workflow: Mapping[str, Any]) -> Iterator[Prefetch | None]:
        """Read ``workflow``'s model files ahead while the block runs (the job's wait for
        the engine); the reading stops as the block ends. None when turned off."""
        if self.max_bytes <= 0:
            yield None
            return
        prefetch = self.start(job_id, lambda: files_to_read(workflow, self._engine))
        try:
            yield prefetch
        finally:
            prefetch.stop()

    def start(self, job_id: str, files: Callable[[], list[Path]]) -> Prefetch:
        """Queue one job's read-ahead; the caller stops it (:meth:`Prefetch.stop`)."""
        prefetch = Prefetch(job_id, files)
        with self._changed:
            self._queue.append(prefetch)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name="model-prefetch", daemon=True
                )
                self._thread.start()
            self._changed.notify()
        return prefetch

    def _serve(self) -> None:
        while True:
            with self._changed:
                while not self._queue:
                    self._changed.wait()
                prefetch = self._queue.popleft()
            with logs.bind_job(prefetch.job_id):
                try:
                    if not prefetch.stopped.is_set():
                        self._read(prefetch)
                except Exception:  # best-effort: never the thread's end
                    log.debug("prefetch failed", exc_info=True)
                finally:
                    prefetch.finished.set()

    def _read(self, prefetch: Prefetch) -> None:
        started = time.perf_counter()
        budget = self.max_bytes
        available = mem_available(self._meminfo())
        if available is not None:
            budget = min(budget, available // 2)
        for path in prefetch.files():
            if prefetch.stopped.is_set():
                break
            try:
                size = self._reader.size(path)
            except OSError as exc:
                log.debug("prefetch: %s skipped: %s", path, exc)
                prefetch.skipped.append(path)
                continue
            if size > budget - prefetch.bytes_read:
                log.debug("prefetch: %s (%d bytes) is over what remains of the bound", path, size)
                prefetch.skipped.append(path)
                continue
            if self._read_file(prefetch, path):
                prefetch.read.append(path)
        prefetch.seconds = time.perf_counter() - started
        if prefetch.bytes_read:
            log.info(
                "model files ahead of the run: %.2f GB read or found cached in %.2f s%s",
                prefetch.bytes_read / 1e9,
                prefetch.seconds,
                " (stopped: the job's turn came, or it ended)" if prefetch.stopped.is_set() else "",
            )

    def _read_file(self, prefetch: Prefetch, path: Path) -> bool:
        """Read ``path`` through (True), or up to a stop (False)."""
        try:
            chunks = self._reader.chunks(path)
            try:
                for count in chunks:
                    prefetch.bytes_read += count
                    if prefetch.stopped.is_set():
                        return False
            finally:
                chunks.close()
        except OSError as exc:  # removed, unreadable: the run will say so if it matters
            log.debug("prefetch: %s skipped: %s", path, exc)
            prefetch.skipped.append(path)
            return False
        return True
