#!/usr/bin/env python3
"""The worker on a GPU, checked in one run of at most 8 minutes; or on the CPU, small.

    python scripts/gpu_check.py --carry .gpu-carry --out DIR              # the GPU host
    COMFYUI_PATH=<checkout> python scripts/gpu_check.py --mode cpu --out DIR   # anywhere

Steps, in order, each given what is left of ``--budget`` (a step that cannot fit is
skipped and says so):

1. **setup**: with ``--carry`` (scripts/prepare_gpu_carry.py), its wheels installed into
   ``WORK/site`` (``pip --no-index --no-deps --target``, put on the path) and ComfyUI
   unpacked into ``WORK``; then every module the worker imports is checked.
2. **tests**: the real-engine tests that run on the device (``--tests``) with pytest, in a
   child process (tests needing packs skip: the carry holds none).
3. **checkpoint**: seeded random weights in the SDXL layout (gpu; ~7 GB) or the SD1.5
   layout (cpu), written under ``WORK`` (tests/engine/sdxl.py, sd15.py).
4. **overhead**: txt2img (gpu: 1024x1024, 20 steps; cpu: 64x64, 1 step) through
   ``Worker.handle`` against ComfyUI's own execution of the same prompt in the same
   process (``execution.validate_prompt`` + ``PromptExecutor.execute``, as main.py's
   prompt worker runs a prompt), the two taking turns; the worker's overhead in % of
   ComfyUI's time, per pair. GPU target: under 1 %.
5. **memory**: more worker jobs (gpu 20, cpu 3); after each, the CUDA
   allocator's allocated and reserved bytes (cpu: the process's RSS). Target: no growth
   from the second job to the last (gpu: 64 MiB at most).
6. **cold start**: a fresh process boots the worker with ``WARMUP_WORKFLOW`` set to the
   same workflow, then runs one job: spawn to ready (the warm-up inside), and to its
   first job done.

Prints a Markdown report and writes ``report.json`` into ``--out``; exits 1 when a step
failed or a GPU target was missed. Model files and job folders stay under ``--work``
(default: a temporary folder), never under ``--out``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MIB = 1024 * 1024
_CHILD_PREFIX = "GPU-CHECK-CHILD "
# Every module a job of this check imports that a torch image may lack (the carry's
# reason to exist); checked before anything is timed.
_MODULES = (
    "numpy", "PIL", "scipy", "torchvision", "transformers", "tokenizers", "safetensors",
    "aiohttp", "yaml", "psutil", "tqdm", "einops", "httpx", "av", "boto3", "pydantic",
    "torchsde", "imageio_ffmpeg", "pytest",
)  # fmt: skip
DEFAULT_TESTS = {
    "gpu": [
        "tests/engine/test_sd15.py",
        "tests/engine/test_boot.py",
        "tests/engine/test_comfy_args_real.py",
        "tests/engine/test_model_free.py",
        "tests/engine/test_worker_real.py",
    ],
    "cpu": ["tests/engine/test_comfy_args_real.py::test_listen_is_refused_by_the_real_parser"],
}


@dataclass(frozen=True)
class Sizes:
    """What one mode runs."""

    width: int
    steps: int
    pairs: int
    jobs: int
    checkpoint: str
    """``sdxl`` or ``sd15``."""
    growth_limit_mib: float
    overhead_target_pct: float | None


SIZES = {
    "gpu": Sizes(1024, 20, 5, 20, "sdxl", 64.0, 1.0),
    # RSS moves with the allocator's arenas on a CPU: the limit only catches a leak.
    "cpu": Sizes(64, 1, 1, 3, "sd15", 256.0, None),
}


@dataclass
class Step:
    """One step's outcome."""

    name: str
    status: str = "skipped"
    """``ok``, ``failed`` or ``skipped``."""
    seconds: float = 0.0
    facts: dict[str, Any] = field(default_factory=dict)
    note: str = ""


class Budget:
    """The seconds left of the whole run."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


def run_step(
    steps: list[Step], name: str, budget: Budget, need_s: float, body: Callable[[Step], None]
) -> Step:
    """Run ``body`` unless less than ``need_s`` is left; a raised error fails the step."""
    step = Step(name)
    steps.append(step)
    if budget.left() < need_s:
        step.note = (
            f"skipped: {budget.left():.0f} s left of the budget, the step needs ~{need_s:.0f} s"
        )
        print(f"[{name}] {step.note}", file=sys.stderr)
        return step
    print(f"[{name}] ...", file=sys.stderr)
    started = time.perf_counter()
    try:
        body(step)
        if step.status == "skipped":
            step.status = "ok"
    except Exception as exc:  # the report names it; the next steps still run
        step.status = "failed"
        step.note = f"{type(exc).__name__}: {exc}"[:2000]
    step.seconds = time.perf_counter() - started
    print(f"[{name}] {step.status} in {step.seconds:.1f} s {step.note}", file=sys.stderr)
    return step


# -- setup ------------------------------------------------------------------------------


def install_carry(carry: Path, work: Path) -> tuple[Path, Path]:
    """The carry's wheels into ``work/site`` and ComfyUI into ``work``; both paths."""
    site = work / "site"
    if not site.is_dir():
        wheels = sorted(str(p) for p in (carry / "wheels").glob("*.whl"))
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
             "--no-compile", "--target", str(site), *wheels],
            check=True,
        )  # fmt: skip
    checkout = work / "ComfyUI"
    if not (checkout / "execution.py").is_file():
        with tarfile.open(carry / "ComfyUI.tar.xz") as archive:
            archive.extractall(work, filter="data")
    return site, checkout


def check_imports(env: dict[str, str]) -> dict[str, str]:
    """``module -> version or 'MISSING'`` as a fresh interpreter with ``env`` sees them."""
    code = (
        "import importlib, json, sys\n"
        "out = {}\n"
        f"for name in {list(_MODULES)!r}:\n"
        "    try:\n"
        "        m = importlib.import_module(name)\n"
        "        out[name] = str(getattr(m, '__version__', 'present'))\n"
        "    except Exception as e:\n"
        "        out[name] = 'MISSING: ' + type(e).__name__ + ': ' + str(e)[:200]\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    found: dict[str, str] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


# -- workflows --------------------------------------------------------------------------


def node(class_type: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs}


def txt2img(checkpoint: str, width: int, steps: int, seed: int, prefix: str) -> dict[str, Any]:
    """CheckpointLoaderSimple -> two CLIPTextEncode -> KSampler -> VAEDecode -> SaveImage."""
    return {
        "1": node("CheckpointLoaderSimple", ckpt_name=checkpoint),
        "2": node("CLIPTextEncode", text="a photo of a cat on a sofa", clip=["1", 1]),
        "3": node("CLIPTextEncode", text="blurry", clip=["1", 1]),
        "4": node("EmptyLatentImage", width=width, height=width, batch_size=1),
        "5": node(
            "KSampler",
            model=["1", 0],
            seed=seed,
            steps=steps,
            cfg=7.0,
            sampler_name="euler",
            scheduler="normal",
            positive=["2", 0],
            negative=["3", 0],
            latent_image=["4", 0],
            denoise=1.0,
        ),
        "6": node("VAEDecode", samples=["5", 0], vae=["1", 2]),
        "7": node("SaveImage", images=["6", 0], filename_prefix=prefix),
    }


def worker_env(checkout: Path, work: Path, models_yaml: Path, folder: str) -> dict[str, str]:
    """The worker's environment for one process of this check."""
    return {
        "COMFYUI_PATH": str(checkout),
        "WORKER_DIR": str(work / folder),
        "EXTRA_MODEL_PATHS": str(models_yaml),
        "COMFY_LOG_LEVEL": "WARNING",
    }


# -- the in-process steps ---------------------------------------------------------------


class InProcess:
    """The worker booted in this process, and ComfyUI's own executor beside it."""

    def __init__(self, env: dict[str, str]) -> None:
        from engine import logs
        from engine.settings import Settings
        from engine.worker import Worker

        settings = Settings.from_env(env)
        logs.configure(settings.comfy_log_level, settings.secrets())
        self.worker = Worker.from_settings(settings)
        started = time.perf_counter()
        self.worker.boot()
        self.boot_s = time.perf_counter() - started
        import execution
        import server

        self.execution = execution
        # A second executor of ComfyUI's own: its own cache, as a ComfyUI server's.
        self.executor = execution.PromptExecutor(server.PromptServer.instance)
        import torch

        self.torch = torch
        self.cuda = bool(torch.cuda.is_available())

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def worker_job(self, workflow: dict[str, Any], job_id: str) -> tuple[float, dict[str, Any]]:
        """Seconds of ``Worker.handle`` and its response (checked: one image)."""
        self.sync()
        started = time.perf_counter()
        response = self.worker.handle({"id": job_id, "input": {"workflow": workflow}})
        self.sync()
        seconds = time.perf_counter() - started
        if "error" in response or len(response.get("images", [])) != 1:
            raise RuntimeError(f"the worker's job failed: {json.dumps(response)[:1500]}")
        base64.b64decode(response["images"][0]["data"].rpartition(",")[2])
        return seconds, response

    def comfy_job(self, workflow: dict[str, Any], prompt_id: str) -> float:
        """Seconds of ComfyUI's own validate + execute of the same prompt."""
        import asyncio

        prompt = copy.deepcopy(workflow)
        self.sync()
        started = time.perf_counter()
        ok, error, outputs, _ = asyncio.run(self.execution.validate_prompt(prompt_id, prompt, None))
        if not ok:
            raise RuntimeError(f"ComfyUI refused the prompt: {error}")
        self.executor.execute(prompt, prompt_id, {"client_id": "gpu-check"}, outputs)
        self.sync()
        seconds = time.perf_counter() - started
        if not self.executor.success:
            raise RuntimeError(f"ComfyUI's run failed: {self.executor.status_messages[-1:]}")
        return seconds

    def memory(self) -> dict[str, float]:
        """The CUDA allocator's MiB (allocated, reserved), or this process's RSS on a CPU."""
        if self.cuda:
            return {
                "allocated_mib": self.torch.cuda.memory_allocated() / MIB,
                "reserved_mib": self.torch.cuda.memory_reserved() / MIB,
            }
        pages = int(Path("/proc/self/statm").read_text(encoding="utf-8").split()[1])
        return {"rss_mib": pages * os.sysconf("SC_PAGE_SIZE") / MIB}

    def release(self) -> None:
        """Unload every model, so a child process finds the device free."""
        import comfy.model_management as mm

        mm.unload_all_models()
        mm.soft_empty_cache()


def overhead_step(proc: InProcess, sizes: Sizes, checkpoint: str, step: Step) -> None:
    seed = 1000
    # First of each: models load, kernels compile; not counted.
    proc.worker_job(txt2img(checkpoint, sizes.width, sizes.steps, seed, "check/w"), "warm-w")
    proc.comfy_job(txt2img(checkpoint, sizes.width, sizes.steps, seed, "check/c"), "warm-c")
    pairs = []
    for i in range(sizes.pairs):
        seed = 2000 + i
        w, _ = proc.worker_job(
            txt2img(checkpoint, sizes.width, sizes.steps, seed, "check/w"), f"w{i}"
        )
        c = proc.comfy_job(txt2img(checkpoint, sizes.width, sizes.steps, seed, "check/c"), f"c{i}")
        pairs.append((w, c))
    per_pair = [100.0 * (w - c) / c for w, c in pairs]
    step.facts = {
        "pairs": [{"worker_s": w, "comfyui_s": c} for w, c in pairs],
        "worker_median_s": statistics.median(w for w, _ in pairs),
        "comfyui_median_s": statistics.median(c for _, c in pairs),
        "overhead_pct_per_pair_median": statistics.median(per_pair),
        "overhead_pct_min_max": [min(per_pair), max(per_pair)],
        "target_pct": sizes.overhead_target_pct,
    }
    target = sizes.overhead_target_pct
    if target is not None and statistics.median(per_pair) >= target:
        step.status = "failed"
        step.note = f"overhead {statistics.median(per_pair):.2f} % is not under {target} %"


def memory_step(proc: InProcess, sizes: Sizes, checkpoint: str, step: Step) -> None:
    samples = []
    for i in range(sizes.jobs):
        proc.worker_job(txt2img(checkpoint, sizes.width, sizes.steps, 3000 + i, "check/m"), f"m{i}")
        samples.append({"job": i + 1, **proc.memory()})
    key = "allocated_mib" if proc.cuda else "rss_mib"
    growth = samples[-1][key] - samples[min(1, len(samples) - 1)][key]
    step.facts = {
        "samples": samples,
        "measure": key,
        "growth_mib": growth,
        "limit_mib": sizes.growth_limit_mib,
    }
    if proc.cuda:
        step.facts["reserved_growth_mib"] = (
            samples[-1]["reserved_mib"] - samples[min(1, len(samples) - 1)]["reserved_mib"]
        )
        step.facts["max_allocated_mib"] = proc.torch.cuda.max_memory_allocated() / MIB
    if growth > sizes.growth_limit_mib:
        step.status = "failed"
        step.note = f"{key} grew {growth:.0f} MiB from job 2 to job {len(samples)}"


# -- the cold start child ---------------------------------------------------------------


def cold_child(spec_path: Path) -> int:
    """In a fresh process: boot with the warm-up workflow, run one job, print the times."""
    main_at = time.time()
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    from engine import logs
    from engine.settings import Settings
    from engine.worker import Worker

    settings = Settings.from_env({**os.environ, **spec["env"]})
    logs.configure(settings.comfy_log_level, settings.secrets())
    worker = Worker.from_settings(settings)
    worker.boot()
    ready_at = time.time()
    response = worker.handle({"id": "cold", "input": {"workflow": spec["workflow"]}})
    done_at = time.time()
    runtime = worker.runtime
    print(
        _CHILD_PREFIX
        + json.dumps(
            {
                "main_at": main_at,
                "ready_at": ready_at,
                "done_at": done_at,
                "boot_timings": dict(getattr(runtime, "boot_timings", {})),
                "warmup_s": getattr(runtime, "warmup_s", None),
                "ok": "error" not in response and len(response.get("images", [])) == 1,
                "error": response.get("error"),
            }
        ),
        flush=True,
    )
    return 0


def cold_start_step(
    env: dict[str, str],
    work: Path,
    warmup: dict[str, Any],
    workflow: dict[str, Any],
    timeout_s: float,
    step: Step,
) -> None:
    spec = work / "cold-spec.json"
    warmup_path = work / "warmup.json"
    warmup_path.write_text(json.dumps(warmup), encoding="utf-8")
    spec.write_text(
        json.dumps({"env": {**env, "WARMUP_WORKFLOW": str(warmup_path)}, "workflow": workflow}),
        encoding="utf-8",
    )
    spawned_at = time.time()
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--cold-child", str(spec)],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout_s,
    )  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith(_CHILD_PREFIX)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"the cold-start process failed (exit {done.returncode}): {done.stderr[-1500:]}"
        )
    report = json.loads(lines[-1].removeprefix(_CHILD_PREFIX))
    if not report["ok"]:
        raise RuntimeError(f"its first job failed: {report['error']}")
    step.facts = {
        "interpreter_s": report["main_at"] - spawned_at,
        "ready_s": report["ready_at"] - spawned_at,
        "warmup_s": report["warmup_s"],
        "boot_timings": report["boot_timings"],
        "first_job_s": report["done_at"] - report["ready_at"],
        "first_job_done_s": report["done_at"] - spawned_at,
    }
    if report["warmup_s"] is None:
        step.status = "failed"
        step.note = "the warm-up workflow did not run (see the worker's log)"


# -- the report -------------------------------------------------------------------------


def markdown(mode: str, device: str, steps: list[Step], total_s: float) -> str:
    lines = [
        f"### GPU check ({mode} mode) on {device}",
        "",
        "| step | status | seconds | result |",
        "| --- | --- | ---: | --- |",
    ]
    for step in steps:
        lines.append(f"| {step.name} | {step.status} | {step.seconds:.1f} | {_summary(step)} |")
    lines += ["", f"Total {total_s:.0f} s. Python {platform.python_version()}.", ""]
    return "\n".join(lines)


def _summary(step: Step) -> str:
    f = step.facts
    if step.note and step.status != "ok":
        return step.note.replace("|", "/").replace("\n", " ")[:300]
    if step.name == "overhead" and f:
        return (
            f"worker {f['worker_median_s']:.3f} s, ComfyUI {f['comfyui_median_s']:.3f} s (medians); "
            f"overhead per pair: **{f['overhead_pct_per_pair_median']:.2f} %** "
            f"(min {f['overhead_pct_min_max'][0]:.2f}, max {f['overhead_pct_min_max'][1]:.2f})"
        )
    if step.name == "memory" and f:
        return f"{f['measure']} growth from job 2 to job {len(f['samples'])}: **{f['growth_mib']:.1f} MiB** (limit {f['limit_mib']:.0f})"
    if step.name == "cold start" and f:
        return (
            f"ready {f['ready_s']:.1f} s (warm-up {f['warmup_s'] or 0:.1f} s inside), "
            f"first job done **{f['first_job_done_s']:.1f} s** from spawn"
        )
    if step.name == "tests" and f:
        return f.get("summary", "")
    if step.name == "setup" and f:
        missing = [k for k, v in f.get("modules", {}).items() if v.startswith("MISSING")]
        return (
            f"torch {f.get('torch')}, {len(f.get('modules', {})) - len(missing)} modules found"
            + (f"; missing: {', '.join(missing)}" if missing else "")
        )
    if step.name == "checkpoint" and f:
        return f"{f['kind']}: {f['gib']:.2f} GiB in {f['seconds']:.0f} s"
    return step.note


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=("gpu", "cpu"), default="gpu")
    parser.add_argument("--carry", type=Path, help="the folder scripts/prepare_gpu_carry.py made")
    parser.add_argument(
        "--comfyui", type=Path, help="a ComfyUI checkout (default: $COMFYUI_PATH or the carry's)"
    )
    parser.add_argument("--out", type=Path, required=False, help="where report.json goes")
    parser.add_argument(
        "--work", type=Path, help="models and job folders (default: a temporary folder)"
    )
    parser.add_argument(
        "--budget", type=float, default=480.0, help="seconds for the whole run (480)"
    )
    parser.add_argument(
        "--tests", nargs="*", help="pytest targets (default: the mode's); none to skip"
    )
    parser.add_argument("--cold-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cold_child is not None:
        return cold_child(args.cold_child)
    # ComfyUI's checkout holds a package named "tests" too: this repo's must be the one
    # imported, before the boot puts the checkout first on sys.path.
    import tests.engine.sd15
    import tests.engine.sdxl  # noqa: F401

    budget = Budget(args.budget)
    sizes = SIZES[args.mode]
    started = time.perf_counter()
    steps: list[Step] = []
    temp = None
    if args.work is None:
        temp = tempfile.mkdtemp(prefix="gpu-check-")
    work = (args.work or Path(temp or ".")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env: dict[str, str] = {}
    context: dict[str, Any] = {}

    def setup(step: Step) -> None:
        checkout = args.comfyui or (
            Path(os.environ["COMFYUI_PATH"]) if os.environ.get("COMFYUI_PATH") else None
        )
        if args.carry is not None:
            site, unpacked = install_carry(args.carry.resolve(), work)
            sys.path.insert(1, str(site))
            os.environ["PYTHONPATH"] = os.pathsep.join(
                [str(REPO), str(site), *filter(None, [os.environ.get("PYTHONPATH")])]
            )
            checkout = checkout or unpacked
        else:
            os.environ["PYTHONPATH"] = os.pathsep.join(
                [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
            )
        if checkout is None:
            raise RuntimeError("no ComfyUI: pass --carry, --comfyui or set COMFYUI_PATH")
        context["checkout"] = Path(checkout).resolve()
        modules = check_imports(dict(os.environ))
        import torch

        cuda = bool(torch.cuda.is_available())
        step.facts = {
            "torch": torch.__version__,
            "cuda": cuda,
            "device": torch.cuda.get_device_name(0) if cuda else "CPU",
            "modules": modules,
            "comfyui": str(context["checkout"]),
        }
        missing = [k for k, v in modules.items() if v.startswith("MISSING")]
        if missing:
            raise RuntimeError(
                f"missing modules {', '.join(missing)}: add their wheels with "
                "scripts/prepare_gpu_carry.py --wheel NAME==VERSION"
            )
        if args.mode == "gpu" and not cuda:
            raise RuntimeError("torch sees no CUDA device: run with --mode cpu")
        models = work / "models"
        (models / "checkpoints").mkdir(parents=True, exist_ok=True)
        yaml = work / "models.yaml"
        yaml.write_text(
            json.dumps({"gpu_check": {"base_path": str(models), "checkpoints": "checkpoints"}}),
            encoding="utf-8",
        )
        env.update(worker_env(context["checkout"], work, yaml, "worker"))

    run_step(steps, "setup", budget, 30, setup)
    ready = steps[-1].status == "ok"

    def tests_step(step: Step) -> None:
        targets = DEFAULT_TESTS[args.mode] if args.tests is None else args.tests
        if not targets:
            step.note = "no tests asked for"
            return
        timeout = max(30.0, budget.left() - 300.0 if args.mode == "gpu" else budget.left() / 2)
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "default::UserWarning",
             "-W", "default::FutureWarning", *targets],
            cwd=REPO, env={**os.environ, "COMFYUI_PATH": str(context["checkout"])},
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        tail = done.stdout.strip().splitlines()[-1:] or [""]
        step.facts = {
            "exit": done.returncode,
            "summary": tail[0],
            "targets": targets,
            "output_tail": done.stdout[-3000:],
        }
        if done.returncode != 0:
            step.status = "failed"
            step.note = tail[0]

    if ready:
        run_step(steps, "tests", budget, 60, tests_step)

    proc: InProcess | None = None

    def boot_step(step: Step) -> None:
        nonlocal proc
        proc = InProcess(env)
        step.facts = {"boot_s": proc.boot_s, "cuda": proc.cuda}

    if ready:
        run_step(steps, "boot", budget, 30, boot_step)

    def checkpoint_step(step: Step) -> None:
        from tests.engine.sd15 import write_sd15_checkpoint
        from tests.engine.sdxl import write_sdxl_checkpoint

        name = f"random-{sizes.checkpoint}.safetensors"
        path = work / "models" / "checkpoints" / name
        began = time.perf_counter()
        if not path.is_file():
            (write_sdxl_checkpoint if sizes.checkpoint == "sdxl" else write_sd15_checkpoint)(path)
        context["ckpt"] = name
        step.facts = {
            "kind": sizes.checkpoint,
            "gib": path.stat().st_size / 1024**3,
            "seconds": time.perf_counter() - began,
        }

    if proc is not None:
        run_step(steps, "checkpoint", budget, 60, checkpoint_step)
    if proc is not None and "ckpt" in context:
        run_step(
            steps, "overhead", budget, 60, lambda s: overhead_step(proc, sizes, context["ckpt"], s)
        )
        run_step(
            steps, "memory", budget, 60, lambda s: memory_step(proc, sizes, context["ckpt"], s)
        )
        proc.release()
        # The warm-up loads the models; the first job is another seed, as a user's would be
        # (the same prompt would be answered from ComfyUI's cache).
        warmup = txt2img(context["ckpt"], sizes.width, sizes.steps, 7, "check/warm")
        workflow = txt2img(context["ckpt"], sizes.width, sizes.steps, 8, "check/cold")
        cold_env = {**env, "WORKER_DIR": str(work / "cold")}
        run_step(
            steps, "cold start", budget, 45,
            lambda s: cold_start_step(cold_env, work, warmup, workflow, max(30.0, budget.left()), s),
        )  # fmt: skip

    device = steps[0].facts.get("device", "unknown device") if steps else "unknown device"
    report = markdown(args.mode, device, steps, time.perf_counter() - started)
    print(report)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "report.json").write_text(
            json.dumps(
                {"mode": args.mode, "device": device, "steps": [s.__dict__ for s in steps]},
                indent=2,
                default=str,
            )
            + "\n",
            encoding="utf-8",
        )
        (args.out / "report.md").write_text(report + "\n", encoding="utf-8")
    if temp is not None:
        with contextlib.suppress(OSError):
            shutil.rmtree(temp)
    return 0 if steps and all(s.status == "ok" for s in steps) and len(steps) == 7 else 1


if __name__ == "__main__":
    sys.exit(main())
