"""The real runtime's per-node seconds, from ComfyUI's events as recorded from 0.3.64."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from engine.deadline import Deadline
from engine.errors import JobInterruptedError, NodeExecutionError
from engine.runtime import JobSpec
from engine.runtime.comfy_events import EngineEvents, JobState, raise_failure

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "comfyui"


def test_each_executing_node_is_timed_until_the_next_one_or_the_end() -> None:
    """EmptyImage -> ImageInvert -> PreviewImage: three executing events, then
    execution_success ends the last node; progress and cache events change nothing."""
    recorded = json.loads((FIXTURES / "events_executing.json").read_text())
    events = EngineEvents(lambda: None)  # no booted ComfyUI: events only
    job = JobSpec(prompt_id="events_executing", workflow=recorded["recorded_with"])
    state = JobState(job=job, prompt=job.workflow, deadline_hit=threading.Event())
    events.current = state
    for event in recorded["events"]:
        events.on_event(event["event"], event["data"])
    assert list(state.node_seconds) == ["1", "2", "3"]
    assert all(seconds >= 0 for seconds in state.node_seconds.values())
    assert state.running is None


def test_a_node_that_starts_twice_adds_up_and_a_display_node_takes_the_time() -> None:
    """A node waiting on lazy inputs starts again; nodes it expanded into count as it."""
    events = EngineEvents(lambda: None)
    job = JobSpec(prompt_id="p", workflow={"5": {"class_type": "X", "inputs": {}}})
    state = JobState(job=job, prompt=job.workflow, deadline_hit=threading.Event())
    events.current = state
    for node in ("5", "5.0.1", "5"):
        events.on_event("executing", {"node": node, "display_node": "5", "prompt_id": "p"})
    events.on_event("executing", {"node": None, "prompt_id": "p"})
    assert list(state.node_seconds) == ["5"] and state.running is None


def test_a_node_stopped_by_the_jobs_cancel_fails_the_job_as_cancelled() -> None:
    """SaveImage's wait for a PNG encoder process raised the job's own cancel error inside
    the node: ComfyUI reports a node error with that type; the job gets its cancel error,
    naming the node, not a node failure."""
    deadline = Deadline.start(None)
    deadline.cancel()
    job = JobSpec(prompt_id="p", workflow={}, deadline=deadline)
    state = JobState(job=job, prompt=job.workflow, deadline_hit=threading.Event())
    error = {
        "node_id": "2",
        "node_type": "SaveImage",
        "exception_type": "engine.errors.JobInterruptedError",
        "exception_message": "The job was cancelled and stopped while writing output PNGs",
    }
    failure = NodeExecutionError(
        "2", "SaveImage", error["exception_type"], error["exception_message"]
    )
    with pytest.raises(JobInterruptedError) as caught:
        raise_failure(state, failure, [("execution_error", error)])
    assert caught.value.message == (
        "The job was cancelled and stopped at node 2 (SaveImage) while writing output PNGs"
    )
    other = {**error, "exception_type": "RuntimeError"}
    with pytest.raises(NodeExecutionError):
        raise_failure(state, failure, [("execution_error", other)])
