"""ChatKit widgets the agents show, and the widget actions they offer.

Widgets are built with `WidgetTemplate`, the non-deprecated way in openai-chatkit 1.6 (the named
widget classes `Card`, `Badge`… emit a DeprecationWarning). The template is kept inline rather than
in a `.widget` file so it ships with the module without packaging rules; it can be pasted into
widgets.chatkit.studio as is. Values go through Jinja's `tojson`, so names with quotes stay valid
JSON.
"""

from __future__ import annotations

from typing import Final

from chatkit.actions import ActionConfig
from chatkit.widgets import WidgetRoot, WidgetTemplate

from switchboard.demo.erp import Employee, EmployeeStatus

SHOW_OPEN_ORDERS: Final = "erp.show_open_orders"
"""Action type of the employee card's button; payload `{"employee_id": "E1001"}`."""
DISMISS: Final = "erp.dismiss"
"""Action type of the order list's "Dismiss" button (no payload): removes the list from the thread."""
ORDER_LINES_ID: Final = "orders"
"""The order list's Markdown component, which fills in line by line (streamed text)."""

_STATUS: Final[dict[EmployeeStatus, tuple[str, str]]] = {
    "active": ("Active", "success"),
    "on_leave": ("On leave", "warning"),
    "terminated": ("Terminated", "danger"),
}

EMPLOYEE_CARD: Final = WidgetTemplate(
    {
        "version": "1.0",
        "name": "employee_card",
        "template": """{
  "type": "Card",
  "size": "sm",
  "children": [
    {"type": "Row", "children": [
      {"type": "Title", "value": {{ name | tojson }}, "size": "sm"},
      {"type": "Spacer"},
      {"type": "Badge", "label": {{ status_label | tojson }}, "color": {{ status_color | tojson }}}
    ]},
    {"type": "Text", "value": {{ subtitle | tojson }}, "color": "secondary"},
    {"type": "Caption", "value": {{ email | tojson }}},
    {"type": "Button", "label": "Show open orders", "style": "primary",
     "onClickAction": {{ action | tojson }}}
  ]
}""",
        "jsonSchema": {
            "type": "object",
            "required": ["name", "status_label", "status_color", "subtitle", "email", "action"],
        },
    }
)


def employee_card(employee: Employee) -> WidgetRoot:
    """A card with the employee's name, status badge, department and a "Show open orders" button."""
    label, color = _STATUS[employee.status]
    action = ActionConfig(type=SHOW_OPEN_ORDERS, payload={"employee_id": employee.id}, handler="server")
    return EMPLOYEE_CARD.build(
        {
            "name": employee.name,
            "status_label": label,
            "status_color": color,
            "subtitle": f"{employee.department} · {employee.id}",
            "email": employee.email,
            "action": action.model_dump(),
        }
    )


ORDER_LIST: Final = WidgetTemplate(
    {
        "version": "1.0",
        "name": "order_list",
        "template": """{
  "type": "Card",
  "size": "md",
  "children": [
    {"type": "Title", "value": {{ title | tojson }}, "size": "sm"},
    {"type": "Markdown", "id": {{ lines_id | tojson }}, "value": {{ lines | tojson }},
     "streaming": {{ streaming | tojson }}},
    {"type": "Button", "label": "Dismiss", "variant": "outline", "onClickAction": {{ dismiss | tojson }}}
  ]
}""",
        "jsonSchema": {"type": "object", "required": ["title", "lines", "lines_id", "streaming", "dismiss"]},
    }
)


def order_list(employee: Employee, lines: list[str], *, done: bool = False) -> WidgetRoot:
    """The open orders of `employee` listed so far (one markdown line each) and a Dismiss button.

    Built again with one more line for every order found, so it can be streamed: each version only
    appends to the list's text (a streamed text value). The `done` version stops the list's
    streaming indicator, a change of the component itself (sent as a new root).
    """
    dismiss = ActionConfig(type=DISMISS, payload={}, handler="server")
    return ORDER_LIST.build(
        {
            "title": f"Open orders · {employee.name} ({employee.id})",
            "lines_id": ORDER_LINES_ID,
            "lines": "\n".join(lines),
            "streaming": not done,
            "dismiss": dismiss.model_dump(),
        }
    )


def employee_copy_text(employee: Employee) -> str:
    """What "copy" puts on the clipboard for an employee card."""
    label, _ = _STATUS[employee.status]
    return f"{employee.name} ({employee.id}), {employee.department}, {label.lower()}"
