"""Thread and item persistence behind one interface (`Store`); SQLite is the embedded default."""

from services.agent_service.store.base import Order, Store
from services.agent_service.store.sqlite import SqliteStore

__all__ = ["Order", "SqliteStore", "Store"]
