"""Error shapes (what RunPod shows) and secret redaction in logs."""

from __future__ import annotations

import logging

import pytest

from engine import logs
from engine.errors import (
    InputImageError,
    ItemError,
    JobTimeoutError,
    NodeExecutionError,
    WorkflowValidationError,
)


def test_error_string_carries_the_details() -> None:
    """RunPod keeps only `error`: the details must be readable there."""
    err = InputImageError(
        [ItemError("a.jpg", "Failed to download image from URL: https://x/a.jpg (HTTP 404)")]
    )
    body = err.to_response()
    assert body["error"].startswith("Failed to upload one or more input images: ")
    assert "a.jpg: Failed to download image from URL: https://x/a.jpg (HTTP 404)" in body["error"]
    assert body["message"] == "Failed to upload one or more input images"
    assert body["details"] == [
        "a.jpg: Failed to download image from URL: https://x/a.jpg (HTTP 404)"
    ]
    assert body["code"] == "input_images_failed"


def test_validation_error_keeps_raw_node_errors_apart() -> None:
    raw = {"3": {"class_type": "KSampler", "errors": [], "dependent_outputs": ["9"]}}
    body = WorkflowValidationError(["Node 3 (KSampler) input 'steps': bad"], raw).to_response()
    assert body["error"] == "Workflow validation failed: Node 3 (KSampler) input 'steps': bad"
    assert body["node_errors"] == raw


def test_execution_error_names_node_class_and_exception() -> None:
    body = NodeExecutionError("7", "VAEDecode", "RuntimeError", "shape mismatch").to_response()
    assert body["error"].startswith("Node 7 (VAEDecode) failed: RuntimeError: shape mismatch")
    assert (body["node_id"], body["class_type"]) == ("7", "VAEDecode")


def test_long_error_strings_are_bounded() -> None:
    err = WorkflowValidationError([f"Node {i} (X): bad value" for i in range(2000)])
    assert len(err.summary()) <= 4000
    assert err.summary().endswith("(truncated)")


def test_timeout_is_also_a_builtin_timeout() -> None:
    assert isinstance(JobTimeoutError("late"), TimeoutError)


def test_logs_redact_registered_and_job_secrets(caplog: pytest.LogCaptureFixture) -> None:
    logs.add_secrets(["process-secret-1"])
    logger = logging.getLogger("test.redact")
    filt = logs._JobFilter()
    caplog.handler.addFilter(filt)
    try:
        with caplog.at_level(logging.INFO), logs.job_context("job-42", ["request-key-abcdef"]):
            logger.info("keys %s and %s", "process-secret-1", "request-key-abcdef")
    finally:
        caplog.handler.removeFilter(filt)
    record = caplog.records[-1]
    assert record.getMessage() == "keys *** and ***"
    assert record.job_id == "job-42"  # type: ignore[attr-defined]


def test_redact_obj_walks_nested_values() -> None:
    value = {"a": ["x secret-value-9 y", {"b": "secret-value-9"}], "n": 3}
    assert logs.redact_obj(value, ["secret-value-9"]) == {"a": ["x *** y", {"b": "***"}], "n": 3}
    # Nothing long enough to be a secret: nothing to walk, the value as it was.
    assert logs.redact_obj(value, ["", "abc"]) is value


def test_a_detail_equal_to_the_message_is_not_repeated() -> None:
    err = NodeExecutionError("5", "TestRaise", "RuntimeError", "kaboom")
    assert err.summary() == "Node 5 (TestRaise) failed: RuntimeError: kaboom"
    assert err.details == [err.message]
