"""docs/pipeline.md is generated from the schema; it must be current and cover every key."""

from pathlib import Path

from harden.config.docs import render, rows
from harden.config.schema import PipelineConfig

DOC = Path(__file__).resolve().parents[1] / "docs" / "pipeline.md"


def test_pipeline_reference_is_current():
    assert DOC.read_text() == render(), "docs/pipeline.md is stale: python -m harden.config.docs > docs/pipeline.md"


def test_every_key_is_listed_and_described():
    listed = rows(PipelineConfig)
    keys = [r.split("`")[1] for r in listed]
    for key in ("model.rename", "stages.finetune.repairs.fst.weight", "stages.finetune.repairs.sau.eps", "gate.max_itasr",
                "stages.verify.triggers", "data.clean.limit"):
        assert key in keys, key
    assert not [r for r in listed if r.rstrip().endswith("|  |")], "a key without a description"
