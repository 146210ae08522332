"""The job request: the API-format workflow, input images encoded, the ``{"input": ...}`` body."""

from __future__ import annotations

import base64
import json
import mimetypes
from pathlib import Path
from typing import Any

from engine.client.cli import ClientConfig, ImageSpec
from engine.client.errors import UsageError
from engine.client.text import is_url


def load_workflow(path: Path) -> dict[str, Any]:
    """Read an API-format workflow, refusing the UI format with what to do instead."""
    try:
        workflow = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read workflow {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"workflow {path} is not valid JSON: {exc}") from None
    if not isinstance(workflow, dict) or not workflow:
        raise UsageError(f"workflow {path} must be a non-empty JSON object of nodes")
    if "nodes" in workflow and "links" in workflow:
        raise UsageError(
            f"workflow {path} is in ComfyUI's UI format (it has 'nodes' and 'links'); "
            "export with Workflow -> Export (API) and pass that file"
        )
    bad = [
        key
        for key, node in workflow.items()
        if not isinstance(node, dict) or "class_type" not in node
    ]
    if bad:
        raise UsageError(
            f"workflow {path}: {', '.join(map(repr, bad[:5]))} is not a node with a class_type; "
            "export with Workflow -> Export (API)"
        )
    return workflow


def encode_image(spec: ImageSpec) -> dict[str, str]:
    """The request's ``{"name", "image"}``: a URL as is, a local file as a data URI."""
    if is_url(spec.source):
        return {"name": spec.name, "image": spec.source}
    path = Path(spec.source).expanduser()
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(
            f"--image {spec.name}: cannot read {path}: {exc.strerror or exc}"
        ) from None
    # The worker identifies the format from the bytes; the type only labels the URI.
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return {"name": spec.name, "image": f"data:{mime};base64,{base64.b64encode(raw).decode()}"}


def build_request(config: ClientConfig) -> dict[str, Any]:
    """The body to POST: ``{"input": {...}}``."""
    job_input: dict[str, Any] = {"workflow": load_workflow(config.workflow)}
    if config.images:
        job_input["images"] = [encode_image(spec) for spec in config.images]
    if config.frames_to_video:
        job_input["frames_to_video"] = config.frames_to_video
    if config.comfy_org_api_key:
        job_input["comfy_org_api_key"] = config.comfy_org_api_key
    return {"input": job_input}
