"""What the booted ComfyUI knows: node types' file inputs and definitions, model folders.

Helpers for :mod:`engine.runtime.comfy`, kept apart from running jobs. A
:class:`Catalog` is built once, at boot, from the booted :class:`Comfy` handle and
ComfyUI's V3 node base class; it imports nothing of ComfyUI itself.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from engine.runtime import ModelFolder
from engine.runtime.comfy_boot import Comfy
from engine.runtime.comfy_folders import combo_options, folder_names_backing_input

log = logging.getLogger(__name__)


class Catalog:
    """Node types and model folders of one booted ComfyUI; answers cached for its life.

    ``v3_base`` is ComfyUI's V3 node base class (``comfy_api.internal._ComfyNodeInternal``):
    V3 nodes describe themselves, as ComfyUI's server asks them to.
    """

    def __init__(self, comfy: Comfy, v3_base: type) -> None:
        self._comfy = comfy
        self._v3_base = v3_base
        self._file_inputs: dict[str, frozenset[str]] = {}
        self._model_folder_names: dict[tuple[str, str], str] = {}
        self._node_definitions: dict[str, Any] | None = None

    def file_inputs(self, class_type: str) -> frozenset[str]:
        """Inputs of ``class_type`` whose allowed values are a list of strings.

        Files and models, and plain enums (sampler names) too: callers use this to
        find values that may be paths. Unknown types have none.
        """
        cached = self._file_inputs.get(class_type)
        if cached is not None:
            return cached
        node_class = self._comfy.nodes.NODE_CLASS_MAPPINGS.get(class_type)
        if node_class is None:
            return frozenset()
        try:
            spec = node_class.INPUT_TYPES()
        except Exception:
            # Validation will report this node properly; here it only has no file inputs.
            log.warning("INPUT_TYPES() of %s failed", class_type, exc_info=True)
            return frozenset()
        names = frozenset(
            name
            for section in ("required", "optional")
            for name, config in (spec.get(section) or {}).items()
            if combo_options(config) is not None
        )
        self._file_inputs[class_type] = names
        return names

    def node_definitions(self) -> dict[str, Any]:
        """Every node type's definition, as ComfyUI's ``/object_info`` lists it.

        Built once, on first use, the way the server's ``node_info`` builds it (V3
        nodes through their own ``GET_NODE_INFO_V1``). A type whose definition raises
        is left out with a log line, as the server does; the converter then keeps it as
        an unknown type and validation names it. It reads every node type, so node
        modules loaded on demand are all imported here: 0.84 s for 774 types after an
        8 s boot with the five packs (image environment, 2 CPU cores).
        """
        if self._node_definitions is None:
            comfy = self._comfy
            definitions: dict[str, Any] = {}
            with comfy.folder_paths.cache_helper:  # one directory scan per model folder
                for name in list(comfy.nodes.NODE_CLASS_MAPPINGS):
                    try:
                        info = _object_info_entry(comfy.nodes, self._v3_base, name)
                        # JSON's shapes, as /object_info sends them (tuples become lists);
                        # a default no JSON can hold becomes its text, as it would there.
                        definitions[name] = json.loads(json.dumps(info, default=str))
                    except Exception:
                        log.warning("the definition of node type %s failed", name, exc_info=True)
            self._node_definitions = definitions
        return self._node_definitions

    def model_folder_of(self, class_type: str, input_name: str) -> ModelFolder | None:
        """The model folder behind a loader's file input (``ckpt_name``: ``checkpoints``).

        Found the way a missing file's folders are: by recording which file lists the
        node's ``INPUT_TYPES()`` asks ComfyUI for. None for an input that lists no
        model folder (LoadImage's ``image``, an enum) or several.
        """
        key = (class_type, input_name)
        name = self._model_folder_names.get(key)
        if name is None:
            comfy = self._comfy
            node_class = comfy.nodes.NODE_CLASS_MAPPINGS.get(class_type)
            if node_class is None or input_name not in self.file_inputs(class_type):
                return None
            # A file-like value, so an empty folder still counts as the input's.
            names = folder_names_backing_input(
                comfy.folder_paths, node_class, input_name, "model.safetensors"
            )
            if len(names) > 1:
                # Empty folders fit any input: VAELoader lists vae and vae_approx, and
                # with both empty only the name tells (vae_name: vae).
                names = [n for n in names if n.rstrip("s") in input_name] or names
            if len(names) != 1:
                return None
            name = self._model_folder_names[key] = names[0]
        return self._model_folder(name)

    def model_folders(self) -> list[ModelFolder]:
        """Every model folder ComfyUI registered (custom node folders aside)."""
        names = sorted(self._comfy.folder_paths.folder_names_and_paths)
        return [self._model_folder(name) for name in names if name != "custom_nodes"]

    def forget_model_files(self, folder_name: str) -> None:
        """Drop ComfyUI's cached file list of ``folder_name``.

        ComfyUI re-lists a folder when a directory's mtime changes; a file added to an
        existing sub-folder on a network volume may not change one it checks in time.
        """
        self._comfy.folder_paths.filename_list_cache.pop(folder_name, None)

    def _model_folder(self, name: str) -> ModelFolder:
        paths, extensions = self._comfy.folder_paths.folder_names_and_paths[name]
        return ModelFolder(
            name=name,
            paths=tuple(Path(p) for p in paths),
            extensions=frozenset(str(e).lower() for e in extensions),
        )


def _object_info_entry(nodes: Any, v3_base: type, name: str) -> dict[str, Any]:
    """One entry of ``/object_info``, as ComfyUI 0.3.64's ``server.node_info`` makes it."""
    node_class = nodes.NODE_CLASS_MAPPINGS[name]
    if issubclass(node_class, v3_base):
        v3_info: dict[str, Any] = node_class.GET_NODE_INFO_V1()
        return v3_info
    input_types = node_class.INPUT_TYPES()
    outputs = node_class.RETURN_TYPES
    info: dict[str, Any] = {
        "input": input_types,
        "input_order": {section: list(inputs) for section, inputs in input_types.items()},
        "output": outputs,
        "output_is_list": getattr(node_class, "OUTPUT_IS_LIST", [False] * len(outputs)),
        "output_name": getattr(node_class, "RETURN_NAMES", outputs),
        "name": name,
        "display_name": nodes.NODE_DISPLAY_NAME_MAPPINGS.get(name, name),
        "description": getattr(node_class, "DESCRIPTION", ""),
        "python_module": getattr(node_class, "RELATIVE_PYTHON_MODULE", "nodes"),
        "category": getattr(node_class, "CATEGORY", "sd"),
        "output_node": getattr(node_class, "OUTPUT_NODE", False) is True,
    }
    if getattr(node_class, "DEPRECATED", False):
        info["deprecated"] = True
    if getattr(node_class, "EXPERIMENTAL", False):
        info["experimental"] = True
    if hasattr(node_class, "API_NODE"):
        info["api_node"] = node_class.API_NODE
    return info
