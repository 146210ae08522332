"""engine.deadline: one clock for the whole job, and the timeout error it names."""

from __future__ import annotations

import pytest

from engine.deadline import Deadline
from engine.errors import JobTimeoutError


def test_no_limit_never_expires() -> None:
    """JOB_TIMEOUT_S=0 (None): nothing is ever late."""
    deadline = Deadline.start(None)
    assert deadline.remaining() is None and not deadline.expired()
    deadline.check("anything")
    assert Deadline.start(0).limit_s is None


def test_remaining_counts_down_and_never_goes_negative() -> None:
    """A deadline that started long ago has 0 s left, not a negative number."""
    deadline = Deadline(limit_s=5.0, started=0.0)  # monotonic 0: long past
    assert deadline.remaining() == 0.0 and deadline.expired()
    fresh = Deadline.start(60)
    remaining = fresh.remaining()
    assert remaining is not None and 0 < remaining <= 60


def test_check_names_the_phase_and_the_variable() -> None:
    """A phase that cannot start in time fails with the limit, the phase and the fix."""
    with pytest.raises(JobTimeoutError) as caught:
        Deadline(limit_s=2.0, started=0.0).check("delivering outputs")
    error = caught.value
    assert error.message == (
        "The job ran longer than its time limit of 2 s and was stopped before delivering outputs"
    )
    assert "JOB_TIMEOUT_S=2" in error.details[0] and "whole job" in error.details[0]
    assert isinstance(error, TimeoutError) and error.code == "job_timeout"


def test_exceeded_carries_the_node() -> None:
    """A timeout inside the run names the node that was running."""
    error = Deadline(limit_s=1.5, started=0.0).exceeded("at node 7 (VAEDecode)", node_id="7")
    assert error.node_id == "7" and error.to_response()["node_id"] == "7"
    assert error.message.endswith("at node 7 (VAEDecode)")
