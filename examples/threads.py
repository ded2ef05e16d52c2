"""A blocking callback API turned into an `async for`, through asyncio's own bridge.

expat, the standard library's XML parser, reads a whole document in one blocking
call and reports each element to a callback. Here it runs in a worker thread, and
its callback hands each title to `itemize` with `asyncio.run_coroutine_threadsafe`:
the call returns when the consumer asks for the next title, so the parser never
runs ahead of the consumer. The consumer stops after three titles; the callback's
`itemize` then raises `ReceiverClosed`, which stops the parser and ends the block.

Prints:
Title 0
Title 1
Title 2
the parser stopped at entry 3 of 1000: ReceiverClosed
"""

import asyncio
import xml.parsers.expat
from collections.abc import Callable

from channel import Channel

FEED = "<feed>" + "".join(f'<entry title="Title {i}"/>' for i in range(1000)) + "</feed>"


def parse_titles(document: str, on_title: Callable[[str], object]) -> None:
    """A blocking API: calls `on_title` for each entry, and stops on its exception."""
    parser = xml.parsers.expat.ParserCreate()
    entries = 0

    def start_element(name: str, attributes: dict[str, str]) -> None:
        nonlocal entries
        if name == "entry":
            entries += 1
            on_title(attributes["title"])

    parser.StartElementHandler = start_element
    try:
        parser.Parse(document, True)
    except BaseException as stop:
        print(f"the parser stopped at entry {entries} of 1000: {type(stop).__name__}")
        raise


async def titles(c: Channel[str]) -> None:
    loop = asyncio.get_running_loop()
    async with c.sender as itemize:

        def push(title: str) -> None:  # runs in the parser's thread
            asyncio.run_coroutine_threadsafe(itemize(title), loop).result()

        await asyncio.to_thread(parse_titles, FEED, push)


async def main() -> None:
    c: Channel[str] = Channel()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(titles(c))
        async with c.receiver:  # closes the receiver however the block is left
            async for title in c.receiver:
                print(title)
                if title == "Title 2":
                    break


if __name__ == "__main__":
    asyncio.run(main())
