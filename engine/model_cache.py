"""The cache of model files downloaded from URLs: where they live, reuse, LRU eviction.

Each model folder keeps its downloads in a ``url-cache/`` sub-folder of its first
writable path, so ComfyUI lists them like any other file of that folder
(``url-cache/<key>-<name>.safetensors``). ``<key>`` is the first 16 hex digits of the
SHA-256 of the URL without its ``#fragment``: the same URL is the same file, whatever
hash it is checked against.

Beside each file lies a small record, ``.<key>.json`` (its name, size, SHA-256 and the
URL without its query), written after the file is in place; its modification time is
when a job last used the file, which orders eviction (least recently used first).
Access times are not used: volumes are often mounted ``noatime``.

Eviction runs before a download, to make room for it, and again as its bytes arrive
past what was reserved (a body without ``Content-Length``): under
``MODEL_CACHE_MAX_GB`` for all folders together, downloads in flight included, and
enough free disk for the file. A file in use by the running job (one it resolved, or
one being downloaded) is never evicted. Only files this cache downloaded are counted or
removed; the folder's own files are never touched.

A download in flight is a hidden ``.<key>.<8 hex>.part`` file, held under an exclusive
``flock`` by the process writing it. A worker killed mid-download leaves it unlocked:
the next worker to boot removes every unlocked part file (:meth:`ModelCache.sweep`),
while a part that another live worker on the same volume holds is left alone. Where
the file system has no locks, a part untouched for 10 minutes counts as dead.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from engine.errors import ItemError
from engine.runtime import ModelFolder

log = logging.getLogger(__name__)

CACHE_DIR_NAME = "url-cache"
_RECORD_SUFFIX = ".json"
_PART_SUFFIX = ".part"
# Left free on the disk after a download: ComfyUI still writes outputs and temp files.
DISK_RESERVE_BYTES = 512 * 1024 * 1024
# Where part files cannot be locked: a download in progress writes its part file
# continually (at least every DOWNLOAD_STALL_S); one untouched this long is dead.
_STALE_PART_S = 600.0
# An unlocked part this young and still empty may be one a live worker has just made
# and not locked yet (creating and locking are two calls): left for the next sweep.
_NEWBORN_PART_S = 60.0
_MAX_NAME_BYTES = 255  # a file name's limit on ext4, xfs, NTFS...
_GB = 1024**3

# One lock per URL key, for the whole process: two jobs (or two nodes) asking for the
# same URL wait for one download instead of making two.
_key_locks: dict[str, threading.Lock] = {}
_key_locks_guard = threading.Lock()


def url_key(url: str) -> str:
    """The cache key of ``url`` (its ``#fragment`` dropped): 16 hex digits."""
    return hashlib.sha256(url.split("#", 1)[0].strip().encode()).hexdigest()[:16]


def cache_file_name(key: str, name: str) -> str:
    """``<key>-<name>``, the name shortened (its suffix kept) to fit 255 bytes."""
    stem, dot, suffix = name.rpartition(".")
    if not dot or len(suffix.encode()) > 16:
        stem, suffix = name, ""
    tail = f".{suffix}" if suffix else ""
    room = _MAX_NAME_BYTES - len(key) - 1 - len(tail.encode())
    encoded = stem.encode()[:room]
    # A cut through a multi-byte character leaves a partial one: drop it.
    return f"{key}-{encoded.decode(errors='ignore')}{tail}"


@dataclass(frozen=True)
class CacheEntry:
    """One downloaded file and its record."""

    key: str
    path: Path
    size: int
    sha256: str
    last_used: float

    @property
    def record(self) -> Path:
        return self.path.parent / f".{self.key}{_RECORD_SUFFIX}"


@contextlib.contextmanager
def url_lock(key: str, timeout_s: float | None) -> Iterator[bool]:
    """Hold the process-wide lock of one URL key; yields False if ``timeout_s`` passed first."""
    with _key_locks_guard:
        lock = _key_locks.setdefault(key, threading.Lock())
    acquired = lock.acquire(timeout=-1 if timeout_s is None else max(timeout_s, 0.0))
    try:
        yield acquired
    finally:
        if acquired:
            lock.release()


def _gb(size: float) -> str:
    return f"{size / _GB:.2f} GB"


class ModelCache:
    """The ``url-cache/`` folders of every model folder, under one size limit."""

    def __init__(self, max_bytes: int, folders: Iterable[ModelFolder] | None = None) -> None:
        self.max_bytes = max_bytes
        self._folders = list(folders or [])
        self._swept: set[Path] = set()
        # Room reserved by downloads in flight in this process, by part file: counted
        # against the limit beside the finished files.
        self._reserved: dict[Path, int] = {}
        self._room = threading.Lock()

    def set_folders(self, folders: Iterable[ModelFolder]) -> None:
        """The model folders whose caches count towards the limit (all of ComfyUI's)."""
        self._folders = list(folders)

    # -- where -----------------------------------------------------------------------

    def cache_dir(self, folder: ModelFolder) -> Path:
        """Where new downloads for ``folder`` go: its first writable path's ``url-cache/``."""
        for base in folder.paths:
            target = base / CACHE_DIR_NAME
            if _can_create(target):
                try:
                    target.mkdir(parents=True, exist_ok=True)
                except OSError:
                    continue
                self._sweep(target)
                return target
        where = ", ".join(str(p) for p in folder.paths) or "(no path registered)"
        raise ItemError(
            "",
            f"no writable path for the {folder.name} folder ({where}); "
            "mount the volume read-write or add a writable path in extra_model_paths.yaml",
        )

    def _dirs(self, extra: Iterable[ModelFolder] = ()) -> list[Path]:
        """Every existing ``url-cache/`` folder, each once."""
        seen: dict[Path, None] = {}
        for folder in (*self._folders, *extra):
            for base in folder.paths:
                target = base / CACHE_DIR_NAME
                if target.is_dir():
                    seen.setdefault(target.resolve(), None)
        return list(seen)

    # -- what ------------------------------------------------------------------------

    def lookup(self, folder: ModelFolder, key: str) -> CacheEntry | None:
        """The cached file of ``key`` in any path of ``folder``, if whole."""
        for base in folder.paths:
            entry = _read_entry(base / CACHE_DIR_NAME / f".{key}{_RECORD_SUFFIX}")
            if entry is not None:
                return entry
        return None

    def entries(self, extra: Iterable[ModelFolder] = ()) -> list[CacheEntry]:
        """Every whole cached file, least recently used first."""
        found = [
            entry
            for directory in self._dirs(extra)
            for record in directory.glob(f".*{_RECORD_SUFFIX}")
            if (entry := _read_entry(record)) is not None
        ]
        return sorted(found, key=lambda e: e.last_used)

    def touch(self, entry: CacheEntry) -> None:
        """Mark ``entry`` as used now (its record's modification time)."""
        with contextlib.suppress(OSError):  # a read-only volume: the order just ages
            os.utime(entry.record)

    # -- change ----------------------------------------------------------------------

    def temp_path(self, directory: Path, key: str) -> Path:
        """A short hidden temporary name in ``directory``: the final rename is atomic."""
        return directory / f".{key}.{uuid.uuid4().hex[:8]}{_PART_SUFFIX}"

    @contextlib.contextmanager
    def part(self, directory: Path, key: str) -> Iterator[Path]:
        """A new, empty part file, locked while the block runs; removed when it ends
        (unless it was renamed into place), its reservation released."""
        path = self.temp_path(directory, key)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        try:
            _lock(fd)
            yield path
        finally:
            with self._room:
                self._reserved.pop(path, None)
            path.unlink(missing_ok=True)
            os.close(fd)  # last: the lock holds until the file is gone or in place

    def add(
        self, temp: Path, directory: Path, key: str, name: str, sha256: str, shown_url: str
    ) -> CacheEntry:
        """Move a finished download into place and write its record; the new entry."""
        final = directory / cache_file_name(key, name)
        old = _read_entry(directory / f".{key}{_RECORD_SUFFIX}")
        try:
            size = temp.stat().st_size
            temp.replace(final)
        except FileNotFoundError as exc:
            # Only a sweep removes a part file: one on a volume whose locks do not
            # reach across machines can take another worker's for a dead one.
            raise ItemError(
                "",
                "the finished download was removed before it could be kept (another "
                "worker's sweep of the volume's url-cache?); send the job again",
            ) from exc
        if old is not None and old.path != final:
            old.path.unlink(missing_ok=True)  # the URL now serves a file of another name
        record = {"file": final.name, "size": size, "sha256": sha256, "url": shown_url}
        record_path = directory / f".{key}{_RECORD_SUFFIX}"
        with self.part(directory, key) as record_temp:
            record_temp.write_text(json.dumps(record), encoding="utf-8")
            record_temp.replace(record_path)
        return CacheEntry(key, final, size, sha256, record_path.stat().st_mtime)

    def remove(self, entry: CacheEntry) -> None:
        """Delete a cached file and its record (the record first: no record, no entry)."""
        entry.record.unlink(missing_ok=True)
        entry.path.unlink(missing_ok=True)

    def make_room(
        self,
        incoming: int,
        directory: Path,
        in_use: set[Path],
        extra: Iterable[ModelFolder] = (),
        part: Path | None = None,
    ) -> None:
        """Evict least recently used files until ``incoming`` bytes fit; raise if they cannot.

        ``in_use`` files are never evicted. Two bounds: the cache limit for all folders
        together (with what other downloads in flight reserved), and the free space of
        the disk ``directory`` is on. ``part``, the download's part file, holds the
        reservation, and what it already holds on disk is not asked for twice.
        """
        with self._room:
            self._make_room(incoming, directory, in_use, extra, part)
            if part is not None:
                self._reserved[part] = incoming

    def _make_room(
        self,
        incoming: int,
        directory: Path,
        in_use: set[Path],
        extra: Iterable[ModelFolder],
        part: Path | None,
    ) -> None:
        entries = self.entries(extra)
        in_flight = sum(size for path, size in self._reserved.items() if path != part)
        total = sum(e.size for e in entries) + in_flight
        written = 0
        if part is not None:
            with contextlib.suppress(OSError):
                written = part.stat().st_size
        needed_on_disk = max(incoming - written, 0)
        free = shutil.disk_usage(directory).free
        device = directory.stat().st_dev
        for entry in entries:
            over_limit = total + incoming > self.max_bytes
            short_of_disk = free < needed_on_disk + DISK_RESERVE_BYTES
            if not over_limit and not short_of_disk:
                break
            if entry.path in in_use:
                continue
            try:
                same_disk = entry.path.stat().st_dev == device
            except OSError:
                continue
            if not over_limit and not same_disk:
                continue  # would not free space where the download goes
            log.info(
                "model cache: evicting %s (%s, least recently used) to make room",
                entry.path,
                _gb(entry.size),
            )
            self.remove(entry)
            total -= entry.size
            if same_disk:
                free += entry.size
        if total + incoming > self.max_bytes:
            held = f"files this job uses hold {_gb(total - in_flight)}"
            if in_flight:
                held += f" and downloads in progress {_gb(in_flight)}"
            raise ItemError(
                "",
                f"the file ({_gb(incoming)}{' so far' if part and written else ''}) does not "
                f"fit in the model cache: {held} of its {_gb(self.max_bytes)} "
                "(MODEL_CACHE_MAX_GB); raise MODEL_CACHE_MAX_GB",
            )
        if free < needed_on_disk + DISK_RESERVE_BYTES:
            raise ItemError(
                "",
                f"not enough disk space for the file ({_gb(incoming)}): {_gb(free)} free on "
                f"{directory} after evicting every cached file this job does not use; "
                "use a larger volume or fewer models",
            )

    def sweep(self) -> int:
        """Remove the part files killed workers left in every cache folder; how many.

        At boot, before any job: a part no live process holds is a dead download.
        """
        removed = 0
        for directory in self._dirs():
            self._swept.add(directory)
            removed += _sweep_parts(directory)
        return removed

    def _sweep(self, directory: Path) -> None:
        """Remove part files a dead worker left (once per folder and process)."""
        if directory in self._swept:
            return
        self._swept.add(directory)
        _sweep_parts(directory)


def _lock(fd: int) -> None:
    """Take the part file's exclusive lock; where locks are not supported, go without
    (the sweep then judges parts by age)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in {errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL}:
            raise


def _sweep_parts(directory: Path) -> int:
    """Remove the part files in ``directory`` that no live process holds; how many."""
    removed = 0
    now = time.time()
    for part in directory.glob(f".*{_PART_SUFFIX}"):
        try:
            fd = os.open(part, os.O_RDONLY)
        except OSError:
            continue  # gone meanwhile: renamed into place, or swept by another worker
        try:
            stat = os.fstat(fd)
            age = now - stat.st_mtime
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live download (this worker's or another's on the volume)
            except OSError:
                if age <= _STALE_PART_S:  # no locks here: only age tells
                    continue
            else:
                if stat.st_size == 0 and age <= _NEWBORN_PART_S:
                    continue
            part.unlink(missing_ok=True)
            removed += 1
            log.info("model cache: removed %s, left by an interrupted download", part)
        finally:
            os.close(fd)
    return removed


def _can_create(path: Path) -> bool:
    """Whether files can be made in ``path``: it, or its nearest existing parent, is writable."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate.is_dir() and os.access(candidate, os.W_OK | os.X_OK)
    return False


def _read_entry(record: Path) -> CacheEntry | None:
    """The entry a record describes, or None when either is missing or they disagree."""
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
        stat = record.stat()
        path = record.parent / str(data["file"])
        size = int(data["size"])
        if "/" in str(data["file"]) or path.stat().st_size != size:
            return None
        return CacheEntry(
            key=record.name[1:].removesuffix(_RECORD_SUFFIX),
            path=path,
            size=size,
            sha256=str(data["sha256"]),
            last_used=stat.st_mtime,
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
