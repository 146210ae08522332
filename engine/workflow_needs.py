"""What a workflow needs from a worker: each node type's pack and each model file's place.

The logic behind ``scripts/workflow_needs.py``, run before deploying: for every node
type the workflow uses, whether the engine has it and which pack provides it (ComfyUI
itself, a pack in the image, a pack on the network volume), and for a type it lacks,
where that pack can be found (the editor's own record in a UI-format workflow, a
ComfyUI-Manager node map, a pack that failed to import); for every model file a loader
names, the folder it was found in (image or volume), or every folder searched.

Plain Python over a :class:`EngineView` (what the booted engine knows), so a test can
drive it with recorded definitions; nothing here imports ComfyUI.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from engine.errors import ItemError, WorkflowConversionError
from engine.model_urls import is_absolute_path, relative_name
from engine.pack_sources import ADD_COMMAND, ADD_COMMAND_HINT
from engine.runtime import ModelFolder
from engine.ui_workflow import is_frontend_only, is_ui_format, to_api_format
from engine.urls import is_url

_CORE_MODULES = ("nodes", "comfy_extras.", "comfy_api_nodes.")
_MAX_NODES = 100_000  # a workflow is read whole; this bounds a hostile file's cost


class EngineView(Protocol):
    """What the booted engine knows, as this module needs it."""

    def node_definitions(self) -> dict[str, Any]:
        """``/object_info``: type -> definition (``python_module`` names its pack)."""
        ...

    def file_inputs(self, class_type: str) -> frozenset[str]:
        """Inputs whose values the engine lists (files, models, enums)."""
        ...

    def model_folder_of(self, class_type: str, input_name: str) -> ModelFolder | None:
        """The model folder behind a loader's file input."""
        ...


@dataclass(frozen=True)
class FailedPackView:
    """A pack that failed to import at boot, with what the boot diagnosis found."""

    folder: Path
    error: str
    remedy: str
    provides: Callable[[str], bool]
    """Whether the pack's code names a node type (pack_imports' literal search)."""


@dataclass(frozen=True)
class NodeNeed:
    """One node type the workflow uses."""

    class_type: str
    node_ids: tuple[str, ...]
    installed: bool
    provider: str
    """``ComfyUI``, ``pack <folder> (image|volume)``, or for a missing type what provides it."""
    hint: str = ""
    """For a missing type: where to get its pack and the command that bakes it in."""


@dataclass(frozen=True)
class ModelNeed:
    """One model file a loader input names."""

    node_id: str
    class_type: str
    input_name: str
    value: str
    folder: str
    found: Path | None
    place: str
    """``image``, ``volume``, ``by URL`` (fetched when the job runs) or ``missing``."""
    searched: tuple[Path, ...] = ()
    refused: str = ""
    """For a missing file: why the job would refuse the value itself (an absolute path
    outside every folder of its kind), as the job's own error says it."""


@dataclass(frozen=True)
class Needs:
    """Everything :func:`find_needs` found."""

    nodes: tuple[NodeNeed, ...]
    models: tuple[ModelNeed, ...]
    problems: tuple[str, ...] = field(default=())
    """What could not be read (a UI workflow that does not convert, so no models are known)."""

    @property
    def complete(self) -> bool:
        """True when every node type is installed and every model file was found."""
        return (
            not self.problems
            and all(n.installed for n in self.nodes)
            and all(m.place != "missing" for m in self.models)
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form, for ``--json``."""
        return {
            "complete": self.complete,
            "nodes": [
                {
                    "class_type": n.class_type,
                    "node_ids": list(n.node_ids),
                    "installed": n.installed,
                    "provider": n.provider,
                    **({"hint": n.hint} if n.hint else {}),
                }
                for n in self.nodes
            ],
            "models": [
                {
                    "node_id": m.node_id,
                    "class_type": m.class_type,
                    "input": m.input_name,
                    "value": m.value,
                    "folder": m.folder,
                    "place": m.place,
                    **({"path": str(m.found)} if m.found else {}),
                    **({"searched": [str(p) for p in m.searched]} if m.place == "missing" else {}),
                    **({"refused": m.refused} if m.refused else {}),
                }
                for m in self.models
            ],
            "problems": list(self.problems),
        }


@dataclass(frozen=True)
class PackHints:
    """Where packs of node types the engine lacks can be found."""

    node_map: Mapping[str, str] = field(default_factory=dict)
    """Node type -> repository URL (ComfyUI-Manager's ``extension-node-map.json``)."""
    failed: Sequence[FailedPackView] = ()

    @staticmethod
    def read_node_map(path: Path) -> dict[str, str]:
        """ComfyUI-Manager's ``extension-node-map.json``: ``{repo: [[types...], {meta}]}``."""
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: not a node map (expected an object of repositories)")
        found: dict[str, str] = {}
        for repo, entry in raw.items():
            types = entry[0] if isinstance(entry, list) and entry else None
            if not isinstance(repo, str) or not isinstance(types, list):
                raise ValueError(f"{path}: entry {repo!r} is not [[node types], {{...}}]")
            for class_type in types:
                if isinstance(class_type, str):
                    found.setdefault(class_type, repo)
        return found


def find_needs(
    workflow: Mapping[str, Any],
    engine: EngineView,
    *,
    pack_folders: Mapping[str, Path],
    volume_roots: Sequence[Path],
    hints: PackHints = PackHints(),
) -> Needs:
    """Every node type and model file ``workflow`` (API or UI format) needs.

    ``pack_folders`` maps a loaded pack's module name (``rgthree-comfy``) to its folder;
    a folder or model file under one of ``volume_roots`` is on the network volume.
    """
    definitions = engine.node_definitions()
    ui_records = _ui_node_records(workflow) if is_ui_format(workflow) else {}
    problems: list[str] = []
    api: Mapping[str, Any] | None
    if is_ui_format(workflow):
        try:
            api = to_api_format(workflow, definitions)
        except WorkflowConversionError as exc:
            api = None
            problems.append(
                f"the UI workflow does not convert, so its model files are unknown: {exc}"
            )
        used = {t: tuple(ids) for t, ids in _group(ui_records.items())}
    else:
        api = workflow
        used = _types_of(workflow)
    nodes = tuple(
        _node_need(t, ids, definitions, pack_folders, volume_roots, hints, ui_records)
        for t, ids in sorted(used.items())
    )
    models = tuple(_model_needs(api, engine, volume_roots)) if api is not None else ()
    return Needs(nodes=nodes, models=models, problems=tuple(problems))


def _types_of(api: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    used: dict[str, list[str]] = {}
    for node_id, node in list(api.items())[:_MAX_NODES]:
        class_type = node.get("class_type") if isinstance(node, Mapping) else None
        if isinstance(class_type, str):
            used.setdefault(class_type, []).append(str(node_id))
    return {t: tuple(ids) for t, ids in used.items()}


def _ui_node_records(ui: Mapping[str, Any]) -> dict[str, tuple[str, Mapping[str, Any]]]:
    """``"<graph>:<id>"`` -> (type, properties) of every UI node, subgraphs' included."""
    records: dict[str, tuple[str, Mapping[str, Any]]] = {}
    definitions = ui.get("definitions")
    subgraphs = definitions.get("subgraphs") if isinstance(definitions, Mapping) else None
    graphs: list[tuple[str, Any]] = [("", ui.get("nodes"))]
    subgraph_ids: set[str] = set()
    for sub in subgraphs if isinstance(subgraphs, list) else []:
        if isinstance(sub, Mapping):
            subgraph_ids.add(str(sub.get("id")))
            graphs.append((f"{sub.get('name') or sub.get('id')}/", sub.get("nodes")))
    for prefix, nodes in graphs:
        for node in (nodes if isinstance(nodes, list) else [])[:_MAX_NODES]:
            if not isinstance(node, Mapping):
                continue
            node_type = node.get("type")
            if not isinstance(node_type, str) or node_type in subgraph_ids:
                continue
            if is_frontend_only(node_type):
                continue
            properties = node.get("properties")
            records[f"{prefix}{node.get('id')}"] = (
                node_type,
                properties if isinstance(properties, Mapping) else {},
            )
    return records


def _group(
    records: Iterable[tuple[str, tuple[str, Mapping[str, Any]]]],
) -> Iterable[tuple[str, list[str]]]:
    grouped: dict[str, list[str]] = {}
    for node_id, (node_type, _) in records:
        grouped.setdefault(node_type, []).append(node_id)
    return grouped.items()


def _place(path: Path, volume_roots: Sequence[Path]) -> str:
    resolved = path.absolute()
    return "volume" if any(resolved.is_relative_to(root) for root in volume_roots) else "image"


def _node_need(
    class_type: str,
    node_ids: tuple[str, ...],
    definitions: Mapping[str, Any],
    pack_folders: Mapping[str, Path],
    volume_roots: Sequence[Path],
    hints: PackHints,
    ui_records: Mapping[str, tuple[str, Mapping[str, Any]]],
) -> NodeNeed:
    definition = definitions.get(class_type)
    if isinstance(definition, Mapping):
        module = str(definition.get("python_module") or "nodes")
        if module == "nodes" or module.startswith(_CORE_MODULES):
            return NodeNeed(class_type, node_ids, True, "ComfyUI")
        name = module.split(".", 1)[1] if module.startswith("custom_nodes.") else module
        folder = pack_folders.get(name)
        place = _place(folder, volume_roots) if folder is not None else "image"
        return NodeNeed(class_type, node_ids, True, f"pack {name} ({place})")
    return _missing_need(class_type, node_ids, hints, ui_records)


def _missing_need(
    class_type: str,
    node_ids: tuple[str, ...],
    hints: PackHints,
    ui_records: Mapping[str, tuple[str, Mapping[str, Any]]],
) -> NodeNeed:
    for pack in hints.failed:
        if pack.provides(class_type):
            return NodeNeed(
                class_type,
                node_ids,
                False,
                f"pack {pack.folder.name}, which failed to import at boot ({pack.error})",
                pack.remedy,
            )
    # The editor saves each node's pack: cnr_id (the registry's id), aux_id (a GitHub
    # "owner/repo" for packs outside the registry) and ver (a version or a commit).
    for record_type, properties in ui_records.values():
        if record_type != class_type:
            continue
        aux, cnr, ver = (properties.get(k) for k in ("aux_id", "cnr_id", "ver"))
        if isinstance(aux, str) and "/" in aux:
            url = f"https://github.com/{aux}"
            at = f"@{ver}" if isinstance(ver, str) and len(ver) == 40 else ""
            return NodeNeed(
                class_type,
                node_ids,
                False,
                f"not installed; the workflow names its pack {aux}",
                f"{ADD_COMMAND} {url}{at}",
            )
        if isinstance(cnr, str) and cnr and cnr != "comfy-core":
            version = f" {ver}" if isinstance(ver, str) and ver else ""
            return NodeNeed(
                class_type,
                node_ids,
                False,
                f"not installed; the workflow names its pack {cnr}{version} (Comfy Registry)",
                f"find the repository of {cnr} on the Comfy Registry, then {ADD_COMMAND_HINT}",
            )
    repo = hints.node_map.get(class_type)
    if repo is not None:
        return NodeNeed(
            class_type,
            node_ids,
            False,
            f"not installed; the node map names {repo}",
            f"{ADD_COMMAND} {repo}@<commit> (a commit pins it; without one, the current head)",
        )
    return NodeNeed(
        class_type,
        node_ids,
        False,
        "not installed; no pack known to provide it",
        f"find the pack that provides it (ComfyUI-Manager's node list, --node-map), then {ADD_COMMAND_HINT}",
    )


def model_needs(workflow: Mapping[str, Any], engine: EngineView) -> tuple[ModelNeed, ...]:
    """Every model file an API-format workflow's loaders name, found in the engine's
    folders or not (``place`` tells no volume apart): what a job's run will load."""
    return tuple(_model_needs(workflow, engine, ()))


def _model_needs(
    api: Mapping[str, Any], engine: EngineView, volume_roots: Sequence[Path]
) -> Iterable[ModelNeed]:
    for node_id, node in list(api.items())[:_MAX_NODES]:
        if not isinstance(node, Mapping) or not isinstance(node.get("class_type"), str):
            continue
        class_type = node["class_type"]
        inputs = node.get("inputs")
        if not isinstance(inputs, Mapping):
            continue
        for input_name in sorted(engine.file_inputs(class_type)):
            value = inputs.get(input_name)
            if not isinstance(value, str) or not value:
                continue
            folder = engine.model_folder_of(class_type, input_name)
            if folder is None:
                continue
            yield _model_need(str(node_id), class_type, input_name, value, folder, volume_roots)


def _model_need(
    node_id: str,
    class_type: str,
    input_name: str,
    value: str,
    folder: ModelFolder,
    volume_roots: Sequence[Path],
) -> ModelNeed:
    base = (node_id, class_type, input_name, value, folder.name)
    if is_url(value):
        return ModelNeed(*base, found=None, place="by URL")
    name = value
    if is_absolute_path(value):
        # What the job does with it (engine.model_urls): the name under a folder of the
        # kind, wherever that folder was on the machine the workflow was made on.
        try:
            name = relative_name(value, folder)
        except ItemError as exc:
            return ModelNeed(
                *base, found=None, place="missing", searched=folder.paths, refused=exc.reason
            )
    relative = PurePosixPath(name.replace("\\", "/"))
    if relative.is_absolute() or ".." in relative.parts:
        return ModelNeed(*base, found=None, place="missing", searched=folder.paths)
    for path in folder.paths:
        candidate = path / relative
        if candidate.is_file():
            return ModelNeed(*base, found=candidate, place=_place(candidate, volume_roots))
    return ModelNeed(*base, found=None, place="missing", searched=folder.paths)


def render(needs: Needs) -> str:
    """The plain-text report the command prints."""
    lines = ["Node types:"]
    for n in needs.nodes:
        mark = "ok " if n.installed else "MISSING"
        used = ", ".join(n.node_ids[:6]) + (" ..." if len(n.node_ids) > 6 else "")
        lines.append(f"  {mark:7} {n.class_type}  [{n.provider}]  (nodes {used})")
        if n.hint:
            lines.append(f"          -> {n.hint}")
    lines.append("Model files:")
    if not needs.models:
        lines.append("  (none named by a loader)")
    for m in needs.models:
        where = {
            "image": f"in the image: {m.found}",
            "volume": f"on the volume: {m.found}",
            "by URL": "a URL: downloaded, checked and cached when the job runs",
            "missing": f"NOT FOUND: {m.refused}"
            if m.refused
            else "NOT FOUND; searched " + ", ".join(str(p) for p in m.searched),
        }[m.place]
        lines.append(f"  node {m.node_id} {m.class_type}.{m.input_name} = {m.value}: {where}")
    lines.extend(f"Problem: {p}" for p in needs.problems)
    missing_nodes = sum(not n.installed for n in needs.nodes)
    missing_models = sum(m.place == "missing" for m in needs.models)
    lines.append(
        "Everything is here."
        if needs.complete
        else f"Missing: {missing_nodes} node type(s), {missing_models} model file(s)."
    )
    return "\n".join(lines)
