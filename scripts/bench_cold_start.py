#!/usr/bin/env python3
"""Cold start: a fresh worker process against a fresh ComfyUI server, to the first job.

Worker: a child process does what ``handler.py`` does before RunPod's loop starts
(import the runpod SDK and the engine, build the settings, ``Worker.boot()``, which
imports torch and ComfyUI and initialises every node), then runs one 64x64 job
(LoadImage -> ImageInvert -> SaveImage, base64 in and out). The runtime's own boot
timings split the boot into torch import, ComfyUI import and node init.

Server: ComfyUI's ``main.py`` in a child process, polled with ``GET /prompt`` every
10 ms until it answers (its routes are up and its prompt worker takes prompts),
then the same job through HTTP + WebSocket. Its log lines, stamped as they arrive,
mark its own phases.

Times are from just before the process is spawned. Files are in the page cache
(one untimed start of each first): this is a process cold start, not a disk one.

    COMFYUI_PATH=/path/to/ComfyUI python scripts/bench_cold_start.py
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

# The child's report on stdout starts with this, so log lines cannot be mistaken for it.
_REPORT_PREFIX = "BENCH-COLD-START "
_CHILD_TIMEOUT_S = 300.0


def child_main(spec_path: Path) -> int:
    """In the child: boot the worker as ``handler.py`` does, run one job, print the times."""
    main_at = time.time()
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    sys.path.insert(0, spec["repo"])  # the engine package, as for handler.py at the repo root

    started = time.perf_counter()
    # The real entry point: it patches the SDK's slow CPU probe, then imports the SDK.
    import handler  # noqa: F401

    sdk_s = time.perf_counter() - started
    started = time.perf_counter()
    from engine import logs
    from engine.settings import Settings
    from engine.worker import Worker

    engine_s = time.perf_counter() - started

    started = time.perf_counter()
    settings = Settings.from_env(os.environ)
    logs.configure(settings.comfy_log_level, settings.secrets())
    worker = Worker.from_settings(settings)
    worker.boot()
    boot_s = time.perf_counter() - started
    ready_at = time.time()

    started = time.perf_counter()
    response = worker.handle({"id": "cold-start", "input": spec["job_input"]})
    job_s = time.perf_counter() - started
    done_at = time.time()

    report = {
        "main_at": main_at,
        "ready_at": ready_at,
        "done_at": done_at,
        "sdk_import_s": sdk_s,
        "engine_import_s": engine_s,
        "boot_s": boot_s,
        "boot_timings": dict(getattr(worker.runtime, "boot_timings", {})),
        "first_job_s": job_s,
        "ok": "error" not in response and len(response.get("images", [])) == 1,
        "error": response.get("error"),
    }
    print(_REPORT_PREFIX + json.dumps(report), flush=True)
    return 0


# -- the parent -------------------------------------------------------------------------

WORKER_ROWS = (
    ("interpreter start", "interpreter"),
    ("handler.py import (runpod SDK)", "sdk_import"),
    ("engine import (after handler.py: cached)", "engine_import"),
    ("torch import", "torch_import"),
    ("ComfyUI import", "comfy_import"),
    ("node init", "node_init"),
    ("rest of boot", "boot_rest"),
    ("first 64x64 job", "first_job"),
)
SERVER_MARKS = (
    ("torch + ComfyUI core imported (log: 'Total VRAM')", "Total VRAM"),
    ("nodes initialised (log: 'Import times for custom nodes')", "Import times for custom nodes"),
    ("listening (log: 'To see the GUI')", "To see the GUI"),
)


def run_worker(
    checkout: Path, root: Path, job_input: dict[str, Any], timeout_s: float
) -> dict[str, float]:
    """Start one worker process, let it boot and run the job; its times in seconds."""

    root.mkdir(parents=True)
    spec = root / "spec.json"
    repo = Path(__file__).resolve().parents[1]
    spec.write_text(json.dumps({"repo": str(repo), "job_input": job_input}), encoding="utf-8")
    env = {
        key: value
        for key, value in os.environ.items()
        # Base64 delivery, no warm-up workflow, no RunPod: the plain worker.
        if not key.startswith(("BUCKET_", "RUNPOD_")) and key not in {"WARMUP_WORKFLOW"}
    }
    env.update(COMFYUI_PATH=str(checkout), WORKER_DIR=str(root / "work"), COMFY_LOG_LEVEL="INFO")
    from _bench_common import run_child

    report, spawned_at = run_child(
        [sys.executable, str(Path(__file__).resolve()), "--child", str(spec)],
        cwd=root,
        env=env,
        log_path=root / "worker.log",
        prefix=_REPORT_PREFIX,
        timeout_s=timeout_s,
        what="the worker process",
    )
    if not report["ok"]:
        raise RuntimeError(f"the worker's first job failed: {report['error']}")
    boot = report["boot_timings"]
    phases = {
        "interpreter": report["main_at"] - spawned_at,
        "sdk_import": report["sdk_import_s"],
        "engine_import": report["engine_import_s"],
        "torch_import": boot.get("torch_import", float("nan")),
        "comfy_import": boot.get("comfy_import", float("nan")),
        "node_init": boot.get("node_init", float("nan")),
        "first_job": report["first_job_s"],
        "ready": report["ready_at"] - spawned_at,
        "done": report["done_at"] - spawned_at,
    }
    named = phases["torch_import"] + phases["comfy_import"] + phases["node_init"]
    phases["boot_rest"] = report["boot_s"] - named
    phases["ready_without_sdk"] = phases["ready"] - phases["sdk_import"]
    return phases


def run_server(
    checkout: Path, root: Path, job_input: dict[str, Any], cpu: bool, timeout_s: float
) -> dict[str, float]:
    """Start ComfyUI's server, wait for its first answer, run the job; times in seconds."""
    from _bench_common import ComfyServer, HttpComfyClient

    server = ComfyServer(sys.executable, checkout, root)
    try:
        server.start(cpu=cpu)
        ready_at = server.wait_ready(timeout_s)
        client = HttpComfyClient(server.base_url)
        try:
            job_started = time.perf_counter()
            result = client.run(job_input)
            first_job = time.perf_counter() - job_started
            done_at = time.time()
        finally:
            client.close()
        if len(result.response["images"]) != 1:
            raise RuntimeError(f"the server's first job returned {result.response}")
        phases = {
            "ready": ready_at - server.started_at,
            "first_job": first_job,
            "done": done_at - server.started_at,
        }
        phases.update({f"job {k}": v / 1000 for k, v in result.phases_ms.items()})
        for _, needle in SERVER_MARKS:
            stamp = server.log_time(needle)
            phases[needle] = float("nan") if stamp is None else stamp - server.started_at
        return phases
    except Exception:
        print(f"server log, last lines:\n{server.log_tail()}", file=sys.stderr)
        raise
    finally:
        server.stop()


def probe_torch() -> tuple[str, bool, str]:
    """torch's version, whether CUDA works, the GPU's name: asked of a child process.

    Also reads torch's files into the page cache before anything is timed.
    """
    import subprocess

    code = (
        "import json, torch; c = torch.cuda.is_available(); "
        "print(json.dumps([torch.__version__, c, torch.cuda.get_device_name(0) if c else '']))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    ).stdout
    version, cuda, name = json.loads(out.strip().splitlines()[-1])
    return str(version), bool(cuda), str(name)


def report(
    worker_runs: list[dict[str, float]],
    server_runs: list[dict[str, float]],
    machine: list[str],
    warmup: int,
) -> str:
    """The Markdown report: the headline table, each side's phases, the machine, the command."""
    from _bench_common import fmt_ms, markdown_table, report_footer

    def cell(runs: list[dict[str, float]], key: str) -> str:
        values = [r[key] for r in runs if not math.isnan(r[key])]
        if not values:
            return "n/a"
        return f"{min(values):.2f} / **{statistics.median(values):.2f}**"

    def cell_ms(runs: list[dict[str, float]], key: str) -> str:
        values = [r[key] * 1000 for r in runs if not math.isnan(r[key])]
        if not values:
            return "n/a"
        return f"{fmt_ms(min(values))} / **{fmt_ms(statistics.median(values))}**"

    headline = markdown_table(
        ["from process start, s (min / **median**)", "worker in-process", "ComfyUI server"],
        [
            ["ready: first job can run (worker booted / GET /prompt answers)",
             cell(worker_runs, "ready"), cell(server_runs, "ready")],
            ["ready, not counting the handler.py import (worker)",
             cell(worker_runs, "ready_without_sdk"), cell(server_runs, "ready")],
            ["first 64x64 job, its own latency",
             cell(worker_runs, "first_job"), cell(server_runs, "first_job")],
            ["first 64x64 job done", cell(worker_runs, "done"), cell(server_runs, "done")],
        ],
    )  # fmt: skip
    worker_table = markdown_table(
        ["worker phase", "s (min / **median**)"],
        [[label, cell(worker_runs, key)] for label, key in WORKER_ROWS],
    )
    server_table = markdown_table(
        ["server milestone, from process start", "s (min / **median**)"],
        [[label, cell(server_runs, needle)] for label, needle in SERVER_MARKS]
        + [["answers GET /prompt", cell(server_runs, "ready")]],
    )
    job_keys = [k for k in server_runs[0] if k.startswith("job ")] if server_runs else []
    server_job = markdown_table(
        ["server's first job, step", "ms (min / **median**)"],
        [[key.removeprefix("job "), cell_ms(server_runs, key)] for key in job_keys],
    )
    lines = [
        "### Cold start: worker in-process vs ComfyUI server",
        "",
        headline,
        "",
        f"{len(worker_runs)} start(s) of each, taking turns, after {warmup} untimed start(s) "
        "of each (files in the page cache).",
        "",
        "Worker phases: `interpreter start` is spawn -> the child's first line; torch import, "
        "ComfyUI import and node init are the runtime's own boot timings; `rest of boot` "
        "is the rest of `Worker.boot()` (paths, model folders, executor, gc freeze).",
        "",
        worker_table,
        "",
        "Server milestones: when each of its log lines was read from its output.",
        "",
        server_table,
        "",
        server_job,
        "",
        *report_footer(machine),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its Markdown report."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--comfyui",
        default=os.environ.get("COMFYUI_PATH"),
        help="the ComfyUI checkout (default: $COMFYUI_PATH, else comfyui/ComfyUI)",
    )
    parser.add_argument("--repeat", type=int, default=5, help="timed starts of each (5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed starts of each first (1)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        return child_main(args.child)
    if args.repeat < 1 or args.warmup < 0:
        parser.error("--repeat must be at least 1, --warmup at least 0")

    from _bench_common import JOB_KINDS, comfyui_checkout, load_average, machine_lines, temp_root

    checkout = comfyui_checkout(args.comfyui)
    load_before = load_average()
    kind = JOB_KINDS["64"]
    started = time.perf_counter()
    with temp_root("bench-cold-start-") as root:
        torch_version, cuda, gpu = probe_torch()
        worker_runs: list[dict[str, float]] = []
        server_runs: list[dict[str, float]] = []
        for i in range(args.warmup + args.repeat):
            timed = i >= args.warmup
            order = ("worker", "server") if i % 2 == 0 else ("server", "worker")
            for side in order:
                job_input = kind.job_input(i, prefix=f"cold-{i}/bench")
                folder = root / f"{side}-{i}"
                label = f"{'start' if timed else 'warm-up start'} {i + 1}: {side}"
                print(label, file=sys.stderr)
                if side == "worker":
                    run = run_worker(checkout, folder, job_input, _CHILD_TIMEOUT_S)
                    if timed:
                        worker_runs.append(run)
                else:
                    folder.mkdir()
                    run = run_server(checkout, folder, job_input, not cuda, _CHILD_TIMEOUT_S)
                    if timed:
                        server_runs.append(run)
        device = gpu if cuda else "CPU only, no GPU"
        machine = machine_lines(checkout, torch_version, device, load_before)
        print(report(worker_runs, server_runs, machine, args.warmup))
    print(f"\n(total {time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the temp folders and the server are gone by now
        print("interrupted", file=sys.stderr)
        sys.exit(130)
