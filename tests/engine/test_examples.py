"""The model-family examples in examples/, validated by the real engine without models.

This environment holds none of the example's models, so each job must fail validation
for exactly one reason: the absent model files. Every node type is installed (the
image's packs), every other value is accepted, and each missing file comes back named,
with the folders the worker searched, among them the folder comfyui/models.json bakes
it into. A typo in any other value (a sampler, an rgthree size, a link) adds a problem
and fails the test. The input images each example names are sent as small real PNGs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from engine.errors import WorkflowValidationError
from engine.runtime import JobSpec
from engine.runtime.comfy import ComfyRuntime
from engine.runtime.comfy_folders import combo_options
from tests.engine.support import ENGINE_MARKS, require_packs

pytestmark = ENGINE_MARKS

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
MODELS = ROOT / "comfyui" / "models.json"


@dataclass(frozen=True)
class Example:
    """One example file, the pack it needs and the model inputs validation must refuse."""

    file: str
    pack: str | None
    """The directory name of its custom node pack, as in comfyui/custom_nodes.json."""
    model_inputs: frozenset[tuple[str, str]]
    """(node id, input) of every model file it loads."""


EXAMPLE_CASES = [
    Example("sdxl_txt2img.json", "rgthree-comfy", frozenset({("4", "ckpt_name")})),
    Example(
        "wan22_i2v.json",
        None,
        frozenset({("37", "unet_name"), ("38", "clip_name"), ("39", "vae_name")}),
    ),
    Example(
        "wan22_14b_i2v.json",
        None,
        frozenset(
            {("37", "unet_name"), ("56", "unet_name"), ("38", "clip_name"), ("39", "vae_name")}
        ),
    ),
    # PulidInsightFaceLoader (antelopev2) and PulidEvaClipLoader (EVA02-CLIP-L) have no
    # file input: their models are looked for only when the job runs, so validation
    # cannot name them. Only the checkpoint and the PuLID adapter are refused here.
    Example(
        "pulid_sdxl.json", "PuLID_ComfyUI", frozenset({("4", "ckpt_name"), ("16", "pulid_file")})
    ),
    Example(
        "reactor_faceswap.json",
        "ComfyUI-ReActor",
        frozenset({("3", "swap_model"), ("3", "face_restore_model")}),
    ),
]


def _manifest_folders() -> dict[str, set[str]]:
    folders: dict[str, set[str]] = {}
    for entry in json.loads(MODELS.read_text(encoding="utf-8")):
        folders.setdefault(entry["name"], set()).add(entry["folder"])
    return folders


def _require_pack(pack: str | None, workflow: dict[str, Any]) -> None:
    """Skip when the pack is absent; fail when it is present but its nodes did not load."""
    import nodes

    if pack is not None:
        require_packs(pack)
    unknown = sorted({n["class_type"] for n in workflow.values()} - set(nodes.NODE_CLASS_MAPPINGS))
    assert not unknown, f"node types {unknown} are not installed" + (
        f" although {pack} is: its import failed (see the boot log)" if pack else ""
    )


def _skip_if_model_present(workflow: dict[str, Any], example: Example) -> None:
    """This test proves validation with the models absent; with them it would run the job."""
    import nodes

    for node_id, input_name in sorted(example.model_inputs):
        node = workflow[node_id]
        try:
            spec = nodes.NODE_CLASS_MAPPINGS[node["class_type"]].INPUT_TYPES()
        except Exception:  # noqa: S112 - validation reports it; here it only means "not found"
            continue
        config = (spec.get("required") or {}).get(input_name) or (spec.get("optional") or {}).get(
            input_name
        )
        if node["inputs"][input_name] in (combo_options(config) or []):
            pytest.skip(f"{node['inputs'][input_name]} is installed here: the job would run")


def _looked_in(detail: str) -> list[str]:
    """The folders a missing file's detail line lists after 'looked in:'."""
    _, found, rest = detail.partition("looked in: ")
    if not found:
        return []
    return [folder.strip() for folder in rest.replace(" (missing)", "").split(")")[0].split(", ")]


WriteImages = Callable[[list[str]], None]


@pytest.fixture
def input_images(runtime: ComfyRuntime) -> Iterator[WriteImages]:
    """Writes small real PNGs of the given names into the input folder; removes them after."""
    written: list[Path] = []

    def write(names: list[str]) -> None:
        for i, name in enumerate(names):
            path = runtime.directories.input / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (64, 64), (60 + 40 * i, 120, 200 - 40 * i)).save(path, "PNG")
            written.append(path)

    yield write
    for path in written:
        path.unlink(missing_ok=True)


@pytest.mark.parametrize("example", EXAMPLE_CASES, ids=lambda e: e.file.removesuffix(".json"))
def test_example_fails_validation_only_for_its_absent_models(
    runtime: ComfyRuntime, input_images: WriteImages, example: Example
) -> None:
    """Only the example's model files are refused, each named with where the worker looked."""
    workflow: dict[str, Any] = json.loads((EXAMPLES / example.file).read_text(encoding="utf-8"))
    _require_pack(example.pack, workflow)
    _skip_if_model_present(workflow, example)
    input_images(
        sorted(n["inputs"]["image"] for n in workflow.values() if n["class_type"] == "LoadImage")
    )

    with pytest.raises(WorkflowValidationError) as caught:
        runtime.run(JobSpec(prompt_id=f"example-{example.file}", workflow=workflow))

    error = caught.value
    node_errors: dict[str, Any] = error.extra["node_errors"]
    refused = {
        (node_id, str((item.get("extra_info") or {}).get("input_name"))): item
        for node_id, entry in node_errors.items()
        for item in entry["errors"]
    }
    assert set(refused) == set(example.model_inputs), error.details
    assert len(error.details) == len(example.model_inputs), error.details
    manifest = _manifest_folders()
    for (node_id, input_name), item in sorted(refused.items()):
        file_name = workflow[node_id]["inputs"][input_name]
        assert item["type"] == "value_not_in_list", item
        assert item["extra_info"]["received_value"] == file_name
        class_type = workflow[node_id]["class_type"]
        (detail,) = [
            d
            for d in error.details
            if d.startswith(f"Node {node_id} ({class_type}) input '{input_name}'")
        ]
        assert repr(file_name) in detail, detail
        folders = _looked_in(detail)
        assert folders, f"the error does not say where the worker looked: {detail}"
        # The folder models.json downloads it into (MODEL_SETS bakes it under models/).
        wanted = manifest[file_name]
        assert any(f.endswith(f"/models/{kind}") for f in folders for kind in wanted), (
            f"{file_name} belongs in models/{sorted(wanted)}, but the worker looked in {folders}"
        )
