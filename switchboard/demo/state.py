"""The demo app's state: its resources, opened at startup and shared by every turn."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from switchboard.app import AppEnvironment, ChatContext
from switchboard.demo.erp import ErpDirectory

ERP_PATH_VARIABLE = "SWITCHBOARD_ERP_DATABASE_PATH"


@dataclass(frozen=True, slots=True)
class DemoState:
    erp: ErpDirectory


DemoContext = ChatContext[DemoState]
"""The run context every tool and instruction function of the demo receives."""


def erp_path(environment: AppEnvironment) -> Path:
    """`SWITCHBOARD_ERP_DATABASE_PATH`, else `erp.sqlite3` in the service's data directory."""
    configured = os.environ.get(ERP_PATH_VARIABLE)
    return Path(configured) if configured else environment.data_dir / "erp.sqlite3"


async def open_state(environment: AppEnvironment) -> DemoState:
    """Open (and seed) the ERP directory."""
    return DemoState(erp=await ErpDirectory.open(erp_path(environment)))


async def close_state(state: DemoState) -> None:
    await state.erp.aclose()
