"""The behaviour that users of `channel` rely on, on asyncio, uvloop and trio."""

from __future__ import annotations

import asyncio
import collections.abc
import contextlib
import copy
import gc
import inspect
import itertools
import os
import random
import re
import subprocess
import sys
import textwrap
import threading
import tracemalloc
import types
import warnings
import weakref
from collections import Counter
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Iterator,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
import trio
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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

ROOT = Path(__file__).parent
pytestmark = pytest.mark.anyio
STEP = 5  # seconds: every test finishes far sooner, or it is stuck


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {}), id="asyncio"),
        pytest.param(("asyncio", {"loop_factory": uvloop.new_event_loop}), id="uvloop"),
        pytest.param(("trio", {}), id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(autouse=bool(os.environ.get("MUTANT_UNDER_TEST")))
def _fresh_backends() -> None:
    """Under mutmut only: build the backends anew per test, so that their mutants run.

    channel caches each backend for the process; mutmut forks its workers from a
    process that already ran the suite, which would hide mutants of the factories.
    """
    channel._backends.clear()


async def collect(receiver: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in receiver]


async def produce(c: Channel[Any], items: list[Any]) -> None:
    async with c.sender as itemize:
        for item in items:
            await itemize(item)


async def wait_until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(STEP):
        while not condition():
            await anyio.lowlevel.checkpoint()


async def settle() -> None:
    """Let every runnable task run until it blocks (a few rounds of the scheduler)."""
    for _ in range(20):
        await anyio.lowlevel.checkpoint()


# --- 1. Exactly a generator ----------------------------------------------------------


@pytest.mark.anyio
async def test_items_arrive_in_order_and_the_loop_ends_after_the_last() -> None:
    c: Channel[int] = Channel()
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(produce, c, list(range(100)))
            assert await collect(c.receiver) == list(range(100))


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
async def test_entering_the_sender_does_not_wait_for_the_receiver() -> None:
    c: Channel[int] = Channel()
    with anyio.fail_after(STEP):
        async with c.sender as itemize:
            assert callable(itemize)
        assert await collect(c.receiver) == []


@pytest.mark.anyio
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


@pytest.mark.anyio
async def test_none_is_an_ordinary_item() -> None:
    c: Channel[None] = Channel()
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(produce, c, [None, None])
            assert await collect(c.receiver) == [None, None]


# --- 2. and 3. Clean and failed ends --------------------------------------------------


@pytest.mark.anyio
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


@pytest.mark.anyio
async def test_a_failed_stream_keeps_raising_sender_failed() -> None:
    c: Channel[int] = Channel()
    with pytest.raises(KeyError):
        async with c.sender:
            raise KeyError("lost")
    for _ in range(2):
        with pytest.raises(SenderFailed) as failed:
            await anext(c.receiver)
        assert isinstance(failed.value.__cause__, KeyError)


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
async def test_a_bare_break_closes_nothing_as_with_a_generator() -> None:
    c: Channel[int] = Channel()
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(produce, c, [1, 2, 3])
            async for item in c.receiver:
                if item == 1:
                    break
            assert await collect(c.receiver) == [2, 3]


@pytest.mark.anyio
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


@pytest.mark.anyio
async def test_an_exception_in_the_block_after_the_receiver_closed_still_propagates() -> None:
    c: Channel[int] = Channel()
    c.receiver.close()
    with pytest.raises(RuntimeError, match="cleanup failed"):
        async with c.sender as itemize:
            try:
                await itemize(1)
            finally:
                raise RuntimeError("cleanup failed")


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
async def test_closing_the_receiver_twice_is_harmless() -> None:
    c: Channel[int] = Channel()
    await c.receiver.aclose()
    await c.receiver.aclose()
    c.receiver.close()
    async with c.receiver:
        pass


@pytest.mark.anyio
async def test_closing_the_receiver_after_a_clean_end_is_harmless() -> None:
    c: Channel[int] = Channel()
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(produce, c, [1])
            async with c.receiver:
                assert await collect(c.receiver) == [1]


# --- 5. Many producers, one callback ----------------------------------------------------


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
async def test_an_exception_group_with_other_errors_is_not_absorbed() -> None:
    c: Channel[int] = Channel()
    c.receiver.close()
    with pytest.raises(BaseExceptionGroup) as group:
        async with c.sender as itemize:
            raise BaseExceptionGroup("mixed", [ReceiverClosed(), ValueError("real")])
    assert group.group_contains(ValueError)
    del itemize


# --- 6. Cancellation loses nothing ------------------------------------------------------


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
async def test_a_cancelled_anext_does_not_close_the_receiver_and_can_be_retried() -> None:
    c: Channel[int] = Channel()
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            with anyio.move_on_after(0.01) as scope:
                await anext(c.receiver)
            assert scope.cancelled_caught
            tg.start_soon(produce, c, [1, 2])
            assert await collect(c.receiver) == [1, 2]


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


# --- 7. Misuse is loud --------------------------------------------------------------


@pytest.mark.anyio
async def test_itemize_after_its_block_ended_raises_channel_closed() -> None:
    c: Channel[int] = Channel()
    async with c.sender as itemize:
        pass
    with pytest.raises(ChannelClosed, match=r"after its sender block ended.*only inside"):
        await itemize(1)


@pytest.mark.anyio
async def test_entering_the_sender_while_it_is_open_raises_channel_closed() -> None:
    c: Channel[int] = Channel()
    async with c.sender:
        with pytest.raises(ChannelClosed, match=r"already open; share its itemize"):
            async with c.sender:
                pass


@pytest.mark.anyio
async def test_entering_the_sender_after_the_stream_ended_raises_channel_closed() -> None:
    c: Channel[int] = Channel()
    async with c.sender:
        pass
    with pytest.raises(ChannelClosed, match=r"already ended.*create a new Channel"):
        async with c.sender:
            pass


@pytest.mark.anyio
async def test_two_tasks_iterating_one_receiver_is_refused() -> None:
    c: Channel[int] = Channel()
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(collect, c.receiver)
            await settle()
            with pytest.raises(ChannelError, match="another task is already waiting"):
                await anext(c.receiver)
            async with c.sender:
                pass


@pytest.mark.anyio
async def test_iterating_a_closed_receiver_raises_channel_closed() -> None:
    c: Channel[int] = Channel()
    c.receiver.close()
    with pytest.raises(ChannelClosed, match="receiver was closed"):
        await anext(c.receiver)


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


def test_a_channel_used_from_a_loop_in_another_thread_is_refused() -> None:
    c: Channel[int] = Channel()
    bound = threading.Event()
    release = threading.Event()

    async def owner() -> None:
        async with c.sender:
            bound.set()
            await asyncio.to_thread(release.wait, STEP)  # this loop keeps running

    async def intruder() -> None:
        with pytest.raises(ChannelError, match="belongs to another event loop"):
            await anext(c.receiver)

    thread = threading.Thread(target=asyncio.run, args=(owner(),))
    thread.start()
    try:
        assert bound.wait(STEP)
        asyncio.run(intruder())
    finally:
        release.set()
        thread.join(STEP)


def test_a_channel_used_outside_any_event_loop_is_refused() -> None:
    c: Channel[int] = Channel()
    coroutine = c.receiver.__anext__()
    with pytest.raises(ChannelError, match="asyncio, uvloop or trio"):
        coroutine.send(None)


@pytest.mark.parametrize("runner", ["asyncio", "uvloop", "trio"])
def test_a_channel_created_outside_the_event_loop_works_inside_it(runner: str) -> None:
    c: Channel[int] = Channel()

    async def main() -> list[int]:
        async with anyio.create_task_group() as tg:
            tg.start_soon(produce, c, [1, 2])
            items = await collect(c.receiver)
        return items

    assert _run_on(runner, main) == [1, 2]


# --- Where a channel differs from an async generator ----------------------------------
#
# Each test shows the generator's behaviour beside the channel's, as the README lists them.


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
async def test_asend_with_a_value_before_the_first_item_is_refused() -> None:
    c: Channel[str, int] = Channel()
    with pytest.raises(ChannelError, match=r"before the first item.*anext\(\) or asend\(None\)"):
        await c.receiver.asend(1)


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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
async def test_athrow_after_a_request_cancelled_with_its_item_taken_returns_that_item() -> None:
    """As a retried ``asend``: the cancelled request had already resumed the producer."""
    c: Channel[int] = Channel()
    thrown: list[int] = []

    def numbers() -> Iterator[int]:
        for i in range(1000):
            try:
                yield i
            except KeyError:
                thrown.append(i)

    async def producer() -> None:
        async with c.sender as itemize:
            await itemize.many(numbers())

    received: list[int] = []
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            assert await anext(c.receiver) == 0
            with anyio.CancelScope() as scope:
                scope.cancel()  # lands at the checkpoint after the 256th item was taken
                async for item in c.receiver:
                    received.append(item)
            assert scope.cancelled_caught
            taken = received[-1] + 1
            assert await c.receiver.athrow(KeyError) == taken  # kept, and nothing thrown
            assert thrown == []
            assert await c.receiver.athrow(KeyError) == taken + 1
            assert thrown == [taken]
            await c.receiver.aclose()


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
async def test_athrow_before_the_first_item_is_refused_and_leaves_the_channel_usable() -> None:
    c: Channel[str] = Channel()
    with pytest.raises(ChannelError):  # the misuse table has its message
        await c.receiver.athrow(KeyError("too early"))
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(produce, c, ["a"])
            assert await collect(c.receiver) == ["a"]


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


async def read_until_cancelled(receiver: Receiver[int]) -> list[int]:
    """Read in a scope cancelled beforehand: the items taken until its first scheduling point."""
    received: list[int] = []
    with anyio.CancelScope() as scope:
        scope.cancel()  # delivered at the consumer's next scheduling point
        async for item in receiver:
            received.append(item)
    assert scope.cancelled_caught
    return received


@pytest.mark.anyio
async def test_a_long_many_stream_passes_a_checkpoint_every_256_items() -> None:
    c: Channel[int] = Channel()

    async def producer() -> None:
        async with c.sender as itemize:
            await itemize.many(range(2048))

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            assert await anext(c.receiver) == 0  # the delegation is running
            received = await read_until_cancelled(c.receiver)
            assert 0 < len(received) <= 256
            received += await collect(c.receiver)  # the interrupted item is not lost
    assert received == list(range(1, 2048))


@pytest.mark.anyio
async def test_items_of_producers_waiting_in_line_pass_a_checkpoint_every_256_items() -> None:
    """Queued items are taken without waiting too, so the receiver checkpoints there as well."""
    c: Channel[int] = Channel()

    async def producer() -> None:
        async with c.sender as itemize, anyio.create_task_group() as tg:
            for i in range(600):
                tg.start_soon(itemize, i)

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            await wait_until(lambda: c.statistics().producers_waiting == 600)
            received = await read_until_cancelled(c.receiver)
            assert 0 < len(received) <= 256
            received += await collect(c.receiver)  # the interrupted item is not lost
    assert sorted(received) == list(range(600))


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
async def test_many_after_the_receiver_closed_raises_receiver_closed() -> None:
    c: Channel[int] = Channel()
    c.receiver.close()
    async with c.sender as itemize:
        with pytest.raises(ReceiverClosed):
            await itemize.many([1, 2])


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


# --- Batches ----------------------------------------------------------------------


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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
            with pytest.raises(ChannelClosed):
                await anext(batches)
    assert events == ["generator closed"]


def test_batches_need_a_positive_size() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Channel[int]().receiver.batches(0)


# --- The structured producer ---------------------------------------------------------


@pytest.mark.anyio
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


@pytest.mark.anyio
async def test_a_producer_exception_comes_out_of_async_with_as_itself() -> None:
    @channel.producer
    async def failing(itemize: Itemize[int]) -> None:
        await itemize(1)
        raise KeyError("from the producer")

    with anyio.fail_after(STEP), pytest.raises(KeyError, match="from the producer"):
        async with failing() as items:
            await collect(items)


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


# --- The structured producer, against the behaviours of trio's as_safe_channel ---------
#
# Each test of trio's as_safe_channel (trio/_tests/test_channel.py) translated to ours;
# trio's ClosedResourceError is our ChannelClosed, and the GeneratorExit that a closed
# generator sees is our ReceiverClosed (or the cancellation, for a producer busy elsewhere).

PROMPT = 1.0  # seconds: a producer "stopped promptly" stops well within this


def is_stop_signal(exc: BaseException) -> bool:
    """Whether ``exc`` is what a stopped producer may see: our analogue of ``GeneratorExit``.

    ``ReceiverClosed`` from ``itemize``, or the backend's cancellation (when the producer
    is elsewhere, or when asyncio delivers the task group's cancellation first), alone or
    in (nested) exception groups made only of these.
    """
    stop = (ReceiverClosed, anyio.get_cancelled_exc_class())
    return BaseExceptionGroup("", [exc]).split(stop)[1] is None


def cancellation_pending_on_asyncio() -> int:
    """How many cancellations the current asyncio task still carries (0 on trio)."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # not on asyncio
        return 0
    return 0 if task is None else task.cancelling()


# --- 1. trio's as_safe_channel tests, translated --------------------------------------


async def test_exhaust_ends_the_loop_after_the_last_item() -> None:
    """trio: test_as_safe_channel_exhaust."""
    events: list[str] = []

    @channel.producer
    async def agen(itemize: Itemize[int]) -> None:
        await itemize(1)
        events.append("returned")

    with anyio.fail_after(STEP):
        async with agen() as recv_chan:
            assert isinstance(recv_chan, Receiver)
            got = [x async for x in recv_chan]
            assert events == ["returned"]
            # Like an exhausted generator, it stays exhausted.
            with pytest.raises(StopAsyncIteration):
                await anext(recv_chan)
    assert got == [1]


async def test_aclose_makes_anext_raise_channel_closed_and_exit_is_clean() -> None:
    """trio: test_as_safe_channel_broken_resource.

    trio's closed receive channel raises ClosedResourceError; ours raises ChannelClosed.
    trio never resumes the generator after ``aclose()``; our producer, parked in
    ``itemize(1)``, is resumed with ReceiverClosed (as a generator gets GeneratorExit), so
    its ``itemize(2)`` is never reached.
    """
    seen: list[BaseException] = []

    @channel.producer
    async def agen(itemize: Itemize[int]) -> None:
        try:
            await itemize(1)
        except BaseException as e:
            seen.append(e)
            raise
        await itemize(2)
        raise AssertionError("unreachable: the receiver was closed")

    with anyio.fail_after(STEP):
        async with agen() as recv_chan:
            assert await anext(recv_chan) == 1
            await recv_chan.aclose()
            with pytest.raises(ChannelClosed, match="receiver was closed"):
                await anext(recv_chan)
            await settle()
            assert len(seen) == 1
            assert isinstance(seen[0], ReceiverClosed)
        # and no error on exit of the async with


@pytest.mark.parametrize("checkpoint_in_body", [False, True], ids=["no_checkpoint", "checkpoint"])
async def test_cancel_before_first_ask_never_starts_the_producer(checkpoint_in_body: bool) -> None:
    """trio: test_as_safe_channel_cancelled (no_checkpoint is trio's test as it is).

    trio's test cancels and exits at once; the cancellation lands at the nursery's exit.
    On asyncio the exit may not suspend, so we only require that the producer never ran
    and nothing but the scope's own cancellation came out (which the scope catches).
    """
    started: list[bool] = []

    @channel.producer
    async def agen(itemize: Itemize[None]) -> None:
        started.append(True)
        await itemize(None)

    after_checkpoint = False
    with anyio.fail_after(STEP), anyio.CancelScope() as cs:
        async with agen():
            cs.cancel()
            if checkpoint_in_body:
                await anyio.lowlevel.checkpoint()
                after_checkpoint = True
    assert started == []
    assert not after_checkpoint
    if checkpoint_in_body:
        assert cs.cancelled_caught
    await anyio.lowlevel.checkpoint()  # the consumer is not cancelled afterwards


async def test_producer_error_right_after_an_item_comes_out_unwrapped() -> None:
    """trio: test_as_safe_channel_no_race (trio issue #1559: the error must not be lost)."""

    @channel.producer
    async def agen(itemize: Itemize[int]) -> None:
        await itemize(1)
        raise ValueError("oae")

    got: list[int] = []
    with anyio.fail_after(STEP), pytest.raises(ValueError, match=r"^oae$") as exc_info:
        async with agen() as recv_chan:
            async for x in recv_chan:
                got.append(x)
    assert type(exc_info.value) is ValueError
    assert got == [1]


async def test_producer_is_not_asked_for_more_while_the_consumer_is_busy() -> None:
    """trio: test_as_safe_channel_buffer_size_too_small.

    trio uses an autojump clock and ``trio.sleep_forever``; we use a real (short) timeout.
    """
    events: list[str] = []

    @channel.producer
    async def agen(itemize: Itemize[int]) -> None:
        await itemize(1)
        events.append("resumed")
        raise AssertionError("no buffer means we shouldn't be asked for another value")

    got: list[int] = []
    with anyio.fail_after(STEP), anyio.move_on_after(0.1) as cs:
        async with agen() as recv_chan:
            async for x in recv_chan:
                got.append(x)
                await anyio.sleep_forever()
    assert cs.cancelled_caught
    assert got == [1]
    assert events == []


async def test_no_interleave_producer_waits_at_itemize_until_the_next_ask() -> None:
    """trio: test_as_safe_channel_no_interleave."""
    events: list[str] = []

    @channel.producer
    async def agen(itemize: Itemize[int]) -> None:
        await itemize(1)
        events.append("resumed")
        raise AssertionError("the consumer never asked for a second item")

    with anyio.fail_after(STEP):
        async with agen() as recv_chan:
            assert await anext(recv_chan) == 1
            await settle()
            assert events == []
    assert events == []


async def test_consumer_error_and_producer_cleanup_error_come_out_together() -> None:
    """trio: test_as_safe_channel_genexit_finally.

    trio also adds a note ("Encountered exception during cleanup of generator object, ...")
    to the group; our spec does not require one, so it is not checked. trio's generator
    sees GeneratorExit; our producer sees a stop signal (see the module docstring).
    """
    events: list[str] = []
    seen: list[BaseException] = []

    @channel.producer
    async def agen(itemize: Itemize[int]) -> None:
        try:
            await itemize(1)
        except BaseException as e:
            seen.append(e)
            raise
        finally:
            events.append("finally")
            raise ValueError("agen")  # a cleanup error, on purpose

    with (
        anyio.fail_after(STEP),
        pytest.RaisesGroup(
            pytest.RaisesExc(ValueError, match=r"^agen$"),
            pytest.RaisesExc(TypeError, match=r"^iterator$"),
        ),
    ):
        async with agen() as recv_chan:
            async for i in recv_chan:
                assert i == 1
                raise TypeError("iterator")
    assert events == ["finally"]
    assert len(seen) == 1
    assert is_stop_signal(seen[0]), repr(seen[0])


async def test_nested_loops_each_get_their_own_stream() -> None:
    """trio: test_as_safe_channel_nested_loop."""

    @channel.producer
    async def agen(itemize: Itemize[int]) -> None:
        for i in range(2):
            await itemize(i)

    pairs: list[tuple[int, int]] = []
    with anyio.fail_after(STEP):
        async with agen() as recv_chan1:
            async for i in recv_chan1:
                async with agen() as recv_chan:
                    async for j in recv_chan:
                        pairs.append((i, j))
    assert pairs == [(0, 0), (0, 1), (1, 0), (1, 1)]


async def test_cancel_scope_inside_the_producer_does_not_leak_to_the_consumer() -> None:
    """trio: test_as_safe_channel_doesnt_leak_cancellation.

    trio's generator yields inside its own cancelled scope. Ours calls ``itemize`` inside a
    cancelled scope: the scope absorbs the cancellation in the producer. Item 2 was already
    taken by the waiting consumer when the cancellation ended the wait, so it stays
    delivered (README, "Cancellation loses nothing").
    """

    @channel.producer
    async def agen(itemize: Itemize[int]) -> None:
        await itemize(1)
        with anyio.CancelScope() as cscope:
            cscope.cancel()
            await itemize(2)

    reached = False
    with anyio.fail_after(STEP):
        async with agen() as recv_chan:
            got = [x async for x in recv_chan]
        await anyio.lowlevel.checkpoint()
        reached = True
    assert reached
    assert got == [1, 2]
    assert cancellation_pending_on_asyncio() == 0


async def test_consumer_exception_group_is_not_unwrapped() -> None:
    """trio: test_as_safe_channel_dont_unwrap_user_exceptiongroup."""

    @channel.producer
    async def agen(itemize: Itemize[None]) -> None:
        raise NotImplementedError("not entered")

    with (
        anyio.fail_after(STEP),
        pytest.RaisesGroup(pytest.RaisesExc(ValueError, match=r"^bar$"), match=r"^foo$"),
    ):
        async with agen():
            raise ExceptionGroup("foo", [ValueError("bar")])


async def test_one_consumer_at_a_time_but_any_task_may_take_its_turn() -> None:
    """trio: test_as_safe_channel_multiple_receiver.

    DIFFERENT: trio's memory channel lets two tasks wait in ``receive()`` at once. Our
    receiver has one consumer at a time (README, "Misuse is loud"): a second task asking
    while another waits gets ChannelError at once. Tasks taking turns work, so this test
    checks both: the refusal, then trio's outcome (task one gets 0, task two gets 1).
    """
    event = anyio.Event()

    @channel.producer
    async def agen(itemize: Itemize[int]) -> None:
        await event.wait()
        await itemize(0)
        await itemize(1)

    got: list[int] = []

    async def handle_value(recv_chan: Receiver[int]) -> None:
        got.append(await anext(recv_chan))

    with anyio.fail_after(STEP):
        async with agen() as recv_chan:
            async with anyio.create_task_group() as tg:
                tg.start_soon(handle_value, recv_chan)
                await settle()  # task one waits in anext
                with pytest.raises(ChannelError, match="another task is already waiting"):
                    await anext(recv_chan)
                event.set()
            async with anyio.create_task_group() as tg:
                tg.start_soon(handle_value, recv_chan)
    assert got == [0, 1]


async def test_consumer_cancelled_in_loop_body_stops_the_producer_too() -> None:
    """trio: test_as_safe_channel_multi_cancel.

    trio's test asserts ``["body cancel", "agen cancel"]``, where "agen cancel" is a
    ``Cancelled`` seen at a checkpoint in the generator's ``finally``. That order is not
    structural: the background task is inside the cancelled scope too, and in trio's own
    implementation its ``finally`` *starts* before "body cancel" in about 70% of runs
    (measured on trio 0.35); only the extra scheduling rounds of its checkpoint put
    "agen cancel" second. Ours is the same on trio (the producer's nursery is inside the
    consumer's cancelled scope), and on asyncio an asyncio.TaskGroup cancels a task once
    (edge-triggered), so a checkpoint in the producer's cleanup may complete. So we check
    what is structural: both the consumer's body and the producer's cleanup see the
    stop, both before the ``async with`` exits, and the cancellation comes out of the
    ``async with`` as itself, not in an exception group.
    """
    events: list[str] = []
    out: list[BaseException] = []

    @channel.producer
    async def agen(itemize: Itemize[None]) -> None:
        try:
            await itemize(None)
        finally:
            events.append("producer finally")

    with anyio.fail_after(STEP), anyio.CancelScope() as cs:
        try:
            async with agen() as recv_chan:
                async for _ in recv_chan:
                    cs.cancel()
                    try:
                        await anyio.lowlevel.checkpoint()
                    except anyio.get_cancelled_exc_class():
                        events.append("body cancel")
                        raise
        except BaseException as e:
            out.append(e)
            events.append("async with exited")
            raise
    assert cs.cancelled_caught
    assert sorted(events[:2]) == ["body cancel", "producer finally"]
    assert events[2:] == ["async with exited"]
    assert type(out[0]) is anyio.get_cancelled_exc_class(), repr(out[0])
    assert cancellation_pending_on_asyncio() == 0


async def test_stop_signal_in_a_task_group_of_the_producer_is_absorbed() -> None:
    """trio: test_as_safe_channel_genexit_exception_group.

    trio checks that its generator sees ``ExceptionGroup(GeneratorExit)``; ours sees a
    stop signal, alone or grouped by its task group, depending on the backend.
    """
    seen: list[BaseException] = []

    @channel.producer
    async def agen(itemize: Itemize[None]) -> None:
        try:
            async with anyio.create_task_group():
                await itemize(None)
        except BaseException as e:
            seen.append(e)
            raise

    with anyio.fail_after(STEP):
        async with agen() as g:
            async for _ in g:
                break
    assert len(seen) == 1
    assert is_stop_signal(seen[0]), repr(seen[0])


@pytest.mark.parametrize("exc_type", [GeneratorExit, ReceiverClosed])
@pytest.mark.parametrize("in_task_group", [True, False], ids=["grouped", "bare"])
async def test_consumer_raising_a_stop_signal_is_not_suppressed(
    exc_type: type[BaseException], in_task_group: bool
) -> None:
    """trio: test_as_safe_channel_does_not_suppress_nested_genexit.

    trio's test raises GeneratorExit in a nursery inside the ``async with``. Ours also
    raises ReceiverClosed, which the producer's side absorbs: the ``async with`` must not
    absorb it when it comes from the consumer.
    """

    @channel.producer
    async def agen(itemize: Itemize[None]) -> None:
        await itemize(None)

    with anyio.fail_after(STEP):
        if in_task_group:
            with pytest.RaisesGroup(exc_type):
                async with agen() as g, anyio.create_task_group():
                    await anext(g)
                    raise exc_type("consumer")
        else:
            with pytest.raises(exc_type, match=r"^consumer$"):
                async with agen() as g:
                    await anext(g)
                    raise exc_type("consumer")


async def wait_then_raise(exc_type: type[BaseException]) -> None:
    try:
        await anyio.sleep_forever()
    except anyio.get_cancelled_exc_class():
        raise exc_type("child") from None


async def test_error_of_a_producer_subtask_comes_out_without_the_stop_signal() -> None:
    """trio: test_as_safe_channel_genexit_filter.

    The consumer leaves early; stopping the producer makes a task in the producer's own
    task group raise ValueError. That group comes out with the ValueError and without
    the stop signal (trio: without GeneratorExit), not unwrapped (it is the producer's
    own group) and not wrapped again.
    """

    @channel.producer
    async def agen(itemize: Itemize[None]) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_then_raise, ValueError)
            await itemize(None)

    with anyio.fail_after(STEP), pytest.RaisesGroup(pytest.RaisesExc(ValueError, match=r"^child$")):
        async with agen() as g:
            async for _ in g:
                break


async def share_itemize(itemize: Itemize[str], tag: str) -> None:
    while True:
        await itemize(tag)


@pytest.mark.parametrize("extra", [None, ValueError], ids=["only_stop_signals", "with_error"])
async def test_several_tasks_sharing_itemize_stop_cleanly(extra: type[Exception] | None) -> None:
    """trio: test_as_safe_channel_swallowing_extra_exceptions.

    DIFFERENT: trio turns more than one GeneratorExit into AssertionError (only one
    generator can be closed). Our ``itemize`` may be shared by several tasks (README,
    "Many producers, one callback"), each of which gets ReceiverClosed when the consumer
    leaves; a group made only of stop signals is absorbed. Another error still comes out,
    without the stop signals.
    """

    @channel.producer
    async def agen(itemize: Itemize[str]) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(share_itemize, itemize, "a")
            tg.start_soon(share_itemize, itemize, "b")
            if extra is not None:
                tg.start_soon(wait_then_raise, extra)

    got: list[str] = []

    async def consume() -> None:
        async with agen() as g:
            async for tag in g:
                got.append(tag)
                if len(got) == 3:
                    break

    with anyio.fail_after(STEP):
        if extra is None:
            await consume()
        else:
            with pytest.RaisesGroup(pytest.RaisesExc(extra, match=r"^child$")):
                await consume()
    assert len(got) == 3
    assert set(got) <= {"a", "b"}


async def test_close_from_another_task_between_iterations() -> None:
    """trio: test_as_safe_channel_close_between_iteration."""
    seen: list[BaseException] = []

    @channel.producer
    async def agen(itemize: Itemize[None]) -> None:
        try:
            while True:
                await itemize(None)
        except BaseException as e:
            seen.append(e)
            raise

    with anyio.fail_after(STEP):
        async with agen() as chan, anyio.create_task_group() as tg:

            async def close_channel() -> None:
                await anyio.lowlevel.checkpoint()
                await chan.aclose()

            tg.start_soon(close_channel)
            with pytest.raises(ChannelClosed, match="receiver was closed"):
                async for _ in chan:
                    pass
    assert len(seen) == 1
    assert is_stop_signal(seen[0]), repr(seen[0])


async def test_close_before_the_first_ask() -> None:
    """trio: test_as_safe_channel_close_before_iteration."""
    started: list[bool] = []

    @channel.producer
    async def agen(itemize: Itemize[None]) -> None:
        started.append(True)
        raise AssertionError("should be unreachable")

    with anyio.fail_after(STEP):
        async with agen() as chan:
            await chan.aclose()
            with pytest.raises(ChannelClosed, match="receiver was closed"):
                await anext(chan)
    assert started == []


async def test_producer_closing_the_receiver_ends_the_consumer_loop() -> None:
    """trio: test_as_safe_channel_close_during_iteration.

    trio needs ``wait_all_tasks_blocked`` at the end for its own reasons; a ``settle``
    plays that part here.
    """

    @channel.producer
    async def agen(itemize: Itemize[None]) -> None:
        await itemize(None)
        await chan.aclose()
        while True:
            await itemize(None)

    with anyio.fail_after(STEP):
        async with agen() as chan:
            with pytest.raises(ChannelClosed, match="receiver was closed"):
                async for _ in chan:
                    pass
            await settle()


# --- 2. What our spec adds ------------------------------------------------------------


async def test_lazy_producer_starts_only_at_the_first_ask() -> None:
    events: list[str] = []

    @channel.producer
    async def agen(itemize: Itemize[int]) -> None:
        events.append("started")
        await itemize(1)
        events.append("after 1")
        await itemize(2)
        events.append("after 2")

    with anyio.fail_after(STEP):
        async with agen() as items:
            await settle()
            assert events == []
            assert await anext(items) == 1
            assert events == ["started"]
            await settle()
            assert events == ["started"]
            assert await anext(items) == 2
            assert events == ["started", "after 1"]
            with pytest.raises(StopAsyncIteration):
                await anext(items)
            assert events == ["started", "after 1", "after 2"]


async def test_lazy_producer_never_asked_never_runs() -> None:
    started: list[bool] = []

    @channel.producer
    async def agen(itemize: Itemize[int]) -> None:
        started.append(True)
        await itemize(1)

    with anyio.fail_after(STEP):
        async with agen():
            await settle()
    assert started == []


async def test_producer_with_no_items_ends_the_loop_at_once() -> None:
    @channel.producer
    async def agen(itemize: Itemize[int]) -> None:
        return

    with anyio.fail_after(STEP):
        async with agen() as items:
            assert [x async for x in items] == []


async def test_arguments_follow_itemize() -> None:
    @channel.producer
    async def ticks(itemize: Itemize[str], n: int, *, prefix: str = "") -> None:
        for i in range(n):
            await anyio.sleep(0.01)
            await itemize(f"{prefix}{i}")

    with anyio.fail_after(STEP):
        async with ticks(3, prefix="t") as items:
            assert [i async for i in items] == ["t0", "t1", "t2"]
        async with ticks(2) as items:
            assert [i async for i in items] == ["0", "1"]


async def test_itemize_many_delegates_like_yield_from() -> None:
    pulled: list[int] = []

    def source() -> Iterator[int]:
        for i in (10, 11, 12):
            pulled.append(i)
            yield i

    @channel.producer
    async def agen(itemize: Itemize[int]) -> None:
        await itemize(1)
        await itemize.many(source())
        await itemize.many([20, 21])
        await itemize(2)

    with anyio.fail_after(STEP):
        async with agen() as items:
            assert await anext(items) == 1
            assert await anext(items) == 10
            await settle()
            assert pulled == [10]  # pulled lazily, one per ask, like `yield from`
            rest = [x async for x in items]
    assert rest == [11, 12, 20, 21, 2]
    assert pulled == [10, 11, 12]


async def test_asend_value_is_returned_by_itemize() -> None:
    replies: list[str | None] = []

    @channel.producer
    async def echo(itemize: Itemize[int, str | None]) -> None:
        for i in range(3):
            reply = await itemize(i)
            replies.append(reply)

    with anyio.fail_after(STEP):
        async with echo() as items:
            assert await anext(items) == 0
            assert await items.asend("a") == 1
            assert await anext(items) == 2  # a plain ask sends None, as for a generator
            with pytest.raises(StopAsyncIteration):
                await items.asend("b")
    assert replies == ["a", None, "b"]


async def test_producer_exception_comes_out_unwrapped() -> None:
    raised: list[BaseException] = []

    @channel.producer
    async def agen(itemize: Itemize[int]) -> None:
        error = KeyError("missing")
        raised.append(error)
        raise error

    with anyio.fail_after(STEP), pytest.raises(KeyError) as exc_info:
        async with agen() as items:
            async for _ in items:
                pass
    assert exc_info.value is raised[0]


async def test_producer_exception_comes_out_even_if_the_body_catches_the_loop_error() -> None:
    """The consumer's loop may fail (with SenderFailed) and the body may catch that; the
    producer's own exception must still come out of the ``async with``: a task group
    raises the errors of its tasks whatever its body did.
    """

    @channel.producer
    async def agen(itemize: Itemize[int]) -> None:
        await itemize(1)
        raise ValueError("producer")

    caught: list[BaseException] = []
    with anyio.fail_after(STEP), pytest.raises(ValueError, match=r"^producer$"):
        async with agen() as items:
            try:
                async for _ in items:
                    pass
            except Exception as e:
                caught.append(e)
    assert len(caught) == 1


@pytest.mark.parametrize("how", ["break", "exception", "cancel"])
async def test_early_exit_runs_producer_finally_before_async_with_exits(how: str) -> None:
    events: list[str] = []

    @channel.producer
    async def agen(itemize: Itemize[int]) -> None:
        try:
            i = 0
            while True:
                await itemize(i)
                i += 1
        finally:
            events.append("producer finally")

    error = RuntimeError("consumer")

    def fail() -> None:
        raise error

    got: list[int] = []
    out: list[BaseException] = []
    with anyio.fail_after(STEP):
        with anyio.CancelScope() as cs:
            try:
                async with agen() as items:
                    async for i in items:
                        got.append(i)
                        if i == 2:
                            if how == "break":
                                break
                            if how == "exception":
                                fail()
                            cs.cancel()
                            await anyio.sleep_forever()
            except BaseException as e:
                out.append(e)
                events.append("async with raised")
                if how == "cancel":
                    raise
        events.append("after async with")
        await anyio.lowlevel.checkpoint()  # the consumer is not cancelled afterwards
    assert got == [0, 1, 2]
    if how == "break":
        assert out == []
        assert events == ["producer finally", "after async with"]
    else:
        assert events == ["producer finally", "async with raised", "after async with"]
        if how == "exception":
            assert out[0] is error  # the consumer's own exception, as it is
        else:
            assert type(out[0]) is anyio.get_cancelled_exc_class()
            assert cs.cancelled_caught


@pytest.mark.parametrize("how", ["timed_out_anext", "cancelled_while_waiting", "exception"])
async def test_producer_stuck_in_an_unrelated_await_is_stopped_promptly(how: str) -> None:
    events: list[str] = []

    @channel.producer
    async def agen(itemize: Itemize[int]) -> None:
        try:
            events.append("started")
            await anyio.sleep(10)
            await itemize(1)
        finally:
            events.append("producer finally")

    start = anyio.current_time()
    with anyio.fail_after(STEP):
        if how == "timed_out_anext":
            async with agen() as items:
                with anyio.move_on_after(0.05):
                    await anext(items)
        elif how == "cancelled_while_waiting":
            with anyio.move_on_after(0.05) as cs:
                async with agen() as items:
                    await anext(items)
            assert cs.cancelled_caught
        else:
            # The consumer's task group wraps its LookupError: that group is the
            # consumer's own, so it comes out as it is.
            with pytest.RaisesGroup(pytest.RaisesExc(LookupError, match=r"^consumer$")):
                async with agen() as items, anyio.create_task_group() as tg:

                    async def fail_soon() -> None:
                        await anyio.sleep(0.05)
                        raise LookupError("consumer")

                    tg.start_soon(fail_soon)
                    await anext(items)
        events.append("after async with")
    assert anyio.current_time() - start < PROMPT
    assert events == ["started", "producer finally", "after async with"]


async def test_timed_out_anext_can_be_retried_and_the_producer_carries_on() -> None:
    """A cancellation of one ``anext`` does not reach the producer (README, section 6)."""
    event = anyio.Event()
    events: list[str] = []

    @channel.producer
    async def agen(itemize: Itemize[int]) -> None:
        try:
            await event.wait()
            await itemize(1)
            await itemize(2)
        except BaseException as e:
            events.append(f"producer got {type(e).__name__}")
            raise

    with anyio.fail_after(STEP):
        async with agen() as items:
            with anyio.move_on_after(0.05) as cs:
                await anext(items)
            assert cs.cancelled_caught
            event.set()
            assert [x async for x in items] == [1, 2]
    assert events == []


async def test_leaving_early_leaves_the_consumer_uncancelled() -> None:
    @channel.producer
    async def agen(itemize: Itemize[int]) -> None:
        while True:
            await itemize(0)

    with anyio.fail_after(STEP):
        async with agen() as items:
            async for _ in items:
                break
        assert cancellation_pending_on_asyncio() == 0
        await anyio.sleep(0.01)  # not cancelled by the producer's task group
        async with agen() as items:  # and the consumer can start another one
            assert await anext(items) == 0


async def test_decorated_function_keeps_its_name_and_doc() -> None:
    """Not in our spec; trio's as_safe_channel uses functools.wraps (nice to have)."""

    @channel.producer
    async def ticks(itemize: Itemize[int], n: int) -> None:
        """Count to n."""
        for i in range(n):
            await itemize(i)

    assert ticks.__name__ == "ticks"
    assert ticks.__doc__ == "Count to n."


@pytest.mark.parametrize("enter", [False, True], ids=["never_entered", "entered_never_asked"])
async def test_unstarted_producer_leaves_no_unawaited_coroutine(
    enter: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A producer never started must not leave a coroutine that warns when collected."""
    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)

    @channel.producer
    async def agen(itemize: Itemize[int]) -> None:
        await itemize(1)

    with anyio.fail_after(STEP), warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        cm = agen()
        if enter:
            async with cm:
                pass
        del cm
        gc.collect()
    assert [str(w.message) for w in record] == []
    assert unraisable == []


def test_no_anyio_at_run_time() -> None:
    """The feature uses asyncio.TaskGroup or a trio nursery, never anyio."""
    code = textwrap.dedent(
        """
        import asyncio, sys
        import trio
        from channel import producer

        @producer
        async def agen(itemize, n):
            for i in range(n):
                await itemize(i)

        async def main():
            async with agen(3) as items:
                return [i async for i in items]

        assert asyncio.run(main()) == [0, 1, 2]
        assert trio.run(main) == [0, 1, 2]
        assert "anyio" not in sys.modules, "anyio was imported"
        """
    )
    env_path = str(Path(channel.__file__).parent)
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        check=False,
        env={"PYTHONPATH": env_path, "PATH": ""},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


# --- Introspection, names, import -------------------------------------------------------


@pytest.mark.anyio
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


def test_exception_hierarchy() -> None:
    assert issubclass(SenderFailed, ChannelError)
    assert issubclass(ChannelClosed, ChannelError)
    assert issubclass(ChannelError, Exception)
    assert issubclass(ReceiverClosed, BaseException)
    assert not issubclass(ReceiverClosed, Exception)


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


# --- Nothing is left behind ---------------------------------------------------------


@pytest.mark.anyio
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


# --- The examples the original documentation gives -----------------------------------


@pytest.mark.anyio
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


@pytest.mark.anyio
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


def _readme_programs() -> list[tuple[str, str | None]]:
    """Each ```python block of the README, with the ```text block that follows it, if any."""
    blocks = re.findall(r"```(python|text)\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    programs: list[tuple[str, str | None]] = []
    for kind, body in blocks:
        if kind == "python":
            programs.append((body, None))
        elif programs and programs[-1][1] is None:
            programs[-1] = (programs[-1][0], body)
    return programs


@pytest.mark.parametrize("index", range(len(_readme_programs())))
def test_readme_code_runs_as_printed(index: int, tmp_path: Path) -> None:
    source, expected = _readme_programs()[index]
    script = tmp_path / "readme_example.py"
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


def test_ci_runs_the_readme_test_command() -> None:
    readme_commands = [
        line.strip()
        for line in (ROOT / "README.md").read_text().splitlines()
        if "python3 -m venv" in line
    ]
    assert len(readme_commands) == 2
    assert readme_commands[1] in (ROOT / ".ci" / "run").read_text().splitlines()


def _example_outputs() -> list[Path]:
    return sorted((ROOT / "examples").glob("*.py"))


@pytest.mark.parametrize("script", _example_outputs(), ids=lambda path: path.name)
def test_examples_print_what_they_promise(script: Path) -> None:
    expected = re.search(r'\nPrints:\n(.*?)"""', script.read_text(), re.S)
    assert expected, f"{script.name} must state its output in a 'Prints:' docstring"
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
    assert result.stdout == textwrap.dedent(expected.group(1))


# --- Typing ----------------------------------------------------------------------
#
# Checked as code, not run: tests/typing/accepted.py (what must be accepted, and
# assert_type for what must be inferred) and tests/typing/rejected.py (each error
# that must be reported, named), by mypy --strict and pyright in CI.


# --- Found by mutation testing ------------------------------------------------------


@pytest.mark.anyio
async def test_itemize_kept_after_its_block_absorbed_receiver_closed_raises_channel_closed() -> (
    None
):
    c: Channel[int] = Channel()
    async with c.sender as itemize:
        c.receiver.close()
        await itemize(1)  # raises ReceiverClosed, which the block absorbs
    # BaseException, so that a ReceiverClosed in its place fails the test instead of pytest
    with pytest.raises(BaseException, match="after its sender block ended") as raised:
        await itemize(2)
    assert raised.type is ChannelClosed


@pytest.mark.anyio
async def test_many_after_its_block_ended_raises_channel_closed() -> None:
    c: Channel[int] = Channel()
    async with c.sender as itemize:
        pass
    with anyio.fail_after(STEP), pytest.raises(ChannelClosed, match="after its sender block ended"):
        await itemize.many([1, 2])


@pytest.mark.anyio
async def test_batches_of_one_give_one_item_per_list() -> None:
    c: Channel[int] = Channel()

    async def producer() -> None:
        async with c.sender as itemize:
            await itemize.many(range(3))

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            assert [batch async for batch in c.receiver.batches(1)] == [[0], [1], [2]]


def test_decorated_function_keeps_its_module_and_unwraps_to_the_original() -> None:
    async def ticks(itemize: Itemize[int]) -> None:
        await itemize(1)

    decorated = channel.producer(ticks)
    assert decorated.__module__ == __name__
    assert decorated.__wrapped__ is ticks  # type: ignore[attr-defined]


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
async def test_statistics_count_an_itemize_waiting_for_the_next_ask() -> None:
    c: Channel[str] = Channel()
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(produce, c, ["a"])
            assert await anext(c.receiver) == "a"
            assert c.statistics().producers_waiting == 1
            assert repr(c) == "<Channel open, 1 itemize waiting, 1 delivered>"
            assert await collect(c.receiver) == []


@pytest.mark.anyio
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


@pytest.mark.anyio
async def test_a_producer_whose_item_waits_untaken_gets_receiver_closed_not_a_cancellation() -> (
    None
):
    events: list[str] = []
    ready = anyio.Event()

    @channel.producer
    async def agen(itemize: Itemize[int]) -> None:
        await ready.wait()
        try:
            await itemize(1)  # nobody waits in anext any more: the item waits untaken
        except ReceiverClosed:
            events.append("receiver closed")
            await anyio.lowlevel.checkpoint()
            events.append("cleaned up")
            raise

    with anyio.fail_after(STEP):
        async with agen() as items:
            await settle()  # the producer waits for the first ask
            with anyio.move_on_after(0):
                await anext(items)  # asks, which starts the producer, then gives up
            ready.set()
            await settle()
    assert events == ["receiver closed", "cleaned up"]


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


# === Reliability: no item lost, duplicated or stuck, under any cancellation ================
#
# Longer runs: CHANNEL_HYPOTHESIS_EXAMPLES (default 60 per backend), CHANNEL_TRIO_SEEDS (2),
# CHANNEL_STRESS_SECONDS (0.5), CHANNEL_STRESS_CHANNELS (10,000), CHANNEL_LEAK_CHANNELS
# (100,000), CHANNEL_TRACED_CHANNELS (3,000), CHANNEL_LEAK_TRACEMALLOC (1 traces the
# 100,000 channels too).
#
# 1. Systematic cancellation (`test_cancelling_at_every_scheduling_point`). Each scenario
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
# 2. Model-based testing (`test_random_programs_follow_the_model`): Hypothesis draws
#    programs of itemize / itemize.many / anext / asend / cancel / time out (a deadline,
#    so the timer path) / raw task.cancel / cancel-then-anext in one step / close / aclose
#    / end the block cleanly, with an error or by cancellation, and runs them one step at
#    a time on worker tasks sharing one channel; after every step what completed, with
#    what value or exact exception, what still waits, the generators' replies and
#    ``Channel.statistics()`` are compared with a small reference model of the semantics.
#
# 3. Stress (`test_stress_many_channels_at_once`): 10,000 channels at once with random
#    timeouts (0, 0.1 ms, 1 ms), scope and raw cancellations, failed blocks and early
#    closes; then every channel must finish (zero stuck), with the invariants of part 1
#    on each (zero lost, zero duplicated).
#
# 4. Leaks: 100,000 channels created, used and closed, a quarter each by a clean end, a
#    failed block, a closed receiver and cancellation, leave no gc objects, memory blocks
#    or gc.garbage behind (`test_no_memory_is_kept_after_100000_channels`); tracemalloc
#    shows that a round of channels gives back what it took, in total and in channel.py
#    (`test_no_memory_is_kept_traced`); the per-item path of anext, asend, itemize.many
#    and batches creates no reference cycle
#    (`test_the_per_item_path_creates_no_reference_cycles`).
#
# 5. Misuse (`test_misuse_is_loud`): one table of every misuse, with the exact exception
#    type and the whole message; closing twice is harmless. Also: exceptions travel as
#    through a generator (`test_exceptions_travel_as_through_a_generator`), and trio in
#    guest mode on asyncio parks trio's way
#    (`test_trio_in_guest_mode_on_an_asyncio_loop_gets_trio_waiters`).
#
# 6. Coverage and mutation testing. CI enforces 100% branch coverage of channel.py.
#    `pip install '.[test,mutation]' && mutmut run` mutates channel.py and runs these tests
#    against each mutant (configured in pyproject.toml). Every mutant is killed or times
#    out (a hang the tests detect) except the ones below, which change nothing any code
#    can observe; `mutmut results` lists them and `mutmut show NAME` shows each.
#
#    - `Sender.__aexit__` returns True instead of False when there was no exception:
#      with nothing raised there is nothing to suppress, so the value is ignored.
#    - `_State.__init__` sets `receiver_closed` to None instead of False: it is only ever
#      tested for truth.
#    - `_State.close_receiver` sets `stash` to None instead of `_NOTHING`: once the
#      receiver is closed every ask raises before it reads `stash`; either value lets
#      go of the item.
#    - `Receiver.asend` checkpoints when `items_delivered % 256 == 1` instead of `== 0`:
#      the same period, one item later; the tests check the period, not the phase.

RUN_LIMIT = 10  # seconds: a hang detector; every run here takes milliseconds
HARNESS = "cancelled by the reliability harness"  # the message of its raw asyncio cancels
CANCELLED = (asyncio.CancelledError, trio.Cancelled)


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _on_trio() -> bool:
    return trio.lowlevel.in_trio_task()


async def checkpoint() -> None:
    await anyio.lowlevel.checkpoint()


@contextlib.contextmanager
def collecting_by_hand() -> Iterator[None]:
    """Turn off the automatic cyclic GC; the caller collects (young generations) itself.

    With tens of thousands of live tasks and exceptions, automatic collections rescan
    everything again and again and take half of the time. Nothing here relies on them.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
        gc.collect()


# ==========================================================================================
# 1. Systematic cancellation at every scheduling point
# ==========================================================================================


class Stepper:
    """Counts scheduling points once armed, and runs `action` just before point number k."""

    def __init__(self, k: int, action: Callable[[], None]) -> None:
        self.k = k
        self.action = action
        self.armed = False
        self.count = 0
        self.fired = False
        self.error: BaseException | None = None
        self.trace: list[str] = []
        self.ignored: set[object] = set()  # tasks whose steps do not count (watchdogs)

    def step(self, what: str, task: object = None) -> None:
        if not self.armed or task in self.ignored:
            return
        if self.count == self.k:
            self.fired = True
            try:
                self.action()
            except BaseException as exc:
                self.error = exc
        self.count += 1
        self.trace.append(what)


def _callback_name(callback: Callable[..., Any]) -> str:
    name = getattr(callback, "__qualname__", None) or type(callback).__name__
    owner = getattr(callback, "__self__", None)
    return f"{type(owner).__name__}.{name}" if owner is not None else name


class _TrioSteps(trio.abc.Instrument):
    def __init__(self, stepper: Stepper) -> None:
        self.stepper = stepper

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.stepper.step(task.name, task)


@contextlib.contextmanager
def counting_scheduling_points(stepper: Stepper, seed: int) -> Iterator[list[dict[str, Any]]]:
    """Feed every scheduling point of the running loop to `stepper`; yield the loop's errors.

    The yielded list collects whatever reaches the asyncio loop's exception handler
    ("Future exception was never retrieved", "Task was destroyed but it is pending", ...).
    """
    errors: list[dict[str, Any]] = []
    if _on_trio():
        scheduler_random = getattr(getattr(trio._core, "_run", None), "_r", None)
        if scheduler_random is not None:
            scheduler_random.seed(seed)
        instrument = _TrioSteps(stepper)
        trio.lowlevel.add_instrument(instrument)
        try:
            yield errors
        finally:
            trio.lowlevel.remove_instrument(instrument)
        return

    loop = asyncio.get_running_loop()
    original = loop.call_soon

    def run_counted(callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        stepper.step(_callback_name(callback), getattr(callback, "__self__", None))
        callback(*args)

    def call_soon(callback: Callable[..., Any], *args: Any, context: Any = None) -> Any:
        return original(run_counted, callback, args, context=context)

    previous_handler = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    loop.call_soon = call_soon  # type: ignore[method-assign, assignment]
    try:
        yield errors
    finally:
        del loop.call_soon
        loop.set_exception_handler(previous_handler)


CLEAN = "clean"  # Log.block after the sender block exited normally (or absorbed ReceiverClosed)


@dataclass
class Log:
    """What one run did, as seen by the code that uses the channel."""

    sent: list[tuple[int, int]] = field(default_factory=list)  # offered, in arrival order
    outcome: dict[tuple[int, int], str] = field(default_factory=dict)  # how each offer ended
    replies: dict[tuple[int, int], Any] = field(default_factory=dict)  # what itemize returned
    pulled: list[tuple[int, int]] = field(default_factory=list)  # yielded to itemize.many
    many_ended: list[tuple[str, Any]] = field(default_factory=list)  # each itemize.many
    generators_left_open: int = 0
    received: list[tuple[int, int]] = field(default_factory=list)
    end: str | None = None  # how the receiver ended: end, failed, closed, cancelled
    cause: BaseException | None = None  # SenderFailed.__cause__
    block: object = None  # None while open, CLEAN, or the exception that ended the block
    untaken_when_cancelled: set[Any] = field(default_factory=set)  # see _untaken_items
    batches: Any = field(default=None, repr=False)  # the receiver's batches() iterator

    async def itemize(self, itemize: Any, item: tuple[int, int]) -> None:
        self.sent.append(item)
        try:
            reply = await itemize(item)
        except BaseException as exc:
            self.outcome[item] = classify(exc)
            raise
        self.outcome[item] = "returned"
        self.replies[item] = reply

    def generator(self, items: list[tuple[int, int]], value: str) -> Generator[Any, Any, str]:
        for item in items:
            self.pulled.append(item)
            try:
                reply = yield item
            except GeneratorExit:
                self.outcome[item] = "generator closed"
                raise
            self.outcome[item] = "returned"
            self.replies[item] = reply
        return value

    async def many(self, itemize: Any, items: list[tuple[int, int]], value: str) -> None:
        generator = self.generator(items, value)
        self.sent += items  # offered when the call arrives, pulled in its turn
        try:
            result = await itemize.many(generator)
        except BaseException as exc:
            self.many_ended.append(("raised", classify(exc)))
            raise
        finally:
            # Suspended at a yield: its `finally` has not run. (Never started is fine:
            # it has nothing to clean up.)
            self.generators_left_open += inspect.getgeneratorstate(generator) == "GEN_SUSPENDED"
            for item in items:
                self.outcome.setdefault(item, "never pulled")
        self.many_ended.append(("returned", result))


def classify(exc: BaseException) -> str:
    if isinstance(exc, ReceiverClosed):
        return "receiver closed"
    if type(exc) is ChannelClosed:
        return "channel closed"
    if isinstance(exc, CANCELLED):
        return "cancelled"
    return f"raised {type(exc).__name__}: {exc}"


class Block:
    """``async with c.sender``, recording how the block ended."""

    def __init__(self, c: Channel[Any, Any], log: Log) -> None:
        self.sender = c.sender
        self.log = log

    async def __aenter__(self) -> Any:
        return await self.sender.__aenter__()

    async def __aexit__(self, *exc_info: Any) -> bool:
        absorbed = await self.sender.__aexit__(*exc_info)
        self.log.block = CLEAN if exc_info[1] is None or absorbed else exc_info[1]
        return absorbed


class Side:
    """The tasks of one side (producer or receiver) that a plan may cancel.

    mode "op": each operation runs in its own cancel scope (or, with the raw method,
    catches the harness's CancelledError) and the task carries on; mode "whole": the
    task's whole body is cancelled and it ends; mode None: never cancelled.
    """

    def __init__(self, mode: str | None, method: str, pace: int = 1) -> None:
        self.mode = mode
        self.method = method
        self.pace = pace  # scheduling points this side passes after each item
        self.scopes: list[anyio.CancelScope] = []
        self.tasks: list[asyncio.Task[Any]] = []

    def cancel(self) -> None:
        if self.method == "raw":
            for task in list(self.tasks):
                task.cancel(HARNESS)
        else:
            for scope in list(self.scopes):
                scope.cancel()

    @contextlib.contextmanager
    def _cancellable(self) -> Iterator[None]:
        if self.method == "raw":
            task = asyncio.current_task()
            assert task is not None
            self.tasks.append(task)
            try:
                yield
            except asyncio.CancelledError as exc:
                if exc.args != (HARNESS,):
                    raise
                task.uncancel()
            finally:
                self.tasks.remove(task)
        else:
            with anyio.CancelScope() as scope:
                self.scopes.append(scope)
                try:
                    yield
                finally:
                    self.scopes.remove(scope)

    async def pause(self) -> None:
        for _ in range(self.pace):
            await checkpoint()

    def op(self) -> contextlib.AbstractContextManager[None]:
        return self._cancellable() if self.mode == "op" else contextlib.nullcontext()

    def whole(self) -> contextlib.AbstractContextManager[None]:
        return self._cancellable() if self.mode == "whole" else contextlib.nullcontext()


# --- Scenarios: the producing side ---------------------------------------------------------

SINGLE_ITEMS = 4
FAN_IN = (3, 2)  # producers, items each
STRAGGLER_ITEMS = 2


async def produce_single(
    c: Channel[Any, Any], log: Log, side: Side, *, task_status: anyio.abc.TaskStatus[None]
) -> None:
    task_status.started()
    with side.whole():
        async with Block(c, log) as itemize:
            for i in range(SINGLE_ITEMS):
                with side.op():
                    await log.itemize(itemize, (0, i))
                    await side.pause()


async def _share(itemize: Any, log: Log, side: Side, p: int, items: int) -> None:
    for i in range(items):
        with side.op():
            await log.itemize(itemize, (p, i))
            await side.pause()


async def produce_fan_in(
    c: Channel[Any, Any], log: Log, side: Side, *, task_status: anyio.abc.TaskStatus[None]
) -> None:
    task_status.started()
    producers, items = FAN_IN
    with side.whole():
        async with Block(c, log) as itemize, anyio.create_task_group() as tg:
            for p in range(producers):
                tg.start_soon(_share, itemize, log, side, p, items)


async def _straggle(itemize: Any, log: Log, side: Side, p: int) -> None:
    """Shares itemize from outside the block, so it may still wait when the block ends."""
    for i in range(STRAGGLER_ITEMS):
        with side.op():
            try:
                await log.itemize(itemize, (p, i))
            except (ChannelClosed, ReceiverClosed):
                return
            await side.pause()


async def produce_with_stragglers(
    c: Channel[Any, Any], log: Log, side: Side, *, task_status: anyio.abc.TaskStatus[None]
) -> None:
    task_status.started()
    with side.whole():
        async with anyio.create_task_group() as helpers, Block(c, log) as itemize:
            helpers.start_soon(_straggle, itemize, log, side, 1)
            helpers.start_soon(_straggle, itemize, log, side, 2)
            for i in range(STRAGGLER_ITEMS):
                with side.op():
                    await log.itemize(itemize, (0, i))
                    await side.pause()


async def produce_duplex(
    c: Channel[Any, Any], log: Log, side: Side, *, task_status: anyio.abc.TaskStatus[None]
) -> None:
    """itemize, then itemize.many of a generator, then itemize; the receiver replies."""
    task_status.started()
    with side.whole():
        async with Block(c, log) as itemize:
            with side.op():
                await log.itemize(itemize, (0, 0))
                await side.pause()
            with side.op():
                await log.many(itemize, [(0, 1), (0, 2)], "many returned")
                await side.pause()
            with side.op():
                await log.itemize(itemize, (0, 3))
                await side.pause()


LONG_DELEGATION = 300  # items: the receiver passes a scheduling point every 256 of them


async def produce_long_delegation(
    c: Channel[Any, Any], log: Log, side: Side, *, task_status: anyio.abc.TaskStatus[None]
) -> None:
    """itemize.many of a long generator: the receiver pulls, with a checkpoint now and then."""
    task_status.started()
    with side.whole():
        async with Block(c, log) as itemize:
            with side.op():
                await log.itemize(itemize, (0, 0))
                await side.pause()
            with side.op():
                items = [(0, i) for i in range(1, LONG_DELEGATION + 1)]
                await log.many(itemize, items, "many returned")
                await side.pause()


async def produce_for_batches(
    c: Channel[Any, Any], log: Log, side: Side, *, task_status: anyio.abc.TaskStatus[None]
) -> None:
    """Two producers: one delegates to a generator, one calls itemize; batches take both."""
    task_status.started()

    async def delegate() -> None:
        with side.op():
            await log.many(itemize, [(1, 0), (1, 1), (1, 2)], "many returned")
            await side.pause()

    with side.whole():
        async with Block(c, log) as itemize, anyio.create_task_group() as tg:
            tg.start_soon(delegate)
            tg.start_soon(_share, itemize, log, side, 2, 2)


# --- Scenarios: the receiving side -----------------------------------------------------------


async def ask_once(c: Channel[Any, Any], log: Log, how: str) -> None:
    """One request; record the item, or how the stream ended."""
    rx = c.receiver
    try:
        if how == "batches":  # one iterator for the whole stream, as `async for` uses it
            if log.batches is None:
                log.batches = aiter(rx.batches(2))
            batch = await anext(log.batches)
            assert 1 <= len(batch) <= 2, batch
            log.received += batch
            return
        if how == "asend" and log.received:
            item = await rx.asend(("ack", log.received[-1]))
        else:
            item = await anext(rx)
    except StopAsyncIteration:
        log.end = "end"
    except SenderFailed as exc:
        log.end = "failed"
        log.cause = exc.__cause__
    except ChannelClosed:
        log.end = "closed"
    else:
        log.received.append(item)


async def receive(
    c: Channel[Any, Any], log: Log, side: Side, how: str, *, task_status: anyio.abc.TaskStatus[None]
) -> None:
    task_status.started()
    if side.mode == "whole":
        with side.whole():
            async with c.receiver:
                while log.end is None:
                    await ask_once(c, log, how)
                    await side.pause()
        if log.end is None:
            log.end = "cancelled"
        return
    while log.end is None:
        with side.op():
            await ask_once(c, log, how)
            await side.pause()


@dataclass(frozen=True)
class Scenario:
    name: str
    produce: Callable[..., Coroutine[Any, Any, None]]
    receive_with: str = "anext"  # or "asend" (replies ("ack", item)) or "batches"
    stragglers: bool = False
    several_tasks: bool = False  # producers that share itemize inside the block
    paces: tuple[tuple[int, int], ...] = ((1, 1), (0, 2), (2, 0))  # see run_once


SCENARIOS = [
    Scenario("single", produce_single),
    Scenario("fan-in", produce_fan_in, several_tasks=True),
    Scenario("stragglers", produce_with_stragglers, stragglers=True),
    Scenario("duplex", produce_duplex, receive_with="asend"),
    Scenario("long-delegation", produce_long_delegation, paces=((1, 0),)),
    Scenario("batches", produce_for_batches, receive_with="batches", several_tasks=True),
]


@dataclass(frozen=True)
class Plan:
    target: str  # producer, receiver, both, close
    mode: str  # op or whole

    def __str__(self) -> str:
        return "close receiver" if self.target == "close" else f"cancel {self.target} {self.mode}"


PLANS = [
    Plan(target, mode) for target in ("producer", "receiver", "both") for mode in ("op", "whole")
] + [Plan("close", "op")]


async def run_once(
    scenario: Scenario, plan: Plan, method: str, k: int, *, seed: int, pace: tuple[int, int]
) -> tuple[Log, Stepper]:
    """One run of `scenario`, with `plan` carried out just before scheduling point k.

    `pace`: how many scheduling points the producers and the receiver pass after each
    item, which decides who waits for whom (a parked receiver, or queued producers).
    """
    log = Log()
    c: Channel[Any, Any] = Channel()
    producing = Side(plan.mode if plan.target in ("producer", "both") else None, method, pace[0])
    receiving = Side(plan.mode if plan.target in ("receiver", "both") else None, method, pace[1])

    # A raw task.cancel() of the task that holds the block reaches the tasks that share
    # its itemize only later, through their task group; every other way reaches each
    # parked producer at once.
    cancels_each_producer = (
        method == "scope"
        or plan.mode == "op"
        or not (scenario.several_tasks or scenario.stragglers)
    )

    def action() -> None:
        if cancels_each_producer:
            log.untaken_when_cancelled = _untaken_items(c)
        if plan.target == "close":
            c.receiver.close()
        if plan.target in ("producer", "both"):
            producing.cancel()
        if plan.target in ("receiver", "both"):
            receiving.cancel()

    stepper = Stepper(k, action)
    with anyio.fail_after(RUN_LIMIT), counting_scheduling_points(stepper, seed) as loop_errors:
        async with anyio.create_task_group() as tg:
            await tg.start(scenario.produce, c, log, producing)
            await tg.start(receive, c, log, receiving, scenario.receive_with)
            stepper.armed = True
    if stepper.error is not None:
        raise stepper.error
    assert not loop_errors, f"the event loop reported errors: {loop_errors}"
    return log, stepper


def _untaken_items(c: Channel[Any, Any]) -> set[Any]:
    """The items still waiting in the channel's queue, not taken by the receiver.

    The one place where the harness looks inside the channel (its private ``_state``):
    from outside, "taken" cannot be told apart from "received later". A cancellation
    reaches a task parked on a waiter that is not done at once, on every backend, so
    an item that was untaken when its producer was cancelled must be withdrawn.
    Returns an empty set (no check) if the internals look different.
    """
    queue = getattr(getattr(c, "_state", None), "queue", None)
    if not isinstance(queue, list):
        return set()
    return {
        entry[1]
        for entry in queue
        if isinstance(entry, tuple) and isinstance(entry[1], tuple) and not entry[0].done()
    }


def check_run(log: Log, scenario: Scenario, plan: Plan) -> list[str]:  # noqa: PLR0912, PLR0915 - one list
    """The invariants of one run; returns the violations."""
    problems: list[str] = []
    received = log.received
    counts = Counter(received)
    if twice := sorted(x for x, n in counts.items() if n > 1):
        problems.append(f"received twice: {twice}")
    sent = set(log.sent)
    if unknown := [x for x in received if x not in sent]:
        problems.append(f"received but never offered: {unknown}")
    in_arrival_order = [x for x in log.sent if x in counts]
    if received != in_arrival_order:
        problems.append(f"not in the order the itemize calls arrived: {in_arrival_order}")
    if lost := [x for x, how in log.outcome.items() if how == "returned" and x not in counts]:
        problems.append(f"itemize returned, but the item was never received: {lost}")
    if leaked := [x for x, how in log.outcome.items() if how == "channel closed" and x in counts]:
        problems.append(f"itemize raised ChannelClosed, but the item was received: {leaked}")
    if withdrawn := [
        x for x in log.untaken_when_cancelled if log.outcome.get(x) == "cancelled" and x in counts
    ]:
        problems.append(f"cancelled before it was taken, but received anyway: {withdrawn}")
    if pending := [x for x in log.sent if x not in log.outcome]:
        problems.append(f"itemize never ended: {pending}")
    if log.end not in ("closed", "cancelled") and (
        unpulled := [x for x in log.pulled if x not in counts]
    ):  # (closing the receiver drops an item it was about to return: nobody wants it)
        problems.append(f"items pulled from a generator but never received: {unpulled}")
    if log.generators_left_open:
        problems.append(f"{log.generators_left_open} generator(s) of itemize.many left open")
    for value in log.many_ended:
        if value[0] == "returned" and value[1] != "many returned":
            problems.append(f"itemize.many returned {value[1]!r}, not the generator's value")

    # Replies: anext() sends None; the duplex receiver replies ("ack", item) for its item.
    for item, reply in log.replies.items():
        expected = ("ack", item) if scenario.receive_with == "asend" else None
        if log.outcome.get(item) == "returned" and reply != expected:
            problems.append(f"itemize({item}) returned {reply!r}, expected {expected!r}")

    # How the stream ended, on both sides.
    if log.block is None:
        problems.append("the sender block never ended")
    if log.end is None:
        problems.append("the receiver never ended")
    if log.end == "end" and log.block is not CLEAN:
        problems.append(f"StopAsyncIteration after a block that ended with {log.block!r}")
    if log.end == "failed" and (log.block is CLEAN or log.cause is not log.block):
        problems.append(f"SenderFailed from {log.cause!r}, but the block ended with {log.block!r}")
    if isinstance(log.block, BaseException) and log.end not in ("failed", "closed", "cancelled"):
        problems.append(f"the block failed with {log.block!r}, the receiver saw {log.end!r}")

    producer_cancelled = plan.target in ("producer", "both")
    receiver_closed = plan.target == "close" or log.end == "cancelled"
    allowed = {"returned"}
    if producer_cancelled or (receiver_closed and scenario.several_tasks):
        allowed.add("cancelled")  # a task group cancels the siblings of a closed one
    if receiver_closed or log.end == "closed":
        allowed.add("receiver closed")
    if scenario.stragglers:
        allowed.add("channel closed")
    if log.many_ended != [("returned", "many returned")] * len(log.many_ended):
        allowed |= {"generator closed", "never pulled"}  # a delegation cut short
    if wrong := {x: how for x, how in log.outcome.items() if how not in allowed}:
        problems.append(f"outcomes not allowed ({sorted(allowed)}): {wrong}")

    if plan.target == "receiver" and plan.mode == "op":
        # Cancelling anext() loses nothing: every item arrives, in order.
        in_order = [x for x in log.sent if log.outcome.get(x) != "channel closed"]
        if received != in_order or log.end != "end":
            problems.append(f"a cancelled anext lost items: expected {in_order}, end")
    if plan.target == "producer" and plan.mode == "op" and log.end != "end":
        problems.append("cancelling single itemize calls must not end the stream")
    return problems


def _methods() -> list[str]:
    return ["scope"] if _on_trio() else ["scope", "raw"]


TRIO_SEEDS = _env_int("CHANNEL_TRIO_SEEDS", 2)  # schedules explored per scenario on trio


def _seeds() -> list[int]:
    return list(range(TRIO_SEEDS)) if _on_trio() else [0]


MAX_RUNS = 5000


@pytest.mark.anyio
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


@pytest.mark.anyio
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
    return trio.lowlevel.current_task() if _on_trio() else asyncio.current_task()


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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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
            await _settle()
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
                await _settle()
                assert [item async for item in c.receiver] == []
    assert inspect.getgeneratorstate(generator) == "GEN_CLOSED"


# ==========================================================================================
# 2. Random programs, step by step, against a reference model of the README
# ==========================================================================================

PRODUCERS = ("p0", "p1")
RX = "rx"
SETTLE_LIMIT = 2  # seconds: a hang detector; each step settles in microseconds
NOTHING: Any = object()


class Boom(Exception):
    """The error that ends a sender block "with an error"."""


@dataclass
class Model:
    """The README's semantics, for one channel, one step at a time (everything settles).

    queue: itemize/itemize.many calls waiting for the receiver, in arrival order;
    delivered: the producer whose item the receiver took last (it resumes at the next
    request); source: what is left of the delegation of that producer's itemize.many.
    """

    queue: list[tuple[str, str, Any]] = field(default_factory=list)
    delivered: str | None = None
    source: list[Any] | None = None
    source_value: Any = None
    last_pulled: Any = NOTHING
    receiver_waiting: bool = False
    end: str | None = None  # None, "clean", "failed"
    closed: bool = False
    items_delivered: int = 0
    busy: set[str] = field(default_factory=set)
    replies: dict[Any, Any] = field(default_factory=dict)  # generator item -> its reply
    done: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # completions this step

    def finish(self, worker: str, *result: Any) -> None:
        self.busy.discard(worker)
        self.done[worker] = result

    # --- the receiver ---

    def ask(self, reply: Any) -> None:
        """anext() (reply None) or asend(reply)."""
        if self.closed:
            self.finish(RX, "raised", ChannelClosed, "receiver was closed")
            return
        if reply is not None and not self.items_delivered:
            self.finish(RX, "raised", ChannelError, "before the first item")
            return
        if self.source is None and not self.queue:
            if self.delivered is not None:
                self.finish(self.delivered, "returned", reply)
                self.delivered = None
        else:
            item = self.take_ready(reply)
            if item is not NOTHING:
                self.finish(RX, "returned", item)
                return
        if self.end is not None:
            self.finish(RX, *self.end_of_stream())
            return
        self.receiver_waiting = True
        self.busy.add(RX)

    def end_of_stream(self) -> tuple[Any, ...]:
        if self.end == "clean":
            return ("raised", StopAsyncIteration, "")
        return ("failed",)

    def take_ready(self, reply: Any) -> Any:
        if self.source is not None:
            item = self.pull(reply)
            if item is not NOTHING:
                return item
        if self.delivered is not None:
            self.finish(self.delivered, "returned", reply)
            self.delivered = None
        while self.queue:
            producer, kind, payload = self.queue.pop(0)
            self.delivered = producer
            if kind == "item":
                self.items_delivered += 1
                return payload
            self.source, self.source_value = list(payload[0]), payload[1]
            self.last_pulled = NOTHING
            item = self.pull(None)
            if item is not NOTHING:
                return item
        return NOTHING

    def pull(self, reply: Any) -> Any:
        assert self.source is not None
        assert self.delivered is not None
        if self.last_pulled is not NOTHING:
            self.replies[self.last_pulled] = reply
        if self.source:
            self.last_pulled = self.source.pop(0)
            self.items_delivered += 1
            return self.last_pulled
        self.finish(self.delivered, "returned", self.source_value)
        self.source = self.delivered = None
        return NOTHING

    # --- the producers ---

    def offer(self, producer: str, kind: str, payload: Any) -> None:
        """itemize(item) (kind "item") or itemize.many(generator) (kind "many")."""
        if self.end is not None:
            self.finish(producer, "raised", ChannelClosed, "after its sender block ended")
            return
        if self.closed:
            self.finish(producer, "raised", ReceiverClosed, "receiver was closed")
            return
        self.busy.add(producer)
        if kind == "item" and self.receiver_waiting:
            self.receiver_waiting = False
            self.finish(RX, "returned", payload)
            self.delivered = producer
            self.items_delivered += 1
            return
        self.queue.append((producer, kind, payload))
        if kind == "many" and self.receiver_waiting:  # woken to take it from the queue
            self.receiver_waiting = False
            self.busy.discard(RX)
            self.ask(None)

    # --- interruptions ---

    def cancel(self, worker: str) -> None:
        if worker == RX:
            self.receiver_waiting = False
        elif self.delivered == worker:
            self.delivered = self.source = None
        else:
            self.queue = [entry for entry in self.queue if entry[0] != worker]
        self.finish(worker, "cancelled")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.receiver_waiting:
            self.receiver_waiting = False
            self.finish(RX, "raised", ChannelClosed, "receiver was closed")
        waiting = [self.delivered] if self.delivered is not None else []
        for producer in waiting + [entry[0] for entry in self.queue]:
            self.finish(producer, "raised", ReceiverClosed, "receiver was closed")
        self.delivered = self.source = None
        self.queue = []

    def end_block(self, how: str) -> None:
        self.end = "clean" if how == "clean" else "failed"
        if self.receiver_waiting:
            self.receiver_waiting = False
            self.finish(RX, *self.end_of_stream())
        if self.delivered is not None:
            if self.source is not None:  # a delegation cut short
                self.finish(self.delivered, "raised", ChannelClosed, "ended while")
            else:  # its item was taken: delivered, so it returns
                self.finish(self.delivered, "returned", None)
        for producer, _, _ in self.queue:
            self.finish(producer, "raised", ChannelClosed, "ended while this itemize was waiting")
        self.delivered = self.source = None
        self.queue = []

    def statistics(self) -> tuple[str, bool, int, int]:
        if self.closed:
            state = "receiver closed"
        elif self.end is None:
            state = "open"
        else:
            state = "ended" if self.end == "clean" else "failed"
        waiting = len(self.queue) + (self.delivered is not None)
        return state, self.receiver_waiting, waiting, self.items_delivered


class Worker:
    """A task that runs one channel operation at a time, when told to."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.operation: Callable[[], Awaitable[Any]] | None = None
        self.wake = anyio.Event()
        self.busy = False
        self.result: tuple[Any, ...] | None = None
        self.scope: anyio.CancelScope | None = None
        self.task: asyncio.Task[Any] | None = None

    def start(self, operation: Callable[[], Awaitable[Any]]) -> None:
        assert not self.busy
        self.operation, self.busy, self.result = operation, True, None
        self.wake.set()

    def stop(self) -> None:
        self.operation = None
        self.wake.set()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        if not _on_trio():
            self.task = asyncio.current_task()
        task_status.started()
        while True:
            await self.wake.wait()
            self.wake = anyio.Event()
            if self.operation is None:
                return
            self.result = await self.perform(self.operation)
            self.busy = False

    async def perform(self, operation: Callable[[], Awaitable[Any]]) -> tuple[Any, ...]:
        try:
            with anyio.CancelScope() as self.scope:
                try:
                    return ("returned", await operation())
                except CANCELLED:
                    raise
                except BaseException as exc:
                    return ("raised", exc)
        except asyncio.CancelledError as exc:
            if exc.args != (HARNESS,):
                raise
            self.task.uncancel()  # type: ignore[union-attr]
        return ("cancelled",)


class Program:
    """Runs model steps against a real channel shared by worker tasks."""

    def __init__(self, tg: anyio.abc.TaskGroup) -> None:
        self.tg = tg
        self.model = Model()
        self.c: Channel[Any, Any] = Channel()
        self.workers = {name: Worker(name) for name in (*PRODUCERS, RX)}
        self.itemize: Any = None
        self.block_scope = anyio.CancelScope()
        self.end_how: str | None = None
        self.end_now = anyio.Event()
        self.block_exit: object = None
        self.counter = itertools.count()
        self.replies: dict[Any, Any] = {}  # what each generator item got back
        self.generators: list[Generator[Any, Any, Any]] = []
        self.history: list[str] = []

    async def start(self) -> None:
        for worker in self.workers.values():
            await self.tg.start(worker.run)
        await self.tg.start(self.own_block)

    async def own_block(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        with self.block_scope:
            try:
                async with self.c.sender as self.itemize:
                    task_status.started()
                    await self.end_now.wait()
                    if self.end_how == "fail":
                        raise Boom("the block failed")  # noqa: TRY301 - ends the block
            except BaseException as exc:
                self.block_exit = exc
                if isinstance(exc, Boom):
                    return
                raise
            self.block_exit = CLEAN

    def generator(self, items: list[int], value: str) -> Generator[int, Any, str]:
        for item in items:
            self.replies[item] = yield item
        return value

    def available(self) -> list[tuple[Any, ...]]:
        model = self.model
        ops: list[tuple[Any, ...]] = []
        for p in PRODUCERS:
            if p not in model.busy:
                ops.append(("itemize", p))
                ops += [("many", p, 0), ("many", p, 2)]
        if RX not in model.busy:
            ops.append(("anext",))
            ops.append(("asend",))
        for name in sorted(model.busy):
            ops += [("cancel", name), ("timeout", name)]
            if not _on_trio():
                ops.append(("raw cancel", name))
            if name != RX and RX not in model.busy and self.answers_at_once(name):
                ops.append(("cancel, then anext", name))
        ops += [("close",), ("aclose",)]
        if self.end_how is None:
            ops += [("end", "clean"), ("end", "fail"), ("end", "cancel")]
        return ops

    def answers_at_once(self, producer: str) -> bool:
        """Whether anext() returns without waiting right after `producer` is cancelled."""
        model = copy.deepcopy(self.model)
        model.done = {}
        model.cancel(producer)
        model.ask(None)
        return RX in model.done

    async def step(self, op: tuple[Any, ...]) -> None:  # noqa: PLR0912, PLR0915 - a dispatch
        model = self.model
        model.done = {}
        self.history.append(" ".join(map(str, op)))
        kind = op[0]
        if kind == "itemize":
            item = next(self.counter)
            model.offer(op[1], "item", item)
            self.workers[op[1]].start(lambda: self.itemize(item))
        elif kind == "many":
            items = [next(self.counter) for _ in range(op[2])]
            value = f"value {next(self.counter)}"
            generator = self.generator(items, value)
            self.generators.append(generator)
            model.offer(op[1], "many", (items, value))
            self.workers[op[1]].start(lambda: self.itemize.many(generator))
        elif kind == "anext":
            model.ask(None)
            self.workers[RX].start(lambda: anext(self.c.receiver))
        elif kind == "asend":
            reply = ("reply", next(self.counter))
            model.ask(reply)
            self.workers[RX].start(lambda: self.c.receiver.asend(reply))
        elif kind == "cancel, then anext":
            # The cancelled producer has not run yet when this task asks (without
            # waiting): its withdrawn item must be skipped.
            model.cancel(op[1])
            model.ask(None)
            if _on_trio() or next(self.counter) % 2:
                self.workers[op[1]].scope.cancel()  # type: ignore[union-attr]
            else:
                self.workers[op[1]].task.cancel(HARNESS)  # type: ignore[union-attr]
            receiver = self.workers[RX]
            receiver.busy = True
            with anyio.fail_after(SETTLE_LIMIT):
                receiver.result = await receiver.perform(lambda: anext(self.c.receiver))
            receiver.busy = False
        elif kind in ("cancel", "timeout", "raw cancel"):
            worker = self.workers[op[1]]
            model.cancel(op[1])
            if kind == "cancel":
                worker.scope.cancel()  # type: ignore[union-attr]
            elif kind == "timeout":  # the deadline passes: a timer, not a direct cancel
                worker.scope.deadline = anyio.current_time() + 0.0005  # type: ignore[union-attr]
            else:
                worker.task.cancel(HARNESS)  # type: ignore[union-attr]
        elif kind == "close":
            model.close()
            self.c.receiver.close()
        elif kind == "aclose":
            model.close()
            await self.c.receiver.aclose()
        else:  # end the block
            self.end_how = op[1]
            model.end_block(op[1])
            if op[1] == "cancel":
                self.block_scope.cancel()
            else:
                self.end_now.set()
        await self.settle()
        self.compare()

    async def settle(self) -> None:
        """Wait until what the model says has finished has finished, and a little more."""
        with anyio.fail_after(SETTLE_LIMIT):
            while any(self.workers[name].busy for name in self.model.done) or (
                self.end_how is not None and self.block_exit is None
            ):
                await checkpoint()
        for _ in range(5):  # anything the model does not expect would finish now
            await checkpoint()

    def compare(self) -> None:
        where = f"after {self.history}"
        for name, worker in self.workers.items():
            if name in self.model.busy:
                assert worker.busy, f"{name} finished with {worker.result}, {where}"
            elif name in self.model.done:
                assert not worker.busy, f"{name} is still waiting, {where}"
                assert self.matches(worker.result, self.model.done[name]), (
                    f"{name}: {worker.result!r}, expected {self.model.done[name]}, {where}"
                )
            else:
                assert not worker.busy, f"{name} waits, but was never asked to, {where}"
        assert self.replies == self.model.replies, where
        if hasattr(self.c, "statistics"):
            statistics = self.c.statistics()
            actual = (
                statistics.state,
                statistics.receiver_waiting,
                statistics.producers_waiting,
                statistics.items_delivered,
            )
            assert actual == self.model.statistics(), where

    def matches(self, actual: tuple[Any, ...] | None, expected: tuple[Any, ...]) -> bool:
        assert actual is not None
        if expected[0] == "failed":  # SenderFailed from the block's own exception
            return (
                actual[0] == "raised"
                and type(actual[1]) is SenderFailed
                and actual[1].__cause__ is self.block_exit
            )
        if expected[0] == "raised":
            return (
                actual[0] == "raised"
                and type(actual[1]) is expected[1]
                and expected[2] in str(actual[1])
            )
        return actual == expected

    async def finish(self) -> None:
        """Cancel what waits, end the block, close the receiver, check, stop the workers."""
        for name in sorted(self.model.busy):
            await self.step(("cancel", name))
        if self.end_how is None:
            await self.step(("end", "clean"))
        await self.step(("close",))
        for generator in self.generators:
            assert inspect.getgeneratorstate(generator) != "GEN_SUSPENDED", self.history
        if self.end_how == "fail":
            assert type(self.block_exit) is Boom
        elif self.end_how == "cancel":
            assert isinstance(self.block_exit, CANCELLED)
        else:
            assert self.block_exit is CLEAN
        for worker in self.workers.values():
            worker.stop()


HYPOTHESIS_EXAMPLES = _env_int("CHANNEL_HYPOTHESIS_EXAMPLES", 60)


@pytest.mark.anyio
@settings(
    max_examples=HYPOTHESIS_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
async def test_random_programs_follow_the_model(
    anyio_backend: tuple[str, dict[str, Any]], data: st.DataObject
) -> None:
    with anyio.fail_after(RUN_LIMIT * 3):
        async with anyio.create_task_group() as tg:
            program = Program(tg)
            await program.start()
            for _ in range(data.draw(st.integers(1, 30), label="steps")):
                op = data.draw(st.sampled_from(program.available()), label="op")
                await program.step(op)
            await program.finish()


# ==========================================================================================
# 3. Stress: many channels at once, random timeouts, cancellations, failures and closes
# ==========================================================================================

STRESS_CHANNELS = _env_int("CHANNEL_STRESS_CHANNELS", 10_000)
STRESS_SECONDS = float(os.environ.get("CHANNEL_STRESS_SECONDS", "0.5"))
STRESS_SEED = _env_int("CHANNEL_STRESS_SEED", 20240601)
DRAIN_LIMIT = 30  # seconds after the stop for every channel to finish: a hang detector
TIMEOUTS = (0, 0.0001, 0.001)


@dataclass
class Stressed:
    """One channel of the stress test, its log, and the handles the chaos task uses."""

    c: Channel[Any, Any] = field(default_factory=Channel)
    log: Log = field(default_factory=Log)
    scopes: dict[str, anyio.CancelScope] = field(default_factory=dict)  # by end
    tasks: dict[str, asyncio.Task[Any]] = field(default_factory=dict)  # by end (asyncio)
    raw_cancelled: set[str] = field(default_factory=set)  # ends the chaos task.cancel()led
    finished: int = 0  # tasks done: 2 when both ends are


@contextlib.contextmanager
def _stressed_end(s: Stressed, end: str) -> Iterator[anyio.CancelScope]:
    """The whole of one end's task: a scope the chaos may cancel, and its raw task.cancel().

    A raw cancel that coincides with one of anyio's (a timeout) makes one CancelledError
    with the message of the later; so a task the chaos raw-cancelled ends quietly on
    any CancelledError that reaches this level.
    """
    if not _on_trio():
        s.tasks[end] = asyncio.current_task()  # type: ignore[assignment]
    try:
        with anyio.CancelScope() as s.scopes[end]:
            yield s.scopes[end]
    except asyncio.CancelledError:
        if end not in s.raw_cancelled:
            raise
        task = s.tasks[end]
        while task.cancelling():
            task.uncancel()
    s.finished += 1


async def stress_producer(s: Stressed, rng: random.Random, stop: list[bool]) -> None:
    with _stressed_end(s, "producer"), contextlib.suppress(Boom):
        async with Block(s.c, s.log) as itemize:
            n = 0
            while not stop[0]:
                item, n = (0, n), n + 1
                if rng.random() < 0.25:
                    with anyio.move_on_after(rng.choice(TIMEOUTS)):
                        await s.log.itemize(itemize, item)
                else:
                    await s.log.itemize(itemize, item)
                if rng.random() < 0.003:
                    raise Boom("the block failed")
                if rng.random() < 0.3:
                    await checkpoint()


async def stress_receiver(s: Stressed, rng: random.Random) -> None:
    with _stressed_end(s, "receiver"):
        async with s.c.receiver:
            while s.log.end is None:
                if rng.random() < 0.25:
                    with anyio.move_on_after(rng.choice(TIMEOUTS)):
                        await ask_once(s.c, s.log, "anext")
                else:
                    await ask_once(s.c, s.log, "anext")
                if rng.random() < 0.003:
                    break  # leaving `async with c.receiver` closes it
                if rng.random() < 0.3:
                    await checkpoint()
    if s.log.end is None:
        s.log.end = "cancelled"  # closed early, by a break or a cancellation


async def chaos(channels: list[Stressed], rng: random.Random, stop: list[bool]) -> None:
    """Cancels producers and receivers at random, with scopes and (asyncio) task.cancel()."""
    while not stop[0]:
        for _ in range(20):
            s = rng.choice(channels)
            end = rng.choice(("producer", "receiver"))
            if s.tasks and rng.random() < 0.5:
                if end in s.tasks and end not in s.raw_cancelled:
                    s.raw_cancelled.add(end)
                    s.tasks[end].cancel(HARNESS)
            elif end in s.scopes:
                s.scopes[end].cancel()
        await anyio.sleep(0.0005)


@pytest.mark.timeout(600)  # heavy: many thousands of channels
@pytest.mark.anyio
async def test_stress_many_channels_at_once() -> None:
    rng = random.Random(STRESS_SEED)
    channels = [Stressed() for _ in range(STRESS_CHANNELS)]
    stop = [False]
    with collecting_by_hand(), anyio.move_on_after(STRESS_SECONDS + DRAIN_LIMIT) as drain:
        async with anyio.create_task_group() as tg:
            for s in channels:
                tg.start_soon(stress_producer, s, random.Random(rng.random()), stop)
                tg.start_soon(stress_receiver, s, random.Random(rng.random()))
            tg.start_soon(chaos, channels, random.Random(rng.random()), stop)
            await anyio.sleep(STRESS_SECONDS)
            stop[0] = True  # producers end their blocks; receivers drain to the end
    stuck = [i for i, s in enumerate(channels) if s.finished != 2]
    assert not drain.cancelled_caught, f"{len(stuck)} stuck, e.g. {stuck[:10]}"
    assert not stuck, f"{len(stuck)} tasks ended abnormally, e.g. {stuck[:10]}"

    plan, scenario = Plan("both", "whole"), Scenario("stress", produce_single)
    problems = {
        i: found for i, s in enumerate(channels) if (found := check_run(s.log, scenario, plan))
    }
    assert not problems, f"{len(problems)} channels broke: {list(problems.items())[:5]}"
    ends = Counter(s.log.end for s in channels)
    outcomes = Counter(how for s in channels for how in s.log.outcome.values())
    # The run exercised what it claims to: items, withdrawals, every kind of end.
    assert outcomes["returned"] > 0, outcomes
    assert outcomes["cancelled"] > 0, outcomes
    assert outcomes["receiver closed"] > 0, outcomes
    assert min(ends["end"], ends["failed"], ends["cancelled"]) > 0, ends


# ==========================================================================================
# 4. Leaks: memory returns to its starting level; the per-item path makes no cycles
# ==========================================================================================

LEAK_CHANNELS = _env_int("CHANNEL_LEAK_CHANNELS", 100_000)
TRACED_CHANNELS = _env_int("CHANNEL_TRACED_CHANNELS", 3_000)
LEAK_TRACEMALLOC = os.environ.get("CHANNEL_LEAK_TRACEMALLOC", "") not in ("", "0")
ENDINGS = ("clean end", "failed block", "receiver closed", "cancelled")
PAIRS = 40  # producer/consumer task pairs at a time, each using its channels one by one


async def _lifecycle_producer(work: list[tuple[Channel[int, Any], str]], on_trio: bool) -> None:
    for c, ending in work:
        if ending == "failed block":
            with contextlib.suppress(Boom):
                async with c.sender as itemize:
                    await itemize(1)
                    raise Boom("the block failed")
        elif ending == "cancelled" and on_trio:
            with trio.CancelScope() as scope:
                async with c.sender as itemize:
                    await itemize(1)
                    scope.cancel()
                    await itemize(2)
        elif ending == "cancelled":  # the backends' own cancellation: cheaper than anyio's
            task = asyncio.current_task()
            assert task is not None
            try:
                async with c.sender as itemize:
                    await itemize(1)
                    task.cancel()
                    await itemize(2)
            except asyncio.CancelledError:
                task.uncancel()
        else:
            async with c.sender as itemize:
                await itemize(1)
                await itemize(2)


async def _anext_unless_it_waits(c: Channel[int, Any], got: list[int], on_trio: bool) -> None:
    """anext() under a timeout that has already expired: if it waits, it is cancelled."""
    if on_trio:
        with trio.move_on_after(0):
            got.append(await anext(c.receiver))
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(0):
            got.append(await anext(c.receiver))


async def _lifecycle_consumer(
    work: list[tuple[Channel[int, Any], str]], seen: Counter[str], on_trio: bool
) -> None:
    for c, ending in work:
        got: list[int] = []
        how = "ended"
        try:
            if ending == "receiver closed":
                async with c.receiver:
                    got.append(await anext(c.receiver))
            else:
                if ending == "cancelled":
                    await _anext_unless_it_waits(c, got, on_trio)  # loses nothing
                async for item in c.receiver:
                    got.append(item)
        except SenderFailed as exc:
            how = f"failed: {type(exc.__cause__).__name__}"
        seen[f"{ending}: {how}, {got}"] += 1


async def lifecycles(count: int) -> Counter[str]:
    """Create, use and close `count` channels, ending each way in turn."""
    seen: Counter[str] = Counter()
    on_trio = _on_trio()
    batch = PAIRS * 50
    with collecting_by_hand():
        for start in range(0, count, batch):
            await _lifecycle_batch(start, min(count, start + batch), seen, on_trio)
            gc.collect(1)  # the cycles of this batch (exceptions and their frames) are young
    return seen


async def _lifecycle_batch(start: int, stop: int, seen: Counter[str], on_trio: bool) -> None:
    """Channels start..stop, used by PAIRS producer/consumer pairs at a time."""
    channels: list[tuple[Channel[int], str]] = [
        (Channel(), ENDINGS[i % len(ENDINGS)]) for i in range(start, stop)
    ]
    async with anyio.create_task_group() as tg:
        for pair in range(PAIRS):
            work = channels[pair::PAIRS]
            tg.start_soon(_lifecycle_producer, work, on_trio)
            tg.start_soon(_lifecycle_consumer, work, seen, on_trio)


def _check_lifecycles(seen: Counter[str], count: int) -> None:
    cancelled = "failed: CancelledError" if not _on_trio() else "failed: Cancelled"
    allowed = {
        "clean end: ended, [1, 2]",
        "failed block: failed: Boom, [1]",
        "receiver closed: ended, [1]",
        f"cancelled: {cancelled}, [1]",
        f"cancelled: {cancelled}, [1, 2]",
    }
    assert set(seen) <= allowed, seen
    assert seen.total() == count


@pytest.mark.timeout(600)  # heavy: many thousands of channels
@pytest.mark.anyio
async def test_no_memory_is_kept_after_100000_channels() -> None:
    """Memory (pymalloc blocks, gc objects) returns to its level once the channels are gone."""
    _check_lifecycles(await lifecycles(2_000), 2_000)  # warm up: backend, caches, free lists
    if LEAK_TRACEMALLOC:  # slower (about 3 times), so only on request
        tracemalloc.start()
        _check_lifecycles(await lifecycles(2_000), 2_000)
    gc.collect()
    blocks, objects = sys.getallocatedblocks(), len(gc.get_objects())
    traced, _ = tracemalloc.get_traced_memory()
    try:
        seen = await lifecycles(LEAK_CHANNELS)
        gc.collect()
        grown_traced = tracemalloc.get_traced_memory()[0] - traced
    finally:
        tracemalloc.stop()
    assert gc.garbage == []
    grown_blocks = sys.getallocatedblocks() - blocks
    grown_objects = len(gc.get_objects()) - objects
    _check_lifecycles(seen, LEAK_CHANNELS)
    # A leak of one object per channel would be LEAK_CHANNELS objects, or blocks.
    assert grown_objects < 200, f"{grown_objects} more gc objects"
    assert grown_blocks < max(1000, LEAK_CHANNELS // 100), f"{grown_blocks} more memory blocks"
    assert grown_traced < max(32_768, LEAK_CHANNELS), f"{grown_traced} more bytes (tracemalloc)"


@pytest.mark.timeout(600)  # heavy: many thousands of channels
@pytest.mark.anyio
async def test_no_memory_is_kept_traced() -> None:
    """tracemalloc: what channels allocate is given back; nothing grows with their number.

    Measured after a first traced round (CPython keeps some freed objects in free lists,
    a fixed amount attributed to where they were first allocated): a second round of
    TRACED_CHANNELS channels must not leave more traced memory behind, in total or
    allocated in channel.py, than a fixed slack far below one small object per channel.
    """
    _check_lifecycles(await lifecycles(2_000), 2_000)  # warm up, untraced
    only_channel = [tracemalloc.Filter(True, channel.__file__)]
    tracemalloc.start()
    try:
        _check_lifecycles(await lifecycles(TRACED_CHANNELS), TRACED_CHANNELS)
        gc.collect()
        start, _ = tracemalloc.get_traced_memory()
        before = tracemalloc.take_snapshot().filter_traces(only_channel)
        seen = await lifecycles(TRACED_CHANNELS)
        gc.collect()
        end, _ = tracemalloc.get_traced_memory()
        after = tracemalloc.take_snapshot().filter_traces(only_channel)
    finally:
        tracemalloc.stop()
    assert gc.garbage == []
    _check_lifecycles(seen, TRACED_CHANNELS)
    kept = after.compare_to(before, "lineno")
    kept_by_channel = sum(stat.size_diff for stat in kept)
    slack = TRACED_CHANNELS * 4  # one leaked object per channel would be 8 times this, at least
    if sys.gettrace() is None:  # (coverage's tracer allocates as it meets new lines and arcs)
        assert end - start < slack, f"{end - start} bytes kept: {[str(st) for st in kept[:5]]}"
    assert kept_by_channel < slack, [str(stat) for stat in kept[:5]]


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["anext", "asend", "many", "batches"])
async def test_the_per_item_path_creates_no_reference_cycles(how: str) -> None:
    c: Channel[int, Any] = Channel()
    items = 2_000

    async def produce() -> None:
        async with c.sender as itemize:
            if how in ("many", "batches"):
                await itemize.many(range(10**9))
            reply = None
            for i in itertools.count():
                reply = await itemize(i)
                assert how != "asend" or reply == i

    last: list[int] = []

    async def take(n: int) -> list[int]:
        got: list[int] = []
        while len(got) < n:
            if how == "batches":
                got += await anext(c.receiver.batches(64))
            elif how == "asend" and last:
                got.append(await c.receiver.asend(last[-1]))
            else:
                got.append(await anext(c.receiver))
            last[:] = got[-1:]
        return got

    with anyio.fail_after(RUN_LIMIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(produce)
            await take(100)  # warm up
            gc.collect()
            gc.disable()
            try:
                got = await take(items)
                cycles = gc.collect()
            finally:
                gc.enable()
            c.receiver.close()
    assert got == list(range(got[0], got[0] + len(got)))
    assert cycles == 0, f"{cycles} objects in reference cycles after {items} items"


# ==========================================================================================
# 5. Misuse is loud: one table
# ==========================================================================================


async def in_another_loop(
    function: Callable[[], Awaitable[Any]], *, other_kind: bool = False
) -> Any:
    """Run `function` in a new event loop, in a worker thread.

    Of the same kind as the running one, or with `other_kind`, trio under asyncio and
    asyncio under trio.
    """
    if _on_trio():
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


async def _settle() -> None:
    for _ in range(10):
        await checkpoint()


async def itemize_after_its_block(c: Channel[int, Any]) -> None:
    async with c.sender as itemize:
        pass
    await itemize(1)


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
        await _settle()
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
        await _settle()
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


async def receive_in_an_event_loop_of_the_other_kind(c: Channel[int, Any]) -> None:
    async with c.sender:
        pass
    await in_another_loop(lambda: anext(c.receiver), other_kind=True)


async def use_after_its_loop_ended_in_a_new_loop_of_the_same_thread(c: Channel[int, Any]) -> None:
    async def bind() -> None:
        async with c.sender:
            pass

    on_trio = _on_trio()

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
    pytest.param(
        asend_a_value_before_the_first_item,
        ChannelError,
        "asend() with a value before the first item: no itemize is waiting for a reply "
        "yet; ask for the first item with anext() or asend(None)",
    ),
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
    pytest.param(enter_the_sender_in_a_second_event_loop, ChannelError, ANOTHER_LOOP),
    pytest.param(itemize_in_a_second_event_loop, ChannelError, ANOTHER_LOOP),
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


@pytest.mark.anyio
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
        raise Boom("the producer function failed")

    async with numbers() as items:
        with pytest.raises(SenderFailed):
            await anext(items)  # starts the function, which fails
        raise ValueError("the consumer failed")
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
            await _settle()
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


@pytest.mark.anyio
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


# --- Backend detection ------------------------------------------------------------------------


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


@pytest.mark.anyio
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
