"""The real runtime's per-node seconds, from ComfyUI's events as recorded from 0.3.64."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from engine.runtime import JobSpec
from engine.runtime.comfy_events import EngineEvents, JobState

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
