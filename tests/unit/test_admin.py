"""Administration without a running service: who may act on which tenant and what a request may
ask (services/limits/admin.py, shared by the admin service and the CLI), and `switchboard usage` /
`switchboard limits` in-process on a SQLite file: every bad input refused with status 2 before the
database is touched, a missing or unmigrated database refused with status 1, exact reports.
(tests/e2e/test_admin.py runs the service and the CLI as processes, on SQLite and PostgreSQL.)"""

from __future__ import annotations

import asyncio
import json
from datetime import date
from pathlib import Path

import pytest

from services import cli
from services.common.auth import Principal
from services.common.config import Settings
from services.limits import NAMES, LimitsStore, UsageDelta
from services.limits.admin import (
    MAX_LIMIT,
    audit_entries_limit,
    authorize,
    limit_changes,
    parse_day,
    usage_period,
)
from switchboard.app import Forbidden, InvalidRequest
from switchboard.v1 import admin_pb2

TODAY = date(2025, 3, 1)


def test_every_limit_is_a_cli_flag_and_a_field_with_presence() -> None:
    assert tuple(cli.LIMIT_FLAGS) == NAMES
    fields = sorted(admin_pb2.Limits.DESCRIPTOR.fields, key=lambda field: field.number)
    assert tuple(field.name for field in fields) == NAMES
    assert all(field.has_presence for field in fields)


@pytest.mark.parametrize(
    ("role", "asked", "granted"),
    [
        ("admin", "acme", "acme"),
        ("admin", "", "acme"),
        ("platform-admin", "globex", "globex"),
        ("platform-admin", "", "acme"),
    ],
)
def test_admins_act_on_their_tenant_and_platform_admins_on_any(role: str, asked: str, granted: str) -> None:
    assert authorize(Principal("acme", "ann", role), asked) == granted


@pytest.mark.parametrize(
    ("role", "asked", "reason"),
    [
        ("user", "acme", "needs role 'admin' or 'platform-admin' (this token has role 'user')"),
        ("hr", "", "needs role 'admin' or 'platform-admin' (this token has role 'hr')"),
        ("Admin", "acme", "needs role 'admin' or 'platform-admin'"),
        ("admin", "globex", "own tenant ('acme') only; tenant 'globex' needs role 'platform-admin'"),
        ("admin", "bad tenant", "own tenant ('acme') only"),
    ],
)
def test_everyone_else_is_forbidden(role: str, asked: str, reason: str) -> None:
    with pytest.raises(Forbidden) as refused:
        authorize(Principal("acme", "ann", role), asked)
    assert reason in refused.value.message


def test_a_platform_admin_names_a_real_tenant_id() -> None:
    with pytest.raises(InvalidRequest, match="is not a tenant id"):
        authorize(Principal("ops", "olga", "platform-admin"), "bad tenant")
    with pytest.raises(InvalidRequest, match="is not a tenant id"):
        authorize(Principal("ops", "olga", "platform-admin"), "x" * 500)


def test_the_usage_period() -> None:
    assert usage_period(None, None, TODAY) == (TODAY, TODAY)
    assert usage_period("", "", TODAY) == (TODAY, TODAY)
    assert usage_period("2025-02-01", None, TODAY) == (date(2025, 2, 1), TODAY)
    assert usage_period(None, "2025-01-31", TODAY) == (date(2025, 1, 31), date(2025, 1, 31))
    assert usage_period("2024-03-01", "2025-03-01", TODAY) == (date(2024, 3, 1), TODAY)  # 366 days
    with pytest.raises(InvalidRequest, match="spans 367 days; ask for at most 366"):
        usage_period("2024-02-29", "2025-03-01", TODAY)
    with pytest.raises(InvalidRequest, match=r"since \(2025-03-02\) is after until \(2025-03-01\)"):
        usage_period("2025-03-02", None, TODAY)


@pytest.mark.parametrize(
    "text", ["2025-02-30", "2025-2-01", "20250201", "2025-02-01T00:00", "today", "", "２０２５-01-01"]
)
def test_a_day_is_written_yyyy_mm_dd(text: str) -> None:
    with pytest.raises(InvalidRequest, match=r"is not a date \(YYYY-MM-DD\)"):
        parse_day(text, "since")


def test_limit_changes() -> None:
    assert limit_changes({"runs_per_user": 3, "tokens-per-day": 0}, ["stored_bytes"], reset=False) == {
        "stored_bytes": None,
        "runs_per_user": 3,
        "tokens_per_day": 0,
    }
    assert limit_changes({}, [], reset=True) == {}
    assert limit_changes({"stored_bytes": MAX_LIMIT}, [], reset=False) == {"stored_bytes": MAX_LIMIT}
    refusals = [
        (({"runs_per_user": -1}, []), "runs_per_user must be a whole number from 0"),
        (({"runs_per_user": MAX_LIMIT + 1}, []), "runs_per_user must be a whole number from 0"),
        (({"nope": 1}, []), "unknown limit 'nope'; the limits are runs_per_user, "),
        (({}, ["nope"]), "unknown limit 'nope'"),
        (({"runs_per_user": 1}, ["runs-per-user"]), "runs_per_user is both set and cleared"),
        (({}, []), "nothing to change"),
    ]
    for (values, clear), message in refusals:
        with pytest.raises(InvalidRequest) as refused:
            limit_changes(values, clear, reset=False)
        assert message in refused.value.message


def test_audit_entries_limit() -> None:
    assert [audit_entries_limit(n) for n in (0, 1, 1000)] == [100, 1, 1000]
    for bad in (-1, 1001):
        with pytest.raises(InvalidRequest, match="limit must be from 1 to 1000"):
            audit_entries_limit(bad)


# --------------------------------------------------------------------------- the CLI, in-process


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The CLI's configuration: the SQLite file in `data_dir`, the settings' default limits."""
    for name in ("SWITCHBOARD_DATABASE_URL", "SWITCHBOARD_DATABASE_PATH", "SWITCHBOARD_LOG_FORMAT"):
        monkeypatch.delenv(name, raising=False)
    for name in NAMES:
        monkeypatch.delenv(f"SWITCHBOARD_LIMIT_{name.upper()}", raising=False)
    monkeypatch.setenv("SWITCHBOARD_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SWITCHBOARD_LOG_LEVEL", "WARNING")
    return tmp_path


def _run(argv: list[str]) -> int:
    try:
        return cli.main(argv)
    except SystemExit as exit_:  # argparse's refusals
        return exit_.code if isinstance(exit_.code, int) else 1


LIMITS_ARE = (
    "runs_per_user, runs_per_tenant, requests_per_minute, request_burst, tokens_per_day, "
    "upload_bytes_per_day, stored_bytes"
)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["usage"], "switchboard usage: error: the following arguments are required: --tenant"),
        (
            ["usage", "--tenant", "acme", "--since", "2024-02-30"],
            "switchboard usage: since '2024-02-30' is not a date (YYYY-MM-DD)",
        ),
        (
            ["usage", "--tenant", "acme", "--since", "2023-01-01", "--until", "2024-01-02"],
            "switchboard usage: the period spans 367 days; ask for at most 366 at once",
        ),
        (
            ["usage", "--tenant", "acme", "--user", "no one"],
            "switchboard usage: user 'no one' is not a user id (letters, digits, ._@:-)",
        ),
        (
            ["usage", "--tenant", "*cli*"],
            "switchboard usage: tenant '*cli*' is not a tenant id (letters, digits, ._@:-)",
        ),
        (["limits"], "switchboard limits: error: the following arguments are required: ACTION"),
        (
            ["limits", "show", "--tenant", "a/b"],
            "switchboard limits show: tenant 'a/b' is not a tenant id (letters, digits, ._@:-)",
        ),
        (
            ["limits", "set", "--tenant", "acme"],
            "switchboard limits set: nothing to change: set a limit, clear one, or reset them all",
        ),
        (
            ["limits", "set", "--tenant", "acme", "--runs-per-user", "-1"],
            "switchboard limits set: limit runs_per_user must be a whole number from 0 (no limit) to "
            f"{MAX_LIMIT}",
        ),
        (
            ["limits", "set", "--tenant", "acme", "--stored-bytes", str(MAX_LIMIT + 1)],
            "switchboard limits set: limit stored_bytes must be a whole number from 0 (no limit) to "
            f"{MAX_LIMIT}",
        ),
        (
            ["limits", "set", "--tenant", "acme", "--runs-per-user", "many"],
            "switchboard limits set: error: argument --runs-per-user: 'many' is not a whole number",
        ),
        (
            ["limits", "set", "--tenant", "acme", "--clear", "nope"],
            "switchboard limits set: error: argument --clear: unknown limit 'nope' "
            f"(choose from {LIMITS_ARE})",
        ),
        (
            ["limits", "set", "--tenant", "acme", "--tokens-per-day", "5", "--clear", "tokens-per-day"],
            "switchboard limits set: limit tokens_per_day is both set and cleared",
        ),
        (
            ["limits", "set", "--tenant", "acme", "--burst", "5"],
            "switchboard: error: unrecognized arguments: --burst 5",
        ),
    ],
)
def test_the_cli_refuses_bad_input_with_status_2_before_touching_the_database(
    data_dir: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert _run(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().splitlines()[-1] == message
    assert list(data_dir.iterdir()) == []


def test_the_cli_needs_a_migrated_database(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    database = data_dir / "switchboard.sqlite3"
    assert _run(["usage", "--tenant", "acme"]) == 1
    assert f"switchboard usage: no database at {database}: start the agent service" in capsys.readouterr().err
    assert not database.exists(), "the command must not create an empty database"
    database.touch()
    assert _run(["limits", "set", "--tenant", "acme", "--reset"]) == 1
    assert "is at schema revision none and this version needs" in capsys.readouterr().err


def test_the_cli_reports_and_changes_limits_and_usage(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(["migrate"]) == 0
    settings = Settings()

    async def record() -> None:
        store = LimitsStore(settings, application_name="test")
        await store.open()
        try:
            alice, bob = Principal("acme", "alice", "user"), Principal("acme", "bob", "user")
            await store.record(alice, UsageDelta(conversations=1, turns=2, tool_calls=3), date(2025, 1, 1))
            await store.record(alice, UsageDelta(tokens={"m-1": (1000, 20)}), date(2025, 1, 1))
            await store.record(
                bob, UsageDelta(turns=1, uploaded_bytes=12345, tokens={"m-2": (7, 8)}), date(2025, 1, 2)
            )
            await store.record(bob, UsageDelta(turns=9), date(2025, 1, 3))  # after the period asked for
            await store.record(Principal("globex", "gus", "user"), UsageDelta(turns=5), date(2025, 1, 1))
            await store.add_upload(bob, 500)
        finally:
            await store.close()

    asyncio.run(record())
    capsys.readouterr()
    assert _run(["usage", "--tenant", "acme", "--since", "2025-01-01", "--until", "2025-01-02"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "usage of tenant acme from 2025-01-01 to 2025-01-02 (UTC days)",
        "day         user   model  conversations  turns  tool_calls"
        "  uploaded_bytes  input_tokens  output_tokens",
        "2025-01-01  alice  -                  1      2           3          "
        "     0             0              0",
        "2025-01-01  alice  m-1                0      0           0          "
        "     0          1000             20",
        "2025-01-02  bob    -                  0      1           0         "
        "  12345             0              0",
        "2025-01-02  bob    m-2                0      0           0          "
        "     0             7              8",
        "total                                 1      3           3         "
        "  12345          1007             28",
        "stored bytes now: 500",
    ]
    assert _run(["usage", "--tenant", "acme", "--user", "bob", "--until", "2025-01-02", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "tenant": "acme",
        "since": "2025-01-02",
        "until": "2025-01-02",
        "rows": [
            {
                "day": "2025-01-02",
                "user": "bob",
                "model": "",
                "conversations": 0,
                "turns": 1,
                "tool_calls": 0,
                "uploaded_bytes": 12345,
                "input_tokens": 0,
                "output_tokens": 0,
            },
            {
                "day": "2025-01-02",
                "user": "bob",
                "model": "m-2",
                "conversations": 0,
                "turns": 0,
                "tool_calls": 0,
                "uploaded_bytes": 0,
                "input_tokens": 7,
                "output_tokens": 8,
            },
        ],
        "totals": {
            "conversations": 0,
            "turns": 1,
            "tool_calls": 0,
            "uploaded_bytes": 12345,
            "input_tokens": 7,
            "output_tokens": 8,
        },
        "stored_bytes": 500,
    }

    assert (
        _run(["limits", "set", "--tenant", "acme", "--tokens-per-day", "2000000", "--request-burst", "0"])
        == 0
    )
    assert _run(["limits", "set", "--tenant", "acme", "--clear", "request_burst", "--stored-bytes", "0"]) == 0
    capsys.readouterr()
    assert _run(["limits", "show", "--tenant", "acme"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "limits of tenant acme (0 means no limit)",
        "limit                  effective     default  override",
        "runs_per_user                 10          10         -",
        "runs_per_tenant                0           0         -",
        "requests_per_minute          300         300         -",
        "request_burst                 60          60         -",
        "tokens_per_day           2000000           0   2000000",
        "upload_bytes_per_day  1073741824  1073741824         -",
        "stored_bytes                   0           0         0",
    ]
    assert _run(["limits", "set", "--tenant", "acme", "--reset", "--runs-per-tenant", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["overrides"] == {"runs_per_tenant": 4}

    async def audit() -> list[tuple[str, str, dict[str, object]]]:
        store = LimitsStore(settings, application_name="test")
        await store.open()
        try:
            entries = await store.audit_entries("acme")
        finally:
            await store.close()
        assert {(entry.actor_tenant, entry.actor_role) for entry in entries} == {("*cli*", "platform-admin")}
        return [(entry.action, entry.actor_user, entry.detail) for entry in entries]

    user = cli.cli_actor().user
    assert asyncio.run(audit()) == [
        (
            "limits.set",
            user,
            {
                "before": {"stored_bytes": 0, "tokens_per_day": 2000000},
                "after": {"runs_per_tenant": 4},
                "reset": True,
                "via": "cli",
            },
        ),
        ("limits.read", user, {"via": "cli"}),
        (
            "limits.set",
            user,
            {
                "before": {"request_burst": 0, "tokens_per_day": 2000000},
                "after": {"stored_bytes": 0, "tokens_per_day": 2000000},
                "reset": False,
                "via": "cli",
            },
        ),
        (
            "limits.set",
            user,
            {
                "before": {},
                "after": {"request_burst": 0, "tokens_per_day": 2000000},
                "reset": False,
                "via": "cli",
            },
        ),
        ("usage.read", user, {"via": "cli", "user": "bob", "since": "2025-01-02", "until": "2025-01-02"}),
        ("usage.read", user, {"via": "cli", "user": None, "since": "2025-01-01", "until": "2025-01-02"}),
    ]
