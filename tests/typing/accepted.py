"""What the types must accept and infer: mypy --strict and pyright (strict) check this file.

It is never run. Each function is one claim of the README's Typing section, and
``assert_type`` pins what must be inferred, so a claim that stops holding fails CI.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator
from typing import assert_type

from channel import Channel, Itemize, Receiver, Sender, producer


async def takes_int_itemize(itemize: Itemize[int]) -> None:
    await itemize(1)


async def itemize_is_contravariant_in_the_item(c: Channel[object]) -> None:
    async with c.sender as itemize:
        await takes_int_itemize(itemize)  # an Itemize[object] where an Itemize[int] goes


def a_receiver_is_covariant_in_the_item(r: Receiver[bool]) -> Receiver[int]:
    return r  # a Receiver of bools gives ints


def a_sender_is_contravariant_in_the_item(s: Sender[object]) -> Sender[str]:
    return s  # a Sender that takes anything takes strings


async def received_items_have_the_item_type(c: Channel[str]) -> None:
    async for item in c.receiver:
        assert_type(item, str)
    assert_type(await anext(c.receiver), str)


async def the_reply_type_defaults_to_none(c: Channel[str]) -> None:
    assert_type(c, Channel[str, None])
    async with c.sender as itemize:
        assert_type(itemize, Itemize[str, None])
        assert_type(await itemize("x"), None)
    assert_type(await c.receiver.asend(None), str)


async def replies_have_the_reply_type(c: Channel[str, int]) -> None:
    async with c.sender as itemize:
        assert_type(await itemize("x"), int)
    assert_type(await c.receiver.asend(1), str)


def itemize_is_covariant_in_the_reply(i: Itemize[str, bool]) -> Itemize[str, int]:
    return i


def a_receiver_is_contravariant_in_the_reply(r: Receiver[str, int]) -> Receiver[str, bool]:
    return r  # a Receiver that sends ints can send bools


def a_receiver_is_an_async_generator(r: Receiver[str, int]) -> AsyncGenerator[str, int]:
    return r


async def athrow_gives_the_next_item(r: Receiver[str, int]) -> None:
    assert_type(await r.athrow(ValueError("bad item")), str)


def counted() -> Generator[str, int, float]:
    yield "a"
    return 1.0


async def many_returns_what_the_generator_returns(c: Channel[str, int]) -> None:
    async with c.sender as itemize:
        assert_type(await itemize.many(counted()), float)
        assert_type(await itemize.many(["b", "c"]), None)


async def batches_are_lists_of_items(c: Channel[str]) -> None:
    async for batch in c.receiver.batches(8):
        assert_type(batch, list[str])


@producer
async def ticks(itemize: Itemize[int], n: int, *, label: str = "") -> None:
    for i in range(n):
        await itemize(i)


@producer
async def conversation(itemize: Itemize[str, int]) -> None:
    assert_type(await itemize("how many?"), int)


async def a_producer_keeps_the_parameters_after_itemize() -> None:
    async with ticks(3, label="t") as items:
        assert_type(items, Receiver[int, None])
    async with conversation() as replies:
        assert_type(replies, Receiver[str, int])
