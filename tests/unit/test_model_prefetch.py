"""A waiting job's model files read ahead (engine/model_prefetch.py): which files, the
bounds, the stop at the next chunk, and when the worker asks for it.

The file system is a fake that counts chunks and can hold a read mid-file until the
test lets it go: every stop is proven by events, never by timing.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from engine.model_prefetch import (
    DiskReader,
    Prefetch,
    Prefetcher,
    RunningLoaders,
    files_to_read,
    mem_available,
)
from engine.runtime import JobSpec, ProgressEvent
from engine.settings import Settings
from engine.worker import Worker
from engine.workflow_needs import EngineView
from tests import workflows
from tests.fake_runtime import FakeRuntime
from tests.unit.test_worker_pipeline import answer_of, fake, handle_in_thread, make_worker

_HANG_S = 10.0
_GB = 1024**3


class FakeFiles:
    """Files by size; ``chunks`` counts what it hands out and, with ``hold_after``, waits
    after that many chunks of a file until the test sets ``go``."""

    def __init__(self, sizes: dict[Path, int], chunk: int = 10, hold_after: int | None = None):
        self.sizes, self.chunk, self.hold_after = sizes, chunk, hold_after
        self.unreadable: set[Path] = set()
        self.opened: list[Path] = []
        self.yielded: dict[Path, int] = {}
        self.holding = threading.Event()
        self.go = threading.Event()
        self.closed: dict[Path, threading.Event] = {p: threading.Event() for p in sizes}

    def size(self, path: Path) -> int:
        if path not in self.sizes:
            raise FileNotFoundError(path)
        return self.sizes[path]

    def chunks(self, path: Path) -> Generator[int, None, None]:
        self.opened.append(path)
        if path in self.unreadable:
            raise PermissionError(path)
        try:
            done = chunks = 0
            while done < self.sizes[path]:
                if chunks == self.hold_after:
                    self.holding.set()
                    assert self.go.wait(_HANG_S)
                step = min(self.chunk, self.sizes[path] - done)
                done, chunks = done + step, chunks + 1
                self.yielded[path] = done
                yield step
        finally:
            self.closed[path].set()


def meminfo(available_kb: int) -> str:
    return f"MemTotal:       99999999 kB\nMemFree:  1 kB\nMemAvailable:   {available_kb} kB\n"


def run_prefetch(prefetcher: Prefetcher, paths: list[Path]) -> Prefetch:
    prefetch = prefetcher.start("job", lambda: paths)
    assert prefetch.finished.wait(_HANG_S)
    return prefetch


# -- which files ------------------------------------------------------------------------


@pytest.fixture
def runtime(settings: Settings) -> FakeRuntime:
    runtime = FakeRuntime(settings)
    runtime.boot()
    for folder in ("checkpoints", "loras"):
        (runtime.models_dir / folder).mkdir(parents=True)
    return runtime


def put(path: Path, size: int = 4) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    return path


def test_files_are_the_model_inputs_found_inside_the_model_folders(
    runtime: FakeRuntime, tmp_path: Path
) -> None:
    """A loader's file, each once; a LoRA by link into another model folder; not an image
    input, not a missing file, not a link that leads out of the model folders."""
    models = runtime.models_dir
    ckpt = put(models / "checkpoints" / "sd15" / "tiny.safetensors")
    lora = put(models / "loras" / "styles" / "real.safetensors")
    (models / "loras" / "linked.safetensors").symlink_to(lora)
    outside = put(tmp_path / "elsewhere" / "secret.safetensors")
    (models / "checkpoints" / "out.safetensors").symlink_to(outside)
    put(runtime.directories.input / "x.png")
    workflow: dict[str, Any] = {
        "1": {
            "class_type": "CheckpointLoaderSimple",
            "inputs": {"ckpt_name": "sd15/tiny.safetensors"},
        },
        "2": {
            "class_type": "CheckpointLoaderSimple",
            "inputs": {"ckpt_name": "sd15/tiny.safetensors"},
        },
        "3": {"class_type": "LoraLoader", "inputs": {"lora_name": "linked.safetensors"}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "out.safetensors"}},
        "5": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "gone.safetensors"}},
        "6": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
        "7": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "../../input/x.png"}},
    }
    assert files_to_read(workflow, runtime) == [ckpt.resolve(), lora.resolve()]


def test_meminfo_gives_mem_available_in_bytes() -> None:
    assert mem_available(meminfo(2048)) == 2048 * 1024
    assert mem_available("MemTotal: 5 kB\n") is None
    assert mem_available("") is None


# -- the reading and its bounds ------------------------------------------------------------


def test_files_are_read_through_within_the_max_bound_skipping_a_file_too_big(
    runtime: FakeRuntime,
) -> None:
    """A 100-byte bound: 60 read, 50 skipped (over what remains), 30 still read after it."""
    a, big, c = Path("/m/a"), Path("/m/big"), Path("/m/c")
    files = FakeFiles({a: 60, big: 50, c: 30})
    prefetcher = Prefetcher(100, runtime, files, meminfo=lambda: meminfo(10**9))
    prefetch = run_prefetch(prefetcher, [a, big, c])
    assert prefetch.read == [a, c] and prefetch.skipped == [big]
    assert prefetch.bytes_read == 90 and files.yielded == {a: 60, c: 30}


def test_never_more_than_half_of_mem_available(runtime: FakeRuntime) -> None:
    """MemAvailable 100 kB: at most 50 kB read, whatever the configured bound."""
    a, b = Path("/m/a"), Path("/m/b")
    files = FakeFiles({a: 40 * 1024, b: 20 * 1024}, chunk=4096)
    prefetcher = Prefetcher(16 * _GB, runtime, files, meminfo=lambda: meminfo(100))
    prefetch = run_prefetch(prefetcher, [a, b])
    assert prefetch.read == [a] and prefetch.skipped == [b]


def test_an_unreadable_or_vanished_file_is_skipped_and_the_next_read(
    runtime: FakeRuntime,
) -> None:
    locked, gone, ok = Path("/m/locked"), Path("/m/gone"), Path("/m/ok")
    files = FakeFiles({locked: 10, ok: 10})
    files.unreadable.add(locked)
    prefetcher = Prefetcher(_GB, runtime, files, meminfo=lambda: "")
    prefetch = run_prefetch(prefetcher, [locked, gone, ok])
    assert prefetch.read == [ok] and prefetch.skipped == [locked, gone]


def test_a_stop_ends_the_read_at_the_next_chunk(runtime: FakeRuntime) -> None:
    """Held after the first chunk of five; stopped; the second chunk is the last."""
    a, b = Path("/m/a"), Path("/m/b")
    files = FakeFiles({a: 50, b: 10}, hold_after=1)
    prefetcher = Prefetcher(_GB, runtime, files, meminfo=lambda: "")
    prefetch = prefetcher.start("job", lambda: [a, b])
    assert files.holding.wait(_HANG_S)
    prefetch.stop()
    files.go.set()
    assert prefetch.finished.wait(_HANG_S)
    assert files.yielded == {a: 20} and files.closed[a].is_set()
    assert prefetch.read == [] and b not in files.opened


def test_zero_turns_it_off(runtime: FakeRuntime, tmp_path: Path) -> None:
    files = FakeFiles({})
    prefetcher = Prefetcher(0, runtime, files)
    with prefetcher.during("job", workflows.checkpoint("tiny.safetensors")) as prefetch:
        assert prefetch is None


def test_the_disk_reader_reads_a_real_file_through_in_chunks(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(bytes(range(256)) * 100)
    reader = DiskReader(chunk_bytes=4096, skip_cached=False)
    assert reader.size(path) == 25600
    assert list(reader.chunks(path)) == [4096] * 6 + [1024]
    with pytest.raises(FileNotFoundError):
        list(reader.chunks(tmp_path / "missing"))


def test_the_disk_reader_copies_where_sendfile_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(bytes(range(256)) * 100)

    def refused(*args: object) -> int:
        raise OSError(errno.EINVAL, "sendfile refused")

    monkeypatch.setattr(os, "sendfile", refused)
    reader = DiskReader(chunk_bytes=4096, skip_cached=False)
    assert list(reader.chunks(path)) == [4096] * 6 + [1024]
    assert list(reader.chunks(path)) == [4096] * 6 + [1024]  # and copies from then on


class CopyCounting(DiskReader):
    """The real reader, counting the chunks it reads from the file."""

    def __init__(self, copy: bool = False) -> None:
        super().__init__(chunk_bytes=64 * 1024, copy=copy)
        self.copied = 0

    def _read(self, fd: int) -> int:
        self.copied += 1
        return super()._read(fd)


def cached_page(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        return bool(os.preadv(fd, [bytearray(4096)], 0, os.RWF_NOWAIT))
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


_NOWAIT = pytest.mark.skipif(
    not hasattr(os, "RWF_NOWAIT"), reason="no RWF_NOWAIT here (Linux only): every chunk is read"
)


@_NOWAIT
def test_a_file_already_in_the_page_cache_is_not_copied_again(tmp_path: Path) -> None:
    path = tmp_path / "warm.safetensors"
    path.write_bytes(os.urandom(256 * 1024))  # just written: in the page cache
    if not cached_page(path):
        pytest.skip("this file system does not answer RWF_NOWAIT reads from its cache")
    reader = CopyCounting()
    assert sum(reader.chunks(path)) == 256 * 1024 and reader.copied == 0


@_NOWAIT
@pytest.mark.parametrize("copy", [False, True], ids=["sendfile", "readv"])
def test_a_file_out_of_the_page_cache_is_read_chunk_by_chunk_into_it(
    tmp_path: Path, copy: bool
) -> None:
    path = tmp_path / "cold.safetensors"
    with path.open("wb") as f:
        f.write(os.urandom(256 * 1024))
        f.flush()
        # Once written back, clean pages go on DONTNEED; a page still under writeback
        # stays, so ask again after another fsync (a few times at most).
        for _ in range(5):
            os.fsync(f.fileno())
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            if not cached_page(path):
                break
    if cached_page(path):
        pytest.skip(
            "the kernel kept the file's pages after POSIX_FADV_DONTNEED (tmpfs keeps them"
            " always): no file is cold here"
        )
    reader = CopyCounting(copy)
    assert sum(reader.chunks(path)) == 256 * 1024 and reader.copied >= 1
    assert cached_page(path)  # what it is for: the run finds the file in the page cache


# -- the pause while the running job's loaders run -----------------------------------------


class Pausing(RunningLoaders):
    """The real gate, saying when the read-ahead's thread blocks in a pause (the test's
    next node event then waits for the lock until the thread is really waiting)."""

    def __init__(self, engine: EngineView) -> None:
        super().__init__(engine)
        self.blocked = threading.Event()

    def _block(self) -> None:
        self.blocked.set()
        super()._block()


def loading_run() -> dict[str, Any]:
    """A running job: an image (node 1), a checkpoint loader (node 4) feeding a node that
    holds the run (TestHang, node 5), a save (node 2)."""
    workflow = workflows.batch(1)
    workflow["4"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.ckpt"}}
    workflow["5"] = {"class_type": "TestHang", "inputs": {"model": ["4", 0], "images": ["1", 0]}}
    workflow["2"]["inputs"]["images"] = ["5", 0]
    return workflow


_IMAGE = ProgressEvent(node_id="1", class_type="EmptyImage")
_LOADER = ProgressEvent(node_id="4", class_type="CheckpointLoaderSimple")
_HOLD = ProgressEvent(node_id="5", class_type="TestHang")


def pausing_prefetcher(runtime: FakeRuntime, files: FakeFiles) -> tuple[Prefetcher, Pausing]:
    loaders = Pausing(runtime)
    return Prefetcher(_GB, runtime, files, meminfo=lambda: "", loaders=loaders), loaders


def test_the_read_pauses_while_the_running_jobs_loader_runs_and_reads_on_after(
    runtime: FakeRuntime,
) -> None:
    """One chunk read while the running job makes its image; its loader starts: the
    chunk under way is the last until the next node starts, then the file is read through.
    The run's own progress still reaches its callback, every event."""
    a = Path("/m/a")
    files = FakeFiles({a: 50}, hold_after=1)
    prefetcher, loaders = pausing_prefetcher(runtime, files)
    told: list[ProgressEvent] = []
    with prefetcher.running(JobSpec("a", loading_run(), on_progress=told.append)) as spec:
        spec.on_progress(_IMAGE)
        prefetch = prefetcher.start("b", lambda: [a])
        assert files.holding.wait(_HANG_S)  # a chunk read, the second under way
        spec.on_progress(_LOADER)
        files.go.set()
        assert loaders.blocked.wait(_HANG_S)
        assert files.yielded == {a: 20} and not prefetch.finished.is_set()
        spec.on_progress(_HOLD)  # the loader is done; the run goes on
        assert prefetch.finished.wait(_HANG_S)
    assert prefetch.read == [a] and files.yielded == {a: 50} and prefetch.paused_s > 0
    assert told == [_IMAGE, _LOADER, _HOLD]


def test_the_runs_end_ends_a_pause(runtime: FakeRuntime) -> None:
    """ComfyUI sends no event after the last node: the run's end is the loader's end."""
    a = Path("/m/a")
    files = FakeFiles({a: 30})
    prefetcher, loaders = pausing_prefetcher(runtime, files)
    with prefetcher.running(JobSpec("a", loading_run())) as spec:
        spec.on_progress(_LOADER)
        prefetch = prefetcher.start("b", lambda: [a])
        assert loaders.blocked.wait(_HANG_S)
        assert files.opened == []  # not a byte before the loader is done
    assert prefetch.finished.wait(_HANG_S)
    assert prefetch.read == [a] and files.yielded == {a: 30}


def test_a_stop_during_a_pause_ends_the_read_ahead_at_once(runtime: FakeRuntime) -> None:
    """The job's turn, end or cancel stops a paused read-ahead while the loader still runs."""
    a, b = Path("/m/a"), Path("/m/b")
    files = FakeFiles({a: 30, b: 30})
    prefetcher, loaders = pausing_prefetcher(runtime, files)
    with prefetcher.running(JobSpec("a", loading_run())) as spec:
        spec.on_progress(_LOADER)
        prefetch = prefetcher.start("b", lambda: [a, b])
        assert loaders.blocked.wait(_HANG_S)
        prefetch.stop()
        assert prefetch.finished.wait(_HANG_S)  # the loader has not ended
        assert prefetch.read == [] and files.yielded == {} and b not in files.opened


@pytest.mark.parametrize("node", [None, _IMAGE, _HOLD], ids=["no-node-yet", "image", "hold"])
def test_no_pause_while_no_loader_runs(runtime: FakeRuntime, node: ProgressEvent | None) -> None:
    """The running job's node is not a loader (or none started yet): read through."""
    a = Path("/m/a")
    files = FakeFiles({a: 30})
    prefetcher, loaders = pausing_prefetcher(runtime, files)
    with prefetcher.running(JobSpec("a", loading_run())) as spec:
        if node is not None:
            spec.on_progress(node)
        prefetch = run_prefetch(prefetcher, [a])
    assert prefetch.read == [a] and prefetch.paused_s == 0 and not loaders.blocked.is_set()


def test_no_pause_with_no_job_running(runtime: FakeRuntime) -> None:
    a = Path("/m/a")
    files = FakeFiles({a: 30})
    prefetcher, loaders = pausing_prefetcher(runtime, files)
    prefetch = run_prefetch(prefetcher, [a])
    assert prefetch.read == [a] and not loaders.blocked.is_set()


class AskCounting:
    """The engine, counting what it is asked of loader inputs."""

    def __init__(self, runtime: FakeRuntime) -> None:
        self.runtime, self.asked = runtime, 0

    def node_definitions(self) -> dict[str, Any]:
        return self.runtime.node_definitions()

    def file_inputs(self, class_type: str) -> frozenset[str]:
        self.asked += 1
        return self.runtime.file_inputs(class_type)

    def model_folder_of(self, class_type: str, input_name: str) -> Any:
        self.asked += 1
        return self.runtime.model_folder_of(class_type, input_name)


def test_a_run_with_no_read_ahead_asks_nothing_of_its_loaders(runtime: FakeRuntime) -> None:
    """A job alone pays for a comparison per event and a lock per node: which nodes are
    loaders is found only when a read-ahead asks. Off, the spec is the job's own."""
    engine = AskCounting(runtime)
    loaders = RunningLoaders(engine)
    with loaders.running(JobSpec("a", loading_run())) as spec:
        for event in (_IMAGE, _LOADER, _HOLD):
            spec.on_progress(event)
    assert engine.asked == 0
    own = JobSpec("a", loading_run())
    with Prefetcher(0, runtime).running(own) as spec:
        assert spec is own


# -- when the worker asks for it -----------------------------------------------------------


def worker_with(settings: Settings, files: FakeFiles | None = None, jobs: int = 2) -> Worker:
    worker = make_worker(settings, jobs=jobs)
    if files is not None:
        worker.prefetcher = Prefetcher(_GB, worker.runtime, files, meminfo=lambda: "")
    return worker


def checkpoint_on_disk(worker: Worker, size: int = 50) -> Path:
    return put(fake(worker).models_dir / "checkpoints" / "tiny.safetensors", size).resolve()


def waiting_with_checkpoint(tmp_path: Path) -> tuple[dict[str, Any], Path, Path]:
    """A run that names a checkpoint and waits for the test's file (TestWaitFile)."""
    cue, release = tmp_path / "cue", tmp_path / "release"
    workflow = workflows.checkpoint("tiny.safetensors")
    workflow["1"] = {
        "class_type": "TestWaitFile",
        "inputs": {"cue": str(cue), "release": str(release)},
    }
    return workflow, cue, release


def test_a_job_that_waits_for_the_engine_reads_its_model_ahead_and_stops_at_its_turn(
    settings: Settings, tmp_path: Path
) -> None:
    """A's run is held; B (a checkpoint, 5 chunks) reads its file meanwhile, held after
    one chunk. When B's run starts (A let go), B's read stops at the next chunk while
    B's run is still going."""
    files = FakeFiles({}, hold_after=1)
    worker = worker_with(settings, files)
    ckpt = checkpoint_on_disk(worker)
    files.sizes[ckpt], files.closed[ckpt] = 50, threading.Event()
    runtime = fake(worker)
    a = handle_in_thread(worker, {"id": "a", "input": {"workflow": workflows.hangs()}})
    b_workflow, cue, release = waiting_with_checkpoint(tmp_path)
    try:
        assert runtime.hanging.wait(_HANG_S)
        b = handle_in_thread(worker, {"id": "b", "input": {"workflow": b_workflow}})
        assert files.holding.wait(_HANG_S)  # B reads while A's run holds the engine
        assert files.opened == [ckpt] and a[0].is_alive()
    finally:
        runtime.release.set()
    assert answer_of(*a)["errors"] == []
    try:
        wait_for_file(cue)  # B's run has begun: its turn came
        files.go.set()
        assert files.closed[ckpt].wait(_HANG_S)
        assert files.yielded == {ckpt: 20}  # stopped at the next chunk, not read through
        assert b[0].is_alive()  # and B's run still going: the turn stopped it
    finally:
        release.write_text("go")
        files.go.set()
    assert answer_of(*b)["errors"] == []


def test_a_cancelled_waiting_job_stops_its_read_ahead(settings: Settings, tmp_path: Path) -> None:
    files = FakeFiles({}, hold_after=1)
    worker = worker_with(settings, files)
    ckpt = checkpoint_on_disk(worker)
    files.sizes[ckpt], files.closed[ckpt] = 50, threading.Event()
    runtime = fake(worker)
    a = handle_in_thread(worker, {"id": "a", "input": {"workflow": workflows.hangs()}})
    try:
        assert runtime.hanging.wait(_HANG_S)
        b_input = {"workflow": workflows.checkpoint("tiny.safetensors")}
        b = handle_in_thread(worker, {"id": "b", "input": b_input})
        assert files.holding.wait(_HANG_S)
        assert worker.cancel("b")
        assert answer_of(*b)["code"] == "execution_interrupted"
        files.go.set()
        assert files.closed[ckpt].wait(_HANG_S)
        assert files.yielded == {ckpt: 20}
        assert a[0].is_alive()  # A's run untouched
    finally:
        runtime.release.set()
        files.go.set()
    assert answer_of(*a)["errors"] == []


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_job_alone_never_reads_ahead(settings: Settings, jobs: int) -> None:
    """Nothing holds the engine: ComfyUI reads the file at once itself."""
    worker = worker_with(settings, jobs=jobs)
    checkpoint_on_disk(worker)
    started: list[str] = []
    original = worker.prefetcher.start

    def noting(job_id: str, files: Any) -> Prefetch:
        started.append(job_id)
        return original(job_id, files)

    worker.prefetcher.start = noting  # type: ignore[method-assign]
    body = worker.handle(
        {"id": "a", "input": {"workflow": workflows.checkpoint("tiny.safetensors")}}
    )
    assert body["errors"] == [] and started == []


def wait_for_file(path: Path) -> None:
    from tests.unit.test_pipeline import wait_until

    wait_until(path.exists)


class CountingDisk(DiskReader):
    """The real reader on real files, noting each file read through."""

    def __init__(self) -> None:
        super().__init__(chunk_bytes=64 * 1024)
        self.read: dict[Path, int] = {}
        self.through = threading.Event()

    def chunks(self, path: Path) -> Generator[int, None, None]:
        for count in super().chunks(path):
            self.read[path] = self.read.get(path, 0) + count
            yield count
        self.through.set()


def test_a_waiting_jobs_real_checkpoint_file_is_read_through_from_disk(
    settings: Settings,
) -> None:
    """The worker with the real reader: B's 1 MiB checkpoint on disk is read whole while
    A's run is held, and both jobs answer."""
    disk = CountingDisk()
    worker = make_worker(settings)
    worker.prefetcher = Prefetcher(_GB, worker.runtime, disk)
    ckpt = checkpoint_on_disk(worker, size=1024 * 1024)
    runtime = fake(worker)
    a = handle_in_thread(worker, {"id": "a", "input": {"workflow": workflows.hangs()}})
    try:
        assert runtime.hanging.wait(_HANG_S)
        b_input = {"workflow": workflows.checkpoint("tiny.safetensors")}
        b = handle_in_thread(worker, {"id": "b", "input": b_input})
        assert disk.through.wait(_HANG_S)
        assert disk.read == {ckpt: 1024 * 1024} and a[0].is_alive()
    finally:
        runtime.release.set()
    assert answer_of(*a)["errors"] == [] and answer_of(*b)["errors"] == []


def loading_job_and_waiting_one(
    settings: Settings, tmp_path: Path
) -> tuple[Worker, FakeFiles, Pausing, Path, list[Prefetch]]:
    """A worker whose running job's loader will hold (``hold_loads``), with B's
    checkpoint on a fake disk and each read-ahead noted."""
    files = FakeFiles({})
    worker = make_worker(settings)
    loaders = Pausing(worker.runtime)
    worker.prefetcher = Prefetcher(_GB, worker.runtime, files, meminfo=lambda: "", loaders=loaders)
    put(fake(worker).models_dir / "checkpoints" / "a.ckpt")
    b_ckpt = checkpoint_on_disk(worker)
    files.sizes[b_ckpt], files.closed[b_ckpt] = 50, threading.Event()
    started: list[Prefetch] = []
    original = worker.prefetcher.start

    def noting(job_id: str, chosen: Any) -> Prefetch:
        started.append(original(job_id, chosen))
        return started[-1]

    worker.prefetcher.start = noting  # type: ignore[method-assign]
    fake(worker).hold_loads = True
    return worker, files, loaders, b_ckpt, started


def test_a_waiting_job_reads_ahead_once_the_running_jobs_loader_is_done(
    settings: Settings, tmp_path: Path
) -> None:
    """Through the worker: A's run starts with its loader (held); B waits for the engine
    and its read-ahead pauses before its first byte; A's loader ends, A's run goes on
    (held), and B's file is read through meanwhile."""
    worker, files, loaders, b_ckpt, _ = loading_job_and_waiting_one(settings, tmp_path)
    runtime = fake(worker)
    a = handle_in_thread(worker, {"id": "a", "input": {"workflow": loading_run()}})
    try:
        assert runtime.loading.wait(_HANG_S)
        b_input = {"workflow": workflows.checkpoint("tiny.safetensors")}
        b = handle_in_thread(worker, {"id": "b", "input": b_input})
        assert loaders.blocked.wait(_HANG_S)
        assert files.opened == []  # B reads nothing while A loads
        runtime.loaded.set()
        assert files.closed[b_ckpt].wait(_HANG_S)
        # A's next node starts (which lets B read) before that node says it holds.
        assert runtime.hanging.wait(_HANG_S)
        assert files.yielded == {b_ckpt: 50} and a[0].is_alive()
    finally:
        runtime.loaded.set()
        runtime.release.set()
    assert answer_of(*a)["errors"] == [] and answer_of(*b)["errors"] == []


def test_a_waiting_job_cancelled_while_its_read_ahead_pauses_ends_at_once(
    settings: Settings, tmp_path: Path
) -> None:
    """B is cancelled while A's loader still runs: B answers, its read-ahead ends having
    read nothing, and A's run is untouched."""
    worker, files, loaders, _, started = loading_job_and_waiting_one(settings, tmp_path)
    runtime = fake(worker)
    a = handle_in_thread(worker, {"id": "a", "input": {"workflow": loading_run()}})
    try:
        assert runtime.loading.wait(_HANG_S)
        b_input = {"workflow": workflows.checkpoint("tiny.safetensors")}
        b = handle_in_thread(worker, {"id": "b", "input": b_input})
        assert loaders.blocked.wait(_HANG_S)
        assert worker.cancel("b")
        assert answer_of(*b)["code"] == "execution_interrupted"
        (prefetch,) = started
        assert prefetch.finished.wait(_HANG_S)
        assert files.yielded == {} and not runtime.loaded.is_set() and a[0].is_alive()
    finally:
        runtime.loaded.set()
        runtime.release.set()
    assert answer_of(*a)["errors"] == []
