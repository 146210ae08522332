"""What a pack's import changed (engine/runtime/pack_evidence.py), without ComfyUI.

A folder stands in for the ComfyUI checkout: modules imported from it are "ComfyUI's",
and a test's "pack" is a function that changes what a real pack's import might.
``tests/engine/test_lazy_packs_real.py`` records the five real packs.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.runtime import pack_evidence
from engine.runtime.pack_evidence import Evidence, FolderChange


@pytest.fixture
def checkout(tmp_path: Path) -> Iterator[Path]:
    """A checkout holding ``evmod.py`` and the package ``evpkg`` (``evpkg.sub`` not imported)."""
    root = tmp_path / "ComfyUI"
    (root / "evpkg").mkdir(parents=True)
    (root / "evmod.py").write_text(
        "SAMPLERS = ['euler']\n"
        "def run():\n    return 1\n"
        "class Sampler:\n    steps = 20\n    def sample(self):\n        return 0\n"
    )
    (root / "evpkg" / "__init__.py").write_text("")
    (root / "evpkg" / "sub.py").write_text("X = 1\n")
    sys.path.insert(0, str(root))
    importlib.import_module("evmod")
    importlib.import_module("evpkg")
    try:
        yield root
    finally:
        sys.path.remove(str(root))
        for name in ("evmod", "evpkg", "evpkg.sub"):
            sys.modules.pop(name, None)


def _folder_paths(models: Path) -> Any:
    return types.SimpleNamespace(
        models_dir=str(models),
        folder_names_and_paths={"checkpoints": ([str(models / "checkpoints")], {".safetensors"})},
        filename_list_cache={},
    )


def _evidence(checkout: Path, folder_paths: Any, pack: Callable[[], None]) -> Evidence:
    before = pack_evidence.take(checkout, [], folder_paths)
    pack()
    after = pack_evidence.take(checkout, [], folder_paths)
    return pack_evidence.compare(before, after, folder_paths.models_dir)


def test_a_pack_that_changes_nothing_may_load_lazily(checkout: Path, tmp_path: Path) -> None:
    evidence = _evidence(checkout, _folder_paths(tmp_path / "models"), lambda: None)
    assert evidence == Evidence()


def test_rebinding_a_comfyui_function_keeps_the_pack_eager(checkout: Path, tmp_path: Path) -> None:
    module = sys.modules["evmod"]

    def pack() -> None:
        module.run = lambda: 2  # type: ignore[attr-defined]

    evidence = _evidence(checkout, _folder_paths(tmp_path / "models"), pack)
    assert evidence.eager_because == ("rebound evmod.run",)


def test_patching_a_class_or_adding_to_a_list_keeps_the_pack_eager(
    checkout: Path, tmp_path: Path
) -> None:
    module: Any = sys.modules["evmod"]

    def pack() -> None:
        module.Sampler.sample = lambda self: 1
        module.SAMPLERS.append("my_sampler")  # how packs add samplers to ComfyUI's lists

    evidence = _evidence(checkout, _folder_paths(tmp_path / "models"), pack)
    assert set(evidence.eager_because) == {
        "rebound evmod.Sampler.sample",
        "changed the contents of evmod.SAMPLERS",
    }


def test_a_snapshot_never_walks_a_mapping_through_its_own_methods(
    checkout: Path, tmp_path: Path
) -> None:
    """The worker's lazy node mapping imports every deferred file on a walk."""

    class Walked(dict[str, int]):
        def __iter__(self) -> Any:
            raise AssertionError("walked")

        def keys(self) -> Any:
            raise AssertionError("walked")

        def values(self) -> Any:
            raise AssertionError("walked")

        def items(self) -> Any:
            raise AssertionError("walked")

    module: Any = sys.modules["evmod"]
    module.MAPPING = Walked(a=1)

    def pack() -> None:
        dict.__setitem__(module.MAPPING, "b", 2)

    evidence = _evidence(checkout, _folder_paths(tmp_path / "models"), pack)
    assert evidence.eager_because == ("changed the contents of evmod.MAPPING",)


def test_importing_a_submodule_of_comfyui_is_not_a_change(checkout: Path, tmp_path: Path) -> None:
    evidence = _evidence(
        checkout, _folder_paths(tmp_path / "models"), lambda: importlib.import_module("evpkg.sub")
    )
    assert evidence.eager_because == ()


def test_global_changes_keep_the_pack_eager(checkout: Path, tmp_path: Path) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, daemon=True)

    first, last = _Finder(), _Finder()

    def pack() -> None:
        sys.path.append(str(tmp_path / "pack"))
        sys.meta_path.insert(0, first)  # ahead of the path finder: may shadow modules
        sys.meta_path.append(last)
        thread.start()

    try:
        evidence = _evidence(checkout, _folder_paths(tmp_path / "models"), pack)
    finally:
        sys.path.remove(str(tmp_path / "pack"))
        sys.meta_path.remove(first)
        sys.meta_path.remove(last)
        stop.set()
        thread.join()
    assert set(evidence.eager_because) == {
        "changed sys.path",
        "changed sys.meta_path",
        "left 1 thread(s) running",
    }


def test_a_handler_for_any_signal_keeps_the_pack_eager(checkout: Path, tmp_path: Path) -> None:
    """Only the main thread may set one: a first use imports on the engine thread, where
    the pack's import would raise. SIGUSR1 is none of the signals a server watches."""
    previous = signal.getsignal(signal.SIGUSR1)
    try:
        evidence = _evidence(
            checkout,
            _folder_paths(tmp_path / "models"),
            lambda: signal.signal(signal.SIGUSR1, lambda number, frame: None),
        )
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert evidence.eager_because == ("set a handler for SIGUSR1 (main thread only)",)


def test_a_finder_appended_to_the_meta_path_is_not_a_change(checkout: Path, tmp_path: Path) -> None:
    """``six`` appends one for ``six.moves``: it resolves only names nothing else does."""
    last = _Finder()
    try:
        evidence = _evidence(
            checkout, _folder_paths(tmp_path / "models"), lambda: sys.meta_path.append(last)
        )
    finally:
        sys.meta_path.remove(last)
    assert evidence.eager_because == ()


def test_a_finder_swapped_for_a_new_one_of_its_kind_at_the_end_is_not_a_change(
    checkout: Path, tmp_path: Path
) -> None:
    """``six`` imported again removes its old finder and appends a new one."""
    old, new = _Finder(), _Finder()
    sys.meta_path.append(old)

    def pack() -> None:
        sys.meta_path.remove(old)
        sys.meta_path.append(new)

    try:
        evidence = _evidence(checkout, _folder_paths(tmp_path / "models"), pack)
        assert evidence.eager_because == ()
        # A finder gone, with none of its kind added: its names no longer resolve.
        evidence = _evidence(
            checkout, _folder_paths(tmp_path / "models"), lambda: sys.meta_path.remove(new)
        )
    finally:
        for finder in (old, new):
            if finder in sys.meta_path:
                sys.meta_path.remove(finder)
    assert evidence.eager_because == ("changed sys.meta_path",)


class _Finder:
    """A meta path finder that finds nothing."""

    def find_spec(self, *args: Any) -> None:
        return None


def test_environment_variables_are_recorded_and_replayed(
    checkout: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EV_GONE", "x")
    monkeypatch.delenv("EV_SET", raising=False)

    def pack() -> None:
        os.environ["EV_SET"] = "1"
        del os.environ["EV_GONE"]

    folder_paths = _folder_paths(tmp_path / "models")
    evidence = _evidence(checkout, folder_paths, pack)
    assert evidence.eager_because == ()
    assert evidence.environ == {"EV_GONE": ("x", None), "EV_SET": (None, "1")}
    monkeypatch.setenv("EV_GONE", "x")
    monkeypatch.delenv("EV_SET")
    plan = pack_evidence.environ_replay(evidence)
    assert plan == {"EV_GONE": None, "EV_SET": "1"}
    pack_evidence.replay(folder_paths, evidence, plan)
    assert os.environ.get("EV_SET") == "1"
    assert "EV_GONE" not in os.environ


def test_a_path_list_extended_around_its_value_is_extended_around_todays(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OpenCV prepends its folders to LD_LIBRARY_PATH; a container may hold other folders."""
    evidence = Evidence(environ={"EV_LIBS": ("/build/lib", "/cv2/libs:/build/lib")})
    monkeypatch.setenv("EV_LIBS", "/usr/local/nvidia/lib64")
    assert pack_evidence.environ_replay(evidence) == {
        "EV_LIBS": "/cv2/libs:/usr/local/nvidia/lib64"
    }


@pytest.mark.parametrize("today", [None, "other"])
def test_a_variable_set_otherwise_today_cannot_be_replayed(
    monkeypatch: pytest.MonkeyPatch, today: str | None
) -> None:
    """ultralytics sets OMP_NUM_THREADS=1 only where it is unset: the record cannot tell."""
    evidence = Evidence(environ={"EV_THREADS": ("4", "1"), "EV_NEW": (None, "on")})
    monkeypatch.setenv("EV_THREADS", "4")
    if today is None:
        monkeypatch.setenv("EV_NEW", "already")
    else:
        monkeypatch.setenv("EV_THREADS", today)
    assert pack_evidence.environ_replay(evidence) is None


def test_a_variable_that_may_hold_a_secret_is_not_recorded(
    checkout: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EV_API_KEY", raising=False)

    def pack() -> None:
        os.environ["EV_API_KEY"] = "sk-123"

    try:
        evidence = _evidence(checkout, _folder_paths(tmp_path / "models"), pack)
    finally:
        os.environ.pop("EV_API_KEY", None)
    assert evidence.environ == {}
    assert evidence.eager_because == ("set environment variable EV_API_KEY (may hold a secret)",)


def test_folder_changes_replay_against_another_models_folder(
    checkout: Path, tmp_path: Path
) -> None:
    """As ReActor (replaces an entry with its own folder) and PuLID (a new name) do."""
    built = _folder_paths(tmp_path / "build" / "models")
    built.folder_names_and_paths["facerestore_models"] = (["/volume/facerestore"], {".pth"})

    def pack() -> None:
        table = built.folder_names_and_paths
        table["facerestore_models"] = ([str(tmp_path / "build/models/facerestore_models")], {".pt"})
        table["pulid"] = ([str(tmp_path / "build/models/pulid"), "/abs/pulid"], {".safetensors"})

    evidence = _evidence(checkout, built, pack)
    assert evidence.eager_because == ()
    assert evidence.folders == {
        "facerestore_models": FolderChange(True, ("$models/facerestore_models",), (".pt",)),
        "pulid": FolderChange(False, ("$models/pulid", "/abs/pulid"), (".safetensors",)),
    }
    # Another machine: another models folder, a yaml with its own facerestore folder.
    here = _folder_paths(tmp_path / "run" / "models")
    here.folder_names_and_paths["facerestore_models"] = (["/other/facerestore"], {".pth"})
    here.filename_list_cache["pulid"] = (["stale"], {}, 0.0)
    pack_evidence.replay(here, evidence, {})
    assert here.folder_names_and_paths["facerestore_models"] == (
        [str(tmp_path / "run/models/facerestore_models")],
        {".pt"},
    )
    assert here.folder_names_and_paths["pulid"] == (
        [str(tmp_path / "run/models/pulid"), "/abs/pulid"],
        {".safetensors"},
    )
    assert "pulid" not in here.filename_list_cache
    assert FolderChange.from_json(evidence.folders["pulid"].to_json()) == evidence.folders["pulid"]
