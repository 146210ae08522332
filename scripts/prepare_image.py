#!/usr/bin/env python3
"""Prepare the image's files once at build, so that no container start redoes the work.

    python prepare_image.py --comfyui /comfyui --venv /opt/venv --cache-dir /opt/cache
    python prepare_image.py --app /app

Run it with the Python that runs the worker (the venv's), after everything it touches
is in place. Each option names one thing to prepare; give one or more.

``--comfyui``, ``--app``, ``--venv``: byte-compile the ``.py`` files of the ComfyUI
checkout (its ``custom_nodes/`` too), of the worker's folder, and of the venv's
site-packages, with ``compileall`` into ``__pycache__/*.pyc`` in the ``unchecked-hash``
mode (PEP 552). The image sets ``PYTHONDONTWRITEBYTECODE=1``, so without these files
every container compiles every module it imports, at every start. An unchecked-hash
``.pyc`` is used without looking at its source's mtime: the image's sources never
change after the build, and a copy between layers or stages that resets mtimes cannot
make it stale. A ``.pyc`` that is already current (pip writes timestamp ones when it
installs a package) is kept as it is: rewriting pip's ~374 MiB of them would only
duplicate them in a new layer for one saved ``stat()`` per module.

``--cache-dir``: write what the first start of a container would otherwise write under
its empty home folder, into image-owned folders that the image then names in its ENV:
matplotlib's font cache (``MPLCONFIGDIR=<dir>/matplotlib``, ~0.8 s at the first import)
and Ultralytics' settings file (``YOLO_CONFIG_DIR=<dir>/ultralytics``), baked with
``YOLO_OFFLINE=true`` and ``YOLO_AUTOINSTALL=false`` as the image runs: no DNS probe at
import, never a pip install at run time. A package that is not installed is skipped.
The caches are made with ``--venv``'s Python when given, else with this one.

``--node-index`` (with ``--app`` and ``--comfyui``): boot the worker once, so ComfyUI's
node index is written beside the checkout (``<comfyui>/.worker-node-index/``; see
engine/runtime/lazy_nodes.py): every container then imports ComfyUI's own node files
only when a job first names one of their types, instead of at boot. Run it after the
packs and the worker's code are in place, with the Python that runs the worker.

Standard library only. Exit status: 0 done; 1 a file of ComfyUI or the worker does not
compile, or a cache was not written; 2 a path is missing or an argument is wrong. A
site-packages file that does not compile is reported but not fatal: pip skips those too.
"""

from __future__ import annotations

import argparse
import compileall
import importlib.util
import os
import py_compile
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
# A boot with every pack takes ~10-15 s on 2 CPU cores; a slow build machine gets 20x.
_BAKE_TIMEOUT_S = 300

# The worker runs without -O (CMD python -u): level 0 is the only .pyc it reads.
OPTIMIZE = 0
# PEP 552: bit 0 set = hash-based, bit 1 set = check the source's hash at import.
_FLAG_HASH = 0b01
_FLAG_CHECK_SOURCE = 0b10
# Failures listed by name in the summary; the rest are counted.
_LIST_FAILURES = 20
# Baking imports matplotlib or ultralytics (with torch) once: seconds on any machine.
_BAKE_TIMEOUT_S = 600.0


class PrepareError(Exception):
    """A step of the preparation failed; the message says which and what to do."""


class UsageError(PrepareError):
    """A path is missing or the arguments do not fit together."""


class PycState(Enum):
    """What a source file's level-0 ``.pyc`` in ``__pycache__`` is, for this Python."""

    UNCHECKED_HASH = "unchecked-hash"
    CHECKED_HASH = "checked-hash"
    TIMESTAMP = "timestamp (current)"
    STALE = "timestamp (stale)"
    MISSING = "missing"


def pyc_state(source: Path) -> PycState:
    """Read the 16-byte header of ``source``'s ``.pyc`` (PEP 552) and say what it is."""
    cached = Path(importlib.util.cache_from_source(str(source), optimization=""))
    try:
        with cached.open("rb") as handle:
            header = handle.read(16)
    except OSError:
        return PycState.MISSING
    if len(header) < 16 or header[:4] != importlib.util.MAGIC_NUMBER:
        return PycState.MISSING  # another Python's, or cut short: this one recompiles it
    flags = int.from_bytes(header[4:8], "little")
    if flags & _FLAG_HASH:
        return PycState.CHECKED_HASH if flags & _FLAG_CHECK_SOURCE else PycState.UNCHECKED_HASH
    stat = source.stat()
    mtime = int.from_bytes(header[8:12], "little")
    size = int.from_bytes(header[12:16], "little")
    current = mtime == int(stat.st_mtime) & 0xFFFF_FFFF and size == stat.st_size & 0xFFFF_FFFF
    return PycState.TIMESTAMP if current else PycState.STALE


def python_sources(root: Path) -> Iterator[Path]:
    """The ``.py`` files that ``compileall.compile_dir(root)`` compiles.

    Like compile_dir: symlinked folders are not entered, symlinked files are followed.
    """
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder, name)
            if name.endswith(".py") and path.is_file():
                yield path


@dataclass(frozen=True)
class CompileReport:
    """One folder compiled: how many sources, each one's ``.pyc`` after, how long."""

    root: Path
    states: Mapping[PycState, int]
    failed: Sequence[Path]
    seconds: float

    @property
    def sources(self) -> int:
        return sum(self.states.values())

    def summary(self) -> str:
        done = self.states.get(PycState.UNCHECKED_HASH, 0)
        kept = self.sources - done - len(self.failed)
        return (
            f"{self.root}: {self.sources} .py files, {done} with an unchecked-hash .pyc, "
            f"{kept} current .pyc kept, {len(self.failed)} failed ({self.seconds:.1f} s)"
        )


def compile_tree(root: Path, workers: int = 0) -> CompileReport:
    """Byte-compile every ``.py`` under ``root`` (unchecked-hash, level 0); then check each.

    ``workers``: processes for compileall (0: one per CPU).
    """
    started = time.perf_counter()
    # force=False: compileall skips a source whose .pyc has the timestamp header it
    # expects (pip's), and rewrites everything else, hash-based ones included.
    compileall.compile_dir(
        root,
        quiet=1,  # errors only
        workers=workers,
        optimize=OPTIMIZE,
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
    )
    states: Counter[PycState] = Counter()
    failed: list[Path] = []
    for source in python_sources(root):
        state = pyc_state(source)
        states[state] += 1
        if state in (PycState.MISSING, PycState.STALE):
            failed.append(source)
    return CompileReport(root, dict(states), failed, time.perf_counter() - started)


def site_packages(venv: Path) -> Path:
    """The venv's site-packages, checked to belong to the Python running this script.

    A ``.pyc`` is only read by the Python version that wrote it: compiling a 3.12 venv
    with 3.11 would give files named ``*.cpython-311.pyc`` that the worker never opens.
    """
    if not (venv / "pyvenv.cfg").is_file():
        raise UsageError(f"--venv {venv} is not a virtual environment (no pyvenv.cfg there)")
    found = sorted(venv.glob("lib/python3*/site-packages"))
    if len(found) != 1:
        raise UsageError(
            f"--venv {venv}: expected one lib/python3.X/site-packages folder, found {len(found)}"
        )
    wanted = f"python{sys.version_info.major}.{sys.version_info.minor}"
    if found[0].parent.name != wanted:
        raise UsageError(
            f"--venv {venv} is for {found[0].parent.name} but this is {wanted}: "
            f"run this script with {venv / 'bin' / 'python'}"
        )
    return found[0]


@dataclass(frozen=True)
class Cache:
    """One first-start cache: the package that writes it, where, and the ENV that says so."""

    name: str
    module: str  # imported once to write the cache
    env: str  # the variable that points the package at the folder
    subdir: str  # the folder under --cache-dir
    written: str  # a glob, relative to the folder, that must match after the import

    def folder(self, cache_dir: Path) -> Path:
        return cache_dir / self.subdir


CACHES = (
    Cache("matplotlib font cache", "matplotlib.font_manager", "MPLCONFIGDIR",
          "matplotlib", "fontlist-*.json"),
    # ultralytics >= 8.3 reads YOLO_CONFIG_DIR and writes <dir>/Ultralytics/settings.json;
    # it falls back to /tmp/Ultralytics when <dir> does not exist yet.
    Cache("Ultralytics settings", "ultralytics.utils", "YOLO_CONFIG_DIR",
          "ultralytics", "Ultralytics/settings.json"),
)  # fmt: skip

# Set in the image's ENV next to the cache folders. ultralytics.utils reads both at
# import (8.3.x: is_online() returns False at once for YOLO_OFFLINE=true instead of two
# DNS lookups; checks.check_requirements pip-installs only when YOLO_AUTOINSTALL is true).
RUNTIME_ENV = {"YOLO_OFFLINE": "true", "YOLO_AUTOINSTALL": "false"}

# The child exits with this when the package is not installed at all.
_NOT_INSTALLED = 3
_BAKE_CODE = """\
import importlib, importlib.util, sys
if importlib.util.find_spec(sys.argv[1].partition(".")[0]) is None:
    sys.exit(int(sys.argv[2]))
importlib.import_module(sys.argv[1])
"""


def cache_env(cache_dir: Path) -> dict[str, str]:
    """The ENV the image must set for the caches baked under ``cache_dir`` to be used."""
    return {cache.env: str(cache.folder(cache_dir)) for cache in CACHES} | RUNTIME_ENV


def check_env(cache_dir: Path, env: Mapping[str, str]) -> None:
    """Refuse to bake where the environment (the Dockerfile's ENV) will not look."""
    for name, wanted in cache_env(cache_dir).items():
        value = env.get(name)
        # ultralytics reads its switches case-insensitively ("True" is true too).
        same = value == wanted or (name in RUNTIME_ENV and str(value).lower() == wanted)
        if value is not None and not same:
            raise UsageError(
                f"{name} is {value!r} here but the caches are for {name}={wanted}: "
                f"make the image's ENV and --cache-dir agree"
            )


def bake_caches(python: Path, cache_dir: Path) -> list[str]:
    """Import what writes each cache, in a child ``python`` with the image's ENV; one line each."""
    env = {**os.environ, **cache_env(cache_dir)}
    lines = []
    for cache in CACHES:
        folder = cache.folder(cache_dir)
        # Created first: ultralytics only uses YOLO_CONFIG_DIR when it can write there.
        folder.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        result = subprocess.run(
            [str(python), "-c", _BAKE_CODE, cache.module, str(_NOT_INSTALLED)],
            env=env,
            # ultralytics stores the working folder as its datasets_dir: the cache's own
            # folder, whatever folder the build runs in.
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=_BAKE_TIMEOUT_S,
            check=False,
        )
        seconds = time.perf_counter() - started
        if result.returncode == _NOT_INSTALLED:
            lines.append(f"{cache.name}: skipped, {cache.module} is not installed")
            continue
        if result.returncode != 0:
            raise PrepareError(
                f"{cache.name}: `import {cache.module}` failed (exit {result.returncode}):\n"
                f"{result.stderr[-2000:]}"
            )
        written = sorted(folder.glob(cache.written))
        if not written:
            raise PrepareError(
                f"{cache.name}: `import {cache.module}` wrote no {cache.written} under "
                f"{folder}; its output:\n{(result.stdout + result.stderr)[-2000:]}"
            )
        lines.append(f"{cache.name}: {', '.join(map(str, written))} ({seconds:.1f} s)")
    return lines


# Boots the worker's runtime once; run with the worker's folder first on sys.path.
_BOOT = """
import os, sys
sys.path.insert(0, os.environ["WORKER_APP"])
from engine.runtime.comfy import ComfyRuntime
from engine.settings import Settings
runtime = ComfyRuntime(Settings.from_env(os.environ))
runtime.boot()
print(runtime.node_count)
"""
# What the worker would read at boot and that the build must not see: the index is
# made for the image's own packs and paths, with API nodes left lazy (no key).
_NOT_AT_BUILD = ("EXTRA_MODEL_PATHS", "WARMUP_WORKFLOW", "COMFY_ORG_API_KEY")


def bake_node_index(python: Path, app: Path, comfyui: Path) -> list[str]:
    """Boot the worker once so that ComfyUI's node index lands beside the checkout."""
    folder = comfyui / ".worker-node-index"
    before = set(folder.glob("node-index-*.json")) if folder.is_dir() else set()
    with tempfile.TemporaryDirectory(prefix="node-index-") as work:
        env = {k: v for k, v in os.environ.items() if k not in _NOT_AT_BUILD}
        env.update(
            WORKER_APP=str(app),
            COMFYUI_PATH=str(comfyui),
            WORKER_DIR=work,
            COMFY_LOG_LEVEL="WARNING",
        )
        done = subprocess.run(
            [str(python), "-c", _BOOT],
            env=env,
            cwd=work,
            capture_output=True,
            text=True,
            timeout=_BAKE_TIMEOUT_S,
            check=False,
        )
    if done.returncode != 0:
        raise PrepareError(
            f"the worker did not boot to make the node index:\n{done.stderr[-3000:]}"
        )
    written = sorted(set(folder.glob("node-index-*.json")) - before) if folder.is_dir() else []
    if not written and not before:
        raise PrepareError(f"the worker booted but wrote no node index into {folder}")
    node_count = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "?"
    names = ", ".join(p.name for p in written) or "already current"
    return [f"node index in {folder}: {names} ({node_count} node types)"]


def _existing_dir(option: str, path: Path | None, marker: str | None = None) -> Path | None:
    if path is None:
        return None
    if not path.is_dir():
        raise UsageError(f"{option} {path}: no such folder")
    if marker is not None and not (path / marker).exists():
        raise UsageError(f"{option} {path}: no {marker} there; is it the right folder?")
    return path.resolve()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--comfyui", type=Path, help="the ComfyUI checkout (with custom_nodes/)")
    parser.add_argument("--app", type=Path, help="the worker's folder (handler.py, engine/)")
    parser.add_argument("--venv", type=Path, help="the venv: compile its site-packages")
    parser.add_argument("--cache-dir", type=Path, help="bake the first-start caches here")
    parser.add_argument(
        "--node-index",
        action="store_true",
        help="boot the worker (--app) once to write ComfyUI's (--comfyui) node index",
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="compile processes (default 0: one per CPU)"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    """Check every path first, then compile and bake; the exit status."""
    comfyui = _existing_dir("--comfyui", args.comfyui, "execution.py")
    app = _existing_dir("--app", args.app, "handler.py")
    venv = _existing_dir("--venv", args.venv)
    packages = site_packages(venv) if venv is not None else None
    python = venv / "bin" / "python" if venv is not None else Path(sys.executable)
    if venv is not None and args.cache_dir is not None and not python.is_file():
        raise UsageError(f"--venv {venv}: no bin/python there to bake the caches with")
    if args.workers < 0:
        raise UsageError("--workers must be 0 (one per CPU) or more")
    cache_dir = args.cache_dir.resolve() if args.cache_dir is not None else None
    if cache_dir is not None:
        check_env(cache_dir, os.environ)
    if args.node_index and (comfyui is None or app is None):
        raise UsageError("--node-index needs --comfyui and --app")
    if not (comfyui or app or venv or cache_dir):
        raise UsageError("nothing to do: give --comfyui, --app, --venv and/or --cache-dir")

    status = EXIT_OK
    started = time.perf_counter()
    for root, fatal in ((comfyui, True), (app, True), (packages, False)):
        if root is None:
            continue
        report = compile_tree(root, args.workers)
        print(f"compiled {report.summary()}", flush=True)
        if report.failed:
            for path in report.failed[:_LIST_FAILURES]:
                print(f"  no .pyc: {path}")
            if len(report.failed) > _LIST_FAILURES:
                print(f"  ... and {len(report.failed) - _LIST_FAILURES} more")
            if fatal:
                print(
                    f"error: {len(report.failed)} file(s) under {root} do not compile: "
                    "they would fail at import in every container",
                    file=sys.stderr,
                )
                status = EXIT_FAILED
    if cache_dir is not None:
        for line in bake_caches(python, cache_dir):
            print(f"baked {line}", flush=True)
        print("the image's ENV must hold:")
        for name, value in cache_env(cache_dir).items():
            print(f"  {name}={value}")
    if args.node_index and comfyui is not None and app is not None:
        for line in bake_node_index(python, app, comfyui):
            print(f"baked {line}", flush=True)
    print(f"done in {time.perf_counter() - started:.1f} s")
    return status


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PrepareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
