"""The shape and size of an editor (UI-format) workflow, checked before it is converted.

Helpers for :mod:`engine.ui_workflow`, pure Python. The converter reads ids, links and
modes as numbers and follows subgraphs by id; a request can put anything in those
places. :func:`shape_problems` walks the request once and names, by their path in the
request (``definitions.subgraphs[0].nodes[3].mode``), every value of the wrong type, every
number that is not a finite whole number, and every id used twice (two nodes or two links
with one id, two subgraphs with one id): the converter would otherwise keep the last one
and drop the others in silence. :func:`expansion_problem` counts the nodes that subgraphs
expand to before anything is expanded: 3 KB of nested subgraph instances can stand for two
million nodes. :func:`check_size` (the worker, before anything runs) and
:func:`check_shape` (the converter) raise with what they find.

All of it is linear in the size of the request; none of it recurses. A malformed request
is refused at its ``MAX_PROBLEMS + 1``-th problem: the walk stops there, so 10 MB of
malformed links costs what its first few links cost, not what all of them do.
"""

from __future__ import annotations

import contextlib
import math
import re
import reprlib
from collections.abc import Mapping
from typing import Any

from engine.errors import WorkflowConversionError, WorkflowValidationError

_MODES = frozenset({0, 1, 2, 3, 4})
"""LiteGraph's node modes: always, on event, never (muted), on trigger, bypass."""

MAX_PROBLEMS = 50
"""Problems named one by one; past them the check stops (a hostile request can hold millions)."""

_DIGITS = re.compile(r"-?\d{1,18}")
_LINK_FIELDS = ("id", "origin_id", "origin_slot", "target_id", "target_slot")


def whole_number(value: Any) -> int | None:
    """``value`` as an id or slot: an int, a finite whole float, or digits; else None."""
    if type(value) is int:  # the common case first: this runs once per id of a request
        return value
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        return int(value)
    return None


# A value as a message shows it: a few levels, items and characters. ``repr`` would copy
# a 10 MB text whole, and recurse through a list nested hundreds deep.
_SHOWN = reprlib.Repr()  # keyword arguments only from Python 3.12
_SHOWN.maxlevel, _SHOWN.maxlist, _SHOWN.maxtuple, _SHOWN.maxdict = 3, 6, 6, 4
_SHOWN.maxstring = _SHOWN.maxother = 60


def _show(value: Any) -> str:
    text = _SHOWN.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "text", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"the number {_show(value)}"
    return names.get(type(value), type(value).__name__)


class _Enough(Exception):
    """More problems than are named: the walk stops."""


class _Problems:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.more = False

    def add(self, where: str, what: str) -> None:
        if len(self.lines) >= MAX_PROBLEMS:
            self.more = True
            raise _Enough
        self.lines.append(f"{where}: {what}")

    def result(self) -> list[str]:
        return self.lines + (
            [
                f"... and more problems of the same kinds (the check stops after "
                f"{MAX_PROBLEMS}): fix these, save the workflow again from the editor"
            ]
            if self.more
            else []
        )


def shape_problems(ui: Mapping[str, Any]) -> list[str]:
    """The places where ``ui`` does not have the shape the editor saves; [] when none.

    Each line starts with the path of the value (``nodes[2].inputs[0].link``) and, for a
    node, its id; then what is wrong with it, and the value. Past ``MAX_PROBLEMS`` the
    walk stops and a last line says there are more.
    """
    problems = _Problems()
    with contextlib.suppress(_Enough):  # the walk stops at one problem past the bound
        _check_all(ui, problems)
    return problems.result()


def _check_all(ui: Mapping[str, Any], problems: _Problems) -> None:
    """:func:`shape_problems`'s walk; :class:`_Enough` ends it early."""
    _check_graph(ui, "", problems)
    definitions = ui.get("definitions")
    if definitions is None:
        return
    if not isinstance(definitions, Mapping):
        problems.add(
            "definitions", f"must be an object holding 'subgraphs', not {_kind(definitions)}"
        )
        return
    subgraphs = definitions.get("subgraphs")
    if subgraphs is None:
        return
    if not isinstance(subgraphs, list):
        problems.add("definitions.subgraphs", f"must be a list, not {_kind(subgraphs)}")
        return
    seen: dict[str, int] = {}
    for index, sub in enumerate(subgraphs):
        where = f"definitions.subgraphs[{index}]"
        if not isinstance(sub, Mapping):
            problems.add(where, f"must be an object (a subgraph), not {_kind(sub)}")
            continue
        sub_id = sub.get("id")
        if not isinstance(sub_id, str) or not sub_id:
            problems.add(f"{where}.id", f"must be the subgraph's id as text, not {_kind(sub_id)}")
        elif sub_id in seen:
            problems.add(
                f"{where}.id",
                f"subgraph id {sub_id!r} is also definitions.subgraphs[{seen[sub_id]}]'s: "
                "each subgraph needs its own id",
            )
        else:
            seen[sub_id] = index
        _check_graph(sub, f"{where}.", problems)
        for side in ("inputs", "outputs"):
            _check_io(sub.get(side), f"{where}.{side}", problems)


def _check_graph(graph: Mapping[str, Any], prefix: str, problems: _Problems) -> None:
    nodes = graph.get("nodes")
    if nodes is not None and not isinstance(nodes, list):
        problems.add(f"{prefix}nodes", f"must be a list, not {_kind(nodes)}")
        nodes = None
    ids: dict[Any, int] = {}
    for index, node in enumerate(nodes or []):
        where = f"{prefix}nodes[{index}]"
        if not isinstance(node, Mapping):
            problems.add(where, f"must be an object (a node), not {_kind(node)}")
            continue
        node_id = node.get("id")
        key = whole_number(node_id) if not isinstance(node_id, str) else node_id
        if key is None or key == "":
            problems.add(f"{where}.id", f"must be a whole number or text, not {_kind(node_id)}")
        else:
            key = str(key)
            if key in ids:
                problems.add(
                    f"{where}.id",
                    f"node id {key} is also {prefix}nodes[{ids[key]}]'s: two nodes with one id "
                    "(the editor gives each node its own); give one of them a new id",
                )
            else:
                ids[key] = index
            where = f"{where} (node {key})"
        _check_node(node, where, problems)
    _check_links(graph.get("links"), f"{prefix}links", problems)


def _check_node(node: Mapping[str, Any], where: str, problems: _Problems) -> None:
    kind = node.get("type")
    if not isinstance(kind, str) or not kind:
        problems.add(f"{where}.type", f"must be the node's type as text, not {_kind(kind)}")
    mode = node.get("mode")
    if mode is not None and whole_number(mode) not in _MODES:
        problems.add(
            f"{where}.mode",
            f"{_show(mode)} is not a node mode (0 always, 2 muted, 4 bypassed)",
        )
    for side, link_field in (("inputs", "link"), ("outputs", "links")):
        entries = node.get(side)
        if entries is None:
            continue
        if not isinstance(entries, list):
            problems.add(f"{where}.{side}", f"must be a list, not {_kind(entries)}")
            continue
        for slot, entry in enumerate(entries):
            at = f"{where}.{side}[{slot}]"
            if not isinstance(entry, Mapping):
                problems.add(at, f"must be an object (a socket), not {_kind(entry)}")
                continue
            name = entry.get("name")
            if name is not None and not isinstance(name, str):
                problems.add(f"{at}.name", f"must be text, not {_kind(name)}")
            widget = entry.get("widget")
            if widget is not None and not isinstance(widget, Mapping):
                problems.add(f"{at}.widget", f"must be an object, not {_kind(widget)}")
            value = entry.get(link_field)
            if value is None:
                continue
            if side == "inputs":
                if whole_number(value) is None:
                    problems.add(f"{at}.link", f"{_show(value)} is not a link id (a whole number)")
            elif not isinstance(value, list) or any(whole_number(v) is None for v in value):
                problems.add(f"{at}.links", f"{_show(value)} is not a list of link ids")
    values = node.get("widgets_values")
    if values is not None and not isinstance(values, (list, Mapping)):
        problems.add(f"{where}.widgets_values", f"must be a list, not {_kind(values)}")
    properties = node.get("properties")
    if properties is None:
        return
    if not isinstance(properties, Mapping):
        problems.add(f"{where}.properties", f"must be an object, not {_kind(properties)}")
        return
    proxies = properties.get("proxyWidgets")
    if proxies is not None and (
        not isinstance(proxies, list)
        or not all(
            isinstance(p, list)
            and len(p) == 2
            and isinstance(p[1], str)
            and isinstance(p[0], (str, int))
            and not isinstance(p[0], bool)
            for p in proxies
        )
    ):
        problems.add(
            f"{where}.properties.proxyWidgets",
            f"{_show(proxies)} is not a list of [node id, widget name] pairs",
        )


def _check_links(links: Any, where: str, problems: _Problems) -> None:
    if links is None:
        return
    if not isinstance(links, list):
        problems.add(where, f"must be a list, not {_kind(links)}")
        return
    seen: dict[int, int] = {}
    for index, link in enumerate(links):
        if type(link) is list and len(link) >= 5:
            # The editor's own shape, first and cheaply: five plain ints (most requests).
            link_id, origin, origin_slot, target, target_slot = link[:5]
            if (
                type(link_id) is int
                and type(origin) is int
                and type(origin_slot) is int
                and type(target) is int
                and type(target_slot) is int
                and link_id not in seen
            ):
                seen[link_id] = index
                continue
        at = f"{where}[{index}]"
        if isinstance(link, list):
            if len(link) < 5:
                problems.add(
                    at,
                    f"{_show(link)} is not a link ([id, origin node, origin slot, target node, "
                    "target slot, type])",
                )
                continue
            fields = list(zip(_LINK_FIELDS, link[:5], strict=True))
        elif isinstance(link, Mapping):
            fields = [(name, link.get(name)) for name in _LINK_FIELDS]
        else:
            problems.add(at, f"must be a link (a list or an object), not {_kind(link)}")
            continue
        numbers = [whole_number(value) for _, value in fields]
        if None in numbers:
            for (name, value), number in zip(fields, numbers, strict=True):
                if number is None:
                    problems.add(f"{at} {name}", f"{_show(value)} is not a whole number")
        link_id = numbers[0]
        if link_id is None:
            continue
        if link_id in seen:
            problems.add(
                f"{at} id",
                f"link id {link_id} is also {where}[{seen[link_id]}]'s: two links with one id "
                "connect the wrong sockets; save the workflow again from the editor",
            )
        else:
            seen[link_id] = index


def _check_io(entries: Any, where: str, problems: _Problems) -> None:
    """A subgraph definition's ``inputs`` or ``outputs``: named slots with their links."""
    if entries is None:
        return
    if not isinstance(entries, list):
        problems.add(where, f"must be a list, not {_kind(entries)}")
        return
    for slot, entry in enumerate(entries):
        at = f"{where}[{slot}]"
        if not isinstance(entry, Mapping):
            problems.add(at, f"must be an object, not {_kind(entry)}")
            continue
        name = entry.get("name")
        if name is not None and not isinstance(name, str):
            problems.add(f"{at}.name", f"must be text, not {_kind(name)}")
        link_ids = entry.get("linkIds")
        if link_ids is not None and (
            not isinstance(link_ids, list) or any(whole_number(v) is None for v in link_ids)
        ):
            problems.add(f"{at}.linkIds", f"{_show(link_ids)} is not a list of link ids")


# -- entry points -----------------------------------------------------------------------------


def check_size(workflow: Mapping[str, Any], max_nodes: int) -> None:
    """Refuse a workflow of more than ``max_nodes`` nodes before anything runs.

    An API-format workflow counts its nodes (``WorkflowValidationError``); a UI-format one
    is first checked for its shape, then counted with its subgraphs as they would expand,
    without expanding them (``WorkflowConversionError``, naming the subgraph).
    """
    if isinstance(workflow.get("nodes"), list):  # the UI format (ui_workflow.is_ui_format)
        check_shape(workflow, max_nodes)
    elif len(workflow) > max_nodes:
        raise WorkflowValidationError(
            [
                f"the workflow has {len(workflow):,} nodes, over the limit of {max_nodes:,} "
                "(WORKFLOW_MAX_NODES): split it into several jobs, or raise the limit on the "
                "endpoint"
            ]
        )


def check_shape(ui: Mapping[str, Any], max_nodes: int) -> None:
    """Raise ``WorkflowConversionError`` naming every malformed part of an editor workflow,
    or its size once subgraphs would be expanded, past ``max_nodes``."""
    problems = shape_problems(ui)
    if problems:
        raise WorkflowConversionError(problems)
    problem = expansion_problem(ui.get("nodes") or [], subgraphs_of(ui), max_nodes)
    if problem:
        raise WorkflowConversionError([problem])


def subgraphs_of(ui: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The subgraph definitions by id, of a workflow whose shape was checked."""
    subgraphs = (ui.get("definitions") or {}).get("subgraphs") or []
    return {s["id"]: s for s in subgraphs}


# -- size -------------------------------------------------------------------------------------


def expansion_problem(
    root_nodes: list[Mapping[str, Any]],
    subgraphs: Mapping[str, Mapping[str, Any]],
    max_nodes: int,
) -> str | None:
    """Why the workflow expands to too many nodes, or None when it fits ``max_nodes``.

    Counted from the definitions, nothing expanded: each subgraph's size is the sum of
    its nodes, an instance of a subgraph counting as that subgraph's size (a subgraph
    that contains itself counts as empty here; the converter names it). ``subgraphs`` is
    by id. The line names the instance at which the count passes the limit, its
    subgraph, what one instance expands to and the whole workflow's count.
    """
    sizes = _subgraph_sizes(subgraphs)
    total = 0
    culprit: tuple[Any, str] | None = None
    for node in root_nodes:
        kind = node.get("type")
        size = sizes.get(kind, 1) if isinstance(kind, str) else 1
        total += size
        if culprit is None and total > max_nodes and size > 1:
            culprit = (node.get("id"), str(kind))
    if total <= max_nodes:
        return None
    text = (
        f"the workflow expands to {_count(total)} nodes, over the limit of {max_nodes:,} "
        "(WORKFLOW_MAX_NODES)"
    )
    if culprit is not None:
        node_id, kind = culprit
        name = subgraphs[kind].get("name")
        label = f"{name!r} ({kind})" if isinstance(name, str) and name != kind else repr(kind)
        text = (
            f"node {node_id}: subgraph {label} expands to {_count(sizes[kind])} nodes per "
            f"instance, and {text}"
        )
    return (
        f"{text}: subgraphs nested in subgraphs multiply; send fewer instances, or raise the "
        "limit on the endpoint"
    )


def _count(number: int) -> str:
    return f"{number:,}" if number < 10**15 else f"more than {10**15:,}"


def _subgraph_sizes(subgraphs: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """Each subgraph's expanded node count, by id: a depth-first walk with a stack, not
    recursion (definitions may nest thousands deep), each definition's nodes read once."""
    sizes: dict[str, int] = {}
    for start in subgraphs:
        if start in sizes:
            continue
        stack = [(start, iter(_instance_types(subgraphs[start], subgraphs)))]
        open_ids = {start}
        while stack:
            current, children = stack[-1]
            child = next((k for k in children if k not in sizes and k not in open_ids), None)
            if child is not None:
                stack.append((child, iter(_instance_types(subgraphs[child], subgraphs))))
                open_ids.add(child)
                continue
            stack.pop()
            open_ids.discard(current)
            total = 0
            for node in subgraphs[current].get("nodes") or []:
                kind = node.get("type") if isinstance(node, Mapping) else None
                # A subgraph still open here contains itself: 0, and the converter says so.
                total += sizes.get(kind, 0) if isinstance(kind, str) and kind in subgraphs else 1
            # Capped: any count past 10**15 is refused alike, and the numbers stay small.
            sizes[current] = min(total, 10**15 + 1)
    return sizes


def _instance_types(
    definition: Mapping[str, Any], subgraphs: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """The subgraph ids a definition's nodes are instances of."""
    return [
        node["type"]
        for node in definition.get("nodes") or []
        if isinstance(node, Mapping)
        and isinstance(node.get("type"), str)
        and node["type"] in subgraphs
    ]
