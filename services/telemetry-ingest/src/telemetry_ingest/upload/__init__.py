"""Telemetry uploaded to the upstream platform (opt-in)."""
