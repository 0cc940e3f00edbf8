"""RPC handlers of the optimizer."""

from __future__ import annotations

import json
from datetime import datetime

from pydantic import ValidationError

from gridloop_common.contracts.forecasts import ExternalForecastRequest
from gridloop_common.messaging import Delivery, PoisonMessage
from optimizer.repository import ForecastRepository

__all__ = ["put_external_forecast", "serve_request"]


async def serve_request(delivery: Delivery) -> bytes:
    """Answer one RPC request, chosen by routing key."""
    if delivery.routing_key == "optimizer.status":
        return json.dumps({"service": "optimizer", "status": "idle"}).encode()
    raise PoisonMessage(f"unknown optimizer request {delivery.routing_key!r}")


def _validation_summary(error: ValidationError) -> str:
    # Each problem with the field it is about, e.g. "values.3: Input should be a finite number".
    return "; ".join(
        f"{'.'.join(str(part) for part in detail['loc']) or 'body'}: {detail['msg']}" for detail in error.errors()[:5]
    )


async def put_external_forecast(delivery: Delivery, forecasts: ForecastRepository, *, now: datetime) -> bytes:
    """``optimizer.forecasts.put`` (RoutingKeys.OPTIMIZER_FORECASTS_PUT): store an external load or PV forecast.

    The body is an ``ExternalForecastRequest``; a body it refuses, or a site with no registered device, is a
    PoisonMessage naming the field, which the RPC layer returns to the caller as the error. From ``now`` on
    it wins over the forecast from telemetry wherever it covers a step, until it expires. Replies with what
    was stored.
    """
    try:
        request = ExternalForecastRequest.model_validate_json(delivery.body)
    except ValidationError as error:
        raise PoisonMessage(f"invalid forecast: {_validation_summary(error)}") from error
    if not await forecasts.site_exists(request.site):
        # Stored, it would wait silently for a site that never plans.
        raise PoisonMessage(f"invalid forecast: site: no device is registered at site {request.site!r}")
    stored = await forecasts.store_external(request, received_at=now)
    return json.dumps(
        {
            "forecast_id": stored.forecast_id,
            "site": request.site,
            "quantity": request.quantity.value,
            "start": request.start.isoformat(),
            "end": stored.end.isoformat(),
            "step": request.step,
            "steps": len(request.values),
            "expires_at": stored.expires_at.isoformat(),
        }
    ).encode()
