"""What a custom node pack's import changed outside its own modules: can it load later?

A pack imported at boot may patch ComfyUI or torch (replace a function, add a sampler
to a list, set an environment variable): loaded only when a job names one of its node
types, such a change would come too late for the jobs before, and in another order
than ComfyUI's. :func:`take` snapshots what the worker watches before and after one
pack's import, and :func:`compare` says what changed:

- **replayable**: the node mappings (the index holds the names); the folder lists of
  ``folder_paths.folder_names_and_paths`` (:class:`FolderChange`) and environment
  variables (their values before and after; not one whose name looks like a
  credential's, which would be written to disk), both replayed at the pack's place in
  the boot so that later steps see what an eager boot makes (:func:`environ_replay`
  says when a variable set otherwise today cannot be, and the pack then loads at boot); ComfyUI's two per-pack records
  (``nodes.LOADED_MODULE_DIRS``, ``nodes.EXTENSION_WEB_DIRS``), filled when the pack
  loads and read only by ComfyUI's HTTP server, which the worker does not run;
- **anything else** keeps the pack eager, with the reason logged: an attribute of an
  already-imported module of ComfyUI, torch, torchvision, torchaudio, numpy or PIL
  added, rebound or removed (a class attribute of a class they define too, and a
  module-level list, dict or set of ComfyUI changed in place: packs add samplers that
  way), ``builtins``, ``sys.path``, ``sys.meta_path`` (but for finders appended at
  its end), a signal handler (any signal: one can be set only on the main thread,
  where the boot imports packs and a first use does not), the root
  logger's handlers or level, a thread left running, or a watched module replaced in
  ``sys.modules``. A submodule bound on its package by an import is not a change.

Not seen, so not promised: changes inside objects the worker does not walk (a torch
tensor's contents, a C library's global state, a third-party library's module).
``LAZY_PACKS=false`` loads every pack at boot, as ComfyUI does. Runs only on a boot that
writes the node index (at image build in the image; at a cold start only where the set
of packs differs from the build's, a network volume's packs): a snapshot walks ~1600
modules without reading any attribute through its object's own code, ~0.12 s on 2 CPU
cores, one per pack and one more.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import threading
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

WATCHED_PACKAGES = frozenset({"torch", "torchvision", "torchaudio", "numpy", "PIL"})
"""Top-level packages besides ComfyUI's own whose attributes a pack must leave alone."""

_SIGNALS = tuple(
    sorted(s for s in signal.valid_signals() if s not in {signal.SIGKILL, signal.SIGSTOP})
)
"""Every signal a handler can be set for: only the main thread may set one, and only
the boot imports packs there (a first-use import runs on the engine thread)."""

_REPLAYED_NODES_ATTRS = frozenset(
    {
        "NODE_CLASS_MAPPINGS",
        "NODE_DISPLAY_NAME_MAPPINGS",
        "LOADED_MODULE_DIRS",
        "EXTENSION_WEB_DIRS",
    }
)
"""``nodes`` globals a pack's load fills by design: recorded in the index, not evidence."""

_FOLDER_PATHS_CACHES = frozenset({"filename_list_cache", "cache_helper"})
"""``folder_paths`` globals that only cache listings: a pack's lookups fill them."""

_MAX_REASONS = 5
"""Reasons kept per pack (the index and the log line stay short)."""

_SECRET_NAME = re.compile(
    r"(^|_)(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?|AUTH)(_|$)", re.IGNORECASE
)
"""A name part that credentials go by (``HF_TOKEN``, ``AWS_SECRET_ACCESS_KEY``; not
``TOKENIZERS_PARALLELISM``)."""
"""Reasons kept per pack (the index and the log line stay short)."""


@dataclass(frozen=True)
class FolderChange:
    """What a pack did to one entry of ``folder_paths.folder_names_and_paths``.

    Replayed as operations rather than as the final list, because the index is made
    with the image's model paths and read with a container's (a network volume's yaml):
    ``replaced`` drops the folders the entry had, ``added`` appends the pack's own (a
    path under ComfyUI's models folder is kept relative to it), ``extensions`` is the
    entry's extension set afterwards (empty: every file, as ComfyUI spells it).
    """

    replaced: bool
    added: tuple[str, ...]
    extensions: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """The index's form."""
        return {
            "replaced": self.replaced,
            "added": list(self.added),
            "extensions": list(self.extensions),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> FolderChange:
        """Read back what :meth:`to_json` wrote."""
        return cls(
            replaced=bool(raw["replaced"]),
            added=tuple(str(p) for p in raw["added"]),
            extensions=tuple(str(e) for e in raw["extensions"]),
        )


@dataclass(frozen=True)
class Evidence:
    """What one pack's import changed: replayable folder changes and the reasons to stay eager."""

    folders: dict[str, FolderChange] = field(default_factory=dict)
    environ: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    """Environment variables the import changed: (before, after), None where unset."""
    eager_because: tuple[str, ...] = ()
    """Empty when every change can be replayed: the pack may load lazily."""


@dataclass
class Snapshot:
    """Identities (and, for ComfyUI's containers, contents) of what the worker watches."""

    modules: dict[str, int]
    namespaces: dict[str, dict[str, Any]]
    """Module (``name``) or class (``name.Class``) -> a copy of its namespace."""
    marks: dict[str, tuple[tuple[str, ...], tuple[int, ...]]]
    """The same namespaces as their keys and their values' identities: compared whole
    first (in C), walked name by name only where they differ."""
    containers: dict[str, tuple[int, ...]]
    folders: dict[str, tuple[tuple[str, ...], tuple[str, ...]]]
    environ: dict[str, str]
    sys_path: tuple[str, ...]
    meta_path: tuple[tuple[int, str], ...]
    """Each finder's identity and its class's qualified name."""
    signals: tuple[int, ...]
    root_logger: tuple[int, tuple[int, ...]]
    threads: frozenset[int]


def _watched(name: str, module: Any, checkout: str, skip: tuple[str, ...]) -> bool:
    if name == "builtins":
        return True
    if name.partition(".")[0] in WATCHED_PACKAGES:
        return True
    try:  # the module's own dict: a module __getattr__ (PEP 562) may import things
        origin = vars(module).get("__file__")
    except TypeError:
        return False
    return (
        isinstance(origin, str)
        and origin.startswith(checkout)
        and not any(origin.startswith(s) for s in skip)
    )


def _fingerprint(value: Any) -> tuple[int, ...] | None:
    """A container's contents by identity (``list``/``dict``/``set``/``tuple``), else None."""
    try:
        # type(), not isinstance(): isinstance() reads ``__class__``, which some objects
        # answer with a warning (torch.distributed.reduce_op's deprecation).
        # The base types' own methods, never a subclass's: a walk of the worker's lazy
        # node mapping would import every deferred file.
        kind = type(value)
        if issubclass(kind, dict):
            keys, values = list(dict.keys(value)), list(dict.values(value))
            return (len(keys), *map(id, keys), *map(id, values))
        if issubclass(kind, list):
            return (list.__len__(value), *map(id, list.copy(value)))
        if issubclass(kind, tuple):
            return (tuple.__len__(value), *map(id, tuple.__iter__(value)))
        if issubclass(kind, set):
            return (set.__len__(value), *sorted(map(id, set.__iter__(value))))
        if issubclass(kind, frozenset):
            return (frozenset.__len__(value), *sorted(map(id, frozenset.__iter__(value))))
    except RuntimeError:  # changed size while read: another thread; seen as a change
        return (-1,)
    return None


def take(checkout: Path, custom_node_dirs: Iterable[str], folder_paths: Any) -> Snapshot:
    """Everything a pack's import could change that the worker watches, right now."""
    # Reading every attribute of ~1600 modules must not print (or, under pytest's
    # warnings-as-errors, raise) a deprecated attribute's warning.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _take(checkout, custom_node_dirs, folder_paths)


def _take(checkout: Path, custom_node_dirs: Iterable[str], folder_paths: Any) -> Snapshot:
    root = str(checkout) + os.sep
    skip = tuple(str(Path(d)) + os.sep for d in custom_node_dirs)
    replayed = _replayed_ids()
    modules: dict[str, int] = {}
    namespaces: dict[str, dict[str, Any]] = {}
    containers: dict[str, tuple[int, ...]] = {}
    for name, module in list(sys.modules.items()):
        if module is None or not _watched(name, module, root, skip):
            continue
        modules[name] = id(module)
        try:
            namespace = dict(vars(module))
        except TypeError:
            continue
        namespaces[name] = namespace
        own = name.partition(".")[0] not in WATCHED_PACKAGES and name != "builtins"
        for key, value in namespace.items():
            if issubclass(type(value), type):
                if vars(value).get("__module__") == name:
                    members = dict(vars(value))
                    namespaces[f"{name}.{key}"] = members
                    if own:
                        for attr, member in members.items():
                            mark = None if id(member) in replayed else _fingerprint(member)
                            if mark is not None:
                                containers[f"{name}.{key}.{attr}"] = mark
            elif own and id(value) not in replayed:
                mark = _fingerprint(value)
                if mark is not None:
                    containers[f"{name}.{key}"] = mark
    marks = {k: (tuple(v), tuple(map(id, v.values()))) for k, v in namespaces.items()}
    folders = {
        key: (tuple(paths), tuple(sorted(extensions or ())))
        for key, (paths, extensions) in dict(folder_paths.folder_names_and_paths).items()
    }
    root_logger = logging.getLogger()
    return Snapshot(
        modules=modules,
        namespaces=namespaces,
        marks=marks,
        containers=containers,
        folders=folders,
        environ=dict(os.environ),
        sys_path=tuple(sys.path),
        meta_path=tuple(
            (id(f), f"{type(f).__module__}.{type(f).__qualname__}") for f in sys.meta_path
        ),
        signals=tuple(id(signal.getsignal(s)) for s in _SIGNALS),
        root_logger=(root_logger.level, tuple(map(id, root_logger.handlers))),
        threads=frozenset(t.ident or 0 for t in threading.enumerate() if t.is_alive()),
    )


def compare(before: Snapshot, after: Snapshot, models_dir: str) -> Evidence:
    """What changed from ``before`` to ``after``: folder changes, and reasons to stay eager."""
    reasons: list[str] = []
    for name, ident in before.modules.items():
        now = after.modules.get(name)
        if now is None:
            # Packs that clean sys.modules after themselves (ReActor) remove only what
            # they imported; a module of ComfyUI's or torch's gone is a change.
            reasons.append(f"removed module {name} from sys.modules")
        elif now != ident:
            reasons.append(f"replaced module {name} in sys.modules")
    replayed = _replayed_ids()
    for owner, mark in before.marks.items():
        if owner not in after.marks or after.marks[owner] == mark:
            continue  # unchanged, or its module was reported above
        names, current = before.namespaces[owner], after.namespaces[owner]
        for key, value in names.items():
            if key in _ignored(owner) or id(value) in replayed:
                continue
            if key not in current:
                reasons.append(f"removed {owner}.{key}")
            elif current[key] is not value and not _submodule(owner, key, current[key]):
                reasons.append(f"rebound {owner}.{key}")
        for key in current.keys() - names.keys():
            if key in _ignored(owner) or id(current[key]) in replayed:
                continue
            if not _submodule(owner, key, current[key]):
                reasons.append(f"added {owner}.{key}")
    for key, fingerprint in before.containers.items():
        owner, _, attr = key.rpartition(".")
        if attr in _ignored(owner) or id(after.namespaces.get(owner, {}).get(attr)) in replayed:
            continue
        if key in after.containers and after.containers[key] != fingerprint:
            reasons.append(f"changed the contents of {key}")
    environ: dict[str, tuple[str | None, str | None]] = {}
    for key in sorted(before.environ.keys() | after.environ.keys()):
        if before.environ.get(key) == after.environ.get(key):
            continue
        if _SECRET_NAME.search(key):
            # Its value would be written into the index file: not recorded, not replayed.
            reasons.append(f"set environment variable {key} (may hold a secret)")
        else:
            environ[key] = (before.environ.get(key), after.environ.get(key))
    if before.sys_path != after.sys_path:
        reasons.append("changed sys.path")
    if not _finders_only_appended(before.meta_path, after.meta_path):
        reasons.append("changed sys.meta_path")
    for number, old, new in zip(_SIGNALS, before.signals, after.signals, strict=True):
        if old != new:
            reasons.append(f"set a handler for {_signal_name(number)} (main thread only)")
    if before.root_logger != after.root_logger:
        reasons.append("changed the root logger's level or handlers")
    if after.threads - before.threads:
        reasons.append(f"left {len(after.threads - before.threads)} thread(s) running")
    return Evidence(
        folders=_folder_changes(before.folders, after.folders, models_dir),
        environ=environ,
        eager_because=tuple(reasons[:_MAX_REASONS])
        + ((f"and {len(reasons) - _MAX_REASONS} more",) if len(reasons) > _MAX_REASONS else ()),
    )


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _finders_only_appended(
    before: tuple[tuple[int, str], ...], after: tuple[tuple[int, str], ...]
) -> bool:
    """Whether the meta path only gained finders at its end.

    An appended finder sees only names no earlier finder resolves (``six`` appends one
    for ``six.moves``): like a new module, not a change to how anything else imports.
    A finder removed counts as kept when one of its kind was appended: ``six`` imported
    again (ReActor drops the modules it imported, PuLID imports ``six`` anew) swaps its
    old finder for a new one at the end.
    """
    present = {ident for ident, _ in after}
    kept = [entry for entry in before if entry[0] in present]
    if list(after[: len(kept)]) != kept:
        return False
    appended = {kind for _, kind in after[len(kept) :]}
    return all(kind in appended for ident, kind in before if ident not in present)


def _replayed_ids() -> set[int]:
    """Identities of the objects a pack's load fills by design (replayed or recorded)."""
    nodes = sys.modules.get("nodes")
    folder_paths = sys.modules.get("folder_paths")
    objects = [getattr(folder_paths, "folder_names_and_paths", None)]
    objects += [getattr(folder_paths, n, None) for n in _FOLDER_PATHS_CACHES]
    objects += [getattr(nodes, n, None) for n in _REPLAYED_NODES_ATTRS]
    return {id(o) for o in objects if o is not None}


def _ignored(owner: str) -> frozenset[str]:
    if owner == "nodes":
        return _REPLAYED_NODES_ATTRS
    if owner == "folder_paths":
        return _FOLDER_PATHS_CACHES
    return frozenset()


def _submodule(owner: str, key: str, value: Any) -> bool:
    """``import torch._dynamo`` binds ``_dynamo`` on ``torch``: an import, not a patch
    (a lazy import binds it later and the same; ReActor's cleanup and a later import
    bind a new module object of that name)."""
    return issubclass(type(value), ModuleType) and getattr(value, "__name__", None) == (
        f"{owner}.{key}"
    )


def _folder_changes(
    before: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]],
    after: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]],
    models_dir: str,
) -> dict[str, FolderChange]:
    changes: dict[str, FolderChange] = {}
    for key, (paths, extensions) in after.items():
        old = before.get(key)
        if old == (paths, extensions):
            continue
        old_paths = old[0] if old is not None else ()
        replaced = any(p not in paths for p in old_paths)
        added = tuple(_relative(p, models_dir) for p in paths if p not in old_paths)
        changes[key] = FolderChange(replaced=replaced, added=added, extensions=extensions)
    return changes


_MODELS = "$models/"
"""How the index spells a path under ComfyUI's models folder (portable across machines)."""


def _relative(path: str, models_dir: str) -> str:
    base = os.path.normpath(models_dir) + os.sep
    normal = os.path.normpath(path)
    return _MODELS + normal[len(base) :] if normal.startswith(base) else normal


def environ_replay(evidence: Evidence) -> dict[str, str | None] | None:
    """The environment a deferred pack's import would make now; None if it cannot say.

    A variable is replayed exactly when it holds what it held at index time; a path
    list the import extended around its old value (OpenCV prepends its folders to
    ``LD_LIBRARY_PATH``) is extended the same way around today's. Anything else (the
    container sets the variable otherwise than the build did) cannot be told from the
    record: the pack is then imported at boot, where its own code decides.
    """
    plan: dict[str, str | None] = {}
    for key, (old, new) in evidence.environ.items():
        current = os.environ.get(key)
        if current == old:
            plan[key] = new
        elif old and new and current is not None and new.count(old) == 1:
            head, _, tail = new.partition(old)
            plan[key] = head + current + tail
        else:
            return None
    return plan


def replay(folder_paths: Any, evidence: Evidence, environ: dict[str, str | None]) -> None:
    """Make a deferred pack's recorded changes, as its import made them at index time.

    Called at the pack's place in ComfyUI's load order, so the folders and the
    environment are at every later step what an eager boot would have made them.
    ``environ``: :func:`environ_replay`'s plan.
    """
    for key, value in environ.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    models_dir = str(folder_paths.models_dir)
    table = folder_paths.folder_names_and_paths
    cache = getattr(folder_paths, "filename_list_cache", None)
    for key, change in evidence.folders.items():
        paths, _ = table.get(key, ([], set()))
        kept = [] if change.replaced else list(paths)
        added = [
            str(Path(models_dir, p[len(_MODELS) :])) if p.startswith(_MODELS) else p
            for p in change.added
        ]
        table[key] = (list(dict.fromkeys([*kept, *added])), set(change.extensions))
        if isinstance(cache, dict):
            cache.pop(key, None)


class Recorder:
    """Takes the evidence of each pack ComfyUI imports, and replays a deferred one's."""

    def __init__(self, checkout: Path, folder_paths: Any) -> None:
        self._checkout = checkout
        self._folder_paths = folder_paths

    def take(self) -> Snapshot:
        """A snapshot, just before or after one pack's import."""
        folder_paths = self._folder_paths
        return take(self._checkout, folder_paths.get_folder_paths("custom_nodes"), folder_paths)

    def compare(self, before: Snapshot, after: Snapshot) -> Evidence:
        """What the import between the two snapshots changed."""
        return compare(before, after, str(self._folder_paths.models_dir))

    def replay(self, evidence: Evidence) -> bool:
        """Make a deferred pack's recorded changes (:func:`replay`); False, changing
        nothing, when today's environment does not let them be replayed exactly."""
        environ = environ_replay(evidence)
        if environ is None:
            return False
        replay(self._folder_paths, evidence, environ)
        return True
