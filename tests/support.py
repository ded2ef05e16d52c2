"""What the specification (test_channel.py) and the harnesses in tests/ share."""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import gc
import os
from collections.abc import (
    AsyncIterator,
    Callable,
    Iterator,
)
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
import trio
import uvloop

import channel
from channel import Channel

ROOT = Path(__file__).parent.parent  # the repository
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


HANG_LIMIT = 120  # seconds: under mutmut, a test still running then has hung


@pytest.fixture(autouse=bool(os.environ.get("MUTANT_UNDER_TEST")))
def _fresh_backends() -> Iterator[None]:
    """Under mutmut only: build the backends anew per test, so that their mutants run;
    and end the run of a mutant that hangs a test with nothing to run.

    channel caches each backend for the process; mutmut forks its workers from a
    process that already ran the suite, which would hide mutants of the factories.
    mutmut's time limit counts processor time, so it never stops a run that waits
    forever (a trio run whose abort function is gone, say): HANG_LIMIT does.
    """
    channel._backends.clear()
    faulthandler.dump_traceback_later(HANG_LIMIT, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


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


RUN_LIMIT = 10  # seconds: a hang detector; every run here takes milliseconds
HARNESS = "cancelled by the reliability harness"  # the message of its raw asyncio cancels
CANCELLED = (asyncio.CancelledError, trio.Cancelled)


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def in_trio() -> bool:
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


class Boom(Exception):
    """The error that ends a sender block "with an error"."""
