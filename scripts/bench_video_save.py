#!/usr/bin/env python3
"""A video save node's encode handed off (the ``deferred_video`` patch for SaveVideo,
``deferred_animated`` for SaveAnimatedWEBP / SaveAnimatedPNG, ``deferred_webm`` for
SaveWEBM, ``deferred_vhs`` for VHS_VideoCombine) against ComfyUI's own, in a stream of
jobs, on the real ComfyUI in-process.

Each job: ``BenchFrames`` (a custom node written here: ``--frames`` frames of a smooth
random field panning across the picture, ``--width`` x ``--height``) -> ``BenchSleep``
(``scripts/_bench_common.SLEEP_NODE``: sleeps holding no lock, as a GPU kernel keeps the
engine busy and leaves the CPU free; ``--run-s``, by default the lone encode's time,
measured first) -> the save node ``--node`` names: ComfyUI's ``CreateVideo`` ->
``SaveVideo`` (H.264 MP4, the default), or ``SaveAnimatedWEBP`` (ComfyUI's defaults, as
its Wan 2.1 templates have them: lossless, quality 80, method ``default``) or
``SaveAnimatedPNG`` (``compress_level`` 4) at 16 fps, or ``SaveWEBM`` (VP9, crf 32, its
defaults; ``deferred_webm``), or VideoHelperSuite's ``VHS_VideoCombine`` (``video/h264-mp4``,
crf 19, ``yuv420p``, the prompt in its metadata, at 16 fps; ``deferred_vhs``: the pack must
be in the checkout's ``custom_nodes``; "on" hands off on any CPU count, where the patch
waits for ``vhs_save.MIN_CPUS``). The jobs go through
``Worker.handle`` as the runpod SDK sends them (base64 answers; ``RESPONSE_LIMIT_MB`` is
raised to 1024 here, as a lossless animation of 81 frames is larger than the default 20).

Settings, on one booted runtime, alternated stream by stream (in order, then reversed,
...) for ``--rounds`` rounds after a warm-up stream each (``--against``): ``on``, two
callers (two jobs in flight) with the patch as the worker boots it; ``off``, two callers
with ComfyUI's own function put back (what ``COMFY_PATCHES_OFF`` gives); ``one``, one
caller (one job in flight: the worker hands nothing off). Figures per setting: jobs per
minute, the engine's busy fraction (time inside ``Runtime.run`` over the stream's wall
time) and the stand-in GPU's (the sleeping node's seconds over the wall time: how much
of the stream a GPU would have worked).

``--gil`` measures what decided between a writer thread and a process: a stand-in for
the next job's Python runs beside one encode (``engine.runtime.video_encode``, the
frames above) on a thread of this process, then beside the same encode in an encoder
process (``engine.runtime.png_encoders``' pool, frames sent through its pipe), then
alone; its speed beside each, as a fraction of its speed alone, and the encode's time.
Two stand-ins: a sampler-like loop (a short Python burst, then a 0.2 ms wait that
releases the GIL, as a kernel launch loop waits on the device) and a pure-Python loop.
With ``--pin`` (Linux) the stand-in runs on CPU 0 and the encode (its thread, or its
process, with the encoder's own threads) on CPU 1: the cores no longer shared, what
remains between a thread and a process is the GIL.

Then one job at a time: ``Worker.handle`` of a lone job (the worker hands nothing off
then, so both settings run ComfyUI's own encode in the node), and the run plus the wait
for its file when the hand-off is forced for a lone job (``Runtime.run`` with pending
files): what handing off would cost a job with nothing waiting.

    COMFYUI_PATH=/path/to/ComfyUI python scripts/bench_video_save.py
    COMFYUI_PATH=/path/to/ComfyUI python scripts/bench_video_save.py --node SaveAnimatedWEBP \
        --against off one
    python scripts/bench_video_save.py --gil

A benchmark, not a test: it prints figures and the settings that made them.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# From the script's own folder (on sys.path as Python runs a script), not as
# scripts._bench_common: importing this repository's scripts folder as the package
# `scripts` would hide ComfyUI-ReActor's own `scripts` package, and ReActor would fail
# to import in the benchmark's ComfyUI.
from _bench_common import (  # noqa: E402
    Metered,
    command_line,
    load_average,
    sleep_node_paths,
    stream_jobs,
)

from tests.workflows import vhs_combine  # noqa: E402

FRAMES_NODE = '''
import torch


class BenchFrames:
    """Frames of a smooth random field panning across the picture, with noise of its own
    in each frame (``noise``: its amplitude): content an encoder works on."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "seed": ("INT", {"default": 0}),
            "frames": ("INT", {"default": 81}),
            "width": ("INT", {"default": 832}),
            "height": ("INT", {"default": 480}),
            "noise": ("FLOAT", {"default": 0.4}),
        }}

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")  # never served from the cache

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "bench"

    def run(self, seed, frames, width, height, noise):
        generator = torch.Generator().manual_seed(seed)
        field = torch.rand(1, 3, height // 8, width // 4, generator=generator)
        wide = torch.nn.functional.interpolate(field, size=(height, 2 * width), mode="bicubic")
        wide = wide.clamp(0, 1)[0].permute(1, 2, 0)
        step = max(1, width // max(1, frames))
        video = torch.stack([wide[:, i * step : i * step + width] for i in range(frames)])
        return ((video + noise * torch.rand(video.shape, generator=generator)).clamp(0, 1),)


NODE_CLASS_MAPPINGS = {"BenchFrames": BenchFrames}
'''


def sampler_like(stop: threading.Event) -> int:
    """A short Python burst, then a wait that releases the GIL, until ``stop``: rounds done."""
    done, table = 0, {}
    while not stop.is_set():
        for i in range(50):
            table[i] = i * 2
        time.sleep(0.0002)
        done += 1
    return done


def pure_python(stop: threading.Event) -> int:
    """Python bytecode only, until ``stop``: rounds done."""
    done, table = 0, {}
    while not stop.is_set():
        for i in range(1000):
            table[i] = i * 2
        done += 1
    return done


def _pinned(cpu: int | None) -> None:
    """This thread (and the threads it starts) on ``cpu`` only; ``None``: left as it is."""
    if cpu is not None:
        os.sched_setaffinity(threading.get_native_id(), {cpu})


def beside(loop: Any, work: Any, cpu: int | None = None) -> tuple[float, float]:
    """``loop``'s rounds per second while ``work()`` runs (``None``: for 3 s), and ``work``'s s."""
    stop = threading.Event()
    rounds: list[int] = []

    def run() -> None:
        _pinned(cpu)
        rounds.append(loop(stop))

    thread = threading.Thread(target=run)
    started = time.perf_counter()
    thread.start()
    if work is None:
        time.sleep(3.0)
    else:
        work()
    took = time.perf_counter() - started
    stop.set()
    thread.join()
    return rounds[0] / (time.perf_counter() - started), took


def gil(args: argparse.Namespace, work: Path) -> int:
    """The next job's Python beside an encode on a thread, and beside one in a process."""
    from engine.runtime.png_encoders import EncoderPool
    from engine.runtime.video_encode import VideoFile

    node: dict[str, Any] = {}
    exec(compile(FRAMES_NODE, "bench_frames", "exec"), node)  # noqa: S102  # this file's own
    (images,) = node["BenchFrames"]().run(0, args.frames, args.width, args.height, args.noise)
    frames = (images * 255).clamp(0, 255).byte().numpy()
    from fractions import Fraction

    video = VideoFile(frames=frames, frame_rate=Fraction(16), metadata=None)
    pool = EncoderPool(1, what="video", importable=(str(REPO),))
    pool.submit(video, (str(work / "warm.mp4"),), {}).result()  # the process started
    loop_cpu, encode_cpu = (0, 1) if args.pin else (None, None)
    if encode_cpu is not None:
        (encoder,) = pool._idle
        os.sched_setaffinity(encoder.process.pid, {encode_cpu})

    def encode_here() -> None:
        _pinned(encode_cpu)
        video.save(str(work / "thread.mp4"))

    def on_thread() -> None:
        thread = threading.Thread(target=encode_here)
        thread.start()
        thread.join()

    def in_process() -> None:
        pool.submit(video, (str(work / "process.mp4"),), {}).result()

    print(
        f"{args.frames} frames of {args.width}x{args.height}, {args.rounds} rounds alternated"
        f"{', stand-in on CPU 0, encode on CPU 1' if args.pin else ''}; "
        "speed beside the encode / speed alone (the encode's seconds):",
        flush=True,
    )
    for name, loop in (("sampler-like loop", sampler_like), ("pure-Python loop", pure_python)):
        ratios: dict[str, list[float]] = {"thread": [], "process": []}
        took: dict[str, list[float]] = {"thread": [], "process": []}
        for round_no in range(args.rounds):
            order = ("thread", "process") if round_no % 2 == 0 else ("process", "thread")
            alone = beside(loop, None, loop_cpu)[0]
            for kind in order:
                work_of = on_thread if kind == "thread" else in_process
                speed, seconds = beside(loop, work_of, loop_cpu)
                ratios[kind].append(speed / alone)
                took[kind].append(seconds)
        for kind in ("thread", "process"):
            print(
                f"  {name} beside an encode on a {kind}: "
                f"{', '.join(f'{r:.2f}' for r in ratios[kind])} "
                f"(encode {', '.join(f'{t:.1f}' for t in took[kind])} s)",
                flush=True,
            )
    pool.close()
    print(f"1-minute load average: {load_average()} after ({os.cpu_count()} CPUs)")
    print(f"command: {command_line()}")
    return 0


NODES = ("SaveVideo", "SaveAnimatedWEBP", "SaveAnimatedPNG", "SaveWEBM", "VHS_VideoCombine")
"""The save nodes ``--node`` may name."""

PATCHES = {
    "SaveVideo": "deferred_video",
    "SaveWEBM": "deferred_webm",
    "VHS_VideoCombine": "deferred_vhs",
}
"""The patch that hands each node's encode off (the animated ones: ``deferred_animated``)."""


def save_nodes(node: str) -> dict[str, Any]:
    """The workflow's nodes after the sleeping node "2", for the save node ``node``."""
    frames = ["2", 0]
    if node == "SaveVideo":
        return {
            "3": {"class_type": "CreateVideo", "inputs": {"images": frames, "fps": 16.0}},
            "4": {
                "class_type": "SaveVideo",
                "inputs": {
                    "video": ["3", 0],
                    "filename_prefix": "bench/clip",
                    "format": "auto",
                    "codec": "auto",
                },
            },
        }
    if node == "VHS_VideoCombine":
        return {"3": vhs_combine(frames, "bench/clip", frame_rate=16)}
    inputs: dict[str, Any] = {"images": frames, "filename_prefix": "bench/clip", "fps": 16.0}
    if node == "SaveAnimatedWEBP":
        inputs |= {"lossless": True, "quality": 80, "method": "default"}
    elif node == "SaveWEBM":
        inputs |= {"codec": "vp9", "crf": 32.0}
    else:
        inputs |= {"compress_level": 4}
    return {"3": {"class_type": node, "inputs": inputs}}


def workflow(seed: int, args: argparse.Namespace, run_s: float) -> dict[str, Any]:
    return {
        "1": {
            "class_type": "BenchFrames",
            "inputs": {
                "seed": seed,
                "frames": args.frames,
                "width": args.width,
                "height": args.height,
                "noise": args.noise,
            },
        },
        "2": {"class_type": "BenchSleep", "inputs": {"image": ["1", 0], "seconds": run_s}},
        **save_nodes(args.node),
    }


@dataclass
class Figures:
    jobs: int
    wall_s: float
    busy_s: float
    gpu_s: float

    @property
    def per_minute(self) -> float:
        return 60.0 * self.jobs / self.wall_s


def stream(
    worker: Any, runtime: Metered, jobs: list[dict[str, Any]], run_s: float, callers: int
) -> Figures:
    """``jobs`` through ``worker`` with ``callers`` in flight at once, as the SDK sends them."""
    wall, busy = stream_jobs(worker, runtime, jobs, callers)
    return Figures(len(jobs), wall, busy, len(jobs) * run_s)


def _print_streams(
    args: argparse.Namespace,
    names: list[str],
    labels: dict[str, str],
    figures: dict[str, list[Figures]],
) -> None:
    print(f"stream of {args.jobs} jobs with {args.node}, medians of {args.rounds} rounds:")
    for name in names:
        runs = figures[name]
        print(
            f"  {labels[name]}: "
            f"{statistics.median(r.per_minute for r in runs):.2f} jobs/min, engine busy "
            f"{100 * statistics.median(r.busy_s / r.wall_s for r in runs):.1f}%, stand-in GPU "
            f"busy {100 * statistics.median(r.gpu_s / r.wall_s for r in runs):.1f}%"
        )
    for name in args.against:
        ratios = [
            b.per_minute / a.per_minute for a, b in zip(figures[name], figures["on"], strict=True)
        ]
        print(
            f"  {labels['on']} against {labels[name]}: jobs/min "
            f"x{statistics.median(ratios):.2f} (rounds: {', '.join(f'{r:.2f}' for r in ratios)})"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH"))
    parser.add_argument("--node", choices=NODES, default="SaveVideo", help="the save node")
    parser.add_argument(
        "--against",
        nargs="+",
        choices=("off", "one"),
        default=["off"],
        help="settings the patch on with 2 in flight is compared with: off (2 in flight, "
        "ComfyUI's own encode) and/or one (1 in flight)",
    )
    parser.add_argument("--jobs", type=int, default=10, help="jobs per stream")
    parser.add_argument("--rounds", type=int, default=2, help="alternated rounds")
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument(
        "--noise",
        type=float,
        default=0.4,
        help="each frame's own noise (0-1): how hard the frames are to encode",
    )
    parser.add_argument(
        "--run-s",
        type=float,
        default=None,
        help="seconds the sleeping node takes (default: the lone encode's time, measured)",
    )
    parser.add_argument("--lone", type=int, default=3, help="lone jobs per setting")
    parser.add_argument(
        "--lone-only", action="store_true", help="no streams: only the lone jobs (--lone)"
    )
    parser.add_argument(
        "--gil", action="store_true", help="only the thread-or-process measure (no ComfyUI)"
    )
    parser.add_argument("--pin", action="store_true", help="--gil: stand-in and encode on 2 CPUs")
    args = parser.parse_args()
    if args.gil:
        with tempfile.TemporaryDirectory(prefix="bench-video-gil-") as tmp:
            return gil(args, Path(tmp))
    if not args.comfyui:
        raise SystemExit("set COMFYUI_PATH or --comfyui: this benchmark runs the real ComfyUI")
    load_before = load_average()
    logging.basicConfig(level=logging.WARNING)
    from engine import logs

    logs.configure("WARNING")
    with tempfile.TemporaryDirectory(prefix="bench-video-") as tmp:
        return _bench(args, Path(tmp), load_before)


def _bench(args: argparse.Namespace, work: Path, load_before: str) -> int:
    from engine.runtime import JobSpec
    from engine.runtime.comfy import ComfyRuntime
    from engine.runtime.pending_files import PendingFiles
    from engine.settings import Settings
    from engine.worker import Worker

    yaml = sleep_node_paths(work)
    (work / "custom_nodes" / "bench_frames").mkdir()
    (work / "custom_nodes" / "bench_frames" / "__init__.py").write_text(FRAMES_NODE)
    env = {
        "COMFYUI_PATH": args.comfyui,
        "EXTRA_MODEL_PATHS": str(yaml),
        "COMFY_LOG_LEVEL": "WARNING",
        "WORKER_DIR": str(work),
        "OUTPUT_METADATA": "true",
        # Answers are base64 here (no S3): a lossless animation of 81 frames of 832x480
        # is tens of MB, beyond the default limit of 20.
        "RESPONSE_LIMIT_MB": "1024",
    }
    comfy = ComfyRuntime(Settings.from_env(env))
    comfy.boot()
    runtime = Metered(comfy)
    patch = PATCHES.get(args.node, "deferred_animated")
    if args.node == "SaveVideo":
        from comfy_api.latest import InputImpl

        owner, attribute = InputImpl.VideoFromComponents, "save_to"
    else:
        import nodes

        owner = nodes.NODE_CLASS_MAPPINGS[args.node]
        attribute = {"SaveWEBM": "execute", "VHS_VideoCombine": "combine_video"}.get(
            args.node, "save_images"
        )
    # SaveWEBM's execute is a classmethod: swapped as the class holds it.
    deferring = owner.__dict__[attribute]
    function = getattr(deferring, "__func__", deferring)
    if not getattr(function, f"_{patch}", False):
        raise SystemExit(f"the {patch} patch is not in force (COMFY_PATCHES_OFF?)")
    own = classmethod(function.__wrapped__) if function is not deferring else function.__wrapped__
    if args.node == "VHS_VideoCombine":
        from engine.runtime import vhs_save

        # "on" hands off whatever this machine's CPU count (the patch waits for MIN_CPUS).
        vhs_save.MIN_CPUS = 1

    def setting(on: bool) -> None:
        setattr(owner, attribute, deferring if on else own)

    serial = 0

    def jobs(count: int, run_s: float) -> list[dict[str, Any]]:
        nonlocal serial
        made = []
        for _ in range(count):
            serial += 1
            made.append({"id": f"v-{serial}", "input": {"workflow": workflow(serial, args, 0)}})
            made[-1]["input"]["workflow"]["2"]["inputs"]["seconds"] = run_s
        return made

    def lone_run(run_s: float, handed_off: bool) -> tuple[float, float]:
        """A lone job's run on the engine, then the wait for its file: (run, total) s."""
        nonlocal serial
        serial += 1
        pending = PendingFiles() if handed_off else None
        spec = JobSpec(
            prompt_id=f"lone-{serial}",
            workflow=workflow(serial, args, run_s),
            pending_files=pending,
        )
        started = time.perf_counter()
        comfy.run(spec)
        ran = time.perf_counter() - started
        if pending is not None:
            assert pending.wait() == []
        return ran, time.perf_counter() - started

    # The encode's time alone: the lone job's run with no sleep, minus the same run's
    # frames and video made without SaveVideo's encode (measured as the forced hand-off's run).
    setting(True)
    lone_run(0.0, False)  # warm-up: the node files load, the encoder process starts
    lone_run(0.0, True)
    plain = statistics.median(lone_run(0.0, False)[0] for _ in range(3))
    handed = statistics.median(lone_run(0.0, True)[0] for _ in range(3))
    encode_s = plain - handed
    run_s = args.run_s if args.run_s is not None else round(max(encode_s, 0.5), 1)
    print(
        f"{args.frames} frames of {args.width}x{args.height}: a lone job's run {plain:.2f} s "
        f"with ComfyUI's own encode, {handed:.2f} s handed off: the encode ~{encode_s:.2f} s; "
        f"the sleeping node takes {run_s} s",
        flush=True,
    )

    worker = Worker(Settings.from_env({**env, "MAX_CONCURRENT_JOBS": "2"}), runtime)  # type: ignore[arg-type]
    worker.boot()
    # Setting -> (patch on, callers): the patch on with 2 in flight, and what it is against.
    settings = {"on": (True, 2), "off": (False, 2), "one": (True, 1)}
    names = ["on", *args.against]
    labels = {
        "on": f"{patch} on, 2 in flight",
        "off": f"{patch} off, 2 in flight",
        "one": "1 in flight",
    }
    figures: dict[str, list[Figures]] = {name: [] for name in names}
    for round_no in range(0 if args.lone_only else args.rounds + 1):  # round 0 warms up
        for name in names if round_no % 2 else list(reversed(names)):
            on, callers = settings[name]
            setting(on)
            batch = jobs(args.jobs if round_no else 2, run_s)
            result = stream(worker, runtime, batch, run_s, callers)
            if round_no:
                figures[name].append(result)
                print(
                    f"  round {round_no} {labels[name]}: "
                    f"{result.per_minute:5.2f} jobs/min, engine busy "
                    f"{100 * result.busy_s / result.wall_s:5.1f}%, stand-in GPU busy "
                    f"{100 * result.gpu_s / result.wall_s:5.1f}% ({result.jobs} jobs in "
                    f"{result.wall_s:.1f} s)",
                    flush=True,
                )
    setting(True)
    if not args.lone_only:
        _print_streams(args, names, labels, figures)

    lone: dict[str, list[float]] = {"on": [], "off": [], "own": [], "forced": []}
    kinds = ("on", "off", "own", "forced")
    for index in range(args.lone):
        for name in kinds if index % 2 == 0 else tuple(reversed(kinds)):
            setting(name != "off")
            if name in ("own", "forced"):
                lone[name].append(lone_run(run_s, name == "forced")[1])
                continue
            (job,) = jobs(1, run_s)
            started = time.perf_counter()
            answer = worker.handle(job)
            assert not answer.get("errors") and "error" not in answer, answer
            lone[name].append(time.perf_counter() - started)
    setting(True)
    print(f"a lone job ({args.lone} of each, alternated), median latency:")
    print(
        f"  Worker.handle: {patch} on {statistics.median(lone['on']):.2f} s, off "
        f"{statistics.median(lone['off']):.2f} s (alone, the worker hands nothing off: "
        "ComfyUI's own encode either way)"
    )
    print(
        f"  Runtime.run and the wait for its file: ComfyUI's own encode in the node "
        f"{statistics.median(lone['own']):.2f} s, the hand-off forced "
        f"{statistics.median(lone['forced']):.2f} s"
    )
    for name in kinds:
        print(f"  each {name}: {', '.join(f'{x:.2f}' for x in lone[name])} s")
    print(
        f"1-minute load average: {load_before} before, {load_average()} after "
        f"({os.cpu_count()} CPUs)"
    )
    print(f"command: {command_line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
