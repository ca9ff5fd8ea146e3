"""The Agents SDK fast paths give the SDK's own answers, on the version they were checked against."""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

import pytest
from agents import Agent
from agents._run_state_agent_identity import _build_agent_identity_keys_by_id, _build_agent_identity_map
from agents.run_internal import run_loop, tool_use_tracker
from agents.run_internal.tool_use_tracker import AgentToolUseTracker
from agents.sandbox import runtime_session_manager
from agents.sandbox.runtime_session_manager import SandboxRuntimeSessionManager

from services.agent_service.agents import sdk_fastpaths
from switchboard.demo.team import build_team

SERIALIZE = "serialize_tool_use_tracker"  # names the SDK's modules look up (replaced by install)
KEYS = "_build_agent_identity_keys_by_id"


@pytest.fixture(scope="module")
def team() -> Agent[Any]:
    assert sdk_fastpaths.install()
    return build_team()


def test_they_were_checked_against_the_installed_sdk() -> None:
    assert sdk_fastpaths.applicable(), (
        f"openai-agents {version('openai-agents')} is installed, the fast paths were checked against "
        f"{sdk_fastpaths.CHECKED_VERSION}: re-read the SDK functions sdk_fastpaths.py wraps, then "
        "update CHECKED_VERSION"
    )


def test_an_empty_tool_snapshot_is_the_sdks_answer_without_the_keys(team: Agent[Any]) -> None:
    patched = getattr(run_loop, SERIALIZE)
    assert patched is getattr(tool_use_tracker, SERIALIZE)
    assert patched.__module__ == sdk_fastpaths.__name__
    assert patched(AgentToolUseTracker(), starting_agent=team) == {}


def test_a_snapshot_with_tools_used_still_names_agents_by_their_keys(team: Agent[Any]) -> None:
    tracker = AgentToolUseTracker()
    specialist = next(agent for agent in _build_agent_identity_map(team).values() if agent is not team)
    tracker.add_tool_use(team, ["lookup"])
    tracker.add_tool_use(specialist, ["search"])
    keys = _build_agent_identity_keys_by_id(team)
    expected: dict[str, list[str]] = {}
    for used, names in tracker.agent_to_tools:
        expected.setdefault(keys[id(used)], []).extend(names)
    assert len(expected) == 2
    assert getattr(run_loop, SERIALIZE)(tracker, starting_agent=team) == expected


def test_the_sandbox_keys_are_built_on_first_read_and_equal_the_sdks(team: Agent[Any]) -> None:
    manager = SandboxRuntimeSessionManager(starting_agent=team, sandbox_config=None, run_state=None)
    keys = manager._stable_resume_keys_by_agent_id
    assert isinstance(keys, sdk_fastpaths.LazyIdentityKeys) and not keys.resolved
    assert getattr(runtime_session_manager, KEYS) is not _build_agent_identity_keys_by_id
    assert dict(keys) == _build_agent_identity_keys_by_id(team)
    assert manager._stable_resume_key_for_agent(team) == _build_agent_identity_keys_by_id(team)[id(team)]
