"""EV chargers over OCPP-J: the device-agent is their central system (docs/design.md §4, §8)."""
