"""The ERP function tools of the specialists.

Rules enforced here, in code, whatever the model asks for:
- **Tenant isolation**: the tenant comes from `ctx.context.caller` (the verified JWT). The model
  only supplies an id; another tenant's record is simply "not found".
- **Role rule**: salaries are shown only to the roles in `SALARY_ROLES`; everyone else gets the
  record without the salary and the note "salary hidden for your role".
- **Validated arguments**: ids are checked against their format by the pydantic argument models.
  A malformed id reaches the model as a clear error text (via `failure_error_function`), so it can
  correct itself or ask the user, instead of the SDK's generic "An error occurred".

The id formats are checked by validators rather than JSON-schema `pattern`s so the schemas stay
within what every Chat Completions provider accepts (Gemini is strict about schema keywords).

While a tool runs it streams a `ProgressUpdateEvent` to the client; the employee lookup also shows
an employee card widget with a "Show open orders" button (see `widgets.py`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any, Final

from agents import ModelBehaviorError, RunContextWrapper, function_tool
from chatkit.types import CustomSummary, CustomTask
from pydantic import BaseModel, ConfigDict, Field, field_validator

from switchboard.demo.chart import bar_chart_png
from switchboard.demo.erp import Employee, Order
from switchboard.demo.state import DemoContext
from switchboard.demo.widgets import employee_card, employee_copy_text

logger = logging.getLogger(__name__)

SALARY_ROLES: Final = frozenset({"hr", "admin"})
SALARY_HIDDEN: Final = "Salary hidden for your role."

_EMPLOYEE_ID: Final = re.compile(r"^E\d{4}$")
_ORDER_ID: Final = re.compile(r"^SO-\d{4}$")


def _normalise(value: str, pattern: re.Pattern[str], example: str) -> str:
    candidate = value.strip().upper()
    if not pattern.match(candidate):
        raise ValueError(f"{value!r} is not a valid id; expected the form {example}")
    return candidate


class EmployeeQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    employee_id: str = Field(description="Employee id: the letter E and four digits, e.g. E1001.")

    @field_validator("employee_id")
    @classmethod
    def _check(cls, value: str) -> str:
        return _normalise(value, _EMPLOYEE_ID, "E1001")


class OrderQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    order_id: str = Field(description="Sales order id: SO- and four digits, e.g. SO-1001.")

    @field_validator("order_id")
    @classmethod
    def _check(cls, value: str) -> str:
        return _normalise(value, _ORDER_ID, "SO-1001")


def describe_employee(employee: Employee, role: str) -> str:
    """The tool output for one employee, with the salary only for `SALARY_ROLES`."""
    manager = f"; manager {employee.manager_id}" if employee.manager_id else ""
    status = employee.status.replace("_", " ")
    salary = (
        f"Salary: {employee.salary:,} {employee.salary_currency} a year."
        if role in SALARY_ROLES
        else SALARY_HIDDEN
    )
    return (
        f"Employee {employee.id} is {employee.name}, {employee.department}, {status}. "
        f"Email {employee.email}{manager}. {salary}"
    )


def describe_order(order: Order) -> str:
    return (
        f"Order {order.id} for {order.customer}: {order.amount_text}, {order.status}, "
        f"created {order.created}, sales rep {order.employee_id}."
    )


def _failure(invalid_arguments: str) -> Callable[[RunContextWrapper[Any], Exception], str]:
    """The text the model gets when a tool fails: precise for bad arguments, generic otherwise."""

    def on_error(ctx: RunContextWrapper[Any], error: Exception) -> str:
        if isinstance(error, ModelBehaviorError) and str(error).startswith("Invalid JSON input"):
            return invalid_arguments
        logger.error("ERP tool failed", exc_info=error)
        return "The ERP lookup failed. Please try again later."

    return on_error


@function_tool(
    name_override="lookup_employee",
    failure_error_function=_failure("Invalid employee id: use the letter E and four digits, e.g. E1001."),
)
async def lookup_employee(ctx: RunContextWrapper[DemoContext], query: EmployeeQuery) -> str:
    """Look up an employee of the caller's organisation by id.

    Returns name, department, status, email and manager; the salary only for HR and admins.

    Args:
        query: The employee to look up.
    """
    context = ctx.context
    context.progress(f"Looking up employee {query.employee_id}…", icon="search")
    employee = await context.state.erp.get_employee(context.caller.tenant, query.employee_id)
    if employee is None:
        context.notice(f"No employee {query.employee_id} in your organisation.", level="warning")
        return f"No employee {query.employee_id} in your organisation."
    context.show_widget(employee_card(employee), copy_text=employee_copy_text(employee))
    return describe_employee(employee, context.caller.role)


@function_tool(
    name_override="lookup_order",
    failure_error_function=_failure("Invalid order id: use SO- and four digits, e.g. SO-1001."),
)
async def lookup_order(ctx: RunContextWrapper[DemoContext], query: OrderQuery) -> str:
    """Look up a sales order of the caller's organisation by id: customer, amount, status, date.

    Args:
        query: The order to look up.
    """
    context = ctx.context
    context.progress(f"Looking up order {query.order_id}…", icon="search")
    order = await context.state.erp.get_order(context.caller.tenant, query.order_id)
    if order is None:
        context.notice(f"No order {query.order_id} in your organisation.", level="warning")
        return f"No order {query.order_id} in your organisation."
    return describe_order(order)


@function_tool(
    name_override="show_order_chart",
    failure_error_function=_failure("The chart takes no arguments."),
)
async def show_order_chart(ctx: RunContextWrapper[DemoContext]) -> str:
    """Show a bar chart of the organisation's sales orders by status (open, shipped, cancelled)."""
    context = ctx.context
    counting = CustomTask(title="Counting orders by status", icon="analytics", status_indicator="loading")
    index = context.add_workflow_task(counting)
    counts = await context.state.erp.order_counts(context.caller.tenant)
    context.update_workflow_task(counting.model_copy(update={"status_indicator": "complete"}), index)
    drawing = CustomTask(title="Drawing the chart", icon="chart", status_indicator="loading")
    index = context.add_workflow_task(drawing)
    values = list(counts.values())
    draft, chart = bar_chart_png([value / 2 for value in values]), bar_chart_png(values)
    context.update_workflow_task(drawing.model_copy(update={"status_indicator": "complete"}), index)
    context.end_workflow(CustomSummary(title="Order chart", icon="chart"))
    await context.show_image(chart, name="orders-by-status.png", partials=[draft])
    summary = ", ".join(f"{count} {status}" for status, count in counts.items())
    return f"Chart shown: orders by status ({summary})."


ERP_TOOLS: Final = [lookup_employee, lookup_order, show_order_chart]
