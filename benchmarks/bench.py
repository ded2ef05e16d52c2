"""Benchmarks of yieldchannel: the cost per item next to the backend's floor and to peers.

    python benchmarks/bench.py                    # timing (pyperf); writes to benchmarks/
    python benchmarks/bench.py --instructions     # also instructions per item (callgrind)
    python benchmarks/bench.py --only asyncio/ours,asyncio/floor --instructions
    python benchmarks/bench.py --quick --out DIR  # smoke run: no figure is judged
    python -m pyperf compare_to OLD/timings.json NEW/timings.json

The cases are ROWS, the targets TARGETS (below). Timing is pyperf's: calibrated loops in
worker processes; one loop moves one item, so its figures are seconds per item. pyperf's
own options work too (``--fast``, ``-p``, ``-v``...). With ``--instructions`` every row
also runs twice under ``valgrind --tool=callgrind``, with two item counts; instructions
per item are the difference of the totals over the difference of the counts, so start-up
and set-up cancel out. Instruction counts decide the targets, wall-clock confirms them.
Writes results.md (tables to paste), results.png, results.json and timings.json (pyperf).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import importlib.util
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiochannel
import anyio
import outcome
import pyperf  # type: ignore[import-untyped]
import trio
import trio.lowlevel
import trio.testing

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # measure this repository's channel.py, not an installed copy

from channel import Channel, Itemize  # noqa: E402

T = TypeVar("T")
Job = Callable[[], Coroutine[Any, Any, None]]
ALL, AIO, TRIO = ("asyncio", "uvloop", "trio"), ("asyncio", "uvloop"), ("trio",)
COUNTS = (2_000, 12_000)  # items in the two callgrind runs of a row
QUICK = {"processes": 1, "values": 1, "warmups": 0, "loops": 400}  # pyperf, for --quick
QUICK_CHANNELS = 2_000  # live channels at most, for --quick
HAVE_SAV = importlib.util.find_spec("sav") is not None


class BenchmarkError(Exception):
    """A benchmark delivered wrong results."""


def check_total(total: int, n: int) -> None:
    if total != n * (n - 1) // 2:
        raise BenchmarkError(f"items lost or changed: total {total} for {n} items")


# --- Backends: running, and starting tasks the same way for every row --------------------


async def group(jobs: Sequence[Job]) -> None:
    """Run all as tasks of the running backend, and wait for all."""
    if trio.lowlevel.in_trio_run():
        async with trio.open_nursery() as nursery:
            for job in jobs:
                nursery.start_soon(job)
    else:
        async with asyncio.TaskGroup() as tg:
            for job in jobs:
                tg.create_task(job())


def gate() -> Any:  # an event of the running backend: .set(), await .wait()
    return trio.Event() if trio.lowlevel.in_trio_run() else asyncio.Event()


async def pair(consumer: Job, producer: Job) -> float:
    """Run both as tasks until both end; return the elapsed seconds."""
    start = time.perf_counter()
    await group([consumer, producer])
    return time.perf_counter() - start


def run(backend: str, main: Callable[[], Coroutine[Any, Any, T]], via_anyio: bool = False) -> T:
    """Run ``main()`` in a fresh event loop or trio run (with ``anyio.run`` if asked)."""
    if backend == "trio":
        return anyio.run(main, backend="trio") if via_anyio else trio.run(main)
    factory = None
    if backend == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    if via_anyio:
        return anyio.run(main, backend="asyncio", backend_options={"loop_factory": factory})
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())


# --- Floors and the in-task limit ----------------------------------------------------------


async def floor_futures(n: int) -> float:
    """Two tasks, two asyncio futures per item: the producer gives, the consumer asks."""
    loop = asyncio.get_running_loop()
    give: asyncio.Future[int] = loop.create_future()  # the consumer waits on it
    ask: asyncio.Future[None] = loop.create_future()  # the producer waits on it

    async def consumer() -> None:
        nonlocal give
        total, waiting = 0, give
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

    return await pair(consumer, producer)


async def floor_coroutines(n: int) -> float:
    """The floor, with one coroutine call per side per item, as ``itemize`` and ``__anext__``."""
    loop = asyncio.get_running_loop()
    give: asyncio.Future[int] = loop.create_future()
    ask: asyncio.Future[None] = loop.create_future()

    async def take() -> int:
        nonlocal give
        item = await give
        give = loop.create_future()
        ask.set_result(None)
        return item

    async def put(i: int) -> None:
        nonlocal ask
        ask = asked = loop.create_future()
        give.set_result(i)
        await asked

    async def consumer() -> None:
        total = 0
        for _ in range(n):
            total += await take()
        check_total(total, n)

    async def producer() -> None:
        for i in range(n):
            await put(i)

    return await pair(consumer, producer)


def _abort(_: object) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.SUCCEEDED


async def floor_trio(n: int) -> float:
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
        if (producer := sending) is None:
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
        if (consumer := receiving) is None:
            raise BenchmarkError("no consumer")
        for i in range(n):
            reschedule(consumer, outcome.Value(i))
            await wait(_abort)

    return await pair(consumer, producer)


async def floor_trio_coroutines(n: int) -> float:
    """trio's floor, with one coroutine call per side per item."""
    wait, reschedule = trio.lowlevel.wait_task_rescheduled, trio.lowlevel.reschedule
    tasks: dict[str, trio.lowlevel.Task] = {}

    async def take() -> int:
        reschedule(tasks["producer"])
        return await wait(_abort)  # type: ignore[no-any-return]

    async def put(i: int) -> None:
        reschedule(tasks["consumer"], outcome.Value(i))
        await wait(_abort)

    async def consumer() -> None:
        tasks["consumer"] = trio.lowlevel.current_task()
        await trio.testing.wait_all_tasks_blocked()  # the producer waits for the first ask
        total = 0
        for _ in range(n):
            total += await take()
        reschedule(tasks["producer"])
        check_total(total, n)

    async def producer() -> None:
        tasks["producer"] = trio.lowlevel.current_task()
        await wait(_abort)  # until the consumer asks
        for i in range(n):
            await put(i)

    return await pair(consumer, producer)


async def _count_up(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


async def in_task_generator(n: int) -> float:
    """The in-task limit: an async generator iterated in the same task, no hand-over."""
    start = time.perf_counter()
    total = 0
    async for x in _count_up(n):
        total += x
    elapsed = time.perf_counter() - start
    check_total(total, n)
    return elapsed


# --- Peers and ours: a producer task gives n items to a consumer task ---------------------


async def consume(n: int, items: AsyncIterator[int], producer: Job, close: Any = None) -> float:
    """Time ``producer`` and a consumer task that sums ``items`` with ``async for``."""

    async def consumer() -> None:
        total = 0
        async for x in items:
            total += x
        if close is not None:
            close()
        check_total(total, n)

    return await pair(consumer, producer)


async def asyncio_queue(n: int) -> float:
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

    return await pair(consumer, producer)


async def memory_channel(n: int, opener: Callable[[int], Any]) -> float:
    """trio's channels and anyio's streams: the same send/receive API."""
    send, receive = opener(0)

    async def producer() -> None:
        async with send:
            for i in range(n):
                await send.send(i)

    return await consume(n, receive, producer, receive.close)


async def aiochannel_channel(n: int) -> float:
    chan: aiochannel.Channel[int] = aiochannel.Channel(1)

    async def producer() -> None:
        for i in range(n):
            await chan.put(i)
        chan.close()

    return await consume(n, aiter(chan), producer)


def sav_factory() -> Any:
    """A ``sav.channels`` 0.1 channel (untyped; it must be made in a running loop)."""
    return importlib.import_module("sav.channels").Channel()


async def itemize_each(
    n: int, make: Callable[[], Any], many: bool = False, batch: int = 0
) -> float:
    """sav.channels and ours: ``async with sender as itemize``, read by ``async for``.

    ``many``: one ``itemize.many(range(n))``; ``batch``: read with ``receiver.batches(batch)``.
    """
    chan = make()

    async def consumer() -> None:
        total = 0
        if batch:
            async for items in chan.receiver.batches(batch):
                for x in items:
                    total += x
        else:
            async for x in chan.receiver:
                total += x
        check_total(total, n)

    async def producer() -> None:
        async with chan.sender as itemize:
            if many:
                await itemize.many(range(n))
            for i in range(0 if many else n):
                await itemize(i)

    return await pair(consumer, producer)


async def ours_duplex(n: int) -> float:
    """Round trips: the consumer answers each item with ``asend``, ``itemize`` returns it."""
    chan: Channel[int, int] = Channel()

    async def consumer() -> None:
        total = x = await anext(chan.receiver)
        try:
            while True:
                x = await chan.receiver.asend(x + 1)
                total += x
        except StopAsyncIteration:
            check_total(total, n)

    async def producer() -> None:
        async with chan.sender as itemize:
            for i in range(n - 1):
                if await itemize(i) != i + 1:
                    raise BenchmarkError("wrong reply")
            await itemize(n - 1)  # the reply to the last item is the end of the stream

    return await pair(consumer, producer)


async def ours_shared(n: int, producers: int) -> float:
    """``producers`` tasks share one ``itemize``; ``n`` is rounded up to a multiple."""
    chan: Channel[int] = Channel()
    rounded = -(-n // producers) * producers

    async def part(itemize: Itemize[int], first: int) -> None:
        for i in range(first, rounded, producers):
            await itemize(i)

    async def producer() -> None:
        async with chan.sender as itemize:
            await group([functools.partial(part, itemize, k) for k in range(producers)])

    return await consume(rounded, chan.receiver, producer) * n / rounded


async def live_channels(n: int, channels: int, memory: bool = False) -> float:
    """``channels`` channels, each with its producer and consumer task, all alive at once.

    All tasks are started and parked untimed; then the producers are released in two
    timed phases, of 1 and of 1 + ``extra`` items each: the difference of the two cancels
    the cost of a release. The result is scaled to ``n`` items. ``memory``: trio's own
    memory channels (0) instead of ours, for the same measurement of trio's scheduler.
    """
    channels = min(channels, QUICK_CHANNELS) if "--quick" in sys.argv else channels
    extra = -(-n // channels)
    plan = (1, 1 + extra)
    gates, ends = [gate() for _ in plan], [gate() for _ in plan]
    arrived, times, received = [0, 0], [0.0, 0.0], [0]

    async def consumer(chan: Any) -> None:
        async for _ in chan.receiver if not memory else chan[1]:
            received[0] += 1

    async def produce(itemize: Callable[[int], Awaitable[object]]) -> None:
        for phase, items in enumerate(plan):
            await gates[phase].wait()
            for i in range(items):
                await itemize(i)
            arrived[phase] += 1
            if arrived[phase] == channels:
                ends[phase].set()

    async def producer(chan: Any) -> None:
        if memory:
            async with chan[0]:
                await produce(chan[0].send)
        else:
            async with chan.sender as itemize:
                await produce(itemize)

    async def phases() -> None:
        if trio.lowlevel.in_trio_run():
            await trio.testing.wait_all_tasks_blocked()
        else:
            for _ in range(3):  # every task runs up to its first wait
                await asyncio.sleep(0)
        gc.enable()  # the phases pay for garbage collection, but not for one owed by set-up
        gc.collect()
        for phase in (0, 1):
            start = time.perf_counter()
            gates[phase].set()
            await ends[phase].wait()
            times[phase] = time.perf_counter() - start
        gc.disable()

    gc.collect()
    gc.disable()  # spare the creation of many tasks a collector walking the growing heap
    jobs: list[Job] = []
    for chan in [trio_opener(0) if memory else Channel[int]() for _ in range(channels)]:
        jobs += [functools.partial(consumer, chan), functools.partial(producer, chan)]
    try:
        await group([*jobs, phases])
    finally:
        gc.enable()
    if received[0] != channels * sum(plan):
        raise BenchmarkError(f"{received[0]} items received, not {channels * sum(plan)}")
    return max(times[1] - times[0], 1e-9) * n / (channels * extra)


# --- The data: cases and targets -----------------------------------------------------------


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    bench: Callable[[int], Coroutine[Any, Any, float]]  # (items) -> seconds
    backends: tuple[str, ...] = ALL
    base: str = "floor"  # the row it is compared with in the tables
    anyio: bool = False  # run under anyio.run
    counts: tuple[int, int] = COUNTS  # items in the two callgrind runs
    pyperf: dict[str, int] = field(default_factory=dict)  # pyperf settings for this row


P = functools.partial
trio_opener, anyio_opener = trio.open_memory_channel[int], anyio.create_memory_object_stream[int]
LIVE = {"processes": 3, "values": 1, "warmups": 0, "loops": 200_000}  # set-up takes seconds
# fmt: off
ROWS = [  # key, label, bench, backends, then what differs from Row's defaults
    Row("floor", "floor: 2 tasks, 2 futures per item", floor_futures, AIO),
    Row("floor", "floor: wait_task_rescheduled/reschedule", floor_trio, TRIO),
    Row("floor1", "floor, one coroutine call per side per item", floor_coroutines, AIO),
    Row("floor1", "floor, one coroutine call per side per item", floor_trio_coroutines, TRIO),
    Row("agen", "in-task async generator (no hand-over)", in_task_generator),
    Row("queue", "asyncio.Queue(maxsize=1)", asyncio_queue, AIO),
    Row("trio", "trio.open_memory_channel(0)", P(memory_channel, opener=trio_opener), TRIO),
    Row("anyio", "anyio memory object stream (0)", P(memory_channel, opener=anyio_opener),
        anyio=True),
    Row("aiochannel", "aiochannel.Channel(1)", aiochannel_channel, AIO),
    Row("sav", "sav.channels 0.1", P(itemize_each, make=sav_factory), AIO if HAVE_SAV else ()),
    Row("ours", "yieldchannel: itemize(x)", P(itemize_each, make=Channel)),
    Row("duplex", "yieldchannel: asend round trip", ours_duplex, base="ours"),
    Row("many", "yieldchannel: itemize.many, async for", P(itemize_each, make=Channel, many=True),
        base="agen"),
    Row("batches", "yieldchannel: itemize.many, batches(256)",
        P(itemize_each, make=Channel, many=True, batch=256), base="agen"),
    Row("shared", "yieldchannel: 8 producers share itemize", P(ours_shared, producers=8)),
    Row("shared1000", "yieldchannel: 1,000 producers share itemize",
        P(ours_shared, producers=1_000), base="shared"),
    Row("live1", "yieldchannel: 1 live channel", P(live_channels, channels=1)),
    Row("live100k", "yieldchannel: 100,000 live channels", P(live_channels, channels=100_000),
        base="live1", counts=(100_000, 200_000), pyperf=LIVE),
    Row("trio1", "trio.open_memory_channel(0): 1 live channel",
        P(live_channels, channels=1, memory=True), TRIO, base="trio"),
    Row("trio100k", "trio.open_memory_channel(0): 100,000 live channels",
        P(live_channels, channels=100_000, memory=True), TRIO, base="trio1",
        counts=(100_000, 200_000), pyperf=LIVE),
]
# fmt: on


@dataclass(frozen=True)
class Target:
    what: str
    backends: tuple[str, ...]
    row: str  # a row key, or a key of the results ("idle": bytes, "import": ms)
    base: str | None  # a row key: the target is on row / base; None: on the value of row
    limit: float
    pythons: tuple[str, ...] = ()  # also judged by the counts of these versions (--count-with)


# The Python versions whose instruction counts the benchmark can take (--count-with), and the
# rows it counts on each: the hand-over, its floors, delegation and replies.
PYTHONS = ("3.11", "3.12", "3.13")
VERSION_ROWS = ("floor", "floor1", "agen", "trio", "ours", "duplex", "many", "batches")
# `itemize.many`, `async for`, before this release's fast path: instructions per item.
MANY_BEFORE = {"asyncio": 4_489, "uvloop": 4_238}  # Python 3.11, channel.py at 01ab022
V12 = ("3.12", "3.13")

# fmt: off
TARGETS = [
    Target("itemize → __anext__ ≤ 1.09x floor", ("asyncio",), "ours", "floor", 1.09, PYTHONS),
    Target("itemize → __anext__ ≤ 1.28x floor (3.11)", ("uvloop",), "ours", "floor", 1.28,
           ("3.11",)),
    Target("itemize → __anext__ ≤ 1.20x floor (3.12, 3.13)", ("uvloop",), "ours", "floor", 1.20,
           V12),
    Target("itemize → __anext__ ≤ 1.13x trio's floor", TRIO, "ours", "floor", 1.13, PYTHONS),
    Target("asend round trip ≤ 1.03x single itemize", ALL, "duplex", "ours", 1.03, PYTHONS),
    Target("itemize.many, async for ≤ 0.80x before (3.11)", AIO, "many", "many_before", 0.80,
           ("3.11",)),
    Target("itemize.many, batches(256) ≤ 0.75x in-task generator", ALL, "batches", "agen", 0.75,
           PYTHONS),
    Target("1,000 producers ≤ 1.10x 8 producers (O(1))", ALL, "shared1000", "shared", 1.10),
    Target("100,000 live channels ≤ 1.3x one channel", ALL, "live100k", "live1", 1.3),
    Target("idle channel ≤ 300 B", ("-",), "idle", None, 300),
    Target("import channel ≤ 5 ms", ("-",), "import", None, 5),
]
IDLE: list[tuple[str, str, Callable[[], object]]] = [  # label, backend, factory
    ("yieldchannel Channel()", "asyncio", Channel),
    ("asyncio.Queue(maxsize=1)", "asyncio", lambda: asyncio.Queue[int](maxsize=1)),
    ("trio.open_memory_channel(0), both ends", "trio", lambda: trio_opener(0)),
    ("anyio memory object stream (0), both ends", "asyncio", lambda: anyio_opener(0)),
    ("aiochannel.Channel(1)", "asyncio", lambda: aiochannel.Channel[int](1)),
    *([("sav.channels 0.1 Channel()", "asyncio", sav_factory)] if HAVE_SAV else []),
]
# fmt: on
NOTES = """\
Rows: *floor* is the cheapest two-task hand-over written on the backend itself; the
in-task async generator is the limit without a task switch. Every other row moves items
from a producer task to a consumer task (`async for`). *asend round trip*: the consumer
answers each item with `receiver.asend(x)`. *n producers share itemize*: n tasks call one
`itemize` at once. *live channels*: each channel has its own two tasks, all alive at once;
phases of 1 and of more items per channel, differenced. µs/item: pyperf's median;
instructions/item: callgrind, difference of two item counts. anyio rows run under
`anyio.run`. "x base" is the row's cost over its base row's, on the same backend."""


# --- Measuring -------------------------------------------------------------------------------


def measure(n: int, backend: str, row: Row) -> float:
    """Seconds to move ``n`` items through ``row`` on ``backend``: pyperf's time function."""
    gc.collect()
    return run(backend, lambda: row.bench(n), row.anyio)


def instructions(backend: str, row: Row, python: str = sys.executable) -> float:
    """Instructions per item: the callgrind totals of two runs, differenced."""
    totals = []
    for n in row.counts:
        command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
        command += [python, __file__, "--count", f"{backend}/{row.key}", str(n)]
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
        totals.append(int(re.findall(r"Collected : (\d+)", done.stderr)[-1]))
    return (totals[1] - totals[0]) / (row.counts[1] - row.counts[0])


def idle_bytes(backend: str, make: Callable[[], object], count: int = 10_000) -> float:
    async def allocate() -> float:
        keep: list[object] = [None] * count  # the list itself is not counted
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(count):
            keep[i] = make()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        return (after - before) / count

    return run(backend, allocate)


def import_ms(module: str, runs: int) -> float:
    """Median cumulative ``-X importtime`` of ``import module``: fresh interpreter, .pyc there."""
    command = [sys.executable, "-X", "importtime", "-c", f"import {module}"]
    writing = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run(command, cwd=ROOT, env=writing, check=True, capture_output=True)
    times = []
    for _ in range(runs):
        done = subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True)
        lines = done.stderr.splitlines()
        times += [float(line.split("|")[1]) for line in lines if line.endswith(f"| {module}")]
    return statistics.median(times) / 1000


# --- Report ----------------------------------------------------------------------------------


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A markdown table that reads as text too: padded, numbers right-aligned."""
    numeric = [[re.fullmatch(r"-|[\d.,]+", cell) is not None for cell in row] for row in rows]
    right = {i for i in range(len(header)) if all(row[i] for row in numeric)}
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def pad(row: Sequence[str]) -> list[str]:
        return [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]

    cells = [pad(row) for row in [header, ["-" * w for w in widths], *rows]]
    cells[1] = [c[:-1] + ":" if i in right else c for i, c in enumerate(cells[1])]
    return ["| " + " | ".join(row) + " |" for row in cells]


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main_version() -> str:
    return platform.python_version().rpartition(".")[0]


def version_of(python: str) -> str:
    done = subprocess.run(
        [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.strip()


def count_versions(pythons: Sequence[str], rows: list[tuple[str, Row]]) -> dict[str, Any]:
    """Instructions per item of ``rows`` under each interpreter, by its version."""
    jobs = [(python, b, r) for python in pythons for b, r in rows if r.key in VERSION_ROWS]
    with ThreadPoolExecutor(os.cpu_count()) as pool:  # counts do not mind sharing
        counted = list(pool.map(lambda job: instructions(job[1], job[2], job[0]), jobs))
    by_version: dict[str, dict[str, float]] = {}
    for (python, backend, row), count in zip(jobs, counted, strict=True):
        by_version.setdefault(version_of(python), {})[f"{backend}/{row.key}"] = count
    return by_version


def ratio(data: dict[str, float], backend: str, row: str, base: str) -> float | None:
    top, bottom = data.get(f"{backend}/{row}"), data.get(f"{backend}/{base}")
    return None if top is None or bottom is None else top / bottom


def report(results: dict[str, Any], out: Path) -> None:
    times, counts = results["us_per_item"], results["instructions_per_item"]
    lines = ["# yieldchannel benchmarks", "", *results["about"], "", NOTES, ""]
    header = ["row", "µs/item", "instructions/item", "x base (instr.)", "x base (time)", "base"]
    for backend in ALL:
        rows = [
            [row.label, fmt(times.get(name), ".3f"), fmt(counts.get(name), ",.0f"),
             fmt(ratio(counts, backend, row.key, row.base), ".2f"),
             fmt(ratio(times, backend, row.key, row.base), ".2f"), row.base]
            for row in ROWS
            if backend in row.backends and ((name := f"{backend}/{row.key}") in times)
        ]  # fmt: skip
        lines += [f"### {backend}", "", *table(header, rows), ""] if rows else []
    versions: dict[str, dict[str, float]] = results.get("instructions_by_python", {})
    if versions:
        lines += ["### Instructions per item, by Python version", ""]
        names = sorted(versions)
        header = ["row", "backend", *[f"{v}" for v in names], *[f"{v} x base" for v in names]]
        rows = [
            [row.label, backend, *[fmt(versions[v].get(f"{backend}/{row.key}"), ",.0f")
                                   for v in names],
             *[fmt(ratio(versions[v], backend, row.key, row.base), ".3f") for v in names]]
            for row in ROWS for backend in row.backends
            if any(f"{backend}/{row.key}" in versions[v] for v in names)
        ]  # fmt: skip
        lines += [*table(header, rows), ""]
    rows = []
    for target in TARGETS:
        for backend in target.backends:
            for version in dict.fromkeys([main_version(), *target.pythons]):
                ours = version == main_version()
                counted = counts if ours else versions.get(version, {})
                counted = {**counted, **{f"{b}/many_before": c for b, c in MANY_BEFORE.items()}}
                if target.base is None:  # a value, not a ratio
                    by_count, by_time = None, results[target.row] if ours else None
                else:
                    by_count = ratio(counted, backend, target.row, target.base)
                    by_time = ratio(times, backend, target.row, target.base) if ours else None
                if target.pythons and version not in target.pythons:
                    continue  # judged on other versions only
                if (value := by_time if by_count is None else by_count) is None:
                    continue  # not measured in this run
                verdict = "PASS" if value <= target.limit else "MISS"
                verdict += " (by time)" if by_count is None and target.base is not None else ""
                cells = [fmt(by_count, ".3f"), fmt(by_time, ".4g"), verdict]
                rows.append([target.what, backend, version, *cells])
    header = ["target", "backend", "Python", "by instructions", "by time (or value)", "verdict"]
    lines += ["### Targets (instruction counts decide, time confirms)", "", *table(header, rows)]
    idle = [[k, f"{v:,.0f}"] for k, v in results["idle_bytes"].items()]
    lines += ["", "### Memory per idle channel (tracemalloc, 10,000 alive)", ""]
    lines += [*table(["implementation", "bytes"], idle), ""]
    imports = [[f"import {k}", f"{v:.2f}"] for k, v in results["import_ms"].items()]
    lines += ["### Import time (`-X importtime`, cumulative, median)", ""]
    lines += [*table(["module", "ms"], imports), "", "![cost per item](results.png)", ""]
    (out / "results.md").write_text("\n".join(lines), encoding="utf-8")


def plot(results: dict[str, Any], path: Path) -> None:
    """Bars per backend, one colour per row: µs per item, and instructions if counted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [(k, unit) for k, unit in [("us_per_item", "µs"), ("instructions_per_item", "instr.")]
             if results[k]]  # fmt: skip
    fig, axes = plt.subplots(len(kinds), 1, figsize=(12, 1 + 4 * len(kinds)), squeeze=False)
    keys, colors = list(dict.fromkeys(row.key for row in ROWS)), plt.get_cmap("tab20")
    for ax, (kind, unit) in zip(axes[:, 0], kinds, strict=True):
        for k, key in enumerate(keys):
            shown = [(b, results[kind][f"{name}/{key}"]) for b, name in enumerate(ALL)
                     if f"{name}/{key}" in results[kind]]  # fmt: skip
            if not shown:
                continue
            xs = [b + (k - len(keys) / 2) * 0.055 for b, _ in shown]
            ax.bar(xs, [value for _, value in shown], 0.05, label=key, color=colors(k % 20))
        ax.set_xticks(range(len(ALL)), ALL)
        ax.set_ylabel(f"{unit} per item (lower is better)")
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].set_title("yieldchannel and peers: cost per item, per backend")
    axes[-1, 0].legend(fontsize=8, ncols=8, loc="upper center", bbox_to_anchor=(0.5, -0.08))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def about() -> list[str]:
    def git(*command: str) -> str:
        env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}  # read only: not even the index
        done = subprocess.run(
            ["git", *command], cwd=ROOT, env=env, capture_output=True, check=False
        )
        return f"{done.returncode}:{done.stdout.decode().strip()}"

    revision = git("rev-parse", "--short", "HEAD").partition(":")[2] or "unknown"
    if not git("diff", "--quiet", "HEAD", "--", "channel.py").startswith("0:"):
        revision += " with local changes"
    cpu, system = platform.processor() or platform.machine(), platform.platform(terse=True)
    return [
        f"- {cpu}, {os.cpu_count()} cores, {system}; Python {platform.python_version()}, "
        f"pyperf {pyperf.__version__}; channel.py at {revision}",
        f"- Command: `python benchmarks/{' '.join([Path(__file__).name, *sys.argv[1:]])}`",
    ]


def main() -> int:
    if sys.argv[1:2] == ["--count"]:  # one row, for callgrind: --count BACKEND/KEY ITEMS
        backend, key = sys.argv[2].split("/")
        measure(
            int(sys.argv[3]),
            backend,
            next(r for r in ROWS if r.key == key and backend in r.backends),
        )
        return 0  # fmt: skip

    def pass_on(cmd: list[str], args: Any) -> None:  # our options, for pyperf's workers
        cmd += (["--only", args.only] if args.only else []) + (["--quick"] if args.quick else [])
        cmd += [f"--count-with={python}" for python in args.count_with]

    runner = pyperf.Runner(processes=8, add_cmdline_args=pass_on)
    parser = runner.argparser
    parser.add_argument("--quick", action="store_true", help="smoke run: one short value per row")
    parser.add_argument("--instructions", action="store_true", help="also count instructions")
    parser.add_argument("--only", help="comma-separated rows (BACKEND/KEY, e.g. asyncio/ours)")
    parser.add_argument("--out", type=Path, help="output directory (default: benchmarks/)")
    parser.add_argument(
        "--count-with", action="append", default=[], metavar="PYTHON",
        help="with --instructions, also count the rows of every version with this interpreter "
        "(which has the bench extra installed); repeat for several",
    )  # fmt: skip
    args = runner.parse_args()
    out: Path = args.out or (Path(tempfile.mkdtemp()) if args.quick else Path(__file__).parent)
    have_uvloop = importlib.util.find_spec("uvloop") is not None
    chosen = [(b, r) for r in ROWS for b in r.backends if (b != "uvloop" or have_uvloop)
              and (not args.only or f"{b}/{r.key}" in args.only.split(","))]  # fmt: skip
    benchmarks, defaults = [], vars(args).copy()
    for backend, row in chosen:
        if not args.worker:  # the workers get these settings on their command line
            vars(args).update(defaults | row.pyperf | (QUICK if args.quick else {}))
        bench = runner.bench_time_func(f"{backend}/{row.key}", measure, backend, row)
        benchmarks += [bench] if bench is not None and not args.worker else []
    if args.worker:
        return 0
    results: dict[str, Any] = {"about": about(), "instructions_per_item": {}}
    results["us_per_item"] = {b.get_name(): b.median() * 1e6 for b in benchmarks}
    if args.instructions:
        with ThreadPoolExecutor(os.cpu_count()) as pool:  # counts do not mind sharing
            counted = pool.map(lambda chosen_row: instructions(*chosen_row), chosen)
            names = [f"{b}/{r.key}" for b, r in chosen]
            results["instructions_per_item"] = dict(zip(names, counted, strict=True))
        versions = count_versions(args.count_with, chosen)
        mine = {k: v for k, v in results["instructions_per_item"].items()
                if k.partition("/")[2] in VERSION_ROWS}  # fmt: skip
        results["instructions_by_python"] = {main_version(): mine, **versions}
    results["idle_bytes"] = {label: idle_bytes(b, make) for label, b, make in IDLE}
    results["idle"] = results["idle_bytes"]["yieldchannel Channel()"]
    modules = ("channel", "anyio", "trio")
    results["import_ms"] = {m: import_ms(m, 3 if args.quick else 9) for m in modules}
    results["import"] = results["import_ms"]["channel"]
    out.mkdir(parents=True, exist_ok=True)
    pyperf.BenchmarkSuite(benchmarks).dump(str(out / "timings.json"), replace=True)
    (out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    report(results, out)
    plot(results, out / "results.png")
    print((out / "results.md").read_text(encoding="utf-8"))
    print(f"Wrote results.md, results.png, results.json and timings.json (pyperf) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
