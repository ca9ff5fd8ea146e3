"""The answer when a limit is hit: RESOURCE_EXHAUSTED over gRPC, HTTP 429 at the edge, with a
`retry-after` hint and a message that names the limit."""

from __future__ import annotations

import re
from typing import Final

from switchboard.app import LimitExceeded

_MESSAGE: Final = re.compile(r"limit reached \((?P<limit>[a-z_]+)\): (?P<message>.*)", re.DOTALL)


class LimitReached(LimitExceeded):
    """`limit` is the limit's name (see `policy.NAMES`); `retry_after_s` when it may pass: the
    gRPC boundary sends it as trailing metadata `retry-after`, the edge as `Retry-After`."""

    def __init__(self, limit: str, message: str, *, retry_after_s: float) -> None:
        super().__init__(f"limit reached ({limit}): {message}")
        self.limit = limit
        self.retry_after_s = retry_after_s

    @classmethod
    def relayed(cls, details: str, *, retry_after_s: float) -> LimitReached:
        """Another service's refusal (its status details and retry-after hint), passed on with the
        same message: "limit reached (<limit>): ..." keeps its limit's name; another refusal that
        frees up later (too many uploads at once) has no name (`limit` is '')."""
        match = _MESSAGE.fullmatch(details)
        if match is not None:
            return cls(match["limit"], match["message"], retry_after_s=retry_after_s)
        error = cls.__new__(cls)
        LimitExceeded.__init__(error, details)
        error.limit = ""
        error.retry_after_s = retry_after_s
        return error
