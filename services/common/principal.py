"""Who is calling (`Principal`) and the one error every authentication failure raises (`AuthError`).

A module of its own so that the pieces of token verification (signing keys, claim mapping, the
verifier) can share them without importing each other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

DEFAULT_ROLE: Final = "user"
"""The least-privileged role: what a token gets when it names no role we know."""
ADMIN_ROLE: Final = "admin"
"""Administers its own tenant: usage, limits and audit log (the admin service)."""
PLATFORM_ADMIN_ROLE: Final = "platform-admin"
"""Administers every tenant (the operator's role; the CLI acts with it)."""

# Ids travel into storage keys and logs: keep them to a safe, bounded alphabet.
ID_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:-]{0,127}$")


class AuthError(Exception):
    """The request carries no usable credentials (UNAUTHENTICATED over gRPC, 401 over HTTP)."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: every store access is scoped by `tenant` and `user`."""

    tenant: str
    user: str
    role: str
