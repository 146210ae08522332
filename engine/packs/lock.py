"""comfyui/image.in and comfyui/image.lock: sections, the compile, the lock's pins and graph.

The image's Python environment is one lock, compiled by uv from image.in (one section per
source: torch, ComfyUI, each pack, the worker) under comfyui/image-constraints.txt, as of
:data:`EXCLUDE_NEWER`. Everything here takes the folder the three files live in (the
repository, or a temporary copy of its ``comfyui/`` files), so a compile can be tried
without touching the committed files; the paths inside the compile are relative, which
keeps the lock's ``# via -r comfyui/image.in`` lines the same wherever it ran.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from engine.pack_sources import normalise
from engine.packs import PackError

INPUTS = Path("comfyui/image.in")
CONSTRAINTS = Path("comfyui/image-constraints.txt")
LOCK = Path("comfyui/image.lock")

PYTHON_VERSION = "3.12"  # Ubuntu 24.04's Python, which the image's venv is made with
PLATFORM = "x86_64-manylinux_2_28"  # RunPod's GPUs are x86_64; glibc 2.39 in the image
# Newest release date the resolver may take. Moving it is how the lock takes updates.
EXCLUDE_NEWER = "2026-12-01T00:00:00Z"
# The CPU wheel installs the same `onnxruntime` module as onnxruntime-gpu (see the
# constraints file): left out so the GPU build's files are the only ones.
NO_EMIT = ("onnxruntime",)
# PyPI's torch 2.8.0 for linux x86_64 is the CUDA 12.8 build (its nvidia-* libraries
# come from PyPI too), so one index serves the whole lock.
TORCH = ("torch==2.8.0", "torchvision==0.23.0", "torchaudio==2.8.0")
# What `# via` says of a distribution image.in asks for by name.
VIA_INPUTS = f"-r {INPUTS.as_posix()}"

SECTION_RE = re.compile(r"^# == (?P<name>[^=]+?) == (?P<source>.*)$")
COMMIT_RE = re.compile(r"\b[0-9a-f]{40}\b")
_NAME_RE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_PIN_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")

_INPUTS_HEADER = """\
# Inputs of the image's Python environment, one section per source. Written by
# `scripts/lock_image.py --inputs` (edit the sources, not this file); compiled with
# comfyui/image-constraints.txt into comfyui/image.lock.
"""


class CompileError(PackError):
    """uv could not resolve image.in under the constraints; ``output`` is what it said."""

    def __init__(self, output: str) -> None:
        super().__init__("uv pip compile failed", [output])
        self.output = output


@dataclass(frozen=True)
class Section:
    """One block of image.in: where its requirements come from, and the lines."""

    name: str
    source: str
    lines: tuple[str, ...]


@dataclass(frozen=True)
class LockEntry:
    """One distribution the lock pins, and what asked for it (uv's ``# via`` lines)."""

    name: str
    version: str
    via: tuple[str, ...]


# A distribution's canonical name (PEP 503): ``Foo_Bar`` -> ``foo-bar``; the worker's pack
# diagnosis compares names with the same function.
normalize = normalise


def requirement_name(line: str) -> str | None:
    """The distribution a requirement line names (normalised); None for a URL or option."""
    if line.startswith("-") or "://" in line.split(";", 1)[0].split(" @ ", 1)[0]:
        return None
    match = _NAME_RE.match(line)
    return normalize(match[1]) if match else None


def requirement_lines(text: str) -> tuple[str, ...]:
    """A requirements file's requirement lines, comments and blank lines dropped."""
    lines = []
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return tuple(lines)


def pyproject_dependencies(text: str) -> tuple[str, ...]:
    """``[project] dependencies`` of a pyproject.toml's text (empty when it has none)."""
    try:
        project = tomllib.loads(text).get("project", {})
    except tomllib.TOMLDecodeError as exc:
        raise PackError(f"pyproject.toml cannot be read: {exc}") from exc
    deps = project.get("dependencies", []) if isinstance(project, dict) else []
    return tuple(str(d).strip() for d in deps if str(d).strip())


# -- image.in --------------------------------------------------------------------------


def render_inputs(sections: Sequence[Section]) -> str:
    out = [_INPUTS_HEADER]
    for section in sections:
        out.append(f"\n# == {section.name} == {section.source}\n")
        out.extend(f"{line}\n" for line in section.lines)
    return "".join(out)


def parse_inputs(text: str) -> list[Section]:
    sections: list[Section] = []
    name = source = None
    lines: list[str] = []
    for raw in text.splitlines():
        match = SECTION_RE.match(raw)
        if match:
            if name is not None:
                sections.append(Section(name, str(source), tuple(lines)))
            name, source, lines = match["name"], match["source"], []
        elif raw.strip() and not raw.startswith("#") and name is not None:
            lines.append(raw.strip())
    if name is not None:
        sections.append(Section(name, str(source), tuple(lines)))
    return sections


# -- the lock ----------------------------------------------------------------------------


def locked_versions(text: str) -> dict[str, str]:
    """name -> version of every distribution a lock pins."""
    versions = {}
    for line in text.splitlines():
        match = _PIN_RE.match(line)
        if match:
            versions[match[1].lower()] = match[2]
    return versions


def lock_entries(text: str) -> dict[str, LockEntry]:
    """Every pinned distribution with its ``# via`` list, by normalised name."""
    entries: dict[str, LockEntry] = {}
    current: tuple[str, str] | None = None
    via: list[str] = []

    def close() -> None:
        if current is not None:
            entries[normalize(current[0])] = LockEntry(current[0], current[1], tuple(via))

    for line in text.split("# This file was autogenerated by uv", 1)[-1].splitlines():
        match = _PIN_RE.match(line)
        if match:
            close()
            current, via = (match[1], match[2]), []
            continue
        stripped = line.strip()
        if stripped.startswith("# via"):
            rest = stripped[len("# via") :].strip()
            if rest:
                via.append(rest)
        elif stripped.startswith("#   ") and current is not None:
            via.append(stripped.lstrip("#").strip())
    close()
    return entries


def lock_header(constraints_text: str) -> str:
    """The lock's own header: what it is, and the constraints file with every reason."""
    lines = [
        "# The image's Python environment: Python 3.12, linux x86_64, every distribution",
        "# pinned with its hashes. Do not edit: scripts/lock_image.py writes it from",
        "# comfyui/image.in (torch, ComfyUI's and the packs' requirements at their pins, the",
        "# worker's dependencies) under the constraints below, resolved as of",
        f"# {EXCLUDE_NEWER}. The Dockerfile and `scripts/setup.sh --image-env` install",
        "# exactly this file (pip install --require-hashes --no-deps).",
        "#",
        "# comfyui/image-constraints.txt, the versions chosen on purpose and why:",
    ]
    for raw in constraints_text.splitlines():
        lines.append(f"# | {raw}".rstrip())
    return "\n".join(lines) + "\n#\n"


class LockCompiler(Protocol):
    """Resolves ``root``'s image.in under its constraints into ``output`` (the body only).

    ``output`` may already hold a lock: its versions are kept where they still fit.
    Raises :class:`CompileError` with the resolver's own words when there is no solution.
    """

    def compile(self, root: Path, output: Path, *, upgrade: bool = False) -> None: ...


class UvCompiler:
    """The real compile: ``uv pip compile`` against PyPI (network)."""

    def __init__(self, uv: Sequence[str] | None = None) -> None:
        self._uv = list(uv) if uv else None

    def command(self) -> list[str]:
        """uv, from this interpreter (the dev tools install it) or from PATH."""
        if self._uv is None:
            for cmd in ([sys.executable, "-m", "uv"], ["uv"]):
                try:
                    subprocess.run([*cmd, "--version"], capture_output=True, check=True)
                except (OSError, subprocess.CalledProcessError):
                    continue
                self._uv = cmd
                break
            else:
                raise PackError(
                    "uv is not installed: run scripts/setup.sh (the dev tools include it)"
                )
        return self._uv

    def compile(self, root: Path, output: Path, *, upgrade: bool = False) -> None:
        cmd = [
            *self.command(),
            "pip",
            "compile",
            "--quiet",
            "--generate-hashes",
            "--python-version",
            PYTHON_VERSION,
            "--python-platform",
            PLATFORM,
            "--exclude-newer",
            EXCLUDE_NEWER,
            "--index-url",
            "https://pypi.org/simple",
            "--custom-compile-command",
            "scripts/lock_image.py",
            *[arg for name in NO_EMIT for arg in ("--no-emit-package", name)],
            "--constraint",
            CONSTRAINTS.as_posix(),
            INPUTS.as_posix(),
            "--output-file",
            str(output),
            *(["--upgrade"] if upgrade else []),
        ]
        # Relative paths and no user config: the lock's "# via" lines and resolution must
        # not depend on who runs it, or on a machine's pip/uv settings.
        env = {**os.environ, "UV_NO_CONFIG": "1", "UV_PYTHON_DOWNLOADS": "never"}
        for key in ("UV_INDEX_URL", "UV_EXTRA_INDEX_URL", "UV_FIND_LINKS", "UV_CONSTRAINT"):
            env.pop(key, None)
        result = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise CompileError((result.stderr or result.stdout).strip())


def compile_lock(
    root: Path, output: Path, compiler: LockCompiler, *, upgrade: bool = False
) -> None:
    """Compile ``root``'s image.in into ``output`` and put the lock's header on it."""
    compiler.compile(root, output, upgrade=upgrade)
    body = output.read_text(encoding="utf-8")
    constraints = (root / CONSTRAINTS).read_text(encoding="utf-8")
    output.write_text(lock_header(constraints) + body, encoding="utf-8")
