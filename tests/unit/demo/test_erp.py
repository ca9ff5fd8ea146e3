"""The ERP directory (tenant scoping, idempotent seed) and the ERP tools (isolation, role rule, widgets)."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from agents import Agent, RunConfig, Runner
from agents.testing import ScriptedModel, assistant_message, function_call
from chatkit.types import ProgressUpdateEvent, ThreadItemDoneEvent, ThreadStreamEvent, WidgetItem

from switchboard.app import Caller
from switchboard.demo.erp import ErpDirectory
from switchboard.demo.state import DemoContext, DemoState
from switchboard.demo.tools import ERP_TOOLS
from switchboard.demo.widgets import SHOW_OPEN_ORDERS
from tests.unit.agent_service.agent_support import check_wire


@pytest.fixture
async def erp(tmp_path: Path) -> AsyncIterator[ErpDirectory]:
    directory = await ErpDirectory.open(tmp_path / "erp" / "erp.sqlite3")
    yield directory
    await directory.aclose()


async def test_same_ids_are_different_records_per_tenant(erp: ErpDirectory) -> None:
    acme, globex = await erp.get_employee("acme", "E1001"), await erp.get_employee("globex", "E1001")
    assert acme is not None and acme.name == "Ada Lovelace" and acme.email.endswith("@acme.example")
    assert globex is not None and globex.name == "Hank Scorpio"
    assert await erp.get_employee("globex", "E1003") is None, "acme-only id"
    assert await erp.get_employee("acme", "E2001") is None, "globex-only id"
    assert await erp.get_employee("initech", "E1001") is None, "unknown tenant sees nothing"

    acme_order, globex_order = (
        await erp.get_order("acme", "SO-1001"),
        await erp.get_order("globex", "SO-1001"),
    )
    assert acme_order is not None and acme_order.customer == "Initech"
    assert acme_order.amount_text == "1,250.00 USD"
    assert globex_order is not None and globex_order.customer == "Springfield Power"
    assert await erp.get_order("globex", "SO-1004") is None


async def test_open_orders_are_open_only_oldest_first_and_scoped(erp: ErpDirectory) -> None:
    assert [o.id for o in await erp.open_orders_for("acme", "E1001")] == ["SO-1001", "SO-1004"]
    assert [o.id for o in await erp.open_orders_for("globex", "E1001")] == ["SO-1001"]
    assert await erp.open_orders_for("globex", "E1002") == [], "only a cancelled order"
    assert await erp.open_orders_for("acme", "E9999") == []


async def test_seeding_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "erp.sqlite3"
    for _ in range(2):
        directory = await ErpDirectory.open(path)
        await directory.aclose()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM employees").fetchone() == (7,)
        assert db.execute("SELECT COUNT(*) FROM orders").fetchone() == (7,)
        db.execute("UPDATE employees SET department = 'Moved' WHERE tenant = 'acme' AND id = 'E1001'")
    directory = await ErpDirectory.open(path)
    employee = await directory.get_employee("acme", "E1001")
    await directory.aclose()
    assert employee is not None and employee.department == "Moved", "reopening never overwrites data"


async def _call_tool(
    erp: ErpDirectory, name: str, arguments: dict[str, Any], *, tenant: str = "acme", role: str = "user"
) -> tuple[str, list[ThreadStreamEvent]]:
    """Run one tool call through the real Agents SDK; return its output and the events it emitted."""
    model = ScriptedModel([[function_call(name, arguments, call_id="call_1")], [assistant_message("done")]])
    emitted: list[ThreadStreamEvent] = []
    context = DemoContext(
        "thr_1",
        sink=emitted.append,
        caller=Caller(tenant=tenant, user="u1", role=role, locale="en-US"),
        state=DemoState(erp),
    )
    agent = Agent[DemoContext](name="tester", tools=list(ERP_TOOLS), model=model)
    await Runner.run(agent, "go", context=context, run_config=RunConfig(tracing_disabled=True))
    [output] = [item for item in model.calls[1].input if item.get("type") == "function_call_output"]
    return str(output["output"]), emitted


async def test_lookup_employee_is_tenant_scoped(erp: ErpDirectory) -> None:
    acme, _ = await _call_tool(erp, "lookup_employee", {"query": {"employee_id": "e1001"}})
    globex, _ = await _call_tool(erp, "lookup_employee", {"query": {"employee_id": "E1001"}}, tenant="globex")
    assert acme.startswith("Employee E1001 is Ada Lovelace, Engineering, active.")
    assert globex.startswith("Employee E1001 is Hank Scorpio, Executive, active.")
    missing, events = await _call_tool(
        erp, "lookup_employee", {"query": {"employee_id": "E2001"}}, tenant="acme"
    )
    assert missing == "No employee E2001 in your organisation."
    assert not [e for e in events if isinstance(e, ThreadItemDoneEvent)], "no card for a missing employee"


@pytest.mark.parametrize(
    ("role", "shows_salary"), [("user", False), ("manager", False), ("hr", True), ("admin", True)]
)
async def test_salary_only_for_hr_and_admin(erp: ErpDirectory, role: str, shows_salary: bool) -> None:
    output, _ = await _call_tool(erp, "lookup_employee", {"query": {"employee_id": "E1001"}}, role=role)
    assert ("128,000 USD" in output) is shows_salary
    assert ("Salary hidden for your role." in output) is not shows_salary


async def test_lookup_employee_streams_progress_and_a_card_with_an_action(erp: ErpDirectory) -> None:
    _, events = await _call_tool(erp, "lookup_employee", {"query": {"employee_id": "E1002"}})
    for event in events:
        check_wire(event)
    progress, done = events
    assert isinstance(progress, ProgressUpdateEvent) and progress.icon == "search"
    assert progress.text == "Looking up employee E1002…"
    assert isinstance(done, ThreadItemDoneEvent) and isinstance(done.item, WidgetItem)
    card = done.item.widget.model_dump(by_alias=True, exclude_none=True)
    assert card["type"] == "Card"
    assert "Grace Hopper" in str(card) and "Finance" in str(card)
    [row, *_rest, button] = card["children"]
    assert {"type": "Badge", "label": "On leave", "color": "warning"} in row["children"]
    assert button["type"] == "Button"
    assert button["onClickAction"]["type"] == SHOW_OPEN_ORDERS
    assert button["onClickAction"]["payload"] == {"employee_id": "E1002"}
    assert button["onClickAction"]["handler"] == "server"
    assert done.item.copy_text == "Grace Hopper (E1002), Finance, on leave"
    assert done.item.thread_id == "thr_1" and done.item.id.startswith("msg_")


async def test_lookup_order(erp: ErpDirectory) -> None:
    output, events = await _call_tool(erp, "lookup_order", {"query": {"order_id": "so-1002"}})
    assert output == (
        "Order SO-1002 for Umbrella Corp: 980.50 EUR, shipped, created 2026-01-20, sales rep E1001."
    )
    assert [type(e) for e in events] == [ProgressUpdateEvent]
    missing, _ = await _call_tool(erp, "lookup_order", {"query": {"order_id": "SO-2001"}})
    assert missing == "No order SO-2001 in your organisation."


@pytest.mark.parametrize(
    ("name", "arguments", "message"),
    [
        ("lookup_employee", {"query": {"employee_id": "1001"}}, "Invalid employee id"),
        ("lookup_employee", {"query": {"employee_id": "E1001; DROP TABLE"}}, "Invalid employee id"),
        ("lookup_employee", {"query": {"employee_id": "E1001", "tenant": "globex"}}, "Invalid employee id"),
        ("lookup_order", {"query": {"order_id": "SO1001"}}, "Invalid order id"),
    ],
)
async def test_bad_arguments_get_a_clear_error(
    erp: ErpDirectory, name: str, arguments: dict[str, Any], message: str
) -> None:
    output, events = await _call_tool(erp, name, arguments)
    assert output.startswith(message)
    assert "E1001" in output or "SO-1001" in output, "the error shows the expected form"
    assert events == [], "the tool body never ran"
