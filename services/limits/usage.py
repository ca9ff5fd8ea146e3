"""Usage as a turn produces it: counted in memory, written with the turn's own transactions.

A turn's `UsageMeter` collects model tokens (by model, as each model call reports them), tool
calls and the turn itself; every store write the turn makes takes what was collected since the last
one (`take`) and adds it to the day's counters in the same transaction. Usage is therefore
recorded exactly when what produced it is stored: a refused or rolled-back write records nothing
(a retry counts once), and a crash loses only the usage of what was not stored either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime


@dataclass(slots=True)
class UsageDelta:
    """Counters to add to one user's row of the day (tokens per model: (input, output))."""

    conversations: int = 0
    turns: int = 0
    tool_calls: int = 0
    uploaded_bytes: int = 0
    tokens: dict[str, tuple[int, int]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.conversations or self.turns or self.tool_calls or self.uploaded_bytes or self.tokens)

    @property
    def total_tokens(self) -> int:
        return sum(tokens_in + tokens_out for tokens_in, tokens_out in self.tokens.values())


class UsageMeter:
    """What one turn used and has not been written yet; it starts with the turn itself (and the
    conversation, for a new thread's first turn), so the turn counts with its first write."""

    def __init__(self, *, turns: int = 0, conversations: int = 0) -> None:
        self._pending = UsageDelta(turns=turns, conversations=conversations)

    def model_call(self, model: str, input_tokens: int, output_tokens: int) -> None:
        """Count a model call's reported tokens (a call that reports none has nothing to count)."""
        if input_tokens <= 0 and output_tokens <= 0:
            return
        tokens_in, tokens_out = self._pending.tokens.get(model, (0, 0))
        self._pending.tokens[model] = (tokens_in + max(input_tokens, 0), tokens_out + max(output_tokens, 0))

    def tool_call(self) -> None:
        self._pending.tool_calls += 1

    def take(self) -> UsageDelta | None:
        """What was collected since the last `take` (None: nothing), and start over."""
        if not self._pending:
            return None
        taken, self._pending = self._pending, UsageDelta()
        return taken


def today() -> date:
    """The accounting day (UTC)."""
    return datetime.now(UTC).date()
