"""scripts/bench_latency_parts.py's split of a job's time, and the names its probe times."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.unit.test_manifests import ROOT, load_script


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    if str(ROOT / "scripts") not in sys.path:  # its imports of _bench_common, as when run
        sys.path.insert(0, str(ROOT / "scripts"))
    return load_script("bench_latency_parts")


def _side(
    bench: ModuleType, log: Path, records: list[dict[str, object]], sent: list[float]
) -> object:
    log.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    each = bench.Side(api=None, log=log)
    each.sent = [(s, s + 0.010) for s in sent]
    each.runsync_ms = [10.0] * len(sent)
    return each


def test_the_parts_are_the_probes_times_against_the_clients(
    bench: ModuleType, tmp_path: Path
) -> None:
    steps = {name: [0.0005, 0.0004] for name in bench.STEPS}
    steps["Worker.run"] = [0.006, 0.005]
    # Sent at 100.000 s, read 10 ms later; the handler ran from 100.002 to 100.009 s.
    records = [{"in": 100.002, "out": 100.009, "steps": steps}]
    worker = _side(bench, tmp_path / "w.jsonl", records, [100.0])
    floor = _side(bench, tmp_path / "f.jsonl", [{"in": 50.001, "out": 50.002}], [50.0])
    cells = bench.parts(worker, floor)
    assert cells["  in, around that handler"] == "1.00"
    assert cells["  out, around that handler"] == "8.00"
    assert cells["in: send to the handler's start"] == "2.00"
    assert cells["out: the handler's return to the answer read"] == "1.00"
    assert cells["the handler"] == "7.00"
    assert cells["hand-offs: the handler outside Worker.run"] == "1.00"
    assert cells["Worker.run, wall"] == "6.00"
    # Seven steps of 0.5 ms wall and 0.4 ms CPU in 6 ms wall and 5 ms CPU.
    assert cells["  the rest of Worker.run, wall"] == "2.50"
    assert cells["  the rest of Worker.run, CPU"] == "2.20"


def test_the_probe_times_steps_the_worker_still_has() -> None:
    """The probe skips a name that is gone; a rename must show here, not as a missing row."""
    import engine.worker
    from engine.runtime.comfy import ComfyRuntime

    probe = load_script("_latency_probe")
    for name in probe._WORKER_FUNCTIONS:
        assert callable(getattr(engine.worker, name)), name
    for name in probe._WORKER_METHODS:
        assert callable(getattr(engine.worker.Worker, name)), name
    for name in probe._RUNTIME_METHODS:
        assert callable(getattr(ComfyRuntime, name)), name
