"""The demo's widget actions: the employee card's "Show open orders" and the order list's "Dismiss".

"Show open orders" streams an order list that fills in line by line (a streamed widget), answers
with the same list as text, and tells the host page what it showed (a client effect,
`erp.orders_shown`, e.g. to highlight the employee elsewhere on the page). An employee the caller's
organisation does not have gets a warning notice. "Dismiss" removes the list from the thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from chatkit.widgets import WidgetRoot
from pydantic import BaseModel, ConfigDict

from switchboard.app import App, InvalidRequest, StreamingActionContext
from switchboard.demo.erp import Employee, Order
from switchboard.demo.state import DemoState
from switchboard.demo.tools import EmployeeQuery
from switchboard.demo.widgets import DISMISS, SHOW_OPEN_ORDERS, order_list

ORDERS_SHOWN_EFFECT = "erp.orders_shown"
LINE_PAUSE_S = 0.05
"""Between two lines of the order list, so the list visibly fills in (a real backend's latency)."""


class NoPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")


def order_line(order: Order) -> str:
    return f"- {order.id} · {order.customer} · {order.amount_text} · created {order.created}"


async def _growing_list(employee: Employee, orders: list[Order]) -> AsyncGenerator[WidgetRoot, None]:
    lines: list[str] = []
    yield order_list(employee, lines)
    for order in orders:
        await asyncio.sleep(LINE_PAUSE_S)
        lines.append(order_line(order))
        yield order_list(employee, lines)
    yield order_list(employee, lines, done=True)


def register_actions(app: App[DemoState]) -> None:
    """Register the demo's action handlers on `app`."""

    @app.action(SHOW_OPEN_ORDERS, payload=EmployeeQuery)
    async def show_open_orders(ctx: StreamingActionContext[DemoState], query: EmployeeQuery) -> None:
        ctx.progress(f"Looking up open orders for {query.employee_id}…", icon="search")
        tenant = ctx.caller.tenant
        employee = await ctx.state.erp.get_employee(tenant, query.employee_id)
        if employee is None:
            ctx.notice(f"No employee {query.employee_id} in your organisation.", level="warning")
            ctx.reply(f"No employee {query.employee_id} in your organisation.")
            return
        orders = await ctx.state.erp.open_orders_for(tenant, employee.id)
        if orders:
            await ctx.stream_widget(
                _growing_list(employee, orders), copy_text="\n".join(order_line(order) for order in orders)
            )
        who = f"{employee.name} ({employee.id})"
        if not orders:
            ctx.reply(f"{who} has no open orders.")
        else:
            plural = "s" if len(orders) != 1 else ""
            ctx.reply(f"{who} has {len(orders)} open order{plural}:", *(f"\n{order_line(o)}" for o in orders))
        ctx.client_effect(ORDERS_SHOWN_EFFECT, {"employee_id": employee.id, "open_orders": len(orders)})

    @app.action(DISMISS, payload=NoPayload)
    async def dismiss(ctx: StreamingActionContext[DemoState], _: NoPayload) -> None:
        if ctx.sender is None:
            raise InvalidRequest(f"{DISMISS} needs the widget it was pressed on (item_id)")
        ctx.remove_item(ctx.sender.id)
