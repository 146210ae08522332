"""Real paths (``os.path.realpath``) of the worker's own folders and of paths below them,
with as few file system calls as the answer needs.

``os.path.realpath`` looks up every part of a path, one ``lstat`` each in pure Python: a
job's file checks made a dozen such calls (a 64x64 job answers 1.05x sooner per pair
without them, docs/benchmarks.md). ComfyUI's input, output and temp folders do not move while the
worker runs (the worker makes them at boot and never replaces one by a link), so each is
resolved once (:func:`fixed`); a path below one of them is resolved by looking only at
its parts below that folder, and with ``os.path.realpath`` as soon as one is a link
(:func:`resolve`): the same answer.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable


@functools.lru_cache(maxsize=64)
def fixed(folder: str) -> str:
    """The real path of one of the worker's own folders, resolved once."""
    return os.path.realpath(folder)


def resolve(path: str, folders: Iterable[str]) -> str:
    """``os.path.realpath(path)``, where each of ``folders`` is one of the worker's own
    (:func:`fixed`): below the first that holds ``path`` as written, each part is
    ``lstat``'ed once, and ``os.path.realpath`` resolves the whole path as soon as one
    is a link. A relative path, or one with ``.`` or ``..`` parts, is resolved whole."""
    if not path.startswith(os.sep):  # relative: resolved against the working folder
        return os.path.realpath(path)
    for folder in folders:
        prefix = folder.rstrip(os.sep) + os.sep
        if path != folder and not path.startswith(prefix):
            continue
        rest = path[len(prefix) :] if path != folder else ""
        parts = [part for part in rest.split(os.sep) if part]  # noqa: PTH206  # strings
        if any(part in {".", ".."} for part in parts):
            return os.path.realpath(path)
        target = fixed(folder)
        for part in parts:
            target = os.path.join(target, part)  # noqa: PTH118  # strings, not Path: faster
            if os.path.islink(target):  # noqa: PTH114
                return os.path.realpath(path)
        return target
    return os.path.realpath(path)
