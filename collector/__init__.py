"""ig-insights-collector: Instagram account and media insights from the Graph API into PostgreSQL."""

__version__ = "0.1.0"
