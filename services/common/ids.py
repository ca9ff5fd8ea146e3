"""Identifiers for every service: the public API's id scheme (`switchboard.app`), used everywhere."""

from __future__ import annotations

from switchboard.app._ids import IdKind, new_id

__all__ = ["IdKind", "new_id"]
