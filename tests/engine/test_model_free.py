"""Model-free workflows through the real engine: images, batches, animations, videos."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from typing import Any

import pytest
from PIL import Image, ImageChops

from engine.runtime import JobSpec, ProgressEvent, RunResult
from engine.runtime.comfy import ComfyRuntime
from tests.engine.support import (
    ENGINE_MARKS,
    count_video_frames,
    empty_image,
    files_of,
    gradient_rgb,
    invert_workflow,
    max_difference,
    node,
    write_frames,
)

pytestmark = ENGINE_MARKS

_FRAMES = 6


def _run(runtime: ComfyRuntime, workflow: dict[str, Any], **job: Any) -> RunResult:
    return runtime.run(JobSpec(prompt_id=f"t-{id(workflow)}", workflow=workflow, **job))


@pytest.fixture
def frames_gif(runtime: ComfyRuntime, prefix: str) -> str:
    """An animated GIF of distinct colours in the input folder; LoadImage reads a batch."""
    name = f"{prefix.split('/')[0]}.gif"
    write_frames(runtime.directories.input / name, _FRAMES)
    return name


def test_load_invert_save_pixels(runtime: ComfyRuntime, prefix: str) -> None:
    """LoadImage -> ImageInvert -> SaveImage: every pixel is 255 - input (within 1)."""
    pixels = gradient_rgb(64, 48, seed=3)
    pixels.save(runtime.directories.input / "gradient.png")
    result = _run(runtime, invert_workflow("gradient.png", prefix))

    assert list(result.outputs) == ["3"]
    (item,) = result.outputs["3"]["images"]
    assert item["type"] == "output" and item["subfolder"] == prefix.rsplit("/", 1)[0]
    (path,) = files_of(result, runtime.directories)
    out = Image.open(path)
    assert out.size == (64, 48)
    # SaveImage truncates floats to bytes: 255 - 200 may come back as 54.
    assert max_difference(out, ImageChops.invert(pixels)) <= 1
    assert max_difference(out, pixels) > 1  # and it did invert
    assert {"validate_s", "execute_s"} <= set(result.timings)


def test_batch_saves_one_file_per_image(runtime: ComfyRuntime, prefix: str) -> None:
    """An EmptyImage batch of 3 becomes 3 PNG files, listed in order."""
    workflow = {
        "1": empty_image(32, 16, batch=3, color=0x336699),
        "2": node("SaveImage", images=["1", 0], filename_prefix=prefix),
    }
    result = _run(runtime, workflow)
    paths = files_of(result, runtime.directories)
    assert len(paths) == 3 and len(set(paths)) == 3
    for path in paths:
        image = Image.open(path)
        assert image.size == (32, 16)
        assert image.convert("RGB").getpixel((5, 5)) == (0x33, 0x66, 0x99)


def test_animated_webp_keeps_every_distinct_frame(
    runtime: ComfyRuntime, prefix: str, frames_gif: str
) -> None:
    """SaveAnimatedWEBP reports one animated file holding each distinct frame."""
    workflow = {
        "1": node("LoadImage", image=frames_gif),
        "2": node(
            "SaveAnimatedWEBP",
            images=["1", 0],
            filename_prefix=prefix,
            fps=6.0,
            lossless=True,
            quality=90,
            method="default",
        ),
    }
    result = _run(runtime, workflow)
    ui = result.outputs["2"]
    assert list(ui["animated"]) == [True]
    (path,) = files_of(result, runtime.directories)
    assert path.suffix == ".webp"
    with Image.open(path) as webp:
        assert webp.n_frames == _FRAMES


def _mp4(frames: str, prefix: str) -> dict[str, Any]:
    return {
        "1": node("LoadImage", image=frames),
        "2": node("CreateVideo", images=["1", 0], fps=8.0),
        "3": node("SaveVideo", video=["2", 0], filename_prefix=prefix, format="mp4", codec="h264"),
    }


def _webm(frames: str, prefix: str) -> dict[str, Any]:
    # SaveVideo writes only MP4 in ComfyUI 0.3.64; WebM has its own node.
    return {
        "1": node("LoadImage", image=frames),
        "3": node(
            "SaveWEBM", images=["1", 0], filename_prefix=prefix, codec="vp9", fps=8.0, crf=32.0
        ),
    }


@pytest.mark.parametrize(
    ("build", "suffix"), [(_mp4, ".mp4"), (_webm, ".webm")], ids=["mp4", "webm"]
)
def test_video_decodes_back_with_every_frame(
    runtime: ComfyRuntime, prefix: str, frames_gif: str, build: Any, suffix: str
) -> None:
    """CreateVideo + SaveVideo (MP4) and SaveWEBM: a video file, decodable, N frames."""
    result = _run(runtime, build(frames_gif, prefix))
    ui = result.outputs["3"]
    assert list(ui["animated"]) == [True]
    (item,) = ui["images"]
    assert set(item) == {"filename", "subfolder", "type"}
    (path,) = files_of(result, runtime.directories)
    assert path.suffix == suffix
    frames, size = count_video_frames(path)
    assert frames == _FRAMES
    assert size == (64, 64)


def test_preview_goes_to_temp_and_after_job_clears_it(runtime: ComfyRuntime) -> None:
    """PreviewImage writes to the temp folder; after_job empties it."""
    workflow = {"1": empty_image(8, 8), "2": node("PreviewImage", images=["1", 0])}
    result = _run(runtime, workflow)
    (item,) = result.outputs["2"]["images"]
    assert item["type"] == "temp"
    (path,) = files_of(result, runtime.directories)
    assert path.is_file()
    runtime.after_job()
    assert not path.exists()
    assert runtime.directories.temp.is_dir() and not any(runtime.directories.temp.iterdir())


def test_same_workflow_twice_delivers_both_times(runtime: ComfyRuntime, prefix: str) -> None:
    """With a per-job filename_prefix subfolder, a repeat writes new files.

    Without it ComfyUI's cache runs nothing and hands back the first job's ui
    outputs: the worker gives every job its own subfolder for this reason.
    """
    gradient_rgb(seed=9).save(runtime.directories.input / "twice.png")
    first = _run(runtime, invert_workflow("twice.png", f"{prefix}-a/out"))
    (first_file,) = files_of(first, runtime.directories)
    shutil.rmtree(first_file.parent)  # the worker deletes outputs once delivered
    second = _run(runtime, invert_workflow("twice.png", f"{prefix}-b/out"))
    (second_file,) = files_of(second, runtime.directories)
    assert second_file.is_file() and second_file != first_file

    # The quirk itself: same prompt, same prefix -> the earlier outputs, no new file.
    third = _run(runtime, invert_workflow("twice.png", f"{prefix}-b/out"))
    assert third.outputs == second.outputs
    assert len(list(second_file.parent.iterdir())) == 1


def test_outputs_are_this_prompts_only(runtime: ComfyRuntime, prefix: str) -> None:
    """Ui outputs cached from an earlier prompt's nodes are not returned."""
    gradient_rgb(seed=5).save(runtime.directories.input / "mine.png")
    _run(runtime, invert_workflow("mine.png", prefix))
    other = {
        "1": empty_image(8, 8),
        "7": node("SaveImage", images=["1", 0], filename_prefix=prefix),
    }
    assert list(_run(runtime, other).outputs) == ["7"]


def test_progress_reports_each_node_and_each_step(runtime: ComfyRuntime, prefix: str) -> None:
    """One event per node started and one per progress-bar step, with the class_type."""
    events: list[ProgressEvent] = []
    workflow = {
        "1": empty_image(8, 8, color=0x010203),
        "2": node("WorkerTestSteps", images=["1", 0], steps=4, seconds_per_step=0.0),
        "3": node("SaveImage", images=["2", 0], filename_prefix=prefix),
    }
    _run(runtime, workflow, on_progress=events.append)
    started = [(e.node_id, e.class_type) for e in events if e.value is None]
    assert started == [("1", "EmptyImage"), ("2", "WorkerTestSteps"), ("3", "SaveImage")]
    steps = [(e.node_id, e.value, e.total) for e in events if e.value is not None]
    assert steps == [("2", i, 4) for i in range(1, 5)]
    assert events[1].describe() == "running node 2 (WorkerTestSteps)"


def test_a_failing_progress_callback_does_not_fail_the_job(
    runtime: ComfyRuntime, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Progress is best effort: a callback that raises is logged once."""

    def broken(event: ProgressEvent) -> None:
        raise ConnectionError("RunPod unreachable")

    workflow = {
        "1": empty_image(8, 8, color=7),
        "2": node("SaveImage", images=["1", 0], filename_prefix=prefix),
    }
    assert _run(runtime, workflow, on_progress=broken).outputs["2"]["images"]
    assert caplog.text.count("progress callback failed") == 1


def test_api_key_reaches_api_nodes_from_job_or_settings(runtime: ComfyRuntime) -> None:
    """The job's key, else the worker's COMFY_ORG_API_KEY, is handed to ComfyUI."""

    def digest_for(key: str | None) -> str:
        workflow = {"1": node("WorkerTestApiKey", label="k")}
        result = _run(runtime, workflow, api_key_comfy_org=key)
        return str(result.outputs["1"]["text"][1])

    key = "comfyui-test-key-0123"
    assert digest_for(key) == hashlib.sha256(key.encode()).hexdigest()[:16]
    # The session's settings have no key: with none in the job, none reaches the node.
    assert digest_for(None) == "none"


def test_on_prompt_handlers_of_packs_rewrite_the_prompt(runtime: ComfyRuntime) -> None:
    """Handlers packs register with ``add_on_prompt_handler`` run on each job's prompt."""
    result = _run(runtime, {"1": node("WorkerTestApiKey", label="rewrite-me")})
    assert result.outputs["1"]["text"][0] == "rewritten"


def test_api_key_is_not_written_into_outputs(runtime: ComfyRuntime, prefix: str) -> None:
    """SaveImage embeds the prompt in PNG metadata, never the job's extra data."""
    key = "comfyui-secret-key-should-not-leak"
    workflow = {
        "1": empty_image(8, 8, color=3),
        "2": node("SaveImage", images=["1", 0], filename_prefix=prefix),
    }
    result = _run(runtime, workflow, api_key_comfy_org=key)
    (path,) = files_of(result, runtime.directories)
    assert key.encode() not in path.read_bytes()
    assert "prompt" in Image.open(path).info  # ComfyUI's default: the prompt is embedded


def test_run_from_inside_an_event_loop(runtime: ComfyRuntime, prefix: str) -> None:
    """The runpod SDK calls a sync handler inside its event loop; run() still works."""
    workflow = {
        "1": empty_image(8, 8, color=11),
        "2": node("SaveImage", images=["1", 0], filename_prefix=prefix),
    }

    async def handler() -> RunResult:
        return runtime.run(JobSpec(prompt_id="in-loop", workflow=workflow))

    assert asyncio.run(handler()).outputs["2"]["images"]


def test_callers_workflow_is_not_modified(runtime: ComfyRuntime, prefix: str) -> None:
    """ComfyUI's validation casts values in place; the caller's dict stays as sent."""
    workflow = {
        "1": node("EmptyImage", width="16", height=16.0, batch_size=1, color=0),
        "2": node("SaveImage", images=["1", 0], filename_prefix=prefix),
    }
    _run(runtime, workflow)
    assert workflow["1"]["inputs"]["width"] == "16"
