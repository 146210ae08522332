"""Node packs that failed to import at boot, kept so a job can name them.

ComfyUI imports each custom node pack (and each of its own node files) with
``nodes.load_custom_node``, which catches any exception, logs its traceback and
returns ``False``: the cause lives only in the boot log, and a job using one of the
pack's node types hears only that the type "does not exist". :func:`watch` wraps that
function so every failure is also written down here, with the pack's path and the
exception's last line. The exception is taken from ComfyUI's own
``traceback.format_exc()`` call, not from its log lines, so it is caught whatever
``COMFY_LOG_LEVEL`` hides.

When a job names a node type the engine does not know, :meth:`PackImports.describe_unknown`
says which failed packs may hold it (the type's name, or its name without the
``(pack)`` suffix many packs add, appears as a string literal in the pack's Python
files), with their import errors, and otherwise that the type is not installed.
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

log = logging.getLogger(__name__)

# Bounds on what is read from a failed pack to match node types: a pack's own code is
# a few MB at most; a vendored model or dataset folder must not be read at job time.
_MAX_FILES = 2000
_MAX_FILE_BYTES = 2 * 1024 * 1024
_MAX_LISTED_PACKS = 5

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

    def describe(self) -> str:
        """``<folder> (<error>)`` for a detail line."""
        where = self.path.name if self.group == "custom_nodes" else f"{self.group}/{self.path.name}"
        return f"{where} ({self.error})"


class PackImports:
    """The packs that failed to import in this process, in load order."""

    def __init__(self) -> None:
        self._failed: list[FailedPack] = []
        self._sources: dict[Path, str] = {}

    @property
    def failed(self) -> tuple[FailedPack, ...]:
        """Every failure recorded so far."""
        return tuple(self._failed)

    def record(self, path: str | Path, group: str, error: str) -> None:
        """Write down one failed import (called by the wrapper :func:`watch` installs)."""
        self._failed.append(FailedPack(path=Path(path), group=group, error=error))

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
            return (
                f"Node type '{class_type}' is not available (used by {used_by}): the node pack "
                f"that provides it failed to import at boot: {packs}. Install what the pack "
                "needs (its requirements.txt) in the image, or fix class_type"
            )
        line = (
            f"Node type '{class_type}' is not installed (used by {used_by}): install the "
            "custom node pack that provides it, or fix class_type"
        )
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
            files = [path] if path.is_file() else sorted(path.rglob("*.py"))[:_MAX_FILES]
            parts = []
            for file in files:
                try:
                    if file.suffix == ".py" and file.stat().st_size <= _MAX_FILE_BYTES:
                        parts.append(file.read_text(encoding="utf-8", errors="replace"))
                except OSError:
                    continue
            text = self._sources[path] = "\n".join(parts)
        return text


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
    if not isinstance(getattr(nodes, "traceback", None), _TracebackShim):
        nodes.traceback = _TracebackShim(nodes.traceback)

    async def load_custom_node(
        module_path: str, ignore: Any = frozenset(), module_parent: str = "custom_nodes"
    ) -> bool:
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
            record.record(module_path, module_parent, error)
            log.warning("node pack %s failed to import: %s", module_path, error)
        return loaded

    load_custom_node._records_failures = True  # type: ignore[attr-defined]
    nodes.load_custom_node = load_custom_node
    return record
