#!/usr/bin/env python3
"""Boot time of the worker with and without extra custom node packs, alternated.

    python scripts/bench_pack_boot.py \\
        --side base=/path/venv-image:/path/ComfyUI \\
        --side packs=/path/venv-image-packs:/path/ComfyUI-packs --repeat 5

Each side is an image environment (``scripts/setup.sh --image-env``: a venv holding the
lock, and a ComfyUI checkout whose ``custom_nodes/`` holds the manifest's packs). Every
start is a fresh child process that boots the worker as ``handler.py`` does (import
``handler``, ``Settings.from_env``, ``Worker.from_settings(...).boot()``: torch, ComfyUI,
every node, the packs included), with this checkout's worker code. Bytecode goes to a
folder per side (``PYTHONPYCACHEPREFIX``), written by the untimed warm-up starts, so both
sides start from compiled code as the image does and the checkouts are not written to.
The sides take turns (AB, BA, ...). Prints each start and the median per side: seconds
from spawn to booted, the boot alone, and the node types registered.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
_PREFIX = "BENCH-PACK-BOOT "
_CHILD = f"""
import json, os, time
started = time.perf_counter()
import handler
from engine import logs
from engine.settings import Settings
from engine.worker import Worker
settings = Settings.from_env(os.environ)
logs.configure(settings.comfy_log_level, settings.secrets())
worker = Worker.from_settings(settings)
boot = time.perf_counter()
worker.boot()
done = time.perf_counter()
print({_PREFIX!r} + json.dumps({{
    "import_s": boot - started, "boot_s": done - boot,
    "nodes": getattr(worker.runtime, "node_count", None),
    "node_init_s": dict(getattr(worker.runtime, "boot_timings", {{}})).get("node_init"),
}}), flush=True)
"""


def start(name: str, venv: Path, comfyui: Path, work: Path) -> dict[str, float]:
    env = {
        **os.environ,
        "COMFYUI_PATH": str(comfyui),
        "PYTHONPYCACHEPREFIX": str(work / name / "pycache"),
        "WORKER_DIR": str(work / name / "worker"),
        "HOME": str(work / name / "home"),
        "MPLCONFIGDIR": str(work / name / "matplotlib"),
        "YOLO_CONFIG_DIR": str(work / name / "ultralytics"),
        "YOLO_OFFLINE": "true",
    }
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    (work / name / "home").mkdir(parents=True, exist_ok=True)
    spawned = time.perf_counter()
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c", _CHILD],
        cwd=_REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    total = time.perf_counter() - spawned
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith(_PREFIX)]
    if result.returncode != 0 or not lines:
        sys.exit(f"{name}: the child failed ({result.returncode}):\n{result.stderr[-3000:]}")
    report: dict[str, float] = json.loads(lines[-1][len(_PREFIX) :])
    report["total_s"] = total
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--side", action="append", required=True, metavar="NAME=VENV:COMFYUI",
        help="an image environment: its venv and its ComfyUI checkout (twice)",
    )  # fmt: skip
    parser.add_argument("--repeat", type=int, default=5, help="timed starts of each side (5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed starts of each first (1)")
    args = parser.parse_args()
    sides = []
    for raw in args.side:
        name, _, paths = raw.partition("=")
        venv, _, comfyui = paths.partition(":")
        sides.append((name, Path(venv), Path(comfyui)))
    print(f"command: {' '.join(sys.argv)}")
    print(f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f} at the start")
    with tempfile.TemporaryDirectory(prefix="bench-pack-boot-") as tmp:
        work = Path(tmp)
        for _ in range(args.warmup):
            for name, venv, comfyui in sides:
                start(name, venv, comfyui, work)
        times: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in sides}
        for i in range(args.repeat):
            order = sides if i % 2 == 0 else list(reversed(sides))
            for name, venv, comfyui in order:
                r = start(name, venv, comfyui, work)
                times[name].append(r)
                print(
                    f"  {name:8} spawn->booted {r['total_s']:6.2f} s  boot {r['boot_s']:6.2f} s  "
                    f"node init {r['node_init_s'] or 0:6.2f} s  nodes {r['nodes']}",
                    flush=True,
                )
    for name, runs in times.items():
        total = [r["total_s"] for r in runs]
        init = [r["node_init_s"] or 0.0 for r in runs]
        print(
            f"{name}: spawn->booted median {statistics.median(total):.2f} s, min {min(total):.2f} s; "
            f"node init median {statistics.median(init):.2f} s, min {min(init):.2f} s "
            f"({len(runs)} starts)"
        )
    if len(times) == 2:
        (a, ra), (b, rb) = times.items()
        # Each round's two starts ran back to back: their difference is the least
        # disturbed by what else the machine was doing.
        diffs = [y["total_s"] - x["total_s"] for x, y in zip(ra, rb, strict=True)]
        print(
            f"{b} - {a}, per round: median {statistics.median(diffs):+.2f} s "
            f"({', '.join(f'{d:+.1f}' for d in diffs)})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
