"""Limits per tenant and user, and usage accounting, in the database the deployment already has.

- `policy.Limits`: what may be used (defaults from the settings, overrides per tenant).
- `admission.Admission`: what a request must pass, checked in the transaction that starts it.
- `usage.UsageMeter`: what a turn used, written with the turn's own transactions.
- `sql.LimitsSql`: the statements, as bodies of a caller's transaction (the agent service's store
  runs them inside a turn's transactions); `store.LimitsStore` runs them in transactions of their
  own (uploads, the admin service, the CLI).
- `errors.LimitReached`: the answer when a limit is hit (RESOURCE_EXHAUSTED, HTTP 429).
"""

from services.limits.admission import Admission
from services.limits.errors import LimitReached
from services.limits.policy import NAMES, Limits
from services.limits.sql import AuditEntry, LimitsSql, UsageRow, usage_rows_total
from services.limits.store import LimitsStore
from services.limits.usage import UsageDelta, UsageMeter, today

__all__ = [
    "NAMES",
    "Admission",
    "AuditEntry",
    "LimitReached",
    "Limits",
    "LimitsSql",
    "LimitsStore",
    "UsageDelta",
    "UsageMeter",
    "UsageRow",
    "today",
    "usage_rows_total",
]
