"""ComfyUI's own node files deferred to first use, with the real engine.

Two fresh processes boot ComfyUI from the same checkout (no packs, so they boot in a
few seconds): the first makes the node index if there is none; the second must defer
ComfyUI's node files and still run a workflow naming a node type from one of them, the
first time it names it. The session's runtime checks that a full walk of the mapping
sees every node type.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from engine.runtime.comfy import ComfyRuntime
from tests.engine.support import COMFYUI_PATH, ENGINE_MARKS, skip_packs_that_cannot_import
from tests.unit.test_fast_save import encoder as png_encoder

pytestmark = ENGINE_MARKS

_REPO = Path(__file__).resolve().parents[2]

# Boots the runtime, runs one workflow with ImageBlur (comfy_extras/nodes_post_processing.py),
# then one with SaveAnimatedWEBP (comfy_extras/nodes_images.py, whose classes the
# deferred_animated patch changes), and prints what the lazy loader and the patches did,
# as JSON on the last line.
_CHILD = """
import json, os, sys
sys.path.insert(0, os.environ["REPO"])
from engine.runtime import JobSpec
from engine.runtime.comfy import ComfyRuntime
from engine.settings import Settings
from engine.runtime.pack_imports import RECORD

runtime = ComfyRuntime(Settings.from_env(os.environ))
runtime.boot()
lazy = runtime._comfy.lazy_nodes
patches = runtime._comfy.patches
waiting_at_boot = list(patches.waiting)
# VideoHelperSuite patches at import, so it loads at boot or not at all (absent, or it
# cannot import here): deferred_vhs waits for its node for good without it.
vhs_at_boot = "VHS_VideoCombine" in sys.modules["nodes"].NODE_CLASS_MAPPINGS
deferred = [os.path.basename(p) for p in lazy.deferred]
workflow = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 255}},
    "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 2, "sigma": 1.0}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "lazy/x"}},
}
result = runtime.run(JobSpec(prompt_id="lazy-1", workflow=workflow))
loaded = [os.path.basename(p) for p in lazy.loaded_lazily]
animated = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 2, "color": 255}},
    "2": {"class_type": "SaveAnimatedWEBP", "inputs": {"images": ["1", 0], "filename_prefix": "lazy/a", "fps": 6.0, "lossless": True, "quality": 80, "method": "default"}},
}
animated_outputs = list(runtime.run(JobSpec(prompt_id="lazy-2", workflow=animated)).outputs)
save_images = sys.modules["nodes"].NODE_CLASS_MAPPINGS["SaveAnimatedWEBP"].save_images
waiting_after = list(patches.waiting)  # before the walk below, which loads every file
count = lazy.count()
nodes = sys.modules["nodes"]
walked = len(nodes.NODE_CLASS_MAPPINGS)
print(json.dumps({
    "deferred": deferred,
    "loaded": loaded,
    "outputs": list(result.outputs),
    "count": count,
    "walked": walked,
    "pending_after_walk": len(lazy.pending_names()),
    "waiting_at_boot": waiting_at_boot,
    "vhs_at_boot": vhs_at_boot,
    "waiting_after": waiting_after,
    "waiting_after_walk": list(patches.waiting),
    "animated_applied": patches.is_applied("deferred_animated"),
    "animated_wrapped": getattr(save_images, "_deferred_animated", False),
    "animated_outputs": animated_outputs,
    # As tests.engine.support.failed_packs (here the checkout's own tests/ shadows this repository's).
    "failed_packs": [{"pack": f.path.name, "module": f.missing_module, "error": f.error} for f in RECORD.failed if f.group == "custom_nodes"],
}))
"""


def _boot_in_child(work: Path) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k not in {"EXTRA_MODEL_PATHS", "WARMUP_WORKFLOW"}}
    env.update(
        REPO=str(_REPO),
        COMFYUI_PATH=str(COMFYUI_PATH),
        WORKER_DIR=str(work),
        COMFY_LOG_LEVEL="WARNING",
    )
    env.pop("COMFY_ORG_API_KEY", None)
    out = subprocess.run(
        [sys.executable, "-c", _CHILD],
        env=env,
        cwd=work.parent,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    report: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return report


def test_a_deferred_node_type_runs_the_first_time_a_workflow_names_it(tmp_path: Path) -> None:
    first = _boot_in_child(tmp_path / "first")  # makes the index if this checkout has none yet
    # deferred_vhs waits for good where VideoHelperSuite did not load (a plain checkout).
    vhs = [] if first["vhs_at_boot"] else ["deferred_vhs"]
    if "nodes_images.py" not in first["deferred"]:  # imported at boot: patched at boot
        assert first["waiting_at_boot"] == vhs and first["animated_applied"]
    report = _boot_in_child(tmp_path / "second")
    deferred = report["deferred"]
    assert isinstance(deferred, list)
    assert "nodes_post_processing.py" in deferred
    assert "nodes_images.py" in deferred
    assert report["outputs"] == ["3"]
    # Only the file the workflow needed was imported, and only when the job named it.
    assert report["loaded"] == ["nodes_post_processing.py"]
    # The patches of nodes_images.py's and nodes_video.py's classes waited for their
    # files; the first applied when the second job's SaveAnimatedWEBP loaded its file,
    # the other still waits for its own.
    assert report["waiting_at_boot"] == ["deferred_animated", "deferred_webm", *vhs]
    assert report["animated_outputs"] == ["2"]
    assert report["animated_applied"] and report["animated_wrapped"]
    assert report["waiting_after"] == ["deferred_webm", *vhs]
    assert report["waiting_after_walk"] == vhs  # a full walk loads nodes_video.py too
    # A full walk imports the rest and sees exactly the types counted by name at boot
    # (a pack of the checkout that cannot import here is not this test's to judge).
    skip_packs_that_cannot_import(report["failed_packs"])
    assert report["walked"] == report["count"]
    assert report["pending_after_walk"] == 0


def test_the_session_runtime_sees_every_node_type_on_a_walk(runtime: ComfyRuntime) -> None:
    nodes = sys.modules["nodes"]
    lazy = runtime._comfy.lazy_nodes  # type: ignore[union-attr]
    names = set(nodes.NODE_CLASS_MAPPINGS)
    assert len(names) == lazy.count() == runtime.node_count
    assert {"SaveImage", "ImageBlur", "SaveAnimatedWEBP", "CreateVideo"} <= names
    assert not lazy.pending_names()
    assert not lazy.failed_lazily
    displays = nodes.NODE_DISPLAY_NAME_MAPPINGS
    assert displays["ImageBlur"] == "Image Blur"


@pytest.mark.parametrize("encoder", ["pillow", "fast"])
def test_a_batch_saved_in_parallel_matches_comfyuis_save(
    runtime: ComfyRuntime, encoder: str
) -> None:
    """``PNG_ENCODER=pillow``: byte for byte ComfyUI's files; ``fast``: the same pixels
    and text chunks, other compressed bytes."""
    count = 3
    nodes = sys.modules["nodes"]
    torch = sys.modules["torch"]
    patched = nodes.SaveImage.save_images
    original = patched.__wrapped__
    generator = torch.Generator().manual_seed(7)
    ramp = torch.linspace(0, 0.8, 160).reshape(1, 1, 160, 1)
    images = (torch.rand((count, 96, 160, 3), generator=generator) * 0.2 + ramp).clamp(0, 1)
    node = nodes.SaveImage()
    prompt = {"1": {"class_type": "SaveImage", "inputs": {}}}
    extra = {"workflow": {"nodes": []}}
    outputs = runtime.directories.output

    def saved(function: object, prefix: str) -> list[bytes]:
        result = function(node, images, filename_prefix=prefix, prompt=prompt, extra_pnginfo=extra)  # type: ignore[operator]
        items = result["ui"]["images"]
        assert len(items) == count
        return [(outputs / i["subfolder"] / i["filename"]).read_bytes() for i in items]

    try:
        theirs = saved(original, "fast-save-test/a")
        with png_encoder(encoder):
            ours = saved(patched, "fast-save-test/b")
    finally:
        # Saved outside any job's folder: the session's output folder must not keep them
        # (test_outputs_real checks that nothing lies outside job folders).
        shutil.rmtree(outputs / "fast-save-test", ignore_errors=True)
    assert all(b.startswith(b"\x89PNG") for b in ours)
    if encoder == "pillow":
        assert ours == theirs
        return
    assert not set(ours) & set(theirs)
    for mine, comfyuis in zip(ours, theirs, strict=True):
        with Image.open(io.BytesIO(mine)) as a, Image.open(io.BytesIO(comfyuis)) as b:
            assert (a.mode, a.size, a.tobytes(), a.text) == (b.mode, b.size, b.tobytes(), b.text)
