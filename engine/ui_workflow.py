"""Editor (UI-format) workflows converted to the API format, against the engine's nodes.

The editor saves ``nodes`` (each with ``widgets_values``, ``inputs``, ``outputs`` and a
``mode``), ``links`` and subgraph ``definitions``; ComfyUI's engine runs the API
format (node id -> ``class_type`` + ``inputs``). The editor converts one to the other
in JavaScript when it queues a prompt (``graphToPrompt``); this module does the same
in the worker, with the running engine's node definitions (the shape of
``/object_info``), so a workflow is accepted as the editor saved it. Pure Python: no
ComfyUI import.

What it follows, as ComfyUI's frontend 1.27 does:

* widget values map to inputs in the definition's order (:mod:`engine.ui_widgets`);
  a link into an input wins over the widget value;
* muted nodes (mode 2) are left out, and links from them removed; bypassed nodes
  (mode 4) pass a consumer's link on to their first input of the same type;
* frontend-only nodes are left out: notes, ``Reroute`` (followed through),
  ``PrimitiveNode`` (its value goes to each input it feeds), KJNodes' ``SetNode`` /
  ``GetNode`` (followed through), rgthree's group and mode controllers and labels;
* subgraphs are expanded, recursively; an inner node's id is ``<outer>:<inner>``;
* a node type the engine does not know is kept, with its links, so validation names
  it; its widget values cannot be mapped without a definition;
* a subgraph instance's promoted values are read in ``properties.proxyWidgets`` order
  when the editor saved one (frontends 1.34 and later), else in the definition's input
  order.

Before any of that, the request's shape is checked and its size counted
(:mod:`engine.ui_shape`): a wrong type, a number that is not a finite whole number, an id
used twice, or more nodes than ``WORKFLOW_MAX_NODES`` once subgraphs are expanded, is
refused before anything is expanded. Problems are collected and raised together as one
``WorkflowConversionError``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.errors import WorkflowConversionError
from engine.settings import Settings
from engine.ui_graph import (
    FRONTEND_ONLY,
    Graph,
    bypass_slot,
    graph_of,
    is_frontend_only,
    is_ui_format,
    promoted_by_proxy,
    setter_for,
    type_name,
)
from engine.ui_required import drop_links_to_missing, unsourced_inputs
from engine.ui_shape import check_shape, subgraphs_of
from engine.ui_widgets import read_widgets, socket_type

__all__ = [
    "NodeDefinitions",
    "as_api_format",
    "is_frontend_only",
    "is_ui_format",
    "to_api_format",
]

log = logging.getLogger(__name__)

NodeDefinitions = Mapping[str, Mapping[str, Any]]
"""Node type -> its definition, as ComfyUI's ``/object_info`` lists it."""

_MUTED, _BYPASSED = 2, 4
_SUBGRAPH_INPUT, _SUBGRAPH_OUTPUT = -10, -20  # the ids of a subgraph's IO nodes


def as_api_format(
    workflow: dict[str, Any],
    definitions: Callable[[], NodeDefinitions],
    *,
    max_nodes: int = Settings.workflow_max_nodes,
) -> dict[str, Any]:
    """``workflow`` in the API format: converted when it is UI format, else as sent.

    ``definitions`` is called only for a UI-format workflow.
    """
    if not is_ui_format(workflow):
        return workflow
    return to_api_format(workflow, definitions(), max_nodes=max_nodes)


def to_api_format(
    ui: Mapping[str, Any],
    defs: NodeDefinitions,
    *,
    rng: random.Random | None = None,
    max_nodes: int = Settings.workflow_max_nodes,
) -> dict[str, Any]:
    """Convert an editor workflow; raises ``WorkflowConversionError`` naming every problem.

    ``rng`` picks the choices of dynamic prompts (``{a|b}``); a seeded one makes the
    result repeatable. ``max_nodes`` bounds the nodes once subgraphs are expanded
    (``WORKFLOW_MAX_NODES``), counted before any is.
    """
    check_shape(ui, max_nodes)
    converter = _Converter(ui, defs, rng or random.Random())  # noqa: S311 - prompt variety, not security
    try:
        api = converter.convert()
    except RecursionError:
        # Links are followed recursively through reroutes, bypassed nodes and subgraphs;
        # a chain thousands long is no workflow an editor makes.
        raise WorkflowConversionError(
            [
                "the workflow's links chain through more reroutes, bypassed nodes or subgraphs "
                "than the converter follows; export the API format instead"
            ]
        ) from None
    except (TypeError, ValueError, AttributeError) as exc:
        # The shape check above covers what the converter reads; a case it misses still
        # gets this answer rather than a traceback.
        raise WorkflowConversionError(
            [
                f"the UI-format workflow is malformed ({type(exc).__name__}: {exc}); save it "
                "again from the editor"
            ]
        ) from exc
    if converter.problems:
        raise WorkflowConversionError(converter.problems)
    return api


@dataclass
class _Scope:
    """Where a node lives: the root graph, or one subgraph instance (recursively)."""

    graph: Graph
    path: tuple[str, ...] = ()
    parent: _Scope | None = None
    instance: Mapping[str, Any] | None = None
    """The subgraph node, in ``parent``, this scope expands."""
    mode: int | None = None
    """The instance's mode when it is muted or bypassed: every inner node takes it."""
    promoted: dict[str, Any] = field(default_factory=dict)
    """Values of the instance's widgets (promoted subgraph inputs), by input name."""
    input_slots: dict[Any, int] | None = None
    """The instance's input slots by name (the first of a name), made when first asked."""

    def exec_id(self, node_id: str) -> str:
        return ":".join((*self.path, node_id))


@dataclass(frozen=True)
class _FromNode:
    node_id: str
    slot: int


@dataclass(frozen=True)
class _Value:
    value: Any


_Source = _FromNode | _Value | None


# -- conversion ----------------------------------------------------------------------------


class _Converter:
    def __init__(self, ui: Mapping[str, Any], defs: NodeDefinitions, rng: random.Random) -> None:
        self.defs = defs
        self.rng = rng
        self.problems: list[str] = []
        self.subgraphs = {sub_id: graph_of(s, s) for sub_id, s in subgraphs_of(ui).items()}
        self.root = _Scope(graph_of(ui))
        self.scopes: dict[tuple[str, ...], _Scope] = {}
        self.warned: set[str] = set()
        self.widget_inputs: dict[int, list[Any]] = {}
        """Each definition's subgraph inputs that feed a widget (``_widget_inputs``)."""
        self.resolved: dict[tuple[Any, ...], _Source] = {}
        """What each output gives an input of a type, once found (``_resolve_output``)."""
        self.misfits: dict[str, set[str]] = {}
        """Widgets already reported as not fitting, by node: not reported again as missing."""

    def convert(self) -> dict[str, Any]:
        api: dict[str, Any] = {}
        members = list(self._members(self.root, frozenset()))
        for scope, node in members:
            if self._mode(scope, node) in (_MUTED, _BYPASSED) or node.get("type") in FRONTEND_ONLY:
                continue
            exec_id = scope.exec_id(str(node["id"]))
            if exec_id in api:
                # A root node saved with the id "5:1" and node 1 inside subgraph instance 5:
                # one would replace the other, and its outputs would be lost in silence.
                self.problems.append(
                    f"node {exec_id}: two nodes get this id once subgraphs are expanded "
                    f"({api[exec_id]['class_type']} and {node.get('type')}); give the node "
                    "saved with that id another one"
                )
                continue
            api[exec_id] = self._api_node(scope, node)
        drop_links_to_missing(api)
        self.problems += unsourced_inputs(api, self.defs, self.misfits)
        return api

    # Flattening ------------------------------------------------------------------------

    def _members(
        self, scope: _Scope, seen: frozenset[str]
    ) -> Iterator[tuple[_Scope, Mapping[str, Any]]]:
        for node_id, node in scope.graph.nodes.items():
            kind = node.get("type")
            sub = self.subgraphs.get(kind) if isinstance(kind, str) else None
            if sub is None:
                yield scope, node
                continue
            if kind in seen:
                self.problems.append(
                    f"node {scope.exec_id(node_id)}: subgraph {kind} contains itself"
                )
                continue
            mode = self._mode(scope, node)
            child = _Scope(
                sub,
                (*scope.path, node_id),
                scope,
                node,
                mode if mode in (_MUTED, _BYPASSED) else None,
            )
            child.promoted = self._promoted(child)
            self.scopes[child.path] = child
            yield from self._members(child, seen | {str(kind)})

    def _mode(self, scope: _Scope, node: Mapping[str, Any]) -> int:
        if scope.mode == _MUTED:
            return _MUTED
        own = node.get("mode") or 0
        return scope.mode if scope.mode is not None and own != _MUTED else int(own)

    def _promoted(self, scope: _Scope) -> dict[str, Any]:
        """The instance's widget values, by the subgraph input each belongs to.

        Editors from 1.34 on save the instance's widgets in ``properties.proxyWidgets``
        order (when that list is not empty): ``["-1", input name]`` for a subgraph input,
        ``[inner node id, widget name]`` for a direct proxy of an inner widget, whose value
        the inner node keeps (saved as null here, or left out). Older editors give the instance one widget
        per subgraph input that feeds an inner widget, in input order.
        """
        instance = scope.instance or {}
        values = instance.get("widgets_values")
        if not isinstance(values, list):
            return {}
        proxies = (instance.get("properties") or {}).get("proxyWidgets")
        if isinstance(proxies, list) and proxies:
            # An empty list is what editors 1.27-1.28 saved beside values in input order
            # (seen in comfyui-workflow-templates 0.1.95): that is the older layout.
            return promoted_by_proxy(proxies, values)
        return dict(zip(self._widget_inputs(scope.graph), values, strict=False))

    def _widget_inputs(self, graph: Graph) -> list[Any]:
        """The subgraph inputs that feed an inner widget, in input order: once per
        definition, however many instances it has."""
        key = id(graph)
        if key not in self.widget_inputs:
            names = []
            for sub_input in (graph.definition or {}).get("inputs") or []:
                for link_id in sub_input.get("linkIds") or []:
                    link = graph.links.get(int(link_id))
                    target = graph.nodes.get(str(link.target_id)) if link else None
                    if link and target and self._is_widget_input(target, link.target_slot):
                        names.append(sub_input.get("name"))
                        break
            self.widget_inputs[key] = names
        return self.widget_inputs[key]

    def _is_widget_input(self, node: Mapping[str, Any], slot: int) -> bool:
        inputs = node.get("inputs") or []
        if not 0 <= slot < len(inputs):
            return False
        entry = inputs[slot]
        if entry.get("widget"):
            return True
        definition = self.defs.get(str(node.get("type")))
        if definition is None:
            return False
        return socket_type(_spec_of(definition, entry.get("name"))) in {
            "INT", "FLOAT", "STRING", "BOOLEAN", "COMBO",
        }  # fmt: skip

    # One node -----------------------------------------------------------------------------

    def _api_node(self, scope: _Scope, node: Mapping[str, Any]) -> dict[str, Any]:
        node_id = scope.exec_id(str(node["id"]))
        class_type = str(node.get("type"))
        definition = self.defs.get(class_type)
        inputs: dict[str, Any] = {}
        if definition is not None:
            widgets = read_widgets(
                node_id, class_type, definition, node.get("widgets_values"), self.rng
            )
            inputs.update(widgets.values)
            self.problems += widgets.problems
            self.misfits[node_id] = widgets.misfits
        elif class_type not in self.warned:
            self.warned.add(class_type)
            log.warning(
                "node type %s is not installed: its links are kept, validation names it", class_type
            )
        for slot, entry in enumerate(node.get("inputs") or []):
            if entry.get("link") is None or not entry.get("name"):
                continue
            source = self._resolve_input(scope, node, slot, None, set())
            name = entry["name"]
            if isinstance(source, _FromNode):
                inputs[name] = [source.node_id, source.slot]
            elif isinstance(source, _Value):
                value = source.value
                inputs[name] = {"__value__": value} if isinstance(value, list) else value
            elif not entry.get("widget"):
                inputs.pop(name, None)  # linked to nothing that runs: no source
        title = node.get("title") or (definition or {}).get("display_name") or class_type
        return {"inputs": inputs, "class_type": class_type, "_meta": {"title": title}}

    # Links --------------------------------------------------------------------------------

    def _resolve_input(
        self, scope: _Scope, node: Mapping[str, Any], slot: int, want: str | None, seen: set[Any]
    ) -> _Source:
        """What feeds input ``slot`` of ``node``: a runnable node's output, a value, or None."""
        key = (scope.path, str(node.get("id")), "in", slot)
        if key in seen:
            self.problems.append(
                f"node {scope.exec_id(str(node.get('id')))}: its links form a loop"
            )
            return None
        seen.add(key)
        inputs = node.get("inputs") or []
        if not 0 <= slot < len(inputs) or inputs[slot].get("link") is None:
            return None
        entry = inputs[slot]
        want = want or type_name(entry.get("type"))
        link = scope.graph.links.get(int(entry["link"]))
        if link is None:
            return None
        if link.origin_id == _SUBGRAPH_INPUT:
            return self._resolve_subgraph_input(scope, link.origin_slot, want, seen)
        origin = scope.graph.nodes.get(str(link.origin_id))
        if origin is None:
            return None
        return self._resolve_output(scope, origin, link.origin_slot, want, seen)

    def _resolve_output(
        self, scope: _Scope, node: Mapping[str, Any], slot: int, want: str, seen: set[Any]
    ) -> _Source:
        """What output ``slot`` of ``node`` gives a ``want`` input, remembered once found.

        Many inputs may read one chain of reroutes or bypassed nodes: without the memo,
        each would walk the whole chain again (9,500 readers of 400 reroutes took minutes).
        A walk that met a loop is not remembered (its answer depends on where it began).
        """
        node_id = str(node.get("id"))
        memo_key = (scope.path, node_id, slot, want)
        if memo_key in self.resolved:
            return self.resolved[memo_key]
        key = (scope.path, node_id, "out", slot)
        if key in seen:
            self.problems.append(f"node {scope.exec_id(node_id)}: its links form a loop")
            return None
        seen.add(key)
        problems = len(self.problems)
        source: _Source
        kind = node.get("type")
        sub = self.subgraphs.get(kind) if isinstance(kind, str) else None
        # One frame per hop (with _resolve_input's): chains as long as before the memo.
        if self._mode(scope, node) == _BYPASSED:
            index = bypass_slot(node, slot, want)
            source = None if index < 0 else self._resolve_input(scope, node, index, want, seen)
        elif sub is not None:
            source = self._resolve_subgraph_output(scope, node_id, sub, slot, want, seen)
        elif kind == "PrimitiveNode":
            values = node.get("widgets_values")
            source = _Value(values[0]) if isinstance(values, list) and values else None
        elif kind == "GetNode":
            setter = setter_for(scope.graph, node)
            source = None if setter is None else self._resolve_input(scope, setter, 0, want, seen)
        elif kind in FRONTEND_ONLY:
            source = self._resolve_input(scope, node, slot, want, seen)
        else:
            source = _FromNode(scope.exec_id(node_id), slot)
        if len(self.problems) == problems:
            self.resolved[memo_key] = source
        return source

    def _resolve_subgraph_input(
        self, scope: _Scope, slot: int, want: str, seen: set[Any]
    ) -> _Source:
        """An inner link from the subgraph's input ``slot``: what feeds the instance there."""
        definition = scope.graph.definition or {}
        sub_inputs = definition.get("inputs") or []
        if scope.parent is None or scope.instance is None or not 0 <= slot < len(sub_inputs):
            return None
        name = sub_inputs[slot].get("name")
        outer = scope.instance.get("inputs") or []
        if scope.input_slots is None:  # the instance's slots by name, made once per instance
            scope.input_slots = {}
            for i, entry in enumerate(outer):
                scope.input_slots.setdefault(entry.get("name"), i)
        index = scope.input_slots.get(name, -1) if isinstance(name, str) else -1
        if index >= 0 and outer[index].get("link") is not None:
            return self._resolve_input(scope.parent, scope.instance, index, want, seen)
        if name in scope.promoted:
            return _Value(scope.promoted[name])
        return None

    def _resolve_subgraph_output(
        self, scope: _Scope, node_id: str, sub: Graph, slot: int, want: str, seen: set[Any]
    ) -> _Source:
        inner_scope = self.scopes.get((*scope.path, node_id))
        outputs = (sub.definition or {}).get("outputs") or []
        if inner_scope is None or not 0 <= slot < len(outputs):
            return None
        for link_id in outputs[slot].get("linkIds") or []:
            link = sub.links.get(int(link_id))
            if link is None:
                continue
            if link.origin_id == _SUBGRAPH_INPUT:
                return self._resolve_subgraph_input(inner_scope, link.origin_slot, want, seen)
            origin = sub.nodes.get(str(link.origin_id))
            if origin is not None:
                return self._resolve_output(inner_scope, origin, link.origin_slot, want, seen)
        return None


def _spec_of(definition: Mapping[str, Any], name: Any) -> Any:
    inputs = definition.get("input") or {}
    for section in ("required", "optional"):
        spec = (inputs.get(section) or {}).get(name)
        if spec is not None:
            return spec
    return None
