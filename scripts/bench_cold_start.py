#!/usr/bin/env python3
"""Cold start to the first job done: the worker against a ComfyUI server and its handler.

``--peer DIR`` (a worker-comfyui checkout; the figures to quote): each side starts as
its container does and the same client sends its first job, ``POST /runsync``, as soon
as its API server listens. Ours: ``python handler.py --rp_serve_api`` (it boots, then
listens). worker-comfyui: its ``src/start.sh``'s steps (``_bench_common.PeerSide``):
ComfyUI's ``main.py`` in the background and its unchanged ``handler.py`` beside it,
whose job waits, polling ``GET /`` every 50 ms, until ComfyUI answers. Times run from
just before a side's first process is spawned to its ``/runsync`` answer.

``--emulate`` (how rounds 1-2 measured; its ratios overstate the worker's lead, see
``_bench_common``): the sides below.

Worker: one child process does what ``handler.py`` does before RunPod's loop starts
(``import handler``: the runpod SDK and the engine; ``Worker.boot()``: torch, ComfyUI,
every node), then runs one 64x64 job (LoadImage -> ImageInvert -> SaveImage, base64 in
and out) through ``Worker.handle``.

Server: as runpod-workers/worker-comfyui's container starts (see ``_bench_common``):
ComfyUI's ``main.py --disable-auto-launch --disable-metadata --listen`` in one process
and, at the same moment, a handler process that imports the runpod SDK, ``requests``
and ``websockets`` and takes the same job: it polls ``GET /`` every 50 ms until the
server answers, then runs the job over HTTP + WebSocket.

Both sides: the same checkout, the same packs (``--packs``, through an
extra_model_paths.yaml), prompt metadata off (the server's ``--disable-metadata``, the
worker's ``OUTPUT_METADATA=false``), log level INFO, CPU when torch sees no GPU. Times
run from just before the first process of a side is spawned to the moment its job's
response is built. The sides take turns, A B A B; each pair gives a ratio (server /
worker). One untimed start of each comes first: the files are in the page cache, and
the worker's node index (engine/runtime/lazy_nodes.py, made at image build in the
image) is written. This is a process cold start, not a disk one.

    COMFYUI_PATH=/path/to/ComfyUI python scripts/bench_cold_start.py --packs DIR \
        --peer WORKER_COMFYUI_DIR --peer-site DIR_WITH_WEBSOCKET_CLIENT
    COMFYUI_PATH=/path/to/ComfyUI python scripts/bench_cold_start.py --packs DIR --emulate

``--without LEVER`` (repeatable) switches one of the worker's boot levers off in its
child, to measure what it brings: ``lazy-nodes`` (every ComfyUI node file imported at
boot, no index), ``gc-pause`` (garbage collection left on while it imports and boots),
``freeze-only`` (a full ``gc.collect()`` before the boot's ``gc.freeze()``);
emulation only.

``--ab LEVER`` measures one lever of the real entry point (``handler.py --rp_serve_api``,
as ``--peer`` starts it) against itself with the lever off through its setting, the
two taking turns: ``lazy-packs`` (``LAZY_PACKS=false``: every custom node pack
imported at boot).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

LEVERS = ("lazy-nodes", "gc-pause", "freeze-only")
AB_LEVERS: dict[str, dict[str, str]] = {"lazy-packs": {"LAZY_PACKS": "false"}}
"""``--ab`` levers: the environment that switches each off in ``handler.py``."""

# A child's report on stdout starts with this, so log lines cannot be mistaken for it.
_REPORT_PREFIX = "BENCH-COLD-START "
_CHILD_TIMEOUT_S = 300.0


def child_main(spec_path: Path) -> int:
    """In the worker's child: boot as ``handler.py`` does, run one job, print the times."""
    main_at = time.time()
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    sys.path.insert(0, spec["repo"])  # the engine package, as for handler.py at the repo root
    _switch_off(spec.get("without", []))

    started = time.perf_counter()
    # The real entry point: it patches the SDK's slow CPU probe, then imports the SDK
    # and the engine.
    import handler  # noqa: F401

    handler_s = time.perf_counter() - started
    from engine import logs
    from engine.settings import Settings
    from engine.worker import Worker

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
        "handler_import_s": handler_s,
        "boot_s": boot_s,
        "boot_timings": dict(getattr(worker.runtime, "boot_timings", {})),
        "first_job_s": job_s,
        "ok": "error" not in response and len(response.get("images", [])) == 1,
        "error": response.get("error"),
    }
    print(_REPORT_PREFIX + json.dumps(report), flush=True)
    return 0


def _switch_off(levers: list[str]) -> None:
    """Undo boot levers in this child, for ``--without``; the worker's code is unchanged."""
    import gc

    if "gc-pause" in levers:
        gc.disable = lambda: None  # handler.py's and the boot's pauses do nothing
    if "freeze-only" in levers:
        freeze = gc.freeze

        def collect_then_freeze() -> None:
            gc.collect()
            freeze()

        gc.freeze = collect_then_freeze
    if "lazy-nodes" in levers:
        from engine.runtime import comfy_boot

        make = comfy_boot._lazy_nodes

        def eager(*args: Any) -> Any:
            lazy = make(*args)
            lazy._old = None  # no index read: every file imported, as ComfyUI does
            lazy.save = lambda folder: None
            return lazy

        comfy_boot._lazy_nodes = eager


def handler_main(spec_path: Path) -> int:
    """In the server's handler process: import what worker-comfyui's handler imports, run the job."""
    main_at = time.time()
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    import requests  # noqa: F401
    import runpod  # noqa: F401
    import websockets.sync.client  # noqa: F401

    imported_at = time.time()
    from _bench_common import HandlerClient

    client = HandlerClient(spec["base_url"])
    up_at = client.wait_up(_CHILD_TIMEOUT_S)
    started = time.perf_counter()
    result = client.run(spec["job_input"])
    job_s = time.perf_counter() - started
    done_at = time.time()
    report = {
        "main_at": main_at,
        "imported_at": imported_at,
        "up_at": up_at,
        "done_at": done_at,
        "first_job_s": job_s,
        "phases_ms": result.phases_ms,
        "ok": len(result.response["images"]) == 1,
    }
    print(_REPORT_PREFIX + json.dumps(report), flush=True)
    return 0


# -- the parent -------------------------------------------------------------------------

WORKER_ROWS = (
    ("interpreter start", "interpreter"),
    ("handler.py import (runpod SDK + engine)", "handler_import"),
    ("torch import", "torch_import"),
    ("ComfyUI import", "comfy_import"),
    ("node init", "node_init"),
    ("rest of boot", "boot_rest"),
    ("ready (booted)", "ready"),
    ("first 64x64 job", "first_job"),
    ("**first job done**", "done"),
)
SERVER_MARKS = (
    ("torch + ComfyUI core imported (log: 'Total VRAM')", "Total VRAM"),
    ("nodes initialised (log: 'Import times for custom nodes')", "Import times for custom nodes"),
    ("listening (log: 'To see the GUI')", "To see the GUI"),
)
SERVER_ROWS = (
    ("handler: runpod SDK + requests + websockets imported", "handler_imported"),
    ("handler: GET / answers (polled every 50 ms)", "up"),
    ("first 64x64 job, its own latency", "first_job"),
    ("**first job done**", "done"),
)


def run_worker(
    checkout: Path,
    root: Path,
    job_input: dict[str, Any],
    packs_yaml: Path | None,
    without: list[str],
) -> dict[str, float]:
    """Start one worker process, let it boot and run the job; its times in seconds."""
    from _bench_common import clean_env, run_child

    root.mkdir(parents=True)
    spec = root / "spec.json"
    repo = Path(__file__).resolve().parents[1]
    spec.write_text(
        json.dumps({"repo": str(repo), "job_input": job_input, "without": without}),
        encoding="utf-8",
    )
    env = clean_env()
    env.update(
        COMFYUI_PATH=str(checkout),
        WORKER_DIR=str(root / "work"),
        COMFY_LOG_LEVEL="INFO",
        OUTPUT_METADATA="false",  # as the server's --disable-metadata
    )
    if packs_yaml is not None:
        env["EXTRA_MODEL_PATHS"] = str(packs_yaml)
    report, spawned_at = run_child(
        [sys.executable, str(Path(__file__).resolve()), "--child", str(spec)],
        cwd=root,
        env=env,
        log_path=root / "worker.log",
        prefix=_REPORT_PREFIX,
        timeout_s=_CHILD_TIMEOUT_S,
        what="the worker process",
    )
    if not report["ok"]:
        raise RuntimeError(f"the worker's first job failed: {report['error']}")
    boot = report["boot_timings"]
    phases = {
        "interpreter": report["main_at"] - spawned_at,
        "handler_import": report["handler_import_s"],
        "torch_import": boot.get("torch_import", math.nan),
        "comfy_import": boot.get("comfy_import", math.nan),
        "node_init": boot.get("node_init", math.nan),
        "first_job": report["first_job_s"],
        "ready": report["ready_at"] - spawned_at,
        "done": report["done_at"] - spawned_at,
    }
    named = phases["torch_import"] + phases["comfy_import"] + phases["node_init"]
    phases["boot_rest"] = report["boot_s"] - named
    return phases


def run_server(
    checkout: Path, root: Path, job_input: dict[str, Any], cpu: bool, packs_yaml: Path | None
) -> dict[str, float]:
    """Start ComfyUI's server and the handler process together; times in seconds."""
    from _bench_common import ComfyServer, PortTaken, clean_env, run_child

    root.mkdir(parents=True)
    server = ComfyServer(sys.executable, checkout, root)
    env = clean_env()
    try:
        server.start(cpu=cpu, extra_model_paths=packs_yaml)
        spec = root / "spec.json"
        spec.write_text(
            json.dumps({"base_url": server.base_url, "job_input": job_input}), encoding="utf-8"
        )
        report, _ = run_child(
            [sys.executable, str(Path(__file__).resolve()), "--handler", str(spec)],
            cwd=Path(__file__).resolve().parent,
            env=env,
            log_path=root / "handler.log",
            prefix=_REPORT_PREFIX,
            timeout_s=_CHILD_TIMEOUT_S,
            what="the handler process",
        )
        if not report["ok"]:
            raise RuntimeError("the server's first job returned no image")
        _check_own_port(server)
        start = server.started_at
        phases = {
            "handler_imported": report["imported_at"] - start,
            "up": report["up_at"] - start,
            "first_job": report["first_job_s"],
            "done": report["done_at"] - start,
        }
        phases.update({f"job {k}": v / 1000 for k, v in report["phases_ms"].items()})
        for _, needle in SERVER_MARKS:
            stamp = server.log_time(needle)
            phases[needle] = math.nan if stamp is None else stamp - start
        return phases
    except PortTaken:
        raise
    except Exception as exc:
        if server.bound() is False:
            raise PortTaken(f"port {server.port} was taken before ComfyUI bound it") from exc
        print(f"server log, last lines:\n{server.log_tail()}", file=sys.stderr)
        raise
    finally:
        server.stop()


def _check_own_port(server: Any) -> None:
    """Raise :class:`PortTaken` unless ``server`` (``_bench_common.ComfyServer``) holds
    the port it was started on. Asked after the sample, not waited for before: the
    handler starts beside the server, as start.sh starts them, and polls it itself (the
    time measured). A port another process took means the handler's answer came from
    that process: the sample is run again (:func:`main`)."""
    from _bench_common import PortTaken

    if server.bound() is not True:
        raise PortTaken(f"port {server.port} was not ComfyUI's when its first job ran")


def run_ours_api(
    checkout: Path,
    root: Path,
    job_input: dict[str, Any],
    packs_yaml: Path | None,
    env: dict[str, str] | None = None,
) -> dict[str, float]:
    """Peer mode, our side: ``handler.py --rp_serve_api`` from spawn to its first answer."""
    from _bench_common import JOB_KINDS, check_outputs, clean_env, our_side

    api = our_side(sys.executable, checkout, root, {**clean_env(), **(env or {})}, packs_yaml)
    try:
        start = api.start()
        listening = api.wait_listening()
        output = api.runsync(job_input)
        done = time.time()
        check_outputs(JOB_KINDS["64"], output)
    except Exception:
        print(f"our handler's log, last lines:\n{api.log_tail()}", file=sys.stderr)
        raise
    finally:
        api.stop()
    stats = output.get("stats") or {}
    return {
        **boot_phases(api.log_path.read_text(encoding="utf-8", errors="replace"), start),
        "listening": listening - start,
        "first_job": done - listening,
        "job_total_s": float(stats.get("total_s", math.nan)),
        "done": done - start,
    }


_READY = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*worker ready in ([\d.]+) s", re.M)
_BOOTED = re.compile(
    r"ComfyUI booted in [\d.]+ s \(torch import ([\d.]+) s, ComfyUI import ([\d.]+) s, "
    r"node init ([\d.]+) s\)"
)


def boot_phases(log: str, spawned_at: float) -> dict[str, float]:
    """Our handler's boot, from its log lines: when it was ready, what the boot spent."""
    phases: dict[str, float] = {}
    ready = _READY.search(log)
    if ready:
        stamp = datetime.datetime.strptime(ready.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        phases["ready"] = stamp - spawned_at
        phases["pre_boot"] = phases["ready"] - float(ready.group(2))
    booted = _BOOTED.search(log)
    if booted:
        for key, value in zip(
            ("torch_import", "comfy_import", "node_init"), booted.groups(), strict=True
        ):
            phases[key] = float(value)
    return phases


def run_peer(
    checkout: Path,
    peer: Any,
    root: Path,
    job_input: dict[str, Any],
    cuda: bool,
    packs_yaml: Path | None,
) -> dict[str, float]:
    """Peer mode, worker-comfyui's side: start.sh's steps, to its handler's first answer."""
    from _bench_common import JOB_KINDS, PeerSide, PortTaken, check_outputs, clean_env

    side = PeerSide(sys.executable, checkout, peer, root, clean_env(), packs_yaml)
    try:
        start = side.start(cuda)
        assert side.api is not None
        listening = side.api.wait_listening()
        output = side.api.runsync(job_input)
        done = time.time()
        check_outputs(JOB_KINDS["64"], output)
        _check_own_port(side.server)
    except PortTaken:
        raise
    except Exception as exc:
        if side.server.bound() is False:
            raise PortTaken(f"port {side.server.port} was taken before ComfyUI bound it") from exc
        api_log = side.api.log_tail() if side.api else ""
        print(
            f"peer handler log:\n{api_log}\nComfyUI log:\n{side.server.log_tail()}", file=sys.stderr
        )
        raise
    finally:
        side.stop()
    phases = {"handler_listening": listening - start, "done": done - start}
    for _, needle in SERVER_MARKS:
        stamp = side.server.log_time(needle)
        phases[needle] = math.nan if stamp is None else stamp - start
    return phases


PEER_OUR_ROWS = (
    ("before the boot: interpreter, runpod SDK + engine imported", "pre_boot"),
    ("torch import (log: 'ComfyUI booted in')", "torch_import"),
    ("ComfyUI import", "comfy_import"),
    ("node init (the packs loaded at boot among it)", "node_init"),
    ("booted (log: 'worker ready')", "ready"),
    ("API server listening (the SDK started after the boot)", "listening"),
    ("first 64x64 job, POST /runsync round trip", "first_job"),
    ("of which the worker's own stats.total_s", "job_total_s"),
    ("**first job done**", "done"),
)
PEER_ROWS = (
    ("handler's API server listening", "handler_listening"),
    *SERVER_MARKS,
    ("**first job done** (its /runsync answer)", "done"),
)


def _cell(runs: list[dict[str, float]], key: str) -> str:
    """Seconds of ``key`` over ``runs`` (those that have it): min / **median** / max."""
    from _bench_common import stats_cell

    return stats_cell(r.get(key, math.nan) for r in runs)


def peer_report(
    ours: list[dict[str, float]],
    theirs: list[dict[str, float]],
    machine: list[str],
    warmup: int,
    packs: list[str],
    peer: Any,
) -> str:
    """The Markdown report of a ``--peer`` run."""
    from _bench_common import markdown_table, peer_lines, ratio_cell, report_footer

    ratios = [t["done"] / o["done"] for o, t in zip(ours, theirs, strict=True)]
    headline = markdown_table(
        ["first 64x64 job done, from spawn", "this worker, s", "worker-comfyui, s",
         "worker-comfyui ÷ this worker, per pair: min / **median** / max"],
        [["min / **median** / max", _cell(ours, "done"), _cell(theirs, "done"), ratio_cell(ratios)]],
    )  # fmt: skip
    return "\n".join(
        [
            "### Cold start: this worker against worker-comfyui's own handler",
            "",
            headline,
            "",
            f"{len(ratios)} pairs, the sides taking turns (A B A B), after {warmup} untimed "
            f"start(s) of each. Packs on both sides: {', '.join(packs) or 'none'}.",
            "",
            *peer_lines(peer),
            "",
            markdown_table(
                ["this worker, from spawn", "s: min / **median** / max"],
                [[label, _cell(ours, key)] for label, key in PEER_OUR_ROWS],
            ),
            "",
            markdown_table(
                ["worker-comfyui, from spawn", "s: min / **median** / max"],
                [[label, _cell(theirs, key)] for label, key in PEER_ROWS],
            ),
            "",
            *report_footer(machine),
        ]
    )


def ab_report(
    on: list[dict[str, float]],
    off: list[dict[str, float]],
    lever: str,
    machine: list[str],
    warmup: int,
    packs: list[str],
) -> str:
    """The Markdown report of an ``--ab`` run: the lever on against off, pair by pair."""
    from _bench_common import markdown_table, ratio_cell, report_footer

    switch = " ".join(f"{k}={v}" for k, v in AB_LEVERS[lever].items())
    rows = [
        [label, _cell(on, key), _cell(off, key), ratio_cell([b[key] / a[key] for a, b in zip(on, off, strict=True)])]
        for label, key in PEER_OUR_ROWS
        if key != "job_total_s"
    ]  # fmt: skip
    return "\n".join(
        [
            f"### Cold start: lever {lever} on against off ({switch})",
            "",
            markdown_table(
                [
                    "handler.py --rp_serve_api, from spawn",
                    "lever on, s: min / **median** / max",
                    "lever off, s",
                    "off ÷ on, per pair: min / **median** / max",
                ],
                rows,
            ),
            "",
            f"{len(on)} pairs, the sides taking turns (A B A B), after {warmup} untimed start(s) "
            f"of each. Packs: {', '.join(packs) or 'none'}.",
            "",
            *report_footer(machine),
        ]
    )


def report(
    worker_runs: list[dict[str, float]],
    server_runs: list[dict[str, float]],
    machine: list[str],
    warmup: int,
    packs: list[str],
    without: list[str],
) -> str:
    """The Markdown report: the headline table, each side's phases, the machine, the command."""
    from _bench_common import fmt_ms, markdown_table, ratio_cell, report_footer

    def cell_ms(runs: list[dict[str, float]], key: str) -> str:
        values = [r[key] * 1000 for r in runs if not math.isnan(r.get(key, math.nan))]
        if not values:
            return "n/a"
        return f"{fmt_ms(min(values))} / **{fmt_ms(statistics.median(values))}**"

    pairs = list(zip(server_runs, worker_runs, strict=True))
    done_ratios = [s["done"] / w["done"] for s, w in pairs]
    headline = markdown_table(
        ["first 64x64 job done, from spawn", "worker in-process, s", "server + handler, s",
         "server ÷ worker, per pair: min / **median** / max"],
        [["min / **median** / max", _cell(worker_runs, "done"), _cell(server_runs, "done"),
          ratio_cell(done_ratios)]],
    )  # fmt: skip
    worker_table = markdown_table(
        ["worker, from spawn", "s: min / **median** / max"],
        [[label, _cell(worker_runs, key)] for label, key in WORKER_ROWS],
    )
    server_table = markdown_table(
        ["server + handler, from spawn", "s: min / **median** / max"],
        [[label, _cell(server_runs, needle)] for label, needle in SERVER_MARKS]
        + [[label, _cell(server_runs, key)] for label, key in SERVER_ROWS],
    )
    job_keys = [k for k in server_runs[0] if k.startswith("job ")] if server_runs else []
    server_job = markdown_table(
        ["handler's first job, step", "ms: min / **median**"],
        [[key.removeprefix("job "), cell_ms(server_runs, key)] for key in job_keys],
    )
    lines = [
        "### Cold start: worker in-process vs ComfyUI server + its handler, emulated",
        "",
        "Our own stand-in for worker-comfyui's server and handler (`--emulate`): slower than "
        "the real handler, so these ratios overstate the worker's lead; `--peer DIR` runs "
        "the real one.",
        "",
        headline,
        "",
        f"{len(pairs)} pairs, the sides taking turns (A B A B), after {warmup} untimed "
        f"start(s) of each. Packs on both sides: {', '.join(packs) or 'none'}. Worker levers "
        f"switched off: {', '.join(without) or 'none'}.",
        "",
        worker_table,
        "",
        "Server milestones are read from its log lines as they arrive; the handler's from "
        "its own clock.",
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
    parser.add_argument(
        "--packs", type=Path, help="a folder of custom node packs, loaded by both sides"
    )
    parser.add_argument("--repeat", type=int, default=5, help="timed pairs (5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed starts of each first (1)")
    parser.add_argument(
        "--without",
        action="append",
        choices=LEVERS,
        default=[],
        help="switch one of the worker's boot levers off (repeatable)",
    )
    side = parser.add_mutually_exclusive_group()
    side.add_argument(
        "--peer",
        type=Path,
        help="a worker-comfyui checkout (at d2a5572 for the round-3 figures): run its own "
        "handler.py and start.sh's ComfyUI against ours",
    )
    side.add_argument(
        "--ab",
        choices=sorted(AB_LEVERS),
        help="our handler with one lever on against off (its setting), no peer",
    )
    side.add_argument(
        "--emulate",
        action="store_true",
        help="our emulation of worker-comfyui's server and handler, against the worker's "
        "boot in a child process (rounds 1-2; overstates the worker's lead)",
    )
    parser.add_argument(
        "--peer-site",
        type=Path,
        help="a folder holding websocket-client (pip install --target), for the peer's handler",
    )
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--handler", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        return child_main(args.child)
    if args.handler is not None:
        return handler_main(args.handler)
    if args.repeat < 1 or args.warmup < 0:
        parser.error("--repeat must be at least 1, --warmup at least 0")
    if args.packs is not None and not args.packs.is_dir():
        parser.error(f"--packs {args.packs} is not a folder")
    if args.peer is None and not args.emulate and args.ab is None:
        parser.error("pass --peer DIR (a worker-comfyui checkout), --ab LEVER or --emulate")
    if args.peer is not None and args.without:
        parser.error("--without applies to --emulate only (its worker child)")

    from _bench_common import (
        JOB_KINDS,
        PORT_ATTEMPTS,
        PortTaken,
        comfyui_checkout,
        load_average,
        machine_lines,
        pack_names,
        packs_config,
        peer_checkout,
        probe_torch,
        temp_root,
    )

    checkout = comfyui_checkout(args.comfyui)
    peer = peer_checkout(args.peer, args.peer_site, sys.executable) if args.peer else None
    load_before = load_average()
    kind = JOB_KINDS["64"]
    started = time.perf_counter()
    with temp_root("bench-cold-start-") as root:
        packs_yaml = packs_config(root, args.packs.resolve() if args.packs else None)
        torch_version, cuda, gpu = probe_torch()
        worker_runs: list[dict[str, float]] = []
        server_runs: list[dict[str, float]] = []
        for i in range(args.warmup + args.repeat):
            timed = i >= args.warmup
            for side in ("worker", "server"):
                job_input = kind.job_input(i, prefix="cold/bench")
                folder = root / f"{side}-{i}"
                label = ("lever on" if side == "worker" else "lever off") if args.ab else side
                print(f"{'start' if timed else 'warm-up start'} {i + 1}: {label}", file=sys.stderr)
                for attempt in range(1, PORT_ATTEMPTS + 1):
                    try:
                        if args.ab is not None:
                            off = AB_LEVERS[args.ab] if side == "server" else {}
                            run = run_ours_api(checkout, folder, job_input, packs_yaml, off)
                        elif peer is not None and side == "worker":
                            run = run_ours_api(checkout, folder, job_input, packs_yaml)
                        elif peer is not None:
                            run = run_peer(checkout, peer, folder, job_input, cuda, packs_yaml)
                        elif side == "worker":
                            run = run_worker(checkout, folder, job_input, packs_yaml, args.without)
                        else:
                            run = run_server(checkout, folder, job_input, not cuda, packs_yaml)
                        break
                    except PortTaken as exc:  # ComfyUI's picked port: _check_own_port
                        if attempt == PORT_ATTEMPTS:
                            raise
                        print(f"  {exc}: this start again", file=sys.stderr)
                        folder = root / f"{side}-{i}-again-{attempt}"
                print(f"  first job done at {run['done']:.2f} s", file=sys.stderr)
                if timed:
                    (worker_runs if side == "worker" else server_runs).append(run)
        device = gpu if cuda else "CPU only, no GPU"
        machine = machine_lines(checkout, torch_version, device, load_before)
        packs = pack_names(args.packs, checkout)
        if args.ab is not None:
            print(ab_report(worker_runs, server_runs, args.ab, machine, args.warmup, packs))
        elif peer is not None:
            print(peer_report(worker_runs, server_runs, machine, args.warmup, packs, peer))
        else:
            print(report(worker_runs, server_runs, machine, args.warmup, packs, args.without))
    print(f"\n(total {time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the temp folders and the server are gone by now
        print("interrupted", file=sys.stderr)
        sys.exit(130)
