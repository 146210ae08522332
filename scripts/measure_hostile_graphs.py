#!/usr/bin/env python3
"""What hostile workflows cost the worker before ComfyUI sees them: seconds and peak memory.

    python scripts/measure_hostile_graphs.py [--max-nodes N]

Each case is a request a stranger can send. It goes through what a job does with its
workflow before the engine: ``check_size`` and ``check_values`` (as ``Worker.run``), the
UI conversion (``to_api_format``, with the node definitions recorded from the pinned
engine) and the graph checks (``graph_checks.find_problems``). Prints, per case, the
request's size, the outcome (nodes converted, or the first line of the refusal), the
seconds (timed alone) and the peak of Python allocations (a second run, under
``tracemalloc``). RunPod takes requests of up to 10 MB (``/run``) and 20 MB (``/runsync``). ``--max-nodes`` stands in for ``WORKFLOW_MAX_NODES`` (default 10,000).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.errors import WorkerError  # noqa: E402
from engine.graph_checks import check_values, find_problems  # noqa: E402
from engine.settings import Settings  # noqa: E402
from engine.ui_shape import check_size  # noqa: E402
from engine.ui_workflow import to_api_format  # noqa: E402
from tests.ui_graphs import UiGraph, nested_subgraphs  # noqa: E402
from tests.ui_templates import recorded_definitions  # noqa: E402


def reroute_fan(chain: int, consumers: int) -> dict[str, Any]:
    """``consumers`` nodes that each read the end of a chain of ``chain`` reroutes."""
    g = UiGraph()
    g.node(1, "EmptyImage", [8, 8, 1, 0], outputs=["IMAGE"])
    previous = 1
    for n in range(2, chain + 2):
        g.node(n, "Reroute", inputs=[("", "*")], outputs=["IMAGE"])
        g.link(previous, 0, n, "")
        previous = n
    for n in range(chain + 2, chain + 2 + consumers):
        g.node(n, "ImageInvert", inputs=[("image", "IMAGE")], outputs=["IMAGE"])
        g.link(previous, 0, n, "image")
    return g.build()


def getters_and_setters(pairs: int) -> dict[str, Any]:
    """KJNodes' SetNode / GetNode pairs: each getter looks its setter up by name."""
    g = UiGraph()
    g.node(1, "EmptyImage", [8, 8, 1, 0], outputs=["IMAGE"])
    for n in range(pairs):
        setter, getter, user = 10 + 3 * n, 11 + 3 * n, 12 + 3 * n
        g.node(setter, "SetNode", [f"img{n}"], inputs=[("IMAGE", "IMAGE")], outputs=["*"])
        g.link(1, 0, setter, "IMAGE")
        g.node(getter, "GetNode", [f"img{n}"], outputs=["IMAGE"])
        g.node(user, "ImageInvert", inputs=[("image", "IMAGE")], outputs=["IMAGE"])
        g.link(getter, 0, user, "image")
    return g.build()


def wide_subgraph(inputs: int, instances: int) -> dict[str, Any]:
    """``instances`` instances of one subgraph with ``inputs`` inputs, each feeding the
    width of its one inner node: every instance used to read every input again."""
    definition = {
        "id": "wide",
        "name": "wide",
        "nodes": [
            {"id": 1, "type": "EmptyImage", "mode": 0, "widgets_values": [8, 8, 1, 0],
             "inputs": [{"name": "width", "type": "INT", "link": 1, "widget": {"name": "width"}}],
             "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": []}]}
        ],
        "links": [{"id": n, "origin_id": -10, "origin_slot": n - 1, "target_id": 1,
                   "target_slot": 0, "type": "INT"} for n in range(1, inputs + 1)],
        "inputs": [{"name": f"in{n}", "type": "INT", "linkIds": [n]} for n in range(1, inputs + 1)],
        "outputs": [],
    }  # fmt: skip
    nodes = [
        {"id": n, "type": "wide", "mode": 0, "widgets_values": [16],
         "inputs": [{"name": f"in{i}", "type": "INT", "link": None} for i in range(1, 50)]}
        for n in range(1, instances + 1)
    ]  # fmt: skip
    return {"nodes": nodes, "links": [], "definitions": {"subgraphs": [definition]}}


def bad_links(count: int) -> dict[str, Any]:
    """Every link id infinite: the refusal names 50 and counts the rest."""
    return {
        "nodes": [{"id": 1, "type": "EmptyImage", "mode": 0}],
        "links": [[float("inf"), 1, 0, 1, 0, "IMAGE"]] * count,
    }


def nested_dynamic_prompt(depth: int, size: int) -> dict[str, Any]:
    """A CLIPTextEncode text of ``size`` characters in ``depth`` nested ``{a|b}`` blocks."""
    filler = "x" * max(0, size - 3 * depth)
    text = "{a|" * depth + filler + "}" * depth
    g = UiGraph()
    g.node(1, "CLIPTextEncode", [text], inputs=[("clip", "CLIP")], outputs=["CONDITIONING"])
    return g.build()


def api_chain(length: int) -> dict[str, Any]:
    workflow: dict[str, Any] = {"0": {"class_type": "EmptyImage", "inputs": {}}}
    for n in range(1, length):
        workflow[str(n)] = {"class_type": "ImageInvert", "inputs": {"image": [str(n - 1), 0]}}
    return workflow


def measure(name: str, workflow: dict[str, Any], run: Callable[[dict[str, Any]], str]) -> None:
    """Run the case twice: timed alone, then under tracemalloc for the peak."""
    size = len(json.dumps(workflow, allow_nan=True))

    def once() -> str:
        try:
            return run(workflow)
        except WorkerError as exc:
            return f"refused ({exc.code}): {(exc.details or [exc.message])[0][:80]}"

    started = time.perf_counter()
    outcome = once()
    seconds = time.perf_counter() - started
    tracemalloc.start()
    once()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"{name:34} {size:>11,} B {seconds * 1000:>9,.1f} ms {peak / 1024:>9,.0f} KiB  {outcome}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-nodes", type=int, default=Settings.workflow_max_nodes)
    args = parser.parse_args()
    defs = recorded_definitions()["node_definitions"]
    settings = Settings()

    def as_a_job(workflow: dict[str, Any]) -> str:
        check_size(workflow, args.max_nodes)  # Worker.run's order: the shape first
        check_values(workflow, settings.workflow_max_string_bytes)
        api = to_api_format(workflow, defs, rng=random.Random(1), max_nodes=args.max_nodes)  # noqa: S311
        problems = find_problems(api)
        return f"converted: {len(api):,} nodes, {len(problems)} graph problem(s)"

    def api_job(workflow: dict[str, Any]) -> str:
        check_size(workflow, args.max_nodes)
        check_values(workflow, settings.workflow_max_string_bytes)
        return f"{len(find_problems(workflow))} graph problem(s)"

    print(f"# {platform.python_version()} on {platform.machine()}; max nodes {args.max_nodes:,}")
    print(f"{'case':34} {'request':>13} {'time':>12} {'peak':>13}  outcome")
    measure("subgraphs 7 deep x 8 (2,097,152)", nested_subgraphs(7, 8), as_a_job)
    measure("subgraphs 4 deep x 8 (4,096)", nested_subgraphs(4, 8), as_a_job)
    measure("reroute chain 400, 9,500 readers", reroute_fan(400, 9500), as_a_job)
    measure("3,300 SetNode/GetNode pairs", getters_and_setters(3300), as_a_job)
    measure("subgraph of 20,000 inputs x 400", wide_subgraph(20_000, 400), as_a_job)
    measure("300,000 infinite link ids", bad_links(300_000), as_a_job)
    measure("dynamic prompt 300 deep, 1 MB", nested_dynamic_prompt(300, 1_000_000), as_a_job)
    measure("API chain of 10,000 nodes", api_chain(10_000), api_job)


if __name__ == "__main__":
    main()
