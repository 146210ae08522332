"""Hostile graphs through the whole worker, over real HTTP (the runpod SDK's local API
server, ComfyUI replaced by tests.fake_runtime).

Each request is one a stranger can send. Each must come back as the contract's error,
naming what is wrong, with no Python traceback, no file path of the machine and no
secret of a URL in the answer or the log; and the worker must serve the next job.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import pytest

from tests import workflows
from tests.e2e.conftest import WorkerServer
from tests.ui_graphs import UiGraph, nested_subgraphs

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., WorkerServer]) -> WorkerServer:
    return start_worker()


def assert_clean_failure(worker: WorkerServer, body: dict[str, Any], code_start: str) -> None:
    """Failed with the contract's message, nothing of the machine in it; next job runs."""
    assert body["status"] == "FAILED", body
    text = json.dumps(body)
    assert body["error"].startswith(code_start), body["error"]
    assert "Traceback" not in text and str(worker.work_dir) not in text
    follow = worker.runsync({"workflow": workflows.batch(count=1, size=8)})
    assert follow["status"] == "COMPLETED", follow


def invert_ui() -> dict[str, Any]:
    g = UiGraph()
    g.node(1, "EmptyImage", [8, 8, 1, 0], outputs=["IMAGE"])
    g.node(2, "ImageInvert", inputs=[("image", "IMAGE")], outputs=["IMAGE"])
    g.node(3, "SaveImage", ["x"], inputs=[("images", "IMAGE")])
    g.link(1, 0, 2, "image")
    g.link(2, 0, 3, "images")
    return g.build()


def test_two_million_nodes_in_3_kb_are_refused_at_once(worker: WorkerServer) -> None:
    """Before: minutes of CPU and gigabytes of memory expanding the subgraphs."""
    body = worker.runsync({"workflow": nested_subgraphs(levels=7, per_level=8)})
    assert "subgraph 'level-6' expands to 262,144 nodes per instance" in body["error"]
    assert "2,097,152 nodes, over the limit of 10,000 (WORKFLOW_MAX_NODES)" in body["error"]
    assert_clean_failure(worker, body, "The UI-format workflow could not be converted")


MALFORMED: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("definitions as a list", lambda w: w.update(definitions=[]), "definitions: must be an object"),
    ("links as a number", lambda w: w.update(links=5), "links: must be a list, not the number 5"),
    ("an infinite link id", lambda w: w["links"][0].__setitem__(0, math.inf), "links[0] id: inf is not a whole number"),
    ("an infinite mode", lambda w: w["nodes"][1].update(mode=math.inf), "nodes[1] (node 2).mode: inf is not a node mode"),
    ("a subgraph id that is a list", lambda w: w.update(definitions={"subgraphs": [{"id": ["x"], "nodes": []}]}), "definitions.subgraphs[0].id: must be the subgraph's id as text"),
    ("two links with one id", lambda w: w["links"][1].__setitem__(0, 1), "links[1] id: link id 1 is also links[0]'s"),
    ("two nodes with one id", lambda w: w["nodes"][2].update(id=1), "nodes[2].id: node id 1 is also nodes[0]'s"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "change", "named"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_a_malformed_editor_workflow_is_named_not_a_traceback(
    worker: WorkerServer, case: str, change: Callable[[dict[str, Any]], None], named: str
) -> None:
    """Before: a Python traceback with the machine's paths, or the last one kept silently.
    Infinity travels as JSON's ``Infinity``, which the SDK's server parses."""
    workflow = invert_ui()
    change(workflow)
    # As sent by a client that writes JSON's Infinity (httpx's json= refuses to).
    raw = json.dumps({"input": {"workflow": workflow}}, allow_nan=True)
    response = worker.client.post(
        "/runsync", content=raw, headers={"Content-Type": "application/json"}
    )
    response.raise_for_status()
    body = response.json()
    assert named in body["error"], (case, body["error"])
    assert_clean_failure(worker, body, "The UI-format workflow could not be converted")


def test_a_token_in_a_workflow_url_reaches_neither_the_answer_nor_the_log(
    worker: WorkerServer,
) -> None:
    workflow = workflows.batch(count=1, size=8)
    workflow["9"] = {
        "class_type": "LoadImage",
        "inputs": {"image": "https://bob:hunter22@h.example/in.png?token=TOKEN-0042-SECRET"},
    }
    workflow["10"] = {
        "class_type": "SaveImage",
        "inputs": {"images": ["9", 0], "filename_prefix": "y"},
    }
    body = worker.runsync({"workflow": workflow})
    assert "https://h.example/in.png?***" in body["error"]
    assert "TOKEN-0042-SECRET" not in json.dumps(body) and "hunter22" not in json.dumps(body)
    assert "TOKEN-0042-SECRET" not in worker.log() and "hunter22" not in worker.log()
    assert_clean_failure(worker, body, "Workflow validation failed")


def test_an_api_workflow_past_the_node_limit_is_refused(worker: WorkerServer) -> None:
    workflow: dict[str, Any] = {"0": {"class_type": "EmptyImage", "inputs": {}}}
    for n in range(1, 10_001):
        workflow[str(n)] = {"class_type": "ImageInvert", "inputs": {"image": [str(n - 1), 0]}}
    body = worker.runsync({"workflow": workflow})
    assert "the workflow has 10,001 nodes, over the limit of 10,000" in body["error"]
    assert_clean_failure(worker, body, "Workflow validation failed")
