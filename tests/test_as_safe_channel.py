"""@producer against the behaviours of trio's as_safe_channel, on every backend."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

import channel
from channel import (
    ChannelClosed,
    ChannelError,
    Itemize,
    Receiver,
    ReceiverClosed,
)
from tests.support import (
    STEP,
    in_trio,
    settle,
)

pytestmark = pytest.mark.anyio

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
    cancelled scope: the scope absorbs the cancellation in the producer. On trio that
    ``itemize`` is cancelled before it hands item 2 over, as trio's own channels are; on
    asyncio the cancellation lands when it waits, after the waiting consumer took item 2,
    which stays delivered (README, "Cancellation loses nothing").
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
    assert got == ([1] if in_trio() else [1, 2])
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
    """The producer's failure cancels the body, as a task group does, so the consumer's
    loop is cancelled (never SenderFailed, which an ``except Exception`` in the body
    would catch); the producer's own exception comes out of the ``async with``.
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
            except Exception as e:  # the loop is cancelled instead: this catches nothing
                caught.append(e)
    assert caught == []


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


@pytest.mark.as_shipped
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
