#!/usr/bin/env python3
"""The image's Python environment, locked: comfyui/image.in -> comfyui/image.lock.

    scripts/lock_image.py            # compile comfyui/image.lock from comfyui/image.in
    scripts/lock_image.py --inputs   # first rewrite comfyui/image.in from its sources
    scripts/lock_image.py --upgrade  # resolve afresh, as of EXCLUDE_NEWER (after moving it)
    scripts/lock_image.py --check    # fail (exit 1) when image.in or image.lock is stale

The lock is what the Dockerfile and ``scripts/setup.sh --image-env`` install, with
``--require-hashes --no-deps``: every distribution of the image, pinned with its hashes,
for Python 3.12 on linux x86_64.

Its inputs, in comfyui/image.in, one section each:
- the torch set (the CUDA 12.8 builds contemporary with ComfyUI 0.3.64);
- ComfyUI's requirements.txt at the commit in comfyui/pin.env;
- each pack's requirements.txt (or pyproject.toml's dependencies, where the manifest says
  so) at its commit in comfyui/custom_nodes.json;
- the worker's own dependencies (pyproject.toml).
``--inputs`` rewrites that file from a ComfyUI checkout (``COMFYUI_PATH``, else
comfyui/ComfyUI) and its ``custom_nodes/`` folder (or ``--packs DIR``): run it after a
pin moves. comfyui/image-constraints.txt holds the versions chosen on purpose, each with
its reason; uv resolves the rest as of ``EXCLUDE_NEWER``, keeping the versions the lock
already holds wherever they still fit the inputs: the same inputs always give the same
lock, also when the package index later lists an old release it did not list before
(this happened: uvicorn 0.55.0, released before the date, listed after the lock was
made). A fresh resolve is a decision: move the date and run ``--upgrade``.

``--check`` (CI) needs PyPI but no checkout: the worker and torch sections must match
pyproject.toml and this script, the sections' commits must match the pins, and compiling
again (what the plain command does) must give the committed lock unchanged. With a ComfyUI checkout and its packs present, it
also compares the sections with their requirements files.

The sections, the compile and the lock's reading live in engine/packs/lock.py, which
``scripts/add_custom_nodes.py`` (adding or removing packs in one step) shares.

Exit status: 0 up to date / written, 1 stale, 2 usage or a missing tool.
"""

from __future__ import annotations

import argparse
import difflib
import os
import shutil
import sys
import tempfile
import tomllib
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # engine/packs holds the lock's logic; scripts/ is no package

from engine.packs import PackError  # noqa: E402
from engine.packs import lock as image_lock  # noqa: E402
from engine.packs.comfyui_pin import read_pin  # noqa: E402
from engine.packs.lock import (  # noqa: E402,F401  (re-exported: tests and other scripts)
    COMMIT_RE,
    EXCLUDE_NEWER,
    NO_EMIT,
    PLATFORM,
    PYTHON_VERSION,
    TORCH,
    Section,
    lock_header,
    locked_versions,
    parse_inputs,
    render_inputs,
)
from engine.packs.manifest import Pack, requirements_file  # noqa: E402
from engine.packs.manifest import load as load_manifest  # noqa: E402

INPUTS = ROOT / image_lock.INPUTS
CONSTRAINTS = ROOT / image_lock.CONSTRAINTS
LOCK = ROOT / image_lock.LOCK
PIN = ROOT / "comfyui" / "pin.env"
MANIFEST = ROOT / "comfyui" / "custom_nodes.json"
PYPROJECT = ROOT / "pyproject.toml"

EXIT_OK, EXIT_STALE, EXIT_USAGE = 0, 1, 2


class LockError(Exception):
    """A source, a tool or a compile step failed; the message says which and why."""


# -- sources --------------------------------------------------------------------------


def packs() -> list[Pack]:
    """The manifest's packs that bring requirements (rgthree brings none)."""
    return [p for p in load_manifest(MANIFEST) if p.requirements]


def worker_requirements() -> tuple[str, ...]:
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    return tuple(project["dependencies"])


def requirement_lines(path: Path) -> tuple[str, ...]:
    """A requirements file's (or a pyproject.toml's) requirement lines, comments dropped."""
    if not path.is_file():
        raise LockError(f"{path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.name == "pyproject.toml":
        return image_lock.pyproject_dependencies(text)
    return image_lock.requirement_lines(text)


def comfyui_checkout() -> Path:
    raw = os.environ.get("COMFYUI_PATH", "").strip()
    path = Path(raw).expanduser() if raw else ROOT / "comfyui" / "ComfyUI"
    if not (path / "requirements.txt").is_file():
        raise LockError(
            f"no ComfyUI checkout at {path}: set COMFYUI_PATH (or run scripts/setup.sh "
            "--with-comfyui) to read ComfyUI's requirements at the pin"
        )
    return path


def expected_sections(comfyui: Path | None, packs_dir: Path | None) -> list[Section]:
    """image.in's sections as the sources say; upstream ones only when a folder is given."""
    p = read_pin(PIN.read_text(encoding="utf-8"))
    sections = [Section("torch", "the CUDA 12.8 builds (scripts/lock_image.py)", TORCH)]
    comfy_source = f"ComfyUI {p.version} {p.commit} requirements.txt"
    comfy_lines = requirement_lines(comfyui / "requirements.txt") if comfyui else ()
    sections.append(Section("ComfyUI", comfy_source, comfy_lines))
    for pack in packs():
        name, commit = pack.name, pack.commit
        # `requirements: true` is requirements.txt; a pack with only pyproject.toml's
        # dependencies names that file (scripts/add_custom_nodes.py writes either).
        file = requirements_file(pack.requirements)
        lines = requirement_lines(packs_dir / name / file) if packs_dir else ()
        sections.append(Section(name, f"{commit} {file}", lines))
    sections.append(
        Section("worker", "pyproject.toml [project] dependencies", worker_requirements())
    )
    return sections


# -- image.in ---------------------------------------------------------------------------


def stale_inputs(committed: Sequence[Section], expected: Sequence[Section]) -> list[str]:
    """What differs between image.in and its sources; upstream bodies only when known."""
    problems = []
    have = {s.name: s for s in committed}
    want = {s.name: s for s in expected}
    for name in sorted(set(have) ^ set(want)):
        where = "image.in has" if name in have else "image.in lacks"
        problems.append(f"{where} a section for {name}")
    for name in want.keys() & have.keys():
        got, need = have[name], want[name]
        if COMMIT_RE.findall(got.source) != COMMIT_RE.findall(need.source):
            problems.append(
                f"{name}: image.in was made at {got.source!r}, the pin is {need.source!r}"
            )
        # Upstream sections are compared only where the upstream file was read.
        if need.lines and got.lines != need.lines:
            problems.append(f"{name}: image.in's requirements differ from {need.source}")
    return problems


# -- the lock ----------------------------------------------------------------------------


def compile_lock(dest: Path, *, upgrade: bool = False) -> None:
    """Resolve image.in under the constraints into ``dest`` (network: PyPI).

    uv keeps the versions ``dest`` already pins where they still fit; ``upgrade`` drops
    them, for a resolve as of ``EXCLUDE_NEWER`` alone.
    """
    try:
        image_lock.compile_lock(ROOT, dest, image_lock.UvCompiler(), upgrade=upgrade)
    except PackError as exc:
        raise LockError(f"uv pip compile failed:\n{chr(10).join(exc.details) or exc}") from exc


# -- commands ---------------------------------------------------------------------------


def write_inputs(packs_dir: Path | None) -> None:
    comfyui = comfyui_checkout()
    folder = packs_dir or comfyui / "custom_nodes"
    INPUTS.write_text(render_inputs(expected_sections(comfyui, folder)), encoding="utf-8")
    print(f"wrote {INPUTS.relative_to(ROOT)} from {comfyui} and {folder}")


def check(packs_dir: Path | None) -> int:
    problems: list[str] = []
    committed = parse_inputs(INPUTS.read_text(encoding="utf-8"))
    try:
        comfyui: Path | None = comfyui_checkout()
    except LockError:
        comfyui = None  # CI: no checkout; the upstream sections are checked by commit only
    folder = packs_dir or (comfyui / "custom_nodes" if comfyui else None)
    if folder is not None and not all((folder / p.name).is_dir() for p in packs()):
        folder = None
    problems += stale_inputs(committed, expected_sections(comfyui, folder))
    with tempfile.TemporaryDirectory() as tmp:
        # Compiled as the plain command compiles it, over the committed lock: the check
        # fails exactly when running that command would change the lock.
        fresh = Path(tmp) / "image.lock"
        shutil.copyfile(LOCK, fresh)
        compile_lock(fresh)
        new, old = fresh.read_text(encoding="utf-8"), LOCK.read_text(encoding="utf-8")
    if new != old:
        diff = difflib.unified_diff(
            old.splitlines(), new.splitlines(), "image.lock", "compiled", lineterm="", n=0
        )
        shown = [line for line in diff if not line.lstrip("+-").lstrip().startswith("--hash")]
        problems.append(
            "comfyui/image.lock differs from a compile of image.in:\n" + "\n".join(shown[:40])
        )
    if problems:
        print("The image lock is stale:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        print(
            "Update it: scripts/lock_image.py (after a pin moved: --inputs first)", file=sys.stderr
        )
        return EXIT_STALE
    checked = "and the upstream requirement files" if folder else "(upstream files by commit)"
    print(f"comfyui/image.lock is up to date with comfyui/image.in {checked}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--inputs", action="store_true", help="rewrite image.in, then compile")
    mode.add_argument("--check", action="store_true", help="exit 1 when anything is stale")
    mode.add_argument(
        "--upgrade", action="store_true", help="resolve afresh, ignoring the lock's versions"
    )
    parser.add_argument(
        "--packs", type=Path, help="folder of pack checkouts (default: <ComfyUI>/custom_nodes)"
    )
    args = parser.parse_args(argv)
    try:
        if args.check:
            return check(args.packs)
        if args.inputs:
            write_inputs(args.packs)
        compile_lock(LOCK, upgrade=args.upgrade)
    except LockError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    versions = locked_versions(LOCK.read_text(encoding="utf-8"))
    print(f"wrote {LOCK.relative_to(ROOT)}: {len(versions)} distributions")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
