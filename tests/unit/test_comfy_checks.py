"""The graph checks made before ComfyUI's own validation (engine/runtime/comfy_checks.py).

ComfyUI is stood in for by the few handles the checks read: ``NODE_CLASS_MAPPINGS``
and ``execution.validate_inputs``. The real engine's answers are checked in
``tests/engine/test_all_problems.py`` and ``tests/engine/test_failures.py``.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from engine.errors import WorkflowValidationError
from engine.runtime import comfy_checks


class _Image:
    RETURN_TYPES = ("IMAGE",)


class _Save:
    RETURN_TYPES = ()
    OUTPUT_NODE = True


class _BrokenSchema:
    """A V3 node whose schema fails to build: its output count is unknown."""

    @property
    def RETURN_TYPES(self) -> tuple[str, ...]:
        raise RuntimeError("schema failed")


def _comfy(verdicts: dict[str, Any]) -> tuple[Any, list[str]]:
    """A stand-in Comfy handle and the node ids its ``validate_inputs`` was asked about.

    ``verdicts`` maps a node id to the reasons it fails, or to an exception it raises.
    """
    asked: list[str] = []

    async def validate_inputs(
        prompt_id: str, prompt: dict[str, Any], node_id: str, validated: dict[str, Any]
    ) -> None:
        asked.append(node_id)
        verdict = verdicts.get(node_id)
        if isinstance(verdict, Exception):
            raise verdict
        validated[node_id] = (not verdict, verdict or [], node_id)

    mappings = {"EmptyImage": _Image, "ImageInvert": _Image, "SaveImage": _Save}
    comfy = SimpleNamespace(
        nodes=SimpleNamespace(NODE_CLASS_MAPPINGS=mappings),
        execution=SimpleNamespace(
            validate_inputs=validate_inputs,
            full_type_name=lambda cls: f"builtins.{cls.__name__}",
        ),
        folder_paths=SimpleNamespace(),
    )
    return comfy, asked


def node(class_type: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs}


def _check(comfy: Any, prompt: dict[str, Any]) -> None:
    asyncio.run(comfy_checks.check_graph(comfy, "p1", prompt))


def test_a_sound_graph_is_left_to_comfyuis_own_validation() -> None:
    comfy, asked = _comfy({})
    _check(comfy, {"1": node("EmptyImage"), "2": node("SaveImage", images=["1", 0])})
    assert asked == [], "nothing validated twice: validate_prompt checks it next"


def test_every_problem_is_named_at_once_in_order() -> None:
    missing = {
        "type": "required_input_missing",
        "message": "Required input is missing",
        "details": "width",
        "extra_info": {"input_name": "width"},
    }
    comfy, asked = _comfy({"1": [missing]})
    prompt = {
        "1": node("EmptyImage"),
        "2": node("SaveImage", images=["1", 0]),
        "3": {"inputs": {}},
        "4": node("Nope", image=["1", 0]),
        "5": node("SaveImage", images=["4", 0]),
        "6": node("ImageInvert", image=["1", 3]),
    }
    with pytest.raises(WorkflowValidationError) as caught:
        _check(comfy, prompt)
    details = caught.value.details
    assert details[0].startswith("Node 3 has no class_type")
    assert details[1].startswith("Node type 'Nope' is not installed (used by node 4)")
    assert details[2] == (
        "Node 6 (ImageInvert) input 'image': links to output 3 of Node 1 (EmptyImage), "
        "which has 1 output"
    )
    assert details[3] == "Node 1 (EmptyImage) input 'width': Required input is missing"
    assert len(details) == 4
    # ComfyUI checks only what takes no input from a bad node (4, 6; 5 through 4).
    assert asked == ["1", "2"]
    assert set(caught.value.extra["node_errors"]) == {"1"}


def test_a_validator_that_raises_becomes_that_nodes_error() -> None:
    comfy, _ = _comfy({"1": ValueError("bad schema")})
    with pytest.raises(WorkflowValidationError) as caught:
        _check(comfy, {"1": node("EmptyImage"), "2": node("Nope", image=["1", 0])})
    (error,) = caught.value.extra["node_errors"]["1"]["errors"]
    assert error["type"] == "exception_during_validation"
    assert error["details"] == "bad schema"
    assert error["extra_info"] == {"exception_type": "builtins.ValueError"}


def test_output_counts_are_unknown_for_missing_types_and_broken_schemas() -> None:
    mappings = {"EmptyImage": _Image, "Broken": _BrokenSchema()}
    assert comfy_checks._output_count(mappings, "EmptyImage") == 1
    assert comfy_checks._output_count(mappings, "Nope") is None
    assert comfy_checks._output_count(mappings, "Broken") is None


def test_looked_in_skips_errors_that_name_no_file() -> None:
    comfy, _ = _comfy({})
    node_errors = {"1": {"errors": [{"type": "required_input_missing", "extra_info": {}}]}}
    assert comfy_checks.looked_in(comfy, {"1": node("EmptyImage")}, node_errors) == {}
