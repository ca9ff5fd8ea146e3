"""The built-in demo app: an ERP help desk, the default `SWITCHBOARD_APP`.

A router hands every conversation to a billing, tech or general specialist; the specialists look up
employees and sales orders of the caller's organisation (a seeded, tenant-scoped SQLite directory,
`erp.py`), show an employee card whose button lists the employee's open orders (a widget action),
ask the browser for its local time (a client tool) and open support tickets with a form (a
structured input). Offline it runs on its own scripted model (`model.py`), so `make run` needs no
key; with a provider configured it runs on that provider.

It uses nothing but the public app API (`switchboard.app`): it is the example a team adopting
Switchboard can read first, next to `examples/helpdesk`.

`SWITCHBOARD_LOCAL_REPLY_TOKENS=N` switches it to benchmark mode (`benchmark.py`): offline, every
answer is N short deltas, with no tools, no handoff and no title; `SWITCHBOARD_LOCAL_TOKENS_PER_S=R`
streams them at R tokens per second.
"""

from __future__ import annotations

from switchboard.app import DEFAULT_TITLE_AGENT, App, AppEnvironment
from switchboard.app.offline import ScriptedModel
from switchboard.demo.actions import register_actions
from switchboard.demo.benchmark import (
    REPLY_TOKENS_VARIABLE,
    TOKENS_PER_S_VARIABLE,
    BenchmarkModel,
    reply_tokens_from_environment,
    tokens_per_s_from_environment,
)
from switchboard.demo.model import DemoModel
from switchboard.demo.state import DemoState, close_state, open_state
from switchboard.demo.team import build_team


def create_app() -> App[DemoState]:
    """The demo app, in benchmark mode when `SWITCHBOARD_LOCAL_REPLY_TOKENS` is set (paced when
    `SWITCHBOARD_LOCAL_TOKENS_PER_S` is set too)."""
    reply_tokens = reply_tokens_from_environment()
    tokens_per_s = tokens_per_s_from_environment()
    if tokens_per_s is not None and reply_tokens is None:
        # A pace without benchmark mode would silently do nothing: say so instead.
        raise ValueError(f"{TOKENS_PER_S_VARIABLE} paces benchmark mode: set {REPLY_TOKENS_VARIABLE} too")

    def offline_model(environment: AppEnvironment) -> ScriptedModel:
        if reply_tokens is not None:
            return BenchmarkModel(reply_tokens, tokens_per_s)
        return DemoModel(environment.offline_token_delay_s)

    app = App[DemoState](
        name="erp-demo",
        agent=build_team(),
        startup=open_state,
        shutdown=close_state,
        title_agent=None if reply_tokens is not None else DEFAULT_TITLE_AGENT,
        offline_model=offline_model,
    )
    register_actions(app)
    return app


__all__ = ["create_app"]
