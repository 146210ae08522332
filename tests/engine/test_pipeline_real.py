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
import io
import json

from PIL import Image

from engine.runtime.comfy import ComfyRuntime
from tests.engine.support import ENGINE_MARKS, HeldRun, empty_image, held_workflow, node

pytestmark = ENGINE_MARKS

_HANG_S = 60.0


def test_a_cancel_of_the_waiting_job_leaves_the_running_ones_steps_alone(
    runtime: ComfyRuntime, prefix: str
) -> None:
    run = HeldRun(runtime, hang_s=_HANG_S)
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(buffer, "PNG")
    b_input = {
        "workflow": {
            "1": node("LoadImage", image="b.png"),
            "2": node("SaveImage", images=["1", 0], filename_prefix=f"{prefix}/b"),
        },
        "images": [{"name": "b.png", "image": base64.b64encode(buffer.getvalue()).decode()}],
    }
    a = run.send("a", {"workflow": held_workflow(f"{prefix}/a", steps=5)})
    try:
        assert run.at_steps.wait(_HANG_S)  # A's run holds the engine thread
        b = run.send("b", b_input)
        assert run.waiting.wait(_HANG_S)  # B's input is stored; it waits for the engine
        assert run.worker.cancel("b")
        b.join(_HANG_S)
        answer = run.answers["b"]
        assert answer["code"] == "execution_interrupted", answer
        assert "while the job waited for the run of the job before it" in answer["message"]
    finally:
        run.go_on.set()
    a.join(_HANG_S)
    body = run.answers["a"]
    assert body.get("errors") == [] and len(body["images"]) == 1, body
    assert set(body["stats"]["nodes"]) >= {"2", "3"}  # every step ran, then the save


def test_a_workflow_comfyui_refuses_fails_while_another_jobs_run_is_held(
    runtime: ComfyRuntime, prefix: str
) -> None:
    """Job B's value is not one ComfyUI allows: ComfyUI's own validate_prompt says so on
    B's lane while A's run holds the engine at its steps; then A runs to its end."""
    run = HeldRun(runtime, held_id="a2", hang_s=_HANG_S)
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
    a = run.send("a2", {"workflow": held_workflow(f"{prefix}/a2", steps=3)})
    try:
        assert run.at_steps.wait(_HANG_S)  # A's run holds the engine thread
        b = run.send("b2", {"workflow": refused})
        b.join(_HANG_S)
        answers = run.answers
        assert not b.is_alive(), "B waited for A's run"
        assert answers["b2"]["code"] == "workflow_validation_failed", answers["b2"]
        assert "sideways" in json.dumps(answers["b2"])
        assert "a2" not in answers  # A's run is still held
    finally:
        run.go_on.set()
    a.join(_HANG_S)
    body = run.answers["a2"]
    assert body.get("errors") == [] and len(body["images"]) == 1, body
