"""Node packs that failed to import, at boot or on first use, kept so a job can name them.

ComfyUI imports each custom node pack (and each of its own node files) with
``nodes.load_custom_node``, which catches any exception, logs its traceback and
returns ``False``: the cause lives only in the boot log, and a job using one of the
pack's node types hears only that the type "does not exist". :func:`watch` wraps that
function so every failure is also written down here, with the pack's path and the
exception's last line. The exception is taken from ComfyUI's own
``traceback.format_exc()`` call, not from its log lines, so it is caught whatever
``COMFY_LOG_LEVEL`` hides.

Packs deferred at boot (``lazy_nodes``) import through the same wrapper when a job
first names one of their types: a failure then is recorded the same way, marked as
on first use.

When a job names a node type the engine does not know, :meth:`PackImports.describe_unknown`
says which failed packs may hold it (the type's name, or its name without the
``(pack)`` suffix many packs add, appears as a string literal in the pack's Python
files), with their import errors, and otherwise that the type is not installed.
A pack that failed on a missing module is named with that module, the line of its
``requirements.txt`` that would install it, and the one command that bakes the pack
into the image (its git origin and commit, read from its checkout): nothing is
pip-installed at run time (docs/custom-nodes.md says why).

The same wrapper keeps two kinds of folder from loading at all, each with one log line:
a pack whose folder name was already loaded from an earlier custom-nodes folder (the
image's copy, at its locked commit, wins over a network volume's), and ComfyUI-Manager,
a server-side tool that defines no nodes and installs packages when it starts.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.pack_sources import (
    ADD_COMMAND_HINT,
    PackOrigin,
    not_installed,
    read_origin,
    requirement_for_module,
    requirement_lines,
)

log = logging.getLogger(__name__)

# Bounds on what is read from a failed pack to match node types: a pack's own code is
# a few MB at most; a vendored model or dataset folder must not be read at job time.
_MAX_FILES = 2000
_MAX_FILE_BYTES = 2 * 1024 * 1024
_MAX_LISTED_PACKS = 5
# ComfyUI-Manager's folder names (its repository, and the registry's lower-case id).
_MANAGER_FOLDERS = frozenset({"comfyui-manager"})

# "SDXL Empty Latent Image (rgthree)": rgthree builds the name from its base and a
# namespace constant, so only the base is a literal in its code.
_SUFFIX = re.compile(r"\s*\([^()]*\)\s*$")

_capture: contextvars.ContextVar[list[BaseException] | None] = contextvars.ContextVar(
    "pack_import_capture", default=None
)


@dataclass(frozen=True)
class FailedPack:
    """A node pack (a folder, or one ``.py`` file) whose import raised."""

    path: Path
    group: str
    """ComfyUI's ``module_parent``: ``custom_nodes``, ``comfy_extras``, ``comfy_api_nodes``."""
    error: str
    """The exception's last line, e.g. ``ModuleNotFoundError: No module named 'cv2'``."""
    missing_module: str | None = None
    """The module a ``ModuleNotFoundError`` named (``rembg``), else None."""
    requirement: str | None = None
    """The pack's ``requirements.txt`` line that installs ``missing_module``, if it has one."""
    origin: PackOrigin | None = None
    """The pack checkout's git origin and commit, if it has them."""
    on_first_use: bool = False
    """It failed when a job first named one of its node types (a pack deferred at boot,
    ``lazy_nodes``), not at boot."""

    def describe(self) -> str:
        """``<folder> (<error>)`` for a detail line (``<folder> (on first use: <error>)``
        for a pack deferred at boot)."""
        where = self.path.name if self.group == "custom_nodes" else f"{self.group}/{self.path.name}"
        when = "on first use: " if self.on_first_use else ""
        return f"{where} ({when}{self.error})"

    def remedy(self) -> str:
        """What bakes this pack into the image, for a custom node pack; else ``""``."""
        if self.group != "custom_nodes":
            return ""
        if self.missing_module is not None:
            source = (
                f"its requirement '{self.requirement}' installs it"
                if self.requirement
                else f"its requirements.txt does not list a distribution for '{self.missing_module}'"
            )
            why = f"module '{self.missing_module}' is missing from the image ({source})"
        else:
            why = "it needs more than the image holds"
        if self.origin is not None:
            how = f"bake it into the image with its requirements: {self.origin.add_command()}"
        else:
            how = (
                f"bake it into the image with {ADD_COMMAND_HINT} (its folder has no git "
                "origin: add the pack by its repository URL and commit)"
            )
        return f"{self.path.name}: {why}; {how}"


class PackImports:
    """The packs that failed to import in this process, in load order."""

    def __init__(self) -> None:
        self._failed: list[FailedPack] = []
        self._sources: dict[Path, str] = {}
        self.booted = False
        """Set once ComfyUI's node init is over: later failures are of deferred packs."""

    @property
    def failed(self) -> tuple[FailedPack, ...]:
        """Every failure recorded so far."""
        return tuple(self._failed)

    def record(
        self, path: str | Path, group: str, error: str, exc: BaseException | None = None
    ) -> FailedPack:
        """Write down one failed import (called by the wrapper :func:`watch` installs)."""
        folder = Path(path)
        missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
        pack_dir = folder if folder.is_dir() else None
        failed = FailedPack(
            path=folder,
            group=group,
            error=error,
            missing_module=missing,
            requirement=(
                requirement_for_module(missing, requirement_lines(pack_dir))
                if missing and pack_dir is not None
                else None
            ),
            origin=read_origin(pack_dir)
            if pack_dir is not None and group == "custom_nodes"
            else None,
            on_first_use=self.booted,
        )
        self._failed.append(failed)
        return failed

    def providers(self, class_type: str) -> list[FailedPack]:
        """Failed packs whose Python files hold ``class_type`` (or its base) as a literal."""
        names = {class_type, _SUFFIX.sub("", class_type)} - {""}
        literals = [re.compile(rf"""(['"]){re.escape(name)}\1""") for name in names]
        return [
            pack
            for pack in self._failed
            if any(pattern.search(self._source(pack.path)) for pattern in literals)
        ]

    def describe_unknown(self, class_type: str, node_ids: Sequence[str]) -> str:
        """The detail line for a node type the engine does not know."""
        used_by = ("nodes " if len(node_ids) > 1 else "node ") + ", ".join(node_ids)
        providers = self.providers(class_type)
        if providers:
            packs = "; ".join(p.describe() for p in providers)
            remedies = [r for r in (p.remedy() for p in providers) if r]
            fix = (
                ". " + "; ".join(remedies)
                if remedies
                else ". Install what the pack needs (its requirements.txt) in the image"
            )
            when = "" if any(p.on_first_use for p in providers) else " at boot"
            return (
                f"Node type '{class_type}' is not available (used by {used_by}): the node pack "
                f"that provides it failed to import{when}: {packs}{fix}, or fix class_type"
            )
        line = not_installed(class_type, node_ids)
        failed = [p for p in self._failed if p.group == "custom_nodes"]
        if failed:
            shown = "; ".join(p.describe() for p in failed[:_MAX_LISTED_PACKS])
            more = f" and {len(failed) - _MAX_LISTED_PACKS} more" if len(failed) > 5 else ""
            line += f" (node packs that failed to import at boot: {shown}{more})"
        return line

    def _source(self, path: Path) -> str:
        """The text of a pack's Python files, read once and kept."""
        text = self._sources.get(path)
        if text is None:
            text = self._sources[path] = python_source(path)
        return text


def python_source(path: Path) -> str:
    """The text of a pack's Python files (a one-file pack: the file), within bounds."""
    files = [path] if path.is_file() else sorted(path.rglob("*.py"))[:_MAX_FILES]
    parts = []
    for file in files:
        try:
            if file.suffix == ".py" and file.stat().st_size <= _MAX_FILE_BYTES:
                parts.append(file.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            continue
    return "\n".join(parts)


def skip_reason(module_path: str | Path, loaded: dict[str, Path]) -> str | None:
    """Why a custom node folder is not loaded at all, or None to load it.

    ``loaded`` maps folder names already loaded to their paths; a folder that loads
    is added to it.
    """
    path = Path(module_path)
    name = path.name[:-3] if path.name.endswith(".py") else path.name
    if name.lower() in _MANAGER_FOLDERS:
        return (
            "ComfyUI-Manager is a tool for a ComfyUI server: it defines no nodes and installs "
            "packages when it starts; a worker's packs come from the image's lock"
        )
    earlier = loaded.get(name)
    if earlier is not None and earlier != path:
        return f"a pack of that name was already loaded from {earlier} (the first one wins)"
    loaded[name] = path
    return None


RECORD = PackImports()
"""This process's record: ComfyUI's modules, and so its node packs, are process-wide."""


class _TracebackShim:
    """Stands in for the ``traceback`` module inside ComfyUI's ``nodes``.

    ``load_custom_node`` calls ``traceback.format_exc()`` in its ``except`` block; this
    hands the exception being handled to the running :func:`watch` wrapper, then
    formats it as the real module does.
    """

    def __init__(self, real: Any) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def format_exc(self, *args: Any, **kwargs: Any) -> str:
        sink = _capture.get()
        exc = sys.exc_info()[1]
        if sink is not None and exc is not None:
            sink.append(exc)
        text: str = self._real.format_exc(*args, **kwargs)
        return text


def last_line(exc: BaseException) -> str:
    """The last line of ``exc``'s traceback: ``ImportError: ...``."""
    return traceback.format_exception_only(exc)[-1].strip()


def watch(nodes: Any, record: PackImports = RECORD) -> PackImports:
    """Record every failed ``nodes.load_custom_node`` from now on into ``record``.

    Call it once ComfyUI's ``nodes`` module is imported and before ``init_extra_nodes``;
    a second call on the same module does nothing.
    """
    if getattr(nodes.load_custom_node, "_records_failures", False):
        return record
    original = nodes.load_custom_node
    seen: dict[str, Path] = {}
    if not isinstance(getattr(nodes, "traceback", None), _TracebackShim):
        nodes.traceback = _TracebackShim(nodes.traceback)

    async def load_custom_node(
        module_path: str, ignore: Any = frozenset(), module_parent: str = "custom_nodes"
    ) -> bool:
        if module_parent == "custom_nodes":
            reason = skip_reason(module_path, seen)
            if reason is not None:
                log.warning("custom node folder %s not loaded: %s", module_path, reason)
                # True: ComfyUI's import summary would call a folder skipped on purpose
                # "IMPORT FAILED"; the line above says what happened.
                return True
        sink: list[BaseException] = []
        token = _capture.set(sink)
        try:
            loaded = bool(await original(module_path, ignore, module_parent=module_parent))
        finally:
            _capture.reset(token)
        if not loaded:
            error = (
                last_line(sink[-1])
                if sink
                else "it defines no NODE_CLASS_MAPPINGS, or its entry point failed; "
                "see the boot log"
            )
            failed = record.record(module_path, module_parent, error, sink[-1] if sink else None)
            remedy = failed.remedy()
            log.warning(
                "node pack %s failed to import: %s%s",
                module_path,
                error,
                f"; {remedy}" if remedy else "",
            )
        return loaded

    def claim(module_path: str) -> str | None:
        """Take a pack folder's name without importing it (``lazy_nodes`` defers it): a
        later folder of that name is still skipped. Why it would be skipped, or None."""
        return skip_reason(module_path, seen)

    load_custom_node._records_failures = True  # type: ignore[attr-defined]
    load_custom_node.claim = claim  # type: ignore[attr-defined]
    nodes.load_custom_node = load_custom_node
    return record
