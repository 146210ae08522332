"""Two jobs in flight on the real engine: ComfyUI's interrupt is global, and only the job
whose run holds the engine may set it.

Job A's run is held on the engine thread by the worker's progress sink, which blocks at
A's ``WorkerTestSteps`` node until the test lets it go; that node then takes steps, each
of which raises if ComfyUI's interrupt flag is set. Job B, sent meanwhile, stores its
input and waits for the engine; it is cancelled there. A must then run every step and
complete: the cancel of B never reached ComfyUI's flag.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import threading
from typing import Any

from PIL import Image

from engine.pipeline import Ticket
from engine.runtime.comfy import ComfyRuntime
from engine.settings import Settings
from engine.worker import Worker
from tests.engine.support import ENGINE_MARKS, empty_image, node

pytestmark = ENGINE_MARKS

_HANG_S = 60.0


def test_a_cancel_of_the_waiting_job_leaves_the_running_ones_steps_alone(
    runtime: ComfyRuntime, prefix: str
) -> None:
    at_steps = threading.Event()
    go_on = threading.Event()

    def sink(job: dict[str, Any], line: str) -> None:
        if job["id"] == "a" and "WorkerTestSteps" in line and not at_steps.is_set():
            at_steps.set()
            assert go_on.wait(_HANG_S)

    settings = Settings(work_dir=runtime.directories.input.parent)
    worker = Worker(dataclasses.replace(settings, max_concurrent_jobs=2), runtime, progress=sink)
    waiting = threading.Event()
    take_engine = worker._pipeline.take_engine

    def noting(ticket: Ticket, deadline: Any) -> bool:
        if ticket.number == 1:
            waiting.set()
        return take_engine(ticket, deadline)

    worker._pipeline.take_engine = noting  # type: ignore[method-assign]
    held = {
        "1": empty_image(32, 32),
        "2": node("WorkerTestSteps", images=["1", 0], steps=5, seconds_per_step=0.0),
        "3": node("SaveImage", images=["2", 0], filename_prefix=f"{prefix}/a"),
    }
    answers: dict[str, dict[str, Any]] = {}

    def send(job_id: str, job_input: dict[str, Any]) -> threading.Thread:
        thread = threading.Thread(
            target=lambda: answers.setdefault(
                job_id, worker.handle({"id": job_id, "input": job_input})
            ),
            daemon=True,
        )
        thread.start()
        return thread

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(buffer, "PNG")
    b_input = {
        "workflow": {
            "1": node("LoadImage", image="b.png"),
            "2": node("SaveImage", images=["1", 0], filename_prefix=f"{prefix}/b"),
        },
        "images": [{"name": "b.png", "image": base64.b64encode(buffer.getvalue()).decode()}],
    }
    a = send("a", {"workflow": held})
    try:
        assert at_steps.wait(_HANG_S)  # A's run holds the engine thread
        b = send("b", b_input)
        assert waiting.wait(_HANG_S)  # B's input is stored; it waits for the engine
        assert worker.cancel("b")
        b.join(_HANG_S)
        assert answers["b"]["code"] == "execution_interrupted", answers["b"]
        assert "while the job waited for the run of the job before it" in answers["b"]["message"]
    finally:
        go_on.set()
    a.join(_HANG_S)
    body = answers["a"]
    assert body.get("errors") == [] and len(body["images"]) == 1, body
    assert set(body["stats"]["nodes"]) >= {"2", "3"}  # every step ran, then the save


def test_a_workflow_comfyui_refuses_fails_while_another_jobs_run_is_held(
    runtime: ComfyRuntime, prefix: str
) -> None:
    """Job B's value is not one ComfyUI allows: ComfyUI's own validate_prompt says so on
    B's lane while A's run holds the engine at its steps; then A runs to its end."""
    at_steps = threading.Event()
    go_on = threading.Event()

    def sink(job: dict[str, Any], line: str) -> None:
        if job["id"] == "a2" and "WorkerTestSteps" in line and not at_steps.is_set():
            at_steps.set()
            assert go_on.wait(_HANG_S)

    settings = Settings(work_dir=runtime.directories.input.parent)
    worker = Worker(dataclasses.replace(settings, max_concurrent_jobs=2), runtime, progress=sink)
    held = {
        "1": empty_image(32, 32),
        "2": node("WorkerTestSteps", images=["1", 0], steps=3, seconds_per_step=0.0),
        "3": node("SaveImage", images=["2", 0], filename_prefix=f"{prefix}/a2"),
    }
    refused = {
        "1": empty_image(32, 32),
        "2": node(
            "ImageScale",
            image=["1", 0],
            upscale_method="sideways",
            width=8,
            height=8,
            crop="disabled",
        ),
        "3": node("SaveImage", images=["2", 0], filename_prefix=f"{prefix}/b2"),
    }
    answers: dict[str, dict[str, Any]] = {}

    def send(job_id: str, workflow: dict[str, Any]) -> threading.Thread:
        thread = threading.Thread(
            target=lambda: answers.setdefault(
                job_id, worker.handle({"id": job_id, "input": {"workflow": workflow}})
            ),
            daemon=True,
        )
        thread.start()
        return thread

    a = send("a2", held)
    try:
        assert at_steps.wait(_HANG_S)  # A's run holds the engine thread
        b = send("b2", refused)
        b.join(_HANG_S)
        assert not b.is_alive(), "B waited for A's run"
        assert answers["b2"]["code"] == "workflow_validation_failed", answers["b2"]
        assert "sideways" in json.dumps(answers["b2"])
        assert "a2" not in answers  # A's run is still held
    finally:
        go_on.set()
    a.join(_HANG_S)
    body = answers["a2"]
    assert body.get("errors") == [] and len(body["images"]) == 1, body
