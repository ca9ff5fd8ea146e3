"""Fixtures: a scripted agent service on a real gRPC socket, and the real edge on a real HTTP socket."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest_asyncio
from aiohttp import web
from multidict import CIMultiDict

from services.common.auth import mint_token
from services.common.config import Settings
from services.edge.app import create_app, make_runner
from tests.unit.edge.fake_agent import FakeAgent, start_fake_agent

SECRET = "edge-test-secret-" + "k" * 32


def make_settings(agent_address: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "jwt_secret": SECRET,
        "agent_address": agent_address,
        "edge_host": "127.0.0.1",
        "edge_port": 0,
        "rpc_timeout_s": 5.0,
        "stream_timeout_s": 50.0,
        "shutdown_grace_s": 1.0,
        "cors_origins": [],
        "demo_token": None,
    }
    values.update(overrides)
    return Settings(**values)


def unused_address() -> str:
    """An address where nothing listens (the port was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


@dataclass
class Reply:
    status: int
    headers: CIMultiDict[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def error(self) -> tuple[str, str]:
        """(code, message) of a JSON error body, asserting its exact shape."""
        assert self.headers["Content-Type"].startswith("application/json"), self.headers
        body = self.json()
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"code", "message"}, body
        assert isinstance(body["error"]["message"], str)
        assert body["error"]["message"], body
        return body["error"]["code"], body["error"]["message"]


@dataclass
class EdgeUnderTest:
    url: str
    session: aiohttp.ClientSession
    settings: Settings
    token: str = field(default_factory=lambda: mint_token(SECRET, tenant="acme", user="alice"))

    def auth(self, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", **extra}

    async def post(
        self,
        body: dict[str, Any] | bytes,
        headers: dict[str, str] | None = None,
        *,
        path: str = "/chatkit/api",
    ) -> Reply:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        sent = self.auth(**{"Content-Type": "application/json"}) if headers is None else headers
        async with self.session.post(self.url + path, data=data, headers=sent) as response:
            return Reply(response.status, CIMultiDict(response.headers), await response.read())

    async def request(self, method: str, path: str, headers: dict[str, str] | None = None) -> Reply:
        async with self.session.request(method, self.url + path, headers=headers or {}) as response:
            return Reply(response.status, CIMultiDict(response.headers), await response.read())


@asynccontextmanager
async def running_edge(
    settings: Settings, *, handler_cancellation: bool = True
) -> AsyncIterator[EdgeUnderTest]:
    """The production app on the production runner, on 127.0.0.1 and a free port.

    `handler_cancellation=False` runs it the way aiohttp does by default (e.g. an app embedding the
    edge with `web.run_app`), where a disconnect only shows as a failed write.
    """
    app = create_app(settings)
    runner = make_runner(app, settings) if handler_cancellation else web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        async with aiohttp.ClientSession() as session:
            yield EdgeUnderTest(f"http://127.0.0.1:{port}", session, settings)
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture(scope="package")
async def _agent_server() -> AsyncIterator[FakeAgent]:
    fake = await start_fake_agent()
    try:
        yield fake
    finally:
        await fake.server.stop(None)


@pytest_asyncio.fixture
async def agent(_agent_server: FakeAgent) -> FakeAgent:
    """The shared fake agent, reset: default script, nothing received, SERVING."""
    _agent_server.servicer.reset()
    await _agent_server.set_serving(True)
    return _agent_server


@pytest_asyncio.fixture
async def edge(agent: FakeAgent) -> AsyncIterator[EdgeUnderTest]:
    async with running_edge(make_settings(agent.address)) as running:
        yield running
