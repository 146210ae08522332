"""The editor's last steps on a converted (API-format) graph: links to nodes that do not
run are dropped, and required inputs left without a source are named.

Helpers for :mod:`engine.ui_workflow`, pure Python; both walk the graph once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.ui_widgets import input_specs


def drop_links_to_missing(api: dict[str, Any]) -> None:
    """Links to nodes that do not run (muted) are removed, as the editor removes them."""
    for node in api.values():
        inputs = node["inputs"]
        for name, value in list(inputs.items()):
            if _is_link(value) and value[0] not in api:
                del inputs[name]


def unsourced_inputs(
    api: dict[str, Any],
    defs: Mapping[str, Mapping[str, Any]],
    misfits: Mapping[str, set[str]],
) -> list[str]:
    """A line for each required input left without a source, on nodes an output needs.

    ``misfits`` are the widgets already named as not fitting, by node: not named again.
    """
    problems: list[str] = []
    needed: set[str] = set()
    stack = [i for i, n in api.items() if (defs.get(n["class_type"]) or {}).get("output_node")]
    while stack:
        node_id = stack.pop()
        if node_id in needed:
            continue
        needed.add(node_id)
        stack += [v[0] for v in api[node_id]["inputs"].values() if _is_link(v)]
    for node_id in sorted(needed, key=_id_key):
        node = api[node_id]
        definition = defs.get(node["class_type"])
        if definition is None:
            continue
        for name, _spec, required in input_specs(definition):
            if required and name not in node["inputs"] and name not in misfits.get(node_id, ()):
                problems.append(
                    f"node {node_id} ({node['class_type']}) input {name!r} has no source: "
                    "it is not linked, or linked to a muted node or to a bypassed node "
                    "with no input of its type"
                )
    return problems


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)


def _id_key(node_id: str) -> tuple[tuple[int, int | str], ...]:
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in node_id.split(":"))
