"""UI-format workflows against the real engine: ComfyUI's templates and one job end to end.

The templates (comfyui-workflow-templates 0.1.95) whose node types this engine has are
converted against ``runtime.node_definitions()`` and checked by ComfyUI's own
``execution.validate_prompt``; absent model and input files do not count against a
template (tests/ui_templates.refusals). With all five packs (COMFYUI_TEST_CUSTOM_NODES)
this is the figure ``scripts/convert_templates.py`` prints.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest
from PIL import Image

from engine.runtime.comfy import ComfyRuntime
from engine.settings import Settings
from engine.worker import Worker
from tests.engine.support import ENGINE_MARKS
from tests.ui_graphs import invert_png_mp4_ui
from tests.ui_templates import TEMPLATES_VERSION, check_templates, templates_dir

pytestmark = ENGINE_MARKS

TEMPLATES = templates_dir()


def test_node_definitions_have_the_shape_of_object_info(runtime: ComfyRuntime) -> None:
    defs = runtime.node_definitions()
    assert defs is runtime.node_definitions(), "built once, then cached"
    ksampler = defs["KSampler"]
    assert ksampler["input_order"]["required"][:2] == ["model", "seed"]
    assert ksampler["input"]["required"]["seed"][1]["control_after_generate"] is True
    assert ksampler["output"] == ["LATENT"]
    # A V3 node (comfy_api), described by its own GET_NODE_INFO_V1 as the server does.
    assert defs["SaveVideo"]["input"]["required"]["format"][0] == "COMBO"
    assert defs["SaveVideo"]["output_node"] is True


@pytest.mark.skipif(
    TEMPLATES is None, reason=f"comfyui-workflow-templates=={TEMPLATES_VERSION} is not installed"
)
def test_templates_convert_and_pass_comfyuis_validation(runtime: ComfyRuntime) -> None:
    assert TEMPLATES is not None
    _, eligible, failed = check_templates(TEMPLATES, runtime.node_definitions())
    failures = [f"{f.name}: {f.reasons[: 2 if f.stage == 'conversion' else 3]}" for f in failed]
    # ComfyUI's own nodes alone make most templates eligible; the packs add a few more.
    assert eligible >= 100, f"only {eligible} eligible templates"
    rate = 1 - len(failures) / eligible
    assert rate >= 0.97, f"{len(failures)} of {eligible} failed:\n" + "\n".join(failures)


def test_a_ui_format_workflow_runs_end_to_end(runtime: ComfyRuntime) -> None:
    """examples/invert_png_mp4.json as the editor saves it (with a note, a reroute, a
    muted preview and a bypassed blur) gives the same PNG and MP4."""
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 200, 30)).save(buf, "PNG")
    settings = Settings(work_dir=runtime.directories.input.parent)
    worker = Worker(settings, runtime)
    body: dict[str, Any] = worker.handle(
        {
            "id": "ui-e2e",
            "input": {
                "workflow": invert_png_mp4_ui("example.png", "ui"),
                "images": [
                    {"name": "example.png", "image": base64.b64encode(buf.getvalue()).decode()}
                ],
            },
        }
    )
    assert "error" not in body, body
    by_node = {item["node_id"]: item for item in body["images"]}
    assert set(by_node) == {"3", "7"}
    png = base64.b64decode(by_node["3"]["data"].partition(",")[2])
    inverted = Image.open(io.BytesIO(png)).convert("RGB").getpixel((0, 0))
    # ComfyUI inverts in float and truncates on saving: 255 - 200 may come out as 54.
    assert all(abs(a - b) <= 1 for a, b in zip(inverted, (245, 55, 225), strict=True)), inverted
    assert by_node["7"]["mime_type"] == "video/mp4"
    assert by_node["7"]["video"]["frames"] == 24
