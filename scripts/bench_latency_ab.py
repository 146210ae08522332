#!/usr/bin/env python3
"""Per-job latency of this checkout against another checkout of the worker: a change's A/B.

Both sides run ``handler.py --rp_serve_api`` as ``bench_latency.py --peer`` runs ours
(base64 delivery, metadata off, INFO logs, ``--packs`` through ``EXTRA_MODEL_PATHS``),
each from its own checkout (the other one a commit's copy: ``git worktree add DIR
COMMIT``), on the same ComfyUI checkout; ``--env-other KEY=VALUE`` sets a variable on the
other side only, so the same checkout can be run against itself with one setting changed.
One client sends each side the same ``POST /runsync`` (a 64x64 job unless ``--jobs``
says otherwise), the order swapped every pair so neither side always goes first. Each
pair gives a ratio, the other side's time over this one's (above 1: this checkout is
faster), reported as min / median / max, with each side's median and the load average.

    COMFYUI_PATH=<checkout> python scripts/bench_latency_ab.py --other DIR --packs <packs>
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from _bench_common import (
    JOB_KINDS,
    REPO,
    ApiProcess,
    JobKind,
    check_outputs,
    clean_env,
    comfyui_checkout,
    fmt_ms,
    load_average,
    machine_lines,
    markdown_table,
    packs_config,
    probe_torch,
    ratio_cell,
    report_footer,
    temp_root,
    timed,
)


def side(
    checkout: Path, comfyui: Path, root: Path, packs_yaml: Path | None, env: dict[str, str]
) -> ApiProcess:
    """``handler.py --rp_serve_api`` of ``checkout``, its folders under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    variables = {
        **clean_env(),
        "COMFYUI_PATH": str(comfyui),
        "WORKER_DIR": str(root / "work"),
        "COMFY_LOG_LEVEL": "INFO",
        "OUTPUT_METADATA": "false",
        "PYTHONUNBUFFERED": "1",
        **env,
    }
    if packs_yaml is not None:
        variables["EXTRA_MODEL_PATHS"] = str(packs_yaml)
    return ApiProcess([sys.executable, "handler.py"], checkout, variables, root / "worker.log")


def pairs(
    this: ApiProcess, other: ApiProcess, kind: JobKind, warmup: int, repeat: int, pause_s: float
) -> tuple[list[float], list[float]]:
    """Warm-up, then ``repeat`` timed pairs, the order swapped every pair; ms of each side."""

    def one(api: ApiProcess, seed: int) -> float:
        job_input = kind.job_input(seed, prefix=f"run-{uuid.uuid4().hex[:12]}/bench")
        answer, ms = timed(lambda: api.runsync(job_input))
        check_outputs(kind, answer)
        return ms

    for i in range(warmup):
        for api in (this, other):
            one(api, i)
    mine: list[float] = []
    theirs: list[float] = []
    for i in range(repeat):
        order = ((this, mine), (other, theirs))
        for api, times in order if i % 2 == 0 else reversed(order):
            time.sleep(pause_s)
            times.append(one(api, warmup + i))
    return mine, theirs


def main(argv: list[str] | None = None) -> int:
    """Run the A/B and print its Markdown report."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--other", type=Path, required=True, help="the other checkout")
    parser.add_argument(
        "--this", type=Path, default=REPO, help="this side's checkout (default: this one)"
    )
    parser.add_argument(
        "--comfyui", default=os.environ.get("COMFYUI_PATH"), help="the ComfyUI checkout"
    )
    parser.add_argument("--packs", type=Path, help="a folder of custom node packs, both sides")
    parser.add_argument("--jobs", nargs="+", choices=list(JOB_KINDS), default=["64"])
    parser.add_argument("--repeat", type=int, default=60, help="timed pairs per job (60)")
    parser.add_argument("--warmup", type=int, default=3, help="uncounted jobs first (3)")
    parser.add_argument("--pause", type=float, default=0.05, help="idle s before each job")
    parser.add_argument(
        "--env-other", action="append", default=[], metavar="KEY=VALUE",
        help="a variable for the other side only (repeatable)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.warmup < 0 or args.pause < 0:
        parser.error("--repeat must be at least 1, --warmup and --pause at least 0")
    for checkout in (args.this, args.other):
        if not (checkout / "handler.py").is_file():
            parser.error(f"{checkout} holds no handler.py: pass a checkout of this worker")
    other_env = dict(item.split("=", 1) for item in args.env_other if "=" in item)
    comfyui = comfyui_checkout(args.comfyui)
    load_before = load_average()
    with temp_root("bench-latency-ab-") as root:
        packs_yaml = packs_config(root, args.packs.resolve() if args.packs else None)
        try:
            torch_version, cuda, gpu = probe_torch()
        except (subprocess.CalledProcessError, ValueError, IndexError):  # a runtime without torch
            torch_version, cuda, gpu = "not installed", False, ""
        this = side(args.this.resolve(), comfyui, root / "this", packs_yaml, {})
        other = side(args.other.resolve(), comfyui, root / "other", packs_yaml, other_env)
        rows: list[list[str]] = []
        try:
            for api in (this, other):
                api.start()
            for api in (this, other):
                api.wait_listening()
            for key in args.jobs:
                kind = JOB_KINDS[key]
                mine, theirs = pairs(this, other, kind, args.warmup, args.repeat, args.pause)
                rows.append(_row(kind, mine, theirs))
        except Exception:
            print(f"this side's log:\n{this.log_tail()}", file=sys.stderr)
            print(f"the other side's log:\n{other.log_tail()}", file=sys.stderr)
            raise
        finally:
            this.stop()
            other.stop()
    device = gpu if cuda else "CPU only, no GPU"
    print(
        _report(rows, args, other_env, machine_lines(comfyui, torch_version, device, load_before))
    )
    return 0


def _row(kind: JobKind, mine: list[float], theirs: list[float]) -> list[str]:
    ratios = [t / m for m, t in zip(mine, theirs, strict=True)]
    return [
        kind.label,
        str(len(mine)),
        f"{fmt_ms(statistics.median(mine))} (min {fmt_ms(min(mine))})",
        f"{fmt_ms(statistics.median(theirs))} (min {fmt_ms(min(theirs))})",
        ratio_cell(ratios),
    ]


def _report(rows: list[list[str]], args: Any, other_env: dict[str, str], machine: list[str]) -> str:
    table = markdown_table(
        [
            "job",
            "pairs",
            "this checkout, median ms",
            "the other, median ms",
            "the other ÷ this, per pair: min / **median** / max",
        ],
        rows,
    )
    setting = ", ".join(f"{k}={v}" for k, v in other_env.items()) or "none"
    return "\n".join(
        [
            "### Per-job latency: this checkout against another",
            "",
            table,
            "",
            f"This checkout: {args.this}; the other: {args.other} (its own variables: "
            f"{setting}). Both behind the "
            f"runpod SDK's local API server, the order swapped every pair; warm-up: "
            f"{args.warmup} job(s) of each side per kind, not counted.",
            "",
            *report_footer(machine),
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
