"""Streaming a response from a producer with aiohttp, from callback-style async code and
from a blocking SDK in a thread.

The handler enters the `@producer` and writes each item as it comes: the producer lives
as long as the handler. When the client goes away, the next write fails (or aiohttp
cancels the handler, if it was told to), which leaves the `async with`: a producer
waiting in `itemize` gets `ReceiverClosed`, one busy elsewhere is cancelled, and its
cleanup has run before the handler is done. At most one item is made after the client
left.

Serve it with `python -m aiohttp.web -H 127.0.0.1 -P 8080 examples.web_aiohttp:make_app`.
Run this file to stream each route once, in process:

Prints:
/tokens: Once upon a time there was a channel.
/tokens-from-thread: Once upon a time there was a thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from aiohttp import web

from channel import Itemize, producer

# --- The recipe: a handler that holds its producer -----------------------------------------


async def stream_response(
    request: web.Request, producing: AbstractAsyncContextManager[AsyncIterator[str]]
) -> web.StreamResponse:
    """Write the items of a `@producer` as a chunked body, for as long as the request."""
    response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
    await response.prepare(request)
    try:
        async with producing as items:
            async for item in items:
                await response.write(item.encode())
        await response.write_eof()
    except ConnectionResetError:  # the client left; leaving the `async with` stopped the producer
        pass
    return response


# --- Two producers: async code that calls back, and a blocking SDK in a thread -------------


def tokens_of(prompt: str) -> list[str]:
    """What the stand-in model says: tokens, as language models make them."""
    first, *rest = f"Once upon a time there was {prompt}.".split()
    return [first, *(" " + word for word in rest)]


async def complete(prompt: str, on_token: Callable[[str], Awaitable[object]]) -> None:
    """A stand-in for an async client of a language model: it calls back with each token."""
    for token in tokens_of(prompt):
        await asyncio.sleep(0.001)  # the model thinks
        await on_token(token)


def complete_blocking(prompt: str, on_token: Callable[[str], object]) -> None:
    """The same, as a blocking SDK does it."""
    for token in tokens_of(prompt):
        time.sleep(0.001)
        on_token(token)


@producer
async def tokens(itemize: Itemize[str], prompt: str) -> None:
    await complete(prompt, itemize)  # itemize is the callback


@producer
async def tokens_from_thread(itemize: Itemize[str], prompt: str) -> None:
    loop = asyncio.get_running_loop()

    def on_token(token: str) -> None:  # in the SDK's thread
        asyncio.run_coroutine_threadsafe(itemize(token), loop).result()

    await asyncio.to_thread(complete_blocking, prompt, on_token)


# --- The app ------------------------------------------------------------------------------


async def chunked(request: web.Request) -> web.StreamResponse:
    stream = tokens if request.path == "/tokens" else tokens_from_thread
    return await stream_response(request, stream(request.query["prompt"]))


def make_app(argv: Any = None) -> web.Application:
    app = web.Application()
    app.router.add_get("/tokens", chunked)
    app.router.add_get("/tokens-from-thread", chunked)
    return app


async def main() -> None:
    from aiohttp.test_utils import TestClient, TestServer

    async with TestClient(TestServer(make_app())) as client:
        for path, prompt in [("/tokens", "a channel"), ("/tokens-from-thread", "a thread")]:
            response = await client.get(path, params={"prompt": prompt})
            print(f"{path}: {await response.text()}")


if __name__ == "__main__":
    asyncio.run(main())
