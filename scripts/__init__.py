"""Operational scripts run from the repository root as modules (`python -m scripts.NAME`), so
that they import the project (and tests/servers.py) without touching sys.path."""
