"""Output files embed the workflow as the user sent it, on the real engine.

ComfyUI's save nodes embed the prompt and the editor graph; before, the worker's rewrite
was embedded (``job-in-<hash>/example.png``, ``job-<id>/inverted``, ``is_changed``
hashes). Here each file's metadata is read back from the answer: the PNG's ``prompt``
and ``workflow`` text chunks, the animated WEBP's EXIF, the MP4's container tags.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import av
import pytest
from PIL import Image

from engine.runtime.comfy import ComfyRuntime
from engine.settings import Settings
from engine.worker import Worker
from tests import workflows
from tests.engine.support import ENGINE_MARKS
from tests.ui_graphs import invert_png_mp4_ui

pytestmark = ENGINE_MARKS

# EXIF tags ComfyUI's SaveAnimatedWEBP writes "prompt:<json>" and "workflow:<json>" into.
_EXIF_PROMPT, _EXIF_FIRST_EXTRA = 0x0110, 0x010F


def png_b64(color: tuple[int, int, int]) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def data_of(item: dict[str, Any]) -> bytes:
    return base64.b64decode(item["data"].partition(",")[2])


def by_name(body: dict[str, Any]) -> dict[str, bytes]:
    assert body.get("errors") == [], body
    return {item["filename"]: data_of(item) for item in body["images"]}


def no_worker_names(text: str) -> None:
    for internal in ("job-", "is_changed", "worker_run"):
        assert internal not in text, f"{internal!r} in {text[:300]}"


@pytest.fixture
def worker(runtime: ComfyRuntime) -> Worker:
    return Worker(Settings(work_dir=runtime.directories.input.parent), runtime)


def test_api_format_png_and_animated_webp_embed_the_prompt_as_sent(worker: Worker) -> None:
    workflow = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {
            "class_type": "SaveImage",
            "inputs": {"images": ["2", 0], "filename_prefix": "mine/inverted"},
        },
        "4": {
            "class_type": "SaveAnimatedWEBP",
            "inputs": {
                "images": ["2", 0],
                "filename_prefix": "anim",
                "fps": 6.0,
                "lossless": False,
                "quality": 80,
                "method": "default",
            },
        },
    }
    sent = json.loads(json.dumps(workflow))
    job = {"workflow": workflow, "images": [{"name": "example.png", "image": png_b64((9, 8, 7))}]}
    files = by_name(worker.handle({"id": "meta-api", "input": job}))
    with Image.open(io.BytesIO(files["inverted_00001_.png"])) as png:
        assert json.loads(png.info["prompt"]) == sent
        assert "workflow" not in png.info  # an API-format request has no editor graph
        no_worker_names(png.info["prompt"])
    with Image.open(io.BytesIO(files["anim_00001_.webp"])) as webp:
        tag = webp.getexif()[_EXIF_PROMPT]
    assert tag.startswith("prompt:")
    assert json.loads(tag.removeprefix("prompt:")) == sent

    # A second run (ComfyUI's cache serves all but the outputs) embeds the same.
    files = by_name(worker.handle({"id": "meta-api-2", "input": job}))
    with Image.open(io.BytesIO(files["inverted_00001_.png"])) as png:
        assert json.loads(png.info["prompt"]) == sent


def test_ui_format_embeds_the_editor_graph_and_the_users_names(
    worker: Worker, tmp_path: Path
) -> None:
    graph = invert_png_mp4_ui("example.png", "example")
    sent_graph = json.loads(json.dumps(graph))
    job = {"workflow": graph, "images": [{"name": "example.png", "image": png_b64((200, 0, 0))}]}
    files = by_name(worker.handle({"id": "meta-ui", "input": job}))
    with Image.open(io.BytesIO(files["inverted_00001_.png"])) as png:
        assert json.loads(png.info["workflow"]) == sent_graph
        prompt = json.loads(png.info["prompt"])
        no_worker_names(png.info["prompt"])
    assert prompt["1"]["inputs"]["image"] == "example.png"
    assert prompt["3"]["inputs"]["filename_prefix"] == "example/inverted"

    video = tmp_path / "blink.mp4"
    video.write_bytes(files["blink_00001_.mp4"])
    with av.open(str(video)) as container:
        tags = dict(container.metadata)
    assert json.loads(tags["workflow"]) == sent_graph, sorted(tags)
    assert json.loads(tags["prompt"]) == prompt
    no_worker_names(tags["prompt"])


def test_vhs_video_combine_embeds_the_prompt_as_sent(worker: Worker, tmp_path: Path) -> None:
    """VideoHelperSuite's MP4 carries the prompt in its ``comment`` tag, as sent."""
    import nodes

    from tests.engine.support import require_packs

    require_packs("ComfyUI-VideoHelperSuite")
    assert "VHS_VideoCombine" in nodes.NODE_CLASS_MAPPINGS
    workflow = workflows.vhs(3)
    workflow["2"]["inputs"]["filename_prefix"] = "clips/anim"
    sent = json.loads(json.dumps(workflow))
    files = by_name(worker.handle({"id": "meta-vhs", "input": {"workflow": workflow}}))
    (name,) = [n for n in files if n.endswith(".mp4")]
    video = tmp_path / name
    video.write_bytes(files[name])
    with av.open(str(video)) as container:
        tags = dict(container.metadata)
    comment = json.loads(tags["comment"])
    assert json.loads(comment["prompt"]) == sent, comment
    no_worker_names(json.dumps(comment))


def test_vhs_video_combine_embeds_no_prompt_with_output_metadata_false(
    runtime: ComfyRuntime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, metadata_off: None
) -> None:
    """VHS_VideoCombine writes the prompt whatever --disable-metadata says; with
    OUTPUT_METADATA=false (the flag, and the runtime's setting) its MP4 carries none."""
    import dataclasses

    from tests.engine.support import require_packs

    require_packs("ComfyUI-VideoHelperSuite")
    off = dataclasses.replace(runtime._settings, output_metadata=False)
    monkeypatch.setattr(runtime, "_settings", off)
    worker = Worker(
        Settings(work_dir=runtime.directories.input.parent, output_metadata=False), runtime
    )
    workflow = workflows.vhs(3)
    workflow["2"]["inputs"]["filename_prefix"] = "clips/quiet"
    files = by_name(worker.handle({"id": "meta-vhs-off", "input": {"workflow": workflow}}))
    (name,) = [n for n in files if n.endswith(".mp4")]
    video = tmp_path / name
    video.write_bytes(files[name])
    with av.open(str(video)) as container:
        comment = json.loads(dict(container.metadata).get("comment", "{}"))
    assert "prompt" not in comment, comment
    for png in (n for n in files if n.endswith(".png")):
        with Image.open(io.BytesIO(files[png])) as image:
            assert "prompt" not in image.info, png
