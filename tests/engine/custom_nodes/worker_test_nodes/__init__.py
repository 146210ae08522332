"""Node types for the real-engine tests, loaded by ComfyUI as a custom node pack.

The engine tests register this folder's parent as a ComfyUI ``custom_nodes``
folder. Like many real packs, it touches ComfyUI's server object at import
(a route on ``PromptServer.instance.routes``, a message through ``send_sync``):
it only loads if the runtime's headless stand-in offers both.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import comfy.model_management
import comfy.utils
from server import PromptServer

IMPORT_EVENT = "worker_test_nodes.loaded"
# Some packs keep the event loop current at import and schedule onto it later.
IMPORT_LOOP = asyncio.get_event_loop()


@PromptServer.instance.routes.get("/worker_test_nodes/ping")
async def _ping(request: Any) -> Any:
    from aiohttp import web

    return web.json_response({"ok": True})


PromptServer.instance.send_sync(IMPORT_EVENT, {"ok": True})


def _rewrite_labels(request: dict[str, Any]) -> dict[str, Any]:
    """An on-prompt handler, as wildcard packs register: rewrites before validation."""
    for node in request["prompt"].values():
        if node.get("inputs", {}).get("label") == "rewrite-me":
            node["inputs"]["label"] = "rewritten"
    return request


PromptServer.instance.add_on_prompt_handler(_rewrite_labels)


class WorkerTestSteps:
    """Sleeps ``steps`` times, reporting each step through ComfyUI's progress bar."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "images": ("IMAGE",),
                "steps": ("INT", {"default": 10, "min": 1, "max": 10000}),
                "seconds_per_step": ("FLOAT", {"default": 0.01, "min": 0.0, "max": 10.0}),
            }
        }

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self, images: Any, steps: int, seconds_per_step: float) -> tuple[Any]:
        bar = comfy.utils.ProgressBar(steps)
        for _ in range(steps):
            time.sleep(seconds_per_step)
            bar.update(1)
        return (images,)


class WorkerTestRaise:
    """Raises ``ValueError(message)`` when it runs."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"images": ("IMAGE",), "message": ("STRING", {"default": "boom"})}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self, images: Any, message: str) -> tuple[Any]:
        raise ValueError(message)


class WorkerTestApiKey:
    """Reports a digest of the Comfy.org key ComfyUI hands to API nodes (never the key)."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {"label": ("STRING", {"default": "key"})},
            "hidden": {"api_key": "API_KEY_COMFY_ORG"},
        }

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def run(self, label: str, api_key: str | None = None) -> dict[str, Any]:
        digest = hashlib.sha256(api_key.encode()).hexdigest()[:16] if api_key else "none"
        comfy.model_management.throw_exception_if_processing_interrupted()
        return {"ui": {"text": [label, digest]}}

    @classmethod
    def IS_CHANGED(cls, label: str) -> float:
        return time.time()  # never cached: each job's key is checked


NODE_CLASS_MAPPINGS = {
    "WorkerTestSteps": WorkerTestSteps,
    "WorkerTestRaise": WorkerTestRaise,
    "WorkerTestApiKey": WorkerTestApiKey,
}
