"""Stress: many channels at once, random timeouts, cancellations, failures and closes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
import trio

from channel import Channel
from tests.scenarios import (
    Block,
    Log,
    Plan,
    Scenario,
    ask_once,
    check_run,
    produce_single,
)
from tests.support import (
    HARNESS,
    Boom,
    checkpoint,
    collecting_by_hand,
    env_int,
    in_trio,
)

pytestmark = pytest.mark.anyio

# Longer runs: CHANNEL_STRESS_SECONDS (default 0.5), CHANNEL_STRESS_CHANNELS (10,000).
#
# Stress (`test_stress_many_channels_at_once`): 10,000 channels at once with random
#    timeouts (0, 0.1 ms, 1 ms), scope and raw cancellations, failed blocks and early
#    closes; then every channel must finish (zero stuck), with the invariants of the
#    cancellation sweep on each (zero lost, zero duplicated). On every third channel one
#    task group holds both sides, under a deadline (anyio's, or the backend's own) that
#    may expire, and the receiver's loop body or the chaos task may cancel its scope:
#    its receiver must then end with its cancellation, never SenderFailed.
#

# ==========================================================================================
# 3. Stress: many channels at once, random timeouts, cancellations, failures and closes
# ==========================================================================================

STRESS_CHANNELS = env_int("CHANNEL_STRESS_CHANNELS", 10_000)
STRESS_SECONDS = float(os.environ.get("CHANNEL_STRESS_SECONDS", "0.5"))
STRESS_SEED = env_int("CHANNEL_STRESS_SEED", 20240601)
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
    if not in_trio():
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


PAIRED = 3  # every third channel: one task group holds both sides
PAIR_DEADLINES = (0.001, 0.01, 0.1, 10.0)  # seconds; the last one never expires


@contextlib.asynccontextmanager
async def _deadline(kind: str, seconds: float) -> AsyncIterator[None]:
    """A deadline: anyio's, or the backend's own (asyncio's raises TimeoutError)."""
    if kind == "anyio":
        with anyio.move_on_after(seconds):
            yield
    elif in_trio():
        with trio.move_on_after(seconds):
            yield
    else:
        async with asyncio.timeout(seconds):
            yield


async def stress_pair(s: Stressed, rng: random.Random, stop: list[bool]) -> None:
    """Both sides of one channel in one task group, under a scope that gets cancelled."""
    kind, seconds = rng.choice(("anyio", "backend")), rng.choice(PAIR_DEADLINES)
    with _stressed_end(s, "pair") as scope, contextlib.suppress(TimeoutError):
        async with _deadline(kind, seconds), anyio.create_task_group() as tg:
            tg.start_soon(pair_producer, s, stop)
            while s.log.end is None:
                await ask_once(s.c, s.log, "anext")
                if rng.random() < 0.003:
                    scope.cancel()  # in the loop body, without awaiting first
                if rng.random() < 0.3:
                    await checkpoint()
    if s.log.end is None:
        s.log.end = "cancelled"
    s.finished += 1  # the pair's producer, which ended with it


async def pair_producer(s: Stressed, stop: list[bool]) -> None:
    async with Block(s.c, s.log) as itemize:
        n = 0
        while not stop[0]:
            item, n = (0, n), n + 1
            await s.log.itemize(itemize, item)


async def chaos(channels: list[Stressed], rng: random.Random, stop: list[bool]) -> None:
    """Cancels producers, receivers and pairs at random, with scopes and (asyncio) task.cancel()."""
    while not stop[0]:
        for _ in range(20):
            s = rng.choice(channels)
            end = rng.choice(("producer", "receiver", "pair"))
            if s.tasks and rng.random() < 0.5:
                if end in s.tasks and end not in s.raw_cancelled:
                    s.raw_cancelled.add(end)
                    s.tasks[end].cancel(HARNESS)
            elif end in s.scopes:
                s.scopes[end].cancel()
        await anyio.sleep(0.0005)


@pytest.mark.timeout(600)  # heavy: many thousands of channels
async def test_stress_many_channels_at_once() -> None:
    rng = random.Random(STRESS_SEED)
    channels = [Stressed() for _ in range(STRESS_CHANNELS)]
    stop = [False]
    with collecting_by_hand(), anyio.move_on_after(STRESS_SECONDS + DRAIN_LIMIT) as drain:
        async with anyio.create_task_group() as tg:
            for i, s in enumerate(channels):
                if i % PAIRED == 0:
                    tg.start_soon(stress_pair, s, random.Random(rng.random()), stop)
                    continue
                tg.start_soon(stress_producer, s, random.Random(rng.random()), stop)
                tg.start_soon(stress_receiver, s, random.Random(rng.random()))
            tg.start_soon(chaos, channels, random.Random(rng.random()), stop)
            await anyio.sleep(STRESS_SECONDS)
            stop[0] = True  # producers end their blocks; receivers drain to the end
    stuck = [i for i, s in enumerate(channels) if s.finished != 2]
    assert not drain.cancelled_caught, f"{len(stuck)} stuck, e.g. {stuck[:10]}"
    assert not stuck, f"{len(stuck)} tasks ended abnormally, e.g. {stuck[:10]}"

    scenario = Scenario("stress", produce_single)
    plans = (Plan("scope", "deadline"), Plan("both", "whole"))  # paired, or not
    problems = {
        i: found
        for i, s in enumerate(channels)
        if (found := check_run(s.log, scenario, plans[bool(i % PAIRED)]))
    }
    assert not problems, f"{len(problems)} channels broke: {list(problems.items())[:5]}"
    pairs = Counter(s.log.end for s in channels[::PAIRED])
    assert min(pairs["end"], pairs["cancelled"]) > 0, pairs  # both kinds of end happened
    ends = Counter(s.log.end for s in channels)
    outcomes = Counter(how for s in channels for how in s.log.outcome.values())
    # The run exercised what it claims to: items, withdrawals, every kind of end.
    assert outcomes["returned"] > 0, outcomes
    assert outcomes["cancelled"] > 0, outcomes
    assert outcomes["receiver closed"] > 0, outcomes
    assert min(ends["end"], ends["failed"], ends["cancelled"]) > 0, ends
