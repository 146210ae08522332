"""The saved graph of an editor (UI-format) workflow: nodes, links, and the editor's rules.

Helpers for :mod:`engine.ui_workflow`, pure Python: the two shapes of a saved link (a
list in the root graph, an object in a subgraph), the node types only the editor has,
how a subgraph instance saved its promoted values, and the rules ComfyUI's frontend 1.27
follows when it links through a bypassed node (``ExecutableNodeDTO``) or through
KJNodes' ``GetNode``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Link:
    origin_id: int
    origin_slot: int
    target_id: int
    target_slot: int


@dataclass
class Graph:
    """The root graph or one subgraph definition."""

    nodes: dict[str, Mapping[str, Any]]
    links: dict[int, Link]
    definition: Mapping[str, Any] | None = None
    setters: dict[Any, Mapping[str, Any]] | None = None
    """KJNodes' ``SetNode`` by the name it sets (the first of a name), made when first asked."""


def links_of(raw: Any) -> dict[int, Link]:
    links: dict[int, Link] = {}
    for entry in raw or []:
        if isinstance(entry, list) and len(entry) >= 5:
            link_id, origin, origin_slot, target, target_slot = entry[:5]
        elif isinstance(entry, Mapping):
            link_id, origin, origin_slot = (
                entry.get("id"),
                entry.get("origin_id"),
                entry.get("origin_slot"),
            )
            target, target_slot = entry.get("target_id"), entry.get("target_slot")
        else:
            continue
        try:
            links[int(link_id)] = Link(int(origin), int(origin_slot), int(target), int(target_slot))
        except (TypeError, ValueError):
            continue  # a malformed link links nothing; the input it fed is then reported
    return links


def graph_of(raw: Mapping[str, Any], definition: Mapping[str, Any] | None = None) -> Graph:
    nodes = {
        str(n["id"]): n for n in raw.get("nodes") or [] if isinstance(n, Mapping) and "id" in n
    }
    return Graph(nodes=nodes, links=links_of(raw.get("links")), definition=definition)


def promoted_by_proxy(proxies: list[Any], values: list[Any]) -> dict[str, Any]:
    """Promoted values by subgraph input name, read in ``proxyWidgets`` order.

    One value per entry; a save that left the direct proxies out has one value per
    subgraph input (``"-1"``) entry instead.
    """
    names = [p[1] if str(p[0]) == "-1" else None for p in proxies]
    if len(values) != len(proxies) and len(values) == sum(n is not None for n in names):
        names = [n for n in names if n is not None]
    return {name: value for name, value in zip(names, values, strict=False) if name is not None}


_NOTES = frozenset({"Note", "MarkdownNote"})
_REROUTES = frozenset({"Reroute", "Reroute (rgthree)"})
# Nodes only the editor has (no Python class): they steer the editor, never run.
FRONTEND_ONLY = frozenset(
    {
        "PrimitiveNode", "SetNode", "GetNode", *_NOTES, *_REROUTES,
        *(
            f"{name} (rgthree)"
            for name in (
                "Fast Groups Muter", "Fast Groups Bypasser", "Fast Muter", "Fast Bypasser",
                "Mute / Bypass Relay", "Mute / Bypass Repeater", "Fast Actions Button",
                "Label", "Bookmark", "Node Collector", "Random Unmuter",
            )
        ),
    }
)  # fmt: skip


def is_ui_format(workflow: Any) -> bool:
    """Whether ``workflow`` is what the editor saves (a ``nodes`` list), not the API format."""
    return isinstance(workflow, Mapping) and isinstance(workflow.get("nodes"), list)


def is_frontend_only(node_type: Any) -> bool:
    """Whether a node type exists only in the editor (a note, a reroute, a primitive...)."""
    return node_type in FRONTEND_ONLY


def type_name(value: Any) -> str:
    return value if isinstance(value, str) else "*"


def _valid_connection(a: str, b: str) -> bool:
    """LiteGraph's ``isValidConnection``: equal, either any (``*``), or comma lists that meet."""
    if a in ("", "*") or b in ("", "*") or a == b:
        return True
    left, right = a.lower().split(","), b.lower().split(",")
    return any(x == y for x in left for y in right)


def bypass_slot(node: Mapping[str, Any], slot: int, want: str) -> int:
    """The input a bypassed node passes on for output ``slot`` feeding a ``want`` input.

    The frontend's rule: the input at the same index if its type fits, else the
    first input of exactly that type, else the first that fits; -1 when none.
    """
    inputs = node.get("inputs") or []
    outputs = node.get("outputs") or []
    if want in ("", "*"):
        return slot if len(inputs) > slot else (0 if inputs else -1)
    out_type = type_name(outputs[slot].get("type")) if 0 <= slot < len(outputs) else "*"
    types = [type_name(i.get("type")) for i in inputs]
    if (
        slot < len(types)
        and _valid_connection(types[slot], out_type)
        and _valid_connection(types[slot], want)
    ):
        return slot
    if want in types:
        return types.index(want)
    return next(
        (
            i
            for i, t in enumerate(types)
            if _valid_connection(t, out_type) and _valid_connection(t, want)
        ),
        -1,
    )


def setter_for(graph: Graph, getter: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """KJNodes: the ``SetNode`` whose name the ``GetNode`` reads (its first widget value).

    The setters are indexed once per graph: a graph of thousands of getters and setters
    is read in one pass, not once per getter.
    """
    if graph.setters is None:
        graph.setters = {}
        for node in graph.nodes.values():
            if node.get("type") == "SetNode":
                name = _first_value(node)
                if _hashable(name):
                    graph.setters.setdefault(name, node)
    name = _first_value(getter)
    return graph.setters.get(name) if _hashable(name) else None


def _first_value(node: Mapping[str, Any]) -> Any:
    values = node.get("widgets_values")
    return values[0] if isinstance(values, list) and values else None


def _hashable(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) or value is None
