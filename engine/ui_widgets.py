"""One UI node's ``widgets_values``, mapped to its inputs by the engine's node definition.

Helpers for :mod:`engine.ui_workflow`, pure Python. The editor (ComfyUI's frontend)
creates a node's widgets from its definition in a fixed order, and saves their values
in that order; this module rebuilds the order and reads the values back:

* inputs in ``input_order`` (required, then optional; a definition without it uses its
  dict order), each a widget when its type is one the editor draws (``INT``, ``FLOAT``,
  ``STRING``, ``BOOLEAN``, a combo, or a custom widget type) and it is not
  ``forceInput``;
* after an INT with ``control_after_generate`` (or an INT named ``seed`` /
  ``noise_seed`` that does not say ``false``), and after a combo with it, the editor
  adds a "control after generate" widget whose value (``randomize``...) is saved next;
* upload buttons and previews (``image_upload``, ``audio_upload``, 3D previews) come
  after every input widget: their trailing values are ignored;
* a save older than the definition lacks trailing widgets: they get their defaults;
* some packs (VideoHelperSuite) save a dict by widget name instead of a list.

A value whose type does not fit its widget means the node was saved with another
layout; it is reported (node, widget, value), never passed on shifted.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Input types the editor draws as widgets (frontend 1.27 ``ComfyWidgets`` plus the
# custom widgets its core extensions and the bundled packs register). Any other type
# is a socket only.
_SCALAR_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
_CUSTOM_WIDGET_TYPES = frozenset(
    {
        "MARKDOWN", "IMAGEUPLOAD", "FILEUPLOAD", "COLOR", "IMAGECOMPARE", "TREESELECT",
        "MULTISELECT", "CHART", "GALLERIA", "SELECTBUTTON", "TEXTAREA", "WEBCAM",
        "AUDIO_UI", "AUDIOUPLOAD", "AUDIO_RECORD", "LOAD_3D", "LOAD_3D_ANIMATION",
        "PREVIEW_3D", "PREVIEW_3D_ANIMATION", "VHSPATH",
    }
)  # fmt: skip
CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize"})
"""Values of the editor's "control after generate" widget."""

_SEED_NAMES = frozenset({"seed", "noise_seed"})


@dataclass(frozen=True)
class WidgetSpec:
    """One input the editor draws as a widget."""

    name: str
    kind: str
    """``INT``, ``FLOAT``, ``STRING``, ``BOOLEAN``, ``COMBO`` or a custom widget type."""
    options: Mapping[str, Any]
    choices: Sequence[Any] | None = None
    """A combo's allowed values."""
    control: bool = False
    """Followed by a "control after generate" widget."""
    required: bool = True


@dataclass
class NodeWidgets:
    """A node's widget values by input name, and what did not fit."""

    values: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    misfits: set[str] = field(default_factory=set)
    """Widgets whose value did not fit (reported once, in ``problems``)."""


def input_specs(definition: Mapping[str, Any]) -> list[tuple[str, Any, bool]]:
    """Every (name, spec, required) of a definition, in the editor's order."""
    inputs = definition.get("input") or {}
    order = definition.get("input_order") or {}
    listed: list[tuple[str, Any, bool]] = []
    for section in ("required", "optional"):
        specs = inputs.get(section) or {}
        names = order.get(section) or list(specs)
        listed += [(n, specs[n], section == "required") for n in names if n in specs]
    return listed


def widget_specs(definition: Mapping[str, Any]) -> list[WidgetSpec]:
    """The widgets the editor creates for a node of this definition, in order."""
    widgets = []
    for name, spec, required in input_specs(definition):
        kind, options, choices = _describe(spec)
        if options.get("forceInput") or not (kind in _SCALAR_TYPES or kind in _CUSTOM_WIDGET_TYPES):
            continue
        control = bool(options.get("control_after_generate"))
        if kind == "INT" and "control_after_generate" not in options:
            control = name in _SEED_NAMES
        elif kind not in {"INT", "COMBO"}:
            control = False
        widgets.append(WidgetSpec(name, kind, options, choices, control, required))
    return widgets


def socket_type(spec: Any) -> str:
    """The type name of an input spec (``COMBO`` for a list of choices)."""
    return _describe(spec)[0]


def _describe(spec: Any) -> tuple[str, Mapping[str, Any], Sequence[Any] | None]:
    if not isinstance(spec, (list, tuple)) or not spec:
        return (str(spec), {}, None)
    first = spec[0]
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], Mapping) else {}
    if isinstance(first, (list, tuple)):
        return ("COMBO", options, list(first))
    if first == "COMBO":
        return ("COMBO", options, list(options.get("options") or []))
    return (str(first), options, None)


def default_value(widget: WidgetSpec) -> Any:
    """The value the editor gives a new widget (its ``default``, else the first choice)."""
    if "default" in widget.options:
        return widget.options["default"]
    if widget.kind == "COMBO":
        return widget.choices[0] if widget.choices else None
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(widget.kind)


def read_widgets(
    node_id: str, class_type: str, definition: Mapping[str, Any], saved: Any, rng: random.Random
) -> NodeWidgets:
    """Map a node's saved ``widgets_values`` to its inputs; see the module docstring."""
    result = NodeWidgets()
    specs = widget_specs(definition)
    by_name = isinstance(saved, Mapping)
    values: Sequence[Any] = [] if by_name or not isinstance(saved, list) else saved
    cursor = 0
    previous: WidgetSpec | None = None
    for widget in specs:
        if by_name:
            present, value = widget.name in saved, saved.get(widget.name)
        else:
            present = cursor < len(values)
            value = values[cursor] if present else None
            cursor += 1
            if cursor < len(values) and _is_control_value(widget, values[cursor], specs):
                cursor += 1
        if not present:
            value = default_value(widget)
            if value is None:
                continue  # nothing to fill with (an empty file list): validation names it
        problem = _misfit(widget, value, previous if not by_name else None)
        previous = widget
        if problem:
            result.problems.append(
                f"node {node_id} ({class_type}) widget {widget.name!r}: {_show(value)} {problem}"
                " (the node was saved with another layout of its widgets; re-create it in "
                "the editor, or export the API format)"
            )
            result.misfits.add(widget.name)
            continue
        if (
            widget.kind == "STRING"
            and widget.options.get("dynamicPrompts")
            and isinstance(value, str)
        ):
            try:
                value = dynamic_prompt(value, rng)
            except PromptTooDeep as exc:
                result.problems.append(
                    f"node {node_id} ({class_type}) widget {widget.name!r}: {exc}"
                )
                result.misfits.add(widget.name)
                continue
        result.values[widget.name] = {"__value__": value} if isinstance(value, list) else value
    return result


def _is_control_value(widget: WidgetSpec, value: Any, specs: list[WidgetSpec]) -> bool:
    """Whether ``value``, saved after ``widget``, is a "control after generate" value.

    Consumed only when it is one: a save older than the control widget has the next
    widget's value there, which must not be skipped. Saves from before 2024 wrote a
    boolean (the "randomize" toggle). A save from when the input had the control
    (Moonvalley's seed has lost it since) still holds the value: it is skipped when
    the next widget could not take it.
    """
    if widget.kind not in {"INT", "COMBO"}:
        return False
    following = specs[specs.index(widget) + 1] if widget is not specs[-1] else None
    if isinstance(value, bool):
        return (
            widget.control
            and widget.kind == "INT"
            and (following is None or following.kind != "BOOLEAN")
        )
    if not isinstance(value, str) or value not in CONTROL_VALUES:
        return False
    if widget.control:
        return True
    lost_control = "control_after_generate" in widget.options or "seed" in widget.name.lower()
    if widget.kind != "INT" or not lost_control:
        return False
    return following is None or (
        following.kind != "STRING" and value not in (following.choices or ())
    )


def _misfit(widget: WidgetSpec, value: Any, previous: WidgetSpec | None) -> str | None:
    """Why ``value`` cannot be this widget's, or None when it fits.

    ``previous`` is the widget saved just before: a control value ("randomize") in a
    text or combo after a number is that number's control widget, shifted by a layout
    that no longer matches, never a prompt.
    """
    kind = widget.kind
    if (
        kind in {"STRING", "COMBO"}
        and isinstance(value, str)
        and value in CONTROL_VALUES
        and previous is not None
        and previous.kind == "INT"
        and value not in (widget.choices or ())
    ):
        return f"is the control value of {previous.name!r} (control after generate)"
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "INT":
        if not number or (isinstance(value, float) and not value.is_integer()):
            return "is not an integer"
    elif kind == "FLOAT":
        if not number:
            return "is not a number"
        if not math.isfinite(value):  # JSON's Infinity and NaN parse; no widget holds them
            return "is not a finite number"
    elif kind == "BOOLEAN":
        if not isinstance(value, bool):
            return "is not a boolean"
    elif kind == "STRING":
        if not isinstance(value, str):
            return "is not text"
    elif kind == "COMBO":
        if widget.options.get("multiselect") and isinstance(value, list):
            return None
        choices = widget.choices or ()
        if not isinstance(value, (str, int, float)) or (
            # A number or boolean where every choice is text: a shifted value.
            not isinstance(value, str)
            and value not in choices
            and choices
            and all(isinstance(c, str) for c in choices)
        ):
            return "is not one of the choices"
        if isinstance(value, bool) and value not in choices:
            return "is not one of the choices"
    return None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_COMMENTS = re.compile(r"/\*[\s\S]*?\*/|//.*")
_ESCAPED = re.compile(r"\\([{}|])")
# What the editor's scan of a dynamic prompt stops at: an escape pair, a brace, a bar.
_SPECIAL = re.compile(r"\\[\s\S]?|[{}|]")

MAX_PROMPT_NESTING = 64
"""Deepest nesting of ``{a|b}`` blocks in a dynamic prompt. Each level re-reads what it
holds (as the editor does), so a 1 MB text nested thousands deep would take minutes;
no prompt a person writes nests past a handful."""


class PromptTooDeep(ValueError):
    """A dynamic prompt nests its ``{a|b}`` blocks deeper than :data:`MAX_PROMPT_NESTING`."""


def dynamic_prompt(text: str, rng: random.Random) -> str:
    """The editor's dynamic prompt: comments removed, each ``{a|b|c}`` one pick.

    What ComfyUI's frontend does to a ``dynamicPrompts`` text when the prompt is queued
    (``processDynamicPrompt``): ``//`` and ``/* */`` comments go, blocks nest, and an
    escaped brace or bar stays as that character. The frontend recurses into each chosen
    option, reading it again and unescaping its result at every level; this reads the
    text once to find every block's options, then renders the chosen ones with a stack
    of levels, each unescaped as the frontend does (same picks from ``rng``, same text:
    compared on 300,000 random texts of braces, bars, escapes and comments). Raises
    :class:`PromptTooDeep` past :data:`MAX_PROMPT_NESTING` levels.
    """
    source = _COMMENTS.sub("", text)
    end_of_text = len(source)
    # Each block by its "{": its position, every "|" of its own level, its "}" (or the end).
    blocks: dict[int, list[int]] = {}
    open_blocks: list[list[int]] = []
    for match in _SPECIAL.finditer(source):
        char, at = match.group(), match.start()
        if char == "{":
            open_blocks.append([at])
            blocks[at] = open_blocks[-1]
            if len(open_blocks) > MAX_PROMPT_NESTING:
                raise PromptTooDeep(
                    f"the dynamic prompt nests {{a|b}} blocks more than {MAX_PROMPT_NESTING} "
                    "levels deep"
                )
        elif char == "|" and open_blocks:
            open_blocks[-1].append(at)
        elif char == "}" and open_blocks:
            open_blocks.pop().append(at)
    for block in open_blocks:
        block.append(end_of_text)  # unclosed: the editor reads it to the end
    starts = sorted(blocks)
    count = len(starts)
    # The option being rendered: its parts, where it ends; ``outer`` holds the levels it
    # sits in, each with where it resumes after the block. Rendering only moves forward
    # through the text, so the next block is found by one cursor.
    parts: list[str] = []
    end = end_of_text
    outer: list[tuple[list[str], int, int]] = []
    at = cursor = 0
    while True:
        while cursor < count and starts[cursor] < at:
            cursor += 1
        block_at = starts[cursor] if cursor < count else end_of_text
        if block_at >= end:
            parts.append(source[at:end])
            rendered = "".join(parts)
            if "\\" in rendered:
                rendered = _ESCAPED.sub(r"\1", rendered)
            if not outer:
                return rendered
            parts, end, at = outer.pop()
            parts.append(rendered)
            continue
        parts.append(source[at:block_at])
        block = blocks[block_at]
        # choice() over the options' indexes draws from rng as choice() over the options.
        pick = rng.choice(range(len(block) - 1))
        outer.append((parts, end, block[-1] + 1))
        parts, end, at = [], block[pick + 1], block[pick] + 1
