"""Triggers, keyed by their YAML ``kind``. Used by verify (ASR on known triggers) and, later, by the zoo trainer."""

from .triggers import TRIGGERS, Trigger, TriggerConfig, build_trigger

__all__ = ["TRIGGERS", "Trigger", "TriggerConfig", "build_trigger"]
