"""A streaming endpoint two ways, measured under uvicorn with httpx: the channel recipe of
examples/web_starlette.py against the `asyncio.Queue` pattern that most apps use today (a
callback puts tokens in a queue, an async generator drains it until a "done" event, as
LangChain's `AsyncIteratorCallbackHandler` does).

    python benchmarks/web.py              # writes benchmarks/web.md

The same stand-in model makes 400 tokens, one every 6 ms, and reports each to a callback.
Measured: tokens made for nobody after a client read 3 and left; whole streams that lost
tokens; tokens made for nobody under load (200 clients, a random half leaving early); and
the lines of user code each way needs (the code between the `# user code` markers).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse, Response, StreamingResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

from channel import Itemize, producer  # noqa: E402
from examples.web_starlette import ProducerResponse  # noqa: E402

TOKENS, PACE = 400, 0.006
made: dict[str, int] = {}  # tokens the model made, by stream
sent: dict[str, int] = {}  # tokens the response took, by stream


async def model(stream: str, on_token: Callable[[str], Awaitable[object]]) -> None:
    """The stand-in model: a token every 6 ms, each reported to a callback."""
    for i in range(TOKENS):
        await asyncio.sleep(PACE)
        made[stream] = made.get(stream, 0) + 1
        await on_token(f"t{i} ")


async def counted(stream: str, tokens: AsyncIterator[str]) -> AsyncIterator[str]:
    async for token in tokens:
        sent[stream] = sent.get(stream, 0) + 1
        yield token


# user code: channel
@producer
async def channel_tokens(itemize: Itemize[str], stream: str) -> None:
    await model(stream, itemize)


async def with_a_channel(request: Request) -> Response:
    stream = request.query_params["id"]
    return ProducerResponse(_counted_producer(stream, channel_tokens(stream)))


# end of user code


def _counted_producer(stream: str, producing: Any) -> Any:
    class Counted:
        async def __aenter__(self) -> AsyncIterator[str]:
            return counted(stream, await producing.__aenter__())

        async def __aexit__(self, *exc_info: Any) -> Any:
            return await producing.__aexit__(*exc_info)

    return Counted()


# user code: queue
class QueueCallbackHandler:
    """A callback that fills a queue, drained by an async generator until the end."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.done = asyncio.Event()

    async def on_token(self, token: str) -> None:
        self.queue.put_nowait(token)

    async def on_end(self) -> None:
        self.done.set()

    async def tokens(self) -> AsyncIterator[str]:
        while not self.queue.empty() or not self.done.is_set():
            get = asyncio.ensure_future(self.queue.get())
            end = asyncio.ensure_future(self.done.wait())
            done, pending = await asyncio.wait([get, end], return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            token_or_done = done.pop().result()
            if token_or_done is True:
                break
            assert isinstance(token_or_done, str)
            yield token_or_done


async def run_model(stream: str, handler: QueueCallbackHandler) -> None:
    try:
        await model(stream, handler.on_token)
    finally:
        await handler.on_end()


background: set[asyncio.Task[None]] = set()


async def with_a_queue(request: Request) -> Response:
    stream = request.query_params["id"]
    handler = QueueCallbackHandler()
    task = asyncio.create_task(run_model(stream, handler))
    background.add(task)
    task.add_done_callback(background.discard)
    return StreamingResponse(counted(stream, handler.tokens()))


# end of user code


async def stats(request: Request) -> Response:
    return JSONResponse({"made": made, "sent": sent, "running": len(background)})


app = Starlette(
    routes=[
        Route("/channel", with_a_channel),
        Route("/queue", with_a_queue),
        Route("/stats", stats),
    ]
)


# --- Measuring ----------------------------------------------------------------------------


def user_lines(way: str) -> int:
    """Lines of code a user writes: between the markers, and for the channel the recipe's
    response class too (from examples/web_starlette.py)."""
    text = Path(__file__).read_text()
    code = re.search(rf"# user code: {way}\n(.*?)# end of user code", text, re.S)
    assert code is not None
    source = code.group(1)
    if way == "channel":
        source += inspect.getsource(ProducerResponse)
    lines = [line.strip() for line in source.splitlines() if line.strip()]
    return len([line for line in lines if not line.startswith(("#", '"""'))])


async def read(client: httpx.AsyncClient, url: str, leave_after: int | None) -> int:
    count = 0
    async with client.stream("GET", url) as response:
        async for chunk in response.aiter_text():
            count += chunk.count("t")
            if leave_after is not None and count >= leave_after:
                break
    return count


async def measure(base: str) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    limits = httpx.Limits(max_connections=300, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        for way in ("channel", "queue"):
            row: dict[str, float] = {}
            # One client reads 3 tokens and leaves; what does the producer make after that?
            await read(client, f"{base}/{way}?id={way}-leave", 3)
            await asyncio.sleep(TOKENS * PACE + 1)  # time for a producer left running to end
            stats = (await client.get(f"{base}/stats")).json()
            row["made after a client left"] = stats["made"][f"{way}-leave"] - 3
            # 100 whole streams at once: how many lost tokens?
            whole = await asyncio.gather(
                *(read(client, f"{base}/{way}?id={way}-whole-{i}", None) for i in range(100))
            )
            row["whole streams missing tokens (of 100)"] = sum(n < TOKENS for n in whole)
            # Load: 200 clients, a random half leaving early.
            rng = random.Random(way)
            leaving = [rng.choice([None, rng.randrange(1, 50)]) for _ in range(200)]
            await asyncio.gather(
                *(read(client, f"{base}/{way}?id={way}-load-{i}", n) for i, n in enumerate(leaving))
            )
            await asyncio.sleep(TOKENS * PACE + 1)
            stats = (await client.get(f"{base}/stats")).json()
            row["tokens made for nobody under load"] = sum(
                stats["made"][f"{way}-load-{i}"] - stats["sent"].get(f"{way}-load-{i}", 0)
                for i in range(200)
            )
            row["lines of user code"] = user_lines(way)
            results[way] = row
    return results


def main() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "uvicorn", "benchmarks.web:app", "--port", str(port)]
    command += ["--ws", "none", "--log-level", "warning", "--no-access-log"]
    server = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                httpx.get(f"{base}/stats")
                break
            except httpx.TransportError:
                time.sleep(0.05)
        results = asyncio.run(measure(base))
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(30)
    rows = list(results["channel"])
    lines = [
        "# A streaming endpoint: the channel recipe against an `asyncio.Queue`",
        "",
        f"Measured by `python benchmarks/web.py` (uvicorn, httpx; {TOKENS} tokens, one every "
        f"{PACE * 1000:.0f} ms).",
        "",
        "| | channel recipe | `asyncio.Queue` pattern |",
        "|---|---:|---:|",
        *[
            f"| {row} | {results['channel'][row]:,.0f} | {results['queue'][row]:,.0f} |"
            for row in rows
        ],
        "",
    ]
    (Path(__file__).parent / "web.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
