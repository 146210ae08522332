"""``engine.runtime.shapes`` against shapes recorded from real ComfyUI.

The fixtures in ``tests/fixtures/comfyui/`` come from
``scripts/record_comfy_shapes.py`` run against the pinned ComfyUI; these tests
need no ComfyUI. Each detail line must name the node id, its class_type and the
input, and list the allowed values when they are few.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from engine.errors import JobInterruptedError, NodeExecutionError, WorkflowValidationError
from engine.runtime.shapes import execution_failure, sort_node_ids, validation_error

FIXTURES = Path(__file__).parents[1] / "fixtures" / "comfyui"
PIN = Path(__file__).parents[2] / "comfyui" / "pin.env"


def recorded(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


def refused(name: str, **kwargs: Any) -> WorkflowValidationError:
    data = recorded(name)
    return validation_error(data["error"], data["node_errors"], **kwargs)


def messages(name: str) -> list[tuple[str, dict[str, Any]]]:
    return [(event, data) for event, data in recorded(name)["status_messages"]]


# -- the fixtures themselves ---------------------------------------------------------------


def test_every_fixture_says_where_it_came_from() -> None:
    """Version and commit of the pinned ComfyUI, and the workflow that produced it."""
    pin = dict(
        line.split("=", 1)
        for line in PIN.read_text().splitlines()
        if "=" in line and line[0] != "#"
    )
    names = sorted(FIXTURES.glob("*.json"))
    assert len(names) >= 18
    for path in names:
        data = json.loads(path.read_text())
        assert data["comfyui_version"] == pin["COMFYUI_VERSION"], path.name
        assert data["comfyui_commit"] == pin["COMFYUI_COMMIT"], path.name
        assert isinstance(data["recorded_with"], dict) and data["recorded_with"], path.name


def test_fixtures_hold_no_absolute_paths_of_the_recording_machine() -> None:
    """Tracebacks and VHS's fullpath were rewritten to placeholders: no string in a
    fixture is an absolute path, whatever its root, nor does a traceback line name one."""
    absolute = re.compile(r'"/[^"/\s]+/|File \\"/')
    for path in FIXTURES.glob("*.json"):
        found = absolute.search(path.read_text())
        assert found is None, (path.name, found and found.group())
    error = messages("status_execution_error")[-1][1]
    assert all(line.startswith('  File "<') for line in error["traceback"])


# -- validation ------------------------------------------------------------------------------


def test_unknown_type_as_comfyui_reports_it_alone() -> None:
    """ComfyUI names only the first unknown node; its message is passed on as is."""
    error = refused("validation_unknown_type")
    assert error.details == [
        "Cannot execute because node NotARealNode does not exist.: Node ID '#1'"
    ]


def test_unknown_types_found_by_the_runtime_are_all_named() -> None:
    """With the runtime's own scan, every unknown type and its node ids are listed."""
    error = refused(
        "validation_unknown_type", unknown_types={"NotARealNode": ["1"], "AlsoNotReal": ["2", "7"]}
    )
    assert error.details == [
        "Node type 'AlsoNotReal' is not installed (used by nodes 2, 7): install the custom "
        "node pack that provides it (scripts/add_custom_nodes.py <repository URL>@<commit>; "
        "scripts/workflow_needs.py names the packs a workflow needs), or fix class_type",
        "Node type 'NotARealNode' is not installed (used by node 1): install the custom "
        "node pack that provides it (scripts/add_custom_nodes.py <repository URL>@<commit>; "
        "scripts/workflow_needs.py names the packs a workflow needs), or fix class_type",
    ]


def test_no_output_node() -> None:
    assert refused("validation_no_outputs").details == [
        "The workflow has no output node: add one that saves its result, e.g. SaveImage or SaveVideo"
    ]


def test_value_not_in_list_for_a_missing_model_and_a_long_enum() -> None:
    """A missing checkpoint says where the worker looked; a 42-entry enum is not listed."""
    looked_in = {
        ("4", "ckpt_name"): [
            "/comfyui/models/checkpoints",
            "/runpod-volume/models/checkpoints (missing)",
        ]
    }
    error = refused("validation_value_not_in_list", looked_in=looked_in)
    assert error.details == [
        "Node 3 (KSampler) input 'sampler_name': 'no_such_sampler' is not one of the allowed values",
        "Node 4 (CheckpointLoaderSimple) input 'ckpt_name': 'SDXL\\\\missing-model.safetensors' "
        "is not one of the allowed values (file not found; looked in: /comfyui/models/checkpoints, "
        "/runpod-volume/models/checkpoints (missing)); no files are available for this input",
    ]
    assert set(error.extra["node_errors"]) == {"3", "4"}


def test_several_bad_values_in_one_answer() -> None:
    """Out-of-range numbers and short enums: one line each, allowed values listed.

    Within a node the lines are sorted by input: ComfyUI's own order changes from one
    process to the next (it walks a set).
    """
    assert refused("validation_bad_value").details == [
        "Node 1 (EmptyImage) input 'height': Value 99999 bigger than max of 16384",
        "Node 1 (EmptyImage) input 'width': Value -5 smaller than min of 1",
        "Node 2 (ImageScale) input 'crop': 'none' is not one of the allowed values; "
        "allowed: disabled, center",
        "Node 2 (ImageScale) input 'upscale_method': 'nearest' is not one of the allowed values; "
        "allowed: nearest-exact, bilinear, area, bicubic, lanczos",
    ]


def test_lines_do_not_depend_on_comfyuis_order() -> None:
    """The same errors in another order give the same lines."""
    data = recorded("validation_bad_value")
    flipped = {
        node_id: {**entry, "errors": list(reversed(entry["errors"]))}
        for node_id, entry in reversed(list(data["node_errors"].items()))
    }
    assert (
        validation_error(data["error"], flipped).details == refused("validation_bad_value").details
    )


def test_invalid_input_type() -> None:
    assert refused("validation_invalid_input_type").details == [
        "Node 1 (EmptyImage) input 'width': 'wide' is not a valid INT "
        "(invalid literal for int() with base 10: 'wide')"
    ]


def test_required_input_missing_even_when_another_output_is_valid() -> None:
    """ComfyUI answers ok=True here (output 3 is fine); the node error is still reported."""
    data = recorded("validation_required_input_missing")
    assert data["ok"] is True and data["error"] is None
    assert refused("validation_required_input_missing").details == [
        "Node 2 (SaveImage) input 'images': Required input is missing"
    ]


def test_return_type_mismatch() -> None:
    assert refused("validation_return_type_mismatch").details == [
        "Node 2 (SaveImage) input 'images': it takes IMAGE but is linked to an output of "
        "node 1 of type LATENT"
    ]


def test_custom_validation_failed() -> None:
    """LoadImage's own check of its file: the file name comes through."""
    assert refused("validation_custom_validation_failed").details == [
        "Node 1 (LoadImage) input 'image': Custom validation failed for node: "
        "Invalid image file: never-uploaded.png"
    ]


def test_an_exception_inside_validation_is_blamed_on_the_node_that_raised() -> None:
    """ComfyUI files node 2's KeyError under node 2 with node 3's input name ('images'):
    the line names node 2 and the exception type, and no input of another node."""
    (detail,) = refused("validation_inner_exception").details
    assert detail.startswith("Node 2 (ImageInvert): validating it raised KeyError: '99'")
    assert "images" not in detail


def test_a_cycle_comfyui_reports_as_nothing_is_named_by_the_graph_checks() -> None:
    """ComfyUI answers a cycle with no node errors at all; the runtime's graph checks
    add the line that names the cycle's nodes, with the rest of the problems."""
    data = recorded("validation_cycle")
    assert data["node_errors"] == {}
    cycle = "Nodes 1 (ImageInvert), 2 (ImageInvert) form a cycle: remove one of the links"
    error = validation_error(
        None,
        recorded("validation_value_not_in_list")["node_errors"],
        unknown_types={"NotARealNode": ["7"]},
        graph_problems=[cycle],
        describe_unknown=lambda class_type, ids: f"{class_type} of {ids}: not here",
    )
    assert error.details[:2] == ["NotARealNode of ['7']: not here", cycle]
    assert len(error.details) == 4  # and both bad values


def test_node_ids_sort_as_people_read_them() -> None:
    assert sort_node_ids(["10", "b", "2", "a", "1"]) == ["1", "2", "10", "a", "b"]


# -- execution ---------------------------------------------------------------------------


def test_execution_error_names_node_class_and_exception() -> None:
    """The message, without ComfyUI's trailing newline; the traceback stays out."""
    failure = execution_failure(messages("status_execution_error"))
    assert isinstance(failure, NodeExecutionError)
    assert failure.node_id == "1"
    assert failure.extra["class_type"] == "LoadImage"
    assert failure.extra["exception_type"] == "PIL.UnidentifiedImageError"
    assert (
        failure.extra["exception_message"]
        == "cannot identify image file '<WORK_DIR>/input/corrupt.png'"
    )
    assert failure.message == (
        "Node 1 (LoadImage) failed: PIL.UnidentifiedImageError: "
        "cannot identify image file '<WORK_DIR>/input/corrupt.png'"
    )
    assert "Traceback" not in failure.summary() and "execution.py" not in failure.summary()


def test_execution_interrupted_names_the_node() -> None:
    failure = execution_failure(messages("status_execution_interrupted"))
    assert isinstance(failure, JobInterruptedError)
    node = messages("status_execution_interrupted")[-1][1]
    assert (
        failure.message == f"The workflow was interrupted at node {node['node_id']} (ImageScaleBy)"
    )


def test_execution_success_is_no_failure() -> None:
    assert [e for e, _ in messages("status_execution_success")][-1] == "execution_success"
    assert execution_failure(messages("status_execution_success")) is None


# -- ui outputs: the shapes the worker's output collection reads -------------------------------------


@pytest.mark.parametrize(
    ("name", "animated"),
    [
        ("ui_save_image", False),
        ("ui_preview_image", False),
        ("ui_save_animated_webp", True),
        ("ui_save_animated_png", True),
        ("ui_save_video", True),
        ("ui_save_webm", True),
    ],
)
def test_core_ui_outputs_list_files_under_images(name: str, animated: bool) -> None:
    (output,) = recorded(name)["outputs"].values()
    assert output["images"]
    for item in output["images"]:
        assert set(item) == {"filename", "subfolder", "type"}
        assert item["type"] in {"output", "temp"}
    assert ("animated" in output) is animated
    if animated:
        assert output["animated"] == [True]


def test_vhs_video_combine_reports_its_mp4_under_gifs() -> None:
    (output,) = recorded("ui_vhs_video_combine")["outputs"].values()
    (item,) = output["gifs"]
    assert item["filename"].endswith(".mp4")
    assert item["format"] == "video/h264-mp4"
    assert item["fullpath"] == f"<WORK_DIR>/output/{item['subfolder']}/{item['filename']}"
    assert item["workflow"].endswith(".png")  # VHS's metadata PNG, not an output
