"""What a newcomer meets running the worker on their own machine, as real subprocesses:
the job command without ComfyUI, and a second local run on the same folders."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.e2e.conftest import REPO, worker_env


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def test_run_job_without_comfyui_says_how_to_install_it(tmp_path: Path) -> None:
    """``scripts/run_job.py`` on a checkout without ComfyUI: the hint handler.py gives,
    exit 2, no traceback."""
    env = worker_env(tmp_path / "work", {"COMFYUI_PATH": str(tmp_path / "no-comfyui")})
    del env["WORKER_RUNTIME"]  # the real runtime: it looks for ComfyUI and finds none
    done = run(["scripts/run_job.py", "test_input.json", "--out", str(tmp_path / "out")], env)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "No ComfyUI checkout found" in done.stderr
    assert "scripts/setup.sh --with-comfyui" in done.stderr or "COMFYUI_PATH" in done.stderr


def test_a_clean_run_leaves_nothing_the_next_boot_blames_on_a_killed_job(tmp_path: Path) -> None:
    """``python handler.py`` twice on the same WORKER_DIR (the local default is shared):
    the second boot finds no "files that killed jobs left behind"."""
    env = worker_env(tmp_path / "work", {})
    first = run(["handler.py"], env)
    assert first.returncode == 0, first.stdout + first.stderr
    second = run(["handler.py"], env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "killed jobs left behind" not in second.stdout + second.stderr
    leftovers = [p for p in (tmp_path / "work").rglob("*") if p.is_file()]
    assert leftovers == []
