"""One coroutine pushes into two channels alternately; each consumer reads its own.

Prints:
Message for Arnold: Hello Arnold.
Message for Bernard: Hello Bernard.
Message for Arnold: Goodbye Arnold.
Message for Bernard: Goodbye Bernard.
"""

import asyncio

from channel import Channel


async def send_messages(a: Channel[str], b: Channel[str]) -> None:
    async with a.sender as to_arnold, b.sender as to_bernard:
        await to_arnold("Hello Arnold.")
        await to_bernard("Hello Bernard.")
        await to_arnold("Goodbye Arnold.")
        await to_bernard("Goodbye Bernard.")


async def show_messages(name: str, c: Channel[str]) -> None:
    async for message in c.receiver:
        print(f"Message for {name}: {message}")


async def main() -> None:
    a: Channel[str] = Channel()
    b: Channel[str] = Channel()
    await asyncio.gather(
        send_messages(a, b), show_messages("Arnold", a), show_messages("Bernard", b)
    )


if __name__ == "__main__":
    asyncio.run(main())
