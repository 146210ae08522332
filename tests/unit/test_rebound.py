"""engine/runtime/rebound.py: a function made again with one global name standing in."""

from __future__ import annotations

from engine.runtime.rebound import with_global

SCALE = 2


def scaled(value: int, extra: int = 1, *, offset: int = 0) -> int:
    return value * SCALE + extra + offset


def test_the_copy_sees_the_stand_in_and_the_module_does_not() -> None:
    copy = with_global(scaled, "SCALE", 10)
    assert copy(3) == 31  # defaults kept: extra=1
    assert copy(3, 0, offset=5) == 35  # keyword-only default kept, and overridable
    assert scaled(3) == 7  # the module's own name, and the original, untouched
    assert SCALE == 2
    assert copy.__name__ == "scaled"
