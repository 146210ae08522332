"""scripts/gpu_check.py in its CPU mode: the GPU check's plumbing, tested before any GPU.

The same steps as on a GPU host (setup, the engine tests, boot, a random checkpoint,
the worker against ComfyUI's own execution, memory over jobs, a cold start with the
warm-up workflow) at CI sizes: an SD1.5-layout checkpoint, 64x64, one step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.engine.support import COMFYUI_PATH, ENGINE_MARKS

pytestmark = [*ENGINE_MARKS, pytest.mark.sd15]

REPO = Path(__file__).resolve().parents[2]
STEPS = ["setup", "tests", "boot", "checkpoint", "overhead", "memory", "cold start"]


@pytest.mark.timeout(1800)
def test_cpu_mode_runs_every_step_and_reports_figures(tmp_path: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    done = subprocess.run(
        [
            sys.executable,
            "scripts/gpu_check.py",
            "--mode",
            "cpu",
            "--out",
            str(out),
            "--work",
            str(work),
            # A budget no machine meets: the steps are checked here, not the time.
            "--budget",
            "1700",
        ],
        cwd=REPO,
        env={**os.environ, "COMFYUI_PATH": str(COMFYUI_PATH)},
        capture_output=True,
        text=True,
        timeout=1750,
    )
    assert (out / "report.json").is_file(), done.stderr[-4000:]
    report = json.loads((out / "report.json").read_text())
    steps = {step["name"]: step for step in report["steps"]}
    assert list(steps) == STEPS
    failed = {name: step["note"] for name, step in steps.items() if step["status"] != "ok"}
    assert failed == {}, done.stderr[-4000:]
    assert done.returncode == 0
    assert "1 passed" in steps["tests"]["facts"]["summary"]
    overhead = steps["overhead"]["facts"]
    assert len(overhead["pairs"]) == 1
    assert overhead["worker_median_s"] > 0 and overhead["comfyui_median_s"] > 0
    memory = steps["memory"]["facts"]
    assert [s["job"] for s in memory["samples"]] == [1, 2, 3]
    assert memory["measure"] == "rss_mib"
    cold = steps["cold start"]["facts"]
    # The warm-up ran inside the boot, and the first job (another seed) ran after it.
    assert cold["warmup_s"] > 0
    assert cold["first_job_done_s"] > cold["ready_s"] > cold["warmup_s"]
    assert "| cold start | ok |" in (out / "report.md").read_text()
