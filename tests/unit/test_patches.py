"""The registry of the worker's patches to ComfyUI and packs, without ComfyUI.

For each patch, two stand-ins: one with the shape of ComfyUI 0.3.64 (or of the pack)
the patch expects, where it applies, and one where that shape has moved, where it is
skipped with one warning naming it and the stand-in is left as it was.
``tests/engine/test_patches_real.py`` checks every patch against the real engine and
runs a job with them all off.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from engine.errors import RuntimeBootError
from engine.runtime import (
    animated_save,
    decoded_inputs,
    fast_save,
    output_metadata,
    output_scope,
    pack_imports,
    patches,
    vhs_save,
    video_save,
    webm_save,
)
from engine.runtime.headless_server import HeadlessPromptServer
from engine.runtime.lazy_mapping import LazyMapping
from engine.runtime.lazy_nodes import LazyNodes
from engine.runtime.model_paths import ModelPaths
from engine.runtime.patches import NAMES, REGISTRY, Patches, Target, patch_named
from engine.settings import Settings
from tests.unit.test_animated_save import _NODES_SOURCE as _ANIMATED_NODES
from tests.unit.test_vhs_save import _VHS
from tests.unit.test_webm_save import _FAKE_AV
from tests.unit.test_webm_save import _NODE as _WEBM_NODE


def _module(source: str, name: str = "stand_in") -> types.ModuleType:
    module = types.ModuleType(name)
    exec(compile(source, name, "exec"), module.__dict__)  # noqa: S102  # this file's own source
    return module


def _apply(name: str, target: Target) -> Patches:
    applied = Patches()
    applied.apply(patch_named(name), target)
    return applied


def _skipped_once(name: str, applied: Patches, caplog: pytest.LogCaptureFixture) -> None:
    """The patch is recorded as skipped, with exactly one warning that names it."""
    assert name in applied.skipped and name not in applied.applied
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert f"patch {name} skipped" in warnings[0].getMessage()


# -- the registry itself -----------------------------------------------------------------


def test_each_patch_says_what_it_replaces_why_without_it_and_what_it_expects() -> None:
    assert len(set(NAMES)) == len(NAMES)
    for patch in REGISTRY:
        assert patch.replaces and patch.why and patch.without and patch.expects, patch.name
        assert patch.phase in patches.PHASES
    # The boot applies them phase by phase: the registry lists them in that order.
    assert [patches.PHASES.index(p.phase) for p in REGISTRY] == sorted(
        patches.PHASES.index(p.phase) for p in REGISTRY
    )


def test_comfy_patches_off_switches_patches_off_by_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings.from_env({"COMFY_PATCHES_OFF": " parallel_png, Lazy_Nodes ,"})
    assert settings.comfy_patches_off == {"parallel_png", "lazy_nodes"}
    applied = Patches(off=settings.comfy_patches_off)
    nodes = _module(_SAVE_IMAGE)
    original = nodes.SaveImage.save_images
    with caplog.at_level(logging.INFO, logger=patches.__name__):
        assert not applied.apply(patch_named("parallel_png"), Target(nodes=nodes))
    assert nodes.SaveImage.save_images is original
    assert "patch parallel_png is off (COMFY_PATCHES_OFF)" in caplog.text
    assert applied.summary() == "in force: none; off: lazy_nodes, parallel_png"


def test_the_guides_name_every_patch() -> None:
    """COMFY_PATCHES_OFF's row in the deployment guide, and runtime.md's table."""
    repo = Path(__file__).resolve().parents[2]
    (row,) = [
        line
        for line in (repo / "docs" / "deployment.md").read_text().splitlines()
        if line.startswith("| `COMFY_PATCHES_OFF` |")
    ]
    table = (repo / "docs" / "runtime.md").read_text()
    for patch in REGISTRY:
        assert f"`{patch.name}`" in row, patch.name
        assert f"| `{patch.name}` |" in table, patch.name


def test_an_unknown_name_or_the_server_in_comfy_patches_off_stops_the_boot() -> None:
    with pytest.raises(RuntimeBootError, match="COMFY_PATCHES_OFF names no_such, which is no"):
        Patches(off=frozenset({"no_such"}))
    with pytest.raises(RuntimeBootError, match="headless_server, which cannot be switched off"):
        Patches(off=frozenset({"headless_server"}))


def test_a_phase_applies_its_patches_in_order_and_the_summary_lists_them(
    tmp_path: Path,
) -> None:
    nodes = _module(_SAVE_IMAGE + _LOAD_IMAGE)
    applied = Patches(off=frozenset({"decoded_inputs", "deferred_video"}))
    folder_paths = types.SimpleNamespace(
        models_dir=str(tmp_path), folder_names_and_paths={}, filename_list_cache={}
    )
    nodes.NODE_CLASS_MAPPINGS = {}
    target = Target(folder_paths=folder_paths, model_paths=ModelPaths(), nodes=nodes)
    applied.apply_phase("after_node_init", target)
    assert applied.applied == ["folder_paths_restore", "parallel_png"]
    assert applied.summary() == (
        "in force: folder_paths_restore, parallel_png; off: deferred_video, decoded_inputs; "
        "not needed: reactor_restorers; waiting for their node files: deferred_animated, "
        "deferred_webm, deferred_vhs"
    )


# -- pack_folder_links -----------------------------------------------------------------------


def _volume(tmp_path: Path) -> ModelPaths:
    volume = tmp_path / "volume"
    (volume / "insightface").mkdir(parents=True)
    (volume / "insightface" / "inswapper_128.onnx").write_bytes(b"x")
    return ModelPaths(bases=(volume,))


def test_pack_folder_links_applied(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    target = Target(folder_paths=types.SimpleNamespace(models_dir=str(models)))
    target.model_paths = _volume(tmp_path)
    assert _apply("pack_folder_links", target).is_applied("pack_folder_links")
    assert (models / "insightface" / "inswapper_128.onnx").is_symlink()


def test_pack_folder_links_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    target = Target(folder_paths=types.SimpleNamespace(), model_paths=_volume(tmp_path))
    _skipped_once("pack_folder_links", _apply("pack_folder_links", target), caplog)
    assert "models_dir" in caplog.text


# -- output_scope ----------------------------------------------------------------------------


def _folder_paths_stand_in() -> types.SimpleNamespace:
    return types.SimpleNamespace(
        get_save_image_path=lambda prefix, output_dir, *a: (output_dir, prefix, 1, "", prefix),
        get_annotated_filepath=lambda name, default_dir=None: name,
        exists_annotated_filepath=lambda name: False,
    )


def test_output_scope_applied() -> None:
    folder_paths = _folder_paths_stand_in()
    original = folder_paths.get_save_image_path
    target = Target(folder_paths=folder_paths)
    assert _apply("output_scope", target).is_applied("output_scope")
    assert folder_paths.get_save_image_path.__wrapped__ is original
    assert not output_scope.install(folder_paths)  # once only


def test_output_scope_skipped(caplog: pytest.LogCaptureFixture) -> None:
    folder_paths = _folder_paths_stand_in()
    del folder_paths.exists_annotated_filepath
    original = folder_paths.get_save_image_path
    _skipped_once("output_scope", _apply("output_scope", Target(folder_paths=folder_paths)), caplog)
    assert folder_paths.get_save_image_path is original
    assert "folder_paths.exists_annotated_filepath" in caplog.text


# -- output_metadata -------------------------------------------------------------------------

# ComfyUI 0.3.64's shape: hidden PROMPT filled from dynprompt.get_original_prompt().
_EXECUTION = """
class Hidden:
    prompt = "prompt"

def get_input_data(inputs, class_def, unique_id, outputs=None, dynprompt=None, extra_data={}):
    data, hidden_v3 = dict(inputs), {}
    if getattr(class_def, "V3", False):
        hidden_v3[Hidden.prompt] = dynprompt.get_original_prompt() if dynprompt is not None else {}
    else:
        data["prompt"] = [dynprompt.get_original_prompt() if dynprompt is not None else {}]
        data["extra_pnginfo"] = [extra_data.get("extra_pnginfo", None)]
    return data, [], hidden_v3
"""


class _DynPrompt:
    def __init__(self, prompt: dict[str, Any]) -> None:
        self.prompt = prompt

    def get_original_prompt(self) -> dict[str, Any]:
        return self.prompt

    def get_node(self, node_id: str) -> dict[str, Any]:
        return self.prompt[node_id]


def test_output_metadata_applied() -> None:
    """Output nodes (V1 and V3) get the prompt as sent; other nodes the one that runs."""
    execution = _module(_EXECUTION)
    original = execution.get_input_data
    assert _apply("output_metadata", Target(execution=execution)).is_applied("output_metadata")
    assert execution.get_input_data.__wrapped__ is original
    running = {"1": {"inputs": {"image": "job-in-0/a.png"}, "is_changed": ["x"]}}
    sent = {"1": {"inputs": {"image": "a.png"}}}
    extra = {output_metadata.SENT_PROMPT: sent, "extra_pnginfo": {"workflow": {"nodes": []}}}
    save = type("SaveImage", (), {"OUTPUT_NODE": True})
    save_v3 = type("SaveVideo", (), {"OUTPUT_NODE": True, "V3": True})
    reader = type("WidgetToString", (), {})
    data, _, _ = execution.get_input_data({}, save, "9", None, _DynPrompt(running), extra)
    assert data["prompt"] == [sent] and data["extra_pnginfo"] == [{"workflow": {"nodes": []}}]
    _, _, hidden = execution.get_input_data({}, save_v3, "9", None, _DynPrompt(running), extra)
    assert hidden["prompt"] is sent
    data, _, _ = execution.get_input_data({}, reader, "5", None, _DynPrompt(running), extra)
    assert data["prompt"] == [running]
    # Without the worker's key (OUTPUT_METADATA=false, a warm-up): ComfyUI's own answer.
    data, _, _ = execution.get_input_data({}, save, "9", None, _DynPrompt(running), {})
    assert data["prompt"] == [running]
    assert not output_metadata.install(execution)  # once only


def test_output_metadata_off_takes_the_prompt_from_the_nodes_that_ignore_the_flag() -> None:
    """OUTPUT_METADATA=false: SaveWEBM (V3) and SaveSVGNode (V1), which embed the prompt
    under --disable-metadata too, get none; every other node keeps ComfyUI's answer."""
    execution = _module(_EXECUTION)
    _apply("output_metadata", Target(execution=execution))
    running = {
        "2": {"class_type": "SaveWEBM", "inputs": {}},
        "3": {"class_type": "SaveSVGNode", "inputs": {}},
        "4": {"class_type": "SaveImage", "inputs": {}},
    }
    off = {output_metadata.METADATA_OFF: True}
    webm = type("SaveWEBM", (), {"OUTPUT_NODE": True, "V3": True})
    svg = type("SaveSVGNode", (), {"OUTPUT_NODE": True})
    save = type("SaveImage", (), {"OUTPUT_NODE": True})
    dyn = _DynPrompt(running)
    _, _, hidden = execution.get_input_data({}, webm, "2", None, dyn, off)
    assert hidden["prompt"] is None
    data, _, _ = execution.get_input_data({}, svg, "3", None, dyn, off)
    assert data["prompt"] == [None]
    data, _, _ = execution.get_input_data({}, save, "4", None, dyn, off)
    assert data["prompt"] == [running]  # SaveImage checks --disable-metadata itself
    _, _, hidden = execution.get_input_data({}, webm, "2", None, dyn, {})
    assert hidden["prompt"] is running  # a warm-up: ComfyUI's own answer
    running["5"] = {"class_type": "VHS_VideoCombine", "inputs": {}}
    vhs = type("VideoCombine", (), {"OUTPUT_NODE": True})
    data, _, _ = execution.get_input_data({}, vhs, "5", None, dyn, off)
    assert data["prompt"] == [None]


def test_output_metadata_skipped(caplog: pytest.LogCaptureFixture) -> None:
    execution = _module(_EXECUTION.replace("dynprompt=None, extra_data={}", "dynprompt=None"))
    original = execution.get_input_data
    _skipped_once("output_metadata", _apply("output_metadata", Target(execution=execution)), caplog)
    assert execution.get_input_data is original


# -- pack_imports ----------------------------------------------------------------------------

_LOAD_CUSTOM_NODE = """
import traceback

async def load_custom_node(module_path, ignore=set(), module_parent="custom_nodes"):
    try:
        raise ImportError("No module named 'cv2'")
    except Exception:
        traceback.format_exc()
        return False
"""


def test_pack_imports_applied() -> None:
    nodes = _module(_LOAD_CUSTOM_NODE)
    assert _apply("pack_imports", Target(nodes=nodes)).is_applied("pack_imports")
    before = len(pack_imports.RECORD.failed)
    assert asyncio.run(nodes.load_custom_node("/packs/needs-cv2")) is False
    try:
        (failed,) = pack_imports.RECORD.failed[before:]
        assert failed.error == "ImportError: No module named 'cv2'"
    finally:
        del pack_imports.RECORD._failed[before:]


def test_pack_imports_skipped(caplog: pytest.LogCaptureFixture) -> None:
    # An older shape: a synchronous loader.
    nodes = _module("def load_custom_node(module_path, ignore=set(), module_parent=''):\n  pass")
    original = nodes.load_custom_node
    _skipped_once("pack_imports", _apply("pack_imports", Target(nodes=nodes)), caplog)
    assert nodes.load_custom_node is original and "traceback" not in vars(nodes)


# -- headless_server -------------------------------------------------------------------------


class _PromptQueue:
    def __init__(self, server: object) -> None:
        self.server = server


def test_headless_server_applied() -> None:
    server_module = _module("class PromptServer:\n  pass")
    target = Target(
        server_module=server_module, execution=types.SimpleNamespace(PromptQueue=_PromptQueue)
    )
    assert _apply("headless_server", target).is_applied("headless_server")
    assert isinstance(target.server, HeadlessPromptServer)
    assert server_module.PromptServer.instance is target.server
    target.server.loop.close()


def test_headless_server_cannot_be_skipped() -> None:
    """Its shape gone, the boot stops and says why, rather than run without a server."""
    target = Target(
        server_module=_module("class Server:\n  pass"),
        execution=types.SimpleNamespace(PromptQueue=_PromptQueue),
    )
    with pytest.raises(RuntimeBootError, match="no PromptServer, which the worker's "):
        _apply("headless_server", target)
    assert target.server is None


# -- lazy_nodes ------------------------------------------------------------------------------

_NODES_WITH_LOADER = (
    _LOAD_CUSTOM_NODE
    + """
NODE_CLASS_MAPPINGS = {"SaveImage": object}
NODE_DISPLAY_NAME_MAPPINGS = {}

async def init_extra_nodes(init_custom_nodes=True, init_api_nodes=True):
    return []
"""
)


def test_lazy_nodes_applied() -> None:
    nodes = _module(_NODES_WITH_LOADER)
    target = Target(nodes=nodes, lazy_nodes=LazyNodes(nodes, None, "key"))
    assert _apply("lazy_nodes", target).is_applied("lazy_nodes")
    assert isinstance(nodes.NODE_CLASS_MAPPINGS, LazyMapping)
    assert isinstance(nodes.NODE_DISPLAY_NAME_MAPPINGS, LazyMapping)
    assert dict(nodes.NODE_CLASS_MAPPINGS) == {"SaveImage": object}


def test_lazy_nodes_skipped(caplog: pytest.LogCaptureFixture) -> None:
    nodes = _module(_NODES_WITH_LOADER.replace("async def init_extra_nodes", "async def init"))
    target = Target(nodes=nodes, lazy_nodes=LazyNodes(nodes, None, "key"))
    _skipped_once("lazy_nodes", _apply("lazy_nodes", target), caplog)
    assert type(nodes.NODE_CLASS_MAPPINGS) is dict
    assert "nodes.init_extra_nodes" in caplog.text


# -- folder_paths_restore --------------------------------------------------------------------


def _folder_paths(models: Path) -> types.SimpleNamespace:
    # A pack replaced the yaml's "pulid" list with its own folder at import.
    return types.SimpleNamespace(
        models_dir=str(models),
        folder_names_and_paths={"pulid": ([str(models / "pulid")], {".pth"})},
        filename_list_cache={"pulid": (["stale"], {}, 0.0)},
    )


def test_folder_paths_restore_applied(tmp_path: Path) -> None:
    folder_paths = _folder_paths(tmp_path / "models")
    wanted = ModelPaths(folders={"pulid": (str(tmp_path / "volume" / "pulid"),)})
    target = Target(folder_paths=folder_paths, model_paths=wanted)
    assert _apply("folder_paths_restore", target).is_applied("folder_paths_restore")
    assert folder_paths.folder_names_and_paths["pulid"][0] == [
        str(tmp_path / "models" / "pulid"),
        str(tmp_path / "volume" / "pulid"),
    ]
    assert "pulid" not in folder_paths.filename_list_cache


def test_folder_paths_restore_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder_paths = types.SimpleNamespace(models_dir=str(tmp_path), folder_names_and_paths=[])
    target = Target(folder_paths=folder_paths, model_paths=ModelPaths(folders={"pulid": ("v",)}))
    _skipped_once("folder_paths_restore", _apply("folder_paths_restore", target), caplog)
    assert folder_paths.folder_names_and_paths == []


# -- reactor_restorers -----------------------------------------------------------------------

_REACTOR = """
def get_restorers():
    raise OSError("would download from huggingface")

class ReActorFaceSwap:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"face_restore_model": (["none", *get_restorers()],)}}
"""


def _reactor_target(source: str) -> tuple[types.ModuleType, Target]:
    module = _module(source, "reactor_nodes_stand_in")
    nodes = types.SimpleNamespace(NODE_CLASS_MAPPINGS={"ReActorFaceSwap": module.ReActorFaceSwap})
    folder_paths = types.SimpleNamespace(get_folder_paths=lambda name: [])
    return module, Target(nodes=nodes, folder_paths=folder_paths)


def test_reactor_restorers_applied() -> None:
    module, target = _reactor_target(_REACTOR)
    assert _apply("reactor_restorers", target).is_applied("reactor_restorers")
    assert module.ReActorFaceSwap.INPUT_TYPES()["required"]["face_restore_model"] == (["none"],)


def test_reactor_restorers_skipped(caplog: pytest.LogCaptureFixture) -> None:
    module, target = _reactor_target(_REACTOR.replace("get_restorers", "list_restorers"))
    original = module.list_restorers
    _skipped_once("reactor_restorers", _apply("reactor_restorers", target), caplog)
    assert module.list_restorers is original and "get_restorers" not in vars(module)


def test_reactor_restorers_is_not_needed_without_reactor(
    caplog: pytest.LogCaptureFixture,
) -> None:
    applied = _apply(
        "reactor_restorers", Target(nodes=types.SimpleNamespace(NODE_CLASS_MAPPINGS={}))
    )
    assert applied.not_in_use == ["reactor_restorers"] and applied.skipped == {}
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


# -- parallel_png ----------------------------------------------------------------------------

_SAVE_IMAGE = """
import os
from PIL import Image

class SaveImage:
    def save_images(self, images, folder):
        for number, image in enumerate(images):
            img = Image.fromarray(image)
            img.save(os.path.join(folder, f"{number}.png"))
"""


def test_parallel_png_applied() -> None:
    nodes = _module(_SAVE_IMAGE)
    original = nodes.SaveImage.save_images
    assert _apply("parallel_png", Target(nodes=nodes)).is_applied("parallel_png")
    assert nodes.SaveImage.save_images is not original
    assert nodes.SaveImage.save_images.__wrapped__ is original
    pool, fast_save._pool = fast_save._pool, None
    assert pool is None  # started on the first batch, which this test does not save


def test_parallel_png_skipped(caplog: pytest.LogCaptureFixture) -> None:
    # A SaveImage that encodes through a helper: nodes.Image is no longer its hook.
    nodes = _module(_SAVE_IMAGE.replace("Image.fromarray(image)", "encode(image)"))
    original = nodes.SaveImage.save_images
    _skipped_once("parallel_png", _apply("parallel_png", Target(nodes=nodes)), caplog)
    assert nodes.SaveImage.save_images is original
    assert "fromarray" in caplog.text


# -- deferred_video --------------------------------------------------------------------------

_VIDEO_TYPES = """
import json
import types
import av
from enum import Enum

class VideoContainer(str, Enum):
    AUTO = "auto"
    MP4 = "mp4"

class VideoCodec(str, Enum):
    AUTO = "auto"
    H264 = "h264"

class VideoFromComponents:
    def get_components(self):
        return None

    def save_to(self, path, format="auto", codec="auto", metadata=None):
        with av.open(path, mode="w", options={"movflags": "use_metadata_tags"}) as output:
            for key, value in (metadata or {}).items():
                output.metadata[key] = json.dumps(value)
            stream = output.add_stream("h264", rate=24)
            stream.pix_fmt = "yuv420p"
            audio = output.add_stream("aac", rate=44100)
            frame = av.VideoFrame.from_ndarray(None, format="rgb24").reformat(format="yuv420p")
            output.mux(stream.encode(frame))
            output.mux(audio.encode(av.AudioFrame.from_ndarray(None, format="flt")))

InputImpl = types.SimpleNamespace(VideoFromComponents=VideoFromComponents)
"""


def _video_target(source: str, monkeypatch: pytest.MonkeyPatch) -> Target:
    module = _module(source, "stand_in_video_types")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    folders = types.SimpleNamespace(get_output_directory=lambda: "/nowhere")
    return Target(comfy_api=module, folder_paths=folders)


def test_deferred_video_applied(monkeypatch: pytest.MonkeyPatch) -> None:
    # The pool is the module's, for the worker's life: an earlier test's hand-off (a
    # real-engine one, in the same session) may have started it. This test starts afresh.
    monkeypatch.setattr(video_save, "_pool", None)
    target = _video_target(_VIDEO_TYPES, monkeypatch)
    video_class = target.comfy_api.VideoFromComponents
    original = video_class.save_to
    assert _apply("deferred_video", target).is_applied("deferred_video")
    assert video_class.save_to.__wrapped__ is original
    assert video_save._pool is None  # started on the first hand-off, which this test has not


@pytest.mark.parametrize(
    ("moved", "named"),
    [
        ('"yuv420p"', "yuv420p"),  # another pixel format: another file than VideoFile's
        ('add_stream("aac"', "aac"),
        ("json.dumps(value)", "dumps"),
        ("metadata=None)", "save_to(self, path, format, codec, metadata)"),
        ("class VideoCodec(", "VideoCodec"),
    ],
)
def test_deferred_video_skipped(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, moved: str, named: str
) -> None:
    replacement = {
        '"yuv420p"': '"yuv444p"',
        'add_stream("aac"': 'add_stream("opus"',
        "json.dumps(value)": "str(value)",
        "metadata=None)": "metadata=None, audio=True)",
        "class VideoCodec(": "class Codec(",
    }[moved]
    source = _VIDEO_TYPES.replace(moved, replacement)
    if moved == "class VideoCodec(":
        source = source.replace("VideoCodec", "Codec")
    target = _video_target(source, monkeypatch)
    original = target.comfy_api.VideoFromComponents.save_to
    _skipped_once("deferred_video", _apply("deferred_video", target), caplog)
    assert target.comfy_api.VideoFromComponents.save_to is original
    assert named in caplog.text


# -- deferred_animated -----------------------------------------------------------------------


def _animated_target(source: str = _ANIMATED_NODES) -> Target:
    module = _module(source, "stand_in_nodes_images")
    nodes = types.SimpleNamespace(
        NODE_CLASS_MAPPINGS={name: getattr(module, name) for name in animated_save.NODES}
    )
    return Target(nodes=nodes, folder_paths=types.SimpleNamespace(get_output_directory=str))


def test_deferred_animated_applied() -> None:
    target = _animated_target()
    classes = target.nodes.NODE_CLASS_MAPPINGS
    originals = [classes[name].save_images for name in animated_save.NODES]
    assert _apply("deferred_animated", target).is_applied("deferred_animated")
    assert [classes[name].save_images.__wrapped__ for name in animated_save.NODES] == originals


@pytest.mark.parametrize(
    ("moved", "replacement", "named"),
    [
        # Frames made another way: Image.fromarray is no longer where they come from.
        ("append(Image.fromarray(image))", "append(to_pil(image))", "fromarray"),
        # One file per frame: no single save of the whole animation to replay.
        ("save_all=True, duration", "duration", "save(save_all=...)"),
        # Image is another module: its fromarray is not Pillow's to stand in for.
        ("from PIL import Image\n", "import PIL as Image\n", "Image (PIL.Image)"),
    ],
)
def test_deferred_animated_skipped(
    caplog: pytest.LogCaptureFixture, moved: str, replacement: str, named: str
) -> None:
    assert moved in _ANIMATED_NODES
    target = _animated_target(_ANIMATED_NODES.replace(moved, replacement))
    classes = target.nodes.NODE_CLASS_MAPPINGS
    originals = [classes[name].save_images for name in animated_save.NODES]
    _skipped_once("deferred_animated", _apply("deferred_animated", target), caplog)
    assert [classes[name].save_images for name in animated_save.NODES] == originals
    assert named in caplog.text


def test_a_patch_of_node_classes_waits_for_the_file_that_defines_them() -> None:
    """``node_types``: at boot the file is deferred to first use (lazy_nodes), so the patch
    waits, and is checked and applied when a first use loads it (``after_lazy_load``),
    whatever the group (ComfyUI's own files, a pack); a pack's load also runs the pack
    fixes again."""
    calls: list[str] = []
    waiting = patches.Patch(
        name="node_patch",
        phase="after_node_init",
        replaces="x",
        why="x",
        without="x",
        expects="x",
        check=lambda target: None,
        apply=lambda target: calls.append("node_patch"),
        node_types=("Late1", "Late2"),
    )
    restore = dataclasses.replace(
        waiting,
        name="restore",
        node_types=(),
        after_lazy_pack=True,
        apply=lambda t: calls.append("restore"),
    )
    classes: dict[str, Any] = {"Early": object}
    target = Target(nodes=types.SimpleNamespace(NODE_CLASS_MAPPINGS=classes))
    applied = Patches(registry=(waiting, restore))
    applied.apply_phase("after_node_init", target)
    assert calls == ["restore"] and applied.waiting == ["node_patch"]
    assert applied.summary() == "in force: restore; waiting for their node files: node_patch"
    classes["Late1"] = object  # a file that defines only one of them
    applied.after_lazy_load(target, "comfy_extras")
    assert calls == ["restore"] and applied.waiting == ["node_patch"]
    classes["Late2"] = object
    applied.after_lazy_load(target, "comfy_extras")
    assert calls == ["restore", "node_patch"] and applied.waiting == []
    applied.after_lazy_load(target, "custom_nodes")  # a pack: the pack fixes, nothing twice
    assert calls == ["restore", "node_patch", "restore"]
    assert applied.applied == ["restore", "node_patch"]
    # Loaded at boot (no lazy nodes, or an index-making boot): applied at its phase.
    calls.clear()
    eager = Patches(registry=(waiting,))
    eager.apply_phase("after_node_init", target)
    assert calls == ["node_patch"] and eager.waiting == []
    assert [p.name for p in REGISTRY if p.node_types] == [
        "deferred_animated",
        "deferred_webm",
        "deferred_vhs",
    ]


# -- deferred_webm ---------------------------------------------------------------------------


def _webm_target(monkeypatch: pytest.MonkeyPatch, source: str = _WEBM_NODE) -> Target:
    monkeypatch.setitem(sys.modules, "av", _module(_FAKE_AV, "av"))
    module = _module(source, "stand_in_nodes_video")
    nodes = types.SimpleNamespace(NODE_CLASS_MAPPINGS={webm_save.NODE: module.SaveWEBM})
    return Target(nodes=nodes, folder_paths=types.SimpleNamespace(get_output_directory=str))


def test_deferred_webm_applied(monkeypatch: pytest.MonkeyPatch) -> None:
    target = _webm_target(monkeypatch)
    node_class = target.nodes.NODE_CLASS_MAPPINGS[webm_save.NODE]
    original = node_class.__dict__["execute"].__func__
    assert _apply("deferred_webm", target).is_applied("deferred_webm")
    assert node_class.__dict__["execute"].__func__.__wrapped__ is original


@pytest.mark.parametrize(
    ("moved", "replacement", "named"),
    [
        ('format="rgb24"', 'format="rgb48le"', "rgb24"),  # frames of another depth
        ("container.close()", "del container", "close"),
        ("    @classmethod\n    def execute", "    def execute", "as a classmethod"),
        ("import av\n", "import av\nav = None\n", "av (PyAV)"),
    ],
)
def test_deferred_webm_skipped(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    moved: str,
    replacement: str,
    named: str,
) -> None:
    assert moved in _WEBM_NODE
    target = _webm_target(monkeypatch, _WEBM_NODE.replace(moved, replacement))
    node_class = target.nodes.NODE_CLASS_MAPPINGS[webm_save.NODE]
    original = node_class.__dict__["execute"]
    _skipped_once("deferred_webm", _apply("deferred_webm", target), caplog)
    assert node_class.__dict__["execute"] is original
    assert named in caplog.text


# -- deferred_vhs ----------------------------------------------------------------------------


def _vhs_target(source: str = _VHS) -> Target:
    module = _module(source, "stand_in_vhs_nodes")
    nodes = types.SimpleNamespace(NODE_CLASS_MAPPINGS={vhs_save.NODE: module.VideoCombine})
    return Target(nodes=nodes)


def test_deferred_vhs_applied() -> None:
    target = _vhs_target()
    node_class = target.nodes.NODE_CLASS_MAPPINGS[vhs_save.NODE]
    original = node_class.combine_video
    assert _apply("deferred_vhs", target).is_applied("deferred_vhs")
    assert node_class.combine_video.__wrapped__ is original


@pytest.mark.parametrize(
    ("moved", "replacement", "named"),
    [
        # The frames go to ffmpeg some other way: nothing to stand in for.
        ("output_process = ffmpeg_process(", "output_process = encode_with(", "ffmpeg_process"),
        # ffmpeg started by another module: the encode could not kill it.
        ("subprocess.Popen(args", "os.popen(args", "Popen"),
        # The metadata file elsewhere: overlapping encodes would share it.
        ("folder_paths.get_temp_directory()", "TEMP", "get_temp_directory"),
        # Not a generator any more: nothing to feed frame by frame.
        (
            "def ffmpeg_process(",
            "def ffmpeg_process(*args):\n    return subprocess.Popen(args)\n\n\ndef _gone(",
            "generator",
        ),
    ],
)
def test_deferred_vhs_skipped(
    caplog: pytest.LogCaptureFixture, moved: str, replacement: str, named: str
) -> None:
    assert moved in _VHS
    target = _vhs_target(_VHS.replace(moved, replacement))
    node_class = target.nodes.NODE_CLASS_MAPPINGS[vhs_save.NODE]
    original = node_class.combine_video
    _skipped_once("deferred_vhs", _apply("deferred_vhs", target), caplog)
    assert node_class.combine_video is original
    assert named in caplog.text


# -- decoded_inputs --------------------------------------------------------------------------

_LOAD_IMAGE = """
import hashlib
import types
from PIL import Image

folder_paths = types.SimpleNamespace(get_annotated_filepath=lambda name: name)

class LoadImage:
    @classmethod
    def IS_CHANGED(s, image):
        with open(folder_paths.get_annotated_filepath(image), "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()

    def load_image(self, image):
        return Image.open(folder_paths.get_annotated_filepath(image))
"""


@pytest.fixture
def handoff_reset() -> Any:
    yield decoded_inputs.HANDOFF
    decoded_inputs.HANDOFF.clear()
    decoded_inputs.HANDOFF.enabled = False


def test_decoded_inputs_applied(handoff_reset: decoded_inputs.DecodedImages) -> None:
    nodes = _module(_LOAD_IMAGE)
    original = nodes.LoadImage.load_image
    assert _apply("decoded_inputs", Target(nodes=nodes)).is_applied("decoded_inputs")
    assert nodes.LoadImage.load_image.__wrapped__ is original
    assert handoff_reset.enabled


def test_decoded_inputs_skipped(
    handoff_reset: decoded_inputs.DecodedImages, caplog: pytest.LogCaptureFixture
) -> None:
    nodes = _module(_LOAD_IMAGE.replace("Image.open(", "read_image("))
    original = nodes.LoadImage.load_image
    _skipped_once("decoded_inputs", _apply("decoded_inputs", Target(nodes=nodes)), caplog)
    assert nodes.LoadImage.load_image is original
    assert not handoff_reset.enabled  # the input step neither holds nor hashes images then


def test_every_patch_has_an_applied_and_a_skipped_test() -> None:
    """A patch added to the registry needs test_<name>_applied and test_<name>_skipped
    (or test_<name>_cannot_be_skipped) here."""
    tests = {n for n, f in globals().items() if n.startswith("test_") and callable(f)}
    missing = [
        name
        for name in NAMES
        if f"test_{name}_applied" not in tests
        or not {f"test_{name}_skipped", f"test_{name}_cannot_be_skipped"} & tests
    ]
    assert missing == []


def test_a_pack_loaded_after_boot_gets_the_pack_fixes_that_follow_it() -> None:
    """``after_lazy_pack``: applied again once a deferred pack loads (lazy_nodes)."""
    calls: list[str] = []
    present: set[str] = set()

    def patch(name: str, *, again: bool = True, in_use: bool = False) -> patches.Patch:
        return patches.Patch(
            name=name,
            phase="after_node_init",
            replaces="x",
            why="x",
            without="x",
            expects="x",
            check=lambda target: None,
            apply=lambda target: calls.append(name),
            in_use=(lambda target: name in present) if in_use else (lambda target: True),
            after_lazy_pack=again,
        )

    registry = (
        patch("restore"),  # applied at boot, again after each pack
        patch("pack_fix", in_use=True),  # its pack is deferred: not needed at boot
        patch("once", again=False),
        patch("switched_off"),
    )
    applied = Patches(off=frozenset({"switched_off"}), registry=registry)
    target = Target()
    applied.apply_phase("after_node_init", target)
    assert calls == ["restore", "once"] and applied.not_in_use == ["pack_fix"]
    applied.after_lazy_pack(target)  # another pack loaded: pack_fix's is still absent
    assert calls == ["restore", "once", "restore"]
    present.add("pack_fix")  # its pack loaded
    applied.after_lazy_pack(target)
    assert calls == ["restore", "once", "restore", "restore", "pack_fix"]
    assert applied.applied == ["restore", "once", "pack_fix"] and not applied.not_in_use
    assert [p.name for p in REGISTRY if p.after_lazy_pack] == [
        "folder_paths_restore",
        "reactor_restorers",
    ]
