"""scripts/bench_latency_ab.py's plumbing: two checkouts' handler.py behind the runpod SDK's
local API server, over real HTTP, with the fake runtime (no ComfyUI needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO, worker_env

pytestmark = pytest.mark.e2e


def run_ab(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    comfyui = (
        tmp_path / "ComfyUI"
    )  # the script checks it is a checkout; the fake runtime ignores it
    comfyui.mkdir(exist_ok=True)
    for name in ("main.py", "execution.py"):
        (comfyui / name).write_text("")
    env = worker_env(tmp_path / "unused", {"COMFYUI_PATH": str(comfyui)})
    return subprocess.run(
        [sys.executable, "scripts/bench_latency_ab.py", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_each_pair_runs_on_both_checkouts_and_the_report_names_the_setting(
    tmp_path: Path,
) -> None:
    # The benchmark makes its photo-like input images with numpy (the image's environment).
    pytest.importorskip("numpy", reason="the benchmark's input images are made with numpy")
    done = run_ab(
        tmp_path, "--other", str(REPO), "--repeat", "3", "--warmup", "1", "--pause", "0",
        "--env-other", "MAX_CONCURRENT_JOBS=1",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    [row] = [line for line in done.stdout.splitlines() if line.startswith("| 64x64 |")]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[1] == "3"  # pairs
    assert cells[4].count("x") == 3  # min / median / max ratios
    assert "MAX_CONCURRENT_JOBS=1" in done.stdout
    assert "Command:" in done.stdout


def test_a_folder_without_handler_py_is_refused(tmp_path: Path) -> None:
    done = run_ab(tmp_path, "--other", str(tmp_path))
    assert done.returncode == 2
    assert "holds no handler.py" in done.stderr
