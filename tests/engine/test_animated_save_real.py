"""SaveAnimatedWEBP's and SaveAnimatedPNG's encode handed off during a run (the
``deferred_animated`` patch) on the real engine.

ComfyUI's own nodes (comfy_extras/nodes_images.py): while a run hands its files off, the
node returns its ui result with the file's name taken; once the encoder process has
written it, the file is byte for byte the one the node writes itself, with the prompt
and workflow in its metadata as ComfyUI writes them (WEBP exif, APNG ``comf`` chunks),
and none with ``OUTPUT_METADATA=false``. A job cancelled while its encode sits in a
frozen helper ends with its own error, and the next file is written by a fresh helper.
Through the worker, a job behind another hands its animation off and gets it whole, or
an error naming the file.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from engine.deadline import Deadline
from engine.errors import JobInterruptedError
from engine.runtime import JobSpec, animated_save, fast_save, video_save
from engine.runtime.comfy import ComfyRuntime
from engine.runtime.pending_files import PendingFiles
from tests.engine.support import ENGINE_MARKS, HeldRun, held_workflow, node, write_frames
from tests.unit.test_fast_save import GatedPool, unread_bytes
from tests.unit.test_pipeline import wait_until

pytestmark = ENGINE_MARKS

_HANG_S = 60.0
_WEBP, _PNG = animated_save.NODES

# Each node's inputs besides the frames and the prefix: WEBP lossless (ComfyUI's default)
# and lossy, APNG at ComfyUI's default level.
_SETTINGS: dict[str, tuple[str, dict[str, Any]]] = {
    "webp-lossless": (_WEBP, {"fps": 8.0, "lossless": True, "quality": 80, "method": "default"}),
    "webp-lossy": (_WEBP, {"fps": 12.0, "lossless": False, "quality": 70, "method": "fastest"}),
    "png": (_PNG, {"fps": 8.0, "compress_level": 4}),
}

_PROMPT = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64}}, "2": {"inputs": {}}}
_EXTRA = {"workflow": {"nodes": [{"id": 1, "type": "EmptyImage"}], "links": []}}


def _node(name: str) -> Any:
    import nodes

    # Looked up as the executor does: a deferred comfy_extras file loads here, and the
    # patch waiting for it applies.
    return nodes.NODE_CLASS_MAPPINGS[name]()


def _frames(count: int, seed: int) -> Any:
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, 48, 64, 3, generator=generator)


def _saved(runtime: ComfyRuntime, result: dict[str, Any]) -> list[Path]:
    return [
        runtime.directories.output / item["subfolder"] / item["filename"]
        for item in result["ui"]["images"]
    ]


def test_the_patch_is_in_force(runtime: ComfyRuntime) -> None:
    for name in animated_save.NODES:
        assert getattr(type(_node(name)).save_images, "_deferred_animated", False), name
    assert runtime.patches is not None and runtime.patches.is_applied("deferred_animated")
    assert "deferred_animated" not in runtime.patches.waiting


@pytest.mark.parametrize("metadata", [True, False], ids=["metadata", "no-metadata"])
@pytest.mark.parametrize("setting", list(_SETTINGS))
def test_the_encoder_process_writes_the_bytes_comfyui_writes(
    runtime: ComfyRuntime, request: pytest.FixtureRequest, prefix: str, setting: str, metadata: bool
) -> None:
    """ComfyUI's own node, called as the executor calls it, the real encoder process;
    against the same node with no hand-off (ComfyUI's own encode in the node)."""
    if not metadata:
        request.getfixturevalue("metadata_off")
    name, inputs = _SETTINGS[setting]
    inputs = {**inputs, "images": _frames(11, seed=len(setting)), "prompt": _PROMPT}
    inputs["extra_pnginfo"] = _EXTRA
    pending = PendingFiles()
    with fast_save.saves_into(pending, Deadline.start(120)):
        handed = _node(name).save_images(filename_prefix=f"{prefix}/handed", **inputs)
    (handed_path,) = _saved(runtime, handed)
    assert len(pending) == 1
    assert pending.wait() == []
    pool = video_save._pool
    assert pool is not None and pool._idle, "not written by an encoder process"
    own = _node(name).save_images(filename_prefix=f"{prefix}/own", **inputs)
    (own_path,) = _saved(runtime, own)
    try:
        assert handed["ui"]["animated"] == own["ui"]["animated"] == (True,)
        data = handed_path.read_bytes()
        assert data == own_path.read_bytes()
        written = b"prompt:" if name == _WEBP else b"comfprompt\0"
        assert (written in data) is metadata
        assert (json.dumps(_EXTRA["workflow"]).encode() in data) is metadata
        with Image.open(handed_path) as image:
            assert image.n_frames == 11 and image.size == (64, 48)
    finally:
        handed_path.unlink(missing_ok=True)
        own_path.unlink(missing_ok=True)


def _workflow(save: str, prefix: str, frames: int = 6) -> dict[str, Any]:
    name, inputs = _SETTINGS[save]
    return {
        # Frames that differ from one another: a gradient blended into a colour, by batch.
        "1": node("EmptyImage", width=64, height=48, batch_size=frames, color=0x3366CC),
        "2": node("ImageInvert", image=["1", 0]),
        "3": node(
            "ImageBlend", image1=["1", 0], image2=["2", 0], blend_factor=0.3, blend_mode="multiply"
        ),
        "4": node(name, images=["3", 0], filename_prefix=prefix, **inputs),
    }


@pytest.mark.parametrize("save", ["webp-lossless", "png"])
def test_during_a_run_the_node_returns_before_its_encode_and_writes_comfyuis_bytes(
    runtime: ComfyRuntime,
    monkeypatch: pytest.MonkeyPatch,
    prefix: str,
    metadata_off: None,
    save: str,
) -> None:
    pool = GatedPool()
    monkeypatch.setattr(video_save, "_shared_pool", lambda: pool)
    pending = PendingFiles()
    handed = runtime.run(
        JobSpec(
            prompt_id=f"animated-{save}",
            workflow=_workflow(save, f"{prefix}/handed"),
            pending_files=pending,
        )
    )
    (item,) = handed.outputs["4"]["images"]
    path = runtime.directories.output / item["subfolder"] / item["filename"]
    try:
        assert handed.outputs["4"]["animated"] == [True]
        assert pool.submitted == 1 and len(pending) == 1
        assert path.stat().st_size == 0  # the run is over; its file is not written yet
    finally:
        pool.gate.set()
    assert pending.wait() == []
    # The same frames, ComfyUI's own encode in the node (no hand-off: a lone job).
    plain = runtime.run(
        JobSpec(prompt_id=f"animated-{save}-plain", workflow=_workflow(save, f"{prefix}/plain"))
    )
    assert pool.submitted == 1
    (own_item,) = plain.outputs["4"]["images"]
    own = runtime.directories.output / own_item["subfolder"] / own_item["filename"]
    try:
        assert own.stat().st_size > 0
        assert path.read_bytes() == own.read_bytes()
    finally:
        path.unlink(missing_ok=True)
        own.unlink(missing_ok=True)


def test_a_cancelled_job_does_not_wait_for_a_frozen_encoder(
    runtime: ComfyRuntime, prefix: str
) -> None:
    """The encode sits in a frozen helper's pipe (the cue), the job is cancelled: the wait
    for its file ends with the job's cancel error, the helper is ended, and the next
    animation is written by a fresh one."""
    webp, inputs = _SETTINGS["webp-lossless"]
    saved: list[Path] = []

    def save(frames: int, pending: PendingFiles, deadline: Deadline | None = None) -> Path:
        with fast_save.saves_into(pending, deadline):
            result = _node(webp).save_images(
                images=_frames(frames, seed=frames), filename_prefix=f"{prefix}/f", **inputs
            )
        (path,) = _saved(runtime, result)
        saved.append(path)
        return path

    try:
        warm = PendingFiles()  # a helper started and idle, then stopped
        save(4, warm)
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
            frozen_file = save(60, pending, deadline)
            wait_until(lambda: any(unread_bytes(helper) > 0 for helper in frozen))
            deadline.cancel()
            ((path, error),) = pending.wait()
        finally:
            for helper in frozen:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(helper.process.pid, signal.SIGCONT)
        assert path == frozen_file and not frozen_file.exists()
        assert isinstance(error, JobInterruptedError)
        assert all(helper.process.poll() is not None for helper in frozen)
        again = PendingFiles()
        after = save(4, again)
        assert again.wait() == []
        with Image.open(after) as image:
            assert image.format == "WEBP" and image.n_frames == 4
        assert pool._idle and not set(pool._idle) & set(frozen)
    finally:
        for leftover in saved:
            leftover.unlink(missing_ok=True)


@pytest.mark.parametrize("encode", ["whole", "failing"])
def test_a_job_behind_another_hands_its_animation_off_through_the_worker(
    runtime: ComfyRuntime, monkeypatch: pytest.MonkeyPatch, prefix: str, encode: str
) -> None:
    """Job A's run is held on the engine (the progress sink blocks at its WorkerTestSteps
    node); job B, sent meanwhile, has another job in flight, so its run hands its
    SaveAnimatedWEBP off. B's answer holds the whole animation, one frame per frame of
    its input (``whole``), or names the file that could not be written and why
    (``failing``: the encoder process raises)."""
    handed: list[str] = []
    submit = video_save.submit

    def counting(encoded: Any, path: str, deadline: Any = None) -> Any:
        handed.append(Path(path).name)
        return submit(encoded, path, deadline)

    monkeypatch.setattr(video_save, "submit", counting)
    if encode == "failing":
        from tests.unit.test_animated_save import RefusedAnimation

        monkeypatch.setattr(animated_save, "AnimatedFile", RefusedAnimation)
    frames = runtime.directories.input.parent / f"frames-{os.getpid()}.gif"
    colours = write_frames(frames, 5)
    source = base64.b64encode(frames.read_bytes()).decode()
    frames.unlink()
    workflow = {
        "1": node("LoadImage", image="frames.gif"),
        "2": node(
            _WEBP, images=["1", 0], filename_prefix=f"{prefix}/b", **_SETTINGS["webp-lossless"][1]
        ),
    }
    run = HeldRun(runtime, hang_s=_HANG_S)
    a = run.send("a", {"workflow": held_workflow(f"{prefix}/a", steps=2)})
    try:
        assert run.at_steps.wait(_HANG_S)  # A's run holds the engine thread
        b = run.send(
            "b", {"workflow": workflow, "images": [{"name": "frames.gif", "image": source}]}
        )
        assert run.waiting.wait(_HANG_S)  # B waits for the engine, A still in flight
    finally:
        run.go_on.set()
    a.join(_HANG_S)
    b.join(_HANG_S)
    assert run.answers["a"].get("errors") == [], run.answers["a"]
    body = run.answers["b"]
    assert len(handed) == 1 and handed[0].endswith(".webp")
    if encode == "whole":
        assert body.get("errors") == [], body
        (item,) = body["images"]
        assert item["filename"] == handed[0] and item["mime_type"] == "image/webp"
        data = base64.b64decode(item["data"].partition(",")[2])
        with Image.open(io.BytesIO(data)) as image:
            assert image.n_frames == len(colours) and image.size == (64, 64)
            seen = []
            for number in range(image.n_frames):
                image.seek(number)
                seen.append(image.convert("RGB").getpixel((10, 10)))
        assert seen == colours  # lossless, every frame in order
    else:
        text = json.dumps(body)
        assert f"{handed[0]}: could not be written" in text, body
        assert "the encoder refused the frames" in text, body
