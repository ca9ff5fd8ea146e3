"""Two fast paths around per-run work of the Agents SDK that a run without tools or sandbox discards.

Every streamed run of openai-agents builds "identity keys" for the whole agent graph (every agent
reachable through handoffs, each signed by its tools, handoffs and hooks, sorted and serialised to
JSON): once when its sandbox runtime is made, even when no sandbox is configured, and each time it
snapshots which tools the agents used, even when none did. For a router with three specialists
that is about a tenth of the agent service's CPU per conversation (docs/performance.md), spent on
keys nobody reads:

- `serialize_tool_use_tracker` with no tool used returns `{}` whatever the keys are: it is answered
  without building them (the same result; with tools used, the SDK's own function runs);
- the sandbox runtime's keys are only read to resume a sandbox session: they are built the first
  time they are read, not when every run starts.

Behaviour is unchanged; only when the work happens differs. These reach into private names of the
SDK, so they are installed only on the version they were checked against (`CHECKED_VERSION`);
on another version `install` logs a warning and leaves the SDK alone, and a unit test fails, so an
upgrade re-checks them rather than silently losing or mis-applying them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from importlib.metadata import version
from typing import Any, Final

log = logging.getLogger(__name__)

CHECKED_VERSION: Final = "0.24.0"
"""The openai-agents version whose private functions these fast paths wrap."""

_SERIALIZE: Final = "serialize_tool_use_tracker"
_KEYS: Final = "_build_agent_identity_keys_by_id"
_installed = False


class LazyIdentityKeys(Mapping[int, str]):
    """`_build_agent_identity_keys_by_id(root)`, computed on first read."""

    def __init__(self, build: Callable[[Any], dict[int, str]], root: Any) -> None:
        self._build = build
        self._root = root
        self._keys: dict[int, str] | None = None

    @property
    def resolved(self) -> bool:
        return self._keys is not None

    def _resolve(self) -> dict[int, str]:
        if self._keys is None:
            self._keys = self._build(self._root)
            self._root = None
        return self._keys

    def __getitem__(self, key: int) -> str:
        return self._resolve()[key]

    def __iter__(self) -> Iterator[int]:
        return iter(self._resolve())

    def __len__(self) -> int:
        return len(self._resolve())


def applicable() -> bool:
    """Whether the installed SDK is the version the fast paths were checked against."""
    return version("openai-agents") == CHECKED_VERSION


def install() -> bool:
    """Install both fast paths once per process; False (and a warning) on another SDK version."""
    global _installed
    if _installed:
        return True
    if not applicable():
        log.warning(
            "openai-agents %s is not %s: its per-run identity keys are built as the SDK does "
            "(services/agent_service/agents/sdk_fastpaths.py needs re-checking)",
            version("openai-agents"),
            CHECKED_VERSION,
        )
        return False
    import agents.run as run_module
    from agents.run_internal import agent_runner_helpers, run_loop, tool_use_tracker
    from agents.sandbox import runtime_session_manager

    serialize = tool_use_tracker.serialize_tool_use_tracker
    build_keys = getattr(runtime_session_manager, _KEYS)

    def serialize_used_tools(tracker: Any, *, starting_agent: Any = None) -> dict[str, list[str]]:
        if not tracker.agent_to_tools:
            return {}
        return serialize(tracker, starting_agent=starting_agent)

    def lazy_keys(root: Any) -> Mapping[int, str]:
        return LazyIdentityKeys(build_keys, root)

    # Each module imported the function by name: the name is replaced where it is looked up.
    for module in (tool_use_tracker, run_loop, agent_runner_helpers, run_module):
        setattr(module, _SERIALIZE, serialize_used_tools)
    setattr(runtime_session_manager, _KEYS, lazy_keys)
    _installed = True
    return True
