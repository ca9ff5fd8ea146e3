"""The demo's widget action: the employee card's "Show open orders" button."""

from __future__ import annotations

from switchboard.app import App, StreamingActionContext
from switchboard.demo.state import DemoState
from switchboard.demo.tools import EmployeeQuery
from switchboard.demo.widgets import SHOW_OPEN_ORDERS


async def open_orders_lines(state: DemoState, tenant: str, employee_id: str) -> list[str]:
    """The answer as markdown lines (streamed one line per delta)."""
    employee = await state.erp.get_employee(tenant, employee_id)
    if employee is None:
        return [f"No employee {employee_id} in your organisation."]
    orders = await state.erp.open_orders_for(tenant, employee_id)
    who = f"{employee.name} ({employee.id})"
    if not orders:
        return [f"{who} has no open orders."]
    plural = "s" if len(orders) != 1 else ""
    return [f"{who} has {len(orders)} open order{plural}:"] + [
        f"\n- {order.id} · {order.customer} · {order.amount_text} · created {order.created}"
        for order in orders
    ]


def register_actions(app: App[DemoState]) -> None:
    """Register the demo's action handlers on `app`."""

    @app.action(SHOW_OPEN_ORDERS, payload=EmployeeQuery)
    async def show_open_orders(ctx: StreamingActionContext[DemoState], query: EmployeeQuery) -> None:
        ctx.progress(f"Looking up open orders for {query.employee_id}…", icon="search")
        ctx.reply_stream(await open_orders_lines(ctx.state, ctx.caller.tenant, query.employee_id))
