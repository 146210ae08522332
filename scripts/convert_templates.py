#!/usr/bin/env python3
"""How many of ComfyUI's official templates convert and pass the real engine's validation.

    COMFYUI_PATH=/path/to/ComfyUI <image venv>/bin/python scripts/convert_templates.py \\
        --custom-nodes /path/to/custom_nodes

Boots the worker's runtime (ComfyUI in-process, with the packs in ``--custom-nodes``),
takes every template of the installed ``comfyui-workflow-templates`` whose node types
are all installed (eligible), converts it with ``engine.ui_workflow`` against
``runtime.node_definitions()`` and runs ComfyUI's own ``execution.validate_prompt`` on
the result. A template counts when it converts and validation finds nothing but absent
model or input files (``tests/ui_templates.refusals``). Prints the figure, then each
failure with its reason; exits 1 below ``--target`` percent.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.runtime.comfy import ComfyRuntime  # noqa: E402
from engine.settings import Settings  # noqa: E402
from tests.ui_templates import check_templates, templates_dir  # noqa: E402

log = logging.getLogger("convert_templates")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", type=Path, help="ComfyUI checkout (default: COMFYUI_PATH)")
    parser.add_argument("--custom-nodes", type=Path, help="a folder of custom node packs")
    parser.add_argument("--target", type=float, default=97.0, help="percent to reach")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    comfyui = args.comfyui or settings.comfyui_path
    if comfyui is None:
        parser.error("set COMFYUI_PATH or pass --comfyui")
    folder = templates_dir()
    if folder is None:
        parser.error("comfyui-workflow-templates is not installed in this Python")

    with tempfile.TemporaryDirectory(prefix="convert-templates-") as tmp:
        extra = None
        if args.custom_nodes:
            extra = Path(tmp) / "extra_model_paths.yaml"
            packs = str(args.custom_nodes.resolve())
            extra.write_text(json.dumps({"templates": {"custom_nodes": packs}}))  # JSON is YAML
        runtime = ComfyRuntime(
            Settings(
                comfyui_path=comfyui,
                work_dir=Path(tmp) / "work",
                extra_model_paths=extra,
                comfy_log_level="ERROR",
            )
        )
        runtime.boot()
        total, eligible, failed = check_templates(folder, runtime.node_definitions())
    passed = eligible - len(failed)
    failures = [f"{f.name}: {f.stage}: {'; '.join(f.reasons)}" for f in failed]
    rate = 100.0 * passed / eligible if eligible else 0.0
    print(
        f"{passed}/{eligible} eligible templates convert and validate ({rate:.1f}%); "
        f"{total} templates, {total - eligible} need node types not installed"
    )
    for failure in failures:
        print(f"  FAIL {failure}")
    return 0 if rate >= args.target else 1


if __name__ == "__main__":
    raise SystemExit(main())
