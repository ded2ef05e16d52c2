"""The apps that tests/test_web.py serves with real servers: the recipes of
examples/web_starlette.py and examples/web_aiohttp.py, with producers that report what
they did (GET /stats) and a mode that keeps them busy between tokens.

Each stream has an id (a query parameter). Its record says how many tokens its producer
made, how many the response sent, how the producer stopped, and whether its cleanup
ran; /stats also gives the number of producers still alive and of tasks running.

Served as: `uvicorn tests.web_apps:starlette_app` (asyncio or uvloop), `hypercorn
--worker-class trio tests.web_apps:starlette_app`, `python -m aiohttp.web
tests.web_apps:make_aiohttp_app`.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import sniffio
from aiohttp import web
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from channel import Itemize, producer
from examples.web_aiohttp import stream_response
from examples.web_starlette import ProducerEvents, ProducerResponse

TOKENS = 20  # per stream
BUSY = 0.3  # seconds between tokens of a busy producer: it is there when the client leaves
STEADY = 0.02  # ... of a steady one: still producing while a slow client reads 3 tokens
PACE = 0.002  # seconds between tokens otherwise


@dataclass
class Record:
    made: int = 0  # tokens the producer made
    sent: int = 0  # tokens the response took from the receiver
    stopped: str = ""  # "end", "receiver closed", "cancelled", or the error
    cleaned_up: bool = False


records: dict[str, Record] = {}
alive = [0]  # producers started and not yet ended


async def _sleep(seconds: float) -> None:
    await anyio.sleep(seconds)


@contextmanager
def _recorded(record: Record) -> Iterator[None]:
    """Count a producer alive while it runs, and record how it stopped and that its
    cleanup ran."""
    alive[0] += 1
    try:
        yield
    except BaseException as exc:
        if type(exc).__name__ == "ReceiverClosed":
            record.stopped = "receiver closed"
        elif isinstance(exc, anyio.get_cancelled_exc_class()):
            record.stopped = "cancelled"
        else:
            record.stopped = repr(exc)
        raise
    else:
        record.stopped = "end"
    finally:
        record.cleaned_up = True
        alive[0] -= 1


@producer
async def async_tokens(itemize: Itemize[str], record: Record, pause: float) -> None:
    with _recorded(record):
        for i in range(TOKENS):
            await _sleep(pause)
            record.made += 1
            await itemize(f"t{i} ")


@producer
async def thread_tokens(itemize: Itemize[str], record: Record, pause: float) -> None:
    """A blocking SDK in a thread, through anyio's bridge (or asyncio's, under aiohttp)."""
    native = sniffio.current_async_library() == "asyncio" and on_aiohttp[0]
    loop = asyncio.get_running_loop() if native else None

    def sdk() -> None:
        for i in range(TOKENS):
            time.sleep(pause)
            record.made += 1
            if loop is not None:
                asyncio.run_coroutine_threadsafe(itemize(f"t{i} "), loop).result()
            else:
                anyio.from_thread.check_cancelled()
                anyio.from_thread.run(itemize, f"t{i} ")

    with _recorded(record):
        if loop is not None:
            await asyncio.to_thread(sdk)
        else:
            await anyio.to_thread.run_sync(sdk)


on_aiohttp = [False]


class _Counted:
    """A @producer's async with, its receiver counting what the response takes from it."""

    def __init__(self, producing: AbstractAsyncContextManager[Any], record: Record) -> None:
        self.producing, self.record = producing, record

    async def __aenter__(self) -> _Counted:
        self.items = await self.producing.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        return await self.producing.__aexit__(*exc_info)

    def __aiter__(self) -> _Counted:
        return self

    async def __anext__(self) -> str:
        item: str = await anext(self.items)
        self.record.sent += 1
        return item


def _stream(query: Any) -> AbstractAsyncContextManager[AsyncIterator[str]]:
    record = records.setdefault(query["id"], Record())
    pause = {"busy": BUSY, "steady": STEADY}.get(query.get("pace", ""), PACE)
    make: Callable[..., Any] = thread_tokens if query.get("thread") else async_tokens
    return _Counted(make(record, pause), record)


OURS = ("channel", "web_apps", "web_starlette", "web_aiohttp")  # the modules of our code


def _our_tasks() -> list[str]:
    """The tasks running code of the channel, the recipes or these producers."""
    if sniffio.current_async_library() == "asyncio":
        coroutines = [task.get_coro() for task in asyncio.all_tasks()]
    else:
        import trio

        def tree(task: trio.lowlevel.Task) -> list[Any]:
            children = [c for nursery in task.child_nurseries for c in nursery.child_tasks]
            return [task.coro, *(coro for child in children for coro in tree(child))]

        root = trio.lowlevel.current_root_task()
        assert root is not None  # in trio
        coroutines = tree(root)
    names = [getattr(coro, "__qualname__", "?") for coro in coroutines]
    files = [
        Path(getattr(getattr(coro, "cr_code", None), "co_filename", "")).stem for coro in coroutines
    ]
    return [name for name, file in zip(names, files, strict=True) if file in OURS]


def _stats() -> dict[str, Any]:
    streams = {key: asdict(record) for key, record in records.items()}
    return {"alive": alive[0], "tasks": _our_tasks(), "streams": streams}


# --- Starlette (and FastAPI mounted in it), for uvicorn and hypercorn ---------------------


async def chunked(request: Request) -> Response:
    return ProducerResponse(_stream(request.query_params), media_type="text/plain")


async def events(request: Request) -> Response:
    return ProducerEvents(_stream(request.query_params))


async def stats(request: Request) -> Response:
    return JSONResponse(_stats())


fastapi_app = FastAPI()


@fastapi_app.get("/tokens")
async def fastapi_tokens(request: Request) -> Response:
    return ProducerResponse(_stream(request.query_params), media_type="text/plain")


starlette_app = Starlette(
    routes=[
        Route("/tokens", chunked),
        Route("/events", events),
        Route("/stats", stats),
        Mount("/fastapi", app=fastapi_app),
    ]
)


# --- aiohttp ------------------------------------------------------------------------------


async def aiohttp_chunked(request: web.Request) -> web.StreamResponse:
    return await stream_response(request, _stream(request.query))


async def aiohttp_stats(request: web.Request) -> web.Response:
    return web.json_response(_stats())


def make_aiohttp_app(argv: Any = None) -> web.Application:
    on_aiohttp[0] = True
    app = web.Application()
    app.router.add_get("/tokens", aiohttp_chunked)
    app.router.add_get("/stats", aiohttp_stats)
    return app


if __name__ == "__main__":  # pragma: no cover - a server is started by the tests
    sys.exit("serve this module with uvicorn, hypercorn or aiohttp.web (see the docstring)")
