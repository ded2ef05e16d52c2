"""Differential test: random programs, run as an async generator and as a channel, do the same.

Hypothesis draws a producer body (items, delegations to generators that return a
value or fail, errors, ``try``/``finally``, ``try``/``except``, checkpoints, nested)
and a consumer (``anext``, ``asend``, an early ``aclose``). The body is written out
twice from one template: once as an async generator function (``reply = yield x``,
with ``yield from`` spelled out, as async generators have none) and once as a
sender block (``reply = await itemize(x)``, ``await itemize.many(g)``). Driven by the
same consumer, each side must leave the same ordered trace: what the producer did
(the replies it got, the values its delegations returned, its ``finally`` and
``except`` blocks, the delegated generators' replies and closes) and what the
consumer got (each item, the end, or the error that ended the stream).

The programs keep clear of the differences the README lists: the consumer asks for
the first item before it sends or closes, stops asking once the stream has ended,
and the producer neither yields in its cleanup nor raises ``StopIteration``. What
differs by design is mapped: a generator's error comes to the consumer as itself,
a channel's as the ``__cause__`` of ``SenderFailed``.
"""

from __future__ import annotations

import itertools
import textwrap
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from channel import Channel, SenderFailed
from tests.support import RUN_LIMIT, Boom, checkpoint, env_int

pytestmark = pytest.mark.anyio

Op = tuple[Any, ...]

LEAVES = st.one_of(
    st.just(("item",)),
    st.tuples(st.just("many"), st.integers(0, 3), st.booleans()),  # items, then fails?
    st.just(("raise",)),
    st.just(("checkpoint",)),
)
BODIES = st.lists(
    st.recursive(
        LEAVES,
        lambda inner: st.tuples(
            st.sampled_from(["finally", "except"]), st.lists(inner, max_size=4)
        ),
        max_leaves=10,
    ),
    max_size=6,
)
# The first ask is `anext`: a reply or a close before it is one of the listed differences.
CONSUMERS = st.lists(st.sampled_from(["next", "send", "close"]), max_size=10).map(
    lambda ops: ["next", *ops]
)


def render(body: list[Op], *, as_generator: bool) -> str:
    """The producer body as source: an async generator function, or a sender block's body."""
    numbers = itertools.count(1)
    lines = ["async def body(itemize):"]

    def emit(ops: list[Op], indent: str) -> None:
        if not ops:
            lines.append(f"{indent}pass")
        for op in ops:
            n = next(numbers)
            if op[0] == "item":
                hand_over = f"yield {n}" if as_generator else f"await itemize({n})"
                lines.append(f"{indent}reply = {hand_over}")
                lines.append(f"{indent}trace.append(('reply', {n}, reply))")
            elif op[0] == "many" and as_generator:  # `yield from`, written out
                lines.extend(
                    indent + line
                    for line in textwrap.dedent(f"""\
                        inner, sent = source({n}, {op[1]}, {op[2]}), None
                        while True:
                            try:
                                item = inner.send(sent)
                            except StopIteration as stop:
                                trace.append(('returned', {n}, stop.value))
                                break
                            try:
                                sent = yield item
                            except GeneratorExit:
                                inner.close()
                                raise
                        """).splitlines()
                )
            elif op[0] == "many":
                delegate = f"await itemize.many(source({n}, {op[1]}, {op[2]}))"
                lines.append(f"{indent}trace.append(('returned', {n}, {delegate}))")
            elif op[0] == "raise":
                lines.append(f"{indent}raise Boom('raised at {n}')")
            elif op[0] == "checkpoint":
                lines.append(f"{indent}await checkpoint()")
            else:  # a block: try ... finally, or try ... except Boom
                lines.append(f"{indent}try:")
                emit(op[1], indent + "    ")
                if op[0] == "finally":
                    lines.append(f"{indent}finally:")
                    lines.append(f"{indent}    trace.append(('finally', {n}))")
                else:
                    lines.append(f"{indent}except Boom as error:")
                    lines.append(f"{indent}    trace.append(('caught', {n}, str(error)))")

    emit(body, "    ")
    if as_generator:
        lines.append("    if False:")
        lines.append("        yield  # an async generator even when it yields nothing")
    return "\n".join(lines) + "\n"


def build(body: list[Op], trace: list[Any], *, as_generator: bool) -> Callable[..., Any]:
    def source(n: int, size: int, fails: bool) -> Generator[tuple[int, int], Any, str]:
        try:
            for i in range(size):
                sent = yield (n, i)
                trace.append(("sent", n, i, sent))
            if fails:
                raise Boom(f"delegation {n} failed")
            return f"value of {n}"
        finally:
            trace.append(("closed", n))

    namespace: dict[str, Any] = {"trace": trace, "source": source, "Boom": Boom}
    namespace["checkpoint"] = checkpoint
    exec(render(body, as_generator=as_generator), namespace)  # our own template
    return namespace["body"]  # type: ignore[no-any-return]


async def consume(
    ops: list[str], ask: Callable[[int | None], Awaitable[Any]], trace: list[Any]
) -> None:
    """Drive one side: each ask's outcome goes into ``trace``; stop at the end or a close."""
    for k, op in enumerate(ops):
        if op == "close":
            trace.append(("close",))
            return
        try:
            item = await ask(None if op == "next" else 100 + k)
        except StopAsyncIteration:
            trace.append(("end",))
            return
        except SenderFailed as failed:  # the channel's way of saying what the error was
            trace.append(("failed", repr(failed.__cause__)))
            return
        except Boom as error:  # the generator's way
            trace.append(("failed", repr(error)))
            return
        trace.append(("item", item))


async def as_generator(body: list[Op], ops: list[str]) -> tuple[list[Any], list[Any]]:
    produced: list[Any] = []
    consumed: list[Any] = []
    agen: AsyncGenerator[Any, Any] = build(body, produced, as_generator=True)(None)
    try:
        await consume(ops, agen.asend, consumed)
    finally:
        await agen.aclose()
    return produced, consumed


async def as_channel(body: list[Op], ops: list[str]) -> tuple[list[Any], list[Any]]:
    produced: list[Any] = []
    consumed: list[Any] = []
    run_body = build(body, produced, as_generator=False)
    c: Channel[Any, Any] = Channel()

    async def producer() -> None:
        try:
            async with c.sender as itemize:
                await run_body(itemize)
        except Boom:
            pass  # the consumer sees it as SenderFailed's cause

    async with anyio.create_task_group() as tg:
        tg.start_soon(producer)
        async with c.receiver:
            await consume(ops, c.receiver.asend, consumed)
    return produced, consumed


def test_the_template_writes_both_forms() -> None:
    body: list[Op] = [("item",), ("finally", [("many", 2, False), ("raise",)])]
    trace: list[Any] = []
    assert isinstance(build(body, trace, as_generator=True)(None), AsyncGenerator)
    assert "await itemize(1)" in render(body, as_generator=False)
    assert "await itemize.many(source(3, 2, False))" in render(body, as_generator=False)


async def test_one_program_leaves_the_same_trace_both_ways() -> None:
    body: list[Op] = [("item",), ("finally", [("many", 2, True), ("item",)]), ("item",)]
    ops = ["next", "send", "next", "send", "next"]
    with anyio.fail_after(RUN_LIMIT):
        expected = await as_generator(body, ops)
        assert await as_channel(body, ops) == expected
    produced, consumed = expected
    assert consumed == [
        ("item", 1),
        ("item", (3, 0)),
        ("item", (3, 1)),
        ("failed", "Boom('delegation 3 failed')"),
    ]
    assert produced == [
        ("reply", 1, 101),
        ("sent", 3, 0, None),
        ("sent", 3, 1, 103),
        ("closed", 3),
        ("finally", 2),
    ]


@settings(
    max_examples=env_int("CHANNEL_DIFFERENTIAL_EXAMPLES", 100),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=BODIES, ops=CONSUMERS)
async def test_random_programs_do_as_generators_do(body: list[Op], ops: list[str]) -> None:
    with anyio.fail_after(RUN_LIMIT):
        expected = await as_generator(body, ops)
        assert await as_channel(body, ops) == expected, render(body, as_generator=False)
