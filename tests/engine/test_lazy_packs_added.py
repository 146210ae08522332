"""Popular packs, loaded on first use or at boot, answer as when every pack loads at boot.

The packs of docs/custom-nodes.md's lazy-packs table, each where the session loads packs
(``COMFYUI_TEST_CUSTOM_NODES`` or the checkout's ``custom_nodes/``) with its requirements
installed; a pack that is absent is left out, and the test skips when none is there.
Three fresh processes boot the worker: one makes the node index (every pack imported,
what each changed recorded), one boots with ``LAZY_PACKS`` on (the default), one with
``LAZY_PACKS=false``. The last two run the same small workflows, one per pack, on the CPU
with no model (a missing model's error where a loader is all the pack has), and must
give the same pixels, or the same error. Each process reports which packs were deferred
and why the others were not: its log (``-o log_cli=true --log-cli-level=INFO``) holds
the table docs/custom-nodes.md quotes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from tests.engine.support import (
    COMFYUI_PATH,
    ENGINE_MARKS,
    child_report,
    empty_image,
    node,
    pack_folders,
    skip_packs_that_cannot_import,
)

pytestmark = ENGINE_MARKS

log = logging.getLogger(__name__)


# A 64x32 image, red on the left half and blue on the right, from ComfyUI's own nodes.
_TWO_TONE = {
    "1": empty_image(32, 32, color=0xCC2222),
    "2": empty_image(32, 32, color=0x2244CC),
    "3": node(
        "ImageStitch",
        image1=["1", 0],
        image2=["2", 0],
        direction="right",
        match_image_size=False,
        spacing_width=0,
        spacing_color="white",
    ),
}


def _saving(through: dict[str, Any]) -> dict[str, Any]:
    """The two-tone image through one node (id 10) into SaveImage (id 11)."""
    return {
        **_TWO_TONE,
        "10": through,
        "11": node("SaveImage", images=["10", 0], filename_prefix="lazy-added/x"),
    }


# One workflow per pack: (pack folder, workflow).
WORKFLOWS: dict[str, dict[str, Any]] = {
    "ComfyUI_IPAdapter_plus": _saving(
        node(
            "PrepImageForClipVision",
            image=["3", 0],
            interpolation="LANCZOS",
            crop_position="center",
            sharpening=0.0,
        )
    ),
    "ComfyUI-KJNodes": _saving(
        node(
            "ImageConcanate",
            image1=["3", 0],
            image2=["1", 0],
            direction="down",
            match_image_size=True,
        )
    ),
    "ComfyUI-Inspire-Pack": _saving(
        node("ChangeImageBatchSize //Inspire", image=["3", 0], batch_size=3, mode="simple")
    ),
    "rgthree-comfy": _saving(
        node(
            "Image Inset Crop (rgthree)",
            image=["3", 0],
            measurement="Pixels",
            left=8,
            right=0,
            top=8,
            bottom=0,
        )
    ),
    "was-node-suite-comfyui": _saving(node("Image Flip", images=["3", 0], mode="horizontal")),
    "comfyui_controlnet_aux": _saving(
        node(
            "CannyEdgePreprocessor",
            image=["3", 0],
            low_threshold=100,
            high_threshold=200,
            resolution=64,
        )
    ),
    "PuLID_ComfyUI": {
        "1": node("PulidModelLoader", pulid_file="worker-test-missing.safetensors"),
        "2": node("PreviewAny", source=["1", 0]),
    },
    "ComfyUI-GGUF": {
        "1": node("UnetLoaderGGUF", unet_name="worker-test-missing.gguf"),
        "2": node("PreviewAny", source=["1", 0]),
    },
    "ComfyUI-Impact-Subpack": {
        "1": node("UltralyticsDetectorProvider", model_name="bbox/worker-test-missing.pt"),
        "2": node("PreviewAny", source=["1", 0]),
    },
}

# Boots the runtime, reports each pack's place (deferred, or why at boot) and the
# failed imports, runs each workflow and reports its images' pixel digests or its error.
_CHILD = """
import hashlib, json, os, sys
sys.path.insert(0, os.environ["REPO"])
import numpy as np
from PIL import Image
from engine.errors import WorkerError
from engine.runtime import JobSpec
from engine.runtime import pack_imports
from engine.runtime.comfy import ComfyRuntime
from engine.settings import Settings

runtime = ComfyRuntime(Settings.from_env(os.environ))
runtime.boot()
lazy = runtime._comfy.lazy_nodes
deferred = {os.path.basename(p) for p in lazy.deferred_packs()}
places = {}
for path, entry in lazy._new.files.items():
    if entry.group == "custom_nodes":
        name = os.path.basename(path)
        # The first folder of a name loads; a later copy is skipped (pack_imports).
        places.setdefault(name, "on first use" if name in deferred else (
            "; ".join(entry.evidence.eager_because) or "at boot"
        ))
report = {
    "places": places,
    "failed": sorted(f.describe() for f in pack_imports.RECORD.failed),
    "jobs": {},
}
for pack, workflow in json.loads(open(os.environ["WORKFLOWS"]).read()).items():
    try:
        result = runtime.run(JobSpec(prompt_id="added-" + str(len(report["jobs"])), workflow=workflow))
    except WorkerError as exc:
        report["jobs"][pack] = {"error": exc.message, "details": exc.details}
        continue
    digests = []
    for output in result.outputs.values():
        for item in output.get("images", []):
            folder = runtime.directories.for_type(item.get("type", "output"))
            with Image.open(folder / item.get("subfolder", "") / item["filename"]) as image:
                pixels = np.asarray(image.convert("RGB"))
            digests.append([list(pixels.shape), hashlib.sha256(pixels.tobytes()).hexdigest()])
    report["jobs"][pack] = {"images": digests}
nodes = sys.modules["nodes"]
if "GGUFLoaderKJ" in nodes.NODE_CLASS_MAPPINGS and "UnetLoaderGGUF" in nodes.NODE_CLASS_MAPPINGS:
    # KJNodes finds ComfyUI-GGUF's module by its folder name when its loader runs.
    try:
        found = nodes.NODE_CLASS_MAPPINGS["GGUFLoaderKJ"]._get_gguf_module()
        report["kj_finds_gguf"] = os.path.basename(found.__name__)
    except ImportError as exc:
        report["kj_finds_gguf"] = f"ImportError: {exc}"
# As tests.engine.support.failed_packs (here the checkout's own tests/ shadows this repository's).
from engine.runtime.pack_imports import RECORD
report["failed_packs"] = [{"pack": f.path.name, "module": f.missing_module, "error": f.error} for f in RECORD.failed if f.group == "custom_nodes"]
print(json.dumps(report))
"""


def _installed() -> list[str]:
    return [p for p in WORKFLOWS if any((f / p).is_dir() for f in pack_folders())]


def _boot(root: Path, name: str, workflows: dict[str, Any], **env: str) -> dict[str, Any]:
    (root / f"{name}.json").write_text(json.dumps(workflows))
    config = root / "extra_model_paths.json"
    extra = [
        str(f) for f in pack_folders() if COMFYUI_PATH is None or f != COMFYUI_PATH / "custom_nodes"
    ]
    config.write_text(
        json.dumps({"lazy_added": {"custom_nodes": "\n".join(extra)}} if extra else {})
    )
    return child_report(
        _CHILD, root, name, config, env, drop=frozenset({"LAZY_PACKS"}), timeout_s=600
    )


def test_popular_packs_answer_the_same_deferred_or_loaded_at_boot(tmp_path: Path) -> None:
    packs = _installed()
    if not packs:
        pytest.skip(
            f"none of {', '.join(WORKFLOWS)} is installed: put them (with their requirements) "
            "in the folder COMFYUI_TEST_CUSTOM_NODES names, or in the checkout's custom_nodes/"
        )
    workflows = {p: WORKFLOWS[p] for p in packs}
    _boot(tmp_path, "index", {})
    lazy = _boot(tmp_path, "lazy", workflows)
    eager = _boot(tmp_path, "eager", workflows, LAZY_PACKS="false")
    skip_packs_that_cannot_import([*lazy["failed_packs"], *eager["failed_packs"]], packs)
    rows = ["| pack | loads | job, LAZY_PACKS on against off |", "| --- | --- | --- |"]
    for pack in sorted(lazy["places"]):
        job = lazy["jobs"].get(pack)
        if job is None:
            answer = "-"
        else:
            kind = "images" if "images" in job else "error"
            answer = f"{kind}, {'same' if job == eager['jobs'][pack] else 'DIFFERS'}"
        rows.append(f"| {pack} | {lazy['places'][pack]} | {answer} |")
    log.info("packs deferred or loaded at boot:\n%s", "\n".join(rows))
    log.info("failed imports: %s", lazy["failed"])
    assert lazy["jobs"] == eager["jobs"]
    assert lazy["failed"] == eager["failed"]
    assert any(p == "on first use" for p in lazy["places"].values())
    for pack in ("ComfyUI_IPAdapter_plus", "ComfyUI-KJNodes", "ComfyUI-Inspire-Pack"):
        if pack in packs:
            assert lazy["jobs"][pack].get("images"), lazy["jobs"][pack]
    for pack in ("PuLID_ComfyUI", "ComfyUI-GGUF", "ComfyUI-Impact-Subpack"):
        if pack in packs:  # the loader's own answer, not an unknown node type
            assert "worker-test-missing" in " ".join(lazy["jobs"][pack]["details"])
    if "kj_finds_gguf" in lazy:
        # ComfyUI-GGUF stays at boot: KJNodes' code names its folder. (In the checkout's
        # custom_nodes/ KJNodes also finds it as custom_nodes.ComfyUI-GGUF, a second
        # import of its code, whether it was loaded or not.)
        assert lazy["places"]["ComfyUI-GGUF"] == (
            "its module is looked up by name in ComfyUI-KJNodes's code"
        )
        assert lazy["kj_finds_gguf"] == eager["kj_finds_gguf"]
        assert not lazy["kj_finds_gguf"].startswith("ImportError"), lazy["kj_finds_gguf"]
