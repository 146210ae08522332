"""A real custom node pack that expects ComfyUI's server object: VideoHelperSuite.

Set ``COMFYUI_TEST_CUSTOM_NODES`` to a folder holding a ComfyUI-VideoHelperSuite
checkout (its requirements installed: opencv-python-headless, imageio-ffmpeg).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.runtime import JobSpec
from engine.runtime.comfy import ComfyRuntime
from tests.engine.support import (
    CUSTOM_NODES_ENV,
    ENGINE_MARKS,
    count_video_frames,
    extra_custom_nodes,
    node,
    write_frames,
)
from tests.workflows import vhs_combine

pytestmark = [
    *ENGINE_MARKS,
    pytest.mark.skipif(
        extra_custom_nodes() is None,
        reason=f"{CUSTOM_NODES_ENV} is not set: no folder of custom node packs to load "
        "(e.g. one holding ComfyUI-VideoHelperSuite)",
    ),
]

_FRAMES = 5


@pytest.fixture
def vhs(runtime: ComfyRuntime) -> None:
    import nodes

    folder = extra_custom_nodes()
    assert folder is not None
    if not any(p.name.lower().startswith("comfyui-videohelpersuite") for p in folder.iterdir()):
        pytest.skip(f"{CUSTOM_NODES_ENV}={folder} holds no ComfyUI-VideoHelperSuite")
    # The pack is there: it must have loaded (it registers routes on the server at import).
    assert "VHS_VideoCombine" in nodes.NODE_CLASS_MAPPINGS, (
        f"ComfyUI-VideoHelperSuite is in {folder} but did not load: install its "
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
