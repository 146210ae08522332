"""docs/zh-CN says what the English docs say: every environment variable and every request
or response field that README.md and docs/reference.md name is named in docs/zh-CN too.

A variable added to the English docs without its Chinese line fails here, naming the
variable and the English page it came from."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ENGLISH = ("README.md", "docs/reference.md")

# Upper-case words the English pages name that are RunPod's job statuses, not variables.
_NOT_VARIABLES = {"IN_QUEUE", "IN_PROGRESS", "TIMED_OUT"}


def chinese() -> str:
    return "\n".join(p.read_text() for p in sorted((REPO / "docs" / "zh-CN").glob("*.md")))


def named(pattern: str, normalise: bool = False) -> dict[str, str]:
    """What ``pattern`` finds in backticks on each English page: name -> first page."""
    found: dict[str, str] = {}
    for page in ENGLISH:
        for name in re.findall(pattern, (REPO / page).read_text()):
            if normalise:
                name = re.sub(r"\[\d+\]", "[]", name)  # input.images[2].name -> [].name
            found.setdefault(name, page)
    return found


def test_every_variable_of_the_english_docs_is_in_the_chinese_ones() -> None:
    variables = named(r"`([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)(?:=[^`]*)?`")
    assert {"COMFY_ORG_API_KEY", "JOB_STOP_GRACE_S", "HF_TOKEN"} <= set(variables)
    text = chinese()
    missing = [
        f"{name} (named in {page}) is missing from docs/zh-CN: add it, in Chinese, "
        "where the English page describes it (the zh-CN README's table of variables)"
        for name, page in sorted(variables.items())
        if name not in _NOT_VARIABLES and name not in text
    ]
    assert missing == [], "\n".join(missing)


def test_every_request_and_response_field_is_in_the_chinese_docs() -> None:
    fields = named(r"`((?:input|output)\.[A-Za-z_][A-Za-z0-9_.\[\]]*)", normalise=True)
    assert {"input.workflow", "input.convert_output", "output.images[]"} <= set(fields)
    text = chinese()
    missing = [
        f"{name} (named in {page}) is missing from docs/zh-CN: add it to the zh-CN "
        "README's request or response table"
        for name, page in sorted(fields.items())
        if name not in text
    ]
    assert missing == [], "\n".join(missing)


def test_the_websocket_defaults_agree() -> None:
    """The English docs give the WebSocket variables no default ("none"): they do
    nothing here. The Chinese table once said 5 and 3, worker-comfyui's defaults."""
    text = chinese()
    row = next(line for line in text.splitlines() if "WEBSOCKET_RECONNECT_ATTEMPTS" in line)
    assert row.rstrip().endswith("| 无 |"), row
