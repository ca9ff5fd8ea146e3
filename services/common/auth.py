"""Bearer JWT verification and minting (PyJWT). Tenant, user and role come from the claims.

Two modes, chosen by configuration (see `services.common.identity.build_verifier`):
- OIDC: tokens from an identity provider, signed with its asymmetric keys (RS256, PS256, ES256,
  EdDSA; a `kid` is required), the public keys fetched from its JWKS (`services.common.jwks`);
  `iss` and `aud` are required and checked;
- HS256 with a shared secret: development (`switchboard token`, `switchboard dev`).

In both, `exp` and `iat` are required and a token may live at most `TokenPolicy.max_lifetime_s`
(`exp - iat`), so a stolen long-lived token is refused however it was minted. Where the tenant,
user and role are read from is `ClaimMapping`'s business. Verified tokens are remembered for a
while (see `TokenVerifier`), as clients send the same bearer token on every request.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import jwt

from services.common.claims import ClaimMapping
from services.common.principal import DEFAULT_ROLE, AuthError, Principal
from services.common.signing_keys import HMAC_ALGORITHM, KeySource, SharedSecret, SigningKey

ALGORITHM: Final = HMAC_ALGORITHM
"""What `mint_token` signs with."""
LEEWAY_S: Final = 5
"""Default clock skew allowed on `exp`, `nbf` and `iat`, by PyJWT and by the cache alike."""
MAX_LEEWAY_S: Final = 300
DEFAULT_MAX_LIFETIME_S: Final = 86_400
DEFAULT_CACHE_SIZE: Final = 1024

__all__ = [
    "ALGORITHM",
    "DEFAULT_ROLE",
    "LEEWAY_S",
    "AuthError",
    "ClaimMapping",
    "Principal",
    "TokenPolicy",
    "TokenVerifier",
    "mint_token",
]


@dataclass(frozen=True, slots=True)
class TokenPolicy:
    """What a token must satisfy besides its signature.

    `issuer`/`audience`, when set, must match `iss`/`aud`; `require_issuer_audience` (OIDC mode)
    makes both claims mandatory, so a token minted for another application of the same IdP is
    refused. `leeway_s` is the clock skew allowed on `exp`, `nbf` and `iat`.
    """

    issuer: str | None = None
    audience: str | None = None
    require_issuer_audience: bool = False
    leeway_s: float = LEEWAY_S
    max_lifetime_s: int = DEFAULT_MAX_LIFETIME_S

    def __post_init__(self) -> None:
        if not 0 <= self.leeway_s <= MAX_LEEWAY_S:
            raise ValueError(f"the leeway must be between 0 and {MAX_LEEWAY_S} s")
        if self.max_lifetime_s < 1:
            raise ValueError("the maximum token lifetime must be at least 1 s")
        if self.require_issuer_audience and not (self.issuer and self.audience):
            raise ValueError("an issuer and an audience are required to verify identity-provider tokens")

    @property
    def required_claims(self) -> list[str]:
        return ["exp", "iat", "iss", "aud"] if self.require_issuer_audience else ["exp", "iat"]


@dataclass(frozen=True, slots=True)
class _Verified:
    """A cached verification: who the token names, and the time window in which it is valid."""

    principal: Principal
    not_before: float  # `nbf`/`iat` (the later one), as PyJWT reads them
    expires: float  # `exp`, as PyJWT reads it
    key_valid_until: float  # the signing key's cache expiry (OIDC), +inf for a shared secret


def _int_claim(claims: dict[str, object], name: str) -> int:
    value = claims[name]
    if not isinstance(value, int | float | str):  # pragma: no cover - jwt.decode has checked it
        raise AuthError(f"invalid token: claim {name!r} must be a number")
    return int(value)


class TokenVerifier:
    """Verifies bearer JWTs, remembering the last `cache_size` verified tokens (LRU).

    Clients send the same token on every request, and the edge and the agent service each verify
    every request; the cache spares them one `jwt.decode` (signature and claims) per request. A hit
    is served only while `not_before - leeway <= clock() < exp + leeway`, the window in which
    `jwt.decode` would accept the token, and (OIDC) while the signing key is still cached, so a key
    the IdP withdraws stops its tokens once the key cache expires. Outside that window the entry is
    dropped and the token is verified again, so it then fails as usual (e.g. "Signature has
    expired"). Only successful verifications are cached; a failure is decided afresh each time.

    Why this is safe: the key is the whole token string, header, claims and signature, so a token
    that differs in any byte (another signature, tampered claims) is another key and goes through
    `jwt.decode`. The policy and the claim mapping are fixed for the verifier's lifetime.

    `keys` is a `KeySource`, or a string: an HS256 secret. Not thread-safe: each process verifies
    on its one event loop. `cache_size=0` disables the cache. `clock` (seconds since the epoch) is
    for tests; it should agree with PyJWT's clock.
    """

    def __init__(
        self,
        keys: KeySource | str,
        *,
        policy: TokenPolicy | None = None,
        claims: ClaimMapping | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if cache_size < 0:
            raise ValueError("cache_size must be >= 0")
        self.keys: KeySource = SharedSecret(keys) if isinstance(keys, str) else keys
        self.policy = policy or TokenPolicy()
        self.claims = claims or ClaimMapping()
        self._cache_size = cache_size
        self._clock = clock
        self._cache: OrderedDict[str, _Verified] = OrderedDict()

    @property
    def cached_tokens(self) -> int:
        """How many verified tokens are remembered (at most `cache_size`)."""
        return len(self._cache)

    async def verify(self, token: str) -> Principal:
        cached = self._cache.get(token)
        if cached is not None:
            now = self._clock()
            leeway = self.policy.leeway_s
            if cached.not_before - leeway <= now < min(cached.expires + leeway, cached.key_valid_until):
                self._cache.move_to_end(token)
                return cached.principal
            del self._cache[token]
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            raise AuthError(f"invalid token: {error}") from error
        key = await self.keys.key_for(header)
        claims = self._decode(token, key)
        principal = self.claims.principal(claims)
        if self._cache_size:
            self._remember(token, principal, claims, key.valid_until)
        return principal

    def _decode(self, token: str, key: SigningKey) -> dict[str, object]:
        policy = self.policy
        try:
            claims: dict[str, object] = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm],
                issuer=policy.issuer,
                audience=policy.audience,
                options={
                    "require": policy.required_claims,
                    "verify_aud": policy.audience is not None,
                    "enforce_minimum_key_length": True,
                },
                leeway=policy.leeway_s,
            )
        except jwt.PyJWTError as error:
            raise AuthError(f"invalid token: {error}") from error
        lifetime = _int_claim(claims, "exp") - _int_claim(claims, "iat")
        if lifetime > policy.max_lifetime_s:
            raise AuthError(
                f"invalid token: it lives {lifetime} s (exp - iat), "
                f"more than the {policy.max_lifetime_s} s allowed"
            )
        return claims

    def _remember(
        self, token: str, principal: Principal, claims: dict[str, object], key_valid_until: float
    ) -> None:
        # jwt.decode has checked these claims, and reads them the same way: int(value).
        not_before = max(
            (_int_claim(claims, name) for name in ("nbf", "iat") if name in claims), default=-math.inf
        )
        verified = _Verified(principal, not_before, _int_claim(claims, "exp"), key_valid_until)
        self._cache[token] = verified  # newest: last
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    async def verify_header(self, header: str | None) -> Principal:
        """Verify an `Authorization: Bearer <token>` value."""
        if not header:
            raise AuthError("missing bearer token")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("the authorization header must be 'Bearer <token>'")
        return await self.verify(token.strip())


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
