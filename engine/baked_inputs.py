"""Makes the files baked into ComfyUI's own input folder readable in the worker's, at boot.

The worker gives ComfyUI an input folder under ``WORKER_DIR`` (each job's files live there
in a folder of their own), so ComfyUI's own ``<ComfyUI>/input`` is not where a workflow's
plain file names are looked up. That folder is where ComfyUI ships ``example.png`` and
where worker-comfyui's Dockerfiles put static inputs (``COPY input/ /comfyui/input/``):
each of its entries is linked into the worker's input folder by its name, so a workflow
that names one finds it as on a ComfyUI server. A file of the worker's own input folder
of the same name wins; links left by an earlier boot to files since removed go.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from engine.job_files import is_job_folder

log = logging.getLogger(__name__)


def link_baked_inputs(source: Path, input_dir: Path) -> list[str]:
    """Link each entry of ``source`` into ``input_dir`` where that name is free; the names
    linked. Nothing happens when ``source`` is missing or is ``input_dir`` itself."""
    try:
        real_source = source.resolve()
        if not real_source.is_dir() or real_source == input_dir.resolve():
            return []
        names = sorted(entry.name for entry in real_source.iterdir())
    except OSError as exc:
        log.warning("could not read the baked input folder %s: %s", source, exc)
        return []
    _remove_dangling_links(real_source, input_dir)
    linked: list[str] = []
    for name in names:
        # The worker's own folder names are swept at boot and made per job: never shadow one.
        if is_job_folder(name):
            continue
        target = input_dir / name
        if os.path.lexists(target):  # the worker's own file, or an earlier boot's link
            continue
        try:
            target.symlink_to(real_source / name)
        except OSError as exc:
            log.warning("could not link baked input %s into %s: %s", name, input_dir, exc)
            continue
        linked.append(name)
    return linked


def _remove_dangling_links(real_source: Path, input_dir: Path) -> None:
    """Remove links an earlier boot made to entries of ``real_source`` that are gone."""
    try:
        entries = list(input_dir.iterdir())
    except OSError:
        return
    for entry in entries:
        try:
            if (
                entry.is_symlink()
                and entry.readlink().is_relative_to(real_source)
                and not entry.exists()
            ):
                entry.unlink()
        except OSError as exc:
            log.warning("could not remove the stale link %s: %s", entry, exc)
