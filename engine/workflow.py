"""Rewrites of the user's workflow before it reaches ComfyUI.

Each pure and returning a new graph (the request stays as sent):

* :func:`normalize_paths` turns Windows separators into POSIX ones in values that
  name files or models (``SDXL\\model.safetensors`` -> ``SDXL/model.safetensors``),
  so a workflow exported on Windows runs on the Linux worker. Prompt text is
  never touched: ``\\(masterpiece\\)`` is emphasis syntax, not a path.
* :func:`scope_inputs` points every reference to a file the request sent at the
  job's own input folder (``a.png`` -> ``<job folder>/a.png``), where the worker stored
  it: a job reads only what it sent, plus the files baked into the image's input folder
  under their plain names, never a file another job sent (or left behind when killed).
* :func:`for_metadata` is the workflow output files embed: as sent, with the user
  info and query of any URL in it cut (a model URL's ``?token=``).
* :func:`scope_outputs` puts every ``filename_prefix`` under a per-job folder.
  That keeps one job's files apart from the next, keeps ComfyUI's ``_00001_``
  counter from listing an ever-growing folder on each save, and, because the
  prefix differs per job, makes ComfyUI's execution cache re-run output nodes
  on a repeated workflow instead of reporting files that were already deleted.
  A prefix that climbs out of that folder (``../leak``) and a file name that reads
  ComfyUI's output or temp folder (``x.png [output]``) are refused before anything
  runs; values made while the graph runs are held to the same rule by the runtime
  (``engine.runtime.job_scope``).
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from engine.errors import WorkflowValidationError
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


# Inputs that name a file of ComfyUI's input folder on the loaders people use:
# LoadImage/LoadImageMask ``image``, VHS_LoadVideo ``video``, LoadAudio ``audio``,
# LoadVideo ``file``. Custom loaders are found through the runtime's ``file_inputs``.
MEDIA_INPUT_NAMES = frozenset({"image", "video", "audio", "file"})
# ComfyUI's annotated names ("a.png [input]") say which folder; only input is the job's.
_INPUT_ANNOTATION = " [input]"


def _sent_file(value: str, sent: frozenset[str]) -> tuple[str, str] | None:
    """``(name, annotation)`` when ``value`` names one of the ``sent`` files, else None."""
    name, annotation = value, ""
    if value.endswith(_INPUT_ANNOTATION):
        name, annotation = value[: -len(_INPUT_ANNOTATION)], _INPUT_ANNOTATION
    return (name, annotation) if name in sent else None


def _names_a_file(name: str, value: str, listed: frozenset[str]) -> bool:
    # A listed input may also be a plain enum (a sampler named "euler"): there only a
    # value with a file extension counts.
    listed_file = name in listed and PurePosixPath(value).suffix != ""
    return name != "filename_prefix" and (
        listed_file or name in MEDIA_INPUT_NAMES or _looks_like_file(value)
    )


def scope_inputs(
    workflow: Workflow,
    sent: frozenset[str],
    folder: str,
    file_inputs: Callable[[str], frozenset[str]],
) -> Workflow:
    """Return a copy of ``workflow`` whose references to ``sent`` files live under ``folder``.

    ``sent`` holds the request's file names as stored (POSIX separators); run it after
    :func:`normalize_paths`. A value is a reference when it equals a sent name (optionally
    annotated `` [input]``) on an input that names files: a common media input
    (:data:`MEDIA_INPUT_NAMES`), one the runtime lists for the node type when the value has
    an extension (listed inputs include enums such as sampler names), or any input whose
    value ends in a media or model extension. Prompt text equal to a file name is left
    alone unless it also ends in such an extension.
    """
    if not sent:
        return workflow
    result = dict(workflow)
    for node_id, node in workflow.items():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        if not isinstance(inputs, dict):
            continue
        listed = file_inputs(str(node.get("class_type", "")))
        changes = {}
        for name, value in inputs.items():
            if not isinstance(value, str) or not _names_a_file(name, value, listed):
                continue
            found = _sent_file(value, sent)
            if found is not None:
                changes[name] = f"{folder}/{found[0]}{found[1]}"
        if changes:
            _with_inputs(result, node_id, changes)
    return result


def unsent_files(
    workflow: Workflow,
    folder: str | None,
    input_dir: Path,
    file_inputs: Callable[[str], frozenset[str]],
) -> dict[tuple[str, str], str]:
    """``(node id, input) -> value`` for each media input naming a file that is neither
    the job's own (under ``folder``) nor in ``input_dir``: what explains a loader's
    "Invalid image file" in words a user can act on."""
    missing: dict[tuple[str, str], str] = {}
    for node_id, node in workflow.items():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        if not isinstance(inputs, dict):
            continue
        listed = file_inputs(str(node.get("class_type", "")))
        for name, value in inputs.items():
            if name not in MEDIA_INPUT_NAMES or not isinstance(value, str) or not value:
                continue
            if name not in listed and not _looks_like_file(value):
                continue
            plain = value.removesuffix(_INPUT_ANNOTATION)
            if (folder and plain.startswith(f"{folder}/")) or plain.endswith(
                (" [output]", " [temp]")
            ):
                continue
            # An absolute path or a '..' that leaves the input folder counts as absent:
            # the runtime refuses it (output_scope) wherever it points.
            inside = os.path.normpath(input_dir / plain).startswith(f"{input_dir}{os.sep}")
            try:
                present = inside and (input_dir / plain).is_file()
            except (OSError, ValueError):  # a name the file system cannot hold
                present = False
            if not present:
                missing[(str(node_id), str(name))] = value
    return missing


def explain_unsent_files(
    error: WorkflowValidationError,
    workflow: Workflow,
    folder: str | None,
    input_dir: Path,
    file_inputs: Callable[[str], frozenset[str]],
) -> None:
    """Say "not found" in ``error`` where a loader names a file the job did not send.

    ComfyUI's own words are "Invalid image file: a.png"; the user needs to know that the
    file is not there, and why a file an earlier job sent is not there either. Each such
    line of ComfyUI's is replaced by one that says so.
    """
    for (node_id, input_name), value in sorted(
        unsent_files(workflow, folder, input_dir, file_inputs).items()
    ):
        node = workflow.get(node_id) or {}
        where = f"Node {node_id} ({node.get('class_type', '?')}) input '{input_name}'"
        error.details[:] = [d for d in error.details if not d.startswith(where + ":")]
        error.details.append(
            f"{where}: file {value!r} not found: it is not in this job's input.images "
            "and not in the worker's input folder (a job sees only the files it sends, "
            "plus those baked into the image's ComfyUI/input folder)"
        )


# ComfyUI's annotations that read its output and temp folders: where jobs write.
_OUTPUT_ANNOTATIONS = (" [output]", " [temp]")


def scope_outputs(workflow: Workflow, folder: str) -> Workflow:
    """Return a copy of ``workflow`` whose ``filename_prefix`` values live under ``folder``.

    A leading ``/`` is read from the top of the job's folder (``/renders/x`` ->
    ``<folder>/renders/x``). A prefix whose ``..`` climbs above it is refused, not
    moved: the file could not land where it was asked to, and ComfyUI itself refuses
    a prefix that leaves its output folder. A file input naming a file of ComfyUI's
    output or temp folder (``leak_00001_.png [output]``) is refused as well: those hold
    other jobs' files, and a job's own are written after its inputs are read. Every
    such problem is one line of the ``WorkflowValidationError``.

    A prefix wired from another node (a link, not a string) is left alone here: its
    value is only known while the graph runs, where the runtime confines it.
    """
    result = dict(workflow)
    problems: list[str] = []
    for node_id, node in workflow.items():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        if not isinstance(inputs, dict):
            continue
        where = f"Node {node_id} ({node.get('class_type', '?')}) input"
        for name, value in inputs.items():
            if isinstance(value, str) and _reads_outputs(name, value):
                problems.append(
                    f"{where} '{name}': {value!r} names a file of the worker's "
                    f"{value.rsplit('[', 1)[1].rstrip(']')} folder, which holds other jobs' "
                    "files: a job reads only the files it sends (send it in input.images) "
                    "and those baked into the image"
                )
        prefix = inputs.get("filename_prefix")
        if not isinstance(prefix, str):
            continue
        if posixpath.normpath(prefix.lstrip("/") or ".").split("/")[0] == "..":
            problems.append(
                f"{where} 'filename_prefix': {prefix!r} climbs out of the job's output "
                "folder ('..'); name a file or a folder inside it, such as 'renders/x'"
            )
            continue
        scoped = prefix.lstrip("/") or "ComfyUI"
        _with_inputs(result, node_id, {"filename_prefix": f"{folder}/{scoped}"})
    if problems:
        raise WorkflowValidationError(problems)
    return result


def _reads_outputs(name: str, value: str) -> bool:
    """Whether ``value`` of input ``name`` names a file of ComfyUI's output or temp folder."""
    if not value.endswith(_OUTPUT_ANNOTATIONS) or "\n" in value:
        return False
    plain = value.rsplit(" [", 1)[0]
    return name in MEDIA_INPUT_NAMES or _looks_like_file(plain)


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


def for_metadata(value: Any) -> Any:
    """``value`` (a workflow, API or UI format) for output files' metadata: as the user sent
    it, with every ``http(s)://`` URL's user info and query cut (``?token=...`` would
    otherwise travel in every PNG); the fragment (``#sha256=``) stays. A new object only
    where something was cut; the rest is shared, never changed."""
    if isinstance(value, str):
        return _without_credentials(value)
    if isinstance(value, dict):
        items = {key: for_metadata(item) for key, item in value.items()}
        changed = any(items[key] is not item for key, item in value.items())
        return items if changed else value
    if isinstance(value, list):
        listed = [for_metadata(item) for item in value]
        return listed if any(a is not b for a, b in zip(listed, value, strict=True)) else value
    return value


def _without_credentials(value: str) -> str:
    if not value[:8].lower().startswith(("http://", "https://")) or not (
        "?" in value or "@" in value
    ):
        return value
    try:
        parts = urlsplit(value)
    except ValueError:
        return value.split("?", 1)[0]
    if not parts.query and "@" not in parts.netloc:
        return value
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, "", parts.fragment))
