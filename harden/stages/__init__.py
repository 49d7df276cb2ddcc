"""The built-in stages. Importing this package registers each of them in harden.core.stage.STAGES, in order."""

from . import export, finetune, gate, ingest, int8, polarize, prune, register, scan, score, select, verify  # noqa: F401
