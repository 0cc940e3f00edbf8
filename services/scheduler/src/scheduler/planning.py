"""Pure decisions of the command lifecycle: accept or refuse, which command wins, what the device should do.

Nothing here touches the broker, the database or the clock: time comes in as an argument.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from uuid import UUID

from gridloop_common.contracts import (
    BatteryMode,
    Command,
    CommandStatus,
    DeviceAction,
    DeviceMetadata,
    DeviceType,
    InvalidDeviceMetadata,
    PowerMode,
)

__all__ = [
    "ACK_BACKOFF_CAP_S",
    "AVAILABILITY_STALE_AFTER",
    "DISCHARGING_TYPES",
    "END_GRACE",
    "PLANNED_TYPES",
    "RELEASE_MARGIN",
    "ActiveCommand",
    "ControlSource",
    "Decision",
    "DeviceFacts",
    "VersionVerdict",
    "ack_retry_delay_s",
    "action_for",
    "current_action",
    "decide",
    "device_refusal",
    "judge_version",
    "release_known_by",
    "winner",
]

ACK_BACKOFF_CAP_S = 60.0
# An availability report older than this says nothing about the device any more.
AVAILABILITY_STALE_AFTER = timedelta(minutes=5)
# A command's action stays valid this long past the command's end. The end is the scheduler's to carry out:
# its end timer publishes what follows (the next command, or the default) and the agent writes it over the
# command in one write. The device's own revert timer, written to run out with the action, is the net for a
# dead agent or scheduler; ending exactly at the command's end, it would free the device for the ~1 s the
# next action takes to arrive. It must exceed a dispatch pass plus one agent write; the cost is that a device
# whose agent died keeps the command this much past its end.
END_GRACE = timedelta(seconds=5)
# Beyond the agent's revert timer, for a write in flight when the stop went out (one Modbus request may
# take 2 s) and the timer's whole seconds.
RELEASE_MARGIN = timedelta(seconds=3)


@dataclass(frozen=True)
class DeviceFacts:
    """What the scheduler knows of a device from the registry and the agent's last report."""

    name: str
    device_type: str
    active: bool
    max_power_w: float | None
    online: bool | None
    offline_reason: str | None
    observed_at: datetime | None
    has_site_meter: bool
    # Set when the registry's metadata breaks the DeviceMetadata contract: the device is unusable, not guessed at.
    metadata_problem: InvalidDeviceMetadata | None = None

    @classmethod
    def from_registry(
        cls,
        *,
        name: str,
        device_type: str,
        active: bool,
        metadata: object,
        online: bool | None,
        offline_reason: str | None,
        observed_at: datetime | None,
    ) -> DeviceFacts:
        """The registry row read through the DeviceMetadata contract (``metadata`` as the database returned it)."""
        try:
            parsed, problem = DeviceMetadata.from_registry(metadata), None
        except InvalidDeviceMetadata as error:
            parsed, problem = DeviceMetadata(), error
        return cls(
            name=name,
            device_type=device_type,
            active=active,
            max_power_w=parsed.max_power_w,
            online=online,
            offline_reason=offline_reason,
            observed_at=observed_at,
            has_site_meter=parsed.site_meter is not None,
            metadata_problem=problem,
        )


@dataclass(frozen=True)
class Decision:
    """Whether a command can be scheduled, and if not, the reason to send upstream."""

    accepted: bool
    reason: str | None = None


class VersionVerdict(StrEnum):
    """How a received version relates to the stored one."""

    NEW = "new"
    NEWER = "newer"
    SAME = "same"
    STALE = "stale"


def judge_version(*, stored_updated_at: datetime | None, received_updated_at: datetime) -> VersionVerdict:
    """Compare a received command version with the one in force."""
    if stored_updated_at is None:
        return VersionVerdict.NEW
    if received_updated_at > stored_updated_at:
        return VersionVerdict.NEWER
    if received_updated_at == stored_updated_at:
        return VersionVerdict.SAME
    return VersionVerdict.STALE


def decide(command: Command, device: DeviceFacts | None, *, now: datetime) -> Decision:
    """Can this command be scheduled on its device? A refusal's reason is what a person needs to act."""
    if device is None:
        return Decision(False, f"unknown device {command.device_id!r}: no such name in the device registry")
    if not device.active:
        return Decision(False, f"device {device.name!r} is deactivated in the device registry")
    if device.metadata_problem is not None:
        return Decision(False, f"device {device.name!r} has {device.metadata_problem.reason}")
    if device.device_type != DeviceType.BESS:
        return Decision(
            False,
            f"unsupported mode {command.battery_commands.mode}: device {device.name!r} is a "
            f"{device.device_type!r}, not a battery",
        )
    fresh = device.observed_at is not None and now - device.observed_at <= AVAILABILITY_STALE_AFTER
    if device.online is False and fresh:
        return Decision(False, f"device {device.name!r} is offline: {device.offline_reason or 'unreachable'}")
    battery = command.battery_commands
    if battery.power_mode == PowerMode.FOLLOW_LOAD and not device.has_site_meter:
        return Decision(False, f"unsupported mode FOLLOW_LOAD: device {device.name!r} has no site meter configured")
    if battery.setpoint_w is not None and device.max_power_w is not None and battery.setpoint_w > device.max_power_w:
        return Decision(
            False,
            f"setpoint {battery.setpoint_w} W is beyond the device's limit of {device.max_power_w:.0f} W",
        )
    if command.ends_at is not None and command.ends_at <= now:
        return Decision(False, f"command window already ended at {command.ends_at.isoformat()}")
    return Decision(True)


class ControlSource(StrEnum):
    """Who asks a device to do something, highest precedence first (docs/design.md §8).

    A source is a value on each stored control, not a code path: the winner on a device is chosen by
    precedence, then by creation time, whatever the source. The device's own limits and reserve are not a
    source: the device-agent clamps every setpoint to them. Only upstream commands are acknowledged upstream.
    """

    SITE_CAP = "site_cap"
    UPSTREAM_COMMAND = "upstream_command"
    DIRECT_CONTROL = "direct_control"
    PLAN = "plan"

    @property
    def precedence(self) -> int:
        """Higher wins; below every source is the device's default (SELF_CONSUMPTION for a battery)."""
        return len(_SOURCES_BY_PRECEDENCE) - _SOURCES_BY_PRECEDENCE.index(self)

    @property
    def acknowledged_upstream(self) -> bool:
        return self is ControlSource.UPSTREAM_COMMAND


_SOURCES_BY_PRECEDENCE = tuple(ControlSource)


@dataclass(frozen=True)
class ActiveCommand:
    """A control in force on a device, as the winner resolution sees it."""

    command_id: UUID
    created_at: datetime
    starts_at: datetime
    ends_at: datetime | None
    command: Command
    source: ControlSource = ControlSource.UPSTREAM_COMMAND


def winner(candidates: list[ActiveCommand], *, now: datetime) -> ActiveCommand | None:
    """The control of the device at ``now``: of those in their window, the highest source, then the newest created.

    When the winner's window ends, the next in line (a lower source, or an older command) takes over at the
    pass its end timer triggers: a source below is never cancelled by one above, only outranked while it runs.
    """
    in_window = [
        candidate
        for candidate in candidates
        if candidate.starts_at <= now and (candidate.ends_at is None or now < candidate.ends_at)
    ]
    if not in_window:
        return None
    return max(
        in_window,
        key=lambda candidate: (candidate.source.precedence, candidate.created_at, str(candidate.command_id)),
    )


def current_action(
    device_name: str, candidates: list[ActiveCommand], *, now: datetime, action_id: UUID
) -> tuple[ActiveCommand | None, DeviceAction]:
    """The command in force on a device at ``now`` (None: the default mode) and the action that carries it out.

    An upstream SAVINGS command is carried out by the plan in force for the device, when there is one: the
    action is the plan step's, on the command's behalf (its outcome is the command's).
    """
    active = winner(candidates, now=now)
    if active is not None and active.command.battery_commands.mode == BatteryMode.SAVINGS:
        followed = winner([candidate for candidate in candidates if candidate.source is ControlSource.PLAN], now=now)
        if followed is not None:
            return active, action_for(device_name, followed, now=now, action_id=action_id, on_behalf_of=active)
    return active, action_for(device_name, active, now=now, action_id=action_id)


# The device types the optimizer plans (a plan step: power in W, positive into the device).
PLANNED_TYPES = frozenset(
    {
        DeviceType.BESS,
        DeviceType.ON_OFF_EV_CHARGER,
        DeviceType.ELECTRIC_VEHICLE_V1G,
        DeviceType.ELECTRIC_VEHICLE_V2G,
    }
)
# Of those, the ones a negative step (discharge) can be carried out on: an EV charger only with V2G.
DISCHARGING_TYPES = frozenset({DeviceType.BESS, DeviceType.ELECTRIC_VEHICLE_V2G})


def device_refusal(device_name: str, device: DeviceFacts | None, *, discharges: bool = False) -> str | None:
    """Why a plan cannot be carried out on this device (None: it can); ``discharges``: the plan has a negative
    step. A person reads it in a dead letter.

    Batteries and the three EV charger types are planned. An EV step becomes the same action as a battery's
    (CHARGE or DISCHARGE with a SETPOINT in W, STANDBY for 0), which the device-agent's charger path sends as
    a charging profile limit (services/device-agent/README.md, "EV chargers"); only V2G can discharge.
    """
    if device is None:
        return f"unknown device {device_name!r}: no such name in the device registry"
    if not device.active:
        return f"device {device.name!r} is deactivated in the device registry"
    if device.metadata_problem is not None:
        return f"device {device.name!r} has {device.metadata_problem.reason}"
    if device.device_type not in PLANNED_TYPES:
        return f"device {device.name!r} is a {device.device_type!r}: only batteries and EV chargers are planned"
    if discharges and device.device_type not in DISCHARGING_TYPES:
        return (
            f"device {device.name!r} is a {device.device_type!r}: it cannot discharge, and the plan has a"
            " negative step (only bess and electric_vehicle_v2g discharge)"
        )
    return None


def release_known_by(sent_at: datetime, *, revert_timeout_s: float) -> datetime:
    """When a device whose stop went out at ``sent_at`` has released itself even if no agent wrote it.

    Every control the agent writes carries a revert timer of at most ``revert_timeout_s``, refreshed while
    the agent lives; a dead agent's last write was made before the stop was sent.
    """
    return sent_at + timedelta(seconds=revert_timeout_s) + RELEASE_MARGIN


def action_for(
    device_name: str,
    active: ActiveCommand | None,
    *,
    now: datetime,
    action_id: UUID,
    on_behalf_of: ActiveCommand | None = None,
) -> DeviceAction:
    """The device action for the winning command, or the default mode when none is in force.

    The action stays valid ``END_GRACE`` past the command's end (the earlier end, when ``active`` carries out
    ``on_behalf_of``), for the action that follows to replace it.
    """
    if active is None:
        return DeviceAction(
            device_name=device_name, mode=BatteryMode.SELF_CONSUMPTION, issued_at=now, action_id=action_id
        )
    battery = active.command.battery_commands
    if active.command.status != CommandStatus.OK:
        return DeviceAction(
            device_name=device_name, mode=BatteryMode.SELF_CONSUMPTION, issued_at=now, action_id=action_id
        )
    ends = [
        control.ends_at for control in (active, on_behalf_of) if control is not None and control.ends_at is not None
    ]
    ends_at = min(ends) if ends else None
    return DeviceAction(
        command_id=(on_behalf_of or active).command_id,
        device_name=device_name,
        mode=battery.mode,
        power_mode=battery.power_mode,
        setpoint_w=battery.setpoint_w,
        enable_grid_import=battery.enable_grid_import,
        enable_grid_export=battery.enable_grid_export,
        backup_reserve_percentage=battery.backup_reserve_percentage,
        maximum_charge_percentage=battery.maximum_charge_percentage,
        issued_at=now,
        action_id=action_id,
        valid_until=ends_at + END_GRACE if ends_at is not None and ends_at > now else None,
    )


def ack_retry_delay_s(attempts: int) -> float:
    """Seconds before retrying an acknowledgement after ``attempts`` failures (exponential, capped)."""
    return float(min(2 ** max(attempts - 1, 0), ACK_BACKOFF_CAP_S))
