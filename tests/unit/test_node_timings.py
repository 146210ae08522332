"""The real runtime's per-node seconds, from ComfyUI's events as recorded from 0.3.64."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from engine.runtime import JobSpec
from engine.runtime.comfy import ComfyRuntime, _JobState
from engine.settings import Settings

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "comfyui"


def test_each_executing_node_is_timed_until_the_next_one_or_the_end(tmp_path: Path) -> None:
    """EmptyImage -> ImageInvert -> PreviewImage: three executing events, then
    execution_success ends the last node; progress and cache events change nothing."""
    recorded = json.loads((FIXTURES / "events_executing.json").read_text())
    runtime = ComfyRuntime(Settings(work_dir=tmp_path))  # ComfyUI is imported only at boot
    job = JobSpec(prompt_id="events_executing", workflow=recorded["recorded_with"])
    state = _JobState(job=job, prompt=job.workflow, deadline_hit=threading.Event())
    runtime._current = state
    for event in recorded["events"]:
        runtime._on_event(event["event"], event["data"])
    assert list(state.node_seconds) == ["1", "2", "3"]
    assert all(seconds >= 0 for seconds in state.node_seconds.values())
    assert state.running is None


def test_a_node_that_starts_twice_adds_up_and_a_display_node_takes_the_time(
    tmp_path: Path,
) -> None:
    """A node waiting on lazy inputs starts again; nodes it expanded into count as it."""
    runtime = ComfyRuntime(Settings(work_dir=tmp_path))
    job = JobSpec(prompt_id="p", workflow={"5": {"class_type": "X", "inputs": {}}})
    state = _JobState(job=job, prompt=job.workflow, deadline_hit=threading.Event())
    runtime._current = state
    for node in ("5", "5.0.1", "5"):
        runtime._on_event("executing", {"node": node, "display_node": "5", "prompt_id": "p"})
    runtime._on_event("executing", {"node": None, "prompt_id": "p"})
    assert list(state.node_seconds) == ["5"] and state.running is None
