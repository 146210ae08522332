"""Request parsing: typed, every problem named, extra fields ignored."""

from __future__ import annotations

import json
from typing import Any

import pytest

from engine.errors import RequestError
from engine.request import is_prompt_body, parse_request, request_secrets

WF = {"9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0]}}}


def test_a_full_request_parses() -> None:
    req = parse_request(
        {
            "workflow": WF,
            "images": [{"name": "a.png", "image": "data:image/png;base64,AAAA"}],
            "comfy_org_api_key": "key-123456",
            "frames_to_video": {"fps": 12, "format": "webm"},
            "webhook_extra": {"ignored": True},
        }
    )
    assert req.images[0].name == "a.png"
    assert req.frames_to_video is not None and req.frames_to_video.fps == 12.0
    assert "key-123456" not in repr(req)


@pytest.mark.parametrize(
    ("job_input", "expected"),
    [
        (None, "input must be an object"),
        ("workflow", "input is a string but not JSON"),
        ("[1, 2]", "input must be an object"),
        ('{"images": []}', "input.workflow: is required"),
        ({"prompt": WF}, "send the graph as input.workflow"),
        ({"workflow": {"prompt": "x", "client_id": "c"}}, "input.workflow"),
        ({}, "input.workflow: is required"),
        ({"workflow": "{}"}, "input.workflow: Input should be a valid dictionary"),
        ({"workflow": {}}, "the workflow is empty"),
        ({"workflow": {"nodes": [], "links": []}}, "UI format"),
        ({"workflow": {"1": 5}}, "node '1' must be an object"),
        ({"workflow": {"1": {"inputs": {}}}}, "node '1' has no class_type"),
        (
            {"workflow": {"1": {"class_type": "A", "inputs": []}}},
            "node '1' inputs must be an object",
        ),
        ({"workflow": WF, "images": "a.png"}, "input.images: Input should be a valid list"),
        ({"workflow": WF, "images": [{"image": "AAAA"}]}, "input.images[0].name: is required"),
        ({"workflow": WF, "images": [{"name": "a.png"}]}, "input.images[0].image: is required"),
        (
            {"workflow": WF, "images": [{"name": 3, "image": "AAAA"}]},
            "input.images[0].name: Input should be a valid string",
        ),
        ({"workflow": WF, "images": [{"name": "", "image": "AAAA"}]}, "input.images[0].name"),
        ({"workflow": WF, "comfy_org_api_key": 5}, "input.comfy_org_api_key"),
        ({"workflow": WF, "frames_to_video": {"format": "gif"}}, "input.frames_to_video.format"),
        ({"workflow": WF, "frames_to_video": {"fps": 0}}, "input.frames_to_video.fps"),
        ({"workflow": WF, "convert_output": "jpeg"}, "input.convert_output: Input should be"),
        ({"workflow": WF, "convert_output": {}}, "input.convert_output.format: is required"),
        (
            {"workflow": WF, "convert_output": {"format": "gif"}},
            "input.convert_output.format: Input should be 'png', 'jpeg' or 'webp'",
        ),
        ({"workflow": WF, "convert_output": {"format": "JPEG"}}, "input.convert_output.format"),
        (
            {"workflow": WF, "convert_output": {"format": "jpeg", "quality": 0}},
            "input.convert_output.quality: Input should be greater than or equal to 1",
        ),
        (
            {"workflow": WF, "convert_output": {"format": "webp", "quality": 101}},
            "input.convert_output.quality: Input should be less than or equal to 100",
        ),
        (
            {"workflow": WF, "convert_output": {"format": "webp", "quality": "80"}},
            "input.convert_output.quality: Input should be a valid integer",
        ),
    ],
)
def test_bad_requests_name_the_field(job_input: Any, expected: str) -> None:
    with pytest.raises(RequestError) as err:
        parse_request(job_input)
    assert err.value.message == "Invalid request"
    assert any(expected in d for d in err.value.details), err.value.details
    assert expected in err.value.summary()


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(RequestError) as err:
        parse_request({"workflow": WF, "images": [{"name": "a"}, {"image": "b"}]})
    assert len(err.value.details) == 2


def test_convert_output_parses_with_a_default_quality() -> None:
    """Quality defaults to 90; PNG accepts one too (and ignores it)."""
    jpeg = parse_request({"workflow": WF, "convert_output": {"format": "jpeg"}}).convert_output
    assert jpeg is not None and (jpeg.format, jpeg.quality) == ("jpeg", 90)
    png = parse_request({"workflow": WF, "convert_output": {"format": "png", "quality": 5}})
    assert png.convert_output is not None and png.convert_output.quality == 5
    assert parse_request({"workflow": WF}).convert_output is None


def test_worker_comfyui_shapes_are_accepted() -> None:
    """What worker-comfyui's validate_input takes: input as a JSON string, images null."""
    as_string = parse_request(json.dumps({"workflow": WF, "images": None}))
    assert as_string.workflow == WF and as_string.images == []
    assert parse_request({"workflow": WF, "images": None}).images == []


def test_two_nodes_with_one_id_in_a_json_string_input_are_refused() -> None:
    """Parsed plainly, the second node "2" would replace the first: one output lost."""
    text = (
        '{"workflow": {"1": {"class_type": "EmptyImage", "inputs": {}},'
        ' "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}},'
        ' "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}}'
    )
    with pytest.raises(RequestError) as caught:
        parse_request(text)
    assert caught.value.details == [
        "input holds the key '2' twice in one object (two nodes with one id?): a JSON object "
        "keeps only the last, so the other would be lost in silence; give each its own"
    ]


def test_a_prompt_body_is_unwrapped_and_its_key_used() -> None:
    """ComfyUI's POST /prompt body around the graph: the graph is used, the key kept secret."""
    body = {
        "prompt": WF,
        "client_id": "abc",
        "extra_data": {"api_key_comfy_org": "body-key-123456"},
    }
    req = parse_request({"workflow": body})
    assert req.workflow == WF
    assert req.comfy_org_api_key == "body-key-123456"
    # The request's own key wins over the body's.
    own = parse_request({"workflow": body, "api_key_comfy_org": "own-key-123456"})
    assert own.comfy_org_api_key == "own-key-123456"
    assert request_secrets({"workflow": body}) == ["body-key-123456"]
    assert request_secrets(json.dumps({"workflow": body, "comfy_org_api_key": "k-123456"})) == [
        "k-123456",
        "body-key-123456",
    ]


def test_a_node_named_prompt_is_a_node() -> None:
    """A graph may call a node "prompt": it holds a class_type, and stays a graph."""
    graph = {"prompt": {"class_type": "SaveImage", "inputs": {}}, "client_id": {"class_type": "X"}}
    assert parse_request({"workflow": graph}).workflow == graph
    assert not is_prompt_body(graph)
    assert not is_prompt_body({"prompt": WF, "9": {"class_type": "SaveImage"}})


def test_the_editor_graph_comes_only_from_a_prompt_body() -> None:
    """A /prompt body's extra_data.extra_pnginfo.workflow (the editor's graph) is kept for
    the outputs' metadata; no field of the request can set it."""
    ui = {"nodes": [{"id": 1, "type": "SaveImage"}], "links": []}
    body = {"prompt": WF, "extra_data": {"extra_pnginfo": {"workflow": ui}}}
    assert parse_request({"workflow": body}).editor_graph == ui
    assert parse_request({"workflow": WF, "_editor_graph": ui}).editor_graph is None
    assert parse_request({"workflow": WF, "editor_graph": ui}).editor_graph is None
    not_ui = {"prompt": WF, "extra_data": {"extra_pnginfo": {"workflow": {"1": 2}}}}
    assert parse_request({"workflow": not_ui}).editor_graph is None
