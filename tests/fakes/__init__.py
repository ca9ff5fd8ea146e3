"""Fakes of external services for tests (a fake OpenAI-compatible server)."""
