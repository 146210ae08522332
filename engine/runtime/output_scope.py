"""Holds ComfyUI's file-name functions to the running job's own output and temp folders.

The worker gives each job a folder of its own under ComfyUI's output and temp folders,
and rewrites the literal ``filename_prefix`` values of the request to point there
(``engine.workflow.scope_outputs``, which also refuses literal escapes before anything
runs). A rewrite of the request cannot reach a value made while the graph runs: a prefix
or a loader's file name wired from another node (a string node, a pack's "any" switch),
the prefix a preview node makes up, a path typed into a path input (VHS_LoadVideoPath).
Every core and pack node that saves or loads a file of those folders goes through three
functions of ComfyUI's ``folder_paths``, looked up on the module at each call; while a job
runs (:func:`scoped`), they are wrapped:

* ``get_save_image_path``: a prefix for the output or temp folder that is not already in
  the job's folder is put there (previews included: the answer's ``subfolder`` drops the
  job's folder again); one that climbs out (``..``), or any target of another job's
  folder, raises ``ValueError``, which fails that node with the message;
* ``get_annotated_filepath`` and ``exists_annotated_filepath``: a name that resolves into
  the output or temp folder outside the job's own folder (``x.png [output]``, an absolute
  path, ``../output/...``) raises ``ValueError`` / reads as absent, so a loader says
  "Invalid image file" and no job reads another's files by any name.

Outside a job (boot, the warm-up workflow) ComfyUI's functions behave as they are.
Jobs run one at a time on the engine thread: the running job's scope is module-wide, so
the threads a node starts see it too. A job's checks (``Runtime.validate``) run on its
own lane while another job runs: they see their job's scope, set for that thread alone
(``this_thread=True``), never the running job's.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine import real_paths

log = logging.getLogger(__name__)

_WRAPPED = "_output_scope"
WRAPS = ("get_save_image_path", "get_annotated_filepath", "exists_annotated_filepath")
"""The functions of ComfyUI's ``folder_paths`` this wraps (``engine.runtime.patches``)."""


@dataclass(frozen=True)
class _Scope:
    folder: str
    """The job's folder name under each root."""
    roots: tuple[str, ...]
    """ComfyUI's output and temp folders, resolved."""
    folders: tuple[str, ...]
    """ComfyUI's input, output and temp folders as ComfyUI names them (``real_paths``)."""

    def own(self, root: str) -> str:
        return str(Path(root) / self.folder)

    def real(self, path: str) -> str:
        """``os.path.realpath(path)``, looking up only the parts below ComfyUI's folders."""
        return real_paths.resolve(path, self.folders)

    def foreign(self, path: str) -> bool:
        """Whether ``path`` lies in the output or temp folder but outside this job's."""
        resolved = self.real(path)
        for root in self.roots:
            if _within(resolved, root):
                return not _within(resolved, self.own(root))
        return False


_scope: _Scope | None = None
"""The running job's scope, for every thread of its run."""
_thread = threading.local()
"""A scope for one thread only (``.scope``): a job checked on its lane while another runs."""
_UNSET = object()


def _current() -> _Scope | None:
    """This thread's own scope if it has one (``None`` included), else the running job's."""
    local = getattr(_thread, "scope", _UNSET)
    return _scope if local is _UNSET else local  # type: ignore[return-value]


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


@contextmanager
def scoped(
    folder: str | None, output_dir: str, temp_dir: str, *, this_thread: bool = False
) -> Iterator[None]:
    """While the block runs, the job owning ``folder`` sees only its own output and temp
    files; ``None`` leaves ComfyUI as it is (a warm-up, a caller without a folder).

    ``this_thread``: for the calling thread alone, whatever job runs meanwhile (a job's
    checks on its lane); otherwise for every thread (the run)."""
    global _scope
    scope = None
    if folder is not None:
        folders = (output_dir, temp_dir, *_input_folder())
        scope = _Scope(folder, (real_paths.fixed(output_dir), real_paths.fixed(temp_dir)), folders)
    if this_thread:
        _thread.scope = scope  # None too: a warm-up's checks never see a running job's scope
        try:
            yield
        finally:
            del _thread.scope
        return
    if scope is None:
        yield
        return
    _scope = scope
    try:
        yield
    finally:
        _scope = None


_input_directory: Callable[[], str] | None = None
"""ComfyUI's ``folder_paths.get_input_directory``, once :func:`install` has run."""


def _input_folder() -> tuple[str, ...]:
    return (_input_directory(),) if _input_directory is not None else ()


def install(folder_paths: Any) -> bool:
    """Wrap ``folder_paths``' three functions (:data:`WRAPS`); whether it did (False when
    already wrapped). The registry's check (``engine.runtime.patches``) comes first."""
    global _input_directory
    save_path, annotated, exists = (getattr(folder_paths, name) for name in WRAPS)
    if any(getattr(f, _WRAPPED, False) for f in (save_path, annotated, exists)):
        return False
    _input_directory = getattr(folder_paths, "get_input_directory", None)
    folder_paths.get_save_image_path = _mark(_save_path(save_path), save_path)
    folder_paths.get_annotated_filepath = _mark(_annotated(annotated), annotated)
    folder_paths.exists_annotated_filepath = _mark(_exists(exists, annotated), exists)
    return True


def _mark(wrapper: Callable[..., Any], original: Callable[..., Any]) -> Callable[..., Any]:
    functools.update_wrapper(wrapper, original)
    setattr(wrapper, _WRAPPED, True)
    return wrapper


def _save_path(original: Callable[..., Any]) -> Callable[..., Any]:
    def get_save_image_path(filename_prefix: Any, output_dir: Any, *args: Any, **kw: Any) -> Any:
        scope = _current()
        if scope is None or not isinstance(filename_prefix, str):
            return original(filename_prefix, output_dir, *args, **kw)
        directory = scope.real(str(output_dir))
        prefix = filename_prefix
        if directory in scope.roots:
            normal = os.path.normpath(prefix.lstrip("/") or "ComfyUI")
            if normal == ".." or normal.startswith("../"):
                raise ValueError(
                    f"filename_prefix {filename_prefix!r} climbs out of the job's output "
                    "folder ('..'); name a file or a folder inside it"
                )
            if normal.split("/")[0] != scope.folder:
                prefix = f"{scope.folder}/{normal}"
        # Where ComfyUI will write: the prefix's folder part, under the node's folder.
        if scope.foreign(str((Path(directory) / os.path.normpath(prefix)).parent)):
            raise ValueError(
                f"filename_prefix {filename_prefix!r} writes into another job's folder; "
                "a job writes only into its own"
            )
        return original(prefix, output_dir, *args, **kw)

    return get_save_image_path


def _refusal(name: str) -> ValueError:
    return ValueError(
        f"{name!r} is not this job's file: the worker's output and temp folders hold other "
        "jobs' files; a job reads the files it sends (input.images) and those baked into "
        "the image"
    )


def _annotated(original: Callable[..., Any]) -> Callable[..., Any]:
    def get_annotated_filepath(name: Any, *args: Any, **kw: Any) -> Any:
        path = original(name, *args, **kw)
        scope = _current()
        if scope is not None and isinstance(path, str) and scope.foreign(path):
            raise _refusal(str(name))
        return path

    return get_annotated_filepath


def _exists(original: Callable[..., Any], annotated: Callable[..., Any]) -> Callable[..., Any]:
    def exists_annotated_filepath(name: Any, *args: Any, **kw: Any) -> Any:
        scope = _current()
        if scope is not None and isinstance(name, str):
            try:
                path = annotated(name)
            except (TypeError, ValueError, OSError):
                path = None
            if isinstance(path, str) and scope.foreign(path):
                log.warning("a node asked for %r, outside this job's folders: not found", name)
                return False
        return original(name, *args, **kw)

    return exists_annotated_filepath
