#!/usr/bin/env python3
"""What refusing a malformed editor (UI-format) workflow of about 10 MB costs a job, in
this checkout against another one, alternated.

    python scripts/bench_hostile_refusal.py --other <another checkout> [--rounds 5]

Each case is a request a stranger can send (RunPod takes up to 10 MB on ``/run``): about
10 MB of links with infinite ids, of duplicate links, of malformed nodes, of sockets with
bad links, of links that are not links; and, for scale, one well-formed link list of the
same size with a single bad link at its end. Each side runs ``Worker.run`` on it in a
process of its own (its own ``engine``, a fake runtime that is never reached): what a job
does before anything runs (``parse_request``, the value and shape checks) up to the
refusal. The request's JSON is parsed before the clock starts (the runpod SDK parses it
for both alike). Printed per case and side: the median CPU time of the rounds (the
process's, in ms; a timer's resolution is about a microsecond), and the ratio; the sides
alternate within each round.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
_INF = float("inf")


def _links(count: int) -> dict[str, Any]:
    return {"nodes": [{"id": 1, "type": "EmptyImage", "mode": 0}], "links": [[_INF, 1, 0, 1, 0, "IMAGE"]] * count}  # fmt: skip


def _duplicate_links(count: int) -> dict[str, Any]:
    return {"nodes": [{"id": 1, "type": "EmptyImage", "mode": 0}], "links": [[7, 1, 0, 1, 0, "IMAGE"]] * count}  # fmt: skip


def _nodes(count: int) -> dict[str, Any]:
    node = {"id": 2, "type": "A", "mode": _INF, "inputs": [{"name": 1, "link": "no"}]}
    return {"nodes": [node] * count, "links": []}


def _sockets(count: int) -> dict[str, Any]:
    node = {"id": 1, "type": "A", "mode": 0, "inputs": [{"name": "a", "link": "z"}] * count}
    return {"nodes": [node], "links": []}


def _not_links(count: int) -> dict[str, Any]:
    return {"nodes": [{"id": 1, "type": "EmptyImage", "mode": 0}], "links": ["no"] * count}


def _one_bad_link_at_the_end(count: int) -> dict[str, Any]:
    links: list[list[Any]] = [[n, 1, 0, 1, 0, "IMAGE"] for n in range(1, count)]
    links.append([_INF, 1, 0, 1, 0, "IMAGE"])
    return {"nodes": [{"id": 1, "type": "EmptyImage", "mode": 0}], "links": links}


CASES: dict[str, Callable[[], dict[str, Any]]] = {
    "300,000 infinite link ids": lambda: _links(300_000),
    "330,000 duplicate links": lambda: _duplicate_links(330_000),
    "110,000 malformed nodes": lambda: _nodes(110_000),
    "380,000 sockets, bad links": lambda: _sockets(380_000),
    "1,800,000 links that are text": lambda: _not_links(1_800_000),
    "300,000 links, the last bad": lambda: _one_bad_link_at_the_end(300_000),
}


def child(repo: Path) -> None:
    """In a process of its own: each case through ``repo``'s ``Worker.run``; prints JSON."""
    sys.path.insert(0, str(repo))
    from engine.errors import WorkerError
    from engine.settings import Settings
    from engine.worker import Worker
    from tests.fake_runtime import FakeRuntime

    settings = Settings(work_dir=Path(os.environ.get("TMPDIR", "/tmp")) / "bench-refusal")
    worker = Worker(settings, FakeRuntime(settings))
    results: dict[str, dict[str, Any]] = {}
    for name, make in CASES.items():
        text = json.dumps(make(), allow_nan=True)
        workflow = json.loads(text)  # distinct objects, as the SDK's parse makes them
        cpu, wall = time.process_time(), time.perf_counter()
        try:
            worker.run("bench", {"workflow": workflow})
            outcome = "not refused"
        except WorkerError as exc:
            outcome = f"{exc.code}: {(exc.details or [exc.message])[-1][:70]}"
        results[name] = {
            "cpu_s": time.process_time() - cpu,
            "wall_s": time.perf_counter() - wall,
            "mb": len(text) / 1e6,
            "outcome": outcome,
        }
    print(json.dumps(results))


def run_side(repo: Path) -> dict[str, dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", str(repo)],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, dict[str, Any]] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--other", type=Path, help="another checkout (say, before a change)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child)
        return
    sides = {"this": REPO, **({"other": args.other.resolve()} if args.other else {})}
    cpu: dict[str, dict[str, list[float]]] = {s: {c: [] for c in CASES} for s in sides}
    last: dict[str, dict[str, dict[str, Any]]] = {}
    for _ in range(args.rounds):
        for side, repo in sides.items():  # alternated within each round
            last[side] = run_side(repo)
            for case, figures in last[side].items():
                cpu[side][case].append(figures["cpu_s"])
    print(f"# {args.rounds} rounds, sides alternated; load average {os.getloadavg()[0]:.1f}")
    for case in CASES:
        mb = last["this"][case]["mb"]
        this = statistics.median(cpu["this"][case])
        line = f"{case:32} {mb:5.1f} MB  this {this * 1e3:8.1f} ms"
        if "other" in sides:
            other = statistics.median(cpu["other"][case])
            line += f"  other {other * 1e3:8.1f} ms  ({other / max(this, 1e-6):,.0f}x)"
        print(line)
        for side in sides:
            print(f"    {side}: {last[side][case]['outcome']}")


if __name__ == "__main__":
    main()
