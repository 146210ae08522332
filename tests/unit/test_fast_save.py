"""SaveImage's PNGs through the fast writer or encoder processes, without ComfyUI.

``PNG_ENCODER=pillow``: a batch saved by encoder processes, the same files, the same
errors. ``PNG_ENCODER=fast``: the same pixels and metadata, written on threads.

ComfyUI's ``nodes`` module is replaced by a small module with the same shape: a
``SaveImage.save_images`` that looks ``Image`` up in its module and calls
``Image.fromarray(...).save(path, pnginfo=..., compress_level=...)`` per image.
``tests/engine/test_fast_save_real.py`` kills the helpers between two real SaveImage batch jobs.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pickle
import random
import shutil
import signal
import struct
import termios
import threading
import types
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from engine.deadline import Deadline
from engine.errors import JobInterruptedError
from engine.runtime import fast_save, png_encoders
from engine.runtime.pending_files import PendingFiles
from tests.unit.test_pipeline import wait_until

_NODES_SOURCE = """
import os
from PIL import Image
from PIL.PngImagePlugin import PngInfo


class SaveImage:
    compress_level = 4

    def __init__(self, folder):
        self.folder = folder

    def save_images(self, images, filename_prefix="x", prompt=None):
        results = []
        for number, image in enumerate(images):
            img = Image.fromarray(image)
            metadata = PngInfo()
            metadata.add_text("prompt", repr(prompt))
            name = f"{filename_prefix}_{number:05}_.png"
            img.save(os.path.join(self.folder, name), pnginfo=metadata, compress_level=self.compress_level)
            results.append(name)
        return {"ui": {"images": results}}
"""


def _fake_nodes() -> types.ModuleType:
    module = types.ModuleType("fake_comfy_nodes")
    exec(compile(_NODES_SOURCE, "fake_comfy_nodes", "exec"), module.__dict__)  # noqa: S102  (a fixed fake)
    return module


@contextlib.contextmanager
def encoder(name: str) -> Iterator[None]:
    """``PNG_ENCODER=name`` for the block; the default (fast) and no pool after it."""
    fast_save.configure(name)
    try:
        yield
    finally:
        fast_save.configure("fast")
        pool, fast_save._pool = fast_save._pool, None
        if pool is not None:
            pool.close()


@pytest.fixture
def nodes() -> Iterator[types.ModuleType]:
    """ComfyUI's nodes with ``PNG_ENCODER=pillow``: Pillow's bytes, from encoder processes."""
    with encoder("pillow"):
        yield _fake_nodes()


@pytest.fixture
def fast_nodes() -> Iterator[types.ModuleType]:
    """ComfyUI's nodes with ``PNG_ENCODER=fast`` (the default)."""
    with encoder("fast"):
        yield _fake_nodes()


class Pixels(bytes):
    """RGB pixels that ``Image.fromarray`` takes, as it takes ComfyUI's numpy arrays
    (the dev environment has no numpy)."""

    height, width = 64, 96

    @property
    def __array_interface__(self) -> dict[str, Any]:
        return {"shape": (self.height, self.width, 3), "typestr": "|u1", "version": 3, "data": self}


def _batch(count: int, seed: int = 0) -> list[Pixels]:
    rng = random.Random(seed)  # noqa: S311  (test pixels)
    return [
        Pixels(
            bytes(
                min(255, x * 2 + rng.randrange(40))
                for _ in range(Pixels.height)
                for x in range(Pixels.width)
                for _ in range(3)
            )
        )
        for _ in range(count)
    ]


def _digests(folder: Path, names: list[str]) -> list[str]:
    return [hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in names]


def _save_serially(
    nodes: types.ModuleType, tmp_path: Path, images: list[Pixels], prefix: str, **kwargs: Any
) -> tuple[Path, dict[str, Any]]:
    """The reference: ``images`` saved into ``tmp_path/serial`` before anything is installed."""
    serial = tmp_path / "serial"
    serial.mkdir()
    return serial, nodes.SaveImage(serial).save_images(images, prefix, **kwargs)


def test_a_batch_is_saved_by_encoder_processes_with_the_same_bytes(
    nodes: types.ModuleType, tmp_path: Path
) -> None:
    parallel = tmp_path / "parallel"
    parallel.mkdir()
    images = _batch(4)
    serial, expected = _save_serially(nodes, tmp_path, images, "b", prompt={"seed": 1})
    assert fast_save.install(nodes)
    result = nodes.SaveImage(parallel).save_images(images, "b", prompt={"seed": 1})
    assert result == expected
    names = expected["ui"]["images"]
    assert _digests(parallel, names) == _digests(serial, names)
    pool = fast_save._pool
    assert pool is not None and pool._idle, "the files were written by encoder processes"
    assert nodes.Image.__name__ == "PIL.Image", "nodes.Image is put back after the call"


def test_a_single_image_is_saved_in_process(nodes: types.ModuleType, tmp_path: Path) -> None:
    assert fast_save.install(nodes)
    nodes.SaveImage(tmp_path).save_images(_batch(1), "one")
    assert (tmp_path / "one_00000_.png").is_file()
    assert fast_save._pool is None


def test_an_encoder_error_is_raised_from_the_node(nodes: types.ModuleType, tmp_path: Path) -> None:
    assert fast_save.install(nodes)
    with pytest.raises(FileNotFoundError):
        nodes.SaveImage(tmp_path / "missing").save_images(_batch(2), "x")
    # The pool still works for the next job.
    nodes.SaveImage(tmp_path).save_images(_batch(2), "next")
    assert (tmp_path / "next_00001_.png").is_file()


def test_without_encoder_processes_the_worker_saves_the_same_bytes_itself(
    nodes: types.ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_process(self: Any, importable: tuple[str, ...] = ()) -> None:
        raise OSError("cannot start a process")

    monkeypatch.setattr(png_encoders._Encoder, "__init__", no_process)
    parallel = tmp_path / "parallel"
    parallel.mkdir()
    images = _batch(3, seed=2)
    serial, expected = _save_serially(nodes, tmp_path, images, "f")
    assert fast_save.install(nodes)
    nodes.SaveImage(parallel).save_images(images, "f")
    names = expected["ui"]["images"]
    assert _digests(parallel, names) == _digests(serial, names)


def test_install_twice_patches_once(nodes: types.ModuleType) -> None:
    assert fast_save.install(nodes)
    assert not fast_save.install(nodes)
    assert nodes.SaveImage.save_images.__wrapped__.__name__ == "save_images"


def _encoder_pids() -> list[int]:
    pool = fast_save._pool
    assert pool is not None
    return [encoder.process.pid for encoder in pool._idle]


def _kill(pids: list[int]) -> None:
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    for pid in pids:  # reaped by the test, so the pool finds them dead, not exiting
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def test_killed_encoders_make_the_batch_save_in_process_and_the_pool_is_rebuilt(
    nodes: types.ModuleType, tmp_path: Path
) -> None:
    """Helpers killed between two jobs: the next batch is written whole (no BrokenPipeError),
    and the batch after it runs on fresh encoder processes again."""
    images = _batch(4, seed=3)
    serial, expected = _save_serially(nodes, tmp_path, images, "k")
    names = expected["ui"]["images"]
    assert fast_save.install(nodes)
    nodes.SaveImage(tmp_path).save_images(images, "first")
    killed = _encoder_pids()
    assert killed, "the first batch started encoder processes"
    _kill(killed)

    after = tmp_path / "after"
    after.mkdir()
    assert nodes.SaveImage(after).save_images(images, "k") == expected
    assert _digests(after, names) == _digests(serial, names)

    again = tmp_path / "again"
    again.mkdir()
    nodes.SaveImage(again).save_images(images, "k")
    assert _digests(again, names) == _digests(serial, names)
    alive = _encoder_pids()
    assert alive and not set(alive) & set(killed), "the pool started new encoder processes"
    pool = fast_save._pool
    assert pool is not None
    assert all(encoder.process.poll() is None for encoder in pool._idle)


def test_an_encoder_that_answers_garbage_is_replaced(
    nodes: types.ModuleType, tmp_path: Path
) -> None:
    """A helper that writes something that is not an answer: the image is saved here, that
    helper is ended, and no job fails."""
    images = _batch(2, seed=4)
    assert fast_save.install(nodes)
    nodes.SaveImage(tmp_path).save_images(images, "warm")
    pool = fast_save._pool
    assert pool is not None
    broken = pool._idle[-1]  # the first one taken
    # Stop its reading loop, so it never answers, and make its pipe hold a bad answer.
    os.kill(broken.process.pid, signal.SIGSTOP)
    assert broken.process.stdout is not None
    out = tmp_path / "out"
    out.mkdir()
    try:
        fake = os.pipe()
        answer = pickle.dumps("not an answer")  # neither None nor an exception
        os.write(fake[1], png_encoders._HEADER.pack(len(answer)) + answer)
        os.close(fake[1])
        broken.process.stdout = os.fdopen(fake[0], "rb")
        nodes.SaveImage(out).save_images(images, "g")
    finally:
        with contextlib.suppress(ProcessLookupError):  # ended by the pool, as it should be
            os.kill(broken.process.pid, signal.SIGCONT)
    assert sorted(p.name for p in out.iterdir()) == ["g_00000_.png", "g_00001_.png"]
    assert broken not in pool._idle


def _frozen_idle_encoders(nodes: types.ModuleType, tmp_path: Path) -> list[Any]:
    """Warm the pool with a batch, then SIGSTOP every idle encoder: alive, never answering."""
    warm = tmp_path / "warm"
    warm.mkdir()
    nodes.SaveImage(warm).save_images(_batch(2, seed=7), "warm")
    pool = fast_save._pool
    assert pool is not None and pool._idle
    frozen = list(pool._idle)
    for helper in frozen:
        os.kill(helper.process.pid, signal.SIGSTOP)
    return frozen


def _thaw(frozen: list[Any]) -> None:
    for helper in frozen:
        with contextlib.suppress(ProcessLookupError):  # ended by the pool, as it should be
            os.kill(helper.process.pid, signal.SIGCONT)


def unread_bytes(helper: Any) -> int:
    """Bytes sent to ``helper`` that it has not read (a frozen helper holds the image)."""
    assert helper.process.stdin is not None
    raw = fcntl.ioctl(helper.process.stdin.fileno(), termios.FIONREAD, b"\0\0\0\0")
    return int(struct.unpack("i", raw)[0])


def test_a_frozen_encoder_is_ended_when_its_answer_is_overdue_and_the_image_saved_here(
    nodes: types.ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Helpers stopped (SIGSTOP), not dead: without a job's deadline, the answer is overdue
    after the bound (0.2 s here: the helper never answers, however long), the helper is
    killed and left out, the batch is written here with the same bytes, and the next batch
    runs on fresh helpers."""
    images = _batch(2, seed=8)
    serial, expected = _save_serially(nodes, tmp_path, images, "f")
    names = expected["ui"]["images"]
    assert fast_save.install(nodes)
    frozen = _frozen_idle_encoders(nodes, tmp_path)
    monkeypatch.setattr(png_encoders, "_ANSWER_BASE_S", 0.2)
    monkeypatch.setattr(png_encoders, "_ANSWER_S_PER_MEGAPIXEL", 0.0)
    out = tmp_path / "out"
    out.mkdir()
    saved: list[Any] = []
    saver = threading.Thread(
        target=lambda: saved.append(nodes.SaveImage(out).save_images(images, "f"))
    )
    try:
        saver.start()
        saver.join(30)  # far beyond the bound: only a wait without one reaches it
        assert not saver.is_alive(), "the save waited on a frozen encoder"
    finally:
        _thaw(frozen)
    assert saved == [expected]
    assert _digests(out, names) == _digests(serial, names)
    assert all(helper.process.poll() is not None for helper in frozen)  # ended
    pool = fast_save._pool
    assert pool is not None and not set(frozen) & set(pool._idle)
    monkeypatch.undo()  # a fresh helper's start (Python, Pillow) takes longer than 0.2 s
    again = tmp_path / "again"
    again.mkdir()
    nodes.SaveImage(again).save_images(images, "f")
    assert _digests(again, names) == _digests(serial, names)
    assert pool._idle and not set(frozen) & set(pool._idle)


def test_a_cancel_ends_the_wait_for_a_frozen_encoder_and_the_next_job_saves(
    nodes: types.ModuleType, tmp_path: Path
) -> None:
    """During a run the encode is handed off; its helper is frozen with the image in its
    pipe (the cue). The answer bound is far off (10 s and more): the job's cancel ends the
    helper at once, the file fails with the job's own error, and the next job saves on a
    fresh helper."""
    assert fast_save.install(nodes)
    frozen = _frozen_idle_encoders(nodes, tmp_path)
    deadline = Deadline.start(None)
    pending = PendingFiles()
    out = tmp_path / "out"
    out.mkdir()
    try:
        with fast_save.saves_into(pending, deadline):
            nodes.SaveImage(out).save_images(_batch(1, seed=9), "c")
        wait_until(lambda: any(unread_bytes(helper) > 0 for helper in frozen))
        deadline.cancel()
        failed: list[Any] = []
        waiter = threading.Thread(target=lambda: failed.extend(pending.wait()))
        waiter.start()
        waiter.join(5)  # under the 10 s bound: only the cancel ends it in time
        assert not waiter.is_alive(), "the job waited on a frozen encoder after its cancel"
    finally:
        _thaw(frozen)
    ((path, error),) = failed
    assert path == out / "c_00000_.png" and not path.exists()
    assert isinstance(error, JobInterruptedError)
    assert error.message == "The job was cancelled and stopped while writing output PNGs"
    nxt = PendingFiles()
    with fast_save.saves_into(nxt, Deadline.start(None)):
        nodes.SaveImage(out).save_images(_batch(1, seed=9), "n")
    assert nxt.wait() == []
    assert (out / "n_00000_.png").stat().st_size > 0


class GatedPool:
    """A writer as a run sees it (the encoder pool or the fast writer), each write held
    until the test opens the gate. ``write``: how it writes (default ``image.save``)."""

    def __init__(self, write: Any = None) -> None:
        self.gate = threading.Event()
        self.submitted = 0
        self.write = write

    def submit(
        self, image: Any, args: tuple[Any, ...], kwargs: dict[str, Any], deadline: Any = None
    ) -> Future[None]:
        self.submitted += 1
        done: Future[None] = Future()

        def encode() -> None:
            self.gate.wait(30)
            try:
                if self.write is None:
                    image.save(*args, **kwargs)
                else:
                    self.write(image, args, kwargs)
            except Exception as exc:
                done.set_exception(exc)
            else:
                done.set_result(None)

        threading.Thread(target=encode, daemon=True).start()
        return done


@pytest.mark.parametrize("count", [1, 3])
def test_during_a_run_the_node_hands_its_encodes_off_and_returns_at_once(
    nodes: types.ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int
) -> None:
    """Within saves_into, save_images returns while every encode (one image too) is still
    held: each file's name is taken on disk, empty; the files are whole once the pending
    files are waited for, the same bytes as ComfyUI's own save."""
    images = _batch(count, seed=5)
    serial, expected = _save_serially(nodes, tmp_path, images, "h")
    names = expected["ui"]["images"]
    pool = GatedPool()
    monkeypatch.setattr(fast_save, "_shared_pool", lambda: pool)
    assert fast_save.install(nodes)
    pending = PendingFiles()
    with fast_save.saves_into(pending):
        assert nodes.SaveImage(tmp_path).save_images(images, "h") == expected
    assert pool.submitted == count and len(pending) == count
    assert [(tmp_path / n).stat().st_size for n in names] == [0] * count  # names taken
    pool.gate.set()
    assert pending.wait() == []
    assert _digests(tmp_path, names) == _digests(serial, names)


def test_a_handed_off_encode_that_fails_is_reported_and_its_file_removed(
    nodes: types.ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folder is gone by the time the encode runs: waiting names the file and the error."""
    pool = GatedPool()
    monkeypatch.setattr(fast_save, "_shared_pool", lambda: pool)
    assert fast_save.install(nodes)
    folder = tmp_path / "gone"
    folder.mkdir()
    pending = PendingFiles()
    with fast_save.saves_into(pending):
        nodes.SaveImage(folder).save_images(_batch(1), "bad")
    shutil.rmtree(folder)
    pool.gate.set()
    ((path, error),) = pending.wait()
    assert path == folder / "bad_00000_.png" and not path.exists()
    assert isinstance(error, FileNotFoundError)


def test_outside_a_run_a_single_image_is_still_saved_in_the_node(
    nodes: types.ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = GatedPool()
    monkeypatch.setattr(fast_save, "_shared_pool", lambda: pool)
    assert fast_save.install(nodes)
    with fast_save.saves_into(None):
        nodes.SaveImage(tmp_path).save_images(_batch(1), "plain")
    assert pool.submitted == 0 and (tmp_path / "plain_00000_.png").stat().st_size > 0


def _pixels_and_text(path: Path) -> tuple[str, tuple[int, int], bytes, dict[str, str]]:
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return image.mode, image.size, image.tobytes(), dict(image.text)


def test_fast_a_batch_has_comfyuis_pixels_and_metadata_without_encoder_processes(
    fast_nodes: types.ModuleType, tmp_path: Path
) -> None:
    fast = tmp_path / "fast"
    fast.mkdir()
    images = _batch(4, seed=6)
    serial, expected = _save_serially(fast_nodes, tmp_path, images, "p", prompt={"seed": 2})
    assert fast_save.install(fast_nodes)
    assert fast_nodes.SaveImage(fast).save_images(images, "p", prompt={"seed": 2}) == expected
    for name in expected["ui"]["images"]:
        assert _pixels_and_text(fast / name) == _pixels_and_text(serial / name)
        assert (fast / name).read_bytes() != (serial / name).read_bytes()  # another encoder
    assert fast_save._pool is None, "no encoder process was started"
    assert fast_nodes.Image.__name__ == "PIL.Image"


def test_fast_one_image_outside_a_run_is_written_in_the_node(
    fast_nodes: types.ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gated = GatedPool()
    monkeypatch.setattr(fast_save, "_shared_fast", lambda: gated)
    images = _batch(1, seed=7)
    serial, expected = _save_serially(fast_nodes, tmp_path, images, "o")
    assert fast_save.install(fast_nodes)
    fast_nodes.SaveImage(tmp_path).save_images(images, "o")
    assert gated.submitted == 0  # no thread hand-off for one image waited for anyway
    (name,) = expected["ui"]["images"]
    assert _pixels_and_text(tmp_path / name) == _pixels_and_text(serial / name)


@pytest.mark.parametrize("count", [1, 3])
def test_fast_during_a_run_the_node_hands_its_writes_off_and_returns_at_once(
    fast_nodes: types.ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int
) -> None:
    images = _batch(count, seed=8)
    serial, expected = _save_serially(fast_nodes, tmp_path, images, "w")
    names = expected["ui"]["images"]
    gated = GatedPool(fast_save._write_fast)
    monkeypatch.setattr(fast_save, "_shared_fast", lambda: gated)
    assert fast_save.install(fast_nodes)
    pending = PendingFiles()
    with fast_save.saves_into(pending):
        assert fast_nodes.SaveImage(tmp_path).save_images(images, "w") == expected
    assert gated.submitted == count and len(pending) == count
    assert [(tmp_path / n).stat().st_size for n in names] == [0] * count  # names taken
    gated.gate.set()
    assert pending.wait() == []
    for name in names:
        assert _pixels_and_text(tmp_path / name) == _pixels_and_text(serial / name)


def test_fast_a_save_the_writer_does_not_handle_goes_to_pillow(
    fast_nodes: types.ModuleType, tmp_path: Path
) -> None:
    """An image with ``info`` to carry (here a gamma) is Pillow's to write: same bytes."""
    from PIL import Image

    class WithInfo:
        @staticmethod
        def fromarray(array: Any) -> Any:
            image = Image.fromarray(array)
            image.info["gamma"] = 0.45455
            return image

    fast = tmp_path / "fast"
    fast.mkdir()
    fast_nodes.Image = WithInfo  # what save_images looks up, as ComfyUI's nodes do
    images = _batch(2, seed=9)
    serial, expected = _save_serially(fast_nodes, tmp_path, images, "i")
    assert fast_save.install(fast_nodes)
    fast_nodes.SaveImage(fast).save_images(images, "i")
    names = expected["ui"]["images"]
    assert _digests(fast, names) == _digests(serial, names)
    assert fast_save._pool is not None, "Pillow wrote them, in encoder processes"


def test_configure_refuses_an_unknown_encoder() -> None:
    with pytest.raises(ValueError, match="fast, pillow"):
        fast_save.configure("zopfli")
