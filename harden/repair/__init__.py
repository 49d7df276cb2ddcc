"""Repairs: the fine-tune's training hooks, configured under `stages.finetune.repairs.<name>`. A built-in one is a
module here, one name in this import list and its settings class in harden/config/repair.py (or a `register_repair`
call in your own code)."""

from harden.config.repair import REPAIRS, RepairConfig
from harden.repair import distill, fst, grating_unlearn, mcl, sau, trigger_unlearn, universal_unlearn  # noqa: F401
from harden.repair.base import Repair, RepairContext, active, register_repair

__all__ = ["REPAIRS", "Repair", "RepairConfig", "RepairContext", "active", "register_repair"]
