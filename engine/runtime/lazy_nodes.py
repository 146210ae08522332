"""ComfyUI's own node files imported when a job first names one of their node types.

ComfyUI's ``main.py`` imports every file of ``comfy_extras/`` (75 in 0.3.64) and of
``comfy_api_nodes/`` (21) at every start, for node types most jobs never use
(docs/benchmarks.md has the seconds). Here the first boot imports them all, as
ComfyUI does, and writes down which node types each file added: the *index*. Later
boots with the same files register only the names; a file is imported the first time
one of its node types is asked for.

Invisible to callers: ``nodes.NODE_CLASS_MAPPINGS`` and ``NODE_DISPLAY_NAME_MAPPINGS``
become :class:`LazyMapping`, a ``dict`` that imports the file behind a name on
``m[name]``, ``name in m`` and ``m.get(name)``, and imports every file on a full walk
(``keys``, ``items``, ``values``, iteration, ``len``). So ComfyUI's validation and
execution, the packs and the UI-format converter see the same mapping as before.

Custom node packs may load lazily too, decided per pack from evidence taken when the
index is made (:mod:`engine.runtime.pack_evidence`): a pack's import may patch ComfyUI
or torch, which must happen at boot. A pack whose import changed nothing but its node
mappings, folder entries of ``folder_paths`` and environment variables is deferred;
those two are replayed at its place in the boot, so later steps see what an eager boot
makes. Any other change keeps it eager, and the boot log says which, as does a pack that
reaches another pack's modules its own way (:mod:`engine.runtime.pack_links`). A first
use is imported on the engine thread, between runs (:attr:`LazyNodes.turn`,
:mod:`engine.runtime.import_turn`). A deferred pack
still claims its folder name at boot (a later folder of that name stays skipped,
``pack_imports``), is imported with ComfyUI's ``ignore`` set of built-in names, goes
through the import recorder (a failure is reported as a boot failure is), and is
followed by the boot's pack fixes again (``on_pack_loaded``). Without a recorder
(``LAZY_PACKS=false``) every pack loads at boot, as ComfyUI does.

Kept eager (imported at boot as today), so that what a job sees never depends on
order: files that failed to import when the index was made (their warning shows at
every boot, as in ComfyUI), files that define a node type another file also defines
(the last one wins in ComfyUI), packs that defined no node type, and every file of a
group named eager (the API nodes when a Comfy.org key is configured).

The index is valid for one key (ComfyUI's version, the Python, the custom node
folders' entries and mtimes) and each file's size and mtime; a file that changed is
imported at boot and indexed again. Files with no node types of their own (the API
nodes' ``canary.py``, which checks their dependencies) are imported before the first
file of their group that loads lazily, in ComfyUI's order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from engine.runtime.pack_evidence import Evidence, FolderChange
from engine.runtime.pack_links import Misses, named_packs, provided_now, registered_modules

log = logging.getLogger(__name__)

LAZY_GROUPS = ("comfy_extras", "comfy_api_nodes")
"""ComfyUI's ``module_parent`` values of its own node files: the ones that may load lazily."""
PACKS = "custom_nodes"
"""ComfyUI's ``module_parent`` of custom node packs: lazy only with evidence (module doc)."""

INDEX_VERSION = 6
"""Bumped when the index file's layout, or what decides a pack's entry, changes: an older
file is then rebuilt."""

LoadCustomNode = Callable[..., Awaitable[bool]]
"""ComfyUI's ``nodes.load_custom_node(module_path, ignore=set(), module_parent=...)``."""


class PackRecorder(Protocol):
    """Takes what a pack's import changed, and replays a deferred pack's (pack_evidence)."""

    def take(self) -> Any:
        """A snapshot, just before or after one pack's import."""
        ...

    def compare(self, before: Any, after: Any) -> Evidence:
        """What the import between two snapshots changed."""
        ...

    def replay(self, evidence: Evidence) -> bool:
        """Make a deferred pack's recorded folder and environment changes; False (nothing
        changed) when they cannot be replayed exactly here: the pack loads at boot."""
        ...


@dataclass(frozen=True)
class FileEntry:
    """One node file as the index knows it."""

    group: str
    size: int
    mtime_ns: int
    names: tuple[str, ...]
    lazy: bool
    """False: imported at every boot (it failed, or shares a node type with another file)."""
    evidence: Evidence = field(default_factory=Evidence)
    """A pack's: what its import changed (the replayable part, and why it stays eager)."""

    def matches(self, path: str) -> bool:
        """Whether the file (a pack: its Python files) on disk is still the one indexed."""
        return stamp(path) == (self.size, self.mtime_ns)


_STAMP_MAX_ENTRIES = 5000
"""Entries a pack folder's stamp looks at, at most: a pack that ships a dataset or a
``node_modules`` tree is not walked whole at every boot (a network volume lists slowly)."""


def stamp(path: str) -> tuple[int, int] | None:
    """A node file's size and mtime; a pack folder's: its Python files' total size and
    newest mtime (~15 ms for the five packs' 239 files), so an update of any of its
    modules is seen. Not the folder's own mtime: packs write caches and settings into
    their folder when they start. Hidden folders and ``__pycache__`` are skipped, and
    the walk stops after :data:`_STAMP_MAX_ENTRIES` entries (in the file system's
    order, the same at every boot). None when it is gone."""
    try:
        if not Path(path).is_dir():
            stat = Path(path).stat()
            return stat.st_size, stat.st_mtime_ns
        size, newest, seen = 0, 0, 0
        for root, folders, files in os.walk(path):
            folders[:] = [f for f in folders if not f.startswith(".") and f != "__pycache__"]
            seen += len(folders) + len(files)
            for name in files:
                if name.endswith(".py"):
                    stat = Path(root, name).stat()
                    size, newest = size + stat.st_size, max(newest, stat.st_mtime_ns)
            if seen >= _STAMP_MAX_ENTRIES:
                break
    except OSError:
        return None
    return size, newest


@dataclass
class NodeIndex:
    """Node file path -> what it adds; in ComfyUI's load order."""

    key: str
    files: dict[str, FileEntry] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path, key: str | None) -> NodeIndex | None:
        """The index at ``path`` if it was made for ``key`` (None: for any key); ``None``
        if absent or stale."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(raw, dict) or raw.get("version") != INDEX_VERSION:
            return None
        if key is not None and raw.get("key") != key:
            return None
        key = str(raw.get("key"))
        files = {
            str(p): FileEntry(
                group=str(e["group"]),
                size=int(e["size"]),
                mtime_ns=int(e["mtime_ns"]),
                names=tuple(str(n) for n in e["names"]),
                lazy=bool(e["lazy"]),
                evidence=_evidence_from_json(e.get("evidence") or {}),
            )
            for p, e in raw.get("files", {}).items()
        }
        return cls(key=key, files=files)

    def write(self, path: Path) -> None:
        """Write atomically: a boot beside this one reads the old file or the new one."""
        body = {
            "version": INDEX_VERSION,
            "key": self.key,
            "files": {
                p: {
                    "group": e.group,
                    "size": e.size,
                    "mtime_ns": e.mtime_ns,
                    "names": list(e.names),
                    "lazy": e.lazy,
                    **({"evidence": _evidence_to_json(e.evidence)} if e.group == PACKS else {}),
                }
                for p, e in self.files.items()
            },
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(body, indent=1, sort_keys=True), encoding="utf-8")
        tmp.replace(path)


def _evidence_to_json(evidence: Evidence) -> dict[str, Any]:
    return {
        "folders": {k: v.to_json() for k, v in evidence.folders.items()},
        "environ": {k: list(v) for k, v in evidence.environ.items()},
        "eager_because": list(evidence.eager_because),
    }


def _evidence_from_json(raw: dict[str, Any]) -> Evidence:
    return Evidence(
        folders={str(k): FolderChange.from_json(v) for k, v in raw.get("folders", {}).items()},
        environ={
            str(k): (_text_or_none(old), _text_or_none(new))
            for k, (old, new) in raw.get("environ", {}).items()
        },
        eager_because=tuple(str(r) for r in raw.get("eager_because", [])),
    )


def _text_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def index_key(comfy_version: str, custom_node_dirs: Iterable[str]) -> str:
    """What the whole index depends on besides each file's own size and mtime.

    The Python (its version and its environment's path) decides what an import can
    find; the custom node folders' entries change when a pack is added or removed, and
    a pack's ``__init__.py`` (a single-file pack: the file) when it is updated. Not the
    pack folder's own mtime: packs write caches and settings into their folder at their
    first start (ReActor, rgthree), which would change the key on every new container.
    """
    packs: list[str] = []
    for folder in custom_node_dirs:
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    marker = (
                        Path(entry.path) / "__init__.py" if entry.is_dir() else Path(entry.path)
                    )
                    try:
                        stamp = str(marker.stat().st_mtime_ns)
                    except OSError:
                        stamp = "-"
                    packs.append(f"{folder}/{entry.name}:{stamp}")
        except OSError:
            packs.append(f"{folder}:absent")
    parts = [comfy_version, sys.version, sys.prefix, *sorted(packs)]
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()


def index_path(folder: Path, key: str) -> Path:
    """Where the index for ``key`` lives in ``folder``: one file per key and layout, so
    two environments (a dev venv and the image's) or two worker versions sharing a
    checkout keep one each instead of rewriting each other's."""
    return folder / f"node-index-v{INDEX_VERSION}-{key[:16]}.json"


class LazyMapping(dict[str, Any]):
    """A node mapping that imports a node type's file when that type is first asked for.

    Looking one name up (``m[k]``, ``k in m``, ``m.get(k)``) imports at most the file
    that provides it; a full walk imports every pending file first, so it sees every
    node type. Writes are plain ``dict`` writes (ComfyUI's loader fills it).
    """

    def __init__(self, data: dict[str, Any], owner: LazyNodes) -> None:
        super().__init__(data)
        self._owner = owner

    def __missing__(self, key: str) -> Any:
        if self._owner.load_for(key) and dict.__contains__(self, key):
            return dict.__getitem__(self, key)
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        if dict.__contains__(self, key):
            return True
        return isinstance(key, str) and self._owner.load_for(key) and dict.__contains__(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        """``dict.get``, after importing the file behind ``key`` if it is pending."""
        if key in self:
            return dict.__getitem__(self, key)
        return default

    def _full(self) -> None:
        self._owner.load_all()

    def keys(self) -> Any:
        """Every node type; while ComfyUI loads packs, the pending names without importing."""
        if self._owner.names_only:
            return dict.keys(self) | self._owner.pending_names()
        self._full()
        return dict.keys(self)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def items(self) -> Any:
        """Every node type and its class, after importing every pending file."""
        self._full()
        return dict.items(self)

    def values(self) -> Any:
        """Every class, after importing every pending file."""
        self._full()
        return dict.values(self)

    def copy(self) -> dict[str, Any]:
        """A plain ``dict`` of every node type."""
        self._full()
        return dict(dict.items(self))

    def __repr__(self) -> str:
        self._full()
        return dict.__repr__(self)

    def __eq__(self, other: object) -> bool:
        self._full()
        return dict.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = None

    def pop(self, key: str, *default: Any) -> Any:
        """``dict.pop``, after importing the file behind ``key`` if it is pending."""
        _ = key in self
        return dict.pop(self, key, *default)

    def setdefault(self, key: str, default: Any = None) -> Any:
        """``dict.setdefault``, after importing the file behind ``key`` if it is pending."""
        _ = key in self
        return dict.setdefault(self, key, default)


class LazyNodes:
    """Owns the index and the two lazy mappings of one ComfyUI ``nodes`` module.

    Use: :meth:`install` before ComfyUI's ``init_extra_nodes`` runs, inside
    :meth:`booting`; then :meth:`save` writes the index if it changed.
    """

    def __init__(
        self,
        nodes: Any,
        index: NodeIndex | None,
        key: str,
        *,
        eager_groups: Sequence[str] = (),
        packs: PackRecorder | None = None,
        evidence_from: NodeIndex | None = None,
    ) -> None:
        self._nodes = nodes
        self._old = index if index is not None and index.key == key else None
        self._packs = packs
        """Set: custom node packs may load lazily, on their evidence (None: all at boot)."""
        self._donor = evidence_from if self._old is None else None
        """An index made for another set of packs (the image's, where a network volume
        adds packs): a pack it knows, unchanged, keeps its evidence without a snapshot.
        Only the evidence: with another set of packs nothing is deferred this boot."""
        self._new = NodeIndex(key=key)
        self._eager_groups = frozenset(eager_groups)
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
        self.deferred: list[str] = []
        """Files registered by name at boot instead of imported."""
        self._ignore: dict[str, frozenset[str]] = {}
        """Deferred pack -> the built-in names ComfyUI told its import to leave alone."""
        self.on_pack_loaded: Callable[[str], None] | None = None
        """Called with a pack's path once it loaded lazily: the boot's pack fixes again."""
        self.turn: Callable[[Callable[[], None]], None] | None = None
        """Runs a first-use import where imports belong (``import_turn``: on the engine
        thread, between runs); None: on the calling thread."""
        self._indexed_now: set[str] = set()
        """Packs whose entry this boot made (their evidence taken or borrowed)."""
        self._misses: dict[str, tuple[str, ...]] = {}
        """Pack -> the modules its import looked for in vain (``pack_links.Misses``)."""
        self._registered: dict[str, tuple[str, ...]] = {}
        """Pack -> the modules its import put into ``sys.modules`` that nothing else
        provides (``pack_links.registered_modules``)."""
        self._last_state: Any = None
        """The snapshot after the pack just imported with evidence: the next one's
        "before", as ComfyUI does nothing between two packs but time them (a snapshot
        walks ~1600 modules, ~0.12 s)."""

    # -- boot -------------------------------------------------------------------------

    def install(self) -> None:
        """Replace ComfyUI's two node mappings with lazy ones holding the same entries."""
        nodes = self._nodes
        for attr in ("NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"):
            current = getattr(nodes, attr)
            if not isinstance(current, LazyMapping):
                setattr(nodes, attr, LazyMapping(dict(current), self))

    @contextmanager
    def booting(self) -> Iterator[None]:
        """While ComfyUI's ``init_extra_nodes`` runs: index or defer its own node files.

        ComfyUI calls ``nodes.load_custom_node`` for each node file; for the duration,
        that name answers with :meth:`_boot_load`.
        """
        self.install()
        original: LoadCustomNode = self._nodes.load_custom_node
        self._load = original
        self.names_only = True

        async def load_custom_node(
            module_path: str, ignore: Any = frozenset(), module_parent: str = "custom_nodes"
        ) -> bool:
            return await self._boot_load(original, module_path, ignore, module_parent)

        self._nodes.load_custom_node = load_custom_node
        try:
            yield
        finally:
            self._nodes.load_custom_node = original
            self.names_only = False
            self._mark_shared_names()
            self._mark_linked_packs()

    async def _boot_load(
        self, original: LoadCustomNode, path: str, ignore: Any, group: str
    ) -> bool:
        last_state, self._last_state = self._last_state, None
        if group not in LAZY_GROUPS and group != PACKS:
            return await original(path, ignore, module_parent=group)
        known = self._old.files.get(path) if self._old else None
        if known is not None and (known.group != group or not known.matches(path)):
            known = None
        if group == PACKS and self._packs is None:
            # Lazy packs off: loaded as ComfyUI does; their entries kept for a later boot.
            if known is not None:
                self._new.files[path] = known
            return await original(path, ignore, module_parent=group)
        if known is not None and known.lazy and group not in self._eager_groups:
            if group == PACKS and not self._defer_pack(original, path, ignore, known):
                return await original(path, ignore, module_parent=group)
            self._new.files[path] = known
            if known.names:
                for name in known.names:
                    self._pending[name] = path
            else:
                self._preludes.setdefault(group, []).append(path)
            self.deferred.append(path)
            return True
        # Imported now, as ComfyUI would; what it adds goes into the index. A pack's
        # evidence is taken only where the index has none for it (index-making boots).
        donor = self._donor.files.get(path) if self._donor and known is None else None
        if donor is not None and (donor.group != group or not donor.matches(path)):
            donor = None
        watch = self._packs if group == PACKS and known is None and donor is None else None
        before_state = None
        if watch is not None:
            before_state = last_state if last_state is not None else watch.take()
        classes = self._nodes.NODE_CLASS_MAPPINGS
        before = {k: id(v) for k, v in dict.items(classes)}
        if watch is not None:
            present = set(sys.modules)
            with Misses() as misses:
                ok = await original(path, ignore, module_parent=group)
            self._misses[path] = misses.names
            self._registered[path] = registered_modules(present)
        else:
            ok = await original(path, ignore, module_parent=group)
        added = tuple(k for k, v in dict.items(classes) if before.get(k) != id(v))
        overrides = any(k in before for k in added)
        stamped = stamp(path)
        if stamped is None:
            return ok
        recorded = known if known is not None else donor
        evidence = recorded.evidence if recorded is not None else Evidence()
        if watch is not None:
            self._last_state = watch.take()
            evidence = watch.compare(before_state, self._last_state)
        self._new.files[path] = FileEntry(
            group=group,
            size=stamped[0],
            mtime_ns=stamped[1],
            names=added,
            # A file that failed is imported at every boot, so its warning shows each time.
            lazy=bool(ok)
            and not overrides
            and (group != PACKS or (bool(added) and not evidence.eager_because)),
            evidence=evidence,
        )
        if group == PACKS:
            self._indexed_now.add(path)
        if group == PACKS and evidence.eager_because:
            why = "; ".join(evidence.eager_because)
            # The recorder's reasons say what the import did; pack_links' say it whole.
            why = why if why.startswith("its ") else f"its import {why}"
            log.info("custom node pack %s loads at boot: %s", Path(path).name, why)
        return ok

    def _defer_pack(self, load: LoadCustomNode, path: str, ignore: Any, entry: FileEntry) -> bool:
        """Register a pack for later instead of importing it; False: import it now."""
        claim = getattr(load, "claim", None)
        if claim is not None and claim(path) is not None:
            return False  # skipped on purpose (pack_imports says why when it is called)
        assert self._packs is not None
        if not self._packs.replay(entry.evidence):
            log.info(
                "custom node pack %s loads at boot: the environment differs from the one its "
                "import changed when the node index was made",
                Path(path).name,
            )
            return False
        self._ignore[path] = frozenset(ignore or ())
        return True

    def _mark_shared_names(self) -> None:
        """Files whose node types another file also defines load eagerly from now on."""
        owners: dict[str, list[str]] = {}
        for path, entry in self._new.files.items():
            for name in entry.names:
                owners.setdefault(name, []).append(path)
        shared = {p for paths in owners.values() if len(paths) > 1 for p in paths}
        for path in shared:
            entry = self._new.files[path]
            if entry.lazy:
                self._new.files[path] = FileEntry(
                    entry.group, entry.size, entry.mtime_ns, entry.names, lazy=False
                )
        if shared & set(self.deferred):
            # Cannot happen with an index this code wrote; load them now to stay exact.
            for path in sorted(shared & set(self.deferred)):
                self._load_file(path)

    def _mark_linked_packs(self) -> None:
        """Packs that reach another pack's modules their own way load at boot from now on
        (:mod:`engine.runtime.pack_links`): one whose module another pack's code names, and
        one whose import looked for a module that a pack loaded after it provides. Decided
        on a boot that indexes a pack; an index read whole keeps its marks."""
        if self._packs is None or not self._indexed_now:
            return
        packs: dict[str, Path] = {}
        for path, indexed in self._new.files.items():
            if indexed.group == PACKS:  # the first folder of a name loads (pack_imports)
                packs.setdefault(_module_name(path), Path(path))
        registered = {_module_name(p): names for p, names in self._registered.items() if names}
        reasons: dict[str, str] = {}
        for target, referrer in named_packs(packs, registered).items():
            reasons[str(packs[target])] = f"its module is looked up by name in {referrer}'s code"
        for path, names in self._misses.items():
            found = provided_now(names)
            if found is not None and path not in reasons:
                reasons[path] = (
                    f"its import looked for module {found}, which a pack loaded after it provides"
                )
        for path, why in reasons.items():
            entry = self._new.files.get(path)
            if entry is None or not entry.lazy:
                continue
            self._new.files[path] = FileEntry(
                entry.group,
                entry.size,
                entry.mtime_ns,
                entry.names,
                lazy=False,
                evidence=Evidence(entry.evidence.folders, entry.evidence.environ, (why,)),
            )
            log.info("custom node pack %s loads at boot: %s", Path(path).name, why)
            if any(self._pending.get(n) == path for n in entry.names):
                # Deferred on an older index: loaded now, to stay exact.
                self.deferred.remove(path)
                self._load_file(path)

    def save(self, folder: Path) -> Path | None:
        """Write the index into ``folder`` if it differs from the one read; its path."""
        if self._old is not None and self._old.files == self._new.files:
            return None
        path = index_path(folder, self._new.key)
        try:
            self._new.write(path)
        except OSError as exc:
            log.warning("could not write the node index %s: %s", path, exc)
            return None
        return path

    # -- after boot -------------------------------------------------------------------

    def known(self, name: str) -> bool:
        """Whether ``name`` is a node type, loaded or pending, without importing anything."""
        return dict.__contains__(self._nodes.NODE_CLASS_MAPPINGS, name) or name in self._pending

    def count(self) -> int:
        """How many node types there are, loaded or pending, without importing anything."""
        classes = self._nodes.NODE_CLASS_MAPPINGS
        return len(dict.keys(classes) | self._pending.keys())

    def deferred_packs(self) -> list[str]:
        """Custom node packs registered by name at boot instead of imported."""
        return [p for p in self.deferred if self._new.files[p].group == PACKS]

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
        if ok and group == PACKS and self.on_pack_loaded is not None:
            self.on_pack_loaded(path)
        return ok


def _module_name(path: str) -> str:
    """A pack's folder name (a one-file pack: the file's name without ``.py``)."""
    name = Path(path).name
    return name[:-3] if name.endswith(".py") else name


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
