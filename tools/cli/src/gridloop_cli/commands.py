"""`gridloop commands`: the scheduler's commands and their history, asked over RPC."""

from __future__ import annotations

import json
from typing import Any

from gridloop_cli.status import table
from gridloop_common.messaging import RpcClient, RpcError, open_broker
from gridloop_common.settings import AmqpSettings

__all__ = ["fetch", "render_list", "render_show"]


async def fetch(*, amqp_url: str, routing_key: str, request: dict[str, Any], timeout_s: float = 5.0) -> dict[str, Any]:
    """Ask a service over RPC; raises RpcError (RpcTimeout when it does not answer)."""
    settings = AmqpSettings(amqp_url=amqp_url)
    async with (
        open_broker(settings, client_name="gridloop-cli", startup_timeout_s=5.0, url=amqp_url) as broker,
        RpcClient.open(channel=broker.channel, publisher=broker.publisher, client_name="gridloop-cli") as client,
    ):
        reply = await client.call(routing_key, json.dumps(request).encode(), timeout_s=timeout_s)
    answer = json.loads(reply)
    if not isinstance(answer, dict):
        raise RpcError("scheduler sent an unexpected reply")
    return answer


def _short_time(value: Any) -> str:
    return str(value)[:19].replace("T", " ") if value else "-"


def render_list(answer: dict[str, Any]) -> str:
    rows = [
        [
            str(command["command_id"]),
            str(command["device_id"]),
            str(command["state"]),
            f"{command['mode']}" + (f" {command['setpoint_w']} W" if command.get("setpoint_w") else ""),
            _short_time(command["starts_at"]),
            _short_time(command["ends_at"]),
            str(command["acks_pending"]),
            str(command.get("state_reason") or ""),
        ]
        for command in answer["commands"]
    ]
    if not rows:
        return "no commands yet"
    return table(["COMMAND", "DEVICE", "STATE", "MODE", "STARTS", "ENDS", "ACKS PENDING", "REASON"], rows)


def render_show(answer: dict[str, Any]) -> str:
    command = answer["command"]
    lines = [
        f"command {command['command_id']} on {command['device_id']}: {command['state']}"
        + (f" ({command['state_reason']})" if command.get("state_reason") else ""),
        f"window {_short_time(command['starts_at'])} .. {_short_time(command['ends_at'])}, "
        f"upstream status {command['upstream_status']}, version {command['updated_at']}, "
        f"stale versions ignored {command['stale_versions_ignored']}",
        "",
        table(
            ["AT", "EVENT", "DETAIL"],
            [[_short_time(entry["at"]), entry["kind"], entry["detail"]] for entry in answer["history"]]
            or [["-", "-", "-"]],
        ),
        "",
        table(
            ["ACK", "REASON", "ATTEMPTS", "QUEUED", "DELIVERED", "LAST ERROR"],
            [
                [
                    ack["device_status"],
                    ack.get("device_status_reason") or "",
                    str(ack["attempts"]),
                    _short_time(ack["created_at"]),
                    _short_time(ack["delivered_at"]),
                    ack.get("last_error") or "",
                ]
                for ack in answer["acknowledgements"]
            ]
            or [["-", "", "", "", "", ""]],
        ),
    ]
    return "\n".join(lines)
