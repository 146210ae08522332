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

The read-ahead yields the disk to the running job's own loads: while the engine executes
one of the running job's loader nodes (a node with an input that names a model file,
:func:`~engine.workflow_needs.model_needs`), it pauses between two chunks, and reads on
when the next node starts or the run ends (:class:`RunningLoaders`, told by the worker
of each node start). Both jobs' reads on one disk made the running job's run slower
(0.83x-0.93x of its speed alone, loading a 2.1 GB checkpoint from a cold cache; with the
pause 0.96x-1.03x: ``scripts/bench_prefetch.py --a-loads``, docs/benchmarks.md); a
running job's GPU waits for its load, a waiting job has time to spare. The pause follows the loader node, not the state of its files in the page
cache: whether the node will read the disk is not known beforehand (the file may be
cached in part, evicted since, or a loader may read several files), a loader whose file
is cached ends soon and so does the pause, and a node is the unit the engine reports.
Other nodes do not read model files (the checkpoint's weights are read in its loader).
A pause never delays a job: it is only ever the read-ahead that waits, and its own job's
turn, end or cancel stops it at once, paused or not.
"""

from __future__ import annotations

import contextlib
import dataclasses
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
from engine.runtime import JobSpec, ModelFolder, ProgressEvent
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
    paused_s: float = 0.0
    """How long the reading waited for the running job's loaders."""
    wake: Callable[[], None] = field(default=lambda: None, repr=False)
    """Wakes a pause (:meth:`RunningLoaders.wake`), so a stop never waits for a loader."""

    def stop(self) -> None:
        """Stop reading at the next chunk (the job took its turn, or ended), or at once
        while paused."""
        self.stopped.set()
        self.wake()


@dataclass(eq=False)
class _Run:
    """The running job as :class:`RunningLoaders` follows it."""

    workflow: Mapping[str, Any]
    node: str | None = None
    """The node that started last; it runs until the next starts, or the run ends."""
    loaders: frozenset[str] | None = None
    """Its loader nodes' ids: found on the reading thread, when a read-ahead first asks."""


class RunningLoaders:
    """Whether the running job's engine executes one of its loader nodes now: fed by the
    worker with the running job's node starts (the engine thread), waited on by the
    read-ahead's thread between two chunks. Thread-safe."""

    def __init__(self, engine: EngineView) -> None:
        self._engine = engine
        self._changed = threading.Condition()
        self._run: _Run | None = None

    @contextlib.contextmanager
    def running(self, spec: JobSpec) -> Iterator[JobSpec]:
        """``spec`` with its node starts told here, for the block (the job's run).

        What it costs the run: a comparison per progress event, and a lock taken per
        node started. Which nodes are loaders is found by the read-ahead, only if one
        asks: a job alone finds out nothing.
        """
        run = _Run(spec.workflow)
        forward = spec.on_progress

        def seen(event: ProgressEvent) -> None:
            # Steps report their node again; only a new node changes anything.
            if event.node_id is not None and event.node_id != run.node:
                with self._changed:
                    run.node = event.node_id
                    self._changed.notify_all()
            forward(event)

        with self._changed:
            self._run = run
        try:
            yield dataclasses.replace(spec, on_progress=seen)
        finally:
            # The run's end is its last node's end (ComfyUI sends no event for it).
            with self._changed:
                if self._run is run:  # one run at a time holds the engine; never another's
                    self._run = None
                self._changed.notify_all()

    def wait_until_idle(self, stop: threading.Event) -> float:
        """Return once no loader of the running job executes (at once when none does, or
        no job runs), or as soon as ``stop`` is set (with :meth:`wake` called after);
        the seconds waited."""
        started, paused = time.perf_counter(), False
        while True:
            with self._changed:
                run = self._run
                if stop.is_set() or run is None or run.node is None:
                    return time.perf_counter() - started if paused else 0.0
                if run.loaders is not None:
                    if run.node not in run.loaders:
                        return time.perf_counter() - started if paused else 0.0
                    if not paused:
                        log.debug(
                            "prefetch: paused while node %s of the running job loads", run.node
                        )
                    paused = True
                    self._block()  # stop is checked under the lock first: no wake is missed
                    continue
            # Outside the lock, so the engine thread never waits for it; once per run.
            run.loaders = self._loaders_of(run.workflow)

    def wake(self) -> None:
        """Wake a wait, to look at its stop again."""
        with self._changed:
            self._changed.notify_all()

    def _block(self) -> None:
        """Wait for the next change (a node starts, the run ends, a wake); lock held."""
        self._changed.wait()

    def _loaders_of(self, workflow: Mapping[str, Any]) -> frozenset[str]:
        try:
            return frozenset(need.node_id for need in model_needs(workflow, self._engine))
        except Exception:  # best-effort: a workflow the engine cannot read pauses nothing
            log.debug("prefetch: the running job's loaders are unknown", exc_info=True)
            return frozenset()


class Prefetcher:
    """Reads waiting jobs' model files ahead, one job after the other, on one daemon
    thread started on first use. Thread-safe."""

    def __init__(
        self,
        max_bytes: int,
        engine: ModelView,
        reader: FileReader | None = None,
        meminfo: Callable[[], str] = read_meminfo,
        loaders: RunningLoaders | None = None,
    ) -> None:
        self.max_bytes = max_bytes
        self._engine = engine
        self.loaders = loaders or RunningLoaders(engine)
        """The running job's loaders, which the reading yields to (:meth:`running`)."""
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

    @contextlib.contextmanager
    def running(self, spec: JobSpec) -> Iterator[JobSpec]:
        """The spec to run while the block holds the engine: its loader nodes pause the
        read-ahead of the jobs that wait (:class:`RunningLoaders`). As is when turned off."""
        if self.max_bytes <= 0:
            yield spec
            return
        with self.loaders.running(spec) as watched:
            yield watched

    def start(self, job_id: str, files: Callable[[], list[Path]]) -> Prefetch:
        """Queue one job's read-ahead; the caller stops it (:meth:`Prefetch.stop`)."""
        prefetch = Prefetch(job_id, files, wake=self.loaders.wake)
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
                "model files ahead of the run: %.2f GB read or found cached in %.2f s"
                " (%.2f s of it paused for the running job's loaders)%s",
                prefetch.bytes_read / 1e9,
                prefetch.seconds,
                prefetch.paused_s,
                " (stopped: the job's turn came, or it ended)" if prefetch.stopped.is_set() else "",
            )

    def _read_file(self, prefetch: Prefetch, path: Path) -> bool:
        """Read ``path`` through (True), or up to a stop (False)."""
        try:
            chunks = self._reader.chunks(path)
            try:
                while True:
                    # Before each chunk, the first too: the running job's loads go first.
                    prefetch.paused_s += self.loaders.wait_until_idle(prefetch.stopped)
                    if prefetch.stopped.is_set():
                        return False
                    count = next(chunks, None)
                    if count is None:
                        break
                    prefetch.bytes_read += count
            finally:
                chunks.close()
        except OSError as exc:  # removed, unreadable: the run will say so if it matters
            log.debug("prefetch: %s skipped: %s", path, exc)
            prefetch.skipped.append(path)
            return False
        return True
