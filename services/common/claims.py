"""Where tenant, user and role are found in a token's claims, and how an IdP's roles become ours.

Identity providers name things their own way: Auth0 puts custom claims under namespaced URLs
(`https://example.com/tenant`), Keycloak nests roles (`realm_access.roles`), Entra ID sends a list
of group-like roles. `ClaimMapping` reads each of our three fields from a configurable claim:

- a claim name is looked up as it is first, so URL-named claims (which contain dots) work;
- otherwise a dotted name is a path into nested objects (`realm_access.roles`);
- the role claim may be a string or a list of strings. With a role map, the first entry of the
  map (in its configured order: list the most privileged first) whose IdP role the token carries
  wins, and a token that carries none gets the least-privileged role `user`. Without a map the
  value is used as it is (the first one of a list), as development tokens carry our roles already.

Every value must be a short identifier (`ID_PATTERN`), as it travels into storage keys and logs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from services.common.principal import DEFAULT_ROLE, ID_PATTERN, AuthError, Principal

_MISSING = object()


def claim_at(claims: Mapping[str, object], path: str) -> object:
    """The claim named `path`, else the value at the dotted path; a sentinel when absent."""
    if path in claims:
        return claims[path]
    value: object = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def parse_role_map(text: str) -> tuple[tuple[str, str], ...]:
    """`"Admins=admin,HR=hr"` -> `(("Admins", "admin"), ("HR", "hr"))`, in the given order.

    Raises ValueError for an entry without `=` or with a target role that is not an identifier.
    """
    pairs: list[tuple[str, str]] = []
    for entry in text.split(","):
        if not entry.strip():
            continue
        theirs, sep, ours = entry.partition("=")
        theirs, ours = theirs.strip(), ours.strip()
        if not sep or not theirs or not ID_PATTERN.fullmatch(ours):
            raise ValueError(f"role map entry {entry.strip()!r} must be 'IdPRole=ourrole'")
        pairs.append((theirs, ours))
    return tuple(pairs)


@dataclass(frozen=True, slots=True)
class ClaimMapping:
    """Reads a `Principal` out of verified claims (see the module docstring)."""

    tenant_claim: str = "tenant"
    user_claim: str = "sub"
    role_claim: str = "role"
    role_map: tuple[tuple[str, str], ...] = field(default=())

    def principal(self, claims: Mapping[str, object]) -> Principal:
        return Principal(
            tenant=self._identifier(claims, self.tenant_claim, "tenant"),
            user=self._identifier(claims, self.user_claim, "user"),
            role=self._role(claims),
        )

    @staticmethod
    def _identifier(claims: Mapping[str, object], path: str, what: str) -> str:
        value = claim_at(claims, path)
        if value is _MISSING:
            raise AuthError(f"invalid token: no {what} claim {path!r}")
        if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
            raise AuthError(f"invalid token: claim {path!r} must be a short identifier")
        return value

    def _role(self, claims: Mapping[str, object]) -> str:
        value = claim_at(claims, self.role_claim)
        if value is _MISSING or value is None:
            return DEFAULT_ROLE
        if isinstance(value, str):
            values = [value]
        elif isinstance(value, list) and all(isinstance(item, str) for item in value):
            values = [str(item) for item in value]
        else:
            raise AuthError(f"invalid token: claim {self.role_claim!r} must be a string or a list of strings")
        if self.role_map:
            held = set(values)
            return next((ours for theirs, ours in self.role_map if theirs in held), DEFAULT_ROLE)
        if not values:
            return DEFAULT_ROLE
        if not ID_PATTERN.fullmatch(values[0]):
            raise AuthError(f"invalid token: claim {self.role_claim!r} must be a short identifier")
        return values[0]
