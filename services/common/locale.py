"""Locales from `Accept-Language`: only well-formed BCP 47 language tags get through.

The locale travels from the browser's header through the edge (gRPC metadata `accept-language`) to
the agents, which may put it into a system prompt; anything that is not a language tag (prompt text,
control characters, a 4 KB header) must never get that far. `preferred_locale` picks the first
well-formed tag of an `Accept-Language` list (order as sent, `q=0` entries and `*` skipped) and
falls back to `DEFAULT_LOCALE`.

The grammar is RFC 5646's `langtag` (language with up to three extlangs, script, region, variants,
extensions, private use) plus a lone private-use tag (`x-...`); grandfathered tags are not accepted.
Tags are at most 35 characters (RFC 5646 §4.4.1).
"""

from __future__ import annotations

import re
from typing import Final

DEFAULT_LOCALE: Final = "en"
MAX_TAG_CHARS: Final = 35
_MAX_ENTRIES: Final = 16

_LANGTAG: Final = re.compile(
    r"""
    (?:
      (?:[a-z]{2,3}(?:-[a-z]{3}){0,3}|[a-z]{4,8})     # language, extlang
      (?:-[a-z]{4})?                                  # script
      (?:-(?:[a-z]{2}|[0-9]{3}))?                     # region
      (?:-(?:[a-z0-9]{5,8}|[0-9][a-z0-9]{3}))*        # variants
      (?:-[0-9a-wyz](?:-[a-z0-9]{2,8})+)*             # extensions
      (?:-x(?:-[a-z0-9]{1,8})+)?                      # private use
    |
      x(?:-[a-z0-9]{1,8})+                            # private use only
    )
    """,
    re.ASCII | re.IGNORECASE | re.VERBOSE,
)


def is_language_tag(value: str) -> bool:
    """Whether `value` is a well-formed BCP 47 language tag (see the module docstring)."""
    return len(value) <= MAX_TAG_CHARS and _LANGTAG.fullmatch(value) is not None


def preferred_locale(header: str | None, default: str = DEFAULT_LOCALE) -> str:
    """The first well-formed tag of an `Accept-Language` value, else `default`."""
    if not header:
        return default
    for entry in header.split(",")[:_MAX_ENTRIES]:
        tag, _, params = entry.partition(";")
        tag = tag.strip()
        quality = params.strip().replace(" ", "").lower()
        if quality.startswith("q=") and quality[2:] in ("0", "0.", "0.0", "0.00", "0.000"):
            continue
        if is_language_tag(tag):
            return tag
    return default


__all__ = ["DEFAULT_LOCALE", "MAX_TAG_CHARS", "is_language_tag", "preferred_locale"]
