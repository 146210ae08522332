"""A real custom node pack that expects ComfyUI's server object: VideoHelperSuite.

ComfyUI-VideoHelperSuite in the checkout's ``custom_nodes/`` (``scripts/setup.sh
--image-env`` puts it there) or in the folder ``COMFYUI_TEST_CUSTOM_NODES`` names, with
its requirements installed (the image lock has them).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.runtime import JobSpec
from engine.runtime.comfy import ComfyRuntime
from tests.engine.support import (
    ENGINE_MARKS,
    count_video_frames,
    node,
    require_packs,
    write_frames,
)
from tests.workflows import vhs_combine

pytestmark = ENGINE_MARKS

_FRAMES = 5


@pytest.fixture
def vhs(runtime: ComfyRuntime) -> None:
    import nodes

    require_packs("ComfyUI-VideoHelperSuite")
    # The pack is there: it must have loaded (it registers routes on the server at import).
    assert "VHS_VideoCombine" in nodes.NODE_CLASS_MAPPINGS, (
        "ComfyUI-VideoHelperSuite is installed but did not load: install its "
        "requirements.txt (opencv-python-headless, imageio-ffmpeg) into this venv"
    )


def test_vhs_video_combine_mp4_is_reported_under_gifs(
    runtime: ComfyRuntime, vhs: None, prefix: str
) -> None:
    """VHS_VideoCombine writes an MP4 (plus a metadata PNG) and reports it under ``gifs``."""
    write_frames(runtime.directories.input / "vhs-frames.gif", _FRAMES)
    workflow = {
        "1": node("LoadImage", image="vhs-frames.gif"),
        "2": vhs_combine(["1", 0], filename_prefix=prefix),
    }
    result = runtime.run(JobSpec(prompt_id="vhs", workflow=workflow))
    (item,) = result.outputs["2"]["gifs"]
    assert item["format"] == "video/h264-mp4"
    assert item["type"] == "output"
    assert item["frame_rate"] == 8
    path = runtime.directories.output / item["subfolder"] / item["filename"]
    assert path.suffix == ".mp4" and Path(item["fullpath"]) == path
    frames, size = count_video_frames(path)
    assert frames == _FRAMES and size == (64, 64)
    # The first-frame PNG VHS writes beside the video is not an output.
    assert path.with_suffix(".png").is_file()
    assert all(i["filename"].endswith(".mp4") for i in result.outputs["2"]["gifs"])
