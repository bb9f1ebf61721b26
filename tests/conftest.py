"""Shared fixtures: a real PostgreSQL (tests/fixtures_db.py) and the Graph API simulator over HTTP
(tests/fixtures_sim.py)."""

pytest_plugins = ["tests.fixtures_db", "tests.fixtures_sim"]
