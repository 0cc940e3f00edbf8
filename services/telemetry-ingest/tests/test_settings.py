"""telemetry-ingest's settings: the readings consumer's own prefetch."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from telemetry_ingest.settings import IngestSettings

SECRET = "s" * 40


def test_the_readings_consumer_takes_the_ingest_prefetch_and_keeps_the_shared_broker_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GRIDLOOP_JWT_SECRET", SECRET)
    monkeypatch.setenv("GRIDLOOP_AMQP_URL", "amqp://ingest:secret@broker.example:5672/fleet")
    monkeypatch.setenv("GRIDLOOP_AMQP_PREFETCH", "32")
    monkeypatch.setenv("GRIDLOOP_AMQP_CONFIRM_TIMEOUT_S", "7")
    monkeypatch.setenv("GRIDLOOP_INGEST_PREFETCH", "300")

    settings = IngestSettings()

    consumer = settings.consumer_amqp
    assert consumer.amqp_prefetch == 300
    assert consumer.amqp_url == settings.amqp.amqp_url
    assert consumer.amqp_confirm_timeout_s == 7
    assert settings.amqp.amqp_prefetch == 32  # the shared value itself is left as configured


def test_the_ingest_prefetch_defaults_to_256_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRIDLOOP_JWT_SECRET", SECRET)
    monkeypatch.delenv("GRIDLOOP_INGEST_PREFETCH", raising=False)

    assert IngestSettings().consumer_amqp.amqp_prefetch == 256


@pytest.mark.parametrize("value", ["0", "-1", "10001", "many"])
def test_an_ingest_prefetch_out_of_range_is_refused_at_start_up(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("GRIDLOOP_JWT_SECRET", SECRET)
    monkeypatch.setenv("GRIDLOOP_INGEST_PREFETCH", value)

    with pytest.raises(ValidationError, match="ingest_prefetch"):
        IngestSettings()
