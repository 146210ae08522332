#!/usr/bin/env python3
"""Where a small job's ``/runsync`` time goes: the SDK's server around any handler, the
hand-offs between the SDK's loop and the engine thread, and each step of ``Worker.run``,
in wall time and in the engine thread's CPU time, after an idle pause and back to back.

Two children behind the runpod SDK's local API server, as ``bench_latency.py --peer``
runs ours (base64 delivery, metadata off, INFO logs, ``--packs`` through
``EXTRA_MODEL_PATHS``), both started by ``_latency_probe.py``:

- ``worker``: this checkout's ``handler.py``, with the handler, ``Worker.run`` and the
  steps it calls timed inside the process;
- ``floor``: a handler that returns at once an answer of the worker's answer's size:
  what the SDK's server, HTTP and this client cost around any handler.

One client sends both the same job (64x64 unless ``--job``), the two taking turns, each
request after ``--pause`` seconds idle (several values: each is a set of its own, the sets
taking turns too). ``in``: from the client's send to the handler's start (the request
through HTTP, uvicorn, FastAPI and the SDK); ``out``: from the handler's return to the
client's read of the answer. ``hand-offs``: the handler's time outside ``Worker.run``
(the job to the engine thread and its answer back to the loop, the answer's log line).

    COMFYUI_PATH=<checkout> python scripts/bench_latency_parts.py --packs <packs>
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field
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
    report_footer,
    temp_root,
)
from bench_latency_ab import side

PROBE = Path(__file__).resolve().parent / "_latency_probe.py"
STEPS = (
    "parse_request",
    "store_images",
    "job_spec",
    "runtime.validate",
    "runtime.run",
    "collect_outputs",
    "deliver",
)
"""The steps of ``Worker.run`` the probe times, in the order they run."""


@dataclass
class Side:
    """One child and the times of its timed jobs."""

    api: ApiProcess
    log: Path
    runsync_ms: list[float] = field(default_factory=list)
    sent: list[tuple[float, float]] = field(default_factory=list)
    """Each timed job's (send, read) ``perf_counter`` times, in order."""
    seen: int = 0
    """Probe records before the timed jobs (warm-up)."""

    def records(self) -> list[dict[str, Any]]:
        """The probe's records of the timed jobs, in order."""
        lines = self.log.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines[self.seen :]]

    def one(self, kind: JobKind, seed: int) -> dict[str, Any]:
        """One job, timed; its answer."""
        job_input = kind.job_input(seed, prefix=f"run-{uuid.uuid4().hex[:12]}/bench")
        sent = time.perf_counter()
        answer = self.api.runsync(job_input)
        read = time.perf_counter()
        self.runsync_ms.append((read - sent) * 1000)
        self.sent.append((sent, read))
        return answer


def median_ms(values: list[float]) -> str:
    """The median of seconds, in ms."""
    return fmt_ms(statistics.median(values) * 1000) if values else "-"


def _ins(records: list[dict[str, Any]], sent: list[tuple[float, float]]) -> list[float]:
    return [r["in"] - s for r, (s, _) in zip(records, sent, strict=True)]


def _outs(records: list[dict[str, Any]], sent: list[tuple[float, float]]) -> list[float]:
    return [e - r["out"] for r, (_, e) in zip(records, sent, strict=True)]


def parts(worker: Side, floor: Side) -> dict[str, str]:
    """The median of each part for one pause, as table cells."""
    records = worker.records()
    steps = [r["steps"] for r in records]
    floor_records = floor.records()
    cells = {
        "/runsync, the SDK's server around a handler that returns at once": fmt_ms(
            statistics.median(floor.runsync_ms)
        ),
        "  in, around that handler": median_ms(_ins(floor_records, floor.sent)),
        "  out, around that handler": median_ms(_outs(floor_records, floor.sent)),
        "/runsync, this worker": fmt_ms(statistics.median(worker.runsync_ms)),
        "in: send to the handler's start": median_ms(_ins(records, worker.sent)),
        "out: the handler's return to the answer read": median_ms(_outs(records, worker.sent)),
        "the handler": median_ms([r["out"] - r["in"] for r in records]),
        "hand-offs: the handler outside Worker.run": median_ms(
            [r["out"] - r["in"] - s["Worker.run"][0] for r, s in zip(records, steps, strict=True)]
        ),
    }
    for index, label in ((0, "wall"), (1, "CPU")):
        cells[f"Worker.run, {label}"] = median_ms([s["Worker.run"][index] for s in steps])
        for name in STEPS:
            cells[f"  {name}, {label}"] = median_ms([s.get(name, [0, 0])[index] for s in steps])
        cells[f"  the rest of Worker.run, {label}"] = median_ms(
            [s["Worker.run"][index] - sum(s.get(n, [0, 0])[index] for n in STEPS) for s in steps]
        )
    return cells


def main(argv: list[str] | None = None) -> int:
    """Run both children, alternated, and print the Markdown table of the parts."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--comfyui", default=os.environ.get("COMFYUI_PATH"), help="the ComfyUI checkout"
    )
    parser.add_argument("--packs", type=Path, help="a folder of custom node packs")
    parser.add_argument("--job", choices=list(JOB_KINDS), default="64")
    parser.add_argument("--repeat", type=int, default=100, help="timed jobs a side a pause (100)")
    parser.add_argument("--warmup", type=int, default=20, help="uncounted jobs first (20)")
    parser.add_argument(
        "--pause", type=float, nargs="+", default=[0.2, 0.0],
        help="idle seconds before each job; one set of jobs per value (0.2 0)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.warmup < 1 or min(args.pause) < 0:
        parser.error("--repeat and --warmup must be at least 1, --pause at least 0")
    kind = JOB_KINDS[args.job]
    comfyui = comfyui_checkout(args.comfyui)
    load_before = load_average()
    with temp_root("bench-latency-parts-") as root:
        packs_yaml = packs_config(root, args.packs.resolve() if args.packs else None)
        torch_version, cuda, gpu = probe_torch()
        base = side(REPO, comfyui, root / "worker", packs_yaml, {})
        worker_log, floor_log = root / "worker.jsonl", root / "floor.jsonl"
        worker = Side(
            ApiProcess(
                [sys.executable, str(PROBE), "worker"],
                REPO,
                {**base.env, "PROBE_LOG": str(worker_log)},
                root / "worker.log",
            ),
            worker_log,
        )
        floor: Side | None = None
        try:
            worker.api.start()
            worker.api.wait_listening()
            for seed in range(args.warmup):
                answer = worker.api.runsync(kind.job_input(seed, prefix=f"warm-{seed}/bench"))
                check_outputs(kind, answer)
            answer_bytes = len(answer["images"][0]["data"])
            floor_env = {
                **clean_env(),
                "PROBE_LOG": str(floor_log),
                "PROBE_ANSWER_BYTES": str(answer_bytes),
            }
            floor = Side(
                ApiProcess([sys.executable, str(PROBE), "floor"], root, floor_env, root / "f.log"),
                floor_log,
            )
            floor.api.start()
            floor.api.wait_listening()
            for seed in range(args.warmup):
                floor.api.runsync(kind.job_input(seed, prefix="warm/bench"))
            columns: dict[float, dict[str, str]] = {}
            for pause in args.pause:
                for each in (worker, floor):
                    each.seen += len(each.records())
                    each.runsync_ms.clear()
                    each.sent.clear()
                for i in range(args.repeat):
                    order = (worker, floor) if i % 2 == 0 else (floor, worker)
                    for each in order:
                        time.sleep(pause)
                        answer = each.one(kind, 1000 + i)
                        if each is worker:
                            check_outputs(kind, answer)
                columns[pause] = parts(worker, floor)
        except Exception:
            print(f"worker log:\n{worker.api.log_tail()}", file=sys.stderr)
            raise
        finally:
            worker.api.stop()
            if floor is not None:
                floor.api.stop()
    labels = list(next(iter(columns.values())))
    rows = [[label, *(columns[p][label] for p in args.pause)] for label in labels]
    header = ["median ms", *(f"after {p:g} s idle" for p in args.pause)]
    device = gpu if cuda else "CPU only, no GPU"
    print(f"{kind.label}, {args.repeat} jobs a side per pause, the two sides alternated\n")
    print(markdown_table(header, rows))
    print()
    print("\n".join(report_footer(machine_lines(comfyui, torch_version, device, load_before))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
