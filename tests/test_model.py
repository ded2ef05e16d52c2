"""Random programs, step by step, against a reference model of the README."""

from __future__ import annotations

import asyncio
import copy
import inspect
import itertools
from collections.abc import (
    Awaitable,
    Callable,
    Generator,
)
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from channel import (
    Channel,
    ChannelClosed,
    ChannelError,
    ReceiverClosed,
    SenderFailed,
)
from tests.scenarios import CLEAN
from tests.support import (
    CANCELLED,
    HARNESS,
    RUN_LIMIT,
    Boom,
    checkpoint,
    env_int,
    in_trio,
)

pytestmark = pytest.mark.anyio

# Longer runs: CHANNEL_HYPOTHESIS_EXAMPLES (default 60 per backend).
#
# Model-based testing (`test_random_programs_follow_the_model`): Hypothesis draws
#    programs of itemize / itemize.many / anext / asend / cancel / time out (a deadline,
#    so the timer path) / raw task.cancel / cancel-then-anext in one step / close / aclose
#    / end the block cleanly, with an error or by cancellation, and runs them one step at
#    a time on worker tasks sharing one channel; after every step what completed, with
#    what value or exact exception, what still waits, the generators' replies and
#    ``Channel.statistics()`` are compared with a small reference model of the semantics.
#

# ==========================================================================================
# 2. Random programs, step by step, against a reference model of the README
# ==========================================================================================

PRODUCERS = ("p0", "p1")
RX = "rx"
SETTLE_LIMIT = 2  # seconds: a hang detector; each step settles in microseconds
NOTHING: Any = object()


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
        if not in_trio():
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
            if not in_trio():
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
            if in_trio() or next(self.counter) % 2:
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


HYPOTHESIS_EXAMPLES = env_int("CHANNEL_HYPOTHESIS_EXAMPLES", 60)


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
