"""What a workflow needs: node types with their packs, model files with their places (workflow_needs).

Driven through the fake runtime, whose node definitions were recorded from the real
engine and its five packs (``python_module`` names each type's pack).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.settings import Settings
from engine.workflow_needs import FailedPackView, PackHints, find_needs, render
from tests.fake_runtime import FakeRuntime


@pytest.fixture
def engine(tmp_path: Path) -> FakeRuntime:
    return FakeRuntime(Settings(work_dir=tmp_path / "work"))


def api(*nodes: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    return {str(i): {"class_type": t, "inputs": inputs} for i, (t, inputs) in enumerate(nodes, 1)}


def test_core_types_packs_and_missing_types_are_told_apart(
    engine: FakeRuntime, tmp_path: Path
) -> None:
    volume = tmp_path / "volume"
    workflow = api(
        ("EmptyImage", {"width": 8, "height": 8}),
        ("SDXL Empty Latent Image (rgthree)", {}),
        ("ImageResizeKJv2", {}),
        ("FaceDetailer", {}),
        ("FaceDetailer", {}),
    )
    needs = find_needs(
        workflow,
        engine,
        pack_folders={
            "rgthree-comfy": tmp_path / "image" / "rgthree-comfy",
            "ComfyUI-KJNodes": volume / "ComfyUI" / "custom_nodes" / "ComfyUI-KJNodes",
        },
        volume_roots=[volume],
    )
    by_type = {n.class_type: n for n in needs.nodes}
    assert by_type["EmptyImage"].provider == "ComfyUI"
    assert by_type["SDXL Empty Latent Image (rgthree)"].provider == "pack rgthree-comfy (image)"
    assert by_type["ImageResizeKJv2"].provider == "pack ComfyUI-KJNodes (volume)"
    missing = by_type["FaceDetailer"]
    assert not missing.installed and missing.node_ids == ("4", "5")
    assert not needs.complete
    assert "MISSING FaceDetailer" in render(needs)


def test_a_missing_type_is_traced_to_a_failed_pack_the_editor_record_or_a_node_map(
    engine: FakeRuntime, tmp_path: Path
) -> None:
    failed = FailedPackView(
        folder=tmp_path / "ComfyUI-Impact-Pack",
        error="ModuleNotFoundError: No module named 'segment_anything'",
        remedy="ComfyUI-Impact-Pack: ...; bake it into the image with its requirements: "
        "scripts/add_custom_nodes.py https://github.com/ltdrdata/ComfyUI-Impact-Pack@abc",
        provides=lambda class_type: class_type == "FaceDetailer",
    )
    node_map_file = tmp_path / "extension-node-map.json"
    node_map_file.write_text(
        json.dumps(
            {"https://github.com/city96/ComfyUI-GGUF": [["UnetLoaderGGUF"], {"title": "GGUF"}]}
        )
    )
    hints = PackHints(node_map=PackHints.read_node_map(node_map_file), failed=[failed])
    needs = find_needs(
        api(("FaceDetailer", {}), ("UnetLoaderGGUF", {}), ("Nowhere", {})),
        engine,
        pack_folders={},
        volume_roots=[],
        hints=hints,
    )
    by_type = {n.class_type: n for n in needs.nodes}
    assert "failed to import at boot" in by_type["FaceDetailer"].provider
    assert by_type["FaceDetailer"].hint.endswith("ComfyUI-Impact-Pack@abc")
    assert by_type["UnetLoaderGGUF"].hint.startswith(
        "scripts/add_custom_nodes.py https://github.com/city96/ComfyUI-GGUF@<commit>"
    )
    assert "no pack known" in by_type["Nowhere"].provider


def test_a_ui_workflow_names_the_pack_the_editor_recorded(engine: FakeRuntime) -> None:
    commit = "a" * 40
    ui = {
        "nodes": [
            {
                "id": 7,
                "type": "UnetLoaderGGUF",
                "inputs": [],
                "outputs": [],
                "widgets_values": ["model.gguf"],
                "properties": {"aux_id": "city96/ComfyUI-GGUF", "ver": commit},
            },
            {
                "id": 8,
                "type": "FaceDetailer",
                "inputs": [],
                "outputs": [],
                "widgets_values": [],
                "properties": {"cnr_id": "comfyui-impact-pack", "ver": "8.8.1"},
            },
        ],
        "links": [],
    }
    needs = find_needs(ui, engine, pack_folders={}, volume_roots=[])
    by_type = {n.class_type: n for n in needs.nodes}
    assert by_type["UnetLoaderGGUF"].hint == (
        f"scripts/add_custom_nodes.py https://github.com/city96/ComfyUI-GGUF@{commit}"
    )
    assert "comfyui-impact-pack 8.8.1 (Comfy Registry)" in by_type["FaceDetailer"].provider


def test_model_files_are_found_in_the_image_or_on_the_volume_or_named_missing(
    engine: FakeRuntime, tmp_path: Path
) -> None:
    checkpoints = engine.models_dir / "checkpoints" / "sd15"
    checkpoints.mkdir(parents=True)
    (checkpoints / "here.safetensors").write_bytes(b"weights")
    workflow = api(
        ("CheckpointLoaderSimple", {"ckpt_name": "sd15\\here.safetensors"}),
        ("CheckpointLoaderSimple", {"ckpt_name": "sd15/gone.safetensors"}),
        ("LoraLoader", {"lora_name": "https://huggingface.co/a/b/resolve/main/l.safetensors"}),
    )
    image = find_needs(workflow, engine, pack_folders={}, volume_roots=[tmp_path / "volume"])
    places = [(m.node_id, m.place) for m in image.models]
    assert places == [("1", "image"), ("2", "missing"), ("3", "by URL")]
    assert image.models[1].searched == (engine.models_dir / "checkpoints",)
    on_volume = find_needs(workflow, engine, pack_folders={}, volume_roots=[tmp_path])
    assert on_volume.models[0].place == "volume"
    report = json.loads(json.dumps(image.to_json()))
    assert report["complete"] is False and report["models"][1]["searched"]


def test_an_absolute_model_path_is_looked_up_as_the_job_would_name_it(
    engine: FakeRuntime, tmp_path: Path
) -> None:
    loras = engine.models_dir / "loras"
    (loras / "style").mkdir(parents=True)
    (loras / "style" / "ink.safetensors").write_bytes(b"weights")
    workflow = api(
        # This worker's own folder; another machine's install (Windows); a folder of
        # another kind, which the job refuses.
        ("LoraLoader", {"lora_name": str(loras / "style" / "ink.safetensors")}),
        (
            "LoraLoader",
            {"lora_name": "C:\\ComfyUI\\models\\loras\\style\\ink.safetensors"},
        ),
        ("LoraLoader", {"lora_name": "/elsewhere/checkpoints/ink.safetensors"}),
    )
    needs = find_needs(workflow, engine, pack_folders={}, volume_roots=[tmp_path / "volume"])
    assert [(m.place, m.found) for m in needs.models] == [
        ("image", loras / "style" / "ink.safetensors"),
        ("image", loras / "style" / "ink.safetensors"),
        ("missing", None),
    ]
    assert "an absolute path outside this worker's loras folders" in needs.models[2].refused
    assert f"NOT FOUND: {needs.models[2].refused}" in render(needs)
    assert needs.to_json()["models"][2]["refused"] == needs.models[2].refused


def test_a_node_map_in_another_shape_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "map.json"
    bad.write_text(json.dumps({"https://github.com/x/y": "not a list"}))
    with pytest.raises(ValueError, match="is not \\[\\[node types\\]"):
        PackHints.read_node_map(bad)
