"""Red-team tools: attack recipes (trigger + poisoning) keyed by attack name, and `harden zoo train`, which builds
backdoored models to test harden against. Nothing on the hardening path imports this package."""

from harden.redteam.recipes import ATTACKS, AttackParams, PoisonConfig, poison_indices

__all__ = ["ATTACKS", "AttackParams", "PoisonConfig", "poison_indices"]
