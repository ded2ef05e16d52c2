"""Duplex: the producer sends letters and prints the numbers the consumer answers with.

`x = await itemize(item)` is `x = yield item`; `receiver.asend(value)` is `agen.asend(value)`.

Prints:
A
0
B
1
"""

import asyncio
import itertools

from channel import Channel


async def letters(c: Channel[str, int]) -> None:
    async with c.sender as itemize:
        print(await itemize("A"))  # send, and receive the answer
        print(await itemize("B"))


async def numbers(c: Channel[str, int]) -> None:
    try:
        print(await c.receiver.asend(None))  # receive only
        for i in itertools.count():
            print(await c.receiver.asend(i))  # send and receive
    except StopAsyncIteration:
        pass


async def main() -> None:
    c: Channel[str, int] = Channel()
    await asyncio.gather(letters(c), numbers(c))


if __name__ == "__main__":
    asyncio.run(main())
