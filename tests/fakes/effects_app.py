"""An app whose one action sends a client effect with many keys in a chosen order, so that a stream
that does not keep the handler's key order shows it every time (tests/e2e/test_protocol_events.py).

Run it with `SWITCHBOARD_APP=tests.fakes.effects_app:app`; with no provider its agent answers with
Switchboard's plain offline model, which is enough to create a thread to act on.
"""

from __future__ import annotations

from typing import Any, Final

from agents import Agent
from pydantic import BaseModel, ConfigDict

from switchboard.app import App, StreamingActionContext

EFFECT_ACTION: Final = "effects.send"
EFFECT_NAME: Final = "effects.sent"
EFFECT_DATA: Final[dict[str, Any]] = {
    "zulu": 1,
    "alpha": "a",
    "mike": [3, 2, 1],
    "bravo": {"yankee": True, "xray": "x", "whiskey": 0},
    "kilo": 2.5,
    "echo": "",
    "delta": -7,
    "charlie": "c",
}
"""Neither sorted nor reverse sorted, nested: 8! orders of the top level, 3! of the nested object."""


class NoPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")


app = App[None](name="effects", agent=Agent(name="Effects"), title_agent=None)


@app.action(EFFECT_ACTION, payload=NoPayload)
async def send_effect(ctx: StreamingActionContext[None], _: NoPayload) -> None:
    ctx.client_effect(EFFECT_NAME, EFFECT_DATA)
