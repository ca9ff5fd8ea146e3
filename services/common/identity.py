"""`build_verifier`: the one place every service (edge, agent, upload) gets its token verifier from.

The mode follows the configuration:
- `SWITCHBOARD_OIDC_ISSUER` (keys found through OIDC discovery) or `SWITCHBOARD_JWKS_URL`: tokens
  from an identity provider, verified with its public keys only. The issuer (the OIDC issuer, else
  `SWITCHBOARD_JWT_ISSUER`) and `SWITCHBOARD_JWT_AUDIENCE` are then required; a shared secret, if
  one is configured as well, is ignored (with a warning) so it cannot become a second way in;
- otherwise HS256 with the shared secret (`SWITCHBOARD_JWT_SECRET`, else the file in the data
  directory). Meant for development: a warning is logged when a service runs so outside the
  `switchboard dev` stack (which sets `SWITCHBOARD_DEV_STACK`).
"""

from __future__ import annotations

import logging

from services.common.auth import TokenPolicy, TokenVerifier
from services.common.claims import ClaimMapping, parse_role_map
from services.common.config import Settings
from services.common.jwks import JwksKeys
from services.common.signing_keys import KeySource, SharedSecret

log = logging.getLogger(__name__)


def oidc_mode(settings: Settings) -> bool:
    """True when tokens come from an identity provider (asymmetric keys), not a shared secret."""
    return bool(settings.oidc_issuer or settings.jwks_url)


def build_verifier(settings: Settings) -> TokenVerifier:
    """The token verifier the settings describe (see the module docstring).

    Raises ValueError with the setting to fix when the configuration is incomplete or contradictory.
    """
    claims = ClaimMapping(
        tenant_claim=settings.tenant_claim,
        user_claim=settings.user_claim,
        role_claim=settings.role_claim,
        role_map=parse_role_map(settings.role_map),
    )
    keys: KeySource
    if oidc_mode(settings):
        issuer = settings.oidc_issuer or settings.jwt_issuer
        if settings.oidc_issuer and settings.jwt_issuer and settings.jwt_issuer != settings.oidc_issuer:
            raise ValueError("SWITCHBOARD_JWT_ISSUER differs from SWITCHBOARD_OIDC_ISSUER; set only one")
        if not issuer:
            raise ValueError("SWITCHBOARD_JWKS_URL needs SWITCHBOARD_JWT_ISSUER (the tokens' 'iss')")
        if not settings.jwt_audience:
            raise ValueError("identity-provider tokens need SWITCHBOARD_JWT_AUDIENCE (the tokens' 'aud')")
        if settings.jwt_secret:
            log.warning("SWITCHBOARD_JWT_SECRET is ignored: tokens are verified with the IdP's public keys")
        keys = JwksKeys(
            issuer=settings.oidc_issuer,
            jwks_url=None if settings.oidc_issuer else settings.jwks_url,
            cache_ttl_s=settings.jwks_cache_ttl_s,
            min_refresh_s=settings.jwks_min_refresh_s,
        )
    else:
        if not settings.dev_stack:
            log.warning(
                "tokens are verified with a shared HS256 secret: fine for development, but production "
                "should set SWITCHBOARD_OIDC_ISSUER or SWITCHBOARD_JWKS_URL (see the README, Authentication)"
            )
        keys = SharedSecret(settings.resolve_jwt_secret())
        issuer = settings.jwt_issuer
    policy = TokenPolicy(
        issuer=issuer,
        audience=settings.jwt_audience,
        require_issuer_audience=oidc_mode(settings),
        leeway_s=settings.jwt_leeway_s,
        max_lifetime_s=settings.jwt_max_lifetime_s,
    )
    return TokenVerifier(keys, policy=policy, claims=claims)
