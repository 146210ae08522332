"""VHS_VideoCombine's encode handed off during a run (the ``deferred_vhs`` patch), with the
real ComfyUI-VideoHelperSuite pack and its ffmpeg.

While a run hands its files off, VHS's node returns its ui result before ffmpeg has
written the MP4 (VHS's own generator, held back at its start until the test lets it go);
the MP4 then written is the one VHS writes in the node: the container's tags, the
stream's settings, x264's line of every setting it used, every packet's timing, and
frames that decode alike. Not byte for byte: VHS has ffmpeg stamp each file with the
time it was made (``-metadata creation_time=now``), and x264 does not repeat its bytes
exactly on a CPU with AVX-512 (``tests/engine/support.py``): two files of VHS's own from
the same frames differ there too. With ``OUTPUT_METADATA=false`` the handed-off MP4 and its
first-frame PNG carry no prompt.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import threading
import types
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.runtime import JobSpec, vhs_save
from engine.runtime.comfy import ComfyRuntime
from engine.runtime.patches import Target, patch_named
from engine.runtime.pending_files import PendingFiles
from tests import workflows
from tests.engine.support import (
    ENGINE_MARKS,
    H264_DECODED_MEAN_LEVELS,
    count_video_frames,
    decoded_frames,
    h264_content,
    require_packs,
)

pytestmark = ENGINE_MARKS


@pytest.fixture(autouse=True)
def any_cpu_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hand-off waits for vhs_save.MIN_CPUS CPUs; these tests run it on any machine."""
    monkeypatch.setattr(vhs_save, "MIN_CPUS", 1)


@pytest.fixture
def vhs_class(runtime: ComfyRuntime) -> Any:
    """VHS's VideoCombine (its pack loaded on this first use if the boot deferred it)."""
    import nodes

    require_packs("ComfyUI-VideoHelperSuite")
    return nodes.NODE_CLASS_MAPPINGS[vhs_save.NODE]


@pytest.fixture
def gate(vhs_class: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """VHS's ``ffmpeg_process`` held at its start (before ffmpeg runs) until set; held
    only on a hand-off's thread: run in the node (no hand-off), it goes on at once and
    the test fails on what it finds rather than waiting for ever."""
    module = inspect.unwrap(vhs_class.combine_video).__globals__
    real = module["ffmpeg_process"]
    release = threading.Event()

    def held(*args: Any) -> Generator[Any, Any, Any]:
        if threading.current_thread().name == "vhs-encode":
            release.wait()
        return (yield from real(*args))

    monkeypatch.setitem(module, "ffmpeg_process", held)
    try:
        yield release
    finally:
        release.set()


def _workflow(prefix: str, frames: int = 6) -> dict[str, Any]:
    workflow = workflows.vhs(frames)
    # Frames that differ from one another: a gradient blended into a colour.
    workflow["1"]["inputs"].update(width=64, height=48, color=0x3366CC)
    workflow["3"] = {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}}
    workflow["4"] = {
        "class_type": "ImageBlend",
        "inputs": {
            "image1": ["1", 0],
            "image2": ["3", 0],
            "blend_factor": 0.3,
            "blend_mode": "multiply",
        },
    }
    workflow["2"]["inputs"].update(images=["4", 0], filename_prefix=prefix)
    return workflow


def _files(runtime: ComfyRuntime, result: Any) -> tuple[Path, Path]:
    """The MP4 and its first-frame PNG, from VHS's ui result."""
    (item,) = result.outputs["2"]["gifs"]
    folder = runtime.directories.output / item["subfolder"]
    return folder / item["filename"], folder / item["workflow"]


def _content(path: Path) -> dict[str, Any]:
    """An MP4 as :func:`h264_content` reads it, without the time ffmpeg stamped on it."""
    content = h264_content(path)
    content["metadata"].pop("creation_time", None)
    return content


def test_the_patch_is_in_force(runtime: ComfyRuntime, vhs_class: Any) -> None:
    assert getattr(vhs_class.combine_video, "_deferred_vhs", False)
    assert runtime.patches is not None and runtime.patches.is_applied("deferred_vhs")


def test_during_a_run_vhs_returns_before_its_encode_and_writes_vhss_mp4(
    runtime: ComfyRuntime, gate: threading.Event, prefix: str
) -> None:
    pending = PendingFiles()
    handed = runtime.run(
        JobSpec(prompt_id="vhs-one", workflow=_workflow(f"{prefix}/one"), pending_files=pending)
    )
    video, png = _files(runtime, handed)
    try:
        # The run is over; VHS's generator has not started ffmpeg yet.
        assert len(pending) == 1 and not video.exists() and png.stat().st_size > 0
    finally:
        gate.set()
    assert pending.wait() == []
    # The same frames, VHS's own encode in the node (no hand-off: a lone job).
    plain = runtime.run(JobSpec(prompt_id="vhs-plain", workflow=_workflow(f"{prefix}/two")))
    own, _ = _files(runtime, plain)
    handed_content, own_content = _content(video), _content(own)
    # The two prompts differ by their prefixes, of one length.
    comment = handed_content["metadata"]["comment"]
    handed_content["metadata"]["comment"] = comment.replace(f"{prefix}/one", f"{prefix}/two")
    assert handed_content == own_content
    assert "options: " in own_content["x264"], own_content["x264"]
    assert json.loads(json.loads(own_content["metadata"]["comment"])["prompt"])["2"]
    assert count_video_frames(video) == (6, (64, 48))
    frames, others = decoded_frames(video), decoded_frames(own)
    assert len(frames) == len(others) == 6
    for index, (frame, again) in enumerate(zip(frames, others, strict=True)):
        apart = abs(frame.astype(float) - again).mean()
        assert apart <= H264_DECODED_MEAN_LEVELS, f"frame {index}: {apart:.2f} levels apart"


def test_with_output_metadata_false_the_handed_off_mp4_embeds_no_prompt(
    runtime: ComfyRuntime,
    gate: threading.Event,
    monkeypatch: pytest.MonkeyPatch,
    metadata_off: None,
    prefix: str,
) -> None:
    monkeypatch.setattr(
        runtime, "_settings", dataclasses.replace(runtime._settings, output_metadata=False)
    )
    pending = PendingFiles()
    result = runtime.run(
        JobSpec(prompt_id="vhs-quiet", workflow=_workflow(f"{prefix}/quiet"), pending_files=pending)
    )
    video, png = _files(runtime, result)
    assert len(pending) == 1 and not video.exists()
    gate.set()
    assert pending.wait() == []
    comment = json.loads(_content(video)["metadata"].get("comment", "{}"))
    assert "prompt" not in comment, comment
    from PIL import Image

    with Image.open(png) as image:
        assert "prompt" not in image.info


def test_a_node_whose_filenames_another_node_takes_waits_for_its_encode(
    runtime: ComfyRuntime, vhs_class: Any, prefix: str
) -> None:
    """VHS_PruneOutputs takes the Filenames (it deletes files): the node encodes in
    itself, as VHS does, and nothing is pending after it."""
    import nodes

    if "VHS_PruneOutputs" not in nodes.NODE_CLASS_MAPPINGS:
        pytest.skip("this VideoHelperSuite has no VHS_PruneOutputs")
    workflow = _workflow(f"{prefix}/linked")
    # "Intermediate": removes the files between the first and the last: none here.
    workflow["5"] = {
        "class_type": "VHS_PruneOutputs",
        "inputs": {"filenames": ["2", 0], "options": "Intermediate"},
    }
    pending = PendingFiles()
    result = runtime.run(JobSpec(prompt_id="vhs-linked", workflow=workflow, pending_files=pending))
    video, _ = _files(runtime, result)
    assert len(pending) == 0
    assert count_video_frames(video) == (6, (64, 48))


def test_the_check_refuses_a_combine_video_that_no_longer_names_ffmpeg_process(
    vhs_class: Any,
) -> None:
    patch = patch_named("deferred_vhs")

    def target(node_class: Any) -> Target:
        return Target(nodes=types.SimpleNamespace(NODE_CLASS_MAPPINGS={vhs_save.NODE: node_class}))

    function = inspect.unwrap(vhs_class.combine_video)  # VHS's own, under the patch's wrapper
    assert patch.check(target(type("VideoCombine", (), {"combine_video": function}))) is None
    code = function.__code__
    renamed = code.replace(
        co_names=tuple("encode_with" if n == "ffmpeg_process" else n for n in code.co_names)
    )
    moved = type(
        "VideoCombine",
        (),
        {"combine_video": types.FunctionType(renamed, function.__globals__, "combine_video")},
    )
    assert patch.check(target(moved)) == "VideoCombine.combine_video's use of ffmpeg_process"
    # A wrapper (the patch itself, or another pack's) is not VHS's function to run again.
    assert patch.check(target(type("Wrapped", (), {"combine_video": vhs_class.combine_video})))
