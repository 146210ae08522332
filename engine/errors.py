"""Every exception the worker raises on purpose.

The tree::

    WorkerError                      one-line ``message`` + ``details`` + stable ``code``
    ├── RequestError                 the request itself is malformed (nothing ran)
    │   └── WorkflowConversionError  a UI-format workflow does not fit the engine's nodes
    ├── InputImageError              one or more input images could not be used
    ├── ModelFileError               a model file by URL or path could not be fetched or used
    ├── WorkflowValidationError      ComfyUI refused the graph before running it
    ├── NodeExecutionError           a node raised while the graph ran
    ├── JobInterruptedError          ComfyUI stopped the run part-way
    │   └── JobTimeoutError          ... because the per-job limit passed (also a TimeoutError)
    ├── WorkerStuckError             a job did not stop after its limit; the worker must be replaced
    ├── ResponseTooLargeError        base64 outputs would exceed RunPod's payload cap
    ├── OutputDeliveryError          not one output reached the bucket (refused, denied, timed out)
    ├── ConfigError                  an environment variable has an unusable value (also a ValueError)
    ├── RuntimeBootError             the ComfyUI runtime could not start
    └── InternalError                an unexpected exception (a bug): an id that finds it in the log

Per-item problems that do not fail the job on their own (one image that failed to
download, one output that could not be uploaded) are ``ItemError``; they are
gathered into the job-level error or into ``errors[]``.

Only ``engine.runtime`` translates ComfyUI's own failures into these; everything
else raises them directly. ``handler.py`` turns a ``WorkerError`` into the
contract's ``{"error": ..., "details": [...]}``; anything else is a bug: the worker
logs its traceback under a fresh id and answers :class:`InternalError` with that id
(never the traceback, its message or a file path of the machine).
"""

from __future__ import annotations

import re
import uuid
from typing import Any

# RunPod's job status keeps only the handler's ``error`` string (the SDK moves other
# keys into ``output``; its local API server drops them), so the details travel in
# the string too. The cap keeps a thousand-node failure from becoming a megabyte.
_MAX_ERROR_CHARS = 4000


class WorkerError(Exception):
    """Base of every expected failure: a message a person can act on."""

    code = "worker_error"
    refresh_worker = False
    """Ask RunPod to replace this worker after the job (the SDK's ``refresh_worker``)."""

    def __init__(
        self,
        message: str,
        details: list[str] | None = None,
        *,
        node_id: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = list(details or [])
        self.node_id = node_id
        self.extra = dict(extra or {})

    def summary(self) -> str:
        """The message with its details, on one line, bounded in length."""
        details = [d for d in self.details if d != self.message]
        if not details:
            return self.message
        text = f"{self.message}: " + "; ".join(details)
        if len(text) > _MAX_ERROR_CHARS:
            text = text[: _MAX_ERROR_CHARS - 20].rstrip() + " ... (truncated)"
        return text

    def to_response(self) -> dict[str, Any]:
        """The contract's failed-job shape."""
        body: dict[str, Any] = {
            "error": self.summary(),
            "message": self.message,
            "details": self.details,
            "code": self.code,
        }
        if self.node_id is not None:
            body["node_id"] = self.node_id
        body.update(self.extra)
        if self.refresh_worker:
            body["refresh_worker"] = True
        return body


class RequestError(WorkerError, ValueError):
    """The request is malformed: a missing or ill-typed field."""

    code = "invalid_request"


class WorkflowConversionError(RequestError):
    """A UI-format workflow could not be turned into the API format; one line per problem.

    Each line names the node id, its type, the widget or input and the value, so the
    user can find it in the editor (most often a node saved with an older layout).
    """

    code = "workflow_conversion_failed"
    MESSAGE = "The UI-format workflow could not be converted"

    def __init__(self, details: list[str]) -> None:
        super().__init__(self.MESSAGE, details)


class ItemError(Exception):
    """One item (an input image, an output file) failed; names it and says why."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


class InputImageError(WorkerError):
    """One or more input images could not be fetched, decoded or stored."""

    code = "input_images_failed"
    MESSAGE = "Failed to upload one or more input images"

    def __init__(self, failures: list[ItemError]) -> None:
        super().__init__(self.MESSAGE, [str(f) for f in failures])
        self.failures = failures


class ModelFileError(WorkerError):
    """A model file named by URL or absolute path could not be fetched, checked or mapped."""

    code = "model_files_failed"
    MESSAGE = "Failed to fetch one or more model files"

    def __init__(self, failures: list[ItemError]) -> None:
        super().__init__(self.MESSAGE, [str(f) for f in failures])
        self.failures = failures


class WorkflowValidationError(WorkerError):
    """ComfyUI's validation refused the workflow; one detail line per problem."""

    code = "workflow_validation_failed"
    MESSAGE = "Workflow validation failed"

    def __init__(self, details: list[str], node_errors: dict[str, Any] | None = None) -> None:
        super().__init__(self.MESSAGE, details, extra={"node_errors": node_errors or {}})


class NodeExecutionError(WorkerError):
    """A node raised while the workflow ran."""

    code = "execution_failed"

    def __init__(
        self, node_id: str, class_type: str, exception_type: str, exception_message: str
    ) -> None:
        message = f"Node {node_id} ({class_type}) failed: {exception_type}: {exception_message}"
        super().__init__(
            message,
            [message],
            node_id=node_id,
            extra={
                "class_type": class_type,
                "exception_type": exception_type,
                "exception_message": exception_message,
            },
        )


class JobInterruptedError(WorkerError):
    """ComfyUI stopped the run before it finished."""

    code = "execution_interrupted"


class JobTimeoutError(JobInterruptedError, TimeoutError):
    """The per-job time limit passed; ComfyUI was interrupted."""

    code = "job_timeout"


class WorkerStuckError(JobTimeoutError):
    """A job passed its limit and its thread did not stop: only a fresh worker is safe.

    The stuck thread may still hold ComfyUI or a file, so this worker takes no more
    jobs; RunPod replaces it once this answer is sent (``refresh_worker``).
    """

    code = "worker_stuck"
    refresh_worker = True


class ResponseTooLargeError(WorkerError):
    """Base64 outputs would exceed the payload RunPod accepts."""

    code = "response_too_large"


class OutputDeliveryError(WorkerError):
    """Every output failed to upload: the job fails instead of completing with no images.

    The message names the bucket, its endpoint and the cause; one detail line per file.
    When only some outputs fail, the job completes and ``errors[]`` names the rest.
    """

    code = "output_delivery_failed"


class ConfigError(WorkerError, ValueError):
    """An environment variable has a value the worker cannot use."""

    code = "config_error"


class RuntimeBootError(WorkerError, RuntimeError):
    """The ComfyUI runtime failed to start."""

    code = "runtime_boot_failed"


class InternalError(WorkerError):
    """An unexpected exception: a bug. The answer names only an id; the log has the rest.

    The exception's text and traceback stay out of the answer (they show the machine's
    file paths and code); the log line that carries the same id holds both, so an
    operator finds the failure from what the user reports.
    """

    code = "internal_error"

    def __init__(self, incident: str, exception_type: str) -> None:
        super().__init__(
            f"The worker failed unexpectedly (internal error {incident})",
            [
                f"{exception_type} (a bug in the worker, not in the request); the worker's log "
                f"holds the details under {incident}: send the job again, and report that id "
                "to the endpoint's operator if it fails again"
            ],
            extra={"incident": incident},
        )
        self.incident = incident


def new_incident() -> str:
    """A short id that ties an answer to the log line holding its traceback."""
    return f"err-{uuid.uuid4().hex[:12]}"


# An absolute path of this machine in a foreign message (``/opt/ComfyUI/nodes.py``,
# ``C:\\x``): not after a letter, digit, ``:`` or ``/`` (URLs keep theirs).
_ABSOLUTE_PATH = re.compile(r"(?<![\w:/.~-])(?:/[\w.+@-]+)+/?")


def without_paths(text: str) -> str:
    """``text`` with each absolute file path cut to its last part (``.../nodes.py``)."""
    return _ABSOLUTE_PATH.sub(lambda m: ".../" + m.group(0).rstrip("/").rsplit("/", 1)[-1], text)
