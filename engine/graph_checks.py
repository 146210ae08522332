"""Checks of a workflow's graph and values that ComfyUI does badly or not at all.

Pure functions over the API-format graph (node id -> ``{"class_type", "inputs"}``),
so CI tests them without ComfyUI. Two kinds:

* :func:`check_values` bounds what a request may carry, before anything runs: a string
  value over ``WORKFLOW_MAX_STRING_BYTES`` (ComfyUI would copy it into every output's
  metadata: a 50 MB prompt became a 66 MB PNG) and values nested deeper than
  :data:`MAX_NESTING` (``copy.deepcopy`` and every recursive walk of the graph raise
  ``RecursionError`` near 1000 levels). It raises one error naming every such value.
* :func:`find_problems` finds what ComfyUI's validation reports badly: a link to a node
  that does not exist (ComfyUI: "Exception when validating inner node: '99'", against
  the wrong input), a link to an output the node does not have, a cycle (ComfyUI
  recurses until ``RecursionError`` and says only "Prompt outputs failed validation"),
  and a chain of links deeper than ComfyUI's recursive validation can walk. The
  runtime merges these with unknown node types and ComfyUI's own findings
  (:func:`unsound_nodes` says which nodes ComfyUI can still validate).

Every walk here is iterative: these checks must not themselves hit the recursion
limit they guard against.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from engine.errors import WorkflowValidationError

MAX_NESTING = 64
"""Deepest nesting of lists and objects in a workflow, counted from the workflow itself.

An API-format link sits at depth 4 (workflow, node, inputs, link) and the editor's UI
format (subgraph definitions holding nodes holding widget values) stays under 10.
The runtime's ``copy.deepcopy`` of the workflow raised ``RecursionError`` at 497 levels of
lists (two frames a level against Python's limit of 1000; Python 3.11 and 3.12 alike).
"""

MAX_CHAIN_DEPTH = 800
"""Longest chain of linked nodes (counted in nodes) the worker hands to ComfyUI.

ComfyUI 0.3.64 validates a graph recursively, one Python frame per node of a chain,
under Python's default limit of 1000 frames. Measured on the runtime's engine thread
(Python 3.12, the image's; ``scripts/measure_chain_depth.py``): the longest chain that
validates is 986 nodes, and a chain of 800 validates and runs. 800 leaves about 185
frames for a deeper calling stack and for custom nodes' own validation. Raising the
recursion limit instead would trade this clear error for a crash of the thread's C
stack, which nothing can report.
"""


_MAX_DETAILS = 50
"""Values named one by one in the error; the rest are counted."""


def _node_label(workflow: Mapping[str, Any], node_id: str) -> str:
    node = workflow.get(node_id)
    class_type = node.get("class_type") if isinstance(node, dict) else None
    return f"Node {node_id} ({class_type})" if isinstance(class_type, str) else f"Node {node_id}"


def _inputs(node: object) -> Mapping[str, Any]:
    inputs = node.get("inputs") if isinstance(node, dict) else None
    return inputs if isinstance(inputs, dict) else {}


def _sort_key(node_id: str) -> tuple[int, int, str]:
    return (0, int(node_id), "") if node_id.isdigit() else (1, 0, node_id)


# -- values ---------------------------------------------------------------------------


def _where(workflow: Mapping[str, Any], path: tuple[str | int, ...], name: str) -> str:
    """A node's input by name, or the value's path in the workflow (UI format, ``_meta``)."""
    if len(path) >= 3 and path[1] == "inputs" and isinstance(workflow.get(str(path[0])), dict):
        return f"{_node_label(workflow, str(path[0]))} input '{path[2]}'"
    text = name
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def _utf8_size(value: str, limit: int) -> int:
    """The UTF-8 size of ``value``; its length when even 4 bytes a character fit ``limit``."""
    if len(value) * 4 <= limit:
        return len(value)  # a lower bound, and under the limit whatever the characters
    return len(value.encode("utf-8", "surrogatepass"))


def check_values(
    workflow: Mapping[str, Any],
    max_string_bytes: int,
    *,
    max_nesting: int = MAX_NESTING,
    name: str = "workflow",
) -> None:
    """Refuse a workflow holding an over-long string or a value nested too deep.

    ``max_string_bytes`` is ``WORKFLOW_MAX_STRING_BYTES``. Raises
    :class:`WorkflowValidationError` with one detail line per value, each naming the
    node and the input (or the path from ``name``, outside a node's inputs). The request
    is only read.
    """
    found: list[tuple[tuple[int, int, str], str]] = []

    def report(path: tuple[str | int, ...], problem: str) -> None:
        # Sorted by node, as people read ids (2 before 10), then by the line itself.
        found.append(
            (
                _sort_key(str(path[0])) if path else (2, 0, ""),
                f"{_where(workflow, path, name)}: {problem}",
            )
        )

    def check_text(path: tuple[str | int, ...], text: str) -> None:
        size = _utf8_size(text, max_string_bytes)
        if size > max_string_bytes:
            report(
                path,
                f"the text is {size:,} bytes, over the {max_string_bytes:,}-byte limit "
                "(WORKFLOW_MAX_STRING_BYTES): send less text, or raise the limit on the "
                "endpoint",
            )

    # Only containers go on the stack, each with its path; a number or a text is checked
    # where it is met (a request of a million links holds six million of those).
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), workflow)]
    while stack:
        path, value = stack.pop()
        if len(path) >= max_nesting:
            # Reported once, where it passes the bound; nothing below it is walked.
            report(
                path,
                f"the value is nested more than {max_nesting} levels deep; no ComfyUI input "
                "takes that: send a flatter value",
            )
            continue
        if isinstance(value, dict):
            for key, child in value.items():
                if isinstance(key, str) and _utf8_size(key, max_string_bytes) > max_string_bytes:
                    report(
                        path,
                        f"a key of {len(key):,} characters, over the {max_string_bytes:,}-byte "
                        "limit (WORKFLOW_MAX_STRING_BYTES)",
                    )
                if isinstance(child, str):
                    if len(child) * 4 > max_string_bytes:  # else within it, whatever it holds
                        check_text((*path, str(key)), child)
                elif isinstance(child, (dict, list, tuple)):
                    stack.append(((*path, str(key)), child))
        else:
            for index, child in enumerate(value):
                if isinstance(child, str):
                    if len(child) * 4 > max_string_bytes:
                        check_text((*path, index), child)
                elif isinstance(child, (dict, list, tuple)):
                    stack.append(((*path, index), child))
    if found:
        details = [detail for _, detail in sorted(found)]
        if len(details) > _MAX_DETAILS:
            extra = len(details) - _MAX_DETAILS
            details = [*details[:_MAX_DETAILS], f"... and {extra:,} more values like these"]
        raise WorkflowValidationError(details)


# -- the graph ------------------------------------------------------------------------


@dataclass(frozen=True)
class GraphProblem:
    """One problem with the graph, blamed on the nodes where it is fixed."""

    kind: str
    """``missing_node``, ``bad_output``, ``cycle`` or ``too_deep``."""
    node_ids: tuple[str, ...]
    """The nodes ComfyUI must not be asked to validate because of it."""
    detail: str
    """A sentence naming the node, its type, the input and what to fix."""


def _links(
    workflow: Mapping[str, Any],
) -> Iterator[tuple[str, str, object, object]]:
    """Every (node id, input name, source, output index) of a two-item list value.

    ComfyUI takes any list value as a link; a list of another length it reports
    itself ("Bad linked input").
    """
    for node_id in sorted(workflow, key=_sort_key):
        inputs = _inputs(workflow[node_id])
        for name in sorted(inputs):
            value = inputs[name]
            if isinstance(value, list) and len(value) == 2:
                yield node_id, name, value[0], value[1]


def _link_problem(
    workflow: Mapping[str, Any],
    node_id: str,
    name: str,
    source: object,
    index: object,
    outputs_of: Callable[[str], int | None],
) -> GraphProblem | None:
    where = f"{_node_label(workflow, node_id)} input '{name}'"
    if not isinstance(source, str):
        hint = (
            f': write the node id as a string, "{source}"'
            if str(source) in workflow
            else ': a link is ["<node id>", <output index>]'
        )
        return GraphProblem("missing_node", (node_id,), f"{where}: links to {source!r}{hint}")
    if source not in workflow:
        return GraphProblem(
            "missing_node",
            (node_id,),
            f"{where}: links to node {source}, which is not in the workflow: link it to an "
            "existing node, or remove the link",
        )
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        return GraphProblem(
            "bad_output",
            (node_id,),
            f"{where}: links to output {index!r} of node {source}; an output index is a "
            "whole number from 0",
        )
    class_type = workflow[source].get("class_type") if isinstance(workflow[source], dict) else None
    count = outputs_of(class_type) if isinstance(class_type, str) else None
    if count is not None and index >= count:
        has = f"has {count} output{'s' if count != 1 else ''}" if count else "has no outputs"
        numbered = f" (0 to {count - 1})" if count > 1 else ""
        return GraphProblem(
            "bad_output",
            (node_id,),
            f"{where}: links to output {index} of {_node_label(workflow, source)}, which "
            f"{has}{numbered}",
        )
    return None


def _edges(workflow: Mapping[str, Any]) -> dict[str, list[str]]:
    """Node id -> the ids of the existing nodes it takes inputs from."""
    sources: dict[str, list[str]] = {node_id: [] for node_id in workflow}
    for node_id, _, source, _ in _links(workflow):
        if isinstance(source, str) and source in workflow:
            sources[node_id].append(source)
    return sources


def _cycles(sources: Mapping[str, list[str]]) -> list[list[str]]:
    """The strongly connected components that hold a cycle (Tarjan's, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(sources, key=_sort_key):
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, child = work.pop()
            if child == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            successors = sources[node]
            if child < len(successors):
                work.append((node, child + 1))
                nxt = successors[child]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in successors:
                    found.append(sorted(component, key=_sort_key))
    return found


def _consumers(sources: Mapping[str, list[str]]) -> dict[str, list[str]]:
    consumers: dict[str, list[str]] = {node_id: [] for node_id in sources}
    for node_id, froms in sources.items():
        for source in froms:
            consumers[source].append(node_id)
    return consumers


def unsound_nodes(workflow: Mapping[str, Any], bad: set[str]) -> set[str]:
    """``bad`` and every node that takes an input, however indirectly, from one of them.

    ComfyUI can still validate every other node: none of them reaches a bad one.
    """
    consumers = _consumers(_edges(workflow))
    unsound = set(bad)
    todo = list(bad)
    while todo:
        for consumer in consumers.get(todo.pop(), ()):
            if consumer not in unsound:
                unsound.add(consumer)
                todo.append(consumer)
    return unsound


def upstream_of(workflow: Mapping[str, Any], node_ids: set[str]) -> set[str]:
    """``node_ids`` (those in the workflow) and every node they take inputs from, however
    indirectly."""
    sources = _edges(workflow)
    found = {n for n in node_ids if n in sources}
    todo = list(found)
    while todo:
        for source in sources[todo.pop()]:
            if source not in found:
                found.add(source)
                todo.append(source)
    return found


def _deepest_chain(sources: Mapping[str, list[str]], skip: set[str]) -> tuple[int, str | None]:
    """The most nodes on one chain of links (and the node it ends at), ``skip`` left out."""
    nodes = [n for n in sources if n not in skip]
    waiting = {n: sum(1 for s in sources[n] if s not in skip) for n in nodes}
    consumers = _consumers(sources)
    depth = {n: 1 for n in nodes}
    ready = [n for n in nodes if waiting[n] == 0]
    while ready:
        node = ready.pop()
        for consumer in consumers[node]:
            if consumer in skip:
                continue
            depth[consumer] = max(depth[consumer], depth[node] + 1)
            waiting[consumer] -= 1
            if waiting[consumer] == 0:
                ready.append(consumer)
    if not depth:
        return 0, None
    deepest = max(sorted(depth, key=_sort_key), key=lambda n: depth[n])
    return depth[deepest], deepest


def find_problems(
    workflow: Mapping[str, Any],
    outputs_of: Callable[[str], int | None] | None = None,
    *,
    max_depth: int = MAX_CHAIN_DEPTH,
) -> list[GraphProblem]:
    """Bad links, cycles and a too-deep chain, one problem each, in node order.

    ``outputs_of(class_type)`` is how many outputs a node type has (``None``: unknown,
    e.g. a type that is not installed); without it output indexes are not checked.
    """
    count_outputs = outputs_of or (lambda class_type: None)
    problems = [
        problem
        for node_id, name, source, index in _links(workflow)
        if (problem := _link_problem(workflow, node_id, name, source, index, count_outputs))
    ]
    sources = _edges(workflow)
    in_cycles: set[str] = set()
    for component in _cycles(sources):
        in_cycles.update(component)
        names = ", ".join(_node_label(workflow, n).removeprefix("Node ") for n in component)
        what = "links to itself" if len(component) == 1 else "form a cycle"
        subject = f"Node {names}" if len(component) == 1 else f"Nodes {names}"
        problems.append(
            GraphProblem(
                "cycle",
                tuple(component),
                f"{subject} {what}: a node cannot take an input that depends on its own "
                "output; remove one of the links",
            )
        )
    deepest, end = _deepest_chain(sources, unsound_nodes(workflow, in_cycles))
    if deepest > max_depth and end is not None:
        problems.append(
            GraphProblem(
                "too_deep",
                tuple(workflow),
                f"The graph is too deep: {_node_label(workflow, end)} ends a chain of "
                f"{deepest:,} linked nodes, and the worker runs chains of at most "
                f"{max_depth:,} (ComfyUI validates and runs a graph recursively): split the "
                "workflow into several jobs",
            )
        )
    return problems
