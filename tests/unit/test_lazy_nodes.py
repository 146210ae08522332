"""Node files imported on first use, without ComfyUI: the index, the lazy mappings.

ComfyUI's ``nodes`` module is replaced by a small fake with the same names: two node
mappings, an async ``load_custom_node`` that imports a file and copies its
``NODE_CLASS_MAPPINGS`` in (as ComfyUI 0.3.64's does), and ``init_extra_nodes``, which
loads the extra files, then the API group behind its canary, then the packs with the
names already known as ``ignore``. ``tests/engine/test_lazy_nodes_real.py`` runs the real one.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.runtime import node_index
from engine.runtime.lazy_mapping import LazyMapping
from engine.runtime.lazy_nodes import LazyNodes
from engine.runtime.node_index import NodeIndex, index_key, index_path


def _node_file(folder: Path, name: str, classes: list[str], extra: str = "") -> Path:
    body = [f"class {c}:\n    pass\n" for c in classes]
    mapping = ", ".join(f"{c!r}: {c}" for c in classes)
    body.append(f"NODE_CLASS_MAPPINGS = {{{mapping}}}\n")
    displays = ", ".join(f"{c!r}: {c + ' x'!r}" for c in classes)
    body.append(f"NODE_DISPLAY_NAME_MAPPINGS = {{{displays}}}\n")
    path = folder / f"{name}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(extra + "".join(body))
    return path


class FakeComfy:
    """ComfyUI's ``nodes`` module as far as node loading goes; ``imported`` lists each file run."""

    def __init__(self, extras: list[Path], api: list[Path], packs: list[Path]) -> None:
        self.module = types.ModuleType("fake_nodes")
        self.imported: list[str] = []
        self.extras, self.api, self.packs = extras, api, packs
        module = self.module
        module.NODE_CLASS_MAPPINGS = {"Core": type("Core", (), {})}  # type: ignore[attr-defined]
        module.NODE_DISPLAY_NAME_MAPPINGS = {"Core": "Core node"}  # type: ignore[attr-defined]
        module.load_custom_node = self._load  # type: ignore[attr-defined]
        module.init_extra_nodes = self._init  # type: ignore[attr-defined]

    async def _load(self, path: str, ignore: Any = frozenset(), module_parent: str = "x") -> bool:
        self.imported.append(Path(path).name)
        spec = importlib.util.spec_from_file_location(f"fake_{Path(path).stem}", path)
        assert spec is not None and spec.loader is not None
        loaded = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(loaded)
        except Exception:
            return False
        entry = getattr(loaded, "comfy_entrypoint", None)
        if entry is not None:
            await entry()  # a V3 file's async entry point, as ComfyUI awaits it
        # Looked up on the module at call time, as ComfyUI's own function does.
        for name, cls in loaded.NODE_CLASS_MAPPINGS.items():
            if name not in ignore:
                self.module.NODE_CLASS_MAPPINGS[name] = cls  # type: ignore[attr-defined]
        self.module.NODE_DISPLAY_NAME_MAPPINGS.update(loaded.NODE_DISPLAY_NAME_MAPPINGS)  # type: ignore[attr-defined]
        return True

    async def _init(self) -> None:
        for path in self.extras:
            await self.module.load_custom_node(str(path), module_parent="comfy_extras")  # type: ignore[attr-defined]
        if self.api:
            canary, *rest = self.api
            if await self.module.load_custom_node(str(canary), module_parent="comfy_api_nodes"):  # type: ignore[attr-defined]
                for path in rest:
                    await self.module.load_custom_node(str(path), module_parent="comfy_api_nodes")  # type: ignore[attr-defined]
        base = set(self.module.NODE_CLASS_MAPPINGS.keys())  # type: ignore[attr-defined]
        for path in self.packs:
            await self.module.load_custom_node(str(path), base, module_parent="custom_nodes")  # type: ignore[attr-defined]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    extras = tmp_path / "comfy_extras"
    api = tmp_path / "comfy_api_nodes"
    return {
        "a": _node_file(extras, "nodes_a", ["A1", "A2"]),
        "b": _node_file(extras, "nodes_b", ["B1"]),
        "c": _node_file(
            extras, "nodes_c", ["C1"], extra="async def comfy_entrypoint():\n    return None\n"
        ),
        "canary": _node_file(api, "canary", []),
        "p": _node_file(api, "nodes_paid", ["Paid1"]),
        "pack": _node_file(tmp_path / "custom_nodes", "pack", ["Pack1", "B1"]),
    }


def _comfy(files: dict[str, Path]) -> FakeComfy:
    return FakeComfy(
        [files["a"], files["b"], files["c"]], [files["canary"], files["p"]], [files["pack"]]
    )


def _boot(
    files: dict[str, Path], folder: Path, key: str = "k1", eager: tuple[str, ...] = ()
) -> tuple[FakeComfy, LazyNodes]:
    """One boot as comfy_boot does it: read the index, init nodes inside booting(), save."""
    comfy = _comfy(files)
    lazy = LazyNodes(
        comfy.module, NodeIndex.read(index_path(folder, key), key), key, eager_groups=eager
    )
    with lazy.booting():
        asyncio.run(comfy.module.init_extra_nodes())  # type: ignore[attr-defined]
    lazy.save(folder)
    return comfy, lazy


@pytest.fixture
def indexed(files: dict[str, Path], tmp_path: Path) -> Iterator[Path]:
    """An index folder after a first boot, which imports everything and writes the index."""
    folder = tmp_path / "index"
    comfy, lazy = _boot(files, folder)
    assert lazy.deferred == []
    assert comfy.imported == [
        "nodes_a.py",
        "nodes_b.py",
        "nodes_c.py",
        "canary.py",
        "nodes_paid.py",
        "pack.py",
    ]
    yield folder


ALL_TYPES = {"Core", "A1", "A2", "B1", "C1", "Paid1", "Pack1"}


def test_a_second_boot_imports_only_the_packs_and_knows_every_name(
    files: dict[str, Path], indexed: Path
) -> None:
    comfy, lazy = _boot(files, indexed)
    assert comfy.imported == ["pack.py"]
    assert lazy.count() == len(ALL_TYPES)
    assert all(lazy.known(name) for name in ALL_TYPES)
    assert not lazy.known("Nope")


def test_a_builtin_name_still_wins_over_a_pack_while_its_file_is_deferred(
    files: dict[str, Path], indexed: Path
) -> None:
    comfy, _ = _boot(files, indexed)
    classes = comfy.module.NODE_CLASS_MAPPINGS  # type: ignore[attr-defined]
    # The pack defines B1 too; ComfyUI ignores a pack's copy of a built-in name.
    assert classes["B1"].__module__ == "fake_nodes_b"


def test_naming_a_node_type_imports_its_file_only_the_first_time(
    files: dict[str, Path], indexed: Path
) -> None:
    comfy, lazy = _boot(files, indexed)
    classes = comfy.module.NODE_CLASS_MAPPINGS  # type: ignore[attr-defined]
    assert isinstance(classes, LazyMapping)
    assert "A2" in classes
    assert classes["A1"].__name__ == "A1"
    assert comfy.imported == ["pack.py", "nodes_a.py"]
    assert classes.get("C1").__name__ == "C1"  # a V3-style async entry point, awaited here
    assert classes.get("Nope", "default") == "default"
    assert "Nope" not in classes
    assert comfy.imported == ["pack.py", "nodes_a.py", "nodes_c.py"]
    assert lazy.loaded_lazily == [str(files["a"]), str(files["c"])]


def test_a_display_name_lookup_imports_the_file_too(files: dict[str, Path], indexed: Path) -> None:
    comfy, _ = _boot(files, indexed)
    displays = comfy.module.NODE_DISPLAY_NAME_MAPPINGS  # type: ignore[attr-defined]
    assert displays["C1"] == "C1 x"
    assert comfy.imported == ["pack.py", "nodes_c.py"]


def test_the_api_group_imports_its_canary_first(files: dict[str, Path], indexed: Path) -> None:
    comfy, _ = _boot(files, indexed)
    assert "Paid1" in comfy.module.NODE_CLASS_MAPPINGS  # type: ignore[attr-defined]
    assert comfy.imported == ["pack.py", "canary.py", "nodes_paid.py"]


def test_an_eager_group_is_imported_at_boot(files: dict[str, Path], indexed: Path) -> None:
    comfy, lazy = _boot(files, indexed, eager=("comfy_api_nodes",))
    assert comfy.imported == ["canary.py", "nodes_paid.py", "pack.py"]
    assert str(files["p"]) not in lazy.deferred


@pytest.mark.parametrize("walk", ["keys", "iter", "len", "items", "values", "copy"])
def test_a_full_walk_imports_every_deferred_file(
    files: dict[str, Path], indexed: Path, walk: str
) -> None:
    comfy, _ = _boot(files, indexed)
    classes = comfy.module.NODE_CLASS_MAPPINGS  # type: ignore[attr-defined]
    seen: Any = {
        "keys": lambda: set(classes.keys()),
        "iter": lambda: set(classes),
        "len": lambda: len(classes),
        "items": lambda: {k for k, _ in classes.items()},
        "values": lambda: {v.__name__ for v in classes.values()},
        "copy": lambda: set(classes.copy()),
    }[walk]()
    assert seen == (len(ALL_TYPES) if walk == "len" else ALL_TYPES)
    assert sorted(comfy.imported) == sorted(
        ["pack.py", "nodes_a.py", "nodes_b.py", "nodes_c.py", "canary.py", "nodes_paid.py"]
    )
    # dict(m) and {**m} walk through keys() too: nothing left behind.
    assert set(dict(classes)) == ALL_TYPES


def test_lookups_work_from_inside_a_running_event_loop(
    files: dict[str, Path], indexed: Path
) -> None:
    """ComfyUI validates inside ``asyncio.run``; a lookup there must not need its own loop."""
    comfy, _ = _boot(files, indexed)
    classes = comfy.module.NODE_CLASS_MAPPINGS  # type: ignore[attr-defined]

    async def validate() -> bool:
        return "C1" in classes and "B1" in classes

    assert asyncio.run(validate())


def test_a_changed_file_is_imported_at_boot_and_indexed_again(
    files: dict[str, Path], indexed: Path
) -> None:
    _node_file(files["b"].parent, "nodes_b", ["B1", "B2"])
    stat = files["b"].stat()
    os.utime(files["b"], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10_000_000))
    comfy, lazy = _boot(files, indexed)
    assert comfy.imported == ["nodes_b.py", "pack.py"]
    assert str(files["b"]) not in lazy.deferred
    comfy, _ = _boot(files, indexed)  # the new index has B2, deferred again
    assert comfy.imported == ["pack.py"]
    assert "B2" in comfy.module.NODE_CLASS_MAPPINGS  # type: ignore[attr-defined]


def test_another_key_means_a_full_boot(files: dict[str, Path], indexed: Path) -> None:
    comfy, lazy = _boot(files, indexed, key="another")
    assert lazy.deferred == []
    assert len(comfy.imported) == 6


def test_a_file_that_fails_is_imported_at_every_boot(
    files: dict[str, Path], tmp_path: Path
) -> None:
    _node_file(files["b"].parent, "nodes_b", ["B1"], extra="raise ImportError('no cv2')\n")
    folder = tmp_path / "index"
    _boot(files, folder)
    comfy, lazy = _boot(files, folder)
    assert comfy.imported == ["nodes_b.py", "pack.py"]
    # As in ComfyUI: with the built-in file failed, the pack's B1 is the one there is.
    assert comfy.module.NODE_CLASS_MAPPINGS["B1"].__module__ == "fake_pack"  # type: ignore[attr-defined]
    assert str(files["b"]) not in lazy.deferred


def test_files_sharing_a_node_type_stay_eager(files: dict[str, Path], tmp_path: Path) -> None:
    _node_file(files["c"].parent, "nodes_c", ["C1", "A1"])
    folder = tmp_path / "index"
    _boot(files, folder)
    comfy, lazy = _boot(files, folder)
    assert comfy.imported == ["nodes_a.py", "nodes_c.py", "pack.py"]
    # ComfyUI's order: the later file's A1 wins.
    assert comfy.module.NODE_CLASS_MAPPINGS["A1"].__module__ == "fake_nodes_c"  # type: ignore[attr-defined]
    assert sorted(Path(p).name for p in lazy.deferred) == [
        "canary.py",
        "nodes_b.py",
        "nodes_paid.py",
    ]


def test_a_file_that_no_longer_defines_its_types_is_reported(
    files: dict[str, Path], indexed: Path
) -> None:
    """The index is stale only if a file changed without its size or mtime changing."""
    comfy, lazy = _boot(files, indexed)
    stat = files["b"].stat()
    files["b"].write_text(files["b"].read_text().replace("'B1': B1", "'BX': B1"))
    os.utime(files["b"], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert "B1" not in comfy.module.NODE_CLASS_MAPPINGS  # type: ignore[attr-defined]
    assert "no longer defines B1" in lazy.failed_lazily[str(files["b"])]


def test_the_index_key_follows_the_pack_folders(tmp_path: Path) -> None:
    packs = tmp_path / "custom_nodes"
    packs.mkdir()
    before = index_key("0.3.64", [str(packs)])
    assert index_key("0.3.64", [str(packs)]) == before
    (packs / "new_pack").mkdir()
    with_pack = index_key("0.3.64", [str(packs)])
    assert with_pack != before
    # A pack writing into its own folder (a cache, its settings) keeps the key.
    (packs / "new_pack" / "settings.json").write_text("{}")
    assert index_key("0.3.64", [str(packs)]) == with_pack
    # An updated pack does not.
    (packs / "new_pack" / "__init__.py").write_text("NODE_CLASS_MAPPINGS = {}")
    assert index_key("0.3.64", [str(packs)]) != with_pack
    assert index_key("0.3.65", [str(packs)]) != index_key("0.3.64", [str(packs)])


def test_the_index_key_follows_the_installed_distributions(tmp_path: Path) -> None:
    """pip install, upgrade or uninstall in the same environment makes a new index;
    what Python writes beside the distributions at an import (bytecode) does not."""
    packs, site = tmp_path / "custom_nodes", tmp_path / "site-packages"
    packs.mkdir()
    site.mkdir()
    (site / "numpy-1.26.4.dist-info").mkdir()

    def key() -> str:
        return index_key("0.3.64", [str(packs)], node_index.environment_key([str(site)]))

    before = key()
    assert key() == before
    (site / "onnxruntime-1.19.2.dist-info").mkdir()  # a pack's dependency installed
    with_dep = key()
    assert with_dep != before
    (site / "__pycache__").mkdir()  # a first import of a top-level module
    (site / "six.py").write_text("")
    assert key() == with_dep
    (site / "onnxruntime-1.19.2.dist-info").rename(site / "onnxruntime-1.20.0.dist-info")
    assert key() not in {with_dep, before}  # upgraded
    (site / "onnxruntime-1.20.0.dist-info").rmdir()  # uninstalled
    assert key() == before
    (site / "__editable__.my_pack-0.1.pth").write_text("")  # pip install -e
    assert key() != before


def test_the_index_key_reads_this_pythons_site_packages_by_default() -> None:
    """Without an environment: the site-packages on sys.path, where pytest is installed."""
    site = node_index._site_dirs()
    assert any(Path(entry).name.startswith("pytest-") for entry in node_index.installed(site))
    assert node_index.environment_key() == node_index.environment_key(site)
    assert node_index.environment_key() != node_index.environment_key([])
    assert index_key("0.3.64", []) == index_key("0.3.64", [], node_index.environment_key(site))


def test_a_damaged_index_file_is_ignored(tmp_path: Path) -> None:
    path = index_path(tmp_path, "k")
    path.write_text("{not json")
    assert NodeIndex.read(path, "k") is None
    NodeIndex(key="other").write(path)
    assert NodeIndex.read(path, "k") is None


def test_a_boot_that_writes_its_index_prunes_the_folder_one_that_reads_does_not(
    files: dict[str, Path], tmp_path: Path
) -> None:
    """node_index.prune's rules are tested in test_node_index.py; here: who calls it."""
    folder = tmp_path / "index"
    folder.mkdir()
    stale = index_path(folder, "unused-for-years")
    NodeIndex(key="unused-for-years").write(stale)
    os.utime(stale, (0, 0))
    _boot(files, folder)  # the first boot writes its index
    assert index_path(folder, "k1").exists()
    assert not stale.exists()
    NodeIndex(key="unused-for-years").write(stale)
    os.utime(stale, (0, 0))
    _comfy, lazy = _boot(files, folder)  # reads it: nothing written, nothing pruned
    assert lazy.deferred
    assert stale.exists()
