"""Push words into an async generator pipeline from a plain function call tree.

The producer never yields: it hands `itemize` to whatever code finds the items.
The consumer is an ordinary generator pipeline. The two run in step, like a
generator and its consumer: each word is produced only when the pipeline asks.

Prints:
produced 'push'
  pipeline got PUSH
produced 'into'
  pipeline got INTO
produced 'a'
  pipeline got A
produced 'pipeline'
  pipeline got PIPELINE
4 words
"""

import asyncio
from collections.abc import AsyncIterator

from channel import Channel, Itemize


async def find_words(text: str, itemize: Itemize[str]) -> None:
    for word in text.split():
        print(f"produced {word!r}")
        await itemize(word)


async def producer(c: Channel[str]) -> None:
    async with c.sender as itemize:
        await find_words("push into", itemize)
        await find_words("a pipeline", itemize)


async def shout(words: AsyncIterator[str]) -> AsyncIterator[str]:
    async for word in words:
        yield word.upper()


async def main() -> None:
    c: Channel[str] = Channel()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(producer(c))
        count = 0
        async for word in shout(c.receiver):
            print(f"  pipeline got {word}")
            count += 1
    print(f"{count} words")


if __name__ == "__main__":
    asyncio.run(main())
