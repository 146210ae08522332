#!/usr/bin/env python3
"""What does this workflow need? Node packs and model files, checked against this engine.

    .venv/bin/python scripts/workflow_needs.py workflow.json
    .venv/bin/python scripts/workflow_needs.py workflow.json --json
    .venv/bin/python scripts/workflow_needs.py workflow.json --node-map extension-node-map.json

Boots the installed ComfyUI with its packs (COMFYUI_PATH, EXTRA_MODEL_PATHS and the
bundled model paths, as the worker boots: the image's folders and a network volume's at
/runpod-volume), offline, then lists for the workflow (API or UI format, or a request
file ``{"input": {"workflow": ...}}``):

- each node type, with the pack that provides it (ComfyUI, a pack in the image, a pack
  on the volume); for one the engine lacks, where its pack is: a pack that failed to
  import (with the missing module and the command that bakes it in), the pack the editor
  recorded in a UI-format workflow (``aux_id`` / ``cnr_id``), or ComfyUI-Manager's node
  map (``--node-map``, its ``extension-node-map.json``);
- each model file a loader names, with the folder it was found in (image or volume), or
  every folder searched.

Exit status: 0 everything is here, 1 something is missing, 2 usage or the engine failed
to boot. Run it in the image's environment (``scripts/setup.sh --image-env``) to see
what the deployed worker will see.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from engine import logs
from engine.errors import WorkerError
from engine.runtime import load_runtime, pack_imports
from engine.settings import Settings
from engine.workflow_needs import FailedPackView, PackHints, find_needs, render

VOLUME_ROOT = Path("/runpod-volume")


def read_workflow(path: Path) -> dict[str, Any]:
    """A workflow file, or the workflow inside a request file; ValueError says what is wrong."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc
    if isinstance(data, dict) and isinstance(data.get("input"), dict):
        data = data["input"].get("workflow")
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds no workflow (an API- or UI-format JSON object)")
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("workflow", type=Path, help="a workflow or request file (JSON)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--node-map", type=Path, help="ComfyUI-Manager's extension-node-map.json, for missing types"
    )
    parser.add_argument(
        "--volume-root", type=Path, default=VOLUME_ROOT, help="where the network volume is mounted"
    )
    parser.add_argument("--verbose", action="store_true", help="show the boot log")
    args = parser.parse_args(argv)
    try:
        workflow = read_workflow(args.workflow)
        node_map = PackHints.read_node_map(args.node_map) if args.node_map else {}
    except (OSError, ValueError) as exc:
        parser.error(str(exc))

    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="workflow-needs-") as work:
        # Its own folders: the check never touches a running worker's inputs or outputs.
        env["WORKER_DIR"] = work
        try:
            settings = Settings.from_env(env)
            logs.configure("DEBUG" if args.verbose else "ERROR", settings.secrets())
            runtime = load_runtime(settings)
            # Packs print banners while they import: kept off stdout, which is the report's.
            with contextlib.redirect_stdout(sys.stderr):
                runtime.boot()
        except WorkerError as exc:
            print(f"error: {exc.summary()}", file=sys.stderr)
            return 2
        nodes = sys.modules.get("nodes")
        loaded = getattr(nodes, "LOADED_MODULE_DIRS", {}) if nodes is not None else {}
        failed = [
            FailedPackView(p.path, p.error, p.remedy(), _provides(p))
            for p in pack_imports.RECORD.failed
            if p.group == "custom_nodes"
        ]
        needs = find_needs(
            workflow,
            runtime,
            pack_folders={str(k): Path(v) for k, v in loaded.items()},
            volume_roots=[args.volume_root],
            hints=PackHints(node_map=node_map, failed=failed),
        )
    print(json.dumps(needs.to_json(), indent=2) if args.json else render(needs))
    logging.shutdown()
    return 0 if needs.complete else 1


def _provides(pack: pack_imports.FailedPack) -> Any:
    return lambda class_type: pack in pack_imports.RECORD.providers(class_type)


if __name__ == "__main__":
    sys.exit(main())
