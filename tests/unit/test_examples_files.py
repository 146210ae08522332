"""The example workflows in examples/: well-formed API format, models the image can bake.

No ComfyUI needed: these are file checks. Each example is a plain API-format graph,
every link points at a node of the same graph, and every model file it names is an
entry of ``comfyui/models.json`` in the folder its loader reads, so the MODEL_SETS
advice of docs/examples.md is true. The real engine validates the same files in
tests/engine/test_examples.py.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
MODELS = ROOT / "comfyui" / "models.json"
DOCS = ROOT / "docs" / "examples.md"

# (class_type, input) -> the models.json folder its file must sit in. A model file named
# by any other input fails test_model_files_sit_at_known_loader_inputs: add its loader here.
LOADER_FOLDERS: dict[tuple[str, str], str] = {
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
    ("UNETLoader", "unet_name"): "diffusion_models",
    ("CLIPLoader", "clip_name"): "text_encoders",
    ("VAELoader", "vae_name"): "vae",
    ("UpscaleModelLoader", "model_name"): "upscale_models",
    ("PulidModelLoader", "pulid_file"): "pulid",
    ("ReActorFaceSwap", "swap_model"): "insightface",
    ("ReActorFaceSwap", "face_restore_model"): "facerestore_models",
}
# Suffixes of model files (ComfyUI's supported_pt_extensions plus ONNX).
MODEL_SUFFIXES = {".safetensors", ".ckpt", ".pt", ".pt2", ".pth", ".bin", ".pkl", ".sft", ".onnx"}
# Inputs that name input files the request sends, not models.
INPUT_FILE_INPUTS = {("LoadImage", "image")}

EXAMPLE_FILES = sorted(EXAMPLES.glob("*.json"))
# The README's model-free quick-start example is documented there, not in docs/examples.md.
README_EXAMPLE = "invert_png_mp4.json"


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _string_inputs(workflow: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(node id, class_type, input, value) for every string input value."""
    return [
        (node_id, node["class_type"], name, value)
        for node_id, node in workflow.items()
        for name, value in node["inputs"].items()
        if isinstance(value, str)
    ]


def _manifest_folders() -> dict[str, set[str]]:
    """File name -> the folders models.json puts a file of that name in."""
    folders: dict[str, set[str]] = {}
    for entry in json.loads(MODELS.read_text(encoding="utf-8")):
        folders.setdefault(entry["name"], set()).add(entry["folder"])
    return folders


def test_there_are_examples_for_each_model_family() -> None:
    """The guide's families each have an example: SDXL, Wan 2.2, PuLID, ReActor."""
    names = {path.stem for path in EXAMPLE_FILES}
    assert {"sdxl_txt2img", "wan22_i2v", "pulid_sdxl", "reactor_faceswap"} <= names, names


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_example_is_an_api_format_workflow(path: Path) -> None:
    """Each file is a node id -> {class_type, inputs} dict, as Export (API) writes it."""
    workflow = _load(path)
    assert isinstance(workflow, dict) and workflow, f"{path.name}: not a non-empty object"
    for node_id, node in workflow.items():
        assert isinstance(node, dict), f"{path.name}: node {node_id} is not an object"
        assert isinstance(node.get("class_type"), str) and node["class_type"], (
            f"{path.name}: node {node_id} has no class_type"
        )
        assert isinstance(node.get("inputs"), dict), f"{path.name}: node {node_id} has no inputs"
    # The UI format has these at the top level; an API-format file never does.
    assert not {"nodes", "links", "version"} & set(workflow), f"{path.name}: UI format"


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_every_link_points_to_an_existing_node(path: Path) -> None:
    """ComfyUI takes every list input as a link [node id, output index]: each must resolve."""
    workflow = _load(path)
    for node_id, node in workflow.items():
        for name, value in node["inputs"].items():
            if not isinstance(value, list):
                continue
            where = f"{path.name}: node {node_id} input {name!r}"
            assert len(value) == 2, f"{where}: a link is [node id, output index], got {value}"
            source, index = value
            assert isinstance(source, str) and source in workflow, f"{where}: no node {source!r}"
            assert source != node_id, f"{where}: a node linked to itself"
            assert isinstance(index, int) and index >= 0, f"{where}: bad output index {index!r}"


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_model_files_sit_at_known_loader_inputs(path: Path) -> None:
    """A value that looks like a model file is a loader input this test knows the folder of."""
    for node_id, class_type, name, value in _string_inputs(_load(path)):
        if (class_type, name) in INPUT_FILE_INPUTS:
            continue
        if PurePosixPath(value).suffix.lower() in MODEL_SUFFIXES:
            assert (class_type, name) in LOADER_FOLDERS, (
                f"{path.name}: node {node_id} ({class_type}) input {name!r} names the model "
                f"file {value!r}: add the loader input to LOADER_FOLDERS"
            )


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_every_model_file_is_in_the_manifest_where_its_loader_looks(path: Path) -> None:
    """MODEL_SETS bakes what each example loads: same name, in the folder its loader reads."""
    manifest = _manifest_folders()
    for node_id, class_type, name, value in _string_inputs(_load(path)):
        folder = LOADER_FOLDERS.get((class_type, name))
        if folder is None:
            continue
        where = f"{path.name}: node {node_id} ({class_type}) {name}={value!r}"
        assert value in manifest, f"{where}: no models.json entry of that name"
        assert folder in manifest[value], (
            f"{where}: models.json puts it in {sorted(manifest[value])}, the loader reads {folder}"
        )


@pytest.mark.parametrize(
    "path", [p for p in EXAMPLE_FILES if p.name != README_EXAMPLE], ids=lambda p: p.name
)
def test_docs_name_each_example_with_its_images_and_models(path: Path) -> None:
    """docs/examples.md names every example, the images its request sends and its models."""
    docs = DOCS.read_text(encoding="utf-8")
    assert f"examples/{path.name}" in docs, f"docs/examples.md does not mention {path.name}"
    for _, class_type, name, value in _string_inputs(_load(path)):
        if (class_type, name) in INPUT_FILE_INPUTS or (class_type, name) in LOADER_FOLDERS:
            assert f"`{value}`" in docs, f"docs/examples.md does not name {value!r} ({path.name})"
