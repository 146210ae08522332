"""The node index on disk: which node types each of ComfyUI's node files and each custom
node pack added when it was last imported, with the stamp that says it is unchanged.

:mod:`engine.runtime.lazy_nodes` makes it on a boot that imports the files and reads it on
later boots to register their node types by name. The index is valid for one key (ComfyUI's
version, the Python, the distributions installed in its environment, the custom node
folders' entries and mtimes) and each file's size and mtime; a file that changed is
imported at boot and indexed again.

The folder holds one file per key, and several keys are in use at once where endpoints of
different images share a network volume's checkout, so it is kept bounded by use, not by
key: a boot that reads an index marks it used (:func:`mark_used`), and a boot that writes
one removes the files nobody used for a long time (:func:`prune`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.runtime.pack_evidence import Evidence, FolderChange

LAZY_GROUPS = ("comfy_extras", "comfy_api_nodes")
"""ComfyUI's ``module_parent`` values of its own node files: the ones that may load lazily."""
PACKS = "custom_nodes"
"""ComfyUI's ``module_parent`` of custom node packs: lazy only with evidence (module doc)."""

INDEX_VERSION = 6
"""Bumped when the index file's layout, or what decides a pack's entry, changes: an older
file is then rebuilt."""


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
    environment: str = ""
    """The :func:`environment_key` it was made in ("" in a file older than the field)."""

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
        return cls(key=key, files=files, environment=str(raw.get("environment", "")))

    def write(self, path: Path) -> None:
        """Write atomically: a boot beside this one reads the old file or the new one."""
        body = {
            "version": INDEX_VERSION,
            "key": self.key,
            "environment": self.environment,
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


def index_key(
    comfy_version: str, custom_node_dirs: Iterable[str], environment: str | None = None
) -> str:
    """What the whole index depends on besides each file's own size and mtime.

    The Python's environment (:func:`environment_key`, this one's by default) decides what
    an import can find: a pack's dependency installed or removed with pip in the same
    environment makes a new index, so a pack that no longer imports fails at boot, not at
    a job's first use of it, and one that now imports is indexed again. The custom node
    folders' entries change when a pack is added or removed, and a pack's ``__init__.py``
    (a single-file pack: the file) when it is updated. Not the pack folder's own mtime:
    packs write caches and settings into their folder at their first start (ReActor,
    rgthree), which would change the key on every new container.
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
    environment = environment_key() if environment is None else environment
    parts = [comfy_version, environment, *sorted(packs)]
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()


def environment_key(site_dirs: Iterable[str] | None = None) -> str:
    """The Python (its version and prefix) and the distributions installed in its
    environment (:func:`installed`, from ``site_dirs``: by default the site-packages
    folders on ``sys.path``). Kept in the index too: an index made in another environment
    lends no pack its evidence (``LazyNodes``), as a pack's import may change other
    things once a dependency is added or removed."""
    dists = installed(_site_dirs() if site_dirs is None else site_dirs)
    parts = [sys.version, sys.prefix, *dists]
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()


_DIST_SUFFIXES = (".dist-info", ".egg-info", ".pth")
"""The entries of a site folder that say what is installed: each distribution's metadata
folder (its name carries the version, so an upgrade changes it too) and the ``.pth``
files that add paths (an editable install's among them)."""


def installed(site_dirs: Iterable[str]) -> list[str]:
    """The distributions installed in ``site_dirs`` (and their ``.pth`` files), by entry
    name, sorted: one listing of each folder (with :func:`environment_key`'s hash,
    0.32-0.33 ms a boot for the image environment's 241 entries: docs/benchmarks.md).

    Names, not the folders' mtimes: an mtime also moves when Python writes
    ``__pycache__`` beside a top-level module at a first import, which would make a new
    index at the first start of every container made from an image that baked one.
    """
    found: list[str] = []
    for folder in dict.fromkeys(site_dirs):
        try:
            with os.scandir(folder) as entries:
                found += [f"{folder}/{e.name}" for e in entries if e.name.endswith(_DIST_SUFFIXES)]
        except OSError:
            found.append(f"{folder}:absent")
    return sorted(found)


def _site_dirs() -> list[str]:
    """The site-packages folders on ``sys.path`` (the environment's, the system's when the
    venv sees them, the user's): the same for every script run by this Python, unlike
    ``sys.path`` as a whole (the script's own folder comes first)."""
    return [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages")]


def index_path(folder: Path, key: str) -> Path:
    """Where the index for ``key`` lives in ``folder``: one file per key and layout, so
    two environments (a dev venv and the image's) or two worker versions sharing a
    checkout keep one each instead of rewriting each other's."""
    return folder / f"node-index-v{INDEX_VERSION}-{key[:16]}.json"


INDEX_FILES = "node-index-*.json"
"""Every index file's name, of this layout and the older ones (``node-index-<key>.json``
before :data:`INDEX_VERSION` was in the name): a worker of another version may share the
folder and still read its own, so older layouts age out like the rest."""

KEEP_UNUSED_DAYS = 30
"""An index no boot read for this long goes at the next write. A removed index costs one
boot that imports every node file and writes it again (the lazy boot's saving, seconds:
docs/benchmarks.md), so the age only has to outlast the gaps between an endpoint's cold
starts: a month covers an endpoint scaled to zero for weeks. The count is bounded
apart (:data:`KEEP_AT_MOST`): a pip install or a pack edit a day is a new key a day."""

KEEP_AT_MOST = 8
"""Index files a folder keeps, the one just written included, newest use first, whatever
their age. Several keys are in use at once only where endpoints of different images (one
environment each) share a checkout on a network volume; 8 holds four images across one
change of packs or pin each (old and new key), at 30-45 KB a file (the five packs'), and
bounds a folder that a day of pip installs or pack edits would otherwise fill."""

MARK_USED_AFTER_S = 24 * 3600.0
"""A read moves the file's mtime only when it is older than this: most boots then only
read it (no write to a shared volume, no copy of an image's file into the container's
layer), and a day is fine grain against :data:`KEEP_UNUSED_DAYS`."""

_TMP_STALE_S = 24 * 3600.0
"""A writer's temporary file (:meth:`NodeIndex.write`) lives milliseconds; one a day old
is a killed writer's leftover, and one younger may be another worker's write in progress."""


def find(folders: Sequence[Path], key: str, now: float | None = None) -> NodeIndex | None:
    """The index for ``key`` from the first of ``folders`` that holds one, marked used
    (:func:`mark_used`; ``now`` for tests); None when none does."""
    for folder in folders:
        path = index_path(folder, key)
        index = NodeIndex.read(path, key)
        if index is not None:
            mark_used(path, now)
            return index
    return None


def newest_of(folders: Sequence[Path], environment: str) -> NodeIndex | None:
    """The most recently used index of this layout in ``folders`` that was made in
    ``environment`` (:func:`environment_key`), whatever its key: the one whose packs'
    evidence a boot with a new set of packs may borrow (``LazyNodes``). Newest first,
    at most :data:`KEEP_AT_MOST` read: where endpoints of other images share the folder,
    the newest may be another environment's."""
    pattern = index_path(Path(), "*").name
    made = [
        (mtime, path)
        for folder in folders
        for path, mtime in _index_files(folder)
        if fnmatch.fnmatchcase(path.name, pattern)
    ]
    for _, path in sorted(made, reverse=True)[:KEEP_AT_MOST]:
        index = NodeIndex.read(path, None)
        if index is not None and index.environment == environment:
            return index
    return None


def mark_used(path: Path, now: float | None = None) -> None:
    """Note that a boot read the index at ``path``, so :func:`prune` keeps it: its mtime
    moves to now (``now``: that time instead, for tests) when older than
    :data:`MARK_USED_AFTER_S`. Never fails a boot: a read-only checkout, a file of
    another owner or one another worker removed just now stays as it is."""
    try:
        mtime = path.stat().st_mtime
        if (time.time() if now is None else now) - mtime < MARK_USED_AFTER_S:
            return
        # None (the current time) needs write access only; explicit times, ownership.
        os.utime(path, None if now is None else (now, now))
    except OSError:
        return


def prune(folder: Path, keep: Path, now: float | None = None) -> list[Path]:
    """Remove from ``folder`` the index files unused (mtime, :func:`mark_used`) for
    :data:`KEEP_UNUSED_DAYS`, and those beyond the :data:`KEEP_AT_MOST` newest; never
    ``keep`` (the one this boot wrote). Writers' temporary files go after a day. The
    files removed.

    Workers sharing the folder may read, mark, write or prune at the same time: a file
    gone already is skipped, and one whose mtime moved since the listing (a boot marked
    it) is kept. What remains of the race (a boot marks a file between the second look
    and the removal) costs that boot's environment one full boot, which writes it again.
    """
    now = time.time() if now is None else now
    removed: list[Path] = []
    ranked: list[tuple[float, Path]] = []
    for path, mtime in _index_files(folder):
        if path.name == keep.name:
            continue
        if not path.name.endswith(".tmp"):
            ranked.append((mtime, path))
        elif now - mtime > _TMP_STALE_S and _remove(path, mtime):
            removed.append(path)
    ranked.sort(reverse=True)
    for rank, (mtime, path) in enumerate(ranked):
        fresh = now - mtime <= KEEP_UNUSED_DAYS * 86400
        if fresh and rank < KEEP_AT_MOST - 1:  # the one kept (``keep``) counts too
            continue
        if _remove(path, mtime):
            removed.append(path)
    return removed


def _index_files(folder: Path) -> list[tuple[Path, float]]:
    """The index files and writers' temporary files in ``folder``, with their mtimes:
    regular files only, one listing (a network volume lists slowly)."""
    found: list[tuple[Path, float]] = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                name = entry.name
                index = fnmatch.fnmatchcase(name, INDEX_FILES)
                tmp = name.startswith(".node-index-") and name.endswith(".tmp")
                if not (index or tmp):
                    continue
                try:
                    if entry.is_file(follow_symlinks=False):
                        found.append((Path(entry.path), entry.stat(follow_symlinks=False).st_mtime))
                except OSError:
                    continue  # removed by another worker since the listing
    except OSError:
        return []
    return found


def _remove(path: Path, listed_mtime: float) -> bool:
    """Remove ``path`` unless a boot marked it used since it was listed; False when it
    stays or another worker removed it first."""
    try:
        if path.stat().st_mtime != listed_mtime:
            return False
        path.unlink()
    except OSError:
        return False
    return True
