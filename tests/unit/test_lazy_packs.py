"""Custom node packs loaded on first use, decided on evidence, without ComfyUI.

The fake ``nodes`` module of ``test_lazy_nodes.py`` loads the packs; a folder stands in
for the ComfyUI checkout, with one "ComfyUI module" a pack may patch and a
``folder_paths`` module packs register folders in. Two boots per test, as a worker's:
the first imports every pack and records what each changed (the index), the second
defers those that changed only what can be replayed.
``tests/engine/test_lazy_packs_real.py`` runs the real engine.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import traceback
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from engine.deadline import Deadline, JobThread
from engine.errors import JobInterruptedError
from engine.runtime import node_index, pack_imports
from engine.runtime.import_turn import ImportTurn
from engine.runtime.lazy_nodes import LazyNodes
from engine.runtime.node_index import NodeIndex, index_path
from engine.runtime.pack_evidence import Recorder
from tests.unit.test_lazy_nodes import FakeComfy, _node_file

CLEAN = """
import os
import lazytest_folder_paths as fp
if os.environ.get("LAZYTEST_BREAK"):
    raise ImportError("lazytest: broken on first use")
os.environ["LAZYTEST_ENV"] = "on"
fp.folder_names_and_paths["lazytest"] = ([fp.models_dir + "/lazytest"], {".bin"})
"""
PATCHER = """
import lazytest_comfy
lazytest_comfy.hook = lambda: 2
"""


@dataclass
class World:
    """A checkout, its folder_paths, the packs, and where the index goes."""

    root: Path
    folder_paths: Any
    packs: list[Path]
    index: Path
    loaded: list[tuple[str, str]] = field(default_factory=list)
    snapshots: int = 0

    def reset(self) -> None:
        """What a new process starts with: no pack's changes yet."""
        self.folder_paths.folder_names_and_paths.clear()
        os.environ.pop("LAZYTEST_ENV", None)
        for name in [n for n in sys.modules if n.startswith("fake_")]:
            del sys.modules[name]
        sys.modules["lazytest_comfy"].hook = _hook  # type: ignore[attr-defined]

    def boot(
        self,
        *,
        recorder: bool = True,
        record: pack_imports.PackImports | None = None,
        key: str = "k",
        donor: str | None = None,
        environment: str = "env",
    ) -> tuple[FakeComfy, LazyNodes]:
        """One boot as comfy_boot does it; ``record``: the import recorder wraps the loader;
        ``donor``: the key of an index that lends its packs' evidence; ``environment``:
        the Python environment's key (node_index.environment_key)."""
        self.reset()
        comfy = FakeComfy([self.root / "comfy_extras" / "nodes_b.py"], [], self.packs)
        if record is not None:
            comfy.module.traceback = traceback  # type: ignore[attr-defined]  # as ComfyUI's nodes
            pack_imports.watch(comfy.module, record)
        lazy = LazyNodes(
            comfy.module,
            NodeIndex.read(index_path(self.index, key), key),
            key,
            packs=CountingRecorder(self.root, self.folder_paths, self) if recorder else None,
            evidence_from=None
            if donor is None
            else NodeIndex.read(index_path(self.index, donor), donor),
            environment=environment,
        )
        lazy.on_loaded = lambda path, group: self.loaded.append((Path(path).name, group))
        with lazy.booting():
            asyncio.run(comfy.module.init_extra_nodes())  # type: ignore[attr-defined]
        lazy.save(self.index)
        return comfy, lazy


class CountingRecorder(Recorder):
    """The real recorder, counting its snapshots."""

    def __init__(self, root: Path, folder_paths: Any, world: World) -> None:
        super().__init__(root, folder_paths)
        self._world = world

    def take(self) -> Any:
        self._world.snapshots += 1
        return super().take()


def _hook() -> int:
    return 1


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    root = tmp_path / "ComfyUI"
    root.mkdir()
    (root / "lazytest_comfy.py").write_text("def hook():\n    return 1\n")
    _node_file(root / "comfy_extras", "nodes_b", ["B1"])
    sys.path.insert(0, str(root))
    __import__("lazytest_comfy")
    folder_paths = types.ModuleType("lazytest_folder_paths")
    folder_paths.models_dir = str(tmp_path / "models")  # type: ignore[attr-defined]
    folder_paths.folder_names_and_paths = {}  # type: ignore[attr-defined]
    folder_paths.filename_list_cache = {}  # type: ignore[attr-defined]
    packs_dir = tmp_path / "custom_nodes"
    folder_paths.get_folder_paths = lambda name: [str(packs_dir)]  # type: ignore[attr-defined]
    sys.modules["lazytest_folder_paths"] = folder_paths
    packs = [
        # Defines B1 too: ComfyUI's built-in one must win, imported now or later.
        _node_file(packs_dir, "clean", ["CleanNode", "B1"], extra=CLEAN),
        _node_file(packs_dir, "patcher", ["PatchNode"], extra=PATCHER),
    ]
    try:
        yield World(root, folder_paths, packs, tmp_path / "index")
    finally:
        sys.path.remove(str(root))
        for name in ("lazytest_comfy", "lazytest_folder_paths"):
            sys.modules.pop(name, None)
        os.environ.pop("LAZYTEST_ENV", None)


def test_a_pack_that_changes_only_what_replays_is_deferred(world: World) -> None:
    first, lazy = world.boot()
    assert first.imported == ["nodes_b.py", "clean.py", "patcher.py"]
    assert lazy.deferred_packs() == []
    comfy, lazy = world.boot()
    assert comfy.imported == ["patcher.py"]
    assert [Path(p).name for p in lazy.deferred_packs()] == ["clean.py"]
    assert lazy.known("CleanNode") and lazy.count() == 4  # Core, B1, CleanNode, PatchNode
    # Its environment variable and folder entry, as after an eager boot, before it loads.
    assert os.environ["LAZYTEST_ENV"] == "on"
    assert world.folder_paths.folder_names_and_paths["lazytest"] == (
        [world.folder_paths.models_dir + "/lazytest"],
        {".bin"},
    )
    classes = comfy.module.NODE_CLASS_MAPPINGS  # type: ignore[attr-defined]
    assert classes["CleanNode"].__name__ == "CleanNode"
    assert comfy.imported == ["patcher.py", "clean.py"]
    # The patches that follow a load ran (the boot's pack fixes again).
    assert world.loaded == [(world.packs[0].name, "custom_nodes")]
    # Imported with ComfyUI's ignore set: the built-in B1 still wins over the pack's.
    assert classes["B1"].__module__ == "fake_nodes_b"
    # One of ComfyUI's own files deferred at boot is followed the same way, by its group
    # (a patch of a node class it defines waits for it: Patches.after_lazy_load).
    assert world.loaded[1:] == [("nodes_b.py", "comfy_extras")]


def test_a_pack_that_patches_comfyui_loads_at_boot_saying_why(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.boot()
    caplog.set_level(logging.INFO, logger="engine.runtime.lazy_nodes")
    comfy, _ = world.boot()
    assert "patcher.py" in comfy.imported
    assert sys.modules["lazytest_comfy"].hook() == 2
    assert "custom node pack patcher.py loads at boot: its import rebound lazytest_comfy.hook" in (
        caplog.text
    )


def test_without_a_recorder_every_pack_loads_at_boot_and_the_index_stays(world: World) -> None:
    world.boot()
    before = index_path(world.index, "k").read_text()
    comfy, lazy = world.boot(recorder=False)
    assert comfy.imported == ["clean.py", "patcher.py"]
    assert lazy.deferred_packs() == []
    assert index_path(world.index, "k").read_text() == before
    comfy, lazy = world.boot()  # and lazy again after
    assert [Path(p).name for p in lazy.deferred_packs()] == ["clean.py"]


def test_a_pack_whose_variable_is_set_otherwise_today_loads_at_boot(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replaying the index's value would overwrite the container's: its own code decides."""
    world.boot()
    reset = world.reset

    def reset_with_variable() -> None:
        reset()
        os.environ["LAZYTEST_ENV"] = "set by the container"

    monkeypatch.setattr(world, "reset", reset_with_variable)
    comfy, lazy = world.boot()
    assert comfy.imported == ["clean.py", "patcher.py"]
    assert lazy.deferred_packs() == []
    assert os.environ["LAZYTEST_ENV"] == "on"  # what the pack's import did


def test_an_updated_pack_is_imported_and_recorded_again(world: World) -> None:
    world.boot()
    world.packs[0].write_text(world.packs[0].read_text() + PATCHER)
    comfy, lazy = world.boot()
    assert "clean.py" in comfy.imported
    comfy, lazy = world.boot()  # its new evidence keeps it eager
    assert "clean.py" in comfy.imported and lazy.deferred_packs() == []


def test_a_deferred_pack_keeps_its_folder_name_and_later_copies_stay_skipped(
    world: World, tmp_path: Path
) -> None:
    """The image's copy wins over a volume's, deferred or not (pack_imports.skip_reason)."""
    copy = _node_file(tmp_path / "volume_nodes", "clean", ["CleanNode", "VolumeOnly"])
    world.packs.append(copy)
    world.boot(record=pack_imports.PackImports())
    comfy, lazy = world.boot(record=pack_imports.PackImports())
    assert comfy.imported == ["patcher.py"]
    assert not lazy.known("VolumeOnly")
    classes = comfy.module.NODE_CLASS_MAPPINGS  # type: ignore[attr-defined]
    assert classes["CleanNode"].__module__ == "fake_clean"
    assert comfy.imported == ["patcher.py", "clean.py"]


def test_a_deferred_pack_that_fails_on_first_use_is_recorded_as_such(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.boot(record=pack_imports.PackImports())
    record = pack_imports.PackImports()
    comfy, lazy = world.boot(record=record)
    record.booted = True
    monkeypatch.setenv("LAZYTEST_BREAK", "1")
    assert "CleanNode" not in comfy.module.NODE_CLASS_MAPPINGS  # type: ignore[attr-defined]
    (failed,) = record.failed
    assert failed.path == world.packs[0] and failed.on_first_use
    line = record.describe_unknown("CleanNode", ["1"])
    assert "the node pack that provides it failed to import: clean.py (on first use: " in line
    assert world.loaded == []  # no fixes for a pack that did not load
    assert str(world.packs[0]) in lazy.failed_lazily


def test_another_set_of_packs_borrows_the_known_packs_evidence(
    world: World, tmp_path: Path
) -> None:
    """A network volume adds a pack: the image's index lends its packs' evidence, so only
    the new pack is snapshotted; with another set of packs, nothing is deferred that boot."""
    world.boot()
    assert world.snapshots == 3  # before the first pack, after each of the two
    world.packs.append(_node_file(tmp_path / "volume_nodes", "volume_pack", ["VolumeNode"]))
    world.snapshots = 0
    comfy, lazy = world.boot(key="with-volume", donor="k")
    assert comfy.imported == ["nodes_b.py", "clean.py", "patcher.py", "volume_pack.py"]
    assert lazy.deferred_packs() == []
    assert world.snapshots == 2  # around the volume's pack only
    comfy, lazy = world.boot(key="with-volume")
    assert sorted(Path(p).name for p in lazy.deferred_packs()) == ["clean.py", "volume_pack.py"]
    assert world.snapshots == 2  # the index now knows every pack


def test_an_index_made_in_another_environment_lends_no_evidence(
    world: World, tmp_path: Path
) -> None:
    """pip changed the environment since the index was made (a dependency installed or
    removed): a pack's import may now change other things, so every pack is snapshotted
    again instead of keeping what the old index recorded."""
    world.boot(environment="before-pip")
    world.packs.append(_node_file(tmp_path / "volume_nodes", "volume_pack", ["VolumeNode"]))
    world.snapshots = 0
    comfy, lazy = world.boot(key="after-pip", donor="k", environment="after-pip")
    assert comfy.imported == ["nodes_b.py", "clean.py", "patcher.py", "volume_pack.py"]
    assert world.snapshots == 4  # before the first pack, after each of the three
    made = NodeIndex.read(index_path(world.index, "after-pip"), "after-pip")
    assert made is not None and made.environment == "after-pip"  # what the next one compares
    assert lazy.deferred_packs() == []


def test_a_pack_folder_is_stamped_by_its_python_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not by the folder's own mtime (packs write settings there at start); an update of
    a module below the top is seen; a huge tree is not walked whole."""
    pack = tmp_path / "pack"
    (pack / "nodes").mkdir(parents=True)
    (pack / "__init__.py").write_text("from .nodes import x\n")
    (pack / "nodes" / "x.py").write_text("A = 1\n")
    first = node_index.stamp(str(pack))
    (pack / "settings.json").write_text("{}")
    (pack / "__pycache__").mkdir()
    (pack / "__pycache__" / "cached.py").write_text("B = 2\n")
    assert node_index.stamp(str(pack)) == first
    (pack / "nodes" / "x.py").write_text("A = 22\n")
    assert node_index.stamp(str(pack)) != first
    assert node_index.stamp(str(tmp_path / "gone")) is None
    # Past the bound, the walk stops: the top folder's entries fill it here.
    monkeypatch.setattr(node_index, "_STAMP_MAX_ENTRIES", 2)
    bounded = node_index.stamp(str(pack))
    (pack / "nodes" / "x.py").write_text("A = 222\n")
    assert node_index.stamp(str(pack)) == bounded


def test_a_pack_whose_module_another_pack_names_loads_at_boot(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """KJNodes imports ComfyUI-GGUF's module by its folder name: deferred, it is not in
    ``sys.modules`` yet. The named pack loads at boot; the one naming it may wait."""
    world.packs = [
        _node_file(world.packs[0].parent, "gguf_like", ["GgufNode"]),
        _node_file(
            world.packs[0].parent,
            "kj_like",
            ["KjNode"],
            extra='NAMES = ["GGUF_like", "custom_nodes.gguf_like"]\n',
        ),
        _node_file(world.packs[0].parent, "quiet", ["QuietNode"]),
        # A volume's copy, skipped: the image's copy is the one looked up.
        _node_file(world.root.parent / "volume_nodes", "gguf_like", ["GgufNode"]),
    ]
    caplog.set_level(logging.INFO, logger="engine.runtime.lazy_nodes")
    world.boot(record=pack_imports.PackImports())
    assert (
        "custom node pack gguf_like.py loads at boot: its module is looked up by name in "
        "kj_like's code" in caplog.text
    )
    comfy, lazy = world.boot(record=pack_imports.PackImports())
    assert comfy.imported == ["gguf_like.py"]
    assert sorted(Path(p).name for p in lazy.deferred_packs()) == ["kj_like.py", "quiet.py"]


def test_a_pack_named_by_a_new_pack_is_imported_at_that_boot(world: World, tmp_path: Path) -> None:
    """A pack deferred on the index of the last boot, named by a pack added since: the
    boot that indexes the newcomer imports the named pack at once, not on first use."""
    world.boot()
    world.boot()  # "clean" deferred from here on
    world.packs.append(
        _node_file(tmp_path / "volume_nodes", "volume_pack", ["VolumeNode"], extra="X = 'clean'\n")
    )
    comfy, lazy = world.boot(key="k", donor=None)
    assert "clean.py" in comfy.imported
    assert "clean.py" not in [Path(p).name for p in lazy.deferred_packs()]
    comfy, lazy = world.boot()
    assert "clean.py" in comfy.imported and lazy.deferred_packs() != []


PROBE = """
import asyncio, threading, lazytest_probe
lazytest_probe.imported(threading.current_thread().name, asyncio.get_event_loop())
"""


class _Engine(JobThread):
    """The engine thread, saying when a call was handed to it."""

    def __init__(self) -> None:
        super().__init__("lazytest-engine")
        self.handed = threading.Event()

    def submit(self, fn: Any) -> Any:
        future = super().submit(fn)
        self.handed.set()
        return future


@pytest.fixture
def probe(world: World) -> Iterator[types.SimpleNamespace]:
    """A deferred pack whose import says on which thread and with which loop it ran."""
    seen = types.SimpleNamespace(imports=[], moved=threading.Event())

    def imported(thread: str, loop: Any) -> None:
        seen.imports.append((thread, loop))
        seen.moved.set()

    module = types.ModuleType("lazytest_probe")
    module.imported = imported  # type: ignore[attr-defined]
    sys.modules["lazytest_probe"] = module
    world.packs = [_node_file(world.packs[0].parent, "probe", ["ProbeNode"], extra=PROBE)]
    try:
        yield seen
    finally:
        sys.modules.pop("lazytest_probe", None)


def test_a_first_use_on_a_lane_waits_for_the_run_on_the_engine_thread(
    world: World, probe: types.SimpleNamespace
) -> None:
    """Job A runs on the engine thread; job B, validated on its lane meanwhile, names a
    deferred pack. The pack is imported on the engine thread once A's run is over, with
    node init's loop as the current one, never beside the run (each step waits on an
    event: nothing here depends on timing)."""
    world.boot()
    comfy, lazy = world.boot()
    assert [Path(p).name for p in lazy.deferred_packs()] == ["probe.py"]
    probe.imports.clear()
    engine, server_loop = _Engine(), asyncio.new_event_loop()
    lazy.turn = ImportTurn(engine, server_loop)
    a_running, release, a_done = threading.Event(), threading.Event(), threading.Event()

    def run_a() -> None:
        a_running.set()
        release.wait()
        a_done.set()

    try:
        run = engine.submit(run_a)
        assert a_running.wait(30)
        engine.handed.clear()
        answers: list[bool] = []
        deadline = Deadline.start(None)

        def validate_b() -> None:
            try:
                with deadline.bound():
                    answers.append("ProbeNode" in comfy.module.NODE_CLASS_MAPPINGS)  # type: ignore[attr-defined]
            finally:
                engine.handed.set()

        lane = threading.Thread(target=validate_b, name="lazytest-lane")
        lane.start()
        # Either B's lane handed the import to the engine (right), or it is done (wrong:
        # it imported the pack beside A's run, or failed to on a thread with no loop).
        assert engine.handed.wait(30)
        assert lane.is_alive() and answers == [], f"B's lane did not wait: {answers}"
        assert probe.imports == [], "the pack was imported while job A ran"
        release.set()
        run.result(30)
        lane.join(30)
        assert answers == [True]
        assert probe.imports == [("lazytest-engine", server_loop)]
        assert a_done.is_set()
    finally:
        release.set()
        server_loop.close()


def test_a_lane_stops_waiting_for_an_import_when_its_job_is_cancelled(
    world: World, probe: types.SimpleNamespace
) -> None:
    """The engine is busy with a run that does not end yet; B is cancelled meanwhile: its
    lane gets the cancel error at once, and the import still happens after the run."""
    world.boot()
    comfy, lazy = world.boot()
    probe.imports.clear()
    engine, server_loop = _Engine(), asyncio.new_event_loop()
    lazy.turn = ImportTurn(engine, server_loop)
    release = threading.Event()
    try:
        run = engine.submit(release.wait)
        engine.handed.clear()
        deadline = Deadline.start(None)
        errors: list[BaseException] = []

        def validate_b() -> None:
            with deadline.bound():
                try:
                    _ = "ProbeNode" in comfy.module.NODE_CLASS_MAPPINGS  # type: ignore[attr-defined]
                except JobInterruptedError as exc:
                    errors.append(exc)
                finally:
                    engine.handed.set()

        lane = threading.Thread(target=validate_b)
        lane.start()
        assert engine.handed.wait(30)
        deadline.cancel()
        lane.join(30)
        assert not lane.is_alive()
        assert [str(e.message) for e in errors] == [
            "The job was cancelled and stopped while a node pack it uses was imported on first use"
        ]
        assert probe.imports == []
        release.set()
        run.result(30)
        engine.submit(lambda: None).result(30)  # the import queued behind the run is done
        assert [thread for thread, _ in probe.imports] == ["lazytest-engine"]
    finally:
        release.set()
        server_loop.close()


def test_a_lookup_during_a_run_imports_at_once_on_the_engine_thread(
    world: World, probe: types.SimpleNamespace
) -> None:
    """Inspire Pack looks other packs' node types up while its node runs: that lookup is
    on the engine thread already, inside the run's loop, and cannot wait for itself."""
    world.boot()
    comfy, lazy = world.boot()
    probe.imports.clear()
    engine, server_loop = _Engine(), asyncio.new_event_loop()
    lazy.turn = ImportTurn(engine, server_loop)

    async def node() -> tuple[bool, Any]:
        found = "ProbeNode" in comfy.module.NODE_CLASS_MAPPINGS  # type: ignore[attr-defined]
        return found, asyncio.get_running_loop()

    def run() -> tuple[bool, Any]:
        loop = asyncio.new_event_loop()
        try:
            return loop.run_until_complete(node())
        finally:
            loop.close()

    try:
        found, run_loop = engine.submit(run).result(30)
        assert found
        assert probe.imports == [("lazytest-engine", run_loop)]
    finally:
        server_loop.close()


def test_a_pack_that_found_no_module_a_later_pack_provides_loads_at_boot(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A pack that tries a module at import and goes on without it made its choice in
    ComfyUI's order; imported later, it would find what a pack after it provides. A module
    nothing provides, and one a finder appended during the import resolves (``six``'s),
    keep nothing at boot."""
    linked = tmp_path / "provided"
    linked.mkdir()
    (linked / "lazytest_linked.py").write_text("X = 1\n")
    own = str(tmp_path / "own" / "lazytest_own.py")  # only its pack's own finder finds it
    Path(own).parent.mkdir()
    Path(own).write_text("Y = 2\n")
    packs_dir = world.packs[0].parent
    world.packs = [
        _node_file(
            packs_dir,
            "aaa_optional",
            ["OptionalNode"],
            extra="try:\n    import lazytest_linked\nexcept ImportError:\n    lazytest_linked = None\n",
        ),
        _node_file(
            packs_dir,
            "bbb_alone",
            ["AloneNode"],
            extra=(
                "import sys\n"
                "try:\n    import lazytest_never\nexcept ImportError:\n    pass\n"
                "class _Own:\n"
                "    def find_spec(self, name, path, target=None):\n"
                "        if name == 'lazytest_own':\n"
                "            import importlib.util\n"
                f"            return importlib.util.spec_from_file_location(name, {own!r})\n"
                "sys.meta_path.append(_Own())\n"
                "import lazytest_own\n"
            ),
        ),
        _node_file(
            packs_dir,
            "zzz_provider",
            ["ProviderNode"],
            extra=f"import sys\nsys.path.append({str(linked)!r})\n",
        ),
    ]
    caplog.set_level(logging.INFO, logger="engine.runtime.lazy_nodes")
    try:
        world.boot()
        assert (
            "custom node pack aaa_optional.py loads at boot: its import looked for module "
            "lazytest_linked, which a pack loaded after it provides" in caplog.text
        )
        comfy, lazy = world.boot()
        assert "aaa_optional.py" in comfy.imported and "zzz_provider.py" in comfy.imported
        assert [Path(p).name for p in lazy.deferred_packs()] == ["bbb_alone.py"]
    finally:
        while str(linked) in sys.path:
            sys.path.remove(str(linked))
        sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "_Own"]
        for name in ("lazytest_linked", "lazytest_own"):
            sys.modules.pop(name, None)


def test_a_pack_that_registers_a_module_another_pack_imports_loads_at_boot(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """A pack puts a module of its own into ``sys.modules``; another pack's node imports
    it when it runs. Deferred, the first would not have run when the second's node does."""
    packs_dir = world.packs[0].parent
    world.packs = [
        _node_file(
            packs_dir,
            "registrar",
            ["RegistrarNode"],
            extra=(
                "import sys, types\n"
                "sys.modules['lazytest_shared'] = types.ModuleType('lazytest_shared')\n"
            ),
        ),
        _node_file(
            packs_dir,
            "user",
            ["UserNode"],
            extra="def run():\n    from lazytest_shared import thing\n    return thing\n",
        ),
        _node_file(packs_dir, "quiet", ["QuietNode"], extra="import json\n"),
    ]
    caplog.set_level(logging.INFO, logger="engine.runtime.lazy_nodes")
    try:
        world.boot()
        assert (
            "custom node pack registrar.py loads at boot: its module is looked up by name in "
            "user's code" in caplog.text
        )
        comfy, lazy = world.boot()
        assert comfy.imported == ["registrar.py"]
        assert sorted(Path(p).name for p in lazy.deferred_packs()) == ["quiet.py", "user.py"]
    finally:
        sys.modules.pop("lazytest_shared", None)
