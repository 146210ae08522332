"""SaveWEBM's encode handed off during a run (the ``deferred_webm`` patch) on the real engine.

ComfyUI's own SaveWEBM (comfy_extras/nodes_video.py, a V3 node): while a run hands its
files off, the node returns its ui result with the file's name taken; once the encoder
process has written it, the WebM is the one the node writes itself, VP9 and AV1, with
the prompt and workflow in its metadata as ComfyUI writes them, and none with
``OUTPUT_METADATA=false``. Not compared byte for byte: the WebM muxer writes identifiers
of its own making into every file's header (two files of ComfyUI's own SaveWEBM from the
same frames differ there too), so the files are compared as PyAV reads them (every
packet's bytes and timing, the metadata, the stream's settings) and by their size.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.runtime import JobSpec, fast_save, video_save, webm_save
from engine.runtime.comfy import ComfyRuntime
from engine.runtime.pending_files import PendingFiles
from tests.engine.support import ENGINE_MARKS, count_video_frames, node
from tests.unit.test_fast_save import GatedPool

pytestmark = ENGINE_MARKS


def _workflow(prefix: str, codec: str, frames: int = 5) -> dict[str, Any]:
    return {
        # Frames that differ from one another: a gradient blended into a colour, by batch.
        "1": node("EmptyImage", width=64, height=48, batch_size=frames, color=0x3366CC),
        "2": node("ImageInvert", image=["1", 0]),
        "3": node(
            "ImageBlend", image1=["1", 0], image2=["2", 0], blend_factor=0.3, blend_mode="multiply"
        ),
        "4": node(
            webm_save.NODE, images=["3", 0], filename_prefix=prefix, codec=codec, fps=12.0, crf=32.0
        ),
    }


def _content(path: Path) -> dict[str, Any]:
    """A WebM as PyAV reads it: all but the identifiers its muxer makes for each file."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        context = stream.codec_context
        packets = [
            (bytes(p), p.pts, p.dts, p.is_keyframe) for p in container.demux(stream) if p.size
        ]
        return {
            "size": path.stat().st_size,
            "metadata": dict(container.metadata),
            "stream": (context.name, context.width, context.height, context.pix_fmt),
            "rate": (stream.average_rate, stream.time_base),
            "packets": packets,
        }


def _saved(runtime: ComfyRuntime, result: Any) -> Path:
    (item,) = result.outputs["4"]["images"]
    return runtime.directories.output / item["subfolder"] / item["filename"]


def test_the_patch_is_in_force(runtime: ComfyRuntime) -> None:
    import nodes

    node_class = nodes.NODE_CLASS_MAPPINGS[webm_save.NODE]  # loads nodes_video.py if deferred
    assert getattr(node_class.__dict__["execute"].__func__, "_deferred_webm", False)
    assert runtime.patches is not None and runtime.patches.is_applied("deferred_webm")


@pytest.mark.parametrize("codec", ["vp9", "av1"])
def test_during_a_run_savewebm_returns_before_its_encode_and_writes_comfyuis_webm(
    runtime: ComfyRuntime,
    monkeypatch: pytest.MonkeyPatch,
    prefix: str,
    codec: str,
) -> None:
    pool = GatedPool()
    monkeypatch.setattr(video_save, "_shared_pool", lambda: pool)
    pending = PendingFiles()
    handed = runtime.run(
        JobSpec(
            prompt_id=f"webm-{codec}",
            workflow=_workflow(f"{prefix}/one", codec),
            pending_files=pending,
        )
    )
    path = _saved(runtime, handed)
    try:
        assert pool.submitted == 1 and len(pending) == 1
        assert path.stat().st_size == 0  # the run is over; its file is not written yet
    finally:
        pool.gate.set()
    assert pending.wait() == []
    # The same frames, ComfyUI's own encode in the node (no hand-off: a lone job).
    plain = runtime.run(
        JobSpec(prompt_id=f"webm-{codec}-plain", workflow=_workflow(f"{prefix}/two", codec))
    )
    assert pool.submitted == 1
    own = _saved(runtime, plain)
    try:
        assert own.stat().st_size > 0
        # SaveWEBM writes the prompt whatever --disable-metadata says (the worker gives it
        # none with OUTPUT_METADATA=false: output_metadata.EMBED_ANYWAY); here the runtime
        # embeds, and the two prompts differ by their prefixes, of one length.
        handed_content, own_content = _content(path), _content(own)
        prompt = handed_content["metadata"]["PROMPT"]
        handed_content["metadata"]["PROMPT"] = prompt.replace(f"{prefix}/one", f"{prefix}/two")
        assert handed_content == own_content
        assert count_video_frames(path) == (5, (64, 48))
    finally:
        path.unlink(missing_ok=True)
        own.unlink(missing_ok=True)


@pytest.mark.parametrize("metadata", [True, False], ids=["metadata", "no-metadata"])
def test_the_encoder_process_writes_the_webm_comfyui_writes(
    runtime: ComfyRuntime, request: pytest.FixtureRequest, prefix: str, metadata: bool
) -> None:
    """ComfyUI's own node class, called as the executor calls a V3 node (a clone with its
    hidden inputs), the real encoder process; against the same call with no hand-off."""
    import nodes
    import torch

    if not metadata:
        request.getfixturevalue("metadata_off")
    node_class = nodes.NODE_CLASS_MAPPINGS[webm_save.NODE]
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64}}}
    extra = {"workflow": {"nodes": [{"id": 1, "type": "EmptyImage"}], "links": []}}
    from comfy_api.latest import io

    hidden = {io.Hidden.prompt: prompt, io.Hidden.extra_pnginfo: extra}
    clone = node_class.PREPARE_CLASS_CLONE(hidden if metadata else {})
    images = torch.rand(7, 48, 64, 3, generator=torch.Generator().manual_seed(7))
    inputs = {"images": images, "codec": "vp9", "fps": 24.0, "crf": 30.0}
    pending = PendingFiles()
    with fast_save.saves_into(pending):
        handed = clone.execute(filename_prefix=f"{prefix}/handed", **inputs)
    assert len(pending) == 1
    assert pending.wait() == []
    pool = video_save._pool
    assert pool is not None and pool._idle, "not written by an encoder process"
    own = clone.execute(filename_prefix=f"{prefix}/own", **inputs)
    paths = []
    for result in (handed, own):
        (saved,) = result.ui.as_dict()["images"]
        paths.append(runtime.directories.output / saved["subfolder"] / saved["filename"])
    try:
        handed_content = _content(paths[0])
        assert handed_content == _content(paths[1])
        expected = {"PROMPT": json.dumps(prompt), "WORKFLOW": json.dumps(extra["workflow"])}
        written = {k: v for k, v in handed_content["metadata"].items() if k != "ENCODER"}
        assert written == (expected if metadata else {})
    finally:
        for path in paths:
            path.unlink(missing_ok=True)
