"""Helpers for the real-engine tests: where ComfyUI is, workflows, test media.

The tests run only where ``COMFYUI_PATH`` names a ComfyUI checkout, or where
``scripts/setup.sh --with-comfyui`` installed one into ``comfyui/ComfyUI``, and only in a
Python that has torch (ComfyUI cannot start without it); every module here carries
:data:`ENGINE_MARKS`, which skips them, saying why, elsewhere (CI, the dev venv).

Custom node packs come from the folder ``COMFYUI_TEST_CUSTOM_NODES`` names or from the
checkout's own ``custom_nodes/``. A pack named explicitly (the first) must import: its
failure fails its tests, as the image environment's run must. A pack only found in the
checkout (a developer's ComfyUI, used from a venv that may lack its requirements) that
fails to import for a missing module has its tests skipped, naming the pack and the
module (:func:`require_packs`, :func:`skip_packs_that_cannot_import`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageChops

from engine.deadline import Deadline
from engine.pipeline import Ticket
from engine.runtime import Directories, RunResult, Runtime
from engine.settings import Settings
from engine.worker import Worker

CUSTOM_NODES_ENV = "COMFYUI_TEST_CUSTOM_NODES"
"""A folder of extra custom node packs (e.g. one holding ComfyUI-VideoHelperSuite)."""

TEST_NODES_DIR = Path(__file__).parent / "custom_nodes"
"""This suite's own node pack (``worker_test_nodes``), loaded as a custom node."""


BUNDLED_CHECKOUT = Path(__file__).parents[2] / "comfyui" / "ComfyUI"
"""Where ``scripts/setup.sh --with-comfyui`` installs the pinned ComfyUI."""


def comfyui_checkout() -> tuple[Path | None, str]:
    """The checkout ``COMFYUI_PATH`` names (else setup.sh's), or ``None`` and why not."""
    raw = os.environ.get("COMFYUI_PATH", "").strip()
    if not raw:
        if (BUNDLED_CHECKOUT / "execution.py").is_file():
            return BUNDLED_CHECKOUT, ""
        return None, (
            "COMFYUI_PATH is not set and comfyui/ComfyUI is absent: the real-engine tests "
            "need a ComfyUI checkout (scripts/setup.sh --with-comfyui)"
        )
    path = Path(raw).expanduser()
    if not (path / "execution.py").is_file() or not (path / "comfy").is_dir():
        return None, f"COMFYUI_PATH={raw} is not a ComfyUI checkout (no execution.py, comfy/)"
    if importlib.util.find_spec("torch") is None:
        # Not a failure of the code under test: ComfyUI imports torch first thing. Any
        # environment meant to run it (the image's, a CUDA host's) has torch, so there
        # the tests still run, and fail on whatever else is missing.
        return None, (
            f"COMFYUI_PATH={raw} is set, but this Python has no torch, which ComfyUI needs "
            "to start: run the real-engine tests with a venv that has ComfyUI's "
            "requirements (the image environment, docs/runtime.md)"
        )
    return path, ""


COMFYUI_PATH, _SKIP_REASON = comfyui_checkout()

ENGINE_MARKS = [
    pytest.mark.engine,
    pytest.mark.skipif(COMFYUI_PATH is None, reason=_SKIP_REASON),
]

REPO = Path(__file__).resolve().parents[2]
_WORKER_PREFIXES = ("BUCKET_", "COMFY", "INPUT_", "JOB_", "RESPONSE_", "WORKER_", "RUNPOD_")


def run_script(
    tmp_path: Path, log_level: str, *argv: str, env: Mapping[str, str] = {}
) -> subprocess.CompletedProcess[str]:
    """``python <argv>`` from the checkout on the real engine, with no worker settings of
    the developer's own (``env`` adds the test's); the work dir under ``tmp_path``."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(_WORKER_PREFIXES)}
    child_env |= {
        "PYTHONPATH": str(REPO),
        "COMFYUI_PATH": str(COMFYUI_PATH),
        "WORKER_DIR": str(tmp_path / "work"),
        "COMFY_LOG_LEVEL": log_level,
        **env,
    }
    return subprocess.run(
        [sys.executable, *argv],
        cwd=REPO,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def child_report(
    script: str,
    root: Path,
    name: str,
    config: Path,
    env: Mapping[str, str],
    *,
    drop: frozenset[str] = frozenset(),
    timeout_s: int = 300,
) -> dict[str, Any]:
    """Run ``script`` in a fresh Python on the real engine and return the JSON report its
    last line prints: the worker's folders under ``root/name``, ``config`` as
    ``EXTRA_MODEL_PATHS``, ``root/<name>.json`` as ``WORKFLOWS``, and ``env`` over the
    test's own environment, less the variables in ``drop``."""
    unwanted = {"WARMUP_WORKFLOW", "COMFY_ORG_API_KEY", *drop}
    child_env = {k: v for k, v in os.environ.items() if k not in unwanted}
    child_env.update(
        REPO=str(REPO),
        COMFYUI_PATH=str(COMFYUI_PATH),
        WORKER_DIR=str(root / name),
        EXTRA_MODEL_PATHS=str(config),
        WORKFLOWS=str(root / f"{name}.json"),
        COMFY_LOG_LEVEL="WARNING",
        **env,
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=child_env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    report: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return report


@dataclass(frozen=True)
class DeadlineOnCue(Deadline):
    """A deadline that passes when the test sets ``cue``: driven by progress, not the clock.

    No timer is armed for it (``remaining()`` is None until the cue), so a test states
    *when* the limit passes (say, at the fifth sampler step) and holds on any machine.
    """

    cue: threading.Event = field(default_factory=threading.Event)

    def remaining(self) -> float | None:
        return 0.0 if self.cue.is_set() else None

    def expired(self) -> bool:
        return self.cue.is_set()


def extra_custom_nodes() -> Path | None:
    """The folder ``COMFYUI_TEST_CUSTOM_NODES`` names, if set."""
    raw = os.environ.get(CUSTOM_NODES_ENV, "").strip()
    return Path(raw).expanduser() if raw else None


def pack_folders() -> list[Path]:
    """Where the session's runtime loads packs from: the test folder, the checkout's own."""
    folders = [extra_custom_nodes(), COMFYUI_PATH / "custom_nodes" if COMFYUI_PATH else None]
    return [folder for folder in folders if folder is not None and folder.is_dir()]


def require_packs(*packs: str) -> None:
    """Skip, saying where to put it, unless each pack is where the session loads packs;
    skip, naming the missing module, when the session's ComfyUI could not import one
    that is only in the checkout (:func:`skip_packs_that_cannot_import`)."""
    for pack in packs:
        if not any((folder / pack).is_dir() for folder in pack_folders()):
            pytest.skip(
                f"custom node pack {pack} is not installed: put it in the folder "
                f"{CUSTOM_NODES_ENV} names, or in the ComfyUI checkout's custom_nodes/"
            )
    skip_packs_that_cannot_import(failed_packs(), packs)


def failed_packs() -> list[dict[str, str | None]]:
    """The custom node packs this process's ComfyUI failed to import (at boot, or on
    first use), as :func:`skip_packs_that_cannot_import` takes them (a child boot's
    report carries its own)."""
    from engine.runtime.pack_imports import RECORD

    return [
        {"pack": f.path.name, "module": f.missing_module, "error": f.error}
        for f in RECORD.failed
        if f.group == "custom_nodes"
    ]


def only_in_checkout(pack: str) -> bool:
    """Whether ``pack`` comes from the checkout's ``custom_nodes/`` and not from the
    folder ``COMFYUI_TEST_CUSTOM_NODES`` names (where a pack must import)."""
    named = extra_custom_nodes()
    if named is not None and (named / pack).exists():
        return False
    return COMFYUI_PATH is not None and (COMFYUI_PATH / "custom_nodes" / pack).exists()


def skip_packs_that_cannot_import(
    failed: Iterable[Mapping[str, str | None]], packs: Iterable[str] | None = None
) -> None:
    """Skip when one of ``packs`` (every pack when None) failed to import for a missing
    module and is only in the checkout; a pack ``COMFYUI_TEST_CUSTOM_NODES`` names, or a
    failure of another kind, is left to fail the test."""
    wanted = None if packs is None else set(packs)
    for entry in failed:
        pack, module = str(entry["pack"]), entry.get("module")
        if module and (wanted is None or pack in wanted) and only_in_checkout(pack):
            pytest.skip(
                f"custom node pack {pack} cannot be imported by this Python: module "
                f"'{module}' is missing ({entry.get('error')}). It is in the ComfyUI "
                f"checkout's custom_nodes/, so its tests skip: install its requirements, "
                f"or name a folder holding it in {CUSTOM_NODES_ENV} to make this a failure"
            )


# -- workflows -------------------------------------------------------------------------


def node(class_type: str, **inputs: Any) -> dict[str, Any]:
    """One node in API format."""
    return {"class_type": class_type, "inputs": inputs}


def empty_image(
    width: int = 64, height: int = 64, batch: int = 1, color: int = 0
) -> dict[str, Any]:
    """An ``EmptyImage`` node: ``batch`` images of one colour (0xRRGGBB)."""
    return node("EmptyImage", width=width, height=height, batch_size=batch, color=color)


def invert_workflow(image_name: str, prefix: str) -> dict[str, Any]:
    """LoadImage -> ImageInvert -> SaveImage."""
    return {
        "1": node("LoadImage", image=image_name),
        "2": node("ImageInvert", image=["1", 0]),
        "3": node("SaveImage", images=["2", 0], filename_prefix=prefix),
    }


# -- media -----------------------------------------------------------------------------


def gradient_rgb(width: int = 64, height: int = 64, seed: int = 0) -> Image.Image:
    """A deterministic RGB image in which every channel varies (no flat areas)."""
    size = (width, height)
    red = Image.linear_gradient("L").rotate(90).resize(size)
    green = Image.linear_gradient("L").resize(size)
    blue = Image.radial_gradient("L").resize(size)
    image = Image.merge("RGB", (red, green, blue))
    return ImageChops.offset(image, 7 * seed, 3 * seed)


def max_difference(a: Image.Image, b: Image.Image) -> int:
    """The largest per-channel difference between two images of one size."""
    extrema = ImageChops.difference(a.convert("RGB"), b.convert("RGB")).getextrema()
    return max(high for _, high in extrema)


def write_frames(path: Path, count: int, size: int = 64) -> list[tuple[int, int, int]]:
    """An animated GIF of ``count`` distinct flat colours; LoadImage reads it as a batch."""
    colours = [(40 * i % 256, 255 - 30 * i % 256, 90 + 20 * i % 166) for i in range(count)]
    frames = [Image.new("RGB", (size, size), c) for c in colours]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return colours


def files_of(result: RunResult, dirs: Directories) -> list[Path]:
    """Every file the ui outputs of ``result`` name, where ComfyUI wrote it."""
    paths: list[Path] = []
    for output in result.outputs.values():
        for items in output.values():
            for item in items if isinstance(items, list) else []:
                if isinstance(item, dict) and "filename" in item:
                    folder = dirs.for_type(item.get("type", "output"))
                    paths.append(folder / item.get("subfolder", "") / item["filename"])
    return paths


def count_video_frames(path: Path) -> tuple[int, tuple[int, int]]:
    """Decode every frame with PyAV: (frames, (width, height)).

    Decoded, not demuxed, so it checks the worker's packet count independently; and in
    this process, because the engine's PyAV threads make forking a child unsafe here.
    """
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return frames, (stream.codec_context.width, stream.codec_context.height)


# x264 (core 165, in PyAV 18.1.0's and 19.0.2's wheels) does not give the same bytes for
# the same frames every time on a CPU with AVX-512: encoding one 11-frame clip again and
# again in one process, with the same settings and identical YUV input, about one encode
# in 500 coded one P-frame differently (its packet 23 bytes longer, that frame decoded up
# to 56 levels apart in a few pixels, mean 1.1). None in 2000 with x264's asm limited to
# AVX2, none in 1500 with it off, so it is x264's AVX-512 code, not the settings or the
# threads (x264 runs one thread here: PyAV leaves FFmpeg's thread_count at 1). ComfyUI's
# own SaveVideo differs from itself the same way, so two MP4s of the same frames are
# compared by what x264 does reproduce.
H264_DECODED_MEAN_LEVELS = 2.0
"""How far apart two encodes' decoded frames may be, in mean levels per pixel: x264's
re-coded frame above was 1.1; other frames, timing or conversion are far more."""


def h264_content(path: Path) -> dict[str, Any]:
    """An MP4 of H.264 (and AAC) as PyAV reads it, all but the bytes of the H.264 packets:
    the metadata, each stream's settings, x264's own line of every setting it encoded
    with (its SEI), every packet's timing and keyframe flag, the AAC packets' bytes."""
    import av

    with av.open(str(path)) as container:
        streams = []
        for stream in container.streams:
            context = stream.codec_context
            if stream.type == "video":
                settings = (context.width, context.height, context.pix_fmt, stream.average_rate)
            else:
                settings = (context.sample_rate, context.layout.name, context.format.name)
            streams.append((stream.type, context.name, stream.time_base, settings))
        packets: list[tuple[Any, ...]] = []
        x264 = b""
        for packet in container.demux():
            if not packet.size:
                continue
            timing = (packet.stream.index, packet.pts, packet.dts, packet.duration)
            if packet.stream.type == "video":
                data = bytes(packet)
                if not x264 and b"x264 - core" in data:
                    x264 = data[data.index(b"x264 - core") :].split(b"\x00", 1)[0]
                packets.append((*timing, packet.is_keyframe))
            else:
                packets.append((*timing, bytes(packet)))
        return {
            "metadata": dict(container.metadata),
            "streams": streams,
            "x264": x264.decode(),
            "packets": packets,
        }


def decoded_frames(path: Path) -> list[Any]:
    """Every frame of the file's video stream, decoded to rgb24 (numpy arrays)."""
    import av

    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def assert_same_h264(path: Path, other: Path) -> None:
    """``path`` is ``other`` encoded again: the same :func:`h264_content`, and frames that
    decode alike (within :data:`H264_DECODED_MEAN_LEVELS`)."""
    content = h264_content(path)
    assert content == h264_content(other)
    assert "options: " in content["x264"], content["x264"]  # x264 named its settings
    frames, others = decoded_frames(path), decoded_frames(other)
    assert len(frames) == len(others) > 0
    for index, (frame, again) in enumerate(zip(frames, others, strict=True)):
        assert frame.shape == again.shape
        apart = abs(frame.astype(float) - again).mean()
        assert apart <= H264_DECODED_MEAN_LEVELS, f"frame {index}: {apart:.2f} levels apart"


# -- packs on a network volume -----------------------------------------------------------

VOLUME_PACK_ORIGIN = "https://github.com/example/volume-pack-missing.git"
VOLUME_MISSING_MODULE = "worker_test_absent_module"


def make_volume_packs(folder: Path) -> Path:
    """A pod's ``custom_nodes/`` on a volume: one pack the image satisfies, one it does not.

    ``volume-pack-ok`` imports only what the image has (torch) and provides
    ``VolumePackInvert``; ``volume-pack-missing`` is a git checkout whose import needs a
    module its requirements.txt lists and the image lacks; ``worker_test_nodes`` has the
    name of this suite's own pack and must never be imported (the first one wins).
    """
    import subprocess
    import textwrap

    ok = folder / "volume-pack-ok"
    ok.mkdir(parents=True)
    (ok / "__init__.py").write_text(
        textwrap.dedent(
            """
            import torch

            class VolumePackInvert:
                RETURN_TYPES = ("IMAGE",)
                FUNCTION = "invert"
                CATEGORY = "worker tests"

                @classmethod
                def INPUT_TYPES(cls):
                    return {"required": {"image": ("IMAGE",)}}

                def invert(self, image):
                    return (torch.ones_like(image) - image,)

            NODE_CLASS_MAPPINGS = {"VolumePackInvert": VolumePackInvert}
            """
        )
    )
    missing = folder / "volume-pack-missing"
    missing.mkdir()
    (missing / "__init__.py").write_text(
        f"import {VOLUME_MISSING_MODULE}\nNODE_CLASS_MAPPINGS = {{'VolumeMissingNode': None}}\n"
    )
    (missing / "requirements.txt").write_text("numpy\nworker-test-absent-module>=1.2\n")
    for args in (
        ["init", "--quiet"],
        ["add", "."],
        ["commit", "--quiet", "-m", "pack"],
        ["remote", "add", "origin", VOLUME_PACK_ORIGIN],
    ):
        subprocess.run(
            ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
            cwd=missing,
            check=True,
            capture_output=True,
        )
    shadow = folder / TEST_NODES_DIR.joinpath("worker_test_nodes").name
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise RuntimeError('a second copy must not load')\n")
    return folder


class HeldRun:
    """Two jobs in flight on the real engine, the first one's run held.

    A worker with ``MAX_CONCURRENT_JOBS=2`` whose progress sink blocks job ``held_id``'s
    run at its ``WorkerTestSteps`` node (:func:`held_workflow`): ``at_steps`` is set
    there, and the run goes on once ``go_on`` is set. ``waiting`` is set when the job
    admitted second asks for the engine. :meth:`send` hands a job to the worker on a
    thread of its own; its answer lands in ``answers``.
    """

    def __init__(self, runtime: Runtime, held_id: str = "a", hang_s: float = 60.0) -> None:
        self.at_steps, self.go_on, self.waiting = (threading.Event() for _ in range(3))
        self.answers: dict[str, dict[str, Any]] = {}

        def sink(job: dict[str, Any], line: str) -> None:
            if job["id"] == held_id and "WorkerTestSteps" in line and not self.at_steps.is_set():
                self.at_steps.set()
                assert self.go_on.wait(hang_s)

        settings = Settings(work_dir=runtime.directories.input.parent)
        self.worker = Worker(
            dataclasses.replace(settings, max_concurrent_jobs=2), runtime, progress=sink
        )
        take_engine = self.worker._pipeline.take_engine

        def noting(ticket: Ticket, deadline: Deadline) -> bool:
            if ticket.number == 1:
                self.waiting.set()
            return take_engine(ticket, deadline)

        self.worker._pipeline.take_engine = noting  # type: ignore[method-assign]

    def send(self, job_id: str, job_input: dict[str, Any]) -> threading.Thread:
        thread = threading.Thread(
            target=lambda: self.answers.setdefault(
                job_id, self.worker.handle({"id": job_id, "input": job_input})
            ),
            daemon=True,
        )
        thread.start()
        return thread


def held_workflow(prefix: str, steps: int) -> dict[str, Any]:
    """An image through ``WorkerTestSteps`` (``steps`` steps) to SaveImage under ``prefix``:
    the run :class:`HeldRun` holds at its steps."""
    return {
        "1": empty_image(32, 32),
        "2": node("WorkerTestSteps", images=["1", 0], steps=steps, seconds_per_step=0.0),
        "3": node("SaveImage", images=["2", 0], filename_prefix=prefix),
    }
