import pytest
import torch

from harden.config.prune import ClpConfig, PruneStage, SelectPolicy
from harden.core.artifacts import ModelArtifact
from harden.ingest.data.sources import ImageSet
from harden.prune import remove as prune
from harden.prune import select
from harden.prune.scorers.clp import ClpScorer
from harden.repair.distill import Distill

from .conftest import TINY_CONTRACT, synthetic_images

C = TINY_CONTRACT


def _setup(model):
    art = ModelArtifact(model, "tiny_cnn", {}, C, None, "0" * 64, "head")
    x, y = synthetic_images(64, 0)
    return art, ImageSet(x, y, "tune", "0"), ClpScorer(ClpConfig(u=3.0)).score(model)


def test_guard_trace_covers_every_candidate_and_respects_the_budget(tiny_cnn):
    art, tune, scores = _setup(tiny_cnn)
    cfg = PruneStage(round_to=1, select=SelectPolicy(thresholds=[1.5, 1.0, 0.5, 0.0], max_relative_drop=0.5))
    sel = select.run(cfg, art, scores, tune, prune.prepare(art), torch.device("cpu"))
    assert [t["threshold"] for t in sel.trace] == [1.5, 1.0, 0.5, 0.0]
    flagged = [t["flagged"] for t in sel.trace]
    assert flagged == sorted(flagged) and flagged[-1] > flagged[0]  # lower threshold, more flags
    ok = [t for t in sel.trace if t["relative_drop"] <= 0.5]
    assert sel.threshold == min(t["threshold"] for t in ok)
    assert sel.scores.num_flagged() == next(t["flagged"] for t in sel.trace if t["threshold"] == sel.threshold)


def test_guard_prunes_nothing_when_every_candidate_is_too_costly(trained_tiny):
    art, tune, scores = _setup(trained_tiny)
    cfg = PruneStage(round_to=1, select=SelectPolicy(thresholds=[-10.0], max_relative_drop=1e-6))
    sel = select.run(cfg, art, scores, tune, prune.prepare(art), torch.device("cpu"))
    assert sel.threshold is None and sel.scores.num_flagged() == 0 and sel.trace[0]["relative_drop"] > 1e-6


def test_flags_policy_keeps_the_scorer_decision(tiny_cnn):
    art, tune, scores = _setup(tiny_cnn)
    sel = select.run(PruneStage(select=SelectPolicy(policy="flags")), art, scores, tune, prune.prepare(art),
                     torch.device("cpu"))
    assert sel.scores is scores and sel.trace == []


@pytest.mark.parametrize("mix", [False, True])
def test_distill_is_zero_against_itself_and_positive_otherwise(tiny_cnn, mix):
    hook = Distill(tiny_cnn, C, weight=0.5, temperature=2.0, mix=mix)
    x = torch.rand(8, 3, 16, 16)
    with torch.no_grad():
        assert float(hook.extra_loss(tiny_cnn, x, None, tiny_cnn(C.normalize(x)))) < 1e-6
        assert float(hook.extra_loss(tiny_cnn, x, None, torch.zeros(8, 4))) > 1e-3
    assert all(not p.requires_grad for p in hook.teacher.parameters())
