"""Rewrites of the user's workflow before it reaches ComfyUI.

Two, both pure and both returning a new graph (the request stays as sent):

* :func:`normalize_paths` turns Windows separators into POSIX ones in values that
  name files or models (``SDXL\\model.safetensors`` -> ``SDXL/model.safetensors``),
  so a workflow exported on Windows runs on the Linux worker. Prompt text is
  never touched: ``\\(masterpiece\\)`` is emphasis syntax, not a path.
* :func:`scope_outputs` puts every ``filename_prefix`` under a per-job folder.
  That keeps one job's files apart from the next, keeps ComfyUI's ``_00001_``
  counter from listing an ever-growing folder on each save, and, because the
  prefix differs per job, makes ComfyUI's execution cache re-run output nodes
  on a repeated workflow instead of reporting files that were already deleted.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from engine.runtime import Workflow

# Inputs that hold a file name whatever node they are on.
_FILE_INPUT_NAMES = frozenset({"image", "video", "audio", "mask", "filename_prefix"})

_FILE_EXTENSIONS = (
    # models
    ".safetensors", ".sft", ".ckpt", ".pt", ".pt2", ".pth", ".bin", ".onnx", ".gguf",
    ".engine", ".yaml",
    # media
    ".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".exr",
    ".mp4", ".webm", ".mov", ".avi", ".mkv", ".wav", ".mp3", ".flac", ".ogg", ".m4a",
)  # fmt: skip

_BACKSLASHES = re.compile(r"\\+")


def _looks_like_file(value: str) -> bool:
    # Prompts are multi-line or long sentences; file names are neither. The
    # extension test is what lets a path through on a node the runtime does not list.
    return "\n" not in value and value.lower().endswith(_FILE_EXTENSIONS)


def _to_posix(value: str) -> str:
    # A JSON export written by hand sometimes doubles the separator ("a\\\\b").
    return _BACKSLASHES.sub("/", value)


def _with_inputs(workflow: Workflow, node_id: str, changes: dict[str, Any]) -> None:
    """Replace one node of ``workflow`` (a shallow copy) by a copy with ``changes`` applied.

    Only the nodes that change are copied: the runtime deep-copies the whole graph
    once anyway, because ComfyUI's validation casts values in place.
    """
    node = workflow[node_id]
    workflow[node_id] = {**node, "inputs": {**node["inputs"], **changes}}


def normalize_paths(workflow: Workflow, file_inputs: Callable[[str], frozenset[str]]) -> Workflow:
    """Return a copy of ``workflow`` with Windows paths in file-name values made POSIX.

    ``file_inputs(class_type)`` names the inputs whose allowed values the engine
    lists (checkpoint, LoRA, VAE and image pickers); those, the common file inputs
    and any value ending in a model or media extension are converted.
    """
    result = dict(workflow)
    for node_id, node in workflow.items():
        inputs = node.get("inputs")
        if not isinstance(inputs, dict):
            continue
        listed = file_inputs(str(node.get("class_type", "")))
        changes = {
            name: _to_posix(value)
            for name, value in inputs.items()
            if isinstance(value, str)
            and "\\" in value
            and (name in listed or name in _FILE_INPUT_NAMES or _looks_like_file(value))
        }
        if changes:
            _with_inputs(result, node_id, changes)
    return result


def scope_outputs(workflow: Workflow, folder: str) -> Workflow:
    """Return a copy of ``workflow`` whose ``filename_prefix`` values live under ``folder``.

    A prefix wired from another node (a link, not a string) is left alone: its
    value is only known while the graph runs.
    """
    result = dict(workflow)
    for node_id, node in workflow.items():
        inputs = node.get("inputs")
        if isinstance(inputs, dict) and isinstance(inputs.get("filename_prefix"), str):
            prefix = inputs["filename_prefix"].lstrip("/") or "ComfyUI"
            _with_inputs(result, node_id, {"filename_prefix": f"{folder}/{prefix}"})
    return result


# An input ComfyUI's nodes never declare: it changes only the cache key of the node it is
# on. See rerun_previews.
RUN_MARKER_INPUT = "worker_run"


def rerun_previews(workflow: Workflow, folder: str) -> Workflow:
    """Give each leaf node without a ``filename_prefix`` an input naming this run.

    Previews (PreviewImage, PreviewAudio) write to ComfyUI's temp folder under a name
    the worker cannot scope, and ComfyUI's cache would answer a repeated workflow with
    the earlier job's preview files, already deleted. The extra input is passed to no
    node (ComfyUI hands a node only the inputs it declares) but is part of the cache
    key, so those nodes run again while everything upstream still comes from the cache.
    Nodes with a string prefix already differ per run (``scope_outputs``).
    """
    linked = {
        str(value[0])
        for node in workflow.values()
        for value in (node.get("inputs") or {}).values()
        if isinstance(value, list) and len(value) == 2
    }
    result = dict(workflow)
    for node_id, node in workflow.items():
        inputs = node.get("inputs")
        if node_id in linked or not isinstance(inputs, dict):
            continue
        if isinstance(inputs.get("filename_prefix"), str):
            continue
        result[node_id] = {**node, "inputs": {**inputs, RUN_MARKER_INPUT: folder}}
    return result
