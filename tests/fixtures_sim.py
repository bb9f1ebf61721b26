"""Simulator fixtures (the fake Graph API over real HTTP)."""
