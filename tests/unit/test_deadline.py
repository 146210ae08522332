"""engine.deadline: one clock for the whole job, its cancel switch, and the errors they name."""

from __future__ import annotations

import threading
from concurrent.futures import Future

import pytest

from engine.deadline import Deadline, JobDeadlines, JobTurns
from engine.errors import JobInterruptedError, JobTimeoutError


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


# -- cancel ---------------------------------------------------------------------------


def test_a_cancel_fails_every_later_check_as_cancelled_not_as_a_timeout() -> None:
    """The job's own cancelled state: seen by each check that follows, in any phase."""
    deadline = Deadline.start(3600)
    deadline.check("downloading inputs")
    assert deadline.cancel() is True and deadline.cancel() is False  # flips once
    assert deadline.cancelled and deadline.expired()
    with pytest.raises(JobInterruptedError) as caught:
        deadline.check("running the workflow")
    error = caught.value
    assert not isinstance(error, JobTimeoutError) and error.code == "execution_interrupted"
    assert error.message == "The job was cancelled and stopped before running the workflow"
    assert "cancelled" in error.details[0] and "JOB_TIMEOUT_S" not in error.summary()
    assert deadline.exceeded("at node 3 (KSampler)", node_id="3").node_id == "3"


def test_a_cancel_without_a_time_limit_still_stops_the_job() -> None:
    deadline = Deadline.start(None)
    deadline.cancel()
    assert deadline.remaining() is None and deadline.expired()


def test_cancel_listeners_hear_it_once_and_only_inside_their_block() -> None:
    deadline = Deadline.start(None)
    heard: list[str] = []
    with deadline.on_cancel(lambda: heard.append("outside")):
        pass
    with deadline.on_cancel(lambda: heard.append("inside")):
        deadline.cancel()
        deadline.cancel()
    assert heard == ["inside"]
    with deadline.on_cancel(lambda: heard.append("late")):  # already cancelled: at once
        assert heard == ["inside", "late"]


def test_a_failing_listener_does_not_keep_the_others_from_hearing() -> None:
    deadline = Deadline.start(None)
    heard: list[int] = []

    def broken() -> None:
        raise RuntimeError("listener bug")

    with deadline.on_cancel(broken), deadline.on_cancel(lambda: heard.append(1)):
        deadline.cancel()
    assert heard == [1]


def test_call_returns_the_result_or_raises_what_the_function_raised() -> None:
    deadline = Deadline.start(None)
    assert deadline.call(lambda: 42, "while testing") == 42

    def fails() -> int:
        raise ValueError("inner")

    with pytest.raises(ValueError, match="inner"):
        deadline.call(fails, "while testing")


def test_call_stops_waiting_the_moment_the_job_is_cancelled() -> None:
    """A call blocked for good (a server that never answers) gives way to a cancel; the
    cancel is driven by the call's own cue that it started, not by a guess of time."""
    deadline = Deadline.start(None)
    started, release = threading.Event(), threading.Event()

    def blocked() -> str:
        started.set()
        release.wait()
        return "too late"

    canceller = threading.Thread(target=lambda: (started.wait(), deadline.cancel()))
    canceller.start()
    try:
        with pytest.raises(JobInterruptedError, match="cancelled and stopped while downloading"):
            deadline.call(blocked, "while downloading inputs")
    finally:
        release.set()
        canceller.join()


def test_call_on_a_cancelled_job_does_not_start() -> None:
    deadline = Deadline.start(None)
    deadline.cancel()
    ran: list[bool] = []
    with pytest.raises(JobInterruptedError, match="before delivering outputs"):
        deadline.call(lambda: ran.append(True), "while delivering outputs")
    assert ran == []


def test_wait_for_returns_when_done_or_when_the_job_must_stop() -> None:
    done: Future[int] = Future()
    done.set_result(1)
    assert Deadline.start(None).wait_for(done) is True
    pending: Future[int] = Future()
    assert Deadline(limit_s=1.0, started=0.0).wait_for(pending) is False  # long past
    cancelled = Deadline.start(None)
    threading.Timer(0.01, cancelled.cancel).start()
    assert cancelled.wait_for(pending) is False


def test_job_deadlines_cancel_by_id_and_forget_jobs_that_ended() -> None:
    held = JobDeadlines()
    a, b, twin = Deadline.start(None), Deadline.start(None), Deadline.start(None)
    with held.holding("a", a), held.holding("b", b), held.holding("b", twin):
        assert held.cancel("nobody") == 0
        assert held.cancel("b") == 2 and b.cancelled and twin.cancelled
        assert not a.cancelled
        assert held.cancel(None) == 3 and a.cancelled
    assert held.cancel(None) == 0  # every job ended: nothing held


def test_a_turn_is_taken_one_job_at_a_time_and_waiting_ends_with_the_deadline() -> None:
    turns = JobTurns()
    assert turns.take(Deadline.start(None))  # free: taken at once
    assert not turns.take(Deadline.start(0.05))  # busy until its limit passed: not taken
    cancelled = Deadline.start(None)
    cancelled.cancel()
    assert not turns.take(cancelled)  # busy, and no reason left to wait
    waiting = Deadline.start(None)
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(turns.take(waiting)))
    waiter.start()
    turns.give_back()  # the next job takes it
    waiter.join(10)
    assert got == [True]
