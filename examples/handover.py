"""The hand-over, pictured: an async generator and a channel interleave the same way.

The same consumer reads two items from an async generator, then from a sender
block; each producer notes its steps, and the consumer notes its own. The picture
puts each producer step in the row where it happened, between the consumer's
steps: in both runs, the producer resumes only when the consumer asks for the next
item, and its end ends the consumer's loop. (This picture is in the README; when
the semantics change, run this file and copy its output there.)

Prints:
consumer (async for)        │ async generator         │ sender block
────────────────────────────┼─────────────────────────┼─────────────────────────
asks for an item            │                         │
                            │ starts                  │ starts
                            │ yield 1                 │ await itemize(1)
gets 1, runs the loop body  │                         │
asks for the next item      │                         │
                            │ resumes after yield 1   │ itemize(1) returns
                            │ yield 2                 │ await itemize(2)
gets 2, runs the loop body  │                         │
asks for the next item      │                         │
                            │ resumes after yield 2   │ itemize(2) returns
                            │ returns                 │ leaves the block
the loop ends               │                         │
"""

import asyncio
import itertools
from collections.abc import AsyncIterator

from channel import Channel

Steps = list[tuple[str, str]]  # (who, what), in the order they happened


async def consume(items: AsyncIterator[int], steps: Steps) -> None:
    """`async for n in items:`, one step at a time."""
    while True:
        steps.append(("consumer", "asks for an item" if not steps else "asks for the next item"))
        try:
            n = await anext(items)
        except StopAsyncIteration:
            steps.append(("consumer", "the loop ends"))
            return
        steps.append(("consumer", f"gets {n}, runs the loop body"))


async def generator_run() -> Steps:
    steps: Steps = []

    async def numbers() -> AsyncIterator[int]:
        steps.append(("producer", "starts"))
        for n in (1, 2):
            steps.append(("producer", f"yield {n}"))
            yield n
            steps.append(("producer", f"resumes after yield {n}"))
        steps.append(("producer", "returns"))

    await consume(numbers(), steps)
    return steps


async def channel_run() -> Steps:
    steps: Steps = []
    c: Channel[int] = Channel()

    async def numbers() -> None:
        async with c.sender as itemize:
            steps.append(("producer", "starts"))
            for n in (1, 2):
                steps.append(("producer", f"await itemize({n})"))
                await itemize(n)
                steps.append(("producer", f"itemize({n}) returns"))
            steps.append(("producer", "leaves the block"))

    async with asyncio.TaskGroup() as tg:
        tg.create_task(numbers())
        await consume(c.receiver, steps)
    return steps


def picture(generator: Steps, channel: Steps) -> str:
    """The consumer's steps, which both runs share, with each producer's between them."""
    consumer = [what for who, what in generator if who == "consumer"]
    assert consumer == [what for who, what in channel if who == "consumer"]
    rows = [("consumer (async for)", "async generator", "sender block")]
    for step, generator_steps, channel_steps in zip(
        [*consumer, ""], _between(generator), _between(channel), strict=True
    ):
        beside = itertools.zip_longest(generator_steps, channel_steps, fillvalue="")
        rows += [("", of_generator, of_channel) for of_generator, of_channel in beside]
        rows.append((step, "", ""))
    lines = [f"{a:<27} │ {b:<23} │ {c}".rstrip() for a, b, c in rows if a or b or c]
    lines.insert(1, "─" * 28 + "┼" + "─" * 25 + "┼" + "─" * 25)
    return "\n".join(lines)


def _between(run: Steps) -> list[list[str]]:
    """The producer's steps before the consumer's first step, between each two, and after."""
    between: list[list[str]] = [[]]
    for who, what in run:
        if who == "consumer":
            between.append([])
        else:
            between[-1].append(what)
    return between


async def main() -> None:
    print(picture(await generator_run(), await channel_run()))


if __name__ == "__main__":
    asyncio.run(main())
