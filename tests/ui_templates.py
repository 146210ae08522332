"""ComfyUI's official workflow templates as a corpus for the UI-format converter.

The templates come from the ``comfyui-workflow-templates`` package at ComfyUI 0.3.64's
pin (0.1.95, in the dev extra); they are UI-format files saved by the editor. Shared by
``tests/unit/test_ui_workflow.py`` (against the recorded node definitions),
``tests/engine/test_ui_templates.py`` and ``scripts/convert_templates.py`` (against the
real engine).
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import WorkflowConversionError
from engine.ui_widgets import input_specs, socket_type, widget_specs
from engine.ui_workflow import NodeDefinitions, is_frontend_only, to_api_format

TEMPLATES_VERSION = "0.1.95"
RECORDED_DEFS = Path(__file__).parent / "fixtures" / "node_defs" / "object_info.json.gz"

_FILE_SUFFIXES = (
    ".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".onnx", ".json",
    ".png", ".jpg", ".jpeg", ".webp", ".gif", ".mp4", ".webm", ".mov", ".mp3", ".wav",
    ".flac", ".ogg", ".m4a", ".glb", ".obj", ".fbx", ".yaml",
)  # fmt: skip


def recorded_definitions() -> dict[str, Any]:
    """The node definitions recorded from the pinned engine and the five packs."""
    with gzip.open(RECORDED_DEFS, "rt", encoding="utf-8") as f:
        record: dict[str, Any] = json.load(f)
    return record


def templates_dir() -> Path | None:
    """The installed templates folder, or None when the package is absent."""
    try:
        import comfyui_workflow_templates
    except ImportError:
        return None
    path = comfyui_workflow_templates.get_templates_path()
    return Path(path) if path else None


def templates(folder: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, workflow) of each template, by name; the index files are not templates."""
    for path in sorted(folder.glob("*.json")):
        if not path.name.startswith("index"):
            yield path.stem, json.loads(path.read_text(encoding="utf-8"))


def node_types(workflow: Mapping[str, Any]) -> set[str]:
    """Every node type a template runs: its own and its subgraphs', less frontend-only ones."""
    subgraphs = (workflow.get("definitions") or {}).get("subgraphs") or []
    ids = {s["id"] for s in subgraphs}
    types = set()
    for graph in [workflow, *subgraphs]:
        for node in graph.get("nodes") or []:
            kind = node.get("type")
            if kind not in ids and not is_frontend_only(kind):
                types.add(kind)
    return types


def is_eligible(workflow: Mapping[str, Any], defs: NodeDefinitions) -> bool:
    """Whether every node type the template runs is installed (the issue's corpus)."""
    return node_types(workflow) <= set(defs)


def looks_like_file(value: Any) -> bool:
    """A value naming a model or input file: its absence is not the converter's fault."""
    return isinstance(value, str) and value.lower().split(" [")[0].endswith(_FILE_SUFFIXES)


def structural_problems(api: Mapping[str, Any], defs: NodeDefinitions) -> list[str]:
    """What ComfyUI's validation would refuse in ``api``, checked against ``defs`` alone.

    Every required input present; each link from an existing node's existing output
    whose type matches the input's (or either is ``*``); combo values among the
    choices, except file names; numbers within min and max.
    """
    problems = []
    outputs = [i for i, n in api.items() if (defs.get(n["class_type"]) or {}).get("output_node")]
    if not outputs:
        return ["no output node"]
    for node_id, node in _needed(api, outputs).items():
        kind = node["class_type"]
        definition = defs.get(kind)
        if definition is None:
            problems.append(f"{node_id}: unknown type {kind}")
            continue
        inputs = node["inputs"]
        widgets = {w.name: w for w in widget_specs(definition)}
        for name, spec, required in input_specs(definition):
            if name not in inputs:
                if required:
                    problems.append(f"{node_id} ({kind}).{name}: required input missing")
                continue
            value = inputs[name]
            if isinstance(value, list):
                problems += _link_problem(api, defs, f"{node_id} ({kind}).{name}", value, spec)
                continue
            widget = widgets.get(name)
            if widget is None:
                continue
            if widget.kind == "COMBO" and widget.choices and not looks_like_file(value):
                raw = value.get("__value__") if isinstance(value, dict) else value
                picked = raw if isinstance(raw, list) else [raw]
                if any(v not in widget.choices for v in picked):
                    problems.append(f"{node_id} ({kind}).{name}: {value!r} not in choices")
            if widget.kind in {"INT", "FLOAT"} and isinstance(value, (int, float)):
                low, high = widget.options.get("min"), widget.options.get("max")
                if (low is not None and value < low) or (high is not None and value > high):
                    problems.append(f"{node_id} ({kind}).{name}: {value} outside [{low}, {high}]")
    return problems


def _needed(api: Mapping[str, Any], outputs: list[str]) -> dict[str, Any]:
    """The nodes ComfyUI validates: the output nodes and everything they are linked from."""
    needed: dict[str, Any] = {}
    stack = list(outputs)
    while stack:
        node_id = stack.pop()
        if node_id in needed or node_id not in api:
            continue
        needed[node_id] = api[node_id]
        stack += [v[0] for v in api[node_id]["inputs"].values() if isinstance(v, list) and v]
    return needed


def _link_problem(
    api: Mapping[str, Any], defs: NodeDefinitions, where: str, link: list[Any], spec: Any
) -> list[str]:
    origin = api.get(link[0])
    if origin is None:
        return [f"{where}: linked to absent node {link[0]}"]
    outputs = (defs.get(origin["class_type"]) or {}).get("output") or []
    if not 0 <= link[1] < len(outputs):
        return [f"{where}: linked to absent output {link[1]} of {link[0]}"]
    out_type, in_type = outputs[link[1]], socket_type(spec)
    out_types = out_type if isinstance(out_type, list) else str(out_type).split(",")
    if isinstance(out_type, list):
        out_types = ["COMBO"]
    if (
        "*" in (in_type, *out_types)
        or in_type in out_types
        or set(out_types) & set(in_type.split(","))
    ):
        return []
    return [f"{where}: {out_type} output linked to a {in_type} input"]


def refusals(node_errors: Mapping[str, Any], error: Any = None) -> list[str]:
    """ComfyUI's validation errors that are not about absent model or input files.

    Absent files are allowed (the issue's measure): a ``value_not_in_list`` whose value
    names a file or whose input lists files (an empty list: no model of that kind is
    installed), and a loader's "Invalid image/audio/video file" check. Everything else
    counts against the template; an error without node errors counts too.
    """
    kept = []
    for node_id, entry in node_errors.items():
        for problem in entry.get("errors", []):
            extra = problem.get("extra_info") or {}
            received = extra.get("received_value")
            config = extra.get("input_config")
            options = config[0] if isinstance(config, list) and config else None
            if problem.get("type") == "value_not_in_list" and (
                looks_like_file(received) or options == []
            ):
                continue
            details = str(problem.get("details", ""))
            if problem.get("type") == "custom_validation_failed" and " file: " in details:
                continue
            kept.append(f"{node_id} ({entry.get('class_type')}): {problem.get('type')}: {details}")
    if not node_errors and error:
        kept.append(f"{error.get('type')}: {error.get('message')} {error.get('details', '')}")
    return kept


@dataclass(frozen=True)
class TemplateFailure:
    """A template that did not pass: at which stage, and ComfyUI's or the converter's reasons."""

    name: str
    stage: str  # "conversion" or "validation"
    reasons: list[str]


def check_templates(folder: Path, defs: NodeDefinitions) -> tuple[int, int, list[TemplateFailure]]:
    """Convert every eligible template and run ComfyUI's own ``execution.validate_prompt``
    on it; (templates, eligible templates, failures). Needs a booted ComfyUI runtime."""
    import execution  # ComfyUI's, importable once a runtime booted

    total = eligible = 0
    failures: list[TemplateFailure] = []
    for name, workflow in templates(folder):
        total += 1
        if not is_eligible(workflow, defs):
            continue
        eligible += 1
        try:
            api = to_api_format(workflow, defs)
        except WorkflowConversionError as exc:
            failures.append(TemplateFailure(name, "conversion", list(exc.details)))
            continue
        ok, error, _outputs, node_errors = asyncio.run(
            execution.validate_prompt(name, json.loads(json.dumps(api)), None)
        )
        kept = refusals(node_errors or {}, None if ok else error)
        if kept:
            failures.append(TemplateFailure(name, "validation", kept))
    return total, eligible, failures
