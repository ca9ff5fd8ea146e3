"""What a request must pass before it runs, checked in the transaction that starts it."""

from __future__ import annotations

from dataclasses import dataclass

from services.limits.policy import Limits
from services.limits.usage import UsageDelta


@dataclass(frozen=True, slots=True)
class Admission:
    """`limits`: the configured defaults (the tenant's overrides are read in the transaction);
    None when limits are off. `run`: the request starts a response, so the run slots and the
    tenant's token budget apply too. `budget`: the request spends model tokens without starting a
    response (dictation through the provider), so the tenant's `tokens_per_day` refuses it once
    used up, but it takes no run slot (`run` implies `budget`). `record`: usage counted when the
    request is admitted (a conversation, a turn), in the same transaction."""

    limits: Limits | None
    run: bool = False
    budget: bool = False
    record: UsageDelta | None = None

    @property
    def checks_budget(self) -> bool:
        """Whether the tenant's token budget of the day may refuse this request."""
        return self.run or self.budget
