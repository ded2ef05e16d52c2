"""The behaviour that users of `channel` rely on, on asyncio, uvloop and trio."""

from __future__ import annotations

import asyncio
import gc
import re
import subprocess
import sys
import textwrap
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
