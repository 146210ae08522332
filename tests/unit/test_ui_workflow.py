"""The UI-format converter, against node definitions recorded from the pinned engine.

Small hand-written editor graphs prove each rule; the corpus test runs ComfyUI's own
templates (comfyui-workflow-templates 0.1.95) through the converter and a structural
check of the result against the same definitions.
"""

from __future__ import annotations

import copy
import logging
import random
from pathlib import Path
from typing import Any

import pytest

from engine.errors import RequestError, WorkflowConversionError
from engine.request import parse_request
from engine.settings import Settings
from engine.ui_workflow import as_api_format, is_ui_format, to_api_format
from engine.worker import Worker
from tests.fake_runtime import FakeRuntime
from tests.ui_graphs import UiGraph, invert_png_mp4_ui
from tests.ui_templates import (
    TEMPLATES_VERSION,
    is_eligible,
    recorded_definitions,
    structural_problems,
    templates,
    templates_dir,
)

DEFS: dict[str, Any] = recorded_definitions()["node_definitions"]


def convert(workflow: dict[str, Any], defs: dict[str, Any] | None = None) -> dict[str, Any]:
    return to_api_format(workflow, DEFS if defs is None else defs, rng=random.Random(7))  # noqa: S311 - repeatable picks


def conversion_error(workflow: dict[str, Any], defs: dict[str, Any] | None = None) -> list[str]:
    with pytest.raises(WorkflowConversionError) as caught:
        convert(workflow, defs)
    assert caught.value.code == "workflow_conversion_failed"
    assert isinstance(caught.value, RequestError)
    return caught.value.details


def inputs_of(api: dict[str, Any], node_id: str) -> dict[str, Any]:
    inputs: dict[str, Any] = api[node_id]["inputs"]
    return inputs


# -- widget values ----------------------------------------------------------------------------


def ksampler_graph(widgets: list[Any]) -> UiGraph:
    g = UiGraph()
    g.node(1, "CheckpointLoaderSimple", ["sd15/tiny.safetensors"], outputs=["MODEL", "CLIP", "VAE"])
    g.node(2, "CLIPTextEncode", ["a cat"], inputs=[("clip", "CLIP")], outputs=["CONDITIONING"])
    g.node(3, "EmptyLatentImage", [64, 64, 1], outputs=["LATENT"])
    g.node(
        4,
        "KSampler",
        widgets,
        inputs=[
            ("model", "MODEL"),
            ("positive", "CONDITIONING"),
            ("negative", "CONDITIONING"),
            ("latent_image", "LATENT"),
        ],
        outputs=["LATENT"],
    )
    g.node(5, "VAEDecode", inputs=[("samples", "LATENT"), ("vae", "VAE")], outputs=["IMAGE"])
    g.node(6, "SaveImage", ["out"], inputs=[("images", "IMAGE")])
    g.link(1, 1, 2, "clip")
    g.link(1, 0, 4, "model")
    g.link(2, 0, 4, "positive")
    g.link(2, 0, 4, "negative")
    g.link(3, 0, 4, "latent_image")
    g.link(4, 0, 5, "samples")
    g.link(1, 2, 5, "vae")
    g.link(5, 0, 6, "images")
    return g


def test_widget_values_map_in_input_order_and_the_control_value_is_skipped() -> None:
    api = convert(ksampler_graph([42, "randomize", 20, 7.5, "euler", "karras", 0.9]).build())
    assert inputs_of(api, "4") == {
        "seed": 42,
        "steps": 20,
        "cfg": 7.5,
        "sampler_name": "euler",
        "scheduler": "karras",
        "denoise": 0.9,
        "model": ["1", 0],
        "positive": ["2", 0],
        "negative": ["2", 0],
        "latent_image": ["3", 0],
    }
    assert api["4"]["class_type"] == "KSampler"
    assert api["4"]["_meta"] == {"title": "KSampler"}


def test_the_old_boolean_randomize_toggle_after_a_seed_is_skipped() -> None:
    """ComfyUI's own default.json template still holds ``[seed, true, 20, ...]``."""
    api = convert(ksampler_graph([42, True, 20, 8, "euler", "normal", 1]).build())
    assert inputs_of(api, "4")["steps"] == 20
    assert inputs_of(api, "4")["denoise"] == 1


def test_randomize_is_never_written_into_a_prompt() -> None:
    """comfyui-autograph wrote "randomize" into a text widget after a seed."""
    g = UiGraph()
    g.node(
        1, "Pikaswaps", ["a cat", "blurry", 42, "randomize", "the hat"], inputs=[("video", "VIDEO")]
    )
    inputs = convert(g.build())["1"]["inputs"]
    assert inputs["region_to_modify"] == "the hat"
    assert "randomize" not in inputs.values()


def test_a_control_value_shifted_into_text_is_an_error_not_a_prompt() -> None:
    """A layout where an INT lost its control widget: the value is named, never sent."""
    defs = {
        "Shifted": {
            "input": {"required": {"value": ["INT", {}], "text": ["STRING", {"multiline": True}]}},
            "input_order": {"required": ["value", "text"]},
            "output": [],
            "output_node": True,
        }
    }
    g = UiGraph()
    g.node(3, "Shifted", [5, "randomize", "a prompt"])
    (problem,) = conversion_error(g.build(), defs)
    assert problem.startswith("node 3 (Shifted) widget 'text': 'randomize' is the control value")


def test_widgets_missing_from_an_older_save_get_their_defaults() -> None:
    g = UiGraph()
    g.node(1, "UNETLoader", ["flux.safetensors", "default"], outputs=["MODEL"])
    g.node(2, "DifferentialDiffusion", [], inputs=[("model", "MODEL")], outputs=["MODEL"])
    g.node(3, "SaveImage", [], inputs=[("images", "IMAGE")])
    g.node(4, "EmptyImage", [8, 8, 1, 0], outputs=["IMAGE"])
    g.link(1, 0, 2, "model")
    g.link(4, 0, 3, "images")
    api = convert(g.build())
    assert inputs_of(api, "2")["strength"] == 1.0
    assert inputs_of(api, "3")["filename_prefix"] == "ComfyUI"


def test_upload_widgets_add_values_that_are_not_inputs() -> None:
    g = UiGraph()
    g.node(1, "LoadImage", ["a.png", "image", ""], outputs=["IMAGE", "MASK"])
    g.node(2, "LoadAudio", ["b.mp3", None, None], outputs=["AUDIO"])
    g.node(3, "LoadVideo", ["c.mp4", "image"], outputs=["VIDEO"])
    api = convert(g.build())
    assert inputs_of(api, "1") == {"image": "a.png"}
    assert inputs_of(api, "2") == {"audio": "b.mp3"}
    assert inputs_of(api, "3") == {"file": "c.mp4"}


def test_widget_values_saved_as_a_dict_map_by_name() -> None:
    """VideoHelperSuite saves ``{"frame_rate": 8, ..., "videopreview": {...}}``."""
    g = UiGraph()
    g.node(1, "EmptyImage", [64, 64, 1, 0], outputs=["IMAGE"])
    g.node(
        2,
        "VHS_VideoCombine",
        {"frame_rate": 12, "loop_count": 0, "filename_prefix": "clip", "format": "image/gif",
         "pingpong": False, "save_output": True, "videopreview": {"hidden": False}},
        inputs=[("images", "IMAGE")],
    )  # fmt: skip
    g.link(1, 0, 2, "images")
    inputs = inputs_of(convert(g.build()), "2")
    assert inputs["frame_rate"] == 12
    assert inputs["format"] == "image/gif"
    assert "videopreview" not in inputs


def test_model_names_absent_from_the_options_are_kept_as_sent() -> None:
    """comfyui-autograph turned them into null; validation must name the file instead."""
    api = convert(ksampler_graph([1, "fixed", 20, 8, "euler", "normal", 1]).build())
    assert inputs_of(api, "1") == {"ckpt_name": "sd15/tiny.safetensors"}
    assert DEFS["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == []


def test_a_list_value_is_wrapped_so_it_is_not_read_as_a_link() -> None:
    defs = {
        "Many": {
            "input": {
                "required": {"names": ["COMBO", {"options": ["a", "b"], "multiselect": True}]}
            },
            "input_order": {"required": ["names"]},
            "output": [],
            "output_node": True,
        }
    }
    g = UiGraph()
    g.node(1, "Many", [["a", "b"]])
    assert inputs_of(convert(g.build(), defs), "1") == {"names": {"__value__": ["a", "b"]}}


def test_dynamic_prompts_are_resolved_as_the_editor_does_when_queueing() -> None:
    g = UiGraph()
    g.node(1, "CLIPTextEncode", ["a {red|red} cat // a comment"], inputs=[("clip", "CLIP")])
    assert inputs_of(convert(g.build()), "1")["text"] == "a red cat "


def test_every_value_that_does_not_fit_is_named_at_once() -> None:
    g = ksampler_graph([42, "randomize", "euler", 7.5, "euler", "karras", 0.9])
    g.node(7, "EmptyImage", [64, "wide", 1, 0], outputs=["IMAGE"])
    details = conversion_error(g.build())
    assert details[0].startswith("node 4 (KSampler) widget 'steps': 'euler' is not an integer")
    assert details[1].startswith("node 7 (EmptyImage) widget 'height': 'wide' is not an integer")
    assert len(details) == 2
    assert all("saved with another layout" in d for d in details)


# -- links, primitives, reroutes, modes ------------------------------------------------------


def test_a_link_into_a_widget_input_wins_over_its_value() -> None:
    g = UiGraph()
    g.node(1, "PrimitiveInt", [640, "fixed"], outputs=["INT"])
    g.node(2, "EmptyImage", [64, 64, 1, 0], widget_inputs=[("width", "INT")], outputs=["IMAGE"])
    g.link(1, 0, 2, "width")
    api = convert(g.build())
    assert inputs_of(api, "1") == {"value": 640}
    assert inputs_of(api, "2")["width"] == ["1", 0]
    assert inputs_of(api, "2")["height"] == 64


def test_a_primitive_node_gives_its_value_to_the_inputs_it_feeds() -> None:
    g = UiGraph()
    g.node(1, "PrimitiveNode", [512, "fixed"], outputs=["INT"])
    g.node(2, "EmptyImage", [64, 64, 1, 0], widget_inputs=[("width", "INT")], outputs=["IMAGE"])
    g.link(1, 0, 2, "width")
    api = convert(g.build())
    assert set(api) == {"2"}
    assert inputs_of(api, "2")["width"] == 512


def test_reroutes_are_followed_and_notes_dropped() -> None:
    g = UiGraph()
    g.node(1, "EmptyImage", [8, 8, 1, 0], outputs=["IMAGE"])
    g.node(2, "Reroute", inputs=[("", "*")], outputs=["IMAGE"])
    g.node(3, "Reroute", inputs=[("", "*")], outputs=["IMAGE"])
    g.node(4, "SaveImage", ["x"], inputs=[("images", "IMAGE")])
    g.node(5, "Note", ["remember"])
    g.node(6, "MarkdownNote", ["# title"])
    g.node(7, "Fast Groups Muter (rgthree)", [])
    g.node(8, "Label (rgthree)", [])
    g.node(9, "Image Comparer (rgthree)", [], inputs=[("image_a", "IMAGE")])
    g.link(1, 0, 2, "")
    g.link(2, 0, 3, "")
    g.link(3, 0, 4, "images")
    g.link(3, 0, 9, "image_a")
    api = convert(g.build())
    assert set(api) == {"1", "4", "9"}
    assert inputs_of(api, "4")["images"] == ["1", 0]
    assert inputs_of(api, "9") == {"image_a": ["1", 0]}


def test_kjnodes_set_and_get_nodes_are_followed() -> None:
    g = UiGraph()
    g.node(1, "EmptyImage", [8, 8, 1, 0], outputs=["IMAGE"])
    g.node(2, "SetNode", ["pixels"], inputs=[("IMAGE", "IMAGE")], outputs=["*"])
    g.node(3, "GetNode", ["pixels"], outputs=["IMAGE"])
    g.node(4, "SaveImage", ["x"], inputs=[("images", "IMAGE")])
    g.link(1, 0, 2, "IMAGE")
    g.link(3, 0, 4, "images")
    api = convert(g.build())
    assert set(api) == {"1", "4"}
    assert inputs_of(api, "4")["images"] == ["1", 0]


def test_a_bypassed_node_passes_its_input_of_the_same_type_on() -> None:
    g = UiGraph()
    g.node(1, "LoadImage", ["a.png", "image"], outputs=["IMAGE", "MASK"])
    g.node(2, "ImageCompositeMasked", [0, 0, False], mode=4, outputs=["IMAGE"],
           inputs=[("destination", "IMAGE"), ("source", "IMAGE"), ("mask", "MASK")])  # fmt: skip
    g.node(3, "MaskToImage", inputs=[("mask", "MASK")], outputs=["IMAGE"])
    g.node(4, "SaveImage", ["x"], inputs=[("images", "IMAGE")])
    g.link(1, 1, 3, "mask")
    g.link(3, 0, 2, "destination")
    g.link(1, 0, 2, "source")
    g.link(2, 0, 4, "images")
    api = convert(g.build())
    assert "2" not in api
    assert inputs_of(api, "4")["images"] == ["3", 0]


def test_a_muted_node_is_dropped_with_the_links_from_it() -> None:
    g = UiGraph()
    g.node(1, "EmptyImage", [8, 8, 1, 0], outputs=["IMAGE"])
    g.node(2, "ImageInvert", inputs=[("image", "IMAGE")], outputs=["IMAGE"], mode=2)
    g.node(3, "SaveImage", ["x"], inputs=[("images", "IMAGE")])
    g.node(4, "PreviewImage", inputs=[("images", "IMAGE")], mode=2)
    g.link(1, 0, 2, "image")
    g.link(2, 0, 3, "images")
    g.link(1, 0, 4, "images")
    (problem,) = conversion_error(g.build())
    assert problem.startswith("node 3 (SaveImage) input 'images' has no source")


def test_links_to_a_removed_bypassed_node_are_not_left_dangling() -> None:
    """comfyui-autograph left links to bypassed nodes it removed; here a bypassed node
    with no input of the consumer's type leaves the input without a source, named."""
    g = UiGraph()
    g.node(1, "LoadImage", ["a.png", "image"], outputs=["IMAGE", "MASK"], mode=4)
    g.node(2, "SaveImage", ["x"], inputs=[("images", "IMAGE")])
    g.node(3, "ImageInvert", inputs=[("image", "IMAGE")], outputs=["IMAGE"])
    g.link(1, 0, 2, "images")
    g.link(1, 0, 3, "image")
    (problem,) = conversion_error(g.build())
    assert problem.startswith("node 2 (SaveImage) input 'images' has no source")


def test_optional_inputs_from_a_muted_node_are_left_out() -> None:
    g = UiGraph()
    g.node(1, "EmptyImage", [8, 8, 1, 0], outputs=["IMAGE"])
    g.node(2, "LoadAudio", ["b.mp3", None, None], outputs=["AUDIO"], mode=2)
    g.node(
        3, "CreateVideo", [8], inputs=[("images", "IMAGE"), ("audio", "AUDIO")], outputs=["VIDEO"]
    )
    g.node(4, "SaveVideo", ["v", "auto", "auto"], inputs=[("video", "VIDEO")])
    g.link(1, 0, 3, "images")
    g.link(2, 0, 3, "audio")
    g.link(3, 0, 4, "video")
    assert inputs_of(convert(g.build()), "3") == {"fps": 8, "images": ["1", 0]}


def test_an_unknown_node_type_is_kept_for_validation_to_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """comfyui-autograph dropped it with a warning and reported success."""
    g = UiGraph()
    g.node(1, "EmptyImage", [8, 8, 1, 0], outputs=["IMAGE"])
    g.node(2, "SomePackUpscaler", [2.0, "lanczos"], inputs=[("image", "IMAGE")], outputs=["IMAGE"])
    g.node(3, "SaveImage", ["x"], inputs=[("images", "IMAGE")])
    g.link(1, 0, 2, "image")
    g.link(2, 0, 3, "images")
    with caplog.at_level(logging.WARNING, logger="engine.ui_workflow"):
        api = convert(g.build())
    assert api["2"] == {
        "inputs": {"image": ["1", 0]},
        "class_type": "SomePackUpscaler",
        "_meta": {"title": "SomePackUpscaler"},
    }
    assert inputs_of(api, "3")["images"] == ["2", 0]
    assert "SomePackUpscaler is not installed" in caplog.text


# -- subgraphs ----------------------------------------------------------------------------------


def subgraph_definition(sub_id: str, nodes: list[dict[str, Any]], links: list[dict[str, Any]],
                        inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
    return {"id": sub_id, "name": sub_id, "nodes": nodes, "links": links, "inputs": inputs,
            "outputs": outputs, "widgets": [], "inputNode": {"id": -10}, "outputNode": {"id": -20}}  # fmt: skip


def link_obj(link_id: int, origin: int, origin_slot: int, target: int, target_slot: int, kind: str) -> dict[str, Any]:  # fmt: skip
    return {"id": link_id, "origin_id": origin, "origin_slot": origin_slot, "target_id": target,
            "target_slot": target_slot, "type": kind}  # fmt: skip


def blur_subgraph() -> dict[str, Any]:
    """image, radius -> ImageBlur -> ImageInvert -> image."""
    nodes = [
        {"id": 1, "type": "ImageBlur", "mode": 0, "widgets_values": [1, 1.0],
         "inputs": [{"name": "image", "type": "IMAGE", "link": 11},
                    {"name": "blur_radius", "type": "INT", "link": 12, "widget": {"name": "blur_radius"}}],
         "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [13]}]},
        {"id": 2, "type": "ImageInvert", "mode": 0, "widgets_values": [],
         "inputs": [{"name": "image", "type": "IMAGE", "link": 13}],
         "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [14]}]},
    ]  # fmt: skip
    links = [
        link_obj(11, -10, 0, 1, 0, "IMAGE"),
        link_obj(12, -10, 1, 1, 1, "INT"),
        link_obj(13, 1, 0, 2, 0, "IMAGE"),
        link_obj(14, 2, 0, -20, 0, "IMAGE"),
    ]
    return subgraph_definition(
        "sub-blur",
        nodes,
        links,
        [{"name": "image", "type": "IMAGE", "linkIds": [11]},
         {"name": "blur_radius", "type": "INT", "linkIds": [12]}],
        [{"name": "IMAGE", "type": "IMAGE", "linkIds": [14]}],
    )  # fmt: skip


def with_subgraph() -> dict[str, Any]:
    """EmptyImage -> sub-blur (node 5, radius 4) -> SaveImage."""
    g = UiGraph()
    g.subgraphs.append(blur_subgraph())
    g.node(1, "EmptyImage", [8, 8, 1, 0], outputs=["IMAGE"])
    g.node(5, "sub-blur", [4], inputs=[("image", "IMAGE")], outputs=["IMAGE"])
    g.node(6, "SaveImage", ["x"], inputs=[("images", "IMAGE")])
    g.link(1, 0, 5, "image")
    g.link(5, 0, 6, "images")
    return g.build()


def test_subgraphs_are_expanded_with_the_editors_node_ids() -> None:
    api = convert(with_subgraph())
    assert set(api) == {"1", "5:1", "5:2", "6"}
    assert inputs_of(api, "5:1") == {"blur_radius": 4, "sigma": 1.0, "image": ["1", 0]}
    assert inputs_of(api, "5:2") == {"image": ["5:1", 0]}
    assert inputs_of(api, "6")["images"] == ["5:2", 0]


def test_nested_subgraphs_are_expanded_recursively() -> None:
    inner = blur_subgraph()
    outer = subgraph_definition(
        "sub-outer",
        [{"id": 7, "type": "sub-blur", "mode": 0, "widgets_values": [2],
          "inputs": [{"name": "image", "type": "IMAGE", "link": 21}],
          "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [22]}]}],
        [link_obj(21, -10, 0, 7, 0, "IMAGE"), link_obj(22, 7, 0, -20, 0, "IMAGE")],
        [{"name": "image", "type": "IMAGE", "linkIds": [21]}],
        [{"name": "IMAGE", "type": "IMAGE", "linkIds": [22]}],
    )  # fmt: skip
    g = UiGraph()
    g.subgraphs += [inner, outer]
    g.node(1, "EmptyImage", [8, 8, 1, 0], outputs=["IMAGE"])
    g.node(3, "sub-outer", [], inputs=[("image", "IMAGE")], outputs=["IMAGE"])
    g.node(4, "SaveImage", ["x"], inputs=[("images", "IMAGE")])
    g.link(1, 0, 3, "image")
    g.link(3, 0, 4, "images")
    api = convert(g.build())
    assert set(api) == {"1", "3:7:1", "3:7:2", "4"}
    assert inputs_of(api, "3:7:1")["image"] == ["1", 0]
    assert inputs_of(api, "3:7:1")["blur_radius"] == 2
    assert inputs_of(api, "4")["images"] == ["3:7:2", 0]


def test_a_bypassed_subgraph_passes_its_input_on() -> None:
    g = UiGraph()
    g.subgraphs.append(blur_subgraph())
    g.node(1, "EmptyImage", [8, 8, 1, 0], outputs=["IMAGE"])
    g.node(5, "sub-blur", [4], inputs=[("image", "IMAGE")], outputs=["IMAGE"], mode=4)
    g.node(6, "SaveImage", ["x"], inputs=[("images", "IMAGE")])
    g.link(1, 0, 5, "image")
    g.link(5, 0, 6, "images")
    api = convert(g.build())
    assert set(api) == {"1", "6"}
    assert inputs_of(api, "6")["images"] == ["1", 0]


# -- format detection, request, worker -----------------------------------------------------------


def test_api_format_passes_through_without_asking_for_definitions() -> None:
    api = {"1": {"class_type": "SaveImage", "inputs": {}}}

    def no_definitions() -> dict[str, Any]:
        raise AssertionError("definitions are needed only for the UI format")

    assert as_api_format(api, no_definitions) is api
    assert not is_ui_format(api)
    assert is_ui_format(invert_png_mp4_ui())


def test_the_request_accepts_the_ui_format_and_checks_its_nodes() -> None:
    workflow = invert_png_mp4_ui()
    assert parse_request({"workflow": workflow}).workflow == workflow
    broken = copy.deepcopy(workflow)
    broken["nodes"][2] = {"id": 3}
    with pytest.raises(RequestError) as caught:
        parse_request({"workflow": broken})
    assert "nodes[2] must be an object with an 'id' and a 'type'" in caught.value.summary()


def test_a_ui_format_job_runs_through_the_worker(settings: Settings, tmp_path: Path) -> None:
    from tests.unit.test_worker import NoNetwork, png_b64

    g = UiGraph()
    g.node(1, "LoadImage", ["a.png", "image"], outputs=["IMAGE", "MASK"])
    g.node(2, "ImageInvert", inputs=[("image", "IMAGE")], outputs=["IMAGE"])
    g.node(3, "SaveImage", ["ui/inverted"], inputs=[("images", "IMAGE")])
    g.node(4, "Note", ["from the editor"])
    g.link(1, 0, 2, "image")
    g.link(2, 0, 3, "images")
    runtime = FakeRuntime(settings)
    worker = Worker(settings, runtime, fetcher=NoNetwork())
    worker.boot()
    body = worker.handle(
        {
            "id": "ui1",
            "input": {"workflow": g.build(), "images": [{"name": "a.png", "image": png_b64()}]},
        }
    )
    assert "error" not in body, body
    assert [i["node_id"] for i in body["images"]] == ["3"]
    assert runtime.jobs[-1].workflow["2"]["class_type"] == "ImageInvert"


def test_a_ui_format_job_with_a_misfit_fails_naming_it(settings: Settings) -> None:
    from tests.unit.test_worker import NoNetwork

    g = UiGraph()
    g.node(7, "EmptyImage", [64, "wide", 1, 0], outputs=["IMAGE"])
    g.node(8, "SaveImage", ["x"], inputs=[("images", "IMAGE")])
    g.link(7, 0, 8, "images")
    worker = Worker(settings, FakeRuntime(settings), fetcher=NoNetwork())
    worker.boot()
    body = worker.handle({"id": "ui2", "input": {"workflow": g.build()}})
    assert body["code"] == "workflow_conversion_failed"
    assert "node 7 (EmptyImage) widget 'height': 'wide' is not an integer" in body["error"]


# -- the corpus -------------------------------------------------------------------------------------

TEMPLATES = templates_dir()


@pytest.mark.skipif(
    TEMPLATES is None,
    reason=f"comfyui-workflow-templates=={TEMPLATES_VERSION} is not installed (the dev extra has it)",
)
def test_comfyuis_templates_convert_and_fit_the_recorded_definitions() -> None:
    """At least 97% of the templates whose node types are installed convert and pass a
    structural check (required inputs, link types, combo choices, number ranges)."""
    assert TEMPLATES is not None
    eligible, failures = 0, []
    for name, workflow in templates(TEMPLATES):
        if not is_eligible(workflow, DEFS):
            continue
        eligible += 1
        try:
            problems = structural_problems(convert(workflow), DEFS)
        except WorkflowConversionError as exc:
            problems = exc.details
        if problems:
            failures.append(f"{name}: {problems[:3]}")
    assert eligible >= 150, f"only {eligible} eligible templates: wrong package version?"
    rate = 1 - len(failures) / eligible
    assert rate >= 0.97, f"{len(failures)} of {eligible} failed:\n" + "\n".join(failures)
    # The three known failures are nodes saved with an older widget layout: they must fail
    # loudly (naming node, widget and value), never be sent shifted.
    assert len(failures) <= 3, "\n".join(failures)


def test_a_malformed_ui_workflow_is_a_conversion_error_not_a_crash() -> None:
    workflow = invert_png_mp4_ui()
    workflow["nodes"][1]["inputs"] = ["not an object"]
    (problem,) = conversion_error(workflow)
    assert problem == "nodes[1] (node 2).inputs[0]: must be an object (a socket), not text"
