"""Apps that cannot start, for the agent service's start-up checks (tests/e2e/test_app_loading.py)."""

from __future__ import annotations

from agents import Agent

from switchboard.app import App, AppEnvironment


async def _fail(environment: AppEnvironment) -> None:
    raise ConnectionRefusedError("the app's database at db.internal:5432 refused the connection")


failing_startup = App[None](name="broken", agent=Agent(name="Nobody"), startup=_fail)
not_an_app = {"name": "a dict is not an app"}


def factory_returning_none() -> None:
    return None


def factory_that_raises() -> App[None]:
    raise RuntimeError("misconfigured\nacross two lines")
