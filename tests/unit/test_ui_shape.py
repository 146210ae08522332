"""Hostile and malformed editor workflows: refused by name, fast, before anything expands.

Each case is a request a stranger can send; each must end as ``workflow_conversion_failed``
naming the part that is wrong (its path in the request), never as a traceback and never
by keeping one of two things that share an id.
"""

from __future__ import annotations

import copy
import json
import math
import random
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from engine.errors import WorkflowConversionError, WorkflowValidationError
from engine.settings import Settings
from engine.ui_shape import MAX_PROBLEMS, check_size, shape_problems, whole_number
from engine.ui_workflow import to_api_format
from engine.worker import Worker
from tests.fake_runtime import FakeRuntime
from tests.ui_graphs import UiGraph, invert_png_mp4_ui, nested_subgraphs
from tests.ui_templates import recorded_definitions, templates_dir
from tests.unit.test_ui_workflow import (
    blur_subgraph,
    link_obj,
    subgraph_definition,
    with_subgraph,
)

DEFS: dict[str, Any] = recorded_definitions()["node_definitions"]
FIXTURES = Path(__file__).parent.parent / "fixtures" / "ui"


def convert(workflow: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    return to_api_format(workflow, DEFS, rng=random.Random(7), **kwargs)  # noqa: S311 - repeatable picks


def refused(workflow: dict[str, Any], **kwargs: Any) -> list[str]:
    with pytest.raises(WorkflowConversionError) as caught:
        convert(workflow, **kwargs)
    assert caught.value.code == "workflow_conversion_failed"
    return caught.value.details


def _set(path: str, value: Any) -> Any:
    def change(workflow: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        target: Any = workflow
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        target[int(last) if last.isdigit() else last] = value

    return change


# The seven shapes the issue found with a traceback, and their kin, at every level.
MALFORMED = [
    ("definitions/", "definitions", [], "definitions: must be an object holding 'subgraphs', not a list"),
    ("links/", "links", 7, "links: must be a list, not the number 7"),
    ("subgraph id a list", "definitions/subgraphs/0/id", ["sub-blur"], "definitions.subgraphs[0].id: must be the subgraph's id as text, not a list"),
    ("infinite link id", "links/0/0", math.inf, "links[0] id: inf is not a whole number"),
    ("infinite mode", "nodes/1/mode", math.inf, "nodes[1] (node 5).mode: inf is not a node mode (0 always, 2 muted, 4 bypassed)"),
    ("NaN input link", "nodes/2/inputs/0/link", math.nan, "nodes[2] (node 6).inputs[0].link: nan is not a link id (a whole number)"),
    ("subgraph link object", "definitions/subgraphs/0/links/1/target_slot", "one", "definitions.subgraphs[0].links[1] target_slot: 'one' is not a whole number"),
    ("inner node mode", "definitions/subgraphs/0/nodes/0/mode", 9, "definitions.subgraphs[0].nodes[0] (node 1).mode: 9 is not a node mode (0 always, 2 muted, 4 bypassed)"),
    ("subgraph inputs", "definitions/subgraphs/0/inputs/1/linkIds", {"12": 1}, "definitions.subgraphs[0].inputs[1].linkIds: {'12': 1} is not a list of link ids"),
    ("node outputs", "nodes/0/outputs", "IMAGE", "nodes[0] (node 1).outputs: must be a list, not text"),
    ("node id a list", "nodes/0/id", [1], "nodes[0].id: must be a whole number or text, not a list"),
    ("a short link", "links/1", [2, 5, 0], "links[1]: [2, 5, 0] is not a link ([id, origin node, origin slot, target node, target slot, type])"),
    ("widgets_values text", "nodes/0/widgets_values", "8,8", "nodes[0] (node 1).widgets_values: must be a list, not text"),
    ("proxyWidgets", "nodes/1/properties", {"proxyWidgets": [["-1"]]}, "nodes[1] (node 5).properties.proxyWidgets: [['-1']] is not a list of [node id, widget name] pairs"),
    ("subgraphs an object", "definitions/subgraphs", {"sub-blur": {}}, "definitions.subgraphs: must be a list, not an object"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "path", "value", "expected"), MALFORMED, ids=[m[0] for m in MALFORMED]
)
def test_a_malformed_part_is_named_by_its_path(
    case: str, path: str, value: Any, expected: str
) -> None:
    workflow = with_subgraph()
    _set(path.rstrip("/"), value)(workflow)
    assert refused(workflow) == [expected]


def test_the_malformed_shapes_through_the_worker_answer_without_a_traceback(
    settings: Settings,
) -> None:
    from tests.unit.test_worker import NoNetwork

    worker = Worker(settings, FakeRuntime(settings), fetcher=NoNetwork())
    worker.boot()
    for case, path, value, expected in MALFORMED:
        workflow = with_subgraph()
        _set(path.rstrip("/"), value)(workflow)
        body = worker.handle({"id": "bad", "input": {"workflow": workflow}})
        assert body["code"] == "workflow_conversion_failed", (case, body)
        assert expected in body["error"], case
        assert "Traceback" not in json.dumps(body)
    g = UiGraph()
    g.node(1, "EmptyImage", [8, 8, 1, 0], outputs=["IMAGE"])
    g.node(2, "SaveImage", ["x"], inputs=[("images", "IMAGE")])
    g.link(1, 0, 2, "images")
    assert len(worker.handle({"id": "fine", "input": {"workflow": g.build()}})["images"]) == 1


def test_two_links_with_one_id_are_refused_not_last_one_wins() -> None:
    """The later link would win and connect the wrong image, with no error."""
    g = UiGraph()
    g.node(1, "EmptyImage", [8, 8, 1, 0], outputs=["IMAGE"])
    g.node(2, "EmptyImage", [8, 8, 1, 255], outputs=["IMAGE"])
    g.node(3, "SaveImage", ["x"], inputs=[("images", "IMAGE")])
    g.link(1, 0, 3, "images")
    workflow = g.build()
    workflow["links"].append([1, 2, 0, 3, 0, "IMAGE"])
    assert refused(workflow) == [
        "links[1] id: link id 1 is also links[0]'s: two links with one id connect the wrong "
        "sockets; save the workflow again from the editor"
    ]


def test_two_links_with_one_id_inside_a_subgraph_are_refused() -> None:
    workflow = with_subgraph()
    workflow["definitions"]["subgraphs"][0]["links"].append(link_obj(13, -10, 0, 2, 0, "IMAGE"))
    (problem,) = refused(workflow)
    assert problem.startswith("definitions.subgraphs[0].links[4] id: link id 13 is also ")


def test_two_nodes_with_one_id_are_refused_not_an_output_dropped() -> None:
    """The second SaveImage would replace the first in silence: one output fewer."""
    g = UiGraph()
    g.node(1, "EmptyImage", [8, 8, 1, 0], outputs=["IMAGE"])
    g.node(2, "SaveImage", ["first"], inputs=[("images", "IMAGE")])
    g.link(1, 0, 2, "images")
    workflow = g.build()
    twin = copy.deepcopy(workflow["nodes"][1])
    twin["widgets_values"] = ["second"]
    workflow["nodes"].append(twin)
    assert refused(workflow) == [
        "nodes[2].id: node id 2 is also nodes[1]'s: two nodes with one id (the editor gives "
        "each node its own); give one of them a new id"
    ]


def test_two_subgraphs_with_one_id_are_refused() -> None:
    workflow = with_subgraph()
    workflow["definitions"]["subgraphs"].append(blur_subgraph())
    assert refused(workflow) == [
        "definitions.subgraphs[1].id: subgraph id 'sub-blur' is also "
        "definitions.subgraphs[0]'s: each subgraph needs its own id"
    ]


def test_a_node_id_that_an_expanded_subgraph_also_makes_is_refused() -> None:
    """Root node "5:1" and node 1 of instance 5 would share the id "5:1" in the API format."""
    workflow = with_subgraph()
    workflow["nodes"].append(
        {"id": "5:1", "type": "SaveImage", "mode": 0, "widgets_values": ["y"],
         "inputs": [{"name": "images", "type": "IMAGE", "link": None}], "outputs": []}
    )  # fmt: skip
    problems = refused(workflow)
    assert problems[0] == (
        "node 5:1: two nodes get this id once subgraphs are expanded (ImageBlur and "
        "SaveImage); give the node saved with that id another one"
    )


def test_problems_are_listed_up_to_a_bound_and_the_rest_said_to_exist() -> None:
    workflow = invert_png_mp4_ui()
    workflow["links"] = [[math.inf, 1, 0, 2, 0, "IMAGE"]] * 10_000
    problems = refused(workflow)
    assert len(problems) == MAX_PROBLEMS + 1
    assert problems[-1] == (
        "... and more problems of the same kinds (the check stops after 50): fix these, "
        "save the workflow again from the editor"
    )


class _Untouchable(dict[str, Any]):
    """A link the walk must never reach: any look at it fails the test."""

    def get(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the walk went on past the problems it names")

    def __getitem__(self, key: str) -> Any:
        raise AssertionError("the walk went on past the problems it names")


def test_the_walk_stops_one_problem_past_the_bound() -> None:
    """A malformed request of any size costs what its first 51 problems cost: 10 MB of
    bad links used to be walked to the end (1.3 s, docs/benchmarks.md)."""
    workflow = invert_png_mp4_ui()
    bad = [[math.inf, 1, 0, 2, 0, "IMAGE"] for _ in range(MAX_PROBLEMS + 1)]
    workflow["links"] = [*bad, _Untouchable(), *bad]
    assert len(shape_problems(workflow)) == MAX_PROBLEMS + 1


def test_a_value_shown_in_a_problem_is_cut_short_not_walked() -> None:
    """A link id nested 5,000 lists deep (repr would recurse past Python's limit) or a
    text of 10 MB (repr would copy it whole) is named by a few levels or characters."""
    deep: Any = 1
    for _ in range(5000):
        deep = [deep]
    workflow = invert_png_mp4_ui()
    workflow["links"][0][0] = deep
    workflow["nodes"][1]["mode"] = "m" * 10_000_000
    problems = shape_problems(workflow)
    assert "links[0] id: [[[[...]]]] is not a whole number" in problems, problems
    assert any(p.endswith("is not a node mode (0 always, 2 muted, 4 bypassed)") for p in problems)
    assert max(len(p) for p in problems) < 200


def test_the_worker_checks_the_shape_before_walking_every_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A malformed editor graph is refused by its shape, and the walk of every value
    (linear in the request's size) never starts for it."""
    import engine.worker

    def walked(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("every value was walked before the shape was checked")

    monkeypatch.setattr(engine.worker, "check_values", walked)
    settings = Settings(work_dir=tmp_path)
    worker = Worker(settings, FakeRuntime(settings))
    workflow = invert_png_mp4_ui()
    workflow["links"] = [[math.inf, 1, 0, 2, 0, "IMAGE"]] * 1000
    with pytest.raises(WorkflowConversionError):
        worker.run("shape", {"workflow": workflow})


def test_whole_numbers() -> None:
    assert [whole_number(v) for v in (3, 3.0, "12", "-10", True, 2.5, math.inf, "x", None)] == [
        3, 3, 12, -10, None, None, None, None, None,
    ]  # fmt: skip


def test_the_official_templates_have_the_shape_the_editor_saves() -> None:
    folder = templates_dir()
    if folder is None:
        pytest.skip("comfyui-workflow-templates is not installed (the dev extra has it)")
    from tests.ui_templates import templates

    checked = 0
    for name, workflow in templates(folder):
        assert shape_problems(workflow) == [], name
        checked += 1
    assert checked >= 150


# -- size: counted before anything expands ------------------------------------------------------


def test_two_million_nodes_in_3_kb_are_refused_before_expanding_with_little_memory() -> None:
    """7 levels of 8 instances: the old converter took 49 s and 2.2 GB to expand it."""
    workflow = nested_subgraphs(levels=7, per_level=8)
    assert len(json.dumps(workflow)) < 4096
    tracemalloc.start()
    try:
        problems = refused(workflow)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert problems == [
        "node 1: subgraph 'level-6' expands to 262,144 nodes per instance, and the workflow "
        "expands to 2,097,152 nodes, over the limit of 10,000 (WORKFLOW_MAX_NODES): subgraphs "
        "nested in subgraphs multiply; send fewer instances, or raise the limit on the endpoint"
    ]
    assert peak < 256 * 1024, f"{peak:,} bytes at peak"


def test_the_limit_is_exact_and_a_setting() -> None:
    workflow = nested_subgraphs(levels=4, per_level=8)  # 4,096 nodes
    assert len(convert(workflow, max_nodes=4096)) == 4096
    (problem,) = refused(workflow, max_nodes=4095)
    assert "expands to 4,096 nodes, over the limit of 4,095 (WORKFLOW_MAX_NODES)" in problem
    assert Settings.from_env({"WORKFLOW_MAX_NODES": "50"}).workflow_max_nodes == 50
    assert Settings.from_env({}).workflow_max_nodes == 10_000


def test_a_subgraph_nested_in_itself_is_counted_once_and_named() -> None:
    inner = blur_subgraph()
    inner["nodes"].append({"id": 9, "type": "sub-blur", "mode": 0, "inputs": [], "outputs": []})
    g = UiGraph()
    g.subgraphs.append(inner)
    g.node(5, "sub-blur", [4], inputs=[("image", "IMAGE")], outputs=["IMAGE"])
    assert "node 5:9: subgraph sub-blur contains itself" in refused(g.build())


def test_subgraphs_nested_thousands_deep_do_not_overflow_the_counter() -> None:
    """A chain of 5,000 definitions, each holding the next: counted without recursion."""
    subgraphs = [subgraph_definition(f"s{n}", [{"id": 1, "type": f"s{n + 1}", "mode": 0}], [], [], [])
                 for n in range(5000)]  # fmt: skip
    leaves = [{"id": i, "type": "EmptyImage", "mode": 0} for i in range(1, 3)]
    subgraphs.append(subgraph_definition("s5000", leaves, [], [], []))
    workflow = {"nodes": [{"id": 1, "type": "s0", "mode": 0}], "links": [],
                "definitions": {"subgraphs": subgraphs}}  # fmt: skip
    check_size(workflow, max_nodes=2)
    with pytest.raises(WorkflowConversionError) as caught:
        check_size(workflow, max_nodes=1)
    assert "expands to 2 nodes per instance" in caught.value.summary()


def test_an_api_format_workflow_is_bounded_too() -> None:
    api = {str(i): {"class_type": "EmptyImage", "inputs": {}} for i in range(1, 12)}
    check_size(api, max_nodes=11)
    with pytest.raises(WorkflowValidationError) as caught:
        check_size(api, max_nodes=10)
    assert "the workflow has 11 nodes, over the limit of 10 (WORKFLOW_MAX_NODES)" in (
        caught.value.summary()
    )


def test_the_worker_refuses_the_hostile_request_before_downloading_inputs(
    settings: Settings,
) -> None:
    from tests.unit.test_worker import NoNetwork

    worker = Worker(settings, FakeRuntime(settings), fetcher=NoNetwork())
    worker.boot()
    body = worker.handle(
        {
            "id": "big",
            "input": {
                "workflow": nested_subgraphs(),
                # NoNetwork fails the test if this is fetched: the size check comes first.
                "images": [{"name": "a.png", "image": "https://h.example/a.png"}],
            },
        }
    )
    assert body["code"] == "workflow_conversion_failed"
    assert "2,097,152 nodes" in body["error"] and "'level-6'" in body["error"]


# -- promoted values: in the order the editor saved them -------------------------------------------


def test_proxy_widgets_values_land_on_the_inputs_they_were_saved_for() -> None:
    """Frontend 1.34-1.44 layout: values in proxyWidgets order, a direct proxy as null."""
    workflow = json.loads((FIXTURES / "subgraph_proxy_widgets.json").read_text(encoding="utf-8"))
    api = convert(workflow)
    assert api["10:1"]["inputs"]["unet_name"] == "flux1-dev.safetensors"
    assert api["10:2"]["inputs"]["clip_name1"] == "t5xxl_fp16.safetensors"
    assert api["10:3"]["inputs"]["strength_model"] == 0.8
    assert api["10:4"]["inputs"]["text"] == "a lighthouse at dusk"
    assert api["10:5"]["inputs"]["seed"] == 42  # the direct proxy: the inner node's own value
    assert api["11"]["inputs"]["images"] == ["10:9", 0]


def test_a_save_that_left_direct_proxies_out_of_its_values_is_read_too() -> None:
    workflow = json.loads((FIXTURES / "subgraph_proxy_widgets.json").read_text(encoding="utf-8"))
    instance = workflow["nodes"][0]
    instance["widgets_values"] = [v for v in instance["widgets_values"] if v is not None]
    api = convert(workflow)
    assert api["10:1"]["inputs"]["unet_name"] == "flux1-dev.safetensors"
    assert api["10:4"]["inputs"]["text"] == "a lighthouse at dusk"


def test_an_empty_proxy_widgets_list_keeps_the_older_input_order() -> None:
    """Real saves (comfyui-workflow-templates 0.1.95) hold ``"proxyWidgets": []`` beside
    values in the definition's input order."""
    folder = templates_dir()
    if folder is None:
        pytest.skip("comfyui-workflow-templates is not installed (the dev extra has it)")
    path = folder / "image_qwen_image_instantx_controlnet.json"
    workflow = json.loads(path.read_text(encoding="utf-8"))
    (instance,) = [n for n in workflow["nodes"] if n["id"] == 106]
    assert instance["properties"]["proxyWidgets"] == []
    api = convert(workflow)
    values = {
        name: value
        for node_id, node in api.items()
        if node_id.startswith("106:")
        for name, value in node["inputs"].items()
        if name in {"vae_name", "unet_name", "sigma", "sampler_name"}
    }
    assert values == {
        "vae_name": "vae-ft-mse-840000-ema-pruned.safetensors",
        "unet_name": "lotus-depth-d-v1-1.safetensors",
        "sigma": 10000,
        "sampler_name": "euler",
    }


# -- what a conversion costs: bounded by the request, never by its product ---------------------


def test_readers_of_a_long_reroute_chain_walk_it_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """300 readers of 200 reroutes: each reader used to walk the whole chain again."""
    from engine import ui_workflow

    g = UiGraph()
    g.node(1, "EmptyImage", [8, 8, 1, 0], outputs=["IMAGE"])
    for n in range(2, 202):
        g.node(n, "Reroute", inputs=[("", "*")], outputs=["IMAGE"])
        g.link(n - 1, 0, n, "")
    for n in range(202, 502):
        g.node(n, "ImageInvert", inputs=[("image", "IMAGE")], outputs=["IMAGE"])
        g.link(201, 0, n, "image")
    calls = 0
    original = ui_workflow._Converter._resolve_input

    def counted(self: Any, *args: Any) -> Any:
        nonlocal calls
        calls += 1
        return original(self, *args)

    monkeypatch.setattr(ui_workflow._Converter, "_resolve_input", counted)
    api = convert(g.build())
    assert all(api[str(n)]["inputs"]["image"] == ["1", 0] for n in range(202, 502))
    assert calls < 2 * 502, calls  # 60,300 before


def _frontend_dynamic_prompt(text: str, rng: random.Random) -> str:
    """The oracle: ComfyUI frontend's ``processDynamicPrompt`` as it reads, recursing into
    each chosen option (what the converter ran before, and took minutes on deep texts)."""
    import re

    source = re.sub(r"/\*[\s\S]*?\*/|//.*", "", text)
    i, result = 0, ""

    def block() -> str:
        nonlocal i
        options, choice, depth = [], "", 0
        while i < len(source):
            char = source[i]
            i += 1
            if char == "\\":
                choice += "\\" + source[i : i + 1]
                i += 1
                continue
            if char == "{":
                depth += 1
            elif char == "}":
                if not depth:
                    break
                depth -= 1
            elif char == "|" and not depth:
                options.append(choice)
                choice = ""
                continue
            choice += char
        options.append(choice)
        return _frontend_dynamic_prompt(rng.choice(options), rng)

    while i < len(source):
        char = source[i]
        i += 1
        if char == "\\":
            result += "\\" + source[i : i + 1]
            i += 1
        elif char == "{":
            result += block()
        else:
            result += char
    return re.sub(r"\\([{}|])", r"\1", result)


def test_dynamic_prompts_read_once_give_what_the_frontend_gives() -> None:
    from engine.ui_widgets import dynamic_prompt

    alphabet = "{}|\\/*ab \n"
    for seed in range(20_000):
        pick = random.Random(seed)  # noqa: S311 - test data
        text = "".join(pick.choice(alphabet) for _ in range(pick.randint(0, 16)))
        assert dynamic_prompt(text, random.Random(seed)) == _frontend_dynamic_prompt(  # noqa: S311
            text,
            random.Random(seed),  # noqa: S311
        ), repr(text)


def test_a_dynamic_prompt_nested_too_deep_is_named() -> None:
    g = UiGraph()
    g.node(1, "CLIPTextEncode", ["{a|" * 65 + "x" + "}" * 65], inputs=[("clip", "CLIP")])
    assert refused(g.build()) == [
        "node 1 (CLIPTextEncode) widget 'text': the dynamic prompt nests {a|b} blocks more "
        "than 64 levels deep"
    ]
    g = UiGraph()
    g.node(1, "CLIPTextEncode", ["{" * 64 + "deep" + "}" * 64], inputs=[("clip", "CLIP")])
    assert convert(g.build())["1"]["inputs"]["text"] == "deep"


def test_values_past_the_bound_are_counted_not_listed() -> None:
    from engine.graph_checks import check_values

    workflow = {str(n): {"class_type": "X", "inputs": {"t": "a long text"}} for n in range(200)}
    with pytest.raises(WorkflowValidationError) as caught:
        check_values(workflow, 10)
    assert len(caught.value.details) == 51
    assert caught.value.details[-1] == "... and 150 more values like these"


def test_a_subgraphs_inputs_are_read_once_not_once_per_instance(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """50 instances of a subgraph of 40 inputs: 40 reads, not 2,000."""
    from engine import ui_workflow

    inputs = 40
    definition = subgraph_definition(
        "wide",
        [{"id": 1, "type": "EmptyImage", "mode": 0, "widgets_values": [8, 8, 1, 0],
          "inputs": [{"name": "width", "type": "INT", "link": 1, "widget": {"name": "width"}}],
          "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": []}]}],
        [link_obj(n, -10, n - 1, 1, 0, "INT") for n in range(1, inputs + 1)],
        [{"name": f"in{n}", "type": "INT", "linkIds": [n]} for n in range(1, inputs + 1)],
        [],
    )  # fmt: skip
    workflow = {
        "nodes": [{"id": n, "type": "wide", "mode": 0, "widgets_values": [16 + n]} for n in range(1, 51)],
        "links": [],
        "definitions": {"subgraphs": [definition]},
    }  # fmt: skip
    calls = 0
    original = ui_workflow._Converter._is_widget_input

    def counted(self: Any, *args: Any) -> bool:
        nonlocal calls
        calls += 1
        return bool(original(self, *args))

    monkeypatch.setattr(ui_workflow._Converter, "_is_widget_input", counted)
    api = convert(workflow)
    assert api["7:1"]["inputs"]["width"] == 23  # in1, the first input, takes the value
    assert calls <= inputs, calls


def test_a_widget_value_that_is_not_finite_is_named() -> None:
    g = UiGraph()
    g.node(1, "EmptyImage", [8, 8, 1, 0], outputs=["IMAGE"])
    g.node(2, "ImageBlur", [3, math.nan], inputs=[("image", "IMAGE")], outputs=["IMAGE"])
    g.node(3, "EmptyImage", [math.inf, 8, 1, 0], outputs=["IMAGE"])
    g.link(1, 0, 2, "image")
    problems = refused(g.build())
    assert problems[0].startswith("node 2 (ImageBlur) widget 'sigma': nan is not a finite number")
    assert problems[1].startswith("node 3 (EmptyImage) widget 'width': inf is not an integer")


def test_any_value_anywhere_in_a_save_converts_or_is_named() -> None:
    """Random values of every kind put anywhere in a real-shaped save (the proxyWidgets
    fixture and a graph with a subgraph): the conversion succeeds or raises the contract's
    error, never anything else (a seeded sweep of 600 saves)."""
    weird: list[Any] = [math.inf, math.nan, [], {}, "x", None, True, 10**30, -1, [1], {"a": 1}, "-10", 1.5]  # fmt: skip
    fixture = json.loads((FIXTURES / "subgraph_proxy_widgets.json").read_text(encoding="utf-8"))
    bases = [with_subgraph(), fixture]

    def paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        found = [path]
        children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()  # fmt: skip
        for key, child in children:
            found += paths(child, (*path, key))
        return found

    pick = random.Random(2026)  # noqa: S311 - test data
    outcomes = {"converted": 0, "refused": 0}
    for _ in range(600):
        workflow = copy.deepcopy(pick.choice(bases))
        for _ in range(pick.randint(1, 3)):
            *parents, last = pick.choice(paths(workflow)[1:])
            target: Any = workflow
            for key in parents:
                target = target[key]
            target[last] = pick.choice(weird)
        try:
            convert(workflow)
            outcomes["converted"] += 1
        except WorkflowConversionError as exc:
            assert exc.details and all(isinstance(d, str) for d in exc.details)
            outcomes["refused"] += 1
    assert outcomes["converted"] > 0 and outcomes["refused"] > 0, outcomes
