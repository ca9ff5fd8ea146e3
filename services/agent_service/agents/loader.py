"""Find the app the agent service runs: `SWITCHBOARD_APP=package.module:attribute`.

The attribute is a `switchboard.app.App`, or a function without arguments that returns one (for
apps that read their own configuration when they are built). Everything that can go wrong here (no
such module, an import that fails, no such attribute, the wrong type) is an `AppLoadError` whose
message is one line naming the variable: the service stops at start with it, never mid-request.
"""

from __future__ import annotations

import importlib
import operator
from typing import Any, Final

from switchboard.app import App

APP_VARIABLE: Final = "SWITCHBOARD_APP"
DEFAULT_APP: Final = "switchboard.demo:create_app"


class AppLoadError(Exception):
    """The configured app cannot be loaded or started (the message is one line)."""

    def __init__(self, spec: str, problem: str) -> None:
        super().__init__(f"{APP_VARIABLE}={spec!r}: {' '.join(problem.split())}")


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def load_app(spec: str) -> App[Any]:
    """The app named by `spec` (`package.module:attribute`, the attribute may be dotted)."""
    module_name, _, attribute = spec.strip().partition(":")
    if not module_name or not attribute:
        raise AppLoadError(spec, "expected 'package.module:attribute', e.g. 'my_app.main:app'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is not None and module_name.startswith(error.name):
            raise AppLoadError(spec, f"no module named {error.name!r} (is the app installed?)") from error
        raise AppLoadError(spec, f"importing {module_name!r} failed: {_describe(error)}") from error
    except Exception as error:
        raise AppLoadError(spec, f"importing {module_name!r} failed: {_describe(error)}") from error
    try:
        found: object = operator.attrgetter(attribute)(module)
    except AttributeError as error:
        raise AppLoadError(spec, f"module {module_name!r} has no attribute {attribute!r}") from error
    if isinstance(found, App):
        return found
    if callable(found) and not isinstance(found, type):
        try:
            made: object = found()
        except Exception as error:
            raise AppLoadError(spec, f"{attribute}() failed: {_describe(error)}") from error
        if isinstance(made, App):
            return made
        raise AppLoadError(spec, f"{attribute}() returned {type(made).__name__}, not a switchboard.app.App")
    raise AppLoadError(
        spec,
        f"{attribute!r} is {type(found).__name__}, not a switchboard.app.App or a function returning one",
    )
