#!/usr/bin/env python3
"""Per-job latency: the worker with ComfyUI in-process against ComfyUI's own server.

``--peer DIR`` (a worker-comfyui checkout; the figures to quote): both sides run as
their containers run them, each behind the runpod SDK's local API server, and one
client sends each the same ``POST /runsync``, the sides taking turns. Ours:
``python handler.py --rp_serve_api``. worker-comfyui: its unchanged ``handler.py``
beside ComfyUI's ``main.py`` with its ``src/start.sh``'s flags
(``_bench_common.PeerSide`` says what differs). The time is the ``/runsync`` round
trip as the client sees it.

``--emulate`` (how rounds 1-2 measured; its ratios overstate the worker's lead: the real
handler took 24.5 ms at 64x64 in round 3, the emulation 46 ms): as below.

Both paths run on the same ComfyUI checkout, on this machine, with the same job
input (a workflow and a base64 PNG) and the same result (every output as a
base64 data URI):

- worker: ``Worker.handle(job)`` with the real ``ComfyRuntime``, the full job path
  (request parse -> input image stored -> ComfyUI validate + execute -> outputs ->
  base64). ``runtime.run()``, the ComfyUI part, is reported on its own too.
- server: ``main.py`` in a child process, started with worker-comfyui's flags and
  driven as worker-comfyui's handler drives it (``_bench_common.HandlerClient``):
  ``GET /``, ``POST /upload/image``, WebSocket ``/ws?clientId=``, ``POST /prompt``,
  wait for ``executing`` with ``node=None``, ``GET /history/<id>``, ``GET /view``
  and base64 per file, each request on a new connection.

Prompt metadata is off on both (the server's ``--disable-metadata``, the worker's
``OUTPUT_METADATA=false``); ``--packs`` loads the same packs into both.

Jobs: LoadImage -> ImageInvert -> SaveImage at 64x64 and 512x512, and LoadImage
(1024x1024) -> RepeatImageBatch(4) -> ImageInvert -> SaveImage. Every run loads a
different image (LoadImage's cache key is a hash of the file), so ComfyUI runs
every node every time; every server run also gets its own ``filename_prefix``
folder, as each worker job does. Warm-up runs first, then the timed runs, the two
paths taking turns (A B A B) so drift of a shared machine hits both alike; each
pair gives a ratio (server / worker), reported as min / median / max. ``--memory-jobs N``
then runs N more worker jobs (the three kinds in turn) and prints the worker's resident
memory as it goes.

    COMFYUI_PATH=/path/to/ComfyUI python scripts/bench_latency.py --packs DIR \
        --peer WORKER_COMFYUI_DIR --peer-site DIR_WITH_WEBSOCKET_CLIENT
    COMFYUI_PATH=/path/to/ComfyUI python scripts/bench_latency.py --packs DIR --emulate
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import math
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from _bench_common import (
    JOB_KINDS,
    ApiProcess,
    ComfyServer,
    HandlerClient,
    JobKind,
    PeerCheckout,
    PeerSide,
    check_outputs,
    clean_env,
    comfyui_checkout,
    fmt_ms,
    load_average,
    machine_lines,
    markdown_table,
    our_side,
    pack_names,
    packs_config,
    peer_checkout,
    peer_lines,
    preload_client_modules,
    probe_torch,
    ratio_cell,
    report_footer,
    rss_mib,
    same_pixels,
    summary,
    temp_root,
    timed,
)

if TYPE_CHECKING:
    from engine.runtime import Directories, JobSpec, RunResult
    from engine.runtime.comfy import ComfyRuntime
    from engine.worker import Worker

WORKER_PHASES = (
    "inputs",
    "runtime.run()",
    "validate",
    "execute",
    "outputs",
    "base64",
    "after_job()",
    "other",
)
"""``inputs``: decode, verify and store the input image; ``outputs``: find and type the
output files; ``other``: request parse, job folders, logging (the rest of ``handle``)."""
# The steps of ``Worker.run`` timed by name, where engine.worker calls them.
_WORKER_STEPS = {"store_images": "inputs", "collect_outputs": "outputs", "deliver": "base64"}
SERVER_PHASES = (
    "check server",
    "upload",
    "ws connect",
    "POST /prompt",
    "wait done",
    "GET /history",
    "GET /view + base64",
    "server execution",
)


class TimedRuntime:
    """The real runtime, with the time of each ``run()`` and ``after_job()`` noted."""

    def __init__(self, inner: ComfyRuntime) -> None:
        self.inner = inner
        self.last: dict[str, float] = {}

    @property
    def directories(self) -> Directories:
        """The inner runtime's folders."""
        return self.inner.directories

    def boot(self) -> None:
        """Boot the inner runtime."""
        self.inner.boot()

    def file_inputs(self, class_type: str) -> frozenset[str]:
        """The inner runtime's answer."""
        return self.inner.file_inputs(class_type)

    def run(self, job: JobSpec) -> RunResult:
        """Run the job on the inner runtime, timing it."""
        result, ms = timed(lambda: self.inner.run(job))
        self.last["runtime.run()"] = ms
        self.last["validate"] = result.timings.get("validate_s", math.nan) * 1000
        self.last["execute"] = result.timings.get("execute_s", math.nan) * 1000
        return result

    def after_job(self) -> None:
        """The inner runtime's cleanup, timed."""
        _, self.last["after_job()"] = timed(self.inner.after_job)

    def __getattr__(self, name: str) -> Any:
        # The rest of the Runtime protocol (node definitions, cancel...), untimed.
        return getattr(self.inner, name)


@dataclass
class PathRuns:
    """The timed runs of one path for one job."""

    total_ms: list[float] = field(default_factory=list)
    phases_ms: list[dict[str, float]] = field(default_factory=list)

    def phase_median(self, name: str) -> float:
        """The median of one phase over the runs."""
        values = [p[name] for p in self.phases_ms if name in p and not math.isnan(p[name])]
        return statistics.median(values) if values else math.nan


@dataclass
class KindResult:
    """Both paths' runs of one job."""

    kind: JobKind
    worker: PathRuns = field(default_factory=PathRuns)
    server: PathRuns = field(default_factory=PathRuns)
    output_bytes: int = 0
    same_pixels: bool = False


def boot_worker(
    checkout: Path, work_dir: Path, log: TextIO, packs_yaml: Path | None
) -> tuple[Worker, TimedRuntime]:
    """The real worker with the real ComfyRuntime, booted; its log goes to ``log``.

    Wired as ``Worker.from_settings`` wires it for base64 delivery (no bucket), with
    the runtime wrapped to time its calls.
    """
    from engine import logs
    from engine.runtime.comfy import ComfyRuntime
    from engine.settings import Settings
    from engine.worker import Worker

    # A clean environment: base64 delivery (no bucket), and ComfyUI's log at INFO,
    # the level its server logs at by default.
    env = {
        "COMFYUI_PATH": str(checkout),
        "WORKER_DIR": str(work_dir),
        "COMFY_LOG_LEVEL": "INFO",
        "OUTPUT_METADATA": "false",  # as the server's --disable-metadata
    }
    if packs_yaml is not None:
        env["EXTRA_MODEL_PATHS"] = str(packs_yaml)
    settings = Settings.from_env(env)
    logs.configure(settings.comfy_log_level, settings.secrets())
    # The worker logs to a file, as the server's output goes to one.
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(log)
    runtime = TimedRuntime(ComfyRuntime(settings))
    worker = Worker(settings, runtime)
    worker.boot()
    return worker, runtime


@contextlib.contextmanager
def timed_worker_steps(runtime: TimedRuntime) -> Iterator[None]:
    """Note the time of the worker's own steps in ``runtime.last`` while the block runs.

    The functions ``engine.worker`` calls are wrapped where it looks them up, for the
    phase table only; a step that is not there (renamed) is just not reported.
    """
    import engine.worker

    def wrap(function: Callable[..., Any], phase: str) -> Callable[..., Any]:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            result, ms = timed(lambda: function(*args, **kwargs))
            runtime.last[phase] = ms
            return result

        return wrapper

    originals = {
        name: getattr(engine.worker, name) for name in _WORKER_STEPS if hasattr(engine.worker, name)
    }
    for name, function in originals.items():
        setattr(engine.worker, name, wrap(function, _WORKER_STEPS[name]))
    try:
        yield
    finally:
        for name, function in originals.items():
            setattr(engine.worker, name, function)


def run_worker(worker: Worker, runtime: TimedRuntime, kind: JobKind, seed: int) -> dict[str, Any]:
    """One job through the worker; its response, total and phase times."""
    job = {"id": f"bench-{kind.key}-{seed}", "input": kind.job_input(seed, prefix="bench")}
    runtime.last = {}
    response, total = timed(lambda: worker.handle(job))
    phases = dict(runtime.last)
    named = ("inputs", "runtime.run()", "outputs", "base64", "after_job()")
    phases["other"] = total - sum(phases.get(name, 0.0) for name in named)
    return {"response": response, "total": total, "phases": phases}


def run_server(client: HandlerClient, kind: JobKind, seed: int) -> dict[str, Any]:
    """One job through ComfyUI's server; its response, total and phase times."""
    prefix = f"run-{uuid.uuid4().hex[:12]}/bench"
    job_input = kind.job_input(seed, prefix=prefix)
    result, total = timed(lambda: client.run(job_input))
    return {"response": result.response, "total": total, "phases": result.phases_ms}


@dataclass(frozen=True)
class Plan:
    """How one job is measured."""

    warmup: int
    repeat: int
    seed_base: int
    pause_s: float
    """Idle time after each run, so one path's leftover work (the server logging, its
    periodic gc) does not land in the other path's next run."""


def bench_kind(
    worker: Worker,
    runtime: TimedRuntime,
    client: HandlerClient,
    kind: JobKind,
    plan: Plan,
) -> KindResult:
    """Warm-up, then ``plan.repeat`` timed pairs, worker then server (A B A B)."""
    result = KindResult(kind)
    for i in range(plan.warmup):
        check_outputs(kind, run_worker(worker, runtime, kind, plan.seed_base + i)["response"])
        check_outputs(kind, run_server(client, kind, plan.seed_base + i)["response"])
    for i in range(plan.repeat):
        seed = plan.seed_base + plan.warmup + i
        order = ("worker", "server")
        outputs: dict[str, list[bytes]] = {}
        for path in order:
            time.sleep(plan.pause_s)
            if path == "worker":
                run = run_worker(worker, runtime, kind, seed)
                runs = result.worker
            else:
                run = run_server(client, kind, seed)
                runs = result.server
            outputs[path] = check_outputs(kind, run["response"])
            runs.total_ms.append(run["total"])
            runs.phases_ms.append(run["phases"])
        if i == 0:
            # Same input, same nodes: the same pixels (PNG metadata holds the prefix).
            result.output_bytes = sum(len(o) for o in outputs["worker"])
            result.same_pixels = all(
                same_pixels(a, b) for a, b in zip(outputs["worker"], outputs["server"], strict=True)
            )
    return result


def spread(values: list[float]) -> str:
    """``min / **median** / p90 / max`` in ms."""
    low, median, p90 = summary(values)
    return f"{fmt_ms(low)} / **{fmt_ms(median)}** / {fmt_ms(p90)} / {fmt_ms(max(values))}"


def memory_run(worker: Worker, jobs: int) -> list[tuple[int, float, float]]:
    """``jobs`` more worker jobs, the kinds in turn; (jobs done, worker RSS, encoders' RSS) MiB.

    Sampled every tenth of the run. The encoders are the PNG encoder processes
    (engine/runtime/png_encoders.py), which live as long as the worker.
    """
    kinds = list(JOB_KINDS.values())
    step = max(1, jobs // 10)
    samples = [(0, rss_mib(), _encoders_rss_mib())]
    print(f"memory: {jobs} worker jobs", file=sys.stderr)
    for i in range(1, jobs + 1):
        kind = kinds[i % len(kinds)]
        job = {"id": f"mem-{i}", "input": kind.job_input(50_000 + i, prefix="mem")}
        check_outputs(kind, worker.handle(job))
        if i % step == 0 or i == jobs:
            samples.append((i, rss_mib(), _encoders_rss_mib()))
    return samples


def _encoders_rss_mib() -> float:
    from engine.runtime import fast_save

    pool = fast_save._pool
    if pool is None:
        return 0.0
    total = 0.0
    for encoder in list(pool._idle):
        with contextlib.suppress(OSError, ValueError, IndexError):
            statm = Path(f"/proc/{encoder.process.pid}/statm").read_text(encoding="utf-8")
            total += int(statm.split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return total


@dataclass
class PeerKind:
    """Both sides' ``/runsync`` round trips for one job (ms), and our own ``total_s``."""

    kind: JobKind
    ours: list[float] = field(default_factory=list)
    theirs: list[float] = field(default_factory=list)
    ours_total: list[float] = field(default_factory=list)
    output_bytes: int = 0
    same_pixels: bool = False


def peer_bench_kind(ours: ApiProcess, theirs: ApiProcess, kind: JobKind, plan: Plan) -> PeerKind:
    """Warm-up, then ``plan.repeat`` timed pairs, ours then theirs (A B A B)."""
    result = PeerKind(kind)

    def one(api: ApiProcess, seed: int) -> tuple[dict[str, Any], float]:
        # A folder of its own per run, as each job of ours gets (_bench_common.JobKind).
        job_input = kind.job_input(seed, prefix=f"run-{uuid.uuid4().hex[:12]}/bench")
        return timed(lambda: api.runsync(job_input))

    for i in range(plan.warmup):
        for api in (ours, theirs):
            check_outputs(kind, one(api, plan.seed_base + i)[0])
    for i in range(plan.repeat):
        seed = plan.seed_base + plan.warmup + i
        time.sleep(plan.pause_s)
        mine, mine_ms = one(ours, seed)
        time.sleep(plan.pause_s)
        peer, peer_ms = one(theirs, seed)
        outputs = [check_outputs(kind, mine), check_outputs(kind, peer)]
        result.ours.append(mine_ms)
        result.theirs.append(peer_ms)
        result.ours_total.append(float((mine.get("stats") or {}).get("total_s", math.nan)) * 1000)
        if i == 0:
            result.output_bytes = sum(len(o) for o in outputs[0])
            result.same_pixels = all(
                same_pixels(a, b) for a, b in zip(outputs[0], outputs[1], strict=True)
            )
    return result


def peer_main(args: argparse.Namespace, checkout: Path, peer: PeerCheckout) -> int:
    """``--peer``: both handlers behind the SDK's API server, jobs alternated pair by pair."""
    load_before = load_average()
    started = time.perf_counter()
    with temp_root("bench-latency-") as root:
        packs_yaml = packs_config(root, args.packs.resolve() if args.packs else None)
        torch_version, cuda, gpu = probe_torch()
        ours = our_side(sys.executable, checkout, root / "ours", clean_env(), packs_yaml)
        side = PeerSide(sys.executable, checkout, peer, root / "peer", clean_env(), packs_yaml)
        try:
            print("starting this worker and worker-comfyui ...", file=sys.stderr)
            ours.start()
            side.start_bound(cuda)
            assert side.api is not None
            ours.wait_listening()
            side.api.wait_listening()
            results = []
            for number, key in enumerate(args.jobs, start=1):
                kind = JOB_KINDS[key]
                repeat = args.repeat_large if kind.batch > 1 else args.repeat
                print(f"{kind.label}: {args.warmup} warm-up + {repeat} timed", file=sys.stderr)
                plan = Plan(args.warmup, repeat, 1000 * number, args.pause)
                results.append(peer_bench_kind(ours, side.api, kind, plan))
        except Exception:
            print(f"our log:\n{ours.log_tail()}", file=sys.stderr)
            print(f"peer handler log:\n{side.api.log_tail() if side.api else ''}", file=sys.stderr)
            print(f"peer ComfyUI log:\n{side.server.log_tail()}", file=sys.stderr)
            raise
        finally:
            ours.stop()
            side.stop()
        device = gpu if cuda else "CPU only, no GPU"
        machine = machine_lines(checkout, torch_version, device, load_before)
        print(peer_report(results, machine, args, pack_names(args.packs, checkout), peer))
    print(f"\n(total {time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return 0


def peer_report(
    results: list[PeerKind],
    machine: list[str],
    args: argparse.Namespace,
    packs: list[str],
    peer: PeerCheckout,
) -> str:
    """The Markdown report of a ``--peer`` run."""
    rows = []
    for r in results:
        pair_ratios = [t / o for o, t in zip(r.ours, r.theirs, strict=True)]
        rows.append(
            [
                r.kind.label,
                str(len(r.ours)),
                f"{r.output_bytes / 1024:.0f} KiB",
                spread(r.ours),
                fmt_ms(statistics.median(r.ours_total)),
                spread(r.theirs),
                ratio_cell(pair_ratios),
            ]
        )
    table = markdown_table(
        [
            "job (output)",
            "pairs",
            "output PNGs",
            "this worker, /runsync ms: min / **median** / p90 / max",
            "of which its stats.total_s, median ms",
            "worker-comfyui, /runsync ms: min / **median** / p90 / max",
            "worker-comfyui ÷ this worker per pair: min / **median** / max",
        ],
        rows,
    )
    checks = ", ".join(
        f"{r.kind.label}: {'same pixels' if r.same_pixels else 'PIXELS DIFFER'}" for r in results
    )
    return "\n".join(
        [
            "### Per-job latency: this worker against worker-comfyui's own handler",
            "",
            table,
            "",
            f"Warm-up: {args.warmup} job(s) of each side per kind, not counted. Outputs of the "
            f"first timed pair compared: {checks}. Packs on both sides: {', '.join(packs) or 'none'}.",
            "",
            *peer_lines(peer),
            "",
            *report_footer(machine),
        ]
    )


def report(
    results: list[KindResult],
    machine: list[str],
    args: argparse.Namespace,
    packs: list[str],
    memory: list[tuple[int, float, float]],
) -> str:
    """The Markdown report: the latency table, the phase breakdown, the machine, the command."""
    rows = []
    for r in results:
        w_med, s_med = (statistics.median(x) for x in (r.worker.total_ms, r.server.total_ms))
        pair_ratios = [s / w for s, w in zip(r.server.total_ms, r.worker.total_ms, strict=True)]
        rows.append(
            [
                r.kind.label,
                str(len(r.worker.total_ms)),
                f"{r.output_bytes / 1024:.0f} KiB",
                spread(r.worker.total_ms),
                fmt_ms(r.worker.phase_median("runtime.run()")),
                spread(r.server.total_ms),
                f"{s_med / w_med:.2f}x",
                ratio_cell(pair_ratios),
            ]
        )
    latency = markdown_table(
        [
            "job (output)",
            "runs",
            "output PNGs",
            "worker in-process, ms: min / **median** / p90 / max",
            "of which runtime.run(), median ms",
            "server + handler (HTTP + WS), ms: min / **median** / p90 / max",
            "server ÷ worker (medians)",
            "server ÷ worker per pair: min / **median** / max",
        ],
        rows,
    )
    phase_rows = []
    for r in results:
        phase_rows.append(
            [f"{r.kind.label} worker", *(fmt_ms(r.worker.phase_median(p)) for p in WORKER_PHASES)]
        )
    worker_phases = markdown_table(["job", *WORKER_PHASES], phase_rows)
    phase_rows = []
    for r in results:
        phase_rows.append(
            [f"{r.kind.label} server", *(fmt_ms(r.server.phase_median(p)) for p in SERVER_PHASES)]
        )
    server_phases = markdown_table(["job", *SERVER_PHASES], phase_rows)
    checks = ", ".join(
        f"{r.kind.label}: {'same pixels' if r.same_pixels else 'PIXELS DIFFER'}" for r in results
    )
    lines = [
        "### Per-job latency: worker in-process vs ComfyUI server (HTTP + WebSocket), emulated",
        "",
        "Our own stand-in for worker-comfyui's server and handler (`--emulate`): slower than "
        "the real handler, so these ratios overstate the worker's lead; `--peer DIR` runs "
        "the real one.",
        "",
        latency,
        "",
        f"Warm-up: {args.warmup} run(s) of each path per job, not counted. Outputs of the "
        f"first timed pair compared: {checks}. Packs on both sides: {', '.join(packs) or 'none'}.",
        "",
        "Worker phases (median ms): `inputs` = base64 decode, verify and store the input; "
        "`outputs` = find and type the files; `other` = request parse, job folders, logging.",
        "",
        worker_phases,
        "",
        "Server path phases (median ms): `server execution` is ComfyUI's own "
        "execution_start -> execution_success (ms timestamps in /history), inside `wait done`.",
        "",
        server_phases,
        "",
        *_memory_lines(memory),
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
    parser.add_argument(
        "--repeat", type=int, default=20, help="timed runs per path, 64x64 and 512x512 (20)"
    )
    parser.add_argument(
        "--repeat-large", type=int, default=6, help="timed runs per path, 4x1024x1024 (6)"
    )
    parser.add_argument("--warmup", type=int, default=3, help="uncounted runs first (3)")
    parser.add_argument(
        "--packs", type=Path, help="a folder of custom node packs, loaded by both sides"
    )
    parser.add_argument(
        "--memory-jobs", type=int, default=0, help="worker jobs run after, for memory (0)"
    )
    parser.add_argument(
        "--pause", type=float, default=0.2, help="seconds idle before each timed run (0.2)"
    )
    parser.add_argument(
        "--jobs",
        nargs="+",
        choices=list(JOB_KINDS),
        default=list(JOB_KINDS),
        help="which jobs (default: all)",
    )
    side = parser.add_mutually_exclusive_group()
    side.add_argument(
        "--peer",
        type=Path,
        help="a worker-comfyui checkout (at d2a5572 for the round-3 figures): its own "
        "handler.py and start.sh's ComfyUI against ours, both behind the SDK's API server",
    )
    side.add_argument(
        "--emulate",
        action="store_true",
        help="our emulation of worker-comfyui's server and handler, against Worker.handle "
        "in this process (rounds 1-2; overstates the worker's lead)",
    )
    parser.add_argument(
        "--peer-site",
        type=Path,
        help="a folder holding websocket-client (pip install --target), for the peer's handler",
    )
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.repeat_large < 1 or args.warmup < 0 or args.pause < 0:
        parser.error("--repeat and --repeat-large must be at least 1, --warmup and --pause >= 0")
    if args.peer is None and not args.emulate:
        parser.error("pass --peer DIR (a worker-comfyui checkout) or --emulate")
    if args.peer is not None and args.memory_jobs:
        parser.error("--memory-jobs applies to --emulate only (the worker in this process)")
    checkout = comfyui_checkout(args.comfyui)
    if args.peer is not None:
        return peer_main(args, checkout, peer_checkout(args.peer, args.peer_site, sys.executable))
    load_before = load_average()

    with (
        temp_root("bench-latency-") as root,
        (root / "worker.log").open("w", encoding="utf-8") as worker_log,
    ):
        started = time.perf_counter()
        print(f"booting the worker (ComfyUI in-process) from {checkout} ...", file=sys.stderr)
        preload_client_modules()
        packs_yaml = packs_config(root, args.packs.resolve() if args.packs else None)
        # Packs print to stdout as they load; the report alone goes there.
        with contextlib.redirect_stdout(sys.stderr):
            worker, runtime = boot_worker(checkout, root / "worker", worker_log, packs_yaml)
        torch = sys.modules["torch"]
        cuda = bool(torch.cuda.is_available())
        device = torch.cuda.get_device_name(0) if cuda else "CPU only, no GPU"
        server = ComfyServer(sys.executable, checkout, root / "server")
        client: HandlerClient | None = None
        try:
            print("starting ComfyUI's server (main.py) ...", file=sys.stderr)
            server.start_bound(cpu=not cuda, extra_model_paths=packs_yaml)
            client = HandlerClient(server.base_url)
            client.wait_up()
            results = []
            with timed_worker_steps(runtime):
                for number, key in enumerate(args.jobs, start=1):
                    kind = JOB_KINDS[key]
                    repeat = args.repeat_large if kind.batch > 1 else args.repeat
                    print(f"{kind.label}: {args.warmup} warm-up + {repeat} timed", file=sys.stderr)
                    plan = Plan(args.warmup, repeat, 1000 * number, args.pause)
                    results.append(bench_kind(worker, runtime, client, kind, plan))
        except Exception:
            print(f"server log, last lines:\n{server.log_tail()}", file=sys.stderr)
            raise
        finally:
            server.stop()
        memory = memory_run(worker, args.memory_jobs) if args.memory_jobs else []
        machine = machine_lines(checkout, str(torch.__version__), device, load_before)
        print(report(results, machine, args, pack_names(args.packs, checkout), memory))
        print(f"\n(total {time.perf_counter() - started:.0f} s)", file=sys.stderr)
        logging.shutdown()  # flushes the worker's log before its file closes
    return 0


def _memory_lines(memory: list[tuple[int, float, float]]) -> list[str]:
    if not memory:
        return []
    table = markdown_table(
        ["worker jobs done", "worker RSS, MiB", "PNG encoder processes' RSS, MiB"],
        [[str(n), f"{rss:.0f}", f"{enc:.0f}"] for n, rss, enc in memory],
    )
    return [
        f"Memory over {memory[-1][0]} more worker jobs (the three kinds in turn):",
        "",
        table,
        "",
    ]


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the temp folders and the server are gone by now
        print("interrupted", file=sys.stderr)
        sys.exit(130)
