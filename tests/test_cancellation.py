"""Cancellation at every scheduling point: nothing lost, duplicated or stuck."""

from __future__ import annotations

import asyncio
import inspect
import itertools
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
import trio

import channel
from channel import Channel
from tests.scenarios import (
    CLEAN,
    MAX_RUNS,
    PLANS,
    SCENARIOS,
    SINGLE_ITEMS,
    Log,
    Plan,
    Scenario,
    Side,
    Stepper,
    _methods,
    _seeds,
    ask_once,
    check_run,
    counting_scheduling_points,
    run_once,
)
from tests.support import (
    RUN_LIMIT,
    Boom,
    checkpoint,
    in_trio,
    settle,
)

pytestmark = pytest.mark.anyio

# Longer runs: CHANNEL_TRIO_SEEDS (default 2: trio schedules explored per scenario).
#
# Systematic cancellation (`test_cancelling_at_every_scheduling_point`). Each scenario
#    (one producer; three producers sharing ``itemize``; stragglers that share it from
#    outside the block; when the library has them, a duplex stream with ``asend`` replies
#    and ``itemize.many``, a 300-item delegation (the receiver's checkpoint every 256
#    items), and a ``batches`` consumer; and, in its own test, a ``@producer`` function)
#    is run again and again: run number k cancels the producer, the receiver, or both (or
#    closes the receiver) just before scheduling point number k, for k = 0, 1, 2, ...
#    until a run ends without reaching point k. Each scenario also runs at three paces
#    (who passes more scheduling points per item), so that both a parked receiver and
#    queued producers are hit.
#
#    A *scheduling point* is one resumption of a task (or other callback) by the event
#    loop. It is counted by instrumenting the loop, so the count is deterministic and the
#    cancellation happens between two steps, exactly where another task could have done it:
#
#    - asyncio and uvloop: the running loop's ``call_soon`` is replaced (on the loop
#      instance, for the run) by a wrapper whose callbacks count themselves before they
#      run. Every task step and wake-up (``Task.__step``/``__wakeup``, future callbacks,
#      anyio's cancellation retries) goes through ``call_soon``, and the ready queue is
#      FIFO, so every run with the same k replays the same sequence.
#    - trio: a ``trio.abc.Instrument`` counts ``before_task_step``. trio shuffles each
#      batch of runnable tasks with its module's ``random.Random`` (and sorts the batch
#      first while Hypothesis is imported, as here); the harness reseeds it at the start
#      of each run, so each run replays the same schedule, and it explores two seeds, so
#      that tasks that become runnable together also run in another order.
#
#    `test_the_harness_is_deterministic` checks that two runs with the same k pass the
#    same points and do the same things.
#
#    Two ways to cancel: an anyio ``CancelScope`` (both backends), and on asyncio/uvloop
#    a raw ``task.cancel()``, which, unlike anyio's scope, also cancels a task whose
#    future already has its result (the item was handed over, the task has not resumed).
#    Cancelling "per operation" wraps each ``itemize``/``anext`` in its own scope and goes
#    on afterwards (a timeout around one call); cancelling the "whole" task ends it (the
#    producer's block fails; the receiver, inside ``async with c.receiver``, closes).
#
#    After every run: the items received are a subsequence of the items offered, in the
#    order the ``itemize`` calls arrived; none twice; every ``itemize`` that returned
#    normally had its item received, and returned the reply sent for exactly that item
#    (None from ``anext``); an item still untaken in the queue when its producer was
#    cancelled is never received; no item of a call that raised ``ChannelClosed`` is;
#    every item a generator gave to ``itemize.many`` was received, and no generator was
#    left suspended; every ``itemize`` ended in a way the plan allows; the receiver ended
#    as the block did (``StopAsyncIteration`` only after a clean end, ``SenderFailed``
#    with the block's own exception as ``__cause__``); when only ``anext`` is cancelled,
#    every item arrived, in order; every task finished (``fail_after``; for ``@producer``
#    a watchdog detects a consumer that can no longer leave ``async with``); the asyncio
#    loop's exception handler was never called.
#

# ==========================================================================================
# 1. Systematic cancellation at every scheduling point
# ==========================================================================================


@pytest.mark.parametrize("plan", PLANS, ids=str)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
async def test_cancelling_at_every_scheduling_point(scenario: Scenario, plan: Plan) -> None:
    runs = 0
    for method, seed, pace in itertools.product(_methods(), _seeds(), scenario.paces):
        k = 0
        while True:
            log, stepper = await run_once(scenario, plan, method, k, seed=seed, pace=pace)
            runs += 1
            problems = check_run(log, scenario, plan)
            assert not problems, (
                f"{scenario.name}, {plan} by {method} before point {k} (seed {seed}, pace "
                f"{pace}): {problems}\n{log}"
            )
            if not stepper.fired:
                break
            k += 1
            assert k < MAX_RUNS, "runs keep reaching point k: a livelock?"
        # The last run, which no cancellation reached, passed this many points.
        assert stepper.count >= 4, stepper.trace
    assert runs >= 10  # the loop really ran, once per point


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
async def test_the_harness_is_deterministic(scenario: Scenario) -> None:
    """Two runs with the same k pass through the same points and do the same things."""
    plan = Plan("both", "op")
    for method in _methods():
        for k in (0, 3, 7):
            first_log, first = await run_once(scenario, plan, method, k, seed=1, pace=(1, 1))
            second_log, second = await run_once(scenario, plan, method, k, seed=1, pace=(1, 1))
            assert first.trace == second.trace
            assert _summary(first_log) == _summary(second_log)


def _summary(log: Log) -> tuple[Any, ...]:
    """A log without exception objects (whose reprs may name tasks by address)."""
    return (
        log.sent,
        log.outcome,
        log.replies,
        log.received,
        log.end,
        type(log.cause).__name__,
        log.block if log.block in (None, CLEAN) else type(log.block).__name__,
    )


@dataclass
class ProducerRun:
    """What a run of a @producer function did, beyond the Log of its stream."""

    function_started: bool = False
    started_before_the_first_ask: bool = False  # a producer function is lazy
    function_finished: bool = False  # the function's `finally` ran
    finished_at_exit: bool | None = None  # ... already when the `async with` exited
    exit: object = None  # how the `async with` was left: CLEAN, "cancelled" or the exception
    stuck: bool = False  # the `async with` did not exit: the watchdog cancelled it


async def run_producer_function(  # noqa: PLR0915 - one scenario, kept in one place
    plan: Plan, method: str, k: int, *, seed: int, fail: bool
) -> tuple[Log, ProducerRun, Stepper]:
    """A @producer function and its consumer; `plan` is carried out before point k."""
    log, run = Log(), ProducerRun()
    producing = Side(plan.mode if plan.target in ("producer", "both") else None, method)
    receiving = Side(plan.mode if plan.target in ("receiver", "both") else None, method)
    receiver: list[Any] = []
    leaving = anyio.Event()
    outer = anyio.CancelScope()

    async def watchdog(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Detects a consumer stuck in `async with` exit: nothing can wake it any more."""
        stepper.ignored.add(_current_task())
        task_status.started()
        await leaving.wait()
        for _ in range(WATCHDOG_POINTS):
            if run.exit is not None:
                return
            await checkpoint()
        run.stuck = True
        outer.cancel()

    @channel.producer
    async def numbers(itemize: Any) -> None:
        run.function_started = True
        try:
            for i in range(SINGLE_ITEMS):
                with producing.op():
                    await log.itemize(itemize, (0, i))
                    await producing.pause()
            if fail:
                raise Boom("the producer function failed")  # noqa: TRY301 - ends the block
        except BaseException as exc:
            log.block = exc
            raise
        else:
            log.block = CLEAN
        finally:
            run.function_finished = True

    async def consume(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        task_status.started()
        with outer, receiving.whole():
            try:
                async with numbers() as rx:
                    receiver.append(rx)
                    stream = _Holder(rx)
                    try:
                        await receiving.pause()  # the producer task may start meanwhile
                        run.started_before_the_first_ask = run.function_started
                        while log.end is None:
                            with receiving.op():
                                await ask_once(stream, log, "anext")  # type: ignore[arg-type]
                                await receiving.pause()
                    finally:
                        leaving.set()
            except Boom as exc:
                run.exit = exc
            else:
                run.exit = CLEAN
            finally:
                run.finished_at_exit = run.function_finished
        if run.exit is None:
            run.exit = "cancelled"
        if log.end is None:
            log.end = "cancelled"

    def action() -> None:
        if plan.target == "close" and receiver:
            receiver[0].close()
        if plan.target in ("producer", "both"):
            producing.cancel()
        if plan.target in ("receiver", "both"):
            receiving.cancel()

    stepper = Stepper(k, action)
    with anyio.fail_after(RUN_LIMIT), counting_scheduling_points(stepper, seed) as loop_errors:
        async with anyio.create_task_group() as tg:
            await tg.start(watchdog)
            await tg.start(consume)
            stepper.armed = True
    if stepper.error is not None:
        raise stepper.error
    assert not loop_errors, f"the event loop reported errors: {loop_errors}"
    return log, run, stepper


WATCHDOG_POINTS = 200  # scheduling points of the others; a normal exit needs a handful


def _current_task() -> object:
    return trio.lowlevel.current_task() if in_trio() else asyncio.current_task()


class _Holder:
    """Looks like a Channel to ask_once: a receiver in its `receiver` attribute."""

    def __init__(self, receiver: Any) -> None:
        self.receiver = receiver


def check_producer_run(log: Log, run: ProducerRun, plan: Plan, fail: bool) -> list[str]:  # noqa: PLR0912
    problems: list[str] = []
    if run.stuck:
        problems.append("stuck: the `async with` never exited (the watchdog cancelled it)")
    received = log.received
    if received != [x for x in log.sent if x in set(received)] or len(set(received)) != len(
        received
    ):
        problems.append("items out of order, or twice")
    if lost := [x for x, how in log.outcome.items() if how == "returned" and x not in received]:
        problems.append(f"itemize returned, but the item was never received: {lost}")
    if run.started_before_the_first_ask:
        problems.append("the producer function started before the consumer asked")
    if run.function_started and not run.finished_at_exit:
        problems.append("the `async with` exited before the producer function finished")
    if log.block is None and received:
        problems.append("the function never ended")
    if isinstance(log.block, Boom) and run.exit is not log.block and run.exit != "cancelled":
        problems.append(f"the function raised {log.block!r}, the `async with` {run.exit!r}")
    if run.exit is not CLEAN and run.exit != "cancelled" and run.exit is not log.block:
        problems.append(f"the `async with` raised {run.exit!r}, not the function's exception")
    if log.end == "end" and log.block is not CLEAN:
        problems.append(f"StopAsyncIteration, but the function ended with {log.block!r}")
    if log.end == "failed" and log.cause is not log.block:
        problems.append(f"SenderFailed from {log.cause!r}, the function ended with {log.block!r}")
    if plan == Plan("receiver", "op"):
        if received != log.sent[:SINGLE_ITEMS] or len(received) != SINGLE_ITEMS:
            problems.append("cancelling anext() lost items")
        if run.exit is not (log.block if fail else CLEAN):
            problems.append(f"the `async with` ended with {run.exit!r}")
    return problems


@pytest.mark.parametrize("fail", [False, True], ids=["returns", "raises"])
@pytest.mark.parametrize("plan", PLANS, ids=str)
async def test_cancelling_a_producer_function_at_every_scheduling_point(
    plan: Plan, fail: bool
) -> None:
    for method, seed in itertools.product(_methods(), _seeds()):
        k = 0
        while True:
            log, run, stepper = await run_producer_function(plan, method, k, seed=seed, fail=fail)
            problems = check_producer_run(log, run, plan, fail)
            assert not problems, (
                f"@producer, {plan} by {method} before point {k} (seed {seed}): "
                f"{problems}\n{log}\n{run}"
            )
            if not stepper.fired:
                break
            k += 1
            assert k < MAX_RUNS, "runs keep reaching point k: a livelock?"
        assert stepper.count >= 4, stepper.trace


async def test_leaving_a_producer_whose_receiver_was_closed_early_does_not_hang() -> None:
    """The receiver closed before the producer task started: leaving must not hang."""

    @channel.producer
    async def numbers(itemize: Any) -> None:
        await itemize(1)

    left: list[str] = []
    scope = anyio.CancelScope()

    async def consume() -> None:
        with scope:
            async with numbers() as items:
                await items.aclose()  # this consumer wants nothing after all
                for _ in range(3):  # meanwhile the producer task starts
                    await checkpoint()
            left.append("left the async with")

    async def watchdog() -> None:
        for _ in range(WATCHDOG_POINTS):
            if left:
                return
            await checkpoint()
        scope.cancel()  # stuck: nothing will ever wake it

    with anyio.fail_after(RUN_LIMIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            tg.start_soon(watchdog)
    assert left == ["left the async with"]


@pytest.mark.parametrize("how", ["receiver closed", "many cancelled"])
async def test_a_withdrawn_delegation_closes_its_generator(how: str) -> None:
    """A queued itemize.many, withdrawn before it started, closes its generator."""

    def numbers() -> Generator[int, Any, None]:
        yield 0
        yield 1
        yield 2

    generator = numbers()
    assert next(generator) == 0  # started by the producer: it has something to clean up
    c: Channel[Any, Any] = Channel()
    scope = anyio.CancelScope()

    async def delegate(itemize: Any) -> None:
        with scope:
            await itemize.many(generator)

    async def produce() -> None:
        async with c.sender as itemize, anyio.create_task_group() as tg:
            tg.start_soon(itemize, "first")
            await settle()
            tg.start_soon(delegate, itemize)  # waits in the queue, behind "first"

    with anyio.fail_after(RUN_LIMIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(produce)
            while c.statistics().producers_waiting < 2:  # "first", then the delegation
                await checkpoint()
            assert await anext(c.receiver) == "first"  # the delegation is still queued
            if how == "receiver closed":
                await c.receiver.aclose()
            else:
                scope.cancel()
                await settle()
                assert [item async for item in c.receiver] == []
    assert inspect.getgeneratorstate(generator) == "GEN_CLOSED"
