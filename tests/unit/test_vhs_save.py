"""VHS_VideoCombine's encode handed off during a worker's run (``engine.runtime.vhs_save``),
without ComfyUI or VideoHelperSuite.

VHS's node is replaced by a small module with its shape: a ``combine_video`` that writes a
first-frame PNG (or not: ``VHS_MetadataImage`` off), starts its module's generator
``ffmpeg_process`` with ``send(None)``, sends each frame's bytes, and closes it with two
``send(None)`` (the first answers the frames written). The generator writes its metadata
file under ``folder_paths.get_temp_directory()`` and starts a real process with
``subprocess.Popen``, which copies its stdin to the file (or waits, or fails), as ffmpeg
would. ``tests/engine/test_vhs_save_real.py`` runs VHS's own node and ffmpeg.
"""

from __future__ import annotations

import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.deadline import Deadline
from engine.errors import JobInterruptedError, JobTimeoutError
from engine.runtime import fast_save, vhs_save
from engine.runtime.pending_files import PendingFiles

# The shape of VHS's nodes.py at the image's pin, cut to what the hand-off touches.
_VHS = """
import os
import subprocess
import threading
import types

folder_paths = types.SimpleNamespace(get_temp_directory=None)
HOLD = threading.Event()
HOLD.set()
STARTED = threading.Event()
SEEN = {}


def ffmpeg_process(args, video_format, video_metadata, file_path, env):
    frame_data = yield
    if threading.current_thread().name == "vhs-encode":  # in the node it never waits
        HOLD.wait()
    SEEN["thread"] = threading.current_thread().name
    total_frames_output = 0
    os.makedirs(folder_paths.get_temp_directory(), exist_ok=True)
    metadata_path = os.path.join(folder_paths.get_temp_directory(), "metadata.txt")
    SEEN["metadata"] = metadata_path
    with open(metadata_path, "w") as f:
        f.write(video_metadata)
    if video_format.get("fail"):
        raise Exception("An error occurred in the ffmpeg subprocess:\\nboom")
    with subprocess.Popen(args + [file_path], stdin=subprocess.PIPE) as proc:
        SEEN["process"] = proc
        STARTED.set()
        while frame_data is not None:
            proc.stdin.write(frame_data)
            frame_data = yield
            total_frames_output += 1
        proc.stdin.close()
        proc.wait()
    yield total_frames_output


class VideoCombine:
    def combine_video(self, frame_rate, loop_count, images=None, filename_prefix="clip",
                      format="video/h264-mp4", audio=None, meta_batch=None, unique_id=None,
                      folder=None, args=(), video_format=None, metadata_image=True):
        stem = os.path.join(folder, filename_prefix + "_00001")
        if metadata_image:
            with open(stem + ".png", "wb") as f:
                f.write(b"png")
        file_path = stem + ".mp4"
        output_process = ffmpeg_process(list(args), video_format or {}, "meta", file_path, {})
        output_process.send(None)
        for image in images:
            output_process.send(image)
        try:
            total_frames_output = output_process.send(None)
            output_process.send(None)
        except StopIteration:
            pass
        return {"result": ((True, [stem + ".png", file_path]),), "total": total_frames_output}
"""

# "ffmpeg": copies its stdin to the file named last, or waits without reading it.
_COPY = "import shutil, sys; shutil.copyfileobj(sys.stdin.buffer, open(sys.argv[1], 'wb'))"
_STALL = "import sys, time; time.sleep(3600)"


@pytest.fixture(autouse=True)
def any_cpu_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hand-off waits for vhs_save.MIN_CPUS CPUs; these tests run it on any machine."""
    monkeypatch.setattr(vhs_save, "MIN_CPUS", 1)


@pytest.fixture
def vhs(tmp_path: Path) -> Iterator[types.ModuleType]:
    module = types.ModuleType("stand_in_vhs_nodes")
    exec(compile(_VHS, "stand_in_vhs_nodes", "exec"), module.__dict__)  # noqa: S102  # this file's
    module.folder_paths.get_temp_directory = lambda: str(tmp_path / "temp")
    original = module.VideoCombine.combine_video
    assert vhs_save.install(module.VideoCombine)
    assert module.VideoCombine.combine_video.__wrapped__ is original
    yield module
    module.HOLD.set()


def _frames(count: int, size: int = 100) -> list[bytes]:
    return [bytes([i % 256]) * size for i in range(count)]


def _call(vhs: types.ModuleType, folder: Path, **kwargs: Any) -> Any:
    inputs: dict[str, Any] = {
        "frame_rate": 8,
        "loop_count": 0,
        "images": _frames(5),
        "format": "video/h264-mp4",
        "folder": str(folder),
        "args": [sys.executable, "-c", _COPY],
        "unique_id": "2",
    }
    inputs.update(kwargs)
    return vhs.VideoCombine().combine_video(**inputs)


_PROMPT = {"1": {"inputs": {}}, "2": {"inputs": {"images": ["1", 0]}}}


def test_during_a_handed_off_run_the_node_returns_before_the_encode(
    vhs: types.ModuleType, tmp_path: Path
) -> None:
    vhs.HOLD.clear()
    pending = PendingFiles()
    with fast_save.saves_into(pending, None, _PROMPT):
        result = _call(vhs, tmp_path)
    video = tmp_path / "clip_00001.mp4"
    # VHS's generator waits at its start: the node returned, nothing written yet.
    assert result["total"] == 5 and len(pending) == 1 and not video.exists()
    vhs.HOLD.set()
    assert pending.wait() == []
    assert video.read_bytes() == b"".join(_frames(5))
    assert vhs.SEEN["thread"] == "vhs-encode"
    # Its metadata file in a folder of its own, removed with the encode.
    assert Path(vhs.SEEN["metadata"]).parent != tmp_path / "temp"
    assert not Path(vhs.SEEN["metadata"]).exists()


def test_the_frames_waiting_for_ffmpeg_are_bounded_in_bytes(tmp_path: Path) -> None:
    """The queue takes frames up to its bound (here QUEUE_FRAMES frames), then the node
    waits until the encode takes one."""
    hold = threading.Event()
    written: list[bytes] = []

    def process(frames: list[bytes]) -> Any:
        hold.wait()  # before it takes the first frame
        frame = yield
        while frame is not None:
            frames.append(frame)
            frame = yield
        yield len(frames)

    encode = vhs_save.Encode(process, (written,), queue_bytes=1)
    frames = _frames(vhs_save.QUEUE_FRAMES + 1)
    for frame in frames[:-1]:
        encode.put(frame)  # within the bound: returns at once
    last_put = threading.Event()
    feeder = threading.Thread(target=lambda: (encode.put(frames[-1]), last_put.set()))
    feeder.start()
    assert not last_put.wait(0.2), "a frame past the bound was queued"
    hold.set()
    assert last_put.wait(30)
    feeder.join()
    encode.finish()
    encode.done.result(timeout=30)
    assert written == frames


def test_a_cancel_kills_a_hung_ffmpeg(vhs: types.ModuleType, tmp_path: Path) -> None:
    """An ffmpeg that reads nothing (hung) is killed when the job is cancelled; the file is
    reported with the job's error, and removed."""
    deadline = Deadline.start(3600.0)
    pending = PendingFiles()
    with fast_save.saves_into(pending, deadline, _PROMPT):
        # Frames bigger than a pipe's buffer: the writes wait on the hung process.
        _call(vhs, tmp_path, images=_frames(3, 1 << 20), args=[sys.executable, "-c", _STALL])
    assert vhs.STARTED.wait(30)
    deadline.cancel()
    ((path, error),) = pending.wait()
    assert path == tmp_path / "clip_00001.mp4" and not path.exists()
    assert isinstance(error, JobInterruptedError) and "while writing output videos" in str(error)
    assert vhs.SEEN["process"].wait(timeout=30) != 0  # killed


def test_the_encode_ends_when_the_jobs_time_is_up(vhs: types.ModuleType, tmp_path: Path) -> None:
    """Its time already up: whether ffmpeg has started (then it is killed) or not (then it
    is not started), the encode ends with the job's timeout error."""
    call = ([sys.executable, "-c", _STALL], {}, "meta", str(tmp_path / "clip.mp4"), {})
    encode = vhs_save.Encode(vhs.ffmpeg_process, call, Deadline(limit_s=1e-9))
    encode.finish()
    with pytest.raises(JobTimeoutError, match="while writing output videos"):
        encode.done.result(timeout=30)
    if "process" in vhs.SEEN:
        assert vhs.SEEN["process"].wait(timeout=30) != 0  # killed


def test_a_failed_encode_is_reported_for_its_file(vhs: types.ModuleType, tmp_path: Path) -> None:
    vhs.HOLD.clear()
    pending = PendingFiles()
    with fast_save.saves_into(pending, None, _PROMPT):
        _call(vhs, tmp_path, video_format={"fail": True})
    vhs.HOLD.set()
    ((path, error),) = pending.wait()
    assert path == tmp_path / "clip_00001.mp4"
    assert "An error occurred in the ffmpeg subprocess" in str(error)


def test_an_encode_that_fails_while_the_node_sends_fails_the_node(
    vhs: types.ModuleType, tmp_path: Path
) -> None:
    """ffmpeg refused before the last frame: the node raises VHS's error, as in the node."""
    pending = PendingFiles()
    with (
        fast_save.saves_into(pending, None, _PROMPT),
        pytest.raises(Exception, match="An error occurred in the ffmpeg subprocess"),
    ):
        # More frames than the queue holds: the node is still sending when it fails.
        _call(vhs, tmp_path, images=_frames(300, 1 << 20), video_format={"fail": True})
    assert len(pending) == 0


def test_a_node_that_fails_part_way_ends_its_encode(
    vhs: types.ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def images() -> Iterator[bytes]:
        yield b"frame"
        raise RuntimeError("a frame could not be made")

    started: list[vhs_save.Encode] = []

    class Recorded(vhs_save.Encode):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            started.append(self)

    monkeypatch.setattr(vhs_save, "Encode", Recorded)
    vhs.HOLD.clear()
    pending = PendingFiles()
    with (
        fast_save.saves_into(pending, None, _PROMPT),
        pytest.raises(RuntimeError, match="could not be made"),
    ):
        _call(vhs, tmp_path, images=images())
    vhs.HOLD.set()
    # Its thread ended (it would wait for frames for ever) and started no process.
    (encode,) = started
    with pytest.raises(Exception, match="the node failed before it sent every frame"):
        encode.done.result(timeout=30)
    assert len(pending) == 0 and "process" not in vhs.SEEN


@pytest.mark.parametrize(
    "case",
    [
        "lone job",
        "few cpus",
        "audio",
        "meta_batch",
        "image format",
        "filenames read",
        "no png",
        "sequence",
    ],
)
def test_every_other_call_runs_vhss_own_generator_in_the_node(
    vhs: types.ModuleType, tmp_path: Path, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if case == "few cpus":  # as on the 2-core machine where the hand-off measured slower
        monkeypatch.setattr(vhs_save, "MIN_CPUS", vhs_save._usable_cpus() + 1)
    kwargs: dict[str, Any] = {
        "audio": {"audio": {"waveform": None}},
        "meta_batch": {"meta_batch": object()},
        "image format": {"format": "image/webp"},
        "no png": {"metadata_image": False},
        "sequence": {"filename_prefix": "frames_%03d"},
    }.get(case, {})
    prompt = dict(_PROMPT)
    if case == "filenames read":
        prompt["3"] = {"inputs": {"filenames": ["2", 0]}}
    pending = PendingFiles()
    hand_off = None if case == "lone job" else pending
    with fast_save.saves_into(hand_off, None, prompt):
        result = _call(vhs, tmp_path, **kwargs)
    assert result["total"] == 5 and len(pending) == 0
    assert vhs.SEEN["thread"] == threading.current_thread().name
    (video,) = tmp_path.glob("*.mp4")
    assert video.read_bytes() == b"".join(_frames(5))


def test_outputs_read_needs_the_running_prompt() -> None:
    """No prompt, or a node it does not hold (one a node expanded into): taken as read."""
    with fast_save.saves_into(PendingFiles(), None, _PROMPT):
        assert fast_save.outputs_read("1") and not fast_save.outputs_read("2")
        assert fast_save.outputs_read("9")
    with fast_save.saves_into(PendingFiles()):
        assert fast_save.outputs_read("2")


def test_installed_once(vhs: types.ModuleType) -> None:
    wrapped = vhs.VideoCombine.combine_video
    assert not vhs_save.install(vhs.VideoCombine)
    assert vhs.VideoCombine.combine_video is wrapped
