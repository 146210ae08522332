#!/usr/bin/env python3
"""Image boot: the worker's start as the image starts today, against a prepared image.

Both sides boot the worker in a fresh child process as ``handler.py`` does (import
``handler``, ``Settings.from_env``, ``Worker.from_settings(...).boot()``: torch, ComfyUI
and every node, the checkout's custom node packs included) from their own copy of the
ComfyUI checkout (``--comfyui``, with its ``custom_nodes/``) and of the worker's code:

- **today**: no ``.pyc`` anywhere in ComfyUI, the packs or the worker's code, and
  ``PYTHONDONTWRITEBYTECODE=1`` as in the image, so every start compiles them; an empty
  home folder and no ``MPLCONFIGDIR`` / ``YOLO_*``, so every start writes matplotlib's
  font cache and Ultralytics' settings there, as a new container does.
- **prepared**: ``scripts/prepare_image.py --comfyui --app --cache-dir`` ran on the copy
  (unchecked-hash ``.pyc`` files, the caches baked), its ENV set, an empty home folder;
  each start gets a fresh copy of the baked caches, as each container gets the layer.

The venv's site-packages are shared by both sides as they are (this Python's); the
report says how many of their modules have a current ``.pyc``. The image's pip writes
them all at install: measure with a venv where that is true too, or both sides compile
site-packages at every start.

The sides take turns (AB, BA, ...), after untimed starts of each that put the files
in the page cache. Times are from just before the process is spawned. The runtime's
boot timings split the boot; node init is split by what ComfyUI loads: each custom node
pack, its own ``comfy_extras`` and its API nodes (timed around ComfyUI's
``nodes.load_custom_node``).

    COMFYUI_PATH=/path/to/ComfyUI python scripts/bench_boot.py
    python scripts/bench_boot.py --comfyui /path/to/ComfyUI --packs /path/to/packs --repeat 10

``--packs DIR`` adds each folder of DIR to the copies' ``custom_nodes/``. Five rounds
(the default) of two starts take ~3 min with five packs on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

# The child's report on stdout starts with this, so log lines cannot be mistaken for it.
_REPORT_PREFIX = "BENCH-BOOT "
# A start took 12-30 s on 2 CPU cores; ten times that is a hang, not a slow start.
_CHILD_TIMEOUT_S = 300.0
_REPO = Path(__file__).resolve().parents[1]
_SIDES = ("today", "prepared")
# What a checkout holds besides code: data folders that can be gigabytes (models) and
# that no side compiles or imports.
_CHECKOUT_DATA = {"models", "input", "output", "temp", "user"}
# Set by the image or the host, and read at boot: each side sets its own.
_SIDE_VARIABLES = (
    "MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "HOME", "PYTHONPYCACHEPREFIX",
)  # fmt: skip


# -- the child --------------------------------------------------------------------------


class _TimeNodeLoads(importlib.abc.MetaPathFinder):
    """Times each call of ComfyUI's ``nodes.load_custom_node``: one per pack or node file.

    ComfyUI logs its custom nodes' import times to 0.1 s only, and not comfy_extras' or
    the API nodes'. This finder sees ComfyUI's ``nodes.py`` being imported and wraps
    that function once the module has run, before the runtime calls ``init_extra_nodes``.
    """

    def __init__(self, checkout: str, loads: list[dict[str, Any]]) -> None:
        self.checkout = os.path.realpath(checkout)
        self.loads = loads

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "nodes" or path is not None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or spec.origin is None:
            return None
        if not os.path.realpath(spec.origin).startswith(self.checkout + os.sep):
            return None
        sys.meta_path.remove(self)
        run_module = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run_module(module)
            functions = vars(module)  # ComfyUI's nodes.py: untyped
            functions["load_custom_node"] = self._timed(functions["load_custom_node"])

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec

    def _timed(
        self, load: Callable[..., Coroutine[Any, Any, bool]]
    ) -> Callable[..., Coroutine[Any, Any, bool]]:
        async def timed(module_path: str, *args: Any, **kwargs: Any) -> bool:
            parent = kwargs.get("module_parent", args[1] if len(args) > 1 else "custom_nodes")
            started = time.perf_counter()
            ok = False
            try:
                ok = await load(module_path, *args, **kwargs)
                return ok
            finally:
                seconds = time.perf_counter() - started
                self.loads.append({"path": module_path, "parent": parent, "s": seconds, "ok": ok})

        return timed


def child_main(spec_path: Path) -> int:
    """In the child: boot the worker as ``handler.py`` does, print the times."""
    main_at = time.time()
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    sys.path.insert(0, spec["app"])  # as for handler.py in its own folder
    loads: list[dict[str, Any]] = []
    sys.meta_path.insert(0, _TimeNodeLoads(os.environ["COMFYUI_PATH"], loads))

    started = time.perf_counter()
    # The real entry point: it patches the SDK's slow CPU probe, then imports the SDK.
    import handler

    handler_s = time.perf_counter() - started
    import engine
    from engine import logs
    from engine.settings import Settings
    from engine.worker import Worker

    started = time.perf_counter()
    settings = Settings.from_env(os.environ)
    logs.configure(settings.comfy_log_level, settings.secrets())
    worker = Worker.from_settings(settings)
    worker.boot()
    boot_s = time.perf_counter() - started
    ready_at = time.time()

    report = {
        "main_at": main_at,
        "ready_at": ready_at,
        "handler_import_s": handler_s,
        "boot_s": boot_s,
        "boot_timings": dict(getattr(worker.runtime, "boot_timings", {})),
        "node_count": getattr(worker.runtime, "node_count", None),
        "loads": loads,
        # Proof that the copy ran, not the repository's (an editable install also has it).
        "code": [handler.__file__, engine.__file__],
    }
    print(_REPORT_PREFIX + json.dumps(report), flush=True)
    return 0


# -- the copies -------------------------------------------------------------------------


def copy_checkout(checkout: Path, dest: Path, packs: Path | None) -> None:
    """The checkout's code without a single ``.pyc``; symlinked packs become folders.

    ``packs``: a folder whose sub-folders are custom node packs, added to the copy's
    ``custom_nodes/`` (as ``install_custom_nodes.py --from`` would link them).
    """

    def ignore(folder: str, names: list[str]) -> set[str]:
        skip = {n for n in names if n in {"__pycache__", ".git"} or n.endswith(".pyc")}
        if Path(folder).resolve() == checkout:
            skip |= _CHECKOUT_DATA & set(names)
        return skip

    # symlinks=False: copy what a link points to, as the image holds real folders (and
    # compileall does not enter a symlinked folder).
    shutil.copytree(checkout, dest, ignore=ignore, ignore_dangling_symlinks=True)
    for pack in pack_folders(packs) if packs else []:
        shutil.copytree(
            pack,
            dest / "custom_nodes" / pack.name,
            ignore=shutil.ignore_patterns("__pycache__", ".git", "*.pyc"),
            ignore_dangling_symlinks=True,
        )


def pack_folders(folder: Path) -> list[Path]:
    """The custom node packs in ``folder``: its sub-folders, bar hidden and cache ones."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))


def copy_app(dest: Path) -> None:
    """What the image copies to /app and the worker reads: handler.py, engine/, comfyui/*."""
    dest.mkdir(parents=True)
    shutil.copy2(_REPO / "handler.py", dest / "handler.py")
    shutil.copytree(
        _REPO / "engine", dest / "engine", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    # comfyui/ holds the model paths yaml the runtime loads; its ComfyUI/ is a checkout.
    (dest / "comfyui").mkdir()
    for path in (_REPO / "comfyui").iterdir():
        if path.is_file():
            shutil.copy2(path, dest / "comfyui" / path.name)


def count_pyc(*roots: Path) -> int:
    return sum(1 for root in roots for _ in root.rglob("*.pyc"))


def count_py(*roots: Path) -> int:
    return sum(1 for root in roots for _ in root.rglob("*.py"))


def files_under(root: Path) -> dict[str, tuple[int, int]]:
    """Each file under ``root``: its size and mtime, by relative path."""
    if not root.is_dir():
        return {}
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def run_prepare(prepared: Path) -> tuple[float, str]:
    """``scripts/prepare_image.py`` on the prepared copy; its seconds and output."""
    from prepare_image import cache_env

    # The host's own cache variables would be refused: prepare_image.py checks that they
    # name the folders it bakes.
    env = {k: v for k, v in os.environ.items() if k not in cache_env(prepared)}
    # The caches are baked by importing matplotlib and ultralytics with this Python: it
    # must not write .pyc files into the venv that both sides share.
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    argv = [
        sys.executable,
        str(_REPO / "scripts" / "prepare_image.py"),
        *("--comfyui", str(prepared / "ComfyUI")),
        *("--app", str(prepared / "app")),
        *("--cache-dir", str(prepared / "cache")),
    ]
    started = time.perf_counter()
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"prepare_image.py failed:\n{result.stdout}\n{result.stderr}")
    return seconds, result.stdout


def _variables_of_caches() -> set[str]:
    from prepare_image import cache_env

    return set(cache_env(Path("/"))) | set(_SIDE_VARIABLES)


def site_packages_state() -> tuple[Path, Counter[str]]:
    """This Python's site-packages: how many ``.py`` files have which kind of ``.pyc``."""
    from prepare_image import pyc_state, python_sources

    packages = Path(sysconfig.get_paths()["purelib"])
    return packages, Counter(pyc_state(s).value for s in python_sources(packages))


# -- one start --------------------------------------------------------------------------


def run_start(side: str, root: Path, sides: Path, timeout_s: float) -> dict[str, Any]:
    """Start one worker process on ``side``'s copy and let it boot; its times and writes."""
    root.mkdir(parents=True)
    copy = sides / side
    home = root / "home"
    home.mkdir()
    spec = root / "spec.json"
    spec.write_text(json.dumps({"app": str(copy / "app")}), encoding="utf-8")
    env = {
        key: value
        for key, value in os.environ.items()
        # Base64 delivery, no warm-up workflow, no RunPod: the plain worker.
        if not key.startswith(("BUCKET_", "RUNPOD_"))
        and key not in {"WARMUP_WORKFLOW"} | _variables_of_caches()
    }
    env.update(
        HOME=str(home),
        PYTHONDONTWRITEBYTECODE="1",  # the image's ENV
        COMFYUI_PATH=str(copy / "ComfyUI"),
        WORKER_DIR=str(root / "work"),
        COMFY_LOG_LEVEL="INFO",
    )
    cache: Path | None = None
    if side == "prepared":
        from prepare_image import cache_env

        cache = root / "cache"
        shutil.copytree(copy / "cache", cache)
        env.update(cache_env(cache))
    baked = files_under(cache) if cache else {}

    from _bench_common import run_child

    report, spawned_at = run_child(
        [sys.executable, str(Path(__file__).resolve()), "--child", str(spec)],
        cwd=root,
        env=env,
        log_path=root / "worker.log",
        prefix=_REPORT_PREFIX,
        timeout_s=timeout_s,
        what=f"the {side} worker",
    )
    foreign = [f for f in report["code"] if not f.startswith(str(copy / "app"))]
    if foreign:
        raise RuntimeError(f"the {side} worker ran code outside its copy: {foreign}")
    boot = report["boot_timings"]
    phases: dict[str, float] = {
        "ready": report["ready_at"] - spawned_at,
        "interpreter": report["main_at"] - spawned_at,
        "handler_import": report["handler_import_s"],
        "torch_import": boot.get("torch_import", math.nan),
        "comfy_import": boot.get("comfy_import", math.nan),
        "node_init": boot.get("node_init", math.nan),
    }
    named = phases["torch_import"] + phases["comfy_import"] + phases["node_init"]
    phases["boot_rest"] = report["boot_s"] - named
    for group, seconds in group_loads(report["loads"], copy / "ComfyUI").items():
        phases[f"load {group}"] = seconds
    return {
        "phases": phases,
        "failed": [Path(x["path"]).name for x in report["loads"] if not x["ok"]],
        "node_count": report["node_count"],
        "home_writes": sorted(files_under(home)),
        "cache_changed": cache is not None and files_under(cache) != baked,
    }


def group_loads(loads: Iterable[dict[str, Any]], checkout: Path) -> dict[str, float]:
    """Seconds per custom node pack (or file), and for comfy_extras and API nodes in all."""
    groups: dict[str, float] = {}
    custom = checkout / "custom_nodes"
    for load in loads:
        if load["parent"] == "custom_nodes":
            path = Path(load["path"])
            name = path.relative_to(custom).parts[0] if path.is_relative_to(custom) else path.name
        else:
            name = f"[{load['parent']}]"
        groups[name] = groups.get(name, 0.0) + load["s"]
    return groups


# -- the report -------------------------------------------------------------------------

PHASE_ROWS = (
    ("**ready to serve** (spawn -> worker booted)", "ready"),
    ("interpreter start", "interpreter"),
    ("handler.py import (runpod SDK + engine)", "handler_import"),
    ("torch import", "torch_import"),
    ("ComfyUI import", "comfy_import"),
    ("node init", "node_init"),
    ("rest of boot", "boot_rest"),
)


def _numbers(values: Iterable[float]) -> list[float]:
    return [v for v in values if not math.isnan(v)]


def saved_cells(today: Sequence[float], prepared: Sequence[float]) -> list[str]:
    """The difference of the medians, and the median (min / max) of the per-round ones.

    The two starts of a round ran back to back, so a round's difference is less moved
    by the load of a shared machine than the two medians are.
    """
    pairs = _numbers(t - p for t, p in zip(today, prepared, strict=True))
    if not pairs:
        return ["n/a", "n/a"]
    medians = statistics.median(_numbers(today)) - statistics.median(_numbers(prepared))
    per_round = statistics.median(pairs)
    return [f"{medians:.2f}", f"**{per_round:.2f}** ({min(pairs):.2f} / {max(pairs):.2f})"]


def report(
    runs: dict[str, list[dict[str, Any]]],
    facts: list[str],
    machine: list[str],
) -> str:
    """The Markdown report: the phases, node init by pack, what each side wrote, the machine."""
    from _bench_common import markdown_table, report_footer, stats_cell

    def values(side: str, key: str) -> list[float]:
        return [run["phases"].get(key, math.nan) for run in runs[side]]

    def row(label: str, key: str) -> list[str]:
        today, prepared = values("today", key), values("prepared", key)
        return [label, stats_cell(today), stats_cell(prepared), *saved_cells(today, prepared)]

    header = [
        "s: min / **median** / max",
        "today",
        "prepared",
        "saved: medians",
        "saved: per round, **median** (min / max)",
    ]
    phases = markdown_table(header, [row(label, key) for label, key in PHASE_ROWS])
    load_keys = sorted(
        {
            k
            for side in _SIDES
            for run in runs[side]
            for k in run["phases"]
            if k.startswith("load ")
        },
        key=lambda k: (k.startswith("load ["), k.lower()),
    )
    loads = markdown_table(
        ["node init, by what ComfyUI loads", *header[1:]],
        [row(k.removeprefix("load "), k) for k in load_keys],
    )
    writes = []
    for side in _SIDES:
        written = sorted({f for run in runs[side] for f in run["home_writes"]})
        failed = sorted({f for run in runs[side] for f in run["failed"]})
        counts = sorted({str(run["node_count"]) for run in runs[side]})
        notes = [
            "files written under the empty HOME: "
            + (", ".join(f"`{f}`" for f in written) or "none")
        ]
        if side == "prepared":
            changed = any(run["cache_changed"] for run in runs[side])
            notes.append(f"the baked caches {'changed' if changed else 'unchanged'}")
        notes.append(f"node types: {', '.join(counts)}")
        if failed:
            notes.append(f"failed to import: {', '.join(failed)}")
        writes.append(f"- {side}: {'; '.join(notes)}.")
    lines = [
        "### Image boot: as the image starts today vs prepared by scripts/prepare_image.py",
        "",
        phases,
        "",
        "torch import, ComfyUI import and node init are the runtime's own boot timings; "
        "`rest of boot` is the rest of `Worker.boot()`.",
        "",
        loads,
        "",
        "`[comfy_extras]` and `[comfy_api_nodes]`: ComfyUI's own node files, all of them. "
        "Each round ran one start of each side back to back; `per round` is the median "
        "(and the range) of those differences.",
        "",
        *writes,
        *(f"- {fact}" for fact in facts),
        "",
        *report_footer(machine),
    ]
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its Markdown report."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--comfyui",
        default=os.environ.get("COMFYUI_PATH"),
        help="the ComfyUI checkout, packs in its custom_nodes/ (default: $COMFYUI_PATH)",
    )
    parser.add_argument(
        "--packs",
        type=Path,
        help="a folder of custom node packs to add to the copies' custom_nodes/ (default: "
        "only the checkout's own)",
    )
    parser.add_argument("--repeat", type=int, default=5, help="timed starts of each side (5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed starts of each first (1)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        return child_main(args.child)
    if args.repeat < 1 or args.warmup < 0:
        parser.error("--repeat must be at least 1, --warmup at least 0")

    from _bench_common import comfyui_checkout, load_average, machine_lines, temp_root
    from bench_cold_start import probe_torch

    checkout = comfyui_checkout(args.comfyui)
    if args.packs is not None and not args.packs.is_dir():
        parser.error(f"--packs {args.packs}: no such folder")
    load_before = load_average()
    started = time.perf_counter()
    with temp_root("bench-boot-") as root:
        torch_version, cuda, gpu = probe_torch()
        packages, states = site_packages_state()
        sides = root / "sides"
        for side in _SIDES:
            copy_checkout(checkout, sides / side / "ComfyUI", args.packs)
            copy_app(sides / side / "app")
        code = [sides / "today" / "ComfyUI", sides / "today" / "app"]
        prepare_s, prepare_out = run_prepare(sides / "prepared")
        print(prepare_out, file=sys.stderr)
        prepared_code = [sides / "prepared" / "ComfyUI", sides / "prepared" / "app"]
        pyc_before = (count_pyc(*code), count_pyc(*prepared_code))

        runs: dict[str, list[dict[str, Any]]] = {side: [] for side in _SIDES}
        for i in range(args.warmup + args.repeat):
            timed = i >= args.warmup
            order = _SIDES if i % 2 == 0 else _SIDES[::-1]
            for side in order:
                print(f"{'start' if timed else 'warm-up start'} {i + 1}: {side}", file=sys.stderr)
                run = run_start(side, root / f"{side}-{i}", sides, _CHILD_TIMEOUT_S)
                if timed:
                    runs[side].append(run)
        pyc_after = (count_pyc(*code), count_pyc(*prepared_code))

        packs = [p.name for p in pack_folders(sides / "today" / "ComfyUI" / "custom_nodes")]
        total = sum(states.values())
        current = total - states.get("missing", 0) - states.get("timestamp (stale)", 0)
        facts = [
            f"Custom node packs: {', '.join(packs) or 'none'}.",
            f"today: {count_py(*code)} .py files in the ComfyUI copy and the worker's code, "
            f"{pyc_before[0]} .pyc before the starts and {pyc_after[0]} after "
            "(PYTHONDONTWRITEBYTECODE=1); empty HOME, no MPLCONFIGDIR, no YOLO_* variables.",
            f"prepared: `prepare_image.py --comfyui --app --cache-dir` on the copy took "
            f"{prepare_s:.1f} s; {pyc_before[1]} .pyc before the starts, {pyc_after[1]} after; "
            "MPLCONFIGDIR, YOLO_CONFIG_DIR, YOLO_OFFLINE=true, YOLO_AUTOINSTALL=false; "
            "empty HOME.",
            f"Both: this Python's site-packages, shared: {total} .py files, {current} "
            f"({100 * current / max(total, 1):.0f}%) with a current .pyc ("
            + ", ".join(f"{k}: {v}" for k, v in sorted(states.items()))
            + ").",
            f"{args.repeat} start(s) of each side, taking turns, after {args.warmup} "
            "untimed start(s) of each (files in the page cache).",
        ]
        if current < total * 0.95:
            print(
                f"warning: {total - current} of {total} modules in {packages} have no current "
                ".pyc: both sides compile the ones they import at every start",
                file=sys.stderr,
            )
        device = gpu if cuda else "CPU only, no GPU"
        machine = machine_lines(checkout, torch_version, device, load_before)
        text = report(runs, facts, machine)
        if args.packs is not None:  # a path of this machine, as for --comfyui
            text = text.replace(f"--packs {args.packs}", "--packs <packs>")
        print(text)
    print(f"\n(total {time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the temp folders are gone by now
        print("interrupted", file=sys.stderr)
        sys.exit(130)
