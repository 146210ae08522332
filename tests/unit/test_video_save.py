"""SaveVideo's encode handed off during a worker's run (``engine.runtime.video_save``), without
ComfyUI: a stand-in ``VideoFromComponents`` whose ``save_to`` writes a file, and a pool
that holds each encode until the test lets it go. ``tests/engine/test_video_save_real.py``
runs ComfyUI's own SaveVideo and compares the files with ComfyUI's own.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import pytest

from engine.deadline import Deadline
from engine.runtime import fast_save, video_save
from engine.runtime.pending_files import PendingFiles
from engine.runtime.png_encoders import EncoderPool
from tests.unit.test_fast_save import GatedPool

_FORMATS = (("auto", "mp4"), ("auto", "h264"))


class _Images:
    """The frames' shape, as a tensor gives it (torch is not here)."""

    ndim = 4
    shape = (3, 4, 6, 3)


class _Components:
    images = _Images()
    audio = None
    frame_rate = 24


class _Encoded:
    """What ``video_file`` hands the pool: written as text, so a test can read it."""

    def __init__(self, text: str) -> None:
        self.text = text

    def save(self, path: str) -> None:
        Path(path).write_text(self.text)


class _Broken:
    def save(self, path: str) -> None:
        Path(path).write_text("half")
        raise ValueError("the encoder refused the frames")


class _Video:
    """A ``VideoFromComponents`` stand-in: ``save_to`` is ComfyUI's own, in the node."""

    calls: list[Any]

    def get_components(self) -> _Components:
        return _Components()

    def save_to(
        self, path: Any, format: Any = "auto", codec: Any = "auto", metadata: Any = None
    ) -> None:
        if format not in ("auto", "mp4"):
            raise ValueError("Only MP4 format is supported for now")
        type(self).calls.append(path)
        if isinstance(path, io.BytesIO):
            path.write(b"inline")
        else:
            Path(path).write_text("inline")


@pytest.fixture
def video_class(tmp_path: Path) -> Any:
    video = type("VideoFromComponents", (_Video,), {"calls": []})
    assert video_save.install(video, lambda: str(tmp_path), _FORMATS)
    return video


@pytest.fixture
def pool(monkeypatch: pytest.MonkeyPatch) -> GatedPool:
    gated = GatedPool()
    monkeypatch.setattr(video_save, "_shared_pool", lambda: gated)
    return gated


@pytest.fixture
def encoded(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """What ``video_file`` was asked for: its components and metadata."""
    asked: list[Any] = []

    def video_file(components: Any, metadata: Any) -> _Encoded:
        asked.append((components, metadata))
        return _Encoded(f"encoded {metadata}")

    monkeypatch.setattr(video_save, "video_file", video_file)
    return asked


def test_during_a_handed_off_run_the_node_returns_before_the_encode(
    video_class: Any, pool: GatedPool, encoded: list[Any], tmp_path: Path
) -> None:
    pending = PendingFiles()
    path = tmp_path / "video" / "clip_00001_.mp4"
    path.parent.mkdir()
    deadline = Deadline.start(60)
    with fast_save.saves_into(pending, deadline):
        returned = video_class().save_to(str(path), format="auto", codec="h264", metadata={"a": 1})
    assert returned is None
    try:
        assert video_class.calls == []  # ComfyUI's own encode did not run
        assert pool.submitted == 1 and len(pending) == 1
        assert path.exists() and path.stat().st_size == 0  # the name is taken already
        assert [m for _, m in encoded] == [{"a": 1}]
    finally:
        pool.gate.set()
    assert pending.wait() == []
    assert path.read_text() == "encoded {'a': 1}"


def test_the_encode_waits_with_the_jobs_deadline(
    video_class: Any, monkeypatch: pytest.MonkeyPatch, encoded: list[Any], tmp_path: Path
) -> None:
    submitted: list[Any] = []
    monkeypatch.setattr(
        video_save, "submit", lambda video, path, deadline: submitted.append(deadline) or _done()
    )
    deadline = Deadline.start(60)
    with fast_save.saves_into(PendingFiles(), deadline):
        video_class().save_to(str(tmp_path / "a.mp4"))
    assert submitted == [deadline]


def _done() -> Any:
    from concurrent.futures import Future

    done: Future[None] = Future()
    done.set_result(None)
    return done


def test_a_failed_encode_is_reported_for_its_file_and_removed(
    video_class: Any, pool: GatedPool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(video_save, "video_file", lambda components, metadata: _Broken())
    pending = PendingFiles()
    path = tmp_path / "clip_00001_.mp4"
    with fast_save.saves_into(pending):
        video_class().save_to(str(path))
    pool.gate.set()
    ((failed, error),) = pending.wait()
    assert failed == path and "refused the frames" in str(error)
    assert not path.exists()


@pytest.mark.parametrize(
    "case",
    ["no hand-off", "file object", "outside the output folder", "frames save_to fails on"],
)
def test_every_other_call_runs_comfyuis_own_save_to(
    video_class: Any,
    pool: GatedPool,
    encoded: list[Any],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    case: str,
) -> None:
    path: Any = tmp_path / "clip.mp4"
    pending: PendingFiles | None = PendingFiles()
    if case == "no hand-off":
        pending = None  # a lone job: nothing else waits for the engine
    elif case == "file object":
        path = io.BytesIO()
    elif case == "outside the output folder":
        path = tmp_path.parent / f"{tmp_path.name}-elsewhere.mp4"
    else:
        monkeypatch.setattr(video_save, "video_file", lambda components, metadata: None)
    with fast_save.saves_into(pending):
        video_class().save_to(path)
    assert video_class.calls == [path]
    assert pool.submitted == 0 and (pending is None or len(pending) == 0)
    if isinstance(path, Path):
        assert path.read_text() == "inline"
        path.unlink()


def test_a_format_save_to_refuses_still_raises_its_error(
    video_class: Any, pool: GatedPool, encoded: list[Any], tmp_path: Path
) -> None:
    with fast_save.saves_into(PendingFiles()), pytest.raises(ValueError, match="Only MP4"):
        video_class().save_to(str(tmp_path / "a.webm"), format="webm")
    assert pool.submitted == 0


def test_installed_once() -> None:
    video = type("VideoFromComponents", (_Video,), {"calls": []})
    assert video_save.install(video, lambda: "/", _FORMATS)
    wrapped = video.save_to
    assert not video_save.install(video, lambda: "/", _FORMATS)
    assert video.save_to is wrapped


class WrittenText:
    """Sent to a real encoder process, which imports this module to unpickle it."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.size = (1, 1)

    def save(self, path: str) -> None:
        Path(path).write_text(f"{self.text} in {threading.current_thread().name}")


def test_the_encoder_processes_import_what_they_are_sent_from_the_engines_folder(
    tmp_path: Path,
) -> None:
    """The pool the video saves use: its processes get the folder holding ``engine`` (and
    ``tests``) first on their path, so an object of the project unpickles there."""
    repo = str(Path(__file__).resolve().parents[2])
    pool = EncoderPool(1, what="video", importable=(repo,))
    try:
        pool.submit(WrittenText("frames"), (str(tmp_path / "a.txt"),), {}).result(60)
        (encoder,) = pool._idle  # written by a process, not the fallback in this one
        assert encoder.alive()
    finally:
        pool.close()
    assert (tmp_path / "a.txt").read_text() == "frames in MainThread"
