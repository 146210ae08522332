"""The ``dict`` that stands in for ComfyUI's node mappings and imports a node type's file
the first time that type is asked for.

Invisible to callers: ``nodes.NODE_CLASS_MAPPINGS`` and ``NODE_DISPLAY_NAME_MAPPINGS``
become :class:`LazyMapping`, a ``dict`` that imports the file behind a name on
``m[name]``, ``name in m`` and ``m.get(name)``, and imports every file on a full walk
(``keys``, ``items``, ``values``, iteration, ``len``). So ComfyUI's validation and
execution, the packs and the UI-format converter see the same mapping as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from engine.runtime.first_use import FirstUseImports


class LazyMapping(dict[str, Any]):
    """A node mapping that imports a node type's file when that type is first asked for.

    Looking one name up (``m[k]``, ``k in m``, ``m.get(k)``) imports at most the file
    that provides it; a full walk imports every pending file first, so it sees every
    node type. Writes are plain ``dict`` writes (ComfyUI's loader fills it).
    """

    def __init__(self, data: dict[str, Any], owner: FirstUseImports) -> None:
        super().__init__(data)
        self._owner = owner

    def __missing__(self, key: str) -> Any:
        if self._owner.load_for(key) and dict.__contains__(self, key):
            return dict.__getitem__(self, key)
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        if dict.__contains__(self, key):
            return True
        return isinstance(key, str) and self._owner.load_for(key) and dict.__contains__(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        """``dict.get``, after importing the file behind ``key`` if it is pending."""
        if key in self:
            return dict.__getitem__(self, key)
        return default

    def _full(self) -> None:
        self._owner.load_all()

    def keys(self) -> Any:
        """Every node type; while ComfyUI loads packs, the pending names without importing."""
        if self._owner.names_only:
            return dict.keys(self) | self._owner.pending_names()
        self._full()
        return dict.keys(self)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def items(self) -> Any:
        """Every node type and its class, after importing every pending file."""
        self._full()
        return dict.items(self)

    def values(self) -> Any:
        """Every class, after importing every pending file."""
        self._full()
        return dict.values(self)

    def copy(self) -> dict[str, Any]:
        """A plain ``dict`` of every node type."""
        self._full()
        return dict(dict.items(self))

    def __repr__(self) -> str:
        self._full()
        return dict.__repr__(self)

    def __eq__(self, other: object) -> bool:
        self._full()
        return dict.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = None

    def pop(self, key: str, *default: Any) -> Any:
        """``dict.pop``, after importing the file behind ``key`` if it is pending."""
        _ = key in self
        return dict.pop(self, key, *default)

    def setdefault(self, key: str, default: Any = None) -> Any:
        """``dict.setdefault``, after importing the file behind ``key`` if it is pending."""
        _ = key in self
        return dict.setdefault(self, key, default)
