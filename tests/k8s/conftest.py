"""Fixtures: the rendered overlays. Without kubectl the tests fail with what to install."""

from __future__ import annotations

import pytest

from tests.k8s.manifests import OVERLAYS, Rendered, RenderError, render


def _render(overlay: str) -> Rendered:
    try:
        return render(overlay)
    except RenderError as error:
        pytest.fail(str(error), pytrace=False)


@pytest.fixture(scope="session")
def dev() -> Rendered:
    return _render("dev")


@pytest.fixture(scope="session")
def production() -> Rendered:
    return _render("production")


@pytest.fixture(scope="session", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> Rendered:
    return _render(str(request.param))
