"""The rest of the HTTP surface: probes, CORS, the demo page, and JSON errors for every route."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal

import aiohttp
import pytest
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.edge.app import run_edge
from tests.unit.edge.conftest import EdgeUnderTest, make_settings, running_edge
from tests.unit.edge.fake_agent import FakeAgent
from tests.unit.edge.test_edge_chatkit_api import CREATE

ALLOWED = "https://app.example"


# --------------------------------------------------------------------------- probes


async def test_healthz_is_ok(edge: EdgeUnderTest) -> None:
    reply = await edge.request("GET", "/healthz")
    assert reply.status == 200
    assert reply.json() == {"status": "ok"}


async def test_readyz_follows_the_agents_health_status(edge: EdgeUnderTest, agent: FakeAgent) -> None:
    ready = await edge.request("GET", "/readyz")
    assert ready.status == 200
    assert ready.json() == {"status": "ready"}

    await agent.set_serving(False)
    not_ready = await edge.request("GET", "/readyz")
    assert not_ready.status == 503
    code, message = not_ready.error()
    assert code == "UNAVAILABLE"
    assert "NOT_SERVING" in message


async def test_readyz_falls_back_to_the_overall_status() -> None:
    """A server that only reports "" (no per-service status) is ready when "" is SERVING."""
    server = aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with running_edge(make_settings(f"127.0.0.1:{port}")) as edge:
            assert (await edge.request("GET", "/readyz")).status == 200
            await servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
            assert (await edge.request("GET", "/readyz")).status == 503
    finally:
        await server.stop(None)


async def test_readyz_is_503_when_the_agent_has_no_health_service() -> None:
    server = aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with running_edge(make_settings(f"127.0.0.1:{port}")) as edge:
            reply = await edge.request("GET", "/readyz")
            assert reply.status == 503
            assert "UNIMPLEMENTED" in reply.error()[1]
    finally:
        await server.stop(None)


# --------------------------------------------------------------------------- JSON errors everywhere


async def test_an_unknown_route_is_a_json_404(edge: EdgeUnderTest) -> None:
    reply = await edge.request("GET", "/nope", headers={"X-Request-Id": "r-404"})
    assert reply.status == 404
    assert reply.error()[0] == "NOT_FOUND"
    assert reply.headers["X-Request-Id"] == "r-404"


async def test_a_wrong_method_is_a_json_405_with_allow(edge: EdgeUnderTest) -> None:
    reply = await edge.request("GET", "/chatkit/api")
    assert reply.status == 405
    assert reply.error()[0] == "UNIMPLEMENTED"
    assert "POST" in reply.headers["Allow"]


async def test_without_a_demo_token_there_is_no_demo_page(edge: EdgeUnderTest) -> None:
    reply = await edge.request("GET", "/")
    assert reply.status == 404
    assert reply.error()[0] == "NOT_FOUND"


# --------------------------------------------------------------------------- demo page


async def test_the_demo_page_embeds_its_values_safely(agent: FakeAgent) -> None:
    token = 'tok</script><script>alert("x")</script>&<!--'
    domain_key = "domain_pk_'\"<b>"
    settings = make_settings(agent.address, demo_token=token, chatkit_domain_key=domain_key)
    async with running_edge(settings) as edge:
        reply = await edge.request("GET", "/")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/html")
    assert reply.headers["Cache-Control"] == "no-store"
    page = reply.body.decode()
    assert "<script>alert" not in page
    assert "<b>" not in page
    assert "<!--" not in page.split('id="switchboard-config"')[1]
    match = re.search(r'<script type="application/json" id="switchboard-config">(.*?)</script>', page, re.S)
    assert match is not None
    config = json.loads(match.group(1))
    assert config == {
        "token": token,
        "domainKey": domain_key,
        "apiUrl": "/chatkit/api",
        "uploadUrl": "/chatkit/api/upload",
    }
    assert '<script src="https://cdn.platform.openai.com/deployments/chatkit/chatkit.js"' in page
    assert "<openai-chatkit" in page
    assert "setOptions" in page
    assert "internet" in page
    assert "offline" in page
    assert "__SWITCHBOARD_CONFIG__" not in page


# --------------------------------------------------------------------------- CORS


def _preflight(origin: str) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, x-request-id, chatkit-device-id",
    }


async def test_cors_preflight_for_an_allowed_origin(agent: FakeAgent) -> None:
    async with running_edge(make_settings(agent.address, cors_origins=[ALLOWED])) as edge:
        reply = await edge.request("OPTIONS", "/chatkit/api", headers=_preflight(ALLOWED))
        assert reply.status == 200
        assert reply.headers["Access-Control-Allow-Origin"] == ALLOWED
        assert reply.headers["Access-Control-Allow-Methods"] == "POST"
        allowed = {
            header.strip().lower() for header in reply.headers["Access-Control-Allow-Headers"].split(",")
        }
        assert allowed == {"authorization", "content-type", "x-request-id", "chatkit-device-id"}

        actual = await edge.post(CREATE, edge.auth(Origin=ALLOWED))
        assert actual.status == 200
        assert actual.headers["Access-Control-Allow-Origin"] == ALLOWED
        assert "X-Request-Id" in actual.headers["Access-Control-Expose-Headers"]
        assert "Access-Control-Allow-Credentials" not in actual.headers


async def test_cors_refuses_other_origins(agent: FakeAgent) -> None:
    async with running_edge(make_settings(agent.address, cors_origins=[ALLOWED])) as edge:
        reply = await edge.request("OPTIONS", "/chatkit/api", headers=_preflight("https://evil.example"))
        assert "Access-Control-Allow-Origin" not in reply.headers
        assert reply.status == 403
        assert reply.error()[0] == "PERMISSION_DENIED"
        actual = await edge.post(CREATE, edge.auth(Origin="https://evil.example"))
        assert "Access-Control-Allow-Origin" not in actual.headers


async def test_cors_refuses_headers_outside_the_allow_list(agent: FakeAgent) -> None:
    async with running_edge(make_settings(agent.address, cors_origins=[ALLOWED])) as edge:
        headers = {**_preflight(ALLOWED), "Access-Control-Request-Headers": "x-something-else"}
        reply = await edge.request("OPTIONS", "/chatkit/api", headers=headers)
        assert reply.status == 403
        assert "Access-Control-Allow-Origin" not in reply.headers


async def test_a_wildcard_origin_must_be_configured_explicitly(agent: FakeAgent) -> None:
    async with running_edge(make_settings(agent.address, cors_origins=["*"])) as edge:
        reply = await edge.request("OPTIONS", "/chatkit/api", headers=_preflight("https://any.example"))
        assert reply.status == 200
        assert reply.headers["Access-Control-Allow-Origin"] == "https://any.example"


@pytest.mark.parametrize("method", ["OPTIONS", "POST"])
async def test_no_cors_headers_at_all_without_configured_origins(
    edge: EdgeUnderTest, agent: FakeAgent, method: str
) -> None:
    if method == "OPTIONS":
        reply = await edge.request("OPTIONS", "/chatkit/api", headers=_preflight(ALLOWED))
        assert reply.status == 405
    else:
        reply = await edge.post(CREATE, edge.auth(Origin=ALLOWED))
        assert reply.status == 200
    assert not [name for name in reply.headers if name.lower().startswith("access-control-")]


async def test_cors_headers_are_on_error_responses_too(agent: FakeAgent) -> None:
    """A browser can only read a 401 from another origin when it carries the CORS headers."""
    async with running_edge(make_settings(agent.address, cors_origins=[ALLOWED])) as edge:
        reply = await edge.post(CREATE, {"Origin": ALLOWED, "Content-Type": "application/json"})
        assert reply.status == 401
        assert reply.headers["Access-Control-Allow-Origin"] == ALLOWED


# --------------------------------------------------------------------------- logs and the server loop


async def test_every_request_gets_an_access_log_line(
    edge: EdgeUnderTest, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="switchboard.edge.access"):
        await edge.post(CREATE, edge.auth(**{"X-Request-Id": "log-me-1"}))
        await edge.request("GET", "/nope", headers={"X-Request-Id": "log-me-2"})
    lines = [record.getMessage() for record in caplog.records if record.name == "switchboard.edge.access"]
    assert len(lines) == 2
    assert re.fullmatch(r"\[log-me-1\] POST /chatkit/api threads\.create 200 \d+\.\dms", lines[0])
    assert re.fullmatch(r"\[log-me-2\] GET /nope - 404 \d+\.\dms", lines[1])


async def test_run_edge_serves_until_sigterm(agent: FakeAgent, caplog: pytest.LogCaptureFixture) -> None:
    settings = make_settings(agent.address)
    with caplog.at_level(logging.INFO, logger="switchboard.edge"):
        task = asyncio.create_task(run_edge(settings))
        port = None
        for _ in range(200):
            found = [
                re.search(r"edge listening on http://127\.0\.0\.1:(\d+)$", r.getMessage())
                for r in caplog.records
            ]
            port = next((int(m.group(1)) for m in found if m), None)
            if port or task.done():
                break
            await asyncio.sleep(0.01)
        assert port is not None, task
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/healthz") as response,
        ):
            assert response.status == 200
        # Only signal ourselves when run_edge's handler is installed, never the default (terminate).
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(task, timeout=2.0)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(f"http://127.0.0.1:{port}/healthz")
