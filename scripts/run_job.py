#!/usr/bin/env python3
"""Run one job through the worker in this process and write its outputs to a folder.

The same path a RunPod job takes (request parsing, input images, path
normalisation, ComfyUI in-process, outputs, delivery), without RunPod:

    .venv/bin/python scripts/run_job.py examples/invert_png_mp4.json \\
        --image example.png=examples/example.png --out outputs

The first argument is a workflow or a whole request file (``{"input": {...}}``, such as
test_input.json); ``--image`` adds to its images. Outputs are saved as
comfy-worker-client saves them: base64 decoded, S3 URLs downloaded, a name already
taken gets -1, -2, ...; exit 3 if one could not be saved or the worker reported errors[].

Logs at COMFY_LOG_LEVEL, as the worker on RunPod does (``--verbose``: DEBUG).

ComfyUI comes from COMFYUI_PATH, else from comfyui/ComfyUI (scripts/setup.sh
--with-comfyui). Runs on the GPU when there is one, on the CPU otherwise.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from engine import logs
from engine.errors import WorkerError
from engine.settings import Settings
from engine.worker import Worker

# The checkout's client (client/src, its own package) saves the outputs: the one beside
# this script, whether or not this environment has the client installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "client" / "src"))
from comfy_worker_client import (
    ClientError,
    UsageError,
    download_client,
    encode_image,
    parse_image_arg,
    read_request,
    save_outputs,
)


def main(argv: list[str] | None = None) -> int:
    """Run the workflow; exit 0 on success, 1 if the job failed, 2 if the worker cannot
    start (or the arguments are wrong), 3 if outputs are missing."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "workflow", type=Path, help='a workflow (JSON) or a request file {"input": {...}}'
    )
    parser.add_argument(
        "--image", action="append", default=[], metavar="NAME=PATH|URL",
        help="an input image: a local file or an http(s) URL; NAME is what LoadImage refers to "
        "(default: the file's name)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("outputs"), help="folder for the outputs")
    parser.add_argument(
        "--verbose", action="store_true", help="log at DEBUG whatever COMFY_LOG_LEVEL says"
    )
    args = parser.parse_args(argv)
    try:  # the client's checks, before the slow boot: an unreadable file, a missing image
        job_input: dict[str, Any] = read_request(args.workflow)["input"]
        if args.image:
            given = [encode_image(parse_image_arg(text)) for text in args.image]
            names = {image["name"] for image in given}
            kept = [i for i in job_input.get("images", []) if i.get("name") not in names]
            job_input["images"] = kept + given
    except UsageError as exc:
        parser.error(exc.message)

    started = time.perf_counter()
    try:
        settings = Settings.from_env(os.environ)
        logs.configure("DEBUG" if args.verbose else settings.comfy_log_level, settings.secrets())
        worker = Worker.from_settings(settings)
        worker.boot()
    except WorkerError as exc:
        # What handler.py tells every job: an unusable variable, no ComfyUI checkout (with
        # the command that installs one). Not a traceback: nothing here is a bug.
        print(f"error: {exc.summary()}", file=sys.stderr)
        return 2
    booted = time.perf_counter()
    job_id = f"local-{int(time.time())}"
    result = worker.handle({"id": job_id, "input": job_input})
    finished = time.perf_counter()

    if "error" in result:
        print(f"job failed: {result['error']}", file=sys.stderr)
        return 1
    # The client's saving: base64 decoded, S3 URLs downloaded, a name taken gets -1, -2, ...
    try:
        with download_client() as downloads:
            report = save_outputs({"id": job_id, "output": result}, args.out, downloads)
        code = int(report.exit_code)
    except ClientError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        code = int(exc.exit_code)
    print(f"boot {booted - started:.2f} s, job {finished - booted:.3f} s", file=sys.stderr)
    logging.shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
