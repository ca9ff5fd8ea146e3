"""Every setting the code reads is documented in the README's configuration table, and nothing more."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import AliasChoices

from services.common.config import Settings

README = Path(__file__).resolve().parents[3] / "README.md"


def _aliases() -> set[str]:
    names: set[str] = set()
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        assert isinstance(alias, AliasChoices), field
        names.update(str(choice) for choice in alias.choices)
    return names


def _documented() -> set[str]:
    table = README.read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for line in table.splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([A-Z][A-Z0-9_]+)`", line.split("|")[1]))
    return names


def test_the_readme_documents_every_setting_and_no_other() -> None:
    assert _aliases() - _documented() == set(), "settings missing from the README's table"
    assert _documented() - _aliases() == set(), "README documents settings the code does not read"
