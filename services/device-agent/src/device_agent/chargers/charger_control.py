"""Control of one connected charger: an action becomes a charging profile the charger must accept.

Every profile is confirmed by the charger's answer (``Accepted``); anything else is a failed outcome with the
charger's own status and reason. While an action holds, its profile is sent again at a third of its validity
with a later ``validTo``, so the charger keeps it for as long as the agent lives and drops it by itself
(falling back to its own default) at most ``hold_s`` after the agent is gone.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from ocpp.exceptions import OCPPError
from ocpp.v16 import call as call16
from ocpp.v21 import call as call21
from ocpp.v201 import call as call201

from device_agent.chargers.charging_profile import (
    CarState,
    ChargerLimits,
    ChargingLimitPlan,
    UnsupportedAction,
    plan_charging_limit,
    profile_request_2x,
    profile_request_16,
)
from device_agent.chargers.profile_confirmation import (
    DEFAULT_SETTLE_S,
    ProfileExpectation,
    Verdict,
    confirm_profile,
)
from device_agent.repository import RegisteredCharger
from gridloop_common.clock import Clock
from gridloop_common.contracts import DeviceAction, DeviceOutcome

__all__ = ["ChargerControl"]

logger = logging.getLogger(__name__)

_CALLS_2X: dict[str, Any] = {"ocpp2.0.1": call201, "ocpp2.1": call21}
# Profile ids only need to be unique per charger and positive; one counter for the process is enough.
_PROFILE_IDS = itertools.count(1)


class ChargerControl:
    """The actions of one charger connection: apply (confirmed), keep alive, replace."""

    def __init__(
        self,
        charger: RegisteredCharger,
        charge_point: Any,
        *,
        car: Callable[[], CarState],
        clock: Clock,
        hold_s: float,
        settle_s: float = DEFAULT_SETTLE_S,
    ) -> None:
        self.charger = charger
        self._settle_s = settle_s
        self._car = car
        self._charge_point = charge_point
        self._clock = clock
        self._hold_s = hold_s
        self._limits = ChargerLimits.of(
            charger.device_type,
            max_power_kw=charger.max_power_kw,
            phases=charger.phases,
            min_current_a=charger.min_current_a,
        )
        self._lock = asyncio.Lock()
        self._keeper: asyncio.Task[None] | None = None
        self.held: DeviceAction | None = None
        # The profile last accepted, until the next meter values confirm it or not (observe).
        self.expectation: ProfileExpectation | None = None

    async def apply(self, action: DeviceAction) -> DeviceOutcome:
        """Send ``action``'s profile and report what the charger answered."""
        self._stop_keeping()
        async with self._lock:
            now = self._clock.now()
            try:
                plan = plan_charging_limit(action, self._limits, now=now, hold_s=self._hold_s, car=self._car())
            except UnsupportedAction as refused:
                return self._outcome(action, applied=False, reason=str(refused))
            refusal = await self._send(plan)
            if refusal is not None:
                self.expectation = None
                return self._outcome(action, applied=False, reason=refusal)
            self.held = action
            # A release restates the charger's own default: nothing of gridloop's to confirm.
            self.expectation = (
                None
                if plan.released
                else ProfileExpectation(
                    action_id=action.action_id,
                    command_id=action.command_id,
                    limit_w=plan.limit_w,
                    accepted_at=self._clock.now(),
                    settle_s=self._settle_s,
                )
            )
        if not plan.released:
            self._keeper = asyncio.create_task(self._keep_alive(action), name=f"ocpp-keep-{self.charger.name}")
        return self._outcome(action, applied=True, reason=plan.note, applied_setpoint_w=round(abs(plan.limit_w)))

    def observe(self, power_w: float | None, *, measured_at: datetime) -> DeviceOutcome | None:
        """The failed outcome of the accepted profile if this meter value shows the charger past its limit.

        The first meter value after the profile has settled decides, once: conforming (or unmeasured) ends the
        check; a charger past its limit fails the action with the measured power.
        """
        expectation = self.expectation
        if expectation is None:
            return None
        confirmation = confirm_profile(expectation, power_w, measured_at=measured_at, device_name=self.charger.name)
        if confirmation.verdict is Verdict.WAITING:
            return None
        self.expectation = None
        if confirmation.verdict is Verdict.UNMEASURED:
            logger.info(
                "charging profile not confirmed: no power in the meter values", extra={"device": self.charger.name}
            )
            return None
        if confirmation.verdict is Verdict.CONFORMS:
            logger.debug("charging profile confirmed", extra={"device": self.charger.name, "power_w": power_w})
            return None
        logger.warning(
            "charger exceeds its charging profile",
            extra={"device": self.charger.name, "power_w": power_w, "limit_w": expectation.limit_w},
        )
        return DeviceOutcome(
            action_id=expectation.action_id,
            command_id=expectation.command_id,
            device_name=self.charger.name,
            applied=False,
            reason=confirmation.reason,
            observed_at=measured_at,
        )

    def close(self) -> None:
        """The connection is gone: stop renewing (the charger drops the profile at its validTo)."""
        self._stop_keeping()

    def _stop_keeping(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            self._keeper = None

    async def _keep_alive(self, action: DeviceAction) -> None:
        while True:
            await self._clock.sleep(self._hold_s / 3)
            now = self._clock.now()
            if action.valid_until is not None and now >= action.valid_until:
                return  # the action is over: its last profile ends with it
            async with self._lock:
                plan = plan_charging_limit(action, self._limits, now=now, hold_s=self._hold_s, car=self._car())
                refusal = await self._send(plan)
            if refusal is not None:
                logger.warning("charging profile not renewed", extra={"device": self.charger.name, "reason": refusal})

    async def _send(self, plan: ChargingLimitPlan) -> str | None:
        """Send the profile; None when the charger accepted it, else why not (for a failed outcome)."""
        now = self._clock.now()
        profile_id = next(_PROFILE_IDS)
        protocol = self.charger.protocol
        if protocol == "ocpp1.6":
            request = call16.SetChargingProfile(**profile_request_16(plan, profile_id=profile_id, now=now))
        else:
            request = _CALLS_2X[protocol].SetChargingProfile(
                **profile_request_2x(plan, profile_id=profile_id, now=now, version=protocol)
            )
        try:
            answer = await self._charge_point.call(request, suppress=False)
        except TimeoutError:
            return f"charger {self.charger.name} did not answer the charging profile"
        except OCPPError as error:
            return f"charger {self.charger.name} answered the charging profile with an error: {error}"
        status = str(getattr(answer.status, "value", answer.status))
        if status == "Accepted":
            logger.info(
                "charging profile accepted",
                extra={"device": self.charger.name, "limit_w": plan.limit_w, "valid_to": plan.valid_to.isoformat()},
            )
            return None
        details = ""
        status_info = getattr(answer, "status_info", None)
        if isinstance(status_info, dict):
            details = ": " + ", ".join(
                str(status_info[key]) for key in ("reason_code", "additional_info") if status_info.get(key)
            )
        return f"charger {self.charger.name} rejected the charging profile ({status}{details})"

    def _outcome(
        self, action: DeviceAction, *, applied: bool, reason: str | None, applied_setpoint_w: int | None = None
    ) -> DeviceOutcome:
        return DeviceOutcome(
            action_id=action.action_id,
            command_id=action.command_id,
            device_name=self.charger.name,
            applied=applied,
            reason=reason,
            applied_setpoint_w=applied_setpoint_w if applied else None,
            observed_at=self._clock.now(),
        )
