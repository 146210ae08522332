"""Where a job's files live, and the sweep that removes a killed job's leftovers at boot.

Every file the worker makes for a job lives under a folder of its own: the files the
request sent under ``input/job-in-<digest>/`` (:func:`settle_inputs`), what the workflow
saved under ``output/<folder>/`` and frames joined into a video or converted outputs under
``<WORKER_DIR>/scratch/<folder>/``, with ``<folder>`` named per run by :func:`job_folder`;
previews go to ComfyUI's temp folder, which the runtime empties after every job. The
worker removes them when the job ends, however it ends, keeping at most one emptied
folder in the input and output folders for the next job (:class:`SpareFolders`); a
worker that is killed (SIGKILL, out of memory, the machine lost) cannot, so
:func:`sweep_leftovers` does it when the next worker boots on the same folders.

How the sweep tells the worker's files from files baked into the image's input folder:
by name. Only folders whose whole name has the shape :func:`job_folder`,
:func:`settle_inputs` or :class:`SpareFolders` makes (``job-<id>-<8 hex digits>``,
``job-in-<16 hex digits>``, ``job-spare-<8 hex digits>``) are removed from the input and
output folders; anything else there (``input/example.png``, ``input/masks/``) is never
touched. The temp and scratch folders belong to the worker alone and are emptied whole,
as ComfyUI's own ``main.py`` empties its temp folder at start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import os
import re
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from engine.runtime import Directories, UiOutputs, decoded_inputs
from engine.runtime.pending_files import PendingFiles

log = logging.getLogger(__name__)

_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9_.-]")
# Exactly what job_folder() makes (the sanitised id, 1-64 chars, and 8 hex digits) and
# what settle_inputs() makes (16 hex digits of the inputs' digest).
_SPARE = re.compile(r"job-spare-[0-9a-f]{8}")
_JOB_FOLDER = re.compile(r"job-[A-Za-z0-9_.-]{1,64}-[0-9a-f]{8}|job-in-[0-9a-f]{16}")


def job_folder(job_id: str) -> str:
    """The per-run folder name under ComfyUI's input and output folders.

    Unique per run, not only per job id: a job id seen twice (a retried job, a local
    test id) must still change every ``filename_prefix``, or ComfyUI's cache would
    hand back the first run's files, already deleted.
    """
    return f"job-{_UNSAFE_ID_CHARS.sub('_', job_id)[:64] or 'unnamed'}-{uuid.uuid4().hex[:8]}"


def is_job_folder(name: str) -> bool:
    """Whether ``name`` has the shape of a :func:`job_folder` name."""
    return _JOB_FOLDER.fullmatch(name) is not None


def settle_inputs(input_dir: Path, staged: Path, paths: Sequence[Path]) -> str:
    """Move a job's stored inputs from ``staged`` to a folder named by what they hold.

    Returns the folder's name under ``input_dir``. The name is
    ``job-in-`` and 16 hex digits of a SHA-256 over every file's path and bytes: a later
    job that sends the same files under the same names reads them from the same path, so
    ComfyUI's cache (keyed by a loader's file name and the file's hash) still serves
    everything downstream of them, as it would on a ComfyUI server; a job that did not
    send them cannot name the folder without knowing their bytes, and the folder is
    removed when the job ends anyway.
    """
    name = input_folder_name(staged, paths)
    _move_into_place(staged, input_dir / name)
    return name


def input_folder_name(staged: Path, paths: Sequence[Path]) -> str:
    """The name :func:`settle_inputs` gives the folder of ``paths`` (files under ``staged``)."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        known = decoded_inputs.HANDOFF.digest(path)  # hashed as it was stored: no re-read
        if known is not None:
            content = bytes.fromhex(known)
        else:
            with path.open("rb") as file:
                content = hashlib.file_digest(file, "sha256").digest()
        digest.update(path.relative_to(staged).as_posix().encode() + b"\0" + content)
    return f"job-in-{digest.hexdigest()[:16]}"


def _move_into_place(staged: Path, target: Path) -> None:
    if target.exists():  # a leftover the cleanup could not remove: this job's copy wins
        shutil.rmtree(target, ignore_errors=True)
    staged.replace(target)


class SharedInputs:
    """The input folders of the jobs in flight, counted: two jobs that sent the same files
    under the same names settle them in the same folder (:func:`settle_inputs`), and the
    folder goes when the last of them ends, not when the first does."""

    def __init__(self, spares: SpareFolders) -> None:
        self._spares = spares
        self._users: dict[str, int] = {}
        self._lock = threading.Lock()

    def settle(self, input_dir: Path, staged: Path, paths: Sequence[Path]) -> str:
        """:func:`settle_inputs`, or, when a job in flight holds the same folder, the
        staged copy removed and that folder shared; the folder's name either way."""
        name = input_folder_name(staged, paths)
        with self._lock:
            if name in self._users:
                # Same names, same bytes: the folder there is this job's too. It stays
                # until both jobs end; the staged copy goes.
                self._users[name] += 1
                shared = True
            else:
                self._users[name] = 1
                shared = False
                _move_into_place(staged, input_dir / name)
        if shared:
            decoded_inputs.HANDOFF.forget(paths)
            self._spares.remove(staged)
        return name

    def release(self, input_dir: Path, name: str) -> None:
        """A job that held folder ``name`` ended: remove it if no other job holds it."""
        with self._lock:
            left = self._users.get(name, 1) - 1
            if left > 0:
                self._users[name] = left
                return
            self._users.pop(name, None)
            # Removed under the lock: a job settling the same name meanwhile must not
            # find the folder half gone. What the handoff holds for its files goes too.
            folder = input_dir / name
            decoded_inputs.HANDOFF.forget(_files_in(folder))
            self._spares.remove(folder)


class SpareFolders:
    """Emptied job folders kept for the next job: a rename instead of a mkdir and an rmdir.

    A job makes two folders (its inputs', its outputs') and removes both when it ends. On
    ext4 a mkdir costs ~0.16 ms and an rmdir ~0.23 ms, a rename ~0.02 ms (measured on the
    benchmark machine; docs/benchmarks.md): so a folder emptied of its files and
    sub-folders is renamed to a spare name, and the next job's folder in the same place is that spare
    renamed. At most one spare per parent folder. Spares are named like job folders
    (``job-spare-<8 hex digits>``), empty, so a killed worker's are swept at the next boot
    (:func:`sweep_leftovers`) and ComfyUI's file lists, which list files, never show them.
    """

    def __init__(self) -> None:
        self._spares: dict[Path, Path] = {}  # parent folder -> its spare
        self._lock = threading.Lock()

    def make(self, folder: Path) -> None:
        """Create ``folder`` (its parent exists), from the parent's spare when there is one."""
        with self._lock:
            spare = self._spares.pop(folder.parent, None)
        if spare is not None:
            try:
                spare.rename(folder)
                return
            except OSError:  # gone, or ``folder`` is there already: make it plainly
                shutil.rmtree(spare, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)

    def remove(self, folder: Path) -> None:
        """Remove what ``folder`` holds; keep it, emptied, as its parent's spare."""
        if not _empty_folder(folder):
            return  # not there, or it would not empty and went with rmtree
        with self._lock:
            keep = folder.parent not in self._spares
            if keep:
                spare = folder.with_name(f"job-spare-{uuid.uuid4().hex[:8]}")
                self._spares[folder.parent] = spare
        try:
            if keep:
                folder.rename(spare)
            else:
                folder.rmdir()
        except OSError:
            with self._lock:
                if keep and self._spares.get(folder.parent) == spare:
                    del self._spares[folder.parent]
            shutil.rmtree(folder, ignore_errors=True)


def _files_in(folder: Path) -> Iterator[Path]:
    """The files under ``folder``, listed only as they are asked for (none when it is
    not there)."""
    with contextlib.suppress(OSError):
        yield from (path for path in folder.rglob("*") if path.is_file())


def _empty_folder(folder: Path) -> bool:
    """Empty ``folder``: unlink its files, remove its sub-folders; whether it is now there
    and empty.

    Sub-folders are the common case, not the odd one: a ``filename_prefix`` such as
    ``project/img`` saves into one. They are emptied and removed one by one, each opened
    by descriptor without following links (``O_NOFOLLOW``) and worked on relative to it,
    as ``shutil.rmtree`` does to be safe against links swapped in while it walks: a link
    is unlinked, never followed. A tree deeper than :data:`_MAX_DEPTH`, or one that will
    not empty, goes with ``rmtree`` instead (False). ``rmtree`` for the common two levels
    costs about twice the unlinks and rmdir it comes down to, and the folder would not
    be kept as a spare (:class:`SpareFolders`).
    """
    try:
        top = os.open(folder, _DIR_FLAGS)
    except FileNotFoundError:
        return False
    except OSError:  # not a folder, a link, or unreadable
        shutil.rmtree(folder, ignore_errors=True)
        return False
    try:
        _empty_tree(top, _MAX_DEPTH)
    except OSError:
        shutil.rmtree(folder, ignore_errors=True)
        return False
    finally:
        os.close(top)
    return True


# Deeper than any filename_prefix seen in practice; bounds the recursion below.
_MAX_DEPTH = 16
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def _empty_tree(dir_fd: int, depth: int) -> None:
    """Remove everything in the folder open as ``dir_fd``; raises ``OSError`` when it
    cannot (``depth`` more levels of sub-folders at most)."""
    with os.scandir(dir_fd) as listing:
        entries = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in listing]
    for name, is_dir in entries:
        if not is_dir:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=dir_fd)
            continue
        if depth <= 0:
            raise OSError(f"sub-folders nested deeper than {_MAX_DEPTH} levels")
        # O_NOFOLLOW: a folder swapped for a link since the listing fails to open here.
        sub = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        try:
            _empty_tree(sub, depth - 1)
        finally:
            os.close(sub)
        os.rmdir(name, dir_fd=dir_fd)


def remove_job_folder(folder: Path) -> None:
    """Remove one of a job's folders and what it holds, if it exists; never raises.

    Its files and sub-folders go with one unlink or rmdir each, without
    ``shutil.rmtree``'s generic walk (:func:`_empty_folder`); then the folder itself.
    """
    if _empty_folder(folder):
        try:
            folder.rmdir()
        except OSError:
            shutil.rmtree(folder, ignore_errors=True)


def scratch_root(work_dir: Path) -> Path:
    """The folder that holds each job's scratch folder."""
    return Path(work_dir) / "scratch"


def sweep_leftovers(dirs: Directories, work_dir: Path) -> list[Path]:
    """Remove what jobs of an earlier worker process left behind; the paths removed.

    Call it before the runtime boots, while no job of this process can be running: a
    second worker process on the same folders would lose its running job's files.
    """
    removed: list[Path] = []
    for folder in (dirs.input, dirs.output):
        for entry in _entries(folder):
            if not (is_job_folder(entry.name) and entry.is_dir() and not entry.is_symlink()):
                continue
            if _SPARE.fullmatch(entry.name) and _is_empty(entry):
                # An emptied folder kept for the next job (SpareFolders): every worker that
                # ran a job leaves one behind, killed or not. Not a killed job's files.
                with contextlib.suppress(OSError):
                    entry.rmdir()
                continue
            _remove(entry, removed)
    for folder in (dirs.temp, scratch_root(work_dir)):
        for entry in _entries(folder):
            _remove(entry, removed)
    if removed:
        log.warning(
            "removed %d file(s) or folder(s) that killed jobs left behind: %s",
            len(removed),
            ", ".join(str(path) for path in removed[:10]) + (" ..." if len(removed) > 10 else ""),
        )
    return removed


def _is_empty(folder: Path) -> bool:
    try:
        with os.scandir(folder) as entries:
            return next(entries, None) is None
    except OSError:
        return False


def _entries(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except FileNotFoundError:
        return []


def _remove(path: Path, removed: list[Path]) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except OSError as exc:
        # Not fatal: jobs still get folders of their own; say so, for whoever looks.
        log.warning("could not remove leftover %s: %s", path, exc)
        return
    removed.append(path)


@dataclasses.dataclass
class JobFiles:
    """The files one job makes, all removed when it ends (:meth:`JobFolders.of_job`)."""

    scratch: Path
    """The job's scratch folder (frames joined into a video), made only when asked for."""
    input_folder: str | None = None
    """The folder under ComfyUI's input folder holding the files the job sent."""
    pending: PendingFiles = dataclasses.field(default_factory=PendingFiles)
    """Output files the run handed off to be written after it (SaveImage's PNGs)."""
    temp_outputs: list[Path] = dataclasses.field(default_factory=list)
    """The files of ComfyUI's temp folder the run named as its outputs (previews)."""


class JobFolders:
    """Each job's folders: made when it starts, every file in them removed when it ends,
    however it ends. All live under the job's folder name (:func:`job_folder`); a killed
    worker's are swept at the next boot (:func:`sweep_leftovers`)."""

    def __init__(self, dirs: Directories, work_dir: Path) -> None:
        self._dirs = dirs
        self._work_dir = work_dir
        self.spares = SpareFolders()
        """Emptied job folders, renamed into the next job's instead of made anew."""
        self.inputs = SharedInputs(self.spares)
        """Input folders named by their content, shared by jobs in flight that sent the same."""

    @contextlib.contextmanager
    def of_job(
        self, folder: str, *, scratch: bool, cleanups: list[Callable[[], None]] | None = None
    ) -> Iterator[JobFiles]:
        """The files of the job whose folder name is ``folder``; every one is removed
        when the block ends, or, with ``cleanups``, by the caller, which the removal is
        appended to (``handler.py``'s removal after the answer)."""
        files = JobFiles(scratch=scratch_root(self._work_dir) / folder)
        if scratch:
            files.scratch.mkdir(parents=True, exist_ok=True)
        try:
            # Made here, from a spare, rather than by ComfyUI's first save (its makedirs
            # then finds it); a job that saves nothing hands it back empty.
            self.spares.make(self._dirs.output / folder)
            yield files
        finally:
            if cleanups is None:
                self.remove(files, folder)
            else:
                cleanups.append(functools.partial(self.remove, files, folder))

    def remove(self, files: JobFiles, folder: str) -> None:
        """Remove the job's files: its inputs (unless another job in flight shares
        them), outputs, scratch and previews."""
        dirs = self._dirs
        # Files still being written would land after their folder went.
        files.pending.wait()
        if files.input_folder:
            self.inputs.release(dirs.input, files.input_folder)
        self.spares.remove(dirs.output / folder)
        for leftover in (dirs.input / folder, files.scratch, dirs.temp / folder):
            remove_job_folder(leftover)
        # Its previews, named by the run: the temp folder as a whole is emptied only
        # when no job is in flight (the runtime's after_job), as others' may be there.
        for path in files.temp_outputs:
            path.unlink(missing_ok=True)


def temp_outputs(outputs: UiOutputs, dirs: Directories) -> list[Path]:
    """The temp-folder files (previews) that a run's ui outputs name."""
    paths = []
    for output in outputs.values():
        for items in output.values():
            for item in items if isinstance(items, list) else ():
                if isinstance(item, dict) and item.get("type") == "temp" and item.get("filename"):
                    path = dirs.temp / str(item.get("subfolder") or "") / str(item["filename"])
                    # A node's own name must not lead the cleanup out of the temp folder.
                    if path.resolve().is_relative_to(dirs.temp.resolve()):
                        paths.append(path)
    return paths
