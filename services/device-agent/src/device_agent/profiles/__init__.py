"""Device knowledge as data: register-map definitions and SunSpec model discovery."""

from __future__ import annotations

from device_agent.profiles.base import ModelBlock, ModelDefinition, PointDefinition, define_model, point
from device_agent.profiles.sunspec import MODELS, ModelLocation, SunSpecMap, discover, read_model

__all__ = [
    "MODELS",
    "ModelBlock",
    "ModelDefinition",
    "ModelLocation",
    "PointDefinition",
    "SunSpecMap",
    "define_model",
    "discover",
    "point",
    "read_model",
]
