"""Validating a job's graph against the booted ComfyUI: every problem, in one error.

Helpers for :mod:`engine.runtime.comfy`. They take the booted :class:`Comfy` handle
as an argument and import nothing of ComfyUI themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine import graph_checks
from engine.runtime import pack_imports, shapes
from engine.runtime.comfy_boot import Comfy
from engine.runtime.comfy_folders import folders_backing_input
from engine.runtime.pack_fixes import hardwired_input_folders


async def check_graph(comfy: Comfy, prompt_id: str, prompt: dict[str, Any]) -> None:
    """Raise one error naming every problem of a graph ComfyUI cannot validate whole.

    ComfyUI's validation stops at the first unknown node type, raises on a link to a
    missing node and recurses for ever round a cycle. So: unknown types and the
    graph's own problems first (:mod:`engine.graph_checks`); then ComfyUI's checks
    of the nodes that reach none of those (a missing model in a workflow that also
    lacks a node pack is still named), all in one error. Returns when the graph has
    none of those problems: ComfyUI's ``validate_prompt`` then checks it whole.
    """
    mappings = comfy.nodes.NODE_CLASS_MAPPINGS
    unknown: dict[str, list[str]] = {}
    no_type: list[str] = []
    for node_id in shapes.sort_node_ids(list(prompt)):
        node = prompt[node_id]
        class_type = node.get("class_type") if isinstance(node, dict) else None
        if not isinstance(class_type, str) or not class_type:
            no_type.append(node_id)
        elif class_type not in mappings:
            unknown.setdefault(class_type, []).append(node_id)
    problems = graph_checks.find_problems(prompt, lambda t: _output_count(mappings, t))
    if not (unknown or no_type or problems):
        return
    bad = {*no_type, *(n for ids in unknown.values() for n in ids)}
    bad.update(n for problem in problems for n in problem.node_ids)
    unsound = graph_checks.unsound_nodes(prompt, bad)
    # What ComfyUI would validate once the bad nodes are fixed: everything upstream
    # of an output node or of a bad node (an unknown type may be an output).
    outputs = [
        n
        for n in prompt
        if n not in bad
        and getattr(mappings.get(prompt[n]["class_type"]), "OUTPUT_NODE", False) is True
    ]
    wanted = graph_checks.upstream_of(prompt, {*outputs, *bad}) - unsound
    sound = {n: prompt[n] for n in prompt if n in wanted}
    node_errors = await _validate_nodes(comfy, prompt_id, sound)
    raise shapes.validation_error(
        None,
        node_errors,
        unknown_types=unknown,
        missing_class_type=no_type,
        graph_problems=[p.detail for p in problems],
        looked_in=looked_in(comfy, sound, node_errors),
        describe_unknown=pack_imports.RECORD.describe_unknown,
    )


def looked_in(
    comfy: Comfy, prompt: dict[str, Any], node_errors: Mapping[str, Any]
) -> dict[tuple[str, str], list[str]]:
    """The folders searched for each file a ``value_not_in_list`` error names."""
    looked: dict[tuple[str, str], list[str]] = {}
    for node_id, entry in node_errors.items():
        for error in entry.get("errors", []):
            extra = error.get("extra_info") or {}
            input_name = extra.get("input_name")
            if error.get("type") != "value_not_in_list" or not input_name:
                continue
            class_type = prompt[node_id]["class_type"]
            folders = hardwired_input_folders(comfy.folder_paths, class_type, input_name)
            if folders is None:
                folders = folders_backing_input(
                    comfy.folder_paths,
                    comfy.nodes.NODE_CLASS_MAPPINGS[class_type],
                    input_name,
                    extra.get("received_value"),
                )
            if folders:
                looked[(node_id, input_name)] = folders
    return looked


def _output_count(mappings: Mapping[str, Any], class_type: str) -> int | None:
    """How many outputs a node type has (what ComfyUI indexes a link into), if known."""
    node_class = mappings.get(class_type)
    try:
        return None if node_class is None else len(node_class.RETURN_TYPES)
    except Exception:  # a V3 node's schema that fails to build: validation will say so
        return None


async def _validate_nodes(comfy: Comfy, prompt_id: str, prompt: dict[str, Any]) -> dict[str, Any]:
    """ComfyUI's own checks of each node of ``prompt``, as ``validate_prompt``'s node_errors.

    ``validate_prompt`` checks only what its output nodes reach and refuses the whole
    graph at its first unknown type; its ``validate_inputs`` checks one node (and what
    it links to) and records every verdict in ``validated``, from which ``validate_prompt``
    builds node_errors the same way: nodes with reasons of their own.
    """
    validated: dict[str, Any] = {}
    for node_id in shapes.sort_node_ids(list(prompt)):
        try:
            await comfy.execution.validate_inputs(prompt_id, prompt, node_id, validated)
        except Exception as exc:
            reason = {
                "type": "exception_during_validation",
                "message": "Exception when validating node",
                "details": str(exc),
                "extra_info": {"exception_type": comfy.execution.full_type_name(type(exc))},
            }
            validated[node_id] = (False, [reason], node_id)
    return {
        node_id: {
            "errors": result[1],
            "dependent_outputs": [],
            "class_type": prompt[node_id]["class_type"],
        }
        for node_id, result in validated.items()
        if result[0] is not True and result[1] and node_id in prompt
    }
