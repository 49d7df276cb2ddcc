"""Settings of the score, select and prune stages and of each built-in scorer (torch-free; the scorers' code is in
harden/prune/scorers/)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Optional

from pydantic import Field

from harden.core.base import StrictModel
from harden.core.registry import Registry
from harden.core.sections import plugin_sections

if TYPE_CHECKING:  # the implementations import torch; this module must not
    from harden.prune.scorers.base import ScorerInfo


class ScorerConfig(StrictModel):
    """Base of every scorer's YAML section."""


SCORERS: Registry[ScorerInfo] = Registry("scorer")


class ClpConfig(ScorerConfig):
    u: float = Field(3.0, gt=0, description="flag channels whose within-layer z-score of UCLC exceeds u")
    min_channels: int = Field(8, ge=2, description="layers with fewer output channels are scored but never flagged")


class AnpConfig(ScorerConfig):
    eps: float = Field(0.4, gt=0, description="perturbation budget on each channel's scale and shift (too large and "
                       "benign channels collapse too, too small and the masks do not separate; the reference's 0.4 is "
                       "for ResNet-18 at width 64, pipelines/anp.yaml uses 0.2 at width 16)")
    steps: int = Field(1, ge=1, description="inner maximisation steps per iteration")
    alpha: float = Field(0.2, ge=0, le=1, description="weight of the natural loss (1 - alpha on the perturbed one)")
    mask_lr: float = Field(0.2, gt=0, description="learning rate of the neuron masks")
    iterations: int = Field(2000, ge=1, description="outer iterations (reference: 2000 at batch 128)")
    batch_size: int = Field(128, ge=1)
    project_noise: bool = Field(False, description="clip the noise back to [-eps, eps] (paper); off as the code")
    tau: float = Field(0.2, ge=0, lt=1, description="flag channels whose mask ends at or below tau")
    augment: bool = True
    seed: int = 0


class DormantConfig(ScorerConfig):
    layers: list[str] = Field(default_factory=list, description="BatchNorm or conv modules to profile (default: the "
                                                                 "feature map feeding the classifier)")
    fraction: float = Field(0.2, gt=0, lt=1, description="the scorer's own flags: this most dormant share per layer")
    batch_size: int = Field(256, ge=1)


class FusionConfig(StrictModel):
    method: Literal["zscore", "rank"] = Field("zscore", description="how several scorers' scores are put on one "
                                                "scale before they are combined")
    weights: dict[str, float] = Field(default_factory=dict, description="per scorer name; missing ones weigh 1")


# One optional section per scorer, keyed by its YAML name; a scorer registered later is accepted by name.
ScorerMethods = plugin_sections("ScorerMethods", SCORERS, {"anp": AnpConfig, "clp": ClpConfig, "dormant": DormantConfig})


class ScoreStage(StrictModel):
    enabled: bool = True
    methods: ScorerMethods = Field(default_factory=lambda: ScorerMethods(clp={}))  # type: ignore[call-arg]
    fusion: FusionConfig = Field(default_factory=FusionConfig, description="how several methods' scores combine")


class SelectPolicy(StrictModel):
    """How many channels to prune, chosen on the tune split of the defender's clean data."""

    policy: Literal["flags", "accuracy_guard", "top_fraction"] = Field(
        "accuracy_guard", description="flags: the scorer's own decision; accuracy_guard: search thresholds; "
        "top_fraction: the highest-scoring `fraction` of all scored channels, across layers"
    )
    fraction: float = Field(0.05, gt=0, lt=1, description="share of all scored channels pruned by top_fraction")
    thresholds: Optional[list[float]] = Field(
        None, min_length=1, description="candidate score thresholds, flag = score > t (default: the scorer's own, "
        "e.g. CLP z-scores 3.0 ... 2.0, ANP 1 - mask 0.9 ... 0.5)")
    max_relative_drop: float = Field(0.10, gt=0, lt=1, description="largest relative tune-accuracy drop, before repair")
    unflagged_relative_drop: Optional[float] = Field(
        None, ge=0, lt=1, description="the budget instead, when the scan ran and no detector flagged the model "
        "(algorithms.md §7: data-free stages still run, with tighter budgets)")
    itasr_tolerance: Optional[float] = Field(
        None, ge=0, le=1, description="when the scan flagged the model, a trigger-free tie-break: among candidates "
        "within budget, take the least pruning one whose inverted-trigger ASR on the tune split is within this of "
        "the lowest (null: always the most pruning candidate within budget)")
    reinvert: bool = Field(
        False, description="with itasr_tolerance, when the verdict's detector can (Neural Cleanse): invert the "
        "suspected target afresh on each such candidate (least pruning first, about a tenth of a scan each) and "
        "take the first that the verdict no longer flags, else the most pruning candidate within budget; catches a "
        "backdoor whose inverted patch stops working while the real trigger (e.g. a full-image blend) still does")


class PruneStage(StrictModel):
    enabled: bool = True
    select: SelectPolicy = Field(default_factory=SelectPolicy)
    coupled: Literal["branch_zero", "remove", "gamma"] = Field(
        "branch_zero", description="flagged channels in a residual group: zero that branch (quorum: remove "
        "stream-wide), always remove stream-wide, or set gamma to 0 and keep beta at the BN each member's score "
        "was measured at (ANP's own operation; in place, since that BN's channel belongs to the stream; in "
        "pre-activation ResNets it is the post-add BN reading the stream)"
    )
    quorum: float = Field(0.5, gt=0, le=1, description="share of a group's producers flagged to remove the index")
    round_to: int = Field(8, ge=1, description="keep remaining widths a multiple of this (ORT's NCHWc block)")
    max_round_extra: float = Field(
        0.125, ge=0, le=1, description="most extra channels, as a share of the width, rounding may remove"
    )
    max_layer_fraction: float = Field(0.5, gt=0, le=1, description="never silence more of one layer than this")
    silence: Literal["zero", "fold"] = Field(
        "zero", description="a removed channel with its own BN: output 0 (zero gamma and beta, as CLP and "
        "Fine-Pruning), or keep its constant ReLU(beta) by folding it into the next layer's bias (fold, as ANP's "
        "gamma-only pruning; exact except at zero-padded borders, and only where the BN feeds convs or a pooled "
        "Linear, otherwise zeroed)"
    )
    atol: float = Field(1e-4, gt=0, description="pruned vs masked model tolerance (catches pairing bugs)")
