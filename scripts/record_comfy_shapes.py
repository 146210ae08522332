#!/usr/bin/env python3
"""Record what real ComfyUI returns, as JSON fixtures for tests that run without it.

    COMFYUI_PATH=/path/to/ComfyUI python scripts/record_comfy_shapes.py
    COMFYUI_PATH=... python scripts/record_comfy_shapes.py --custom-nodes /path/to/custom_nodes

Boots the worker's own runtime (ComfyUI in-process, CPU where there is no GPU),
runs small model-free workflows and writes, into ``tests/fixtures/comfyui/``:

- ``ui_*.json``: the ui outputs of SaveImage, PreviewImage, SaveAnimatedWEBP,
  SaveAnimatedPNG, SaveVideo, SaveWEBM and (with ``--custom-nodes`` holding
  ComfyUI-VideoHelperSuite) VHS_VideoCombine, exactly as ``RunResult.outputs``;
- ``validation_*.json``: ``execution.validate_prompt``'s ``(ok, error, outputs,
  node_errors)`` for an unknown node type, no output node, values not in a list,
  a value of the wrong type, a missing required input, a type mismatch between
  linked nodes, a failed custom validation, an exception inside validation (a link
  to a missing node), a cycle, and several at once;
- ``cli_args.json``: the shape of ComfyUI's argument parser (``comfy.cli_args.parser``):
  each option's flags, destination, action, nargs, type, choices, default and
  mutually exclusive group, for the ``COMFY_ARGS`` tests (``--parser-only`` records
  only this, without booting);
- ``status_*.json``: the executor's ``status_messages`` for an execution error, an
  interrupted run and a success; ``events_executing.json``: the messages the
  executor sent to its server object during a small run.

Each file holds ``comfyui_version``, ``comfyui_commit`` and ``recorded_with`` (the
workflow) beside the recorded data. Absolute paths (tracebacks, VHS's
``fullpath``) become placeholders: ``<COMFYUI>``, ``<WORK_DIR>``,
``<CUSTOM_NODES>``, ``<PYTHON>``, ``<WORKER>`` (this checkout).
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import json
import logging
import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from PIL import Image  # noqa: E402

from engine.runtime import JobSpec  # noqa: E402
from engine.runtime.comfy import ComfyRuntime  # noqa: E402
from engine.settings import Settings  # noqa: E402

DEFAULT_OUT = REPO / "tests" / "fixtures" / "comfyui"
log = logging.getLogger("record_comfy_shapes")

Workflow = dict[str, Any]


def node(class_type: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs}


def frames_workflow(frames: str) -> Workflow:
    return {"1": node("LoadImage", image=frames)}


# -- ui outputs -------------------------------------------------------------------------

UI_WORKFLOWS: dict[str, Callable[[str], Workflow]] = {
    "ui_save_image": lambda frames: {
        "1": node("EmptyImage", width=64, height=64, batch_size=2, color=0x3366CC),
        "2": node("SaveImage", images=["1", 0], filename_prefix="job-0001/ComfyUI"),
    },
    "ui_preview_image": lambda frames: {
        "1": node("EmptyImage", width=64, height=64, batch_size=1, color=0),
        "2": node("PreviewImage", images=["1", 0]),
    },
    "ui_save_animated_webp": lambda frames: {
        **frames_workflow(frames),
        "2": node(
            "SaveAnimatedWEBP",
            images=["1", 0],
            filename_prefix="job-0001/ComfyUI",
            fps=6.0,
            lossless=False,
            quality=80,
            method="default",
        ),
    },
    "ui_save_animated_png": lambda frames: {
        **frames_workflow(frames),
        "2": node(
            "SaveAnimatedPNG",
            images=["1", 0],
            filename_prefix="job-0001/ComfyUI",
            fps=6.0,
            compress_level=4,
        ),
    },
    "ui_save_video": lambda frames: {
        **frames_workflow(frames),
        "2": node("CreateVideo", images=["1", 0], fps=8.0),
        "3": node(
            "SaveVideo",
            video=["2", 0],
            filename_prefix="job-0001/video/ComfyUI",
            format="mp4",
            codec="h264",
        ),
    },
    "ui_save_webm": lambda frames: {
        **frames_workflow(frames),
        "2": node(
            "SaveWEBM",
            images=["1", 0],
            filename_prefix="job-0001/ComfyUI",
            codec="vp9",
            fps=8.0,
            crf=32.0,
        ),
    },
}

VHS_WORKFLOW: Callable[[str], Workflow] = lambda frames: {  # noqa: E731
    **frames_workflow(frames),
    "2": node(
        "VHS_VideoCombine",
        images=["1", 0],
        frame_rate=8,
        loop_count=0,
        filename_prefix="job-0001/AnimateDiff",
        format="video/h264-mp4",
        pingpong=False,
        save_output=True,
        pix_fmt="yuv420p",
        crf=19,
        save_metadata=True,
        trim_to_audio=False,
    ),
}

# -- validation ---------------------------------------------------------------------------

_SAMPLER = {
    "seed": 1,
    "steps": 2,
    "cfg": 7.0,
    "sampler_name": "euler",
    "scheduler": "normal",
    "denoise": 1.0,
    "model": ["4", 0],
    "positive": ["6", 0],
    "negative": ["6", 0],
    "latent_image": ["5", 0],
}

VALIDATION_WORKFLOWS: dict[str, Workflow] = {
    "validation_unknown_type": {
        "1": node("NotARealNode", x=1),
        "2": node("AlsoNotReal"),
        "3": node("SaveImage", images=["1", 0], filename_prefix="x"),
    },
    "validation_no_outputs": {"1": node("EmptyImage", width=8, height=8, batch_size=1, color=0)},
    # A missing checkpoint (a short list: input_config is kept) and a sampler name (a
    # list of 40+: ComfyUI drops input_config to keep the answer small).
    "validation_value_not_in_list": {
        "4": node("CheckpointLoaderSimple", ckpt_name="SDXL\\missing-model.safetensors"),
        "5": node("EmptyLatentImage", width=64, height=64, batch_size=1),
        "6": node("CLIPTextEncode", text="a cat", clip=["4", 1]),
        "3": node("KSampler", **{**_SAMPLER, "sampler_name": "no_such_sampler"}),
        "8": node("VAEDecode", samples=["3", 0], vae=["4", 2]),
        "9": node("SaveImage", images=["8", 0], filename_prefix="x"),
    },
    "validation_invalid_input_type": {
        "1": node("EmptyImage", width="wide", height=8, batch_size=1, color=0),
        "2": node("SaveImage", images=["1", 0], filename_prefix="x"),
    },
    "validation_required_input_missing": {
        "1": node("EmptyImage", width=8, height=8, batch_size=1, color=0),
        "2": node("SaveImage", filename_prefix="x"),
        "3": node("SaveImage", images=["1", 0], filename_prefix="y"),
    },
    "validation_return_type_mismatch": {
        "1": node("EmptyLatentImage", width=64, height=64, batch_size=1),
        "2": node("SaveImage", images=["1", 0], filename_prefix="x"),
    },
    "validation_custom_validation_failed": {
        "1": node("LoadImage", image="never-uploaded.png"),
        "2": node("SaveImage", images=["1", 0], filename_prefix="x"),
    },
    # A link to a node that is not there: ComfyUI raises KeyError in node 2's validation
    # and files it under node 2 with the input name of node 3 (the worker's graph checks
    # catch this first; the shape is what engine.runtime.shapes must still read right).
    "validation_inner_exception": {
        "1": node("EmptyImage", width=8, height=8, batch_size=1, color=0),
        "2": node("ImageInvert", image=["99", 0]),
        "3": node("SaveImage", images=["2", 0], filename_prefix="x"),
    },
    # A cycle: ComfyUI's validation recurses round it until RecursionError.
    "validation_cycle": {
        "1": node("ImageInvert", image=["2", 0]),
        "2": node("ImageInvert", image=["1", 0]),
        "3": node("SaveImage", images=["2", 0], filename_prefix="x"),
    },
    # Several problems on several nodes in one answer (the fake runtime's "bad value").
    "validation_bad_value": {
        "1": node("EmptyImage", width=-5, height=99999, batch_size=1, color=0),
        "2": node(
            "ImageScale", image=["1", 0], upscale_method="nearest", width=8, height=8, crop="none"
        ),
        "3": node("SaveImage", images=["2", 0], filename_prefix="x"),
    },
}

# -- execution status ---------------------------------------------------------------------------


def chain_workflow(length: int) -> Workflow:
    """A chain of image scales slow enough on a CPU to interrupt part-way."""
    workflow: Workflow = {
        "0": node("EmptyImage", width=1024, height=1024, batch_size=4, color=0x102030)
    }
    for i in range(1, length + 1):
        scale = 1.01 if i % 2 else 0.99
        workflow[str(i)] = node(
            "ImageScaleBy", image=[str(i - 1), 0], upscale_method="bicubic", scale_by=scale
        )
    workflow["99"] = node("PreviewImage", images=[str(length), 0])
    return workflow


class Recorder:
    """Runs workflows through a booted runtime and writes fixtures."""

    def __init__(
        self, runtime: ComfyRuntime | None, out: Path, placeholders: dict[str, str]
    ) -> None:
        self.runtime = runtime
        self.out = out
        self.placeholders = sorted(placeholders.items(), key=lambda kv: -len(kv[0]))
        import comfyui_version

        self.meta = {"comfyui_version": comfyui_version.__version__, **comfyui_commit()}

    def write(self, name: str, workflow: Workflow, **data: Any) -> None:
        record = {**self.meta, "recorded_with": workflow, **data}
        text = json.dumps(record, indent=2, sort_keys=False, default=repr)
        for path, placeholder in self.placeholders:
            text = text.replace(json.dumps(path)[1:-1], placeholder)
        leftover = re.search(r"/(tmp|home|root|work|usr|opt)/[^\"]*", text)
        if leftover:
            raise RuntimeError(
                f"{name}: an absolute path was left in the record: {leftover.group(0)}"
            )
        (self.out / f"{name}.json").write_text(text + "\n", encoding="utf-8")
        log.info("wrote %s", name)

    def parser(self) -> None:
        # No workflow makes this one: the record says what it was read from instead.
        self.write("cli_args", {"read_from": "comfy.cli_args.parser"}, parser=parser_shape())

    def ui(self, name: str, workflow: Workflow) -> None:
        assert self.runtime is not None
        result = self.runtime.run(JobSpec(prompt_id=name, workflow=workflow))
        self.write(name, workflow, outputs=result.outputs)
        self.runtime.after_job()

    def validation(self, name: str, workflow: Workflow) -> None:
        import execution

        prompt = json.loads(json.dumps(workflow))
        ok, error, outputs, node_errors = asyncio.run(execution.validate_prompt(name, prompt, None))
        self.write(
            name, workflow, ok=ok, error=error, outputs=sorted(outputs), node_errors=node_errors
        )

    def status(self, name: str, workflow: Workflow, interrupt_after_s: float | None = None) -> None:
        """Run on a fresh executor of ComfyUI's own and record its status messages."""
        import comfy.model_management
        import execution
        import server

        executor = execution.PromptExecutor(server.PromptServer.instance)
        prompt = json.loads(json.dumps(workflow))
        ok, error, outputs, _ = asyncio.run(execution.validate_prompt(name, prompt, None))
        if not ok:
            raise RuntimeError(f"{name}: the workflow does not validate: {error}")
        timer = None
        if interrupt_after_s is not None:
            timer = threading.Timer(
                interrupt_after_s, comfy.model_management.interrupt_current_processing
            )
            timer.start()
        executor.execute(prompt, name, {"client_id": "recorder"}, outputs)
        if timer is not None:
            timer.cancel()
        self.write(
            name, workflow, status_messages=executor.status_messages, success=executor.success
        )

    def events(self, name: str, workflow: Workflow) -> None:
        """The messages the executor sends its server object during one run."""
        import execution
        import server

        stand_in = server.PromptServer.instance
        seen: list[tuple[str, Any]] = []
        stand_in.set_listener(lambda event, data: seen.append((event, data)))
        try:
            executor = execution.PromptExecutor(stand_in)
            prompt = json.loads(json.dumps(workflow))
            _, _, outputs, _ = asyncio.run(execution.validate_prompt(name, prompt, None))
            executor.execute(prompt, name, {"client_id": "recorder"}, outputs)
        finally:
            stand_in.set_listener(None)
        self.write(name, workflow, events=[{"event": e, "data": d} for e, d in seen])


def parser_shape() -> dict[str, Any]:
    """``comfy.cli_args.parser`` as data: enough to rebuild an equivalent parser."""
    import comfy.cli_args

    parser = comfy.cli_args.parser
    groups = {
        id(action): index
        for index, group in enumerate(parser._mutually_exclusive_groups)
        for action in group._group_actions
    }

    def plain(value: Any) -> Any:
        if isinstance(value, enum.Enum):
            return value.value
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    actions = []
    for action in parser._actions:
        kind = action.type
        choices = plain(list(action.choices)) if action.choices is not None else None
        if isinstance(kind, type) and issubclass(kind, enum.Enum):
            type_name: str | None = "enum"
            choices = [member.value for member in kind]
        elif kind is None:
            type_name = None
        else:
            type_name = getattr(kind, "__name__", repr(kind))
        actions.append(
            {
                "option_strings": action.option_strings,
                "dest": action.dest,
                "action": type(action).__name__,
                "nargs": action.nargs,
                "const": plain(action.const),
                "default": plain(action.default),
                "type": type_name,
                "choices": choices,
                "group": groups.get(id(action)),
                "help": action.help,
            }
        )
    return {"actions": actions}


def comfyui_commit() -> dict[str, str]:
    """The checkout's commit from git, else the pin it was installed from."""
    import folder_paths

    checkout = Path(folder_paths.__file__).parent
    try:
        done = subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
        return {"comfyui_commit": done.stdout.strip(), "comfyui_commit_from": "git"}
    except (OSError, subprocess.CalledProcessError):
        pin = dict(
            line.split("=", 1)
            for line in (REPO / "comfyui" / "pin.env").read_text().splitlines()
            if "=" in line and not line.startswith("#")
        )
        return {"comfyui_commit": pin["COMFYUI_COMMIT"], "comfyui_commit_from": "comfyui/pin.env"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="fixtures folder")
    parser.add_argument("--comfyui", type=Path, help="ComfyUI checkout (default: COMFYUI_PATH)")
    parser.add_argument(
        "--custom-nodes", type=Path, help="a folder of custom node packs (for VHS_VideoCombine)"
    )
    parser.add_argument(
        "--parser-only",
        action="store_true",
        help="record only cli_args.json (ComfyUI's argument parser), without booting",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().addFilter(lambda r: r.name != "root" or r.levelno >= logging.WARNING)

    settings = Settings.from_env()
    comfyui = args.comfyui or settings.comfyui_path
    if comfyui is None:
        parser.error("set COMFYUI_PATH or pass --comfyui")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.parser_only:
        sys.path.insert(0, str(Path(comfyui).resolve()))
        Recorder(None, args.out, {str(Path(comfyui).resolve()): "<COMFYUI>"}).parser()
        return 0
    with tempfile.TemporaryDirectory(prefix="record-comfy-") as tmp:
        work = Path(tmp) / "work"
        extra = None
        if args.custom_nodes:
            extra = Path(tmp) / "extra_model_paths.yaml"
            extra.write_text(
                json.dumps({"recorder": {"custom_nodes": str(args.custom_nodes.resolve())}})
            )
        runtime = ComfyRuntime(
            Settings(
                comfyui_path=comfyui,
                work_dir=work,
                extra_model_paths=extra,
                comfy_log_level="WARNING",
            )
        )
        runtime.boot()
        placeholders = {
            str(Path(comfyui).resolve()): "<COMFYUI>",
            str(work.resolve()): "<WORK_DIR>",
            str(work): "<WORK_DIR>",
            str(Path(sys.prefix)): "<PYTHON>",
            str(Path(sys.base_prefix)): "<PYTHON>",
            # The worker's own frames (its patches wrap ComfyUI's nodes) in tracebacks.
            str(REPO): "<WORKER>",
        }
        if args.custom_nodes:
            placeholders[str(args.custom_nodes.resolve())] = "<CUSTOM_NODES>"
        recorder = Recorder(runtime, args.out, placeholders)
        frames = "frames.gif"
        images = [Image.new("RGB", (64, 64), (40 * i, 255 - 30 * i, 90 + 20 * i)) for i in range(6)]
        images[0].save(
            runtime.directories.input / frames,
            save_all=True,
            append_images=images[1:],
            duration=100,
        )

        for name, build in UI_WORKFLOWS.items():
            recorder.ui(name, build(frames))
        import nodes

        if "VHS_VideoCombine" in nodes.NODE_CLASS_MAPPINGS:
            recorder.ui("ui_vhs_video_combine", VHS_WORKFLOW(frames))
        else:
            log.warning("VHS_VideoCombine is not loaded: pass --custom-nodes to record it")
        recorder.parser()
        for name, workflow in VALIDATION_WORKFLOWS.items():
            recorder.validation(name, workflow)

        (runtime.directories.input / "corrupt.png").write_bytes(b"these bytes are no image")
        recorder.status(
            "status_execution_error",
            {
                "1": node("LoadImage", image="corrupt.png"),
                "2": node("PreviewImage", images=["1", 0]),
            },
        )
        recorder.status("status_execution_interrupted", chain_workflow(40), interrupt_after_s=0.3)
        recorder.status(
            "status_execution_success",
            {
                "1": node("EmptyImage", width=8, height=8, batch_size=1, color=1),
                "2": node("PreviewImage", images=["1", 0]),
            },
        )
        recorder.events(
            "events_executing",
            {
                "1": node("EmptyImage", width=8, height=8, batch_size=1, color=2),
                "2": node("ImageInvert", image=["1", 0]),
                "3": node("PreviewImage", images=["2", 0]),
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
