"""An identity provider's public signing keys (JWKS), fetched asynchronously and cached.

`JwksKeys` is the `KeySource` of OIDC mode. It learns the JWKS address from the issuer's discovery
document (`<issuer>/.well-known/openid-configuration`, whose `issuer` must be the configured one)
or is given it directly, and fetches with aiohttp: PyJWT's own `PyJWKClient` uses urllib, which
would block the event loop every service verifies on.

Caching and rotation:
- the key set is kept for `cache_ttl_s`; the first token after that refetches it, so a kid the IdP
  has removed is refused from then on;
- a token with a kid the cache does not know triggers one refetch (IdPs publish a new key before
  signing with it), at most once per `min_refresh_s`, so a flood of made-up kids cannot turn every
  request into a fetch. Concurrent callers wait for the same fetch;
- when a refetch fails and keys were loaded before, they are kept (a warning is logged) and the
  fetch is retried after `min_refresh_s`: an IdP outage should not log every user out, and a key
  can only be withdrawn by publishing a new set anyway. With nothing loaded yet, tokens are refused.

Only public keys are loaded: JWKs with private members (`d`), encryption keys (`use: enc`),
symmetric keys (`oct`) and algorithms outside `ASYMMETRIC_ALGORITHMS` are skipped. A JWK without
`alg` is usable with every allowed algorithm of its type (RSA: RS256 and PS256; P-256: ES256;
Ed25519/Ed448: EdDSA); each (key, algorithm) pair is its own `PyJWK`, bound to that algorithm.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import aiohttp
from jwt import PyJWK, PyJWKError
from jwt.exceptions import InvalidKeyError

from services.common.principal import AuthError
from services.common.signing_keys import ASYMMETRIC_ALGORITHMS, SigningKey

log = logging.getLogger(__name__)

DISCOVERY_PATH: Final = "/.well-known/openid-configuration"
FETCH_TIMEOUT_S: Final = 5.0
MAX_DOCUMENT_BYTES: Final = 1_048_576

_ALGORITHMS_BY_TYPE: Final[dict[tuple[str, str | None], tuple[str, ...]]] = {
    ("RSA", None): ("RS256", "PS256"),
    ("EC", "P-256"): ("ES256",),
    ("OKP", "Ed25519"): ("EdDSA",),
    ("OKP", "Ed448"): ("EdDSA",),
}


class JwksError(Exception):
    """The discovery document or the key set could not be fetched or used."""


def usable_keys(jwks: Mapping[str, Any]) -> dict[str, dict[str, PyJWK]]:
    """kid -> algorithm -> key, for every public signing key of the set we may use (see above)."""
    entries = jwks.get("keys")
    if not isinstance(entries, list):
        raise JwksError("the JWKS document has no 'keys' list")
    keys: dict[str, dict[str, PyJWK]] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        kid, kty = entry.get("kid"), entry.get("kty")
        if not isinstance(kid, str) or not kid or "d" in entry or entry.get("use", "sig") != "sig":
            continue
        crv = entry.get("crv") if kty != "RSA" else None
        allowed = _ALGORITHMS_BY_TYPE.get((str(kty), crv if isinstance(crv, str) else None), ())
        alg = entry.get("alg")
        if alg is not None:
            allowed = (alg,) if alg in allowed else ()
        for algorithm in allowed:
            try:
                keys.setdefault(kid, {})[algorithm] = PyJWK(entry, algorithm)
            except (PyJWKError, InvalidKeyError) as error:
                log.warning("JWKS key %r skipped: %s", kid, error)
    return keys


class JwksKeys:
    """The `KeySource` of OIDC mode (see the module docstring).

    Exactly one of `issuer` (discovery) and `jwks_url` is the address to fetch from. `clock` is the
    verifier's clock (seconds since the epoch): key expiry feeds its cache of verified tokens.
    """

    def __init__(
        self,
        *,
        issuer: str | None = None,
        jwks_url: str | None = None,
        cache_ttl_s: float = 300.0,
        min_refresh_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if (issuer is None) == (jwks_url is None):
            raise ValueError("give either an issuer (OIDC discovery) or a JWKS URL")
        self._issuer = issuer
        self._jwks_url = jwks_url
        self._cache_ttl_s = cache_ttl_s
        self._min_refresh_s = min_refresh_s
        self._clock = clock
        self._keys: dict[str, dict[str, PyJWK]] = {}
        self._loaded = False
        self._expires = -math.inf
        self._last_attempt = -math.inf
        self._lock = asyncio.Lock()

    @property
    def kids(self) -> frozenset[str]:
        """The key ids currently cached."""
        return frozenset(self._keys)

    async def key_for(self, header: Mapping[str, object]) -> SigningKey:
        kid, alg = header.get("kid"), header.get("alg")
        if alg not in ASYMMETRIC_ALGORITHMS:
            raise AuthError(f"invalid token: algorithm {alg!r} is not allowed")
        if not isinstance(kid, str) or not kid:
            raise AuthError("invalid token: the header names no signing key ('kid')")
        now = self._clock()
        unknown = kid not in self._keys and now - self._last_attempt >= self._min_refresh_s
        if now >= self._expires or unknown:
            await self._refresh(now)
        if not self._loaded:
            raise AuthError("cannot verify tokens: the identity provider's keys are unavailable")
        by_algorithm = self._keys.get(kid)
        if by_algorithm is None:
            raise AuthError(f"invalid token: unknown signing key {kid!r}")
        key = by_algorithm.get(str(alg))
        if key is None:
            raise AuthError(f"invalid token: key {kid!r} is not for algorithm {alg!r}")
        return SigningKey(key, str(alg), valid_until=self._expires)

    async def _refresh(self, asked_at: float) -> None:
        async with self._lock:
            if self._last_attempt >= asked_at:
                return  # another caller fetched while this one waited
            self._last_attempt = self._clock()
            try:
                keys = usable_keys(await self._fetch_jwks())
            except (JwksError, aiohttp.ClientError, TimeoutError, ValueError) as error:
                if self._loaded:
                    log.warning("JWKS refresh failed, keeping the cached keys: %s", error)
                    self._expires = self._last_attempt + self._min_refresh_s
                else:
                    log.error("cannot load the identity provider's keys: %s", error)
                return
            if not keys:
                log.warning("the JWKS has no usable signing keys (RS256, PS256, ES256, EdDSA with a kid)")
            added, removed = keys.keys() - self._keys.keys(), self._keys.keys() - keys.keys()
            if self._loaded and (added or removed):
                log.info("JWKS rotated: added %s, removed %s", sorted(added), sorted(removed))
            self._keys, self._loaded = keys, True
            self._expires = self._last_attempt + self._cache_ttl_s

    async def _fetch_jwks(self) -> Mapping[str, Any]:
        timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S)
        # A session per fetch: fetches are rare (once per TTL), and nothing is left to close.
        async with aiohttp.ClientSession(timeout=timeout) as session:
            url = self._jwks_url
            if url is None:
                assert self._issuer is not None
                discovery = await _get_json(session, self._issuer.rstrip("/") + DISCOVERY_PATH)
                if discovery.get("issuer") != self._issuer:
                    raise JwksError(
                        f"the discovery document names issuer {discovery.get('issuer')!r}, "
                        f"not {self._issuer!r}"
                    )
                jwks_uri = discovery.get("jwks_uri")
                if not isinstance(jwks_uri, str) or not jwks_uri:
                    raise JwksError("the discovery document has no 'jwks_uri'")
                url = jwks_uri
            return await _get_json(session, url)


async def _get_json(session: aiohttp.ClientSession, url: str) -> Mapping[str, Any]:
    async with session.get(url, headers={"Accept": "application/json"}) as response:
        if response.status != 200:
            raise JwksError(f"GET {url} answered {response.status}")
        body = await response.content.read(MAX_DOCUMENT_BYTES + 1)
        if len(body) > MAX_DOCUMENT_BYTES:
            raise JwksError(f"GET {url}: the document is larger than {MAX_DOCUMENT_BYTES} bytes")
    document = json.loads(body)
    if not isinstance(document, dict):
        raise JwksError(f"GET {url}: not a JSON object")
    return document
