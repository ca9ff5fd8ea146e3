"""Alembic migrations of the store's schema (run them with `switchboard migrate`; see store/migrate.py)."""
