"""Bearer JWT verification and minting (PyJWT). Tenant, user and role come from the claims.

Claims: `sub` (the user), `tenant`, `role` (default `user`), `exp` (required). HS256 with a shared
secret; issuer and audience are checked when configured. Verified tokens are remembered for a while
(see `TokenVerifier`), as clients send the same bearer token on every request.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import jwt

ALGORITHM: Final = "HS256"
DEFAULT_ROLE: Final = "user"
LEEWAY_S: Final = 5
"""Clock skew allowed on `exp`, `nbf` and `iat`, both by PyJWT and by the cache of verified tokens."""
DEFAULT_CACHE_SIZE: Final = 1024
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


@dataclass(frozen=True, slots=True)
class _Verified:
    """A cached verification: who the token names, and the time window in which it is valid."""

    principal: Principal
    not_before: float  # `nbf`/`iat` (the later one), as PyJWT reads them; -inf without either
    expires: int  # `exp`, as PyJWT reads it


def _int_claim(claims: dict[str, object], name: str) -> int:
    value = claims[name]
    if not isinstance(value, int | float | str):  # pragma: no cover - jwt.decode has checked it
        raise AuthError(f"invalid token: claim {name!r} must be a number")
    return int(value)


class TokenVerifier:
    """Verifies bearer JWTs, remembering the last `cache_size` verified tokens (LRU).

    Clients send the same token on every request, and the edge and the agent service each verify
    every request; the cache spares them one `jwt.decode` (signature and claims) per request. A hit
    is served only while `not_before - LEEWAY_S <= clock() < exp + LEEWAY_S`, the window in which
    `jwt.decode` would accept the token; outside it the entry is dropped and the token is verified
    again, so it then fails as usual (e.g. "Signature has expired"). Only successful verifications
    are cached; a failure is never remembered and is decided afresh each time.

    Why this is safe: the key is the whole token string, header, claims and signature, so a token
    that differs in any byte (another signature, tampered claims) is another key and goes through
    `jwt.decode`. The secret, issuer and audience are fixed for the verifier's lifetime, so a cached
    result stays what `jwt.decode` would say until the token's time window ends; rotating or revoking
    the secret means a restart (a new verifier, an empty cache) anyway.

    Not thread-safe: each process verifies on its one event loop thread. `cache_size=0` disables the
    cache. `clock` (seconds since the epoch) is for tests; it should agree with PyJWT's clock.
    """

    def __init__(
        self,
        secret: str,
        *,
        issuer: str | None = None,
        audience: str | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if cache_size < 0:
            raise ValueError("cache_size must be >= 0")
        self._secret = secret
        self._issuer = issuer
        self._audience = audience
        self._cache_size = cache_size
        self._clock = clock
        self._cache: OrderedDict[str, _Verified] = OrderedDict()

    @property
    def cached_tokens(self) -> int:
        """How many verified tokens are remembered (at most `cache_size`)."""
        return len(self._cache)

    def verify(self, token: str) -> Principal:
        cached = self._cache.get(token)
        if cached is not None:
            now = self._clock()
            if cached.not_before - LEEWAY_S <= now < cached.expires + LEEWAY_S:
                self._cache.move_to_end(token)
                return cached.principal
            del self._cache[token]
        claims = self._decode(token)
        principal = Principal(
            tenant=_identifier(claims, "tenant"),
            user=_identifier(claims, "sub"),
            role=_identifier(claims, "role", DEFAULT_ROLE),
        )
        if self._cache_size:
            self._remember(token, principal, claims)
        return principal

    def _decode(self, token: str) -> dict[str, object]:
        try:
            claims: dict[str, object] = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                issuer=self._issuer,
                audience=self._audience,
                options={"require": ["exp", "sub", "tenant"], "verify_aud": self._audience is not None},
                leeway=LEEWAY_S,
            )
        except jwt.PyJWTError as error:
            raise AuthError(f"invalid token: {error}") from error
        return claims

    def _remember(self, token: str, principal: Principal, claims: dict[str, object]) -> None:
        # jwt.decode has checked these claims, and reads them the same way: int(value).
        not_before = max(
            (_int_claim(claims, name) for name in ("nbf", "iat") if name in claims), default=float("-inf")
        )
        self._cache[token] = _Verified(principal, not_before, _int_claim(claims, "exp"))  # newest: last
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

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
