"""Models behind the agents: the provider factory and the offline demo model."""

from services.agent_service.models.factory import ModelChoice, build_model, resolve_provider
from services.agent_service.models.local import LocalDemoModel, LocalTitleModel

__all__ = ["LocalDemoModel", "LocalTitleModel", "ModelChoice", "build_model", "resolve_provider"]
