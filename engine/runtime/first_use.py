"""Node files registered by name at boot, imported the first time a job names one of
their node types.

A first use is imported on the engine thread, between runs (:attr:`FirstUseImports.turn`,
:mod:`engine.runtime.import_turn`), with ComfyUI's ``ignore`` set of built-in names the
boot gave the file, through the loader the boot used (for a pack: the import recorder of
``pack_imports``, so a failure is reported as a boot failure is); then the boot's patches
that follow a load run (:attr:`FirstUseImports.on_loaded`): the pack fixes again after a
pack, and a patch of a node class the file defines. Files with no node types of their
own (the API nodes' ``canary.py``, which checks their dependencies) are imported before
the first file of their group that loads lazily, in ComfyUI's order; when one fails, none
of its group loads, as in ComfyUI.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from engine.runtime.node_index import NodeIndex

log = logging.getLogger(__name__)

LoadCustomNode = Callable[..., Awaitable[bool]]
"""ComfyUI's ``nodes.load_custom_node(module_path, ignore=set(), module_parent=...)``."""


class FirstUseImports:
    """The node types whose file is not imported yet, and the import of each on first use.

    :class:`~engine.runtime.lazy_nodes.LazyNodes` fills it at boot; the lazy mappings
    (:mod:`engine.runtime.lazy_mapping`) ask it for a name or for every pending file.
    """

    def __init__(self, nodes: Any, index: NodeIndex) -> None:
        self._nodes = nodes
        self._new = index
        """The index this boot makes: which file provides which node types, in order."""
        self._lock = threading.RLock()
        self._pending: dict[str, str] = {}
        """Node type -> the file that provides it, for files not imported yet."""
        self._preludes: dict[str, list[str]] = {}
        """Group -> its nameless files not imported yet, in order."""
        self._load: LoadCustomNode | None = None
        self.names_only = False
        """True while ComfyUI loads packs: a walk of the keys lists pending names."""
        self.loaded_lazily: list[str] = []
        """Files imported after boot, in order (for logs and tests)."""
        self.failed_lazily: dict[str, str] = {}
        """File -> why it did not provide its node types when asked for."""
        self._ignore: dict[str, frozenset[str]] = {}
        """Deferred pack -> the built-in names ComfyUI told its import to leave alone."""
        self.on_loaded: Callable[[str, str], None] | None = None
        """Called with a file's path and group once it loaded lazily, a pack or one of
        ComfyUI's own: the patches that follow a load (``Patches.after_lazy_load``)."""
        self.turn: Callable[[Callable[[], None]], None] | None = None
        """Runs a first-use import where imports belong (``import_turn``: on the engine
        thread, between runs); None: on the calling thread."""

    def known(self, name: str) -> bool:
        """Whether ``name`` is a node type, loaded or pending, without importing anything."""
        return dict.__contains__(self._nodes.NODE_CLASS_MAPPINGS, name) or name in self._pending

    def count(self) -> int:
        """How many node types there are, loaded or pending, without importing anything."""
        classes = self._nodes.NODE_CLASS_MAPPINGS
        return len(dict.keys(classes) | self._pending.keys())

    def pending_names(self) -> set[str]:
        """Node types registered by name whose file is not imported yet."""
        with self._lock:
            return set(self._pending)

    def load_for(self, name: str) -> bool:
        """Import the file that provides ``name``, if pending; whether one was imported."""
        path = self._pending.get(name)
        if path is None:
            return False
        self._in_turn(lambda: self._load_file(path))
        return True

    def load_all(self) -> None:
        """Import every pending file, in ComfyUI's order."""
        if self._pending:
            self._in_turn(self._load_pending)

    def _load_pending(self) -> None:
        with self._lock:
            pending = set(self._pending.values())
            order = [p for p in self._new.files if p in pending]
        for path in order:
            self._load_file(path)

    def _in_turn(self, load: Callable[[], None]) -> None:
        turn = self.turn
        if turn is None:
            load()
        else:
            turn(load)

    def _load_file(self, path: str) -> None:
        with self._lock:
            entry = self._new.files[path]
            if not any(self._pending.get(n) == path for n in entry.names):
                return  # imported already (by this thread, further up, or by another)
            for name in entry.names:
                self._pending.pop(name, None)
            for prelude in self._preludes.pop(entry.group, []):
                if not self._import(prelude, entry.group):
                    # As ComfyUI: when the canary fails, none of its group loads.
                    self._fail_group(entry.group, f"{Path(prelude).name} failed to import")
                    return
            if not self._import(path, entry.group):
                self.failed_lazily[path] = "it failed to import (see the log above)"
                return
            missing = [
                n for n in entry.names if not dict.__contains__(self._nodes.NODE_CLASS_MAPPINGS, n)
            ]
            if missing:
                self.failed_lazily[path] = f"it no longer defines {', '.join(missing)}"
                log.warning("%s no longer defines %s", path, ", ".join(missing))

    def _fail_group(self, group: str, why: str) -> None:
        for name, path in list(self._pending.items()):
            if self._new.files[path].group == group:
                self._pending.pop(name, None)
                self.failed_lazily[path] = why

    def _import(self, path: str, group: str) -> bool:
        load = self._load or self._nodes.load_custom_node
        log.info("importing %s for its node types, on first use", Path(path).name)
        self.loaded_lazily.append(path)
        ignore = self._ignore.get(path, frozenset())
        ok = bool(_run_now(load(path, ignore, module_parent=group)))
        if ok and self.on_loaded is not None:
            self.on_loaded(path, group)
        return ok


def _run_now(awaitable: Awaitable[bool]) -> bool:
    """Run ComfyUI's ``load_custom_node`` coroutine to its end, here, without an event loop.

    It awaits only a V3 file's ``comfy_entrypoint()`` and ``get_node_list()``, which
    return without suspending in every ComfyUI node file. Running it in the calling
    thread (not on a loop, which may already run in this thread: validation runs on one)
    lets a file that looks a node type up while it imports load that one in turn.
    """
    coroutine: Any = awaitable
    try:
        coroutine.send(None)
    except StopIteration as done:
        return bool(done.value)
    coroutine.close()
    log.error("a node file's entry point waited on I/O while it loaded; its node types are lost")
    return False
