"""Models behind the agents: the configured provider and Switchboard's own offline models."""

from services.agent_service.models.factory import (
    ConfiguredModels,
    build_models,
    resolve_provider,
    title_models,
)
from services.agent_service.models.offline import OfflineModel, OfflineTitleModel

__all__ = [
    "ConfiguredModels",
    "OfflineModel",
    "OfflineTitleModel",
    "build_models",
    "resolve_provider",
    "title_models",
]
