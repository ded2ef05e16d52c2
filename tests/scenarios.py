"""The cancellation harness's machinery: scenarios, plans, the scheduling-point counter and
the checks after each run; the cancellation sweep and the stress run use it."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
from collections import Counter
from collections.abc import (
    Callable,
    Coroutine,
    Generator,
    Iterator,
)
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import trio

from channel import (
    Channel,
    ChannelClosed,
    ReceiverClosed,
    SenderFailed,
)
from tests.support import (
    CANCELLED,
    HARNESS,
    RUN_LIMIT,
    checkpoint,
    env_int,
    in_trio,
)


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
    if in_trio():
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
    c: Channel[Any, Any],
    log: Log,
    side: Side,
    how: str,
    in_the_body: Callable[[int], None],
    *,
    task_status: anyio.abc.TaskStatus[None],
) -> None:
    """Ask until the stream ends; after each item, the loop body runs ``in_the_body(count)``."""
    task_status.started()
    if side.mode == "whole":
        with side.whole():
            async with c.receiver:
                while log.end is None:
                    await ask_once(c, log, how)
                    in_the_body(len(log.received))
                    await side.pause()
        if log.end is None:
            log.end = "cancelled"
        return
    try:
        while log.end is None:
            with side.op():
                await ask_once(c, log, how)
                in_the_body(len(log.received))
                await side.pause()
    except CANCELLED:  # by a scope around both sides
        log.end = "cancelled"
        raise


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
    """What a run does before scheduling point k (at item k, for ``Plan("scope", "body")``).

    ``target``: the producer, the receiver, both, each in its own scopes (``mode`` "op": a
    scope per operation; "whole": the task's whole body); "close": close the receiver;
    "scope": cancel one scope that holds both sides, as a timeout around a task group does
    ("deadline": before point k; "body": in the receiver's loop body, after item k).
    """

    target: str  # producer, receiver, both, close, scope
    mode: str  # op or whole; for scope: deadline or body

    def __str__(self) -> str:
        if self.target == "scope":
            when = "before point k" if self.mode == "deadline" else "in the loop body at item k"
            return f"cancel a scope around both {when}"
        return "close receiver" if self.target == "close" else f"cancel {self.target} {self.mode}"


PLANS = [
    Plan(target, mode) for target in ("producer", "receiver", "both") for mode in ("op", "whole")
] + [Plan("close", "op"), Plan("scope", "deadline"), Plan("scope", "body")]


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

    # A raw task.cancel() of the task that holds the block (or of the task around both
    # sides) reaches the tasks that share its itemize only later, through their task
    # group; every other way reaches each parked producer at once.
    cancels_each_producer = method == "scope" or (
        plan.target != "scope"
        and (plan.mode == "op" or not (scenario.several_tasks or scenario.stragglers))
    )
    around_both = _AroundBoth(method)

    def action() -> None:
        if cancels_each_producer:
            log.untaken_when_cancelled = _untaken_items(c)
        if plan.target == "close":
            c.receiver.close()
        if plan.target in ("producer", "both"):
            producing.cancel()
        if plan.target in ("receiver", "both"):
            receiving.cancel()
        if plan.target == "scope":
            around_both.cancel()

    def in_the_body(received: int) -> None:
        if plan == Plan("scope", "body") and received >= k and not stepper.fired:
            stepper.fired = True
            action()

    stepper = Stepper(-1 if plan.mode == "body" else k, action)
    with (
        anyio.fail_after(RUN_LIMIT),
        counting_scheduling_points(stepper, seed) as loop_errors,
        around_both,
    ):
        async with anyio.create_task_group() as tg:
            await tg.start(scenario.produce, c, log, producing)
            await tg.start(receive, c, log, receiving, scenario.receive_with, in_the_body)
            stepper.armed = True
    if stepper.error is not None:
        raise stepper.error
    assert not loop_errors, f"the event loop reported errors: {loop_errors}"
    return log, stepper


class _AroundBoth:
    """A scope that holds both sides: anyio's ``CancelScope`` (trio's own on trio), or,
    by the raw method on asyncio, what ``asyncio.timeout`` does: ``task.cancel()`` of the
    task that holds the task group, which then cancels its tasks."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.scope = anyio.CancelScope()
        self.task: asyncio.Task[Any] | None = None

    def __enter__(self) -> None:
        if self.method == "raw":
            self.task = asyncio.current_task()
        else:
            self.scope.__enter__()

    def __exit__(self, *exc_info: Any) -> bool:
        if self.task is None:
            return bool(self.scope.__exit__(*exc_info))
        if isinstance(exc_info[1], asyncio.CancelledError) and exc_info[1].args == (HARNESS,):
            self.task.uncancel()
            return True
        return False

    def cancel(self) -> None:
        if self.task is None:
            self.scope.cancel()
        else:
            self.task.cancel(HARNESS)


def _untaken_items(c: Channel[Any, Any]) -> set[Any]:
    """The items still waiting in the channel's queue, not taken by the receiver.

    The one place where the harness looks inside the channel (its private ``_state``):
    from outside, "taken" cannot be told apart from "received later". A cancellation
    reaches a task parked on a waiter that is not done at once, on every backend, so
    an item that was untaken when its producer was cancelled must be withdrawn.
    Returns an empty set (no check) if the internals look different.
    """
    queue = getattr(getattr(c, "_state", None), "queue", None)
    if not isinstance(queue, collections.deque):
        return set()
    return {  # (on trio a waiter is the task itself: every linked task waits)
        entry[1]
        for entry in queue
        if isinstance(entry, tuple)
        and isinstance(entry[1], tuple)
        and not (isinstance(entry[0], asyncio.Future) and entry[0].done())
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

    producer_cancelled = plan.target in ("producer", "both", "scope")
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
    if plan.target == "scope" and log.end not in ("end", "cancelled"):
        problems.append(f"a scope around both was cancelled, and the receiver saw {log.end!r}")
    return problems


def _methods() -> list[str]:
    return ["scope"] if in_trio() else ["scope", "raw"]


TRIO_SEEDS = env_int("CHANNEL_TRIO_SEEDS", 2)  # schedules explored per scenario on trio


def _seeds() -> list[int]:
    return list(range(TRIO_SEEDS)) if in_trio() else [0]


MAX_RUNS = 5000
