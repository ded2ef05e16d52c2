"""The web recipes under real servers and a real client: whole streams, clients that
leave early, and many clients at once; nothing left running, nothing in the logs.

Each server runs tests/web_apps.py as a subprocess on 127.0.0.1 for the whole module:
uvicorn with asyncio and with uvloop and hypercorn with trio (Starlette, sse-starlette,
FastAPI mounted in Starlette), and aiohttp's own runner. The client is httpx, streaming.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.support import ROOT

# The servers run channel.py in processes of their own: mutation testing leaves these out.
pytestmark = pytest.mark.as_shipped

TOKENS = 20  # as tests/web_apps.py makes them
LIMIT = 10.0  # seconds: a hang detector for every request and wait here
CLIENTS = 200


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    url: str
    log: Path
    read: int = 0  # how much of the log the tests have looked at

    def new_log(self) -> str:
        text = self.log.read_text(errors="replace")
        new, self.read = text[self.read :], len(text)
        return new


COMMANDS = {
    "uvicorn-asyncio": ["-m", "uvicorn", "tests.web_apps:starlette_app", "--loop", "asyncio"],
    "uvicorn-uvloop": ["-m", "uvicorn", "tests.web_apps:starlette_app", "--loop", "uvloop"],
    "hypercorn-trio": ["-m", "hypercorn", "--worker-class", "trio", "tests.web_apps:starlette_app"],
    "aiohttp": ["-m", "aiohttp.web", "tests.web_apps:make_aiohttp_app"],
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _command(name: str, port: int) -> list[str]:
    command = [sys.executable, *COMMANDS[name]]
    if name.startswith("uvicorn"):
        command += ["--host", "127.0.0.1", "--port", str(port), "--ws", "none"]
        command += ["--log-level", "warning", "--no-access-log"]
    elif name.startswith("hypercorn"):
        command += ["--bind", f"127.0.0.1:{port}", "--log-level", "warning"]
    else:
        command += ["-H", "127.0.0.1", "-P", str(port)]
    return command


@pytest.fixture(scope="module", params=list(COMMANDS))
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    name: str = request.param
    port = _free_port()
    log = Path(tempfile.mkdtemp()) / f"{name}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            _command(name, port),
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "default"},
        )
    server = Server(name, process, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + LIMIT
        while True:
            try:
                httpx.get(f"{server.url}/stats", timeout=LIMIT).raise_for_status()
                break
            except httpx.TransportError:
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.05)
        yield server
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(LIMIT)
        except subprocess.TimeoutExpired:  # pragma: no cover - a hang, reported below
            process.kill()
            process.wait()
            pytest.fail(f"{name} did not stop: {log.read_text()}")


# The recipes each server serves: a chunked body (also through FastAPI), Server-Sent Events.
ROUTES = {"tokens": "/tokens", "events": "/events", "fastapi": "/fastapi/tokens"}
PRODUCERS = ["async", "thread"]


def _routes(server: Server) -> list[str]:
    return ["tokens"] if server.name == "aiohttp" else list(ROUTES)


def _params(stream: str, producer: str, pace: str = "") -> dict[str, str]:
    params = {"id": stream, "pace": pace}
    if producer == "thread":
        params["thread"] = "1"
    return params


def _tokens_in(text: str, route: str) -> list[str]:
    if route == "events":
        return re.findall(r"^data: (t\d+)", text, re.M)
    return re.findall(r"t\d+", text)


async def _stats(client: httpx.AsyncClient, server: Server) -> dict[str, Any]:
    response = await client.get(f"{server.url}/stats")
    stats: dict[str, Any] = response.json()
    return stats


async def _record_once_stopped(
    client: httpx.AsyncClient, server: Server, stream: str
) -> dict[str, Any]:
    """The stream's record, once its producer has stopped and cleaned up."""
    deadline = time.monotonic() + LIMIT
    while True:
        record: dict[str, Any] | None = (await _stats(client, server))["streams"].get(stream)
        if record is not None and record["stopped"] and record["cleaned_up"]:
            return record
        assert time.monotonic() < deadline, f"the producer did not stop: {record}"
        await asyncio.sleep(0.02)


async def _read(
    client: httpx.AsyncClient,
    server: Server,
    route: str,
    params: dict[str, str],
    leave_after: int | None = None,
    *,
    pause: float = 0.0,
) -> list[str]:
    """Stream a response; leave after ``leave_after`` tokens, reading slowly by ``pause``."""
    seen = ""
    async with client.stream("GET", server.url + ROUTES[route], params=params) as response:
        response.raise_for_status()
        async for chunk in response.aiter_text():
            seen += chunk
            if leave_after is not None and len(_tokens_in(seen, route)) >= leave_after:
                break  # leaving the `async with` closes the connection
            await asyncio.sleep(pause)
    return _tokens_in(seen, route)


def _run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 6 * LIMIT))


def _no_problems_in(log: str) -> None:
    problems = [
        line
        for line in log.splitlines()
        if re.search(r"error|exception|traceback|warning|cancel scope", line, re.I)
    ]
    assert not problems, log


@pytest.mark.parametrize("producer", PRODUCERS)
def test_a_whole_stream_arrives_in_order(server: Server, producer: str) -> None:
    async def main() -> None:
        async with httpx.AsyncClient(timeout=LIMIT) as client:
            for route in _routes(server):
                stream = f"whole-{route}-{producer}"
                tokens = await _read(client, server, route, _params(stream, producer))
                assert tokens == [f"t{i}" for i in range(TOKENS)]
                record = await _record_once_stopped(client, server, stream)
                assert record == {
                    "made": TOKENS,
                    "sent": TOKENS,
                    "stopped": "end",
                    "cleaned_up": True,
                }

    _run(main())
    _no_problems_in(server.new_log())


LEAVING = {  # how the producer is found when the client leaves after 3 tokens
    "waiting in itemize": ("", 0.0),
    "busy": ("busy", 0.0),  # the producer's pace, the client's pause between chunks
    "with a slow reader": ("steady", 0.05),
}


@pytest.mark.parametrize("how", list(LEAVING))
@pytest.mark.parametrize("producer", PRODUCERS)
def test_a_client_leaving_early_stops_its_producer(server: Server, producer: str, how: str) -> None:
    async def main() -> None:
        async with httpx.AsyncClient(timeout=LIMIT) as client:
            for route in _routes(server):
                stream = f"leave-{route}-{producer}-{how}"
                pace, pause = LEAVING[how]
                await _read(client, server, route, _params(stream, producer, pace), 3, pause=pause)
                record = await _record_once_stopped(client, server, stream)
                assert record["stopped"] in ("receiver closed", "cancelled"), record
                assert record["cleaned_up"]
                assert record["made"] - record["sent"] <= 1, record  # none made for nobody
                assert record["made"] < TOKENS, record
            stats = await _stats(client, server)
            assert (stats["alive"], stats["tasks"]) == (0, []), stats

    _run(main())
    _no_problems_in(server.new_log())


@pytest.mark.parametrize("producer", PRODUCERS)
def test_many_clients_leaving_at_random_leave_nothing_behind(server: Server, producer: str) -> None:
    rng = random.Random(f"{server.name}-{producer}")
    rss: list[int] = []

    async def client_round(client: httpx.AsyncClient, number: int) -> None:
        async def one(i: int) -> None:
            route = rng.choice(_routes(server))
            stream = f"many-{producer}-{number}-{i}"
            leave_after = rng.choice([None, 0, 1, 3, 5, 10])
            tokens = await _read(client, server, route, _params(stream, producer), leave_after)
            if leave_after is None:
                assert tokens == [f"t{k}" for k in range(TOKENS)]

        await asyncio.gather(*(one(i) for i in range(CLIENTS)))

    async def main() -> None:
        limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=LIMIT, limits=limits) as client:
            for number in range(2):
                await client_round(client, number)
                deadline = time.monotonic() + LIMIT
                while (stats := await _stats(client, server))["alive"] or stats["tasks"]:
                    assert time.monotonic() < deadline, f"left running: {stats}"
                    await asyncio.sleep(0.05)
                rss.append(psutil.Process(server.process.pid).memory_info().rss)
            streams = (await _stats(client, server))["streams"]
            mine = [r for key, r in streams.items() if key.startswith(f"many-{producer}-")]
            assert len(mine) == 2 * CLIENTS
            assert all(r["cleaned_up"] and r["made"] - r["sent"] <= 1 for r in mine)

    _run(main())
    _no_problems_in(server.new_log())
    assert rss[1] - rss[0] < 8 * 2**20, (
        f"resident memory grew by {(rss[1] - rss[0]) / 2**20:.1f} MiB"
    )
