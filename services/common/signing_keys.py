"""Where the verifier gets the key for a token: a shared HS256 secret, or an IdP's public keys.

`TokenVerifier` asks its `KeySource` for the key of each token it has not verified yet, with the
token's (unverified) header. The answer binds the key to the algorithms it may be used with, so an
algorithm the token's header names cannot pick a different way of using the key (the classic
"HS256 signed with the RSA public key" confusion): see `SigningKey`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Protocol

from jwt import PyJWK

from services.common.principal import AuthError

HMAC_ALGORITHM: Final = "HS256"
ASYMMETRIC_ALGORITHMS: Final = ("RS256", "PS256", "ES256", "EdDSA")
"""What identity-provider tokens may be signed with. `none` and every HMAC algorithm are refused:
an IdP's keys are public, and an HMAC "signed" with a public key proves nothing."""


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A key for one token, and until when (verifier clock) a verification with it may be reused.

    `key` is either a secret (HS256) or a `PyJWK` whose algorithm is fixed: PyJWT then verifies with
    that algorithm whatever the header says, and refuses a header that names another one.
    """

    key: PyJWK | str
    algorithm: str
    valid_until: float = math.inf


class KeySource(Protocol):
    """Resolves the key a token's header asks for, or raises AuthError."""

    async def key_for(self, header: Mapping[str, object]) -> SigningKey: ...


class SharedSecret:
    """HS256 with one secret shared by every service: the development default (`switchboard token`)."""

    def __init__(self, secret: str) -> None:
        if len(secret) < 32:
            raise ValueError("the HS256 secret must be at least 32 characters")
        self._key = SigningKey(secret, HMAC_ALGORITHM)

    async def key_for(self, header: Mapping[str, object]) -> SigningKey:
        if header.get("alg") != HMAC_ALGORITHM:
            raise AuthError(f"invalid token: algorithm {header.get('alg')!r} is not allowed (expected HS256)")
        return self._key
