"""COMFY_ARGS against the pinned ComfyUI's own parser and a real boot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from engine.errors import RuntimeBootError
from engine.runtime import comfy_args
from tests.engine.support import COMFYUI_PATH, ENGINE_MARKS

pytestmark = ENGINE_MARKS


def real_parser() -> Any:
    """``comfy.cli_args.parser``: importing it parses nothing from this process's argv."""
    if str(COMFYUI_PATH) not in sys.path:
        sys.path.insert(0, str(COMFYUI_PATH))
    import comfy.cli_args

    return comfy.cli_args.parser


def test_listen_is_refused_by_the_real_parser() -> None:
    with pytest.raises(RuntimeBootError, match="--listen is refused here: this worker runs no"):
        comfy_args.parse(real_parser(), ["--listen", "0.0.0.0"])


def test_a_misspelt_flag_suggests_comfyuis_own() -> None:
    with pytest.raises(RuntimeBootError, match="no flag --fsat; did you mean --fast"):
        comfy_args.parse(real_parser(), ["--fsat"])


def test_every_refused_flag_exists_at_the_pin() -> None:
    dests = {action.dest for action in real_parser()._actions}
    assert sorted(set(comfy_args.REFUSED) - dests) == []


_BOOT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from engine.runtime.comfy import ComfyRuntime
    from engine.settings import Settings
    from engine.errors import RuntimeBootError
    settings = Settings.from_env({"COMFYUI_PATH": sys.argv[1], "WORKER_DIR": sys.argv[2],
                                  "COMFY_ARGS": sys.argv[3], "COMFY_LOG_LEVEL": "WARNING"})
    runtime = ComfyRuntime(settings)
    try:
        runtime.boot()
    except RuntimeBootError as exc:
        print(json.dumps({"error": exc.message, "torch": "torch" in sys.modules}))
        raise SystemExit(0)
    from comfy.cli_args import args
    import comfy.model_management as mm
    executor = runtime._comfy.executor
    print(json.dumps({
        "reserve_vram": args.reserve_vram,
        "cache_lru": args.cache_lru,
        "disable_smart_memory": args.disable_smart_memory,
        "fast": sorted(f.value for f in args.fast),
        "extra_reserved_vram": mm.EXTRA_RESERVED_VRAM,
        "smart_memory_off": mm.DISABLE_SMART_MEMORY,
        "executor_cache": [str(executor.cache_type), executor.cache_size],
    }))
    """
)


def boot_with(comfy_args_value: str, work: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    done = subprocess.run(
        [sys.executable, "-c", _BOOT, str(COMFYUI_PATH), str(work), comfy_args_value],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_flags_land_in_cli_args_before_model_management_reads_them(tmp_path: Path) -> None:
    """A fresh process boots with COMFY_ARGS: ComfyUI's modules see the values at import."""
    facts = boot_with(
        "--reserve-vram 1.25 --cache-lru 7 --disable-smart-memory --fast fp16_accumulation",
        tmp_path / "work",
    )
    assert facts["reserve_vram"] == 1.25 and facts["cache_lru"] == 7
    assert facts["disable_smart_memory"] is True and facts["fast"] == ["fp16_accumulation"]
    # Read by comfy.model_management at import: proof the values were set before it.
    assert facts["extra_reserved_vram"] == 1.25 * 1024**3
    assert facts["smart_memory_off"] is True
    # main.py builds its executor from --cache-lru; so does the worker.
    assert facts["executor_cache"] == ["CacheType.LRU", 7]


def test_a_refused_flag_stops_the_boot_before_torch(tmp_path: Path) -> None:
    facts = boot_with("--fast --port 8188", tmp_path / "work")
    assert "--port is refused here" in facts["error"]
    assert facts["torch"] is False  # refused at once, not after the slow imports
