"""Read ComfyUI's own result shapes: failures as typed errors, a run's ui outputs.

Pure functions over plain dicts, so the real runtime and the test runtime share
them and CI checks them against shapes recorded from the real engine
(``tests/fixtures/comfyui/``). ComfyUI reports failures as data, not exceptions:
``execution.validate_prompt`` returns ``(ok, error, outputs, node_errors)`` and the
executor leaves ``(event, data)`` pairs in ``status_messages``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from engine.errors import JobInterruptedError, NodeExecutionError, WorkflowValidationError
from engine.pack_sources import not_installed

# Allowed values are listed in a detail line only when the list is short enough to
# read; a checkpoint folder with 300 files is summarised by where the worker looked.
_MAX_LISTED_CHOICES = 12


def _choices(error: Mapping[str, Any]) -> list[str] | None:
    config = (error.get("extra_info") or {}).get("input_config")
    if isinstance(config, (list, tuple)) and config:
        first = config[0]
        if isinstance(first, (list, tuple)):
            return [str(c) for c in first]
        if first == "COMBO" and len(config) > 1 and isinstance(config[1], Mapping):
            options = config[1].get("options")
            if isinstance(options, (list, tuple)):
                return [str(c) for c in options]
    return None


def _describe_input_error(
    node_id: str,
    class_type: str,
    error: Mapping[str, Any],
    looked_in: Sequence[str] | None,
) -> str:
    extra = error.get("extra_info") or {}
    input_name = str(extra.get("input_name") or "")
    where = f"Node {node_id} ({class_type})"
    if input_name:
        where += f" input '{input_name}'"
    kind = error.get("type", "")
    received = extra.get("received_value")
    if kind == "value_not_in_list":
        return f"{where}: " + _not_in_list(received, _choices(error), looked_in)
    if kind == "invalid_input_type":
        # details: "<input>, <value>, <exception>"; say it as a sentence instead.
        config = extra.get("input_config")
        expected = config[0] if isinstance(config, (list, tuple)) and config else "the input's type"
        reason = str(extra.get("exception_message") or "").strip()
        return f"{where}: {received!r} is not a valid {expected}" + (
            f" ({reason})" if reason else ""
        )
    if kind == "return_type_mismatch":
        config = extra.get("input_config")
        expected = config[0] if isinstance(config, (list, tuple)) and config else "?"
        linked = extra.get("linked_node")
        source = f" of node {linked[0]}" if isinstance(linked, (list, tuple)) and linked else ""
        return (
            f"{where}: it takes {expected} but is linked to an output{source} "
            f"of type {extra.get('received_type', '?')}"
        )
    if kind == "exception_during_inner_validation":
        # ComfyUI files this under the linked node that raised, with the input name of
        # the node that linked to it: the name would point at the wrong input.
        return f"Node {node_id} ({class_type}): " + _raised(extra, error)
    if kind == "exception_during_validation":
        return f"{where}: " + _raised(extra, error)
    message = str(error.get("message") or kind or "invalid")
    return f"{where}: {message}" + _own_details(error, input_name)


def _raised(extra: Mapping[str, Any], error: Mapping[str, Any]) -> str:
    """``validating it raised <type>: <message>``, for ComfyUI's validation exceptions."""
    exception_type = str(extra.get("exception_type") or "an exception")
    message = str(extra.get("exception_message") or error.get("details") or "").strip()
    return (
        f"validating it raised {exception_type}"
        + (f": {message}" if message else "")
        + " (a bug in the node or its pack, or an input it does not expect)"
    )


def _not_in_list(
    received: object, choices: list[str] | None, looked_in: Sequence[str] | None
) -> str:
    line = f"{received!r} is not one of the allowed values"
    if looked_in:
        line += f" (file not found; looked in: {', '.join(looked_in)})"
    if choices is not None:
        if not choices:
            line += "; no files are available for this input"
        elif len(choices) <= _MAX_LISTED_CHOICES:
            line += f"; allowed: {', '.join(choices)}"
        else:
            line += f"; {len(choices)} values are allowed"
    return line


def _own_details(error: Mapping[str, Any], input_name: str) -> str:
    """ComfyUI's ``details`` without the input name it repeats at its start."""
    details = str(error.get("details") or "").strip()
    if input_name:
        if details == input_name:
            return ""
        for separator in (" - ", ", ", ": "):
            if details.startswith(input_name + separator):
                details = details[len(input_name) + len(separator) :].strip()
                break
    return f": {details}" if details else ""


def validation_error(
    error: Mapping[str, Any] | None,
    node_errors: Mapping[str, Any] | None,
    *,
    unknown_types: Mapping[str, Sequence[str]] | None = None,
    looked_in: Mapping[tuple[str, str], Sequence[str]] | None = None,
    missing_class_type: Sequence[str] | None = None,
    graph_problems: Sequence[str] = (),
    describe_unknown: Callable[[str, Sequence[str]], str] | None = None,
) -> WorkflowValidationError:
    """One detail line per problem ComfyUI's validation found.

    ``unknown_types`` maps each class_type the engine does not know to the node ids
    using it (ComfyUI stops at the first; the runtime finds them all first).
    ``looked_in`` maps (node id, input) to the folders searched for a missing file.
    ``missing_class_type`` lists node ids whose node has no ``class_type`` at all.
    ``graph_problems`` are lines from :mod:`engine.graph_checks` (bad links, cycles);
    ``describe_unknown(class_type, node_ids)`` writes an unknown type's line (the
    runtime's names a node pack that failed to import).
    """
    details: list[str] = []
    for node_id in missing_class_type or ():
        details.append(
            f"Node {node_id} has no class_type: every node needs one (export the workflow "
            "with Workflow -> Export (API))"
        )
    for class_type, node_ids in sorted((unknown_types or {}).items()):
        if describe_unknown is not None:
            details.append(describe_unknown(class_type, node_ids))
            continue
        details.append(not_installed(class_type, node_ids))
    details.extend(graph_problems)
    for node_id, entry in sorted((node_errors or {}).items(), key=lambda kv: _node_sort_key(kv[0])):
        class_type = str(entry.get("class_type", "?"))
        # ComfyUI walks a node's inputs as a set: its order changes from one process to
        # the next. Sorted by input name, the same workflow always reads the same.
        for item in sorted(entry.get("errors", []), key=_input_name):
            input_name = _input_name(item)
            details.append(
                _describe_input_error(
                    node_id, class_type, item, (looked_in or {}).get((node_id, input_name))
                )
            )
    if error and not details:
        kind = error.get("type", "")
        if kind == "prompt_no_outputs":
            details.append(
                "The workflow has no output node: add one that saves its result, "
                "e.g. SaveImage or SaveVideo"
            )
        else:
            message = str(error.get("message") or kind or "invalid prompt")
            more = str(error.get("details") or "").strip()
            details.append(message + (f": {more}" if more else ""))
    if not details:
        details.append("ComfyUI refused the workflow without saying why")
    return WorkflowValidationError(details, node_errors=dict(node_errors or {}))


def _input_name(error: Mapping[str, Any]) -> str:
    return str((error.get("extra_info") or {}).get("input_name") or "")


def _node_sort_key(node_id: str) -> tuple[int, int, str]:
    return (0, int(node_id), "") if node_id.isdigit() else (1, 0, node_id)


def execution_failure(
    status_messages: Sequence[tuple[str, Mapping[str, Any]]],
) -> NodeExecutionError | JobInterruptedError | None:
    """The failure in an executor's ``status_messages``, or ``None`` if it succeeded."""
    for event, data in reversed(status_messages):
        if event == "execution_error":
            return NodeExecutionError(
                node_id=str(data.get("node_id", "?")),
                class_type=str(data.get("node_type", "?")),
                exception_type=str(data.get("exception_type", "Exception")),
                exception_message=str(data.get("exception_message", "")).strip(),
            )
        if event == "execution_interrupted":
            node = data.get("node_id")
            where = f" at node {node} ({data.get('node_type')})" if node else ""
            return JobInterruptedError(f"The workflow was interrupted{where}")
        if event == "execution_success":
            return None
    return None


def sort_node_ids(node_ids: list[str]) -> list[str]:
    """Node ids in the order a person reads them: 2 before 10, then named ids."""
    return sorted(node_ids, key=_node_sort_key)


def prompt_outputs(
    history: Mapping[str, Any], prompt: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """The ui outputs of this prompt's nodes, in ComfyUI's own shape.

    ComfyUI 0.3.64's ui cache lists only the current prompt's nodes; the check keeps
    it so whatever the cache type or version. Nodes a node expanded into (ids not in
    the prompt) count by their display node.
    """
    ui: Mapping[str, Any] = history.get("outputs") or {}
    meta: Mapping[str, Any] = history.get("meta") or {}
    outputs: dict[str, dict[str, Any]] = {}
    for node_id, output in ui.items():
        display = (meta.get(node_id) or {}).get("display_node")
        if node_id in prompt or display in prompt:
            outputs[str(node_id)] = output
    return outputs
