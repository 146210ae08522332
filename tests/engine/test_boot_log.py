"""``python handler.py`` with the shipped test_input.json on the real engine, and the boot
log it writes at the guide's default level (COMFY_LOG_LEVEL=DEBUG): told in few lines;
and what the boot leaves frozen under ``--rp_serve_api``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.engine.support import COMFYUI_PATH, ENGINE_MARKS, run_script

pytestmark = ENGINE_MARKS


def test_handler_runs_test_input_json_and_boots_in_a_readable_log(tmp_path: Path) -> None:
    done = run_script(tmp_path, "DEBUG", "handler.py")
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-5000:]
    assert "Job local_test completed successfully." in log
    # ComfyUI's line per model search path, told as one.
    assert "Adding extra search path" not in log
    assert "extra model search paths added" in log
    # torio's FFmpeg probing: one-liners, no tracebacks (torchaudio may be absent). A pack
    # of the checkout's own custom_nodes/ that cannot import in this venv (a ComfyUI you
    # already run, its packs' requirements not installed here) gets ComfyUI's traceback
    # and the worker's line naming the pack and the missing module: that is its problem.
    assert "Traceback" not in _without_pack_import_failures(log)
    if "torio._extension.utils" in log:
        assert "found no FFmpeg 4-6 libraries" in log
    boot = log.split("engine.worker: worker ready", 1)[0].splitlines()
    # 73 lines measured without packs (211 before the summaries); the packs of the
    # checkout's own custom_nodes/ add theirs.
    if not any(p.is_dir() for p in (COMFYUI_PATH / "custom_nodes").iterdir()):
        assert len(boot) <= 100, "\n".join(boot)


def _without_pack_import_failures(log: str) -> str:
    """``log`` less each block from a ``Traceback`` line to ComfyUI's "Cannot import
    <pack> module for custom nodes" line, where the worker names that pack too."""
    kept: list[str] = []
    block: list[str] = []
    for line in log.splitlines():
        if "Traceback (most recent call last)" in line:
            kept.extend(block)
            block = [line]
        elif block and "Cannot import " in line and "module for custom nodes" in line:
            pack = line.split("Cannot import ", 1)[1].split(" module for custom nodes", 1)[0]
            if f"node pack {pack} failed to import" not in log:
                kept.extend(block)
            block = []
        elif block:
            block.append(line)
        else:
            kept.append(line)
    return "\n".join(kept + block)


def test_comfy_log_level_reaches_the_job_command(tmp_path: Path) -> None:
    """scripts/run_job.py logs at COMFY_LOG_LEVEL, as the worker does."""
    out = str(tmp_path / "out")
    done = run_script(tmp_path, "WARNING", "scripts/run_job.py", "test_input.json", "--out", out)
    assert done.returncode == 0, done.stderr[-5000:]
    assert " INFO " not in done.stderr  # no INFO line from the worker or ComfyUI
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "blink_00001_.mp4",
        "inverted_00001_.png",
    ]


@pytest.fixture(autouse=True)
def _no_developer_runpod(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK runs test_input.json only off RunPod (no RUNPOD_WEBHOOK_GET_JOB)."""
    monkeypatch.delenv("RUNPOD_WEBHOOK_GET_JOB", raising=False)


def test_the_local_api_servers_modules_are_frozen_with_the_boot(tmp_path: Path) -> None:
    """``--rp_serve_api``: the SDK's server modules are imported before the boot freezes
    what lives as long as the process, so the collection between jobs skips them."""
    script = "\n".join(
        [
            "import gc, sys",
            "sys.argv = ['handler.py', '--rp_serve_api']",
            "import handler",
            "handler._start()",
            "assert handler._worker is not None, handler._boot_error",
            "from runpod.serverless.modules import rp_fastapi",
            "tracked = {id(o) for o in gc.get_objects()}",  # frozen objects are not listed
            "print('tracked:', id(rp_fastapi.WorkerAPI) in tracked, id(vars(rp_fastapi)) in tracked)",
        ]
    )
    done = run_script(tmp_path, "WARNING", "-c", script)
    assert done.returncode == 0, done.stderr[-5000:]
    assert "tracked: False False" in done.stdout, done.stdout[-2000:]
