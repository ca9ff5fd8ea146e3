"""Item and thread ids: a ChatKit-style prefix and 128 random bits, neither guessable nor enumerable."""

from __future__ import annotations

import secrets
from typing import Literal

IdKind = Literal["thr", "msg", "tc", "tsk", "wf", "atc", "shcx"]


def new_id(kind: IdKind) -> str:
    return f"{kind}_{secrets.token_hex(16)}"
