"""Video jobs through the whole worker, as the image runs them: core video and VHS together.

In the image's environment (PyAV 19), a CreateVideo + SaveVideo job once never returned:
the worker's video probe forked ffmpeg with ``preexec_fn`` while ComfyUI's PyAV objects
lived in other threads, and the child deadlocked before exec. These jobs run through
``Worker.handle`` (outputs and delivery included) under a deadline, so that regression
fails here as a timeout instead of hanging the suite.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest
from PIL import Image

from engine.runtime.comfy import ComfyRuntime
from engine.settings import Settings
from engine.worker import Worker
from tests.engine.support import ENGINE_MARKS, node, require_packs
from tests.workflows import vhs_combine

pytestmark = ENGINE_MARKS

_FRAMES = 6
# A bound, not a speed target: the job takes well under a second here; only a hang
# (the regression) reaches it, and then the worker answers instead of the suite hanging.
_JOB_LIMIT_S = 120.0


def _frames_gif(count: int, size: int = 64) -> str:
    frames = [
        Image.new("RGB", (size, size), (30 * i % 256, 200 - 25 * i, 90)) for i in range(count)
    ]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=125, loop=0)
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(autouse=True)
def imageio_ffmpeg_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """imageio-ffmpeg as it behaves by default (preexec_fn on every fork): the worker's own
    path must not depend on the switch that its boot and the test setup turn on."""
    monkeypatch.delenv("IMAGEIO_FFMPEG_NO_PREVENT_SIGINT", raising=False)


@pytest.fixture
def worker(runtime: ComfyRuntime) -> Worker:
    settings = Settings(
        work_dir=runtime.directories.input.parent, job_timeout_s=_JOB_LIMIT_S, job_stop_grace_s=5
    )
    return Worker(settings, runtime)


def _video_job(with_vhs: bool) -> dict[str, Any]:
    workflow: dict[str, Any] = {
        "1": node("LoadImage", image="clip.gif"),
        "2": node("CreateVideo", images=["1", 0], fps=8.0),
        "3": node(
            "SaveVideo", video=["2", 0], filename_prefix="core/clip", format="mp4", codec="h264"
        ),
    }
    if with_vhs:
        workflow["4"] = vhs_combine(["1", 0], filename_prefix="vhs/clip")
    return {"workflow": workflow, "images": [{"name": "clip.gif", "image": _frames_gif(_FRAMES)}]}


def _videos(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    assert "error" not in body, body.get("error")
    assert body["errors"] == []
    return {item["node_id"]: item for item in body["images"]}


def test_core_video_and_vhs_in_one_job(worker: Worker, runtime: ComfyRuntime) -> None:
    """CreateVideo + SaveVideo and VHS_VideoCombine in one job: both MP4s come back with their
    numbers, and the same job again (ComfyUI's cache, new files) answers too."""
    import nodes

    require_packs("ComfyUI-VideoHelperSuite")
    assert "VHS_VideoCombine" in nodes.NODE_CLASS_MAPPINGS, "VideoHelperSuite did not load"
    for attempt in ("first", "again"):
        videos = _videos(worker.handle({"id": f"video-{attempt}", "input": _video_job(True)}))
        assert set(videos) == {"3", "4"}, attempt
        for node_id, item in videos.items():
            assert item["mime_type"] == "video/mp4", (attempt, node_id)
            assert item["data"].startswith("data:video/mp4;base64,")
            info = item["video"]
            assert info["frames"] == _FRAMES and (info["width"], info["height"]) == (64, 64)
            assert info["fps"] == pytest.approx(8.0)
            assert info["duration_s"] == pytest.approx(_FRAMES / 8.0, abs=0.01)


def test_core_video_alone_then_a_vhs_job(worker: Worker, runtime: ComfyRuntime) -> None:
    """The job that used to hang, then a VHS job after it: the worker keeps answering."""
    import nodes

    videos = _videos(worker.handle({"id": "core-only", "input": _video_job(False)}))
    assert videos["3"]["video"]["frames"] == _FRAMES
    if "VHS_VideoCombine" not in nodes.NODE_CLASS_MAPPINGS:
        return  # the core job is the regression; VHS only when its pack is loaded
    after = {
        "workflow": {
            "1": node("LoadImage", image="clip.gif"),
            "2": vhs_combine(["1", 0], "vhs/after"),
        },
        "images": [{"name": "clip.gif", "image": _frames_gif(_FRAMES)}],
    }
    assert (
        _videos(worker.handle({"id": "vhs-after", "input": after}))["2"]["video"]["frames"]
        == _FRAMES
    )
