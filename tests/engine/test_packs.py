"""The image's custom node packs (comfyui/custom_nodes.json) in the real engine.

Each pack loads in-process; model-free jobs run through the runtime; and the boot
fixes of engine/runtime/pack_fixes.py hold against the packs' real code: ReActor
validates offline, the yaml's folders survive the packs' imports, and files on the
session's stand-in network volume (conftest.py) reach the packs that read
``<ComfyUI>/models`` directly. The packs come from ``COMFYUI_TEST_CUSTOM_NODES`` or the
checkout's ``custom_nodes/``; a test whose pack is absent skips, saying so.
"""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from engine.errors import WorkflowValidationError
from engine.runtime import JobSpec, RunResult
from engine.runtime.comfy import ComfyRuntime
from tests.engine.conftest import EngineSetup
from tests.engine.support import (
    COMFYUI_PATH,
    ENGINE_MARKS,
    files_of,
    gradient_rgb,
    node,
    require_packs,
)

pytestmark = ENGINE_MARKS

MANIFEST = Path(__file__).parents[2] / "comfyui" / "custom_nodes.json"
PACKS = [entry["name"] for entry in json.loads(MANIFEST.read_text(encoding="utf-8"))]

# Node types each pack must provide: the ones its manifest entry is there for.
PACK_NODES = {
    "rgthree-comfy": ["SDXL Empty Latent Image (rgthree)", "Power Lora Loader (rgthree)"],
    "ComfyUI-VideoHelperSuite": ["VHS_VideoCombine", "VHS_LoadVideo"],
    "PuLID_ComfyUI": [
        "PulidModelLoader",
        "PulidInsightFaceLoader",
        "PulidEvaClipLoader",
        "ApplyPulid",
    ],
    "ComfyUI-ReActor": ["ReActorFaceSwap", "ReActorRestoreFace", "ReActorFaceBoost"],
    "ComfyUI-KJNodes": [
        "ImageResizeKJv2",
        "GetImageSizeAndCount",
        "PathchSageAttentionKJ",
        "WanVideoNAG",
        "ModelPatchTorchSettings",
    ],
}


def _run(runtime: ComfyRuntime, workflow: dict[str, Any]) -> RunResult:
    return runtime.run(JobSpec(prompt_id=f"packs-{id(workflow)}", workflow=workflow))


def _node_class(class_type: str) -> Any:
    import nodes

    return nodes.NODE_CLASS_MAPPINGS[class_type]


def _pack_globals(class_type: str, method: str) -> dict[str, Any]:
    """The module globals a pack's node method reads (ReActor's module is out of sys.modules)."""
    function = getattr(_node_class(class_type), method)
    return getattr(function, "__func__", function).__globals__  # type: ignore[no-any-return]


def _options(class_type: str, input_name: str) -> list[str]:
    spec = _node_class(class_type).INPUT_TYPES()
    config = {**spec.get("required", {}), **spec.get("optional", {})}[input_name]
    return list(config[0])


# -- every pack loads ----------------------------------------------------------------


def test_every_pack_of_the_manifest_is_checked_here() -> None:
    """A pack added to comfyui/custom_nodes.json needs its node types listed above."""
    assert sorted(PACK_NODES) == sorted(PACKS)


@pytest.mark.parametrize("pack", PACKS)
def test_pack_loads_in_process(runtime: ComfyRuntime, pack: str) -> None:
    """The pack imported without failing and registered its node types."""
    import nodes

    require_packs(pack)
    # ComfyUI records a pack's folder only once its module imported without raising.
    assert pack in nodes.LOADED_MODULE_DIRS, f"{pack} failed to import: see the boot log"
    missing = [t for t in PACK_NODES[pack] if t not in nodes.NODE_CLASS_MAPPINGS]
    assert not missing, f"{pack} loaded without {missing}"
    own = [
        t
        for t, cls in nodes.NODE_CLASS_MAPPINGS.items()
        if getattr(cls, "RELATIVE_PYTHON_MODULE", None) == f"custom_nodes.{pack}"
    ]
    assert set(PACK_NODES[pack]) <= set(own)


# -- model-free jobs -------------------------------------------------------------------


def test_rgthree_sdxl_latent_has_the_chosen_size(runtime: ComfyRuntime, prefix: str) -> None:
    """' 832 x 1216  (portrait)' gives a 104 x 152 latent (1/8), measured by KJNodes."""
    require_packs("rgthree-comfy", "ComfyUI-KJNodes")
    workflow = {
        "1": node(
            "SDXL Empty Latent Image (rgthree)",
            dimensions=" 832 x 1216  (portrait)",
            clip_scale=2.0,
            batch_size=1,
        ),
        # KJNodes 3fcd22f2's GetLatentSizeAndCount names its outputs (latent, batch_size,
        # channels, frames, width, height) but returns (latent, B, C, T, H, W): output 4
        # is the height, 5 the width, in latent pixels.
        "2": node("GetLatentSizeAndCount", latent=["1", 0]),
        "3": node("EmptyImage", width=["2", 5], height=["2", 4], batch_size=["2", 1], color=0),
        "4": node("SaveImage", images=["3", 0], filename_prefix=prefix),
    }
    result = _run(runtime, workflow)
    (path,) = files_of(result, runtime.directories)
    assert Image.open(path).size == (832 // 8, 1216 // 8)


@pytest.mark.parametrize(
    ("keep_proportion", "width", "height", "expected"),
    [("stretch", 40, 30, (40, 30)), ("resize", 32, 0, (32, 24))],
)
def test_kjnodes_image_resize_v2(
    runtime: ComfyRuntime,
    prefix: str,
    keep_proportion: str,
    width: int,
    height: int,
    expected: tuple[int, int],
) -> None:
    """ImageResizeKJv2 on a loaded 64 x 48 image: stretched, or scaled keeping its shape."""
    require_packs("ComfyUI-KJNodes")
    gradient_rgb(64, 48).save(runtime.directories.input / "kj-64x48.png")
    workflow = {
        "1": node("LoadImage", image="kj-64x48.png"),
        "2": node(
            "ImageResizeKJv2",
            image=["1", 0],
            width=width,
            height=height,
            upscale_method="bilinear",
            keep_proportion=keep_proportion,
            pad_color="0, 0, 0",
            crop_position="center",
            divisible_by=2,
        ),
        "3": node("SaveImage", images=["2", 0], filename_prefix=prefix),
    }
    result = _run(runtime, workflow)
    (path,) = files_of(result, runtime.directories)
    assert Image.open(path).size == expected


# -- ReActor offline ---------------------------------------------------------------------


def test_reactor_face_swap_validates_offline_without_restorers(
    runtime: ComfyRuntime, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No restorer anywhere and no internet: validation names the absent swap model only.

    ReActor (d93450bd) downloads four restorers from INPUT_TYPES when it finds none; its
    download function is replaced here by one that fails as an offline worker's does,
    so the test proves the worker never calls it, wherever it runs.
    """
    import folder_paths

    require_packs("ComfyUI-ReActor")
    namespace = _pack_globals("ReActorFaceSwap", "INPUT_TYPES")
    downloads: list[str] = []

    def offline(url: str, path: str, name: str) -> None:
        downloads.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setitem(namespace, "download", offline)
    empty = tmp_path / "no-restorers"
    empty.mkdir()
    _, extensions = folder_paths.folder_names_and_paths["facerestore_models"]
    monkeypatch.setitem(
        folder_paths.folder_names_and_paths, "facerestore_models", ([str(empty)], extensions)
    )
    gradient_rgb(64, 64).save(runtime.directories.input / "reactor-face.png")
    absent = "worker-test-absent-inswapper.onnx"
    workflow = {
        "1": node("LoadImage", image="reactor-face.png"),
        "2": node(
            "ReActorFaceSwap",
            enabled=True,
            input_image=["1", 0],
            source_image=["1", 0],
            swap_model=absent,
            facedetection="retinaface_resnet50",
            face_restore_model="none",
            face_restore_visibility=1.0,
            codeformer_weight=0.5,
            detect_gender_input="no",
            detect_gender_source="no",
            input_faces_index="0",
            source_faces_index="0",
            console_log_level=1,
        ),
        "3": node("SaveImage", images=["2", 0], filename_prefix=prefix),
    }
    with pytest.raises(WorkflowValidationError) as caught:
        _run(runtime, workflow)

    assert downloads == []
    assert namespace["get_restorers"].__module__ == "engine.runtime.pack_fixes"
    assert _options("ReActorFaceSwap", "face_restore_model") == ["none"]
    text = "\n".join(caught.value.details)
    assert "URLError" not in text and "urlopen" not in text, text
    (detail,) = caught.value.details
    assert "Node 2 (ReActorFaceSwap) input 'swap_model'" in detail and repr(absent) in detail


def test_reactor_lists_restorers_from_every_facerestore_folder(
    runtime: ComfyRuntime, engine_setup: EngineSetup
) -> None:
    """A restorer in a yaml folder (the volume's) is offered and found by ReActor's nodes."""
    import folder_paths

    require_packs("ComfyUI-ReActor")
    restorer = engine_setup.volume / "facerestore_models" / f"{engine_setup.root.name}-gfpgan.pth"
    restorer.write_bytes(b"not a model")
    try:
        assert restorer.name in _options("ReActorRestoreFace", "model")
        assert restorer.name in _options("ReActorFaceSwap", "face_restore_model")
        assert folder_paths.get_full_path("facerestore_models", restorer.name) == str(restorer)
    finally:
        restorer.unlink()
    assert restorer.name not in _options("ReActorRestoreFace", "model")


# -- the yaml's folders, after the packs' imports ----------------------------------------


def _models_dir() -> Path:
    import folder_paths

    return Path(folder_paths.models_dir)


def test_comfyuis_own_pulid_folder_comes_first(
    runtime: ComfyRuntime, engine_setup: EngineSetup
) -> None:
    """PuLID keeps only the yaml's 'pulid' folders at import; ComfyUI's own is put back first."""
    import folder_paths

    assert COMFYUI_PATH is not None
    pulid = folder_paths.get_folder_paths("pulid")
    assert Path(pulid[0]) == COMFYUI_PATH.resolve() / "models" / "pulid"
    assert "/runpod-volume/models/pulid" in pulid
    assert str(engine_setup.volume / "pulid") in pulid


def test_facerestore_models_keeps_the_yaml_folders(
    runtime: ComfyRuntime, engine_setup: EngineSetup
) -> None:
    """ReActor replaces facerestore_models at import; the yaml's folders come back after it."""
    import folder_paths

    folders = folder_paths.get_folder_paths("facerestore_models")
    assert Path(folders[0]) == _models_dir() / "facerestore_models"
    for expected in (
        "/runpod-volume/models/facerestore_models",
        "/runpod-volume/ComfyUI/models/facerestore_models",
        str(engine_setup.volume / "facerestore_models"),
    ):
        assert expected in folders


def test_pulid_model_on_the_volume_is_offered(
    runtime: ComfyRuntime, engine_setup: EngineSetup
) -> None:
    require_packs("PuLID_ComfyUI")
    name = Path(engine_setup.volume_files["pulid"]).name
    assert name in _options("PulidModelLoader", "pulid_file")


# -- files on the volume, where packs read <ComfyUI>/models ------------------------------


def test_volume_swap_model_is_listed_by_reactor(
    runtime: ComfyRuntime, engine_setup: EngineSetup
) -> None:
    """ReActor globs <ComfyUI>/models/insightface/*: the volume's file is linked there."""
    require_packs("ComfyUI-ReActor")
    relative = engine_setup.volume_files["swap_model"]
    link = _models_dir() / relative
    assert link.is_symlink() and link.resolve() == (engine_setup.volume / relative).resolve()
    assert Path(relative).name in _options("ReActorFaceSwap", "swap_model")


def test_volume_antelopev2_is_where_pulid_loads_it(
    runtime: ComfyRuntime, engine_setup: EngineSetup
) -> None:
    """PuLID loads antelopev2 from INSIGHTFACE_DIR/models/<name>: the volume's folder is there."""
    require_packs("PuLID_ComfyUI")
    insightface_dir = Path(
        _pack_globals("PulidInsightFaceLoader", "load_insightface")["INSIGHTFACE_DIR"]
    )
    relative = Path(engine_setup.volume_files["antelopev2"])
    model_dir = insightface_dir / "models" / relative.parent.name
    assert (model_dir / relative.name).read_bytes() == b"not a model"
    assert model_dir.is_symlink() and not model_dir.parent.is_symlink()
