"""A pipeline that combines pairs of pushed items through an async generator.

Prints:
pushed 1
pushed 2
1 + 2 = 3
pushed 3
pushed 4
3 + 4 = 7
"""

import asyncio
from collections.abc import AsyncIterator

from channel import Itemize, producer


@producer
async def numbers(itemize: Itemize[int]) -> None:
    for n in range(1, 5):
        print(f"pushed {n}")
        await itemize(n)


async def pairs(items: AsyncIterator[int]) -> AsyncIterator[tuple[int, int]]:
    async for first in items:
        yield first, await anext(items)


async def main() -> None:
    async with numbers() as items:
        async for first, second in pairs(items):
            print(f"{first} + {second} = {first + second}")


if __name__ == "__main__":
    asyncio.run(main())
