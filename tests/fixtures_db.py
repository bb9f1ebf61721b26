"""Database fixtures (real PostgreSQL)."""
