"""What each tenant and user may use: defaults from the settings, overrides per tenant.

Every limit is a whole number and 0 means "no limit". A tenant's override (a row of
`tenant_limits`, set with `switchboard limits set` or the admin service) replaces the default of
each limit it names; a limit it leaves unset keeps following the default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Final

from services.common.config import Settings


@dataclass(frozen=True, slots=True)
class Limits:
    runs_per_user: int = 0
    """Responses one user may have running at once, across every replica."""
    runs_per_tenant: int = 0
    """Responses one tenant's users may have running at once, across every replica."""
    requests_per_minute: int = 0
    """A user's sustained request rate (a token bucket refilled at this rate per minute)."""
    request_burst: int = 0
    """The bucket's size: requests a user may make at once after a pause (0: requests_per_minute)."""
    tokens_per_day: int = 0
    """Model tokens (input + output, as the model reports them) a tenant may use per UTC day."""
    upload_bytes_per_day: int = 0
    """Bytes one user may upload per UTC day."""
    stored_bytes: int = 0
    """Attachment bytes a tenant may keep stored at once."""

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            runs_per_user=settings.limit_runs_per_user,
            runs_per_tenant=settings.limit_runs_per_tenant,
            requests_per_minute=settings.limit_requests_per_minute,
            request_burst=settings.limit_request_burst,
            tokens_per_day=settings.limit_tokens_per_day,
            upload_bytes_per_day=settings.limit_upload_bytes_per_day,
            stored_bytes=settings.limit_stored_bytes,
        )

    def overridden(self, overrides: Mapping[str, int | None]) -> Limits:
        """These limits with a tenant's overrides applied (None: the default stays)."""
        changes = {name: value for name, value in overrides.items() if name in NAMES and value is not None}
        return replace(self, **changes) if changes else self

    @property
    def bucket_size(self) -> int:
        return self.request_burst or self.requests_per_minute

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in NAMES}


NAMES: Final = tuple(field.name for field in fields(Limits))
"""The limits' names, as the settings (`SWITCHBOARD_LIMIT_<NAME>`), the `tenant_limits` columns,
the admin API and `switchboard limits set --<name>` spell them."""
