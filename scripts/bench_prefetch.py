#!/usr/bin/env python3
"""Model files read ahead: a waiting job's checkpoint read into the page cache, on against off.

Two jobs in a row through ``Worker.handle`` (two callers, as the runpod SDK keeps two in
progress with ``MAX_CONCURRENT_JOBS=2``) on the real ComfyUI in-process:

- job A holds the engine ``--hold-s`` seconds (a node that sleeps holding no lock, as a
  GPU kernel keeps the engine busy and the CPU free), then saves a small image;
- job B, sent once A's run has started, loads a randomly initialised SD1.5-shaped
  checkpoint (~2.1 GB fp16, tests/engine/sd15.py) with ``CheckpointLoaderSimple`` and
  decodes an 8x8 latent with its VAE (a few ms): its run is mostly the file's read.

Before each pair the page cache is dropped (``/proc/sys/vm/drop_caches``, as root), so
B's file comes from the disk as on a fresh network volume. Each pair names the
checkpoint under a new name (a hard link to the one file), so ComfyUI's cache never
hands B an earlier pair's model. Read-ahead on (``MODEL_PREFETCH_MAX_GB``, default 16)
and off (0) alternate pair by pair on one booted engine; B's run (its ``execute_s``),
its loader node's seconds and the pair's wall time (A sent to B answered) per setting.

    COMFYUI_PATH=/path/to/ComfyUI python scripts/bench_prefetch.py --rounds 4

``--warm`` keeps the page cache: the file is cached, and read-ahead finds nothing to
read (what it costs then). ``--a-loads``: A's run starts by loading a checkpoint of its
own; each pair then says how long the read-ahead paused for A's loader, and how much of
B's file the page cache held as B's run started (sampled ``RWF_NOWAIT`` reads). Generated files live in a temporary folder. A benchmark, not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _bench_common import sleep_node_paths  # noqa: E402

_DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def holding(seconds: float, prefix: str, ckpt_name: str | None = None) -> dict[str, Any]:
    """Job A: an image, a node that holds the engine, a save; with ``ckpt_name``, the
    image is that checkpoint's VAE decoding an 8x8 latent, so A's run starts by loading
    a model of its own, as a run on a GPU does."""
    if ckpt_name is None:
        image: dict[str, Any] = {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0},
        }
        extra: dict[str, Any] = {}
    else:
        image = {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["5", 2]}}
        extra = {
            "5": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
            "6": {
                "class_type": "EmptyLatentImage",
                "inputs": {"width": 64, "height": 64, "batch_size": 1},
            },
        }
    return {
        "1": image,
        "2": {"class_type": "BenchSleep", "inputs": {"image": ["1", 0], "seconds": seconds}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
        **extra,
    }


def loading(ckpt_name: str, prefix: str) -> dict[str, Any]:
    """Job B: the checkpoint's loader, its VAE decoding an 8x8 latent, a save."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "2": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1},
        },
        "3": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["1", 2]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": prefix}},
    }


class RunStarts:
    """The runtime, with an event per job set as its run starts (A's hold is under way)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.started: dict[str, threading.Event] = {}
        self.probe: dict[str, Path] = {}
        """A file to look at as a job's run starts: how much of it is in the page cache."""
        self.cached: dict[str, float] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def run(self, job: Any) -> Any:
        if job.prompt_id in self.probe:
            self.cached[job.prompt_id] = cached_fraction(self.probe[job.prompt_id])
        self.started.setdefault(job.prompt_id, threading.Event()).set()
        return self._inner.run(job)


def cached_fraction(path: Path, step: int = 16 << 20) -> float:
    """The share of pages, one per ``step`` bytes, that a read that may not wait for the
    disk (``RWF_NOWAIT``) finds in the page cache; -1 where the kernel cannot say."""
    nowait = getattr(os, "RWF_NOWAIT", None)
    if nowait is None:
        return -1.0
    page = bytearray(4096)
    fd = os.open(path, os.O_RDONLY)
    try:
        offsets = range(0, os.fstat(fd).st_size, step)
        found = 0
        for at in offsets:
            with contextlib.suppress(BlockingIOError):  # not cached
                found += os.preadv(fd, [page], at, nowait) > 0
        return found / max(len(offsets), 1)
    except OSError:
        return -1.0
    finally:
        os.close(fd)


def drop_caches() -> None:
    os.sync()
    _DROP_CACHES.write_text("1\n")


def pair(
    worker: Any,
    runtime: RunStarts,
    serial: int,
    hold_s: float,
    ckpt: str,
    a_ckpt: str | None = None,
    b_file: Path | None = None,
) -> dict[str, Any]:
    """A then B, on two callers; B's stats, A's run and the pair's wall time."""
    answers: dict[str, dict[str, Any]] = {}
    a_id, b_id = f"a-{serial}", f"b-{serial}"
    runtime.started[a_id] = threading.Event()
    if b_file is not None:
        runtime.probe[b_id] = b_file

    def call(job_id: str, workflow: dict[str, Any]) -> None:
        answers[job_id] = worker.handle({"id": job_id, "input": {"workflow": workflow}})

    started = time.perf_counter()
    a = threading.Thread(target=call, args=(a_id, holding(hold_s, "a", a_ckpt)))
    a.start()
    if not runtime.started[a_id].wait(120):
        raise RuntimeError("job A's run never started")
    b = threading.Thread(target=call, args=(b_id, loading(ckpt, "b")))
    b.start()
    a.join()
    b.join()
    wall = time.perf_counter() - started
    for job_id in (a_id, b_id):
        if "stats" not in answers[job_id] or answers[job_id]["errors"]:
            raise RuntimeError(f"job {job_id} failed: {answers[job_id]}")
    stats = answers[b_id]["stats"]
    return {
        "wall_s": wall,
        "execute_s": stats["execute_s"],
        "loader_s": stats["nodes"].get("1", 0.0),
        "wait_s": stats["wait_s"],
        "a_execute_s": answers[a_id]["stats"]["execute_s"],
        "a_loader_s": answers[a_id]["stats"]["nodes"].get("5", 0.0),
        "b_cached": runtime.cached.get(b_id, -1.0),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--comfyui", default=os.environ.get("COMFYUI_PATH"), help="ComfyUI checkout"
    )
    parser.add_argument(
        "--rounds", type=int, default=4, help="alternated rounds (a pair per setting)"
    )
    parser.add_argument("--hold-s", type=float, default=6.0, help="seconds job A holds the engine")
    parser.add_argument(
        "--warm",
        action="store_true",
        help="keep the page cache (the file stays cached): what read-ahead costs when it has nothing to do",
    )
    parser.add_argument("--max-gb", type=float, default=16.0, help="MODEL_PREFETCH_MAX_GB when on")
    parser.add_argument(
        "--a-loads",
        action="store_true",
        help="job A's run starts by loading a checkpoint of its own (another file, cold too):"
        " B's read-ahead then shares the disk with A's load",
    )
    parser.add_argument(
        "--a-cached",
        action="store_true",
        help="with --a-loads, A's file is in the page cache as the pair starts, as when A"
        " waited behind another job and was read ahead itself: a stream's steady state",
    )
    args = parser.parse_args()
    if not args.comfyui:
        print("set COMFYUI_PATH (or --comfyui): this benchmark runs the real engine")
        return 2
    if not args.warm and not os.access(_DROP_CACHES, os.W_OK):
        print(f"skipped: {_DROP_CACHES} is not writable (run as root), so no read is cold")
        return 0
    logging.basicConfig(level=logging.WARNING)
    from engine import logs
    from engine.runtime.comfy import ComfyRuntime
    from engine.settings import Settings
    from engine.worker import Worker

    # Before the boot: the packs put modules of their own named ``tests`` on the path.
    from tests.engine.sd15 import write_sd15_checkpoint

    logs.configure("WARNING")
    with tempfile.TemporaryDirectory(prefix="bench-prefetch-") as tmp:
        work = Path(tmp)
        checkpoints = work / "models" / "checkpoints"
        yaml = sleep_node_paths(work, checkpoints=checkpoints)
        env = {
            "COMFYUI_PATH": args.comfyui,
            "EXTRA_MODEL_PATHS": str(yaml),
            "COMFY_LOG_LEVEL": "WARNING",
            "WORKER_DIR": str(work / "worker"),
            "OUTPUT_METADATA": "false",
            "MAX_CONCURRENT_JOBS": "2",
            "MODEL_PREFETCH_MAX_GB": str(args.max_gb),
        }
        settings = Settings.from_env(env)
        runtime = RunStarts(ComfyRuntime(settings))
        worker = Worker(settings, runtime)  # type: ignore[arg-type]
        worker.boot()
        # Each pair's read-ahead, to say how much it read before B's turn.
        prefetches: list[Any] = []
        start = worker.prefetcher.start

        def noting(job_id: str, files: Any) -> Any:
            prefetches.append(start(job_id, files))
            return prefetches[-1]

        worker.prefetcher.start = noting  # type: ignore[method-assign]
        source = write_sd15_checkpoint(work / "sd15-random.safetensors")
        # A's own file: another inode, so reading one never caches the other.
        a_source = write_sd15_checkpoint(work / "sd15-a.safetensors") if args.a_loads else None
        size_gb = source.stat().st_size / 1e9
        on_bytes = settings.model_prefetch_max_bytes
        print(
            f"engine: ComfyUI at {args.comfyui}; {os.cpu_count()} CPU(s); load average"
            f" {os.getloadavg()[0]:.2f}; job A holds the engine {args.hold_s} s; job B loads a"
            f" {size_gb:.2f} GB SD1.5-shaped checkpoint (random weights) from a"
            f" {'warm' if args.warm else 'cold'} page cache",
            flush=True,
        )
        figures: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
        serial = 0
        for round_no in range(args.rounds + 1):  # round 0 warms up, unreported
            for setting in ("on", "off") if round_no % 2 else ("off", "on"):
                serial += 1
                name = f"b-{serial}.safetensors"
                os.link(source, checkpoints / name)  # a new name: ComfyUI's cache misses
                a_name = f"a-{serial}.safetensors" if a_source is not None else None
                if a_source is not None and a_name is not None:
                    os.link(a_source, checkpoints / a_name)
                runtime.forget_model_files("checkpoints")
                worker.prefetcher.max_bytes = on_bytes if setting == "on" else 0
                if not args.warm:
                    drop_caches()
                if args.a_cached and a_source is not None:
                    with a_source.open("rb") as cached:  # into the page cache, whole
                        while cached.read(8 << 20):
                            pass
                prefetches.clear()
                result = pair(
                    worker, runtime, serial, args.hold_s, name, a_name, checkpoints / name
                )
                for used in [name] if a_name is None else [name, a_name]:
                    with contextlib.suppress(OSError):
                        (checkpoints / used).unlink()
                for prefetch in prefetches:
                    prefetch.finished.wait(60)
                result["ahead_gb"] = sum(p.bytes_read for p in prefetches) / 1e9
                result["ahead_s"] = sum(p.seconds for p in prefetches)
                result["paused_s"] = sum(getattr(p, "paused_s", 0.0) for p in prefetches)
                if round_no:
                    figures[setting].append(result)
                    print(
                        f"  round {round_no} read-ahead {setting:3}: A's run {result['a_execute_s']:.2f} s"
                        f" (loader {result['a_loader_s']:.2f} s),"
                        f" B's run {result['execute_s']:.2f} s"
                        f" (loader {result['loader_s']:.2f} s, waited {result['wait_s']:.2f} s),"
                        f" pair {result['wall_s']:.2f} s; read ahead {result['ahead_gb']:.2f} GB in {result['ahead_s']:.2f} s"
                        f" ({result['paused_s']:.2f} s of it paused for A's loader);"
                        f" B's file {result['b_cached']:.0%} cached as its run started; load {os.getloadavg()[0]:.2f}",
                        flush=True,
                    )
        print("medians:")
        for setting in ("on", "off"):
            rows = figures[setting]
            print(
                f"  read-ahead {setting:3}: A's run {statistics.median(r['a_execute_s'] for r in rows):.2f} s,"
                f" B's run {statistics.median(r['execute_s'] for r in rows):.2f} s,"
                f" loader {statistics.median(r['loader_s'] for r in rows):.2f} s,"
                f" pair {statistics.median(r['wall_s'] for r in rows):.2f} s"
            )
        ratios = [
            off["wall_s"] / on["wall_s"]
            for on, off in zip(figures["on"], figures["off"], strict=True)
        ]
        a_ratios = [
            off["a_execute_s"] / on["a_execute_s"]
            for on, off in zip(figures["on"], figures["off"], strict=True)
        ]
        run_ratios = [
            off["execute_s"] / on["execute_s"]
            for on, off in zip(figures["on"], figures["off"], strict=True)
        ]
        print(
            f"per round, off/on: A's run {statistics.median(a_ratios):.2f}x"
            f" ({min(a_ratios):.2f}-{max(a_ratios):.2f}),"
            f" B's run {statistics.median(run_ratios):.2f}x"
            f" ({min(run_ratios):.2f}-{max(run_ratios):.2f}), pair"
            f" {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
