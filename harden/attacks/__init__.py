"""Triggers keyed by their YAML ``kind`` (used by verify) and attack recipes keyed by attack name (used by the
red-team zoo: trigger + poisoning)."""

from .recipes import ATTACKS, AttackParams, PoisonConfig, poison_indices
from .triggers import TRIGGERS, Trigger, TriggerConfig, build_trigger

__all__ = ["ATTACKS", "AttackParams", "PoisonConfig", "TRIGGERS", "Trigger", "TriggerConfig", "build_trigger",
           "poison_indices"]
