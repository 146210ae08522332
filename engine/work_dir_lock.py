"""One worker process per ``WORKER_DIR``: the boot claims the folder, or names who has it.

A worker's boot removes what killed jobs left in its folders (``job_files.sweep_leftovers``).
A second worker process on the same folders (``handler.py --rp_serve_api`` and
``scripts/run_job.py`` on one machine, both with the default folder) would take the
first one's running job for leftovers and delete its files. The boot now takes a lock
for the folder first: a folder another live process holds is refused with a
:class:`~engine.errors.ConfigError` naming that process and what to set instead. The
lock file lies in the system's temporary folder, named by the folder's real path, so
that ``WORKER_DIR`` itself holds only jobs' files, as before.

A POSIX record lock (``lockf``), not ``flock``: it belongs to the process, so child
processes forked by ComfyUI or a pack do not inherit it and cannot keep it after the
worker is killed; the kernel drops it when the process ends, however it ends. Within
one process a second claim succeeds (record locks do not conflict with their own
process): the files there are that process's to share. On a file system without
locks, the worker runs as before and says so once.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import tempfile
from pathlib import Path

from engine.errors import ConfigError

log = logging.getLogger(__name__)

# The descriptors of the folders this process holds, by real path: open for the
# process's life (closing any descriptor of the file would drop the lock).
_held: dict[str, int] = {}


def claim(work_dir: Path) -> None:
    """Hold ``work_dir`` for this process; raises ConfigError when another process does."""
    key = os.path.realpath(work_dir)
    if key in _held:
        return
    path = str(lock_path(work_dir))
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:  # another user's file, a read-only temporary folder
        log.warning(
            "cannot open %s (%s): make sure no other worker uses WORKER_DIR=%s",
            path,
            exc.strerror or exc,
            work_dir,
        )
        return
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _holder(fd)
        os.close(fd)
        if exc.errno not in (errno.EACCES, errno.EAGAIN):
            log.warning(
                "cannot lock %s (%s): make sure no other worker uses WORKER_DIR=%s",
                path,
                exc.strerror or exc,
                work_dir,
            )
            return
        who = f" (pid {holder})" if holder else ""
        raise ConfigError(
            f"WORKER_DIR {work_dir} is in use by another worker process{who}",
            [
                "its running jobs' files live there, and a second worker's boot would remove "
                "them as a killed worker's leftovers; give each worker on this machine a "
                f"folder of its own (WORKER_DIR={work_dir.with_name(work_dir.name + '-2')}), "
                "or stop the other one"
            ],
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held[key] = fd


def lock_path(work_dir: Path) -> Path:
    """The lock file of ``work_dir``: in the temporary folder, named by its real path."""
    digest = hashlib.sha256(os.path.realpath(work_dir).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"comfy-worker-{digest}.lock"


def _holder(fd: int) -> int | None:
    """The pid the holder wrote into the lock file, if it reads as one."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
