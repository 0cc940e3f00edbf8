"""Supabase Realtime (Phoenix channels, serializers 1.0.0 and 2.0.0) postgres_changes INSERT subscriptions.

Fed by LISTEN/NOTIFY: ``hub`` fans inserted rows out, ``filters`` parses and evaluates what a binding asks
for, ``protocol`` reads and writes Phoenix frames, ``session`` is the websocket endpoint and its limits.
"""

from telemetry_ingest.realtime.filters import ChangeFilter, Condition, FilterError, parse_filter
from telemetry_ingest.realtime.hub import (
    NOTIFY_CHANNEL,
    PUBLISHED_TABLES,
    Binding,
    RealtimeHub,
    RealtimeUnavailable,
    RowChange,
)
from telemetry_ingest.realtime.session import RealtimeLimits, realtime_route

__all__ = [
    "NOTIFY_CHANNEL",
    "PUBLISHED_TABLES",
    "Binding",
    "ChangeFilter",
    "Condition",
    "FilterError",
    "RealtimeHub",
    "RealtimeLimits",
    "RealtimeUnavailable",
    "RowChange",
    "parse_filter",
    "realtime_route",
]
