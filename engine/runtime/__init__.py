"""The project's boundary with ComfyUI.

Everything outside this package talks to ComfyUI only through :class:`Runtime`.
The real implementation (``engine.runtime.comfy``) is the only module that
imports ComfyUI or torch, and it does so when it boots, not at import. Tests
replace it with a small runtime that writes real files and returns shapes
recorded from the real engine; ``engine.runtime.shapes`` turns those shapes
into typed errors for both.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from engine.deadline import Deadline, JobThread
from engine.runtime.pending_files import PendingFiles

if TYPE_CHECKING:
    from engine.settings import Settings

Workflow = dict[str, Any]
"""A ComfyUI graph in API format: node id -> {"class_type", "inputs", ...}."""

UiOutputs = dict[str, dict[str, Any]]
"""Node id -> the ui dict the node reported, exactly as ComfyUI gives it."""


@dataclass(frozen=True)
class Directories:
    """Where ComfyUI reads inputs and writes outputs, by ComfyUI's folder type."""

    input: Path
    output: Path
    temp: Path

    def for_type(self, folder_type: str) -> Path:
        """The folder behind a ui item's ``type`` (``output``, ``temp``, ``input``)."""
        try:
            return {"input": self.input, "output": self.output, "temp": self.temp}[folder_type]
        except KeyError:
            raise ValueError(f"unknown ComfyUI folder type {folder_type!r}") from None


@dataclass(frozen=True)
class ProgressEvent:
    """One progress report: a node started, or a node advanced a step."""

    node_id: str | None
    class_type: str | None
    value: int | None = None
    total: int | None = None
    text: str | None = None
    """Said as is, when set: work outside ComfyUI's nodes (``downloading x: 45%``)."""

    def describe(self) -> str:
        """A short line for RunPod's progress field."""
        if self.text is not None:
            return self.text
        where = f"node {self.node_id} ({self.class_type})" if self.node_id else "workflow"
        if self.value is not None and self.total:
            return f"{where}: step {self.value}/{self.total}"
        return f"running {where}"


ProgressCallback = Callable[[ProgressEvent], None]


@dataclass(frozen=True)
class ModelFolder:
    """A kind of model file as ComfyUI knows it (``checkpoints``, ``loras``...)."""

    name: str
    paths: tuple[Path, ...]
    """Where ComfyUI looks for its files, in ComfyUI's order."""
    extensions: frozenset[str] = frozenset()
    """The suffixes ComfyUI lists (``.safetensors``...); empty: every file."""


def _ignore_progress(event: ProgressEvent) -> None:
    del event


@dataclass(frozen=True)
class Checked:
    """A workflow the runtime checked (:meth:`Runtime.validate`), ready to execute."""

    prompt: Workflow
    """The prompt to execute: validated, values cast, as the packs' on-prompt handlers left it."""
    outputs: list[str]
    """The output nodes to execute."""
    extra_data: dict[str, Any] = field(repr=False)
    """What ComfyUI's executor gets beside the prompt (client id, metadata, API key)."""
    seconds: float
    """How long the checks took (``validate_s``)."""


@dataclass(frozen=True)
class JobSpec:
    """What the runtime needs to run one prompt."""

    prompt_id: str
    workflow: Workflow
    api_key_comfy_org: str | None = field(default=None, repr=False)
    deadline: Deadline = field(default_factory=lambda: Deadline.start(None))
    """The whole job's deadline; the run is interrupted when it passes."""
    on_progress: ProgressCallback = _ignore_progress
    output_folder: str | None = None
    """The job's own folder under ComfyUI's output and temp folders: while it runs, no file
    name leads its nodes out of it, nor into another job's (``output_scope``)."""
    sent_prompt: Workflow | None = field(default=None, repr=False)
    """The workflow in API format as the user sent it (before the worker's per-job
    rewrites): what output files embed as ``prompt`` (``output_metadata``). None: the
    prompt that runs, as ComfyUI would (or nothing, with ``OUTPUT_METADATA=false``)."""
    sent_graph: dict[str, Any] | None = field(default=None, repr=False)
    """The editor graph, when the user sent the UI format: embedded as ``workflow``."""
    pending_files: PendingFiles | None = field(default=None, repr=False, compare=False)
    """Where the run may hand off output files still being written instead of waiting for
    them (SaveImage's PNG encodes): the caller waits for them after the run. None: every
    file is written before the run returns."""
    checked: Checked | None = field(default=None, repr=False, compare=False)
    """Set by :meth:`Runtime.validate`: :meth:`Runtime.run` executes this without checking
    the workflow again. None: ``run`` checks it first."""


@dataclass(frozen=True)
class RunResult:
    """A finished run: each output node's ui dict, in ComfyUI's own shape."""

    outputs: UiOutputs
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per phase of the run: ``validate_s``, ``execute_s``."""
    node_seconds: dict[str, float] = field(default_factory=dict)
    """Seconds each node ran, by the workflow's node id; nodes served from the cache are
    absent. A node that expanded into others is timed under its own id."""


class Runtime(Protocol):
    """A ComfyUI engine the worker drives, one run at a time."""

    @property
    def directories(self) -> Directories:
        """ComfyUI's input, output and temp folders."""
        ...

    @property
    def job_thread(self) -> JobThread:
        """The thread the worker runs each whole job on when it holds one job at a time.

        ComfyUI's runtime gives its engine thread: :meth:`run` called there runs the
        workflow in place, with no hand-over between threads (~0.3 ms a job), and the
        worker's watchdog, on the thread that waits for the job, enforces its limit. With
        jobs overlapping (``MAX_CONCURRENT_JOBS`` > 1) each job has a lane of its own and
        :meth:`run` is called there, one run at a time (``engine.pipeline``).
        """
        ...

    def boot(self) -> None:
        """Import and initialise the engine; called once per worker, before any job."""
        ...

    def file_inputs(self, class_type: str) -> frozenset[str]:
        """Inputs of ``class_type`` whose allowed values the engine lists (files, models)."""
        ...

    def node_definitions(self) -> dict[str, Any]:
        """Every node type's definition, in the shape of ComfyUI's ``/object_info``.

        What ``engine.ui_workflow`` converts editor (UI-format) workflows against.
        """
        ...

    def model_folder_of(self, class_type: str, input_name: str) -> ModelFolder | None:
        """The model folder whose files ``input_name`` of ``class_type`` lists, if one does."""
        ...

    def model_folders(self) -> list[ModelFolder]:
        """Every model folder ComfyUI knows."""
        ...

    def forget_model_files(self, folder_name: str) -> None:
        """Drop ComfyUI's remembered file list of a model folder: a new file was put there."""
        ...

    def validate(self, job: JobSpec) -> JobSpec:
        """Check ``job.workflow`` as the engine does before it runs one, without the engine:
        ``job`` with :attr:`JobSpec.checked` set, for :meth:`run`.

        Safe from any thread while another job runs (ComfyUI's own server validates a
        prompt on its event loop while its prompt worker executes another), so a job's
        checks need not wait for the engine's turn. Raises ``WorkflowValidationError``.
        """
        ...

    def run(self, job: JobSpec) -> RunResult:
        """Validate (unless :meth:`validate` did) and execute one workflow.

        Raises ``WorkflowValidationError``, ``NodeExecutionError``,
        ``JobInterruptedError`` or ``JobTimeoutError``; after any of them the
        runtime is ready for the next job.
        """
        ...

    def after_job(self) -> None:
        """Free per-job state (temp files, cached tensors); models stay loaded."""
        ...

    def interrupt(self) -> None:
        """Ask the running job to stop at its next step or node; safe from any thread."""
        ...


def load_runtime(settings: Settings) -> Runtime:
    """Build the runtime named by ``settings.runtime_factory`` (``module:callable``)."""
    module_name, _, attr = settings.runtime_factory.partition(":")
    if not module_name or not attr:
        from engine.errors import ConfigError

        raise ConfigError(
            f"WORKER_RUNTIME must look like 'package.module:factory', got {settings.runtime_factory!r}"
        )
    factory = getattr(importlib.import_module(module_name), attr)
    runtime: Runtime = factory(settings)
    return runtime
