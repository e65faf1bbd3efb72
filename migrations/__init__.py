"""Alembic migrations of Muster's schema (shipped inside the package as ``gateway.migrations``)."""
