"""Bearer JWT verification: what is accepted and what is refused."""

from __future__ import annotations

import time

import jwt
import pytest

from services.common.auth import AuthError, TokenPolicy, TokenVerifier, mint_token

SECRET = "s" * 40


async def test_a_minted_token_verifies_to_its_principal() -> None:
    token = mint_token(SECRET, tenant="acme", user="alice", role="hr")
    principal = await TokenVerifier(SECRET).verify_header(f"Bearer {token}")
    assert (principal.tenant, principal.user, principal.role) == ("acme", "alice", "hr")


async def test_role_defaults_to_user() -> None:
    token = jwt.encode(
        {"sub": "a", "tenant": "t", "iat": int(time.time()), "exp": int(time.time()) + 60},
        SECRET,
        algorithm="HS256",
    )
    assert (await TokenVerifier(SECRET).verify(token)).role == "user"


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing"),
        ("", "missing"),
        ("Basic abc", "Bearer"),
        ("Bearer ", "Bearer"),
        ("Bearer not-a-jwt", "invalid token"),
    ],
)
async def test_malformed_headers_are_refused(header: str | None, reason: str) -> None:
    with pytest.raises(AuthError, match=reason):
        await TokenVerifier(SECRET).verify_header(header)


async def test_wrong_secret_expired_and_missing_claims_are_refused() -> None:
    verifier = TokenVerifier(SECRET)
    with pytest.raises(AuthError):
        await verifier.verify(mint_token("x" * 40, tenant="acme", user="alice"))
    with pytest.raises(AuthError, match="expired"):
        await verifier.verify(mint_token(SECRET, tenant="acme", user="alice", ttl_s=-60))
    no_tenant = jwt.encode(
        {"sub": "a", "iat": int(time.time()), "exp": int(time.time()) + 60}, SECRET, algorithm="HS256"
    )
    with pytest.raises(AuthError, match="tenant"):
        await verifier.verify(no_tenant)
    no_exp = jwt.encode({"sub": "a", "tenant": "t", "iat": int(time.time())}, SECRET, algorithm="HS256")
    with pytest.raises(AuthError, match="exp"):
        await verifier.verify(no_exp)


async def test_unsigned_tokens_are_refused() -> None:
    unsigned = jwt.encode(
        {"sub": "a", "tenant": "t", "iat": int(time.time()), "exp": int(time.time()) + 60},
        None,
        algorithm="none",
    )
    with pytest.raises(AuthError):
        await TokenVerifier(SECRET).verify(unsigned)


@pytest.mark.parametrize("tenant", ["../etc", "a b", "", "x" * 200, "tenant\n"])
async def test_claims_must_be_short_identifiers(tenant: str) -> None:
    token = jwt.encode(
        {"sub": "a", "tenant": tenant, "iat": int(time.time()), "exp": int(time.time()) + 60},
        SECRET,
        algorithm="HS256",
    )
    with pytest.raises(AuthError):
        await TokenVerifier(SECRET).verify(token)


async def test_issuer_and_audience_are_checked_when_configured() -> None:
    verifier = TokenVerifier(SECRET, policy=TokenPolicy(issuer="https://idp", audience="switchboard"))
    good = mint_token(SECRET, tenant="t", user="u", issuer="https://idp", audience="switchboard")
    assert (await verifier.verify(good)).user == "u"
    with pytest.raises(AuthError):
        await verifier.verify(
            mint_token(SECRET, tenant="t", user="u", issuer="https://other", audience="switchboard")
        )
    with pytest.raises(AuthError):
        await verifier.verify(mint_token(SECRET, tenant="t", user="u"))
