"""SaveVideo's encode handed off during a run (the ``deferred_video`` patch) on the real engine.

ComfyUI's own CreateVideo -> SaveVideo: while the run hands its files off, the run returns
with the file's name taken and its bytes not written; once written by the encoder
process, the file is the one ComfyUI writes itself in the node. ComfyUI's own
``VideoFromComponents`` with audio and metadata: the encoder process is given exactly the
arrays ComfyUI gives PyAV, and writes the MP4 ComfyUI writes. Not compared byte for byte:
x264 does not give the same bytes for the same frames every time on a CPU with AVX-512
(ComfyUI's own file differs from itself so, about once in 500 encodes; see
``tests.engine.support.h264_content``), so the files are compared by all that x264 does
reproduce and by their decoded frames. A job cancelled while its
encode sits in a frozen helper ends with its own error, and the next video is written by
a fresh helper. Through the worker, a job behind another hands its video off, and gets
it whole, or an error naming the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from engine.deadline import Deadline
from engine.errors import JobInterruptedError
from engine.runtime import JobSpec, fast_save, video_save
from engine.runtime.comfy import ComfyRuntime
from engine.runtime.pending_files import PendingFiles
from tests.engine.support import ENGINE_MARKS, HeldRun, assert_same_h264, held_workflow, node
from tests.unit.test_fast_save import GatedPool, unread_bytes
from tests.unit.test_pipeline import wait_until

pytestmark = ENGINE_MARKS

_HANG_S = 60.0


def _workflow(prefix: str, frames: int = 6) -> dict[str, Any]:
    return {
        # Frames that differ from one another: a gradient blended into a colour, by batch.
        "1": node("EmptyImage", width=64, height=48, batch_size=frames, color=0x3366CC),
        "2": node("ImageInvert", image=["1", 0]),
        "3": node(
            "ImageBlend", image1=["1", 0], image2=["2", 0], blend_factor=0.3, blend_mode="multiply"
        ),
        "4": node("CreateVideo", images=["3", 0], fps=12.0),
        "5": node("SaveVideo", video=["4", 0], filename_prefix=prefix, format="auto", codec="auto"),
    }


def _saved(runtime: ComfyRuntime, result: Any) -> Path:
    (item,) = result.outputs["5"]["images"]
    return runtime.directories.output / item["subfolder"] / item["filename"]


def test_the_patch_is_in_force(runtime: ComfyRuntime) -> None:
    from comfy_api.latest import InputImpl

    assert getattr(InputImpl.VideoFromComponents.save_to, "_deferred_video", False)


def test_during_a_run_savevideo_returns_before_its_encode_and_writes_comfyuis_video(
    runtime: ComfyRuntime, monkeypatch: pytest.MonkeyPatch, prefix: str, metadata_off: None
) -> None:
    pool = GatedPool()
    monkeypatch.setattr(video_save, "_shared_pool", lambda: pool)
    pending = PendingFiles()
    handed = runtime.run(
        JobSpec(
            prompt_id="video-handoff", workflow=_workflow(f"{prefix}/handed"), pending_files=pending
        )
    )
    path = _saved(runtime, handed)
    try:
        assert pool.submitted == 1 and len(pending) == 1
        assert path.stat().st_size == 0  # the run is over; its video is not written yet
    finally:
        pool.gate.set()
    assert pending.wait() == []
    # The same frames, ComfyUI's own save_to in the node (no hand-off: a lone job).
    plain = runtime.run(JobSpec(prompt_id="video-plain", workflow=_workflow(f"{prefix}/plain")))
    assert pool.submitted == 1
    own = _saved(runtime, plain)
    try:
        assert own.stat().st_size > 0
        assert_same_h264(path, own)
    finally:
        path.unlink(missing_ok=True)
        own.unlink(missing_ok=True)


def _video(frames: int, audio: bool) -> Any:
    import torch
    from comfy_api.latest import InputImpl, Types

    generator = torch.Generator().manual_seed(frames)
    images = torch.rand(frames, 48, 64, 3, generator=generator)
    sound = None
    if audio:
        wave = torch.sin(torch.linspace(0, 900, 2 * 22050)).view(1, 2, 22050) * 0.4
        sound = {"waveform": wave, "sample_rate": 22050}
    components = Types.VideoComponents(images=images, audio=sound, frame_rate=Fraction(24))
    return InputImpl.VideoFromComponents(components)


def _recording(real: Any, arrays: list[tuple[Any, dict[str, Any]]]) -> Any:
    """``real`` (``av.VideoFrame``, ``av.AudioFrame``) for ComfyUI's ``save_to``: its
    ``from_ndarray`` also keeps a copy of each array it is given, and how."""

    def from_ndarray(array: Any, **how: Any) -> Any:
        arrays.append((array.copy(), how))
        return real.from_ndarray(array, **how)

    return SimpleNamespace(from_ndarray=from_ndarray)


@pytest.mark.parametrize("audio", [False, True], ids=["video", "video-and-audio"])
def test_the_encoder_process_writes_the_video_comfyui_writes(
    runtime: ComfyRuntime, monkeypatch: pytest.MonkeyPatch, audio: bool
) -> None:
    """ComfyUI's own class, its metadata as SaveVideo passes it, the real encoder process:
    the process gets the very arrays ComfyUI's ``save_to`` gives PyAV, and its MP4 is
    ComfyUI's (:func:`assert_same_h264`: x264 itself does not repeat its bytes exactly)."""
    import av
    import numpy

    sent: list[Any] = []
    submit = video_save.submit

    def keeping(encoded: Any, path: str, deadline: Any = None) -> Any:
        sent.append(encoded)
        return submit(encoded, path, deadline)

    monkeypatch.setattr(video_save, "submit", keeping)
    video = _video(11, audio)  # more than one conversion chunk (_CONVERT_FRAMES), not a multiple
    metadata = {
        "prompt": {"1": {"class_type": "CreateVideo", "inputs": {"fps": 24}}},
        "workflow": {"nodes": [], "links": []},
    }
    folder = runtime.directories.output / f"video-bytes-{os.getpid()}"
    folder.mkdir(exist_ok=True)
    handed, own = folder / f"handed-{audio}.mp4", folder / f"own-{audio}.mp4"
    pending = PendingFiles()
    try:
        with fast_save.saves_into(pending, Deadline.start(120)):
            video.save_to(str(handed), format="mp4", codec="h264", metadata=metadata)
        assert len(pending) == 1
        assert pending.wait() == []
        pictures: list[tuple[Any, dict[str, Any]]] = []
        sounds: list[tuple[Any, dict[str, Any]]] = []
        with monkeypatch.context() as comfyui_own:
            comfyui_own.setattr(av, "VideoFrame", _recording(av.VideoFrame, pictures))
            comfyui_own.setattr(av, "AudioFrame", _recording(av.AudioFrame, sounds))
            type(video).save_to.__wrapped__(
                video, str(own), format="mp4", codec="h264", metadata=metadata
            )
        (encoded,) = sent
        assert [how for _, how in pictures] == [{"format": "rgb24"}] * 11
        assert all(
            numpy.array_equal(a, b) for (a, _), b in zip(pictures, encoded.frames, strict=True)
        )
        if audio:
            ((samples, how),) = sounds
            assert how == {"format": "flt", "layout": encoded.audio_layout}
            assert encoded.audio_layout == "stereo"
            assert samples.dtype == encoded.audio.dtype
            assert numpy.array_equal(samples, encoded.audio)
        else:
            assert sounds == [] and encoded.audio is None
        assert_same_h264(handed, own)
        pool = video_save._pool
        assert pool is not None and pool._idle, "not written by an encoder process"
    finally:
        handed.unlink(missing_ok=True)
        own.unlink(missing_ok=True)
        folder.rmdir()


def test_a_cancelled_job_does_not_wait_for_a_frozen_encoder(runtime: ComfyRuntime) -> None:
    """The encode sits in a frozen helper's pipe (the cue), the job is cancelled: the wait
    for its file ends with the job's cancel error, the helper is ended, and the next video
    is written by a fresh one."""
    folder = runtime.directories.output / f"video-frozen-{os.getpid()}"
    folder.mkdir(exist_ok=True)
    first, frozen_file, after = (folder / f"{n}.mp4" for n in ("first", "frozen", "after"))
    try:
        # A helper started and idle, then stopped.
        warm = PendingFiles()
        with fast_save.saves_into(warm):
            _video(4, False).save_to(str(first))
        assert warm.wait() == []
        pool = video_save._pool
        assert pool is not None
        frozen = list(pool._idle)
        assert frozen
        for helper in frozen:
            os.kill(helper.process.pid, signal.SIGSTOP)
        try:
            deadline = Deadline.start(600)
            pending = PendingFiles()
            with fast_save.saves_into(pending, deadline):
                _video(60, False).save_to(str(frozen_file))
            wait_until(lambda: any(unread_bytes(helper) > 0 for helper in frozen))
            deadline.cancel()
            ((path, error),) = pending.wait()
        finally:
            for helper in frozen:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(helper.process.pid, signal.SIGCONT)
        assert path == frozen_file and not frozen_file.exists()
        assert isinstance(error, JobInterruptedError)
        assert "while writing output videos" in str(error)
        assert all(helper.process.poll() is not None for helper in frozen)
        again = PendingFiles()
        with fast_save.saves_into(again):
            _video(4, False).save_to(str(after))
        assert again.wait() == []
        assert after.read_bytes()[4:8] == b"ftyp"
        assert pool._idle and not set(pool._idle) & set(frozen)
    finally:
        for leftover in (first, frozen_file, after):
            leftover.unlink(missing_ok=True)
        folder.rmdir()


@pytest.mark.parametrize("encode", ["whole", "failing"])
def test_a_job_behind_another_hands_its_video_off_through_the_worker(
    runtime: ComfyRuntime, monkeypatch: pytest.MonkeyPatch, prefix: str, encode: str
) -> None:
    """Job A's run is held on the engine (the progress sink blocks at its WorkerTestSteps
    node); job B, sent meanwhile, has another job in flight, so its run hands its video
    off. B's answer holds the whole MP4 (``whole``), or names the file that could not be
    written and why (``failing``: the encoder process raises)."""
    handed: list[str] = []
    submit = video_save.submit

    def counting(video: Any, path: str, deadline: Any = None) -> Any:
        handed.append(Path(path).name)
        return submit(video, path, deadline)

    monkeypatch.setattr(video_save, "submit", counting)
    if encode == "failing":
        from tests.unit.test_video_save import _Broken

        monkeypatch.setattr(video_save, "video_file", lambda components, metadata: _Broken())
    run = HeldRun(runtime, hang_s=_HANG_S)
    a = run.send("a", {"workflow": held_workflow(f"{prefix}/a", steps=2)})
    try:
        assert run.at_steps.wait(_HANG_S)  # A's run holds the engine thread
        b = run.send("b", {"workflow": _workflow(f"{prefix}/b")})
        assert run.waiting.wait(_HANG_S)  # B waits for the engine, A still in flight
    finally:
        run.go_on.set()
    a.join(_HANG_S)
    b.join(_HANG_S)
    assert run.answers["a"].get("errors") == [], run.answers["a"]
    body = run.answers["b"]
    assert len(handed) == 1 and handed[0].endswith(".mp4")
    if encode == "whole":
        assert body.get("errors") == [], body
        (item,) = body["images"]
        assert item["filename"] == handed[0] and item["mime_type"] == "video/mp4"
        assert item["video"]["frames"] == 6
    else:
        text = json.dumps(body)
        assert f"{handed[0]}: could not be written" in text, body
        assert "the encoder refused the frames" in text, body


def test_frames_h264_cannot_take_fail_in_the_node_as_in_comfyui(runtime: ComfyRuntime) -> None:
    """Odd sizes (4:2:0 needs even ones): nothing is handed off; ComfyUI's own save_to
    runs in the node and raises its own error there."""
    import torch
    from comfy_api.latest import InputImpl, Types

    components = Types.VideoComponents(
        images=torch.rand(3, 49, 65, 3), audio=None, frame_rate=Fraction(24)
    )
    video = InputImpl.VideoFromComponents(components)
    path = runtime.directories.output / f"video-odd-{os.getpid()}.mp4"
    pending = PendingFiles()
    try:
        with fast_save.saves_into(pending), pytest.raises(Exception, match="libx264"):
            video.save_to(str(path))
        assert len(pending) == 0
    finally:
        path.unlink(missing_ok=True)
