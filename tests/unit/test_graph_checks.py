"""Graph and value checks made before ComfyUI sees a workflow (engine/graph_checks.py)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from engine.errors import WorkflowValidationError
from engine.graph_checks import (
    MAX_CHAIN_DEPTH,
    MAX_NESTING,
    check_values,
    find_problems,
    unsound_nodes,
)

_OUTPUTS = {"EmptyImage": 1, "ImageInvert": 1, "SaveImage": 0, "CheckpointLoaderSimple": 3}


def node(class_type: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs}


def chain(length: int) -> dict[str, Any]:
    """EmptyImage, then ``length - 2`` ImageInvert, then SaveImage: ``length`` nodes."""
    workflow = {"1": node("EmptyImage", width=8, height=8)}
    for i in range(2, length):
        workflow[str(i)] = node("ImageInvert", image=[str(i - 1), 0])
    workflow[str(length)] = node("SaveImage", images=[str(length - 1), 0])
    return workflow


def nested(levels: int) -> Any:
    value: Any = "x"
    for _ in range(levels):
        value = [value]
    return value


def details_of(workflow: dict[str, Any], limit: int = 1024) -> list[str]:
    with pytest.raises(WorkflowValidationError) as caught:
        check_values(workflow, limit)
    return caught.value.details


# -- values ---------------------------------------------------------------------------


def test_a_string_over_the_limit_names_the_node_and_input() -> None:
    workflow = {"6": node("CLIPTextEncode", text="a" * 2000, clip=["4", 1])}
    (detail,) = details_of(workflow, limit=1000)
    assert detail.startswith("Node 6 (CLIPTextEncode) input 'text': the text is 2,000 bytes")
    assert "WORKFLOW_MAX_STRING_BYTES" in detail


def test_the_limit_counts_utf8_bytes_not_characters() -> None:
    check_values({"6": node("CLIPTextEncode", text="é" * 500)}, 1000)  # 1000 bytes: fits
    (detail,) = details_of({"6": node("CLIPTextEncode", text="é" * 501)}, limit=1000)
    assert "1,002 bytes" in detail


def test_every_long_string_is_named_at_once() -> None:
    workflow = {
        "6": node("CLIPTextEncode", text="a" * 50),
        "7": node("CLIPTextEncode", text="b" * 50),
        "8": node("Anything", strings=["short", "c" * 50]),
    }
    details = details_of(workflow, limit=20)
    assert len(details) == 3
    assert any(d.startswith("Node 8 (Anything) input 'strings'") for d in details)


def test_a_value_nested_1000_deep_is_refused_without_recursion() -> None:
    workflow = {"3": node("KSampler", seed=nested(1000))}
    with pytest.raises(RecursionError):
        copy.deepcopy(workflow)  # what the runtime did with it before this check
    (detail,) = details_of(workflow)
    assert detail.startswith("Node 3 (KSampler) input 'seed': the value is nested more than")


def test_nesting_is_counted_from_the_workflow_also_outside_inputs() -> None:
    check_values({"3": node("X", value=nested(MAX_NESTING - 4))}, 1024)
    (detail,) = details_of({"3": {"class_type": "X", "_meta": {"title": nested(200)}}})
    assert detail.startswith("workflow.3._meta.title[0]")


def test_ordinary_workflows_pass() -> None:
    check_values(chain(10), 1024)
    check_values({"1": node("X", value={"__value__": [1, 2, 3]}, links=["1", 0])}, 1024)


# -- links --------------------------------------------------------------------------------


def test_a_link_to_a_missing_node_names_the_node_input_and_id() -> None:
    workflow = chain(3)
    workflow["3"]["inputs"]["images"] = ["99", 0]
    (problem,) = find_problems(workflow)
    assert problem.kind == "missing_node" and problem.node_ids == ("3",)
    assert problem.detail.startswith(
        "Node 3 (SaveImage) input 'images': links to node 99, which is not in the workflow"
    )


def test_a_numeric_link_id_is_told_to_be_a_string() -> None:
    workflow = chain(3)
    workflow["3"]["inputs"]["images"] = [2, 0]
    (problem,) = find_problems(workflow)
    assert 'write the node id as a string, "2"' in problem.detail


def test_an_output_index_past_the_node_outputs_is_named() -> None:
    workflow = {
        "4": node("CheckpointLoaderSimple", ckpt_name="x.safetensors"),
        "8": node("VAEDecode", vae=["4", 3], samples=["4", -1]),
    }
    problems = find_problems(workflow, _OUTPUTS.get)
    details = [p.detail for p in problems]
    assert details == [
        "Node 8 (VAEDecode) input 'samples': links to output -1 of node 4; an output index "
        "is a whole number from 0",
        "Node 8 (VAEDecode) input 'vae': links to output 3 of Node 4 "
        "(CheckpointLoaderSimple), which has 3 outputs (0 to 2)",
    ]
    # Without definitions (an unknown type) the index is not judged.
    assert [p.kind for p in find_problems(workflow)] == ["bad_output"]


# -- cycles ------------------------------------------------------------------------------


def test_a_cycle_names_its_nodes_and_types() -> None:
    workflow = chain(5)
    workflow["2"]["inputs"]["image"] = ["4", 0]  # 2 -> 3 -> 4 -> 2
    (problem,) = find_problems(workflow, _OUTPUTS.get)
    assert problem.kind == "cycle" and problem.node_ids == ("2", "3", "4")
    assert problem.detail.startswith(
        "Nodes 2 (ImageInvert), 3 (ImageInvert), 4 (ImageInvert) form a cycle"
    )


def test_a_node_linked_to_itself_is_a_cycle() -> None:
    workflow = {"1": node("ImageInvert", image=["1", 0])}
    (problem,) = find_problems(workflow)
    assert problem.detail.startswith("Node 1 (ImageInvert) links to itself")


def test_two_cycles_are_two_problems() -> None:
    workflow = {
        "1": node("A", x=["2", 0]),
        "2": node("A", x=["1", 0]),
        "3": node("A", x=["4", 0]),
        "4": node("A", x=["3", 0], y=["1", 0]),
    }
    assert [p.node_ids for p in find_problems(workflow)] == [("1", "2"), ("3", "4")]


def test_nodes_downstream_of_a_bad_node_are_unsound() -> None:
    workflow = chain(6)
    assert unsound_nodes(workflow, {"3"}) == {"3", "4", "5", "6"}
    assert unsound_nodes(workflow, set()) == set()


# -- depth -------------------------------------------------------------------------------


def test_a_chain_at_the_bound_passes_and_one_past_it_is_too_deep() -> None:
    assert find_problems(chain(MAX_CHAIN_DEPTH), _OUTPUTS.get) == []
    (problem,) = find_problems(chain(5000), _OUTPUTS.get)
    assert problem.kind == "too_deep"
    assert problem.detail.startswith(
        f"The graph is too deep: Node 5000 (SaveImage) ends a chain of 5,000 linked nodes, "
        f"and the worker runs chains of at most {MAX_CHAIN_DEPTH:,}"
    )


def test_a_wide_graph_is_not_deep() -> None:
    workflow = {"1": node("EmptyImage")}
    for i in range(2, 3000):
        workflow[str(i)] = node("SaveImage", images=["1", 0])
    assert find_problems(workflow, _OUTPUTS.get) == []


def test_a_50_mb_prompt_is_refused_at_the_default_limit() -> None:
    """The probe's case: a 50 MB string (it became a 66 MB PNG through the metadata)."""
    (detail,) = details_of({"6": node("CLIPTextEncode", text="a" * 50 * 1024 * 1024)}, 1024 * 1024)
    assert "the text is 52,428,800 bytes, over the 1,048,576-byte limit" in detail


def test_long_strings_are_listed_in_node_order() -> None:
    workflow = {n: node("CLIPTextEncode", text="x" * 50) for n in ("10", "2", "b", "1")}
    details = details_of(workflow, limit=20)
    assert [d.split(" ")[1] for d in details] == ["1", "2", "10", "b"]
