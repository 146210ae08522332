"""What the booted engine knows (engine/runtime/comfy_catalog.py), without ComfyUI.

ComfyUI is stood in for by the few handles the catalog reads: ``NODE_CLASS_MAPPINGS``,
``NODE_DISPLAY_NAME_MAPPINGS`` and ``folder_paths``. The real engine's answers are
checked in ``tests/engine/test_ui_templates.py``, ``tests/engine/test_boot.py`` and
``tests/engine/test_model_urls_real.py``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest

from engine.runtime import ModelFolder
from engine.runtime.comfy import ComfyRuntime
from engine.runtime.comfy_catalog import Catalog
from engine.settings import Settings


class FakeFolderPaths:
    """ComfyUI's ``folder_paths``, reduced to what the catalog and node classes use."""

    def __init__(self, listings: dict[str, list[str]]) -> None:
        self.listings = listings
        self.folder_names_and_paths: dict[str, tuple[list[str], set[str]]] = {
            name: ([f"/models/{name}", f"/runpod-volume/models/{name}"], {".Safetensors"})
            for name in listings
        }
        self.folder_names_and_paths["custom_nodes"] = (["/comfyui/custom_nodes"], set())
        self.filename_list_cache: dict[str, Any] = {name: object() for name in listings}
        self.cache_scans = 0

    def get_filename_list(self, folder_name: str) -> list[str]:
        return list(self.listings[folder_name])

    @property
    def cache_helper(self) -> contextlib.AbstractContextManager[None]:
        @contextlib.contextmanager
        def scan() -> Iterator[None]:
            self.cache_scans += 1
            yield

        return scan()


class V3Base:
    """Stands in for ComfyUI's ``_ComfyNodeInternal``."""


class Loader:
    """A V1 node: a checkpoint list, a VAE list over two folders, an enum, an int."""

    folder_paths: ClassVar[Any] = None
    calls: ClassVar[int] = 0
    RETURN_TYPES = ("MODEL", "VAE")
    RETURN_NAMES = ("model", "vae")
    CATEGORY = "loaders"
    DEPRECATED = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        Loader.calls += 1
        fp = cls.folder_paths
        return {
            "required": {
                "ckpt_name": (fp.get_filename_list("checkpoints"),),
                "vae_name": ([*fp.get_filename_list("vae"), *fp.get_filename_list("vae_approx")],),
                "sampler_name": (["euler", "dpmpp_2m"],),
                "seed": ("INT", {"default": 0}),
            },
            "optional": {
                "format": ("COMBO", {"options": ["png", "webp"], "default": object()}),
            },
        }


class Broken:
    RETURN_TYPES = ("IMAGE",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        raise OSError("volume gone")


class NewStyle(V3Base):
    @classmethod
    def GET_NODE_INFO_V1(cls) -> dict[str, Any]:
        return {"name": "NewStyle", "output": ["IMAGE"]}


@pytest.fixture
def folder_paths() -> FakeFolderPaths:
    fp = FakeFolderPaths({"checkpoints": ["sd15.safetensors"], "vae": [], "vae_approx": []})
    Loader.folder_paths, Loader.calls = fp, 0
    return fp


@pytest.fixture
def catalog(folder_paths: FakeFolderPaths) -> Catalog:
    nodes = SimpleNamespace(
        NODE_CLASS_MAPPINGS={"Loader": Loader, "Broken": Broken, "NewStyle": NewStyle},
        NODE_DISPLAY_NAME_MAPPINGS={"Loader": "Load Everything"},
    )
    comfy: Any = SimpleNamespace(nodes=nodes, folder_paths=folder_paths)
    return Catalog(comfy, v3_base=V3Base)


def test_file_inputs_are_the_combo_inputs_worked_out_once(catalog: Catalog) -> None:
    expected = frozenset({"ckpt_name", "vae_name", "sampler_name", "format"})
    assert catalog.file_inputs("Loader") == expected
    assert catalog.file_inputs("Loader") == expected
    assert Loader.calls == 1
    assert catalog.file_inputs("Nope") == frozenset()


def test_a_node_whose_input_types_raises_has_no_file_inputs(
    catalog: Catalog, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        assert catalog.file_inputs("Broken") == frozenset()
    assert "INPUT_TYPES() of Broken failed" in caplog.text


def test_node_definitions_are_object_info_entries_built_once(
    catalog: Catalog, folder_paths: FakeFolderPaths, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        definitions = catalog.node_definitions()
    assert set(definitions) == {"Loader", "NewStyle"}  # Broken is left out, with a log line
    assert "the definition of node type Broken failed" in caplog.text
    assert definitions["NewStyle"] == {"name": "NewStyle", "output": ["IMAGE"]}
    loader = definitions["Loader"]
    assert loader["input_order"] == {
        "required": ["ckpt_name", "vae_name", "sampler_name", "seed"],
        "optional": ["format"],
    }
    assert loader["input"]["required"]["ckpt_name"] == [["sd15.safetensors"]]  # JSON's lists
    assert isinstance(loader["input"]["optional"]["format"][1]["default"], str)
    assert loader["output"] == ["MODEL", "VAE"]
    assert loader["output_is_list"] == [False, False]
    assert loader["output_name"] == ["model", "vae"]
    assert loader["display_name"] == "Load Everything"
    assert (loader["category"], loader["python_module"]) == ("loaders", "nodes")
    assert loader["deprecated"] is True
    assert loader["output_node"] is False
    assert "experimental" not in loader and "api_node" not in loader
    assert catalog.node_definitions() is definitions
    assert folder_paths.cache_scans == 1


def test_the_model_folder_behind_a_file_input(catalog: Catalog) -> None:
    checkpoints = catalog.model_folder_of("Loader", "ckpt_name")
    assert checkpoints == ModelFolder(
        name="checkpoints",
        paths=(Path("/models/checkpoints"), Path("/runpod-volume/models/checkpoints")),
        extensions=frozenset({".safetensors"}),
    )
    # Both VAE folders are empty, so both fit: the input's name picks one.
    vae = catalog.model_folder_of("Loader", "vae_name")
    assert vae is not None and vae.name == "vae"
    assert catalog.model_folder_of("Loader", "sampler_name") is None  # an enum
    assert catalog.model_folder_of("Loader", "seed") is None  # no list at all
    assert catalog.model_folder_of("Nope", "ckpt_name") is None


def test_model_folders_leave_custom_nodes_out_and_forget_drops_a_listing(
    catalog: Catalog, folder_paths: FakeFolderPaths
) -> None:
    assert [f.name for f in catalog.model_folders()] == ["checkpoints", "vae", "vae_approx"]
    catalog.forget_model_files("vae")
    catalog.forget_model_files("never_listed")
    assert set(folder_paths.filename_list_cache) == {"checkpoints", "vae_approx"}


def test_the_runtime_asks_for_boot_first(tmp_path: Path) -> None:
    runtime = ComfyRuntime(Settings(work_dir=tmp_path))
    for ask in (
        lambda: runtime.file_inputs("Loader"),
        runtime.node_definitions,
        lambda: runtime.model_folder_of("Loader", "ckpt_name"),
        runtime.model_folders,
        lambda: runtime.forget_model_files("vae"),
    ):
        with pytest.raises(RuntimeError, match=r"boot\(\) must be called"):
            ask()
