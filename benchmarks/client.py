"""The load generator's connections to the systems under test (`Client`)."""

from __future__ import annotations

from typing import Final

import aiohttp
from grpc import aio

from benchmarks.metrics import MiB
from benchmarks.systems import Target
from benchmarks.workload import TURN_TIMEOUT_S, Driver, GrpcDriver, HttpDriver
from services.common.auth import mint_token
from tests.support.processes import SECRET

_GRPC_OPTIONS: Final = [("grpc.max_receive_message_length", 16 * MiB)]


class Client:
    """The load generator's connections: a fresh HTTP session per cell, one gRPC channel per run.

    Every Switchboard stack of a run shares the test stacks' JWT secret, so one token serves them all
    (the reference and the ceiling ignore it)."""

    def __init__(self, expected_text: str, grpc_address: str | None = None) -> None:
        self._expected = expected_text
        self._token = mint_token(SECRET, tenant="acme", user="alice", role="user")
        self._headers = {"Authorization": f"Bearer {self._token}"}
        self._channel = (
            None if grpc_address is None else aio.insecure_channel(grpc_address, options=_GRPC_OPTIONS)
        )
        self._session: aiohttp.ClientSession | None = None

    async def driver(self, target: Target) -> Driver:
        if target.protocol == "grpc":
            if self._channel is None:
                raise RuntimeError(f"{target.name} is a gRPC system, and the client has no channel")
            return GrpcDriver(self._channel, self._token, self._expected)
        await self.end_cell()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=False),
            timeout=aiohttp.ClientTimeout(total=TURN_TIMEOUT_S),
        )
        return HttpDriver(self._session, target.address, self._headers, self._expected)

    async def end_cell(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def close(self) -> None:
        await self.end_cell()
        if self._channel is not None:
            await self._channel.close()
