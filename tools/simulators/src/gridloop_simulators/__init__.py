"""Simulators for demos and tests: `battery` (SunSpec battery), `meter` (site meter), `upstream` (aggregator)."""
