"""ComfyUI's folders, seen from the runtime: model folders and the inputs they back.

Helpers for :mod:`engine.runtime.comfy`. They take ComfyUI's ``folder_paths``
module and node classes as arguments and import nothing of ComfyUI themselves.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from engine.runtime.pack_imports import skip_reason

# Held while folder_names_backing_input swaps folder_paths.get_filename_list.
_recording = threading.Lock()

log = logging.getLogger(__name__)


def combo_options(config: Any) -> list[str] | None:
    """The allowed values of one input spec from ``INPUT_TYPES()``, if it is a combo.

    ComfyUI writes a combo two ways: V1 nodes put the list first
    (``(["a.safetensors"], {...})``), V3 nodes write ``("COMBO", {"options": [...]})``.
    Only lists of strings count: those are the values that may name files.
    """
    if not isinstance(config, (list, tuple)) or not config:
        return None
    first = config[0]
    if isinstance(first, (list, tuple)):
        options: Any = first
    elif first == "COMBO" and len(config) > 1 and isinstance(config[1], Mapping):
        options = config[1].get("options")
    else:
        return None
    if isinstance(options, (list, tuple)) and all(isinstance(o, str) for o in options):
        return list(options)
    return None


def folders_backing_input(
    folder_paths: Any, node_class: Any, input_name: str, received: object
) -> list[str]:
    """The folders ComfyUI searched for the files ``input_name`` of ``node_class`` lists.

    Each folder of :func:`folder_names_backing_input` is marked when it does not exist.
    """
    names = folder_names_backing_input(folder_paths, node_class, input_name, received)
    return [marked(path) for name in names for path in folder_paths.get_folder_paths(name)]


def marked(path: str) -> str:
    """``path``, with ``(missing)`` when it is not a folder. A network volume filled one
    level too high (``/runpod-volume/checkpoints`` beside a missing
    ``/runpod-volume/models/checkpoints``, worker-comfyui's most common volume mistake)
    is named, with where to move it."""
    folder = Path(path)
    if folder.is_dir():
        return path
    beside = folder.parent.parent / folder.name
    if folder.parent.name == "models" and beside.is_dir():
        return f"{path} (missing; {beside} exists: move it to {path})"
    return f"{path} (missing)"


def folder_names_backing_input(
    folder_paths: Any, node_class: Any, input_name: str, received: object
) -> list[str]:
    """The model folder names (``checkpoints``...) whose files ``input_name`` lists.

    Nodes build their file lists in ``INPUT_TYPES()`` with
    ``folder_paths.get_filename_list(<folder name>)``; calling it once more while
    recording those calls says which folder backs the input, whatever the node's
    input is called (``ckpt_name``, ``lora_name``, ``unet_name``...). A listing
    counts when all its files are among the input's allowed values (VAELoader adds
    its own names to the folder's).
    """
    calls: list[tuple[str, list[str]]] = []
    me = threading.get_ident()
    # One recording at a time (a lane resolving model URLs, the engine explaining a
    # missing file): two swaps that overlap would put a stale wrapper back for good.
    with _recording:
        original = folder_paths.get_filename_list

        def recording(folder_name: str) -> list[str]:
            listed = original(folder_name)
            # Only this thread's INPUT_TYPES(): another job's run lists folders meanwhile.
            if threading.get_ident() == me:
                calls.append((folder_name, list(listed)))
            return listed  # type: ignore[no-any-return]

        folder_paths.get_filename_list = recording
        try:
            spec = node_class.INPUT_TYPES()
        except Exception:
            log.debug(
                "INPUT_TYPES() of %s failed while finding its folders", node_class, exc_info=True
            )
            return []
        finally:
            folder_paths.get_filename_list = original

    options: list[str] | None = None
    for section in ("required", "optional"):
        config = (spec.get(section) or {}).get(input_name)
        if config is not None:
            options = combo_options(config)
    if options is None:
        return []
    allowed = set(options)
    # An empty listing fits any input; count it only where the input lists nothing
    # else or the value looks like a file, so an enum (sampler_name) is not taken
    # for an empty model folder.
    looks_like_file = bool(PurePosixPath(str(received)).suffix) or "/" in str(received)
    fitting = [
        (folder, listed)
        for folder, listed in calls
        if set(listed) <= allowed and (listed or not options or looks_like_file)
    ]
    names = _unique(folder for folder, _ in fitting)
    if len(names) > 1:
        non_empty = _unique(folder for folder, listed in fitting if listed)
        if len(non_empty) == 1:
            names = non_empty
    return names


def log_model_folders(folder_paths: Any) -> None:
    """One line per kind of model: how many files ComfyUI sees, and where.

    Listing also fills ComfyUI's file-list cache, so the first job does not pay
    for walking a network volume.
    """
    empty: list[str] = []
    for name in sorted(folder_paths.folder_names_and_paths):
        if name == "custom_nodes":
            continue
        paths = folder_paths.get_folder_paths(name)
        existing = [p for p in paths if Path(p).is_dir()]
        count = len(folder_paths.get_filename_list(name)) if existing else 0
        if count:
            log.info("models: %s: %d files in %s", name, count, ", ".join(existing))
        else:
            empty.append(name)
        log.debug("models: %s searched in %s", name, ", ".join(paths))
    if empty:
        log.info("models: no files for %s", ", ".join(empty))


def run_prestartup_scripts(custom_node_dirs: Sequence[str]) -> None:
    """Run each custom node pack's ``prestartup_script.py``, as ComfyUI's main.py does.

    They run before torch is imported (some set environment variables torch
    reads). A failing script is logged and skipped, as ComfyUI does. The packs the
    boot will not load (:func:`engine.runtime.pack_imports.skip_reason`: ComfyUI-Manager,
    a second folder of a name already seen) run none.
    """
    seen: dict[str, Path] = {}
    for base in map(Path, custom_node_dirs):
        if not base.is_dir():
            continue
        for package in sorted(base.iterdir()):
            entry = package.name
            script = package / "prestartup_script.py"
            if entry.endswith(".disabled") or not package.is_dir():
                continue
            if skip_reason(package, seen) is not None or not script.is_file():
                continue
            started = time.perf_counter()
            try:
                spec = importlib.util.spec_from_file_location(f"{entry}.prestartup", script)
                if spec is None or spec.loader is None:
                    raise ImportError(f"cannot load {script}")
                spec.loader.exec_module(importlib.util.module_from_spec(spec))
            except Exception:
                log.exception("start-up script of custom node %s failed; skipped", entry)
                continue
            log.info("ran %s in %.2f s", script, time.perf_counter() - started)


def _unique(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(names))
