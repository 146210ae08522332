"""RunPod entry point: boot the in-process ComfyUI worker once, then serve jobs.

``python handler.py`` starts the worker under RunPod's queue;
``python handler.py --rp_serve_api --rp_api_port 8000`` serves the same handler
through the runpod SDK's local API server (``/run``, ``/runsync``, ``/status``).
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import logging
import os
import platform
import sys
import threading
from typing import Any

# The imports below allocate objects that live as long as the process; collecting cycles
# while they load only walks them again and again (the boot pauses collection the same
# way: engine.runtime.comfy_boot.collection_paused; docs/benchmarks.md). Back on after.
gc.disable()

import cpuinfo  # noqa: E402

# runpod 1.12 calls py-cpuinfo at import (serverless/utils/rp_debugger.py), which runs
# a second Python interpreter: ~1.1 s of every cold start, for a CPU name that only the
# SDK's --rp_debugger output shows. The platform's own answer is enough there.
cpuinfo.get_cpu_info = lambda: {"brand_raw": platform.processor() or platform.machine()}

from engine.settings import Settings, sdk_log_level, secrets_in_env  # noqa: E402

# The environment as the worker was started: what Settings reads. The runpod SDK reads
# RUNPOD_LOG_LEVEL once, when imported: DEBUG without it (a local test job printed whole,
# its keys included) and a traceback for a name it does not know. So it gets a valid
# level first, before anything can fail; a bad value is still named to every job.
_ENV = dict(os.environ)
os.environ["RUNPOD_LOG_LEVEL"] = sdk_log_level(_ENV)

import runpod  # noqa: E402  (after the patch and the level above, on purpose)
from runpod.serverless.modules.rp_logger import RunPodLogger  # noqa: E402

from engine import logs  # noqa: E402
from engine.errors import RuntimeBootError, WorkerError, new_incident, without_paths  # noqa: E402
from engine.worker import Worker  # noqa: E402

if "--rp_serve_api" in sys.argv:
    # The SDK imports its local API server (FastAPI, Starlette, pydantic models: objects
    # that live as long as the process) only when it starts serving,
    # after the boot has frozen what was imported (gc.freeze, comfy_boot.import_comfy).
    # Imported now, they are frozen with the rest, and the collection the runtime runs
    # between jobs does not walk them every time.
    import runpod.serverless.modules.rp_fastapi

# The SDK prints with print(), past logging's filters: its lines are redacted on their own,
# with the environment's secrets known from here on, whatever the settings make of them.
logs.add_secrets(secrets_in_env(_ENV))
logs.guard_sdk_logger(RunPodLogger())

gc.enable()

log = logging.getLogger("handler")

_worker: Worker | None = None
_boot_error: WorkerError | None = None


def _start() -> None:
    """Build and boot the worker once; a failure is kept and reported by every job."""
    global _worker, _boot_error
    try:
        settings = Settings.from_env(_ENV)
        logs.configure(settings.comfy_log_level, settings.secrets())
        progress = runpod.serverless.progress_update if settings.on_runpod else None
        worker = Worker.from_settings(settings, progress=progress)
        worker.boot()
        _worker = worker
        # The files of answered jobs go before the process does (Worker.close): the SDK
        # exits right after a test_input.json job, before its files are removed.
        atexit.register(worker.close)
    except WorkerError as exc:
        _boot_error = exc
    except Exception as exc:  # ComfyUI itself failed to import or initialise
        incident = new_incident()
        log.exception("the ComfyUI runtime failed to start (%s)", incident)
        _boot_error = RuntimeBootError(
            f"ComfyUI failed to start on this worker; see the worker's logs ({incident})",
            [without_paths(f"{type(exc).__name__}: {exc}")],
        )
    if _boot_error is not None:
        logs.configure()
        log.error("worker cannot run jobs: %s", _boot_error.summary())


async def handler(job: dict[str, Any]) -> dict[str, Any]:
    """RunPod's handler: one job in, the contract's response out.

    Async on purpose: the job runs on a thread of the worker's, and the runpod SDK's
    event loop waits for it without blocking, so it stays free to notice a cancel
    (RunPod's stop signal for ``/cancel/{id}``) and cancel this coroutine, which then
    cancels the job (``Worker.handle_async``): a download, the run or a delivery stops
    instead of letting a cancelled job hold the GPU to the end. The SDK's local API
    server (``--rp_serve_api``) has no cancel route.
    """
    if _worker is None and _boot_error is None:
        _start()
    if _worker is None:
        assert _boot_error is not None
        # refresh_worker asks RunPod to replace this worker after the job.
        return {**_boot_error.to_response(), "refresh_worker": True}
    answered = threading.Event()
    try:
        # The job runs on its lane; this loop waits for it (Worker.handle_async).
        return await _worker.handle_async(job, clean_up_after=answered)
    except asyncio.CancelledError:
        # The SDK cancels this task on RunPod's stop signal (/cancel, or the endpoint's
        # execution timeout); handle_async has cancelled the job, in whatever phase.
        log.warning("job %s cancelled: stopping it", job.get("id"))
        raise
    finally:
        # The job's files go once its answer has gone on: the SDK's local API server
        # serialises and writes the response from this same task, before the event loop
        # runs what call_soon queues (RunPod's queue has started its result POST by then).
        # Removed before the answer, they made a 64x64 job 1.10x slower per pair on 2
        # cores (docs/benchmarks.md, "The 64x64 job's time").
        asyncio.get_running_loop().call_soon(answered.set)


def concurrency(current: int) -> int:
    """The runpod SDK's ``concurrency_modifier``: how many jobs this worker takes at once.

    ``MAX_CONCURRENT_JOBS`` (default 2): one job's inputs and delivery overlap another's
    run, and the worker runs their workflows one at a time, in arrival order
    (engine/pipeline.py). A worker that failed to boot takes one at a time: each gets
    the boot error. The SDK's local API server does not ask: it hands every request over
    at once, and the worker holds the same number, the others waiting their turn.
    """
    del current
    return _worker.settings.max_concurrent_jobs if _worker is not None else 1


if __name__ == "__main__":
    # Boot before taking jobs, so FlashBoot snapshots a warm engine and the first
    # job does not pay for importing torch and ComfyUI.
    _start()
    runpod.serverless.start({"handler": handler, "concurrency_modifier": concurrency})
