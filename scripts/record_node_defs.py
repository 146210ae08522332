#!/usr/bin/env python3
"""Record every node type's definition from the real engine, for tests that run without it.

    COMFYUI_PATH=/path/to/ComfyUI VENV=<image venv> \\
        <venv>/bin/python scripts/record_node_defs.py --custom-nodes /path/to/custom_nodes

Boots the worker's own runtime (ComfyUI in-process, CPU where there is no GPU) with the
packs in ``--custom-nodes`` (the five of ``comfyui/custom_nodes.json``), takes
``runtime.node_definitions()`` (the shape of ComfyUI's ``/object_info``) and writes
``tests/fixtures/node_defs/object_info.json.gz``: compact JSON, with tooltips and
descriptions dropped (they are most of the bytes and the converter never reads them).
Model and input file lists are those of an empty work dir and models folder: empty.

The file also holds ``comfyui_version``, ``comfyui_commit`` and ``packs`` (each pack
folder's name and commit: its pin in the manifest, else its git HEAD), so a test can say what it was recorded from.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.runtime.comfy import ComfyRuntime  # noqa: E402
from engine.settings import Settings  # noqa: E402

DEFAULT_OUT = REPO / "tests" / "fixtures" / "node_defs" / "object_info.json.gz"
MANIFEST = REPO / "comfyui" / "custom_nodes.json"
log = logging.getLogger("record_node_defs")

# Option keys that only describe an input to a person; the converter never reads them.
_DROPPED_KEYS = frozenset({"tooltip", "description", "output_tooltips"})


def _compact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _compact(v) for k, v in value.items() if k not in _DROPPED_KEYS}
    if isinstance(value, (list, tuple)):
        return [_compact(v) for v in value]
    return value


def _git_commit(folder: Path) -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return done.stdout.strip()


def _comfyui_commit(checkout: Path) -> str:
    """The checkout's git HEAD, else the pin it was installed from (``comfyui/pin.env``)."""
    commit = _git_commit(checkout)
    if commit != "unknown":
        return commit
    for line in (REPO / "comfyui" / "pin.env").read_text().splitlines():
        if line.startswith("COMFYUI_COMMIT="):
            return line.split("=", 1)[1].strip()
    return commit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="file to write")
    parser.add_argument("--comfyui", type=Path, help="ComfyUI checkout (default: COMFYUI_PATH)")
    parser.add_argument("--custom-nodes", type=Path, help="a folder of custom node packs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    settings = Settings.from_env()
    comfyui = args.comfyui or settings.comfyui_path
    if comfyui is None:
        parser.error("set COMFYUI_PATH or pass --comfyui")
    packs: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="record-node-defs-") as tmp:
        extra = None
        if args.custom_nodes:
            extra = Path(tmp) / "extra_model_paths.yaml"
            folder = str(args.custom_nodes.resolve())
            extra.write_text(json.dumps({"recorder": {"custom_nodes": folder}}))  # JSON is YAML
            # A pack folder installed from the manifest is no git checkout: its pin says.
            pins = {p["name"]: p["commit"] for p in json.loads(MANIFEST.read_text())}
            packs = {
                p.name: pins.get(p.name) or _git_commit(p)
                for p in sorted(args.custom_nodes.iterdir())
                if p.is_dir() and not p.name.startswith((".", "__"))
            }
        runtime = ComfyRuntime(
            Settings(
                comfyui_path=comfyui,
                work_dir=Path(tmp) / "work",
                extra_model_paths=extra,
                comfy_log_level="WARNING",
            )
        )
        runtime.boot()
        definitions = _compact(runtime.node_definitions())
        import comfyui_version

        record = {
            "comfyui_version": comfyui_version.__version__,
            "comfyui_commit": _comfyui_commit(Path(comfyui)),
            "packs": packs,
            "node_definitions": definitions,
        }
        text = json.dumps(record, separators=(",", ":"), sort_keys=True, default=repr)
        leftover = re.search(r"/(tmp|home|root|work|usr|opt)/[^\"]*", text)
        if leftover:
            raise RuntimeError(f"an absolute path was left in the record: {leftover.group(0)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # mtime=0: the same definitions give the same bytes, so a re-record shows no diff.
    with gzip.GzipFile(args.out, "wb", mtime=0) as out:
        out.write(text.encode("utf-8"))
    log.info("wrote %d node definitions to %s", len(definitions), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
