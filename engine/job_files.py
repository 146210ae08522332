"""Where a job's files live, and the sweep that removes a killed job's leftovers at boot.

Every file the worker makes for a job lives under a folder of its own: the files the
request sent under ``input/job-in-<digest>/`` (:func:`settle_inputs`), what the workflow
saved under ``output/<folder>/`` and frames joined into a video or converted outputs under
``<WORKER_DIR>/scratch/<folder>/``, with ``<folder>`` named per run by :func:`job_folder`;
previews go to ComfyUI's temp folder, which the runtime empties after every job. The worker removes them when the job ends, however it ends; a worker that
is killed (SIGKILL, out of memory, the machine lost) cannot, so :func:`sweep_leftovers`
does it when the next worker boots on the same folders.

How the sweep tells the worker's files from files baked into the image's input folder:
by name. Only folders whose whole name has the shape :func:`job_folder` or
:func:`settle_inputs` makes (``job-<id>-<8 hex digits>``, ``job-in-<16 hex digits>``) are
removed from the input and output folders; anything
else there (``input/example.png``, ``input/masks/``) is never touched. The temp and
scratch folders belong to the worker alone and are emptied whole, as ComfyUI's own
``main.py`` empties its temp folder at start.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

from engine.runtime import Directories

log = logging.getLogger(__name__)

_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9_.-]")
# Exactly what job_folder() makes (the sanitised id, 1-64 chars, and 8 hex digits) and
# what settle_inputs() makes (16 hex digits of the inputs' digest).
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
    digest = hashlib.sha256()
    for path in sorted(paths):
        with path.open("rb") as file:
            content = hashlib.file_digest(file, "sha256").digest()
        digest.update(path.relative_to(staged).as_posix().encode() + b"\0" + content)
    name = f"job-in-{digest.hexdigest()[:16]}"
    target = input_dir / name
    if target.exists():  # a leftover the cleanup could not remove: this job's copy wins
        shutil.rmtree(target, ignore_errors=True)
    staged.replace(target)
    return name


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
            if is_job_folder(entry.name) and entry.is_dir() and not entry.is_symlink():
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
