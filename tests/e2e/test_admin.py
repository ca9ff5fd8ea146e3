"""The admin service and `switchboard usage` / `switchboard limits` through real processes, on the
embedded SQLite file and on PostgreSQL: one agent service (which serves AdminService next to
ChatService) answering with the fake OpenAI server (which reports the usage `USAGE` per call), and
the CLI run as a subprocess against the same database.

Each test works in tenants of its own, so they share one stack per database.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from switchboard.v1 import admin_pb2, admin_pb2_grpc, chat_pb2, chat_pb2_grpc, thread_pb2
from tests.fakes.openai_server import USAGE, FakeOpenAI, fake_openai_server
from tests.support.postgres import shared_postgres
from tests.support.processes import ROOT, Stack, running_stack
from tests.support.prometheus import scrape, value

ADMIN_SERVICE = "switchboard.v1.AdminService"
REFUSALS = "switchboard_agent_limit_refusals_total"
MODEL = "gpt-4.1-mini"
DEFAULTS = {
    # The suite's environment (tests/support/processes.py) turns the rate and run limits off; the
    # rest are the settings' defaults.
    "runs_per_user": 0,
    "runs_per_tenant": 0,
    "requests_per_minute": 0,
    "request_burst": 60,
    "tokens_per_day": 0,
    "upload_bytes_per_day": 1024**3,
    "stored_bytes": 0,
}
CLI_ACTOR = ("*cli*", getpass.getuser(), "platform-admin")


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
async def admin_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Stack, FakeOpenAI]]:
    data_dir = tmp_path_factory.mktemp(f"admin-{request.param}")
    database_url = None if request.param == "sqlite" else shared_postgres().create_database("admin")
    async with fake_openai_server() as fake:
        with running_stack(
            data_dir,
            database_url=database_url,
            uploads=False,
            LLM_PROVIDER="openai",
            OPENAI_BASE_URL=fake.base_url,
            OPENAI_API_KEY="sk-test",
        ) as stack:
            yield stack, fake


@pytest.fixture
async def admin(admin_stack: tuple[Stack, FakeOpenAI]) -> AsyncIterator[admin_pb2_grpc.AdminServiceStub]:
    stack, _ = admin_stack
    async with aio.insecure_channel(stack.agent_address) as channel:
        yield admin_pb2_grpc.AdminServiceStub(channel)


def _as(stack: Stack, tenant: str, user: str, role: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {stack.token(tenant=tenant, user=user, role=role)}"),)


def _fields(message: Message) -> dict[str, Any]:
    """The fields a message has set (explicit presence), by name."""
    return {field.name: value for field, value in message.ListFields()}


def _entries(reply: admin_pb2.ListAuditLogResponse) -> list[tuple[str, tuple[str, str, str], dict[str, Any]]]:
    """(action, actor, detail) of each entry, newest first."""
    return [
        (entry.action, (entry.actor_tenant, entry.actor_user, entry.actor_role), json.loads(entry.detail))
        for entry in reply.entries
    ]


async def _cli(stack: Stack, *args: str) -> tuple[int, str, str]:
    """`switchboard <args>` as the operator runs it, with the stack's configuration."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        *args,
        env=stack.env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def _status(call: Awaitable[Any]) -> grpc.StatusCode:
    try:
        await call
    except aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def _rpcs(
    admin: admin_pb2_grpc.AdminServiceStub, tenant: str
) -> dict[str, Callable[[tuple[tuple[str, str], ...]], Awaitable[Any]]]:
    """Every AdminService method on `tenant`, as a call that takes the caller's metadata."""
    return {
        "GetUsage": lambda meta: admin.GetUsage(admin_pb2.GetUsageRequest(tenant=tenant), metadata=meta),
        "GetLimits": lambda meta: admin.GetLimits(admin_pb2.GetLimitsRequest(tenant=tenant), metadata=meta),
        "SetLimits": lambda meta: admin.SetLimits(
            admin_pb2.SetLimitsRequest(tenant=tenant, values=admin_pb2.Limits(runs_per_user=7)), metadata=meta
        ),
        "ListAuditLog": lambda meta: admin.ListAuditLog(
            admin_pb2.ListAuditLogRequest(tenant=tenant), metadata=meta
        ),
    }


async def test_the_admin_service_is_served_next_to_the_chat_service(
    admin_stack: tuple[Stack, FakeOpenAI],
) -> None:
    stack, _ = admin_stack
    async with aio.insecure_channel(stack.agent_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=ADMIN_SERVICE))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = reflect.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = [s.name async for r in responses for s in r.list_services_response.service]
        assert ADMIN_SERVICE in names and "switchboard.v1.ChatService" in names
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        code = await _status(stub.GetLimits(admin_pb2.GetLimitsRequest(tenant="acme")))
        assert code == grpc.StatusCode.UNAUTHENTICATED


async def test_admin_operations_are_refused_to_non_admins_and_to_other_tenants_admins(
    admin_stack: tuple[Stack, FakeOpenAI], admin: admin_pb2_grpc.AdminServiceStub
) -> None:
    stack, _ = admin_stack
    user = _as(stack, "acme", "alice", "user")
    hr = _as(stack, "acme", "harry", "hr")
    acme_admin = _as(stack, "acme", "ann", "admin")
    globex_admin = _as(stack, "globex", "gus", "admin")
    platform = _as(stack, "ops", "olga", "platform-admin")
    denied = grpc.StatusCode.PERMISSION_DENIED
    for tenant in ("acme", "globex"):
        for method, call in _rpcs(admin, tenant).items():
            assert await _status(call(user)) == denied, (method, tenant)
            assert await _status(call(hr)) == denied, (method, tenant)
            assert await _status(call(platform)) == grpc.StatusCode.OK, (method, tenant)
    for method, call in _rpcs(admin, "globex").items():
        assert await _status(call(acme_admin)) == denied, method
        assert await _status(call(globex_admin)) == grpc.StatusCode.OK, method
    for method, call in _rpcs(admin, "acme").items():
        assert await _status(call(acme_admin)) == grpc.StatusCode.OK, method
        assert await _status(call(globex_admin)) == denied, method

    # The refusal says why; an empty tenant is the caller's own.
    with pytest.raises(aio.AioRpcError) as refused:
        await admin.GetUsage(admin_pb2.GetUsageRequest(tenant="globex"), metadata=acme_admin)
    assert "own tenant ('acme') only" in (refused.value.details() or "")
    with pytest.raises(aio.AioRpcError) as refused:
        await admin.GetUsage(admin_pb2.GetUsageRequest(), metadata=user)
    assert "needs role 'admin' or 'platform-admin'" in (refused.value.details() or "")
    own = await admin.GetLimits(admin_pb2.GetLimitsRequest(), metadata=acme_admin)
    assert own.limits.tenant == "acme"

    # Refused calls changed nothing and wrote no audit row; each was logged with who asked what.
    for tenant, admins in (("acme", {"ann", "olga"}), ("globex", {"gus", "olga"})):
        entries = _entries(
            await admin.ListAuditLog(admin_pb2.ListAuditLogRequest(tenant=tenant), metadata=platform)
        )
        assert {actor[1] for _, actor, _ in entries} == admins
        assert sorted(action for action, actor, _ in entries if actor[1] == "olga") == [
            "audit.read",
            "limits.read",
            "limits.set",
            "usage.read",
        ]
        assert [detail["after"] for action, _, detail in entries if action == "limits.set"] == [
            {"runs_per_user": 7},
            {"runs_per_user": 7},
        ]
    log = stack.services["agent"].log_text()
    assert "admin call refused: SetLimits on tenant 'globex' by acme/ann (role admin)" in log
    assert "admin call refused: ListAuditLog on tenant 'acme' by acme/alice (role user)" in log
    assert "admin call refused: GetUsage on tenant 'acme' by globex/gus (role admin)" in log


async def test_set_limits_shows_in_get_limits_and_the_audit_log_has_the_change(
    admin_stack: tuple[Stack, FakeOpenAI], admin: admin_pb2_grpc.AdminServiceStub
) -> None:
    stack, _ = admin_stack
    ivy = _as(stack, "initech", "ivy", "admin")
    before = await admin.GetLimits(admin_pb2.GetLimitsRequest(tenant="initech"), metadata=ivy)
    assert _fields(before.limits.defaults) == DEFAULTS
    assert _fields(before.limits.effective) == DEFAULTS
    assert _fields(before.limits.overrides) == {}

    changed = await admin.SetLimits(
        admin_pb2.SetLimitsRequest(
            tenant="initech", values=admin_pb2.Limits(tokens_per_day=5000, runs_per_user=2)
        ),
        metadata=ivy,
    )
    assert _fields(changed.limits.overrides) == {"runs_per_user": 2, "tokens_per_day": 5000}
    shown = await admin.GetLimits(admin_pb2.GetLimitsRequest(tenant="initech"), metadata=ivy)
    assert shown.limits == changed.limits
    assert _fields(shown.limits.effective) == DEFAULTS | {"runs_per_user": 2, "tokens_per_day": 5000}

    # An explicit 0 is an override too ("no limit", whatever the default); a cleared limit follows
    # the default again.
    changed = await admin.SetLimits(
        admin_pb2.SetLimitsRequest(
            tenant="initech", values=admin_pb2.Limits(tokens_per_day=0), clear=["runs_per_user"]
        ),
        metadata=ivy,
    )
    assert _fields(changed.limits.overrides) == {"tokens_per_day": 0}
    assert _fields(changed.limits.effective) == DEFAULTS

    audit = await admin.ListAuditLog(admin_pb2.ListAuditLogRequest(tenant="initech"), metadata=ivy)
    ivy_actor = ("initech", "ivy", "admin")
    assert [(action, actor) for action, actor, _ in _entries(audit)] == [
        ("limits.set", ivy_actor),
        ("limits.read", ivy_actor),
        ("limits.set", ivy_actor),
        ("limits.read", ivy_actor),
    ]
    newest, _, older, _ = (detail for _, _, detail in _entries(audit))
    assert newest == {
        "before": {"runs_per_user": 2, "tokens_per_day": 5000},
        "after": {"tokens_per_day": 0},
        "reset": False,
        "via": "grpc",
    }
    assert older == {
        "before": {},
        "after": {"runs_per_user": 2, "tokens_per_day": 5000},
        "reset": False,
        "via": "grpc",
    }
    now = datetime.now(UTC)
    assert all(now - timedelta(minutes=1) < entry.at.ToDatetime(tzinfo=UTC) <= now for entry in audit.entries)

    reset = await admin.SetLimits(admin_pb2.SetLimitsRequest(tenant="initech", reset_all=True), metadata=ivy)
    assert _fields(reset.limits.overrides) == {}
    audit = await admin.ListAuditLog(admin_pb2.ListAuditLogRequest(tenant="initech", limit=1), metadata=ivy)
    assert _entries(audit) == [
        (
            "limits.set",
            ivy_actor,
            {"before": {"tokens_per_day": 0}, "after": {}, "reset": True, "via": "grpc"},
        )
    ]


async def test_admin_calls_take_the_callers_request_rate(
    admin_stack: tuple[Stack, FakeOpenAI], admin: admin_pb2_grpc.AdminServiceStub
) -> None:
    stack, _ = admin_stack
    root = _as(stack, "ops", "root", "platform-admin")
    await admin.SetLimits(
        admin_pb2.SetLimitsRequest(
            tenant="vandelay", values=admin_pb2.Limits(requests_per_minute=6, request_burst=2)
        ),
        metadata=root,
    )
    art = _as(stack, "vandelay", "art", "admin")
    for _ in range(2):
        await admin.GetLimits(admin_pb2.GetLimitsRequest(tenant="vandelay"), metadata=art)
    before = await admin.ListAuditLog(admin_pb2.ListAuditLogRequest(tenant="vandelay"), metadata=root)
    metrics_url = stack.metrics_url(stack.agents()[0].name)
    refusals = value(scrape(metrics_url), REFUSALS, limit="requests_per_minute")
    with pytest.raises(aio.AioRpcError) as refused:
        await admin.GetLimits(admin_pb2.GetLimitsRequest(tenant="vandelay"), metadata=art)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "requests_per_minute" in (refused.value.details() or "")
    trailing = dict(refused.value.trailing_metadata() or ())
    assert 1 <= int(trailing["retry-after"]) <= 10, "one request every 10 s"
    # A caller without the role spends its own requests too, before it is refused for the role.
    user = _as(stack, "vandelay", "kramer", "user")
    codes = [
        await _status(admin.GetUsage(admin_pb2.GetUsageRequest(tenant="vandelay"), metadata=user))
        for _ in range(3)
    ]
    assert codes == [grpc.StatusCode.PERMISSION_DENIED] * 2 + [grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert value(scrape(metrics_url), REFUSALS, limit="requests_per_minute") == refusals + 2
    # The refused calls wrote nothing to the audit log (the platform admin's tenant is not limited).
    after = await admin.ListAuditLog(admin_pb2.ListAuditLogRequest(tenant="vandelay"), metadata=root)
    assert _entries(after)[1:] == _entries(before)
    assert _entries(after)[0][0] == "audit.read"


async def test_usage_after_a_conversation_is_exact_over_grpc_and_in_the_cli(
    admin_stack: tuple[Stack, FakeOpenAI], admin: admin_pb2_grpc.AdminServiceStub
) -> None:
    stack, fake = admin_stack
    calls_before = len(fake.requests)
    async with aio.insecure_channel(stack.agent_address) as channel:
        chat = chat_pb2_grpc.ChatServiceStub(channel)
        message = chat_pb2.UserMessageInput(
            content=[
                thread_pb2.UserMessageContent(
                    input_text=thread_pb2.UserMessageTextContent(text="hello there")
                )
            ],
            inference_options=thread_pb2.InferenceOptions(),
        )
        events = [
            event
            async for event in chat.CreateThread(
                chat_pb2.CreateThreadRequest(input=message),
                metadata=_as(stack, "hooli", "alice", "user"),
                timeout=30,
            )
        ]
    assert events[0].WhichOneof("kind") == "thread_created"
    calls = len(fake.requests) - calls_before
    assert calls >= 2, "the router hands off, the specialist answers (and the title is made)"
    day = datetime.now(UTC).date().isoformat()

    hooli_admin = _as(stack, "hooli", "hal", "admin")
    usage = await admin.GetUsage(admin_pb2.GetUsageRequest(tenant="hooli"), metadata=hooli_admin)
    turn = admin_pb2.UsageRow(day=day, user="alice", model="", conversations=1, turns=1)
    tokens = admin_pb2.UsageRow(
        day=day,
        user="alice",
        model=MODEL,
        input_tokens=calls * USAGE["prompt_tokens"],
        output_tokens=calls * USAGE["completion_tokens"],
    )
    assert list(usage.rows) == [turn, tokens]
    assert usage.totals == admin_pb2.UsageTotals(
        conversations=1,
        turns=1,
        input_tokens=calls * USAGE["prompt_tokens"],
        output_tokens=calls * USAGE["completion_tokens"],
    )
    assert (usage.tenant, usage.since, usage.until, usage.stored_bytes) == ("hooli", day, day, 0)
    # One user's usage, and a period of a year (366 days, the most one query covers).
    mine = await admin.GetUsage(
        admin_pb2.GetUsageRequest(
            tenant="hooli", user="alice", since=(datetime.now(UTC).date() - timedelta(days=365)).isoformat()
        ),
        metadata=hooli_admin,
    )
    assert list(mine.rows) == [turn, tokens] and mine.totals == usage.totals
    nobody = await admin.GetUsage(admin_pb2.GetUsageRequest(tenant="hooli", user="bob"), metadata=hooli_admin)
    assert list(nobody.rows) == [] and nobody.totals == admin_pb2.UsageTotals()

    # The CLI reads the same numbers from the same database.
    code, out, err = await _cli(stack, "usage", "--tenant", "hooli", "--json")
    assert code == 0, err
    counters = {
        "conversations": 0,
        "turns": 0,
        "tool_calls": 0,
        "uploaded_bytes": 0,
        "input_tokens": 0,
        "output_tokens": 0,
    }
    assert json.loads(out) == {
        "tenant": "hooli",
        "since": day,
        "until": day,
        "rows": [
            {"day": day, "user": "alice", "model": ""} | counters | {"conversations": 1, "turns": 1},
            {"day": day, "user": "alice", "model": MODEL}
            | counters
            | {
                "input_tokens": calls * USAGE["prompt_tokens"],
                "output_tokens": calls * USAGE["completion_tokens"],
            },
        ],
        "totals": counters
        | {
            "conversations": 1,
            "turns": 1,
            "input_tokens": calls * USAGE["prompt_tokens"],
            "output_tokens": calls * USAGE["completion_tokens"],
        },
        "stored_bytes": 0,
    }
    tokens_in, tokens_out = calls * USAGE["prompt_tokens"], calls * USAGE["completion_tokens"]
    code, out, err = await _cli(stack, "usage", "--tenant", "hooli", "--since", day, "--until", day)
    assert code == 0, err
    assert out.splitlines() == [
        f"usage of tenant hooli from {day} to {day} (UTC days)",
        "day         user   model         conversations  turns  tool_calls"
        "  uploaded_bytes  input_tokens  output_tokens",
        f"{day}  alice  -                         1      1           0"
        "               0             0              0",
        f"{day}  alice  {MODEL}              0      0           0"
        f"               0  {tokens_in:>12}  {tokens_out:>13}",
        "total                                        1      1           0"
        f"               0  {tokens_in:>12}  {tokens_out:>13}",
        "stored bytes now: 0",
    ]
    # Both reads are in the audit log, with who read what.
    audit = await admin.ListAuditLog(admin_pb2.ListAuditLogRequest(tenant="hooli"), metadata=hooli_admin)
    assert [(action, actor, detail["via"]) for action, actor, detail in _entries(audit)] == [
        ("usage.read", CLI_ACTOR, "cli"),
        ("usage.read", CLI_ACTOR, "cli"),
        ("usage.read", ("hooli", "hal", "admin"), "grpc"),
        ("usage.read", ("hooli", "hal", "admin"), "grpc"),
        ("usage.read", ("hooli", "hal", "admin"), "grpc"),
    ]


async def test_the_cli_sets_limits_and_refuses_bad_input(
    admin_stack: tuple[Stack, FakeOpenAI], admin: admin_pb2_grpc.AdminServiceStub
) -> None:
    stack, _ = admin_stack
    platform = (*_as(stack, "ops", "olga", "platform-admin"), ("x-request-id", "admin-test-1"))
    code, out, err = await _cli(
        stack, "limits", "set", "--tenant", "wayne", "--runs-per-user", "3", "--tokens-per-day", "1000"
    )
    assert code == 0, err
    assert out.splitlines() == [
        "limits of tenant wayne (0 means no limit)",
        "limit                  effective     default  override",
        "runs_per_user                  3           0         3",
        "runs_per_tenant                0           0         -",
        "requests_per_minute            0           0         -",
        "request_burst                 60          60         -",
        "tokens_per_day              1000           0      1000",
        "upload_bytes_per_day  1073741824  1073741824         -",
        "stored_bytes                   0           0         -",
    ]
    shown = await admin.GetLimits(admin_pb2.GetLimitsRequest(tenant="wayne"), metadata=platform)
    assert _fields(shown.limits.overrides) == {"runs_per_user": 3, "tokens_per_day": 1000}

    # Bad input: exit status 2 and a message, nothing written (tests/unit/test_admin.py has every
    # case; these two go through a real process next to a change that succeeds).
    negative, backwards, (code, out, err) = await asyncio.gather(
        _cli(stack, "limits", "set", "--tenant", "wayne", "--runs-per-user", "-1"),
        _cli(stack, "usage", "--tenant", "wayne", "--since", "2024-03-02", "--until", "2024-03-01"),
        _cli(stack, "limits", "set", "--tenant", "wayne", "--clear", "runs-per-user", "--json"),
    )
    assert negative[:2] == (2, "") and backwards[:2] == (2, "")
    assert negative[2].splitlines()[-1] == (
        f"switchboard limits set: limit runs_per_user must be a whole number from 0 (no limit) to {2**63 - 1}"
    )
    assert (
        backwards[2].splitlines()[-1] == "switchboard usage: since (2024-03-02) is after until (2024-03-01)"
    )
    assert code == 0, err
    assert json.loads(out) == {
        "tenant": "wayne",
        "effective": DEFAULTS | {"tokens_per_day": 1000},
        "defaults": DEFAULTS,
        "overrides": {"tokens_per_day": 1000},
    }

    audit = await admin.ListAuditLog(admin_pb2.ListAuditLogRequest(tenant="wayne"), metadata=platform)
    assert _entries(audit) == [
        (
            "limits.set",
            CLI_ACTOR,
            {
                "before": {"runs_per_user": 3, "tokens_per_day": 1000},
                "after": {"tokens_per_day": 1000},
                "reset": False,
                "via": "cli",
            },
        ),
        ("limits.read", ("ops", "olga", "platform-admin"), {"via": "grpc", "request_id": "admin-test-1"}),
        (
            "limits.set",
            CLI_ACTOR,
            {
                "before": {},
                "after": {"runs_per_user": 3, "tokens_per_day": 1000},
                "reset": False,
                "via": "cli",
            },
        ),
    ]


async def test_bad_input_is_invalid_argument_and_changes_nothing(
    admin_stack: tuple[Stack, FakeOpenAI], admin: admin_pb2_grpc.AdminServiceStub
) -> None:
    stack, _ = admin_stack
    platform = _as(stack, "ops", "olga", "platform-admin")
    tenant = "umbrella"
    bad: list[Awaitable[Any]] = [
        admin.SetLimits(
            admin_pb2.SetLimitsRequest(tenant=tenant, values=admin_pb2.Limits(runs_per_user=-1)),
            metadata=platform,
        ),
        admin.SetLimits(admin_pb2.SetLimitsRequest(tenant=tenant, clear=["nope"]), metadata=platform),
        admin.SetLimits(
            admin_pb2.SetLimitsRequest(
                tenant=tenant, values=admin_pb2.Limits(runs_per_user=1), clear=["runs_per_user"]
            ),
            metadata=platform,
        ),
        admin.SetLimits(admin_pb2.SetLimitsRequest(tenant=tenant), metadata=platform),
        admin.GetUsage(admin_pb2.GetUsageRequest(tenant=tenant, since="2024-13-01"), metadata=platform),
        admin.GetUsage(admin_pb2.GetUsageRequest(tenant=tenant, until="yesterday"), metadata=platform),
        admin.GetUsage(
            admin_pb2.GetUsageRequest(tenant=tenant, since="2024-03-02", until="2024-03-01"),
            metadata=platform,
        ),
        admin.GetUsage(
            admin_pb2.GetUsageRequest(tenant=tenant, since="2024-01-01", until="2025-01-01"),
            metadata=platform,
        ),
        admin.GetUsage(admin_pb2.GetUsageRequest(tenant=tenant, user="not a user"), metadata=platform),
        admin.ListAuditLog(admin_pb2.ListAuditLogRequest(tenant=tenant, limit=-1), metadata=platform),
        admin.ListAuditLog(admin_pb2.ListAuditLogRequest(tenant=tenant, limit=1001), metadata=platform),
        admin.GetLimits(admin_pb2.GetLimitsRequest(tenant="no such tenant!"), metadata=platform),
    ]
    details = []
    for call in bad:
        with pytest.raises(aio.AioRpcError) as refused:
            await call
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
        details.append(refused.value.details())
    assert details[0] == f"limit runs_per_user must be a whole number from 0 (no limit) to {2**63 - 1}"
    assert details[7] == "the period spans 367 days; ask for at most 366 at once"
    # Nothing was changed or audited (this listing is the first call on the tenant that was allowed).
    audit = await admin.ListAuditLog(admin_pb2.ListAuditLogRequest(tenant=tenant), metadata=platform)
    assert list(audit.entries) == []
    limits = await admin.GetLimits(admin_pb2.GetLimitsRequest(tenant=tenant), metadata=platform)
    assert _fields(limits.limits.overrides) == {}
