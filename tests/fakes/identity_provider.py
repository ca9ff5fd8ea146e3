"""A local OIDC identity provider: discovery, a JWKS of RSA and EC keys, and tokens signed with them.

It runs an aiohttp server on a free loopback port in a thread of its own (with its own event loop),
so it answers the services' key fetches whatever the test's loop is doing. Keys are made with
`cryptography`; `rotate` publishes a new key, `remove` withdraws one, and `token` signs claims with
any key, published or not (a valid signature from an unknown key is one of the attacks).

    with running_identity_provider() as idp:
        env = idp.service_env(audience="switchboard")   # SWITCHBOARD_OIDC_ISSUER, _JWT_AUDIENCE
        token = idp.token(tenant="acme", sub="alice")
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tests.support.processes import free_port

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
AUDIENCE = "switchboard"


@dataclass
class SigningKeyPair:
    kid: str
    algorithm: str  # RS256 or ES256
    private: PrivateKey

    def public_jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
        else:
            jwk = ECAlgorithm.to_jwk(public, as_dict=True)
        return {**jwk, "kid": self.kid, "use": "sig", "alg": self.algorithm}


def new_key(kid: str, algorithm: str = "RS256") -> SigningKeyPair:
    """A fresh RSA-2048 (RS256) or P-256 (ES256) key pair."""
    if algorithm == "ES256":
        return SigningKeyPair(kid, algorithm, ec.generate_private_key(ec.SECP256R1()))
    return SigningKeyPair(kid, algorithm, rsa.generate_private_key(public_exponent=65537, key_size=2048))


@dataclass
class IdentityProvider:
    issuer: str
    audience: str = AUDIENCE
    keys: dict[str, SigningKeyPair] = field(default_factory=dict)
    """Every key this provider ever made, by kid."""
    published: list[str] = field(default_factory=list)
    """The kids in the JWKS, in order."""
    tenant_claim: str = "tenant"
    """Where `claims` puts the tenant (the services' SWITCHBOARD_TENANT_CLAIM)."""
    jwks_fetches: int = 0
    _counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def jwks_url(self) -> str:
        return f"{self.issuer}/jwks"

    def add_key(self, algorithm: str = "RS256", *, publish: bool = True) -> SigningKeyPair:
        pair = new_key(f"key-{next(self._counter)}-{algorithm.lower()}", algorithm)
        self.keys[pair.kid] = pair
        if publish:
            self.published.append(pair.kid)
        return pair

    def remove(self, kid: str) -> None:
        self.published.remove(kid)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.keys[kid].public_jwk() for kid in self.published]}

    def claims(self, tenant: str | None = "acme", **overrides: Any) -> dict[str, Any]:
        """Valid claims for `tenant` (under `tenant_claim`), user `alice`; override any claim, and
        drop one with the value None."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": "alice",
            self.tenant_claim: tenant,
            "iat": now,
            "exp": now + 600,
            **overrides,
        }
        return {name: value for name, value in claims.items() if value is not None}

    def token(self, *, kid: str | None = None, headers: dict[str, Any] | None = None, **claims: Any) -> str:
        """`claims(**claims)` signed with key `kid` (default: the newest published key); `headers`
        adds to the JOSE header or (value None) drops from it."""
        pair = self.keys[kid or self.published[-1]]
        header = {"kid": pair.kid, **(headers or {})}
        header = {name: value for name, value in header.items() if value is not None}
        return jwt.encode(self.claims(**claims), pair.private, algorithm=pair.algorithm, headers=header)

    def service_env(self, *, discovery: bool = True, **extra: str) -> dict[str, str]:
        """The settings that point a service at this provider (discovery, or the JWKS URL)."""
        env = {"SWITCHBOARD_JWT_AUDIENCE": self.audience, "SWITCHBOARD_JWT_SECRET": ""}
        if discovery:
            env["SWITCHBOARD_OIDC_ISSUER"] = self.issuer
        else:
            env |= {"SWITCHBOARD_JWKS_URL": self.jwks_url, "SWITCHBOARD_JWT_ISSUER": self.issuer}
        return env | extra

    # --------------------------------------------------------------- HTTP

    def app(self) -> web.Application:
        async def discovery(request: web.Request) -> web.Response:
            return web.json_response(
                {
                    "issuer": self.issuer,
                    "jwks_uri": self.jwks_url,
                    "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                }
            )

        async def keys(request: web.Request) -> web.Response:
            self.jwks_fetches += 1
            return web.json_response(self.jwks())

        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", discovery)
        app.router.add_get("/jwks", keys)
        return app


@contextmanager
def running_identity_provider(
    *, algorithms: tuple[str, ...] = ("RS256", "ES256")
) -> Iterator[IdentityProvider]:
    """An `IdentityProvider` serving on 127.0.0.1 with one published key per algorithm."""
    port = free_port()
    idp = IdentityProvider(f"http://127.0.0.1:{port}")
    for algorithm in algorithms:
        idp.add_key(algorithm)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(idp.app(), access_log=None)
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=serve, name="identity-provider", daemon=True)
    thread.start()
    if not started.wait(10):
        raise TimeoutError("the identity provider did not start")
    try:
        yield idp
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
