"""Every environment variable the worker reads is in the deployment guide's table."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Level names in settings.py are values, not variables.
_NOT_VARIABLES = {"DEBUG", "INFO", "WARNING", "WARN", "ERROR", "CRITICAL", "NOTSET", "TRACE"}


def test_every_variable_settings_reads_is_documented() -> None:
    """engine/settings.py is the only reader of the environment (STYLE.md rule 7)."""
    source = (REPO / "engine" / "settings.py").read_text()
    read = set(re.findall(r'"([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)"', source)) - _NOT_VARIABLES
    assert {"COMFY_LOG_LEVEL", "RUNPOD_LOG_LEVEL", "BUCKET_ENDPOINT_URL"} <= read
    table = (REPO / "docs" / "deployment.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)`", table, flags=re.MULTILINE))
    assert sorted(read - documented) == []
