"""Custom node packs loaded on first use, with the real engine (engine/runtime/lazy_nodes.py).

Fresh processes boot ComfyUI with two packs written here beside the checkout's own:
one whose import registers a model folder and sets an environment variable (what
can be replayed), one that adds a sampler to ComfyUI's list (a patch), one that fails to import when a
switch is set (on the second boot only). The first boot
makes the node index and records what each import changed; the next defers the first
pack, replays its changes at boot, and imports it when a job names its node type;
the second pack loads at boot. A job held in a node on the engine thread while another
job's validation first names a deferred pack: the import waits for the run and happens
on the engine thread (engine/runtime/import_turn.py). Where PuLID_ComfyUI is installed, a job naming its
loader gets the same answer from a worker that deferred it as from one that loaded
every pack at boot (``LAZY_PACKS=false``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.engine.support import (
    COMFYUI_PATH,
    ENGINE_MARKS,
    child_report,
    empty_image,
    node,
    require_packs,
    skip_packs_that_cannot_import,
)

pytestmark = ENGINE_MARKS


LAZY_PACK = """
import os
import threading
import __main__
import folder_paths

# Where the import ran (the overlap test reads it).
getattr(__main__, "IMPORTED", []).append(threading.current_thread().name)

os.environ["WORKER_TEST_LAZY_PACK"] = "replayed"
folder_paths.folder_names_and_paths["worker_test_lazy"] = (
    [os.path.join(folder_paths.models_dir, "worker_test_lazy")], {".bin"}
)


class WorkerTestLazyInvert:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "invert"
    CATEGORY = "worker_test"

    def invert(self, image):
        return (1.0 - image,)


NODE_CLASS_MAPPINGS = {"WorkerTestLazyInvert": WorkerTestLazyInvert}
"""

PATCH_PACK = """
import comfy.samplers

comfy.samplers.KSAMPLER_NAMES.append("worker_test_sampler")


class WorkerTestPatchedNode:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    CATEGORY = "worker_test"

    def run(self):
        return ()


NODE_CLASS_MAPPINGS = {"WorkerTestPatchedNode": WorkerTestPatchedNode}
"""

FLAKY_PACK = """
import os

if os.environ.get("WORKER_TEST_BREAK_PACK"):
    raise ImportError("worker test: this pack breaks on first use")


class WorkerTestFlakyNode:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "worker_test"

    def run(self, image):
        return (image,)


NODE_CLASS_MAPPINGS = {"WorkerTestFlakyNode": WorkerTestFlakyNode}
"""

GATE_PACK = """
import __main__


class WorkerTestGate:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "worker_test"

    def run(self, image):
        # Holds the engine thread until the test lets go (the overlap test's job A).
        if hasattr(__main__, "RUNNING"):
            __main__.RUNNING.set()
            if not __main__.RELEASE.wait(240):
                raise RuntimeError("worker test: the gate was never opened")
        return (image,)


NODE_CLASS_MAPPINGS = {"WorkerTestGate": WorkerTestGate}
"""

# Boots the runtime, reports what boot deferred and replayed, runs each workflow of
# WORKFLOWS (its outputs, or its error's details), as JSON on the last line.
_CHILD = """
import json, os, sys
sys.path.insert(0, os.environ["REPO"])
from engine.errors import WorkerError
from engine.runtime import JobSpec
from engine.runtime.comfy import ComfyRuntime
from engine.settings import Settings

runtime = ComfyRuntime(Settings.from_env(os.environ))
runtime.boot()
lazy = runtime._comfy.lazy_nodes
folder_paths = sys.modules["folder_paths"]
report = {
    "deferred": [os.path.basename(p) for p in lazy.deferred_packs()],
    "env_at_boot": os.environ.get("WORKER_TEST_LAZY_PACK"),
    "folder_at_boot": folder_paths.folder_names_and_paths.get("worker_test_lazy", [[]])[0],
    "patched": "worker_test_sampler" in sys.modules["comfy.samplers"].KSAMPLER_NAMES,
    "jobs": [],
}
workflows = json.loads(open(os.environ["WORKFLOWS"]).read())
if os.environ.get("OVERLAP"):
    # Job A holds the engine thread in a node; job B is validated on a lane meanwhile
    # and names a deferred pack. Each step waits on an event, never on the clock.
    import logging, threading
    from engine.deadline import Deadline

    IMPORTED, RUNNING, RELEASE, HANDED = [], threading.Event(), threading.Event(), threading.Event()

    class _Handed(logging.Handler):
        def emit(self, record):
            HANDED.set()

    turn_log = logging.getLogger("engine.runtime.import_turn")
    turn_log.setLevel(logging.INFO)
    turn_log.addHandler(_Handed())
    results = {}

    def run_a():
        results["a"] = sorted(runtime.run(JobSpec(prompt_id="overlap-a", workflow=workflows[0])).outputs)

    def check_b():
        try:
            with Deadline.start(None).bound():
                job = runtime.validate(JobSpec(prompt_id="overlap-b", workflow=workflows[1]))
                results["b_checked"] = job.checked is not None
        except Exception as exc:
            results["b_error"] = repr(exc)
        finally:
            HANDED.set()

    job_a = threading.Thread(target=run_a)
    job_a.start()
    assert RUNNING.wait(240), "job A never reached its gate"
    lane = threading.Thread(target=check_b, name="job-lane-1")
    lane.start()
    assert HANDED.wait(240), "job B's lane neither waited nor finished"
    report["during_run"] = {"imported": list(IMPORTED), "lane_waiting": lane.is_alive()}
    RELEASE.set()
    job_a.join(240)
    lane.join(240)
    report["imported"] = IMPORTED
    report["results"] = results
    workflows = workflows[1:]
for i, workflow in enumerate(workflows):
    try:
        result = runtime.run(JobSpec(prompt_id=f"lazy-pack-{i}", workflow=workflow))
        report["jobs"].append({"outputs": sorted(result.outputs)})
    except WorkerError as exc:
        report["jobs"].append({"error": exc.message, "details": exc.details})
report["loaded"] = [os.path.basename(p) for p in lazy.loaded_lazily]
# As tests.engine.support.failed_packs (here the checkout's own tests/ shadows this repository's).
from engine.runtime.pack_imports import RECORD
report["failed_packs"] = [{"pack": f.path.name, "module": f.missing_module, "error": f.error} for f in RECORD.failed if f.group == "custom_nodes"]
print(json.dumps(report))
"""


def _boot(root: Path, name: str, workflows: list[Any], **env: str) -> dict[str, Any]:
    packs = root / "packs"
    for pack, source in (
        ("worker_test_lazy_pack", LAZY_PACK),
        ("worker_test_patch_pack", PATCH_PACK),
        ("worker_test_flaky_pack", FLAKY_PACK),
        ("worker_test_gate_pack", GATE_PACK),
    ):
        (packs / pack).mkdir(parents=True, exist_ok=True)
        if not (packs / pack / "__init__.py").is_file():
            (packs / pack / "__init__.py").write_text(source)
    config = root / "extra_model_paths.json"
    config.write_text(json.dumps({"worker_test_packs": {"custom_nodes": str(packs)}}))
    (root / f"{name}.json").write_text(json.dumps(workflows))
    return child_report(
        _CHILD,
        root,
        name,
        config,
        env,
        drop=frozenset({"WORKER_TEST_BREAK_PACK", "WORKER_TEST_LAZY_PACK"}),
        timeout_s=300,
    )


INVERT = {
    "1": empty_image(16, 16),
    "2": node("WorkerTestLazyInvert", image=["1", 0]),
    "3": node("SaveImage", images=["2", 0], filename_prefix="lazy-pack/x"),
}


def test_a_pack_that_patches_nothing_loads_when_a_job_first_names_it(tmp_path: Path) -> None:
    first = _boot(tmp_path, "first", [])  # makes the index, every pack imported
    assert first["deferred"] == [] or "worker_test_lazy_pack" not in first["deferred"]
    flaky = {
        "1": empty_image(16, 16),
        "2": node("WorkerTestFlakyNode", image=["1", 0]),
        "3": node("SaveImage", images=["2", 0], filename_prefix="lazy-pack/y"),
    }
    report = _boot(tmp_path, "second", [INVERT, flaky], WORKER_TEST_BREAK_PACK="1")
    assert "worker_test_lazy_pack" in report["deferred"]
    assert "worker_test_patch_pack" not in report["deferred"]
    assert report["patched"] is True  # the patching pack ran at boot
    # Replayed at its place in the boot, before any job named it.
    assert report["env_at_boot"] == "replayed"
    assert report["folder_at_boot"] == [
        str(COMFYUI_PATH.resolve() / "models" / "worker_test_lazy")  # type: ignore[union-attr]
    ]
    assert report["jobs"][0] == {"outputs": ["3"]}
    assert report["loaded"][-2:] == ["worker_test_lazy_pack", "worker_test_flaky_pack"]
    # A deferred pack that fails when first used: named as a boot failure is, marked so.
    (detail,) = report["jobs"][1]["details"]
    assert detail.startswith(
        "Node type 'WorkerTestFlakyNode' is not available (used by node 2): the node pack "
        "that provides it failed to import: worker_test_flaky_pack (on first use: "
        "ImportError: worker test: this pack breaks on first use)"
    )


def test_lazy_packs_off_loads_every_pack_at_boot(tmp_path: Path) -> None:
    _boot(tmp_path, "first", [])
    report = _boot(tmp_path, "off", [INVERT], LAZY_PACKS="false")
    assert report["deferred"] == []
    assert report["jobs"] == [{"outputs": ["3"]}]
    assert "worker_test_lazy_pack" not in report["loaded"]


def test_a_deferred_pulid_answers_as_a_pulid_loaded_at_boot(tmp_path: Path) -> None:
    require_packs("PuLID_ComfyUI")
    missing = {
        "1": node("PulidModelLoader", pulid_file="worker-test-missing.safetensors"),
        "2": node("PreviewAny", source=["1", 0]),
    }
    _boot(tmp_path, "first", [])
    lazy = _boot(tmp_path, "lazy", [missing])
    eager = _boot(tmp_path, "eager", [missing], LAZY_PACKS="false")
    skip_packs_that_cannot_import(
        [*lazy["failed_packs"], *eager["failed_packs"]], ["PuLID_ComfyUI"]
    )
    assert "PuLID_ComfyUI" in lazy["deferred"]
    assert "PuLID_ComfyUI" in lazy["loaded"]
    assert lazy["jobs"] == eager["jobs"]
    (job,) = lazy["jobs"]
    assert "worker-test-missing.safetensors" in " ".join(job["details"])


def test_a_first_use_during_another_jobs_run_waits_for_the_engine_thread(tmp_path: Path) -> None:
    """Job A runs on the engine thread (held in a node); job B, validated on a lane
    meanwhile, is the first to name a deferred pack. The pack is imported on the engine
    thread once A's run is over, never beside it (import_turn), and B then runs."""
    gate = {
        "1": empty_image(16, 16),
        "2": node("WorkerTestGate", image=["1", 0]),
        "3": node("SaveImage", images=["2", 0], filename_prefix="lazy-pack/gate"),
    }
    _boot(tmp_path, "first", [])
    report = _boot(tmp_path, "overlap", [gate, INVERT], OVERLAP="1")
    assert {"worker_test_lazy_pack", "worker_test_gate_pack"} <= set(report["deferred"])
    assert report["during_run"] == {"imported": [], "lane_waiting": True}
    assert report["imported"] == ["comfy-engine"]
    assert report["results"] == {"a": ["3"], "b_checked": True}
    assert report["jobs"] == [{"outputs": ["3"]}]
