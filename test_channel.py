"""The behaviour that users of `channel` rely on, on asyncio, uvloop and trio."""

from __future__ import annotations

import asyncio
import collections.abc
import contextlib
import functools
import gc
import importlib.metadata
import inspect
import itertools
import re
import subprocess
import sys
import textwrap
import threading
import types
import weakref
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Iterator,
)
from pathlib import Path
from typing import Any

import aiostream
import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
import asyncstdlib
import pytest
import trio
import uvloop

import channel
from channel import (
    Channel,
    ChannelClosed,
    ChannelError,
    ChannelStatistics,
    Itemize,
    Receiver,
    ReceiverClosed,
    SenderFailed,
)
from tests import support
from tests.scenarios import Stepper, counting_scheduling_points
from tests.support import (
    ROOT,
    RUN_LIMIT,
    STEP,
    Boom,
    checkpoint,
    collect,
    in_trio,
    produce,
    settle,
    wait_until,
)

pytestmark = pytest.mark.anyio
anyio_backend = support.anyio_backend  # the fixtures: the three backends,
_fresh_backends = support._fresh_backends  # and fresh backends under mutmut

# --- 1. Exactly a generator ----------------------------------------------------------


async def test_items_arrive_in_order_and_the_loop_ends_after_the_last() -> None:
    c: Channel[int] = Channel()
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(produce, c, list(range(100)))
            assert await collect(c.receiver) == list(range(100))


async def test_itemize_can_be_handed_to_any_coroutine() -> None:
    async def two(itemize: Itemize[str]) -> None:
        await itemize("Two")

    async def producer(c: Channel[str]) -> None:
        async with c.sender as itemize:
            await itemize("One")
            await two(itemize)
            await itemize("Three")

    c: Channel[str] = Channel()
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer, c)
            assert await collect(c.receiver) == ["One", "Two", "Three"]


async def test_the_sender_block_runs_in_step_with_the_receiver_like_a_generator_body() -> None:
    """The same producer written as a generator and as a sender block interleaves identically."""

    async def as_generator(log: list[str]) -> AsyncIterator[int]:
        log.append("start")
        for i in range(3):
            log.append(f"before {i}")
            yield i
            log.append(f"after {i}")
        log.append("end")

    async def as_sender_block(c: Channel[int], log: list[str]) -> None:
        async with c.sender as itemize:
            log.append("start")
            for i in range(3):
                log.append(f"before {i}")
                await itemize(i)
                log.append(f"after {i}")
            log.append("end")

    async def consume(items: AsyncIterator[int], log: list[str]) -> None:
        async for i in items:
            log.append(f"got {i}")
            await settle()  # the producer must not run ahead while we work
            log.append(f"done {i}")
        log.append("stop")

    generator_log: list[str] = []
    await consume(as_generator(generator_log), generator_log)

    channel_log: list[str] = []
    c: Channel[int] = Channel()
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(as_sender_block, c, channel_log)
            await settle()  # the block may start, but cannot pass the first itemize
            await consume(c.receiver, channel_log)
    assert channel_log == generator_log


async def test_entering_the_sender_does_not_wait_for_the_receiver() -> None:
    c: Channel[int] = Channel()
    with anyio.fail_after(STEP):
        async with c.sender as itemize:
            assert callable(itemize)
        assert await collect(c.receiver) == []


async def test_the_producer_waits_in_itemize_until_the_receiver_asks() -> None:
    c: Channel[str] = Channel()
    progress: list[str] = []

    async def producer() -> None:
        async with c.sender as itemize:
            await itemize("a")
            progress.append("a taken and next one asked for")

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            await settle()
            assert progress == []
            assert await anext(c.receiver) == "a"
            await settle()
            assert progress == []  # the receiver has not asked for the next item yet
            with pytest.raises(StopAsyncIteration):
                await anext(c.receiver)
            assert progress == ["a taken and next one asked for"]


async def test_none_is_an_ordinary_item() -> None:
    c: Channel[None] = Channel()
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(produce, c, [None, None])
            assert await collect(c.receiver) == [None, None]


# --- 2. and 3. Clean and failed ends --------------------------------------------------


@pytest.mark.parametrize("asked", ["before the block", "in the block"])
async def test_a_block_that_ends_with_no_item_ends_a_waiting_receivers_stream(asked: str) -> None:
    c: Channel[int] = Channel()
    received: list[int] = []
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            if asked == "before the block":
                tg.start_soon(read_into, received, c.receiver)
            async with c.sender:
                if asked == "in the block":
                    tg.start_soon(read_into, received, c.receiver)
                await wait_until(lambda: c.statistics().receiver_waiting)
    assert received == []
    assert c.statistics() == ChannelStatistics("ended", False, 0, 0)


async def test_a_block_that_fails_makes_the_receiver_raise_sender_failed_from_it() -> None:
    c: Channel[int] = Channel()
    received: list[int] = []

    async def producer() -> None:
        with pytest.raises(ValueError, match="boom"):
            async with c.sender as itemize:
                await itemize(1)
                raise ValueError("boom")

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            with pytest.raises(SenderFailed, match="incomplete") as failed:
                async for item in c.receiver:
                    received.append(item)
    assert received == [1]
    assert isinstance(failed.value.__cause__, ValueError)
    assert str(failed.value.__cause__) == "boom"


async def test_a_failed_stream_keeps_raising_sender_failed() -> None:
    c: Channel[int] = Channel()
    with pytest.raises(KeyError):
        async with c.sender:
            raise KeyError("lost")
    for _ in range(2):
        with pytest.raises(SenderFailed) as failed:
            await anext(c.receiver)
        assert isinstance(failed.value.__cause__, KeyError)


async def test_a_cancelled_block_makes_the_receiver_raise_sender_failed() -> None:
    c: Channel[int] = Channel()
    producer_scope = anyio.CancelScope()

    async def producer() -> None:
        with producer_scope:
            async with c.sender as itemize:
                await itemize(1)
                await itemize(2)

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            assert await anext(c.receiver) == 1
            producer_scope.cancel()  # while the producer waits in itemize(1)
            with pytest.raises(SenderFailed) as failed:
                await anext(c.receiver)
    assert producer_scope.cancelled_caught
    assert isinstance(failed.value.__cause__, anyio.get_cancelled_exc_class())


async def _numbers_for_ever(c: Channel[int]) -> None:
    async with c.sender as itemize:
        for i in itertools.count():
            await itemize(i)


@pytest.mark.parametrize("then", ["nothing", "a shielded wait"])
async def test_a_consumer_cancelled_with_its_producer_sees_its_cancellation(then: str) -> None:
    """A scope that holds both sides ends as a cancellation, never with SenderFailed.

    The consumer cancels the task group's scope in its loop body, without waiting: the
    producer is cancelled first (on asyncio a cancellation reaches a task only when it
    suspends) and its block ends; the consumer's next request must raise its own
    cancellation, also when a shielded wait let the producer end first.
    """
    received: list[int] = []
    c: Channel[int] = Channel()
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(_numbers_for_ever, c)
            async for item in c.receiver:
                received.append(item)
                if item == 3:
                    tg.cancel_scope.cancel()
                    if then == "a shielded wait":
                        with anyio.CancelScope(shield=True):
                            await settle()  # the producer's block ends meanwhile
                    assert c.statistics().state == ("failed" if then != "nothing" else "open")
    assert tg.cancel_scope.cancelled_caught
    assert received == [0, 1, 2, 3]


async def test_a_task_group_holding_a_failing_producer_raises_the_producers_error_alone() -> None:
    """The failure cancels the task group, and so the consumer: no SenderFailed beside it."""
    c: Channel[int] = Channel()

    async def producer() -> None:
        async with c.sender as itemize:
            await itemize(1)
            raise Boom("the block failed")

    with anyio.fail_after(STEP), pytest.RaisesGroup(Boom):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            async for _ in c.receiver:
                pass


@pytest.mark.parametrize("runner", ["asyncio", "uvloop"])
def test_asyncio_timeout_around_a_task_group_holding_both_sides_is_a_timeout(runner: str) -> None:
    async def main() -> list[int]:
        c: Channel[int] = Channel()
        received: list[int] = []
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01), asyncio.TaskGroup() as tg:
                tg.create_task(_numbers_for_ever(c))
                async for item in c.receiver:
                    received.append(item)
        return received

    received = _run_on(runner, main)
    assert received == list(range(len(received)))


async def test_a_timeout_inside_the_block_ends_the_stream_cleanly() -> None:
    c: Channel[int] = Channel()

    async def producer() -> None:
        async with c.sender as itemize:
            with anyio.move_on_after(0.05):
                for i in range(1_000_000):
                    await itemize(i)
                    await anyio.sleep(0.001)

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            items = await collect(c.receiver)
    assert items == list(range(len(items)))


# --- 4. The receiver leaves early -----------------------------------------------------


async def test_closing_the_receiver_stops_a_waiting_producer_which_simply_ends() -> None:
    c: Channel[int] = Channel()
    events: list[str] = []

    async def producer() -> None:
        try:
            async with c.sender as itemize:
                for i in range(10):
                    await itemize(i)
                events.append("loop ran to the end")
        finally:
            events.append("cleanup")
        events.append("after the block")

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            async with c.receiver:
                async for item in c.receiver:
                    if item == 2:
                        break
            await wait_until(lambda: "after the block" in events)
    assert events == ["cleanup", "after the block"]


async def test_itemize_after_the_receiver_closed_raises_receiver_closed_at_once() -> None:
    c: Channel[int] = Channel()
    await c.receiver.aclose()
    outcomes: list[str] = []
    with anyio.fail_after(STEP):
        async with c.sender as itemize:
            for i in range(3):
                try:
                    await itemize(i)
                except ReceiverClosed as exc:
                    outcomes.append(str(exc))
            await itemize(3)
            outcomes.append("unreachable")
    assert len(outcomes) == 3
    assert "receiver was closed" in outcomes[0]


async def test_leaving_async_with_receiver_by_an_exception_closes_it() -> None:
    c: Channel[int] = Channel()
    ended: list[str] = []

    async def producer() -> None:
        async with c.sender as itemize:
            for i in range(10):
                await itemize(i)
        ended.append("producer ended")

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            with pytest.raises(ZeroDivisionError):
                async with c.receiver:
                    async for item in c.receiver:
                        item / 0
            await wait_until(lambda: bool(ended))


async def test_leaving_async_with_receiver_by_cancellation_closes_it() -> None:
    c: Channel[int] = Channel()
    ended: list[str] = []

    async def producer() -> None:
        async with c.sender as itemize:
            for i in range(10):
                await itemize(i)
        ended.append("producer ended")

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            with anyio.CancelScope() as scope:
                async with c.receiver:
                    async for _ in c.receiver:
                        scope.cancel()
                        await anyio.sleep(1)
            await wait_until(lambda: bool(ended))


async def test_a_bare_break_closes_nothing_as_with_a_generator() -> None:
    c: Channel[int] = Channel()
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(produce, c, [1, 2, 3])
            async for item in c.receiver:
                if item == 1:
                    break
            assert await collect(c.receiver) == [2, 3]


async def test_except_exception_in_the_producer_cannot_swallow_receiver_closed() -> None:
    c: Channel[int] = Channel()
    swallowed: list[BaseException] = []

    async def producer() -> None:
        async with c.sender as itemize:
            for i in range(100):
                try:
                    await itemize(i)
                except Exception as exc:  # what careless producer code looks like
                    swallowed.append(exc)

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            async with c.receiver:
                assert await anext(c.receiver) == 0
    assert swallowed == []


async def test_an_exception_in_the_block_after_the_receiver_closed_still_propagates() -> None:
    c: Channel[int] = Channel()
    c.receiver.close()
    with pytest.raises(RuntimeError, match="cleanup failed"):
        async with c.sender as itemize:
            try:
                await itemize(1)
            finally:
                raise RuntimeError("cleanup failed")


async def test_receiver_closed_of_another_channel_fails_this_stream() -> None:
    a: Channel[int] = Channel()
    b: Channel[int] = Channel()
    a.receiver.close()
    with anyio.fail_after(STEP):
        async with a.sender as to_a, b.sender as to_b:
            await to_a(1)
            await to_b(1)
    with pytest.raises(SenderFailed) as failed:
        await anext(b.receiver)
    assert isinstance(failed.value.__cause__, ReceiverClosed)


async def test_closing_the_receiver_wakes_a_task_waiting_in_anext_with_channel_closed() -> None:
    c: Channel[int] = Channel()
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:

            async def waiting() -> None:
                with pytest.raises(ChannelClosed, match="receiver was closed"):
                    await anext(c.receiver)

            tg.start_soon(waiting)
            await settle()
            c.receiver.close()


async def test_closing_the_receiver_twice_is_harmless() -> None:
    c: Channel[int] = Channel()
    await c.receiver.aclose()
    await c.receiver.aclose()
    c.receiver.close()
    async with c.receiver:
        pass


async def test_closing_the_receiver_after_a_clean_end_is_harmless() -> None:
    c: Channel[int] = Channel()
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(produce, c, [1])
            async with c.receiver:
                assert await collect(c.receiver) == [1]


# --- 5. Many producers, one callback ----------------------------------------------------


async def test_concurrent_itemize_calls_deliver_in_arrival_order_none_lost_none_twice() -> None:
    c: Channel[tuple[int, int]] = Channel()

    async def worker(itemize: Itemize[tuple[int, int]], n: int) -> None:
        for i in range(50):
            await itemize((n, i))

    async def producer() -> None:
        async with c.sender as itemize, anyio.create_task_group() as workers:
            for n in range(8):
                workers.start_soon(worker, itemize, n)

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            items = await collect(c.receiver)
    assert sorted(items) == [(n, i) for n in range(8) for i in range(50)]
    for n in range(8):
        assert [i for m, i in items if m == n] == list(range(50))


async def test_waiting_itemize_calls_are_delivered_first_come_first_served() -> None:
    c: Channel[str] = Channel()
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:

            async def producer() -> None:
                async with c.sender as itemize, anyio.create_task_group() as workers:
                    for name in "abcde":
                        workers.start_soon(itemize, name)
                        await settle()  # each call arrives before the next one

            tg.start_soon(producer)
            await settle()
            assert await collect(c.receiver) == list("abcde")


async def test_itemize_calls_still_waiting_when_the_block_ends_raise_channel_closed() -> None:
    c: Channel[str] = Channel()
    outcomes: dict[str, str] = {}

    async def straggler(itemize: Itemize[str], name: str) -> None:
        try:
            await itemize(name)
        except ChannelClosed as exc:
            outcomes[name] = str(exc)
        else:
            outcomes[name] = "delivered"

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg, c.sender as itemize:
            tg.start_soon(straggler, itemize, "taken")
            await settle()
            assert await anext(c.receiver) == "taken"
            tg.start_soon(straggler, itemize, "left behind")
            await settle()
            # the block ended while both were inside itemize
        with pytest.raises(StopAsyncIteration):
            await anext(c.receiver)
    assert outcomes["taken"] == "delivered"
    assert "not delivered" in outcomes["left behind"]


async def test_fan_in_producers_end_quietly_when_the_receiver_closes() -> None:
    c: Channel[int] = Channel()
    finished: list[str] = []

    async def worker(itemize: Itemize[int]) -> None:
        while True:
            await itemize(1)

    async def producer() -> None:
        async with c.sender as itemize, anyio.create_task_group() as workers:
            for _ in range(4):
                workers.start_soon(worker, itemize)
        finished.append("producer ended without an error")

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            async with c.receiver:
                for _ in range(10):
                    assert await anext(c.receiver) == 1
    assert finished == ["producer ended without an error"]


async def test_an_exception_group_with_other_errors_is_not_absorbed() -> None:
    c: Channel[int] = Channel()
    c.receiver.close()
    with pytest.raises(BaseExceptionGroup) as group:
        async with c.sender as itemize:
            raise BaseExceptionGroup("mixed", [ReceiverClosed(), ValueError("real")])
    assert group.group_contains(ValueError)
    del itemize


# --- 6. Cancellation loses nothing ------------------------------------------------------


async def test_cancelling_itemize_before_the_item_was_taken_withdraws_it() -> None:
    c: Channel[str] = Channel()
    withdrawn = anyio.Event()

    async def producer() -> None:
        async with c.sender as itemize:
            with anyio.move_on_after(0.01) as scope:
                await itemize("withdrawn")
            assert scope.cancelled_caught
            withdrawn.set()
            await itemize("kept")

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            await withdrawn.wait()
            assert await collect(c.receiver) == ["kept"]


async def test_cancelling_itemize_after_the_item_was_taken_leaves_it_delivered() -> None:
    c: Channel[str] = Channel()
    outcome: list[str] = []

    async def producer() -> None:
        async with c.sender as itemize:
            with anyio.CancelScope() as scope:
                tg.start_soon(cancel_soon, scope)
                await itemize("taken")
                outcome.append("returned")
            if scope.cancelled_caught:
                outcome.append("cancelled")

    async def cancel_soon(scope: anyio.CancelScope) -> None:
        await wait_until(lambda: received == ["taken"])
        scope.cancel()

    received: list[str] = []
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            received.append(await anext(c.receiver))
            await settle()
            with pytest.raises(StopAsyncIteration):
                await anext(c.receiver)
    assert received == ["taken"]
    assert outcome == ["cancelled"]


async def test_a_cancelled_anext_does_not_close_the_receiver_and_can_be_retried() -> None:
    c: Channel[int] = Channel()
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            with anyio.move_on_after(0.01) as scope:
                await anext(c.receiver)
            assert scope.cancelled_caught
            tg.start_soon(produce, c, [1, 2])
            assert await collect(c.receiver) == [1, 2]


async def test_an_item_handed_over_just_before_the_cancellation_is_not_lost() -> None:
    """The hand-over and the receiver's cancellation happen in the same scheduler round."""
    c: Channel[str] = Channel()
    go = anyio.Event()
    outcomes: list[str] = []

    async def producer() -> None:
        async with c.sender as itemize:
            await go.wait()
            await itemize("x")  # hands "x" to the parked receiver, then parks
            await itemize("y")

    async def canceller(scope: anyio.CancelScope) -> None:
        await go.wait()
        scope.cancel()  # lands after the hand-over, before the receiver resumes

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            await settle()
            with anyio.CancelScope() as scope:
                tg.start_soon(canceller, scope)
                await settle()
                go.set()
                outcomes.append(await anext(c.receiver))
            if scope.cancelled_caught:
                outcomes.append("cancelled")
            outcomes += await collect(c.receiver)
    assert outcomes in (["x", "y"], ["cancelled", "x", "y"])


async def test_cancelling_the_receiver_between_items_loses_nothing() -> None:
    c: Channel[int] = Channel()
    received: list[int] = []
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:

            async def producer() -> None:
                async with c.sender as itemize:
                    for i in range(200):
                        await itemize(i)
                        if i % 7 == 0:
                            await anyio.sleep(0.0005)

            tg.start_soon(producer)
            while True:
                with anyio.move_on_after(0.0003):
                    try:
                        received.append(await anext(c.receiver))
                    except StopAsyncIteration:
                        break
    assert received == list(range(200))


async def test_a_producer_cancelled_in_the_same_step_as_the_ask_is_skipped() -> None:
    c: Channel[str] = Channel()
    scope = anyio.CancelScope()

    async def producer() -> None:
        async with c.sender as itemize:
            with scope:
                await itemize("withdrawn")
            await itemize("kept")

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            await settle()
            scope.cancel()  # the waiting itemize is cancelled, but has not run yet
            assert await anext(c.receiver) == "kept"
            assert await collect(c.receiver) == []


async def test_a_cancelled_producer_at_the_head_of_the_queue_is_skipped_in_order() -> None:
    c: Channel[str] = Channel()
    scope = anyio.CancelScope()

    async def head(itemize: Itemize[str]) -> None:
        with scope:
            await itemize("withdrawn")

    async def producer() -> None:
        async with c.sender as itemize, anyio.create_task_group() as workers:
            workers.start_soon(head, itemize)
            await settle()
            workers.start_soon(itemize, "b")
            await settle()
            workers.start_soon(itemize, "c")
            await settle()

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            await wait_until(lambda: c.statistics().producers_waiting == 3)
            scope.cancel()  # the head is cancelled, but has not run yet
            assert await anext(c.receiver) == "b"  # skips the head
            await settle()  # the head tidies up while "c" still waits
            assert await collect(c.receiver) == ["c"]


@pytest.mark.parametrize("how", ["end the block", "close the receiver"])
async def test_ending_in_the_same_step_as_a_cancellation_wakes_nobody_twice(how: str) -> None:
    c: Channel[str] = Channel()
    scope = anyio.CancelScope()
    outcomes: list[str] = []

    async def straggler(itemize: Itemize[str]) -> None:
        with scope:
            await itemize("never taken")
        outcomes.append("cancelled" if scope.cancelled_caught else "not cancelled")

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg, c.sender as itemize:
            tg.start_soon(straggler, itemize)
            await settle()
            scope.cancel()
            if how == "close the receiver":
                c.receiver.close()
    assert outcomes == ["cancelled"]


async def test_a_receiver_cancelled_in_the_same_step_as_the_close_raises_its_cancellation() -> None:
    c: Channel[str] = Channel()
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            scope = anyio.CancelScope()

            async def receiver() -> None:
                with scope:
                    await anext(c.receiver)

            tg.start_soon(receiver)
            await settle()
            scope.cancel()
            c.receiver.close()
        assert scope.cancelled_caught


@pytest.mark.parametrize("runner", ["asyncio", "uvloop"])
def test_task_cancel_landing_after_the_hand_over_keeps_the_item_on_asyncio(runner: str) -> None:
    """asyncio delivers a cancellation even to a task whose future already has its item."""

    async def main() -> None:
        c: Channel[str] = Channel()
        receiver = asyncio.create_task(anext(c.receiver))
        await asyncio.sleep(0)  # the receiver parks
        async with c.sender as itemize:
            producer = asyncio.create_task(itemize("x"))
            await asyncio.sleep(0)  # the producer hands "x" over and parks
            receiver.cancel()  # before the receiver has resumed with "x"
            with pytest.raises(asyncio.CancelledError):
                await receiver
            assert await anext(c.receiver) == "x"
        await producer
        with pytest.raises(StopAsyncIteration):
            await anext(c.receiver)

    _run_on(runner, main)


@pytest.mark.parametrize("runner", ["asyncio", "uvloop"])
def test_task_cancel_landing_after_the_end_of_stream_still_ends_the_stream(runner: str) -> None:
    async def main() -> None:
        c: Channel[str] = Channel()
        receiver = asyncio.create_task(anext(c.receiver))
        await asyncio.sleep(0)  # the receiver parks
        async with c.sender:
            pass  # wakes the receiver with the end of the stream
        receiver.cancel()  # before the receiver has resumed
        with pytest.raises(asyncio.CancelledError):
            await receiver
        with pytest.raises(StopAsyncIteration):
            await anext(c.receiver)

    _run_on(runner, main)


@pytest.mark.parametrize("runner", ["asyncio", "uvloop"])
def test_anext_under_asyncio_timeout_can_be_retried(runner: str) -> None:
    async def main() -> list[str]:
        c: Channel[str] = Channel()
        received: list[str] = []

        async def producer() -> None:
            async with c.sender as itemize:
                for item in "abc":
                    await asyncio.sleep(0.002)
                    await itemize(item)

        task = asyncio.create_task(producer())
        while len(received) < 3:
            try:
                async with asyncio.timeout(0.001):
                    received.append(await anext(c.receiver))
            except TimeoutError:
                pass
        assert await collect(c.receiver) == []  # lets the producer finish its block
        await task
        return received

    assert _run_on(runner, main) == ["a", "b", "c"]


def test_trio_is_detected_when_asyncio_was_never_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> list[int]:
        monkeypatch.delitem(sys.modules, "asyncio")
        c: Channel[int] = Channel()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce, c, [1, 2])
            return await collect(c.receiver)

    assert trio.run(main) == [1, 2]


# --- Cancellation: what each operation does in a scope cancelled beforehand ------------
#
# trio's rule: an operation that can block raises Cancelled before it has any effect, so
# on trio every row gives Cancelled and leaves the channel as it was. On asyncio, as with
# asyncio.Queue, a cancellation lands at the operation's next suspension; nothing is lost
# either way (an item handed over before stays delivered, one taken before is kept).


async def outcome(awaitable: Awaitable[Any]) -> str:
    """What ``awaitable`` does in a scope cancelled beforehand: its value, or what it raises."""
    with anyio.CancelScope() as scope:
        scope.cancel()
        try:
            return f"returned {await awaitable!r}"
        except (Exception, ReceiverClosed) as exc:
            return type(exc).__name__
    assert scope.cancelled_caught
    return "Cancelled"


async def read_into(received: list[Any], reader: AsyncIterator[Any]) -> None:
    async for got in reader:
        received += got if isinstance(got, list) else [got]


async def itemize_with_the_consumer_waiting() -> str:
    c: Channel[int] = Channel()
    received: list[int] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(read_into, received, c.receiver)
        async with c.sender as itemize:
            await wait_until(lambda: c.statistics().receiver_waiting)
            how = await outcome(itemize(1))
    return f"{how}, received {received}, counted {c.statistics().items_delivered}"


async def itemize_with_the_consumer_waiting_since_before_the_block() -> str:
    c: Channel[int] = Channel()
    received: list[int] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(read_into, received, c.receiver)
        await wait_until(lambda: c.statistics().receiver_waiting)
        async with c.sender as itemize:
            how = await outcome(itemize(1))
    return f"{how}, received {received}, counted {c.statistics().items_delivered}"


async def itemize_with_nobody_waiting() -> str:
    c: Channel[int] = Channel()
    async with c.sender as itemize:
        how = await outcome(itemize(1))
    return f"{how}, received {await collect(c.receiver)}"


async def _read_in_a_cancelled_scope(
    c: Channel[int], reader: AsyncIterator[Any], producer: Callable[[], Coroutine[Any, Any, None]]
) -> str:
    received: list[int] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(producer)
        await wait_until(lambda: c.statistics().producers_waiting > 0)
        await settle()  # every producer in line
        how = await outcome(read_into(received, reader))
        rest = await collect(c.receiver)
    assert len(set(received + rest)) == len(received + rest)  # none twice
    return f"{how} after {len(received)} items, then {len(rest)}"


async def anext_with_producers_waiting(count: int) -> str:
    c: Channel[int] = Channel()
    return await _read_in_a_cancelled_scope(c, c.receiver, producers_in_line(c, count))


async def _delegate(c: Channel[int], count: int) -> None:
    async with c.sender as itemize:
        await itemize.many(range(count))


async def anext_during_a_delegation() -> str:
    c: Channel[int] = Channel()
    return await _read_in_a_cancelled_scope(c, c.receiver, functools.partial(_delegate, c, 1000))


async def batches_during_a_delegation() -> str:
    c: Channel[int] = Channel()
    batches = c.receiver.batches(100)
    return await _read_in_a_cancelled_scope(c, batches, functools.partial(_delegate, c, 1000))


async def asend_resuming_the_producer() -> str:
    c: Channel[int, str] = Channel()
    replies: list[str | None] = []

    async def producer() -> None:
        async with c.sender as itemize:
            for i in range(2):
                replies.append(await itemize(i))

    async with anyio.create_task_group() as tg:
        tg.start_soon(producer)
        assert await anext(c.receiver) == 0
        how = await outcome(c.receiver.asend("reply"))
        rest = await collect(c.receiver)
    return f"{how}, then {rest}, replies {replies}"


async def athrow_into_the_producer() -> str:
    c: Channel[int] = Channel()
    caught: list[str] = []

    async def producer() -> None:
        async with c.sender as itemize:
            try:
                await itemize(0)
            except KeyError:
                caught.append("KeyError")
            await itemize(1)

    async with anyio.create_task_group() as tg:
        tg.start_soon(producer)
        assert await anext(c.receiver) == 0
        how = await outcome(c.receiver.athrow(KeyError))
        rest = await collect(c.receiver)
    return f"{how}, caught {caught}, then {rest}"


async def many_with_the_consumer_waiting() -> str:
    c: Channel[int] = Channel()
    received: list[int] = []
    pulled: list[int] = []

    def numbers() -> Iterator[int]:
        for i in range(3):
            pulled.append(i)
            yield i

    async with anyio.create_task_group() as tg:
        tg.start_soon(read_into, received, c.receiver)
        async with c.sender as itemize:
            await wait_until(lambda: c.statistics().receiver_waiting)
            how = await outcome(itemize.many(numbers()))
    return f"{how}, pulled {pulled}, received {received}"


async def anext_after_the_end(end: str) -> str:
    c: Channel[int] = Channel()
    with contextlib.suppress(Boom):
        async with c.sender:
            if end == "failed":
                raise Boom("the block failed")
    if end == "closed":
        c.receiver.close()
    return await outcome(anext(c.receiver))


async def itemize_once_the_receiver_closed() -> str:
    c: Channel[int] = Channel()
    c.receiver.close()
    async with c.sender as itemize:
        how = await outcome(itemize(1))
    return how


IN_A_CANCELLED_SCOPE = [  # the operation, what it does on trio, and on asyncio and uvloop
    pytest.param(
        itemize_with_the_consumer_waiting,
        "Cancelled, received [], counted 0",
        "Cancelled, received [1], counted 1",  # handed over, then cancelled as it waits
        id="itemize, the consumer waiting",
    ),
    pytest.param(
        itemize_with_the_consumer_waiting_since_before_the_block,
        "Cancelled, received [], counted 0",
        "Cancelled, received [1], counted 1",
        id="itemize, the consumer waiting since before the block began",
    ),
    pytest.param(
        itemize_with_nobody_waiting,
        "Cancelled, received []",
        "Cancelled, received []",  # withdrawn
        id="itemize, nobody waiting",
    ),
    pytest.param(
        functools.partial(anext_with_producers_waiting, 1),
        "Cancelled after 0 items, then 1",
        "Cancelled after 1 items, then 0",
        id="anext, 1 producer waiting",
    ),
    pytest.param(
        functools.partial(anext_with_producers_waiting, 300),
        "Cancelled after 0 items, then 300",
        "Cancelled after 256 items, then 44",  # a scheduling point before the 257th
        id="anext, 300 producers waiting",
    ),
    pytest.param(
        anext_during_a_delegation,
        "Cancelled after 0 items, then 1000",
        "Cancelled after 256 items, then 744",
        id="anext, itemize.many(range(1000))",
    ),
    pytest.param(
        batches_during_a_delegation,
        "Cancelled after 0 items, then 1000",
        "Cancelled after 200 items, then 800",  # the third batch is kept: nothing lost
        id="batches(100), itemize.many(range(1000))",
    ),
    pytest.param(
        asend_resuming_the_producer,
        "Cancelled, then [1], replies [None, None]",
        "Cancelled, then [1], replies ['reply', None]",
        id="asend(reply), the producer waiting for it",
    ),
    pytest.param(
        athrow_into_the_producer,
        "Cancelled, caught [], then [1]",
        "Cancelled, caught ['KeyError'], then [1]",
        id="athrow(KeyError), the producer waiting for it",
    ),
    pytest.param(
        many_with_the_consumer_waiting,
        "Cancelled, pulled [], received []",
        "Cancelled, pulled [], received []",  # cancelled before the receiver's turn came
        id="itemize.many, the consumer waiting",
    ),
    pytest.param(
        functools.partial(anext_after_the_end, "clean"),
        "Cancelled",
        "StopAsyncIteration",
        id="anext after a clean end",
    ),
    pytest.param(
        functools.partial(anext_after_the_end, "failed"),
        "Cancelled",
        "Cancelled",  # a failed end suspends once before SenderFailed
        id="anext after a failed end",
    ),
    pytest.param(
        functools.partial(anext_after_the_end, "closed"),
        "Cancelled",
        "ChannelClosed",
        id="anext after the receiver closed",
    ),
    pytest.param(
        itemize_once_the_receiver_closed,
        "Cancelled",
        "ReceiverClosed",
        id="itemize after the receiver closed",
    ),
]


@pytest.mark.parametrize(("operation", "on_trio", "on_asyncio"), IN_A_CANCELLED_SCOPE)
async def test_what_an_operation_does_in_a_cancelled_scope(
    operation: Callable[[], Awaitable[str]], on_trio: str, on_asyncio: str
) -> None:
    with anyio.fail_after(STEP):
        assert await operation() == (on_trio if in_trio() else on_asyncio)


# After an ask cancelled in its scope: on trio the ask is taken back if its producer has
# not run yet, so that the producer's `itemize` returns only for an ask that stood; its
# reply comes from the next ask. Whether the producer runs before the consumer's next
# step is up to trio's scheduler, so each runs under several of its schedules, and all
# must end the same. On asyncio the cancelled ask resumed the producer before it waited.


async def under_several_schedules(scenario: Callable[[], Awaitable[str]]) -> set[str]:
    outcomes = set()
    for seed in range(16) if in_trio() else range(1):
        with counting_scheduling_points(Stepper(-1, lambda: None), seed):
            outcomes.add(await scenario())
    return outcomes


async def _cancelled_ask(c: Channel[int, str]) -> None:
    await _cancelled_ask_of(c.receiver)


async def _cancelled_ask_of(receiver: Receiver[int, str]) -> None:
    with anyio.CancelScope() as scope:
        scope.cancel()
        await receiver.asend("the cancelled ask")
    assert scope.cancelled_caught


async def asking_again_after_a_cancelled_ask() -> str:
    c: Channel[int, str] = Channel()
    replies: list[str | None] = []

    async def producer() -> None:
        async with c.sender as itemize:
            replies.append(await itemize(0))
            replies.append(await itemize(1))

    async with anyio.create_task_group() as tg:
        tg.start_soon(producer)
        assert await anext(c.receiver) == 0
        await _cancelled_ask(c)
        got = await c.receiver.asend("the next ask")
        rest = await collect(c.receiver)
    return f"{got}, then {rest}, replies {replies}"


async def athrow_after_a_cancelled_ask() -> str:
    c: Channel[int, str] = Channel()
    caught: list[str] = []

    async def producer() -> None:
        async with c.sender as itemize:
            try:
                await itemize(0)
            except KeyError:
                caught.append("itemize(0) raised KeyError")
            await itemize(1)

    async with anyio.create_task_group() as tg:
        tg.start_soon(producer)
        assert await anext(c.receiver) == 0
        await _cancelled_ask(c)
        got = await c.receiver.athrow(KeyError)
        rest = await collect(c.receiver)
    return f"{got}, then {rest}, {caught}"


async def closing_after_a_cancelled_ask() -> str:
    c: Channel[int, str] = Channel()
    stopped: list[str] = []

    async def producer() -> None:
        async with c.sender as itemize:
            for i in range(2):
                try:
                    await itemize(i)
                except ReceiverClosed:
                    stopped.append(f"itemize({i}) raised ReceiverClosed")
                    raise

    async with anyio.create_task_group() as tg:
        tg.start_soon(producer)
        assert await anext(c.receiver) == 0
        await _cancelled_ask(c)
        c.receiver.close()
    return ", ".join(stopped)


async def cancelling_the_producer_after_a_cancelled_ask() -> str:
    c: Channel[int, str] = Channel()
    producing = anyio.CancelScope()
    ended: list[str] = []

    async def producer() -> None:
        async with c.sender as itemize:
            with producing:
                for i in range(2):
                    await itemize(i)
                    ended.append(f"itemize({i}) returned")
            ended.append("cancelled" if producing.cancelled_caught else "")

    async with anyio.create_task_group() as tg:
        tg.start_soon(producer)
        assert await anext(c.receiver) == 0
        await _cancelled_ask(c)
        producing.cancel()
        rest = await collect(c.receiver)
    return f"{', '.join(ended)}, then {rest}"


async def ending_the_block_after_a_cancelled_ask() -> str:
    """The consumer's task holds the block; another task shares its itemize."""
    c: Channel[int, str] = Channel()
    replies: list[object] = []

    async def straggler(itemize: Itemize[int, str]) -> None:
        replies.append(await itemize(0))
        try:
            await itemize(1)
        except ChannelClosed:
            replies.append("itemize(1) raised ChannelClosed")

    async with anyio.create_task_group() as tg:
        async with c.sender as itemize:
            tg.start_soon(straggler, itemize)
            assert await anext(c.receiver) == 0
            await _cancelled_ask(c)
        await settle()  # the straggler runs: no ask came since
        rest = await collect(c.receiver)
    return f"then {rest}, replies {replies}"


async def a_producer_function_whose_first_ask_is_cancelled() -> str:
    events: list[str] = []

    @channel.producer
    async def numbers(itemize: Itemize[int, str]) -> None:
        events.append("started")
        await itemize(0)

    async with numbers() as items:
        await settle()  # the producer waits for the first ask
        with anyio.CancelScope() as scope:
            scope.cancel()
            await anext(items)
        events.append("asked again")
        events.append(f"got {await anext(items)}")
    return ", ".join(events)


class ThenATakenBackAsk:
    """How the scenarios below end: the producer goes on when told and gives 1 and 2;
    the consumer takes 1, has its next ask cancelled before the producer runs, and asks
    again with a reply. No reply of an earlier ask may reach the producer instead."""

    def __init__(self) -> None:
        self.replies: list[str | None] = []
        self.go_on = anyio.Event()

    async def produce(self, itemize: Itemize[int, str]) -> None:
        await self.go_on.wait()
        self.replies.append(await itemize(1))
        self.replies.append(await itemize(2))

    async def consume(self, receiver: Receiver[int, str]) -> str:
        self.go_on.set()
        got = [await anext(receiver)]
        await _cancelled_ask_of(receiver)
        got.append(await receiver.asend("the next ask"))
        rest = await collect(receiver)
        return f"{got}, then {rest}, replies {self.replies}"


async def an_ask_cancelled_while_its_producer_works() -> str:
    """Cancelled after its producer ran: not taken back."""
    c: Channel[int, str] = Channel()
    then, asking = ThenATakenBackAsk(), anyio.CancelScope()

    async def producer() -> None:
        async with c.sender as itemize:
            then.replies.append(await itemize(0))
            asking.cancel()  # the ask that resumed this producer, as it works
            await then.produce(itemize)

    async with anyio.create_task_group() as tg:
        tg.start_soon(producer)
        assert await anext(c.receiver) == 0
        with asking:
            await c.receiver.asend("the first ask")
        result = await then.consume(c.receiver)
    return result


async def a_first_ask_cancelled_as_it_waits() -> str:
    """Cancelled while no producer was resumed: nothing to take back."""
    c: Channel[int, str] = Channel()
    then, asking = ThenATakenBackAsk(), anyio.CancelScope()

    async def producer() -> None:
        async with c.sender as itemize:
            await wait_until(lambda: c.statistics().receiver_waiting)
            asking.cancel()
            await then.produce(itemize)

    async with anyio.create_task_group() as tg:
        tg.start_soon(producer)
        with asking:
            await anext(c.receiver)
        result = await then.consume(c.receiver)
    return result


async def a_producer_function_working_as_its_first_ask_is_cancelled() -> str:
    then, asking = ThenATakenBackAsk(), anyio.CancelScope()

    @channel.producer
    async def numbers(itemize: Itemize[int, str]) -> None:
        asking.cancel()  # the first ask, which started this function
        await then.produce(itemize)

    async with numbers() as items:
        await settle()  # the producer waits for the first ask
        with asking:
            await anext(items)
        return await then.consume(items)


async def an_ask_cancelled_as_it_waits_after(before: str) -> str:
    """After an item taken at once, then the producer's itemize cancelled (or after a
    delegation), an ask that resumed nobody is cancelled as it waits."""
    c: Channel[int, str] = Channel()
    then, producing, asking = ThenATakenBackAsk(), anyio.CancelScope(), anyio.CancelScope()

    async def producer() -> None:
        async with c.sender as itemize:
            await wait_until(lambda: c.statistics().receiver_waiting)
            if before == "a delegation":
                await itemize.many([0])
            else:
                with producing:
                    await itemize(0)
            await wait_until(lambda: c.statistics().receiver_waiting)
            asking.cancel()
            await then.produce(itemize)

    async with anyio.create_task_group() as tg:
        tg.start_soon(producer)
        await wait_until(lambda: c.statistics().state == "open")
        assert await anext(c.receiver) == 0
        producing.cancel()
        with asking:
            await anext(c.receiver)
        result = await then.consume(c.receiver)
    return result


async def athrow_into_nowhere_before_a_cancelled_ask() -> str:
    """An exception thrown while no itemize waits goes nowhere, and stays there."""
    c: Channel[int, str] = Channel()
    events: list[str | None] = []
    producing = anyio.CancelScope()
    go_on = anyio.Event()

    async def producer() -> None:
        async with c.sender as itemize:
            with producing:
                await itemize(0)
            events.append("itemize(0) cancelled")
            await go_on.wait()
            try:
                events.append(await itemize(1))
                events.append(await itemize(2))
            except KeyError:
                events.append("KeyError")

    async with anyio.create_task_group() as tg:
        tg.start_soon(producer)
        assert await anext(c.receiver) == 0
        producing.cancel()
        await wait_until(lambda: bool(events))
        go_on.set()
        got = [await c.receiver.athrow(KeyError)]
        await _cancelled_ask(c)
        got.append(await c.receiver.asend("the next ask"))
        rest = await collect(c.receiver)
    return f"{got}, then {rest}, {events}"


# On trio the producer gets the reply of the ask after the one taken back; on asyncio and
# uvloop, where an ask is not taken back, the reply of the cancelled one.
THEN_A_TAKEN_BACK_ASK = (
    "[1, 2], then [], replies ['the next ask', None]",
    "[1, 2], then [], replies ['the cancelled ask', None]",
)

AFTER_A_CANCELLED_ASK = [  # the scenario, what it does on trio, and on asyncio and uvloop
    pytest.param(
        asking_again_after_a_cancelled_ask,
        "1, then [], replies ['the next ask', None]",
        "1, then [], replies ['the cancelled ask', None]",
        id="asking again",
    ),
    pytest.param(
        athrow_after_a_cancelled_ask,
        "1, then [], ['itemize(0) raised KeyError']",
        "1, then [], []",  # itemize(0) had returned: the exception goes nowhere
        id="athrow",
    ),
    pytest.param(
        closing_after_a_cancelled_ask,
        "itemize(0) raised ReceiverClosed",
        "itemize(1) raised ReceiverClosed",
        id="closing the receiver",
    ),
    pytest.param(
        cancelling_the_producer_after_a_cancelled_ask,
        "cancelled, then []",
        "itemize(0) returned, cancelled, then []",
        id="cancelling the producer",
    ),
    pytest.param(
        ending_the_block_after_a_cancelled_ask,
        "then [], replies [None, 'itemize(1) raised ChannelClosed']",
        "then [], replies ['the cancelled ask', 'itemize(1) raised ChannelClosed']",
        id="ending the block",
    ),
    pytest.param(
        a_producer_function_whose_first_ask_is_cancelled,
        "asked again, started, got 0",
        "started, asked again, got 0",
        id="a producer function's first ask",
    ),
    pytest.param(
        an_ask_cancelled_while_its_producer_works,
        "[1, 2], then [], replies ['the first ask', 'the next ask', None]",
        "[1, 2], then [], replies ['the first ask', 'the cancelled ask', None]",
        id="an ask cancelled while its producer works",
    ),
    pytest.param(
        athrow_into_nowhere_before_a_cancelled_ask,
        "[1, 2], then [], ['itemize(0) cancelled', 'the next ask', None]",
        "[1, 2], then [], ['itemize(0) cancelled', 'the cancelled ask', None]",
        id="athrow while no itemize waits",
    ),
    pytest.param(
        a_first_ask_cancelled_as_it_waits,
        *THEN_A_TAKEN_BACK_ASK,
        id="the first ask, cancelled as it waits",
    ),
    pytest.param(
        a_producer_function_working_as_its_first_ask_is_cancelled,
        *THEN_A_TAKEN_BACK_ASK,
        id="a producer function's first ask, cancelled as the function works",
    ),
    pytest.param(
        functools.partial(an_ask_cancelled_as_it_waits_after, "its itemize cancelled"),
        *THEN_A_TAKEN_BACK_ASK,
        id="an ask cancelled as it waits, after the producer's itemize was cancelled",
    ),
    pytest.param(
        functools.partial(an_ask_cancelled_as_it_waits_after, "a delegation"),
        *THEN_A_TAKEN_BACK_ASK,
        id="an ask cancelled as it waits, after a delegation",
    ),
]


@pytest.mark.parametrize(("scenario", "on_trio", "on_asyncio"), AFTER_A_CANCELLED_ASK)
async def test_what_follows_an_ask_cancelled_before_its_producer_ran(
    scenario: Callable[[], Awaitable[str]], on_trio: str, on_asyncio: str
) -> None:
    with anyio.fail_after(STEP):
        assert await under_several_schedules(scenario) == {on_trio if in_trio() else on_asyncio}


# --- 7. Misuse is loud: a channel belongs to the event loop that first uses it --------


def _run_on(runner: str, function: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    if runner == "trio":
        return trio.run(function)
    if runner == "uvloop":
        return uvloop.run(function())
    return asyncio.run(function())


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("asyncio", "asyncio"),
        ("uvloop", "asyncio"),
        ("asyncio", "trio"),
        ("trio", "uvloop"),
        ("trio", "trio"),
    ],
)
def test_a_channel_used_from_a_second_event_loop_is_refused(first: str, second: str) -> None:
    c: Channel[int] = Channel()  # created outside any event loop

    async def start() -> None:
        async with c.sender as itemize:
            c.receiver.close()
            with pytest.raises(ReceiverClosed):
                await itemize(1)

    async def use_again() -> None:
        with pytest.raises(ChannelError, match="belongs to another event loop"):
            await anext(c.receiver)

    _run_on(first, start)
    _run_on(second, use_again)


@pytest.mark.parametrize("flavour", ["asyncio", "uvloop"])
def test_a_second_loop_taking_turns_in_the_same_thread_is_refused(flavour: str) -> None:
    """Neither takes an item nor resumes the producer parked in the first loop."""
    c: Channel[int] = Channel()
    new_loop = uvloop.new_event_loop if flavour == "uvloop" else asyncio.new_event_loop
    first, second = new_loop(), new_loop()

    async def produce() -> None:
        async with c.sender as itemize:
            await itemize(1)
            await itemize(2)

    async def take() -> int:
        return await anext(c.receiver)

    try:
        task = first.create_task(produce())
        assert first.run_until_complete(take()) == 1
        for _ in range(2):
            with pytest.raises(ChannelError, match="belongs to another event loop"):
                second.run_until_complete(take())
            first.run_until_complete(asyncio.sleep(0))
            assert c.statistics() == ChannelStatistics("open", False, 1, 1)
        assert first.run_until_complete(take()) == 2
        c.receiver.close()
        first.run_until_complete(task)
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("runner", ["asyncio", "uvloop", "trio"])
def test_a_channel_created_outside_the_event_loop_works_inside_it(runner: str) -> None:
    c: Channel[int] = Channel()

    async def main() -> list[int]:
        async with anyio.create_task_group() as tg:
            tg.start_soon(produce, c, [1, 2])
            items = await collect(c.receiver)
        return items

    assert _run_on(runner, main) == [1, 2]


# --- Misuse is loud: one table --------------------------------------------------------
#
# `test_misuse_is_loud`: every misuse, with the exact exception type and the whole
# message; closing twice is harmless.


async def in_another_loop(
    function: Callable[[], Awaitable[Any]], *, other_kind: bool = False
) -> Any:
    """Run `function` in a new event loop, in a worker thread.

    Of the same kind as the running one, or with `other_kind`, trio under asyncio and
    asyncio under trio.
    """
    if in_trio():
        flavour = "asyncio" if other_kind else "trio"
    elif other_kind:
        flavour = "trio"
    else:
        flavour = "uvloop" if isinstance(asyncio.get_running_loop(), uvloop.Loop) else "asyncio"

    async def main() -> Any:
        return await function()

    def run() -> Any:
        if flavour == "trio":
            return trio.run(main)
        if flavour == "uvloop":
            return uvloop.run(main())
        return asyncio.run(main())

    return await anyio.to_thread.run_sync(run)


async def itemize_after_its_block(c: Channel[int, Any]) -> None:
    async with c.sender as itemize:
        pass
    await itemize(1)


async def itemize_kept_after_its_block_absorbed_receiver_closed(c: Channel[int, Any]) -> None:
    async with c.sender as itemize:
        c.receiver.close()
        await itemize(1)  # raises ReceiverClosed, which the block absorbs
    await itemize(2)  # the block has ended: ChannelClosed, not ReceiverClosed


async def itemize_many_after_its_block(c: Channel[int, Any]) -> None:
    async with c.sender as itemize:
        pass
    await itemize.many([1])


async def itemize_still_waiting_when_the_block_ends(c: Channel[int, Any]) -> None:
    errors: list[BaseException] = []

    async def straggler(itemize: Any) -> None:
        try:
            await itemize(1)
        except ChannelClosed as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg, c.sender as itemize:
        tg.start_soon(straggler, itemize)
        await settle()
    raise errors[0]


async def enter_the_sender_while_open(c: Channel[int, Any]) -> None:
    async with c.sender, c.sender:
        pass


async def enter_the_sender_after_it_ended(c: Channel[int, Any]) -> None:
    async with c.sender:
        pass
    async with c.sender:
        pass


async def iterate_from_two_tasks(c: Channel[int, Any]) -> None:
    async def first() -> None:
        with pytest.raises(ChannelClosed):  # woken by the close below
            await anext(c.receiver)

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        await settle()
        try:
            await anext(c.receiver)
        except ChannelError as exc:
            refused = exc
        c.receiver.close()
    raise refused


async def iterate_a_closed_receiver(c: Channel[int, Any]) -> None:
    await c.receiver.aclose()
    await anext(c.receiver)


async def asend_on_a_closed_receiver(c: Channel[int, Any]) -> None:
    c.receiver.close()
    await c.receiver.asend(None)


async def itemize_after_the_receiver_closed(c: Channel[int, Any]) -> None:
    errors: list[BaseException] = []
    async with c.sender as itemize:
        c.receiver.close()
        try:
            await itemize(1)
        except ReceiverClosed as exc:
            errors.append(exc)
            raise  # the block absorbs it
    raise errors[0]


async def itemize_many_after_the_receiver_closed(c: Channel[int, Any]) -> None:
    errors: list[BaseException] = []
    async with c.sender as itemize:
        c.receiver.close()
        try:
            await itemize.many([1, 2])
        except ReceiverClosed as exc:
            errors.append(exc)
            raise
    raise errors[0]


async def asend_a_value_before_the_first_item(c: Channel[int, Any]) -> None:
    await c.receiver.asend(1)


async def asend_a_value_before_the_first_item_the_block_open(c: Channel[int, Any]) -> None:
    async with c.sender:
        await c.receiver.asend(1)


async def athrow_before_the_first_item(c: Channel[int, Any]) -> None:
    await c.receiver.athrow(KeyError("too early"))


async def athrow_what_is_not_an_exception(c: Channel[int, Any]) -> None:
    await c.receiver.athrow("not an exception")  # type: ignore[arg-type]


async def athrow_an_exception_with_a_separate_value(c: Channel[int, Any]) -> None:
    await c.receiver.athrow(KeyError("k"), "value")


async def athrow_on_a_closed_receiver(c: Channel[int, Any]) -> None:
    c.receiver.close()
    await c.receiver.athrow(KeyError("k"))


async def batches_of_nothing(c: Channel[int, Any]) -> None:
    c.receiver.batches(0)


async def receive_in_a_second_event_loop(c: Channel[int, Any]) -> None:
    async with c.sender:  # binds the channel to this loop
        pass
    await in_another_loop(lambda: anext(c.receiver))


async def receive_in_a_loop_of_another_thread_while_the_block_is_open(
    c: Channel[int, Any],
) -> None:
    async with c.sender:  # binds the channel to this loop, which goes on running
        await in_another_loop(lambda: anext(c.receiver))


async def enter_the_sender_in_a_second_event_loop(c: Channel[int, Any]) -> None:
    with anyio.move_on_after(0):
        await anext(c.receiver)  # binds the channel to this loop

    async def enter() -> None:
        async with c.sender:
            pass

    await in_another_loop(enter)


async def itemize_in_a_second_event_loop(c: Channel[int, Any]) -> None:
    async with c.sender as itemize:
        await in_another_loop(lambda: itemize(1))


async def itemize_many_in_a_second_event_loop(c: Channel[int, Any]) -> None:
    async with c.sender as itemize:
        await in_another_loop(lambda: itemize.many([1]))


async def receive_in_an_event_loop_of_the_other_kind(c: Channel[int, Any]) -> None:
    async with c.sender:
        pass
    await in_another_loop(lambda: anext(c.receiver), other_kind=True)


async def use_after_its_loop_ended_in_a_new_loop_of_the_same_thread(c: Channel[int, Any]) -> None:
    async def bind() -> None:
        async with c.sender:
            pass

    on_trio = in_trio()

    def one_thread() -> None:  # two event loops, one after the other, in one thread
        if on_trio:
            trio.run(bind)
            trio.run(anext, c.receiver)
        else:
            asyncio.run(bind())
            asyncio.run(anext(c.receiver))

    await anyio.to_thread.run_sync(one_thread)


async def use_here_what_another_loop_bound(c: Channel[int, Any]) -> None:
    async def bind() -> None:
        async with c.sender:
            pass

    await in_another_loop(bind)
    await anext(c.receiver)


async def use_outside_any_event_loop(c: Channel[int, Any]) -> None:
    def outside() -> None:
        coroutine = c.receiver.__anext__()
        try:
            coroutine.send(None)
        finally:
            coroutine.close()

    await anyio.to_thread.run_sync(outside)


async def enter_a_producer_twice(c: Channel[int, Any]) -> None:
    @channel.producer
    async def numbers(itemize: Any) -> None:
        await itemize(1)

    stream = numbers()
    async with stream:
        pass
    async with stream:
        pass


async def close_twice(c: Channel[int, Any]) -> None:
    c.receiver.close()
    c.receiver.close()
    await c.receiver.aclose()
    async with c.receiver:
        pass
    assert "receiver closed" in repr(c)
    async with c.sender as itemize:  # the producer still just ends
        with pytest.raises(ReceiverClosed):
            await itemize(1)


async def close_after_a_clean_end(c: Channel[int, Any]) -> None:
    async with c.sender:
        pass
    with pytest.raises(StopAsyncIteration):
        await anext(c.receiver)
    c.receiver.close()
    c.receiver.close()
    with pytest.raises(ChannelClosed, match="receiver was closed"):
        await anext(c.receiver)


async def receiver_closed_of_another_channel(c: Channel[int, Any]) -> None:
    other: Channel[int, Any] = Channel()
    other.receiver.close()
    async with other.sender as other_itemize:
        try:
            await other_itemize(1)
        except ReceiverClosed as exc:
            foreign = exc
    async with c.sender:
        raise foreign  # ReceiverClosed of `other`: not this block's to absorb


async def iterate_a_failed_stream_again(c: Channel[int, Any]) -> None:
    with contextlib.suppress(Boom):
        async with c.sender:
            raise Boom("the block failed")
    with pytest.raises(SenderFailed):
        await anext(c.receiver)
    await anext(c.receiver)  # keeps failing: a truncated stream never looks complete


# The messages in full: they are what a user reads, so a change of wording is a change here.
AFTER_ITS_BLOCK = (
    "itemize was called after its sender block ended; call it only inside the "
    "`async with c.sender` block (a task that shares it must finish before the block exits)"
)
RECEIVER_WAS_CLOSED = "this receiver was closed; create a new Channel to receive again"
NOBODY_WILL_TAKE_IT = (
    "the receiver was closed, so nobody will take this item; stop producing "
    "(the sender block absorbs this exception)"
)
ANOTHER_LOOP = (
    "this channel belongs to another event loop (or trio run); "
    "create the Channel again inside the loop that uses it"
)

MISUSES = [
    pytest.param(itemize_after_its_block, ChannelClosed, AFTER_ITS_BLOCK),
    pytest.param(itemize_many_after_its_block, ChannelClosed, AFTER_ITS_BLOCK),
    pytest.param(
        itemize_kept_after_its_block_absorbed_receiver_closed, ChannelClosed, AFTER_ITS_BLOCK
    ),
    pytest.param(
        itemize_still_waiting_when_the_block_ends,
        ChannelClosed,
        "the sender block ended while this itemize was waiting, so its item was not "
        "delivered; make the tasks that share itemize finish inside the block "
        "(a task group does that)",
    ),
    pytest.param(
        enter_the_sender_while_open,
        ChannelClosed,
        "this channel's sender block is already open; "
        "share its itemize instead of entering the sender again",
    ),
    pytest.param(
        enter_the_sender_after_it_ended,
        ChannelClosed,
        "this channel's sender block has already ended; a channel carries one stream, "
        "so create a new Channel for another one",
    ),
    pytest.param(
        iterate_from_two_tasks,
        ChannelError,
        "another task is already waiting for an item from this receiver; a receiver has "
        "one consumer at a time (give each consumer its own channel, or fan items out "
        "from one consuming task)",
    ),
    pytest.param(iterate_a_closed_receiver, ChannelClosed, RECEIVER_WAS_CLOSED),
    pytest.param(asend_on_a_closed_receiver, ChannelClosed, RECEIVER_WAS_CLOSED),
    pytest.param(itemize_after_the_receiver_closed, ReceiverClosed, NOBODY_WILL_TAKE_IT),
    pytest.param(itemize_many_after_the_receiver_closed, ReceiverClosed, NOBODY_WILL_TAKE_IT),
    *[
        pytest.param(
            asend_early,
            ChannelError,
            "asend() with a value before the first item: no itemize is waiting for a reply "
            "yet; ask for the first item with anext() or asend(None)",
        )
        for asend_early in (
            asend_a_value_before_the_first_item,
            asend_a_value_before_the_first_item_the_block_open,
        )
    ],
    pytest.param(
        athrow_before_the_first_item,
        ChannelError,
        "athrow() before the first item: no itemize is waiting for it yet; "
        "ask for the first item with anext() or asend(None)",
    ),
    pytest.param(
        athrow_what_is_not_an_exception,
        TypeError,
        "exceptions must be classes or instances deriving from BaseException, not str",
    ),
    pytest.param(
        athrow_an_exception_with_a_separate_value,
        TypeError,
        "instance exception may not have a separate value",
    ),
    pytest.param(athrow_on_a_closed_receiver, ChannelClosed, RECEIVER_WAS_CLOSED),
    pytest.param(batches_of_nothing, ValueError, "max_items must be at least 1, not 0"),
    pytest.param(receive_in_a_second_event_loop, ChannelError, ANOTHER_LOOP),
    pytest.param(
        receive_in_a_loop_of_another_thread_while_the_block_is_open, ChannelError, ANOTHER_LOOP
    ),
    pytest.param(enter_the_sender_in_a_second_event_loop, ChannelError, ANOTHER_LOOP),
    pytest.param(itemize_in_a_second_event_loop, ChannelError, ANOTHER_LOOP),
    pytest.param(itemize_many_in_a_second_event_loop, ChannelError, ANOTHER_LOOP),
    pytest.param(use_here_what_another_loop_bound, ChannelError, ANOTHER_LOOP),
    pytest.param(
        use_after_its_loop_ended_in_a_new_loop_of_the_same_thread, ChannelError, ANOTHER_LOOP
    ),
    pytest.param(receive_in_an_event_loop_of_the_other_kind, ChannelError, ANOTHER_LOOP),
    pytest.param(
        use_outside_any_event_loop,
        ChannelError,
        "a channel can only be used from a task running on asyncio, uvloop or trio",
    ),
    pytest.param(
        enter_a_producer_twice,
        ChannelError,
        "this producer was already entered; call the producer function again for a new stream",
    ),
    pytest.param(receiver_closed_of_another_channel, ReceiverClosed, NOBODY_WILL_TAKE_IT),
    pytest.param(
        iterate_a_failed_stream_again,
        SenderFailed,
        "the sender block ended with Boom('the block failed'), so the stream is incomplete",
    ),
    pytest.param(close_twice, None, "", id="close_twice-harmless"),
    pytest.param(close_after_a_clean_end, None, "", id="close_after_a_clean_end-harmless"),
]


@pytest.mark.parametrize(("misuse", "expected", "message"), MISUSES)
async def test_misuse_is_loud(
    misuse: Callable[[Channel[int, Any]], Awaitable[None]],
    expected: type[BaseException] | None,
    message: str,
) -> None:
    c: Channel[int, Any] = Channel()
    if expected is None:  # harmless: no exception at all
        with anyio.fail_after(RUN_LIMIT):
            await misuse(c)
        return
    with pytest.raises(BaseException) as caught:  # noqa: PT011 - the exact type is checked below
        with anyio.fail_after(RUN_LIMIT):
            await misuse(c)
    assert type(caught.value) is expected, repr(caught.value)
    assert str(caught.value) == message


# --- 8. Backends: detected when a channel is first used ------------------------------


@pytest.mark.parametrize("host", ["asyncio", "uvloop"])
def test_trio_in_guest_mode_on_an_asyncio_loop_gets_trio_waiters(host: str) -> None:
    """README: the backend is detected when the channel is first used; here that is trio."""

    async def trio_main() -> list[int]:
        c: Channel[int, Any] = Channel()

        async def produce() -> None:
            async with c.sender as itemize:
                for i in range(3):
                    await itemize(i)

        with trio.fail_after(RUN_LIMIT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(produce)
                return [i async for i in c.receiver]

    async def host_main() -> list[int]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        trio.lowlevel.start_guest_run(
            trio_main,
            run_sync_soon_threadsafe=loop.call_soon_threadsafe,
            done_callback=done.set_result,
            host_uses_signal_set_wakeup_fd=True,
        )
        return (await done).unwrap()  # type: ignore[no-any-return]

    runner = uvloop.run if host == "uvloop" else asyncio.run
    assert runner(host_main()) == [0, 1, 2]


async def test_a_delegation_cut_short_by_the_end_of_the_block() -> None:
    """Another task's itemize.many, delegating when the block ends: ChannelClosed, closed."""
    c: Channel[int, Any] = Channel()
    happened: list[str] = []

    def numbers() -> Generator[int, Any, None]:
        try:
            yield from itertools.count()
        finally:
            happened.append("generator closed")

    async def delegate(itemize: Any) -> None:
        try:
            await itemize.many(numbers())
        except ChannelClosed as exc:
            happened.append(f"ChannelClosed: {exc}")

    with anyio.fail_after(RUN_LIMIT):
        async with anyio.create_task_group() as tg:
            async with c.sender as itemize:
                tg.start_soon(delegate, itemize)
                assert await anext(c.receiver) == 0  # delegating now
            assert [item async for item in c.receiver] == []  # the block ended cleanly
    assert happened[0] == "generator closed"
    assert happened[1].startswith("ChannelClosed: the sender block ended while"), happened


# --- Where a channel differs from an async generator ----------------------------------
#
# Each test shows the generator's behaviour beside the channel's, as the README lists them.


async def test_difference_the_producer_runs_before_the_first_ask() -> None:
    log: list[str] = []

    async def generator() -> AsyncGenerator[int]:
        log.append("generator started")
        yield 1

    agen = generator()
    await settle()
    assert log == []  # a generator starts at the first anext
    assert await anext(agen) == 1
    await agen.aclose()

    c: Channel[int] = Channel()

    async def producer() -> None:
        async with c.sender as itemize:
            log.append("producer started")
            await itemize(1)

    log.clear()
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            await settle()
            assert log == ["producer started"]  # its own task: it runs up to the first itemize
            assert await collect(c.receiver) == [1]


async def test_difference_aclose_never_suspends_and_the_cleanup_fails_in_the_producer() -> None:
    async def generator() -> AsyncGenerator[int]:
        try:
            yield 1
        finally:
            raise KeyError("cleanup failed")

    agen = generator()
    assert await anext(agen) == 1
    with pytest.raises(KeyError):
        await agen.aclose()  # a generator's cleanup runs, and fails, inside aclose()

    c: Channel[int] = Channel()
    log: list[str] = []

    async def producer() -> None:
        async with c.sender as itemize:
            try:
                await itemize(1)
            finally:
                log.append("cleanup")
                raise KeyError("cleanup failed")

    with anyio.fail_after(STEP), pytest.raises(ExceptionGroup) as group:
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            assert await anext(c.receiver) == 1
            await c.receiver.aclose()  # returns at once, with no error
            assert log == []  # the cleanup runs later, in the producer's task
    assert log == ["cleanup"]
    assert [type(e) for e in group.value.exceptions] == [KeyError]


@pytest.mark.parametrize("end", ["failed", "closed"])
async def test_difference_asking_again_after_the_end_raises_again(end: str) -> None:
    async def generator() -> AsyncGenerator[int]:
        yield 1
        raise KeyError("failed")

    agen = generator()
    assert await anext(agen) == 1
    if end == "failed":
        with pytest.raises(KeyError):
            await anext(agen)
    else:
        await agen.aclose()
    with pytest.raises(StopAsyncIteration):
        await anext(agen)  # a generator gives StopAsyncIteration from then on

    c: Channel[int] = Channel()

    async def producer() -> None:
        with contextlib.suppress(KeyError):
            async with c.sender as itemize:
                await itemize(1)
                raise KeyError("failed")

    expected = SenderFailed if end == "failed" else ChannelClosed
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            assert await anext(c.receiver) == 1
            if end == "closed":
                await c.receiver.aclose()
            for _ in range(3):  # the channel says why, every time
                with pytest.raises(expected):
                    await anext(c.receiver)


async def test_difference_itemize_in_the_cleanup_after_the_receiver_closed_raises_at_once() -> None:
    async def generator() -> AsyncGenerator[int]:
        try:
            yield 1
        finally:
            yield 2  # during aclose(): RuntimeError

    agen = generator()
    assert await anext(agen) == 1
    with pytest.raises(RuntimeError, match="async generator ignored GeneratorExit"):
        await agen.aclose()

    c: Channel[int] = Channel()
    raised: list[str] = []

    async def producer() -> None:
        async with c.sender as itemize:
            try:
                await itemize(1)
            finally:
                for attempt in (itemize(2), itemize.many([3])):
                    try:
                        await attempt
                    except ReceiverClosed:
                        raised.append("ReceiverClosed")

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            assert await anext(c.receiver) == 1
            await c.receiver.aclose()
    assert raised == ["ReceiverClosed", "ReceiverClosed"]


async def test_difference_asend_with_a_value_before_the_first_item_raises_channel_error() -> None:
    async def generator() -> AsyncGenerator[int]:
        yield 1

    agen = generator()
    with pytest.raises(TypeError):
        await agen.asend(5)  # type: ignore[arg-type]
    await agen.aclose()

    c: Channel[int, int] = Channel()
    replies: list[int | None] = []
    with pytest.raises(ChannelError, match=r"^asend\(\) with a value before the first item"):
        await c.receiver.asend(5)

    async def producer() -> None:
        async with c.sender as itemize:
            replies.append(await itemize(1))

    with anyio.fail_after(STEP):  # and the channel is still usable
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            assert await c.receiver.asend(None) == 1
            with pytest.raises(StopAsyncIteration):
                await c.receiver.asend(5)
    assert replies == [5]


@pytest.mark.parametrize("stop", [StopAsyncIteration, StopIteration])
async def test_difference_a_producer_raising_a_stop_exception_fails_the_stream(
    stop: type[Exception],
) -> None:
    async def generator() -> AsyncGenerator[int]:
        yield 1
        raise stop("from the producer")

    agen = generator()
    assert await anext(agen) == 1
    with pytest.raises(RuntimeError, match="raised Stop"):
        await anext(agen)  # a generator turns it into RuntimeError

    c: Channel[int] = Channel()

    async def producer() -> None:
        with contextlib.suppress(stop):
            async with c.sender as itemize:
                await itemize(1)
                raise stop("from the producer")

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            assert await anext(c.receiver) == 1
            with pytest.raises(SenderFailed) as failed:
                await anext(c.receiver)  # never a clean end
    assert type(failed.value.__cause__) is stop
    assert failed.value.__cause__.args == ("from the producer",)


# --- Duplex: x = yield item becomes x = await itemize(item) -------------------------


async def test_asend_makes_the_waiting_itemize_return_the_value() -> None:
    c: Channel[str, int] = Channel()
    replies: list[int | None] = []

    async def letters() -> None:
        async with c.sender as itemize:
            replies.append(await itemize("A"))
            replies.append(await itemize("B"))

    received: list[str] = []
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(letters)
            received.append(await c.receiver.asend(None))
            received.append(await c.receiver.asend(10))
            with pytest.raises(StopAsyncIteration):
                await c.receiver.asend(20)
    assert received == ["A", "B"]
    assert replies == [10, 20]


async def test_anext_makes_itemize_return_none() -> None:
    c: Channel[str, int] = Channel()
    replies: list[int | None] = []

    async def letters() -> None:
        async with c.sender as itemize:
            replies.append(await itemize("A"))

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(letters)
            assert await collect(c.receiver) == ["A"]
    assert replies == [None]


async def test_asend_with_a_value_before_the_first_item_is_refused() -> None:
    c: Channel[str, int] = Channel()
    with pytest.raises(ChannelError, match=r"before the first item.*anext\(\) or asend\(None\)"):
        await c.receiver.asend(1)


async def test_asend_replies_to_the_itemize_whose_item_was_taken_while_others_wait() -> None:
    c: Channel[str, int] = Channel()
    replies: dict[str, int | None] = {}

    async def send(itemize: Itemize[str, int], item: str) -> None:
        replies[item] = await itemize(item)

    async def producer() -> None:
        async with c.sender as itemize, anyio.create_task_group() as workers:
            workers.start_soon(send, itemize, "a")
            await settle()
            workers.start_soon(send, itemize, "b")
            await settle()

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            await wait_until(lambda: c.statistics().producers_waiting == 2)
            assert await anext(c.receiver) == "a"
            assert await c.receiver.asend(1) == "b"  # "b" still waits in the queue
            with pytest.raises(StopAsyncIteration):
                await c.receiver.asend(2)
    assert replies == {"a": 1, "b": 2}


# --- athrow: the whole async-generator protocol ------------------------------------


def inner_letters() -> Generator[str, None, str]:
    """A delegated generator that catches one KeyError thrown into it."""
    try:
        yield "inner"
    except KeyError:
        yield "inner caught"
    return "inner returned"


async def athrow_reference() -> AsyncIterator[str]:
    """An async generator; it delegates by hand, as ``yield from`` would."""
    try:
        yield "a"
    except KeyError as exc:
        yield f"caught {exc.args[0]}"
    delegated = inner_letters()
    value = next(delegated)
    while True:
        try:
            try:
                yield value
            except BaseException as exc:  # thrown in, passed on
                value = delegated.throw(exc)
            else:
                value = next(delegated)
        except StopIteration as stop:
            result = stop.value
            break
    yield result


async def athrow_producer(c: Channel[str]) -> None:
    """``athrow_reference`` as a sender block."""
    with contextlib.suppress(ValueError):  # the exception that ends it
        async with c.sender as itemize:
            try:
                await itemize("a")
            except KeyError as exc:
                await itemize(f"caught {exc.args[0]}")
            result = await itemize.many(inner_letters())
            await itemize(result)


async def drive_with_athrow(agen: Any) -> list[str]:
    answers = [await anext(agen), await agen.athrow(KeyError("k"))]
    answers.append(await anext(agen))  # "inner", from the delegation
    answers.append(await agen.athrow(KeyError))  # into the delegated generator's throw()
    answers.append(await anext(agen))  # the delegation returned its value
    try:
        await agen.athrow(ValueError("stop"))
    except (ValueError, SenderFailed) as end:
        answers.append(f"{type(end).__name__} from {end.__cause__!r}")
    return answers


async def test_athrow_behaves_as_on_an_async_generator() -> None:
    expected = ["a", "caught k", "inner", "inner caught", "inner returned"]
    assert await drive_with_athrow(athrow_reference()) == [*expected, "ValueError from None"]
    c: Channel[str] = Channel()
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(athrow_producer, c)
            answers = await drive_with_athrow(c.receiver)
    # An exception that ends the block fails the stream, as any failed block does.
    assert answers == [*expected, "SenderFailed from ValueError('stop')"]
    assert c.statistics().items_delivered == len(expected)  # "inner caught" counts too


@pytest.mark.parametrize("generator_does", ["not catch it", "catch it and return"])
async def test_athrow_into_a_delegation_that_ends_on_it_ends_many(generator_does: str) -> None:
    c: Channel[str] = Channel()
    outcome: list[str] = []

    def letters() -> Generator[str, None, str]:
        try:
            yield "a"
            yield "b"
        except KeyError:
            if generator_does == "not catch it":
                raise
        return "returned"

    async def producer() -> None:
        async with c.sender as itemize:
            try:
                outcome.append(await itemize.many(letters()))
            except KeyError as exc:
                outcome.append(f"many raised {exc!r}")
            await itemize("after")

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            assert await anext(c.receiver) == "a"
            assert await c.receiver.athrow(KeyError("k")) == "after"
            assert await collect(c.receiver) == []
    expected = "many raised KeyError('k')" if generator_does == "not catch it" else "returned"
    assert outcome == [expected]


async def test_athrow_after_a_request_cancelled_with_items_taken_returns_them_first() -> None:
    """As a retried ``asend``: the items a cancelled batch took come first, nothing thrown."""
    c: Channel[int] = Channel()
    thrown: list[int] = []

    reading = Reading(cancel_at=100)

    def numbers() -> Iterator[int]:
        for i in range(1000):
            reading.pulling(i)
            try:
                yield i
            except KeyError:
                thrown.append(i)

    async def producer() -> None:
        async with c.sender as itemize:
            await itemize.many(numbers())

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            assert await anext(c.receiver) == 0
            await read_a_batch_cut_short(c, reading)  # took 1 to 255, kept
            assert await c.receiver.athrow(KeyError) == 1
            assert [await anext(c.receiver) for _ in range(2, 256)] == list(range(2, 256))
            assert thrown == []
            assert await c.receiver.athrow(KeyError) == 256  # into the generator, at 255
            assert thrown == [255]
            await c.receiver.aclose()


async def test_athrow_into_an_iterator_without_throw_raises_from_many() -> None:
    c: Channel[int] = Channel()
    caught: list[str] = []

    async def producer() -> None:
        async with c.sender as itemize:
            try:
                await itemize.many(iter([1, 2, 3]))
            except KeyError as exc:
                caught.append(exc.args[0])
            await itemize(10)

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            assert await anext(c.receiver) == 1
            assert await c.receiver.athrow(KeyError("k")) == 10
            assert await collect(c.receiver) == []
    assert caught == ["k"]


@pytest.mark.parametrize("waiting_in", ["itemize", "many of an iterator without throw"])
async def test_athrow_of_stop_iteration_reaches_the_producer_as_runtime_error(
    waiting_in: str,
) -> None:
    """As Python turns a StopIteration that leaves a coroutine into RuntimeError."""
    c: Channel[int] = Channel()
    seen: list[BaseException] = []

    async def producer() -> None:
        async with c.sender as itemize:
            try:
                if waiting_in == "itemize":
                    await itemize(1)
                else:
                    await itemize.many(iter([1, 2]))
            except RuntimeError as exc:
                seen.append(exc)
            await itemize(10)

    stop = StopIteration("thrown")
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            assert await anext(c.receiver) == 1
            assert await c.receiver.athrow(stop) == 10
            assert await collect(c.receiver) == []
    assert [str(exc) for exc in seen] == ["coroutine raised StopIteration"]
    assert seen[0].__cause__ is stop


class ClosableIterator:
    """An iterator with a ``close()`` (not a generator) that fails on its second item."""

    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.count = 0

    def __iter__(self) -> ClosableIterator:
        return self

    def __next__(self) -> int:
        self.count += 1
        if self.count == 2:
            raise ValueError("next failed")
        return self.count

    def close(self) -> None:
        self.events.append("closed")


@pytest.mark.parametrize("ended_by", ["its own error", "athrow"])
async def test_many_does_not_close_an_iterator_that_ended_itself(ended_by: str) -> None:
    """As ``yield from`` leaves alone an iterator that raised, or that had no ``throw()``."""
    c: Channel[int] = Channel()
    events: list[str] = []

    async def producer() -> None:
        async with c.sender as itemize:
            try:
                await itemize.many(ClosableIterator(events))
            except (ValueError, KeyError) as exc:
                events.append(f"many raised {exc!r}")
            await itemize(10)

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            assert await anext(c.receiver) == 1
            if ended_by == "athrow":
                assert await c.receiver.athrow(KeyError("k")) == 10
            else:
                assert await anext(c.receiver) == 10
            assert await collect(c.receiver) == []
    error = "KeyError('k')" if ended_by == "athrow" else "ValueError('next failed')"
    assert events == [f"many raised {error}"]


async def test_athrow_goes_to_the_producer_whose_item_was_taken_last() -> None:
    c: Channel[str] = Channel()
    seen: list[str] = []

    async def send(itemize: Itemize[str], item: str) -> None:
        try:
            await itemize(item)
        except KeyError:
            seen.append(f"{item} got KeyError")

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg, c.sender as itemize:
            for item in "xy":
                tg.start_soon(send, itemize, item)
                await settle()
            assert await anext(c.receiver) == "x"
            assert await c.receiver.athrow(KeyError) == "y"  # the next in line
            await settle()
            assert seen == ["x got KeyError"]
            assert c.statistics().producers_waiting == 1  # "y" waits for the next ask


async def test_athrow_accepts_a_class_a_class_and_value_or_an_instance() -> None:
    c: Channel[str] = Channel()
    seen: list[BaseException] = []
    given = KeyError("instance")

    async def producer() -> None:
        async with c.sender as itemize:
            for i in range(4):
                try:
                    await itemize(str(i))
                except KeyError as exc:
                    seen.append(exc)

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            assert await anext(c.receiver) == "0"
            assert await c.receiver.athrow(KeyError) == "1"
            assert await c.receiver.athrow(KeyError, "value") == "2"
            assert await c.receiver.athrow(KeyError, given) == "3"  # the instance itself
            with pytest.raises(StopAsyncIteration):
                await anext(c.receiver)
    assert [repr(exc) for exc in seen] == ["KeyError()", "KeyError('value')", repr(given)]
    assert seen[2] is given


def frames_of(traceback: types.TracebackType | None) -> list[str]:
    names = []
    while traceback is not None:
        names.append(traceback.tb_frame.f_code.co_name)
        traceback = traceback.tb_next
    return names


async def test_athrow_keeps_the_traceback_it_is_given_or_that_the_exception_has() -> None:
    def fail_here() -> None:
        raise KeyError("with a traceback")

    try:
        fail_here()
    except KeyError as caught:
        raised = caught
    c: Channel[str] = Channel()
    seen: list[list[str]] = []

    async def producer() -> None:
        async with c.sender as itemize:
            for item in "abc":
                try:
                    await itemize(item)
                except KeyError as exc:
                    seen.append(frames_of(exc.__traceback__))

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            assert await anext(c.receiver) == "a"
            assert await c.receiver.athrow(raised) == "b"  # its own traceback
            traceback = raised.__traceback__
            assert await c.receiver.athrow(KeyError("fresh"), None, traceback) == "c"
            await c.receiver.aclose()
    assert [frames[-1] for frames in seen] == ["fail_here", "fail_here"]


async def test_athrow_before_the_first_item_is_refused_and_leaves_the_channel_usable() -> None:
    c: Channel[str] = Channel()
    with pytest.raises(ChannelError):  # the misuse table has its message
        await c.receiver.athrow(KeyError("too early"))
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(produce, c, ["a"])
            assert await collect(c.receiver) == ["a"]


@pytest.mark.parametrize(
    ("end", "expected"),
    [("clean", StopAsyncIteration), ("failed", SenderFailed), ("closed", ChannelClosed)],
)
async def test_athrow_after_the_end_raises_as_asend_does(
    end: str, expected: type[BaseException]
) -> None:
    c: Channel[str] = Channel()

    async def producer() -> None:
        with contextlib.suppress(KeyError):
            async with c.sender as itemize:
                await itemize("a")
                if end == "failed":
                    raise KeyError("the block failed")

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            assert await anext(c.receiver) == "a"
            if end == "closed":
                c.receiver.close()
            else:
                with pytest.raises(expected):
                    await anext(c.receiver)
    with pytest.raises(expected):
        await c.receiver.athrow(ValueError("late"))
    with pytest.raises(expected):
        await c.receiver.asend(None)


def test_a_receiver_is_an_async_generator() -> None:
    c: Channel[int] = Channel()
    assert isinstance(c.receiver, collections.abc.AsyncGenerator)


# --- itemize.many: delegation like yield from ---------------------------------------


async def test_many_delivers_every_item_of_an_iterable_in_order() -> None:
    c: Channel[int] = Channel()

    async def producer() -> None:
        async with c.sender as itemize:
            await itemize(-1)
            await itemize.many(range(1000))
            await itemize.many([])
            await itemize(1000)

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            assert await collect(c.receiver) == list(range(-1, 1001))
    assert c.statistics().items_delivered == 1002


async def test_many_returns_the_generator_return_value_and_passes_replies_to_send() -> None:
    c: Channel[str, int] = Channel()
    seen: list[int | None] = []
    returned: list[str] = []

    def letters() -> Generator[str, int | None, str]:
        for letter in "xyz":
            seen.append((yield letter))
        return "done"

    async def producer() -> None:
        async with c.sender as itemize:
            returned.append(await itemize.many(letters()))

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            assert await c.receiver.asend(None) == "x"
            assert await c.receiver.asend(1) == "y"
            assert await c.receiver.asend(2) == "z"
            with pytest.raises(StopAsyncIteration):
                await c.receiver.asend(3)
    assert seen == [1, 2, 3]
    assert returned == ["done"]


async def test_many_returns_only_when_the_receiver_asks_for_more() -> None:
    c: Channel[int] = Channel()
    progress: list[str] = []

    async def producer() -> None:
        async with c.sender as itemize:
            await itemize.many([1, 2])
            progress.append("many returned")

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            assert await anext(c.receiver) == 1
            assert await anext(c.receiver) == 2
            await settle()
            assert progress == []
            with pytest.raises(StopAsyncIteration):
                await anext(c.receiver)
    assert progress == ["many returned"]


async def test_an_exception_in_the_iterable_surfaces_from_many_in_the_producer() -> None:
    c: Channel[int] = Channel()
    caught: list[str] = []

    def failing() -> Iterator[int]:
        yield 1
        raise LookupError("bad source")

    async def producer() -> None:
        async with c.sender as itemize:
            try:
                await itemize.many(failing())
            except LookupError as exc:
                caught.append(str(exc))
            await itemize(2)

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            assert await collect(c.receiver) == [1, 2]
    assert caught == ["bad source"]


async def test_an_uncaught_iterable_exception_fails_the_stream() -> None:
    c: Channel[int] = Channel()

    def failing() -> Iterator[int]:
        raise LookupError("bad source")
        yield 1

    async def producer() -> None:
        with pytest.raises(LookupError):
            async with c.sender as itemize:
                await itemize.many(failing())

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            with pytest.raises(SenderFailed) as failed:
                await collect(c.receiver)
    assert isinstance(failed.value.__cause__, LookupError)


async def test_closing_the_receiver_during_many_closes_the_generator() -> None:
    c: Channel[int] = Channel()
    events: list[str] = []

    def numbers() -> Iterator[int]:
        try:
            yield from range(100)
        finally:
            events.append("generator closed")

    async def producer() -> None:
        async with c.sender as itemize:
            try:
                await itemize.many(numbers())
            except ReceiverClosed:
                events.append("many raised ReceiverClosed")
                raise

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            async with c.receiver:
                assert [await anext(c.receiver) for _ in range(3)] == [0, 1, 2]
    assert events == ["generator closed", "many raised ReceiverClosed"]


def producers_in_line(c: Channel[int], count: int) -> Callable[[], Coroutine[Any, Any, None]]:
    """A sender block whose ``count`` tasks share ``itemize``, each handing over its number."""

    async def producer() -> None:
        async with c.sender as itemize, anyio.create_task_group() as tg:
            for i in range(count):
                tg.start_soon(itemize, i)

    return producer


def _longest_run(steps: list[int]) -> int:
    """The most items taken at one scheduling point count: without passing another."""
    return max(len(list(run)) for _, run in itertools.groupby(steps))


@pytest.mark.parametrize("size", [None, 1, 2, 100, 255, 256, 257, 1000], ids=str)
async def test_a_receiver_pulling_a_delegation_passes_a_scheduling_point_every_256_items(
    size: int | None,
) -> None:
    """``async for`` (size None) or ``batches(size)``: never more than 256 items in one step."""
    c: Channel[int] = Channel()
    stepper = Stepper(-1, lambda: None)  # counts the scheduling points of every task
    steps: list[int] = []  # the count when each item was pulled

    def numbers() -> Iterator[int]:
        for i in itertools.count():
            steps.append(stepper.count)
            yield i

    async def producer() -> None:
        async with c.sender as itemize:
            await itemize.many(numbers())

    received: list[int] = []
    with anyio.fail_after(STEP), counting_scheduling_points(stepper, seed=0):
        stepper.armed = True
        async with anyio.create_task_group() as tg, c.receiver:
            tg.start_soon(producer)
            reader = c.receiver if size is None else c.receiver.batches(size)
            async for got in reader:
                received += [got] if isinstance(got, int) else got
                if len(received) >= 3000:
                    break
    assert received == list(range(len(received)))
    assert _longest_run(steps) == 256


async def test_items_of_producers_waiting_in_line_pass_a_scheduling_point_every_256_items() -> None:
    """Queued items are taken without waiting too, so the receiver passes points there too."""
    c: Channel[int] = Channel()
    stepper = Stepper(-1, lambda: None)
    steps: list[int] = []
    with anyio.fail_after(STEP), counting_scheduling_points(stepper, seed=0):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producers_in_line(c, 600))
            await wait_until(lambda: c.statistics().producers_waiting == 600)
            stepper.armed = True
            received = []
            async for item in c.receiver:
                steps.append(stepper.count)
                received.append(item)
    assert sorted(received) == list(range(600))
    assert _longest_run(steps) == 256


@pytest.mark.parametrize("deadline", ["anyio", "backend"])
@pytest.mark.parametrize("size", [1, 2, 100, 255, 256, 257, 1000])
async def test_batches_of_an_endless_delegation_end_on_a_timeout(size: int, deadline: str) -> None:
    """The receiver never takes items for ever without a scheduling point: a timeout fires."""
    c: Channel[int] = Channel()

    async def producer() -> None:
        async with c.sender as itemize:
            await itemize.many(itertools.count())

    received: list[int] = []
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg, c.receiver:
            tg.start_soon(producer)
            with pytest.raises((TimeoutError, trio.TooSlowError)):
                async with _timeout(deadline, 0.05):
                    async for batch in c.receiver.batches(size):
                        received += batch
            # What the batch cut short by the timeout had taken comes next: nothing is lost.
            received += await anext(c.receiver.batches(size))
    assert received == list(range(len(received)))


@contextlib.asynccontextmanager
async def _timeout(how: str, seconds: float) -> AsyncIterator[None]:
    """anyio's ``fail_after``, or the backend's own timeout (trio's raises TooSlowError)."""
    if how == "anyio":
        with anyio.fail_after(seconds):
            yield
    elif in_trio():
        with trio.fail_after(seconds):
            yield
    else:
        async with asyncio.timeout(seconds):
            yield


class Reading:
    """A cancel scope for the receiver that a delegated generator cancels as it yields an item.

    The generator runs in the receiver's task, so the cancellation reaches the receiver
    at its next scheduling point, whatever the backend's order of tasks.
    """

    def __init__(self, cancel_at: int) -> None:
        self.scope = anyio.CancelScope()
        self.cancel_at = cancel_at

    def pulling(self, i: int) -> None:
        if i == self.cancel_at:
            self.scope.cancel()


def delegating_in_a_scope(
    c: Channel[Any],
    count: int,
    pulled: list[int],
    scopes: list[anyio.CancelScope],
    reading: Reading | None = None,
) -> Callable[[], Coroutine[Any, Any, None]]:
    """A producer that delegates to ``range(count)`` in a cancel scope, then gives "after"."""

    def numbers() -> Generator[int]:
        for i in range(count):
            pulled.append(i)
            if reading is not None:
                reading.pulling(i)
            yield i

    async def producer() -> None:
        async with c.sender as itemize:
            with anyio.CancelScope() as scope:
                scopes.append(scope)
                await itemize.many(numbers())
            await itemize("after")

    return producer


async def test_a_delegation_cancelled_before_its_task_runs_again_gives_no_more_items() -> None:
    """On asyncio the producer's future is cancelled at once and its task resumes later."""
    c: Channel[Any] = Channel()
    pulled: list[int] = []
    scopes: list[anyio.CancelScope] = []
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(delegating_in_a_scope(c, 5, pulled, scopes))
            assert await anext(c.receiver) == 0
            scopes[0].cancel()  # the producer has not run since
            assert await anext(c.receiver) == "after"
            assert await collect(c.receiver) == []
    assert pulled == [0]


async def read_a_batch_cut_short(c: Channel[Any], reading: Reading) -> None:
    """Read a batch of a running delegation whose generator cancels ``reading`` meanwhile."""
    with reading.scope:
        await anext(c.receiver.batches(1000))
    assert reading.scope.cancelled_caught


async def test_a_batch_cut_short_keeps_its_items_for_the_next_requests() -> None:
    c: Channel[Any] = Channel()
    pulled: list[int] = []
    reading = Reading(cancel_at=100)
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(delegating_in_a_scope(c, 1000, pulled, [], reading))
            assert await anext(c.receiver) == 0
            await read_a_batch_cut_short(c, reading)
            assert len(pulled) == 256  # the batch took 1 to 255; cancelled at its next point
            assert await anext(c.receiver) == 1  # kept, in order
            assert await anext(c.receiver.batches(100)) == list(range(2, 102))
            assert await anext(c.receiver.batches(1000)) == list(range(102, 1000))
            assert await collect(c.receiver) == ["after"]


async def test_a_batch_after_kept_items_pulls_nothing_from_a_cancelled_delegation() -> None:
    c: Channel[Any] = Channel()
    pulled: list[int] = []
    scopes: list[anyio.CancelScope] = []
    reading = Reading(cancel_at=100)
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(delegating_in_a_scope(c, 1000, pulled, scopes, reading))
            assert await anext(c.receiver) == 0
            await read_a_batch_cut_short(c, reading)
            scopes[0].cancel()  # the producer has not run since
            batches = aiter(c.receiver.batches(1000))
            assert await anext(batches) == list(range(1, 256))  # the kept items, no more
            assert await anext(batches) == ["after"]
    assert pulled == list(range(256))


async def test_a_consumer_reading_a_long_many_stream_can_be_cancelled_without_loss() -> None:
    c: Channel[int] = Channel()
    received: list[int] = []

    async def producer() -> None:
        async with c.sender as itemize:
            await itemize.many(range(5000))

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            with anyio.CancelScope() as scope:
                async for item in c.receiver:
                    received.append(item)
                    if item == 1000:
                        tg.start_soon(_cancel_later, scope)
            assert scope.cancelled_caught
            received += await collect(c.receiver)
    assert received == list(range(5000))


async def _cancel_later(scope: anyio.CancelScope) -> None:
    scope.cancel()


async def test_many_from_several_tasks_and_single_items_keep_arrival_order() -> None:
    c: Channel[str] = Channel()

    async def producer() -> None:
        async with c.sender as itemize, anyio.create_task_group() as workers:
            workers.start_soon(itemize.many, ["a1", "a2"])
            await settle()
            workers.start_soon(itemize, "b")
            await settle()
            workers.start_soon(itemize.many, ["c1", "c2"])
            await settle()

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            await settle()
            assert await collect(c.receiver) == ["a1", "a2", "b", "c1", "c2"]


async def test_many_still_delegating_when_the_block_ends_raises_channel_closed() -> None:
    c: Channel[int] = Channel()
    outcome: list[str] = []

    async def delegate(itemize: Itemize[int]) -> None:
        try:
            await itemize.many(range(10))
        except ChannelClosed as exc:
            outcome.append(str(exc))

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg, c.sender as itemize:
            tg.start_soon(delegate, itemize)
            await settle()
            assert await anext(c.receiver) == 0
    assert "not delivered" in outcome[0]


async def test_many_after_the_receiver_closed_raises_receiver_closed() -> None:
    c: Channel[int] = Channel()
    c.receiver.close()
    async with c.sender as itemize:
        with pytest.raises(ReceiverClosed):
            await itemize.many([1, 2])


async def test_a_delegation_cancelled_as_the_block_ends_is_not_woken_twice() -> None:
    c: Channel[int] = Channel()
    scope = anyio.CancelScope()
    outcome: list[str] = []

    async def delegate(itemize: Itemize[int]) -> None:
        with scope:
            await itemize.many(range(10))
        outcome.append("cancelled" if scope.cancelled_caught else "not cancelled")

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg, c.sender as itemize:
            tg.start_soon(delegate, itemize)
            await settle()
            assert await anext(c.receiver) == 0
            scope.cancel()  # and the block ends in the same step
    assert outcome == ["cancelled"]


def started_generator(events: list[str]) -> Iterator[str]:
    """A generator its owner has started, so it has cleanup to do; it records its closing."""

    def letters() -> Iterator[str]:
        try:
            yield "never delivered"
        finally:
            events.append("generator closed")

    source = letters()
    next(source)
    return source


@pytest.mark.parametrize("how", ["cancel it", "close the receiver", "end the block"])
async def test_a_queued_delegation_that_never_starts_closes_its_generator(how: str) -> None:
    c: Channel[str] = Channel()
    events: list[str] = []
    scope = anyio.CancelScope()
    source = started_generator(events)

    async def delegate(itemize: Itemize[str]) -> None:
        with scope, contextlib.suppress(ReceiverClosed, ChannelClosed):
            await itemize.many(source)

    async def first(itemize: Itemize[str]) -> None:
        with contextlib.suppress(ReceiverClosed, ChannelClosed):
            await itemize("first")

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg, c.sender as itemize:
            tg.start_soon(first, itemize)
            await settle()
            tg.start_soon(delegate, itemize)  # waits in the queue behind "first"
            await settle()
            if how == "cancel it":
                scope.cancel()
                await settle()
            elif how == "close the receiver":
                c.receiver.close()
            else:
                assert await anext(c.receiver) == "first"
                tg.cancel_scope.cancel()
    assert events == ["generator closed"]


def generator_failing_to_close(how: str) -> Iterator[str]:
    """A started generator whose ``close()`` fails: it raises, or it yields once more."""

    def letters() -> Iterator[str]:
        try:
            yield "a"
            yield "b"
        finally:
            if how == "yields again":
                yield "during close"  # close() raises RuntimeError
            raise ValueError("close failed")

    source = letters()
    assert next(source) == "a"
    return source


CLOSE_FAILURES = {
    "raises": (ValueError, "close failed"),
    "yields again": (RuntimeError, "generator ignored GeneratorExit"),
}

DELEGATION_STOPS = [
    "the receiver closes while it delegates",
    "the receiver closes while it waits in the queue",
    "the block ends while it delegates",
    "the block ends while it waits in the queue",
    "it is cancelled while it delegates",
    "it is cancelled while it waits in the queue",
]


@pytest.mark.parametrize("close_fails", sorted(CLOSE_FAILURES))
@pytest.mark.parametrize("stop", DELEGATION_STOPS)
async def test_what_closing_a_delegation_raises_comes_out_of_many_in_the_producer(
    stop: str, close_fails: str
) -> None:
    """As with ``yield from``: the error ends the delegation where it was made; nothing hangs."""
    c: Channel[str] = Channel()
    source = generator_failing_to_close(close_fails)
    scope = anyio.CancelScope()
    outcome: list[object] = []

    async def delegate(itemize: Itemize[str]) -> None:
        try:
            with scope:
                await itemize.many(source)
        except Exception as exc:  # what close() raised, from the many call
            outcome.append(exc)
        finally:
            outcome.append("finally")

    async def first(itemize: Itemize[str]) -> None:
        with contextlib.suppress(ReceiverClosed, ChannelClosed):
            await itemize("first")

    queued = stop.endswith("in the queue")
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            async with c.sender as itemize:
                if queued:
                    tg.start_soon(first, itemize)
                    await settle()
                tg.start_soon(delegate, itemize)
                await settle()
                if not queued:
                    assert await anext(c.receiver) == "b"  # the delegation is running
                assert c.statistics().producers_waiting == 1 + queued
                if stop.startswith("the receiver closes"):
                    await c.receiver.aclose()
                elif stop.startswith("it is cancelled"):
                    scope.cancel()
                if not stop.startswith("the block ends"):
                    await wait_until(lambda: "finally" in outcome)
                    assert c.statistics().producers_waiting == queued - (
                        stop.startswith("the receiver closes") and queued
                    )
                    if queued and stop.startswith("it is cancelled"):
                        assert await anext(c.receiver) == "first"
            await wait_until(lambda: "finally" in outcome)
            assert c.statistics().producers_waiting == 0
    error, message = CLOSE_FAILURES[close_fails]
    assert len(outcome) == 2
    assert type(outcome[0]) is error
    assert str(outcome[0]) == message
    # A generator that yields during close() stays suspended there, as Python leaves it.
    expected_generator_state = "GEN_CLOSED" if close_fails == "raises" else "GEN_SUSPENDED"
    assert inspect.getgeneratorstate(source) == expected_generator_state  # type: ignore[arg-type]
    expected_state = "receiver closed" if stop.startswith("the receiver closes") else "ended"
    assert c.statistics().state == expected_state


@pytest.mark.parametrize("close_fails", sorted(CLOSE_FAILURES))
async def test_a_producer_whose_delegation_fails_to_close_runs_its_finally_and_ends(
    close_fails: str,
) -> None:
    """The receiver closes during ``many``: the error comes out in the producer, as its own."""
    c: Channel[str] = Channel()
    events: list[str] = []
    error, message = CLOSE_FAILURES[close_fails]

    async def producer() -> None:
        async with c.sender as itemize:
            try:
                await itemize.many(generator_failing_to_close(close_fails))
            finally:
                events.append("producer finally")

    with anyio.fail_after(STEP), pytest.raises(ExceptionGroup) as group:
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            assert await anext(c.receiver) == "b"
            await c.receiver.aclose()
            assert repr(c) == "<Channel receiver closed, 1 delivered>"
    assert events == ["producer finally"]
    assert [type(e) for e in group.value.exceptions] == [error]
    assert str(group.value.exceptions[0]) == message
    contexts = []
    context = group.value.exceptions[0].__context__
    while context is not None:
        contexts.append(type(context))
        context = context.__context__
    assert contexts[-1] is ReceiverClosed  # what stopped the delegation, as context


async def test_many_after_its_block_ended_raises_channel_closed() -> None:
    c: Channel[int] = Channel()
    async with c.sender as itemize:
        pass
    with anyio.fail_after(STEP), pytest.raises(ChannelClosed, match="after its sender block ended"):
        await itemize.many([1, 2])


async def test_cancelling_many_closes_its_generator_at_once_and_the_block_goes_on() -> None:
    c: Channel[int] = Channel()
    events: list[str] = []
    scope = anyio.CancelScope()

    def numbers() -> Iterator[int]:
        try:
            yield from range(100)
        finally:
            events.append("generator closed")

    async def producer() -> None:
        async with c.sender as itemize:
            with scope:
                await itemize.many(numbers())
            events.append("many cancelled")
            await itemize(-1)

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            assert await anext(c.receiver) == 0
            scope.cancel()
            await wait_until(lambda: "many cancelled" in events)
            assert events == ["generator closed", "many cancelled"]  # not at the next ask
            assert await collect(c.receiver) == [-1]


async def test_cancelling_a_queued_many_closes_its_generator_at_once() -> None:
    c: Channel[str] = Channel()
    events: list[str] = []
    scope = anyio.CancelScope()
    source = started_generator(events)

    async def delegate(itemize: Itemize[str]) -> None:
        with scope:
            await itemize.many(source)
        events.append("many cancelled")

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg, c.sender as itemize:
            tg.start_soon(itemize, "first")
            await settle()
            tg.start_soon(delegate, itemize)  # waits in the queue behind "first"
            await settle()
            scope.cancel()
            await wait_until(lambda: "many cancelled" in events)
            assert events == ["generator closed", "many cancelled"]
            assert await anext(c.receiver) == "first"


async def test_a_cancelled_many_skipped_in_the_queue_closes_its_generator_in_its_own_task() -> None:
    c: Channel[str] = Channel()
    events: list[str] = []
    scope = anyio.CancelScope()

    def letters() -> Iterator[str]:
        try:
            yield "never delivered"
        finally:
            events.append(f"generator closed in {anyio.get_current_task().name}")

    source = letters()
    next(source)

    async def head(itemize: Itemize[str]) -> None:
        with scope:
            await itemize.many(source)

    async def producer() -> None:
        async with c.sender as itemize, anyio.create_task_group() as workers:
            workers.start_soon(head, itemize)
            await settle()
            workers.start_soon(itemize, "b")
            await settle()

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            await wait_until(lambda: c.statistics().producers_waiting == 2)
            scope.cancel()  # the head is cancelled, but has not run yet
            assert await anext(c.receiver) == "b"  # skips the head
            assert await collect(c.receiver) == []
    assert len(events) == 1
    assert events[0].startswith("generator closed in ")
    assert events[0].endswith(".head")  # not in the receiver's task, which skipped it


# --- Batches ----------------------------------------------------------------------


async def test_batches_take_what_is_ready_and_wait_only_for_the_first_item() -> None:
    c: Channel[int] = Channel()

    async def producer() -> None:
        async with c.sender as itemize:
            await itemize.many(range(10))
            await itemize(10)
            await itemize.many(range(11, 13))

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            batches = [batch async for batch in c.receiver.batches(4)]
    assert [item for batch in batches for item in batch] == list(range(13))
    assert all(1 <= len(batch) <= 4 for batch in batches)
    assert batches[:3] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert c.statistics().items_delivered == 13  # a list's items are counted as delivered


async def test_a_batch_ends_a_delegation_as_yield_from_does() -> None:
    c: Channel[int] = Channel()
    outcomes: list[object] = []

    def returning() -> Generator[int, None, str]:
        yield 1
        yield 2
        return "returned"

    def failing() -> Generator[int]:
        yield 3
        raise ValueError("no item 4")

    async def producer() -> None:
        async with c.sender as itemize:
            outcomes.append(await itemize.many(returning()))
            with pytest.raises(ValueError, match="no item 4"):
                await itemize.many(failing())
            outcomes.append("raised")
            await itemize(5)

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            batches = [batch async for batch in c.receiver.batches(10)]
    assert batches == [[1, 2], [3], [5]]  # a list ends where its delegation ends
    assert outcomes == ["returned", "raised"]


async def test_a_generator_that_closes_the_receiver_ends_its_batch() -> None:
    c: Channel[int] = Channel()
    events: list[str] = []

    def items() -> Generator[int]:
        try:
            yield 1
            c.receiver.close()
            yield 2
            events.append("pulled after the close")
            yield 3
        finally:
            events.append("generator closed")

    async def producer() -> None:
        async with c.sender as itemize:
            await itemize.many(items())

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            batches = aiter(c.receiver.batches(10))
            assert await anext(batches) == [1, 2]
            assert c.statistics().items_delivered == 2  # both counted
            with pytest.raises(ChannelClosed):
                await anext(batches)
    assert events == ["generator closed"]


async def test_a_batch_fills_up_from_producers_waiting_in_line() -> None:
    c: Channel[int] = Channel()
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producers_in_line(c, 3))
            await wait_until(lambda: c.statistics().producers_waiting == 3)
            batches = [batch async for batch in c.receiver.batches(2)]
    assert [len(batch) for batch in batches] == [2, 1]
    assert sorted(item for batch in batches for item in batch) == [0, 1, 2]


def test_batches_need_a_positive_size() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Channel[int]().receiver.batches(0)


async def test_batches_of_one_give_one_item_per_list() -> None:
    c: Channel[int] = Channel()

    async def producer() -> None:
        async with c.sender as itemize:
            await itemize.many(range(3))

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            assert [batch async for batch in c.receiver.batches(1)] == [[0], [1], [2]]


class CountingIterator:
    """An iterator that runs code of its own: it returns a value, as a generator can."""

    def __init__(self, count: int) -> None:
        self.next = 0
        self.count = count

    def __iter__(self) -> CountingIterator:
        return self

    def __next__(self) -> int:
        if self.next == self.count:
            raise StopIteration("counted")  # what `yield from` returns
        self.next += 1
        return self.next - 1


ITERABLES = [
    pytest.param(lambda: [0, 1, 2, 3, 4], id="list"),
    pytest.param(lambda: (0, 1, 2, 3, 4), id="tuple"),
    pytest.param(lambda: range(5), id="range"),
    pytest.param(lambda: CountingIterator(5), id="an iterator of its own"),
]


@pytest.mark.parametrize("make", ITERABLES)
async def test_a_batch_takes_any_iterables_run_and_many_returns_what_yield_from_would(
    make: Callable[[], Any],
) -> None:
    """A list's, tuple's or range's items are taken in one C-level step; an iterator that
    runs code of its own is pulled item by item. Either way many returns as ``yield from``."""
    iterable = make()
    c: Channel[int | object] = Channel()
    returned: list[object] = []

    async def producer() -> None:
        async with c.sender as itemize:
            returned.append(await itemize.many(iterable))
            await itemize("after")

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            batches = [batch async for batch in c.receiver.batches(3)]
    assert batches == [[0, 1, 2], [3, 4], ["after"]]
    assert returned == ["counted" if isinstance(iterable, CountingIterator) else None]


def test_every_sender_of_a_channel_is_its_one_producing_end() -> None:
    c: Channel[int] = Channel()
    assert isinstance(c.sender, channel.Sender)
    assert repr(c.sender) == "<Sender of channel not started, 0 delivered>"


# --- The structured producer ---------------------------------------------------------


async def test_a_producer_runs_lazily_in_its_own_task_and_gives_the_receiver() -> None:
    started: list[str] = []

    @channel.producer
    async def ticks(itemize: Itemize[int], n: int, *, step: int = 1) -> None:
        started.append("started")
        for i in range(0, n, step):
            await itemize(i)

    with anyio.fail_after(STEP):
        async with ticks(6, step=2) as items:
            assert isinstance(items, Receiver)
            await settle()
            assert started == []  # lazy: nothing runs before the first ask
            assert await collect(items) == [0, 2, 4]
    assert started == ["started"]
    assert ticks.__name__ == "ticks"


async def test_a_producer_exception_comes_out_of_async_with_as_itself() -> None:
    @channel.producer
    async def failing(itemize: Itemize[int]) -> None:
        await itemize(1)
        raise KeyError("from the producer")

    with anyio.fail_after(STEP), pytest.raises(KeyError, match="from the producer"):
        async with failing() as items:
            await collect(items)


async def test_a_shielded_consumer_sees_sender_failed_and_async_with_raises_the_cause() -> None:
    """Shielded from the producer's failure (on trio; an anyio shield does not hold off
    asyncio's own task group), the consumer reads on to SenderFailed; `async with`
    still raises the producer's exception alone, as a generator's would."""

    @channel.producer
    async def failing(itemize: Itemize[int]) -> None:
        await itemize(1)
        raise KeyError("from the producer")

    seen: list[str] = []
    with anyio.fail_after(STEP), pytest.raises(KeyError, match="from the producer"):
        async with failing() as items:
            with anyio.CancelScope(shield=True):
                try:
                    await collect(items)
                except SenderFailed:
                    seen.append("SenderFailed")
                    raise
    assert seen == (["SenderFailed"] if in_trio() else [])


async def test_leaving_a_producer_early_runs_its_cleanup_before_async_with_exits() -> None:
    events: list[str] = []

    @channel.producer
    async def endless(itemize: Itemize[int]) -> None:
        try:
            i = 0
            while True:
                await itemize(i)
                i += 1
        finally:
            events.append("producer cleanup")

    with anyio.fail_after(STEP):
        async with endless() as items:
            async for i in items:
                if i == 3:
                    break
        events.append("after async with")
    assert events == ["producer cleanup", "after async with"]


@pytest.mark.parametrize("how", ["break", "return", "an exception", "a cancellation"])
async def test_however_the_consumer_leaves_a_producer_in_itemize_gets_receiver_closed_alone(
    how: str,
) -> None:
    """As a generator under ``aclosing`` gets ``GeneratorExit``, and runs its whole cleanup."""
    events: list[str] = []

    @channel.producer
    async def numbers(itemize: Itemize[int]) -> None:
        try:
            await itemize(1)
            await itemize(2)
        except BaseException as exc:
            events.append(f"producer got {type(exc).__name__}")
            raise
        finally:
            try:
                await anyio.lowlevel.checkpoint()  # a cleanup that awaits
            except anyio.get_cancelled_exc_class():
                events.append("cleanup cancelled")
                raise
            events.append("cleanup finished")

    async def consume(scope: anyio.CancelScope) -> None:
        async with numbers() as items:
            async for x in items:
                if how == "break":
                    break
                if how == "return":
                    return
                if how == "an exception":
                    raise KeyError(x)
                scope.cancel()
                await anyio.lowlevel.checkpoint()
        events.append("after async with")

    with anyio.fail_after(STEP):
        with anyio.CancelScope() as scope:
            try:
                await consume(scope)
            except BaseException as left:
                # The consumer's and the producer's cancellations come out as one.
                events.append(f"left by {type(left).__name__}")
                if not isinstance(left, KeyError):
                    raise
        events.append(f"outside, cancelled: {scope.cancelled_caught}")
    # The consumer's own cancellation reaches the cleanup's awaits, as it reaches a
    # generator closed in that cancelled scope (an anyio scope cancels again and again).
    cleanup = "cleanup cancelled" if how == "a cancellation" else "cleanup finished"
    expected = ["producer got ReceiverClosed", cleanup]
    if how == "break":
        expected.append("after async with")
    elif how == "an exception":
        expected.append("left by KeyError")
    elif how == "a cancellation":
        expected.append(f"left by {anyio.get_cancelled_exc_class().__name__}")
    expected.append(f"outside, cancelled: {how == 'a cancellation'}")
    assert events == expected


async def test_a_timeout_around_a_producer_stops_its_cleanup_as_a_generator_s() -> None:
    """The consumer waits for the cleanup in its own scopes, as ``aclose()`` runs a generator's."""
    events: list[str] = []

    @channel.producer
    async def numbers(itemize: Itemize[int]) -> None:
        try:
            await itemize(1)
            await itemize(2)
        finally:
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                events.append("cleanup cancelled")
                raise

    with anyio.fail_after(STEP), anyio.move_on_after(0.05) as timeout:
        async with numbers() as items:
            assert await anext(items) == 1
        # leaves cleanly, then waits for the cleanup until the timeout
    assert timeout.cancelled_caught
    assert events == ["cleanup cancelled"]


async def test_a_producer_busy_elsewhere_is_stopped_promptly_when_the_consumer_leaves() -> None:
    events: list[str] = []

    @channel.producer
    async def slow(itemize: Itemize[int]) -> None:
        await itemize(1)
        try:
            await anyio.sleep(60)
        finally:
            events.append("producer stopped")

    with anyio.fail_after(STEP), pytest.raises(ZeroDivisionError):
        async with slow() as items:
            assert await anext(items) == 1
            with anyio.move_on_after(0.05):
                await anext(items)  # the producer is now asleep, not in itemize
            _ = 1 / 0
    assert events == ["producer stopped"]


async def test_a_producer_left_before_the_first_ask_never_runs() -> None:
    started: list[str] = []

    @channel.producer
    async def never(itemize: Itemize[int]) -> None:
        started.append("started")
        await itemize(1)

    with anyio.fail_after(STEP):
        async with never():
            await settle()
    assert started == []


async def test_a_producer_and_a_consumer_failing_both_come_out_in_a_group() -> None:
    @channel.producer
    async def failing(itemize: Itemize[int]) -> None:
        try:
            await itemize(1)
        finally:
            raise KeyError("producer")

    with anyio.fail_after(STEP), pytest.raises(BaseExceptionGroup) as group:
        async with failing() as items:
            await anext(items)
            raise ValueError("consumer")
    assert group.value.message == "unhandled errors in a producer's async with"
    assert [type(e) for e in group.value.exceptions] == [KeyError, ValueError]


async def test_a_producer_exception_that_the_consumer_raises_again_comes_out_once() -> None:
    @channel.producer
    async def failing(itemize: Itemize[int]) -> None:
        await itemize(1)
        raise KeyError("from the producer")

    with anyio.fail_after(STEP), pytest.raises(KeyError) as raised:
        async with failing() as items:
            try:
                await collect(items)
            except SenderFailed as failed:
                raise failed.__cause__ from None  # type: ignore[misc]
    assert raised.value.args == ("from the producer",)


async def test_a_cancelled_producer_ends_async_with_as_the_cancellation_not_sender_failed() -> None:
    # trio cancels the producer (waiting in itemize) while the consumer is shielded;
    # the consumer's next ask then raises SenderFailed from that Cancelled. The
    # cancellation, not the SenderFailed, must leave the async with, so that the
    # scope that cancelled catches it.
    @channel.producer
    async def counter(itemize: Itemize[int]) -> None:
        for i in itertools.count():
            await itemize(i)

    with anyio.fail_after(STEP), anyio.CancelScope() as outer:
        async with counter() as items:
            assert await anext(items) == 0
            with anyio.CancelScope(shield=True):
                outer.cancel()
                await settle()
                await anext(items)
            await anyio.lowlevel.checkpoint()
    assert outer.cancelled_caught


async def test_a_producers_own_exception_group_comes_out_as_that_group() -> None:
    @channel.producer
    async def grouped(itemize: Itemize[int]) -> None:
        await itemize(1)
        raise ExceptionGroup("the producer's own", [KeyError("a"), ValueError("b")])

    with anyio.fail_after(STEP), pytest.raises(ExceptionGroup) as group:
        async with grouped() as items:
            await anext(items)
            await anext(items)
    assert group.value.message == "the producer's own"
    assert group.group_contains(KeyError)
    assert group.group_contains(ValueError)


async def test_a_producer_whose_receiver_closed_before_it_started_ends_at_once() -> None:
    started: list[str] = []

    @channel.producer
    async def numbers(itemize: Itemize[int]) -> None:
        started.append("started")
        await itemize(1)

    with anyio.fail_after(STEP):
        async with numbers() as items:
            await items.aclose()
            await settle()  # the producer task runs, and finds the receiver closed
    assert started == []


async def test_a_producer_context_cannot_be_entered_twice() -> None:
    @channel.producer
    async def one(itemize: Itemize[int]) -> None:
        await itemize(1)

    context = one()
    async with context as items:
        assert await collect(items) == [1]
    with pytest.raises(ChannelError, match="already entered"):
        async with context:
            pass


def test_decorated_function_keeps_its_module_and_unwraps_to_the_original() -> None:
    async def ticks(itemize: Itemize[int]) -> None:
        await itemize(1)

    decorated = channel.producer(ticks)
    assert decorated.__module__ == __name__
    assert decorated.__wrapped__ is ticks  # type: ignore[attr-defined]


async def test_a_producer_waiting_in_itemize_gets_receiver_closed_not_a_cancellation() -> None:
    """As a generator gets GeneratorExit: its cleanup can still await."""
    events: list[str] = []

    @channel.producer
    async def agen(itemize: Itemize[int]) -> None:
        try:
            await itemize(0)
        except ReceiverClosed:
            events.append("receiver closed")
            await anyio.lowlevel.checkpoint()
            events.append("cleaned up")
            raise

    with anyio.fail_after(STEP):
        async with agen() as items:
            assert await anext(items) == 0  # the producer now waits for the next ask
    assert events == ["receiver closed", "cleaned up"]


async def test_a_producer_whose_item_waits_untaken_gets_receiver_closed_not_a_cancellation() -> (
    None
):
    events: list[str] = []
    started, ready = anyio.Event(), anyio.Event()

    @channel.producer
    async def agen(itemize: Itemize[int]) -> None:
        started.set()
        await ready.wait()
        try:
            await itemize(1)  # nobody waits in anext any more: the item waits untaken
        except ReceiverClosed:
            events.append("receiver closed")
            await anyio.lowlevel.checkpoint()
            events.append("cleaned up")
            raise

    async def give_up_once_started(asking: anyio.CancelScope) -> None:
        await started.wait()
        asking.cancel()

    with anyio.fail_after(STEP):
        async with agen() as items, anyio.create_task_group() as tg:
            await settle()  # the producer waits for the first ask
            with anyio.CancelScope() as asking:
                tg.start_soon(give_up_once_started, asking)
                await anext(items)  # asks, which starts the producer, then gives up
            ready.set()
            await settle()
    assert events == ["receiver closed", "cleaned up"]


async def test_a_producer_whose_itemize_was_cancelled_is_cancelled_when_the_consumer_leaves() -> (
    None
):
    events: list[str] = []
    scope = anyio.CancelScope()

    @channel.producer
    async def agen(itemize: Itemize[int]) -> None:
        with scope:
            await itemize(0)  # taken, then cancelled while it waits for the next ask
        events.append("busy elsewhere")
        await anyio.sleep_forever()

    with anyio.fail_after(STEP):
        async with agen() as items:
            assert await anext(items) == 0
            scope.cancel()
            await wait_until(lambda: events == ["busy elsewhere"])
    assert scope.cancelled_caught


# --- Producers in threads, through the backends' own bridges ---------------------------
#
# A blocking API runs in a worker thread and calls back with each item; the callback
# hands it to `itemize` through the backend's bridge, and the bridge's call returns
# when `itemize` does. "native" is asyncio.run_coroutine_threadsafe under asyncio and
# uvloop, trio.from_thread.run under trio; "anyio" is anyio.from_thread.run, after
# anyio.from_thread.check_cancelled(), as the README shows them.

Push = Callable[[int], object]  # the callback a blocking API calls with each item


def _blocking_api(
    items: Iterable[int], stops: list[BaseException | None]
) -> Callable[[Push], None]:
    """A blocking API that calls back with each item, as a sync SDK or a cursor does."""

    def api(push: Push) -> None:
        try:
            for item in items:
                push(item)
        except BaseException as exc:
            stops.append(exc)  # how the thread stopped: what its last call raised
            raise
        stops.append(None)

    return api


def _forgiving_api(
    items: Iterable[int], catches: type[BaseException], caught: list[BaseException]
) -> Callable[[Push], None]:
    """A blocking API that catches what its callback raises (`catches`) and goes on."""

    def api(push: Push) -> None:
        for item in items:
            try:
                push(item)
            except catches as exc:
                caught.append(exc)

    return api


async def _produce_in_thread(c: Channel[int], api: Callable[[Push], None], bridge: str) -> None:
    async with c.sender as itemize:
        if bridge == "anyio":

            def push(item: int) -> object:
                anyio.from_thread.check_cancelled()
                return anyio.from_thread.run(itemize, item)

            await anyio.to_thread.run_sync(api, push)
        elif in_trio():
            await trio.to_thread.run_sync(api, lambda item: trio.from_thread.run(itemize, item))
        else:
            loop = asyncio.get_running_loop()
            await asyncio.to_thread(
                api, lambda item: asyncio.run_coroutine_threadsafe(itemize(item), loop).result()
            )


@pytest.fixture(params=["native", "anyio"])
def bridge(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


async def test_a_thread_feeds_the_consumer_in_order_and_its_end_ends_the_loop(bridge: str) -> None:
    c: Channel[int] = Channel()
    stops: list[BaseException | None] = []
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(_produce_in_thread, c, _blocking_api(range(100), stops), bridge)
            assert await collect(c.receiver) == list(range(100))
            assert stops == [None]  # the thread returned before the loop ended


async def test_a_consumer_leaving_early_stops_the_thread_by_receiver_closed(bridge: str) -> None:
    c: Channel[int] = Channel()
    stops: list[BaseException | None] = []
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(_produce_in_thread, c, _blocking_api(itertools.count(), stops), bridge)
            async with c.receiver:
                async for item in c.receiver:
                    if item == 3:
                        break
    assert [type(stop) for stop in stops] == [ReceiverClosed]  # and the block absorbed it


async def test_receiver_closed_passes_the_except_exception_of_an_api_in_a_thread(
    bridge: str,
) -> None:
    c: Channel[int] = Channel()
    caught: list[BaseException] = []
    api = _forgiving_api(itertools.count(), Exception, caught)
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(_produce_in_thread, c, api, bridge)
            async with c.receiver:
                assert await anext(c.receiver) == 0
    assert caught == []  # ReceiverClosed went past it and stopped the API


async def test_an_api_that_swallows_every_exception_gets_receiver_closed_at_once_on_each_call(
    bridge: str,
) -> None:
    c: Channel[int] = Channel()
    caught: list[BaseException] = []
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                _produce_in_thread, c, _forgiving_api(range(10), BaseException, caught), bridge
            )
            async with c.receiver:
                assert await anext(c.receiver) == 0
    assert [type(exc) for exc in caught] == [ReceiverClosed] * 10  # 0 was taken: it waited
    assert c.statistics().items_delivered == 1


async def test_a_thread_that_fails_makes_the_receiver_raise_sender_failed_from_its_error(
    bridge: str,
) -> None:
    c: Channel[int] = Channel()
    stops: list[BaseException | None] = []

    def items() -> Iterator[int]:
        yield 1
        raise Boom

    received: list[int] = []
    with anyio.fail_after(STEP), pytest.RaisesGroup(Boom):
        async with anyio.create_task_group() as tg:
            tg.start_soon(_produce_in_thread, c, _blocking_api(items(), stops), bridge)
            with pytest.raises(SenderFailed) as failed:
                async for item in c.receiver:
                    received.append(item)
            assert isinstance(failed.value.__cause__, Boom)
    assert received == [1]
    assert [type(stop) for stop in stops] == [Boom]


async def test_cancelling_the_consumer_stops_the_thread_and_ends_the_block_cleanly(
    bridge: str,
) -> None:
    c: Channel[int] = Channel()
    stops: list[BaseException | None] = []
    received: list[int] = []

    async def consume() -> None:
        with anyio.CancelScope() as scope:  # a timeout, for instance
            async with c.receiver:
                async for item in c.receiver:
                    received.append(item)
                    if item == 3:
                        scope.cancel()
        assert scope.cancelled_caught

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(_produce_in_thread, c, _blocking_api(itertools.count(), stops), bridge)
            tg.start_soon(consume)
    assert received == [0, 1, 2, 3]
    assert [type(stop) for stop in stops] == [ReceiverClosed]


@pytest.mark.parametrize("thread_when_cancelled", ["in a call", "busy between calls"])
async def test_cancelling_the_producer_stops_the_thread_at_a_call(
    bridge: str, thread_when_cancelled: str
) -> None:
    c: Channel[int] = Channel()
    stops: list[BaseException | None] = []
    busy, resume = threading.Event(), threading.Event()

    def items() -> Iterator[int]:
        yield 0
        if thread_when_cancelled == "busy between calls":
            busy.set()
            resume.wait(STEP)  # reading from a device, say
        yield from itertools.count(1)

    scope = anyio.CancelScope()
    stops_when_the_block_ended: list[BaseException | None] = []

    async def produce() -> None:
        with scope:
            await _produce_in_thread(c, _blocking_api(items(), stops), bridge)
        stops_when_the_block_ended.extend(stops)

    async def cancel_when_busy() -> None:
        await wait_until(busy.is_set)
        scope.cancel()
        await settle()  # asyncio's to_thread has returned, and the block has ended
        resume.set()

    received: list[int] = []
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(produce)
            if thread_when_cancelled == "busy between calls":
                tg.start_soon(cancel_when_busy)
            with pytest.raises(SenderFailed) as failed:
                async for item in c.receiver:
                    received.append(item)
                    if item == 3:
                        scope.cancel()
            assert isinstance(failed.value.__cause__, support.CANCELLED)
        await wait_until(lambda: bool(stops))  # the thread stops
    if bridge == "native" and not in_trio():
        # to_thread returned at once; a later call of the thread found the block ended
        assert stops_when_the_block_ended == []
        assert isinstance(stops[0], ChannelClosed)
    else:  # the block waited for the thread, whose next call raised the cancellation
        assert stops_when_the_block_ended == stops
        assert isinstance(stops[0], support.CANCELLED)
    if thread_when_cancelled == "busy between calls":
        # the thread's next call is cancelled before it hands its item over
        assert received == [0]


# --- Receivers under the tools people combine streams with ----------------------------


async def _numbered(c: Channel[str], name: str, ended: list[str]) -> None:
    """Produces name0, name1, ... until its receiver closes (the only way its block ends)."""
    async with c.sender as itemize:
        for i in itertools.count():
            await itemize(f"{name}{i}")
    ended.append(name)


@contextlib.asynccontextmanager
async def _numbered_producers(names: str) -> AsyncIterator[tuple[list[Channel[str]], list[str]]]:
    """A channel per name, each fed by `_numbered` in a task group that the block is in.

    Gives the channels, and the names of the producers whose block has ended.
    """
    channels: list[Channel[str]] = [Channel() for _ in names]
    ended: list[str] = []
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            for name, c in zip(names, channels, strict=True):
                tg.start_soon(_numbered, c, name, ended)
            yield channels, ended


async def _first(n: int, items: AsyncIterator[Any]) -> list[Any]:
    """The first `n` items, as an `async for` that then breaks: `items` is left open."""
    first = []
    async for item in items:
        first.append(item)
        if len(first) == n:
            break
    return first


# aiostream runs on asyncio only.
on_asyncio_and_uvloop = pytest.mark.parametrize(
    "anyio_backend",
    [("asyncio", {}), ("asyncio", {"loop_factory": uvloop.new_event_loop})],
    ids=["asyncio", "uvloop"],
)


@on_asyncio_and_uvloop
async def test_leaving_aiostreams_zip_early_closes_every_sources_producer() -> None:
    async with (
        _numbered_producers("abc") as (channels, ended),
        aiostream.stream.zip(*(c.receiver for c in channels)).stream() as zipped,
    ):
        assert await _first(2, zipped) == [("a0", "b0", "c0"), ("a1", "b1", "c1")]
    assert sorted(ended) == ["a", "b", "c"]


@on_asyncio_and_uvloop
async def test_aiostreams_merge_leaves_a_source_it_has_not_started_open() -> None:
    """Its receivers must be closed by their own `async with`: merge starts its
    sources as it goes and closes only those it started."""
    async with (
        _numbered_producers("abc") as (channels, ended),
        contextlib.AsyncExitStack() as receivers,
    ):
        for c in channels:
            await receivers.enter_async_context(c.receiver)
        async with aiostream.stream.merge(*(c.receiver for c in channels)).stream() as items:
            assert await anext(items) == "a0"
        await settle()
        assert ended == ["a"]  # merge closed the only source it had started
        assert [c.statistics().state for c in channels] == ["receiver closed", "open", "open"]
    assert sorted(ended) == ["a", "b", "c"]  # the receivers' own `async with` closed the rest


@on_asyncio_and_uvloop
async def test_aiostreams_merge_can_take_one_item_per_source_that_it_never_hands_on() -> None:
    async with (
        _numbered_producers("ab") as (channels, _),
        aiostream.stream.merge(*(c.receiver for c in channels)).stream() as items,
    ):
        received = await _first(5, items)
    held = [
        c.statistics().items_delivered - sum(item[0] == name for item in received)
        for name, c in zip("ab", channels, strict=True)
    ]
    assert max(held) == 1  # taken by merge's task for that source when the consumer left
    assert min(held) >= 0


# On trio, asyncstdlib's zip and islice leave generators of their own (an enumerate, the
# zip's inner loop) for the garbage collector, and trio warns about each.
asyncstdlibs_own_generators = pytest.mark.filterwarnings(
    "ignore:Async generator 'asyncstdlib[.]:ResourceWarning"
)


@asyncstdlibs_own_generators
async def test_asyncstdlibs_zip_and_islice_under_scoped_iter_close_every_producer() -> None:
    async with _numbered_producers("ab") as (channels, ended):
        zipped = asyncstdlib.zip(*(c.receiver for c in channels))
        async with asyncstdlib.scoped_iter(zipped) as pairs:
            assert [pair async for pair in asyncstdlib.islice(pairs, 2)] == [
                ("a0", "b0"),
                ("a1", "b1"),
            ]
    assert sorted(ended) == ["a", "b"]


@asyncstdlibs_own_generators
async def test_islice_under_scoped_iter_goes_on_where_it_stopped_and_the_scope_closes_it() -> None:
    async with (
        _numbered_producers("x") as ([c], ended),
        asyncstdlib.scoped_iter(c.receiver) as items,
    ):
        assert [item async for item in asyncstdlib.islice(items, 2)] == ["x0", "x1"]
        assert ended == []  # islice does not close what scoped_iter lends it
        assert [item async for item in asyncstdlib.islice(items, 2)] == ["x2", "x3"]
    assert ended == ["x"]
    assert c.statistics().items_delivered == 4


@asyncstdlibs_own_generators
async def test_islice_alone_closes_the_receiver_after_its_items() -> None:
    async with _numbered_producers("x") as ([c], ended):
        assert [item async for item in asyncstdlib.islice(c.receiver, 2)] == ["x0", "x1"]
        assert c.statistics().state == "receiver closed"
    assert ended == ["x"]


async def test_leaving_aclosing_early_closes_the_producer() -> None:
    async with (
        _numbered_producers("x") as ([c], ended),
        contextlib.aclosing(c.receiver) as items,
    ):
        assert await _first(2, items) == ["x0", "x1"]
    assert ended == ["x"]


# --- Exceptions travel as they would through a generator --------------------------------------


def _failing_generator() -> Generator[int, Any, None]:
    yield 1
    raise ValueError("the iterable failed")


async def an_iterable_that_fails_in_itemize_many() -> object:
    """The iterable's exception is raised by itemize.many in the producer, not in the receiver."""
    c: Channel[int, Any] = Channel()
    raised: list[BaseException] = []

    async def produce() -> None:
        async with c.sender as itemize:
            try:
                await itemize.many(_failing_generator())
            except ValueError as exc:
                raised.append(exc)
            await itemize(2)  # the stream goes on

    async with anyio.create_task_group() as tg:
        tg.start_soon(produce)
        received = [item async for item in c.receiver]
    assert received == [1, 2]
    return raised[0]


async def a_producer_function_that_fails() -> object:
    """Its exception leaves the `async with` as itself, not as the receiver's SenderFailed."""

    @channel.producer
    async def numbers(itemize: Any) -> None:
        await itemize(1)
        raise Boom("the producer function failed")

    async with numbers() as items:
        async for _ in items:  # raises SenderFailed here; the `async with` replaces it
            pass
    raise AssertionError("unreachable")  # pragma: no cover


async def a_producer_function_with_two_errors() -> object:
    """Several errors leave the `async with` as a group of them, without SenderFailed."""

    @channel.producer
    async def numbers(itemize: Any) -> None:
        await itemize(1)
        raise ExceptionGroup("two", [Boom("one"), ValueError("two")])

    try:
        async with numbers() as items:
            async for _ in items:
                pass
    except ExceptionGroup as group:
        return group
    raise AssertionError("unreachable")  # pragma: no cover


async def a_producer_function_failing_beside_its_stop_signal() -> object:
    """After the consumer leaves, ReceiverClosed of one task never reaches the consumer."""

    @channel.producer
    async def numbers(itemize: Any) -> None:
        async def fails_later() -> None:
            with anyio.CancelScope(shield=True):
                for _ in range(20):
                    await checkpoint()
            raise Boom("failed while the other task stopped")

        async with anyio.create_task_group() as tg:
            tg.start_soon(fails_later)
            for i in itertools.count():
                await itemize(i)  # ReceiverClosed once the consumer leaves

    async with numbers() as items:
        assert await anext(items) == 0
    raise AssertionError("unreachable")  # pragma: no cover


async def a_consumer_and_its_producer_function_that_both_fail() -> object:
    """Two real errors, the consumer's and the producer's, leave as a group of both."""

    @channel.producer
    async def numbers(itemize: Any) -> None:
        try:
            await itemize(1)
        finally:
            raise Boom("the producer function failed")  # in its cleanup

    async with numbers() as items:
        assert await anext(items) == 1
        raise ValueError("the consumer failed")  # closes the receiver: the cleanup runs
    raise AssertionError("unreachable")  # pragma: no cover


async def an_empty_delegation_ahead_of_an_item() -> object:
    """itemize.many([]) returns when the receiver asks, which then takes the next item."""
    c: Channel[str, Any] = Channel()
    returned: list[object] = []

    async def delegate(itemize: Any) -> None:
        returned.append(await itemize.many([]))

    async with anyio.create_task_group() as tg:
        async with c.sender as itemize:
            tg.start_soon(delegate, itemize)
            await settle()
            tg.start_soon(itemize, "after")
            while c.statistics().producers_waiting < 2:
                await checkpoint()
            assert await anext(c.receiver) == "after"
        assert [item async for item in c.receiver] == []
    assert returned == [None]
    raise Boom("done")  # the expected outcome of this scenario


EXCEPTION_PATHS = [
    pytest.param(an_iterable_that_fails_in_itemize_many, ValueError, "the iterable failed", []),
    pytest.param(a_producer_function_that_fails, Boom, "the producer function failed", []),
    pytest.param(a_producer_function_with_two_errors, ExceptionGroup, "two (2", [Boom, ValueError]),
    pytest.param(  # the function's own task group raised it: a group, without ReceiverClosed
        a_producer_function_failing_beside_its_stop_signal, ExceptionGroup, "(1 sub", [Boom]
    ),
    pytest.param(
        a_consumer_and_its_producer_function_that_both_fail,
        ExceptionGroup,
        "(2 sub",
        [Boom, ValueError],
    ),
    pytest.param(an_empty_delegation_ahead_of_an_item, Boom, "done", []),
]


@pytest.mark.parametrize(("scenario", "expected", "message", "inside"), EXCEPTION_PATHS)
async def test_exceptions_travel_as_through_a_generator(
    scenario: Callable[[], Awaitable[object]],
    expected: type[BaseException],
    message: str,
    inside: list[type[BaseException]],
) -> None:
    try:
        with anyio.fail_after(RUN_LIMIT):
            exc = await scenario()
    except BaseException as raised:
        exc = raised
    assert type(exc) is expected, repr(exc)
    assert message in str(exc)
    if isinstance(exc, BaseExceptionGroup):
        assert [type(e) for e in exc.exceptions] == inside, exc.exceptions


# --- The fast paths stay in use ------------------------------------------------------
#
# While a channel is calm, the hand-over takes its fast paths, which do what the slow
# paths do without their checks; the benchmark measures what that saves. Here: the
# slow paths' steps are not taken once per item.

SLOW_STEPS = ("check_send", "check_receive", "take_ready")


async def slow_steps(monkeypatch: pytest.MonkeyPatch, how: str, count: int) -> int:
    """How often the slow paths' steps run while `count` items pass as `how` says."""
    taken = 0

    def counted(step: Callable[..., Any]) -> Callable[..., Any]:
        def step_counted(*args: Any) -> Any:
            nonlocal taken
            taken += 1
            return step(*args)

        return step_counted

    for name in SLOW_STEPS:
        monkeypatch.setattr(channel._State, name, counted(getattr(channel._State, name)))
    c: Channel[int] = Channel()

    async def producer() -> None:
        async with c.sender as itemize:
            if how == "itemize":
                for i in range(count):
                    await itemize(i)
            else:
                await itemize.many(iter(list(range(count))))

    async with anyio.create_task_group() as tg:
        tg.start_soon(producer)
        if how == "many, batches":
            got = [item async for batch in c.receiver.batches(count) for item in batch]
        else:
            got = await collect(c.receiver)
    assert got == list(range(count))
    monkeypatch.undo()
    return taken


@pytest.mark.parametrize("how", ["itemize", "many", "many, batches"])
async def test_a_calm_channel_hands_over_on_its_fast_paths(
    monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    with anyio.fail_after(STEP):
        few = await slow_steps(monkeypatch, how, 10)
        more = await slow_steps(monkeypatch, how, 100)
    # On trio every __anext__ is a checkpoint, so each item of `many` takes one slow step.
    assert more - few == (90 if how == "many" and in_trio() else 0)


# --- Introspection, names, import -------------------------------------------------------


async def test_repr_and_statistics_show_the_state_and_who_waits_never_the_items() -> None:
    c: Channel[str] = Channel()
    assert repr(c) == "<Channel not started, 0 delivered>"
    assert c.statistics() == ChannelStatistics("not started", False, 0, 0)
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(produce, c, ["secret"])
            await settle()
            assert repr(c) == "<Channel open, 1 itemize waiting, 0 delivered>"
            assert c.statistics().producers_waiting == 1
            assert "secret" not in repr(c.sender) + repr(c.receiver)
            assert await anext(c.receiver) == "secret"
            assert await collect(c.receiver) == []
            assert repr(c.receiver) == "<Receiver of channel ended, 1 delivered>"
    assert c.statistics() == ChannelStatistics("ended", False, 0, 1)
    c2: Channel[str] = Channel()
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:

            async def waiting() -> None:
                with pytest.raises(ChannelClosed):
                    await anext(c2.receiver)

            tg.start_soon(waiting)
            await settle()
            assert repr(c2) == "<Channel not started, receiver waiting, 0 delivered>"
            assert c2.statistics().receiver_waiting
            c2.receiver.close()
    assert repr(c2) == "<Channel receiver closed, 0 delivered>"
    c3: Channel[str] = Channel()
    with pytest.raises(OSError, match="disk full"):
        async with c3.sender:
            assert repr(c3.sender) == "<Sender of channel open, 0 delivered>"
            raise OSError("disk full")
    assert repr(c3) == "<Channel failed, 0 delivered>"
    assert repr(c3.statistics()) == (
        "ChannelStatistics(state='failed', receiver_waiting=False, producers_waiting=0, "
        "items_delivered=0)"
    )
    assert c3.statistics() != "failed"


@pytest.mark.as_shipped
def test_all_lists_exactly_the_public_names() -> None:
    public = {name for name in vars(channel) if not name.startswith("_")}
    imported = {"annotations", "sys", "GenericAlias", "TYPE_CHECKING", "Generic", "Protocol"}
    imported |= {"T", "T_co", "T_contra", "R", "R_co", "R_contra", "final"}
    assert set(channel.__all__) == public - imported
    assert sorted(channel.__all__) == [
        "Channel",
        "ChannelClosed",
        "ChannelError",
        "ChannelStatistics",
        "Itemize",
        "Receiver",
        "ReceiverClosed",
        "Sender",
        "SenderFailed",
        "producer",
    ]


def test_the_version_is_the_installed_distributions_and_the_changelogs_newest() -> None:
    assert channel.__version__ == importlib.metadata.version("yieldchannel")
    newest = re.search(r"^## (\S+)", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert newest, "CHANGELOG.md must have a '## <version>' heading per release"
    assert newest.group(1) == channel.__version__


def test_exception_hierarchy() -> None:
    assert issubclass(SenderFailed, ChannelError)
    assert issubclass(ChannelClosed, ChannelError)
    assert issubclass(ChannelError, Exception)
    assert issubclass(ReceiverClosed, BaseException)
    assert not issubclass(ReceiverClosed, Exception)


@pytest.mark.as_shipped
def test_importing_channel_imports_no_event_loop_and_no_typing() -> None:
    code = "import sys, channel; print(sorted({'asyncio', 'trio', 'typing'} & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.strip() == "[]"


def test_generic_classes_can_be_subscripted_at_run_time() -> None:
    assert isinstance(Channel[int](), Channel)
    assert Itemize[str] is not None
    assert channel.Receiver[int].__origin__ is channel.Receiver  # type: ignore[attr-defined]


async def test_statistics_count_every_item_taken_from_waiting_producers() -> None:
    c: Channel[str] = Channel()

    async def producer() -> None:
        async with c.sender as itemize, anyio.create_task_group() as workers:
            for item in "abc":
                workers.start_soon(itemize, item)
                await settle()

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            await wait_until(lambda: c.statistics().producers_waiting == 3)
            assert await collect(c.receiver) == ["a", "b", "c"]
    assert c.statistics().items_delivered == 3


async def test_statistics_count_an_itemize_waiting_for_the_next_ask() -> None:
    c: Channel[str] = Channel()
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(produce, c, ["a"])
            assert await anext(c.receiver) == "a"
            assert c.statistics().producers_waiting == 1
            assert repr(c) == "<Channel open, 1 itemize waiting, 1 delivered>"
            assert await collect(c.receiver) == []


# --- Nothing is left behind ---------------------------------------------------------


async def test_a_finished_channel_leaves_no_reference_cycles() -> None:
    gc.collect()
    gc.disable()
    try:
        c: Channel[int] = Channel()
        async with anyio.create_task_group() as tg:
            tg.start_soon(produce, c, list(range(10)))
            assert await collect(c.receiver) == list(range(10))
        del c, tg
        assert gc.collect() == 0
    finally:
        gc.enable()


async def test_an_item_withdrawn_from_the_queue_is_let_go_at_once() -> None:
    """A cancelled itemize leaves the queue as it is cancelled, not when the receiver asks."""

    class Item:
        pass

    c: Channel[object] = Channel()
    item = Item()
    released = weakref.ref(item)
    scope = anyio.CancelScope()

    async def withdrawn(itemize: Itemize[object], item: object) -> None:
        with scope:
            await itemize(item)

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg, c.sender as itemize:
            tg.start_soon(itemize, "first")
            await settle()
            tg.start_soon(withdrawn, itemize, item)  # waits behind "first"
            del item
            await settle()
            scope.cancel()
            await settle()
            assert released() is None  # no cycle holds it: freed without a collection
            assert c.statistics().producers_waiting == 1
            assert await anext(c.receiver) == "first"


async def test_channels_share_one_backend_and_leave_no_reference_cycles() -> None:
    async def one_stream() -> None:
        c: Channel[int] = Channel()
        async with anyio.create_task_group() as tg:
            tg.start_soon(produce, c, [1])
            assert await collect(c.receiver) == [1]

    await one_stream()  # the first channel in this event loop may set the backend up
    gc.collect()
    gc.disable()
    try:
        for _ in range(3):
            await one_stream()
        assert gc.collect() == 0  # no backend made again, and dropped, per channel
    finally:
        gc.enable()


# --- The examples the original documentation gives -----------------------------------


async def test_one_producer_pushes_into_two_channels_alternately() -> None:
    a: Channel[str] = Channel()
    b: Channel[str] = Channel()
    log: list[str] = []

    async def send_messages() -> None:
        async with a.sender as to_arnold, b.sender as to_bernard:
            await to_arnold("Hello Arnold.")
            await to_bernard("Hello Bernard.")
            await to_arnold("Goodbye Arnold.")
            await to_bernard("Goodbye Bernard.")

    async def show(name: str, c: Channel[str]) -> None:
        async for message in c.receiver:
            log.append(f"Message for {name}: {message}")

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(send_messages)
            tg.start_soon(show, "Arnold", a)
            tg.start_soon(show, "Bernard", b)
    assert log == [
        "Message for Arnold: Hello Arnold.",
        "Message for Bernard: Hello Bernard.",
        "Message for Arnold: Goodbye Arnold.",
        "Message for Bernard: Goodbye Bernard.",
    ]


async def test_a_consumer_combines_pairs_of_items_through_an_async_generator_pipeline() -> None:
    c: Channel[int] = Channel()
    log: list[str] = []

    async def pairs(items: AsyncIterator[int]) -> AsyncIterator[tuple[int, int]]:
        async for first in items:
            second = await anext(items)
            yield first, second

    async def producer() -> None:
        async with c.sender as itemize:
            for i in range(6):
                log.append(f"produce {i}")
                await itemize(i)

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            async for first, second in pairs(c.receiver):
                log.append(f"pair {first}+{second}={first + second}")
    assert log == [
        "produce 0",
        "produce 1",
        "pair 0+1=1",
        "produce 2",
        "produce 3",
        "pair 2+3=5",
        "produce 4",
        "produce 5",
        "pair 4+5=9",
    ]


# --- The README and the examples run as printed ----------------------------------------


DOCUMENTS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]


def _programs(document: str) -> list[tuple[str, str | None]]:
    """Each ```python block of a document, with the ```text block that follows it, if any."""
    blocks = re.findall(r"```(python|text)\n(.*?)```", (ROOT / document).read_text(), re.S)
    programs: list[tuple[str, str | None]] = []
    for kind, body in blocks:
        if kind == "python":
            programs.append((body, None))
        elif programs and programs[-1][1] is None:
            programs[-1] = (programs[-1][0], body)
    return programs


@pytest.mark.as_shipped
@pytest.mark.parametrize(
    ("document", "index"),
    [(document, i) for document in DOCUMENTS for i in range(len(_programs(document)))],
)
def test_the_documentations_code_runs_as_printed(document: str, index: int, tmp_path: Path) -> None:
    source, expected = _programs(document)[index]
    script = tmp_path / "documented_example.py"
    script.write_text(source)
    result = subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": ""},
    )
    assert result.returncode == 0, result.stderr
    if expected is not None:
        assert result.stdout == expected


@pytest.mark.as_shipped
def test_ci_runs_the_readme_test_command() -> None:
    readme_commands = [
        line.strip()
        for line in (ROOT / "README.md").read_text().splitlines()
        if "python3 -m venv" in line
    ]
    assert len(readme_commands) == 2
    assert readme_commands[1] in (ROOT / ".ci" / "run").read_text().splitlines()


@pytest.mark.as_shipped
def test_the_readmes_picture_of_the_hand_over_is_the_one_its_script_draws() -> None:
    """examples/handover.py draws it by running both; the test below checks what it prints."""
    picture = _promised_output(ROOT / "examples" / "handover.py")
    assert f"```text\n{picture}```" in (ROOT / "README.md").read_text()


def _example_outputs() -> list[Path]:
    return sorted(path for path in (ROOT / "examples").glob("*.py") if path.stem != "__init__")


def _promised_output(script: Path) -> str:
    """What an example's docstring says it prints, after its 'Prints:' line."""
    promised = re.search(r'\nPrints:\n(.*?)"""', script.read_text(), re.S)
    assert promised, f"{script.name} must state its output in a 'Prints:' docstring"
    return textwrap.dedent(promised.group(1))


@pytest.mark.as_shipped
@pytest.mark.parametrize("script", _example_outputs(), ids=lambda path: path.name)
def test_examples_print_what_they_promise(script: Path) -> None:
    expected = _promised_output(script)
    result = subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": ""},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected


# --- Typing ----------------------------------------------------------------------
#
# Checked as code, not run: tests/typing/accepted.py (what must be accepted, and
# assert_type for what must be inferred) and tests/typing/rejected.py (each error
# that must be reported, named), by mypy --strict and pyright in CI.
