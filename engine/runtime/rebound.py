"""A function of ComfyUI's, made again with one of its module's global names standing in
for another, for one call.

The save hand-offs (``animated_save``, ``webm_save``) run a node's own code with a
stand-in for the library it writes with (``PIL.Image``, ``av``). The stand-in goes into a
copy of the function's globals, not into the module: no other thread, and no other node of
the same file, sees it, and nothing has to be put back.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any


def with_global(function: Any, name: str, value: Any) -> Callable[..., Any]:
    """``function`` (a plain function) as it would be if its module's ``name`` were
    ``value``: the same code, defaults and closure over a copy of its globals."""
    namespace = dict(function.__globals__)
    namespace[name] = value
    copy = types.FunctionType(
        function.__code__,
        namespace,
        function.__name__,
        function.__defaults__,
        function.__closure__,
    )
    copy.__kwdefaults__ = function.__kwdefaults__
    return copy
