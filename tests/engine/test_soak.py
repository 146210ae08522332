"""Many jobs in a row: the worker's memory and folders must not grow."""

from __future__ import annotations

import gc
import shutil

from engine.runtime import JobSpec
from engine.runtime.comfy import ComfyRuntime
from tests.engine.support import ENGINE_MARKS, files_of, gradient_rgb, invert_workflow, node

pytestmark = ENGINE_MARKS

_SIZE = 512
# A job leaking one 512x512 float image (3 MB) would add 150 MB over 50 jobs.
_MAX_GROWTH_BYTES = 64 * 2**20


def _one_job(runtime: ComfyRuntime, i: int) -> None:
    """What the worker does per job: input in, run, deliver, delete, after_job."""
    dirs = runtime.directories
    name = f"soak-{i}.png"
    gradient_rgb(_SIZE, _SIZE, seed=i).save(dirs.input / name)
    workflow = invert_workflow(name, f"soak-{i}/out")
    workflow["4"] = node("PreviewImage", images=["2", 0])
    result = runtime.run(JobSpec(prompt_id=f"soak-{i}", workflow=workflow))
    paths = files_of(result, dirs)
    assert len(paths) == 2 and all(p.is_file() for p in paths)
    shutil.rmtree(dirs.output / f"soak-{i}")
    (dirs.input / name).unlink()
    runtime.after_job()


def test_fifty_jobs_in_a_row_keep_memory_and_folders_flat(runtime: ComfyRuntime) -> None:
    """RSS after 50 more jobs stays within a bound; output and temp folders end empty."""
    import psutil  # ComfyUI's requirement, not the worker's

    process = psutil.Process()
    for i in range(10):  # allocator pools and ComfyUI's caches settle first
        _one_job(runtime, i)
    gc.collect()
    baseline = process.memory_info().rss
    peak = baseline
    for i in range(10, 60):
        _one_job(runtime, i)
        peak = max(peak, process.memory_info().rss)
    gc.collect()
    growth = process.memory_info().rss - baseline
    assert growth < _MAX_GROWTH_BYTES, f"RSS grew {growth / 2**20:.0f} MiB over 50 jobs"
    dirs = runtime.directories
    assert not [p for p in dirs.output.rglob("soak-*")]
    assert not any(dirs.temp.iterdir())
    assert not list(dirs.input.glob("soak-*"))
    assert peak - baseline < 4 * _MAX_GROWTH_BYTES
