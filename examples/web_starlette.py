"""Streaming a response from a producer with Starlette (so also FastAPI): a chunked body
and Server-Sent Events, from callback-style async code and from a blocking SDK in a thread.

A framework cancels the task that iterates a response's body when the client goes away,
and never closes the body. So the producer's lifetime is tied to the response, not to
its iteration: `ProducerResponse` (and `ProducerEvents` for sse-starlette) enters the
`@producer` around Starlette's own response. However the response ends (the last item,
the client's disconnect, an error), leaving it closes the receiver: a producer waiting
in `itemize` gets `ReceiverClosed`, one busy elsewhere is cancelled, and its cleanup has
run when the response is done. At most one item is made after the client left.

Serve it with `uvicorn examples.web_starlette:app` (add `--loop uvloop`), or on trio with
`hypercorn --worker-class trio examples.web_starlette:app`. Run this file to stream
each route once, in process:

Prints:
/tokens: Once upon a time there was a channel.
/tokens-from-thread: Once upon a time there was a thread.
/events: 8 events, the last: channel.
/events-from-thread: 8 events, the last: thread.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from channel import Itemize, producer

# --- The recipe: a response that holds its producer ---------------------------------------

Producing = AbstractAsyncContextManager[AsyncIterator[Any]]  # what a @producer call returns


class ProducerResponse(StreamingResponse):
    """A `StreamingResponse` whose body a `@producer` makes, for as long as the response."""

    def __init__(self, producing: Producing, **options: Any) -> None:
        super().__init__((), **options)  # the body: the receiver, once entered
        self.producing = producing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with self.producing as items:
            self.body_iterator = items
            await super().__call__(scope, receive, send)


class ProducerEvents(EventSourceResponse):
    """sse-starlette's `EventSourceResponse`, its events made by a `@producer`, likewise."""

    def __init__(self, producing: Producing, **options: Any) -> None:
        super().__init__(iter(()), **options)
        self.producing = producing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with self.producing as items:
            self.body_iterator = items
            await super().__call__(scope, receive, send)


# --- Two producers: async code that calls back, and a blocking SDK in a thread -------------


def tokens_of(prompt: str) -> list[str]:
    """What the stand-in model says: tokens, as language models make them."""
    first, *rest = f"Once upon a time there was {prompt}.".split()
    return [first, *(" " + word for word in rest)]


async def complete(prompt: str, on_token: Callable[[str], Awaitable[object]]) -> None:
    """A stand-in for an async client of a language model: it calls back with each token."""
    for token in tokens_of(prompt):
        await anyio.sleep(0.001)  # the model thinks
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
    def on_token(token: str) -> None:  # in the SDK's thread
        anyio.from_thread.check_cancelled()  # stops the SDK when the client has left
        anyio.from_thread.run(itemize, token)

    await anyio.to_thread.run_sync(complete_blocking, prompt, on_token)


# --- The app ------------------------------------------------------------------------------


async def chunked(request: Request) -> Response:
    stream = tokens if request.url.path == "/tokens" else tokens_from_thread
    return ProducerResponse(stream(request.query_params["prompt"]), media_type="text/plain")


async def events(request: Request) -> Response:
    stream = tokens if request.url.path == "/events" else tokens_from_thread
    return ProducerEvents(stream(request.query_params["prompt"]))


app = Starlette(
    routes=[
        Route("/tokens", chunked),
        Route("/tokens-from-thread", chunked),
        Route("/events", events),
        Route("/events-from-thread", events),
    ]
)


async def main() -> None:
    import httpx

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
        for path, prompt in [("/tokens", "a channel"), ("/tokens-from-thread", "a thread")]:
            response = await client.get(path, params={"prompt": prompt})
            print(f"{path}: {response.text}")
        for path, prompt in [("/events", "a channel"), ("/events-from-thread", "a thread")]:
            response = await client.get(path, params={"prompt": prompt})
            data = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
            print(f"{path}: {len(data)} events, the last:{data[-1]}")


if __name__ == "__main__":
    anyio.run(main)
