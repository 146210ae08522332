#!/usr/bin/env python3
"""Run one job through the worker in this process and write its outputs to a folder.

The same path a RunPod job takes (request parsing, input images, path
normalisation, ComfyUI in-process, outputs, delivery), without RunPod:

    .venv/bin/python scripts/run_job.py examples/invert_png_mp4.json \\
        --image example.png=examples/example.png --out outputs

ComfyUI comes from COMFYUI_PATH, else from comfyui/ComfyUI (scripts/setup.sh
--with-comfyui). Runs on the GPU when there is one, on the CPU otherwise.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import sys
import time
from pathlib import Path

from engine import logs
from engine.settings import Settings
from engine.worker import Worker


def _image_arg(value: str) -> dict[str, str]:
    name, sep, source = value.partition("=")
    if not sep:
        name, source = Path(value).name, value
    if source.startswith(("http://", "https://", "data:")):
        return {"name": name, "image": source}
    return {"name": name, "image": base64.b64encode(Path(source).read_bytes()).decode()}


def main(argv: list[str] | None = None) -> int:
    """Run the workflow; exit 0 on success, 1 if the job failed."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("workflow", type=Path, help="workflow in ComfyUI's API format (JSON)")
    parser.add_argument(
        "--image", action="append", type=_image_arg, default=[], metavar="NAME=PATH|URL",
        help="an input image; NAME is what LoadImage refers to (default: the file's name)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("outputs"), help="folder for the outputs")
    parser.add_argument("--verbose", action="store_true", help="log at DEBUG (ComfyUI included)")
    args = parser.parse_args(argv)

    settings = Settings.from_env(os.environ)
    logs.configure("DEBUG" if args.verbose else "INFO", settings.secrets())
    worker = Worker.from_settings(settings)
    started = time.perf_counter()
    worker.boot()
    booted = time.perf_counter()
    job_input = {"workflow": json.loads(args.workflow.read_text()), "images": args.image}
    result = worker.handle({"id": f"local-{int(time.time())}", "input": job_input})
    finished = time.perf_counter()

    if "error" in result:
        print(f"job failed: {result['error']}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    for item in result["images"]:
        if item["type"] == "base64":
            target = args.out / item["filename"]
            target.write_bytes(base64.b64decode(item["data"].partition(",")[2]))
            print(f"{target}  {item['mime_type']}  {target.stat().st_size} bytes")
        else:
            print(f"{item['filename']}  {item['mime_type']}  {item['data']}")
    for error in result["errors"]:
        print(f"warning: {error}", file=sys.stderr)
    print(f"boot {booted - started:.2f} s, job {finished - booted:.3f} s", file=sys.stderr)
    logging.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
