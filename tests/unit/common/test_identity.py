"""Identity-provider tokens in process: claim mapping, the JWKS cache, policy, and build_verifier."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.auth import AuthError, TokenPolicy, TokenVerifier, mint_token
from services.common.claims import ClaimMapping, parse_role_map
from services.common.config import Settings
from services.common.identity import build_verifier
from services.common.jwks import JwksKeys, usable_keys
from tests.fakes.identity_provider import IdentityProvider, running_identity_provider

SECRET = "s" * 40


@pytest.fixture(scope="module")
def idp() -> Iterator[IdentityProvider]:
    with running_identity_provider() as provider:
        yield provider


def _verifier(idp: IdentityProvider, **keys: float) -> TokenVerifier:
    return TokenVerifier(
        JwksKeys(issuer=idp.issuer, **keys),
        policy=TokenPolicy(issuer=idp.issuer, audience=idp.audience, require_issuer_audience=True),
    )


# --------------------------------------------------------------------------- claim mapping


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ({"https://example.com/tenant": "acme", "sub": "u"}, "acme"),
        ({"org": {"id": "globex"}, "sub": "u"}, "globex"),
    ],
    ids=["url-named-claim", "nested-path"],
)
def test_the_tenant_is_read_by_name_or_dotted_path(claims: dict[str, object], expected: str) -> None:
    path = next(iter(claims)) if "org" not in claims else "org.id"
    assert ClaimMapping(tenant_claim=path).principal(claims).tenant == expected


@pytest.mark.parametrize(
    ("roles", "expected"),
    [
        (["Staff", "HR"], "hr"),
        (["HR", "Admins"], "admin"),  # the map's order decides, not the token's
        ("HR", "hr"),
        (["Staff"], "user"),  # unmapped: the least privilege
        ([], "user"),
        (None, "user"),
    ],
    ids=["list", "most-privileged-first", "string", "unmapped", "empty-list", "absent"],
)
def test_roles_are_mapped_and_unmapped_roles_get_user(roles: object, expected: str) -> None:
    mapping = ClaimMapping(role_claim="realm_access.roles", role_map=parse_role_map("Admins=admin, HR=hr"))
    claims: dict[str, object] = {"tenant": "t", "sub": "u"}
    if roles is not None:
        claims["realm_access"] = {"roles": roles}
    assert mapping.principal(claims).role == expected


def test_a_missing_tenant_says_which_claim() -> None:
    with pytest.raises(AuthError, match="no tenant claim 'org_id'"):
        ClaimMapping(tenant_claim="org_id").principal({"sub": "u"})


@pytest.mark.parametrize("text", ["Admins", "=admin", "Admins=../x"])
def test_a_bad_role_map_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="role map"):
        parse_role_map(text)


# --------------------------------------------------------------------------- JWKS


def test_only_public_signing_keys_of_allowed_types_are_loaded(idp: IdentityProvider) -> None:
    jwks = idp.jwks()
    rsa, ec = jwks["keys"][0], jwks["keys"][1]
    keys = usable_keys(
        {
            "keys": [
                rsa,
                ec,
                {**rsa, "kid": "enc", "use": "enc"},
                {**rsa, "kid": "private", "d": "AAAA"},
                {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
                {**rsa, "kid": "rs512", "alg": "RS512"},
                {key: value for key, value in rsa.items() if key != "kid"},
            ]
        }
    )
    assert set(keys) == {rsa["kid"], ec["kid"]}
    assert set(keys[rsa["kid"]]) == {"RS256"} and set(keys[ec["kid"]]) == {"ES256"}
    no_alg = {key: value for key, value in rsa.items() if key != "alg"}
    assert set(usable_keys({"keys": [no_alg]})[rsa["kid"]]) == {"RS256", "PS256"}


async def test_keys_are_fetched_once_and_an_unknown_kid_refreshes_at_most_once_per_interval(
    idp: IdentityProvider,
) -> None:
    verifier = _verifier(idp, min_refresh_s=60)
    before = idp.jwks_fetches
    assert (await verifier.verify(idp.token(tenant="acme"))).tenant == "acme"
    assert (await verifier.verify(idp.token(tenant="other"))).tenant == "other"
    assert idp.jwks_fetches == before + 1
    stranger = idp.add_key("RS256", publish=False)
    for _ in range(3):
        with pytest.raises(AuthError, match="unknown signing key"):
            await verifier.verify(idp.token(kid=stranger.kid))
    assert idp.jwks_fetches == before + 1  # the last fetch was less than 60 s ago


async def test_a_removed_key_stops_verifying_once_its_cache_expires(idp: IdentityProvider) -> None:
    pair = idp.add_key("ES256")
    verifier = _verifier(idp, cache_ttl_s=0.3, min_refresh_s=0)
    token = idp.token(kid=pair.kid)
    await verifier.verify(token)
    idp.remove(pair.kid)
    assert (await verifier.verify(token)).user == "alice"  # within the TTL: cached key and token
    await asyncio.sleep(0.4)
    with pytest.raises(AuthError, match="unknown signing key"):
        await verifier.verify(token)


async def test_keys_stay_when_a_refresh_fails_and_nothing_is_trusted_before_a_first_load(
    idp: IdentityProvider, caplog: pytest.LogCaptureFixture
) -> None:
    keys = JwksKeys(jwks_url=idp.jwks_url, cache_ttl_s=0.1, min_refresh_s=0)
    policy = TokenPolicy(issuer=idp.issuer, audience=idp.audience, require_issuer_audience=True)
    verifier = TokenVerifier(keys, policy=policy, cache_size=0)
    token = idp.token()
    await verifier.verify(token)
    keys._jwks_url = "http://127.0.0.1:9/jwks"  # the provider is unreachable from now on
    await asyncio.sleep(0.15)
    with caplog.at_level(logging.WARNING):
        assert (await verifier.verify(token)).user == "alice"
    assert "keeping the cached keys" in caplog.text
    down = TokenVerifier(JwksKeys(jwks_url="http://127.0.0.1:9/jwks"), policy=policy)
    with pytest.raises(AuthError, match="unavailable"):
        await down.verify(token)


async def test_discovery_must_name_the_configured_issuer(idp: IdentityProvider) -> None:
    impostor = idp.issuer + "/"  # discovery answers with the issuer without the slash
    verifier = TokenVerifier(
        JwksKeys(issuer=impostor),
        policy=TokenPolicy(issuer=impostor, audience=idp.audience, require_issuer_audience=True),
    )
    with pytest.raises(AuthError, match="unavailable"):
        await verifier.verify(idp.token(iss=impostor))


# --------------------------------------------------------------------------- policy in every mode


async def test_hs256_tokens_need_iat_and_a_bounded_lifetime() -> None:
    verifier = TokenVerifier(SECRET, policy=TokenPolicy(max_lifetime_s=3600))
    assert (await verifier.verify(mint_token(SECRET, tenant="t", user="u", ttl_s=3600))).user == "u"
    with pytest.raises(AuthError, match="more than the 3600 s allowed"):
        await verifier.verify(mint_token(SECRET, tenant="t", user="u", ttl_s=3601))


async def test_an_asymmetric_token_is_refused_by_an_hs256_verifier(idp: IdentityProvider) -> None:
    with pytest.raises(AuthError, match="not allowed"):
        await TokenVerifier(SECRET).verify(idp.token())


def test_policy_bounds() -> None:
    with pytest.raises(ValueError, match="leeway"):
        TokenPolicy(leeway_s=301)
    with pytest.raises(ValueError, match="issuer and an audience"):
        TokenPolicy(issuer="https://idp", require_issuer_audience=True)


# --------------------------------------------------------------------------- build_verifier


async def test_build_verifier_in_oidc_mode_ignores_the_secret(
    idp: IdentityProvider, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(
        oidc_issuer=idp.issuer,
        jwt_audience=idp.audience,
        jwt_secret=SECRET,
        role_map="HR=hr",
        role_claim="groups",
    )
    with caplog.at_level(logging.WARNING):
        verifier = build_verifier(settings)
    assert "SWITCHBOARD_JWT_SECRET is ignored" in caplog.text
    assert (await verifier.verify(idp.token(groups=["HR"]))).role == "hr"
    with pytest.raises(AuthError, match="not allowed"):
        await verifier.verify(
            mint_token(SECRET, tenant="t", user="u", issuer=idp.issuer, audience=idp.audience)
        )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"jwks_url": "https://idp/jwks", "jwt_audience": "a"}, "SWITCHBOARD_JWT_ISSUER"),
        ({"oidc_issuer": "https://idp"}, "SWITCHBOARD_JWT_AUDIENCE"),
        ({"oidc_issuer": "https://idp", "jwt_issuer": "https://other", "jwt_audience": "a"}, "differs"),
    ],
    ids=["jwks-without-issuer", "oidc-without-audience", "two-issuers"],
)
def test_build_verifier_refuses_incomplete_provider_settings(settings: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_verifier(Settings.model_validate(settings))


def test_hs256_outside_the_dev_stack_warns_and_a_short_file_secret_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        build_verifier(Settings(data_dir=tmp_path))
    assert "shared HS256 secret" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        build_verifier(Settings(data_dir=tmp_path, dev_stack=True))
    assert "shared HS256 secret" not in caplog.text
    (tmp_path / "jwt-secret").write_text("too-short")
    with pytest.raises(ValueError, match="at least 32 characters"):
        build_verifier(Settings(data_dir=tmp_path, dev_stack=True))
