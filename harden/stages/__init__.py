"""The built-in stages: thin adapters from the pipeline's run state to the domain packages (ingest, detect, prune,
repair, evaluate, deploy, lineage). Importing this package registers each of them in harden.core.stage.STAGES."""

from harden.stages import (  # noqa: F401  (explicit registration list)
    export, finetune, gate, ingest, int8, polarize, prune, register, scan, score, select, verify)
