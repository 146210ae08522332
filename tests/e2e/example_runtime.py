"""The fake runtime plus the two batch nodes the bundled example uses, for ``test_input.json``.

``examples/invert_png_mp4.json`` (which ``test_input.json`` carries) batches the image
with its inverse (``ImageBatch``) and repeats the batch (``RepeatImageBatch``) before
making a video. The worker started by the test imports this module through
``WORKER_RUNTIME=tests.e2e.example_runtime:ExampleRuntime``, in its own process, so the
registration below never reaches the test process's own fake runtime.
"""

from __future__ import annotations

from typing import Any

from tests import fake_runtime
from tests.fake_runtime import FakeRuntime

# ComfyUI's own required inputs of the two nodes (comfy_extras/nodes_images.py, nodes.py).
fake_runtime._REQUIRED.setdefault("ImageBatch", ["image1", "image2"])
fake_runtime._REQUIRED.setdefault("RepeatImageBatch", ["image", "amount"])


class ExampleRuntime(FakeRuntime):
    """FakeRuntime that also runs ImageBatch and RepeatImageBatch on its Pillow images."""

    def _node_ImageBatch(self, args: dict[str, Any], *_: Any) -> tuple[Any, ...]:
        return ([*args["image1"], *args["image2"]],)

    def _node_RepeatImageBatch(self, args: dict[str, Any], *_: Any) -> tuple[Any, ...]:
        return (list(args["image"]) * int(args["amount"]),)
