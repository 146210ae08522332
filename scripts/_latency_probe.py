"""The child process of ``bench_latency_parts.py``: a handler behind the runpod SDK's local
API server that notes where each job's time goes, one JSON line per job.

``python _latency_probe.py worker --rp_serve_api ...`` (run from a checkout's root) runs
that checkout's ``handler.py`` as its ``__main__``, with the handler and ``Worker.run``
timed, and the steps ``Worker.run`` calls looked up by name and timed (wall and the
thread's CPU time). ``python _latency_probe.py floor --rp_serve_api ...`` serves a handler
that does nothing but return an answer of ``PROBE_ANSWER_BYTES`` of base64 text: the time
the SDK's server, HTTP and the client take around any handler.

Times are ``time.perf_counter()``: ``CLOCK_MONOTONIC`` on Linux, one clock for every
process on the machine, so the client subtracts its own send and receive times from them.
"""

from __future__ import annotations

import functools
import json
import os
import runpy
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Steps of Worker.run, by the name engine.worker calls them (module functions) or the
# class that holds them: a step that is not there (renamed) is just not reported.
_WORKER_FUNCTIONS = ("parse_request", "store_images", "collect_outputs")
_WORKER_METHODS = ("_job_spec", "_deliver")
_RUNTIME_METHODS = ("validate", "run")


def _write(record: dict[str, Any]) -> None:
    with Path(os.environ["PROBE_LOG"]).open("a", encoding="utf-8") as log:
        log.write(json.dumps(record) + "\n")


def _floor() -> None:
    import runpod

    data = "A" * int(os.environ.get("PROBE_ANSWER_BYTES", "11000"))

    async def handler(job: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        answer = {
            "images": [{"filename": "probe.png", "type": "base64", "data": data}],
            "errors": [],
            "stats": {"total_s": 0.0},
        }
        _write({"in": started, "out": time.perf_counter()})
        return answer

    sys.argv = [sys.argv[0], *sys.argv[2:]]
    runpod.serverless.start({"handler": handler})


def _worker() -> None:
    sys.path.insert(0, str(Path.cwd()))  # the checkout's engine package
    import runpod.serverless

    steps: dict[str, list[float]] = {}

    def timed(owner: Any, name: str, key: str) -> None:
        function: Callable[..., Any] | None = getattr(owner, name, None)
        if function is None:
            return

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                spent = steps.setdefault(key, [0.0, 0.0])
                spent[0] += time.perf_counter() - wall
                spent[1] += time.thread_time() - cpu

        setattr(owner, name, wrapper)

    import engine.worker
    from engine.runtime.comfy import ComfyRuntime

    for name in _WORKER_FUNCTIONS:
        timed(engine.worker, name, name)
    for name in _WORKER_METHODS:
        timed(engine.worker.Worker, name, name.lstrip("_"))
    for name in _RUNTIME_METHODS:
        timed(ComfyRuntime, name, f"runtime.{name}")
    timed(engine.worker.Worker, "run", "Worker.run")
    serve = runpod.serverless.start

    def start(config: dict[str, Any]) -> None:
        handler = config["handler"]

        async def probed(job: dict[str, Any]) -> dict[str, Any]:
            steps.clear()
            started = time.perf_counter()
            answer: dict[str, Any] = await handler(job)
            ended = time.perf_counter()
            _write({"in": started, "out": ended, "steps": dict(steps)})
            return answer

        serve({**config, "handler": probed})

    runpod.serverless.start = start
    sys.argv = ["handler.py", *sys.argv[2:]]
    runpy.run_path("handler.py", run_name="__main__")


if __name__ == "__main__":
    _floor() if sys.argv[1] == "floor" else _worker()
