"""What `gridloop up` shows being followed: a time-of-use tariff for today, posted through the gateway.

The peak starts on the first 10-minute boundary at least 20 minutes ahead and lasts an hour, at the simulators'
site. The optimizer plans the rest of the day on it: the simulated battery charges off-peak and covers the
simulated meter's load during the peak (export earns nothing). The scheduler logs each handover ("control
handed over" to source plan), the device-agent each write, and `gridloop plans show RUN_ID` prints the plan.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import httpx

from gridloop_common.clock import Clock

__all__ = ["DEMO_SITE", "demo_tariff", "post_demo_tariff"]

DEMO_SITE = "SIM"
_STEP = timedelta(minutes=10)
_LEAD = timedelta(minutes=20)
_PEAK = timedelta(hours=1)


def demo_tariff(now: datetime) -> dict[str, Any]:
    """The body of ``POST /toutariff`` for the demo, as of ``now`` (aware, UTC: the simulators' site has no row in
    flux.mg_sites, so its time zone is UTC)."""
    lead = now + _LEAD
    start_peak = lead + (-(lead - lead.replace(hour=0, minute=0, second=0, microsecond=0)) % _STEP)
    start_peak = start_peak.replace(second=0, microsecond=0)
    day = start_peak.replace(hour=0, minute=0)
    return {
        "site": DEMO_SITE,
        "date": day.isoformat(),
        "start_peak": start_peak.isoformat(),
        "stop_peak": (start_peak + _PEAK).isoformat(),
        "off_peak_value": 0.05,
        "on_peak_value": 0.40,
    }


async def post_demo_tariff(
    gateway_url: str, *, key: str, clock: Clock, attempts: int = 12, retry_after_s: float = 5.0
) -> str:
    """Post the demo tariff; returns the line `gridloop up` prints about it.

    A battery is planned once it has reported its state of charge; until then the optimizer leaves it out (and
    says so), so the post is repeated until no device is left out, or ``attempts`` have been made.
    """
    answer: dict[str, Any] = {}
    body = demo_tariff(clock.now())
    for attempt in range(attempts):
        body = demo_tariff(clock.now())
        try:
            async with httpx.AsyncClient(timeout=30.0) as client:
                response = await client.post(
                    f"{gateway_url.rstrip('/')}/toutariff", json=body, headers={"Authorization": f"Bearer {key}"}
                )
        except httpx.HTTPError as error:
            return f"demo: the ToU tariff could not be posted ({type(error).__name__}: {error})"
        if response.status_code != 200:
            return f"demo: the ToU tariff was refused: HTTP {response.status_code} {response.text[:300]}"
        answer = response.json()
        if not answer.get("left_out") or attempt == attempts - 1:
            break
        await asyncio.sleep(retry_after_s)
    if answer.get("left_out"):
        return f"demo: ToU tariff posted, but devices were left out of its plan: {answer['left_out']}"
    return (
        f"demo: ToU tariff posted for site {DEMO_SITE}, peak {body['start_peak'][11:16]}-{body['stop_peak'][11:16]}"
        f" UTC at {body['on_peak_value']}/kWh, off-peak {body['off_peak_value']}/kWh; run {answer.get('run_id')}"
        f" ({answer.get('state')}). The battery follows it: scheduler 'control handed over' lines,"
        f" `gridloop plans show {answer.get('run_id')}`"
    )
