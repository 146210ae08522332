"""Booting ComfyUI in-process: import order, nodes, paths, the server stand-in, warm-up."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine.runtime import JobSpec
from engine.runtime.comfy import ComfyRuntime
from tests.engine.conftest import EngineSetup
from tests.engine.support import COMFYUI_PATH, ENGINE_MARKS, empty_image, node

pytestmark = ENGINE_MARKS

# 0.3.64 on this project's CPU machine: 365 node types without API nodes, 478 with.
_MIN_NODE_TYPES = 470


def test_boot_loads_core_extras_api_and_custom_nodes(runtime: ComfyRuntime) -> None:
    """Every kind of node loads: nodes.py, comfy_extras, API nodes and custom packs."""
    import nodes  # ComfyUI's, on sys.path once booted

    mapping = nodes.NODE_CLASS_MAPPINGS
    assert runtime.node_count >= _MIN_NODE_TYPES
    assert runtime.node_count == len(mapping)
    # nodes_images.py fails to load if comfy/utils.py takes the name "utils" first.
    for class_type in ("SaveImage", "SaveAnimatedWEBP", "RepeatImageBatch", "CreateVideo"):
        assert class_type in mapping, class_type
    assert "OpenAIDalle3" in mapping  # an API node
    assert "WorkerTestSteps" in mapping  # this suite's pack, from an extra custom_nodes folder


def test_boot_timings_are_recorded(runtime: ComfyRuntime) -> None:
    """Boot reports its phases, and each took some time."""
    for phase in ("torch_import", "comfy_import", "node_init", "total"):
        assert runtime.boot_timings[phase] > 0, phase
    assert runtime.boot_timings["total"] >= runtime.boot_timings["node_init"]


def test_second_boot_does_nothing(runtime: ComfyRuntime) -> None:
    """ComfyUI's modules are process-wide: a second boot must not reload nodes."""
    before = dict(runtime.boot_timings)
    runtime.boot()
    assert runtime.boot_timings == before


def test_comfyui_folders_are_the_runtimes(runtime: ComfyRuntime, engine_setup: EngineSetup) -> None:
    """ComfyUI reads and writes under the work dir; the extra model paths are searched."""
    import folder_paths

    dirs = runtime.directories
    assert Path(folder_paths.get_input_directory()) == dirs.input
    assert Path(folder_paths.get_output_directory()) == dirs.output
    assert Path(folder_paths.get_temp_directory()) == dirs.temp
    assert all(d.is_dir() for d in (dirs.input, dirs.output, dirs.temp))
    checkpoints = folder_paths.get_folder_paths("checkpoints")
    assert str(engine_setup.models / "checkpoints") in checkpoints
    # The bundled comfyui/extra_model_paths.yaml: image first, then both volume layouts.
    assert checkpoints.index("/runpod-volume/models/checkpoints") < checkpoints.index(
        "/runpod-volume/ComfyUI/models/checkpoints"
    )
    assert "/runpod-volume/models/unet" in folder_paths.get_folder_paths("diffusion_models")
    custom_nodes = folder_paths.get_folder_paths("custom_nodes")
    assert str(engine_setup.root / "absent-custom-nodes") not in custom_nodes
    assert all(Path(p).is_dir() for p in custom_nodes)


def test_headless_server_stands_in_for_promptserver(runtime: ComfyRuntime) -> None:
    """Packs that register routes on ``PromptServer.instance`` at import find them."""
    import server

    stand_in = server.PromptServer.instance
    paths = {route.path for route in stand_in.routes}
    assert "/worker_test_nodes/ping" in paths
    assert stand_in.sockets_metadata == {}
    with pytest.raises(AttributeError, match="headless PromptServer"):
        _ = stand_in.no_such_attribute


def test_the_loop_packs_keep_at_import_keeps_running(runtime: ComfyRuntime) -> None:
    """Node init runs on the server's loop, which then runs on: work scheduled onto it
    from a node (``run_coroutine_threadsafe``) completes."""
    import server

    (pack,) = [m for n, m in list(sys.modules.items()) if n.endswith("worker_test_nodes")]
    loop = server.PromptServer.instance.loop
    assert pack.IMPORT_LOOP is loop and loop.is_running()

    async def answer() -> int:
        return 42

    assert asyncio.run_coroutine_threadsafe(answer(), loop).result(timeout=5) == 42


def test_file_inputs_lists_combo_inputs(runtime: ComfyRuntime) -> None:
    """Combo inputs of V1 nodes (a list) and V3 nodes (``COMBO`` + options) are found."""
    assert runtime.file_inputs("CheckpointLoaderSimple") == frozenset({"ckpt_name"})
    assert runtime.file_inputs("LoraLoader") == frozenset({"lora_name"})
    assert "image" in runtime.file_inputs("LoadImage")
    assert {"sampler_name", "scheduler"} <= runtime.file_inputs("KSampler")
    assert {"format", "codec"} <= runtime.file_inputs("SaveVideo")  # a V3 node
    assert runtime.file_inputs("ImageInvert") == frozenset()
    assert runtime.file_inputs("NoSuchNode") == frozenset()


def test_warmup_ran_at_boot_and_left_no_files(runtime: ComfyRuntime) -> None:
    """The warm-up workflow ran once at boot; its outputs were deleted."""
    assert runtime.warmup_s is not None and runtime.warmup_s > 0
    assert not list((runtime.directories.output / "warmup").glob("*.png"))


def test_failing_warmup_is_logged_and_the_worker_still_runs(
    runtime: ComfyRuntime, tmp_path: Path, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A warm-up that fails (a missing node type) logs an error; the next job runs."""
    broken = tmp_path / "warmup.json"
    broken.write_text(json.dumps({"1": node("NoSuchNodeType")}))
    assert runtime.warm_up(broken) is None
    assert "warm-up workflow" in caplog.text and "NoSuchNodeType" in caplog.text
    assert runtime.warm_up(tmp_path / "absent.json") is None
    workflow = {
        "1": empty_image(8, 8),
        "2": node("SaveImage", images=["1", 0], filename_prefix=prefix),
    }
    assert runtime.run(JobSpec(prompt_id="after-warmup", workflow=workflow)).outputs


@pytest.mark.skipif(COMFYUI_PATH is None, reason="COMFYUI_PATH is not set")
def test_boot_leaves_the_hosts_argv_alone(tmp_path: Path) -> None:
    """ComfyUI never parses the worker's argv (runpod's flags would make it exit)."""
    script = textwrap.dedent(
        """
        import json, logging, sys
        from pathlib import Path
        sys.argv = ["handler.py", "--rp_serve_api", "--rp_api_port", "8000", "--cpu-vae"]
        from engine.runtime.comfy import ComfyRuntime
        from engine.settings import Settings
        runtime = ComfyRuntime(Settings(comfyui_path=Path(sys.argv_path), work_dir=Path(sys.work)))
        runtime.boot()
        from comfy.cli_args import args
        print(json.dumps({"cpu_vae": args.cpu_vae, "argv": sys.argv, "nodes": runtime.node_count}))
        """
    )
    script = script.replace("sys.argv_path", repr(str(COMFYUI_PATH))).replace(
        "sys.work", repr(str(tmp_path / "work"))
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    assert facts["cpu_vae"] is False
    assert facts["argv"][1] == "--rp_serve_api"
    assert facts["nodes"] >= _MIN_NODE_TYPES - 10  # no test pack in this process
