"""The answer when a limit is hit: RESOURCE_EXHAUSTED over gRPC, HTTP 429 at the edge, with a
`retry-after` hint and a message that names the limit."""

from __future__ import annotations

from switchboard.app import LimitExceeded


class LimitReached(LimitExceeded):
    """`limit` is the limit's name (see `policy.NAMES`); `retry_after_s` when it may pass: the
    gRPC boundary sends it as trailing metadata `retry-after`, the edge as `Retry-After`."""

    def __init__(self, limit: str, message: str, *, retry_after_s: float) -> None:
        super().__init__(f"limit reached ({limit}): {message}")
        self.limit = limit
        self.retry_after_s = retry_after_s
