"""The app seam: load the app (`loader.py`), run its agents for a turn with the verified caller
(`responder.py`), turn the history into model input (`converter.py`, `attachment_input.py`) and the
run into ChatKit events (`stream.py`).

Import the Agents SDK as the top-level `agents` package (absolute imports only): this package is
`services.agent_service.agents` and must never shadow it.
"""

from services.agent_service.agents.loader import AppLoadError, load_app
from services.agent_service.agents.responder import AppResponder, create_responder

__all__ = ["AppLoadError", "AppResponder", "create_responder", "load_app"]
