"""The job request: a workflow or a whole request file, input images encoded, the body to POST."""

from __future__ import annotations

import base64
import json
import mimetypes
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from comfy_worker_client.cli import ClientConfig, ImageSpec
from comfy_worker_client.errors import UsageError
from comfy_worker_client.text import is_url


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{what} {path} is not valid JSON: {exc}") from None


def _check_workflow(workflow: Any, where: str) -> dict[str, Any]:
    """A workflow the worker can take: API format, or the UI format (converted by the worker)."""
    if not isinstance(workflow, dict) or not workflow:
        raise UsageError(f"{where} must be a non-empty JSON object of nodes")
    if "nodes" in workflow and "links" in workflow:
        return workflow  # the editor's saved format: the worker converts it (or says why not)
    bad = [
        key
        for key, node in workflow.items()
        if not isinstance(node, dict) or "class_type" not in node
    ]
    if bad:
        raise UsageError(
            f"{where}: {', '.join(map(repr, bad[:5]))} is not a node with a class_type; "
            "export with Workflow -> Export (API), or save the workflow from the editor"
        )
    return workflow


def _is_request(data: Any) -> bool:
    """``{"input": {...}}`` (a request file) rather than a workflow whose node id is ``input``."""
    return (
        isinstance(data, dict)
        and isinstance(data.get("input"), dict)
        and "class_type" not in data["input"]
    )


def load_workflow(path: Path) -> dict[str, Any]:
    """Read a workflow file (API format, or the UI format the worker converts)."""
    return _check_workflow(_read_json(path, "workflow"), f"workflow {path}")


def read_request(path: Path) -> dict[str, Any]:
    """The body a file describes: a request file ``{"input": {...}}`` whole, a workflow wrapped.

    A request file is what RunPod's console, ``test_input.json`` and other workers'
    examples hold; its other top-level fields (``webhook``, ``policy``) are kept.
    """
    data = _read_json(path, "workflow")
    if not _is_request(data):
        return {"input": {"workflow": _check_workflow(data, f"workflow {path}")}}
    body = dict(data)
    body.pop("id", None)  # the SDK's local test job id; RunPod assigns its own
    job_input = dict(body["input"])
    if "workflow" not in job_input:
        raise UsageError(f'request {path}: "input" has no "workflow"')
    _check_workflow(job_input["workflow"], f"request {path}: input.workflow")
    images = job_input.get("images", [])
    if not isinstance(images, list) or not all(isinstance(i, Mapping) for i in images):
        raise UsageError(f'request {path}: "input.images" must be a list of {{"name", "image"}}')
    body["input"] = job_input
    return body


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
    """The body to POST: ``{"input": {...}}``; the options add to (or replace in) the file's."""
    if config.workflow is None:
        raise UsageError("no workflow or request file given")
    body = read_request(config.workflow)
    job_input: dict[str, Any] = body["input"]
    if config.images:
        given = {spec.name for spec in config.images}
        kept = [i for i in job_input.get("images", []) if i.get("name") not in given]
        job_input["images"] = kept + [encode_image(spec) for spec in config.images]
    if config.frames_to_video:
        job_input["frames_to_video"] = config.frames_to_video
    if config.comfy_org_api_key:
        job_input["comfy_org_api_key"] = config.comfy_org_api_key
    return body
