"""uv's "no solution" mapped back to the packs, requirements and pins it is about.

uv names distributions and version ranges, not where they came from. Every name its
message mentions is looked up in image.in's sections (which pack or source asks for it,
and how) and in comfyui/image-constraints.txt (the pin, with the reason written above
it), so the user reads: the new pack's requirement, the pin it hits, and who needs that pin.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from engine.packs import PackError
from engine.packs.lock import CONSTRAINTS, Section, normalize, requirement_name

_NOT_FOUND = re.compile(r"\b([A-Za-z0-9][A-Za-z0-9._-]*) was not found in the package registry")
_NO_WHEELS = re.compile(
    r"\b([A-Za-z0-9][A-Za-z0-9._-]*)(?:==\S+)? has no wheels with a matching "
    r"(Python ABI tag|platform tag|Python implementation tag)"
)
_NAME_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class Pin:
    """A line of the constraints file and the comment above it (its reason)."""

    line: str
    reason: str


def constraint_pins(text: str) -> dict[str, Pin]:
    """name -> the constraint pinning it, with the comment block written above it."""
    pins: dict[str, Pin] = {}
    comment: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#"):
            comment.append(line.lstrip("#").strip())
        elif not line:
            comment = []
        else:
            name = requirement_name(line)
            if name:
                pins[name] = Pin(line, " ".join(c for c in comment if c))
    return pins


def explain(
    output: str, sections: Sequence[Section], constraints: str, new_packs: Sequence[str]
) -> PackError:
    """The error to show for a failed compile that added (or moved) ``new_packs``."""
    mentioned = {normalize(t) for t in _NAME_TOKEN.findall(output)}
    pins = constraint_pins(constraints)
    details: list[str] = []
    new = set(new_packs)
    for match in _NOT_FOUND.finditer(output):
        for who in _askers(normalize(match[1]), sections, new):
            details.append(
                f"{who} requires {match[1]}, which is not on PyPI (as of the lock's date): "
                "a misspelt name, a package from another index, or one published later"
            )
    for match in _NO_WHEELS.finditer(output):
        for who in _askers(normalize(match[1]), sections, new):
            details.append(
                f"{who} requires {match[1]}, which has no wheel or sdist for Python 3.12 on "
                f"linux x86_64 ({match[2]}): pick a version that has one"
            )
    for name in sorted(mentioned):
        for section in sections:
            if section.name in new:
                details += [
                    f"{section.name} requires {line}"
                    for line in section.lines
                    if requirement_name(line) == name
                ]
    for name in sorted(mentioned):
        others = [
            f"{s.name} ({line})"
            for s in sections
            if s.name not in new
            for line in s.lines
            if requirement_name(line) == name
        ]
        if name in pins:
            pin = pins[name]
            because = f", chosen because: {pin.reason}" if pin.reason else ""
            details.append(f"the pin it hits: {pin.line} in {CONSTRAINTS.as_posix()}{because}")
            if others:
                details.append(f"  {name} is also required by: {', '.join(others)}")
        elif any("==" in o for o in others):
            details.append(f"the pin it hits: {name} is pinned by {', '.join(others)}")
    details.append("uv said:")
    details += [f"  {line}" for line in output.strip().splitlines() if line.strip()]
    details.append(
        "What to do: pick a commit of the pack whose requirements fit, or leave the pack "
        "out (drop its URL; --skip NAME for a snapshot or folder entry); moving a pin in "
        "the constraints file is a decision for the whole image (its reason is above) and "
        "needs the real-engine suite run again"
    )
    packs = ", ".join(new_packs) or "the image's inputs"
    return PackError(
        f"the lock cannot take {packs}: uv found no set of versions that fits", details
    )


def _askers(name: str, sections: Sequence[Section], new: set[str]) -> list[str]:
    who = [s.name for s in sections if any(requirement_name(x) == name for x in s.lines)]
    mine = [w for w in who if w in new]
    return mine or who or ["a requirement"]
