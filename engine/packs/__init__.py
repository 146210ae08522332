"""Custom node packs joining the image: the manifest, image.in, the lock and its compile.

Build-time code for ``scripts/add_custom_nodes.py`` and ``scripts/lock_image.py``; it
imports neither ComfyUI nor torch, and nothing in the worker imports it. Its failures are
:class:`PackError` (a build tool's, not a job's: ``engine/errors.py`` holds those).

- ``lock``: image.in's sections, the uv compile behind :class:`lock.LockCompiler`, the
  lock's pins and ``# via`` graph;
- ``manifest``: comfyui/custom_nodes.json, read and written;
- ``gitcli``: git's command line (ls-remote, partial fetches, reading files at a commit);
- ``sources``: what the user names (a URL, a ComfyUI-Manager snapshot, a ComfyUI folder)
  turned into packs pinned to commits, read through git;
- ``inspect``: what a pack needs that the lock cannot give (its setup scripts, system
  libraries, requirements that are not on PyPI);
- ``conflicts``: uv's resolver error mapped back to the packs and pins it names;
- ``add``: the command itself, which writes nothing until the compile succeeded.
"""

from __future__ import annotations


class PackError(Exception):
    """A pack cannot be added or removed as asked; the message says what to do."""

    def __init__(self, message: str, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = list(details or [])

    def __str__(self) -> str:
        return "\n".join([self.message, *(f"  {line}" for line in self.details)])
