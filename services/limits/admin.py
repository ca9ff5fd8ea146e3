"""Administration of limits and usage: who may act on which tenant, and what a request may ask.

The admin gRPC service (`services/agent_service/admin.py`) and the CLI (`switchboard usage`,
`switchboard limits`) check every request here before anything is read or written, and get domain
errors back: `Forbidden` (PERMISSION_DENIED) for a caller who may not act on the tenant,
`InvalidRequest` (INVALID_ARGUMENT; the CLI's exit status 2) for input that cannot be served.

- role `admin` acts on its own tenant only, `platform-admin` on any tenant, any other role on none;
- usage is asked for by UTC day (`YYYY-MM-DD`), at most `MAX_USAGE_DAYS` days at once;
- limits are set to whole numbers >= 0 (0: no limit) by their `policy.NAMES`, or cleared (the
  tenant follows the default again).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import date
from typing import Final

from services.common.principal import ADMIN_ROLE, ID_PATTERN, PLATFORM_ADMIN_ROLE, Principal
from services.limits.policy import NAMES
from switchboard.app import Forbidden, InvalidRequest

MAX_USAGE_DAYS: Final = 366
"""The longest period one usage query may cover (days, both ends included)."""
DEFAULT_AUDIT_ENTRIES: Final = 100
MAX_AUDIT_ENTRIES: Final = 1000
MAX_LIMIT: Final = 2**63 - 1
"""The largest value a limit can hold (a signed 64-bit column)."""

USAGE_READ: Final = "usage.read"
LIMITS_READ: Final = "limits.read"
LIMITS_SET: Final = "limits.set"
"""Written by `LimitsStore.set_limits`, in the transaction of the change."""
AUDIT_READ: Final = "audit.read"

_DAY: Final = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_SHOWN_CHARS: Final = 64


def shown(value: str) -> str:
    """`value` quoted and cut short, for messages that repeat what a caller sent."""
    return repr(value if len(value) <= _SHOWN_CHARS else value[: _SHOWN_CHARS - 1] + "…")


def authorize(caller: Principal, tenant: str) -> str:
    """The tenant `caller` may administer when it asks for `tenant` ("" means its own), or
    `Forbidden`: role `admin` acts on its own tenant only, `platform-admin` on any, other roles on
    none. `InvalidRequest` when a platform admin names a tenant that cannot exist."""
    if caller.role not in (ADMIN_ROLE, PLATFORM_ADMIN_ROLE):
        raise Forbidden(
            f"the admin service needs role {ADMIN_ROLE!r} or {PLATFORM_ADMIN_ROLE!r} "
            f"(this token has role {caller.role!r})"
        )
    wanted = tenant or caller.tenant
    if caller.role != PLATFORM_ADMIN_ROLE and wanted != caller.tenant:
        raise Forbidden(
            f"role {ADMIN_ROLE!r} administers its own tenant ({caller.tenant!r}) only; "
            f"tenant {shown(wanted)} needs role {PLATFORM_ADMIN_ROLE!r}"
        )
    return checked_tenant(wanted)


def checked_tenant(tenant: str) -> str:
    """`tenant` when it is a tenant id as tokens carry them, else `InvalidRequest`."""
    if not ID_PATTERN.fullmatch(tenant):
        raise InvalidRequest(f"tenant {shown(tenant)} is not a tenant id (letters, digits, ._@:-)")
    return tenant


def checked_user(user: str) -> str:
    if not ID_PATTERN.fullmatch(user):
        raise InvalidRequest(f"user {shown(user)} is not a user id (letters, digits, ._@:-)")
    return user


def parse_day(text: str, what: str) -> date:
    """A UTC day written `YYYY-MM-DD`, else `InvalidRequest` naming `what`."""
    if _DAY.fullmatch(text):
        try:
            return date.fromisoformat(text)
        except ValueError:
            pass
    raise InvalidRequest(f"{what} {shown(text)} is not a date (YYYY-MM-DD)")


def usage_period(since: str | None, until: str | None, today: date) -> tuple[date, date]:
    """The UTC days a usage query covers: `until` defaults to `today`, `since` to `until`; the
    period may not end before it starts or span more than `MAX_USAGE_DAYS` days."""
    last = parse_day(until, "until") if until else today
    first = parse_day(since, "since") if since else last
    if first > last:
        raise InvalidRequest(f"since ({first}) is after until ({last})")
    days = (last - first).days + 1
    if days > MAX_USAGE_DAYS:
        raise InvalidRequest(f"the period spans {days} days; ask for at most {MAX_USAGE_DAYS} at once")
    return first, last


def limit_name(text: str) -> str:
    """A limit's name as `policy.NAMES` spells it (`runs-per-user` is accepted too)."""
    name = text.strip().replace("-", "_")
    if name not in NAMES:
        raise InvalidRequest(f"unknown limit {shown(text)}; the limits are {', '.join(NAMES)}")
    return name


def limit_changes(values: Mapping[str, int], clear: Iterable[str], *, reset: bool) -> dict[str, int | None]:
    """What `LimitsStore.set_limits` should change: each value set (whole numbers from 0 to
    `MAX_LIMIT`), each cleared name None. `InvalidRequest` for unknown names, values out of range,
    a limit both set and cleared, or a request that changes nothing."""
    changes: dict[str, int | None] = {}
    for text in clear:
        changes[limit_name(text)] = None
    for text, value in values.items():
        name = limit_name(text)
        if name in changes:
            raise InvalidRequest(f"limit {name} is both set and cleared")
        if not 0 <= value <= MAX_LIMIT:
            raise InvalidRequest(f"limit {name} must be a whole number from 0 (no limit) to {MAX_LIMIT}")
        changes[name] = value
    if not changes and not reset:
        raise InvalidRequest("nothing to change: set a limit, clear one, or reset them all")
    return changes


def audit_entries_limit(limit: int) -> int:
    """How many audit entries to list: 0 means `DEFAULT_AUDIT_ENTRIES`, at most `MAX_AUDIT_ENTRIES`."""
    if limit == 0:
        return DEFAULT_AUDIT_ENTRIES
    if not 1 <= limit <= MAX_AUDIT_ENTRIES:
        raise InvalidRequest(f"limit must be from 1 to {MAX_AUDIT_ENTRIES} (0: {DEFAULT_AUDIT_ENTRIES})")
    return limit
