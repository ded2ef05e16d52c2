"""The behaviour that users of `channel` rely on, on asyncio, uvloop and trio."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import re
import subprocess
import sys
import textwrap
import threading
import warnings
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import trio
import uvloop
from mypy import api

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

    async def producer() -> None:
        async with c.sender as itemize:
            with anyio.move_on_after(0.01) as scope:
                await itemize("withdrawn")
            assert scope.cancelled_caught
            await itemize("kept")

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            await wait_until(lambda: c.sender._state.end is None and _waiting_itemize(c) == 0)
            await anyio.sleep(0.05)
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


@pytest.mark.anyio
async def test_cancelling_many_stops_the_delegation_and_closes_the_generator() -> None:
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
            await itemize(-1)

    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            assert await anext(c.receiver) == 0
            scope.cancel()
            assert await collect(c.receiver) == [-1]
    assert events == ["generator closed"]


@pytest.mark.anyio
async def test_a_long_many_stream_passes_a_checkpoint_every_256_items() -> None:
    c: Channel[int] = Channel()

    async def producer() -> None:
        async with c.sender as itemize:
            await itemize.many(range(2048))

    received: list[int] = []
    with anyio.fail_after(STEP):
        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            assert await anext(c.receiver) == 0  # the delegation is running
            with anyio.CancelScope() as scope:
                scope.cancel()  # delivered at the consumer's next scheduling point
                async for item in c.receiver:
                    received.append(item)
            assert scope.cancelled_caught
            assert 0 < len(received) <= 256
            received += await collect(c.receiver)  # the interrupted item is not lost
    assert received == list(range(1, 2048))


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


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["cancel it", "close the receiver", "end the block"])
async def test_a_queued_delegation_that_never_starts_closes_its_generator(how: str) -> None:
    c: Channel[str] = Channel()
    events: list[str] = []
    scope = anyio.CancelScope()

    def letters() -> Iterator[str]:
        try:
            yield "never delivered"
        finally:
            events.append("generator closed")

    source = letters()
    next(source)  # started by its owner, so it has cleanup to do

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
    assert group.group_contains(KeyError)
    assert group.group_contains(ValueError)


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
        async with c3.sender as itemize:
            assert repr(itemize) == "<itemize of channel open, 0 delivered>"
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


def _waiting_itemize(c: Channel[Any]) -> int:
    state = c.sender._state
    return len([w for w, _ in state.queue or () if not w.done()]) + (state.delivered is not None)


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


# --- Typing ---------------------------------------------------------------------------

TYPING_ACCEPTED = """
from channel import Channel, Itemize, Receiver, Sender

async def takes_int_itemize(itemize: Itemize[int]) -> None:
    await itemize(1)

async def generic_producer(c: Channel[object]) -> None:
    async with c.sender as itemize:
        await takes_int_itemize(itemize)  # Itemize[object] where Itemize[int] is expected

def widen(r: Receiver[bool]) -> Receiver[int]:
    return r  # a Receiver of bools gives ints

def narrow(s: Sender[object]) -> Sender[str]:
    return s  # a Sender that takes anything takes strings

async def consume(c: Channel[str]) -> list[str]:
    return [item.upper() async for item in c.receiver]
"""

TYPING_ACCEPTED += """
from collections.abc import Generator

async def replies_are_typed(c: Channel[str, int]) -> int:
    reply = 0
    async with c.sender as itemize:
        reply = await itemize("x")
    return reply

def replies_widen(i: Itemize[str, bool]) -> Itemize[str, int]:
    return i  # itemize is covariant in the reply

def receiver_takes_narrower_replies(r: Receiver[str, int]) -> Receiver[str, bool]:
    return r  # a Receiver that sends ints can send bools

def gen() -> Generator[str, int, float]:
    yield "a"
    return 1.0

async def many_returns_the_generator_value(c: Channel[str, int]) -> float:
    result = 0.0
    async with c.sender as itemize:
        result = await itemize.many(gen())
    return result
"""

TYPING_REJECTED = {
    "reply_is_covariant_in_itemize": """
from channel import Itemize
def narrow(i: Itemize[str, int]) -> Itemize[str, bool]:
    return i
""",
    "asend_takes_the_reply_type": """
from channel import Channel
async def consumer(c: Channel[str, int]) -> None:
    await c.receiver.asend("not an int")
""",
    "itemize_is_contravariant": """
from channel import Channel, Itemize
async def takes_object_itemize(itemize: Itemize[object]) -> None: ...
async def producer(c: Channel[int]) -> None:
    async with c.sender as itemize:
        await takes_object_itemize(itemize)
""",
    "receiver_is_covariant": """
from channel import Receiver
def narrow(r: Receiver[int]) -> Receiver[bool]:
    return r
""",
    "items_are_typed": """
from channel import Channel
async def producer(c: Channel[int]) -> None:
    async with c.sender as itemize:
        await itemize("not an int")
""",
    "received_items_are_typed": """
from channel import Channel
async def consumer(c: Channel[int]) -> None:
    async for item in c.receiver:
        item.upper()
""",
}


def _mypy(source: str, tmp_path: Path) -> tuple[str, int]:
    path = tmp_path / "user_code.py"
    path.write_text(source)
    stdout, stderr, status = api.run(
        ["--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"), str(path)]
    )
    return stdout + stderr, status


def test_mypy_accepts_what_the_variance_allows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MYPYPATH", str(ROOT))
    output, status = _mypy(TYPING_ACCEPTED, tmp_path)
    assert status == 0, output


@pytest.mark.parametrize("name", sorted(TYPING_REJECTED))
def test_mypy_rejects_what_the_variance_forbids(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MYPYPATH", str(ROOT))
    output, status = _mypy(TYPING_REJECTED[name], tmp_path)
    assert status == 1, output
    assert "error:" in output
