"""The job's ``input``, parsed into a typed, frozen request.

A request that does not match raises :class:`RequestError` with one detail line
per problem, each naming the field to fix (``input.images[2].name: ...``).
Unknown extra fields are ignored so that clients written for other ComfyUI
workers keep working, and so are three shapes worker-comfyui accepts (its
``validate_input``): ``input`` as a JSON string holding the request,
``"images": null``, and a workflow sent as ComfyUI's ``/prompt`` body.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from engine.errors import RequestError
from engine.ui_workflow import is_ui_format


class InputImage(BaseModel):
    """One input image: the file name the workflow uses and where its bytes are."""

    model_config = ConfigDict(frozen=True, extra="ignore", strict=True)

    name: str = Field(min_length=1, max_length=255)
    image: str = Field(min_length=1)
    """An ``http(s)://`` URL, a ``data:`` URI or bare base64."""


class FramesToVideo(BaseModel):
    """Ask the worker to join a node's image-sequence output into one video."""

    model_config = ConfigDict(frozen=True, extra="ignore", strict=True)

    fps: float = Field(default=8.0, gt=0, le=240)
    format: Literal["mp4", "webm"] = "mp4"
    keep_frames: bool = False
    """Also return the still frames the video was made from."""


class ConvertOutput(BaseModel):
    """Ask the worker to re-encode still-image outputs into one format before delivery."""

    model_config = ConfigDict(frozen=True, extra="ignore", strict=True)

    format: Literal["png", "jpeg", "webp"]
    quality: int = Field(default=90, ge=1, le=100)
    """JPEG and WEBP quality (1-100); PNG is lossless and ignores it. The default is
    above Pillow's own 75, which shows blocks on the smooth gradients diffusion makes."""


class JobRequest(BaseModel):
    """The parsed ``input`` of a RunPod job."""

    model_config = ConfigDict(frozen=True, extra="ignore", strict=True)

    workflow: dict[str, Any]
    images: list[InputImage] = Field(default_factory=list)
    comfy_org_api_key: str | None = Field(
        default=None,
        repr=False,
        # ``api_key_comfy_org`` is the name other workers (and ComfyUI's extra_data) use;
        # when both are sent, ``comfy_org_api_key`` wins.
        validation_alias=AliasChoices("comfy_org_api_key", "api_key_comfy_org"),
    )
    frames_to_video: FramesToVideo | None = None
    convert_output: ConvertOutput | None = None
    # Set by parse_request from a /prompt body, never from a field of the request.
    _editor_graph: dict[str, Any] | None = PrivateAttr(default=None)

    @property
    def editor_graph(self) -> dict[str, Any] | None:
        """The editor graph a ``/prompt`` body carried (``extra_data.extra_pnginfo.workflow``,
        what ComfyUI's editor embeds in outputs beside the prompt), or None."""
        return self._editor_graph

    @model_validator(mode="before")
    @classmethod
    def _worker_comfyui_shapes(cls, data: Any) -> Any:
        """What worker-comfyui accepts and strict parsing would refuse, as it means it."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "images" in data and data["images"] is None:
            del data["images"]  # worker-comfyui: "images": null is "no images"
        body = data.get("workflow")
        if is_prompt_body(body):
            # ComfyUI's POST /prompt body: the graph is its "prompt"; the rest (client_id,
            # extra_data) concerns a ComfyUI server, which this worker has none of.
            data["workflow"] = body["prompt"]
            key = _extra_data_key(body)
            if key is not None and not any(data.get(k) for k in _KEY_FIELDS):
                data["comfy_org_api_key"] = key
        return data

    @field_validator("workflow")
    @classmethod
    def _workflow_is_api_format(cls, workflow: dict[str, Any]) -> dict[str, Any]:
        if not workflow:
            raise ValueError(
                "the workflow is empty: send it as the editor saves it, or its API export"
            )
        if is_ui_format(workflow):
            # The editor's format: the worker converts it once the engine's node
            # definitions are at hand (engine.ui_workflow); here only its shape is checked.
            if not workflow["nodes"]:
                raise ValueError("the workflow (UI format) has no nodes")
            bad = [i for i, n in enumerate(workflow["nodes"]) if not _is_ui_node(n)]
            if bad:
                raise ValueError(
                    f"nodes[{bad[0]}] must be an object with an 'id' and a 'type' "
                    f"({len(bad)} such node(s))"
                )
            return workflow
        problems = []
        for node_id, node in workflow.items():
            if not isinstance(node, dict):
                problems.append(f"node {node_id!r} must be an object, got {type(node).__name__}")
            elif not isinstance(node.get("class_type"), str) or not node["class_type"]:
                problems.append(f"node {node_id!r} has no class_type")
            elif not isinstance(node.get("inputs", {}), dict):
                problems.append(f"node {node_id!r} inputs must be an object")
        if problems:
            raise ValueError("; ".join(problems[:10]))
        return workflow


_KEY_FIELDS = ("comfy_org_api_key", "api_key_comfy_org")
"""The request's Comfy.org key: the field and its alias."""

# The keys of ComfyUI's POST /prompt body (server.py, ComfyUI 0.3.64) besides "prompt".
_PROMPT_BODY_KEYS = frozenset(
    {"client_id", "extra_data", "prompt_id", "number", "front", "partial_execution_targets"}
)


def is_prompt_body(workflow: Any) -> bool:
    """True when ``workflow`` is ComfyUI's ``/prompt`` body around a graph, not a graph.

    A graph may name a node ``prompt``; a node holds a ``class_type``, a body's
    ``prompt`` does not, and a body holds no keys but the server's own.
    """
    if not isinstance(workflow, dict):
        return False
    inner = workflow.get("prompt")
    return (
        isinstance(inner, dict)
        and "class_type" not in inner
        and set(workflow) - {"prompt"} <= _PROMPT_BODY_KEYS
    )


def _extra_data_key(body: dict[str, Any]) -> str | None:
    extra = body.get("extra_data")
    key = extra.get("api_key_comfy_org") if isinstance(extra, dict) else None
    return key if isinstance(key, str) and key else None


def _prompt_body_graph(job_input: dict[str, Any]) -> dict[str, Any] | None:
    body = job_input.get("workflow")
    if not isinstance(body, dict) or not is_prompt_body(body):
        return None
    extra = body.get("extra_data")
    pnginfo = extra.get("extra_pnginfo") if isinstance(extra, dict) else None
    graph = pnginfo.get("workflow") if isinstance(pnginfo, dict) else None
    return graph if isinstance(graph, dict) and is_ui_format(graph) else None


def as_object(job_input: Any) -> Any:
    """``input`` itself, or the object a JSON-string ``input`` holds (worker-comfyui's
    ``validate_input`` parses one); anything else is returned unchanged."""
    if isinstance(job_input, str):
        try:
            return json.loads(job_input)
        except ValueError:
            return job_input
    return job_input


def request_secrets(job_input: Any) -> list[str]:
    """The Comfy.org keys a request carries, wherever it carries them: the field, its
    alias, and a ``/prompt`` body's ``extra_data`` (also inside a JSON-string ``input``)."""
    request = as_object(job_input)
    if not isinstance(request, dict):
        return []
    found = [request.get(k) for k in _KEY_FIELDS]
    if is_prompt_body(request.get("workflow")):
        found.append(_extra_data_key(request["workflow"]))
    return [key for key in found if isinstance(key, str) and key]


def _is_ui_node(node: Any) -> bool:
    return isinstance(node, dict) and "id" in node and isinstance(node.get("type"), str)


def _location(loc: tuple[int | str, ...]) -> str:
    path = "input"
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


class _RepeatedKey(ValueError):
    """A JSON object holds one key twice: ``json.loads`` would keep the last in silence."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _RepeatedKey(key)
        obj[key] = value
    return obj


def parse_request(job_input: Any) -> JobRequest:
    """Parse a job's ``input`` or raise :class:`RequestError` naming each bad field."""
    if isinstance(job_input, str):
        try:
            # Two nodes with one id in an API-format workflow are one key twice: parsed
            # plainly, the later node would replace the earlier (and its output be lost).
            job_input = json.loads(job_input, object_pairs_hook=_unique_keys)
        except _RepeatedKey as exc:
            raise RequestError(
                "Invalid request",
                [
                    f"input holds the key {exc.args[0]!r} twice in one object (two nodes with "
                    "one id?): a JSON object keeps only the last, so the other would be lost "
                    "in silence; give each its own"
                ],
            ) from None
        except ValueError as exc:
            raise RequestError(
                "Invalid request",
                [
                    f"input is a string but not JSON ({exc}): send the request as an object "
                    '({"workflow": {...}}), or as a string holding that object\'s JSON'
                ],
            ) from None
    if not isinstance(job_input, dict):
        raise RequestError(
            "Invalid request",
            [f"input must be an object with a 'workflow', got {type(job_input).__name__}"],
        )
    try:
        request = JobRequest.model_validate(job_input)
    except ValidationError as exc:
        details = []
        for problem in exc.errors(include_url=False):
            message = str(problem["msg"]).removeprefix("Value error, ")
            if problem["type"] == "missing":
                message = "is required"
                if problem["loc"] == ("workflow",) and "prompt" in job_input:
                    message += " (input.prompt is not read: send the graph as input.workflow)"
            details.append(f"{_location(tuple(problem['loc']))}: {message}")
        raise RequestError("Invalid request", details) from None
    request._editor_graph = _prompt_body_graph(job_input)
    return request
