"""Bearer JWT verification and minting (PyJWT). Tenant, user and role come from the claims.

Claims: `sub` (the user), `tenant`, `role` (default `user`), `exp` (required). HS256 with a shared
secret; issuer and audience are checked when configured.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Final

import jwt

ALGORITHM: Final = "HS256"
DEFAULT_ROLE: Final = "user"
# Ids travel into storage keys and logs: keep them to a safe, bounded alphabet.
_ID_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:-]{0,127}$")


class AuthError(Exception):
    """The request carries no usable credentials."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: every store access is scoped by `tenant` and `user`."""

    tenant: str
    user: str
    role: str


def _identifier(claims: dict[str, object], name: str, default: str | None = None) -> str:
    value = claims.get(name, default)
    if not isinstance(value, str) or not _ID_PATTERN.fullmatch(value):
        raise AuthError(f"invalid token: claim {name!r} must be a short identifier")
    return value


class TokenVerifier:
    def __init__(self, secret: str, *, issuer: str | None = None, audience: str | None = None) -> None:
        self._secret = secret
        self._issuer = issuer
        self._audience = audience

    def verify(self, token: str) -> Principal:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                issuer=self._issuer,
                audience=self._audience,
                options={"require": ["exp", "sub", "tenant"], "verify_aud": self._audience is not None},
                leeway=5,
            )
        except jwt.PyJWTError as error:
            raise AuthError(f"invalid token: {error}") from error
        return Principal(
            tenant=_identifier(claims, "tenant"),
            user=_identifier(claims, "sub"),
            role=_identifier(claims, "role", DEFAULT_ROLE),
        )

    def verify_header(self, header: str | None) -> Principal:
        """Verify an `Authorization: Bearer <token>` value."""
        if not header:
            raise AuthError("missing bearer token")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("the authorization header must be 'Bearer <token>'")
        return self.verify(token.strip())


def mint_token(
    secret: str,
    *,
    tenant: str,
    user: str,
    role: str = DEFAULT_ROLE,
    ttl_s: int = 86_400,
    issuer: str | None = None,
    audience: str | None = None,
) -> str:
    """A signed development token (the `switchboard token` command)."""
    now = int(time.time())
    claims: dict[str, object] = {"sub": user, "tenant": tenant, "role": role, "iat": now, "exp": now + ttl_s}
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm=ALGORITHM)
