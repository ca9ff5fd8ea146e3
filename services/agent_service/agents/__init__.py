"""The agent team (router → billing / tech / general specialists), its tools and the Responder.

Import the Agents SDK as the top-level `agents` package (absolute imports only): this package is
`services.agent_service.agents` and must never shadow it.
"""

from services.agent_service.agents.context import AgentContext
from services.agent_service.agents.erp import ErpDirectory
from services.agent_service.agents.responder import AgentResponder, create_responder
from services.agent_service.agents.team import Team, build_team

__all__ = ["AgentContext", "AgentResponder", "ErpDirectory", "Team", "build_team", "create_responder"]
