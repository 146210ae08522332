"""The worker's patches against the real engine: each applies to the pinned ComfyUI, and
with every one that can be off switched off the worker still runs a job, as plain ComfyUI."""

from __future__ import annotations

import sys
from pathlib import Path

from engine.runtime.comfy import ComfyRuntime
from engine.runtime.patches import NAMES, REGISTRY
from tests.engine.support import ENGINE_MARKS, extra_custom_nodes, run_script

pytestmark = ENGINE_MARKS


def test_every_patch_finds_its_shape_in_the_pinned_comfyui(runtime: ComfyRuntime) -> None:
    patches = runtime.patches
    assert patches is not None
    assert patches.skipped == {}
    # VideoHelperSuite patches at import, so it loads at boot or not at all (absent, or it
    # cannot import here): without it deferred_vhs waits for its node for good.
    vhs = "VHS_VideoCombine" in sys.modules["nodes"].NODE_CLASS_MAPPINGS
    assert patches.waiting == ([] if vhs else ["deferred_vhs"])
    assert set(patches.applied) | set(patches.not_in_use) | set(patches.waiting) == set(NAMES)
    packs = extra_custom_nodes()
    if packs is not None and (packs / "ComfyUI-ReActor").is_dir():
        assert patches.is_applied("reactor_restorers")


def test_with_every_patch_off_the_worker_runs_the_test_job_as_plain_comfyui(
    tmp_path: Path,
) -> None:
    """``python handler.py`` (test_input.json: LoadImage, SaveImage, a video) with
    COMFY_PATCHES_OFF naming every patch that can be off."""
    off = [p.name for p in REGISTRY if p.can_skip]
    done = run_script(tmp_path, "INFO", "handler.py", env={"COMFY_PATCHES_OFF": ",".join(off)})
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-5000:]
    assert "Job local_test completed successfully." in log
    assert f"in force: headless_server; off: {', '.join(off)}" in log
    assert "skipped" not in log.split("patches to ComfyUI and packs", 1)[1].splitlines()[0]
