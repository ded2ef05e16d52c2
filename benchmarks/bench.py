"""Benchmarks of yieldchannel: the cost of a hand-over next to the backend's floor and to peers.

Run from anywhere (it measures the ``channel.py`` of this repository)::

    python benchmarks/bench.py           # full run, 2-3 minutes; writes results.md and results.png
    python benchmarks/bench.py --quick   # smoke run, seconds; writes its files to a temp directory

Every figure is the median of several repetitions, each in a fresh event loop (or
trio run), with the implementations interleaved so that a noisy neighbour hits them
alike. Times are wall-clock (``time.perf_counter``) per item, in microseconds.

Needs trio, anyio and aiochannel; uvloop, sav.channels (0.1) and matplotlib are
used when installed and skipped, with a note, when not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import importlib
import importlib.metadata
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiochannel
import anyio
import outcome
import trio
import trio.lowlevel
import trio.testing

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))  # measure this repository's channel.py, not an installed copy

from channel import Channel, Itemize  # noqa: E402

T = TypeVar("T")
Job = Callable[[], Coroutine[Any, Any, None]]


# --- Settings -----------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    items: int  # items per timed run of a hand-over
    fast_factor: int  # more items for the rows without a task switch per item
    reps: int
    idle_channels: int
    scale: tuple[tuple[int, int, int], ...]  # (channels, extra items per channel, repetitions)
    import_runs: int


FULL = Settings(
    items=20_000,
    fast_factor=10,
    reps=5,
    idle_channels=10_000,
    scale=((1, 20_000, 5), (1_000, 20, 5), (100_000, 2, 2)),
    import_runs=9,
)
QUICK = Settings(
    items=2_000,
    fast_factor=10,
    reps=3,
    idle_channels=10_000,
    scale=((1, 2_000, 3), (100, 20, 3), (5_000, 2, 2)),
    import_runs=3,
)
PRODUCERS = 8  # tasks sharing one itemize


class BenchmarkError(Exception):
    """A benchmark delivered wrong results."""


def check_total(total: int, n: int) -> None:
    if total != n * (n - 1) // 2:
        raise BenchmarkError(f"items lost or changed: total {total} for {n} items")


# --- Backends: how to run a coroutine and how to start tasks ---------------------------


class Gate(Protocol):
    def set(self) -> None: ...
    async def wait(self) -> object: ...


class Tasks(Protocol):
    """Starting tasks, the same way for every implementation on one backend."""

    async def pair(self, consumer: Job, producer: Job) -> float:
        """Run both as tasks, wait for both; return the elapsed seconds."""

    async def group(self, jobs: Sequence[Job]) -> None:
        """Run all as tasks and wait for all."""

    def gate(self) -> Gate: ...

    async def crowd(self, jobs: Sequence[Job], body: Job) -> None:
        """Start all jobs, wait until all are parked, run ``body``, wait until all have ended."""


class AsyncioTasks:
    async def pair(self, consumer: Job, producer: Job) -> float:
        start = time.perf_counter()
        receiving = asyncio.create_task(consumer())
        sending = asyncio.create_task(producer())
        await receiving
        await sending
        return time.perf_counter() - start

    async def group(self, jobs: Sequence[Job]) -> None:
        async with asyncio.TaskGroup() as tg:
            for job in jobs:
                tg.create_task(job())

    def gate(self) -> Gate:
        return asyncio.Event()

    async def crowd(self, jobs: Sequence[Job], body: Job) -> None:
        tasks = [asyncio.create_task(job()) for job in jobs]
        for _ in range(3):  # every task runs up to its first wait
            await asyncio.sleep(0)
        await body()
        await asyncio.gather(*tasks)


class TrioTasks:
    async def pair(self, consumer: Job, producer: Job) -> float:
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consumer)
            nursery.start_soon(producer)
        return time.perf_counter() - start

    async def group(self, jobs: Sequence[Job]) -> None:
        async with trio.open_nursery() as nursery:
            for job in jobs:
                nursery.start_soon(job)

    def gate(self) -> Gate:
        return trio.Event()

    async def crowd(self, jobs: Sequence[Job], body: Job) -> None:
        async with trio.open_nursery() as nursery:
            for job in jobs:
                nursery.start_soon(job)
            await trio.testing.wait_all_tasks_blocked()
            await body()


class AnyioTasks:
    async def pair(self, consumer: Job, producer: Job) -> float:
        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            tg.start_soon(consumer)
            tg.start_soon(producer)
        return time.perf_counter() - start

    async def group(self, jobs: Sequence[Job]) -> None:
        async with anyio.create_task_group() as tg:
            for job in jobs:
                tg.start_soon(job)

    def gate(self) -> Gate:
        return anyio.Event()

    async def crowd(self, jobs: Sequence[Job], body: Job) -> None:
        raise NotImplementedError  # not used


@dataclass(frozen=True)
class Backend:
    name: str  # "asyncio", "uvloop" or "trio"
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None

    @property
    def is_trio(self) -> bool:
        return self.name == "trio"

    @property
    def tasks(self) -> Tasks:
        return TrioTasks() if self.is_trio else AsyncioTasks()

    def run(self, function: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run ``function()`` in a fresh event loop or trio run."""
        if self.is_trio:
            return trio.run(function)
        with asyncio.Runner(loop_factory=self.loop_factory) as runner:
            return runner.run(function())

    def run_anyio(self, function: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run ``function()`` with ``anyio.run`` on this backend."""
        if self.is_trio:
            return anyio.run(function, backend="trio")
        options: dict[str, Any] = {}
        if self.loop_factory is not None:
            options["loop_factory"] = self.loop_factory
        return anyio.run(function, backend="asyncio", backend_options=options)


def available_backends(notes: list[str]) -> list[Backend]:
    backends = [Backend("asyncio")]
    if importlib.util.find_spec("uvloop") is not None:
        import uvloop

        backends.append(Backend("uvloop", uvloop.new_event_loop))
    else:
        notes.append("uvloop is not installed: no uvloop table.")
    backends.append(Backend("trio"))
    return backends


# --- The floor: the cheapest two-task hand-over on each backend -----------------------


async def floor_futures(tasks: Tasks, n: int) -> float:
    """Two tasks, two asyncio futures per item: the producer gives, the consumer asks."""
    loop = asyncio.get_running_loop()
    give: asyncio.Future[int] = loop.create_future()  # the consumer waits on it
    ask: asyncio.Future[None] = loop.create_future()  # the producer waits on it

    async def consumer() -> None:
        nonlocal give
        total = 0
        waiting = give
        for _ in range(n):
            total += await waiting
            waiting = give = loop.create_future()
            ask.set_result(None)  # the producer set `ask` before it gave this item
        check_total(total, n)

    async def producer() -> None:
        nonlocal ask
        for i in range(n):
            ask = asked = loop.create_future()
            give.set_result(i)
            await asked

    return await tasks.pair(consumer, producer)


def _abort(_: object) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.SUCCEEDED


async def floor_trio(tasks: Tasks, n: int) -> float:
    """Two trio tasks parked with wait_task_rescheduled, woken with reschedule."""
    wait, reschedule = trio.lowlevel.wait_task_rescheduled, trio.lowlevel.reschedule
    receiving: trio.lowlevel.Task | None = None
    sending: trio.lowlevel.Task | None = None

    async def consumer() -> None:
        nonlocal receiving
        receiving = trio.lowlevel.current_task()
        if sending is not None:  # the producer waits for the first ask
            reschedule(sending)
        total = await wait(_abort)  # the first item: the producer is known now
        producer = sending
        if producer is None:
            raise BenchmarkError("no producer")
        for _ in range(n - 1):
            reschedule(producer)
            total += await wait(_abort)
        reschedule(producer)
        check_total(total, n)

    async def producer() -> None:
        nonlocal sending
        sending = trio.lowlevel.current_task()
        if receiving is None:
            await wait(_abort)  # until the consumer arrives and asks
        consumer = receiving
        if consumer is None:
            raise BenchmarkError("no consumer")
        for i in range(n):
            reschedule(consumer, outcome.Value(i))
            await wait(_abort)

    return await tasks.pair(consumer, producer)


async def _count_up(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


async def in_task_generator(tasks: Tasks, n: int) -> float:
    """The in-task limit: an async generator iterated in the same task, no hand-over."""
    start = time.perf_counter()
    total = 0
    async for x in _count_up(n):
        total += x
    elapsed = time.perf_counter() - start
    check_total(total, n)
    return elapsed


# --- Peers ---------------------------------------------------------------------------


async def asyncio_queue(tasks: Tasks, n: int) -> float:
    queue: asyncio.Queue[int | None] = asyncio.Queue(maxsize=1)

    async def consumer() -> None:
        total = 0
        while (x := await queue.get()) is not None:
            total += x
        check_total(total, n)

    async def producer() -> None:
        for i in range(n):
            await queue.put(i)
        await queue.put(None)

    return await tasks.pair(consumer, producer)


async def anyio_stream(tasks: Tasks, n: int) -> float:
    return await memory_channel_pair(tasks, n, *anyio.create_memory_object_stream[int](0))


async def trio_channel(tasks: Tasks, n: int) -> float:
    return await memory_channel_pair(tasks, n, *trio.open_memory_channel[int](0))


async def memory_channel_pair(tasks: Tasks, n: int, send: Any, receive: Any) -> float:
    """trio's channels and anyio's streams: the same send/receive API, used the same way."""

    async def consumer() -> None:
        total = 0
        async with receive:
            async for x in receive:
                total += x
        check_total(total, n)

    async def producer() -> None:
        async with send:
            for i in range(n):
                await send.send(i)

    return await tasks.pair(consumer, producer)


async def aiochannel_channel(tasks: Tasks, n: int) -> float:
    chan: aiochannel.Channel[int] = aiochannel.Channel(1)

    async def consumer() -> None:
        total = 0
        async for x in chan:
            total += x
        check_total(total, n)

    async def producer() -> None:
        for i in range(n):
            await chan.put(i)
        chan.close()

    return await tasks.pair(consumer, producer)


class SavChannel(Protocol):
    """The API of sav.channels 0.1, which ships no type information."""

    sender: AbstractAsyncContextManager[Callable[[int], Awaitable[None]]]
    receiver: AsyncIterator[int]


def sav_channel_factory() -> Callable[[], SavChannel] | None:
    """``sav.channels.Channel``, if installed (it must be called inside a running loop)."""
    if importlib.util.find_spec("sav") is None or importlib.util.find_spec("sav.channels") is None:
        return None
    factory: Callable[[], SavChannel] = importlib.import_module("sav.channels").Channel
    return factory


async def sav_channels(tasks: Tasks, n: int) -> float:
    factory = sav_channel_factory()
    assert factory is not None
    chan = factory()

    async def consumer() -> None:
        total = 0
        async for x in chan.receiver:
            total += x
        check_total(total, n)

    async def producer() -> None:
        async with chan.sender as itemize:
            for i in range(n):
                await itemize(i)

    return await tasks.pair(consumer, producer)


# --- Ours ----------------------------------------------------------------------------


async def ours_single(tasks: Tasks, n: int) -> float:
    chan: Channel[int] = Channel()

    async def consumer() -> None:
        total = 0
        async for x in chan.receiver:
            total += x
        check_total(total, n)

    async def producer() -> None:
        async with chan.sender as itemize:
            for i in range(n):
                await itemize(i)

    return await tasks.pair(consumer, producer)


async def ours_duplex(tasks: Tasks, n: int) -> float:
    """Round trips: the consumer answers each item with ``asend``, ``itemize`` returns it."""
    chan: Channel[int, int] = Channel()

    async def consumer() -> None:
        receiver = chan.receiver
        x = await anext(receiver)
        total = x
        try:
            while True:
                x = await receiver.asend(x + 1)
                total += x
        except StopAsyncIteration:
            pass
        check_total(total, n)

    async def producer() -> None:
        async with chan.sender as itemize:
            for i in range(n - 1):
                if await itemize(i) != i + 1:
                    raise BenchmarkError("wrong reply")
            await itemize(n - 1)  # the reply to the last item is the end of the stream

    return await tasks.pair(consumer, producer)


async def ours_many(tasks: Tasks, n: int) -> float:
    chan: Channel[int] = Channel()

    async def consumer() -> None:
        total = 0
        async for x in chan.receiver:
            total += x
        check_total(total, n)

    async def producer() -> None:
        async with chan.sender as itemize:
            await itemize.many(range(n))

    return await tasks.pair(consumer, producer)


async def ours_many_batches(tasks: Tasks, n: int) -> float:
    chan: Channel[int] = Channel()

    async def consumer() -> None:
        total = 0
        async for batch in chan.receiver.batches(256):
            for x in batch:
                total += x
        check_total(total, n)

    async def producer() -> None:
        async with chan.sender as itemize:
            await itemize.many(range(n))

    return await tasks.pair(consumer, producer)


async def ours_shared(tasks: Tasks, n: int) -> float:
    chan: Channel[int] = Channel()

    async def consumer() -> None:
        total = 0
        async for x in chan.receiver:
            total += x
        check_total(total, n)

    async def part(itemize: Itemize[int], first: int) -> None:
        for i in range(first, n, PRODUCERS):
            await itemize(i)

    async def producer() -> None:
        async with chan.sender as itemize:
            await tasks.group([functools.partial(part, itemize, k) for k in range(PRODUCERS)])

    return await tasks.pair(consumer, producer)


# --- The rows ------------------------------------------------------------------------

Bench = Callable[[Tasks, int], Coroutine[Any, Any, float]]


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    bench: Bench
    backends: tuple[str, ...] = ("asyncio", "uvloop", "trio")
    fast: bool = False  # no task switch per item: run more items
    anyio: bool = False  # run with anyio.run and anyio tasks


ASYNCIO_FAMILY = ("asyncio", "uvloop")
FLOOR_LABEL = {
    "asyncio": "floor: 2 tasks, 2 futures per item",
    "uvloop": "floor: 2 tasks, 2 futures per item",
    "trio": "floor: 2 tasks, wait_task_rescheduled/reschedule",
}
ROWS = (
    Row("floor", "floor", floor_futures, ASYNCIO_FAMILY),
    Row("floor", "floor", floor_trio, ("trio",)),
    Row("agen", "in-task async generator (no hand-over)", in_task_generator, fast=True),
    Row("queue", "asyncio.Queue(maxsize=1)", asyncio_queue, ASYNCIO_FAMILY),
    Row("trio", "trio.open_memory_channel(0)", trio_channel, ("trio",)),
    Row("anyio", "anyio memory object stream (0)", anyio_stream, anyio=True),
    Row("aiochannel", "aiochannel.Channel(1)", aiochannel_channel, ASYNCIO_FAMILY),
    Row("sav", "sav.channels 0.1", sav_channels, ASYNCIO_FAMILY),
    Row("ours", "yieldchannel: itemize(x)", ours_single),
    Row("duplex", "yieldchannel: asend round trip", ours_duplex),
    Row("many", "yieldchannel: itemize.many(range)", ours_many, fast=True),
    Row(
        "batches", "yieldchannel: itemize.many, read by batches(256)", ours_many_batches, fast=True
    ),
    Row("shared", f"yieldchannel: {PRODUCERS} tasks share itemize", ours_shared),
)


@dataclass
class Result:
    row: Row
    items: int
    times: list[float] = field(default_factory=list)  # seconds per run
    error: str | None = None

    @property
    def per_item(self) -> float:
        """Median microseconds per item."""
        return statistics.median(self.times) / self.items * 1e6

    @property
    def spread(self) -> tuple[float, float]:
        return min(self.times) / self.items * 1e6, max(self.times) / self.items * 1e6


def measure_once(backend: Backend, row: Row, n: int) -> float:
    gc.collect()
    if row.anyio:
        return backend.run_anyio(lambda: row.bench(AnyioTasks(), n))
    tasks = backend.tasks
    return backend.run(lambda: row.bench(tasks, n))


def run_rows(backend: Backend, settings: Settings, notes: list[str]) -> list[Result]:
    results: list[Result] = []
    for row in ROWS:
        if backend.name not in row.backends:
            continue
        if row.key == "sav" and sav_channel_factory() is None:
            if backend.name == "asyncio":
                notes.append("sav.channels is not installed: no sav.channels rows.")
            continue
        n = settings.items * (settings.fast_factor if row.fast else 1)
        if row.key == "shared":
            n -= n % PRODUCERS
        results.append(Result(row, n))
    for result in results:  # warm up
        try:
            measure_once(backend, result.row, max(result.items // 10, PRODUCERS))
        except Exception as exc:  # reported in the table; the run goes on
            result.error = f"{type(exc).__name__}: {exc}"
    for _ in range(settings.reps):  # interleaved, so that noise hits every row alike
        for result in results:
            if result.error is None:
                try:
                    result.times.append(measure_once(backend, result.row, result.items))
                except Exception as exc:
                    result.error = f"{type(exc).__name__}: {exc}"
    return results


# --- Memory of an idle channel -------------------------------------------------------


def idle_bytes(make: Callable[[], object], count: int) -> float:
    """Bytes allocated per object by ``make()``, with ``count`` of them kept alive."""
    keep: list[object] = [None] * count  # the list itself is not counted
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(count):
            keep[i] = make()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del keep
    return (after - before) / count


def idle_rows(settings: Settings, notes: list[str]) -> list[tuple[str, float]]:
    count = settings.idle_channels
    asyncio_backend = Backend("asyncio")
    trio_backend = Backend("trio")

    async def in_asyncio(make: Callable[[], object]) -> float:
        return idle_bytes(make, count)

    async def in_trio(make: Callable[[], object]) -> float:
        return idle_bytes(make, count)

    def ours() -> object:
        return Channel[int]()

    def queue() -> object:
        return asyncio.Queue[int](maxsize=1)

    def trio_pair() -> object:
        return trio.open_memory_channel[int](0)

    def anyio_pair() -> object:
        return anyio.create_memory_object_stream[int](0)

    def aio() -> object:
        return aiochannel.Channel[int](1)

    rows = [
        ("yieldchannel Channel()", asyncio_backend.run(lambda: in_asyncio(ours))),
        ("asyncio.Queue(maxsize=1)", asyncio_backend.run(lambda: in_asyncio(queue))),
        ("trio.open_memory_channel(0), both ends", trio_backend.run(lambda: in_trio(trio_pair))),
        ("anyio memory object stream (0), both ends", idle_bytes(anyio_pair, count)),
        ("aiochannel.Channel(1)", asyncio_backend.run(lambda: in_asyncio(aio))),
    ]
    sav = sav_channel_factory()
    if sav is not None:
        rows.append(("sav.channels 0.1 Channel()", asyncio_backend.run(lambda: in_asyncio(sav))))
    return rows


# --- Many channels at once -----------------------------------------------------------


@dataclass
class ScaleResult:
    channels: int
    items_low: int
    items_high: int
    low: list[float] = field(default_factory=list)  # seconds per phase
    high: list[float] = field(default_factory=list)
    peak_bytes: int = 0

    @property
    def per_item(self) -> float:
        """Microseconds per item: the difference of the medians cancels the phase overhead."""
        extra = self.channels * (self.items_high - self.items_low)
        return (statistics.median(self.high) - statistics.median(self.low)) / extra * 1e6


async def crowd_of_channels(tasks: Tasks, result: ScaleResult, reps: int) -> None:
    """Many channels, each with its own producer and consumer task, all alive at once.

    All tasks are started and parked first (under tracemalloc, for the memory figure).
    Then the producers are released together in timed phases, alternately sending
    ``items_low`` and ``items_high`` items each; a phase ends when every producer's
    last ``itemize`` of the phase has returned, that is when every consumer is waiting
    for the next item. Both kinds of phase have the same overhead (waking the
    producers, counting their arrivals), which the difference of the two cancels.
    """
    channels = result.channels
    plan = [result.items_low, result.items_high] * reps
    gates = [tasks.gate() for _ in plan]
    phase_ends = [tasks.gate() for _ in plan]
    arrived = [0] * len(plan)
    ready = received = 0

    async def consumer(chan: Channel[int]) -> None:
        nonlocal received
        count = 0
        async for _ in chan.receiver:
            count += 1
        received += count

    async def producer(chan: Channel[int]) -> None:
        nonlocal ready
        async with chan.sender as itemize:
            ready += 1
            for phase, items in enumerate(plan):
                await gates[phase].wait()
                for i in range(items):
                    await itemize(i)
                arrived[phase] += 1
                if arrived[phase] == channels:
                    phase_ends[phase].set()

    async def phases() -> None:
        result.peak_bytes = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        if ready != channels:
            raise BenchmarkError(f"only {ready} of {channels} producers are ready")
        gc.enable()  # the timed phases pay for garbage collection as usual,
        gc.collect()  # but not for a collection owed by the setup
        for phase, items in enumerate(plan):
            start = time.perf_counter()
            gates[phase].set()
            await phase_ends[phase].wait()
            elapsed = time.perf_counter() - start
            (result.low if items == result.items_low else result.high).append(elapsed)
        gc.disable()

    # Creating and ending 200,000 tasks is not timed: spare it the garbage collector,
    # which would otherwise walk the growing heap again and again.
    gc.collect()
    gc.disable()
    tracemalloc.start()
    jobs: list[Job] = []
    for _ in range(channels):
        chan: Channel[int] = Channel()
        jobs += [functools.partial(consumer, chan), functools.partial(producer, chan)]
    try:
        await tasks.crowd(jobs, phases)
    finally:
        if tracemalloc.is_tracing():
            tracemalloc.stop()
        gc.enable()
    if received != channels * sum(plan):
        raise BenchmarkError(f"{received} items received, not {channels * sum(plan)}")


def scale_rows(backend: Backend, settings: Settings) -> list[ScaleResult]:
    results = []
    for channels, extra, reps in settings.scale:
        result = ScaleResult(channels, 1, 1 + extra)
        backend.run(functools.partial(crowd_of_channels, backend.tasks, result, reps))
        results.append(result)
    return results


# --- Import time ----------------------------------------------------------------------


def import_microseconds(module: str, runs: int) -> list[float]:
    """Cumulative ``-X importtime`` microseconds of ``import module`` in fresh interpreters."""
    command = [sys.executable, "-X", "importtime", "-c", f"import {module}"]
    writing = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    # Once with bytecode writing on, so that a .pyc exists: else we would time compiling.
    subprocess.run(command, cwd=ROOT, env=writing, check=True, capture_output=True)
    times = []
    for _ in range(runs):
        done = subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True)
        for line in done.stderr.splitlines():
            # "import time:  self [us] | cumulative | imported package"; top level unindented
            parts = line.split("|")
            if len(parts) == 3 and parts[2].rstrip() == f" {module}":
                times.append(float(parts[1]))
    if len(times) != runs:
        raise BenchmarkError(f"no import time for {module!r} in the -X importtime output")
    return times


# --- Report ----------------------------------------------------------------------------


def verdict(value: float, limit: float) -> str:
    return "PASS" if value <= limit else "MISS"


@dataclass
class Target:
    description: str
    figure: str
    passed: bool


def table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = [("-" * (w - 1) + ":") if i in right else "-" * w for i, w in enumerate(widths)]
    return [line(header), "| " + " | ".join(rule) + " |", *(line(row) for row in rows)]


def backend_table(
    backend: Backend, results: list[Result], settings: Settings, targets: list[Target]
) -> list[str]:
    by_key = {r.row.key: r for r in results if r.error is None}
    floor = by_key["floor"].per_item if "floor" in by_key else float("nan")
    limits = {"asyncio": 1.15, "uvloop": 1.30}
    rows = []
    for result in results:
        label = FLOOR_LABEL[backend.name] if result.row.key == "floor" else result.row.label
        if result.error is not None:
            rows.append([label, "failed", "", "", result.error[:60]])
            continue
        per_item = result.per_item
        low, high = result.spread
        target = ""
        key = result.row.key
        if key == "ours" and backend.name in limits:
            limit = limits[backend.name]
            ratio = per_item / floor
            target = f"≤ {limit:.2f}x floor: {verdict(ratio, limit)}"
            targets.append(
                Target(
                    f"single item, {backend.name} ≤ {limit:.2f}x floor",
                    f"{ratio:.2f}x",
                    ratio <= limit,
                )
            )
        elif key == "ours" and "trio" in by_key:
            ratio = per_item / by_key["trio"].per_item
            target = f"≤ 1.10x trio channel: {verdict(ratio, 1.10)} ({ratio:.2f}x)"
            targets.append(
                Target(
                    "single item, trio ≤ 1.10x trio.open_memory_channel(0)",
                    f"{ratio:.2f}x",
                    ratio <= 1.10,
                )
            )
        elif key == "many" and "agen" in by_key:
            ratio = per_item / by_key["agen"].per_item
            target = f"≤ 2.0x in-task generator: {verdict(ratio, 2.0)} ({ratio:.2f}x)"
            targets.append(
                Target(
                    f"itemize.many, {backend.name} ≤ 2.0x in-task async generator",
                    f"{ratio:.2f}x",
                    ratio <= 2.0,
                )
            )
        rows.append(
            [label, f"{per_item:.3f}", f"{low:.3f}-{high:.3f}", f"{per_item / floor:.2f}", target]
        )
    fast = settings.items * settings.fast_factor
    title = (
        f"### {backend.name}: µs per item, median of {settings.reps} "
        f"({settings.items:,} items per run; {fast:,} for the rows without a task switch)"
    )
    header = ["implementation", "µs/item", "min-max", "x floor", "target"]
    return [title, "", *table(header, rows, right=(1, 2, 3)), ""]


def scale_table(
    backend: Backend, results: list[ScaleResult], settings: Settings, targets: list[Target]
) -> list[str]:
    single = results[0].per_item
    rows = []
    for result in results:
        ratio = result.per_item / single
        target = ""
        if result is results[-1] and len(results) > 1:
            target = f"≤ 1.3x 1 channel: {verdict(ratio, 1.3)}"
            targets.append(
                Target(
                    f"{result.channels:,} live channels, {backend.name} ≤ 1.3x one channel",
                    f"{ratio:.2f}x",
                    ratio <= 1.3,
                )
            )
        rows.append(
            [
                f"{result.channels:,}",
                f"{result.items_low} vs {result.items_high}",
                f"{len(result.high)}",
                f"{result.per_item:.3f}",
                f"{ratio:.2f}",
                f"{result.peak_bytes / 2**20:.1f}",
                f"{result.peak_bytes / result.channels:,.0f}",
                target,
            ]
        )
    title = f"### {backend.name}: many channels at once (yieldchannel)"
    header = [
        "channels",
        "items/channel per phase",
        "phases of each",
        "µs/item",
        "x 1 channel",
        "peak MiB",
        "peak B/channel",
        "target",
    ]
    return [title, "", *table(header, rows, right=(0, 1, 2, 3, 4, 5, 6)), ""]


def machine() -> list[str]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = []
    for dist in ("trio", "anyio", "uvloop", "aiochannel", "sav.channels"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions.append(f"{dist} {importlib.metadata.version(dist)}")
    return [
        f"- Machine: {cpu}, {os.cpu_count()} cores ({usable} usable), {platform.system()} "
        f"{platform.release()}",
        f"- Python {platform.python_version()} ({platform.python_implementation()}), "
        + ", ".join(versions),
        f"- Measured: `{ROOT.name}/channel.py` at {source_revision()}, "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}",
    ]


def source_revision() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "channel.py"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "an unknown revision"
    return f"commit {head}" + (" with local changes" if dirty else "")


COLORS = {  # the baselines in blues, the peers in muted colours, yieldchannel in reds
    "floor": "#1f77b4",
    "agen": "#aec7e8",
    "queue": "#7f7f7f",
    "trio": "#8c564b",
    "anyio": "#bcbd22",
    "aiochannel": "#17becf",
    "sav": "#9467bd",
    "ours": "#d62728",
    "duplex": "#ff7f0e",
    "many": "#ff9896",
    "batches": "#c49c94",
    "shared": "#e377c2",
}


def plot(all_results: dict[str, list[Result]], path: Path) -> None:
    """Bars of µs per item: one group per backend, one colour per implementation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.09
    fig, ax = plt.subplots(figsize=(12, 6.5))
    labelled: set[str] = set()
    for group, results in enumerate(all_results.values()):
        shown = [result for result in results if result.error is None]
        for i, result in enumerate(shown):
            key = result.row.key
            x = group + (i - (len(shown) - 1) / 2) * width
            label = (
                ("floor" if key == "floor" else result.row.label) if key not in labelled else None
            )
            labelled.add(key)
            bars = ax.bar(
                [x],
                [result.per_item],
                width * 0.95,
                label=label,
                color=COLORS[key],
            )
            ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    ax.set_xticks(range(len(all_results)), list(all_results))
    ax.set_ylabel("µs per item (median; lower is better)")
    ax.set_title("yieldchannel and peers: cost per item, per backend")
    ax.legend(fontsize=8, ncols=4, loc="upper center", bbox_to_anchor=(0.5, -0.07))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def idle_table(settings: Settings, notes: list[str], targets: list[Target]) -> list[str]:
    rows = []
    for label, size in idle_rows(settings, notes):
        target = ""
        if label.startswith("yieldchannel"):
            target = f"≤ 300 B: {verdict(size, 300)}"
            targets.append(Target("idle channel ≤ 300 bytes", f"{size:.0f} B", size <= 300))
        rows.append([label, f"{size:,.0f}", target])
    return [
        f"### Memory per idle channel (tracemalloc, {settings.idle_channels:,} kept alive)",
        "",
        *table(["implementation", "bytes", "target"], rows, right=(1,)),
        "",
    ]


ROWS_NOTE = (
    "Rows: *floor* is the cheapest two-task hand-over written directly on the backend "
    "(asyncio, uvloop: a producer and a consumer task and two futures per item; trio: "
    "`wait_task_rescheduled`/`reschedule`), the in-task async generator is the limit without "
    "any task switch. Every row moves the same items from a producer task to a consumer task "
    "(`async for`), except the in-task generator. *asend round trip*: the consumer answers "
    "each item with `receiver.asend(x)`, which `await itemize(...)` returns. "
    "*itemize.many(range)*: the consumer pulls the items of a `range` in its own task. "
    f"*{PRODUCERS} tasks share itemize*: {PRODUCERS} producer tasks call one `itemize` at "
    "once, so the consumer usually finds an item waiting and does not park (fewer task "
    "switches than the floor). anyio rows run under `anyio.run` on the same backend."
)


SCALE_NOTE = (
    "Many channels: each channel has its own producer and consumer task, all alive at once. "
    "All tasks are started and parked before the clock starts; then the producers are "
    "released together in timed phases of a few items each, alternating two phase lengths "
    "(items/channel). µs/item is the difference of the median phase times divided by the "
    "extra items, so the cost of releasing the producers cancels out. Peak memory: "
    "tracemalloc peak (Python allocations, not RSS) from before the channels were created "
    "until all tasks were parked, tasks and coroutine frames included."
)


def import_table(settings: Settings, targets: list[Target]) -> list[str]:
    rows = []
    for module in ("channel", "anyio", "trio"):
        times = import_microseconds(module, settings.import_runs)
        ms = statistics.median(times) / 1000
        target = ""
        if module == "channel":
            target = f"≤ 5 ms: {verdict(ms, 5)}"
            targets.append(Target("`import channel` ≤ 5 ms", f"{ms:.2f} ms", ms <= 5))
        rows.append([f"import {module}", f"{ms:.2f}", f"{min(times) / 1000:.2f}", target])
    return [
        "### Import time (`-X importtime` cumulative, fresh interpreter, .pyc present, "
        f"median of {settings.import_runs})",
        "",
        *table(["module", "ms", "min ms", "target"], rows, right=(1, 2)),
        "",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument(
        "--out",
        type=Path,
        help="where to write results.md and results.png (default: benchmarks/ for a full run, "
        "a temporary directory for --quick, so that the committed results stay full ones)",
    )
    args = parser.parse_args()
    settings = QUICK if args.quick else FULL
    out: Path = args.out or (
        Path(tempfile.gettempdir()) / "yieldchannel-bench-quick" if args.quick else HERE
    )
    began = time.perf_counter()
    notes: list[str] = []
    targets: list[Target] = []
    command = "python benchmarks/bench.py" + (" --quick" if args.quick else "")
    lines: list[str] = []

    def emit(block: list[str]) -> None:
        lines.extend(block)
        print("\n".join(block), flush=True)

    emit(["# yieldchannel benchmarks", "", *machine(), ""])
    emit([f"Command: `{command}`. Times are wall-clock per item; lower is better.", ""])
    emit([ROWS_NOTE, ""])
    backends = available_backends(notes)
    all_results: dict[str, list[Result]] = {}
    for backend in backends:
        all_results[backend.name] = run_rows(backend, settings, notes)
        emit(backend_table(backend, all_results[backend.name], settings, targets))
    emit(idle_table(settings, notes, targets))
    for backend in backends:
        emit(scale_table(backend, scale_rows(backend, settings), settings, targets))
    emit([SCALE_NOTE, ""])
    emit(import_table(settings, targets))
    target_rows = [[t.description, t.figure, "PASS" if t.passed else "MISS"] for t in targets]
    emit(["### Targets", "", *table(["target", "measured", ""], target_rows, right=(1,)), ""])

    out.mkdir(parents=True, exist_ok=True)
    written = [out / "results.md"]
    if importlib.util.find_spec("matplotlib") is not None:
        plot(all_results, out / "results.png")
        written.append(out / "results.png")
        lines += ["![µs per item per implementation and backend](results.png)", ""]
    else:
        notes.append("matplotlib is not installed: no results.png.")
    if notes:
        emit(["Notes:", "", *(f"- {note}" for note in notes), ""])
    (out / "results.md").write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    print("Wrote " + " and ".join(str(path) for path in written))
    print(f"Total time: {time.perf_counter() - began:.0f} s")
    failed = any(r.error is not None for results in all_results.values() for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
