"""The AsyncAPI 3 description of gridloop's message interface, generated from the contracts."""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel

from gridloop_common.contracts import (
    BessReading,
    Command,
    DeviceAction,
    DeviceAvailability,
    DeviceOutcome,
    DevicePlan,
    DeviceResyncRequest,
    EvChargerReading,
    EvSession,
    MeterReading,
    UpstreamEvent,
    routing,
)

__all__ = ["document", "render"]

_REF_TEMPLATE = "#/components/schemas/{model}"


def _schemas(*models: type[BaseModel]) -> dict[str, Any]:
    collected: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template=_REF_TEMPLATE)
        collected.update(schema.pop("$defs", {}))
        collected[model.__name__] = schema
    return dict(sorted(collected.items()))


def _exchange(name: str, kind: str = "topic") -> dict[str, Any]:
    return {
        "amqp": {
            "is": "routingKey",
            "exchange": {"name": name, "type": kind, "durable": True, "autoDelete": False, "vhost": "/"},
            "bindingVersion": "0.3.0",
        }
    }


def _message(name: str, schema: str, summary: str, *, routing_key: str) -> dict[str, Any]:
    return {
        "name": name,
        "title": name,
        "summary": summary,
        "contentType": "application/json",
        "payload": {"$ref": _REF_TEMPLATE.format(model=schema)},
        "headers": {
            "type": "object",
            "properties": {
                "x-correlation-id": {"type": "string", "description": "Follows one command through every service."},
                "x-source": {"type": "string", "description": "The publishing service."},
            },
        },
        "bindings": {"amqp": {"contentEncoding": "utf-8", "messageType": routing_key, "bindingVersion": "0.3.0"}},
    }


def document() -> dict[str, Any]:
    """The AsyncAPI document as a mapping."""
    command_types = ["command.created", "command.updated", "command.started", "command.ended", "command.canceled"]
    upstream_messages = {
        event.replace(".", "_"): _message(
            event, "UpstreamEvent", f"Upstream envelope {event}; event_object is a Command.", routing_key=event
        )
        for event in command_types
    }
    upstream_messages["other_events"] = _message(
        "event.* / enrollment.* / settings.apply",
        "UpstreamEvent",
        "Other upstream envelopes: accepted, stored and routed, not dropped.",
        routing_key="event.*",
    )
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "gridloop message interface",
            "version": "1.0.0",
            "description": (
                "How upstream producers and gridloop's services talk over RabbitMQ. Producers in message-queue "
                "mode publish the upstream envelope to the durable topic exchange `gridloop.upstream` with "
                "routing key = event_type, persistent (delivery mode 2), a unique message_id and content type "
                "application/json, on a channel with publisher confirms. The envelope is strict JSON that "
                "PostgreSQL can store as jsonb (no NaN or Infinity, no \\u0000, no lone surrogates, nesting at "
                "most 64 deep, numbers of at most 1000 digits) of at most GRIDLOOP_UPSTREAM_MAX_ENVELOPE_BYTES "
                "(1 MiB). An envelope that breaks the schema or these rules is dead-lettered at once, not stored, "
                "to `scheduler.upstream.dead-letter` with the reason in the header "
                "`x-gridloop-dead-letter-reason` and counted in gridloop_messages_consumed_total"
                '{outcome="dead_letter"}. Generated from gridloop_common.contracts by `gridloop asyncapi`.'
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": "127.0.0.1:5672",
                "protocol": "amqp",
                "protocolVersion": "0-9-1",
                "description": "RabbitMQ",
            }
        },
        "channels": {
            "upstream": {
                "address": routing.UPSTREAM_EXCHANGE,
                "description": "Upstream events from all three delivery modes (push, queue, poll).",
                "messages": upstream_messages,
                "bindings": _exchange(routing.UPSTREAM_EXCHANGE),
            },
            "deviceActions": {
                "address": routing.DEVICES_EXCHANGE,
                "description": "Scheduler to device-agent, routing key device.action.<device name>.",
                "messages": {
                    "deviceAction": _message(
                        "device.action",
                        "DeviceAction",
                        "What one device should do now.",
                        routing_key="device.action.<device>",
                    )
                },
                "bindings": _exchange(routing.DEVICES_EXCHANGE),
            },
            "deviceReports": {
                "address": routing.DEVICES_EXCHANGE,
                "description": "Device-agent to scheduler.",
                "messages": {
                    "deviceOutcome": _message(
                        "device.outcome",
                        "DeviceOutcome",
                        "Applied, or failed with a reason.",
                        routing_key=routing.RoutingKeys.DEVICE_OUTCOME,
                    ),
                    "deviceAvailability": _message(
                        "device.availability",
                        "DeviceAvailability",
                        "Whether the agent reaches a device.",
                        routing_key=routing.RoutingKeys.DEVICE_AVAILABILITY,
                    ),
                    "deviceResync": _message(
                        "device.resync",
                        "DeviceResyncRequest",
                        "The agent has taken a device under control (started, or the device is back): the "
                        "scheduler answers with the device's current action.",
                        routing_key=routing.RoutingKeys.DEVICE_RESYNC,
                    ),
                },
                "bindings": _exchange(routing.DEVICES_EXCHANGE),
            },
            "devicePlans": {
                "address": routing.DEVICES_EXCHANGE,
                "description": "Optimizer to scheduler, routing key device.plan.<device name>.",
                "messages": {
                    "devicePlan": _message(
                        "device.plan",
                        "DevicePlan",
                        "One version of a device's plan: setpoint steps that each expire at their end. The "
                        "scheduler carries them out below upstream commands; a newer plan supersedes an older one.",
                        routing_key="device.plan.<device>",
                    )
                },
                "bindings": _exchange(routing.DEVICES_EXCHANGE),
            },
            "telemetry": {
                "address": routing.TELEMETRY_EXCHANGE,
                "description": "Device-agent readings to telemetry-ingest (a JSON list per message).",
                "messages": {
                    "bessReadings": _message(
                        "telemetry.bess",
                        "BessReading",
                        "Battery readings (one or a list).",
                        routing_key=routing.RoutingKeys.TELEMETRY_BESS,
                    ),
                    "meterReadings": _message(
                        "telemetry.meter",
                        "MeterReading",
                        "Meter readings (one or a list).",
                        routing_key=routing.RoutingKeys.TELEMETRY_METER,
                    ),
                    "evChargerReadings": _message(
                        "telemetry.ev_charger",
                        "EvChargerReading",
                        "EV charger meter values (one or a list), from OCPP MeterValues and TransactionEvent.",
                        routing_key=routing.RoutingKeys.TELEMETRY_EV_CHARGER,
                    ),
                    "evSessions": _message(
                        "telemetry.ev_session",
                        "EvSession",
                        "EV charging sessions (one or a list), at plug-in and again at plug-out; upserted.",
                        routing_key=routing.RoutingKeys.TELEMETRY_EV_SESSION,
                    ),
                },
                "bindings": _exchange(routing.TELEMETRY_EXCHANGE),
            },
        },
        "operations": {
            "publishUpstreamEvent": {
                "action": "receive",
                "channel": {"$ref": "#/channels/upstream"},
                "summary": "gridloop receives upstream events (routing key = event_type).",
                "messages": [{"$ref": f"#/channels/upstream/messages/{name}"} for name in upstream_messages],
                "bindings": {"amqp": {"ack": True, "deliveryMode": 2, "mandatory": True, "bindingVersion": "0.3.0"}},
            },
            "dispatchDeviceAction": {
                "action": "send",
                "channel": {"$ref": "#/channels/deviceActions"},
                "messages": [{"$ref": "#/channels/deviceActions/messages/deviceAction"}],
            },
            "reportDevice": {
                "action": "receive",
                "channel": {"$ref": "#/channels/deviceReports"},
                "messages": [
                    {"$ref": "#/channels/deviceReports/messages/deviceOutcome"},
                    {"$ref": "#/channels/deviceReports/messages/deviceAvailability"},
                    {"$ref": "#/channels/deviceReports/messages/deviceResync"},
                ],
            },
            "carryOutPlan": {
                "action": "receive",
                "channel": {"$ref": "#/channels/devicePlans"},
                "messages": [{"$ref": "#/channels/devicePlans/messages/devicePlan"}],
            },
            "ingestTelemetry": {
                "action": "receive",
                "channel": {"$ref": "#/channels/telemetry"},
                "messages": [
                    {"$ref": "#/channels/telemetry/messages/bessReadings"},
                    {"$ref": "#/channels/telemetry/messages/meterReadings"},
                    {"$ref": "#/channels/telemetry/messages/evChargerReadings"},
                    {"$ref": "#/channels/telemetry/messages/evSessions"},
                ],
            },
        },
        "components": {
            "schemas": _schemas(
                UpstreamEvent,
                Command,
                DeviceAction,
                DeviceOutcome,
                DeviceAvailability,
                DeviceResyncRequest,
                DevicePlan,
                BessReading,
                MeterReading,
                EvChargerReading,
                EvSession,
            )
        },
    }


def render() -> str:
    """The document as YAML, as committed in docs/asyncapi.yaml."""
    header = "# Generated by `gridloop asyncapi` from gridloop_common.contracts; do not edit by hand.\n"
    return header + yaml.safe_dump(document(), sort_keys=False, allow_unicode=True, width=100)
