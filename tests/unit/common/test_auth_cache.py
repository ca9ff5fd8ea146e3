"""The cache of verified tokens: hits skip jwt.decode, and nothing is served that decode would refuse."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from datetime import datetime, tzinfo
from typing import Any

import jwt
import jwt.api_jwt
import pytest

from services.common.auth import LEEWAY_S, AuthError, TokenVerifier, mint_token

SECRET = "s" * 40


class Clock:
    """A controllable clock, shared by the verifier's cache and PyJWT's own claim checks."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()

    class _FakeDatetime(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> Any:
            return datetime.fromtimestamp(fake.now, tz)

    monkeypatch.setattr(jwt.api_jwt, "datetime", _FakeDatetime)
    return fake


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tokens jwt.decode was asked to verify, in order."""
    seen: list[str] = []
    real: Callable[..., Any] = jwt.decode

    def counting(token: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(token)
        return real(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting)
    return seen


def _token(clock: Clock, **claims: Any) -> str:
    payload = {"sub": "alice", "tenant": "acme", "iat": int(clock.now), "exp": int(clock.now) + 3, **claims}
    return jwt.encode(payload, SECRET, algorithm="HS256")


async def test_a_hit_skips_the_second_decode(clock: Clock, decodes: list[str]) -> None:
    verifier = TokenVerifier(SECRET, clock=clock)
    token = mint_token(SECRET, tenant="acme", user="alice", role="hr")
    first = await verifier.verify_header(f"Bearer {token}")
    second = await verifier.verify_header(f"bearer  {token} ")
    assert second is first
    assert (second.tenant, second.user, second.role) == ("acme", "alice", "hr")
    assert decodes == [token]


async def test_an_expired_cached_token_is_refused(clock: Clock, decodes: list[str]) -> None:
    verifier = TokenVerifier(SECRET, clock=clock)
    token = _token(clock)  # exp three seconds ahead
    await verifier.verify(token)
    clock.now = int(clock.now) + 3 + LEEWAY_S - 0.5  # still within the leeway: a hit
    assert (await verifier.verify(token)).user == "alice"
    assert decodes == [token]

    clock.now += 0.5  # now == exp + leeway: jwt.decode would refuse it, so must the cache
    with pytest.raises(AuthError, match="expired"):
        await verifier.verify(token)
    assert decodes == [token, token]
    assert verifier.cached_tokens == 0


async def test_a_not_yet_valid_cached_token_is_refused(clock: Clock, decodes: list[str]) -> None:
    verifier = TokenVerifier(SECRET, clock=clock)
    token = _token(clock, nbf=int(clock.now), exp=int(clock.now) + 60)
    await verifier.verify(token)
    clock.now = int(clock.now) - LEEWAY_S  # a clock stepped back, but within the leeway: a hit
    await verifier.verify(token)
    assert decodes == [token]

    clock.now -= 1
    with pytest.raises(AuthError, match="not yet valid"):
        await verifier.verify(token)
    assert decodes == [token, token]


async def test_a_tampered_token_is_not_served_from_the_cache(clock: Clock, decodes: list[str]) -> None:
    verifier = TokenVerifier(SECRET, clock=clock)
    token = _token(clock, exp=int(clock.now) + 60)
    await verifier.verify(token)
    header, _, signature = token.split(".")
    claims = {"sub": "alice", "tenant": "other", "exp": int(clock.now) + 60}
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    tampered = f"{header}.{payload}.{signature}"
    with pytest.raises(AuthError, match="Signature verification failed"):
        await verifier.verify(tampered)
    assert decodes == [token, tampered]
    assert (await verifier.verify(token)).tenant == "acme"  # the genuine token is still a hit
    assert decodes == [token, tampered]


async def test_failures_are_not_cached(clock: Clock, decodes: list[str]) -> None:
    verifier = TokenVerifier(SECRET, clock=clock)
    wrong_secret = mint_token("x" * 40, tenant="acme", user="alice")
    bad_claim = _token(clock, tenant="../etc")  # decodes, then fails the identifier check
    for token in (wrong_secret, bad_claim):
        for _ in range(2):
            with pytest.raises(AuthError):
                await verifier.verify(token)
    assert decodes == [wrong_secret, wrong_secret, bad_claim, bad_claim]
    assert verifier.cached_tokens == 0


async def test_the_cache_is_a_bounded_lru(clock: Clock, decodes: list[str]) -> None:
    verifier = TokenVerifier(SECRET, cache_size=2, clock=clock)
    a, b, c = (_token(clock, sub=user) for user in ("a", "b", "c"))
    await verifier.verify(a)
    await verifier.verify(b)
    await verifier.verify(a)  # a hit: a is now the most recently used
    await verifier.verify(c)  # evicts b
    assert verifier.cached_tokens == 2
    await verifier.verify(a)
    await verifier.verify(b)
    assert decodes == [a, b, c, b]

    for user in range(50):
        await verifier.verify(_token(clock, sub=f"user{user}"))
    assert verifier.cached_tokens == 2


async def test_cache_size_zero_disables_the_cache(clock: Clock, decodes: list[str]) -> None:
    verifier = TokenVerifier(SECRET, cache_size=0, clock=clock)
    token = _token(clock)
    await verifier.verify(token)
    await verifier.verify(token)
    assert decodes == [token, token]
    assert verifier.cached_tokens == 0
    with pytest.raises(ValueError, match="cache_size"):
        TokenVerifier(SECRET, cache_size=-1)
