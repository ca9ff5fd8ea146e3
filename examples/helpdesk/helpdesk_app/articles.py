"""Each tenant's FAQ articles: the help desk's tenant-scoped data.

A real app would query its knowledge base here; the example ships a small JSON file. Ids repeat
across tenants on purpose (both have a KB-101 with different answers), so a leak between tenants
would show: every read takes the tenant from the verified caller, never from the model.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True, slots=True)
class Article:
    id: str
    title: str
    body: str


class Articles:
    """Read-only, tenant-scoped article search."""

    def __init__(self, by_tenant: dict[str, list[Article]]) -> None:
        self._by_tenant = by_tenant

    @classmethod
    def load(cls) -> Articles:
        raw = json.loads(resources.files(__package__).joinpath("articles.json").read_text("utf-8"))
        return cls({tenant: [Article(**entry) for entry in entries] for tenant, entries in raw.items()})

    def get(self, tenant: str, article_id: str) -> Article | None:
        return next((a for a in self._by_tenant.get(tenant, []) if a.id == article_id), None)

    def search(self, tenant: str, query: str) -> list[Article]:
        """The tenant's articles sharing a word (of 4+ letters) with the query, best match first."""
        words = {word for word in re.findall(r"[a-z]{4,}", query.lower())}
        scored = [
            (len(words & set(re.findall(r"[a-z]{4,}", f"{a.title} {a.body}".lower()))), a)
            for a in self._by_tenant.get(tenant, [])
        ]
        return [article for score, article in sorted(scored, key=lambda pair: -pair[0]) if score > 0]
