"""JobPipeline: admission in arrival order, lanes, the engine's turn, interrupts, idle."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from engine.deadline import Deadline, JobThread
from engine.pipeline import JobPipeline, Ticket

# A bound against a hang only: every wait below ends on an event the test sets.
_HANG_S = 10.0


def in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(fn()), daemon=True)
    thread.start()
    return thread, result


def wait_until(condition: Callable[[], bool]) -> None:
    """Wait for a state another thread reaches (bounded against a hang, not timed)."""
    done = threading.Event()
    for _ in range(int(_HANG_S / 0.005)):
        if condition():
            return
        done.wait(0.005)
    raise AssertionError("the state was not reached")


def test_one_job_at_a_time_runs_on_the_engine_thread() -> None:
    """MAX_CONCURRENT_JOBS=1: the lane is the runtime's own thread (no hand-over)."""
    engine = JobThread("engine")
    pipeline = JobPipeline(1, engine)
    ticket = pipeline.admit(Deadline.start(None))
    assert ticket is not None and ticket.lane is engine


def test_a_job_admitted_alone_may_run_on_the_engine_thread_and_keeps_a_lane() -> None:
    """``alone_on_engine``: only a job with no other in flight runs on the engine thread;
    it still holds a lane of its own (for the end of its job), so the count holds."""
    engine = JobThread("engine")
    pipeline = JobPipeline(2, engine)
    alone = pipeline.try_admit(alone_on_engine=True)
    assert alone is not None and alone.runs_on is engine and alone.lane is not engine
    second = pipeline.try_admit(alone_on_engine=True)  # the first is still in flight
    assert second is not None and second.runs_on is second.lane is not engine
    assert pipeline.in_flight == 2 and pipeline.try_admit(alone_on_engine=True) is None
    pipeline.finish(alone, lambda: None)
    pipeline.finish(second, lambda: None)
    unasked = pipeline.admit(Deadline.start(None))  # alone, but the caller did not ask
    assert unasked is not None and unasked.runs_on is unasked.lane


def test_a_size_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        JobPipeline(0, JobThread("engine"))


def test_admission_holds_at_most_size_jobs_and_lets_them_in_in_arrival_order() -> None:
    pipeline = JobPipeline(2, JobThread("engine"))
    first, second = (pipeline.admit(Deadline.start(None)) for _ in range(2))
    assert first is not None and second is not None and first.lane is not second.lane
    third, third_ticket = in_thread(lambda: pipeline.admit(Deadline.start(None)))
    wait_until(lambda: pipeline.waiting == 1)
    fourth, fourth_ticket = in_thread(lambda: pipeline.admit(Deadline.start(None)))
    wait_until(lambda: pipeline.waiting == 2)
    pipeline.finish(first, lambda: None)
    third.join(_HANG_S)
    assert not third.is_alive() and fourth.is_alive()  # the one that came first went first
    (admitted,) = third_ticket
    assert isinstance(admitted, Ticket) and admitted.lane is first.lane
    pipeline.finish(second, lambda: None)
    fourth.join(_HANG_S)
    assert isinstance(fourth_ticket[0], Ticket)


def test_a_cancel_ends_the_wait_for_admission_and_the_next_in_line_moves_up() -> None:
    pipeline = JobPipeline(1, JobThread("engine"))
    held = pipeline.admit(Deadline.start(None))
    assert held is not None
    cancelled = Deadline.start(None)
    waiter, outcome = in_thread(lambda: pipeline.admit(cancelled))
    wait_until(lambda: pipeline.waiting == 1)
    cancelled.cancel()
    waiter.join(_HANG_S)
    assert outcome == [None] and pipeline.waiting == 0
    pipeline.finish(held, lambda: None)
    assert pipeline.admit(Deadline.start(None)) is not None


def test_the_engine_goes_in_admission_order_even_to_a_job_that_asks_later() -> None:
    pipeline = JobPipeline(3, JobThread("engine"))
    a, b, c = (pipeline.admit(Deadline.start(None)) for _ in range(3))
    assert a is not None and b is not None and c is not None
    assert pipeline.take_engine(a, Deadline.start(None))
    order: list[str] = []
    c_thread, _ = in_thread(
        lambda: pipeline.take_engine(c, Deadline.start(None)) and order.append("c")
    )
    pipeline.give_engine_back(a)
    # B has not asked yet (its inputs are still coming): C, ready first, still waits for it.
    assert c_thread.is_alive() and order == []
    assert pipeline.take_engine(b, Deadline.start(None))
    order.append("b")
    assert c_thread.is_alive()
    pipeline.give_engine_back(b)
    c_thread.join(_HANG_S)
    assert order == ["b", "c"]


def test_a_job_that_ends_before_its_run_gives_its_place_up() -> None:
    pipeline = JobPipeline(2, JobThread("engine"))
    a, b = (pipeline.admit(Deadline.start(None)) for _ in range(2))
    assert a is not None and b is not None
    b_thread, b_took = in_thread(lambda: pipeline.take_engine(b, Deadline.start(None)))
    pipeline.finish(a, lambda: None)  # A failed on its inputs: it never runs
    b_thread.join(_HANG_S)
    assert b_took == [True]


def test_a_cancel_ends_the_wait_for_the_engine() -> None:
    pipeline = JobPipeline(2, JobThread("engine"))
    a, b = (pipeline.admit(Deadline.start(None)) for _ in range(2))
    assert a is not None and b is not None
    assert pipeline.take_engine(a, Deadline.start(None))
    deadline = Deadline.start(None)
    b_thread, b_took = in_thread(lambda: pipeline.take_engine(b, deadline))
    deadline.cancel()
    b_thread.join(_HANG_S)
    assert b_took == [False]


def test_interrupt_reaches_the_engine_only_for_the_job_that_holds_it() -> None:
    """ComfyUI's interrupt is global: a job that does not hold the engine never calls it."""
    pipeline = JobPipeline(2, JobThread("engine"))
    a, b = (pipeline.admit(Deadline.start(None)) for _ in range(2))
    assert a is not None and b is not None
    interrupts: list[str] = []
    assert pipeline.take_engine(a, Deadline.start(None))
    assert not pipeline.interrupt(b, lambda: interrupts.append("b"))
    assert pipeline.interrupt(a, lambda: interrupts.append("a"))
    pipeline.give_engine_back(a)
    assert not pipeline.interrupt(a, lambda: interrupts.append("a late"))
    assert interrupts == ["a"]


def test_idle_work_runs_only_when_no_other_job_is_in_flight() -> None:
    pipeline = JobPipeline(2, JobThread("engine"))
    a, b = (pipeline.admit(Deadline.start(None)) for _ in range(2))
    assert a is not None and b is not None
    idle: list[str] = []
    pipeline.finish(a, lambda: idle.append("after a"))
    assert idle == [] and pipeline.in_flight == 1
    pipeline.finish(b, lambda: idle.append("after b"))
    assert idle == ["after b"] and pipeline.in_flight == 0


def test_stop_ends_every_wait_for_a_place_or_a_turn() -> None:
    """A stuck worker: the jobs waiting behind the stuck one stop waiting at once."""
    pipeline = JobPipeline(2, JobThread("engine"))
    a, b = (pipeline.admit(Deadline.start(None)) for _ in range(2))
    assert a is not None and b is not None
    assert pipeline.take_engine(a, Deadline.start(None))
    turn, took = in_thread(lambda: pipeline.take_engine(b, Deadline.start(None)))
    place, admitted = in_thread(lambda: pipeline.admit(Deadline.start(None)))
    wait_until(lambda: pipeline.waiting == 1)
    pipeline.stop()
    turn.join(_HANG_S)
    place.join(_HANG_S)
    assert took == [False] and admitted == [None]
