"""The lifecycle's decisions as plans, without a database: states, transitions, acknowledgements, precedence."""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gridloop_common.contracts import Command, DeviceOutcome, DevicePlan, PlanKind, PlanStep
from scheduler import lifecycle, planning
from scheduler.lifecycle import (
    RUNNING,
    TRANSITIONS,
    AckStatus,
    CommandLook,
    CommandState,
    DispatchFacts,
    DueTimer,
    PlanLook,
    PlanResult,
    ReceiveResult,
    RunningCommand,
    TimerKind,
)
from scheduler.planning import ActiveCommand, ControlSource

from .builders import NOW
from .builders import command as _command
from .builders import device as _device

README = Path(__file__).parents[1] / "README.md"


def _look(state: CommandState | None, *, device: planning.DeviceFacts | None) -> CommandLook:
    return CommandLook(
        version_known=False,
        stored_updated_at=None if state is None else NOW - timedelta(minutes=1),
        stored_state=state,
        device=device,
    )


def _diagram() -> set[tuple[str | None, str, str]]:
    block = re.search(r"```mermaid\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)
    assert block is not None, "the scheduler README has no state diagram"
    edges = set()
    for line in block.group(1).splitlines():
        edge = re.fullmatch(r"\s*(\[\*\]|\w+) --> (\w+) : (.+?)\s*", line)
        if edge:
            source = None if edge.group(1) == "[*]" else edge.group(1)
            edges.add((source, edge.group(2), edge.group(3)))
    return edges


def test_the_readme_state_diagram_is_the_lifecycle_s_transitions() -> None:
    assert _diagram() == {(None if old is None else str(old), str(new), why) for old, new, why in TRANSITIONS}


_PAIRS = {(old, new) for old, new, _ in TRANSITIONS}


@given(
    stored=st.sampled_from([None, *CommandState]),
    status=st.sampled_from(["OK", "CANCELED", "OPT_OUT"]),
    device_ok=st.booleans(),
    minutes_newer=st.integers(min_value=-5, max_value=5),
)
def test_every_received_version_moves_the_command_along_the_diagram(
    stored: CommandState | None, status: str, device_ok: bool, minutes_newer: int
) -> None:
    seen = _look(stored, device=_device() if device_ok else None)
    command = _command(status=status, updated_at=(NOW + timedelta(minutes=minutes_newer)).isoformat())

    result, plan, reason = lifecycle.plan_version(
        command, seen, event_type="command.updated", correlation_id=None, now=NOW
    )

    if result is ReceiveResult.STALE:
        assert plan.commands == () and plan.acks == () and plan.stale_command_id == command.id
        return
    [row] = plan.commands
    assert (stored, row["state"]) in _PAIRS
    statuses = [ack.status for ack in plan.acks]
    if result is ReceiveResult.CANCELED:
        # The OK of a cancellation waits for the pass that sends the stop.
        assert statuses == [] and plan.cancel_timers_of == (command.id,)
        assert [timer.kind for timer in plan.timers] == [TimerKind.STOP]
    elif result is ReceiveResult.FAILED:
        assert statuses == [AckStatus.FAILED] and plan.acks[0].reason == reason
        assert plan.cancel_timers_of == (command.id,)
        assert (plan.timers != ()) == (stored in RUNNING)  # a running command must also leave the device
    else:
        assert result in (ReceiveResult.NEW, ReceiveResult.UPDATED) and statuses == [AckStatus.OK]


def _facts(device: str, running: list[RunningCommand], in_force: list[ActiveCommand]) -> DispatchFacts:
    return DispatchFacts(
        in_force={device: in_force},
        running={device: running},
        correlation_ids={},
        states={command.command_id: command.state for command in running},
    )


def _active(command: Command, *, source: ControlSource = ControlSource.UPSTREAM_COMMAND) -> ActiveCommand:
    return ActiveCommand(command.id, command.created_at, command.starts_at, command.ends_at, command, source)


def test_a_timer_pass_settles_every_running_command_of_its_device_along_the_diagram() -> None:
    ended = _command(starts_at=(NOW - timedelta(hours=2)).isoformat(), ends_at=(NOW - timedelta(hours=1)).isoformat())
    winning = _command(starts_at=(NOW - timedelta(minutes=1)).isoformat())
    outranked = _command(
        starts_at=(NOW - timedelta(minutes=2)).isoformat(), created_at=(NOW - timedelta(days=1)).isoformat()
    )
    later = _command()
    running = [
        RunningCommand(ended.id, CommandState.ACTIVE, ended.ends_at),
        RunningCommand(winning.id, CommandState.SCHEDULED, winning.ends_at),
        RunningCommand(outranked.id, CommandState.ACTIVE, outranked.ends_at),
        RunningCommand(later.id, CommandState.SCHEDULED, later.ends_at),
    ]
    facts = _facts("battery-1", running, [_active(command) for command in (ended, winning, outranked, later)])
    timer = DueTimer(7, "battery-1", winning.id, TimerKind.START)
    action_id = uuid.uuid4()

    [dispatch], plan = lifecycle.plan_dispatch(
        [timer], facts, now=NOW, action_ids={"battery-1": action_id}, release_known_by=NOW + timedelta(seconds=63)
    )

    assert dispatch.action.command_id == winning.id and dispatch.action.action_id == action_id
    moved = {transition.command_id: (transition.from_states, transition.to_state) for transition in plan.transitions}
    assert moved == {
        ended.id: (frozenset({CommandState.ACTIVE}), CommandState.COMPLETED),
        winning.id: (frozenset({CommandState.SCHEDULED}), CommandState.ACTIVE),
        outranked.id: (frozenset({CommandState.ACTIVE}), CommandState.SCHEDULED),
    }
    for transition in plan.transitions:
        assert all((old, transition.to_state) in _PAIRS for old in transition.from_states)
    assert plan.fired == ((7, action_id, NOW),) and plan.acks == ()


def test_the_stop_of_a_cancelled_command_queues_its_ok_held_for_the_release() -> None:
    cancelled = _command(status="CANCELED")
    facts = _facts("battery-1", [], [])
    facts.states[cancelled.id] = CommandState.CANCELED
    action_id = uuid.uuid4()
    release_by = NOW + timedelta(seconds=63)

    [dispatch], plan = lifecycle.plan_dispatch(
        [DueTimer(1, "battery-1", cancelled.id, TimerKind.STOP)],
        facts,
        now=NOW,
        action_ids={"battery-1": action_id},
        release_known_by=release_by,
    )

    assert dispatch.action.command_id is None  # back to the default
    [ack] = plan.acks
    assert (ack.command_id, ack.status, ack.due_at, ack.release_action_id) == (
        cancelled.id,
        AckStatus.OK,
        release_by,
        action_id,
    )
    assert [entry.kind for entry in plan.history] == ["dispatched", "awaiting release"]


def test_a_failed_outcome_fails_a_running_command_with_its_failed_ack_and_an_applied_one_releases() -> None:
    command_id = uuid.uuid4()
    failed = DeviceOutcome(
        action_id=uuid.uuid4(), command_id=command_id, device_name="b", applied=False, reason="no", observed_at=NOW
    )
    applied = DeviceOutcome(
        action_id=uuid.uuid4(), command_id=command_id, device_name="b", applied=True, observed_at=NOW
    )

    upstream, own = lifecycle.plan_outcome(failed).transitions
    for transition in (upstream, own):
        assert transition.from_states == RUNNING and transition.to_state is CommandState.FAILED
        assert all((old, CommandState.FAILED) in _PAIRS for old in transition.from_states)
    # Only a command from upstream is acknowledged upstream; gridloop's own controls fail silently.
    assert upstream.sources == {ControlSource.UPSTREAM_COMMAND} and own.sources.isdisjoint(upstream.sources)
    assert upstream.ack is not None and (upstream.ack.status, upstream.ack.reason) == (AckStatus.FAILED, "no")
    assert own.ack is None
    assert lifecycle.plan_outcome(failed).release_acks_of is None
    assert lifecycle.plan_outcome(applied).transitions == ()
    assert lifecycle.plan_outcome(applied).release_acks_of == applied.action_id


def test_a_refusal_before_the_command_could_be_read_is_a_failed_line_and_a_failed_ack() -> None:
    command_id = uuid.uuid4()
    plan = lifecycle.plan_refusal(command_id, "invalid command: starts_at: missing")
    assert [(entry.kind, entry.detail) for entry in plan.history] == [("failed", "invalid command: starts_at: missing")]
    assert [(ack.status, ack.reason) for ack in plan.acks] == [
        (AckStatus.FAILED, "invalid command: starts_at: missing")
    ]
    assert plan.document().keys() == {"history", "acks"}


@pytest.mark.parametrize(
    ("sources", "winner_index"),
    [
        ((ControlSource.PLAN, ControlSource.UPSTREAM_COMMAND), 1),
        ((ControlSource.UPSTREAM_COMMAND, ControlSource.PLAN), 0),
        ((ControlSource.DIRECT_CONTROL, ControlSource.UPSTREAM_COMMAND), 1),
        ((ControlSource.SITE_CAP, ControlSource.UPSTREAM_COMMAND), 0),
        ((ControlSource.PLAN, ControlSource.DIRECT_CONTROL), 1),
    ],
)
def test_the_higher_source_wins_whatever_its_age_and_the_lower_resumes_when_it_ends(
    sources: tuple[ControlSource, ControlSource], winner_index: int
) -> None:
    # The first control is created later, so age alone would make it win.
    first = _command(
        starts_at=NOW.isoformat(),
        ends_at=(NOW + timedelta(hours=2)).isoformat(),
        created_at=(NOW + timedelta(seconds=1)).isoformat(),
    )
    second = _command(starts_at=NOW.isoformat(), ends_at=(NOW + timedelta(hours=1)).isoformat())
    candidates = [_active(first, source=sources[0]), _active(second, source=sources[1])]

    during = planning.winner(candidates, now=NOW + timedelta(minutes=30))
    assert during is candidates[winner_index]
    after_second = planning.winner(candidates, now=NOW + timedelta(minutes=90))
    assert after_second is candidates[0]  # the second's window is over: the first takes over, whatever its source
    assert planning.winner(candidates, now=NOW + timedelta(hours=3)) is None  # then the default


def test_sources_are_ordered_as_the_design_states() -> None:
    ordered = sorted(ControlSource, key=lambda source: source.precedence, reverse=True)
    assert ordered == [
        ControlSource.SITE_CAP,
        ControlSource.UPSTREAM_COMMAND,
        ControlSource.DIRECT_CONTROL,
        ControlSource.PLAN,
    ]
    assert [source for source in ControlSource if source.acknowledged_upstream] == [ControlSource.UPSTREAM_COMMAND]


def _device_plan(*powers: int, start: datetime = NOW, minutes: int = 15, issued_at: datetime = NOW) -> DevicePlan:
    return DevicePlan(
        plan_id=uuid.uuid4(),
        run_id=uuid.uuid4(),
        kind=PlanKind.MPC,
        device_name="battery-1",
        issued_at=issued_at,
        steps=[
            PlanStep(
                starts_at=start + timedelta(minutes=minutes * index),
                ends_at=start + timedelta(minutes=minutes * (index + 1)),
                power_w=power,
            )
            for index, power in enumerate(powers)
        ],
    )


def _plan_look(**changes: Any) -> PlanLook:
    values: dict[str, Any] = {"known": False, "newest_issued_at": None, "superseded": (), "device": _device()}
    values.update(changes)
    return PlanLook(**values)


def test_a_device_plan_becomes_one_control_of_source_plan_per_step_not_yet_over() -> None:
    plan = _device_plan(1500, 2000, -3000, 0, start=NOW - timedelta(minutes=20))
    now = NOW  # the first step is over, the second half done

    result, writes, reason = lifecycle.plan_device_plan(plan, _plan_look(), now=now)

    assert (result, reason) == (PlanResult.APPLIED, None) and writes is not None
    rows = writes.commands
    assert [row["source"] for row in rows] == ["plan"] * 3 and {row["state"] for row in rows} == {"scheduled"}
    modes = [
        (row["command"]["battery_commands"]["mode"], row["command"]["battery_commands"].get("setpoint_w"))
        for row in rows
    ]
    assert modes == [("CHARGE", 2000), ("DISCHARGE", 3000), ("STANDBY", None)]
    starts = [timer.due_at for timer in writes.timers if timer.kind is TimerKind.START]
    assert starts == [now, plan.steps[2].starts_at, plan.steps[3].starts_at]  # the step under way starts at once
    ends = [timer.due_at for timer in writes.timers if timer.kind is TimerKind.END]
    assert ends == [step.ends_at for step in plan.steps[1:]]  # every step expires by itself
    assert writes.acks == () and writes.transitions == ()  # nobody upstream to acknowledge
    for row in rows:
        assert (None, row["state"]) in _PAIRS


def test_a_newer_plan_supersedes_the_running_steps_of_the_older_one() -> None:
    old_steps = (uuid.uuid4(), uuid.uuid4())
    plan = _device_plan(1000, issued_at=NOW + timedelta(minutes=5))

    _, writes, _ = lifecycle.plan_device_plan(
        plan, _plan_look(newest_issued_at=NOW, superseded=old_steps), now=NOW + timedelta(minutes=5)
    )

    assert writes is not None
    assert writes.cancel_timers_of == old_steps
    assert [(transition.command_id, transition.to_state, transition.sources) for transition in writes.transitions] == [
        (step, CommandState.CANCELED, frozenset({ControlSource.PLAN})) for step in old_steps
    ]
    for transition in writes.transitions:
        assert all((old, transition.to_state) in _PAIRS for old in transition.from_states)
    # One stop, now, named after the step the new plan takes the device from.
    assert [(timer.kind, timer.command_id) for timer in writes.timers if timer.kind is TimerKind.STOP] == [
        (TimerKind.STOP, old_steps[0])
    ]


@pytest.mark.parametrize(
    ("look", "result"),
    [
        ({"known": True}, PlanResult.DUPLICATE),
        ({"newest_issued_at": NOW + timedelta(seconds=1)}, PlanResult.STALE),
        ({"newest_issued_at": NOW}, PlanResult.STALE),
        ({"device": None}, PlanResult.REFUSED),
        ({"device": _device(device_type="meter")}, PlanResult.REFUSED),
        ({"device": _device(active=False)}, PlanResult.REFUSED),
    ],
)
def test_a_plan_that_cannot_apply_writes_nothing(look: dict[str, Any], result: PlanResult) -> None:
    decided, writes, reason = lifecycle.plan_device_plan(_device_plan(1000), _plan_look(**look), now=NOW)
    assert (decided, writes) == (result, None)
    assert (reason is not None) == (result is not PlanResult.DUPLICATE)


def test_an_upstream_savings_command_follows_the_plan_in_force_and_self_consumption_without_one() -> None:
    savings = _command(
        starts_at=NOW.isoformat(),
        ends_at=(NOW + timedelta(hours=1)).isoformat(),
        battery={"mode": "SAVINGS", "power_mode": None, "setpoint_w": None},
    )
    step = _command(
        starts_at=NOW.isoformat(), ends_at=(NOW + timedelta(minutes=15)).isoformat(), battery={"setpoint_w": 2500}
    )
    candidates = [_active(savings), _active(step, source=ControlSource.PLAN)]

    active, action = planning.current_action("battery-1", candidates, now=NOW, action_id=uuid.uuid4())

    assert active is not None and active.command_id == savings.id
    assert (action.command_id, action.mode, action.setpoint_w) == (savings.id, "DISCHARGE", 2500)
    assert action.valid_until == step.ends_at + planning.END_GRACE  # the step's end comes first
    _, alone = planning.current_action("battery-1", candidates[:1], now=NOW, action_id=uuid.uuid4())
    assert (alone.command_id, alone.mode) == (savings.id, "SAVINGS")


def test_plan_steps_must_be_in_time_order() -> None:
    with pytest.raises(ValueError, match="time order"):
        DevicePlan(
            plan_id=uuid.uuid4(),
            run_id=uuid.uuid4(),
            kind=PlanKind.DAY_AHEAD,
            device_name="battery-1",
            issued_at=NOW,
            steps=[
                PlanStep(starts_at=NOW, ends_at=NOW + timedelta(minutes=10), power_w=1),
                PlanStep(starts_at=NOW + timedelta(minutes=5), ends_at=NOW + timedelta(minutes=15), power_w=1),
            ],
        )


def test_a_pass_names_the_handover_when_another_control_takes_the_device() -> None:
    ended = _command(starts_at=(NOW - timedelta(hours=1)).isoformat(), ends_at=NOW.isoformat())
    step = _command(starts_at=(NOW - timedelta(hours=2)).isoformat(), ends_at=(NOW + timedelta(hours=1)).isoformat())
    facts = _facts(
        "battery-1",
        [
            RunningCommand(ended.id, CommandState.ACTIVE, ended.ends_at),
            RunningCommand(step.id, CommandState.SCHEDULED, step.ends_at),
        ],
        [_active(ended), _active(step, source=ControlSource.PLAN)],
    )
    facts.sources.update({ended.id: ControlSource.UPSTREAM_COMMAND, step.id: ControlSource.PLAN})

    [dispatch], _ = lifecycle.plan_dispatch(
        [DueTimer(1, "battery-1", ended.id, TimerKind.END)],
        facts,
        now=NOW,
        action_ids={"battery-1": uuid.uuid4()},
        release_known_by=NOW,
    )

    assert dispatch.handover == lifecycle.Handover(
        ended.id, ControlSource.UPSTREAM_COMMAND, step.id, ControlSource.PLAN
    )
    [same], _ = lifecycle.plan_dispatch(
        [DueTimer(2, "battery-1", step.id, TimerKind.START)],
        _facts("battery-1", [RunningCommand(step.id, CommandState.ACTIVE, step.ends_at)], [_active(step)]),
        now=NOW,
        action_ids={"battery-1": uuid.uuid4()},
        release_known_by=NOW,
    )
    assert same.handover is None  # the same control goes on: nothing to log


def test_the_handover_from_a_cancelled_control_names_it() -> None:
    cancelled = _command(starts_at=(NOW - timedelta(minutes=5)).isoformat(), status="CANCELED")
    facts = _facts("battery-1", [], [])
    facts.states[cancelled.id] = CommandState.CANCELED
    facts.sources[cancelled.id] = ControlSource.UPSTREAM_COMMAND

    [dispatch], _ = lifecycle.plan_dispatch(
        [DueTimer(3, "battery-1", cancelled.id, TimerKind.STOP)],
        facts,
        now=NOW,
        action_ids={"battery-1": uuid.uuid4()},
        release_known_by=NOW,
    )

    assert dispatch.handover == lifecycle.Handover(cancelled.id, ControlSource.UPSTREAM_COMMAND, None, None)
