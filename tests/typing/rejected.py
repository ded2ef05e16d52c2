"""What the types must reject: each line marked ``# type: ignore[code]`` must be an error.

mypy --strict (``warn_unused_ignores``) and pyright (``reportUnnecessaryTypeIgnoreComment``)
check this file; each mark names the error, so a rejection that stops happening, or
turns into another error, fails CI. It is never run.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from channel import Channel, Itemize, Receiver, Sender, producer


def a_receiver_is_not_contravariant_in_the_item(r: Receiver[int]) -> Receiver[bool]:
    return r  # type: ignore[return-value]  # pyright: ignore[reportReturnType]


def a_sender_is_not_covariant_in_the_item(s: Sender[str]) -> Sender[object]:
    return s  # type: ignore[return-value]  # pyright: ignore[reportReturnType]


def itemize_is_not_contravariant_in_the_reply(i: Itemize[str, int]) -> Itemize[str, bool]:
    return i  # type: ignore[return-value]  # pyright: ignore[reportReturnType]


def a_receiver_is_not_an_async_generator_of_other_items(
    r: Receiver[str, int],
) -> AsyncGenerator[int, int]:
    return r  # type: ignore[return-value]  # pyright: ignore[reportReturnType]


async def items_have_the_item_type(c: Channel[int]) -> None:
    async with c.sender as itemize:
        await itemize("not an int")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


async def received_items_have_the_item_type(c: Channel[int]) -> None:
    async for item in c.receiver:
        item.upper()  # type: ignore[attr-defined]  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType]


async def asend_takes_the_reply_type(c: Channel[str, int]) -> None:
    await c.receiver.asend("not an int")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


async def itemize_is_not_covariant_in_the_item(c: Channel[int]) -> None:
    async def takes_object_itemize(itemize: Itemize[object]) -> None: ...

    async with c.sender as itemize:
        await takes_object_itemize(itemize)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


@producer
async def ticks(itemize: Itemize[int], n: int) -> None:
    await itemize(n)


async def a_producer_takes_its_parameters_after_itemize() -> None:
    async with ticks("three"):  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
        pass
