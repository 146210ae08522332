"""A small stand-in for ComfyUI at the project's runtime boundary.

It runs a handful of real node types on real pixels (Pillow) and writes real
PNG, animated WEBP and MP4/WebM files where ComfyUI would, and it answers in
ComfyUI's own shapes: validation ``error``/``node_errors`` dicts and executor
``status_messages``, translated by the same ``engine.runtime.shapes`` functions
the real runtime uses. Those shapes are the ones recorded from the real engine
in ``tests/fixtures/comfyui/``. It also mimics ComfyUI's execution cache: a
node whose inputs (and, for LoadImage, whose file's bytes) did not change is not
run again; an output node then reports its earlier ui outputs without writing
files. It times each node it runs (``RunResult.node_seconds``); cached nodes are
absent, as they are from the real runtime's.

Test-only node types: ``TestRaise`` (raises at run time), ``TestSleep``
(sleeps ``seconds``, honouring interrupts, and passes its images through) and
``TestHang`` (stuck like a node blocked in native code: deaf to interrupts until the
test sets ``release``) and ``TestWaitFile`` (creates the file ``cue`` names, then waits,
honouring interrupts, until the file ``release`` names exists: a cue that crosses
processes, for tests that kill or cancel a worker mid-job).

Used in-process by the unit tests and, through ``WORKER_RUNTIME=tests.fake_runtime:FakeRuntime``,
by the worker started under the runpod SDK's local API server.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import re
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from engine.deadline import Deadline, JobThread
from engine.graph_checks import find_problems
from engine.runtime import (
    Checked,
    Directories,
    JobSpec,
    ModelFolder,
    ProgressEvent,
    RunResult,
    Workflow,
)
from engine.runtime.shapes import execution_failure, sort_node_ids, validation_error
from engine.settings import Settings
from tests import media_factory

FIXTURES = Path(__file__).parent / "fixtures" / "comfyui"
NODE_DEFS = Path(__file__).parent / "fixtures" / "node_defs" / "object_info.json.gz"

# Combo inputs by node type, as ComfyUI's object_info lists them.
CHECKPOINTS = ["SDXL/ultraRealisticByStable_v20FP16.safetensors", "sd15/tiny.safetensors"]
_COMBOS: dict[str, dict[str, list[str]]] = {
    "CheckpointLoaderSimple": {"ckpt_name": CHECKPOINTS},
    "LoraLoader": {"lora_name": ["styles/pixel.safetensors"]},
    "SaveVideo": {"format": ["auto", "mp4"], "codec": ["auto", "h264"]},
    "SaveWEBM": {"codec": ["vp9", "av1"]},
}
# Combo inputs that list a model folder's files (on disk under <work_dir>/models/<folder>),
# besides the names above: what ComfyUI's loaders do with folder_paths.
_MODEL_FOLDERS = {
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
    ("LoraLoader", "lora_name"): "loras",
}
_MODEL_SUFFIXES = frozenset({".safetensors", ".ckpt", ".pt", ".pth", ".bin"})
_REQUIRED: dict[str, list[str]] = {
    "LoadImage": ["image"],
    "ImageInvert": ["image"],
    # The bundled example (examples/invert_png_mp4.json, in test_input.json) batches the
    # image with its inverse and repeats the batch: ComfyUI's required inputs of both.
    "ImageBatch": ["image1", "image2"],
    "RepeatImageBatch": ["image", "amount"],
    "EmptyImage": ["width", "height"],
    "SaveImage": ["images"],
    "PreviewImage": ["images"],
    "SaveAnimatedWEBP": ["images"],
    "CreateVideo": ["images"],
    "SaveVideo": ["video"],
    "SaveWEBM": ["images"],
    "VHS_VideoCombine": ["images"],
    "CheckpointLoaderSimple": ["ckpt_name"],
    "LoraLoader": ["lora_name"],
    "TestRaise": [],
    "TestSleep": ["seconds"],
    "TestHang": [],
    "TestWaitFile": ["cue", "release"],
}
# Like ComfyUI nodes whose IS_CHANGED returns NaN: never served from the cache, so a
# test's sleep or hang happens on every run.
_NEVER_CACHED = {"TestRaise", "TestSleep", "TestHang", "TestWaitFile"}
_OUTPUT_NODES = {
    "SaveImage",
    "PreviewImage",
    "SaveAnimatedWEBP",
    "SaveVideo",
    "SaveWEBM",
    "VHS_VideoCombine",
}


def _recorded(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


class FakeRuntime:
    """Runs model-free workflows on Pillow, answering in ComfyUI's shapes."""

    def __init__(self, settings: Settings) -> None:
        root = Path(settings.work_dir)
        self._dirs = Directories(input=root / "input", output=root / "output", temp=root / "temp")
        self._cache: dict[str, Any] = {}
        self._interrupt = threading.Event()
        # TestHang: set when a node hangs; the test sets `release` to let it go.
        self.hanging = threading.Event()
        self.release = threading.Event()
        # Loaders (CheckpointLoaderSimple, LoraLoader): `loading` is set as one runs; with
        # `hold_loads` set, it then waits for `loaded`, as a loader reading a slow disk.
        self.loading = threading.Event()
        self.loaded = threading.Event()
        self.hold_loads = False
        self.booted = 0
        self.jobs: list[JobSpec] = []
        self._node_definitions: dict[str, Any] | None = None
        self.models_dir = root / "models"
        self.forgotten: list[str] = []
        """Model folders whose file list the worker asked to forget (a file was added)."""
        self._job_thread = JobThread("job")
        self.validated_on: list[str] = []
        """The thread each :meth:`validate` call ran on, by name."""
        self.deadline_bound: list[bool] = []
        """Per validation: whether the job's deadline was the one bound on its thread
        (``Deadline.current()``), which a real first-use import waits within."""
        self.runs_on_job_thread = False
        """Run on :attr:`job_thread` as ComfyRuntime runs on its engine thread: inline when
        called there, else handed to it and waited for (off by default: the fake runs
        anywhere)."""
        self.checked_jobs: list[JobSpec] = []
        """Every job :meth:`validate` was given, also those it refused (``jobs``: the runs)."""

    @property
    def job_thread(self) -> JobThread:
        """A thread of its own for the worker's jobs (the fake runs anywhere)."""
        return self._job_thread

    @property
    def directories(self) -> Directories:
        """ComfyUI's three folders, under the worker's work dir."""
        return self._dirs

    def boot(self) -> None:
        """Create the folders; counts boots so tests can prove it happens once."""
        for folder in (self._dirs.input, self._dirs.output, self._dirs.temp):
            folder.mkdir(parents=True, exist_ok=True)
        self.booted += 1

    def file_inputs(self, class_type: str) -> frozenset[str]:
        """The combo inputs of a node type."""
        return frozenset(_COMBOS.get(class_type, {}))

    def node_definitions(self) -> dict[str, Any]:
        """The definitions recorded from the real engine and its five packs (``/object_info``).

        Recorded by ``scripts/record_node_defs.py``; the node types this stand-in runs
        are among them. Read once per runtime.
        """
        if self._node_definitions is None:
            with gzip.open(NODE_DEFS, "rt", encoding="utf-8") as f:
                self._node_definitions = dict(json.load(f)["node_definitions"])
        return self._node_definitions

    def model_folder_of(self, class_type: str, input_name: str) -> ModelFolder | None:
        """The model folder behind a loader's input, under ``<work_dir>/models``."""
        name = _MODEL_FOLDERS.get((class_type, input_name))
        return None if name is None else self._model_folder(name)

    def model_folders(self) -> list[ModelFolder]:
        """Every model folder this stand-in knows."""
        return [self._model_folder(name) for name in sorted(set(_MODEL_FOLDERS.values()))]

    def forget_model_files(self, folder_name: str) -> None:
        """Recorded: this stand-in lists the folder afresh at every validation."""
        self.forgotten.append(folder_name)

    def _model_folder(self, name: str) -> ModelFolder:
        return ModelFolder(name, (self.models_dir / name,), _MODEL_SUFFIXES)

    def _choices(self, class_type: str, input_name: str, listed: list[str]) -> list[str]:
        """A combo's options: the recorded ones, plus a model folder's files on disk."""
        folder = _MODEL_FOLDERS.get((class_type, input_name))
        if folder is None:
            return listed
        base = self.models_dir / folder
        files = [
            p.relative_to(base).as_posix()
            for p in sorted(base.rglob("*"))
            if p.is_file() and p.suffix in _MODEL_SUFFIXES
        ]
        return [*listed, *files]

    def after_job(self) -> None:
        """Empty the temp folder (previews), as the real runtime does; no models to free."""
        for path in self._dirs.temp.iterdir():
            shutil.rmtree(path) if path.is_dir() else path.unlink()

    def interrupt(self) -> None:
        """What ``interrupt_current_processing`` does for ComfyUI."""
        self._interrupt.set()

    # -- validation -----------------------------------------------------------------

    def validate(self, job: JobSpec) -> JobSpec:
        """Check the workflow as the real runtime does (unknown types, links, values)."""
        self.validated_on.append(threading.current_thread().name)
        self.deadline_bound.append(Deadline.current() is job.deadline)
        self.checked_jobs.append(job)
        started = time.perf_counter()
        self._validate(job.workflow)
        outputs = [n for n, node in job.workflow.items() if node["class_type"] in _OUTPUT_NODES]
        checked = Checked(
            prompt=job.workflow,
            outputs=outputs,
            extra_data={},
            seconds=time.perf_counter() - started,
        )
        return dataclasses.replace(job, checked=checked)

    def _validate(self, workflow: Workflow) -> None:
        unknown: dict[str, list[str]] = {}
        for node_id in sort_node_ids(list(workflow)):
            class_type = workflow[node_id]["class_type"]
            if class_type not in _REQUIRED:
                unknown.setdefault(class_type, []).append(node_id)
        # Bad links and cycles, found before validation as the real runtime does.
        problems = [p.detail for p in find_problems(workflow)]
        if unknown or problems:
            error = _recorded("validation_unknown_type.json")["error"] if unknown else None
            raise validation_error(error, {}, unknown_types=unknown, graph_problems=problems)
        outputs = [n for n, node in workflow.items() if node["class_type"] in _OUTPUT_NODES]
        if not outputs:
            raise validation_error(_recorded("validation_no_outputs.json")["error"], {})
        node_errors: dict[str, Any] = {}
        for node_id, node in workflow.items():
            errors = self._node_errors(node_id, node, workflow)
            if errors:
                node_errors[node_id] = {
                    "errors": errors,
                    "dependent_outputs": outputs,
                    "class_type": node["class_type"],
                }
        if node_errors:
            error = _recorded("validation_bad_value.json")["error"]
            raise validation_error(error, node_errors)

    def _node_errors(self, node_id: str, node: dict[str, Any], workflow: Workflow) -> list[Any]:
        class_type, inputs = node["class_type"], node.get("inputs", {})
        errors: list[Any] = []
        for name in _REQUIRED[class_type]:
            if name not in inputs:
                errors.append(
                    {
                        "type": "required_input_missing",
                        "message": "Required input is missing",
                        "details": name,
                        "extra_info": {"input_name": name},
                    }
                )
        for name, listed in _COMBOS.get(class_type, {}).items():
            choices = self._choices(class_type, name, listed)
            value = inputs.get(name)
            if value is not None and value not in choices:
                errors.append(
                    {
                        "type": "value_not_in_list",
                        "message": "Value not in list",
                        "details": f"{name}: '{value}' not in {choices}",
                        "extra_info": {
                            "input_name": name,
                            "input_config": [choices, {}],
                            "received_value": value,
                        },
                    }
                )
        if (
            class_type == "LoadImage"
            and "image" in inputs
            and not (self._dirs.input / str(inputs["image"])).is_file()
        ):
            errors.append(
                {
                    "type": "custom_validation_failed",
                    "message": "Custom validation failed for node",
                    "details": f"image - Invalid image file: {inputs['image']}",
                    "extra_info": {"input_name": "image"},
                }
            )
        for name, value in inputs.items():
            if isinstance(value, list) and (len(value) != 2 or str(value[0]) not in workflow):
                errors.append(
                    {
                        "type": "bad_linked_input",
                        "message": "Bad linked input, must be a length-2 list of [string, int]",
                        "details": f"{name}: {value}",
                        "extra_info": {"input_name": name},
                    }
                )
        return errors

    # -- execution --------------------------------------------------------------------

    def run(self, job: JobSpec) -> RunResult:
        """Validate, then run every output node, as ComfyUI's executor would."""
        if self.runs_on_job_thread and not self._job_thread.is_current():
            return self._job_thread.submit(lambda: self.run(job)).result()
        self.jobs.append(job)
        self._interrupt.clear()
        workflow = job.workflow
        if job.checked is None:
            job = self.validate(job)
        assert job.checked is not None
        timings = {"validate_s": job.checked.seconds}
        started = time.perf_counter()
        deadline = job.deadline
        run = _Run(job, deadline)
        outputs: dict[str, dict[str, Any]] = {}
        messages: list[tuple[str, dict[str, Any]]] = [
            ("execution_start", {"prompt_id": job.prompt_id})
        ]
        try:
            for node_id in sort_node_ids(list(workflow)):
                if workflow[node_id]["class_type"] in _OUTPUT_NODES:
                    outputs[node_id] = self._eval(node_id, workflow, run)
        except _Interrupted as stop:
            messages.append(("execution_interrupted", stop.data))
        except _NodeFailed as failure:
            messages.append(("execution_error", failure.data))
        else:
            messages.append(("execution_success", {"prompt_id": job.prompt_id}))
        failure_or_none = execution_failure(messages)
        if failure_or_none is not None:
            if deadline.expired():
                node = messages[-1][1].get("node_id")
                where = f"at node {node} ({messages[-1][1].get('node_type')})"
                raise deadline.exceeded(where, node_id=node) from failure_or_none
            raise failure_or_none
        timings["execute_s"] = time.perf_counter() - started
        return RunResult(outputs=outputs, timings=timings, node_seconds=run.node_seconds)

    def _eval(self, node_id: str, workflow: Workflow, run: _Run) -> Any:
        """A node's outputs (its ui dict for an output node): from this run, the cache, or
        by running it once its inputs are evaluated."""
        if node_id in run.values:
            return run.values[node_id]
        node = workflow[node_id]
        class_type = node["class_type"]
        signature = None
        if class_type not in _NEVER_CACHED:
            signature = json.dumps([node_id, self._closure(workflow, node_id)], sort_keys=True)
            if signature in self._cache:  # ComfyUI's cache: no run, old outputs
                run.values[node_id] = self._cache[signature]
                return run.values[node_id]
        args = {
            name: self._eval(str(value[0]), workflow, run)[int(value[1])]
            if isinstance(value, list)
            else value
            for name, value in node.get("inputs", {}).items()
        }
        run.job.on_progress(ProgressEvent(node_id=node_id, class_type=class_type))
        started = time.perf_counter()  # after its inputs: a node's own time, as ComfyUI's
        try:
            result = getattr(self, f"_node_{class_type}")(args, run.job, run.deadline)
        except _Interrupted as stop:
            stop.data.update(node_id=node_id, node_type=class_type)
            raise
        except Exception as exc:
            raise _NodeFailed(run.job.prompt_id, node_id, class_type, exc) from exc
        run.node_seconds[node_id] = time.perf_counter() - started
        run.values[node_id] = result
        if signature is not None:
            self._cache[signature] = result
        return result

    def _closure(self, workflow: Workflow, node_id: str) -> Any:
        """A node's inputs with links replaced by their sources, recursively (a cache key).

        LoadImage's carries a hash of its file, as ComfyUI's ``IS_CHANGED`` does: the same
        name with new bytes runs again. A never-cached node's is new each time.
        """
        node = workflow[node_id]
        key: dict[str, Any] = {
            "class_type": node["class_type"],
            "inputs": {
                k: self._closure(workflow, str(v[0])) if isinstance(v, list) else v
                for k, v in sorted(node.get("inputs", {}).items())
            },
        }
        if node["class_type"] in _NEVER_CACHED:
            key["changed"] = uuid.uuid4().hex  # so is everything downstream of it
        if node["class_type"] == "LoadImage":
            path = self._dirs.input / str(node.get("inputs", {}).get("image", ""))
            key["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        return key

    def _save_path(self, prefix: str, ext: str, folder: Path) -> tuple[Path, str, str]:
        subfolder, _, base = prefix.rpartition("/")
        target = folder / subfolder
        target.mkdir(parents=True, exist_ok=True)
        pattern = re.compile(rf"{re.escape(base)}_(\d{{5}})_?\.")
        counter = 1 + max(
            (int(m.group(1)) for p in target.iterdir() if (m := pattern.match(p.name))), default=0
        )
        name = f"{base}_{counter:05}_.{ext}"
        return target / name, name, subfolder

    # Each _node_* returns the node's outputs (a tuple) or, for output nodes, its ui dict.

    def _node_LoadImage(self, args: dict[str, Any], *_: Any) -> tuple[Any, ...]:
        with Image.open(self._dirs.input / args["image"]) as img:
            return ([img.convert("RGB")], None)

    def _node_EmptyImage(self, args: dict[str, Any], *_: Any) -> tuple[Any, ...]:
        color = int(args.get("color", 0))
        rgb = ((color >> 16) & 255, (color >> 8) & 255, color & 255)
        size = (int(args["width"]), int(args["height"]))
        return ([Image.new("RGB", size, rgb) for _ in range(int(args.get("batch_size", 1)))],)

    def _node_ImageInvert(self, args: dict[str, Any], *_: Any) -> tuple[Any, ...]:
        return ([ImageOps.invert(img) for img in args["image"]],)

    def _node_ImageBatch(self, args: dict[str, Any], *_: Any) -> tuple[Any, ...]:
        return ([*args["image1"], *args["image2"]],)

    def _node_RepeatImageBatch(self, args: dict[str, Any], *_: Any) -> tuple[Any, ...]:
        return (list(args["image"]) * int(args["amount"]),)

    def _node_TestRaise(self, args: dict[str, Any], *_: Any) -> tuple[Any, ...]:
        raise RuntimeError(args.get("message", "this node always fails"))

    def _node_TestSleep(self, args: dict[str, Any], job: JobSpec, deadline: Deadline) -> Any:
        end = time.monotonic() + float(args["seconds"])
        while time.monotonic() < end:
            if self._interrupt.is_set() or deadline.expired():
                raise _Interrupted(job.prompt_id)
            time.sleep(0.02)
        return (args.get("images", [Image.new("RGB", (8, 8))]),)

    def _node_TestHang(self, args: dict[str, Any], *_: Any) -> Any:
        """A node stuck in native code: deaf to interrupts until the test releases it."""
        self.hanging.set()
        self.release.wait()
        return (args.get("images", [Image.new("RGB", (8, 8))]),)

    def _node_TestWaitFile(self, args: dict[str, Any], job: JobSpec, deadline: Deadline) -> Any:
        """Say "started" through a file, then wait for a file, like a node that takes long."""
        Path(args["cue"]).write_text(job.prompt_id)
        release = Path(args["release"])
        while not release.exists():
            if self._interrupt.is_set() or deadline.expired():
                raise _Interrupted(job.prompt_id)
            time.sleep(0.01)
        return (args.get("images", [Image.new("RGB", (8, 8))]),)

    def _node_CreateVideo(self, args: dict[str, Any], *_: Any) -> tuple[Any, ...]:
        return ({"frames": args["images"], "fps": float(args.get("fps", 8))},)

    def _save_stills(self, args: dict[str, Any], folder: Path, kind: str) -> dict[str, Any]:
        items = []
        for img in args["images"]:
            path, name, subfolder = self._save_path(
                args.get("filename_prefix", "ComfyUI"), "png", folder
            )
            img.save(path)
            items.append({"filename": name, "subfolder": subfolder, "type": kind})
        return {"images": items}

    def _node_SaveImage(self, args: dict[str, Any], *_: Any) -> dict[str, Any]:
        return self._save_stills(args, self._dirs.output, "output")

    def _node_PreviewImage(self, args: dict[str, Any], *_: Any) -> dict[str, Any]:
        return self._save_stills(
            {**args, "filename_prefix": "ComfyUI_temp_preview"}, self._dirs.temp, "temp"
        )

    def _node_SaveAnimatedWEBP(self, args: dict[str, Any], *_: Any) -> dict[str, Any]:
        path, name, subfolder = self._save_path(
            args.get("filename_prefix", "ComfyUI"), "webp", self._dirs.output
        )
        first, *rest = args["images"]
        duration = int(1000 / float(args.get("fps", 6)))
        first.save(
            path, save_all=True, append_images=rest, duration=duration, loop=0, lossless=True
        )
        item = {"filename": name, "subfolder": subfolder, "type": "output"}
        return {"images": [item], "animated": (True,)}

    def _write_video(
        self, prefix: str, frames: list[Image.Image], fps: float, fmt: str
    ) -> tuple[str, str, Path]:
        path, name, subfolder = self._save_path(prefix, fmt, self._dirs.output)
        media_factory.write_video(path, frames, fps)
        return name, subfolder, path

    def _node_SaveVideo(self, args: dict[str, Any], *_: Any) -> dict[str, Any]:
        video = args["video"]
        prefix = args.get("filename_prefix", "video/ComfyUI")
        name, subfolder, _ = self._write_video(prefix, video["frames"], video["fps"], "mp4")
        item = {"filename": name, "subfolder": subfolder, "type": "output"}
        return {"images": [item], "animated": (True,)}

    def _node_SaveWEBM(self, args: dict[str, Any], *_: Any) -> dict[str, Any]:
        prefix = args.get("filename_prefix", "ComfyUI")
        fps = float(args.get("fps", 24))
        name, subfolder, _ = self._write_video(prefix, args["images"], fps, "webm")
        item = {"filename": name, "subfolder": subfolder, "type": "output"}
        return {"images": [item], "animated": (True,)}

    def _node_VHS_VideoCombine(self, args: dict[str, Any], *_: Any) -> dict[str, Any]:
        fps = float(args.get("frame_rate", 8))
        name, subfolder, path = self._write_video(
            args.get("filename_prefix", "AnimateDiff"), args["images"], fps, "mp4"
        )
        # VHS also saves a first-frame PNG with the workflow in it; it is not an output.
        args["images"][0].save(path.with_suffix(".png"))
        item = {
            "filename": name,
            "subfolder": subfolder,
            "type": "output",
            "format": "video/h264-mp4",
            "frame_rate": fps,
            "workflow": path.with_suffix(".png").name,
            "fullpath": str(path),
        }
        return {"gifs": [item]}

    def _node_CheckpointLoaderSimple(self, *_: Any) -> tuple[Any, ...]:
        self._load()
        return (None, None, None)

    def _node_LoraLoader(self, *_: Any) -> tuple[Any, ...]:
        self._load()
        return (None, None)

    def _load(self) -> None:
        self.loading.set()
        if self.hold_loads:
            assert self.loaded.wait(60), "the test never let the loader go"


class _Run:
    """One run's state: the job, node values so far, and the seconds of each node run."""

    def __init__(self, job: JobSpec, deadline: Deadline) -> None:
        self.job, self.deadline = job, deadline
        self.values: dict[str, Any] = {}
        self.node_seconds: dict[str, float] = {}


class _Interrupted(Exception):
    def __init__(self, prompt_id: str) -> None:
        super().__init__("interrupted")
        self.data: dict[str, Any] = {"prompt_id": prompt_id, "executed": []}


class _NodeFailed(Exception):
    """A node raised: carries ComfyUI's recorded ``execution_error`` data, filled in."""

    def __init__(self, prompt_id: str, node_id: str, class_type: str, exc: Exception) -> None:
        super().__init__(str(exc))
        recorded = dict(_recorded("status_execution_error.json")["status_messages"])
        self.data = {
            **recorded["execution_error"],
            "prompt_id": prompt_id,
            "node_id": node_id,
            "node_type": class_type,
            "exception_message": f"{exc}\n",
            "exception_type": type(exc).__name__,
        }
