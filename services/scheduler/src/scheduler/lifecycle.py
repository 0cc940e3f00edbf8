"""The command lifecycle in one place: its states, and for every event what to write.

Each event the scheduler handles (a received version, a timer pass, a resync request, an agent outcome, a
refusal before a command could be read) has one pure function here that takes what was read and the time,
and returns a ``LifecyclePlan``: the rows to store, the state transitions, the history lines and the
acknowledgements to queue. ``CommandRepository.store`` writes a plan in one statement and decides nothing.
Every acknowledgement the scheduler sends upstream is queued by a function of this module (``_acknowledge``).

The README's state diagram is ``TRANSITIONS``; a test holds them equal.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID, uuid5

from gridloop_common.contracts import BatteryMode, Command, CommandStatus, DeviceAction, DeviceOutcome, DevicePlan
from scheduler import planning
from scheduler.planning import ActiveCommand, ControlSource, DeviceFacts

__all__ = [
    "RUNNING",
    "TRANSITIONS",
    "Ack",
    "AckStatus",
    "CommandLook",
    "CommandState",
    "DeviceDispatch",
    "DispatchFacts",
    "DueTimer",
    "Guard",
    "Handover",
    "HistoryEntry",
    "HistoryKind",
    "LifecyclePlan",
    "NewTimer",
    "PlanLook",
    "PlanResult",
    "ReceiveResult",
    "RunningCommand",
    "StoreResult",
    "TimerKind",
    "Transition",
    "command_row",
    "plan_device_plan",
    "plan_dispatch",
    "plan_outcome",
    "plan_refusal",
    "plan_resync",
    "plan_version",
]


class CommandState(StrEnum):
    SCHEDULED = "scheduled"
    ACTIVE = "active"
    COMPLETED = "completed"
    CANCELED = "canceled"
    FAILED = "failed"


# A command in one of these states may still drive its device: it has timers to fire or is in force.
RUNNING = frozenset({CommandState.SCHEDULED, CommandState.ACTIVE})


class ReceiveResult(StrEnum):
    """What receiving one command version did (the ``result`` label of gridloop_scheduler_commands_total)."""

    NEW = "new"
    UPDATED = "updated"
    DUPLICATE = "duplicate"
    STALE = "stale"
    FAILED = "failed"
    CANCELED = "canceled"


class StoreResult(StrEnum):
    """What storing a plan did: written, already stored (a redelivery), or decided on what has changed since."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    CHANGED = "changed"


class PlanResult(StrEnum):
    """What receiving one device plan did."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    STALE = "stale"
    REFUSED = "refused"


class AckStatus(StrEnum):
    OK = "OK"
    FAILED = "FAILED"


class TimerKind(StrEnum):
    START = "start"
    END = "end"
    STOP = "stop"


class HistoryKind(StrEnum):
    RECEIVED = "received"
    STALE = "stale"
    SCHEDULED = "scheduled"
    ACTIVE = "active"
    COMPLETED = "completed"
    CANCELED = "canceled"
    FAILED = "failed"
    DISPATCHED = "dispatched"
    OUTCOME = "outcome"
    AWAITING_RELEASE = "awaiting release"
    RELEASED = "released"
    ACKNOWLEDGED = "acknowledged"


# Every state change the lifecycle makes: (from, to, why). None is "no stored command yet". The scheduler
# README draws exactly these (tests/test_lifecycle_plans.py compares them).
TRANSITIONS: frozenset[tuple[CommandState | None, CommandState, str]] = frozenset(
    {(None, CommandState.SCHEDULED, "accepted")}
    | {(None, CommandState.FAILED, "refused")}
    | {(None, CommandState.CANCELED, "canceled upstream")}
    | {(state, CommandState.SCHEDULED, "newer version accepted") for state in CommandState}
    | {(state, CommandState.FAILED, "newer version refused") for state in CommandState}
    | {(state, CommandState.CANCELED, "canceled upstream") for state in CommandState}
    | {(CommandState.SCHEDULED, CommandState.ACTIVE, "wins its device at a timer pass")}
    | {(CommandState.ACTIVE, CommandState.SCHEDULED, "outranked at a timer pass")}
    | {(state, CommandState.COMPLETED, "window over at a timer pass") for state in RUNNING}
    | {(state, CommandState.FAILED, "device outcome failed") for state in RUNNING}
    | {(None, CommandState.SCHEDULED, "planned")}
    | {(state, CommandState.CANCELED, "superseded by a newer plan") for state in RUNNING}
)


# -- what the decisions read ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CommandLook:
    """What the scheduler sees before deciding on a received version."""

    version_known: bool
    stored_updated_at: datetime | None
    stored_state: str | None
    device: DeviceFacts | None

    @property
    def running(self) -> bool:
        return self.stored_state in RUNNING


@dataclass(frozen=True)
class PlanLook:
    """What the scheduler sees before carrying out a device plan."""

    known: bool  # this plan is stored already
    newest_issued_at: datetime | None  # of the plans stored for the device
    superseded: tuple[UUID, ...]  # the device's running plan steps, which a newer plan replaces
    device: DeviceFacts | None


@dataclass(frozen=True)
class DueTimer:
    id: int
    device_id: str
    command_id: UUID | None
    kind: TimerKind


@dataclass(frozen=True)
class NewTimer:
    device_id: str
    command_id: UUID | None
    kind: TimerKind
    due_at: datetime


@dataclass(frozen=True)
class RunningCommand:
    """A command in a running state on a device, whatever its upstream status."""

    command_id: UUID
    state: CommandState
    ends_at: datetime | None


@dataclass(frozen=True)
class DispatchFacts:
    """What a timer pass or a resync reads about its devices, under their locks."""

    in_force: dict[str, list[ActiveCommand]]  # by device: the controls that may win
    running: dict[str, list[RunningCommand]]  # by device: every command whose state a pass may settle
    correlation_ids: dict[UUID, str | None]
    states: dict[UUID, str] = field(default_factory=dict)  # of the commands asked about and those running
    sources: dict[UUID, ControlSource] = field(default_factory=dict)  # of the same commands


# -- what the decisions return --------------------------------------------------------------------------


@dataclass(frozen=True)
class Guard:
    """Store the plan only if the stored command is still as it was seen (else: ``StoreResult.CHANGED``)."""

    command_id: UUID
    seen_updated_at: datetime | None
    seen_running: bool


@dataclass(frozen=True)
class Ack:
    """An acknowledgement to PATCH upstream. ``due_at`` None: at once. ``release_action_id``: held until the
    agent confirms that action's write (or ``due_at``, when the device has surely released itself)."""

    command_id: UUID
    status: AckStatus
    reason: str | None = None
    due_at: datetime | None = None
    release_action_id: UUID | None = None


@dataclass(frozen=True)
class Transition:
    """Move a command to ``to_state`` if it is still in one of ``from_states``, with what follows from it."""

    command_id: UUID
    from_states: frozenset[CommandState]
    to_state: CommandState
    reason: str | None = None  # the new state_reason; None keeps the stored one
    history: str | None = None  # the history line's detail (its kind is the new state); None writes none
    ack: Ack | None = None  # queued only if the transition happens
    sources: frozenset[ControlSource] = frozenset(ControlSource)  # only a command of one of these sources moves


@dataclass(frozen=True)
class HistoryEntry:
    command_id: UUID
    kind: HistoryKind
    detail: str


@dataclass(frozen=True)
class LifecyclePlan:
    """Everything one event writes, in the order ``CommandRepository.store`` applies it.

    A plan with a ``version`` or an ``outcome`` stores it once: if it is already stored the rest is not
    written (``StoreResult.DUPLICATE``), so a redelivered message changes nothing.
    """

    guard: Guard | None = None
    # (device, newest plan seen): store only if the device's newest stored plan is still that one.
    plan_guard: tuple[str, datetime | None] | None = None
    version: dict[str, Any] | None = None  # a scheduler.command_versions row
    # The action whose confirmed write frees the OKs held for it: applied even when the outcome below is a
    # duplicate, since the agent reports a failed attempt and a successful retry of one action with one id.
    release_acks_of: UUID | None = None
    outcome: dict[str, Any] | None = None  # a scheduler.device_outcomes row
    hold_acks: tuple[str, UUID] | None = None  # (device, action): held OKs of the device now wait on this action
    device_plan: dict[str, Any] | None = None  # a scheduler.device_plans row
    stale_command_id: UUID | None = None
    commands: tuple[dict[str, Any], ...] = ()  # scheduler.commands rows, inserted or replacing the stored ones
    last_outcome: tuple[UUID, dict[str, Any]] | None = None
    cancel_timers_of: tuple[UUID, ...] = ()  # these commands' unfired timers are dropped, before ``timers`` are set
    timers: tuple[NewTimer, ...] = ()
    fired: tuple[tuple[int, UUID, datetime], ...] = ()  # (timer, action, fired_at)
    transitions: tuple[Transition, ...] = ()
    history: tuple[HistoryEntry, ...] = ()
    acks: tuple[Ack, ...] = ()

    def document(self) -> dict[str, Any]:
        """The plan as the JSON object ``scheduler.store_plan`` reads (absent keys: nothing to do)."""
        document: dict[str, Any] = {}
        if self.guard is not None:
            document["guard"] = {
                "command_id": str(self.guard.command_id),
                "seen_updated_at": _timestamp(self.guard.seen_updated_at),
                "seen_running": self.guard.seen_running,
                "running_states": sorted(RUNNING),
            }
        if self.plan_guard is not None:
            document["plan_guard"] = {
                "device_id": self.plan_guard[0],
                "newest_issued_at": _timestamp(self.plan_guard[1]),
            }
        for key in ("version", "outcome", "device_plan"):
            row = getattr(self, key)
            if row is not None:
                document[key] = row
        if self.commands:
            document["commands"] = list(self.commands)
        if self.hold_acks is not None:
            document["hold_acks"] = {"device_id": self.hold_acks[0], "action_id": str(self.hold_acks[1])}
        if self.release_acks_of is not None:
            document["release"] = {
                "action_id": str(self.release_acks_of),
                "detail": f"the agent confirmed the releasing write (action {self.release_acks_of})",
            }
        if self.stale_command_id is not None:
            document["stale_command_id"] = str(self.stale_command_id)
        if self.last_outcome is not None:
            document["last_outcome"] = {"command_id": str(self.last_outcome[0]), "outcome": self.last_outcome[1]}
        if self.cancel_timers_of:
            document["cancel_timers_of"] = [str(command_id) for command_id in self.cancel_timers_of]
        if self.timers:
            document["timers"] = [
                {
                    "device_id": timer.device_id,
                    "command_id": str(timer.command_id) if timer.command_id else None,
                    "kind": timer.kind,
                    "due_at": _timestamp(timer.due_at),
                }
                for timer in self.timers
            ]
        if self.fired:
            document["fired"] = [
                {"id": timer_id, "action_id": str(action_id), "fired_at": _timestamp(at)}
                for timer_id, action_id, at in self.fired
            ]
        if self.transitions:
            document["transitions"] = [_transition_document(transition) for transition in self.transitions]
        if self.history:
            document["history"] = [
                {"command_id": str(entry.command_id), "kind": entry.kind, "detail": entry.detail}
                for entry in self.history
            ]
        if self.acks:
            document["acks"] = [_ack_document(ack) for ack in self.acks]
        return document


@dataclass(frozen=True)
class DeviceDispatch:
    """What one device gets from a timer pass or a resync: its action, and the timers it answers."""

    device_id: str
    timers: tuple[DueTimer, ...]
    action: DeviceAction
    active: ActiveCommand | None
    trace: str | None
    # The control that was active on the device before (None: the default), when another takes over now.
    handover: Handover | None = None

    @property
    def described(self) -> str:
        return f"{self.action.mode}" + (f" {self.action.setpoint_w} W" if self.action.setpoint_w else "")


@dataclass(frozen=True)
class Handover:
    """The device passes from one control to another (None: the device's default)."""

    from_command: UUID | None
    from_source: ControlSource | None
    to_command: UUID | None
    to_source: ControlSource | None


# -- the decisions --------------------------------------------------------------------------------------


def plan_version(
    command: Command, seen: CommandLook, *, event_type: str, correlation_id: str | None, now: datetime
) -> tuple[ReceiveResult, LifecyclePlan, str | None]:
    """Receiving ``command`` given what was seen: the result, what to write, and a refusal's reason."""
    guard = Guard(command.id, seen.stored_updated_at, seen.running)
    body = command.model_dump(mode="json")
    version = {
        "command_id": str(command.id),
        "updated_at": _timestamp(command.updated_at),
        "event_type": event_type,
        "correlation_id": correlation_id,
        "command": body,
    }
    verdict = planning.judge_version(stored_updated_at=seen.stored_updated_at, received_updated_at=command.updated_at)
    if verdict == planning.VersionVerdict.STALE:
        assert seen.stored_updated_at is not None
        detail = f"version {command.updated_at.isoformat()} ignored: {seen.stored_updated_at.isoformat()} is in force"
        return (
            ReceiveResult.STALE,
            LifecyclePlan(
                guard=guard,
                version=version,
                stale_command_id=command.id,
                history=(HistoryEntry(command.id, HistoryKind.STALE, detail),),
            ),
            None,
        )
    received = HistoryEntry(
        command.id,
        HistoryKind.RECEIVED,
        f"{event_type} version {command.updated_at.isoformat()} status={command.status}"
        f" mode={command.battery_commands.mode}",
    )

    def stored(state: CommandState, reason: str | None, timers: Iterable[tuple[TimerKind, datetime]]) -> LifecyclePlan:
        return LifecyclePlan(
            guard=guard,
            version=version,
            commands=(command_row(command, state=state, reason=reason, correlation_id=correlation_id, body=body),),
            cancel_timers_of=(command.id,),
            timers=tuple(NewTimer(command.device_id, command.id, kind, due) for kind, due in timers),
        )

    if command.status in (CommandStatus.CANCELED, CommandStatus.OPT_OUT):
        # The stop timer returns the device to what is below; the pass that sends it queues the cancellation's OK.
        plan = stored(CommandState.CANCELED, f"{command.status} by upstream", [(TimerKind.STOP, now)])
        history = (
            received,
            HistoryEntry(command.id, HistoryKind.CANCELED, f"{command.status}: stopping on the device"),
        )
        return ReceiveResult.CANCELED, _with(plan, history=history), None
    decision = planning.decide(command, seen.device, now=now)
    if not decision.accepted:
        reason = decision.reason or "refused"
        # A version that fails after an earlier one was accepted must also leave the device.
        plan = stored(CommandState.FAILED, decision.reason, [(TimerKind.STOP, now)] if seen.running else [])
        history = (received, HistoryEntry(command.id, HistoryKind.FAILED, reason))
        return (
            ReceiveResult.FAILED,
            _with(plan, history=history, acks=(_acknowledge(command.id, AckStatus.FAILED, decision.reason),)),
            decision.reason,
        )
    scheduled = f"start at {max(command.starts_at, now).isoformat()}" + (
        f", end at {command.ends_at.isoformat()}" if command.ends_at else ", no end (until replaced)"
    )
    caveats = "; ".join(command.battery_commands.caveats()) or None
    # A late arrival starts at once, for what remains of its window.
    timers = [(TimerKind.START, max(command.starts_at, now))]
    if command.ends_at is not None:
        timers.append((TimerKind.END, command.ends_at))
    plan = stored(CommandState.SCHEDULED, None, timers)
    history = (
        received,
        HistoryEntry(command.id, HistoryKind.SCHEDULED, f"{scheduled}; {caveats}" if caveats else scheduled),
    )
    result = ReceiveResult.NEW if verdict == planning.VersionVerdict.NEW else ReceiveResult.UPDATED
    return result, _with(plan, history=history, acks=(_acknowledge(command.id, AckStatus.OK, caveats),)), None


def plan_dispatch(
    timers: list[DueTimer],
    facts: DispatchFacts,
    *,
    now: datetime,
    action_ids: dict[str, UUID],
    release_known_by: datetime,
) -> tuple[list[DeviceDispatch], LifecyclePlan]:
    """One timer pass: each device's action, and what the pass writes once the actions are confirmed.

    ``action_ids`` gives each device's action id (derived from its first timer, so a re-fire after a crash
    carries the same id). A cancelled command's stop went out: its OK is held until the agent confirms the
    write, or until ``release_known_by``, when the device's revert timer has surely run out.
    """
    by_device: dict[str, list[DueTimer]] = {}
    for timer in timers:
        by_device.setdefault(timer.device_id, []).append(timer)
    dispatches = []
    for device_id in sorted(by_device):
        device_timers = by_device[device_id]
        active, action = planning.current_action(
            device_id, facts.in_force[device_id], now=now, action_id=action_ids[device_id]
        )
        trace_command = active.command_id if active else device_timers[0].command_id
        trace = facts.correlation_ids.get(trace_command) if trace_command else None
        dispatches.append(
            DeviceDispatch(
                device_id,
                tuple(device_timers),
                action,
                active,
                trace,
                _handover(device_id, action, active, facts, tuple(device_timers)),
            )
        )
    held = [
        (timer.command_id, dispatch.action.action_id)
        for dispatch in dispatches
        for timer in dispatch.timers
        if timer.kind == TimerKind.STOP
        and timer.command_id is not None
        and facts.states.get(timer.command_id) == CommandState.CANCELED
        and facts.sources.get(timer.command_id, ControlSource.UPSTREAM_COMMAND).acknowledged_upstream
    ]
    history = [
        HistoryEntry(
            timer.command_id, HistoryKind.DISPATCHED, f"{timer.kind}: {dispatch.device_id} -> {dispatch.described}"
        )
        for dispatch in dispatches
        for timer in dispatch.timers
        if timer.command_id is not None
    ] + [
        HistoryEntry(
            command_id,
            HistoryKind.AWAITING_RELEASE,
            f"OK once the agent confirms the releasing write, at the latest {release_known_by.isoformat()}"
            " (the device's revert timer)",
        )
        for command_id, _ in held
    ]
    plan = LifecyclePlan(
        fired=tuple((timer.id, dispatch.action.action_id, now) for dispatch in dispatches for timer in dispatch.timers),
        transitions=_settle(dispatches, facts, now=now),
        history=tuple(history),
        acks=tuple(
            _acknowledge(command_id, AckStatus.OK, None, due_at=release_known_by, release_action_id=action_id)
            for command_id, action_id in held
        ),
    )
    return dispatches, plan


def plan_resync(
    device_id: str, facts: DispatchFacts, *, now: datetime, action_id: UUID, reason: str
) -> tuple[DeviceDispatch, LifecyclePlan]:
    """Answer an agent that has just taken ``device_id``: its current action, as a timer pass would resolve it.

    The answer carries what followed any cancellation held on this device (a stop published while the agent
    was away may never be written): its confirmed write releases those OKs too.
    """
    active, action = planning.current_action(device_id, facts.in_force[device_id], now=now, action_id=action_id)
    dispatch = DeviceDispatch(
        device_id,
        (),
        action,
        active,
        facts.correlation_ids.get(active.command_id) if active else None,
        _handover(device_id, action, active, facts),
    )
    history = (
        (
            HistoryEntry(
                active.command_id, HistoryKind.DISPATCHED, f"resync ({reason}): {device_id} -> {dispatch.described}"
            ),
        )
        if active is not None
        else ()
    )
    plan = LifecyclePlan(
        hold_acks=(device_id, action.action_id), transitions=_settle([dispatch], facts, now=now), history=history
    )
    return dispatch, plan


def plan_outcome(outcome: DeviceOutcome) -> LifecyclePlan:
    """An agent's outcome, stored once. A failed write fails its command if it is still running (FAILED ack);
    an applied one frees the OKs of cancellations held for this action's write."""
    row = {
        "action_id": str(outcome.action_id),
        "command_id": str(outcome.command_id) if outcome.command_id else None,
        "device_id": outcome.device_name,
        "applied": outcome.applied,
        "reason": outcome.reason,
        "applied_setpoint_w": outcome.applied_setpoint_w,
        "observed_at": _timestamp(outcome.observed_at),
    }
    release = outcome.action_id if outcome.applied else None
    if outcome.command_id is None:
        return LifecyclePlan(outcome=row, release_acks_of=release)
    detail = (
        f"applied on {outcome.device_name}"
        + (f" at {outcome.applied_setpoint_w} W" if outcome.applied_setpoint_w is not None else "")
        if outcome.applied
        else f"failed on {outcome.device_name}: {outcome.reason}"
    )
    upstream = frozenset(source for source in ControlSource if source.acknowledged_upstream)
    failure = (
        ()
        if outcome.applied
        else (
            Transition(
                outcome.command_id,
                RUNNING,
                CommandState.FAILED,
                reason=outcome.reason,
                ack=_acknowledge(outcome.command_id, AckStatus.FAILED, outcome.reason),
                sources=upstream,
            ),
            # The other sources are gridloop's own: nobody upstream to tell.
            Transition(
                outcome.command_id,
                RUNNING,
                CommandState.FAILED,
                reason=outcome.reason,
                sources=frozenset(ControlSource) - upstream,
            ),
        )
    )
    return LifecyclePlan(
        outcome=row,
        release_acks_of=release,
        history=(HistoryEntry(outcome.command_id, HistoryKind.OUTCOME, detail),),
        last_outcome=(outcome.command_id, outcome.model_dump(mode="json")),
        transitions=failure,
    )


def plan_device_plan(
    plan: DevicePlan, seen: PlanLook, *, now: datetime
) -> tuple[PlanResult, LifecyclePlan | None, str | None]:
    """Carrying out the optimizer's plan for one device: its steps become controls of source PLAN.

    Each step is a control from its start to its end (so it expires by itself), below upstream commands and
    direct control. A newer plan supersedes the running steps of the older ones; steps already over are not
    stored; an older plan arriving late, or one for a device that cannot be planned, changes nothing.
    """
    if seen.known:
        return PlanResult.DUPLICATE, None, None
    if seen.newest_issued_at is not None and plan.issued_at <= seen.newest_issued_at:
        reason = f"plan issued at {plan.issued_at.isoformat()} ignored: {seen.newest_issued_at.isoformat()} is newer"
        return PlanResult.STALE, None, reason
    refusal = planning.device_refusal(
        plan.device_name, seen.device, discharges=any(step.power_w < 0 for step in plan.steps)
    )
    if refusal is not None:
        return PlanResult.REFUSED, None, refusal
    device = plan.device_name
    remaining = [(index, step) for index, step in enumerate(plan.steps) if step.ends_at > now]
    commands, timers, history = [], [], []
    for index, step in remaining:
        step_command = _step_command(plan, index)
        commands.append(
            command_row(
                step_command, state=CommandState.SCHEDULED, reason=None, correlation_id=None, source=ControlSource.PLAN
            )
        )
        # A step that has begun starts at once, for what remains of it.
        timers.append(NewTimer(device, step_command.id, TimerKind.START, max(step.starts_at, now)))
        timers.append(NewTimer(device, step_command.id, TimerKind.END, step.ends_at))
        history.append(
            HistoryEntry(
                step_command.id,
                HistoryKind.SCHEDULED,
                f"{plan.kind} plan {plan.plan_id} (run {plan.run_id}) step {index + 1}/{len(plan.steps)}:"
                f" {step.power_w} W from {step.starts_at.isoformat()} to {step.ends_at.isoformat()}",
            )
        )
    if seen.superseded:
        # What replaces the old steps now: the new plan's current step, or what is below the plan.
        # Named after the earliest superseded step (the one in force, if any), so the handover names it.
        timers.append(NewTimer(device, seen.superseded[0], TimerKind.STOP, now))
    return (
        PlanResult.APPLIED,
        LifecyclePlan(
            plan_guard=(device, seen.newest_issued_at),
            device_plan={
                "plan_id": str(plan.plan_id),
                "device_id": device,
                "run_id": str(plan.run_id),
                "kind": plan.kind,
                "issued_at": _timestamp(plan.issued_at),
                "steps": len(plan.steps),
            },
            commands=tuple(commands),
            cancel_timers_of=seen.superseded,
            timers=tuple(timers),
            transitions=tuple(
                Transition(
                    step_id,
                    RUNNING,
                    CommandState.CANCELED,
                    reason=f"superseded by plan {plan.plan_id}",
                    history=f"superseded by {plan.kind} plan {plan.plan_id}",
                    sources=frozenset({ControlSource.PLAN}),
                )
                for step_id in seen.superseded
            ),
            history=tuple(history),
        ),
        None,
    )


def plan_refusal(command_id: UUID, reason: str) -> LifecyclePlan:
    """A command refused before it could be read whole (bad JSON, an invalid command, an unstorable value)."""
    return LifecyclePlan(
        history=(HistoryEntry(command_id, HistoryKind.FAILED, reason),),
        acks=(_acknowledge(command_id, AckStatus.FAILED, reason),),
    )


# -- helpers --------------------------------------------------------------------------------------------


def _acknowledge(
    command_id: UUID,
    status: AckStatus,
    reason: str | None,
    *,
    due_at: datetime | None = None,
    release_action_id: UUID | None = None,
) -> Ack:
    """The one place an acknowledgement upstream is made."""
    return Ack(command_id, status, reason, due_at, release_action_id)


def _handover(
    device_id: str,
    action: DeviceAction,
    active: ActiveCommand | None,
    facts: DispatchFacts,
    timers: tuple[DueTimer, ...] = (),
) -> Handover | None:
    """Who had the device and who has it now, when that changes (the design asks for every handover logged).

    A cancelled control is no longer running when its stop fires: the stop timer names it.
    """
    before = next(
        (command.command_id for command in facts.running.get(device_id, []) if command.state == CommandState.ACTIVE),
        None,
    ) or next(
        (
            timer.command_id
            for timer in timers
            if timer.kind == TimerKind.STOP
            and timer.command_id is not None
            and facts.states.get(timer.command_id) == CommandState.CANCELED
        ),
        None,
    )
    after = action.command_id
    if before == after:
        return None
    return Handover(
        from_command=before,
        from_source=facts.sources.get(before) if before else None,
        to_command=after,
        to_source=active.source if active is not None and after is not None else None,
    )


def _settle(dispatches: list[DeviceDispatch], facts: DispatchFacts, *, now: datetime) -> tuple[Transition, ...]:
    """After a device's action is resolved, every running command on it is active (the winner), completed
    (its window is over) or scheduled."""
    transitions = []
    for dispatch in dispatches:
        winner_id = dispatch.action.command_id
        for running in sorted(facts.running.get(dispatch.device_id, []), key=lambda command: command.command_id):
            if running.command_id == winner_id:
                wanted = CommandState.ACTIVE
            elif running.ends_at is not None and running.ends_at <= now:
                wanted = CommandState.COMPLETED
            else:
                wanted = CommandState.SCHEDULED
            if wanted != running.state:
                transitions.append(
                    Transition(
                        running.command_id,
                        frozenset({running.state}),
                        wanted,
                        history=f"now {wanted} on {dispatch.device_id}",
                    )
                )
    return tuple(transitions)


def command_row(
    command: Command,
    *,
    state: CommandState,
    reason: str | None,
    correlation_id: str | None,
    source: ControlSource = ControlSource.UPSTREAM_COMMAND,
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The scheduler.commands row of a control from ``source`` (``body``: the command's JSON, when made already)."""
    return {
        "command_id": str(command.id),
        "device_id": command.device_id,
        "created_at": _timestamp(command.created_at),
        "updated_at": _timestamp(command.updated_at),
        "starts_at": _timestamp(command.starts_at),
        "ends_at": _timestamp(command.ends_at),
        "upstream_status": str(command.status),
        "state": state,
        "state_reason": reason,
        "command": body if body is not None else command.model_dump(mode="json"),
        "correlation_id": correlation_id,
        "source": source,
    }


# Plan steps are stored as controls with ids derived from their plan, so a redelivered plan names the same rows.
_PLAN_STEP_NAMESPACE = UUID("3b0f7c52-5c64-4f0e-9a7e-8a4f3d2c1b0a")


def _step_command(plan: DevicePlan, index: int) -> Command:
    """A plan step in the shape every stored control has: a command the winner resolution and the action read."""
    step = plan.steps[index]
    if step.power_w > 0:
        battery: dict[str, Any] = {"mode": BatteryMode.CHARGE, "power_mode": "SETPOINT", "setpoint_w": step.power_w}
    elif step.power_w < 0:
        battery = {"mode": BatteryMode.DISCHARGE, "power_mode": "SETPOINT", "setpoint_w": -step.power_w}
    else:
        battery = {"mode": BatteryMode.STANDBY}
    return Command.model_validate(
        {
            "id": uuid5(_PLAN_STEP_NAMESPACE, f"{plan.plan_id}:{index}"),
            "event_id": None,
            "device_id": plan.device_name,
            "starts_at": step.starts_at,
            "ends_at": step.ends_at,
            "duration_s": (step.ends_at - step.starts_at).total_seconds(),
            "is_preparatory_action": False,
            "battery_commands": battery,
            "status": CommandStatus.OK,
            "device_status": "PENDING",
            "created_at": plan.issued_at,
            "updated_at": plan.issued_at,
        }
    )


def _with(plan: LifecyclePlan, *, history: tuple[HistoryEntry, ...], acks: tuple[Ack, ...] = ()) -> LifecyclePlan:
    return replace(plan, history=history, acks=acks)


def _transition_document(transition: Transition) -> dict[str, Any]:
    ack = transition.ack
    return {
        "command_id": str(transition.command_id),
        "from_states": sorted(transition.from_states),
        "to_state": transition.to_state,
        "reason": transition.reason,
        "history_detail": transition.history,
        "ack_status": ack.status if ack else None,
        "ack_reason": ack.reason if ack else None,
        "sources": sorted(transition.sources),
    }


def _ack_document(ack: Ack) -> dict[str, Any]:
    return {
        "command_id": str(ack.command_id),
        "device_status": ack.status,
        "device_status_reason": ack.reason,
        "next_attempt_at": _timestamp(ack.due_at),
        "release_action_id": str(ack.release_action_id) if ack.release_action_id else None,
    }


def _timestamp(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
