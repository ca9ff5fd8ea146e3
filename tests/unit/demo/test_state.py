"""The demo app's state: where its ERP directory lives, and that the service opens and closes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.agent_service.agents.responder import create_responder
from switchboard.app import AppEnvironment
from switchboard.demo.state import ERP_PATH_VARIABLE, close_state, erp_path, open_state
from tests.unit.agent_service.agent_support import settings


def _environment(data_dir: Path) -> AppEnvironment:
    return AppEnvironment(data_dir=data_dir, provider="local", offline_token_delay_s=0.0)


def test_the_erp_lives_in_the_data_directory_unless_configured(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(ERP_PATH_VARIABLE, raising=False)
    assert erp_path(_environment(tmp_path)) == tmp_path / "erp.sqlite3"
    monkeypatch.setenv(ERP_PATH_VARIABLE, str(tmp_path / "elsewhere" / "erp.db"))
    assert erp_path(_environment(tmp_path)) == tmp_path / "elsewhere" / "erp.db"


async def test_open_state_seeds_the_directory_and_close_state_closes_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(ERP_PATH_VARIABLE, raising=False)
    state = await open_state(_environment(tmp_path))
    try:
        employee = await state.erp.get_employee("acme", "E1001")
        assert employee is not None and employee.name == "Ada Lovelace"
    finally:
        await close_state(state)
    assert (tmp_path / "erp.sqlite3").is_file()


async def test_the_service_starts_the_demo_app_in_its_data_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(ERP_PATH_VARIABLE, raising=False)
    responder = await create_responder(settings(data_dir=tmp_path))
    try:
        assert responder.app.name == "erp-demo"
        assert (tmp_path / "erp.sqlite3").is_file()
    finally:
        await responder.aclose()
