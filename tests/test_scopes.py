"""Scopes around both sides: a timeout or a cancellation meant for the producer and its
consumer ends as that cancellation, never as SenderFailed, on every backend."""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from collections.abc import Awaitable, Callable

import anyio
import pytest
import trio

import channel
from channel import Channel, Itemize
from tests.support import RUN_LIMIT, env_int, in_trio

pytestmark = pytest.mark.anyio

# Longer runs: CHANNEL_SCOPE_RUNS (default 1,000 per way of cancelling; 100 under mutmut).
#
# Each run: a producer of 100 items and its consumer, in one task group (or a @producer),
#    under a scope cancelled by a random deadline of 0 to 3 ms, or by the consumer's loop
#    body at item 3, as users write them: anyio's move_on_after and fail_after, the task
#    group's own scope, asyncio.timeout around an asyncio.TaskGroup, trio's move_on_after
#    and fail_after around a nursery. The loop body awaits in half of the runs. Every run
#    must end as its scope says (quietly, or with the timeout's own exception), never
#    with SenderFailed.

RUNS = env_int("CHANNEL_SCOPE_RUNS", 100 if os.environ.get("MUTANT_UNDER_TEST") else 1_000)
SEED = env_int("CHANNEL_SCOPE_SEED", 20261206)


class Run:
    """One run's random choices: the deadline, and whether the loop body awaits."""

    def __init__(self, rng: random.Random) -> None:
        self.deadline = rng.uniform(0, 0.003)
        self.body_awaits = rng.random() < 0.5

    async def producer(self, c: Channel[int]) -> None:
        async with c.sender as itemize:
            for i in range(100):
                await itemize(i)

    async def body(self) -> None:
        if self.body_awaits:
            await anyio.lowlevel.checkpoint()


async def anyio_move_on_after(run: Run) -> None:
    c: Channel[int] = Channel()
    with anyio.move_on_after(run.deadline):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run.producer, c)
            async for _ in c.receiver:
                await run.body()


async def anyio_fail_after(run: Run) -> None:
    c: Channel[int] = Channel()
    with anyio.fail_after(run.deadline):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run.producer, c)
            async for _ in c.receiver:
                await run.body()


async def task_group_cancelled_in_the_body(run: Run) -> None:
    c: Channel[int] = Channel()
    async with anyio.create_task_group() as tg:
        tg.start_soon(run.producer, c)
        async for item in c.receiver:
            if item == 3:
                tg.cancel_scope.cancel()
            await run.body()


async def cancelled_in_the_body_then_a_shielded_wait(run: Run) -> None:
    c: Channel[int] = Channel()
    async with anyio.create_task_group() as tg:
        tg.start_soon(run.producer, c)
        async for item in c.receiver:
            if item == 3:
                tg.cancel_scope.cancel()
                with anyio.CancelScope(shield=True):
                    await anyio.sleep(run.deadline)  # the producer's block ends meanwhile


async def producer_function_under_move_on_after(run: Run) -> None:
    @channel.producer
    async def numbers(itemize: Itemize[int]) -> None:
        for i in range(100):
            await itemize(i)

    with anyio.move_on_after(run.deadline):
        async with numbers() as items:
            async for _ in items:
                await run.body()


async def backend_timeout(run: Run) -> None:
    """asyncio.timeout around an asyncio.TaskGroup; trio.fail_after around a nursery."""
    c: Channel[int] = Channel()
    if in_trio():
        with trio.fail_after(run.deadline):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run.producer, c)
                async for _ in c.receiver:
                    await run.body()
        return
    async with asyncio.timeout(run.deadline), asyncio.TaskGroup() as tg:
        tg.create_task(run.producer(c))
        async for _ in c.receiver:
            await run.body()


async def backend_scope_around_two_tasks(run: Run) -> None:
    """asyncio: the consumer a task of an asyncio.TaskGroup too, the host cancelled by
    asyncio.timeout; trio: trio.move_on_after around a nursery."""
    c: Channel[int] = Channel()
    if in_trio():
        with trio.move_on_after(run.deadline):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run.producer, c)
                async for _ in c.receiver:
                    await run.body()
        return

    async def consume() -> None:
        async for _ in c.receiver:
            await run.body()

    async with asyncio.timeout(run.deadline), asyncio.TaskGroup() as tg:
        tg.create_task(run.producer(c))
        tg.create_task(consume())


def _ended(exc: BaseException | None) -> str:
    if exc is None:
        return "quietly"
    if isinstance(exc, BaseExceptionGroup):
        return "group of " + ", ".join(sorted({_ended(e) for e in exc.exceptions}))
    return type(exc).__name__


WAYS: list[tuple[Callable[[Run], Awaitable[None]], set[str]]] = [
    (anyio_move_on_after, {"quietly"}),
    (anyio_fail_after, {"quietly", "TimeoutError"}),
    (task_group_cancelled_in_the_body, {"quietly"}),
    (cancelled_in_the_body_then_a_shielded_wait, {"quietly"}),
    (producer_function_under_move_on_after, {"quietly"}),
    (backend_timeout, {"quietly", "TimeoutError", "TooSlowError"}),
    (backend_scope_around_two_tasks, {"quietly", "TimeoutError"}),
]


@pytest.mark.parametrize(("way", "allowed"), WAYS, ids=[way.__name__ for way, _ in WAYS])
async def test_a_scope_around_both_sides_ends_as_its_cancellation(
    way: Callable[[Run], Awaitable[None]], allowed: set[str]
) -> None:
    rng = random.Random(SEED)
    ends: Counter[str] = Counter()
    with anyio.fail_after(RUN_LIMIT * 6):
        for _ in range(RUNS):
            try:
                await way(Run(rng))
            except Exception as exc:
                ends[_ended(exc)] += 1
            else:
                ends["quietly"] += 1
    assert set(ends) <= allowed, ends
