#!/usr/bin/env python3
"""How long a chain of linked nodes ComfyUI's validation walks on the worker's job thread.

    COMFYUI_PATH=/path/to/ComfyUI python scripts/measure_chain_depth.py [--run N]

Boots the worker's runtime, then hands ComfyUI's ``execution.validate_prompt`` chains of
EmptyImage -> ImageInvert x (n - 2) -> SaveImage on the runtime's own engine thread (the
thread jobs run on), and bisects the longest chain that validates without
``RecursionError``. ``--run N`` also runs a chain of N nodes through the runtime, as a job
(about 35 ms a node on 2 CPU cores). ``engine.graph_checks.MAX_CHAIN_DEPTH`` is set
from this figure with a margin (docs/troubleshooting.md).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.runtime import JobSpec  # noqa: E402
from engine.runtime.comfy import ComfyRuntime  # noqa: E402
from engine.settings import Settings  # noqa: E402


def chain(length: int, prefix: str) -> dict[str, Any]:
    """``length`` nodes, each linked to the one before."""
    workflow: dict[str, Any] = {
        "0": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0},
        }
    }
    for i in range(1, length - 1):
        workflow[str(i)] = {"class_type": "ImageInvert", "inputs": {"image": [str(i - 1), 0]}}
    workflow[str(length - 1)] = {
        "class_type": "SaveImage",
        "inputs": {"images": [str(length - 2), 0], "filename_prefix": prefix},
    }
    return workflow


def validates(runtime: ComfyRuntime, length: int) -> bool:
    """Whether ComfyUI validates a chain of ``length`` nodes on the engine thread."""
    import execution  # ComfyUI's, importable once booted

    def on_engine_thread() -> bool:
        ok, _, _, node_errors = asyncio.run(
            execution.validate_prompt("depth", chain(length, "depth/x"), None)
        )
        return bool(ok) and not node_errors

    # The runtime's engine thread: the stack a job's validation starts from.
    return bool(runtime._engine.submit(on_engine_thread).result())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=int, help="also run a chain of this many nodes as a job")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    settings = Settings.from_env()
    with tempfile.TemporaryDirectory() as work:
        runtime = ComfyRuntime(
            Settings(
                comfyui_path=settings.comfyui_path, work_dir=Path(work), comfy_log_level="ERROR"
            )
        )
        runtime.boot()
        low, high = 2, 4000
        while low < high:
            middle = (low + high + 1) // 2
            low, high = (middle, high) if validates(runtime, middle) else (low, middle - 1)
        print(f"python {sys.version.split()[0]}: the longest chain that validates: {low} nodes")
        if args.run:
            started = time.perf_counter()
            runtime.run(JobSpec(prompt_id="depth-run", workflow=chain(args.run, "depth/run")))
            print(f"a chain of {args.run} nodes ran in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
