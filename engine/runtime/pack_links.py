"""How custom node packs reach each other's modules, which a pack deferred at boot would break.

Two ways, each read when the node index is made (``lazy_nodes`` keeps such packs at boot):

- **By name.** ComfyUI keeps a loaded pack's module in ``sys.modules`` under its folder's
  path; packs find each other there by name (KJNodes' GGUF loader imports ComfyUI-GGUF's
  module by its folder name) or import ``custom_nodes.<folder>``. :func:`named_packs`
  reads the packs' Python files for another pack's folder name as a string literal (any
  case, ``custom_nodes.`` before it or not) or an import of ``custom_nodes.<folder>``.
  A message that quotes the name alone counts too; it only costs that pack's import at
  boot. So does a module a pack's import put into ``sys.modules`` that no finder
  provides (:func:`registered_modules`): another pack's ``import`` of it, or the name as
  a string literal, names the pack that registers it.
- **By what was there when it imported.** A pack that tries a module at import and goes
  on without it (``try: import impact ... except ImportError``) made its choice in
  ComfyUI's load order; imported later, it would find a module that a pack loaded after it
  provides (a ``sys.path`` entry, a ``sys.modules`` entry), and behave otherwise than at
  an eager boot. :class:`Misses` notes the modules no finder resolved during one pack's
  import; :func:`provided_now` says which of them can be found once every pack loaded.

Lookups through ComfyUI's node mapping (``nodes.NODE_CLASS_MAPPINGS["RegionalSampler"]``,
Inspire Pack's way to reach Impact Pack) need neither: the mapping imports a deferred pack
when one of its node types is named.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import os
import re
import sys
from collections.abc import Mapping, Sequence, Set
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

from engine.runtime.pack_imports import python_source


def named_packs(
    packs: Mapping[str, Path], registered: Mapping[str, Sequence[str]] | None = None
) -> dict[str, str]:
    """Pack folder name -> the first other pack whose Python files name it.

    ``packs`` maps each pack's folder name (a one-file pack: its name without ``.py``)
    to its path; ``registered`` a pack's folder name to the modules its import put into
    ``sys.modules`` that nothing else provides (:func:`registered_modules`): another
    pack's ``import``/``from`` of one, or a string literal of it, names that pack too.
    """
    if len(packs) < 2:
        return {}
    folders = "|".join(re.escape(n) for n in sorted(packs, key=len, reverse=True))
    quoted = rf"(['\"])(?:custom_nodes[./])?({folders})\1"
    pattern = re.compile(rf"{quoted}|\bcustom_nodes\.({folders})\b", re.IGNORECASE)
    by_lower = {n.lower(): n for n in packs}
    owner = {m: pack for pack, modules in (registered or {}).items() for m in modules}
    modules = "|".join(re.escape(m) for m in sorted(owner, key=len, reverse=True))
    imports = (
        re.compile(rf"\b(?:import|from)\s+({modules})\b|(['\"])({modules})\2") if owner else None
    )
    named: dict[str, str] = {}
    for referrer, path in packs.items():
        source = python_source(path)
        targets = [by_lower[(m.group(2) or m.group(3)).lower()] for m in pattern.finditer(source)]
        if imports is not None:
            targets += [owner[m.group(1) or m.group(3)] for m in imports.finditer(source)]
        for target in targets:
            if target != referrer:
                named.setdefault(target, referrer)
    return named


def registered_modules(before: Set[str]) -> tuple[str, ...]:
    """Top-level modules in ``sys.modules`` now but not in ``before`` that no finder on
    ``sys.path`` provides: put there by the import that ran since (``sys.modules["x"] =
    ...``), so another pack's ``import x`` works only once that import ran."""
    return tuple(
        sorted(
            name
            for name in sys.modules.keys() - before
            if "." not in name and os.sep not in name and not _findable(name)
        )
    )


class Misses:
    """While the block runs, the modules an import looked for and no finder resolved.

    A finder at the end of ``sys.meta_path`` is asked only for names every finder
    before it declined. Names resolved after all (a finder appended during the block,
    ``six``'s for ``six.moves``) are dropped when the block ends: :attr:`names` holds
    those still missing then.
    """

    def __init__(self) -> None:
        self.names: tuple[str, ...] = ()
        self._asked: list[str] = []

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> None:
        """Note the name; resolve nothing (the import fails as it would without us)."""
        self._asked.append(fullname)

    def __enter__(self) -> Misses:
        sys.meta_path.append(self)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        # ValueError: the import rebuilt sys.meta_path (the recorder reports that).
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        self.names = tuple(dict.fromkeys(n for n in self._asked if n not in sys.modules))


def provided_now(names: Sequence[str]) -> str | None:
    """The first of ``names`` that can be imported now, or None.

    In ``sys.modules`` (a later pack imported or registered it), or, for a top-level
    name, on ``sys.path`` (a later pack added the folder that holds it).
    """
    for name in names:
        if name in sys.modules:
            return name
        if "." not in name and _on_path(name):
            return name
    return None


def _findable(name: str) -> bool:
    """Whether a finder of ``sys.meta_path`` provides ``name`` (built in, on ``sys.path``,
    or a finder's own, as setuptools' for ``distutils``): not only ``sys.modules``."""
    for finder in sys.meta_path:
        find_spec = getattr(finder, "find_spec", None)
        if find_spec is None or isinstance(finder, Misses):
            continue
        if find_spec(name, None) is not None:
            return True
    return False


def _on_path(name: str) -> bool:
    spec: Any = importlib.machinery.PathFinder.find_spec(name)
    return spec is not None
