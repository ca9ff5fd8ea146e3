"""What a request must pass before it runs, checked in the transaction that starts it."""

from __future__ import annotations

from dataclasses import dataclass

from services.limits.policy import Limits
from services.limits.usage import UsageDelta


@dataclass(frozen=True, slots=True)
class Admission:
    """`limits`: the configured defaults (the tenant's overrides are read in the transaction);
    None when limits are off. `run`: the request starts a response, so the run slots and the
    tenant's token budget apply too. `record`: usage counted when the request is admitted (a
    conversation, a turn), in the same transaction."""

    limits: Limits | None
    run: bool = False
    record: UsageDelta | None = None
