"""The custom node pack fixes, without ComfyUI: links into the folders packs hard-wire,
the folder lists packs replace, ReActor's restorer list, the boot entry points.

ComfyUI's ``folder_paths`` and ReActor's node module are replaced by small fakes with
the same names; ``tests/engine/test_packs.py`` runs the real ones.
"""

from __future__ import annotations

import json
import logging
import sys
import types
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from engine.runtime import pack_fixes
from engine.runtime.model_paths import ModelPaths, read_model_paths
from engine.runtime.pack_fixes import (
    link_hardwired_folders,
    link_model_folders,
    list_restorers,
    patch_reactor_restorers,
    reconcile_folder_paths,
    restore_folder_paths,
)


def _touch(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# -- links into the folders packs hard-wire -----------------------------------------------


@pytest.fixture
def layout(tmp_path: Path) -> SimpleNamespace:
    """An image's models_dir and two volume bases."""
    models = tmp_path / "image" / "models"
    models.mkdir(parents=True)
    return SimpleNamespace(
        models=models, vol=tmp_path / "vol" / "models", vol2=tmp_path / "vol2" / "models"
    )


def test_volume_entries_are_linked_where_packs_look(layout: SimpleNamespace) -> None:
    """A volume's swap model and antelopev2 appear under the image's insightface/."""
    swapper = _touch(layout.vol / "insightface" / "inswapper_128.onnx")
    antelope = layout.vol / "insightface" / "models" / "antelopev2"
    _touch(antelope / "glintr100.onnx")
    report = link_hardwired_folders(layout.models, [layout.vol])

    assert sorted(report.linked) == [
        "insightface/inswapper_128.onnx",
        "insightface/models/antelopev2",
    ]
    linked_file = layout.models / "insightface" / "inswapper_128.onnx"
    assert linked_file.is_symlink() and linked_file.resolve() == swapper.resolve()
    # insightface/models is declared too: a real folder where several bases can meet.
    models = layout.models / "insightface" / "models"
    assert models.is_dir() and not models.is_symlink()
    assert (models / "antelopev2" / "glintr100.onnx").is_file()


def test_the_images_own_entries_win_and_are_never_replaced(layout: SimpleNamespace) -> None:
    own = _touch(layout.models / "reswapper" / "reswapper_128.onnx", "image")
    _touch(layout.vol / "reswapper" / "reswapper_128.onnx", "volume")
    report = link_hardwired_folders(layout.models, [layout.vol])
    assert report.linked == [] and report.shadowed == ["reswapper/reswapper_128.onnx"]
    assert not own.is_symlink() and own.read_text() == "image"


def test_the_first_base_wins_and_bases_meet_in_nested_folders(layout: SimpleNamespace) -> None:
    first = _touch(layout.vol / "insightface" / "models" / "antelopev2" / "a.onnx", "1")
    _touch(layout.vol2 / "insightface" / "models" / "antelopev2" / "a.onnx", "2")
    _touch(layout.vol2 / "insightface" / "models" / "buffalo_l" / "b.onnx")
    report = link_hardwired_folders(layout.models, [layout.vol, layout.vol2])
    models = layout.models / "insightface" / "models"
    assert (models / "antelopev2").resolve() == first.parent.resolve()
    assert (models / "buffalo_l" / "b.onnx").is_file()
    assert report.shadowed == ["insightface/models/antelopev2"]


def test_a_second_boot_keeps_its_links(layout: SimpleNamespace) -> None:
    _touch(layout.vol / "hyperswap" / "hyperswap_1a_256.onnx")
    link_hardwired_folders(layout.models, [layout.vol])
    again = link_hardwired_folders(layout.models, [layout.vol])
    assert again.linked == [] and again.kept == ["hyperswap/hyperswap_1a_256.onnx"]


def test_stale_links_of_the_worker_are_removed_others_left(layout: SimpleNamespace) -> None:
    """A volume not mounted this time leaves dangling links: the worker's go, others stay."""
    folder = layout.models / "insightface"
    folder.mkdir()
    ours = folder / "gone.onnx"
    ours.symlink_to("/runpod-volume/models/insightface/gone.onnx")
    foreign = folder / "foreign.onnx"
    foreign.symlink_to("/somewhere/else.onnx")
    report = link_hardwired_folders(layout.models, [layout.vol])
    assert report.removed == ["insightface/gone.onnx"]
    assert not ours.is_symlink() and foreign.is_symlink()


def test_an_earlier_bases_new_entry_replaces_a_later_bases_link(layout: SimpleNamespace) -> None:
    later = _touch(layout.vol2 / "facerestore_models" / "GFPGANv1.4.pth", "2")
    link_hardwired_folders(layout.models, [layout.vol, layout.vol2])
    link = layout.models / "facerestore_models" / "GFPGANv1.4.pth"
    assert link.resolve() == later.resolve()
    earlier = _touch(layout.vol / "facerestore_models" / "GFPGANv1.4.pth", "1")
    report = link_hardwired_folders(layout.models, [layout.vol, layout.vol2])
    assert link.resolve() == earlier.resolve()
    assert report.linked == ["facerestore_models/GFPGANv1.4.pth"]


def test_nothing_is_written_through_a_symlink(layout: SimpleNamespace, tmp_path: Path) -> None:
    """A models_dir, or a folder in it, that links elsewhere (a volume) is left alone."""
    _touch(layout.vol / "insightface" / "inswapper_128.onnx")
    _touch(layout.vol / "reactor" / "faces" / "me.safetensors")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (layout.models / "insightface").symlink_to(elsewhere)
    report = link_hardwired_folders(layout.models, [layout.vol])
    assert list(elsewhere.iterdir()) == []
    assert any(s.startswith("insightface/ (a symlink)") for s in report.skipped)
    assert report.linked == ["reactor/faces/me.safetensors"]  # other folders still work

    linked_models = tmp_path / "linked-models"
    linked_models.symlink_to(layout.models)
    report = link_hardwired_folders(linked_models, [layout.vol2])
    assert report.linked == [] and "a symlink" in report.skipped[0]


def test_a_base_that_is_models_dir_itself_is_not_linked_to_itself(layout: SimpleNamespace) -> None:
    """With ComfyUI at the yaml's image base (/comfyui), that base is models_dir."""
    _touch(layout.models / "insightface" / "inswapper_128.onnx")
    report = link_hardwired_folders(layout.models, [layout.models])
    assert report.linked == report.shadowed == []


def test_no_folder_is_made_without_entries_and_dotfiles_are_ignored(
    layout: SimpleNamespace,
) -> None:
    _touch(layout.vol / "nsfw_detector" / ".cache" / "x")
    report = link_hardwired_folders(layout.models, [layout.vol, layout.vol2])
    assert report.linked == [] and list(layout.models.iterdir()) == []


def test_a_folder_that_cannot_be_written_is_reported_not_raised(
    layout: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    _touch(layout.vol / "insightface" / "inswapper_128.onnx")

    def refuse(self: Path, *args: Any, **kwargs: Any) -> None:
        raise PermissionError(13, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "symlink_to", refuse)
    report = link_hardwired_folders(layout.models, [layout.vol])
    assert report.linked == [] and "PermissionError" in report.skipped[0]
    assert "skipped insightface/ (PermissionError" in report.summary()


def test_summary_names_what_happened() -> None:
    report = pack_fixes.LinkReport(linked=[f"insightface/m{i}.onnx" for i in range(10)])
    line = report.summary()
    assert line.startswith("linked 10 (insightface/m0.onnx,") and "and 2 more" in line


# -- folder lists packs replaced at import ----------------------------------------------


MODELS = "/app/ComfyUI/models"
WANTED = ModelPaths(
    folders={
        "facerestore_models": (
            "/comfyui/models/facerestore_models",
            "/runpod-volume/models/facerestore_models",
        ),
        "pulid": ("/comfyui/models/pulid", "/runpod-volume/models/pulid"),
        "diffusion_models": ("/runpod-volume/models/unet",),
        "custom_nodes": ("/extra/nodes",),
    }
)


def test_reactors_replaced_list_gets_the_yaml_folders_back() -> None:
    """ReActor sets facerestore_models to its one folder: the yaml's are appended again."""
    pt = {".pth", ".pt"}
    folders: dict[str, Any] = {"facerestore_models": ([f"{MODELS}/facerestore_models"], pt)}
    changed = reconcile_folder_paths(folders, MODELS, WANTED)
    paths, extensions = folders["facerestore_models"]
    assert paths == [f"{MODELS}/facerestore_models", *WANTED.folders["facerestore_models"]]
    assert extensions is pt
    assert changed["facerestore_models"] == "put back 2 yaml folders"


def test_pulids_own_folder_comes_first_when_the_yaml_registered_the_name() -> None:
    folders: dict[str, Any] = {"pulid": (list(WANTED.folders["pulid"]), {".safetensors"})}
    changed = reconcile_folder_paths(folders, MODELS, WANTED)
    assert folders["pulid"][0] == [f"{MODELS}/pulid", *WANTED.folders["pulid"]]
    assert changed["pulid"] == f"added {MODELS}/pulid"


def test_untouched_names_stay_as_they_are() -> None:
    """ComfyUI's own order (unet before diffusion_models) and custom_nodes are kept."""
    diffusion = [f"{MODELS}/unet", f"{MODELS}/diffusion_models", "/runpod-volume/models/unet"]
    folders: dict[str, Any] = {
        "diffusion_models": (list(diffusion), {".safetensors"}),
        "custom_nodes": (["/app/ComfyUI/custom_nodes", "/extra/nodes"], set()),
    }
    changed = reconcile_folder_paths(folders, MODELS, WANTED)
    assert folders["diffusion_models"][0] == diffusion
    assert folders["custom_nodes"][0] == ["/app/ComfyUI/custom_nodes", "/extra/nodes"]
    assert "diffusion_models" not in changed and "custom_nodes" not in changed


def test_folders_a_pack_added_are_kept_after_comfyuis_own() -> None:
    folders: dict[str, Any] = {
        "pulid": (["/pack/bundled", "/runpod-volume/models/pulid", f"{MODELS}/pulid"], set())
    }
    reconcile_folder_paths(folders, MODELS, WANTED)
    assert folders["pulid"][0] == [
        f"{MODELS}/pulid",
        "/pack/bundled",
        "/runpod-volume/models/pulid",
        "/comfyui/models/pulid",
    ]


def test_is_default_folders_stay_first() -> None:
    wanted = ModelPaths(folders={"loras": ("/mine/loras",)}, defaults={"loras": ("/mine/loras",)})
    folders: dict[str, Any] = {"loras": ([f"{MODELS}/loras", "/mine/loras"], set())}
    reconcile_folder_paths(folders, MODELS, wanted)
    assert folders["loras"][0] == ["/mine/loras", f"{MODELS}/loras"]


def test_a_name_a_pack_deleted_is_registered_again() -> None:
    folders: dict[str, Any] = {}
    reconcile_folder_paths(folders, MODELS, WANTED)
    assert folders["pulid"] == ([f"{MODELS}/pulid", *WANTED.folders["pulid"]], set())


# -- ReActor's restorers -----------------------------------------------------------------


def test_restorers_are_listed_from_every_folder_first_name_wins(tmp_path: Path) -> None:
    """Top-level .pth and .onnx files, as ReActor's glob; the first folder's of each name."""
    image = tmp_path / "image"
    volume = tmp_path / "volume"
    a = _touch(image / "GFPGANv1.4.pth")
    _touch(volume / "GFPGANv1.4.pth")
    b = _touch(volume / "codeformer-v0.1.0.pth")
    c = _touch(volume / "GPEN-BFR-512.onnx")
    _touch(volume / "readme.txt")
    _touch(volume / "sub" / "nested.pth")  # ReActor offers base names: not findable
    (volume / "folder.pth").mkdir()
    restorers = list_restorers([str(image), str(tmp_path / "absent"), str(volume)])
    assert sorted(restorers) == sorted([str(a), str(b), str(c)])
    assert list_restorers([str(tmp_path / "absent")]) == []


class FakeFolderPaths:
    """ComfyUI's ``folder_paths``: the names and lookups the fixes use."""

    def __init__(self, folders: dict[str, list[str]], models_dir: str = MODELS) -> None:
        self.models_dir = models_dir
        # As ReActor registers the name: ComfyUI's supported_pt_extensions, abridged.
        self.folder_names_and_paths: dict[str, Any] = {
            k: (v, {".pth", ".pt", ".safetensors"}) for k, v in folders.items()
        }
        self.filename_list_cache: dict[str, Any] = {}
        self.listed: list[str] = []

    def get_folder_paths(self, name: str) -> list[str]:
        return list(self.folder_names_and_paths[name][0])

    def get_filename_list(self, name: str) -> list[str]:
        self.listed.append(name)  # what the worker's "looked in" would record
        return []


_REACTOR_SOURCE = """
def download(url, path, name):
    raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

def get_restorers():
    download("https://huggingface.co/x/GFPGANv1.3.pth", "GFPGANv1.3.pth", "GFPGANv1.3.pth")
    return []

class reactor:
    @classmethod
    def INPUT_TYPES(cls):
        names = sorted(p.rsplit("/", 1)[-1] for p in get_restorers())
        return {"required": {"face_restore_model": (["none", *names],)}}
"""


def _reactor_module(name: str = "/custom_nodes/ComfyUI-ReActor.nodes") -> types.ModuleType:
    """ReActor's nodes module as it is after its __init__: out of sys.modules."""
    module = types.ModuleType(name)
    exec(compile(_REACTOR_SOURCE, "nodes.py", "exec"), vars(module))  # noqa: S102 (fixed source)
    return module


def test_reactor_lists_restorers_without_downloading(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    module = _reactor_module()
    assert module.__name__ not in sys.modules
    node = module.reactor
    with pytest.raises(OSError, match="name resolution"):
        node.INPUT_TYPES()  # the pack as it is, offline

    image = tmp_path / "image"
    volume = tmp_path / "volume"
    _touch(image / "GFPGANv1.4.pth", "image")
    _touch(volume / "GFPGANv1.4.pth", "volume")
    _touch(volume / "GPEN-BFR-512.onnx")
    _touch(volume / "sub" / "nested.pth")
    folder_paths = FakeFolderPaths({"facerestore_models": [str(image), str(volume)]})
    with caplog.at_level(logging.INFO, logger=pack_fixes.__name__):
        assert patch_reactor_restorers({"ReActorFaceSwap": node}, folder_paths)
    assert node.INPUT_TYPES()["required"]["face_restore_model"][0] == [
        "none",
        "GFPGANv1.4.pth",
        "GPEN-BFR-512.onnx",
    ]
    assert module.get_restorers()[0] == str(image / "GFPGANv1.4.pth")  # the first folder's
    # Not through get_filename_list: the worker's "looked in" records those calls.
    assert folder_paths.listed == []
    assert "never downloaded" in caplog.text

    folder_paths.folder_names_and_paths["facerestore_models"] = ([str(tmp_path / "none")], set())
    assert node.INPUT_TYPES()["required"]["face_restore_model"][0] == ["none"]
    del folder_paths.folder_names_and_paths["facerestore_models"]
    assert node.INPUT_TYPES()["required"]["face_restore_model"][0] == ["none"]


def test_reactor_module_in_sys_modules_is_patched_too(monkeypatch: pytest.MonkeyPatch) -> None:
    module = _reactor_module("fake_reactor_nodes")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    assert patch_reactor_restorers({"ReActorFaceSwap": module.reactor}, FakeFolderPaths({}))
    assert module.get_restorers() == []


def test_reactor_absent_is_quiet_and_a_changed_pack_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=pack_fixes.__name__):
        assert not patch_reactor_restorers({"SaveImage": object}, FakeFolderPaths({}))
        assert caplog.records == []

        class Renamed:
            @classmethod
            def INPUT_TYPES(cls) -> dict[str, Any]:
                return {}

        assert not patch_reactor_restorers({"ReActorFaceSwap": Renamed}, FakeFolderPaths({}))
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and "get_restorers" in record.getMessage()


# -- the three fixes at boot, in order --------------------------------------------------------------------


def test_boot_entry_points_link_reconcile_and_patch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("yaml", reason="PyYAML (ComfyUI's requirement) reads the files")
    models = tmp_path / "ComfyUI" / "models"
    models.mkdir(parents=True)
    volume = tmp_path / "volume"
    _touch(volume / "insightface" / "inswapper_128.onnx")
    config = tmp_path / "extra_model_paths.yaml"
    config.write_text(json.dumps({"vol": {"base_path": str(volume), "pulid": "pulid"}}))
    folder_paths = FakeFolderPaths({}, models_dir=str(models))

    with caplog.at_level(logging.INFO, logger=pack_fixes.__name__):
        model_paths = read_model_paths([config, None])
        link_model_folders(folder_paths, model_paths)
        assert (models / "insightface" / "inswapper_128.onnx").is_file()
        # PuLID at import, after the yaml registered "pulid": keeps only the yaml's.
        folder_paths.folder_names_and_paths["pulid"] = ([str(volume / "pulid")], {".pth"})
        folder_paths.filename_list_cache["pulid"] = (["stale"], {}, 0.0)
        module = _reactor_module()
        restore_folder_paths(folder_paths, model_paths)
        patch_reactor_restorers({"ReActorFaceSwap": module.reactor}, folder_paths)

    assert folder_paths.get_folder_paths("pulid") == [str(models / "pulid"), str(volume / "pulid")]
    assert "pulid" not in folder_paths.filename_list_cache
    assert module.get_restorers() == []
    text = caplog.text
    assert f"pack folders in {models}: linked 1 (insightface/inswapper_128.onnx)" in text
    assert f"pulid: added {models / 'pulid'}" in text
    assert (models / "insightface" / "inswapper_128.onnx").is_symlink()


class _FolderPaths:
    """folder_paths as far as hardwired_input_folders reads it."""

    def __init__(self, models_dir: Path, restorers: list[str]) -> None:
        self.models_dir = str(models_dir)
        self._restorers = restorers

    def get_folder_paths(self, name: str) -> list[str]:
        if name != "facerestore_models":
            raise KeyError(name)
        return self._restorers


def test_reactor_inputs_name_the_folders_reactor_globs(tmp_path: Path) -> None:
    """ReActor lists swap models and restorers with glob: a missing file's error must still
    say where it was looked for (the folders under models_dir, and every restorer folder)."""
    (tmp_path / "insightface").mkdir()
    fp = _FolderPaths(
        tmp_path, [str(tmp_path / "facerestore_models"), "/volume/facerestore_models"]
    )
    swap = pack_fixes.hardwired_input_folders(fp, "ReActorFaceSwap", "swap_model")
    assert swap == [
        str(tmp_path / "insightface"),
        f"{tmp_path / 'reswapper'} (missing)",
        f"{tmp_path / 'hyperswap'} (missing)",
    ]
    restore = pack_fixes.hardwired_input_folders(fp, "ReActorFaceSwap", "face_restore_model")
    assert restore == [
        f"{tmp_path / 'facerestore_models'} (missing)",
        "/volume/facerestore_models (missing)",
    ]
    assert pack_fixes.hardwired_input_folders(fp, "ReActorFaceSwap", "input_image") is None
    assert pack_fixes.hardwired_input_folders(fp, "CheckpointLoaderSimple", "ckpt_name") is None
