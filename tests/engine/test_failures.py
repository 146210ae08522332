"""Failures through the real engine: validation, node errors, interrupts, time limits.

After each failure the next job must run normally; most tests end by proving it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from engine.deadline import Deadline
from engine.errors import (
    JobInterruptedError,
    JobTimeoutError,
    NodeExecutionError,
    WorkflowValidationError,
)
from engine.runtime import JobSpec, ProgressEvent, RunResult
from engine.runtime.comfy import ComfyRuntime
from tests.engine.support import ENGINE_MARKS, DeadlineOnCue, empty_image, node

pytestmark = ENGINE_MARKS


def _run(runtime: ComfyRuntime, workflow: dict[str, Any], **job: Any) -> RunResult:
    return runtime.run(JobSpec(prompt_id=f"f-{id(workflow)}", workflow=workflow, **job))


def _assert_next_job_runs(runtime: ComfyRuntime, prefix: str) -> None:
    workflow = {
        "1": empty_image(8, 8, color=int(time.time_ns() % 0xFFFFFF)),
        "2": node("SaveImage", images=["1", 0], filename_prefix=f"{prefix}-next/out"),
    }
    result = _run(runtime, workflow)
    (item,) = result.outputs["2"]["images"]
    assert (runtime.directories.output / item["subfolder"] / item["filename"]).is_file()


# -- validation ----------------------------------------------------------------------


def test_every_unknown_node_type_is_named_at_once(runtime: ComfyRuntime, prefix: str) -> None:
    """ComfyUI stops at the first unknown class_type; the worker names them all."""
    workflow = {
        "1": node("NotARealNode", x=1),
        "2": node("AlsoNotReal"),
        "3": node("NotARealNode"),
        "4": {"inputs": {}},
        "5": node("SaveImage", images=["1", 0], filename_prefix=prefix),
    }
    with pytest.raises(WorkflowValidationError) as caught:
        _run(runtime, workflow)
    details = caught.value.details
    assert any("'NotARealNode'" in d and "nodes 1, 3" in d for d in details), details
    assert any("'AlsoNotReal'" in d and "node 2" in d for d in details), details
    assert any("Node 4 has no class_type" in d for d in details), details
    _assert_next_job_runs(runtime, prefix)


def test_every_bad_input_is_reported_in_one_answer(runtime: ComfyRuntime, prefix: str) -> None:
    """Bad values on several nodes: one detail line each, node errors kept for programs."""
    workflow = {
        "1": node("EmptyImage", width=-5, height="tall", batch_size=1, color=0),
        "2": node("ImageScale", image=["1", 0], upscale_method="nearest", width=8, height=8),
        "3": node("SaveImage", images=["2", 0], filename_prefix=prefix),
        "4": node("PreviewImage"),
    }
    with pytest.raises(WorkflowValidationError) as caught:
        _run(runtime, workflow)
    error = caught.value
    text = "\n".join(error.details)
    assert "Node 1 (EmptyImage) input 'width'" in text and "smaller than min" in text
    assert "Node 1 (EmptyImage) input 'height'" in text and "INT" in text
    assert "Node 2 (ImageScale) input 'upscale_method'" in text and "'nearest'" in text
    assert "allowed: nearest-exact, bilinear, area, bicubic, lanczos" in text
    assert "Node 2 (ImageScale) input 'crop'" in text and "missing" in text
    assert "Node 4 (PreviewImage) input 'images'" in text
    node_errors = error.extra["node_errors"]
    assert set(node_errors) == {"1", "2", "4"}
    assert node_errors["2"]["class_type"] == "ImageScale"
    _assert_next_job_runs(runtime, prefix)


def test_one_bad_output_fails_the_whole_job(runtime: ComfyRuntime, prefix: str) -> None:
    """ComfyUI would run the good output and drop the bad one; the worker refuses both."""
    workflow = {
        "1": empty_image(8, 8, color=5),
        "2": node("SaveImage", images=["1", 0], filename_prefix=prefix),
        "3": node("SaveImage", images=["1", 0]),
    }
    with pytest.raises(WorkflowValidationError) as caught:
        _run(runtime, workflow)
    assert caught.value.details == [
        "Node 3 (SaveImage) input 'filename_prefix': Required input is missing"
    ]
    assert not (runtime.directories.output / prefix.split("/")[0]).exists()


def test_a_workflow_without_output_nodes_is_refused(runtime: ComfyRuntime) -> None:
    """No output node: nothing would be saved, so nothing runs."""
    with pytest.raises(WorkflowValidationError) as caught:
        _run(runtime, {"1": empty_image(8, 8)})
    assert "no output node" in caught.value.details[0]


@pytest.mark.parametrize(
    ("class_type", "inputs", "input_name", "folder"),
    [
        (
            "CheckpointLoaderSimple",
            {"ckpt_name": "SDXL/missing.safetensors"},
            "ckpt_name",
            "checkpoints",
        ),
        (
            "LoraLoaderModelOnly",
            {"lora_name": "missing.safetensors", "strength_model": 1.0},
            "lora_name",
            "loras",
        ),
        ("VAELoader", {"vae_name": "missing-vae.safetensors"}, "vae_name", "vae"),
        (
            "UNETLoader",
            {"unet_name": "wan2.2/missing.safetensors", "weight_dtype": "default"},
            "unet_name",
            "diffusion_models",
        ),
    ],
    ids=["checkpoint", "lora", "vae", "unet"],
)
def test_a_missing_model_names_where_the_worker_looked(
    runtime: ComfyRuntime,
    prefix: str,
    class_type: str,
    inputs: dict[str, Any],
    input_name: str,
    folder: str,
) -> None:
    """The detail line names the node, input, value and every folder searched."""
    import folder_paths

    workflow: dict[str, Any] = {"1": node(class_type, **inputs)}
    if class_type == "LoraLoaderModelOnly":
        workflow["0"] = node("CheckpointLoaderSimple", ckpt_name="also-missing.safetensors")
        workflow["1"]["inputs"]["model"] = ["0", 0]
    workflow["9"] = node("PreviewAny", source=["1", 0])
    with pytest.raises(WorkflowValidationError) as caught:
        _run(runtime, workflow)
    (line,) = [d for d in caught.value.details if d.startswith(f"Node 1 ({class_type})")]
    assert f"input '{input_name}'" in line and repr(inputs[input_name]) in line
    searched = folder_paths.get_folder_paths(folder)
    assert len(searched) >= 3  # ComfyUI's own, the test models dir or the volume layouts
    for path in searched:
        assert path in line, (path, line)
    assert "/runpod-volume/models" in line and "(missing)" in line


def test_an_enum_value_is_not_taken_for_a_missing_file(runtime: ComfyRuntime, prefix: str) -> None:
    """A bad sampler name lists no folders: only file inputs get 'looked in'."""
    workflow = {
        "1": node("KSamplerSelect", sampler_name="no_such_sampler"),
        "2": node("PreviewAny", source=["1", 0]),
    }
    with pytest.raises(WorkflowValidationError) as caught:
        _run(runtime, workflow)
    (line,) = caught.value.details
    assert "'no_such_sampler' is not one of the allowed values" in line
    assert "looked in" not in line


def test_a_missing_input_image_is_named(runtime: ComfyRuntime, prefix: str) -> None:
    """LoadImage checks its file in its own validation: the name comes back."""
    with pytest.raises(WorkflowValidationError) as caught:
        _run(
            runtime,
            {
                "1": node("LoadImage", image="never-uploaded.png"),
                "2": node("PreviewImage", images=["1", 0]),
            },
        )
    (line,) = caught.value.details
    assert line.startswith("Node 1 (LoadImage) input 'image'") and "never-uploaded.png" in line


# -- execution -----------------------------------------------------------------------


def test_a_node_that_raises_is_reported_without_its_traceback(
    runtime: ComfyRuntime, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Node id, class_type, exception type and message; the traceback goes to the log."""
    workflow = {
        "1": empty_image(8, 8, color=1),
        "2": node("WorkerTestRaise", images=["1", 0], message="the node broke"),
        "3": node("SaveImage", images=["2", 0], filename_prefix=prefix),
    }
    with pytest.raises(NodeExecutionError) as caught:
        _run(runtime, workflow)
    error = caught.value
    assert error.node_id == "2"
    assert error.extra["class_type"] == "WorkerTestRaise"
    assert error.extra["exception_type"] == "ValueError"
    assert error.extra["exception_message"] == "the node broke"
    assert "Traceback" not in error.summary() and 'File "' not in error.summary()
    assert "raise ValueError(message)" in caplog.text  # the traceback, in the log
    _assert_next_job_runs(runtime, prefix)


def test_a_core_node_failing_on_a_corrupt_file(runtime: ComfyRuntime, prefix: str) -> None:
    """LoadImage on bytes that are no image fails at run time, naming PIL's error."""
    (runtime.directories.input / "corrupt.png").write_bytes(b"these bytes are no image")
    workflow = {
        "1": node("LoadImage", image="corrupt.png"),
        "2": node("SaveImage", images=["1", 0], filename_prefix=prefix),
    }
    with pytest.raises(NodeExecutionError) as caught:
        _run(runtime, workflow)
    assert caught.value.node_id == "1"
    assert caught.value.extra["class_type"] == "LoadImage"
    assert "UnidentifiedImageError" in caught.value.extra["exception_type"]
    _assert_next_job_runs(runtime, prefix)


def test_out_of_memory_in_a_node_leaves_the_worker_healthy(
    runtime: ComfyRuntime, prefix: str
) -> None:
    """A 4 TB allocation fails in the node; memory is freed and the next job runs."""
    import psutil

    workflow = {
        "1": empty_image(16384, 16384, batch=4096),
        "2": node("SaveImage", images=["1", 0], filename_prefix=prefix),
    }
    rss = psutil.Process().memory_info().rss
    with pytest.raises(NodeExecutionError) as caught:
        _run(runtime, workflow)
    assert caught.value.node_id == "1"
    assert "allocate" in caught.value.extra["exception_message"]
    assert psutil.Process().memory_info().rss < rss + 200 * 2**20
    _assert_next_job_runs(runtime, prefix)


# -- interrupts and time limits ------------------------------------------------------------


def _steps_workflow(prefix: str, steps: int, seconds: float, color: int) -> dict[str, Any]:
    return {
        "1": empty_image(8, 8, color=color),
        "2": node("WorkerTestSteps", images=["1", 0], steps=steps, seconds_per_step=seconds),
        "3": node("SaveImage", images=["2", 0], filename_prefix=prefix),
    }


def _cue_at_step(
    deadline: DeadlineOnCue, node_id: str, step: int, events: list[ProgressEvent]
) -> Callable[[ProgressEvent], None]:
    """A progress callback that records events and passes the deadline at ``step``."""

    def on_progress(event: ProgressEvent) -> None:
        events.append(event)
        if event.node_id == node_id and event.value is not None and event.value >= step:
            deadline.cue.set()

    return on_progress


def test_time_limit_stops_a_long_node_between_steps(runtime: ComfyRuntime, prefix: str) -> None:
    """A limit passing at step 5 of a 200-step node stops it at the next step, with an
    error naming the limit and the node (driven by progress, so it holds on any machine)."""
    events: list[ProgressEvent] = []
    deadline = DeadlineOnCue(limit_s=0.5)
    with pytest.raises(JobTimeoutError) as caught:
        _run(
            runtime,
            _steps_workflow(prefix, steps=200, seconds=0.02, color=0x0A0B0C),
            deadline=deadline,
            on_progress=_cue_at_step(deadline, "2", 5, events),
        )
    error = caught.value
    assert isinstance(error, TimeoutError) and isinstance(error, JobInterruptedError)
    assert "0.5 s" in error.message and "node 2 (WorkerTestSteps)" in error.message
    assert any("JOB_TIMEOUT_S=0.5" in d for d in error.details)
    steps = [e.value for e in events if e.node_id == "2" and e.value is not None]
    assert 5 <= len(steps) <= 6, steps
    _assert_next_job_runs(runtime, prefix)


def test_the_clock_stops_a_job_that_outruns_its_limit(runtime: ComfyRuntime, prefix: str) -> None:
    """The real deadline: 200 steps of 50 ms under a 0.5 s limit never run to the end."""
    events: list[ProgressEvent] = []
    with pytest.raises(JobTimeoutError):
        _run(
            runtime,
            _steps_workflow(prefix, steps=200, seconds=0.05, color=0x0A0B0D),
            deadline=Deadline.start(0.5),
            on_progress=events.append,
        )
    steps = [e.value for e in events if e.node_id == "2" and e.value is not None]
    assert len(steps) < 200
    _assert_next_job_runs(runtime, prefix)


def test_time_limit_stops_a_chain_between_nodes(runtime: ComfyRuntime, prefix: str) -> None:
    """Nodes that never check for interrupts are stopped before the next node starts: the
    limit passes when node 5 starts, and no node after 6 runs."""
    workflow: dict[str, Any] = {"0": empty_image(64, 64, batch=1, color=0x123456)}
    for i in range(1, 41):
        scale = 1.01 if i % 2 else 0.99
        workflow[str(i)] = node(
            "ImageScaleBy", image=[str(i - 1), 0], upscale_method="bicubic", scale_by=scale
        )
    workflow["99"] = node("PreviewImage", images=["40", 0])
    events: list[ProgressEvent] = []
    deadline = DeadlineOnCue(limit_s=0.3)

    def on_progress(event: ProgressEvent) -> None:
        events.append(event)
        if event.node_id == "5":
            deadline.cue.set()

    with pytest.raises(JobTimeoutError):
        _run(runtime, workflow, deadline=deadline, on_progress=on_progress)
    ran = {e.node_id for e in events}
    assert "5" in ran and "99" not in ran
    assert not ran & {str(i) for i in range(7, 41)}, sorted(ran, key=int)
    _assert_next_job_runs(runtime, prefix)


def test_an_interrupt_from_outside_is_not_a_timeout(runtime: ComfyRuntime, prefix: str) -> None:
    """``interrupt()`` stops the job as ComfyUI's own interrupt does (sent at step 3)."""
    events: list[ProgressEvent] = []

    def on_progress(event: ProgressEvent) -> None:
        events.append(event)
        if event.node_id == "2" and event.value == 3:
            runtime.interrupt()

    with pytest.raises(JobInterruptedError) as caught:
        _run(
            runtime,
            _steps_workflow(prefix, steps=200, seconds=0.02, color=0x0D0E0F),
            on_progress=on_progress,
        )
    assert not isinstance(caught.value, JobTimeoutError)
    assert "node 2 (WorkerTestSteps)" in caught.value.message
    _assert_next_job_runs(runtime, prefix)


def test_a_job_within_its_limit_is_untouched(runtime: ComfyRuntime, prefix: str) -> None:
    """A limit that is not reached changes nothing, and its timer is gone once the job is."""
    before = {t for t in threading.enumerate() if isinstance(t, threading.Timer)}
    result = _run(
        runtime,
        _steps_workflow(prefix, steps=3, seconds=0.0, color=0x101112),
        deadline=Deadline.start(3600),
    )
    assert result.outputs["3"]["images"]
    for timer in {t for t in threading.enumerate() if isinstance(t, threading.Timer)} - before:
        timer.join(timeout=5)  # a cancelled timer ends at once
        assert not timer.is_alive(), "the job's deadline timer outlived the job"
    _assert_next_job_runs(runtime, prefix)
